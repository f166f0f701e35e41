"""Human-readable trace output: one block per outcome, one line per rule hit."""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from typing import Any

import click

from kpa.netfilter.domain import fraction_text
from kpa.netfilter.engine import Outcome, TraceResult
from kpa.netfilter.packet import Hop, PacketSpec

VERDICT_COLOUR = {"ACCEPT": "green", "DROP": "red", "REJECT": "yellow", "QUEUE": "cyan"}


def packet_line(p: PacketSpec) -> str:
    proto = p.proto or "any-protocol"
    src = p.src or "*"
    dst = p.dst or "*"
    sport = "" if p.sport is None else f":{p.sport}"
    dport = "" if p.dport is None else f":{p.dport}"
    # IPv6 addresses with a port print as [addr]:port.
    if sport and ":" in src:
        src = f"[{src}]"
    if dport and ":" in dst:
        dst = f"[{dst}]"
    if p.src_exclude and not p.src:
        src = "external"
    extra = [f"origin {p.origin}", f"ctstate {p.ctstate or 'any'}"]
    if p.iif:
        extra.append(f"in {p.iif}")
    if p.oif:
        extra.append(f"out {p.oif}")
    if p.mark:
        extra.append(f"mark {p.mark:#x}")
    return f"{proto} {src}{sport} -> {dst}{dport} ({', '.join(extra)})"


def _pct(o: Outcome) -> str:
    p = o.probability
    text = f"{float(p) * 100:.4g}%"
    if p.denominator != 1:
        text += f" ({fraction_text(p)})"
    return text


def quiet_hops(path: tuple[Hop, ...]) -> set[int]:
    """Indexes of hops that change nothing: jumps into chains that fell straight back, ACCEPT policies."""
    quiet: set[int] = set()
    for i, h in enumerate(path):
        if h.misses:
            continue
        policy = h.rule is None and h.text == "policy ACCEPT"
        fell_back = h.target is not None and (i + 1 >= len(path) or path[i + 1].chain != h.target
                                              or path[i + 1].table != h.table)
        if policy or fell_back:
            quiet.add(i)
    return quiet


def render_outcome(n: int, total: int, o: Outcome, color: bool, all_hops: bool = True) -> list[str]:
    st = o.state
    head = click.style(o.verdict, fg=VERDICT_COLOUR.get(o.verdict), bold=True) if color else o.verdict
    parts = [f"Outcome {n}/{total}: {head}"]
    if o.delivery:
        parts.append(f"→ {o.delivery}")
    if o.verdict == "REJECT" and o.detail:
        parts.append(f"with {o.detail}")
    parts.append(f"share {o.labels['share']}" if o.labels.get("share") else f"p={_pct(o)}")
    lines = [" ".join(parts)]
    facts = []
    if o.labels.get("service"):
        facts.append(f"Service {o.labels['service']}")
    if o.dnat_text():
        who = o.labels.get("endpoint")
        facts.append(f"DNAT to {o.dnat_text()}" + (f" ({who})" if who else ""))
    if st.masquerade:
        facts.append("masqueraded")
    if o.snat_text():
        facts.append(f"SNAT to {o.snat_text()}")
    if facts:
        lines.append("  " + ", ".join(facts))
    if o.reason:
        lines.append(f"  why: {o.reason}")
    for c in o.conditions:
        lines.append(f"  if {c}")
    for a in st.assumptions:
        lines.append("  " + (click.style("unknown: ", fg="magenta") if color else "unknown: ") + a.describe())
    for note in dict.fromkeys(st.notes):
        lines.append(f"  note: {note}")
    hidden = set() if all_hops else quiet_hops(st.path)
    for i, h in enumerate(st.path):
        if i in hidden:
            continue
        where = f" ({h.location})" if h.location else ""
        rule = f"#{h.rule}" if h.rule is not None else ("policy" if h.text.startswith("policy") else "end")
        for m in h.misses:
            miss = f"    {'':<11} {h.table}/{m.chain} #{m.rule} did not match: {m.failed}"
            lines.append(click.style(miss, fg="bright_black") if color else miss)
        hop = f"    {h.hook:<11} {h.table}/{h.chain} {rule}{where}"
        lines.append(click.style(hop, dim=True) if color else hop)
        lines.append(f"      {h.text}")
        if h.note:
            lines.append(f"      ⇒ {h.note}")
    if hidden:
        lines.append(f"    ({len(hidden)} hop{'s' if len(hidden) > 1 else ''} that changed nothing hidden; -vv shows them)")
    return lines


def _endpoint_cell(o: Outcome) -> str:
    dnat = o.dnat_text()
    if not dnat:
        return "-"
    who = o.labels.get("endpoint", "")
    if who.startswith("pod/"):
        name, _, node = who[4:].partition(" on node ")
        who = name + (f" on {node}" if node else "")
    return f"{dnat} {who}".strip()


def _result_cell(o: Outcome) -> str:
    if o.verdict == "ACCEPT":
        return f"ACCEPT → {o.delivery}" if o.delivery else "ACCEPT"
    if o.verdict == "REJECT" and o.detail:
        return f"REJECT ({o.detail})"
    return o.verdict


def _wrap(text: str, width: int) -> list[str]:
    if width <= 0 or len(text) <= width:
        return [text]
    return textwrap.wrap(text, width, break_on_hyphens=False) or [text]


def summary_order(result: TraceResult) -> list[Outcome]:
    """Outcomes by Service, then endpoint, then the sources they apply to."""
    groups: dict[str, int] = {}
    for o in result.outcomes:
        groups.setdefault(o.labels.get("sources", ""), len(groups))
    return sorted(result.outcomes, key=lambda o: (o.labels.get("service") or "~", o.verdict != "ACCEPT",
                                                  o.dnat_text() or "~", groups[o.labels.get("sources", "")]))


def render_summary(result: TraceResult, color: bool, width: int | None, order: list[Outcome],
                   headers: bool = True) -> list[str]:
    multi = len({o.labels.get("service") for o in order}) > 1
    head = ["#", "RESULT", *(["SERVICE"] if multi else []), "ENDPOINT", "SHARE", "MASQ", "SOURCES"]
    rows: list[list[str]] = []
    for i, o in enumerate(order, 1):
        masq = "yes" if o.state.masquerade else ("SNAT " + (o.snat_text() or "") if o.snat_text() else "no")
        if o.verdict != "ACCEPT":
            masq = "-"
        rows.append([str(i), _result_cell(o), *([o.labels.get("service") or "-"] if multi else []),
                     _endpoint_cell(o), o.labels.get("share") or _pct(o), masq, o.labels.get("sources", "")])
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    lead = sum(widths[:-1]) + 2 * (len(head) - 1)
    last = (width - lead) if width else 0
    below = bool(width) and last < 24  # too narrow for a SOURCES column: the sources go under each row
    if below:
        head, rows = [*head[:-1], ""], [[*r[:-1], ""] for r in rows]
        sources = [o.labels.get("sources", "") for o in order]
        last = 0
    out: list[str] = []

    def line(cells: list[str], style: dict[str, Any] | None = None) -> None:
        chunks = _wrap(cells[-1], last)
        body = "  ".join(c.ljust(w) for c, w in zip(cells[:-1], widths[:-1], strict=True))
        first = f"{body}  {chunks[0]}".rstrip()
        if color and style:
            first = click.style(first, **style)
        out.append(first)
        out.extend(" " * (lead + 2) + c for c in chunks[1:])

    if headers:
        line(head, {"bold": True})
    for k, (o, r) in enumerate(zip(order, rows, strict=True)):
        line(r, {"fg": VERDICT_COLOUR.get(o.verdict)} if o.verdict != "ACCEPT" else None)
        pad = " " * (widths[0] + 2)
        if below:
            out.extend(textwrap.wrap(f"↳ for {sources[k]}", width or 80,
                                     initial_indent=pad, subsequent_indent=pad + "    ", break_on_hyphens=False))
        if o.verdict != "ACCEPT" and o.reason:
            out.append(f"{pad}↳ why: {o.reason}")
        elif o.verdict == "ACCEPT":
            # A program listening on a queue let the packet through (e.g. kube-network-policies): say who.
            out.extend(f"{pad}↳ why: {n}" for n in dict.fromkeys(o.state.notes) if n.startswith("decided by "))
        for a in o.state.assumptions:
            out.append(f"{pad}↳ " + (click.style("unknown: ", fg="magenta") if color else "unknown: ") + a.describe())
    return out


def terminal_width() -> int | None:
    """The terminal's width on a TTY or when $COLUMNS says; None when output goes to a pipe."""
    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def render_trace(result: TraceResult, color: bool, details: int = 2, width: int | None = None,
                 headers: bool = True) -> str:
    """Summary table first; with details >= 1 the hops of each outcome (>= 2: every hop)."""
    services = result.labels.get("services") or []
    head = f"Packet: {packet_line(result.packet)}"
    if len(services) == 1:
        svc = services[0]
        head += f" — Service {svc['service_port']}" + (f" ({svc['entry']})" if svc.get("entry") else "")
    out = [head]
    miss = result.labels.get("service_port_miss")
    if miss:
        text = "No Service port matched: " + miss.removeprefix("no Service port matched ")
        out.append(click.style(text, fg="yellow", bold=True) if color else text)
    order = summary_order(result)
    out.append("")
    start = len(out)
    out.extend(render_summary(result, color, width, order, headers))
    table = set(range(start, len(out)))
    if details:
        for i, o in enumerate(order, 1):
            out.append("")
            out.extend(render_outcome(i, len(order), o, color, all_hops=details >= 2))
    for w in result.warnings:
        out.append(("warning: " if not color else click.style("warning: ", fg="yellow")) + w)
    if result.truncated:
        out.append("warning: too many outcomes; only the most probable were kept (raise --max-outcomes)")
    if not details and any(o.path for o in order):
        out.append("")
        out.append("(-v shows each outcome's rules; -vv every hop; -o json everything)")
    if width:
        out = fit(out, width, table)
    return "\n".join(out) + "\n"


def fit(lines: list[str], width: int, keep: set[int]) -> list[str]:
    """Wrap lines wider than the terminal under their own indent (the summary table wraps itself)."""
    out: list[str] = []
    for i, line in enumerate(lines):
        if i in keep or len(click.unstyle(line)) <= width or "\x1b[" in line:
            out.append(line)
            continue
        indent = line[:len(line) - len(line.lstrip())]
        out.extend(textwrap.wrap(line, width, initial_indent="", subsequent_indent=indent + "    ",
                                 break_on_hyphens=False, break_long_words=True, drop_whitespace=True)
                   or [line])
    return out


def trace_page(result: TraceResult) -> str:
    """The trace as a self-contained HTML page (kpa trace -o html)."""
    from kpa.render.html import trace_html

    order = summary_order(result)
    doc = result.to_json()
    doc["packet_line"] = packet_line(result.packet)
    rows = []
    quiet: dict[int, set[int]] = {}
    for i, o in enumerate(order):
        masq = "yes" if o.state.masquerade else ("SNAT " + (o.snat_text() or "") if o.snat_text() else "no")
        rows.append({"outcome": o.to_json(), "result": _result_cell(o), "endpoint": _endpoint_cell(o),
                     "share": o.labels.get("share") or _pct(o), "masq": masq if o.verdict == "ACCEPT" else "-",
                     "sources": o.labels.get("sources", "")})
        quiet[i] = quiet_hops(o.path)
    sources: dict[str, list[str]] = {}
    for o in order:
        for h in o.path:
            f = h.location.file if h.location else None
            if f and f not in sources and os.path.isfile(f):
                try:
                    with open(f, encoding="utf-8", errors="replace") as fh:
                        sources[f] = fh.read().splitlines()
                except OSError:
                    sources[f] = []
    return trace_html(doc, rows, sources, quiet)
