"""Human-readable output of `kpa policy`: truth-table grids, decisions, lint findings."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

from kpa.policy.engine import Decision, DirectionVerdict, Subject


def short_name(subject: Subject) -> str:
    """NS/NAME for a pod, the address otherwise (the grid's row and column labels)."""
    if subject.pod is not None:
        return f"{subject.pod.namespace}/{subject.pod.name}"
    return subject.name


def grid(rows: Sequence[str], columns: Sequence[str], cells: Iterable[Sequence[bool]]) -> str:
    """A truth table the way the Kubernetes e2e netpol suite prints one:
    sources down, targets across, `.` allowed, `X` denied."""
    width = max([len(c) for c in columns] + [1])
    head = max([len(r) for r in rows] + [1])
    out = ["-".ljust(head) + " " + " ".join(c.ljust(width) for c in columns)]
    for name, row in zip(rows, cells, strict=True):
        # "!" marks a cell the node's rules enforce differently (kpa policy matrix --rules).
        marks = " ".join(("!" if str(ok) == "!" else "." if ok else "X").ljust(width) for ok in row)
        out.append(name.ljust(head) + " " + marks)
    return "\n".join(line.rstrip() for line in out) + "\n"


def table(
    rows: Sequence[str], columns: Sequence[str], cells: Iterable[Sequence[bool]], fmt: str
) -> str:
    """The same table as CSV or a markdown table (`allowed` / `denied`)."""
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["from", *columns])
        for name, row in zip(rows, cells, strict=True):
            writer.writerow([name, *("differs" if str(ok) == "!" else "allowed" if ok else "denied" for ok in row)])
        return buf.getvalue()
    lines = ["| from \\ to | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in zip(rows, cells, strict=True):
        lines.append(f"| {name} | " + " | ".join("!" if str(ok) == "!" else "✓" if ok else "✗" for ok in row) + " |")
    return "\n".join(lines) + "\n"


def _direction_lines(v: DirectionVerdict, indent: str) -> list[str]:
    lines = [f"{indent}{v.direction} of {v.subject}: {'allowed' if v.allowed else 'DENIED'}"]
    if v.note is not None:
        lines.append(f"{indent}  no policy applies: {v.note}")
        return lines
    if not v.isolating:
        lines.append(f"{indent}  not isolated: no NetworkPolicy selects it for "
                     f"{v.direction.capitalize()}")
        return lines
    lines.append(f"{indent}  isolated by: {', '.join(v.isolating)}")
    for ref in v.admitted_by:
        at = f" ({ref.location})" if ref.location else ""
        lines.append(f"{indent}  admitted by {ref.text()}{at}")
    if not v.admitted_by:
        lines.append(f"{indent}  no rule admits it; nearest rules that did not:")
        for miss in v.misses:
            at = f" ({miss.location})" if miss.location else ""
            rule = "(no rules)" if miss.rule < 0 else f"{miss.direction}[{miss.rule}]"
            lines.append(f"{indent}    {miss.policy} {rule}{at}")
            for reason in miss.reasons:
                lines.append(f"{indent}      - {reason}")
    return lines


def decision_lines(d: Decision, indent: str = "") -> list[str]:
    """The verdict and the Kubernetes reason first, then each direction in detail."""
    verdict = "ALLOWED" if d.allowed else "DENIED"
    lines = [
        f"{indent}{verdict}: {d.src.name} -> {d.dst.name} port {d.port}/{d.protocol}",
        f"{indent}  {d.reason()}",
    ]
    for v in (d.egress, d.ingress):
        lines.extend(_direction_lines(v, indent + "  "))
    return lines


__all__ = ["decision_lines", "grid", "short_name", "table"]
