"""DOT and Mermaid for one Service's graph (kpa graph --service)."""

from __future__ import annotations

from kpa.k8s.servicegraph import KINDS, GEdge, ServiceGraph

_SHAPES = {"entry": "box", "chain": "ellipse", "endpoint": "box3d", "action": "diamond"}
_COLOURS = {"entry": "#dbeafe", "chain": "#f3f4f6", "endpoint": "#dcfce7", "action": "#fee2e2"}


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def edge_label(e: GEdge) -> str:
    parts = [p for p in (e.share, e.label) if p]
    return "\n".join(parts)


def to_dot(g: ServiceGraph) -> str:
    out = ["digraph service {", "  rankdir=LR;", f"  label={_q(g.title)}; labelloc=t;",
           '  node [style=filled, fontname="Helvetica", fontsize=10];', '  edge [fontname="Helvetica", fontsize=9];']
    for n in g.nodes.values():
        out.append(f"  {_q(n.id)} [label={_q(n.label)}, shape={_SHAPES[n.kind]}, fillcolor={_q(_COLOURS[n.kind])}];")
    for e in g.edges:
        attrs = f" [label={_q(edge_label(e))}]" if edge_label(e) else ""
        out.append(f"  {_q(e.src)} -> {_q(e.dst)}{attrs};")
    out.append('  subgraph cluster_legend { label="legend"; fontsize=10;')
    for kind, text in KINDS.items():
        out.append(f"    {_q('legend/' + kind)} [label={_q(text)}, shape={_SHAPES[kind]}, "
                   f"fillcolor={_q(_COLOURS[kind])}];")
    out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"


def to_mermaid(g: ServiceGraph) -> str:
    ids = {nid: f"n{i}" for i, nid in enumerate(g.nodes)}
    shape = {"entry": ("[", "]"), "chain": ("(", ")"), "endpoint": ("[[", "]]"), "action": ("{", "}")}

    def text(s: str) -> str:
        return '"' + s.replace('"', "'").replace("\n", "<br>") + '"'

    out = ["flowchart LR"]
    for nid, n in g.nodes.items():
        a, b = shape[n.kind]
        out.append(f"  {ids[nid]}{a}{text(n.label)}{b}")
    for e in g.edges:
        label = edge_label(e)
        arrow = f" -->|{text(label)}| " if label else " --> "
        out.append(f"  {ids[e.src]}{arrow}{ids[e.dst]}")
    out.append("  subgraph legend")
    for i, (kind, desc) in enumerate(KINDS.items()):
        a, b = shape[kind]
        out.append(f"    legend{i}{a}{text(desc)}{b}")
    out.append("  end")
    return "\n".join(out) + "\n"


__all__ = ["edge_label", "to_dot", "to_mermaid"]
