"""kube-router's NetworkPolicy chains and sets, mapped back to pods and policies; enforced verdicts.

kube-router (iptables mode) names each pod's chain KUBE-POD-FW-<hash> and each
policy's chain KUBE-NWPLCY-<hash>, hashing in a sync timestamp, so chain names
cannot be recomputed from the objects. The rules say who they are for instead:
the top-level jumps carry "NS/POD in|out" comments and the jumps into a policy
chain "NS/NAME policy". Set names do not depend on the sync, so KUBE-SRC-*/KUBE-DST-*
are recomputed from each policy (sha256 of namespace, name, rule index and
family, base32, as kube-router does).

`enforced` traces one connection through the node's rules and says whether the
node lets it through, and which rule decided.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kpa.findings import CodeInfo, register
from kpa.netfilter.engine import Outcome, TraceResult, trace
from kpa.netfilter.model import Family, Ruleset
from kpa.netfilter.packet import Hop, PacketSpec, QueueDecider, TraceContext, node_local_addresses

LOCAL_PODS = "kube-router-local-pods"  # --netpol-default-deny: local pods whose chain is programmed
TAIL = "KUBE-NWPLCY-TAIL"
_POD_JUMP = re.compile(r"^(?P<ns>[^/\s]+)/(?P<pod>\S+) (?P<dir>in|out)$")
_POLICY_COMMENT = re.compile(r"^(?P<ns>[^/\s]+)/(?P<name>\S+) (?P<what>policy|ingress|egress)\b")
FAMILY = {4: "IPv4", 6: "IPv6"}


_COMMENT_ARG = re.compile(r' -m comment --comment ("[^"\\]*"|[^"\s\\]+)(?: |$)')


def _comment_of(rule: Any) -> str:
    """The rule's comment, read from its text when that is plain (building the rule costs more)."""
    text = rule.text
    m = _COMMENT_ARG.search(text) if "'" not in text and "\\" not in text else None
    if m is not None and text.count("--comment") == 1:
        return m.group(1).strip('"')
    return rule.comment or ""


def _b32(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def _set(name: str, version: int) -> str:
    return f"inet6:{name}" if version == 6 else name


def policy_set_names(namespace: str, name: str, ingress_rules: int, egress_rules: int, version: int,
                     named_ports: int = 8) -> dict[str, str]:
    """kube-router's ipset names for one policy, each with what it holds."""
    fam = FAMILY[version]
    out = {_set("KUBE-DST-" + _b32(namespace + name + fam), version): "pods the policy selects (ingress)",
           _set("KUBE-SRC-" + _b32(namespace + name + fam), version): "pods the policy selects (egress)"}
    for idx in range(ingress_rules):
        base = namespace + name + f"ingressrule{idx}"
        out[_set("KUBE-SRC-" + _b32(base + fam + "pod"), version)] = f"ingress rule {idx} source pods"
        out[_set("KUBE-SRC-" + _b32(base + fam + "ipblock"), version)] = f"ingress rule {idx} source ipBlocks"
        for ep in range(named_ports):
            out[_set("KUBE-DST-" + _b32(base + str(ep) + fam + "namedport"), version)] = \
                f"ingress rule {idx} named-port pods"
    for idx in range(egress_rules):
        base = namespace + name + f"egressrule{idx}"
        out[_set("KUBE-DST-" + _b32(base + fam + "pod"), version)] = f"egress rule {idx} destination pods"
        out[_set("KUBE-DST-" + _b32(base + fam + "ipblock"), version)] = f"egress rule {idx} destination ipBlocks"
        for ep in range(named_ports):
            out[_set("KUBE-DST-" + _b32(base + str(ep) + fam + "namedport"), version)] = \
                f"egress rule {idx} named-port pods"
    return out


@dataclass
class KubeRouterMap:
    """Which kube-router chain or set is which pod or policy."""

    pod_chains: dict[str, str] = field(default_factory=dict)  # KUBE-POD-FW-* -> NS/POD
    policy_chains: dict[str, str] = field(default_factory=dict)  # KUBE-NWPLCY-* -> NS/NAME
    sets: dict[str, tuple[str, str]] = field(default_factory=dict)  # set -> (NS/NAME, role)

    # --netpol-default-deny: the pod CIDRs KUBE-NWPLCY-TAIL rejects for unprogrammed pods.
    default_deny_cidrs: list[str] = field(default_factory=list)

    @property
    def present(self) -> bool:
        return bool(self.pod_chains or self.policy_chains)

    @classmethod
    def from_ruleset(cls, ruleset: Ruleset, policies: Iterable[Any] = ()) -> KubeRouterMap:
        out = cls()
        for table in ruleset.tables:
            if table.name != "filter":
                continue
            for chain in table.chains.values():
                if not (chain.name.startswith("KUBE-ROUTER-") or chain.name.startswith("KUBE-POD-FW-")):
                    continue
                for rule in chain.rules:
                    targets = [c for _, c in rule.chain_refs()
                               if c.startswith("KUBE-POD-FW-") or c.startswith("KUBE-NWPLCY-")]
                    if not targets:
                        continue
                    comment = _comment_of(rule)
                    for target in targets:
                        m = _POD_JUMP.match(comment)
                        if target.startswith("KUBE-POD-FW-") and m:
                            out.pod_chains[target] = f"{m['ns']}/{m['pod']}"
                        m2 = _POLICY_COMMENT.match(comment)
                        if target.startswith("KUBE-NWPLCY-") and m2 and m2["what"] == "policy":
                            out.policy_chains[target] = f"{m2['ns']}/{m2['name']}"
        for table in ruleset.tables:
            tail = table.chains.get(TAIL) if table.name == "filter" else None
            for rule in tail.rules if tail is not None else []:
                m = re.search(r"-[sd] (\S+)", rule.text)
                if m and "default-deny" in (rule.comment or "") and m.group(1) not in out.default_deny_cidrs:
                    out.default_deny_cidrs.append(m.group(1))
        for name in (LOCAL_PODS, f"inet6:{LOCAL_PODS}"):
            if name in ruleset.ipsets:
                out.sets[name] = ("kube-router", "local pods whose firewall chain is programmed (default-deny)")
        for policy in policies:
            for version in (4, 6):
                names = policy_set_names(policy.namespace, policy.name, len(policy.ingress), len(policy.egress),
                                         version)
                for name, role in names.items():
                    if name in ruleset.ipsets:
                        out.sets[name] = (f"{policy.namespace}/{policy.name}", role)
        return out

    def describe_hop(self, hop: Hop) -> str:
        """The hop in kube-router's terms: whose chain it is, and what the rule does."""
        from kpa.k8s import kubenetpol

        if hop.table == kubenetpol.TABLE:
            return kubenetpol.describe_hop(hop)
        if hop.chain in self.pod_chains:
            return f"pod {self.pod_chains[hop.chain]}'s firewall chain {hop.chain}"
        if hop.chain in self.policy_chains:
            return f"policy {self.policy_chains[hop.chain]}'s chain {hop.chain}"
        if hop.chain == TAIL and "unprogrammed local pod" in (hop.comment or ""):
            return (f"kube-router's default-deny rule in {TAIL}: an address in the node's pod CIDR that is not in "
                    f"{LOCAL_PODS} (no firewall chain programmed for it yet)")
        if hop.chain == TAIL and "default-deny" in (hop.comment or ""):
            return f"kube-router's default-deny rule in {TAIL}: pod CIDR traffic no pod chain marked"
        return f"{hop.table}/{hop.chain}"


@dataclass(frozen=True)
class Enforced:
    """What the node's rules do to one connection."""

    verdict: str  # "allowed", "denied", or "unknown" (outcomes disagree or rely on unmodelled rules)
    outcome: str  # ACCEPT, DROP, REJECT, QUEUE, or several joined by "|"
    deciding: str | None  # the rule that decided, as FILE:LINE text
    where: str | None  # the deciding rule in kube-router's terms
    dnat: str | None = None
    # Policies whose chains admitted the connection, in the order the packet met them.
    admitted_by: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "outcome": self.outcome, "rule": self.deciding, "where": self.where,
                "dnat": self.dnat, "admitted_by": list(self.admitted_by)}

    def text(self) -> str:
        head = f"enforced on this node: {self.verdict} ({self.outcome})"
        if self.admitted_by:
            head += f", admitted by {', '.join(self.admitted_by)}"
        if self.deciding:
            return head + f"\n  deciding rule: {self.deciding}"
        return head + (f"\n  {self.where}" if self.where else "")  # why no rule decided


def _deciding(outcome: Outcome, kr: KubeRouterMap) -> tuple[str | None, str | None]:
    hop = _deciding_hop(outcome, kr)
    if hop is None:
        return None, None
    loc = f"{hop.location}: {hop.text}" if hop.location else hop.text
    return loc, kr.describe_hop(hop)


def _deciding_hop(outcome: Outcome, kr: KubeRouterMap) -> Hop | None:
    path = outcome.path
    if not path:
        return None
    if outcome.verdict == "ACCEPT":
        from kpa.k8s.kubenetpol import deciding_hop

        ours = deciding_hop(path)  # a kube-network-policies node: its queue, or what let it pass unqueued
        if ours is not None:
            return ours
        # The accepting rule of the last filter chain kube-router owns, else the last hop.
        for hop in reversed(path):
            if hop.table == "filter" and (hop.chain.startswith("KUBE-") or hop.chain in ("INPUT", "FORWARD",
                                                                                           "OUTPUT")):
                break
        else:
            hop = path[-1]
        marks = [h for h in path if h.chain in kr.policy_chains or h.chain == "KUBE-NWPLCY-DEFAULT"]
        if marks:
            hop = marks[-1]
    else:
        hop = path[-1]
    return hop


def enforced(ruleset: Ruleset, node_ips: list[str], src: str, dst: str, port: int, protocol: str,
             kr: KubeRouterMap | None = None, src_is_node: bool = False,
             queue_decider: QueueDecider | None = None) -> Enforced:
    """Trace a new connection src -> dst:port through the node's rules (interfaces left open)."""
    kr = kr or KubeRouterMap()
    return _from_result(_trace(ruleset, node_ips, src, dst, port, protocol, src_is_node, queue_decider), kr)


def _trace(ruleset: Ruleset, node_ips: list[str], src: str, dst: str, port: int, protocol: str,
           src_is_node: bool = False, queue_decider: QueueDecider | None = None) -> TraceResult:
    family = Family.IPV6 if ipaddress.ip_address(dst).version == 6 else Family.IPV4
    spec = PacketSpec(family=family, src=src, dst=dst, proto=protocol.lower(), dport=port,
                      origin="output" if src_is_node else "prerouting")
    return trace(ruleset, spec, TraceContext(local=node_local_addresses(node_ips), queue_decider=queue_decider))


def _admitted(path: Iterable[Hop], kr: KubeRouterMap) -> list[str]:
    admitted: list[str] = []
    for hop in path:
        if hop.chain in kr.policy_chains and hop.text.endswith("-j RETURN"):
            admitted.append(f"policy {kr.policy_chains[hop.chain]}")
        elif hop.chain == "KUBE-NWPLCY-DEFAULT":
            admitted.append("no isolating policy (KUBE-NWPLCY-DEFAULT)")
        elif hop.text.endswith("-j ACCEPT") and (hop.chain == "KUBE-NWPLCY-COMMON"
                                                  or hop.comment == "from local node"):
            admitted.append(f"kube-router's {hop.comment!r} rule")
    return admitted


def _from_result(result: TraceResult, kr: KubeRouterMap) -> Enforced:
    return _from_result_hop(result, kr)[0]


def _from_result_hop(result: TraceResult, kr: KubeRouterMap) -> tuple[Enforced, Hop | None]:
    """The answer, and the hop of the deciding rule."""
    # Outcomes that differ only in what an unmodelled rule did (e.g. whether NFLOG's rate limit was
    # exceeded) but agree on the verdict still give a known answer. A packet left to a userspace
    # program (QUEUE, no decider) has no known answer.
    verdicts = {("allowed" if o.verdict == "ACCEPT" else "unknown" if o.verdict == "QUEUE" else "denied")
                for o in result.outcomes}
    outcomes = sorted({o.verdict for o in result.outcomes})
    first = result.outcomes[0] if result.outcomes else None
    hop = _deciding_hop(first, kr) if first is not None else None
    deciding = (f"{hop.location}: {hop.text}" if hop.location else hop.text) if hop is not None else None
    where = kr.describe_hop(hop) if hop is not None else None
    verdict = verdicts.pop() if len(verdicts) == 1 else "unknown"
    admitted = _admitted(first.path, kr) if first is not None and first.verdict == "ACCEPT" else []
    return Enforced(verdict, "|".join(outcomes), deciding, where, first.dnat_text() if first else None,
                    tuple(dict.fromkeys(admitted))), hop


# -- intent versus enforcement -------------------------------------------------------

#: How many connections `enforcement_findings` traces at most (each is one trace).
MAX_CHECKS = 20000

register(
    CodeInfo("policy-not-enforced", "error",
             "the node lets a connection through that the NetworkPolicies deny",
             "The node's rules (kube-router's chains, or kube-network-policies' table and the rules "
             "around its queue) admit a connection the policies deny: isolation is not in force.",
             source="netpol-enforcement"),
    CodeInfo("blocked-without-policy", "error",
             "the node blocks a connection that the NetworkPolicies allow",
             "The node's rules (kube-router's chains, or rules met before kube-network-policies' "
             "queue) drop a connection the policies allow: that traffic fails.", source="netpol-enforcement"),
    CodeInfo("enforcement-not-checked", "info",
             "too many connections to compare; the rest were not checked",
             f"kpa compares at most {MAX_CHECKS} connections with the policies.",
             source="netpol-enforcement"),
    CodeInfo("netpol-fail-open", "info",
             "kube-network-policies is fail-open: unjudged while its program is down",
             "Its queue rules carry `bypass`: when no program listens on the queue, the kernel "
             "accepts the packets it would judge. Enforcement then depends on the program running.",
             source="netpol-enforcement"),
)


def enforcement_findings(ruleset: Ruleset, objects: Any, node_ips: list[str], node: str | None = None) -> list[Any]:
    """`kpa lint` findings for every connection the node enforces differently from the policies.

    Connections checked: between every two pods of which at least one has a
    kube-router firewall chain on this node, on each port the destination declares
    and each numeric port a policy of either pod names. Only the directions this node
    enforces are compared (`compared`): with the other end on another node, the
    source's egress or the destination's ingress alone. On a kube-network-policies
    node, kpa.k8s.kubenetpol.enforcement_findings.
    """
    from kpa.k8s import kubenetpol
    from kpa.k8s.lint import Finding
    from kpa.policy.engine import PolicyEngine

    if kubenetpol.recognised(ruleset):
        return kubenetpol.enforcement_findings(ruleset, objects, node_ips, node, MAX_CHECKS)

    kr = KubeRouterMap.from_ruleset(ruleset, objects.network_policies)
    if not kr.present or not objects.network_policies:
        return []
    engine = PolicyEngine.from_objects(objects)
    local = set(kr.pod_chains.values())
    on_node = on_this_node(ruleset, objects, node_ips)
    pods = [p for p in engine.pods if p.pod_ips and not p.host_network]
    ports_of: dict[str, set[tuple[int, str]]] = {}
    for policy in objects.network_policies:
        numeric = {(pp.port, pp.protocol) for rule in (*policy.ingress, *policy.egress) for pp in rule.ports
                   if isinstance(pp.port, int)}
        ports_of.setdefault(policy.namespace, set()).update(numeric)
    out: list[Any] = []
    checks = 0
    for src in pods:
        for dst in pods:
            if src is dst or not ({f"{src.namespace}/{src.name}", f"{dst.namespace}/{dst.name}"} & local):
                continue
            ports = {(cp.port, cp.protocol) for cp in dst.container_ports}
            ports |= ports_of.get(dst.namespace, set()) | ports_of.get(src.namespace, set())
            s, d = engine.subject(src), engine.subject(dst)
            if s.ip is None or d.ip is None or ipaddress.ip_address(s.ip).version != ipaddress.ip_address(d.ip).version:
                continue
            for port, proto in sorted(ports):
                checks += 1
                if checks > MAX_CHECKS:
                    out.append(Finding("enforcement-not-checked", "info", None,
                                       f"stopped after {MAX_CHECKS} connections; the rest were not compared", None))
                    return out
                intent = engine.decide(s, d, port, proto)
                e = enforced(ruleset, node_ips, s.ip, d.ip, port, proto, kr)
                scope = compared(f"{src.namespace}/{src.name}" in local or on_node(s.ip),
                                 f"{dst.namespace}/{dst.name}" in local or on_node(d.ip))
                ok = intended_here(intent.egress.allowed, intent.ingress.allowed, scope)
                if e.verdict == "unknown" or (e.verdict == "allowed") == ok:
                    continue
                who = f"{s.name} -> {d.name} port {port}/{proto}"
                reason = intent.reason() if scope == "both" else \
                    f"{getattr(intent, scope).reason()}; {ELSEWHERE[scope]}"
                if e.verdict == "allowed":
                    by = f", admitted by {', '.join(e.admitted_by)}" if e.admitted_by else ""
                    out.append(Finding("policy-not-enforced", "error", None,
                                       f"{who}: the policies deny it ({reason}) but the node lets it "
                                       f"through{by}", e.deciding))
                else:
                    out.append(Finding("blocked-without-policy", "error", None,
                                       f"{who}: the policies allow it ({reason}) but the node blocks it "
                                       f"in {e.where}", e.deciding))
    return out


def enforcement_classes(ruleset: Ruleset, kr: KubeRouterMap, ips: Iterable[str | None],
                        node_ips: list[str]) -> dict[str, Any]:
    """Group addresses the node's rules treat alike: same ipsets, same kind of pod chain.

    Two pod addresses fall in one class when they are members of exactly the same
    ipsets and their KUBE-POD-FW chains (if any) jump to the same policy and default
    chains in the same order. kube-router's rules tell pods apart only through those
    (and the per-pod jumps, which select each pod's own chain), so one trace answers
    for every pair of addresses from the same two classes. Node addresses stay alone.
    """
    from kpa.ext.ipset import address_member, set_test
    from kpa.netfilter.packet import PacketSpec as Spec

    chain_of: dict[str, tuple[str, ...]] = {}
    for table in ruleset.tables:
        if table.name != "filter":
            continue
        by_ip: dict[str, str] = {}
        top = table.chains.get("KUBE-ROUTER-FORWARD")
        for rule in top.rules if top is not None else []:
            refs = [c for _, c in rule.chain_refs() if c.startswith("KUBE-POD-FW-")]
            m = re.search(r"-d (\S+?)(?:/\d+)? ", rule.text)
            if refs and m:
                by_ip[m.group(1)] = refs[0]
        for ip, chain_name in by_ip.items():
            chain = table.chains.get(chain_name)
            if chain is None:
                continue
            shape = []
            for rule in chain.rules:
                for _, target in rule.chain_refs():
                    kind = "-d" if " -d " in rule.text else "-s" if " -s " in rule.text else "*"
                    shape.append(f"{kind}{target}")
            chain_of[ip] = tuple(shape)
    # hash:ip sets (kube-router's pod sets) by member, so classing a pod never scans every set.
    host_sets: dict[tuple[int, int], list[str]] = {}
    for name, ipset in ruleset.ipsets.items():
        if ipset.type == "hash:ip" and "netmask" not in ipset.options:
            version = 6 if ipset.family == "inet6" else 4
            for member in ipset.members:
                host_sets.setdefault((version, member.parts[0][0]), []).append(name)
    # The rest, in the dump's order (hash:ip sets are answered by host_sets).
    other_sets = [(name, ipset) for name, ipset in ruleset.ipsets.items()
                  if not (ipset.type == "hash:ip" and "netmask" not in ipset.options)]
    out: dict[str, Any] = {}
    for addr in ips:
        if addr is None or addr in out:
            continue
        if addr in node_ips:
            out[addr] = ("node", addr)
            continue
        version = ipaddress.ip_address(addr).version
        family = Family.IPV6 if version == 6 else Family.IPV4
        st = Spec(family=family, src=addr, dst=addr).initial_state()
        value = int(ipaddress.ip_address(addr))
        members = list(host_sets.get((version, value), ()))
        for name, ipset in other_sets:
            if ipset.type == "hash:net" and (ipset.family == "inet6") == (version == 6):
                found = address_member(ipset, value)
                if found is None:
                    found = any(r is True for _, r in set_test(ipset, st, ["src"], False, ruleset.ipsets))
                if found:
                    members.append(name)
            elif ipset.family is None or (ipset.family == "inet6") == (version == 6):
                members.append(f"{name}?{addr}")  # other types: keep the address alone
        # Default-deny's CIDR rules in KUBE-NWPLCY-TAIL tell addresses inside the node's pod CIDR apart.
        parsed = ipaddress.ip_address(addr)
        for cidr in kr.default_deny_cidrs:
            net = ipaddress.ip_network(cidr, strict=False)
            if net.version == version and parsed in net:
                members.append(f"cidr:{cidr}")
        out[addr] = (tuple(sorted(members)), chain_of.get(addr))
    return out


# -- the enforced matrix: per class pair, from each pod chain's half of the trace ----------

_TOP = ("KUBE-ROUTER-FORWARD", "KUBE-ROUTER-INPUT", "KUBE-ROUTER-OUTPUT")
_TARGET = re.compile(r" -([jg]) (\S+)")
_SET_NAME = re.compile(r"--match-set (\S+)")
_NETPOL_MARK, _OK_MARK = 0x10000, 0x20000  # kube-router's "a policy admitted it" and "netpol ok" bits
_MARK_TARGET = re.compile(r" -j MARK (--[a-z-]+) (\S+)")
_MARK_MATCH = re.compile(r" -m mark (?:! )?--mark (\S+)")
_COMMENT = re.compile(r' -m comment --comment (?:"(?:[^"\\]|\\.)*"|\S+)')
_HEAD = re.compile(r"^-[AI] \S+(?: \d+)?")
_SEGMENT_TARGETS = {"RETURN", "ACCEPT", "DROP", "REJECT", "MARK", "NFLOG", "LOG"}


def _target(rule: Any) -> tuple[str, str] | None:
    found = _TARGET.findall(rule.text)
    return (found[-1][0], found[-1][1]) if found else None


@dataclass
class _Layout:
    """One filter table in kube-router's layout, checked so that a pod -> pod trace splits.

    A connection between two local pods walks KUBE-ROUTER-FORWARD and meets the
    source's KUBE-POD-FW chain (through the jumps pinned to its source address) and the
    destination's (through those pinned to its destination address), one after the
    other. `_layout` checks, rule by rule, what makes that walk the conjunction of two
    independent halves:

    * every jump into a pod chain is in KUBE-ROUTER-FORWARD/INPUT/OUTPUT and pins exactly
      one of source or destination address, and each pod chain's jumps are contiguous
      in KUBE-ROUTER-FORWARD (so one chain is wholly met before the other);
    * the chains a pod chain reaches (its policy chains, COMMON, DEFAULT) are reached
      from pod chains only, use only jumps, RETURN, ACCEPT, DROP, REJECT, MARK, NFLOG and
      LOG, and touch or test marks only through bit 0x10000;
    * each pod chain ends with the unconditional "clear 0x10000, set 0x20000" pair, so
      whatever happened inside, the packet leaves it with the same mark;
    * no other rule (except KUBE-ROUTER-INPUT's, which forwarded packets never meet)
      sets bit 0x10000 or 0x20000, and every table is in iptables syntax.

    Then a pod chain's answer does not depend on whether the other chain ran first,
    the packet leaves both with the same state, and a REJECT or DROP in the first
    ends the walk. Each half is traced through the whole ruleset minus the other
    direction's per-pod jumps (`without`), so it sees every other rule of the node.
    A half that ACCEPTs inside a pod chain, forks, or rewrites the packet is not
    combined: that pair is traced whole.
    """

    out_chain: dict[int, str]  # source address -> pod chain of its "out" jumps
    in_chain: dict[int, str]  # destination address -> pod chain of its "in" jumps
    position: dict[tuple[str, str], int]  # (pod chain, "in"|"out") -> first jump in KUBE-ROUTER-FORWARD
    segment: set[str]  # pod chains and every chain they reach
    table: Any
    outside_sets: frozenset[str]
    _reach: dict[tuple[str, str, int], frozenset[str]] = field(default_factory=dict)
    _interned: dict[frozenset[str], frozenset[str]] = field(default_factory=dict)

    def reach_sets(self, chain: str, direction: str, own: int) -> frozenset[str]:
        """Sets a packet of `direction` through `chain` can test (rules pinned to the pod's
        own address on the other side cannot match and are left out)."""
        key = (chain, direction, own)
        cached = self._reach.get(key)
        if cached is not None:
            return cached
        from kpa.netfilter.index import pinned

        names: set[str] = set()
        seen: set[str] = set()
        todo = [chain]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            for rule in self.table.chains[name].rules:
                if name == chain and pinned(rule, "dst" if direction == "out" else "src") == own:
                    continue
                names.update(_SET_NAME.findall(rule.text))
                todo.extend(c for _, c in rule.chain_refs())
        out = frozenset(names) | self.outside_sets
        # Pods of one kind reach the same sets: one object for all of them (callers key on its id).
        out = self._reach[key] = self._interned.setdefault(out, out)
        return out


def _layout(ruleset: Ruleset, table: Any) -> _Layout | None:
    from kpa.netfilter.index import pinned

    if any(not t.source.startswith("iptables") for t in ruleset.tables):
        return None
    pod_chains = {n for n in table.chains if n.startswith("KUBE-POD-FW-")}
    if "KUBE-ROUTER-FORWARD" not in table.chains or not pod_chains:
        return None
    # The chains pod chains reach.
    segment: set[str] = set()
    todo = list(pod_chains)
    while todo:
        name = todo.pop()
        if name in segment:
            continue
        chain = table.chains.get(name)
        if chain is None:
            return None
        segment.add(name)
        todo.extend(c for rule in chain.rules for _, c in rule.chain_refs())
    out_chain: dict[int, str] = {}
    in_chain: dict[int, str] = {}
    position: dict[tuple[str, str], int] = {}
    outside_sets: set[str] = set()
    for t in ruleset.tables:
        for chain in _reachable(t):
            inside = t is table and chain.name in segment
            for rule in chain.rules:
                target = _target(rule)
                refs = [c for _, c in rule.chain_refs()]
                if t is table and any(c in segment for c in refs) and not inside:
                    # Only kube-router's top chains enter the segment, and only into pod chains.
                    if chain.name not in _TOP or any(c not in pod_chains for c in refs):
                        return None
                    src, dst = pinned(rule, "src"), pinned(rule, "dst")
                    if (src is None) == (dst is None):
                        return None
                    direction, addr, by = ("out", src, out_chain) if src is not None else ("in", dst, in_chain)
                    assert addr is not None
                    if by.setdefault(addr, refs[0]) != refs[0]:
                        return None
                    if chain.name == "KUBE-ROUTER-FORWARD":
                        position.setdefault((refs[0], direction), rule.index)
                    continue
                if inside:
                    if target is None or target[0] != "j" or (target[1] not in _SEGMENT_TARGETS
                                                               and target[1] not in segment):
                        return None
                    last = chain.name in pod_chains and rule is chain.rules[-1]
                    if not _segment_rule_ok(rule, last):
                        return None
                    continue
                outside_sets.update(_SET_NAME.findall(rule.text))
                if chain.name != "KUBE-ROUTER-INPUT" and not _outside_rule_ok(rule):
                    return None
    # Each pod chain's jumps contiguous in KUBE-ROUTER-FORWARD, and every pod chain ends alike.
    order = [c for r in table.chains["KUBE-ROUTER-FORWARD"].rules for _, c in r.chain_refs() if c in pod_chains]
    runs = [c for i, c in enumerate(order) if i == 0 or order[i - 1] != c]
    if len(runs) != len(set(runs)):
        return None
    if not all(_ends_alike(table.chains[name].rules) for name in pod_chains):
        return None
    return _Layout(out_chain, in_chain, position, segment, table, frozenset(outside_sets))


def _marks(text: str) -> tuple[list[int], tuple[int, int] | None, str] | None:
    """A rule's mark matches (their masks), its MARK update (bits cleared, bits flipped, as the
    kernel applies it) and the rest of its text; None if kpa cannot read them."""
    from kpa.ext.base import Option, OptionError, parse_value_mask
    from kpa.ext.mark import mark_update

    text = _COMMENT.sub("", text)
    try:
        masks = [parse_value_mask(arg)[1] for arg in _MARK_MATCH.findall(text)]
        m = _MARK_TARGET.search(text)
        update = mark_update(Option(m.group(1), [m.group(2)])) if m else None
    except (OptionError, ValueError):
        return None
    return masks, update, _MARK_TARGET.sub("", _MARK_MATCH.sub("", text))


def _reachable(table: Any) -> list[Any]:
    """The table's chains a packet can enter: base chains and what they jump or go to."""
    seen: dict[str, Any] = {}
    todo = [c for c in table.chains.values() if c.is_base]
    while todo:
        chain = todo.pop()
        if chain.name in seen:
            continue
        seen[chain.name] = chain
        for rule in chain.rules:
            for _, name in rule.chain_refs():
                target = table.chains.get(name)
                if target is not None and name not in seen:
                    todo.append(target)
    return list(seen.values())


def _segment_rule_ok(rule: Any, last: bool) -> bool:
    """A rule of a pod chain or a chain it reaches tests and changes the mark only through bit
    0x10000 (the pod chain's last rule: sets 0x20000)."""
    if "mark" not in rule.text.lower():
        return True
    read = _marks(rule.text)
    if read is None:
        return False
    masks, update, rest = read
    if "mark" in rest.lower() or any(mask != _NETPOL_MARK for mask in masks):
        return False
    if update is None:
        return True
    zero, xor = update
    return (zero, xor) == (_OK_MARK, _OK_MARK) if last else not (zero | xor) & ~_NETPOL_MARK


def _outside_rule_ok(rule: Any) -> bool:
    """A rule outside the pod chains leaves both kube-router bits alone (reading them is fine:
    every half agrees on them)."""
    if "mark" not in rule.text.lower():
        return True
    read = _marks(rule.text)
    if read is None:
        return False
    _, update, rest = read
    if re.search(r" -j (CONNMARK|TPROXY)\b", rest):
        return False
    return update is None or not (update[0] | update[1]) & (_NETPOL_MARK | _OK_MARK)


def _ends_alike(rules: list[Any]) -> bool:
    """A pod chain's last two rules clear 0x10000 and set 0x20000, whatever the packet."""
    if len(rules) < 2:
        return False
    for rule, effect in zip(rules[-2:], ((_NETPOL_MARK, 0), (_OK_MARK, _OK_MARK)), strict=True):
        read = _marks(rule.text)
        if read is None or read[0] or read[1] != effect or _HEAD.sub("", read[2]).strip():
            return False
    return True


def _without(ruleset: Ruleset, drop: str) -> Ruleset:
    """The ruleset without the per-pod jumps that pin `drop` ("src" or "dst")."""
    import dataclasses

    from kpa.netfilter.index import pinned

    tables = []
    for t in ruleset.tables:
        if t.name == "filter" and any(n in t.chains for n in _TOP):
            chains = dict(t.chains)
            for name in _TOP:
                chain = chains.get(name)
                if chain is not None:
                    kept = [r for r in chain.rules
                            if not (any(c.startswith("KUBE-POD-FW-") for _, c in r.chain_refs())
                                    and pinned(r, drop) is not None)]
                    chains[name] = dataclasses.replace(chain, rules=kept, _index=None)
            t = dataclasses.replace(t, chains=chains)
        tables.append(t)
    return Ruleset(tables, list(ruleset.warnings), ruleset.ipsets)


@dataclass
class _Half:
    """One pod chain's part of a pod -> pod trace."""

    passed: bool  # the chain let it through and the walk went on to accept it
    enforced: Enforced  # the half's own answer (used as is when it denies)
    hop: Hop | None  # its deciding rule
    side: str  # "src" for the source's chain (egress), "dst" for the destination's (ingress)
    marks: list[Hop]  # hops in policy chains and KUBE-NWPLCY-DEFAULT
    admitted: list[str]


def _half(result: TraceResult, kr: KubeRouterMap, layout: _Layout, side: str) -> _Half | None:
    """What one half says, or None when it cannot be combined (see `_Layout`)."""
    outcomes = result.outcomes
    if not outcomes or result.truncated or any(o.state.dnat is not None or o.state.snat is not None
                                               for o in outcomes):
        return None
    e, hop = _from_result_hop(result, kr)
    if all(o.verdict != "ACCEPT" for o in outcomes):
        # Denied inside the segment (a pod chain's REJECT): the walk ends there.
        if all(o.path and o.path[-1].chain in layout.segment and o.ended_in == "FORWARD" for o in outcomes):
            return _Half(False, e, hop, side, [], [])
        return None
    if len(outcomes) != 1:
        return None
    path = outcomes[0].path
    if any(h.chain in layout.segment and h.text.endswith("-j ACCEPT") for h in path):
        return None  # accepted inside a pod chain: the other chain would not run
    marks = [h for h in path if h.chain in kr.policy_chains or h.chain == "KUBE-NWPLCY-DEFAULT"]
    return _Half(True, e, hop, side, marks, _admitted(path, kr))


def _compose(first: _Half, second: _Half, kr: KubeRouterMap) -> tuple[Enforced, Hop | None, str | None] | None:
    """The whole walk's answer from the answers of the chain met first and the one met second,
    its deciding hop, and which end's chain that hop is in when it is in one."""
    if not first.passed:
        return first.enforced, first.hop, first.side
    if not second.passed:
        return second.enforced, second.hop, second.side
    if first.marks or second.marks:
        hop: Hop | None = (second.marks or first.marks)[-1]
    else:
        # Neither chain marked (cannot pass kube-router's reject rule): the common accept decides.
        if first.enforced.deciding != second.enforced.deciding:
            return None
        hop = second.hop
    deciding = (f"{hop.location}: {hop.text}" if hop.location else hop.text) if hop is not None else None
    where = kr.describe_hop(hop) if hop is not None else None
    return Enforced("allowed", "ACCEPT", deciding, where, None,
                    tuple(dict.fromkeys([*first.admitted, *second.admitted]))), hop, None


def _pod_jumps(ruleset: Ruleset) -> tuple[dict[str, str], dict[str, str], dict[tuple[str, str], int]]:
    """Address -> the pod chain its "out" jumps and its "in" jumps lead to; (chain, "out"|"in") ->
    the position of its first such jump in KUBE-ROUTER-FORWARD."""
    from kpa.netfilter.index import pinned

    out: dict[str, str] = {}
    into: dict[str, str] = {}
    position: dict[tuple[str, str], int] = {}
    for table in ruleset.tables:
        if table.name != "filter":
            continue
        version = 6 if table.family is Family.IPV6 else 4
        for name in _TOP:
            chain = table.chains.get(name)
            for rule in chain.rules if chain is not None else ():
                refs = [c for _, c in rule.chain_refs() if c.startswith("KUBE-POD-FW-")]
                if not refs:
                    continue
                for field_name, by, direction in (("src", out, "out"), ("dst", into, "in")):
                    value = pinned(rule, field_name)
                    if value is not None:
                        by.setdefault(str(ipaddress.ip_address(value) if version == 4
                                          else ipaddress.IPv6Address(value)), refs[0])
                        if name == "KUBE-ROUTER-FORWARD":
                            position.setdefault((refs[0], direction), rule.index)
    return out, into, position


def on_this_node(ruleset: Ruleset, objects: Any, node_ips: list[str]) -> Callable[[str], bool]:
    """Whether a connection to or from an address passes this node's kube-router rules: a node
    address, a pod with a firewall chain here (a KUBE-POD-FW-* jump pins it), a member of
    kube-router-local-pods, or a pod (in `objects`, may be None) of the Node owning one of
    `node_ips`. Rules without kube-router's pod jumps: every address counts."""
    out_of, into, _ = _pod_jumps(ruleset)
    if not (out_of or into):
        return lambda addr: True  # no per-pod chains: nothing says whose pods are here
    local = set(out_of) | set(into) | set(node_ips)
    for name in (LOCAL_PODS, f"inet6:{LOCAL_PODS}"):
        ipset = ruleset.ipsets.get(name)
        for member in ipset.members if ipset is not None else ():
            part = member.parts[0] if member.parts else None
            value = part[0] if isinstance(part, tuple) else part
            if isinstance(value, int):
                v6 = name.startswith("inet6:")
                local.add(str(ipaddress.IPv6Address(value) if v6 else ipaddress.IPv4Address(value)))
    if objects is not None:
        mine = set(node_ips)
        names = {n.name for n in objects.nodes if set(n.internal_ips) & mine or set(n.external_ips) & mine}
        local |= {ip for p in objects.pods if p.node_name in names for ip in p.pod_ips}

    def here(addr: str) -> bool:
        if addr in local:
            return True
        try:
            return str(ipaddress.ip_address(addr)) in local
        except ValueError:
            return False

    return here


#: What a cell with one end on this node says about the direction the other end's node enforces.
ELSEWHERE = {
    "egress": "this node enforces the source's egress only: the destination's ingress is enforced on the "
              "destination's node",
    "ingress": "this node enforces the destination's ingress only: the source's egress is enforced on the "
               "source's node",
}


def compared(src_here: bool, dst_here: bool) -> str:
    """The directions of the policies this node's rules enforce for a connection: "both" when both ends
    are here (or neither, when nothing is traced), "egress" when only the source is, "ingress" when only
    the destination is (the other end's node enforces the other direction)."""
    if src_here == dst_here:
        return "both"
    return "egress" if src_here else "ingress"


def intended_here(egress_ok: bool, ingress_ok: bool, scope: str) -> bool:
    """The part of the policies' answer this node enforces (`compared`'s scope)."""
    if scope == "egress":
        return egress_ok
    if scope == "ingress":
        return ingress_ok
    return egress_ok and ingress_ok


NOT_HERE = Enforced("unknown", "-", None, "neither end is on this node (a node address, a pod with a kube-router "
                    "firewall chain here, or a pod of the node with --node-ip): its rules never see this connection")


class EnforcedMatrix:
    """The node's answer for every (source, target) address pair, computed per pair of classes.

    Addresses fall in the classes of `enforcement_classes`; each pair of classes is
    answered once, for its first pair of distinct addresses (sources in order, then
    targets). Between two local pods, when the rules pass `_layout`'s checks, the answer
    combines two half traces, each shared by every pair that looks alike to that
    half: the source's chain sees the destination only through the ipsets it tests,
    and the destination's chain the source likewise. Other pairs are traced whole.

    A rule of a pod's own chain that decided (its REJECT, say) is named for each pod:
    the same rule of that pod's chain, which has the same rules (same class).
    """

    def __init__(self, ruleset: Ruleset, kr: KubeRouterMap, node_ips: list[str], sources: list[str | None],
                 targets: list[str | None], port: int, protocol: str, split: bool = True,
                 here: Callable[[str], bool] | None = None) -> None:
        self.ruleset, self.kr, self.node_ips = ruleset, kr, node_ips
        # Connections with neither end on this node never pass its rules: one answer, unknown.
        on_node = here or on_this_node(ruleset, None, node_ips)
        self.src_here = [a is not None and on_node(a) for a in sources]
        self.dst_here = [a is not None and on_node(a) for a in targets]
        self.not_here = NOT_HERE
        self._near = [j for j, h in enumerate(self.dst_here) if h]
        self._away = [j for j, h in enumerate(self.dst_here) if not h]
        self.port, self.protocol = port, protocol
        classes = enforcement_classes(ruleset, kr, [*sources, *targets], node_ips)
        ids: dict[Any, int] = {}
        self.classes: list[Any] = []

        def class_id(addr: str | None) -> int:
            if addr is None:
                return -1
            key = classes[addr]
            found = ids.get(key)
            if found is None:
                found = ids[key] = len(self.classes)
                self.classes.append(key)
            return found

        self.src_class = [class_id(a) for a in sources]
        self.dst_class = [class_id(a) for a in targets]
        self.sources, self.targets, self.split, self._classes = sources, targets, split, classes
        out_of, into, position = _pod_jumps(ruleset)
        self.src_chain = [out_of.get(a) if a is not None else None for a in sources]
        self.dst_chain = [into.get(a) if a is not None else None for a in targets]
        # Where each end's jumps are in KUBE-ROUTER-FORWARD: which pod chain a connection meets first.
        self.src_pos = [position.get((c, "out")) if c is not None else None for c in self.src_chain]
        self.dst_pos = [position.get((c, "in")) if c is not None else None for c in self.dst_chain]
        self.full_traces = 0
        self.half_traces = 0
        self._layouts: dict[int, _Layout | None] = {}
        self._without: dict[str, Ruleset] = {}
        self._halves: dict[tuple[Any, ...], _Half | None] = {}
        self._seen: dict[tuple[int, Any], tuple[str, ...]] = {}
        self._plain: dict[Any, frozenset[str]] = {}
        self._pod_rules: dict[tuple[int, str], Enforced] = {}
        #: (source class, target class, source chain met first) -> the answer, and where its
        #: deciding rule is when that is a rule of the source's or the target's own pod chain.
        self.answers: dict[tuple[int, int, bool | None], tuple[Enforced, tuple[str, str, int] | None]] = {}

    @property
    def traces(self) -> int:
        return self.full_traces + self.half_traces

    def partial(self, i: int) -> tuple[str, list[int]]:
        """The targets j for which this node enforces only one direction of sources[i] -> targets[j],
        and which one (`compared`): the source's egress towards targets elsewhere when the source is
        here, else the targets' ingress from it when they are here."""
        if self.src_here[i]:
            return "egress", self._away
        return "ingress", self._near

    def answer(self, i: int, j: int) -> Enforced | None:
        """The node's answer for sources[i] -> targets[j] (None: no address, or the same one)."""
        s, d = self.sources[i], self.targets[j]
        if s is None or d is None or s == d:
            return None  # a pod reaching its own address never leaves its network namespace
        if not (self.src_here[i] or self.dst_here[j]):
            return self.not_here
        sp, dp = self.src_pos[i], self.dst_pos[j]
        key = (self.src_class[i], self.dst_class[j], sp < dp if sp is not None and dp is not None else None)
        found = self.answers.get(key)
        if found is None:
            found = self.answers[key] = self._compute(i, j, s, d)
        e, own = found
        if own is None:
            return e
        side, rep_chain, position = own
        chain = self.src_chain[i] if side == "src" else self.dst_chain[j]
        if chain == rep_chain or chain is None:
            return e
        cached = self._pod_rules.get((id(e), chain))
        if cached is None:
            moved = self._same_rule(e, rep_chain, chain, position)
            if moved is None:
                # That pod's chain is not laid out like its class's: trace this connection alone.
                self.full_traces += 1
                return _from_result(_trace(self.ruleset, self.node_ips, s, d, self.port, self.protocol,
                                           s in self.node_ips), self.kr)
            cached = self._pod_rules[(id(e), chain)] = moved
        return cached

    def row(self, i: int) -> list[Enforced | None]:
        """[answer(i, j) for every target j], without a call per cell where the answer is known."""
        s, cs, sp, s_chain = self.sources[i], self.src_class[i], self.src_pos[i], self.src_chain[i]
        if s is None:
            return [None] * len(self.targets)
        answers, pod_rules, answer = self.answers, self._pod_rules, self.answer
        here, dst_here, not_here = self.src_here[i], self.dst_here, self.not_here
        out: list[Enforced | None] = []
        append = out.append
        for j, (d, cd, dp, d_chain) in enumerate(zip(self.targets, self.dst_class, self.dst_pos, self.dst_chain,
                                                     strict=True)):
            if not (here or dst_here[j]) and d is not None and d != s:
                append(not_here)
                continue
            found = answers.get((cs, cd, sp < dp if sp is not None and dp is not None else None))
            if found is None or d is None or d == s:
                append(answer(i, j))
                continue
            e, own = found
            if own is not None:
                chain = s_chain if own[0] == "src" else d_chain
                if chain is not None and chain != own[1]:
                    moved = pod_rules.get((id(e), chain))
                    append(moved if moved is not None else answer(i, j))
                    continue
            append(e)
        return out

    def _compute(self, i: int, j: int, s: str, d: str) -> tuple[Enforced, tuple[str, str, int] | None]:
        src_is_node = s in self.node_ips
        side: str | None = None
        if self.split and not src_is_node and d not in self.node_ips:
            composed = self._split(s, d, self._classes)
        else:
            composed = None
        if composed is not None:
            e, hop, side = composed
        else:
            self.full_traces += 1
            e, hop = _from_result_hop(_trace(self.ruleset, self.node_ips, s, d, self.port, self.protocol,
                                             src_is_node), self.kr)
            if hop is not None and hop.chain == self.src_chain[i]:
                side = "src"
            elif hop is not None and hop.chain == self.dst_chain[j]:
                side = "dst"
        if hop is None or side is None or hop.table != "filter" or not hop.chain.startswith("KUBE-POD-FW-"):
            return e, None
        chain = self._chain(hop)
        position = next((k for k, r in enumerate(chain.rules) if r.index == hop.rule), None) \
            if chain is not None else None
        return e, ((side, hop.chain, position) if position is not None else None)

    def _chain(self, hop: Hop) -> Any:
        for table in self.ruleset.tables:
            if table.name == "filter" and table.family.value == hop.family:
                return table.chains.get(hop.chain)
        return None

    def _same_rule(self, e: Enforced, rep_chain: str, chain_name: str, position: int) -> Enforced | None:
        """`e` with its deciding rule moved to the same rule of another pod's chain (of the same class)."""
        for table in self.ruleset.tables:
            rep, chain = table.chains.get(rep_chain), table.chains.get(chain_name)
            if table.name != "filter" or rep is None or chain is None:
                continue
            if len(rep.rules) == len(chain.rules) and \
                    _target(rep.rules[position]) == _target(chain.rules[position]):
                rule = chain.rules[position]
                deciding = f"{rule.location}: {rule.text}" if rule.location else rule.text
                who = self.kr.pod_chains.get(chain_name)
                where = f"pod {who}'s firewall chain {chain_name}" if who else f"filter/{chain_name}"
                return Enforced(e.verdict, e.outcome, deciding, where, e.dnat, e.admitted_by)
        return None

    def _layout_for(self, version: int) -> _Layout | None:
        if version not in self._layouts:
            family = Family.IPV6 if version == 6 else Family.IPV4
            table = self.ruleset.table(family, "filter")
            self._layouts[version] = _layout(self.ruleset, table) if table is not None else None
        return self._layouts[version]

    def _split(self, s: str, d: str, classes: dict[str, Any]) -> tuple[Enforced, Hop | None, str | None] | None:
        sa, da = ipaddress.ip_address(s), ipaddress.ip_address(d)
        if sa.version != da.version:
            return None
        layout = self._layout_for(sa.version)
        if layout is None:
            return None
        s_chain, d_chain = layout.out_chain.get(int(sa)), layout.in_chain.get(int(da))
        if s_chain is None or d_chain is None or s_chain == d_chain:
            return None
        out_pos, in_pos = layout.position.get((s_chain, "out")), layout.position.get((d_chain, "in"))
        if out_pos is None or in_pos is None:
            return None
        egress = self._half_for("out", s, d, classes[s], classes[d],
                                layout.reach_sets(s_chain, "out", int(sa)), layout)
        if egress is None:
            return None
        ingress = self._half_for("in", s, d, classes[d], classes[s],
                                 layout.reach_sets(d_chain, "in", int(da)), layout)
        if ingress is None:
            return None
        first, second = (egress, ingress) if out_pos < in_pos else (ingress, egress)
        return _compose(first, second, self.kr)

    def _half_for(self, direction: str, s: str, d: str, own: Any, other: Any, reach: frozenset[str],
                  layout: _Layout) -> _Half | None:
        # The other end matters to this half only through the sets this half can test
        # (its class is its ipsets; "NAME?ADDR" stands for a set whose lookups keep it alone).
        seen_key = (id(reach), other)
        seen = self._seen.get(seen_key)
        if seen is None:
            plain = self._plain.get(other)
            if plain is None:
                plain = self._plain[other] = frozenset(m for m in other[0]
                                                       if "?" not in m and m in self.ruleset.ipsets)
            # "NAME?ADDR" stands for a set whose lookups keep the address alone; other entries
            # that are not set names (default-deny's "cidr:…") are rules' address tests: kept.
            odd = tuple(m for m in other[0] if ("?" in m and m.split("?", 1)[0] in reach)
                        or ("?" not in m and m not in self.ruleset.ipsets))
            seen = self._seen[seen_key] = (*sorted(plain & reach), *odd)
        key = (direction, own, seen)
        if key in self._halves:
            return self._halves[key]
        ruleset = self._without.get(direction)
        if ruleset is None:
            # The egress half never meets destination jumps, the ingress half never source ones.
            ruleset = self._without[direction] = _without(self.ruleset, "dst" if direction == "out" else "src")
        self.half_traces += 1
        result = _trace(ruleset, self.node_ips, s, d, self.port, self.protocol)
        half = self._halves[key] = _half(result, self.kr, layout, "src" if direction == "out" else "dst")
        return half
