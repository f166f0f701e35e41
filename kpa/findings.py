"""Findings: what `kpa lint` reports, from any source of checks.

A finding has a code, a severity, a message, the Kubernetes object it
concerns (a Service, a NetworkPolicy, ...) and where it was seen: a FILE:LINE
in a rules dump and, where the object came from a file, the object's own
FILE:LINE. Every code is registered once with its default severity, a
one-line summary and help text; sources of checks (kube-proxy drift,
NetworkPolicies, ...) register their codes with `register` and yield
`Finding`s, and everything after that - selection, annotations, baselines,
counts and the output formats in `kpa.render.findings` - works on any of them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from kpa.errors import InputError, KpaError

Severity = Literal["error", "warning", "info"]
SEVERITY_RANK: dict[str, int] = {"error": 0, "warning": 1, "info": 2}

#: Version of `kpa lint -o json|yaml` documents (docs/lint.md, "JSON schema").
SCHEMA_VERSION = 2
#: Version of baseline files written by `kpa lint --write-baseline`.
BASELINE_VERSION = 1
#: The annotation that silences codes on one Service or NetworkPolicy.
IGNORE_ANNOTATION = "kpa.io/ignore"
DOCS_URL = "https://github.com/kpa-dev/kpa/blob/main/docs/lint.md"


@dataclass(frozen=True)
class CodeInfo:
    """One kind of finding: its code, default severity, summary and longer help."""

    code: str
    severity: Severity
    summary: str
    help: str = ""
    #: Which check reports it, e.g. "kube-proxy" or "networkpolicy".
    source: str = "kube-proxy"

    @property
    def help_uri(self) -> str:
        return f"{DOCS_URL}#{self.code}"


#: Every registered code, in registration order.
REGISTRY: dict[str, CodeInfo] = {}


def register(*infos: CodeInfo) -> None:
    for info in infos:
        REGISTRY[info.code] = info


@dataclass(frozen=True)
class ObjectRef:
    """The Kubernetes object a finding concerns."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "namespace": self.namespace, "name": self.name}


_LOCATION_RE = re.compile(r"^(.*):(\d+)$")
# Locations inside messages are always written " at FILE:LINE"; a fingerprint leaves them out
# so that a finding keeps its identity when unrelated rules move it to another line.
_AT_LOCATION_RE = re.compile(r" at \S+:\d+")


def split_location(location: str | None) -> tuple[str, int | None] | None:
    """``FILE:LINE`` as (FILE, LINE); a location without a line as (location, None)."""
    if not location:
        return None
    m = _LOCATION_RE.match(location)
    if m is None:
        return location, None
    return m.group(1), int(m.group(2))


@dataclass(frozen=True)
class Finding:
    """One lint finding: its code and severity, what it says, and where (the rule, the object)."""

    code: str
    severity: Severity
    #: The Service port (``namespace/name:port``) for kube-proxy checks, else None.
    service: str | None
    message: str
    #: FILE:LINE of the rule involved, in the rules dump.
    location: str | None
    #: The object the finding concerns, and its FILE:LINE in the objects file if known.
    object: ObjectRef | None = None
    object_location: str | None = None

    @property
    def fingerprint(self) -> str:
        """A stable identity: code, object and message without the locations in it."""
        key = "\x00".join((
            self.code, self.service or "", str(self.object or ""),
            _AT_LOCATION_RE.sub("", self.message),
        ))
        return hashlib.sha256(key.encode()).hexdigest()[:32]

    def where(self) -> str | None:
        """Where to point a reader: the rule's location, else the object's."""
        return self.location or self.object_location

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "service": self.service,
            "object": self.object.to_json() if self.object else None,
            "message": self.message,
            "location": self.location,
            "object_location": self.object_location,
            "fingerprint": self.fingerprint,
        }


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    return sorted(
        findings,
        key=lambda f: (SEVERITY_RANK[f.severity], f.service or str(f.object or ""), f.code,
                       f.location or ""),
    )


def check_codes(codes: Iterable[str], option: str) -> frozenset[str]:
    """Codes given on the command line (repeatable, comma-separated); unknown ones are bad input."""
    out: set[str] = set()
    for item in codes:
        for code in item.split(","):
            code = code.strip()
            if not code:
                continue
            if code not in REGISTRY:
                raise KpaError(
                    f"{option}: expected a finding code, found {code!r} "
                    f"(known codes: {', '.join(REGISTRY)})")
            out.add(code)
    return frozenset(out)


def parse_ignore_annotation(value: str) -> frozenset[str]:
    return frozenset(c.strip() for c in value.split(",") if c.strip())


BaselineState = Literal["new", "unchanged"]


@dataclass
class Report:
    """Findings after selection, annotations and the baseline, ready to render."""

    findings: list[Finding]
    #: Fingerprints of the baseline, if one was given.
    baseline: frozenset[str] | None = None
    dropped_by_option: int = 0
    #: (object, code) -> how many findings its annotation silenced.
    dropped_by_annotation: Counter[str] = field(default_factory=Counter)
    #: Annotation codes that name no known code: (object, code).
    unknown_annotation_codes: list[tuple[str, str]] = field(default_factory=list)
    out_of_scope: int = 0

    def state(self, f: Finding) -> BaselineState | None:
        if self.baseline is None:
            return None
        return "unchanged" if f.fingerprint in self.baseline else "new"

    @property
    def new(self) -> list[Finding]:
        """The findings that count: all of them, or those not in the baseline."""
        if self.baseline is None:
            return list(self.findings)
        return [f for f in self.findings if f.fingerprint not in self.baseline]

    def exit_status(self, fail_on: Severity = "error") -> int:
        return exit_status(self.new, fail_on)

    def counts(self) -> dict[str, Any]:
        new = self.new
        by_code: dict[str, dict[str, int]] = {}
        for f in self.findings:
            entry = by_code.setdefault(f.code, {"total": 0, "new": 0})
            entry["total"] += 1
        for f in new:
            by_code[f.code]["new"] += 1
        return {
            "total": len(self.findings),
            "new": len(new),
            "by_severity": {s: sum(1 for f in self.findings if f.severity == s)
                            for s in SEVERITY_RANK},
            "by_code": dict(sorted(by_code.items())),
            "suppressed": {
                "by_option": self.dropped_by_option,
                "by_annotation": sum(self.dropped_by_annotation.values()),
                "by_baseline": len(self.findings) - len(new),
                "out_of_scope": self.out_of_scope,
            },
        }

    def to_json(self, tool_version: str) -> dict[str, Any]:
        findings = []
        for f in self.findings:
            doc = f.to_json()
            doc["baseline"] = self.state(f)
            doc["help"] = REGISTRY[f.code].help_uri if f.code in REGISTRY else None
            findings.append(doc)
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "kpa", "version": tool_version},
            "counts": self.counts(),
            "findings": findings,
            "warnings": [f"{obj}: annotation {IGNORE_ANNOTATION} names unknown code {code!r}"
                         for obj, code in self.unknown_annotation_codes],
        }


def exit_status(findings: Iterable[Finding], fail_on: Severity = "error") -> int:
    """1 if any finding is at least as severe as ``fail_on``, else 0."""
    limit = SEVERITY_RANK[fail_on]
    return 1 if any(SEVERITY_RANK[f.severity] <= limit for f in findings) else 0


Scope = Callable[[Finding], bool]


def make_report(
    findings: Iterable[Finding],
    *,
    only: frozenset[str] = frozenset(),
    ignore: frozenset[str] = frozenset(),
    annotations: Mapping[ObjectRef, frozenset[str]] | None = None,
    baseline: frozenset[str] | None = None,
    scope: Scope | None = None,
) -> Report:
    """Apply --only/--ignore, per-object `kpa.io/ignore` annotations, the scope and a baseline."""
    report = Report([], baseline)
    annotations = annotations or {}
    for obj, codes in annotations.items():
        for code in sorted(codes):
            if code not in REGISTRY:
                report.unknown_annotation_codes.append((str(obj), code))
    kept: list[Finding] = []
    for f in findings:
        if scope is not None and not scope(f):
            report.out_of_scope += 1
            continue
        if (only and f.code not in only) or f.code in ignore:
            report.dropped_by_option += 1
            continue
        if f.object is not None and f.code in annotations.get(f.object, ()):
            report.dropped_by_annotation[f"{f.object} {f.code}"] += 1
            continue
        kept.append(f)
    report.findings = sort_findings(kept)
    return report


def in_scope(namespace: str | None, service: str | None) -> Scope | None:
    """A scope for ``-n NS`` and ``--service NS/NAME``: findings about objects there only."""
    if namespace is None and service is None:
        return None

    def ok(f: Finding) -> bool:
        obj = f.object
        if obj is None:
            return False
        if namespace is not None and obj.namespace != namespace:
            return False
        return service is None or f"{obj.namespace}/{obj.name}" == service
    return ok


# -- baselines ---------------------------------------------------------------------


def baseline_document(findings: Sequence[Finding]) -> dict[str, Any]:
    return {
        "kpa_baseline": BASELINE_VERSION,
        "findings": [
            {"fingerprint": f.fingerprint, "code": f.code, "object": str(f.object or ""),
             "message": f.message}
            for f in sorted(findings, key=lambda f: (f.code, f.fingerprint))
        ],
    }


def write_baseline(path: str, findings: Sequence[Finding]) -> None:
    try:
        with open(path, "w") as fh:
            json.dump(baseline_document(findings), fh, indent=2)
            fh.write("\n")
    except OSError as exc:
        raise KpaError(f"{path}: cannot write the baseline: {exc.strerror}") from None


def load_baseline(path: str) -> frozenset[str]:
    """Fingerprints in a baseline file; anything malformed is bad input (exit 2)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise InputError(path, None, f"cannot read the baseline: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(path, None, "expected a JSON baseline, found binary data") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(path, exc.lineno,
                         f"expected a JSON baseline, found {exc.msg.lower()} at column {exc.colno}"
                         ) from None
    if not isinstance(doc, dict) or doc.get("kpa_baseline") != BASELINE_VERSION:
        raise InputError(path, 1, f"expected a kpa baseline (an object with \"kpa_baseline\": "
                                  f"{BASELINE_VERSION}), found something else; write one with "
                                  "`kpa lint --write-baseline FILE`")
    items = doc.get("findings")
    if not isinstance(items, list):
        raise InputError(path, 1, "expected \"findings\" to be a list")
    out = set()
    for i, item in enumerate(items):
        fp = item.get("fingerprint") if isinstance(item, dict) else None
        if not isinstance(fp, str) or not re.fullmatch(r"[0-9a-f]{32}", fp):
            line = _line_of_item(text, i)
            raise InputError(path, line, f"expected findings[{i}] to have a \"fingerprint\" of "
                                         "32 hex digits, found " + json.dumps(fp))
        out.add(fp)
    return frozenset(out)


def _line_of_item(text: str, index: int) -> int | None:
    """Best effort: in the documents kpa writes, the (index+2)th '{' opens findings[index]."""
    braces = [m.start() for m in re.finditer(r"\{", text)]
    if index + 1 < len(braces):
        return text.count("\n", 0, braces[index + 1]) + 1
    return None


def with_object_location(f: Finding, location: str | None) -> Finding:
    return replace(f, object_location=location) if location != f.object_location else f


__all__ = [
    "BASELINE_VERSION",
    "IGNORE_ANNOTATION",
    "REGISTRY",
    "SCHEMA_VERSION",
    "SEVERITY_RANK",
    "CodeInfo",
    "Finding",
    "ObjectRef",
    "Report",
    "Severity",
    "baseline_document",
    "check_codes",
    "exit_status",
    "in_scope",
    "load_baseline",
    "make_report",
    "parse_ignore_annotation",
    "sort_findings",
    "split_location",
    "write_baseline",
]
