"""Reading rules from where users have them: files, stdin, gzip, or the live host.

The format is detected from the content, so `--rules` takes any mix of
iptables-save, ip6tables-save, `nft list ruleset`, `nft -j list ruleset` and
`ipset save`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from kpa.errors import InputError, KpaError
from kpa.limits import read_bounded
from kpa.netfilter.model import Ruleset
from kpa.parse.ipset_save import looks_like_ipset


@dataclass
class RulesInput:
    """One input of rules: its name, its text, and what kind of dump it is."""

    name: str
    text: str
    kind: str  # "iptables" | "nft-text" | "nft-json" | "ipset"


def read_text(path: str) -> str:
    """Read a file (or `-` for stdin), transparently gunzipping it."""
    try:
        if path == "-":
            data = read_bounded(sys.stdin.buffer, path)
        else:
            if os.path.isdir(path):
                raise InputError(path, None, "expected a rules file, found a directory")
            with open(path, "rb") as fh:
                data = read_bounded(fh, path)
    except OSError as exc:
        raise InputError(path, None, f"cannot read: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(path, line, "expected text, found binary data") from None


def _leading_lines(text: str) -> Iterator[str]:
    # Detection needs only the first few lines; splitting a 45 MB dump costs tens of ms. Of a line that
    # opens a JSON object (`nft -j` prints everything on one line) it needs only the start.
    start, end = 0, len(text)
    while start < end:
        stop = text.find("\n", start)
        if stop < 0:
            stop = end
        head = text[start:min(stop, start + 4096)]
        yield head if len(head) == stop - start or head.lstrip().startswith("{") else text[start:stop]
        start = stop + 1


def detect_kind(text: str) -> str:
    for line in _leading_lines(text):
        s = line.strip()
        if not s:
            continue
        if s.startswith("{"):
            return "nft-json"
        if s.startswith(("table ", "flush ruleset", "add table", "define ")):
            return "nft-text"
        if s.startswith(("create ", "add ")) and looks_like_ipset(s):
            return "ipset"
        if s.startswith("#") and ("nft" in s.lower() and "managed by iptables" not in s and "iptables" not in s):
            continue
        if s.startswith("#"):
            if "table " in s:
                return "nft-text"
            continue
        return "iptables"
    return "iptables"


def parse_text(text: str, name: str, kind: str | None = None) -> Ruleset:
    kind = kind or detect_kind(text)
    if kind == "nft-json":
        from kpa.parse.nft_json import parse_nft_json
        return parse_nft_json(text, name)
    if kind == "nft-text":
        from kpa.parse.nft_text import parse_nft_text
        return parse_nft_text(text, name)
    if kind == "ipset":
        from kpa.parse.ipset_save import parse_ipset
        return parse_ipset(text, name)
    from kpa.parse.iptables_save import parse_iptables
    return parse_iptables(text, name)


def load_rules(paths: list[str]) -> Ruleset:
    """Parse every input and combine them into one ruleset.

    iptables dumps and nft dumps of the same host overlap (iptables-nft's
    tables show up in both); the combiner keeps each table once.
    """
    ipt: list[Ruleset] = []
    nft: list[Ruleset] = []
    sets: list[Ruleset] = []
    for p in paths:
        text = read_text(p)
        name = "<stdin>" if p == "-" else p
        if not text or text.isspace():
            raise InputError(name, None, "empty: expected iptables-save, ip6tables-save, `nft list ruleset`, "
                                         "`nft -j list ruleset` or `ipset save` output")
        kind = detect_kind(text)
        rs = parse_text(text, p, kind)
        if kind == "ipset":
            sets.append(rs)
            continue
        if not rs.tables:
            raise InputError(name, None, f"no tables found in this {kind} input: expected iptables-save, "
                                         "ip6tables-save, `nft list ruleset`, `nft -j list ruleset` or "
                                         "`ipset save` output")
        (nft if kind.startswith("nft") else ipt).append(rs)
    return combine(ipt, nft, sets)


def combine(ipt: list[Ruleset], nft: list[Ruleset], sets: Sequence[Ruleset] = ()) -> Ruleset:
    if nft:
        from kpa.parse.mixed import combine as combine_mixed
        out = combine_mixed(ipt, nft)
    else:
        out = Ruleset()
        for rs in ipt:
            out.merge(rs)
    for rs in sets:
        out.merge(rs)
    return out


# -- live mode -------------------------------------------------------------

def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout if res.returncode == 0 else None


def _rule_count(text: str | None) -> int:
    return 0 if not text else sum(1 for line in text.splitlines() if line.startswith("-A "))


def detect_backend() -> tuple[str, list[str]]:
    """Pick the iptables backend in use the way kube-proxy does: by which has rules.

    Returns the backend ("nft" or "legacy") and warnings. Only the *-save
    tools are run: they read, never write.
    """
    warnings: list[str] = []
    nft_text = _run(["iptables-nft-save"])
    legacy_tables = ""
    if os.path.exists("/proc/net/ip_tables_names"):
        with open("/proc/net/ip_tables_names") as fh:
            legacy_tables = fh.read().strip()
    legacy_text = _run(["iptables-legacy-save"]) if legacy_tables else None
    n_nft, n_legacy = _rule_count(nft_text), _rule_count(legacy_text)
    if n_nft and n_legacy:
        warnings.append(f"both iptables backends hold rules (nft: {n_nft}, legacy: {n_legacy}); using the larger")
    return ("legacy" if n_legacy > n_nft else "nft"), warnings


def live_rules(use_iptc: bool = False) -> tuple[Ruleset, list[str]]:
    """Read this host's rules with the real save tools (read-only).

    With `use_iptc`, legacy tables are read through python-iptables instead,
    but only tables that already exist (see kpa.live_iptc for why).
    """
    if os.geteuid() != 0:
        raise KpaError("--live reads the kernel's rules and needs root (try sudo)")
    backend, warnings = detect_backend()
    ipt: list[Ruleset] = []
    nft: list[Ruleset] = []
    for tool in (f"iptables-{backend}-save", f"ip6tables-{backend}-save"):
        text = None
        if use_iptc and backend == "legacy":
            from kpa.live_iptc import read_legacy_iptc

            text = read_legacy_iptc("ipv6" if tool.startswith("ip6") else "ipv4")
        if text is None:
            text = _run([tool])
        if text is None and backend == "nft":
            text = _run([tool.replace("-nft", "")])
        if text and text.strip():
            ipt.append(parse_text(text, f"<{tool}>", "iptables"))
    nft_json = _run(["nft", "-j", "list", "ruleset"])
    if nft_json and nft_json.strip():
        nft.append(parse_text(nft_json, "<nft -j list ruleset>", "nft-json"))
    if not ipt and not nft:
        raise KpaError("no rules could be read: none of iptables-save, ip6tables-save or nft is installed and working")
    sets: list[Ruleset] = []
    # `ipset save` only reads; a host without the tool or without sets simply has none.
    ipset_text = _run(["ipset", "save"])
    if ipset_text and ipset_text.strip():
        sets.append(parse_text(ipset_text, "<ipset save>", "ipset"))
    rs = combine(ipt, nft, sets)
    rs.warnings.extend(warnings)
    return rs, warnings
