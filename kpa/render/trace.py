"""Human-readable trace output: one block per outcome, one line per rule hit."""

from __future__ import annotations

import os

import click

from kpa.netfilter.engine import Outcome, TraceResult
from kpa.netfilter.packet import PacketSpec

VERDICT_COLOUR = {"ACCEPT": "green", "DROP": "red", "REJECT": "yellow"}


def packet_line(p: PacketSpec) -> str:
    proto = p.proto or "any-protocol"
    src = p.src or "*"
    dst = p.dst or "*"
    sport = "" if p.sport is None else f":{p.sport}"
    dport = "" if p.dport is None else f":{p.dport}"
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
        text += f" ({p.numerator}/{p.denominator})"
    return text


def _short(path: str) -> str:
    rel = os.path.relpath(path) if os.path.isabs(path) else path
    return rel if len(rel) < len(path) else path


def render_outcome(n: int, total: int, o: Outcome, color: bool) -> list[str]:
    st = o.state
    head = click.style(o.verdict, fg=VERDICT_COLOUR.get(o.verdict), bold=True) if color else o.verdict
    parts = [f"Outcome {n}/{total}: {head}"]
    if o.delivery:
        parts.append(f"→ {o.delivery}")
    if o.verdict == "REJECT" and o.detail:
        parts.append(f"with {o.detail}")
    parts.append(f"p={_pct(o)}")
    lines = [" ".join(parts)]
    facts = []
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
    for h in st.path:
        where = f" ({_short(str(h.location))})" if h.location else ""
        rule = f"#{h.rule}" if h.rule is not None else "policy"
        for m in h.misses:
            miss = f"    {'':<11} {h.table}/{m.chain} #{m.rule} did not match: {m.failed}"
            lines.append(click.style(miss, fg="bright_black") if color else miss)
        hop = f"    {h.hook:<11} {h.table}/{h.chain} {rule}{where}"
        lines.append(click.style(hop, dim=True) if color else hop)
        lines.append(f"      {h.text}")
        if h.note:
            lines.append(f"      ⇒ {h.note}")
    return lines


def render_trace(result: TraceResult, color: bool) -> str:
    out = [f"Packet: {packet_line(result.packet)}"]
    total = len(result.outcomes)
    for i, o in enumerate(result.outcomes, 1):
        out.append("")
        out.extend(render_outcome(i, total, o, color))
    for w in result.warnings:
        out.append(("warning: " if not color else click.style("warning: ", fg="yellow")) + w)
    if result.truncated:
        out.append("warning: too many outcomes; only the most probable were kept (raise --max-outcomes)")
    return "\n".join(out) + "\n"
