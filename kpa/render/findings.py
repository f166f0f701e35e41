"""`kpa lint` output: text, JSON/YAML, SARIF 2.1.0, JUnit XML and GitHub workflow commands.

Every format renders a `kpa.findings.Report`, whatever check produced its findings.
"""

from __future__ import annotations

import os
import posixpath
import urllib.parse
from collections.abc import Sequence
from typing import Any

from kpa.findings import REGISTRY, SEVERITY_RANK, CodeInfo, Finding, Report, split_location

FORMATS = ("text", "json", "yaml", "sarif", "junit", "github")
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
_SARIF_LEVEL = {"error": "error", "warning": "warning", "info": "note"}


def render(report: Report, fmt: str, version: str, checks: Sequence[str] = ()) -> str:
    if fmt == "text":
        return render_text(report)
    if fmt in ("json", "yaml"):
        from kpa.render.output import dump

        return dump(report.to_json(version), fmt)
    if fmt == "sarif":
        from kpa.render.output import dump

        return dump(to_sarif(report, version), "json")
    if fmt == "junit":
        return to_junit(report, checks)
    if fmt == "github":
        return to_github(report)
    raise ValueError(fmt)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def render_text(report: Report) -> str:
    """New findings one per line, then a summary grouped by code and the totals."""
    lines = []
    for f in report.new:
        lines.append(f"{f.severity}: [{f.code}] {f.message}")
    counts = report.counts()
    if report.findings:
        lines.append("")
        lines.append("summary:")
        width = max(len(c) for c in counts["by_code"])
        for code, n in sorted(counts["by_code"].items(),
                              key=lambda kv: (_rank(kv[0]), kv[0])):
            extra = f" ({n['total'] - n['new']} in baseline)" if n["total"] != n["new"] else ""
            sev = REGISTRY[code].severity if code in REGISTRY else "?"
            lines.append(f"  {code:<{width}}  {n['new']:>6}  {sev}{extra}")
    new = report.new
    totals = [_plural(n, s) for s in SEVERITY_RANK
              if (n := sum(1 for f in new if f.severity == s))]
    lines.append(", ".join(totals) if totals else "no findings")
    notes = []
    sup = counts["suppressed"]
    if sup["by_baseline"]:
        notes.append(f"{sup['by_baseline']} in the baseline")
    if sup["by_annotation"]:
        notes.append(f"{sup['by_annotation']} silenced by kpa.io/ignore annotations")
    if sup["by_option"]:
        notes.append(f"{sup['by_option']} left out by --only/--ignore")
    if sup["out_of_scope"]:
        notes.append(f"{sup['out_of_scope']} outside the scope")
    if notes:
        lines[-1] += f" (not counted: {', '.join(notes)})"
    for obj, code in report.unknown_annotation_codes:
        lines.append(f"warning: {obj}: annotation kpa.io/ignore names unknown code {code!r}")
    return "\n".join(lines) + "\n"


def _rank(code: str) -> int:
    info = REGISTRY.get(code)
    return SEVERITY_RANK[info.severity] if info else 9


# -- SARIF -------------------------------------------------------------------------


def _uri(path: str) -> str:
    """A file path as a SARIF artifact URI: relative stays relative (to the checkout)."""
    if os.path.isabs(path):
        return "file://" + urllib.parse.quote(path)
    rel = posixpath.normpath(path.replace(os.sep, "/"))
    return urllib.parse.quote(rel)


def _physical(location: str) -> dict[str, Any] | None:
    parts = split_location(location)
    if parts is None or parts[0].startswith("<"):  # <stdin>, <node: ...> are no files
        return None
    file, line = parts
    phys: dict[str, Any] = {"artifactLocation": {"uri": _uri(file)}}
    if line is not None and line >= 1:
        phys["region"] = {"startLine": line}
    return {"physicalLocation": phys}


def _sarif_rule(info: CodeInfo) -> dict[str, Any]:
    text = info.help or info.summary
    return {
        "id": info.code,
        "name": "".join(w.capitalize() for w in info.code.split("-")),
        "shortDescription": {"text": info.summary},
        "fullDescription": {"text": text},
        "help": {
            "text": f"{text} See {info.help_uri}",
            "markdown": f"{text}\n\n[Documentation]({info.help_uri})",
        },
        "helpUri": info.help_uri,
        "defaultConfiguration": {"level": _SARIF_LEVEL[info.severity]},
        "properties": {"tags": ["kpa", info.source]},
    }


def to_sarif(report: Report, version: str) -> dict[str, Any]:
    """A SARIF 2.1.0 log: one run, every registered code as a rule, one result per finding."""
    codes = list(REGISTRY)
    index = {c: i for i, c in enumerate(codes)}
    results = []
    for f in report.findings:
        result: dict[str, Any] = {
            "ruleId": f.code,
            "level": _SARIF_LEVEL[f.severity],
            "message": {"text": f.message},
            "partialFingerprints": {"kpaFinding/v1": f.fingerprint},
        }
        if f.code in index:
            result["ruleIndex"] = index[f.code]
        locations = [loc for loc in (_physical(f.location) if f.location else None,) if loc]
        related = _physical(f.object_location) if f.object_location else None
        if not locations and related is not None:
            locations, related = [related], None
        if locations:
            result["locations"] = locations
        if related is not None:
            related["id"] = 0
            related["message"] = {"text": f"{f.object} in the cluster objects"}
            result["relatedLocations"] = [related]
        state = report.state(f)
        if state is not None:
            result["baselineState"] = state
        props: dict[str, Any] = {"severity": f.severity}
        if f.service:
            props["service"] = f.service
        if f.object:
            props["object"] = f.object.to_json()
        result["properties"] = props
        results.append(result)
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "kpa",
                "version": version,
                "semanticVersion": version,
                "informationUri": "https://github.com/kpa-dev/kpa",
                "rules": [_sarif_rule(REGISTRY[c]) for c in codes],
            }},
            "results": results,
            "columnKind": "unicodeCodePoints",
        }],
    }


# -- JUnit -------------------------------------------------------------------------


def to_junit(report: Report, checks: Sequence[str] = ()) -> str:
    """JUnit XML: a test suite per code, a test case per object (or rule) it found something on.

    ``checks`` names the codes that ran; those with no new finding become one passing case,
    so a CI test view lists every check.
    """
    from xml.etree import ElementTree as ET

    by_code: dict[str, dict[str, list[Finding]]] = {}
    for f in report.new:
        name = str(f.object) if f.object else (f.service or f.where() or "ruleset")
        by_code.setdefault(f.code, {}).setdefault(name, []).append(f)
    suites = ET.Element("testsuites", name="kpa lint")
    total = failures = 0
    for code in [*[c for c in checks if c not in by_code], *sorted(by_code)]:
        cases = by_code.get(code, {})
        suite = ET.SubElement(suites, "testsuite", name=code)
        n_fail = 0
        if not cases:
            ET.SubElement(suite, "testcase", classname=f"kpa.lint.{code}", name="all objects")
        for name, found in sorted(cases.items()):
            case = ET.SubElement(suite, "testcase", classname=f"kpa.lint.{code}", name=name)
            where = found[0].where()
            if where:
                parts = split_location(where)
                if parts:
                    case.set("file", parts[0])
                    if parts[1] is not None:
                        case.set("line", str(parts[1]))
            worst = min(found, key=lambda f: SEVERITY_RANK[f.severity])
            body = "\n".join(f"{f.severity}: {f.message}" for f in found)
            if worst.severity == "info":
                ET.SubElement(case, "system-out").text = body
            else:
                n_fail += 1
                fail = ET.SubElement(case, "failure", type=worst.severity,
                                     message=worst.message)
                fail.text = body
        count = max(1, len(cases))
        suite.set("tests", str(count))
        suite.set("failures", str(n_fail))
        suite.set("errors", "0")
        total += count
        failures += n_fail
    suites.set("tests", str(total))
    suites.set("failures", str(failures))
    suites.set("errors", "0")
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


# -- GitHub workflow commands ------------------------------------------------------

_GITHUB_LEVEL = {"error": "error", "warning": "warning", "info": "notice"}


def _gh_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_prop(text: str) -> str:
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")


def to_github(report: Report) -> str:
    """One `::error|warning|notice file=…,line=…,title=…::message` line per new finding."""
    lines = []
    for f in report.new:
        props = []
        where = split_location(f.where())
        if where and not where[0].startswith("<"):
            props.append(f"file={_gh_prop(where[0])}")
            if where[1] is not None:
                props.append(f"line={where[1]}")
        props.append(f"title={_gh_prop('kpa ' + f.code)}")
        lines.append(f"::{_GITHUB_LEVEL[f.severity]} {','.join(props)}::{_gh_data(f.message)}")
    return "".join(line + "\n" for line in lines)


__all__ = ["FORMATS", "SARIF_SCHEMA", "render", "render_text", "to_github", "to_junit", "to_sarif"]
