"""Text for `kpa show`: one block per Service port, endpoints as a table."""

from __future__ import annotations

from typing import Any


def _head(local: bool, wide: bool) -> list[str]:
    """The endpoint table's headings: FOR when the port has local endpoints, CHAIN for -o wide."""
    return (["FOR"] if local else []) + ["ENDPOINT", "SHARE", "POD", "NODE", "READY", "SERVING", "TERMINATING"] \
        + (["CHAIN"] if wide else [])


_HEADS = {(local, wide): _head(local, wide) for local in (False, True) for wide in (False, True)}


def render_text(docs: list[dict[str, Any]], wide: bool, headers: bool, color: bool) -> str:
    import click

    out: list[str] = []
    formats: dict[tuple[int, ...], str] = {}
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
        local = d["local_endpoints"]
        rows: list[list[str]] = []
        for label, group in (("all", d["endpoints"]), ("local", local)):
            for e in group:
                get = e.get
                ready, serving, terminating = get("ready"), get("serving"), get("terminating")
                # (each condition as yes, no or -, written out: this runs once per endpoint)
                row = [e["endpoint"] or "?", e["share"], get("pod") or "-", get("node") or "-",
                       "-" if ready is None else "yes" if ready else "no",
                       "-" if serving is None else "yes" if serving else "no",
                       "-" if terminating is None else "yes" if terminating else "no"]
                if local:
                    row.insert(0, label)
                if wide:
                    row.append(e["chain"])
                rows.append(row)
        if rows:
            head = _HEADS[bool(local), wide]
            table = [head, *rows] if headers else rows
            widths = tuple([max(map(len, column)) for column in zip(*table, strict=True)])
            # Each cell left-justified to its column's width, as str.ljust does; the same widths
            # recur across Service ports, so each line's format is made once.
            row_format = formats.get(widths)
            if row_format is None:
                row_format = formats[widths] = "  " + "  ".join(f"{{:<{w}}}" for w in widths)
            out.extend([row_format.format(*r).rstrip() for r in table])
        out.append("")
    return "\n".join(out) + ("\n" if out else "")


__all__ = ["render_text"]
