"""One Service's chains as a picture: entry points, chains, endpoint pods, with shares and conditions.

`kpa graph --service NS/NAME` draws what kube-proxy built for one Service:
from each entry point (ClusterIP, NodePort, external and load-balancer IPs)
through its chains (KUBE-SVC/EXT/FW/SVL/SEP, or nftables mode's
service-/external-/firewall-/local-/endpoint- chains) to the endpoint pods,
with each edge labelled by the rule's match conditions and the endpoint's
exact share of traffic. Only chains the Service's entry points reach are
drawn, so no chain floats unconnected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from kpa.k8s.kubeproxy import ServicePortView, _nft_endpoint_split, endpoint_split
from kpa.k8s.story import fmt_share
from kpa.netfilter.model import Rule, Ruleset, Table

KINDS = {
    "entry": "entry point (address:port)",
    "chain": "chain (click for its rules)",
    "endpoint": "endpoint pod (address:port, pod, node)",
    "action": "what a rule does (masquerade mark, drop, reject)",
}


@dataclass
class GNode:
    id: str
    label: str
    kind: str  # entry, chain, endpoint, action
    detail: list[str] = field(default_factory=list)  # e.g. a chain's rules "FILE:LINE  text"


@dataclass
class GEdge:
    src: str
    dst: str
    label: str = ""
    share: str | None = None
    location: str | None = None


@dataclass
class ServiceGraph:
    title: str
    nodes: dict[str, GNode] = field(default_factory=dict)
    edges: list[GEdge] = field(default_factory=list)

    def add(self, node: GNode) -> GNode:
        return self.nodes.setdefault(node.id, node)

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "legend": KINDS,
                "nodes": [{"id": n.id, "label": n.label, "kind": n.kind, "rules": n.detail}
                          for n in self.nodes.values()],
                "edges": [{"from": e.src, "to": e.dst, "label": e.label, "share": e.share, "rule": e.location}
                          for e in self.edges]}


def conditions(rule: Rule) -> str:
    """The match part of a rule's text, without chain name, comment and target."""
    text = rule.text
    text = re.sub(r"^-A \S+\s*", "", text)
    text = re.sub(r'-m comment --comment ("[^"]*"|\S+)\s*', "", text)
    text = re.sub(r'\s*comment "[^"]*"', "", text)
    text = re.sub(r"-m (tcp|udp|sctp)(?=\s|$)", "", text)
    text = re.sub(r"\s*(-j|-g|jump|goto)\s+\S+.*$", "", text)
    text = re.sub(r"\s*-m statistic --mode random --probability \S+", "", text)
    text = re.sub(r"numgen \w+ mod \d+ vmap.*$", "", text)
    text = re.sub(r"\s*(dnat|snat) (ip6? )?to \S+.*$", "", text)
    return " ".join(text.split())


def _chain_id(table: Table, name: str) -> str:
    return f"{table.family.value}/{table.name}/{name}"


def build(rs: Ruleset, views: list[ServicePortView], objects: Any, title: str) -> ServiceGraph:
    g = ServiceGraph(title)
    for v in views:
        table = _table_of(rs, v)
        if table is None:
            continue
        starts: list[tuple[str, str]] = []
        for e in v.entries:
            addr = e.address or "node addresses"
            where = f"[{addr}]" if ":" in addr else addr
            entry = g.add(GNode(f"entry/{v.name}/{e.kind}/{addr}/{e.port}", f"{e.kind}\n{where}:{e.port}", "entry",
                                [f"{v.name} {v.protocol or ''}".strip(), e.location]))
            if e.chain in ("REJECT", "DROP"):
                sink = g.add(GNode(f"action/{e.chain}", e.chain, "action"))
                g.edges.append(GEdge(entry.id, sink.id, "no endpoints", None, e.location))
                continue
            starts.append((entry.id, e.chain))
            if e.kind == "loadBalancerIP" and "firewall" in v.chains:
                # nftables mode checks source ranges in a filter chain before the nat one.
                starts.append((entry.id, v.chains["firewall"]))
        _walk(g, rs, table, v, starts, objects)
    for edge in g.edges:
        if edge.dst not in g.nodes:
            g.add(GNode(edge.dst, edge.dst.rsplit("/", 1)[-1] + "\n(not defined)", "action"))
    return g


def _table_of(rs: Ruleset, v: ServicePortView) -> Table | None:
    wanted = next(iter(v.chains.values()), None) or next((e.chain for e in v.entries), None)
    for t in rs.tables:
        if wanted and wanted in t.chains and (t.family.version == (6 if v.family == "ipv6" else 4)
                                              or t.family.value == "inet"):
            return t
    return None


def _walk(g: ServiceGraph, rs: Ruleset, table: Table, v: ServicePortView, starts: list[tuple[str, str]],
          objects: Any) -> None:
    seen: set[str] = set()
    queue: list[str] = []
    for entry_id, first in starts:
        g.edges.append(GEdge(entry_id, _chain_id(table, first)))
        queue.append(first)
    while queue:
        name = queue.pop(0)
        if name in seen:
            continue
        seen.add(name)
        chain = table.chains.get(name)
        if chain is None:
            continue
        cid = _chain_id(table, name)
        g.add(GNode(cid, name, "chain", [f"{r.location}  {r.text}" for r in chain.rules]))
        split = endpoint_split(chain) if name.startswith("KUBE-") else _nft_endpoint_split(chain)
        shares: dict[tuple[int, str], Fraction] = {(id(r), target): p for r, target, p in split}
        for r in chain.rules:
            cond = conditions(r)
            targets = [t for _, t in r.chain_refs()]
            if not targets and r.comment and "will be dropped by" in r.comment:
                sink = g.add(GNode("action/DROP", "DROP", "action"))
                g.edges.append(GEdge(cid, sink.id, "other sources (dropped by KUBE-PROXY-FIREWALL)", None,
                                     str(r.location)))
                continue
            if not targets:
                verdict = _verdict_word(r)
                if verdict:
                    sink = g.add(GNode(f"action/{verdict}", verdict, "action"))
                    g.edges.append(GEdge(cid, sink.id, cond, None, str(r.location)))
                if "dnat to" in r.text or "-j DNAT" in r.text:
                    ep = _endpoint_node(g, r, v, objects)
                    g.edges.append(GEdge(cid, ep.id, cond, None, str(r.location)))
                continue
            for target in targets:
                share = shares.get((id(r), target))
                label = cond
                if target in ("KUBE-MARK-MASQ", "mark-for-masquerade"):
                    sink = g.add(GNode("action/masquerade", "mark for masquerade", "action"))
                    g.edges.append(GEdge(cid, sink.id, label, None, str(r.location)))
                    continue
                if target in ("KUBE-MARK-DROP",):
                    sink = g.add(GNode("action/DROP", "DROP", "action"))
                    g.edges.append(GEdge(cid, sink.id, label, None, str(r.location)))
                    continue
                if "--rcheck" in r.text or "@affinity-" in r.text:
                    label = "returning client (session affinity)" + (f"; {label}" if label else "")
                g.edges.append(GEdge(cid, _chain_id(table, target), label,
                                     fmt_share(share) if share is not None else None, str(r.location)))
                queue.append(target)


def _verdict_word(r: Rule) -> str | None:
    m = re.search(r"(?:-j\s+|\s|^)(DROP|REJECT|drop|reject)\b", r.text)
    return m.group(1).upper() if m else None


def _endpoint_node(g: ServiceGraph, r: Rule, v: ServicePortView, objects: Any) -> GNode:
    m = re.search(r"(?:--to-destination|dnat to)\s+(\S+)", r.text)
    addr = m.group(1) if m else "?"
    label = addr
    detail: list[str] = []
    if objects is not None and v.name:
        ns_name, _, port = v.name.partition(":")
        ns, _, name = ns_name.partition("/")
        host = addr.rsplit(":", 1)[0].strip("[]")
        for ep in objects.endpoints_for(ns, name, port):
            if ep.address == host:
                pod = ep.target_ref.name if ep.target_ref is not None else "?"
                label = f"{addr}\npod {pod}\nnode {ep.node_name or '?'}"
                state = [k for k, on in (("ready", ep.ready), ("serving", ep.serving),
                                         ("terminating", ep.terminating)) if on]
                detail.append(", ".join(state) or "not ready")
    return g.add(GNode(f"endpoint/{addr}", label, "endpoint", detail))


__all__ = ["KINDS", "GEdge", "GNode", "ServiceGraph", "build", "conditions"]
