"""Real node layouts against the kernel: kube-proxy's rules plus Istio, Docker, flannel, Calico or Cilium.

For each layout and iptables backend, kube-proxy's payload for a small cluster (one
NodePort Service whose endpoint is a pod on this node) is loaded into the node
namespace, then the layout's payload with --noflush (and Calico's ipsets), as on a
real node. The test requires that what iptables-save prints is the fixture under
tests/fixtures/cni/ (so the fixtures stay what the real tool prints), sends real
packets through kube-proxy's chains and the CNI's, and compares each with kpa's
trace of the fixture:

* where kpa gives one outcome with no unknown rule, the kernel must agree on the
  verdict, the delivery and the DNAT target;
* where kpa follows a rule it reports unknown (Calico's rpfilter, Cilium's socket
  match), the kernel's fate must be one of kpa's outcomes.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from kpa.gen.cni import (
    CLIENT,
    CLUSTER_IP,
    LAYOUTS,
    NODE_IP,
    NODE_PORT,
    WEB,
    kube_proxy_payload,
    layout,
    render,
)
from kpa.netfilter.domain import network_set
from kpa.netfilter.engine import Outcome, trace
from kpa.netfilter.model import Ruleset
from kpa.netfilter.packet import PacketSpec, TraceContext, node_local_addresses
from kpa.sources import combine, parse_text

from .harness import SENDER, Observation, Topology, TopologySpec, _cali_name

pytestmark = pytest.mark.kernel
FIXTURES = Path(__file__).parent.parent / "fixtures" / "cni"
REMOTE_POD, OUTSIDE_HOST, CONTAINER = "10.244.1.10", "192.0.2.50", "172.17.0.2"
EXTERNAL = "203.0.113.10"
LISTEN_PORTS = (15001, 15006)


@dataclass(frozen=True)
class Probe:
    origin: str  # client_pod, external, node
    dst: str
    dport: int
    uid: int | None = None


COMMON = [Probe("client_pod", CLUSTER_IP, 80), Probe("external", NODE_IP, NODE_PORT), Probe("node", CLUSTER_IP, 80, 0),
          Probe("client_pod", REMOTE_POD, 80), Probe("client_pod", OUTSIDE_HOST, 80), Probe("node", REMOTE_POD, 80, 0)]
EXTRA = {
    "istio": [Probe("node", REMOTE_POD, 80, 1337), Probe("node", REMOTE_POD, 80, 1000),
              Probe("node", CLUSTER_IP, 80, 1000), Probe("node", CLUSTER_IP, 80, 1337),
              Probe("client_pod", WEB, 8080), Probe("client_pod", WEB, 15021)],
    "docker": [Probe("external", NODE_IP, 8080), Probe("node", NODE_IP, 8080, 0)],
}


@dataclass(frozen=True)
class Fate:
    verdict: str
    delivery: str | None = None  # local, forward, output
    dnat: tuple[str, int] | None = None


def _strip(dump: str) -> str:
    return "\n".join(line for line in dump.splitlines() if not line.startswith("#"))


@contextmanager
def listeners(topo: Topology) -> Iterator[None]:
    """TCP listeners on the node for Istio's redirect ports, so a redirected flow connects."""
    code = ("import socket,sys,time\nss=[]\nfor p in sys.argv[1:]:\n s=socket.socket();"
            "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('0.0.0.0',int(p)));s.listen(64);"
            "ss.append(s)\nprint('ok',flush=True)\ntime.sleep(600)\n")
    proc = subprocess.Popen(["ip", "netns", "exec", topo.name("node"), sys.executable, "-c", code,
                             *map(str, LISTEN_PORTS)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ok"
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def send(topo: Topology, p: Probe) -> Observation:
    role = {"client_pod": "client", "node": "node", "external": "outside"}[p.origin]
    argv = ["ip", "netns", "exec", topo.name(role)]
    if p.uid is not None:
        argv += ["setpriv", f"--reuid={p.uid}", f"--regid={p.uid}", "--clear-groups"]
    src = EXTERNAL if p.origin == "external" else None
    req = {"timeout": 0.4, "flows": [{"family": 4, "proto": "tcp", "src": src, "sport": 0, "dst": p.dst,
                                      "dport": p.dport}]}
    out = subprocess.run([*argv, sys.executable, str(SENDER)], input=json.dumps(req), capture_output=True,
                         text=True, check=True).stdout
    [r] = json.loads(out)
    return Observation(p.origin, "tcp", r["src"], r["sport"], p.dst, p.dport, r["result"])  # type: ignore[arg-type]


def kernel_fate(topo: Topology, obs: Observation) -> Fate:
    if obs.result == "connected":
        return Fate("ACCEPT", "local")
    if obs.result == "refused":
        return Fate("REJECT")
    if obs.result.startswith("unreachable"):
        return Fate("DROP")
    entries = topo.conntrack_for(obs)
    if not entries:
        return Fate("DROP")
    [e] = entries
    dnat = (e.dnat[0], e.dnat[1] or 0) if e.dnat else None
    return Fate("ACCEPT", "output" if obs.origin == "node" else "forward", dnat)


def _oif(dst: str) -> str | None:
    """The topology's route for a destination: local pods through their veth, the node itself over lo."""
    if dst in (WEB, "10.244.0.11", CLIENT):
        return _cali_name(dst)
    return None if dst in (NODE_IP,) or dst.startswith("127.") else "eth0"


# What the test node really has: a /32 route per local pod through its veth, and a default route out of eth0.
ROUTES = {4: [(network_set(ipaddress.ip_network(f"{ip}/32")), _cali_name(ip)) for ip in (WEB, "10.244.0.11", CLIENT)]
          + [(network_set(ipaddress.ip_network("0.0.0.0/0")), "eth0")]}


def kpa_fates(rs: Ruleset, obs: Observation, p: Probe, got: Fate) -> list[tuple[Fate, bool]]:
    iif = {"external": "eth0", "client_pod": _cali_name(CLIENT)}.get(p.origin)
    # The output interface follows from where the packet really went (after any DNAT).
    oif = _oif(got.dnat[0] if got.dnat else obs.dst) if got.delivery != "local" else None
    spec = PacketSpec(src=obs.src, dst=obs.dst, proto="tcp", sport=obs.sport, dport=obs.dport, iif=iif, oif=oif,
                      origin="output" if p.origin == "node" else "prerouting", uid=p.uid, gid=p.uid)
    ctx = TraceContext(local=node_local_addresses([NODE_IP]), socket="none", routes=ROUTES)
    outs = trace(rs, spec, ctx).outcomes
    return [(_fate(o, obs), bool(o.state.assumptions)) for o in outs]


def _fate(o: Outcome, obs: Observation) -> Fate:
    if o.verdict != "ACCEPT":
        return Fate(o.verdict)
    if o.delivery == "local":
        return Fate("ACCEPT", "local")
    dnat = None
    if o.state.dnat:
        ip, port = o.state.dnat
        dnat = (str(ipaddress.ip_address(ip)), port if port is not None else obs.dport)
    return Fate("ACCEPT", o.delivery, dnat)


@pytest.mark.parametrize("backend", ["nft", "legacy"])
@pytest.mark.parametrize("name", LAYOUTS)
def test_layout_agrees_with_kernel(name: str, backend: str) -> None:
    lay = layout()
    payload, sets = render(name, lay)
    fixture = (FIXTURES / f"{name}.{backend}.v4.save").read_text()
    spec = TopologySpec(remote_endpoint_ips=[REMOTE_POD, OUTSIDE_HOST, CONTAINER])
    probes = COMMON + EXTRA.get(name, [])
    with Topology(spec) as topo:
        if sets:
            topo.run_in("node", ["ipset", "restore"], stdin=sets)
        topo.load_iptables(kube_proxy_payload(), backend=backend)
        topo.run_in("node", [f"iptables-{backend}-restore", "-w", "10", "--noflush"], stdin=payload)
        saved = topo.save(backend, counters=False)
        assert _strip(saved) == _strip(fixture), f"{name}.{backend}: regenerate with python -m kpa.gen.cni fixtures"
        with listeners(topo):
            observed = []
            for p in probes:
                obs = send(topo, p)
                observed.append((p, obs, kernel_fate(topo, obs)))
                topo.conntrack_flush()
        topo.reset()
        if sets:
            topo.run_in("node", ["ipset", "destroy"])
    dumps = [parse_text(fixture, f"tests/fixtures/cni/{name}.{backend}.v4.save", "iptables")]
    rs = combine(dumps, [], [parse_text(sets, "ipset", "ipset")] if sets else [])
    claimed = 0
    problems = []
    for p, obs, got in observed:
        fates = kpa_fates(rs, obs, p, got)
        if len({f for f, _ in fates}) == 1 and not any(a for _, a in fates):
            claimed += 1
            if fates[0][0] != got:
                problems.append(f"{p}: kernel {got} ({obs.result}), kpa {fates[0][0]}")
        elif got not in [f for f, _ in fates]:
            problems.append(f"{p}: kernel {got} ({obs.result}) is none of kpa's outcomes {fates}")
    assert not problems, "\n".join(problems)
    print(f"\n{name}.{backend}: {len(observed)} probes, kpa claimed a verdict for {claimed}")
    assert claimed, "kpa should claim a verdict for some probes"


CALICO_HOST = "192.168.10.3"  # another Calico node, in cali40all-hosts-net
IPIP_SENDER = """import socket, sys
src, dst = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 4)
if src != "-":
    s.bind((src, 0))
s.sendto(bytes([0x45]) + bytes(19), (dst, 0))  # an (empty) inner IPv4 header
"""


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_calico_ipip_encapsulated_packets(backend: str) -> None:
    """Protocol 4 (IPIP) packets through kube-proxy's and Calico's chains: from a Calico host and from
    another host to the node, from a workload, and from the node to another Calico host. The rule kpa
    says decided each packet must have counted it in the kernel, and kpa's verdict must be that rule's."""
    name = "calico-ipip"
    payload, sets = render(name, layout())
    assert sets is not None
    fixture = (FIXTURES / f"{name}.{backend}.v4.save").read_text()
    spec = TopologySpec(remote_endpoint_ips=[REMOTE_POD], external_client_ips=[EXTERNAL, CALICO_HOST])
    # (namespace role, source or "-", destination, kpa origin, input interface, output interface, verdict)
    probes = [("outside", CALICO_HOST, NODE_IP, "prerouting", "eth0", None, "ACCEPT"),
              ("outside", EXTERNAL, NODE_IP, "prerouting", "eth0", None, "DROP"),
              ("client", "-", REMOTE_POD, "prerouting", _cali_name(CLIENT), "eth0", "DROP"),
              ("node", "-", CALICO_HOST, "output", None, "eth0", "ACCEPT")]
    rs = combine([parse_text(fixture, f"tests/fixtures/cni/{name}.{backend}.v4.save", "iptables")], [],
                 [parse_text(sets, "ipset", "ipset")])
    with Topology(spec) as topo:
        topo.run_in("node", ["ipset", "restore"], stdin=sets)
        topo.load_iptables(kube_proxy_payload(), backend=backend)
        topo.run_in("node", [f"iptables-{backend}-restore", "-w", "10", "--noflush"], stdin=payload)
        assert _strip(topo.save(backend, counters=False)) == _strip(fixture)
        try:
            for role, src, dst, origin, iif, oif, expected in probes:
                before = topo.counters("filter", backend)
                topo.run_in(role, [sys.executable, "-c", IPIP_SENDER, src, dst])
                after = topo.counters("filter", backend)
                counted = {k for k, v in after.items() if v > before.get(k, 0)}
                pspec = PacketSpec(src=NODE_IP if src == "-" and role == "node" else CLIENT if src == "-" else src,
                                   dst=dst, proto="ipencap", iif=iif, oif=oif, origin=origin)
                outs = trace(rs, pspec, TraceContext(local=node_local_addresses([NODE_IP]), socket="none",
                                                       routes=ROUTES)).outcomes
                assert len(outs) == 1 and not outs[0].state.assumptions, [(o.verdict, o.state.assumptions) for o in outs]
                [o] = outs
                decided = [h for h in o.state.path if h.table == "filter" and h.rule is not None][-1]
                assert o.verdict == expected, f"{role} {src} -> {dst}: kpa {o.verdict}, expected {expected}"
                assert (decided.chain, decided.rule) in counted, (
                    f"{role} {src} -> {dst}: kpa says {decided.chain} rule {decided.rule} ({decided.text}) decided; "
                    f"the kernel counted {sorted(counted)}")
                assert "IPIP" in (decided.text or "") or "ipencap" in (decided.text or "")
        finally:
            topo.reset()
            topo.run_in("node", ["ipset", "destroy"])
