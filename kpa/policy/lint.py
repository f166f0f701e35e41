"""Mistakes in NetworkPolicies: `kpa policy lint` (and `kpa lint` when policies are given).

Each finding names its code, severity, the object (NS/NAME) and the FILE:LINE of the
policy or rule in the objects file.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from kpa.findings import CodeInfo, Finding, ObjectRef, register
from kpa.k8s.netpol import NetworkPolicy, Peer, PolicyPort, PolicyRule
from kpa.k8s.objects import ClusterObjects, Pod
from kpa.policy.engine import Direction, PolicyEngine
from kpa.policy.matrix import _Index

Severity = Literal["error", "warning", "info"]
SEVERITY_RANK: dict[str, int] = {"error": 0, "warning": 1, "info": 2}

#: Every code `policy lint` can report, with its severity and meaning.
CODES: dict[str, tuple[Severity, str]] = {
    "policy-selects-no-pods": (
        "warning", "the policy's podSelector selects no pod in its namespace"),
    "peer-selects-no-pods": (
        "warning", "a from/to peer selects no pod, so it admits nothing"),
    "peer-selects-no-namespace": (
        "warning", "a peer's namespaceSelector selects no namespace"),
    "named-port-not-declared": (
        "warning", "a named port that no pod the rule can reach declares (by name and protocol)"),
    "ipblock-service-address": (
        "warning", "an ipBlock holds Service addresses, which never match: DNAT comes first"),
    "dns-egress-blocked": (
        "warning", "egress isolation leaves pods without DNS to the cluster DNS Service"),
    "redundant-rule": (
        "warning", "a rule admits nothing that another rule of the same policy does not"),
    "duplicate-policy": (
        "warning", "two policies in one namespace have the same spec"),
    "namespace-not-isolated": (
        "info", "no policy isolates any pod of the namespace (off unless asked for)"),
}
DEFAULT_DNS = ("kube-system", "kube-dns")
register(*(CodeInfo(code, sev, summary, source="networkpolicy") for code, (sev, summary) in CODES.items()))


@dataclass(frozen=True)
class PolicyFinding:
    code: str
    severity: Severity
    object: str  # NS/NAME (a namespace's name for namespace findings)
    message: str
    location: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "object": self.object,
            "message": self.message,
            "location": self.location,
        }


def _finding(code: str, obj: str, message: str, location: str | None) -> PolicyFinding:
    return PolicyFinding(code, CODES[code][0], obj, message, location)


def _at(policy: NetworkPolicy, line: int | None) -> str | None:
    if policy.source is None:
        return None
    return f"{policy.source}:{line if line is not None else policy.line}"


def _class_pods(bits: int) -> Iterator[int]:
    while bits:
        low = bits & -bits
        yield low.bit_length() - 1
        bits ^= low


def _rule_destinations(
    index: _Index, policy: NetworkPolicy, direction: Direction, rule: PolicyRule, selected: int
) -> int:
    """Classes of the pods a rule's traffic goes to: the selected pods for ingress, the
    pods its peers select for egress."""
    if direction == "ingress":
        return selected
    return index.rule_peers(policy, rule) & index.pods


def _port_covers(outer: PolicyPort, inner: PolicyPort) -> bool:
    if outer.protocol != inner.protocol:
        return False
    if outer.port is None:
        return True
    if isinstance(outer.port, str) or isinstance(inner.port, str) or inner.port is None:
        return outer.port == inner.port and outer.end_port is None and inner.end_port is None
    low, high = outer.port, outer.end_port or outer.port
    return low <= inner.port and (inner.end_port or inner.port) <= high


def _covers(outer: PolicyRule, inner: PolicyRule) -> bool:
    """Whether `outer` admits everything `inner` does, judged from the text alone."""
    peers_ok = not outer.peers or (
        bool(inner.peers) and all(p in outer.peers for p in inner.peers)
    )
    ports_ok = not outer.ports or (
        bool(inner.ports) and all(any(_port_covers(o, i) for o in outer.ports)
                                  for i in inner.ports)
    )
    return peers_ok and ports_ok


def _service_networks(cidrs: Sequence[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def lint_policies(
    objects: ClusterObjects,
    engine: PolicyEngine | None = None,
    service_cidrs: Sequence[str] = (),
    include_info: bool = False,
    dns: tuple[str, str] = DEFAULT_DNS,
) -> list[PolicyFinding]:
    engine = engine or PolicyEngine.from_objects(objects)
    findings: list[PolicyFinding] = []
    findings.extend(_policy_checks(engine, objects, _service_networks(service_cidrs)))
    findings.extend(_duplicates(engine))
    findings.extend(_dns(engine, objects, dns))
    if include_info:
        findings.extend(_unisolated_namespaces(engine))
    return sort_findings(findings)


def _policy_checks(
    engine: PolicyEngine, objects: ClusterObjects,
    service_nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> Iterator[PolicyFinding]:
    # Selectors and peers are evaluated over classes of alike pods, as for the matrix.
    classes = _Index(engine, [engine.subject(p) for p in engine.pods])
    cluster_ips = [
        ipaddress.ip_address(ip) for svc in objects.services for ip in svc.cluster_ips
    ]
    endpoint_ips = [ipaddress.ip_address(ip) for pod in engine.pods for ip in pod.pod_ips]
    endpoint_ips += [
        ipaddress.ip_address(ip) for node in objects.nodes
        for ip in (*node.internal_ips, *node.external_ips)
    ]
    for policy in engine.policies:
        selected = classes.selector(policy.pod_selector) & classes.by_ns.get(policy.namespace, 0)
        if not selected:
            yield _finding("policy-selects-no-pods", policy.key,
                           f"podSelector {policy.pod_selector.text()} selects no pod in "
                           f"namespace {policy.namespace}", policy.location)
        for direction in ("ingress", "egress"):
            rules = policy.rules(direction)
            for index, rule in enumerate(rules):
                where = f"{direction}[{index}]"
                for p_index, peer in enumerate(rule.peers):
                    side = "from" if direction == "ingress" else "to"
                    what = f"{where}.{side}[{p_index}] {peer.text()}"
                    if peer.ip_block is not None:
                        yield from _ip_block_check(policy, peer, what, cluster_ips,
                                                   endpoint_ips, service_nets)
                        continue
                    sel = peer.namespace_selector
                    if sel is not None and not any(
                        sel.matches(engine.namespace_labels(ns)) for ns in engine.namespace_names
                    ):
                        yield _finding("peer-selects-no-namespace", policy.key,
                                       f"{what}: the namespaceSelector selects no namespace",
                                       _at(policy, peer.line))
                    elif not classes.peer(policy.namespace, peer):
                        yield _finding("peer-selects-no-pods", policy.key,
                                       f"{what}: selects no pod", _at(policy, peer.line))
                destinations = _rule_destinations(classes, policy, direction, rule, selected)
                declared_ports = {
                    (name, protocol)
                    for c in _class_pods(destinations)
                    for name, _, protocol in classes.classes[c].ports
                }
                for pp_index, pp in enumerate(rule.ports):
                    if not isinstance(pp.port, str):
                        continue
                    declared = (pp.port, pp.protocol) in declared_ports
                    if not declared:
                        yield _finding(
                            "named-port-not-declared", policy.key,
                            f"{where}.ports[{pp_index}]: no pod this rule reaches declares a "
                            f"{pp.protocol} container port named {pp.port!r}",
                            _at(policy, pp.line))
                for other_index, other in enumerate(rules):
                    if other_index == index or not _covers(other, rule):
                        continue
                    # Of two identical rules, report the later one.
                    if _covers(rule, other) and other_index > index:
                        continue
                    yield _finding(
                        "redundant-rule", policy.key,
                        f"{where} admits nothing that {direction}[{other_index}] does not",
                        _at(policy, rule.line))
                    break


def _ip_block_check(
    policy: NetworkPolicy, peer: Peer, what: str,
    cluster_ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
    endpoint_ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
    service_nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> Iterator[PolicyFinding]:
    block = peer.ip_block
    assert block is not None
    net = block.network
    inside = [s for s in service_nets if s.version == net.version
              and net.subnet_of(s)]  # type: ignore[arg-type]
    held = [ip for ip in cluster_ips if block.contains(ip)]
    holds_endpoints = bool(held) and any(block.contains(ip) for ip in endpoint_ips)
    if inside:
        yield _finding("ipblock-service-address", policy.key,
                       f"{what}: lies in the Service CIDR {inside[0]}; Service addresses are "
                       "rewritten to endpoints before policy applies, so it never matches",
                       _at(policy, peer.line))
    elif held and not holds_endpoints:
        yield _finding("ipblock-service-address", policy.key,
                       f"{what}: holds the ClusterIP {held[0]} and no pod or node address; "
                       "kube-proxy DNATs a ClusterIP to an endpoint before policy applies, "
                       "so select the Service's pods instead", _at(policy, peer.line))


def _spec_key(policy: NetworkPolicy) -> tuple[Any, ...]:
    return (policy.namespace, policy.pod_selector, policy.ingress, policy.egress,
            policy.policy_types)


def _duplicates(engine: PolicyEngine) -> Iterator[PolicyFinding]:
    first: dict[tuple[Any, ...], NetworkPolicy] = {}
    for policy in sorted(engine.policies, key=lambda p: (p.namespace, p.name)):
        key = _spec_key(policy)
        if key in first:
            yield _finding("duplicate-policy", policy.key,
                           f"same spec as {first[key].key}", policy.location)
        else:
            first[key] = policy


def _dns(
    engine: PolicyEngine, objects: ClusterObjects, dns: tuple[str, str]
) -> Iterator[PolicyFinding]:
    from kpa.policy.services import decide_service, service_target

    service = objects.service(*dns)
    if service is None:
        return
    ports = [p for p in service.ports if p.port == 53 and p.protocol == "UDP"]
    if not ports:
        return
    # Pods that policies cannot tell apart share one answer.
    seen: dict[tuple[Any, ...], bool] = {}
    blocked: dict[tuple[str, ...], list[Pod]] = {}
    for pod in engine.pods:
        if pod.host_network or not pod.pod_ips:
            continue
        egress = engine.isolating(pod, "egress")
        if not egress:
            continue
        key = (pod.namespace, pod.labels, pod.node_name)
        ok = seen.get(key)
        if ok is None:
            src = engine.subject(pod)
            target = service_target(service, ports[0], None)
            if target is None:
                return
            ok = seen[key] = decide_service(engine, objects, src, target).allowed
        if not ok:
            blocked.setdefault(tuple(p.key for p in egress), []).append(pod)
    for policies, pods in sorted(blocked.items()):
        names = ", ".join(f"{p.namespace}/{p.name}" for p in pods[:3])
        more = f" and {len(pods) - 3} more" if len(pods) > 3 else ""
        policy = engine.by_namespace[pods[0].namespace][0]
        for candidate in engine.by_namespace[pods[0].namespace]:
            if candidate.key == policies[0]:
                policy = candidate
        yield _finding(
            "dns-egress-blocked", policy.key,
            f"egress isolated by {', '.join(policies)}: {names}{more} cannot reach "
            f"{dns[0]}/{dns[1]} on 53/UDP", policy.location)


def _unisolated_namespaces(engine: PolicyEngine) -> Iterator[PolicyFinding]:
    namespaces = sorted({p.namespace for p in engine.pods if not p.host_network})
    for ns in namespaces:
        pods = [p for p in engine.pods if p.namespace == ns and not p.host_network]
        if not any(engine.isolating(p, d) for p in pods for d in ("ingress", "egress")):
            yield _finding("namespace-not-isolated", ns,
                           f"no NetworkPolicy isolates any of the {len(pods)} pod(s) of "
                           f"namespace {ns}", None)


def sort_findings(findings: Iterable[PolicyFinding]) -> list[PolicyFinding]:
    return sorted(findings, key=lambda f: (SEVERITY_RANK[f.severity], f.object, f.code,
                                           f.location or ""))


def exit_status(findings: Iterable[PolicyFinding], fail_on: str = "warning") -> int:
    limit = SEVERITY_RANK[fail_on]
    return 1 if any(SEVERITY_RANK[f.severity] <= limit for f in findings) else 0


def format_text(findings: Sequence[PolicyFinding]) -> str:
    if not findings:
        return "no NetworkPolicy findings\n"
    lines = []
    for f in findings:
        at = f"{f.location}: " if f.location else ""
        lines.append(f"{at}{f.severity}: {f.code}: {f.object}: {f.message}")
    counts: dict[str, int] = {}
    for f in findings:
        counts[f.severity] = counts.get(f.severity, 0) + 1
    lines.append(", ".join(f"{n} {s}{'s' if n != 1 else ''}" for s, n in sorted(
        counts.items(), key=lambda kv: SEVERITY_RANK[kv[0]])))
    return "\n".join(lines) + "\n"




def as_lint_findings(objects: ClusterObjects) -> list[Finding]:
    """Policy findings in `kpa lint`'s form, so one CI entry point reports both."""
    out = []
    for f in lint_policies(objects):
        if f.code == "namespace-not-isolated":
            obj, message = ObjectRef("Namespace", f.object, f.object), f.message
        else:
            namespace, _, name = f.object.partition("/")
            obj, message = ObjectRef("NetworkPolicy", namespace, name), f"NetworkPolicy {f.object}: {f.message}"
        out.append(Finding(f.code, f.severity, None, message, f.location, obj, f.location))
    return out


__all__ = [
    "CODES",
    "PolicyFinding",
    "as_lint_findings",
    "exit_status",
    "format_text",
    "lint_policies",
    "sort_findings",
]
