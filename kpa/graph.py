"""The chain graph: which chain jumps or goes to which, as a networkx DiGraph.

Nodes are (family, table, chain); each rule that jumps or goes somewhere adds
an edge carrying the rule's location. Checks on the graph find jumps to
chains that do not exist, user chains nothing reaches, and loops.

`chain_problems` finds the same problems as `find_problems(build_graph(rs))`
without building the graph: `kpa check` on a large dump has tens of
thousands of chains and over a hundred thousand edges, and needs only the
few that are wrong. networkx is imported only where a graph is built.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import chain as chained
from typing import TYPE_CHECKING, Any

from kpa.netfilter.model import Ruleset

if TYPE_CHECKING:
    import networkx as nx

Node = tuple[str, str, str]


def node_label(node: Node) -> str:
    return f"{node[1]}/{node[2]}"


def build_graph(rs: Ruleset) -> nx.DiGraph:
    import networkx as nx

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
    """What is wrong with a ruleset's jump graph: jumps to missing chains, chains nothing reaches, loops."""

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
    p.cycles = _cycles(g)
    return p


def _cycles(g: nx.DiGraph) -> list[list[Node]]:
    import networkx as nx

    return [list(c) for c in nx.simple_cycles(g)]


def chain_problems(rs: Ruleset) -> GraphProblems:
    """Exactly `find_problems(build_graph(rs))`, in the same order, without building the graph.

    Jumps never leave their table, so each table is looked at on its own
    (tables of one family and name, which share nodes in the graph,
    together), with chains by name. The graph is built only to list loops
    when there are some, as networkx's simple_cycles lists them.
    """
    base, succ, referenced = _jumps(rs)
    p = GraphProblems()
    p.dangling = _dangling(rs, {key: group_refs - base[key].keys() for key, group_refs in referenced.items()})
    unreferenced = {key: {n for n in group_base.keys() - referenced[key] if not group_base[n]}
                    for key, group_base in base.items()}
    # In the graph's node order: an unreferenced node first appears as a chain.
    emitted: set[Node] = set()
    for t in rs.tables:
        fam, tname = t.family.value, t.name
        unused = unreferenced[(fam, tname)]
        if unused:
            for name in t.chains:
                node = (fam, tname, name)
                if name in unused and node not in emitted:
                    emitted.add(node)
                    p.unreferenced.append(node)
    if any(_has_cycle(group_succ) for group_succ in succ.values()):
        p.cycles = _cycles(build_graph(rs))
    return p


def dangling_jumps(rs: Ruleset) -> list[tuple[Node, list[str]]]:
    """Exactly `chain_problems(rs).dangling`, without looking for unreferenced chains and loops.

    Only which chains each group of tables defines and jumps to is needed, not each chain's jumps.
    """
    defined: dict[tuple[str, str], set[str]] = {}
    referenced: dict[tuple[str, str], set[str]] = {}
    for t in rs.tables:
        key = (t.family.value, t.name)
        defined.setdefault(key, set()).update(t.chains)
        referenced.setdefault(key, set()).update(
            [target for c in t.chains.values() for r in c.rules for _, target in r.chain_refs()])
    return _dangling(rs, {key: group_refs - defined[key] for key, group_refs in referenced.items()})


# Per group of tables: whether each defined chain is a base chain, each chain's targets over all its
# tables (in the graph's edge order), and every chain jumped to.
_Jumps = tuple[dict[tuple[str, str], dict[str, bool]],
               dict[tuple[str, str], dict[str, list[str]]],
               dict[tuple[str, str], set[str]]]


def _jumps(rs: Ruleset) -> _Jumps:
    """Every table's jumps; tables of one family and name are one group, as they are one in the graph."""
    # Whether a chain is a base chain: the last table to define it wins, as add_node updates.
    base: dict[tuple[str, str], dict[str, bool]] = {}
    succ: dict[tuple[str, str], dict[str, list[str]]] = {}
    for t in rs.tables:
        key = (t.family.value, t.name)
        group_base = base.setdefault(key, {})
        group_succ = succ.setdefault(key, {})
        for name, c in t.chains.items():
            group_base[name] = c.hook is not None
            rules = c.rules
            if rules:
                targets = [target for r in rules for _, target in r.chain_refs()]
                if targets:
                    if name in group_succ:
                        group_succ[name] = group_succ[name] + targets
                    else:
                        group_succ[name] = targets
    referenced = {key: set(chained.from_iterable(group_succ.values())) for key, group_succ in succ.items()}
    return base, succ, referenced


def _dangling(rs: Ruleset, missing: dict[tuple[str, str], set[str]]) -> list[tuple[Node, list[str]]]:
    """The jumps to the chains ``missing`` from each group, in the graph's node order (a dangling node
    first appears as a jump target), each with the locations of its jumps grouped by the chain they are in."""
    refs: dict[Node, dict[str, list[str]]] = {}
    for t in rs.tables:
        fam, tname = t.family.value, t.name
        gone = missing[(fam, tname)]
        if gone:
            for name, c in t.chains.items():
                for r in c.rules:
                    for _, target in r.chain_refs():
                        if target in gone:
                            refs.setdefault((fam, tname, target), {}).setdefault(name, []).append(str(r.location))
    return [(n, [loc for locs in by_src.values() for loc in locs]) for n, by_src in refs.items()]


def _has_cycle(succ: dict[str, list[str]]) -> bool:
    """Whether a table's jumps loop (a self-jump included).

    Peels off, round by round, the chains that jump only to chains already
    peeled or without jumps of their own; a round that peels nothing leaves
    only loops and what leads into them. kube-proxy's chains are a few levels
    deep, so a handful of rounds settle them; deeper graphs go to a
    depth-first search.
    """
    left = set(succ)
    for _ in range(8):
        if not left:
            return False
        peeled = {n for n in left if left.isdisjoint(succ[n])}
        if not peeled:
            return True
        left -= peeled
    return _dfs_has_cycle({n: succ[n] for n in left})


def _dfs_has_cycle(succ: dict[str, list[str]]) -> bool:
    done: set[str] = set()
    on_path: set[str] = set()
    for root, targets in succ.items():
        if root in done:
            continue
        stack = [(root, iter(targets))]
        on_path.add(root)
        while stack:
            node, it = stack[-1]
            for nxt in it:
                if nxt in on_path:
                    return True
                if nxt not in done:
                    nexts = succ.get(nxt)
                    if nexts is None:
                        done.add(nxt)
                        continue
                    on_path.add(nxt)
                    stack.append((nxt, iter(nexts)))
                    break
            else:
                stack.pop()
                on_path.discard(node)
                done.add(node)
    return False


def reachable(g: nx.DiGraph, start: Node) -> nx.DiGraph:
    import networkx as nx

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


__all__ = ["build_graph", "chain_problems", "dangling_jumps", "find_problems", "reachable", "to_dot", "to_json", "to_mermaid"]
