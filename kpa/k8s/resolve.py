"""Turning Kubernetes names into packet fields: --to svc/NS/NAME, --from pod/NS/NAME."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from kpa.errors import KpaError


@dataclass
class Resolved:
    dst: str | None = None
    dport: int | None = None
    proto: str | None = None
    src: str | None = None
    origin: str | None = None


def _need(objects: Any, what: str) -> Any:
    if objects is None:
        raise KpaError(f"{what} needs cluster objects: give --cluster FILE|DIR")
    return objects


def resolve_service(
    objects: Any, ref: str, via: str, node_ips: list[str], proto: str | None
) -> Resolved:
    body = ref[4:] if ref.startswith("svc/") else ref
    ns_name, _, port_ref = body.partition(":")
    if ns_name.count("/") != 1:
        raise KpaError(f"expected svc/NAMESPACE/NAME[:PORT], found {ref!r}")
    ns, name = ns_name.split("/")
    svc = _need(objects, "--to").service(ns, name)
    if svc is None:
        import difflib

        names = [f"{s.namespace}/{s.name}" for s in objects.services]
        close = difflib.get_close_matches(f"{ns}/{name}", names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KpaError(f"no Service {ns}/{name} in the cluster objects{hint}")
    ports = list(svc.ports)
    if port_ref:
        ports = [p for p in ports if p.name == port_ref or str(p.port) == port_ref]
    if proto:
        ports = [p for p in ports if p.protocol.lower() == proto]
    if not ports:
        raise KpaError(
            f"Service {ns}/{name} has no port {port_ref or '(any)'}; it has "
            + ", ".join(f"{p.name or '-'}:{p.port}/{p.protocol}" for p in svc.ports)
        )
    if len(ports) > 1:
        raise KpaError(
            f"Service {ns}/{name} has several ports; pick one with :PORT ("
            + ", ".join(p.name or str(p.port) for p in ports)
            + ")"
        )
    port = ports[0]
    r = Resolved(proto=port.protocol.lower(), dport=port.port)
    if via == "cluster-ip":
        if not svc.cluster_ips:
            raise KpaError(f"Service {ns}/{name} has no cluster IP (headless?)")
        r.dst = svc.cluster_ips[0]
    elif via == "nodeport":
        if port.node_port is None:
            raise KpaError(f"Service {ns}/{name} port {port.name or port.port} has no NodePort")
        if not node_ips:
            raise KpaError(
                "--via nodeport needs the node's address: give --node-ip or --node with a Node object"
            )
        r.dst, r.dport = node_ips[0], port.node_port
    elif via == "lb":
        if not svc.load_balancer_ips:
            raise KpaError(f"Service {ns}/{name} has no load-balancer IP")
        r.dst = svc.load_balancer_ips[0]
    else:
        if not svc.external_ips:
            raise KpaError(f"Service {ns}/{name} has no externalIPs")
        r.dst = svc.external_ips[0]
    return r


def resolve_source(objects: Any, ref: str, this_node: str | None, node_ips: list[str]) -> Resolved:
    if ref == "external":
        return Resolved(origin="prerouting")
    if ref.startswith("pod/"):
        parts = ref[4:].split("/")
        if len(parts) != 2:
            raise KpaError(f"expected pod/NAMESPACE/NAME, found {ref!r}")
        pod = next(
            (
                p
                for p in _need(objects, "--from pod/…").pods
                if (p.namespace, p.name) == tuple(parts)
            ),
            None,
        )
        if pod is None or not pod.pod_ips:
            raise KpaError(f"no Pod {parts[0]}/{parts[1]} with an IP in the cluster objects")
        if pod.host_network and pod.node_name == this_node:
            return Resolved(src=pod.pod_ips[0], origin="output")
        return Resolved(src=pod.pod_ips[0], origin="prerouting")
    if ref.startswith("node/"):
        name = ref[5:]
        if name == this_node:
            return Resolved(src=node_ips[0] if node_ips else None, origin="output")
        node = _need(objects, "--from node/…").node(name)
        if node is None or not node.internal_ips:
            raise KpaError(f"no Node {name} with an InternalIP in the cluster objects")
        return Resolved(src=node.internal_ips[0], origin="prerouting")
    try:
        ipaddress.ip_address(ref)
    except ValueError:
        raise KpaError(
            f"expected pod/NS/NAME, node/NAME, external or an IP for --from, found {ref!r}"
        ) from None
    return Resolved(src=ref, origin="output" if ref in node_ips else "prerouting")


def resolve_endpoints(
    objects: Any, inp: Any, to: str | None, via: str, from_: str | None, proto: str | None
) -> Resolved:
    node_ips = list(inp.node_ips)
    if not node_ips and objects is not None and inp.node:
        node = objects.node(inp.node)
        if node is not None:
            node_ips = list(node.internal_ips)
    out = Resolved()
    if to:
        out = resolve_service(objects, to, via, node_ips, proto)
    if from_:
        s = resolve_source(objects, from_, inp.node, node_ips)
        out.src, out.origin = s.src, s.origin
    return out


def name_endpoints(outcomes: list[Any], objects: Any) -> None:
    """Label each outcome's DNAT target with the pod behind it: `pod/NS/NAME on node X`."""
    if objects is None:
        return
    for o in outcomes:
        dnat = o.state.dnat
        if dnat is None:
            continue
        ip = str(ipaddress.ip_address(dnat[0]))
        pod = objects.pod_by_ip(ip)
        if pod is not None:
            where = f" on node {pod.node_name}" if pod.node_name else ""
            o.labels["endpoint"] = f"pod/{pod.namespace}/{pod.name}{where}"
            continue
        node = objects.node_by_ip(ip)
        if node is not None:
            o.labels["endpoint"] = f"node/{node.name}"


@dataclass(frozen=True)
class TracedEndpoint:
    """Where kube-proxy's rules send one new connection to a Service address."""

    address: str | None  # the DNAT target's address; None when nothing rewrote it
    port: int | None
    probability: Fraction
    verdict: str  # ACCEPT, DROP, REJECT
    reason: str
    masquerade: bool = False  # the rules source-NAT it to the node's address


def traced_endpoints(
    ruleset: Any,
    local_ips: list[str],
    src: str,
    dst: str,
    dport: int,
    proto: str,
    origin: str = "prerouting",
) -> list[TracedEndpoint]:
    """Trace a new connection from `src` to dst:dport through the node's rules and return
    each outcome's DNAT target with its exact probability. `origin` is "prerouting" for a
    pod's own network namespace and "output" for a process of the node (hostNetwork)."""
    from kpa.netfilter.engine import trace
    from kpa.netfilter.model import Family
    from kpa.netfilter.packet import PacketSpec, TraceContext, node_local_addresses

    family = Family.IPV6 if ipaddress.ip_address(dst).version == 6 else Family.IPV4
    spec = PacketSpec(family=family, src=src, dst=dst, proto=proto.lower(), dport=dport,
                      origin=origin, ctstate="NEW")
    ctx = TraceContext(local=node_local_addresses(local_ips))
    result = trace(ruleset, spec, ctx)
    out = []
    for outcome in result.outcomes:
        dnat = outcome.state.dnat
        address = str(ipaddress.ip_address(dnat[0])) if dnat is not None else None
        port = dnat[1] if dnat is not None else None
        out.append(TracedEndpoint(address, port, outcome.probability, outcome.verdict,
                                  outcome.reason, bool(outcome.state.masquerade)))
    return out
