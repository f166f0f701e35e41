"""Self-contained HTML pages for `kpa trace -o html` and `kpa graph -o html`.

Everything is inline (CSS, script, SVG); the page fetches nothing, so it
opens from a file, an e-mail attachment or a CI artifact alike. Graphs are
laid out here, in layers from the entry points, so no graphviz is needed.
"""

from __future__ import annotations

import html
import json
from typing import Any

from kpa.k8s.servicegraph import KINDS, ServiceGraph

CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#111827;background:#fff}
header{padding:12px 20px;background:#1f2937;color:#f9fafb}
header h1{font-size:18px;margin:0 0 4px 0}
header .sub{font-size:13px;color:#d1d5db}
main{padding:16px 20px}
.miss{background:#fef3c7;border:1px solid #f59e0b;padding:8px 12px;margin:0 0 12px 0;font-weight:600}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #e5e7eb;vertical-align:top}
th{background:#f3f4f6;font-weight:600}
tr.outcome{cursor:pointer}
tr.outcome:hover,tr.outcome.open{background:#eff6ff}
.ACCEPT{color:#047857;font-weight:700}.DROP{color:#b91c1c;font-weight:700}.REJECT{color:#b45309;font-weight:700}
.why{color:#7c2d12;font-size:13px}
.hops{display:none}.hops.open{display:table-row}
.hop{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;padding:3px 6px;border-left:3px solid #93c5fd;
margin:2px 0;cursor:pointer;background:#f9fafb}
.hop:hover{background:#e0f2fe}
.hop .where{color:#6b7280}
.rule{display:none;margin:4px 0 8px 16px;border:1px solid #d1d5db;background:#fff}
.rule.open{display:block}
.rule pre{margin:0;padding:4px 8px;font-size:12px;white-space:pre-wrap}
.rule pre.hit{background:#fef9c3;font-weight:700}
.quiet{opacity:.6}
.legend{display:flex;gap:18px;flex-wrap:wrap;margin:8px 0 12px 0;font-size:13px}
.legend span.sw{display:inline-block;width:14px;height:14px;border:1px solid #6b7280;margin-right:6px;vertical-align:middle}
#panel{border:1px solid #d1d5db;padding:8px 12px;margin-top:12px;min-height:40px;background:#f9fafb}
#panel pre{margin:0;font-size:12px;white-space:pre-wrap}
svg .node{cursor:pointer}
svg .node:hover rect{stroke-width:2.5}
svg text{font-family:system-ui,Helvetica,Arial,sans-serif}
"""

COLOURS = {"entry": "#dbeafe", "chain": "#f3f4f6", "endpoint": "#dcfce7", "action": "#fee2e2"}


def _page(title: str, subtitle: str, body: str, script: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>"
            f"<header><h1>{html.escape(title)}</h1><div class=\"sub\">{html.escape(subtitle)}</div></header>"
            f"<main>{body}</main><script>{script}</script></body></html>\n")


# -- trace -----------------------------------------------------------------------------

TRACE_JS = """
document.querySelectorAll('tr.outcome').forEach(function(row){
  row.addEventListener('click',function(){
    var hops=document.getElementById('hops-'+row.dataset.n);
    var open=!hops.classList.contains('open');
    hops.classList.toggle('open',open);row.classList.toggle('open',open);
  });
});
document.querySelectorAll('.hop').forEach(function(h){
  h.addEventListener('click',function(ev){
    ev.stopPropagation();
    document.getElementById(h.dataset.rule).classList.toggle('open');
  });
});
// Links to one outcome (#outcome-2) or one rule of it (#rule-2-5) open them.
(function(){
  var h=decodeURIComponent(location.hash.slice(1));var m=/^(?:outcome|rule)-(\\d+)/.exec(h);if(!m)return;
  document.getElementById('outcome-'+m[1]).click();
  var hop=document.querySelector('[data-rule="'+h+'"]');if(hop)hop.click();
})();
"""


def _context_lines(sources: dict[str, list[str]], file: str | None, line: int | None, around: int = 2) -> str:
    if not file or not line or file not in sources:
        return ""
    lines = sources[file]
    out = []
    for n in range(max(1, line - around), min(len(lines), line + around) + 1):
        cls = " class=\"hit\"" if n == line else ""
        out.append(f"<pre{cls}>{n:>5}  {html.escape(lines[n - 1])}</pre>")
    return "".join(out)


def trace_html(doc: dict[str, Any], rows: list[dict[str, Any]], sources: dict[str, list[str]],
               quiet: dict[int, set[int]]) -> str:
    """A trace as a page: the summary table; a click on an outcome opens its hops, a click on a hop its rule."""
    packet = doc["packet_line"]
    svc = doc.get("service")
    subtitle = f"Service {svc['service_port']} ({svc['entry']})" if svc else "no Service"
    body = []
    if doc.get("service_port_miss"):
        body.append(f"<div class=\"miss\">No Service port matched: "
                    f"{html.escape(doc['service_port_miss'].removeprefix('no Service port matched '))}</div>")
    body.append("<table id=\"outcomes\"><thead><tr><th>#</th><th>Result</th><th>Endpoint</th><th>Share</th>"
                "<th>Masquerade</th><th>Sources</th></tr></thead><tbody>")
    for i, r in enumerate(rows, 1):
        o = r["outcome"]
        why = f"<div class=\"why\">why: {html.escape(o['reason'])}</div>" if o["verdict"] != "ACCEPT" else ""
        unknown = "".join(f"<div class=\"why\">unknown: {html.escape(u)}</div>" for u in o["unknown"])
        body.append(
            f"<tr class=\"outcome\" data-n=\"{i}\" id=\"outcome-{i}\"><td>{i}</td>"
            f"<td class=\"{o['verdict']}\">{html.escape(r['result'])}</td>"
            f"<td>{html.escape(r['endpoint'])}{why}{unknown}</td><td>{html.escape(r['share'])}</td>"
            f"<td>{html.escape(r['masq'])}</td><td>{html.escape(r['sources'])}</td></tr>")
        hops = []
        for j, h in enumerate(o["path"]):
            rid = f"rule-{i}-{j}"
            where = f"{h['file']}:{h['line']}" if h.get("file") else ""
            rule = f"#{h['rule']}" if h["rule"] is not None else "policy"
            cls = "hop quiet" if j in quiet.get(i - 1, set()) else "hop"
            note = f" ⇒ {html.escape(h['note'])}" if h.get("note") else ""
            hops.append(
                f"<div class=\"{cls}\" data-rule=\"{rid}\">{html.escape(h['hook'])} "
                f"{html.escape(h['table'])}/{html.escape(h['chain'])} {rule} "
                f"<span class=\"where\">{html.escape(where)}</span>{note}</div>"
                f"<div class=\"rule\" id=\"{rid}\"><pre>{html.escape(h['text'])}</pre>"
                f"{_context_lines(sources, h.get('file'), h.get('line'))}</div>")
        body.append(f"<tr class=\"hops\" id=\"hops-{i}\"><td></td><td colspan=\"5\">{''.join(hops)}</td></tr>")
    body.append("</tbody></table>")
    body.append("<p>Click an outcome for the rules it passed through; click a rule for its lines in the dump. "
                "Faded rules changed nothing.</p>")
    for w in doc.get("warnings", []):
        body.append(f"<p class=\"why\">warning: {html.escape(w)}</p>")
    return _page(f"kpa trace: {packet}", subtitle, "".join(body), TRACE_JS)


# -- graphs -----------------------------------------------------------------------------

GRAPH_JS = """
var data=JSON.parse(document.getElementById('graph-data').textContent);
var byId={};data.nodes.forEach(function(n){byId[n.id]=n;});
document.querySelectorAll('svg .node').forEach(function(el){
  el.addEventListener('click',function(){
    var n=byId[el.dataset.id];var p=document.getElementById('panel');
    p.innerHTML='';var h=document.createElement('strong');h.textContent=n.label.replace(/\\n/g,' ');p.appendChild(h);
    var pre=document.createElement('pre');pre.textContent=(n.rules||[]).join('\\n')||'(no rules)';p.appendChild(pre);
    document.querySelectorAll('svg .node rect').forEach(function(r){r.setAttribute('stroke-width','1.2');});
    el.querySelector('rect').setAttribute('stroke-width','3');
  });
});
// A link to #node=ID opens that box's rules.
(function(){
  var h=decodeURIComponent(location.hash.slice(1));if(h.indexOf('node=')!==0)return;
  var el=document.querySelector('svg .node[data-id="'+h.slice(5).replace(/"/g,'\\"')+'"]');
  if(el)el.dispatchEvent(new MouseEvent('click',{bubbles:true}));
})();
"""

CHAR_W = 7.4
LINE_H = 14


def _size(label: str) -> tuple[float, float]:
    lines = label.split("\n")
    return max(len(x) for x in lines) * CHAR_W + 20, len(lines) * LINE_H + 12


def layout(g: ServiceGraph) -> dict[str, tuple[float, float, float, float]]:
    return _layout(g)[0]


def _layout(g: ServiceGraph) -> tuple[dict[str, tuple[float, float, float, float]], dict[str, int],
                                      list[tuple[float, float, float]]]:
    """Layers from the nodes nothing points to, left to right; each node placed near its parents."""
    preds: dict[str, list[str]] = {n: [] for n in g.nodes}
    succ: dict[str, list[str]] = {n: [] for n in g.nodes}
    for e in g.edges:
        if e.src in g.nodes and e.dst in g.nodes and e.src != e.dst:
            preds[e.dst].append(e.src)
            succ[e.src].append(e.dst)
    layer: dict[str, int] = {}
    roots = [n for n in g.nodes if not preds[n]] or list(g.nodes)[:1]
    frontier = list(roots)
    for n in roots:
        layer[n] = 0
    steps = 0
    while frontier and steps < 10 * len(g.nodes) + 10:
        steps += 1
        nxt = []
        for n in frontier:
            for m in succ[n]:
                if layer.get(m, -1) < layer[n] + 1 and layer[n] + 1 < len(g.nodes):
                    layer[m] = layer[n] + 1
                    nxt.append(m)
        frontier = nxt
    for n in g.nodes:
        layer.setdefault(n, 0)
    # Sinks (endpoints, actions) go in the last column they can.
    columns: dict[int, list[str]] = {}
    for n in g.nodes:
        columns.setdefault(layer[n], []).append(n)
    pos: dict[str, tuple[float, float, float, float]] = {}
    x = 20.0
    order: dict[str, float] = {}
    extents: list[tuple[float, float, float]] = []  # per column: left, right, bottom
    for col in sorted(columns):
        nodes = columns[col]
        nodes.sort(key=lambda n: (sum(order.get(p, 0) for p in preds[n]) / max(1, len(preds[n])), n))
        width = max(_size(g.nodes[n].label)[0] for n in nodes)
        y = 20.0
        for i, n in enumerate(nodes):
            w, h = _size(g.nodes[n].label)
            pos[n] = (x, y, w, h)
            order[n] = i
            y += h + 22
        extents.append((x, x + width, y))
        x += width + 200
    return pos, {n: sorted(columns).index(layer[n]) for n in g.nodes}, extents


def graph_svg(g: ServiceGraph) -> str:
    pos, col, extents = _layout(g)
    width = max((x + w for x, _, w, _ in pos.values()), default=100) + 20
    height = height0 = max((y + h for _, y, _, h in pos.values()), default=100) + 20
    lanes = 0
    edges_at = len("")
    parts = [f"<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"graph\" width=\"{width:.0f}\" height=\"{height:.0f}\" "
             f"style=\"max-width:100%;height:auto\" "
             f"viewBox=\"0 0 {width:.0f} {height:.0f}\">",
             "<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" "
             "markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M 0 0 L 10 5 L 0 10 z\" fill=\"#6b7280\"/>"
             "</marker></defs>"]
    for e in g.edges:
        if e.src not in pos or e.dst not in pos:
            continue
        x1, y1, w1, h1 = pos[e.src]
        x2, y2, _, h2 = pos[e.dst]
        sx, sy, tx, ty = x1 + w1, y1 + h1 / 2, x2, y2 + h2 / 2
        between = range(col[e.src] + 1, col[e.dst])
        if len(between) > 0:
            # A long edge runs in a lane below the columns it passes, never through their boxes.
            lane = max(extents[c][2] for c in between) + 8 + 10 * (lanes := lanes + 1)
            a, b = extents[between[0]][0] - 30, extents[between[-1]][1] + 30
            d = (f"M {sx:.1f} {sy:.1f} C {sx + 40:.1f} {sy:.1f}, {a - 40:.1f} {lane:.1f}, {a:.1f} {lane:.1f} "
                 f"L {b:.1f} {lane:.1f} C {b + 40:.1f} {lane:.1f}, {tx - 40:.1f} {ty:.1f}, {tx:.1f} {ty:.1f}")
            mx, my = (a + b) / 2, lane - 4
            height = max(height, lane + 20)
        else:
            dx = max(40.0, (tx - sx) / 2)
            d = f"M {sx:.1f} {sy:.1f} C {sx + dx:.1f} {sy:.1f}, {tx - dx:.1f} {ty:.1f}, {tx:.1f} {ty:.1f}"
            mx, my = (sx + tx) / 2, (sy + ty) / 2 - 4
        parts.append(f"<path class=\"edge\" d=\"{d}\" fill=\"none\" stroke=\"#6b7280\" stroke-width=\"1.3\" "
                     f"marker-end=\"url(#arrow)\"/>")
        label = " · ".join(p for p in (e.share, e.label) if p)
        if label:
            short = label if len(label) <= 30 else label[:28] + "…"
            parts.append(f"<text class=\"edge-label\" x=\"{mx:.1f}\" y=\"{my:.1f}\" font-size=\"11\" "
                         f"text-anchor=\"middle\" fill=\"#1f2937\" stroke=\"#ffffff\" stroke-width=\"3\" "
                         f"paint-order=\"stroke\"><title>{html.escape(label)}</title>{html.escape(short)}</text>")
    for nid, n in g.nodes.items():
        x, y, w, h = pos[nid]
        rx = 14 if n.kind == "chain" else 3
        parts.append(f"<g class=\"node {n.kind}\" data-id=\"{html.escape(nid)}\"><rect x=\"{x:.1f}\" y=\"{y:.1f}\" "
                     f"width=\"{w:.1f}\" height=\"{h:.1f}\" rx=\"{rx}\" fill=\"{COLOURS[n.kind]}\" "
                     f"stroke=\"#374151\" stroke-width=\"1.2\"/>")
        for i, line in enumerate(n.label.split("\n")):
            parts.append(f"<text x=\"{x + w / 2:.1f}\" y=\"{y + 6 + LINE_H * (i + 0.8):.1f}\" font-size=\"12\" "
                         f"text-anchor=\"middle\">{html.escape(line)}</text>")
        parts.append("</g>")
    parts.append("</svg>")
    parts[edges_at] = parts[edges_at].replace(f'height="{height0:.0f}"', f'height="{height:.0f}"').replace(
        f'viewBox="0 0 {width:.0f} {height0:.0f}"', f'viewBox="0 0 {width:.0f} {height:.0f}"')
    return "".join(parts)


def graph_html(g: ServiceGraph) -> str:
    legend = "".join(f"<span><span class=\"sw\" style=\"background:{COLOURS[k]}\"></span>{html.escape(v)}</span>"
                     for k, v in KINDS.items())
    data = json.dumps(g.to_json()).replace("</", "<\\/")
    body = (f"<div class=\"legend\" id=\"legend\">{legend}</div><div style=\"overflow:auto\">{graph_svg(g)}</div>"
            f"<div id=\"panel\">Click a box for its rules.</div>"
            f"<script type=\"application/json\" id=\"graph-data\">{data}</script>")
    return _page(f"kpa graph: {g.title}", f"{len(g.nodes)} nodes, {len(g.edges)} edges", body, GRAPH_JS)


__all__ = ["graph_html", "graph_svg", "layout", "trace_html"]
