"""kube-network-policies (kind, minikube): its nftables table recognised, its queue judged by policy.

kube-network-policies (sigs.k8s.io/kube-network-policies) keeps no policy in
netfilter. Its table `inet kube-network-policies` sends the first packets of
connections to or from the pods some NetworkPolicy selects (sets `podips-v4`,
`podips-v6`) to a userspace queue (100 by default, with `bypass` when it runs
fail-open), and the program answers from the NetworkPolicy objects:

- chain `postrouting` (hook postrouting, priority srcnat - 5): after DNAT and
  before SNAT, so the program sees the Service's chosen endpoint and the
  original source. Connections it accepted carry a conntrack label and are let
  through by `ct label … ct state established,related accept` afterwards.
- chain `input` (hook input, priority srcnat + 1): new connections from those
  pods to the node itself.
- chain `prerouting` (hook prerouting, priority dstnat + 5), when the program
  works around the conntrack race of UDP DNS: only UDP port 53.

Where kpa finds that table and has the cluster's objects, the packet that reaches
one of its queue rules is judged by kpa's NetworkPolicy engine (kpa.policy.engine),
on the packet as it is at that rule: the destination after DNAT, the source before
SNAT. The netfilter engine asks through `TraceContext.queue_decider`; this module
is that decider.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from kpa.netfilter.model import Family, Ruleset
from kpa.netfilter.packet import PROTOCOL_NAMES, QueueDecider, QueueDecision, State

TABLE = "kube-network-policies"
POD_SETS = ("podips-v4", "podips-v6")
# Protocols whose ports a NetworkPolicy port can name.
_PORTED = {6: "TCP", 17: "UDP", 132: "SCTP"}


def recognised(ruleset: Ruleset) -> bool:
    """Whether the rules hold kube-network-policies' table (`inet kube-network-policies`)."""
    return any(t.name == TABLE and t.family is Family.INET for t in ruleset.tables)


def queue_decider(ruleset: Ruleset, objects: Any) -> QueueDecider | None:
    """The decider for kube-network-policies' queue rules, or None without its table or cluster objects."""
    if objects is None or not recognised(ruleset):
        return None
    from kpa.policy.engine import PolicyEngine

    engine = PolicyEngine.from_objects(objects)

    def decide(st: State, detail: str) -> QueueDecision | None:
        hop = st.path[-1] if st.path else None
        if hop is None or hop.table != TABLE or hop.family != "inet":
            return None
        queues = detail.partition(", ")[0]
        who = f"decided by kube-network-policies ({queues})"
        src, dst, proto = st.peek("src"), st.peek("dst"), st.peek("proto")
        port = st.peek("dport") if proto in _PORTED else 0
        if src is None or dst is None or proto is None or port is None:
            return QueueDecision("QUEUE", f"{who} from the NetworkPolicies; kpa judges it only for one source, "
                                          "destination, protocol and destination port (give --src, --dst, -p, "
                                          "--dport)")
        s = engine.subject(ip=str(ipaddress.ip_address(src)))
        d = engine.subject(ip=str(ipaddress.ip_address(dst)))
        protocol = _PORTED.get(proto) or PROTOCOL_NAMES.get(proto, str(proto)).upper()
        decision = engine.decide(s, d, port, protocol)
        what = "allowed" if decision.allowed else "denied"
        text = f"{who}: {what} — {s.name} -> {d.name}"
        if proto in _PORTED:
            text += f" port {port}/{protocol}"
        return QueueDecision("ACCEPT" if decision.allowed else "DROP", f"{text}: {decision.reason()}")

    return decide
