"""Pair kube-proxy's chains with the Service ports and endpoints they serve.

Two sides are built per (layout, family, Service port):

* expected - what kube-proxy would program for the cluster objects on this
  node, choosing endpoints with kube-proxy's rules as `kpa.k8s.kubeproxy` models
  them (the rule generator uses the same code, so both agree by construction);
* actual - what the ruleset holds, read back by `kpa.k8s.kubeproxy` for
  iptables mode, or from the `kube-proxy` nftables table's chain names.

Chains are named from their comments first; chains without comments (large
clusters) are named by recomputing kube-proxy's hashes for every Service port
in the objects. A chain neither way can name is kept as unmapped: it belongs
to no Service port the objects know.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal, NamedTuple, cast

from kpa.ext.base import VerdictExpr
from kpa.ext.comment import CommentMatch
from kpa.k8s import kubeproxy, naming
from kpa.k8s.kubeproxy import TrafficPolicy, categorize_endpoints
from kpa.k8s.objects import (
    _CANONICAL_V4,
    ClusterObjects,
    Service,
    ServiceEndpoint,
    ServicePort,
    canonical_ip,
    made_frozen,
)
from kpa.netfilter.model import Chain, Family, LazyRule, Rule, Ruleset, Table, VerdictKind

Mode = Literal["iptables", "nftables"]
FamilyName = Literal["ipv4", "ipv6"]
NameSource = Literal["comment", "hash", "chain-name", "unknown"]

NFT_TABLE = "kube-proxy"
_NFT_SERVICE_KINDS = ("service", "local", "external", "firewall")
_IPT_KIND_OF = {"SVC": "svc", "SVL": "svl", "EXT": "ext", "FW": "fw"}
# prefix-HASH8-readable; fixed chains such as service-endpoints-check have no hash.
_NFT_CHAIN_RE = re.compile(r"^(service|local|external|firewall|endpoint)-[A-Z2-7]{8}-(.+)$")


@dataclass(frozen=True)
class EndpointRef:
    """One endpoint of a Service port: its ``ip:port`` and the chain that DNATs to it."""

    endpoint: str | None
    chain: str
    node_name: str | None = None
    # Exact share of new connections the statistic cascade sends here (iptables mode).
    probability: Fraction | None = None
    location: str | None = None


@dataclass(frozen=True)
class ChainRef:
    """A chain (or a rule in it) by name, with its FILE:LINE in the rules dump."""

    name: str
    location: str | None


@dataclass
class Expected:
    """What kube-proxy would program for one Service port, from the cluster objects."""

    service_type: str
    cluster_ip: str
    node_port: int | None
    internal_policy_local: bool
    external_policy_local: bool
    externally_accessible: bool
    # All usable endpoints, then the ones the Cluster and Local chains pick.
    endpoints: tuple[EndpointRef, ...]
    cluster: tuple[EndpointRef, ...]
    local: tuple[EndpointRef, ...]
    has_endpoints: bool
    # False when this node is unknown, so which endpoints are local is unknown too.
    local_known: bool
    chains: dict[str, str] = field(default_factory=dict)  # kind -> chain kube-proxy would create
    # The node port a load balancer health-checks under eTP Local (LoadBalancer Services).
    health_check_node_port: int | None = None

    @property
    def endpoint_count(self) -> int:
        return len(self.endpoints)

    @property
    def internal_dropped(self) -> bool:
        """iTP Local with no local endpoint: ClusterIP traffic from this node is dropped."""
        return (
            self.local_known
            and self.internal_policy_local
            and self.has_endpoints
            and not self.local
        )

    @property
    def external_dropped(self) -> bool:
        """eTP Local with no local endpoint: external traffic to this node is dropped."""
        return (
            self.local_known
            and self.external_policy_local
            and self.externally_accessible
            and self.has_endpoints
            and not self.local
        )


@dataclass
class Actual:
    """What the ruleset holds for one Service port."""

    name_source: NameSource
    chains: dict[str, ChainRef] = field(default_factory=dict)  # kind -> chain
    cluster: list[EndpointRef] = field(default_factory=list)
    local: list[EndpointRef] = field(default_factory=list)
    entries: list[kubeproxy.Entry] = field(default_factory=list)
    # Filter-table rules: "has no endpoints" REJECTs and "has no local endpoints" DROPs,
    # each as the chain holding the rule and the rule's location.
    rejects: list[ChainRef] = field(default_factory=list)
    local_drops: list[ChainRef] = field(default_factory=list)
    # Chain the ClusterIP entry leads to, and the chain EXT finally hands over to.
    internal_target: str | None = None
    external_target: str | None = None

    @property
    def programmed(self) -> bool:
        """Traffic to the port is steered to endpoints by some rule."""
        return bool(self.chains) or any(e.chain != "REJECT" for e in self.entries)

    @property
    def location(self) -> str | None:
        for e in self.entries:
            return e.location
        for c in self.chains.values():
            if c.location:
                return c.location
        for ref in (*self.rejects, *self.local_drops):
            return ref.location
        return None


@dataclass
class PortCorrelation:
    """One Service port: what the objects say kube-proxy should program, and what the rules hold."""

    mode: Mode
    family: FamilyName
    name: str  # ServicePortName, "ns/name" or "ns/name:port"
    protocol: str | None  # lower case
    service_exists: bool
    expected: Expected | None = None
    actual: Actual | None = None
    # Instead of `expected`, from `correlate(..., lean=True)`: see `LeanExpected`.
    lean: LeanExpected | None = None

    @property
    def label(self) -> str:
        proto = f"/{self.protocol}" if self.protocol else ""
        return f"{self.name}{proto} ({self.family}, {self.mode})"


@dataclass(frozen=True)
class UnmappedChain:
    """A per-Service chain no comment or recomputed hash ties to a known Service port."""

    mode: Mode
    family: FamilyName
    chain: str
    location: str | None


@dataclass(frozen=True)
class OrphanEndpoint:
    """An endpoint chain nothing jumps to; kube-proxy deletes these on each sync."""

    mode: Mode
    family: FamilyName
    service: str | None
    chain: str
    endpoint: str | None
    location: str | None


@dataclass
class Correlation:
    """Every Service port of a ruleset paired with the cluster objects, and the chains nothing explains."""

    ports: list[PortCorrelation] = field(default_factory=list)
    unmapped: list[UnmappedChain] = field(default_factory=list)
    orphans: list[OrphanEndpoint] = field(default_factory=list)
    # Which kube-proxy layouts the ruleset holds, per family.
    layouts: list[tuple[Mode, FamilyName]] = field(default_factory=list)
    node_name: str | None = None
    node_source: Literal["given", "inferred", "unknown"] = "unknown"

    def port(
        self,
        name: str,
        protocol: str | None = None,
        family: FamilyName | None = None,
        mode: Mode | None = None,
    ) -> PortCorrelation | None:
        for p in self.ports:
            if p.name != name:
                continue
            if protocol is not None and p.protocol != protocol.lower():
                continue
            if (family or p.family) == p.family and (mode or p.mode) == p.mode:
                return p
        return None


# ------------------------------------------------------------------ objects side


@dataclass(frozen=True)
class _ObjPort:
    """A Service port of the objects in one family, with its endpoints."""

    service: Service
    port: ServicePort
    name: str
    protocol: str
    family: FamilyName
    cluster_ip: str
    endpoints: tuple[ServiceEndpoint, ...]


def _family_name(family: Family) -> FamilyName:
    return "ipv6" if family.version == 6 else "ipv4"


def _version(family: FamilyName) -> int:
    return 6 if family == "ipv6" else 4


class _PortHead(NamedTuple):
    """A Service port the ``family`` proxier handles, before its endpoints are read."""

    service: Service
    port: ServicePort
    name: str
    protocol: str
    family: FamilyName
    cluster_ip: str


def _port_heads(objects: ClusterObjects, family: FamilyName) -> list[_PortHead]:
    """Service ports the ``family`` proxier handles: skips headless and ExternalName."""
    version = _version(family)
    out: list[_PortHead] = []
    for svc in objects.services:
        if svc.headless or svc.type == "ExternalName":
            continue
        cluster_ip = next(
            (canonical_ip(ip) for ip in svc.cluster_ips if _ip_version(ip) == version), None
        )
        if cluster_ip is None:
            continue
        for sp in svc.ports:
            out.append(_PortHead(svc, sp, naming.service_port_name(svc.namespace, svc.name, sp.name),
                                 sp.protocol.lower(), family, cluster_ip))
    return out


def _filled(head: _PortHead, objects: ClusterObjects) -> _ObjPort:
    svc, sp = head.service, head.port
    return _ObjPort(
        service=svc,
        port=sp,
        name=head.name,
        protocol=head.protocol,
        family=head.family,
        cluster_ip=head.cluster_ip,
        # Unsorted: every use sorts them by their ip:port text or looks them up.
        endpoints=tuple(objects.endpoints_by_address(
            svc.namespace, svc.name, sp.name, sp.protocol, _version(head.family)
        ).values()),
    )


def _object_ports(objects: ClusterObjects, family: FamilyName) -> list[_ObjPort]:
    """Service ports the ``family`` proxier handles, with their endpoints: see `_port_heads`."""
    return [_filled(h, objects) for h in _port_heads(objects, family)]


def _ip_version(text: str) -> int | None:
    if _CANONICAL_V4.fullmatch(text.split("/")[0]):
        return 4  # what ipaddress says of four plain decimal octets
    try:
        return ipaddress.ip_address(text.split("/")[0]).version
    except ValueError:
        return None


class _Row(NamedTuple):
    """One endpoint of a Service port as kube-proxy's selection reads it, with its chain and node."""

    endpoint: str  # "ip:port" / "[ip]:port"
    is_local: bool
    ready: bool
    serving: bool
    terminating: bool
    chain: str
    node_name: str | None


@dataclass(frozen=True)
class _Selection:
    """A Service port as kube-proxy's single-family proxier selects its endpoints."""

    policy: TrafficPolicy
    lb_vips: tuple[str, ...]
    source_ranges: tuple[str, ...]
    endpoints: tuple[_Row, ...]


# iptables endpoint chain names by (Service port, protocol, endpoint), as `_endpoint_chain` gives them.
_Names = dict[tuple[str, str, str], str]


def _port_policy(op: _ObjPort | _PortHead) -> tuple[TrafficPolicy, tuple[str, ...]]:
    """The port's traffic policy as kube-proxy reads it, and its load-balancer IPs."""
    svc, sp, version = op.service, op.port, _version(op.family)
    same = tuple(ip for ip in svc.external_ips if _ip_version(ip) == version)
    # kube-proxy leaves Proxy-mode load-balancer IPs to the load balancer.
    vips = tuple(
        canonical_ip(i.ip)
        for i in svc.load_balancer_ingress
        if i.ip and i.ip_mode != "Proxy" and _ip_version(i.ip) == version
    ) if svc.load_balancer_ingress else ()
    policy = kubeproxy.traffic_policy(
        svc.type,
        sp.node_port or 0,
        same,
        vips,
        svc.external_traffic_policy,
        svc.internal_traffic_policy,
    )
    return policy, vips


def _port_view(op: _ObjPort, node_name: str | None, mode: Mode, names: _Names | None = None) -> _Selection:
    policy, vips = _port_policy(op)
    version = _version(op.family)
    ranges = tuple(
        str(ipaddress.ip_network(c.strip(), strict=False))
        for c in op.service.load_balancer_source_ranges
        if _ip_version(c.strip()) == version
    ) if op.service.load_balancer_source_ranges else ()
    spn, proto = op.name, op.protocol
    names = names if names and mode == "iptables" else {}
    rows = tuple(
        _Row(key, node_name is not None and ep.node_name == node_name, ep.ready, ep.serving,
             ep.terminating, names.get((spn, proto, key)) or _endpoint_chain(mode, spn, proto, key),
             ep.node_name)
        # kube-proxy orders each endpoint list by its string form.
        for key, ep in sorted(
            (naming.endpoint_string(ep.address, ep.port), ep) for ep in op.endpoints
        )
    )
    return _Selection(policy=policy, lb_vips=vips, source_ranges=ranges, endpoints=rows)


def _endpoint_chain(mode: Mode, spn: str, proto: str, endpoint: str) -> str:
    if mode == "iptables":
        return naming.sep_chain(spn, proto, endpoint)
    return naming.nft_endpoint_chain(spn, proto, endpoint)


@functools.lru_cache(maxsize=1 << 16)
def _service_chains(mode: Mode, spn: str, proto: str) -> Mapping[str, str]:
    """The chain kube-proxy names for each kind; cached (the correlation asks twice per port)."""
    if mode == "iptables":
        return naming.iptables_service_chains(spn, proto)
    return {
        "service": naming.nft_service_chain(spn, proto),
        "local": naming.nft_local_chain(spn, proto),
        "external": naming.nft_external_chain(spn, proto),
        "firewall": naming.nft_firewall_chain(spn, proto),
    }


def expected_port(op: _ObjPort, node_name: str | None, mode: Mode, seps: _Names | None = None) -> Expected:
    """What kube-proxy would program for ``op``; ``seps``: endpoint chain names known already."""
    view = _port_view(op, node_name, mode, seps)
    cat = categorize_endpoints(view.endpoints, view.policy)
    policy = view.policy
    # One (frozen) reference per endpoint, shared by the lists that name it.
    made = {r.endpoint: EndpointRef(r.endpoint, r.chain, r.node_name) for r in view.endpoints}
    names = _service_chains(mode, op.name, op.protocol)
    svc_k, svl_k, ext_k, fw_k = (("svc", "svl", "ext", "fw") if mode == "iptables"
                                 else _NFT_SERVICE_KINDS)
    chains: dict[str, str] = {}
    if cat.cluster and policy.uses_cluster_endpoints:
        chains[svc_k] = names[svc_k]
    if cat.local and policy.uses_local_endpoints:
        chains[svl_k] = names[svl_k]
    if cat.has_any and policy.externally_accessible:
        chains[ext_k] = names[ext_k]
    fw_needs_endpoints = mode == "iptables"  # nftables mode keeps its firewall chain regardless
    if view.lb_vips and view.source_ranges and (cat.has_any or not fw_needs_endpoints):
        chains[fw_k] = names[fw_k]
    return Expected(
        service_type=op.service.type,
        cluster_ip=op.cluster_ip,
        node_port=op.port.node_port,
        internal_policy_local=policy.internal_policy_local,
        external_policy_local=policy.external_policy_local,
        externally_accessible=policy.externally_accessible,
        endpoints=tuple(made.values()),
        cluster=tuple(made[r.endpoint] for r in cat.cluster),
        local=tuple(made[r.endpoint] for r in cat.local) if node_name is not None else (),
        has_endpoints=cat.has_any,
        local_known=node_name is not None,
        chains=chains,
        health_check_node_port=(op.service.health_check_node_port
                                if op.service.type == "LoadBalancer" else None),
    )


@dataclass(frozen=True)
class LeanExpected:
    """What `kpa lint` reads of a Service port's `Expected` when its endpoint chains agree with the rules.

    `correlate(..., lean=True)` gives one (as `PortCorrelation.lean`, with no `expected`)
    for an iptables-mode port the rules have when either the rules program it and the
    endpoint chains kube-proxy's Cluster and Local selections would name are the very
    chains the rules' Service chains jump to, in the same order (lint's endpoint comparison
    then has nothing to say), or the rules do not program it and it has no usable endpoint
    (lint then reads no expected chain). Every other check reads only what is kept here.
    It is worked out from each endpoint's address, port, conditions and node alone,
    without an `EndpointRef` per endpoint.
    """

    internal_policy_local: bool
    external_policy_local: bool
    externally_accessible: bool
    has_endpoints: bool
    local_known: bool
    # Whether the Local selection is empty, and how many endpoints the objects offer.
    no_local: bool
    endpoint_count: int
    health_check_node_port: int | None

    @property
    def internal_dropped(self) -> bool:
        """See `Expected.internal_dropped`."""
        return self.local_known and self.internal_policy_local and self.has_endpoints and self.no_local

    @property
    def external_dropped(self) -> bool:
        """See `Expected.external_dropped`."""
        return (self.local_known and self.external_policy_local and self.externally_accessible
                and self.has_endpoints and self.no_local)


def _lean_expected(head: _PortHead, node_name: str, actual: Actual, objects: ClusterObjects,
                   names: _Names | None) -> LeanExpected | None:
    """`LeanExpected` for an iptables-mode port on ``node_name``, or None when lint needs its `Expected`."""
    svc, sp = head.service, head.port
    states = objects.endpoint_states(svc.namespace, svc.name, sp.name, sp.protocol, _version(head.family))
    policy, _ = _port_policy(head)
    # As `_port_view` orders them (by the ip:port text, which differs for every endpoint).
    rows = [
        _Row(f"[{address}]:{port}" if ":" in address else f"{address}:{port}", node == node_name,
             ready, serving, terminating, "", node)
        for (address, port), (ready, serving, terminating, node, _) in states.items()
    ]
    rows.sort()
    cat = categorize_endpoints(rows, policy)
    spn, proto = head.name, head.protocol
    names = names or {}
    # Not programmed: lint compares no endpoint chains, and reads the expected chains only
    # when there are endpoints.
    compared = ((cat.cluster, actual.cluster), (cat.local, actual.local)) if actual.programmed else ()
    if compared == () and cat.has_any:
        return None
    for chosen, refs in compared:
        if len(chosen) != len(refs):
            return None
        for row, ref in zip(chosen, refs, strict=True):
            # The chain `_port_view` names for the endpoint.
            if (names.get((spn, proto, row.endpoint))
                    or naming.sep_chain(spn, proto, row.endpoint)) != ref.chain:
                return None
    return LeanExpected(
        internal_policy_local=policy.internal_policy_local,
        external_policy_local=policy.external_policy_local,
        externally_accessible=policy.externally_accessible,
        has_endpoints=cat.has_any,
        local_known=True,
        no_local=not cat.local,
        endpoint_count=len(rows),
        health_check_node_port=svc.health_check_node_port if svc.type == "LoadBalancer" else None,
    )


# ------------------------------------------------------------------ rules side


def _jump_target(rule: Rule) -> str | None:
    for kind, target in rule.chain_refs():
        if kind in (VerdictKind.JUMP, VerdictKind.GOTO):
            return target
    return None


def _unconditional(rule: Rule) -> bool:
    if isinstance(rule, LazyRule):
        bare = kubeproxy.is_bare_jump(rule)
        if bare is not None:
            return bare
    return all(isinstance(e, (CommentMatch, VerdictExpr)) for e in rule.exprs)


def _final_handover(chain: Chain | None, prefixes: tuple[str, ...]) -> str | None:
    """Target of the chain's closing unconditional jump to one of ``prefixes``."""
    if chain is None or not chain.rules:
        return None
    last = chain.rules[-1]
    target = _jump_target(last)
    if target is not None and target.startswith(prefixes) and _unconditional(last):
        return target
    return None


def _comment_head(rule: Rule) -> str | None:
    if not rule.comment:
        return None
    head = rule.comment.split(" ", 1)[0]
    return head if "/" in head else None


@dataclass
class _Collected:
    """What the rules' side of a correlation gathers: ports, unexplained chains, orphaned endpoints."""

    ports: dict[tuple[str, str | None], PortCorrelation] = field(default_factory=dict)
    unmapped: list[UnmappedChain] = field(default_factory=list)
    orphans: list[OrphanEndpoint] = field(default_factory=list)


class _SpnOf(Mapping[str, str]):
    """chain -> Service port name, read from ``known`` (chain -> (name, protocol)) as asked."""

    def __init__(self, known: Mapping[str, tuple[str, str]]) -> None:
        self._known = known

    def __getitem__(self, chain: str) -> str:
        return self._known[chain][0]

    def __contains__(self, chain: object) -> bool:
        return chain in self._known

    def __iter__(self) -> Iterator[str]:
        return iter(self._known)

    def __len__(self) -> int:
        return len(self._known)


def _iptables_actual(
    rs: Ruleset,
    nat: Table,
    known: Mapping[str, tuple[str, str]],
    out: _Collected,
    object_ports: Iterable[_ObjPort | _PortHead],
    views_all: list[kubeproxy.ServicePortView] | None = None,
) -> None:
    family = _family_name(nat.family)
    if views_all is None:
        views_all = kubeproxy.service_ports(rs, _SpnOf(known))
    views = [v for v in views_all if v.family == family]
    referenced: set[str] = set()
    for v in views:
        chain_names = list(v.chains.values())
        if v.name is None:
            for name in chain_names:
                c = nat.chains[name]
                out.unmapped.append(
                    UnmappedChain("iptables", family, name, _chain_location(c))
                )
            referenced.update(e.chain for e in (*v.endpoints, *v.local_endpoints))
            continue
        proto = v.protocol or next(
            (known[n][1] for n in chain_names if n in known), None
        ) or _sep_protocol(nat, v)
        source: NameSource = "comment" if v.name_source == "comment" else "hash"
        actual = Actual(name_source=source, entries=list(v.entries))
        for name in chain_names:
            parts = name.split("-")
            kind = _IPT_KIND_OF.get(parts[1]) if len(parts) > 1 else None
            if kind is None:
                continue  # not a KUBE-SVC/SVL/EXT/FW chain (a hand-made or mangled dump)
            actual.chains[kind] = ChainRef(name, _chain_location(nat.chains[name]))
        for dest, views_eps in ((actual.cluster, v.endpoints), (actual.local, v.local_endpoints)):
            for e in views_eps:
                referenced.add(e.chain)
                # One for each endpoint chain of the dump: made without the frozen __init__.
                dest.append(made_frozen(EndpointRef, {"endpoint": e.address, "chain": e.chain, "node_name": None,
                                                      "probability": e.probability, "location": e.location}))
        actual.rejects = [
            ChainRef("KUBE-SERVICES" if e.kind == "clusterIP" else "KUBE-EXTERNAL-SERVICES",
                     e.location)
            for e in v.entries
            if e.chain == "REJECT"
        ]
        actual.entries = [e for e in v.entries if e.chain != "REJECT"]
        cip = next((e for e in actual.entries if e.kind == "clusterIP"), None)
        actual.internal_target = cip.chain if cip else None
        ext = actual.chains.get("ext")
        if ext is not None:
            actual.external_target = _final_handover(
                nat.chains.get(ext.name), ("KUBE-SVC-", "KUBE-SVL-")
            )
        _add_actual(out, "iptables", family, v.name, proto, actual)
    _iptables_local_drops(rs, nat, family, out)
    _iptables_orphans(nat, family, referenced, known, object_ports, out)


def _sep_protocol(nat: Table, v: kubeproxy.ServicePortView) -> str | None:
    """Protocol from an endpoint chain's DNAT rule (``-p tcp``), for ports without entries."""
    for e in (*v.endpoints, *v.local_endpoints):
        c = nat.chains.get(e.chain)
        for r in c.rules if c else ():
            proto = kubeproxy.rule_protocol(r)
            if proto:
                return proto.lower()
    return None


def _chain_location(c: Chain) -> str | None:
    if c.rules:
        return c.rules[0].where()
    return str(c.location) if c.location else None


def _add_actual(
    out: _Collected, mode: Mode, family: FamilyName, name: str, proto: str | None, actual: Actual
) -> None:
    proto = proto.lower() if proto else None
    key = (f"{mode}|{family}|{name}", proto)
    existing = out.ports.get(key)
    if existing is None:
        out.ports[key] = PortCorrelation(mode, family, name, proto, False, actual=actual)
    elif existing.actual is not None:
        # A second view for the same port: a REJECT-only view merges into the chain view.
        a = existing.actual
        a.chains.update(actual.chains)
        a.cluster += actual.cluster
        a.local += actual.local
        a.entries += actual.entries
        a.rejects += actual.rejects


def _iptables_local_drops(rs: Ruleset, nat: Table, family: FamilyName, out: _Collected) -> None:
    filt = rs.table(nat.family, "filter")
    if filt is None:
        return
    for chain_name in ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES"):
        c = filt.chains.get(chain_name)
        for r in c.rules if c else ():
            said = kubeproxy.rule_comment(r)
            if not (said and said.endswith("has no local endpoints")):
                continue
            spn = said.split(" ", 1)[0]
            proto = kubeproxy.rule_protocol(r)
            proto = proto.lower() if proto else None
            key = (f"iptables|{family}|{spn}", proto)
            pc = out.ports.get(key)
            if pc is None:
                pc = out.ports[key] = PortCorrelation(
                    "iptables", family, spn, proto, False, actual=Actual("comment")
                )
            assert pc.actual is not None
            pc.actual.local_drops.append(ChainRef(chain_name, r.where()))


def _iptables_orphans(
    nat: Table,
    family: FamilyName,
    referenced: set[str],
    known: Mapping[str, tuple[str, str]],
    object_ports: Iterable[_ObjPort | _PortHead],
    out: _Collected,
) -> None:
    for c in nat.chains.values():
        if not c.name.startswith("KUBE-SEP-") or c.name in referenced:
            continue
        target = kubeproxy.dnat_target(c, 6 if family == "ipv6" else 4)
        spn = next((h for h in map(_comment_head, c.rules) if h), None)
        if spn is None and target is not None:
            # Recompute the endpoint chain name for each known port with this endpoint.
            spn = next(
                (
                    op.name
                    for op in object_ports
                    if naming.sep_chain(op.name, op.protocol, target) == c.name
                ),
                None,
            )
        out.orphans.append(
            OrphanEndpoint("iptables", family, spn, c.name, target, _chain_location(c))
        )


def _nft_kind(chain: str) -> str | None:
    """``service``, ``endpoint``... for per-Service chains; None for kube-proxy's fixed chains."""
    m = _NFT_CHAIN_RE.match(chain)
    return m.group(1) if m else None


def _nft_readable(chain: str) -> str | None:
    """The ``ns/name/proto/port[__ip/port]`` part of a kube-proxy nftables chain name."""
    m = _NFT_CHAIN_RE.match(chain)
    if m is None or chain.endswith("..."):
        return None  # truncated names can only be matched by hash
    return m.group(2)


def _nft_port_of(readable: str) -> tuple[str, str] | None:
    parts = readable.split("/")
    if len(parts) != 4:
        return None
    ns, name, proto, port = parts
    return naming.service_port_name(ns, name, port), proto


def _nft_endpoint_of(readable: str, family: FamilyName) -> tuple[str, str, str] | None:
    svc_part, sep, ep_part = readable.partition("__")
    port_of = _nft_port_of(svc_part) if sep else None
    host, _, port = ep_part.rpartition("/")
    if port_of is None or not host or not port.isdigit():
        return None
    if family == "ipv6":
        host = host.replace(".", ":")
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        return None
    return port_of[0], port_of[1], naming.endpoint_string(host, int(port))


def _nft_actual(
    t: Table,
    known: dict[str, tuple[str, str]],
    known_eps: dict[str, tuple[str, str, str]],
    out: _Collected,
) -> None:
    family = _family_name(t.family)
    by_port: dict[tuple[str, str], Actual] = {}
    sources: dict[tuple[str, str], NameSource] = {}
    endpoint_chains: dict[str, tuple[str, str, str] | None] = {}
    for c in t.chains.values():
        kind = _nft_kind(c.name)
        if kind == "endpoint":
            readable = _nft_readable(c.name)
            endpoint_chains[c.name] = known_eps.get(c.name) or (
                _nft_endpoint_of(readable, family) if readable else None
            )
            continue
        if kind is None:
            continue
        readable = _nft_readable(c.name)
        port_of = _nft_port_of(readable) if readable else None
        source: NameSource = "chain-name"
        if port_of is None and c.name in known:
            port_of, source = known[c.name], "hash"
        if port_of is None:
            out.unmapped.append(UnmappedChain("nftables", family, c.name, _chain_location(c)))
            continue
        actual = by_port.setdefault(port_of, Actual(source))
        sources.setdefault(port_of, source)
        actual.chains[kind] = ChainRef(c.name, _chain_location(c))
    referenced: set[str] = set()
    for (spn, proto), actual in by_port.items():
        for kind, dest in (("service", actual.cluster), ("local", actual.local)):
            ref = actual.chains.get(kind)
            if ref is None:
                continue
            targets = [
                tgt for r in t.chains[ref.name].rules for _, tgt in r.chain_refs()
                if tgt.startswith("endpoint-")
            ]
            if not targets:
                # Without a readable dispatch rule, fall back to the chains' own names.
                targets = sorted(
                    n for n, ep in endpoint_chains.items()
                    if ep is not None and ep[:2] == (spn, proto)
                )
            for tgt in dict.fromkeys(targets):
                referenced.add(tgt)
                ep = endpoint_chains.get(tgt)
                target = t.chains.get(tgt)
                dest.append(
                    EndpointRef(ep[2] if ep else None, tgt, None, None,
                                _chain_location(target) if target else None)
                )
        ext = actual.chains.get("external")
        if ext is not None:
            actual.external_target = _final_handover(
                t.chains.get(ext.name), ("service-", "local-")
            )
        _add_actual(out, "nftables", family, spn, proto, actual)
    for name, ep in endpoint_chains.items():
        if name not in referenced:
            c = t.chains[name]
            out.orphans.append(
                OrphanEndpoint("nftables", family, ep[0] if ep else None, name,
                               ep[2] if ep else None, _chain_location(c))
            )


# ------------------------------------------------------------------ correlation


def kube_proxy_layouts(rs: Ruleset) -> Iterator[tuple[Mode, Table]]:
    """Tables holding kube-proxy's per-Service rules: iptables nat tables and nft tables."""
    for t in rs.tables:
        if t.family not in (Family.IPV4, Family.IPV6):
            continue
        if t.name == "nat" and "KUBE-SERVICES" in t.chains and not _is_nft_native(t):
            yield "iptables", t
        elif t.name == NFT_TABLE and not t.managed_by_iptables:
            yield "nftables", t


def _is_nft_native(t: Table) -> bool:
    return t.source == "nft" and not t.managed_by_iptables


def _infer_node(
    out: _Collected,
    objects: ClusterObjects,
    object_ports: dict[tuple[FamilyName, str, str], _ObjPort],
) -> str | None:
    """The node whose endpoints fill the Local-policy chains, if exactly one does."""
    nodes: set[str] = set()
    for pc in out.ports.values():
        if pc.actual is None:
            continue
        op = object_ports.get((pc.family, pc.name, pc.protocol or ""))
        by_ep = {
            naming.endpoint_string(e.address, e.port): e.node_name for e in op.endpoints
        } if op else {}
        for ep in pc.actual.local:
            node = by_ep.get(ep.endpoint or "")
            if node is None and ep.endpoint:
                pod = objects.pod_by_ip(ep.endpoint.rsplit(":", 1)[0].strip("[]"))
                node = pod.node_name if pod else None
            if node:
                nodes.add(node)
    return nodes.pop() if len(nodes) == 1 else None


@dataclass
class RulesSide:
    """The rules' half of a correlation, worked out before the cluster objects are at hand.

    `rules_side(rs)` runs the very code `correlate` runs on the rules, with the inputs
    made from the objects standing in as `kubeproxy.UNREAD`: when that code never looks
    at them, what it collected is what `correlate` collects with any objects, and
    `correlate(rs, objects, node, side)` goes on from there. Used once.
    """

    ruleset: Ruleset
    layouts: list[tuple[Mode, Table]]
    # None when the rules' half needs the objects (a chain no comment names, nftables mode).
    collected: _Collected | None
    # Endpoint chain names known ahead, a memo of `naming.sep_chain`: the rules' own where they are
    # kube-proxy's hash (`rule_names`), or the objects' (`naming.endpoint_chain_names`).
    names: _Names = field(default_factory=dict)


def rules_side(rs: Ruleset, names: bool = True) -> RulesSide:
    """What `correlate` reads of ``rs`` alone; see `RulesSide`. ``names``: with the endpoint
    chain names the rules show (`rule_names`), which may instead be worked out later."""
    layouts = list(kube_proxy_layouts(rs))
    if any(mode != "iptables" for mode, _ in layouts):
        return RulesSide(rs, layouts, None)
    out = _Collected()
    unread = cast(Mapping[str, tuple[str, str]], kubeproxy.UNREAD)
    try:
        views_all = kubeproxy.service_ports(rs, kubeproxy.UNREAD) if layouts else []
        for _, t in layouts:
            _iptables_actual(rs, t, unread, out, cast(Iterable[_ObjPort], unread), views_all)
    except kubeproxy.NeedsObjects:
        return RulesSide(rs, layouts, None)
    side = RulesSide(rs, layouts, out)
    if names:
        rule_names(side)
    return side


def rule_names(side: RulesSide) -> None:
    """Fill ``side.names`` with the endpoint chain names the rules show.

    The chain names the objects will most likely ask for are the ones the rules show: this
    works them out before the objects are read. An endpoint chain's name is kept (the rules'
    own string) where it is the one kube-proxy's hash gives.
    """
    names = side.names
    for pc in side.collected.ports.values() if side.collected is not None else ():
        a = pc.actual
        if a is None or pc.protocol is None:
            continue
        _service_chains("iptables", pc.name, pc.protocol)  # cached
        for e in (*a.cluster, *a.local):
            if e.endpoint and naming.sep_chain(pc.name, pc.protocol, e.endpoint) == e.chain:
                names[(pc.name, pc.protocol, e.endpoint)] = e.chain


def correlate(
    rs: Ruleset, objects: ClusterObjects, node_name: str | None = None,
    side: RulesSide | None = None, lean: bool = False,
) -> Correlation:
    """Pair every kube-proxy chain in ``rs`` with its Service port in ``objects``.

    ``node_name`` is the node the rules were taken from; without it kpa infers
    the node from the endpoints in Local-policy chains, or leaves Local
    expectations unchecked. ``side``: `rules_side(rs)`, worked out earlier.
    ``lean``: where the node is given and every layout is iptables mode, a port whose
    endpoint chains agree with the rules gets a `LeanExpected` instead of an `Expected`
    (what `kpa lint` reads; `kpa show` needs the whole `Expected`).
    """
    ready = side.collected if side is not None and side.ruleset is rs else None
    names = side.names if side is not None and side.ruleset is rs else None
    if side is not None:
        side.collected = None  # what correlate collects it then changes: use it once
    layouts = side.layouts if ready is not None and side is not None else list(kube_proxy_layouts(rs))
    families = {_family_name(t.family) for _, t in layouts}
    lean = lean and node_name is not None and all(mode == "iptables" for mode, _ in layouts)
    # When lean, a port's endpoints are read only where its Expected is wanted.
    obj_ports: dict[FamilyName, list[_ObjPort]] | dict[FamilyName, list[_PortHead]] = (
        {fam: _port_heads(objects, fam) for fam in families} if lean
        else {fam: _object_ports(objects, fam) for fam in families})
    by_key = {(fam, op.name, op.protocol): op for fam, ops in obj_ports.items() for op in ops}

    out = ready if ready is not None else _Collected()
    for mode, t in layouts if ready is None else ():
        fam = _family_name(t.family)
        known: dict[str, tuple[str, str]] = {}
        known_eps: dict[str, tuple[str, str, str]] = {}
        for op in obj_ports[fam]:
            for chain in _service_chains(mode, op.name, op.protocol).values():
                known[chain] = (op.name, op.protocol)
            if mode == "nftables" and isinstance(op, _ObjPort):  # (never lean)
                for e in op.endpoints:
                    key = naming.endpoint_string(e.address, e.port)
                    known_eps[_endpoint_chain(mode, op.name, op.protocol, key)] = (
                        op.name, op.protocol, key
                    )
        if mode == "iptables":
            _iptables_actual(rs, t, known, out, obj_ports[fam])
        else:
            _nft_actual(t, known, known_eps, out)

    node_source: Literal["given", "inferred", "unknown"] = "given"
    if node_name is None:
        node_name = _infer_node(out, objects, cast(dict[tuple[FamilyName, str, str], _ObjPort], by_key))
        node_source = "inferred" if node_name else "unknown"

    result = Correlation(
        unmapped=out.unmapped,
        orphans=out.orphans,
        layouts=[(mode, _family_name(t.family)) for mode, t in layouts],
        node_name=node_name,
        node_source=node_source,
    )
    seen: set[tuple[str, str, str, str | None]] = set()
    for (_, proto), pc in sorted(out.ports.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        match = by_key.get((pc.family, pc.name, proto or ""))
        if match is None and proto is None:
            # Protocol unknown from the rules (no entry rule): any port of that name will do.
            match = next((o for k, o in by_key.items() if k[:2] == (pc.family, pc.name)), None)
            if match is not None:
                pc.protocol = match.protocol
        if isinstance(match, _PortHead):
            assert node_name is not None
            if pc.actual is not None:
                pc.lean = _lean_expected(match, node_name, pc.actual, objects, names)
            if pc.lean is None:
                pc.expected = expected_port(_filled(match, objects), node_name, pc.mode, names)
        elif match is not None:
            pc.expected = expected_port(match, node_name, pc.mode, names)
        _add_port(result, seen, pc, objects)
    for mode, t in layouts:
        fam = _family_name(t.family)
        for op in obj_ports[fam]:
            if (mode, fam, op.name, op.protocol) in seen:
                continue
            seen.add((mode, fam, op.name, op.protocol))
            full = _filled(op, objects) if isinstance(op, _PortHead) else op
            result.ports.append(
                PortCorrelation(mode, fam, op.name, op.protocol, True,
                                expected=expected_port(full, node_name, mode, names))
            )
    result.ports.sort(key=lambda p: (p.name, p.protocol or "", p.family, p.mode))
    return result


def _add_port(result: Correlation, seen: set[tuple[str, str, str, str | None]], pc: PortCorrelation,
              objects: ClusterObjects) -> None:
    """Add a Service port the rules have, with whether its Service exists."""
    ns, name, _ = naming.split_service_port_name(pc.name)
    pc.service_exists = objects.service(ns, name) is not None
    seen.add((pc.mode, pc.family, pc.name, pc.protocol))
    result.ports.append(pc)


__all__ = [
    "Actual",
    "ChainRef",
    "Correlation",
    "EndpointRef",
    "Expected",
    "LeanExpected",
    "OrphanEndpoint",
    "PortCorrelation",
    "RulesSide",
    "UnmappedChain",
    "correlate",
    "expected_port",
    "kube_proxy_layouts",
    "rules_side",
]
