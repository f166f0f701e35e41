"""What a trace means in Kubernetes terms.

The engine reports rules, verdicts and rewrites. This module reads that back
as a person thinks about a cluster: which Service port the packet hit (from
kube-proxy's rule comments, its nftables chain names, or recomputed chain
hashes), which pod and node the endpoint is, why a packet died ("… is not in
shop/frontend's loadBalancerSourceRanges", "… has no endpoints"), which
sources an outcome applies to in plain words, and — when a packet to a
Service address hit no Service port — which port was probably meant.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from kpa.netfilter.domain import IntSet
from kpa.netfilter.model import Ruleset
from kpa.netfilter.packet import Hop, PacketSpec

# "ns/name" or "ns/name:port" at the start of a kube-proxy comment or inside it.
_SPN = re.compile(r"(?<![\w/.:-])([a-z0-9][a-z0-9.-]*)/([a-z0-9][a-z0-9.-]*)(?::([a-z0-9][a-z0-9-]*))?(?![\w/])")
# nftables mode: service-HASH-ns/name/proto/port, endpoint-HASH-ns/name/proto/port__ip/port, ...
_NFT_CHAIN = re.compile(r"^(service|local|external|firewall|endpoint)-[A-Z0-9]{8}-([^/]+)/([^/]+)/([a-z]+)/([^_]*)")
_IPT_ENTRY = {" cluster IP": "cluster IP", " external IP": "external IP", " loadbalancer IP": "load-balancer IP"}
NODEPORT_RANGE = (30000, 32767)


@dataclass(frozen=True)
class ServiceHit:
    namespace: str
    name: str
    port: str  # the port's name; "" when the Service has one unnamed port
    entry: str | None  # cluster IP, nodePort, external IP, load-balancer IP

    @property
    def spn(self) -> str:
        return f"{self.namespace}/{self.name}" + (f":{self.port}" if self.port else "")

    def text(self) -> str:
        return self.spn + (f" ({self.entry})" if self.entry else "")

    def to_json(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "name": self.name, "port": self.port, "entry": self.entry,
                "service_port": self.spn}


def _comment_spn(comment: str | None) -> tuple[str, str, str] | None:
    if not comment:
        return None
    m = _SPN.search(comment)
    if m is None or re.fullmatch(r"[\d.]+", m.group(1)):
        return None
    return m.group(1), m.group(2), m.group(3) or ""


def _nft_spn(chain: str) -> tuple[str, str, str, str] | None:
    m = _NFT_CHAIN.match(chain)
    if m is None:
        return None
    return m.group(1), m.group(2), m.group(3), m.group(5)


def service_hit(path: tuple[Hop, ...], hashed: dict[str, str] | None = None) -> ServiceHit | None:
    """The Service port a packet's path went through, if any."""
    entry: str | None = None
    for i, h in enumerate(path):
        if h.chain == "KUBE-NODEPORTS" or "@service-nodeports" in h.text or "@no-endpoint-nodeports" in h.text:
            entry = entry or "nodePort"
        named = _comment_spn(h.comment)
        if named is not None and h.chain not in ("KUBE-POSTROUTING",):
            for suffix, kind in _IPT_ENTRY.items():
                if h.comment and h.comment.endswith(suffix):
                    entry = entry or kind
            return ServiceHit(*named, entry)
        nft = _nft_spn(h.chain)
        if nft is not None:
            kind, ns, name, port = nft
            if entry is None:
                entry = {"firewall": "load-balancer IP", "external": "external IP"}.get(kind, "cluster IP")
            return ServiceHit(ns, name, port, entry)
        if hashed and h.chain in hashed:
            ns_name, _, port = hashed[h.chain].partition(":")
            ns, _, name = ns_name.partition("/")
            return ServiceHit(ns, name, port, entry)
        del i
    return None


def fmt_share(p: Fraction) -> str:
    """A share as a plain percentage; shares that differ in the 9th digit print alike."""
    pct = float(p) * 100
    if 0 < pct < 0.05:
        return "<0.1%"
    return f"{round(pct, 1):g}%"


@dataclass
class Context:
    """What the story needs besides the trace: the rules, the objects, the node."""

    rs: Ruleset
    objects: Any
    spec: PacketSpec
    local: dict[int, IntSet]
    hashed: dict[str, str]
    pod_ranges: list[ipaddress.IPv4Network | ipaddress.IPv6Network]


def cluster_cidrs(rs: Ruleset) -> list[str]:
    """The pod CIDRs kube-proxy was told about (--cluster-cidr), read from its masquerade rules."""
    found: dict[str, None] = {}
    for t in rs.tables:
        for c in t.chains.values():
            if not (c.name.startswith("KUBE-SVC-") or c.name.startswith("service-")):
                continue
            for r in c.rules[:1]:
                m = re.search(r"! -s (\S+) .*-j KUBE-MARK-MASQ", r.text) or \
                    re.search(r"saddr != (\S+) jump mark-for-masquerade", r.text)
                if m:
                    found[m.group(1)] = None
    return list(found)


def pod_ranges(rs: Ruleset, objects: Any) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for text in cluster_cidrs(rs):
        try:
            nets.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            continue
    if objects is not None:
        for n in objects.nodes:
            for c in n.pod_cidrs:
                try:
                    net = ipaddress.ip_network(c, strict=False)
                except ValueError:
                    continue
                if not any(net.version == o.version and net.subnet_of(o) for o in nets):  # type: ignore[arg-type]
                    nets.append(net)
    return nets


def external_exclusions(rs: Ruleset, objects: Any, node_ips: list[str]) -> list[str]:
    """What `--from external` leaves out: the pod CIDRs, every node's addresses, loopback."""
    out = [str(n) for n in pod_ranges(rs, objects)]
    ips = list(node_ips)
    if objects is not None:
        for n in objects.nodes:
            ips.extend(n.internal_ips)
            ips.extend(n.external_ips)
    out.extend(dict.fromkeys(ips))
    out.extend(["127.0.0.0/8", "::1/128"])
    return out


# -- plain-word sources ---------------------------------------------------------

def _addr_words(text: str, ctx: Context, endpoint_ip: str | None) -> str:
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return text
    if net.is_loopback:
        return f"loopback ({text.strip()})"
    if net.num_addresses == 1:
        ip = str(net.network_address)
        if ip == endpoint_ip:
            return f"the endpoint pod itself ({ip})"
        if ctx.objects is not None:
            pod = ctx.objects.pod_by_ip(ip)
            if pod is not None and not pod.host_network:
                return f"pod {pod.namespace}/{pod.name} ({ip})"
            node = ctx.objects.node_by_ip(ip)
            if node is not None:
                return f"node {node.name} ({ip})"
        if int(net.network_address) in ctx.local.get(net.version, IntSet()):
            return f"this node ({ip})"
    return text.strip()


def _is_pods(text: str, ctx: Context) -> bool:
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return False
    return any(p.version == net.version and (p.subnet_of(net) or net.subnet_of(p))  # type: ignore[arg-type]
               for p in ctx.pod_ranges) and net.num_addresses > 1


def plain_sources(conditions: list[str], ctx: Context, endpoint_ip: str | None) -> str:
    """The outcome's conditions, with the source ones in plain words."""
    parts: list[str] = []
    for c in conditions:
        m = re.fullmatch(r"src in (.+) except (.+)", c)
        if m:
            nets = m.group(1).split(", ")
            who = "pods" if all(_is_pods(n, ctx) for n in nets) else "sources"
            holes = ", ".join(_addr_words(x, ctx, endpoint_ip) for x in m.group(2).split(", "))
            parts.append(f"{who} in {m.group(1)} except {holes}")
            continue
        m = re.fullmatch(r"src not in (.+)", c)
        if m:
            nets = m.group(1).split(", ")
            if all(_is_pods(n, ctx) for n in nets):
                parts.append(f"sources outside the pod network {m.group(1)}")
            else:
                parts.append("sources not in " + ", ".join(_addr_words(x, ctx, endpoint_ip) for x in nets))
            continue
        m = re.fullmatch(r"src in (.+)", c)
        if m:
            nets = m.group(1).split(", ")
            if all(_is_pods(n, ctx) for n in nets):
                parts.append(f"pods in {m.group(1)}")
            else:
                parts.append(", ".join(_addr_words(x, ctx, endpoint_ip) for x in nets))
            continue
        parts.append(c)
    if not parts:
        if ctx.spec.src_exclude and not ctx.spec.src:
            return "external sources (not pods, not nodes)"
        return "this packet" if ctx.spec.src else "any source"
    return "; ".join(parts)


# -- endpoints and reasons -----------------------------------------------------------

def _endpoint_ip(o: Any) -> str | None:
    if o.state.dnat is None:
        return None
    return str(ipaddress.ip_address(o.state.dnat[0]))


def endpoint_label(o: Any, hit: ServiceHit | None, objects: Any) -> str | None:
    """`pod/NS/NAME on node X` for the DNAT target, from the Service's EndpointSlices first."""
    ip = _endpoint_ip(o)
    if ip is None or objects is None:
        return None
    if hit is not None:
        for ep in objects.endpoints_for(hit.namespace, hit.name, hit.port):
            if ep.address == ip and ep.target_ref is not None and ep.target_ref.kind == "Pod":
                where = f" on node {ep.node_name}" if ep.node_name else ""
                return f"pod/{ep.target_ref.namespace or hit.namespace}/{ep.target_ref.name}{where}"
    pod = objects.pod_by_ip(ip)
    if pod is not None:
        where = f" on node {pod.node_name}" if pod.node_name else ""
        return f"pod/{pod.namespace}/{pod.name}{where}"
    node = objects.node_by_ip(ip)
    if node is not None:
        return f"node/{node.name}"
    return None


def _service(objects: Any, hit: ServiceHit | None) -> Any:
    if objects is None or hit is None:
        return None
    return objects.service(hit.namespace, hit.name)


def _source_text(ctx: Context, o: Any) -> str:
    if ctx.spec.src:
        return ctx.spec.src
    src = o.state.domains["src"]
    v = src.single_value() if isinstance(src, IntSet) else None
    return str(ipaddress.ip_address(v)) if v is not None else "the source"


def _service_by_address(objects: Any, spec: PacketSpec, local: dict[int, IntSet]) -> ServiceHit | None:
    """The Service port a packet is addressed to, from the objects (for dumps without names)."""
    if objects is None or not spec.dst or spec.dport is None:
        return None
    try:
        dst = ipaddress.ip_address(spec.dst)
    except ValueError:
        return None
    for svc in objects.services:
        for p in svc.ports:
            if spec.proto and p.protocol.lower() != spec.proto.lower():
                continue
            if str(dst) in svc.cluster_ips and p.port == spec.dport:
                return ServiceHit(svc.namespace, svc.name, p.name, "cluster IP")
            if str(dst) in svc.external_ips and p.port == spec.dport:
                return ServiceHit(svc.namespace, svc.name, p.name, "external IP")
            if str(dst) in svc.load_balancer_ips and p.port == spec.dport:
                return ServiceHit(svc.namespace, svc.name, p.name, "load-balancer IP")
            if p.node_port == spec.dport and int(dst) in local.get(dst.version, IntSet()):
                return ServiceHit(svc.namespace, svc.name, p.name, "nodePort")
    return None


def kubernetes_reason(o: Any, hit: ServiceHit | None, ctx: Context) -> str | None:
    """Why a packet died, in the terms of the Service that made kube-proxy drop it."""
    if o.verdict == "ACCEPT" or not o.path:
        return None
    last = o.path[-1]
    texts = [(h.comment or "", h.text, h.chain) for h in o.path[-2:]]
    for said, _, _ in reversed(texts):
        if said.endswith("has no local endpoints"):
            policy = "externalTrafficPolicy" if hit is None or hit.entry != "cluster IP" else "internalTrafficPolicy"
            return f"{said.rsplit(' has', 1)[0]} has no local endpoints ({policy}: Local)"
        if said.endswith("has no endpoints"):
            return str(said)
        if "traffic not accepted by KUBE-FW-" in said or "will be dropped by KUBE-PROXY-FIREWALL" in said:
            return _lbsr_reason(o, hit, ctx)
    if _nft_spn(last.chain) is not None and _nft_spn(last.chain)[0] == "firewall":  # type: ignore[index]
        return _lbsr_reason(o, hit, ctx)
    for _, text, _ in reversed(texts):
        if "@no-endpoint-services" in text or "@no-endpoint-nodeports" in text:
            named = hit or _service_by_address(ctx.objects, ctx.spec, ctx.local)
            who = named.spn if named else "this Service port"
            if o.verdict == "DROP":
                return f"{who} has no local endpoints (externalTrafficPolicy: Local)"
            return f"{who} has no endpoints"
    comment: str = last.comment or ""
    if comment == "Reject traffic to invalid ports of ClusterIPs":
        return "no Service port of this ClusterIP matched"
    if comment == "Drop traffic to unallocated ClusterIPs":
        return "no Service has this ClusterIP (an unallocated address in the Service CIDR)"
    return None


def _lbsr_reason(o: Any, hit: ServiceHit | None, ctx: Context) -> str:
    who = f"{hit.namespace}/{hit.name}" if hit else "the Service"
    svc = _service(ctx.objects, hit)
    ranges = f" ({', '.join(svc.load_balancer_source_ranges)})" if svc is not None and \
        svc.load_balancer_source_ranges else ""
    return f"{_source_text(ctx, o)} is not in {who}'s loadBalancerSourceRanges{ranges}"


# -- "no Service port matched" -----------------------------------------------------------

@dataclass
class PortInfo:
    service: str  # ns/name
    name: str
    protocol: str
    port: int
    target: str | None

    def text(self) -> str:
        arrow = f"→{self.target}" if self.target is not None else ""
        return f"{self.name or '-'}:{self.port}{arrow}" + ("" if self.protocol == "TCP" else f"/{self.protocol}")


def _ports_at(ctx: Context, dst: str, nodeport: bool) -> list[PortInfo]:
    out: list[PortInfo] = []
    if ctx.objects is not None:
        for svc in ctx.objects.services:
            addrs = set(svc.cluster_ips) | set(svc.external_ips) | set(svc.load_balancer_ips)
            for p in svc.ports:
                if nodeport and p.node_port is not None:
                    out.append(PortInfo(f"{svc.namespace}/{svc.name}", p.name, p.protocol, p.node_port,
                                        str(p.target_port)))
                elif not nodeport and dst in addrs:
                    out.append(PortInfo(f"{svc.namespace}/{svc.name}", p.name, p.protocol, p.port,
                                        str(p.target_port)))
        return out
    from kpa.k8s.kubeproxy import service_ports

    for v in service_ports(ctx.rs, ctx.hashed):
        if not v.name:
            continue
        ns_name, _, pname = v.name.partition(":")
        target = None
        eps = v.endpoints or v.local_endpoints
        if eps and eps[0].address and ":" in eps[0].address:
            target = eps[0].address.rsplit(":", 1)[1]
        for e in v.entries:
            if e.port is None:
                continue
            if (nodeport and e.kind == "nodePort") or (not nodeport and e.address == dst):
                out.append(PortInfo(ns_name, pname, (v.protocol or "TCP").upper(), e.port, target))
    return out


def service_port_miss(outcomes: list[Any], ctx: Context) -> str | None:
    """`no Service port matched …; shop/web has http:80→8080` for a packet to a Service address."""
    spec = ctx.spec
    if any(o.labels.get("service") for o in outcomes) or not spec.dst:
        return None
    try:
        dst = ipaddress.ip_address(spec.dst)
    except ValueError:
        return None
    ports = _ports_at(ctx, str(dst), nodeport=False)
    nodeport = False
    if not ports and int(dst) in ctx.local.get(dst.version, IntSet()) and spec.dport is not None \
            and NODEPORT_RANGE[0] <= spec.dport <= NODEPORT_RANGE[1]:
        ports, nodeport = _ports_at(ctx, str(dst), nodeport=True), True
    if not ports:
        return None
    proto = (spec.proto or "").upper()
    dport = spec.dport if spec.dport is not None else 0
    best = min(ports, key=lambda p: (bool(proto) and p.protocol != proto, abs(p.port - dport), p.service))
    same = [p for p in ports if p.service == best.service and (nodeport is False or p is best)]
    what = f"NodePort {spec.dport}" if nodeport else \
        f"{spec.proto or 'any protocol'} port {spec.dport if spec.dport is not None else '(any)'} of {dst}"
    listed = ", ".join(p.text() for p in same[:4]) + (", …" if len(same) > 4 else "")
    label = "has NodePort" if nodeport else "has"
    return f"no Service port matched {what}; nearest: {best.service} {label} {listed}"


# -- putting it together ---------------------------------------------------------------

def annotate(result: Any, rs: Ruleset, objects: Any, local: dict[int, IntSet]) -> None:
    """Label each outcome with its Service, endpoint, reason and plain sources; note port misses."""
    hashed: dict[str, str] = {}
    if objects is not None:
        from kpa.k8s.kubeproxy import hash_names
        from kpa.k8s.naming import service_port_name

        hashed = hash_names([(service_port_name(s.namespace, s.name, p.name), p.protocol)
                             for s in objects.services for p in s.ports])
    ctx = Context(rs, objects, result.packet, local, hashed, pod_ranges(rs, objects))
    services: dict[str, ServiceHit] = {}
    for o in result.outcomes:
        hit = service_hit(o.path, hashed)
        if hit is None and o.verdict != "ACCEPT":
            hit = _service_from_reason_path(o, ctx)
        if hit is not None:
            if hit.entry is None or ctx.objects is not None:
                by_addr = _service_by_address(objects, result.packet, local)
                if by_addr is not None and by_addr.spn == hit.spn:
                    hit = by_addr
            o.labels["service"] = hit.spn
            o.labels["service_entry"] = hit.entry or ""
            services.setdefault(hit.text(), hit)
        label = endpoint_label(o, hit, objects)
        if label:
            o.labels["endpoint"] = label
        why = kubernetes_reason(o, hit, ctx)
        if why:
            o.labels["netfilter_reason"] = o.reason
            o.reason = why
        o.labels["sources"] = plain_sources(o.conditions, ctx, _endpoint_ip(o))
        o.labels["share"] = fmt_share(o.probability)
    result.labels["services"] = [h.to_json() for h in services.values()]
    miss = service_port_miss(result.outcomes, ctx)
    if miss:
        result.labels["service_port_miss"] = miss


def _service_from_reason_path(o: Any, ctx: Context) -> ServiceHit | None:
    for note in o.state.notes:
        # nftables mode names the Service port in the comment of its map element.
        m = re.fullmatch(r"@(no-endpoint-(?:services|nodeports)) element '(.+)'", note)
        named = _comment_spn(m.group(2)) if m else None
        if m and named:
            by_addr = _service_by_address(ctx.objects, ctx.spec, ctx.local)
            entry = "nodePort" if m.group(1).endswith("nodeports") else (
                by_addr.entry if by_addr is not None else None)
            return ServiceHit(*named, entry)
    for h in o.path[-2:]:
        if "@no-endpoint-services" in h.text or "@no-endpoint-nodeports" in h.text:
            return _service_by_address(ctx.objects, ctx.spec, ctx.local)
    return None


__all__ = ["ServiceHit", "annotate", "external_exclusions", "fmt_share", "plain_sources", "service_hit",
           "service_port_miss"]
