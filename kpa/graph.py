"""The chain graph: which chain jumps or goes to which, as a networkx DiGraph.

Nodes are (family, table, chain); each rule that jumps or goes somewhere adds
an edge carrying the rule's location. Checks on the graph find jumps to
chains that do not exist, user chains nothing reaches, and loops.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from kpa.netfilter.model import Ruleset

Node = tuple[str, str, str]


def node_label(node: Node) -> str:
    return f"{node[1]}/{node[2]}"


def build_graph(rs: Ruleset) -> nx.DiGraph:
    g = nx.DiGraph()
    for t in rs.tables:
        for c in t.chains.values():
            g.add_node((t.family.value, t.name, c.name), base=c.is_base, hook=c.hook, rules=len(c.rules),
                       defined=True, source=t.source)
        for c in t.chains.values():
            src = (t.family.value, t.name, c.name)
            for r in c.rules:
                for kind, target in r.chain_refs():
                    dst = (t.family.value, t.name, target)
                    if dst not in g:
                        g.add_node(dst, base=False, hook=None, rules=0, defined=False, source=t.source)
                    data = g.get_edge_data(src, dst)
                    if data is None:
                        g.add_edge(src, dst, kind=kind.value.lower(), rules=[str(r.location)])
                    else:
                        data["rules"].append(str(r.location))
    return g


@dataclass
class GraphProblems:
    dangling: list[tuple[Node, list[str]]] = field(default_factory=list)
    unreferenced: list[Node] = field(default_factory=list)
    cycles: list[list[Node]] = field(default_factory=list)


def find_problems(g: nx.DiGraph) -> GraphProblems:
    p = GraphProblems()
    for n, d in g.nodes(data=True):
        if not d["defined"]:
            refs = [loc for _, _, e in g.in_edges(n, data=True) for loc in e["rules"]]
            p.dangling.append((n, refs))
        elif not d["base"] and g.in_degree(n) == 0:
            p.unreferenced.append(n)
    p.cycles = [list(c) for c in nx.simple_cycles(g)]
    return p


def reachable(g: nx.DiGraph, start: Node) -> nx.DiGraph:
    nodes = {start} | nx.descendants(g, start)
    return g.subgraph(nodes).copy()


def find_chain(g: nx.DiGraph, name: str) -> list[Node]:
    return [n for n in g.nodes if n[2] == name or f"{n[1]}/{n[2]}" == name]


def to_dot(g: nx.DiGraph) -> str:
    lines = ["digraph kpa {", "  rankdir=LR;", '  node [shape=box, fontname="monospace"];']
    ids = {n: f"n{i}" for i, n in enumerate(sorted(g.nodes))}
    for n in sorted(g.nodes):
        d = g.nodes[n]
        style = ", style=bold" if d["base"] else (", style=dashed, color=red" if not d["defined"] else "")
        label = f"{n[0]} {n[1]}/{n[2]}\\n{d['rules']} rules"
        lines.append(f'  {ids[n]} [label="{label}"{style}];')
    for a, b, e in sorted(g.edges(data=True)):
        style = ", style=dashed" if e["kind"] == "goto" else ""
        lines.append(f'  {ids[a]} -> {ids[b]} [label="{len(e["rules"])}"{style}];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid(g: nx.DiGraph) -> str:
    lines = ["flowchart LR"]
    ids = {n: f"n{i}" for i, n in enumerate(sorted(g.nodes))}
    for n in sorted(g.nodes):
        lines.append(f'  {ids[n]}["{n[1]}/{n[2]}"]')
    for a, b, e in sorted(g.edges(data=True)):
        arrow = "-.->" if e["kind"] == "goto" else "-->"
        lines.append(f"  {ids[a]} {arrow} {ids[b]}")
    return "\n".join(lines) + "\n"


def to_json(g: nx.DiGraph) -> dict[str, Any]:
    return {
        "nodes": [{"family": n[0], "table": n[1], "chain": n[2], **g.nodes[n]} for n in sorted(g.nodes)],
        "edges": [{"from": node_label(a), "to": node_label(b), "family": a[0], "kind": e["kind"], "rules": e["rules"]}
                  for a, b, e in sorted(g.edges(data=True))],
    }


def dumps_json(g: nx.DiGraph) -> str:
    return json.dumps(to_json(g), indent=2) + "\n"


__all__ = ["build_graph", "find_problems", "reachable", "to_dot", "to_json", "to_mermaid"]
