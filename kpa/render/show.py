"""Text for `kpa show`: one block per Service port, endpoints as a table."""

from __future__ import annotations

from typing import Any


def _yn(value: Any) -> str:
    return "-" if value is None else ("yes" if value else "no")


def render_text(docs: list[dict[str, Any]], wide: bool, headers: bool, color: bool) -> str:
    import click

    out: list[str] = []
    for d in docs:
        title = f"{d['service_port'] or '(unnamed)'}  {d['protocol'] or ''}  {d['family']}"
        if d.get("type"):
            title += f"  {d['type']}"
        out.append(click.style(title, bold=True) if color else title)
        facts = [f"{k}: {v}" for k, v in d["traffic_policies"].items()]
        facts.append(f"sessionAffinity: {d['session_affinity']}")
        if d["source_ranges"]:
            facts.append(f"loadBalancerSourceRanges: {', '.join(d['source_ranges'])}")
        out.append("  " + "; ".join(facts))
        for e in d["entries"]:
            addr = e["address"] or "<node addresses>"
            where = f"[{addr}]:{e['port']}" if ":" in addr else f"{addr}:{e['port']}"
            line = f"  {e['kind']:<15} {where:<26}"
            if wide:
                line += f" -> {e['chain']}  ({e['location']})"
            out.append(line.rstrip())
        if d["no_endpoints"]:
            out.append("  no endpoints: traffic is rejected")
        if wide and d["chains"]:
            out.append("  chains: " + ", ".join(f"{k} {n}" for k, n in sorted(d["chains"].items())))
        rows: list[list[str]] = []
        for label, key in (("", "endpoints"), ("local", "local_endpoints")):
            for e in d[key]:
                row = [e["endpoint"] or "?", e["share"], e.get("pod") or "-", e.get("node") or "-",
                       _yn(e.get("ready")), _yn(e.get("serving")), _yn(e.get("terminating"))]
                if d["local_endpoints"]:
                    row.insert(0, label or "all")
                if wide:
                    row.append(e["chain"])
                rows.append(row)
        if rows:
            head = ["ENDPOINT", "SHARE", "POD", "NODE", "READY", "SERVING", "TERMINATING"]
            if d["local_endpoints"]:
                head.insert(0, "FOR")
            if wide:
                head.append("CHAIN")
            table = [head, *rows] if headers else rows
            widths = [max(map(len, column)) for column in zip(*table, strict=True)]
            # Each cell left-justified to its column's width, as str.ljust does.
            line = "  " + "  ".join(f"{{:<{w}}}" for w in widths)
            out.extend(line.format(*r).rstrip() for r in table)
        out.append("")
    return "\n".join(out) + ("\n" if out else "")


__all__ = ["render_text"]
