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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kpa.netfilter.model import Family, Ruleset, Verdict, VerdictKind
from kpa.netfilter.packet import PROTOCOL_NAMES, Hop, QueueDecider, QueueDecision, State

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


# -- what decided: the table's rules in kube-network-policies' terms --------------------------

_WHO = "decided by kube-network-policies"
# Accept rules the agent writes before its queue rules, and why each one lets a packet through unjudged.
_BEFORE_QUEUE = (
    ("udp dport 53 accept", "DNS (UDP port 53) is accepted unjudged here; with --netfilter-bug-1766-fix "
                            "(the default) it is judged in prerouting instead"),
    ("icmpv6 type", "IPv6 neighbour discovery is always accepted"),
    ("meta skuid 0", "packets of the node's root-owned sockets are always accepted"),
    ("ct label", "a connection the program accepted before"),
    ('iifname "lo" accept', "loopback traffic is always accepted"),
)
# prerouting's filters: everything but DNS leaves that chain for postrouting, which judges it.
_DNS_FILTERS = ("meta l4proto != udp accept", "udp dport != 53 accept")


def deciding_hop(path: Sequence[Hop]) -> Hop | None:
    """For a packet the node let through: the hop of kube-network-policies' table that decided, if any.

    The queue rule whose program kpa judged; else the last of the table's own rules
    that accepted the packet before any queue (DNS, root's sockets, ...); else the end
    of its postrouting or input chain, which the packet reached without being queued.
    """
    ours = [h for h in path if h.table == TABLE]
    decided = [h for h in ours if (h.note or "").startswith(_WHO)]
    if decided:
        return decided[-1]
    accepted = [h for h in ours if h.rule is not None and h.text.endswith("accept")
                and not any(t in h.text for t in _DNS_FILTERS)]
    if accepted:
        return accepted[-1]
    ends = [h for h in ours if h.rule is None and h.chain in ("postrouting", "input")]
    return ends[-1] if ends else None


def describe_hop(hop: Hop) -> str:
    """The hop in kube-network-policies' terms: the program's queue, a rule that accepts before it, or
    the end of its chain (the packet was never queued)."""
    where = f"kube-network-policies/{hop.chain}"
    if (hop.note or "").startswith(_WHO):
        return f"{where}: queued to its program, which kpa judges from the NetworkPolicies"
    if hop.rule is None:
        return (f"{where}: not queued (neither address is in its sets {' or '.join(POD_SETS)}), so its program "
                "never judged it")
    for text, why in _BEFORE_QUEUE:
        if text in hop.text:
            return f"{where}: accepted before its queue rules ({why})"
    if "queue" in hop.text:
        return f"{where}: queued to its program"
    return f"{where}: accepted before its queue rules"


def in_pod_sets(ruleset: Ruleset) -> Callable[[str], bool]:
    """Whether an address is in the table's pod sets (podips-v4, podips-v6): a local pod some policy selects."""
    spans: dict[int, list[Any]] = {}
    for table in ruleset.tables:
        if table.name != TABLE or table.family is not Family.INET:
            continue
        for name, version in zip(POD_SETS, (4, 6), strict=True):
            nset = table.sets.get(name)
            for element in nset.elements if nset is not None else ():
                spans.setdefault(version, []).append(element[0])

    # Single addresses (what the agent writes) in a set; prefixes and ranges tested one by one.
    singles: set[tuple[int, int]] = set()
    others: dict[int, list[Any]] = {}
    for version, parts in spans.items():
        for part in parts:
            one = part.single_value() if hasattr(part, "single_value") else None
            if one is not None:
                singles.add((version, one))
            elif hasattr(part, "__contains__"):
                others.setdefault(version, []).append(part)

    def member(ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        value = int(addr)
        return (addr.version, value) in singles or any(value in part for part in others.get(addr.version, ()))

    return member


def queued_end(ruleset: Ruleset) -> Callable[[str], bool]:
    """Whether connections to and from an address go to the program's queue: a member of the pod sets,
    or any address when the table has no pod sets (it queues everything)."""
    has_sets = any(t.name == TABLE and t.family is Family.INET and set(POD_SETS) & set(t.sets)
                   for t in ruleset.tables)
    return in_pod_sets(ruleset) if has_sets else (lambda addr: True)


def fail_open_rule(ruleset: Ruleset) -> Any:
    """The first of the table's queue rules with `bypass` (fail-open), or None."""
    for table in ruleset.tables:
        if table.name != TABLE or table.family is not Family.INET:
            continue
        for chain in table.chains.values():
            for rule in chain.rules:
                for e in rule.exprs:
                    verdict = getattr(e, "verdict", None)
                    if isinstance(verdict, Verdict) and verdict.kind is VerdictKind.QUEUE \
                            and "bypass" in (verdict.detail or ""):
                        return rule
    return None


# -- the enforced matrix on a kube-network-policies node --------------------------------------

#: The fields a matrix cell's packets differ in; every other field is the same for all of them.
_ENDS = ("src", "dst")


def on_this_node(ruleset: Ruleset, objects: Any, node_ips: list[str]) -> Callable[[str], bool]:
    """Whether a connection to or from an address passes this node: a node address, an address in the
    table's pod sets, or a pod on the node whose Node object has one of `node_ips`. Without pod sets
    (everything queued) and without that Node object, every address counts."""
    in_sets = in_pod_sets(ruleset)
    names = {n.name for n in objects.nodes
             if set(n.internal_ips) & set(node_ips) or set(n.external_ips) & set(node_ips)}
    has_sets = any(t.name == TABLE and t.family is Family.INET and set(POD_SETS) & set(t.sets)
                   for t in ruleset.tables)
    if not names and not has_sets:
        return lambda addr: True  # everything queued and no Node object to say whose pods are here
    local = {ip for p in objects.pods if p.node_name in names for ip in p.pod_ips}
    mine = set(node_ips)

    def here(addr: str) -> bool:
        return addr in mine or addr in local or in_sets(addr)

    return here


def not_here() -> Any:
    """The answer for a connection neither of whose ends is on this node."""
    from kpa.k8s.kuberouter import Enforced

    return Enforced("unknown", "-", None, "neither end is on this node (a node address, a pod in "
                    f"{' or '.join(POD_SETS)}, or a pod of the node with --node-ip): its rules never see "
                    "this connection")


@dataclass
class _Walk:
    """One representative connection's trace, and what it depends on.

    `src_reads`/`dst_reads`: every read of the source and destination address the
    walk made (kpa.netfilter.packet). A connection whose addresses answer each of
    them as the representative's did takes the same path through the rules.
    `answers`: the answer when the program allows the connection and when it
    denies it (the same object twice when no queue rule was reached); None when
    the walk cannot be shared (the packet was rewritten, or the program judged
    other addresses than the connection's own): such connections are traced alone.
    """

    src_reads: list[tuple[Any, ...]]
    dst_reads: list[tuple[Any, ...]]
    answers: tuple[Any, Any] | None
    queued: bool


class EnforcedQueueMatrix:
    """The node's answer for every (source, target) pair on a kube-network-policies node.

    A pair with neither end on this node (`here`, by default `on_this_node`) gets one answer, verdict
    unknown: connections between pods of other nodes never pass this node's rules.

    Each cell is decided as `kpa trace` decides that connection: the node's rules up to
    the queue, then kpa's NetworkPolicy engine for the program, then the rest of the
    rules. Cells share walks: a representative connection is traced with the
    program's answer fixed to allowed and to denied, recording every read of the two
    addresses; any cell whose addresses answer those reads alike takes the same path,
    and its answer is the walk's for the engine's judgement of that cell. That
    judgement is `intent_row(i)[j]` (the intent matrix's row) where the matrix's ends are
    what the program sees (the pod owning the address), else the engine's.
    """

    def __init__(self, ruleset: Ruleset, objects: Any, node_ips: list[str], sources: list[str | None],
                 targets: list[str | None], port: int, protocol: str,
                 intent_row: Callable[[int], list[bool]] | None = None, src_pods: Sequence[Any] | None = None,
                 dst_pods: Sequence[Any] | None = None, here: Callable[[str], bool] | None = None) -> None:
        from kpa.k8s.kuberouter import KubeRouterMap
        from kpa.policy.engine import PolicyEngine

        self.ruleset, self.node_ips, self.port, self.protocol = ruleset, node_ips, port, protocol
        self.sources, self.targets = sources, targets
        self.kr = KubeRouterMap.from_ruleset(ruleset, objects.network_policies)
        self.decider = queue_decider(ruleset, objects)
        self.engine = PolicyEngine.from_objects(objects)
        self._intent_row = intent_row
        # The intent matrix's judgement is the program's where both ends are the pods the program sees.
        self._src_same = self._same(sources, src_pods)
        self._dst_same = self._same(targets, dst_pods)
        self._src_key = [self._end(a) for a in sources]
        self._dst_key = [self._end(a) for a in targets]
        self._on_node = here or on_this_node(ruleset, objects, node_ips)
        self.not_here = not_here()
        self._src_here = [a is not None and self._on_node(a) for a in sources]
        self._dst_here = [a is not None and self._on_node(a) for a in targets]
        queued = queued_end(ruleset)
        self._src_queued = [a is not None and queued(a) for a in sources]
        self._dst_queued = [a is not None and queued(a) for a in targets]
        self._away = [j for j, h in enumerate(self._dst_here) if not h]
        self._near_unqueued = [j for j, (h, q) in enumerate(zip(self._dst_here, self._dst_queued, strict=True))
                               if h and not q]
        self._judged: dict[tuple[str, str], bool] = {}
        self._walks: dict[tuple[Any, ...], list[_Walk]] = {}
        self._all: list[_Walk] = []
        self._ok: dict[tuple[int, str, str], bool] = {}
        self._probes: dict[str, State] = {}
        self._alone: dict[tuple[str, str], Any] = {}
        # Rows whose source fits the same walks share which walk each column takes.
        self._columns: dict[tuple[Any, ...], list[_Walk | None]] = {}
        self.walk_traces = 0
        self.full_traces = 0
        self._proto = protocol.upper()

    def _end(self, addr: str | None) -> tuple[bool, int] | None:
        return (addr in self.node_ips, ipaddress.ip_address(addr).version) if addr is not None else None

    def _same(self, addrs: list[str | None], pods: Sequence[Any] | None) -> list[bool]:
        """Per address: is the intent matrix's end (that pod, or the bare address) the one the program sees?"""
        from kpa.k8s.objects import canonical_ip

        if pods is None:
            return [False] * len(addrs)
        out = []
        for addr, pod in zip(addrs, pods, strict=True):
            seen = self.engine.pod_by_ip(addr) if addr is not None else None
            out.append(addr is not None and canonical_ip(addr) == addr
                       and (seen.key if seen is not None else None) == (pod.key if pod is not None else None))
        return out

    @property
    def traces(self) -> int:
        return self.walk_traces + self.full_traces

    def scope(self, i: int, j: int) -> str:
        """The directions of the policies this node enforces for sources[i] -> targets[j]
        (kpa.k8s.kuberouter.compared): both when the program judges the connection (an end
        here is queued: it judges egress and ingress both), else, with the other end on
        another node, only the local end's direction (kube-network-policies queues the pods
        some policy selects; the other end's node judges the other direction)."""
        from kpa.k8s.kuberouter import compared

        if self._src_queued[i] or self._dst_queued[j]:
            return "both"
        return compared(self._src_here[i], self._dst_here[j])

    def partial(self, i: int) -> tuple[str, list[int]]:
        """The targets j whose cell with sources[i] this node enforces one direction of (`scope`), and which."""
        if self._src_queued[i]:
            return "both", []
        if self._src_here[i]:
            return "egress", self._away
        return "ingress", self._near_unqueued

    # ---------------------------------------------------------------- answers

    def answer(self, i: int, j: int) -> Any:
        """The node's answer (kpa.k8s.kuberouter.Enforced) for sources[i] -> targets[j], or None."""
        s, d = self.sources[i], self.targets[j]
        if s is None or d is None or s == d:
            return None
        if not (self._src_here[i] or self._dst_here[j]):
            return self.not_here
        return self._pick(self._walk_for(s, d, i, j), i, j, s, d, None)

    def row(self, i: int) -> list[Any]:
        """[answer(i, j) for every target j], sharing the column lookups between rows alike."""
        s, n = self.sources[i], len(self.targets)
        if s is None:
            return [None] * n
        here, dst_here, not_here = self._src_here[i], self._dst_here, self.not_here
        sig = self._signature(i, s)
        columns = self._columns.get(sig)
        if columns is None:
            columns = self._columns[sig] = [None] * n
        intent: list[bool] | None = None
        out: list[Any] = []
        append = out.append
        for j, d in enumerate(self.targets):
            if d is None or d == s:
                append(None)
                continue
            if not (here or dst_here[j]):
                append(not_here)
                continue
            walk = columns[j]
            if walk is None:
                known = len(self._all)
                walk = self._walk_for(s, d, i, j)
                if len(self._all) != known:
                    # A new walk: this row fits more walks now; what it found so far still holds.
                    sig = self._signature(i, s)
                    columns = self._columns.setdefault(sig, list(columns))
                columns[j] = walk
            if walk.answers is not None and not walk.queued:
                append(walk.answers[0])
                continue
            if walk.answers is not None and intent is None and self._intent_row is not None \
                    and self._src_same[i]:
                intent = self._intent_row(i)
            append(self._pick(walk, i, j, s, d, intent))
        return out

    def _signature(self, i: int, s: str) -> tuple[Any, ...]:
        return (self._src_key[i], *(id(w) for w in self._all if self._fits(w, "src", s)))

    def _pick(self, walk: _Walk, i: int, j: int, s: str, d: str, intent: list[bool] | None) -> Any:
        if walk.answers is None:
            return self._trace_alone(s, d)
        if not walk.queued:
            return walk.answers[0]
        return walk.answers[0] if self._judge(i, j, s, d, intent) else walk.answers[1]

    def _judge(self, i: int, j: int, s: str, d: str, intent: list[bool] | None) -> bool:
        if self._src_same[i] and self._dst_same[j]:
            if intent is not None:
                return intent[j]
            if self._intent_row is not None:
                return self._intent_row(i)[j]
        key = (s, d)
        found = self._judged.get(key)
        if found is None:
            engine = self.engine
            found = self._judged[key] = engine.decide(engine.subject(ip=s), engine.subject(ip=d), self.port,
                                                      self._proto).allowed
        return found

    # ---------------------------------------------------------------- walks

    def _probe(self, addr: str) -> State:
        st = self._probes.get(addr)
        if st is None:
            from kpa.netfilter.packet import PacketSpec

            family = Family.IPV6 if ipaddress.ip_address(addr).version == 6 else Family.IPV4
            st = self._probes[addr] = PacketSpec(family=family, src=addr, dst=addr).initial_state()
        return st

    def _fits(self, walk: _Walk, end: str, addr: str) -> bool:
        from kpa.netfilter.memo import _matches

        key = (id(walk), end, addr)
        found = self._ok.get(key)
        if found is None:
            probe = self._probe(addr)
            found = self._ok[key] = all(_matches(r, probe) for r in (walk.src_reads if end == "src"
                                                                     else walk.dst_reads))
        return found

    def _walk_for(self, s: str, d: str, i: int, j: int) -> _Walk:
        # Node addresses (the packet's origin, local delivery) and address families are never shared.
        walks = self._walks.setdefault((self._src_key[i], self._dst_key[j]), [])
        for walk in walks:
            if self._fits(walk, "src", s) and self._fits(walk, "dst", d):
                return walk
        walk = self._new_walk(s, d)
        walks.append(walk)
        self._all.append(walk)
        return walk

    def _new_walk(self, s: str, d: str) -> _Walk:
        from kpa.k8s.kuberouter import _from_result
        from kpa.netfilter.packet import record_reads

        calls: list[tuple[Any, ...]] = []

        def fixed(verdict: str) -> QueueDecider:
            def decide(st: State, detail: str) -> QueueDecision | None:
                previous = record_reads(None)  # what the program judges is not a read of the rules
                try:
                    hop = st.path[-1] if st.path else None
                    if hop is None or hop.table != TABLE or hop.family != "inet":
                        return None
                    calls.append((st.peek("src"), st.peek("dst"), st.peek("proto"), st.peek("dport"),
                                  bool(st.rewrites) or st.dnat is not None or st.snat is not None
                                  or bool(st.masquerade)))
                    return QueueDecision(verdict, f"{_WHO} ({detail.partition(', ')[0]})")
                finally:
                    record_reads(previous)
            return decide

        reads: list[tuple[Any, ...]] = []
        results = []
        for verdict in ("ACCEPT", "DROP"):
            previous = record_reads(reads)
            try:
                result = self._trace(s, d, fixed(verdict))
            finally:
                record_reads(previous)
            self.walk_traces += 1
            results.append(result)
            if not calls:
                break  # no queue rule reached: one answer for everything that walks this way
        src_reads = [r for r in reads if r[1] == "src"]
        dst_reads = [r for r in reads if r[1] == "dst"]
        version = ipaddress.ip_address(s).version
        shareable = not any(result.truncated for result in results) and all(
            o.state.dnat is None and o.state.snat is None and not o.state.masquerade
            and not ({"src", "dst"} & set(o.state.rewrites)) for result in results for o in result.outcomes)
        if calls:
            own = (_int(s, version), _int(d, version), _PROTO_NUMBERS[self._proto], self.port, False)
            shareable = shareable and all(c == own for c in calls)
        if not shareable:
            return _Walk(src_reads, dst_reads, None, bool(calls))
        answers = [_from_result(r, self.kr) for r in results]
        return _Walk(src_reads, dst_reads, (answers[0], answers[-1]), bool(calls))

    def _trace(self, s: str, d: str, decider: QueueDecider | None) -> Any:
        from kpa.k8s.kuberouter import _trace

        return _trace(self.ruleset, self.node_ips, s, d, self.port, self.protocol, s in self.node_ips, decider)

    def _trace_alone(self, s: str, d: str) -> Any:
        from kpa.k8s.kuberouter import _from_result

        found = self._alone.get((s, d))
        if found is None:
            self.full_traces += 1
            found = self._alone[(s, d)] = _from_result(self._trace(s, d, self.decider), self.kr)
        return found


_PROTO_NUMBERS = {"TCP": 6, "UDP": 17, "SCTP": 132}


def _int(addr: str, version: int) -> int:
    return int(ipaddress.ip_address(addr))


# -- intent versus enforcement (`kpa lint`) -----------------------------------------------------

def enforcement_findings(ruleset: Ruleset, objects: Any, node_ips: list[str], node: str | None = None,
                         max_checks: int = 20000) -> list[Any]:
    """`kpa lint` findings where a kube-network-policies node enforces a connection differently from the policies.

    With kpa judging the program's queue by the same policies, differences come from
    the node's rules: a rule that accepts before the queue (DNS when the program does
    not judge it in prerouting, root's sockets), a policy-selected pod missing from the
    table's pod sets (never queued), other tables that drop or accept first. Connections
    checked: between every two pods of which at least one is on this node (`node`, or in
    the pod sets), on each port the destination declares and each numeric port a policy
    of either namespace names. Also one info finding when the queue rules are fail-open.
    """
    from kpa.findings import Finding
    from kpa.k8s.kuberouter import ELSEWHERE, intended_here
    from kpa.policy.engine import PolicyEngine

    if not recognised(ruleset) or not objects.network_policies:
        return []
    out: list[Any] = []
    bypass = fail_open_rule(ruleset)
    if bypass is not None:
        out.append(Finding("netpol-fail-open", "info", None,
                           "kube-network-policies queues with bypass (fail-open): while its program is not "
                           "running, the connections it judges are let through unjudged, whatever the policies say",
                           f"{bypass.location}: {bypass.text}" if bypass.location else bypass.text))
    engine = PolicyEngine.from_objects(objects)
    in_sets = in_pod_sets(ruleset)
    pods = [p for p in engine.pods if p.pod_ips and not p.host_network]
    local = {p.key for p in pods if p.node_name == node or any(in_sets(ip) for ip in p.pod_ips)}
    ports_of: dict[str, set[tuple[int, str]]] = {}
    for policy in objects.network_policies:
        numeric = {(pp.port, pp.protocol) for rule in (*policy.ingress, *policy.egress) for pp in rule.ports
                   if isinstance(pp.port, int)}
        ports_of.setdefault(policy.namespace, set()).update(numeric)
    local_ips = {ip for p in pods if p.key in local for ip in p.pod_ips}
    on_node = on_this_node(ruleset, objects, node_ips)

    def here(addr: str) -> bool:
        return addr in local_ips or on_node(addr)

    subjects = [engine.subject(p) for p in pods]
    addrs = [s.ip for s in subjects]
    index = {id(p): k for k, p in enumerate(pods)}
    matrices: dict[tuple[int, str], EnforcedQueueMatrix] = {}
    checks = 0
    for src in pods:
        for dst in pods:
            if src is dst or not ({src.key, dst.key} & local):
                continue
            ports = {(cp.port, cp.protocol) for cp in dst.container_ports}
            ports |= ports_of.get(dst.namespace, set()) | ports_of.get(src.namespace, set())
            i, j = index[id(src)], index[id(dst)]
            s, d = subjects[i], subjects[j]
            if s.ip is None or d.ip is None or ipaddress.ip_address(s.ip).version != ipaddress.ip_address(d.ip).version:
                continue
            for port, proto in sorted(ports):
                checks += 1
                if checks > max_checks:
                    out.append(Finding("enforcement-not-checked", "info", None,
                                       f"stopped after {max_checks} connections; the rest were not compared", None))
                    return out
                m = matrices.get((port, proto))
                if m is None:
                    m = matrices[(port, proto)] = EnforcedQueueMatrix(ruleset, objects, node_ips, addrs, addrs,
                                                                      port, proto, here=here)
                e = m.answer(i, j)
                intent = engine.decide(s, d, port, proto)
                scope = m.scope(i, j)
                ok = intended_here(intent.egress.allowed, intent.ingress.allowed, scope)
                if e is None or e.verdict == "unknown" or (e.verdict == "allowed") == ok:
                    continue
                who = f"{s.name} -> {d.name} port {port}/{proto}"
                reason = intent.reason() if scope == "both" else \
                    f"{getattr(intent, scope).reason()}; {ELSEWHERE[scope]}"
                if e.verdict == "allowed":
                    out.append(Finding("policy-not-enforced", "error", None,
                                       f"{who}: the policies deny it ({reason}) but the node lets it "
                                       f"through: {e.where}", e.deciding))
                else:
                    out.append(Finding("blocked-without-policy", "error", None,
                                       f"{who}: the policies allow it ({reason}) but the node blocks it: "
                                       f"{e.where}", e.deciding))
    return out
