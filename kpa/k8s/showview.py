"""`kpa show`: what kube-proxy built for each Service port, with what the cluster says about it.

The rules give the entry points, chains, endpoints and their shares; the
objects (when given) add each endpoint's pod, node and conditions, and the
Service's traffic policies, session affinity and source ranges. Where there
are no objects, affinity and source ranges are read from the rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from kpa.k8s.kubeproxy import ServicePortView, ShareTexts, natural_key, service_ports_ahead
from kpa.k8s.story import fmt_share
from kpa.netfilter.model import Ruleset

if TYPE_CHECKING:
    from kpa.k8s.objects import EndpointState


def _split_spn(spn: str) -> tuple[str, str, str]:
    ns_name, _, port = spn.partition(":")
    ns, _, name = ns_name.partition("/")
    return ns, name, port


def _host_port(address: str | None) -> tuple[str | None, int | None]:
    if not address:
        return None, None
    if address.startswith("["):
        host, _, port = address[1:].partition("]:")
        return host, int(port) if port.isdigit() else None
    host, _, port = address.rpartition(":")
    if not host:
        return address, None
    return host, int(port) if port.isdigit() else None


_RCHECK = re.compile(r"--rcheck --seconds (\d+)")


def _rules_affinity(rs: Ruleset, v: ServicePortView) -> str | None:
    for kind, chain_name in v.chains.items():
        if kind not in ("SVC", "SVL", "service", "local"):
            continue
        for t in rs.tables:
            c = t.chains.get(chain_name)
            if c is None:
                continue
            for r in c.rules:
                text = r.text
                # (the substring first: most rules have no --rcheck, and finding that is cheaper)
                if "--rcheck --seconds " in text and (m := _RCHECK.search(text)):
                    return f"ClientIP ({m.group(1)}s)"
                if "@affinity-" in text:
                    return "ClientIP"
    return None


def _rules_source_ranges(rs: Ruleset, v: ServicePortView) -> list[str]:
    out: list[str] = []
    for kind, chain_name in v.chains.items():
        if kind not in ("FW", "firewall"):
            continue
        for t in rs.tables:
            c = t.chains.get(chain_name)
            if c is None:
                continue
            for r in c.rules:
                m = re.search(r"-s (\S+) .*-j KUBE-(?:EXT|SVC|XLB)-", r.text)
                if m:
                    out.append(m.group(1).removesuffix("/32"))
                m = re.search(r"saddr != \{ ([^}]*) \} drop", r.text) or re.search(r"saddr != (\S+) drop", r.text)
                if m:
                    out.extend(x.strip() for x in m.group(1).split(","))
    return list(dict.fromkeys(out))


@dataclass
class RulesDoc:
    """A Service port's document as far as the rules alone tell (`describe_rules`)."""

    view: ServicePortView
    doc: dict[str, Any]
    affinity: str | None
    ranges: list[str]
    # Each endpoint's document with the address and port of its DNAT target.
    endpoints: list[tuple[dict[str, Any], str | None, int | None]]


def describe_rules(views: list[ServicePortView], rs: Ruleset) -> list[RulesDoc]:
    """What `describe` reads of the rules, in its order; `describe_objects` adds the objects once."""
    out: list[RulesDoc] = []
    # The texts of each share, once per Fraction object (see `ShareTexts`).
    memo: ShareTexts = {}
    shares: dict[int, tuple[Fraction, str]] = {}
    for v in sorted(views, key=lambda v: (natural_key(v.name or "~"), v.family)):
        doc = v.to_json(memo)
        endpoints = []
        for key, eps in (("endpoints", v.endpoints), ("local_endpoints", v.local_endpoints)):
            for e, view in zip(doc[key], eps, strict=True):
                # The share as a float, which is what the exact fraction prints as.
                p = view.probability
                share = shares.get(id(p))
                if share is None or share[0] is not p:
                    share = shares[id(p)] = (p, fmt_share(p))
                e["share"] = share[1]
                endpoints.append((e, *_host_port(e["endpoint"])))
        out.append(RulesDoc(v, doc, _rules_affinity(rs, v), _rules_source_ranges(rs, v), endpoints))
    return out


def describe_ahead(rs: Ruleset) -> tuple[list[ServicePortView], list[RulesDoc]] | None:
    """`service_ports_ahead` and `describe_rules` of its views: `kpa show`'s work before the objects are read."""
    views = service_ports_ahead(rs)
    return None if views is None else (views, describe_rules(views, rs))


def describe_objects(described: list[RulesDoc], objects: Any) -> list[dict[str, Any]]:
    """The documents of `describe_rules` completed with the objects (each document is changed in place)."""
    docs: list[dict[str, Any]] = []
    for d in described:
        v, doc = d.view, d.doc
        svc = None
        ns = name = port = ""
        if v.name:
            ns, name, port = _split_spn(v.name)
            svc = objects.service(ns, name) if objects is not None else None
        policies: dict[str, str] = {}
        affinity = d.affinity
        ranges = d.ranges
        if svc is not None:
            doc["type"] = svc.type
            policies = {"externalTrafficPolicy": svc.external_traffic_policy,
                        "internalTrafficPolicy": svc.internal_traffic_policy}
            if svc.session_affinity != "None":
                t = svc.session_affinity_timeout
                affinity = f"{svc.session_affinity}" + (f" ({t}s)" if t else "")
            ranges = list(svc.load_balancer_source_ranges) or ranges
            lb_ips = svc.load_balancer_ips  # (worked out from the ingress list each time it is asked)
            for e in doc["entries"]:
                if e["address"] in lb_ips:
                    e["kind"] = "loadBalancerIP"
                elif e["address"] in svc.external_ips:
                    e["kind"] = "externalIP"
            doc["load_balancer_ips"] = list(lb_ips)
            doc["external_ips"] = list(svc.external_ips)
        elif v.local_endpoints or any(k in ("SVL", "local") for k in v.chains):
            policies = {"trafficPolicy": "Local (a local-endpoints chain exists)"}
        doc["traffic_policies"] = policies
        doc["session_affinity"] = affinity or "None"
        doc["source_ranges"] = ranges
        # Each backend's conditions, node and target, without a ServiceEndpoint for each.
        states: dict[tuple[str, int | None], EndpointState] = {}
        if svc is not None:
            states = objects.endpoint_states(ns, name, port)  # type: ignore[assignment]
        for e, host, p in d.endpoints:
            state = states.get((host or "", p))
            if state is not None:
                ready, serving, terminating, node, ref = state
                e["pod"] = f"{ref[1] or ns}/{ref[2]}" if ref is not None and ref[0] == "Pod" else None
                e["node"] = node
                e["ready"], e["serving"], e["terminating"] = ready, serving, terminating
            elif objects is not None and host:
                pod = objects.pod_by_ip(host)
                e["pod"] = f"{pod.namespace}/{pod.name}" if pod is not None else None
                e["node"] = pod.node_name if pod is not None else None
        docs.append(doc)
    return docs


def describe(views: list[ServicePortView], rs: Ruleset, objects: Any) -> list[dict[str, Any]]:
    """One JSON-able document per Service port, sorted naturally (svc-2 before svc-1000)."""
    return describe_objects(describe_rules(views, rs), objects)


__all__ = ["RulesDoc", "describe", "describe_ahead", "describe_objects", "describe_rules"]
