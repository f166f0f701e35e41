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
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kpa.findings import CodeInfo, register
from kpa.netfilter.engine import Outcome, trace
from kpa.netfilter.model import Family, Ruleset
from kpa.netfilter.packet import Hop, PacketSpec, QueueDecider, TraceContext, node_local_addresses

LOCAL_PODS = "kube-router-local-pods"  # --netpol-default-deny: local pods whose chain is programmed
TAIL = "KUBE-NWPLCY-TAIL"
_POD_JUMP = re.compile(r"^(?P<ns>[^/\s]+)/(?P<pod>\S+) (?P<dir>in|out)$")
_POLICY_COMMENT = re.compile(r"^(?P<ns>[^/\s]+)/(?P<name>\S+) (?P<what>policy|ingress|egress)\b")
FAMILY = {4: "IPv4", 6: "IPv6"}


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
                    targets = [c for _, c in rule.chain_refs()]
                    comment = rule.comment or ""
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
        return head + (f"\n  deciding rule: {self.deciding}" if self.deciding else "")


def _deciding(outcome: Outcome, kr: KubeRouterMap) -> tuple[str | None, str | None]:
    path = outcome.path
    if not path:
        return None, None
    if outcome.verdict == "ACCEPT":
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
    loc = f"{hop.location}: {hop.text}" if hop.location else hop.text
    return loc, kr.describe_hop(hop)


def enforced(ruleset: Ruleset, node_ips: list[str], src: str, dst: str, port: int, protocol: str,
             kr: KubeRouterMap | None = None, src_is_node: bool = False,
             queue_decider: QueueDecider | None = None) -> Enforced:
    """Trace a new connection src -> dst:port through the node's rules (interfaces left open)."""
    kr = kr or KubeRouterMap()
    family = Family.IPV6 if ipaddress.ip_address(dst).version == 6 else Family.IPV4
    spec = PacketSpec(family=family, src=src, dst=dst, proto=protocol.lower(), dport=port,
                      origin="output" if src_is_node else "prerouting")
    result = trace(ruleset, spec, TraceContext(local=node_local_addresses(node_ips), queue_decider=queue_decider))
    # Outcomes that differ only in what an unmodelled rule did (e.g. whether NFLOG's rate limit was
    # exceeded) but agree on the verdict still give a known answer. A packet left to a userspace
    # program (QUEUE, no decider) has no known answer.
    verdicts = {("allowed" if o.verdict == "ACCEPT" else "unknown" if o.verdict == "QUEUE" else "denied")
                for o in result.outcomes}
    outcomes = sorted({o.verdict for o in result.outcomes})
    first = result.outcomes[0] if result.outcomes else None
    deciding, where = _deciding(first, kr) if first is not None else (None, None)
    verdict = verdicts.pop() if len(verdicts) == 1 else "unknown"
    admitted: list[str] = []
    if first is not None and first.verdict == "ACCEPT":
        for hop in first.path:
            if hop.chain in kr.policy_chains and hop.text.endswith("-j RETURN"):
                admitted.append(f"policy {kr.policy_chains[hop.chain]}")
            elif hop.chain == "KUBE-NWPLCY-DEFAULT":
                admitted.append("no isolating policy (KUBE-NWPLCY-DEFAULT)")
            elif hop.text.endswith("-j ACCEPT") and (hop.chain == "KUBE-NWPLCY-COMMON"
                                                      or hop.comment == "from local node"):
                admitted.append(f"kube-router's {hop.comment!r} rule")
    return Enforced(verdict, "|".join(outcomes), deciding, where, first.dnat_text() if first else None,
                    tuple(dict.fromkeys(admitted)))


# -- intent versus enforcement -------------------------------------------------------

#: How many connections `enforcement_findings` traces at most (each is one trace).
MAX_CHECKS = 20000

register(
    CodeInfo("policy-not-enforced", "error",
             "the node lets a connection through that the NetworkPolicies deny",
             "kube-router's chains on this node admit a connection the policies deny: isolation "
             "is not in force.", source="kube-router"),
    CodeInfo("blocked-without-policy", "error",
             "the node blocks a connection that the NetworkPolicies allow",
             "kube-router's chains on this node drop a connection the policies allow: that "
             "traffic fails.", source="kube-router"),
    CodeInfo("enforcement-not-checked", "info",
             "too many connections to compare; the rest were not checked",
             f"kpa compares at most {MAX_CHECKS} connections with the policies.",
             source="kube-router"),
)


def enforcement_findings(ruleset: Ruleset, objects: Any, node_ips: list[str]) -> list[Any]:
    """`kpa lint` findings for every connection the node enforces differently from the policies.

    Connections checked: between every two pods of which at least one has a
    kube-router firewall chain on this node, on each port the destination declares
    and each numeric port a policy of either pod names.
    """
    from kpa.k8s.lint import Finding
    from kpa.policy.engine import PolicyEngine

    kr = KubeRouterMap.from_ruleset(ruleset, objects.network_policies)
    if not kr.present or not objects.network_policies:
        return []
    engine = PolicyEngine.from_objects(objects)
    local = set(kr.pod_chains.values())
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
                if e.verdict == "unknown" or (e.verdict == "allowed") == intent.allowed:
                    continue
                who = f"{s.name} -> {d.name} port {port}/{proto}"
                if e.verdict == "allowed":
                    by = f", admitted by {', '.join(e.admitted_by)}" if e.admitted_by else ""
                    out.append(Finding("policy-not-enforced", "error", None,
                                       f"{who}: the policies deny it ({intent.reason()}) but the node lets it "
                                       f"through{by}", e.deciding))
                else:
                    out.append(Finding("blocked-without-policy", "error", None,
                                       f"{who}: the policies allow it ({intent.reason()}) but the node blocks it "
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
    from kpa.ext.ipset import set_test
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
        members = list(host_sets.get((version, int(ipaddress.ip_address(addr))), ()))
        for name, ipset in ruleset.ipsets.items():
            if ipset.type == "hash:ip" and "netmask" not in ipset.options:
                continue  # answered by host_sets
            if ipset.type == "hash:net" and (ipset.family == "inet6") == (version == 6):
                if any(r is True for _, r in set_test(ipset, st, ["src"], False, ruleset.ipsets)):
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
