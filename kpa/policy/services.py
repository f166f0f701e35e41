"""A Service as a connection's destination, judged after kube-proxy's DNAT.

NetworkPolicy never sees a ClusterIP: kube-proxy rewrites the destination to one
endpoint before any policy applies, so each endpoint is judged on its own, with the
endpoint's port (the resolved targetPort). The endpoints come either from the node's
rules, through kpa's trace of a new connection from the source (`--rules`), or from the
EndpointSlices, chosen the way kube-proxy chooses them
(`kpa.k8s.kubeproxy.categorize_endpoints`, internalTrafficPolicy included).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

from kpa.k8s import kubeproxy, naming
from kpa.k8s.objects import ClusterObjects, Service, ServicePort, canonical_ip
from kpa.netfilter.domain import fraction_text
from kpa.policy.engine import Decision, PolicyEngine, Subject

EndpointSource = Literal["rules", "endpointslices"]


@dataclass(frozen=True)
class ServiceTarget:
    """One Service port reached at one of its cluster IPs."""

    service: Service
    port: ServicePort
    cluster_ip: str

    @property
    def name(self) -> str:
        return f"svc/{self.service.namespace}/{self.service.name}"

    @property
    def port_text(self) -> str:
        label = self.port.name or str(self.port.port)
        return f"{label} ({naming.endpoint_string(self.cluster_ip, self.port.port)}/{self.port.protocol})"


@dataclass(frozen=True)
class EndpointVerdict:
    endpoint: str  # ip:port
    subject: Subject
    port: int
    decision: Decision
    probability: Fraction | None = None
    # What the judgement could not take into account (e.g. masquerading by the rules).
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "endpoint": self.endpoint,
            "pod": self.subject.name if self.subject.pod is not None else None,
            "allowed": self.decision.allowed,
            "reason": self.decision.reason(),
            "decision": self.decision.to_json(),
        }
        if self.notes:
            out["notes"] = list(self.notes)
        if self.probability is not None:
            p = self.probability
            out["probability"] = float(p)
            out["probability_exact"] = fraction_text(p)
        return out


@dataclass
class ServiceDecision:
    src: Subject
    target: ServiceTarget
    source: EndpointSource
    endpoints: list[EndpointVerdict] = field(default_factory=list)
    # Outcomes of the trace that reach no endpoint (no DNAT, or dropped/rejected).
    other_outcomes: list[str] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        """Allowed only when there is an endpoint and every endpoint is allowed."""
        return bool(self.endpoints) and all(e.decision.allowed for e in self.endpoints)

    def reason(self) -> str:
        if not self.endpoints:
            why = "; ".join(self.other_outcomes) or "no ready endpoint"
            return f"{self.target.name} has no endpoint to judge: {why}"
        denied = [e for e in self.endpoints if not e.decision.allowed]
        if not denied:
            return f"all {len(self.endpoints)} endpoint(s) allowed"
        first = denied[0]
        return (f"{len(denied)} of {len(self.endpoints)} endpoint(s) denied; "
                f"{first.subject.name}: {first.decision.reason()}")

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.src.name,
            "to": self.target.name,
            "from_ip": self.src.ip,
            "service_port": self.target.port.name or self.target.port.port,
            "cluster_ip": self.target.cluster_ip,
            "port": self.target.port.port,
            "protocol": self.target.port.protocol,
            "allowed": self.allowed,
            "reason": self.reason(),
            "endpoints_from": self.source,
            "endpoints": [e.to_json() for e in self.endpoints],
            "other_outcomes": self.other_outcomes,
        }


def _version(ip: str | None) -> int | None:
    try:
        return ipaddress.ip_address(ip or "").version
    except ValueError:
        return None


def service_target(service: Service, port: ServicePort, family: int | None) -> ServiceTarget | None:
    for ip in service.cluster_ips:
        if family is None or _version(ip) == family:
            return ServiceTarget(service, port, canonical_ip(ip))
    return None


def slice_endpoints(
    objects: ClusterObjects, target: ServiceTarget, src_node: str | None
) -> list[tuple[str, int]]:
    """The endpoints kube-proxy would use for a connection from a pod on `src_node`."""
    svc, sp = target.service, target.port
    version = _version(target.cluster_ip)
    endpoints = objects.endpoints_for(svc.namespace, svc.name, sp.name, sp.protocol, version)
    infos = sorted(
        (
            kubeproxy.EndpointInfo(
                endpoint=naming.endpoint_string(ep.address, ep.port),
                ip=ep.address,
                is_local=src_node is not None and ep.node_name == src_node,
                ready=ep.ready,
                serving=ep.serving,
                terminating=ep.terminating,
                chain="",
            )
            for ep in endpoints
        ),
        key=lambda i: i.endpoint,
    )
    ports = {naming.endpoint_string(ep.address, ep.port): ep.port for ep in endpoints}
    policy = kubeproxy.traffic_policy(
        svc.type, sp.node_port or 0, svc.external_ips, svc.load_balancer_ips,
        svc.external_traffic_policy, svc.internal_traffic_policy,
    )
    chosen = kubeproxy.categorize_endpoints(infos, policy)
    # Traffic from a pod to a ClusterIP is internal traffic.
    picked = chosen.local if policy.internal_policy_local else chosen.cluster
    return [(i.ip, ports[i.endpoint]) for i in picked]


def decide_service(
    engine: PolicyEngine,
    objects: ClusterObjects,
    src: Subject,
    target: ServiceTarget,
    ruleset: Any = None,
    local_ips: list[str] | None = None,
) -> ServiceDecision:
    """Judge a connection from `src` to a Service port, endpoint by endpoint."""
    protocol = target.port.protocol
    if ruleset is not None and src.ip is not None:
        from kpa.k8s.resolve import traced_endpoints

        decision = ServiceDecision(src, target, "rules")
        local = [canonical_ip(ip) for ip in local_ips or []]
        # A hostNetwork pod (or any process) on this node sends from the node itself.
        on_node = (src.pod is not None and src.pod.host_network) or src.ip in local
        for out in traced_endpoints(ruleset, local, src.ip, target.cluster_ip,
                                    target.port.port, protocol,
                                    "output" if on_node else "prerouting"):
            if out.verdict != "ACCEPT" or out.address is None:
                what = (f"{out.verdict} without DNAT" if out.address is None
                        else f"{out.verdict} after DNAT to {out.address}")
                decision.other_outcomes.append(
                    f"{what} (p={out.probability}){': ' + out.reason if out.reason else ''}"
                )
                continue
            port = out.port if out.port is not None else target.port.port
            dst = engine.subject(ip=out.address)
            notes: tuple[str, ...] = ()
            if out.masquerade:
                notes = ("the node's rules masquerade this connection, so the endpoint may see "
                         "the node's address as its source (matched by ipBlocks only); kpa "
                         "judged it with the source's own address",)
            decision.endpoints.append(EndpointVerdict(
                naming.endpoint_string(out.address, port), dst, port,
                engine.decide(src, dst, port, protocol), out.probability, notes,
            ))
        return decision
    decision = ServiceDecision(src, target, "endpointslices")
    src_node = src.pod.node_name if src.pod is not None else None
    for address, port in slice_endpoints(objects, target, src_node):
        dst = engine.subject(ip=address)
        decision.endpoints.append(EndpointVerdict(
            naming.endpoint_string(address, port), dst, port, engine.decide(src, dst, port, protocol)
        ))
    return decision




@dataclass(frozen=True)
class ServiceCell:
    """One source against one Service port in the matrix: allowed only if every endpoint is."""

    allowed: bool
    endpoints: tuple[tuple[str, str, bool], ...]  # (ip:port, pod/NS/NAME or address, allowed)
    reason: str
    source: EndpointSource


def _cell_from(decision: ServiceDecision) -> ServiceCell:
    return ServiceCell(
        decision.allowed,
        tuple((e.endpoint, e.subject.name, e.decision.allowed) for e in decision.endpoints),
        decision.reason(),
        decision.source,
    )


def service_cells(
    engine: PolicyEngine,
    objects: ClusterObjects,
    sources: list[Subject],
    target: ServiceTarget,
    ruleset: Any = None,
    local_ips: list[str] | None = None,
) -> list[ServiceCell]:
    """Every source against one Service port.

    When the endpoints do not depend on the source (EndpointSlices, internalTrafficPolicy
    Cluster), the endpoints are judged for all sources at once with `kpa.policy.matrix`;
    otherwise each source is traced or selected on its own with `decide_service`.
    """
    from kpa.policy.matrix import matrix

    if ruleset is not None or target.service.internal_traffic_policy == "Local":
        return [_cell_from(decide_service(engine, objects, src, target, ruleset, local_ips))
                for src in sources]
    endpoints = slice_endpoints(objects, target, None)
    if not endpoints:
        empty = ServiceDecision(sources[0], target, "endpointslices") if sources else None
        reason = empty.reason() if empty is not None else ""
        return [ServiceCell(False, (), reason, "endpointslices") for _ in sources]
    subjects = [engine.subject(ip=address) for address, _ in endpoints]
    verdicts: list[list[bool]] = [[False] * len(endpoints) for _ in sources]
    for port in sorted({p for _, p in endpoints}):
        columns = [j for j, (_, p) in enumerate(endpoints) if p == port]
        m = matrix(engine, sources, [subjects[j] for j in columns], port, target.port.protocol)
        for i in range(len(sources)):
            for k, j in enumerate(columns):
                verdicts[i][j] = m.allowed(i, k)
    cells = []
    for i in range(len(sources)):
        row = verdicts[i]
        denied = [j for j, ok in enumerate(row) if not ok]
        if not denied:
            reason = f"all {len(row)} endpoint(s) allowed"
        else:
            first = endpoints[denied[0]]
            reason = (f"{len(denied)} of {len(row)} endpoint(s) denied; first: "
                      f"{subjects[denied[0]].name} "
                      f"({naming.endpoint_string(first[0], first[1])})")
        cells.append(ServiceCell(
            not denied,
            tuple((naming.endpoint_string(a, p), subjects[j].name, row[j])
                  for j, (a, p) in enumerate(endpoints)),
            reason,
            "endpointslices",
        ))
    return cells


__all__ = [
    "EndpointVerdict",
    "ServiceCell",
    "ServiceDecision",
    "ServiceTarget",
    "decide_service",
    "service_cells",
    "service_target",
    "slice_endpoints",
]
