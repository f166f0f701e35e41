"""NFQUEUE without a listener, against the kernel: dropped, or accepted with --queue-bypass.

kpa reports a queue verdict as decided by a userspace program and says what the
kernel does when no program listens. Here nobody listens: the node's mangle
POSTROUTING counters show whether each queued flow went on (bypass) or died.
"""

from __future__ import annotations

import pytest

from kpa.netfilter.engine import trace
from kpa.netfilter.packet import PacketSpec, TraceContext, node_local_addresses
from kpa.sources import parse_text

from .harness import Backend, Topology, default_spec

pytestmark = pytest.mark.kernel

POD = "10.244.0.10"
RULES = """*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -p tcp --dport 80
-A POSTROUTING -p tcp --dport 81
-A POSTROUTING -p tcp --dport 82
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -p tcp --dport 80 -j NFQUEUE --queue-balance 1:4 --queue-bypass
-A FORWARD -p tcp --dport 81 -j NFQUEUE --queue-num 3
-A FORWARD -p tcp --dport 82 -j NFQUEUE --queue-num 5 --queue-bypass
-A FORWARD -p tcp --dport 80 -j DROP
COMMIT
"""


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_queue_without_listener(backend: Backend) -> None:
    with Topology(default_spec("ipv4")) as topo:
        topo.load_iptables(RULES, backend=backend)
        dump = topo.save(backend, counters=False)
        topo.send_many([("external", "203.0.113.10", POD, "tcp", port) for port in (80, 81, 82)], timeout=0.3)
        counters = topo.counters("mangle", backend)
    rs = parse_text(dump, "iptables-save", "iptables")
    for index, port in enumerate((80, 81, 82), 1):
        result = trace(rs, PacketSpec(src="203.0.113.10", dst=POD, proto="tcp", dport=port),
                       TraceContext(local=node_local_addresses(["192.168.10.2"])))
        [outcome] = result.outcomes
        assert outcome.verdict == "QUEUE"
        assert outcome.reason.startswith("decided by a userspace program")
        kpa_goes_on = "accepted by this rule (bypass)" in outcome.reason
        kernel_goes_on = counters.get(("POSTROUTING", index), 0) > 0
        assert kpa_goes_on == kernel_goes_on, (port, outcome.reason, counters)
    assert counters.get(("POSTROUTING", 1), 0) > 0 and counters.get(("POSTROUTING", 2), 0) == 0
