"""The extension catalogue: everything this machine's iptables and nft can load, kpa reads.

For every iptables extension installed here (enumerated from the shared objects,
so a new one is noticed) and every nft expression family in catalogue.NFT_REPS,
one representative rule is loaded into a kernel in a throw-away namespace, dumped
with the real tool, and read by kpa. Each rule must come back either modelled or
unknown with a reason; kpa never rejects the dump. docs/extensions.md must agree
with what kpa did for each extension.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kpa.errors import KpaError
from kpa.netfilter.model import Rule, Ruleset
from kpa.sources import parse_text

from .catalogue import (
    NFT_PENDING,
    NFT_REPS,
    NFT_TABLE,
    PENDING,
    REPS,
    UNLOADABLE_REASON,
    V6_TOO,
    installed_extensions,
)

pytestmark = pytest.mark.kernel
DOC = Path(__file__).resolve().parents[2] / "docs" / "extensions.md"
# What kpa did with each representative: name -> (status, reasons); filled by the tests.
RESULTS: dict[str, tuple[str, set[str]]] = {}


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"kpat-{secrets.token_hex(3)}-cat"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ipset", "create", "kpa-set", "hash:ip"],
                       check=False, capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _run(ns: str, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True, text=True,
                          check=False)


def _status(rules: list[Rule]) -> tuple[str, set[str]]:
    reasons = {getattr(e, "reason", "") or e.describe() for r in rules for e in r.unknown_exprs()}
    return ("unknown" if reasons else "modelled"), reasons


def _read(text: str, name: str) -> Ruleset:
    try:
        return parse_text(text, name)
    except KpaError as exc:
        pytest.fail(f"kpa rejected a dump the real tool printed: {exc}\n{text}")


def test_every_installed_extension_has_a_representative() -> None:
    installed = installed_extensions()
    assert installed, "no iptables extensions found"
    missing = sorted(set(installed) - set(REPS))
    assert not missing, f"installed iptables extensions with no representative rule: {missing}"
    gone = sorted(set(REPS) - set(installed))
    assert not gone, f"representatives for extensions that are not installed: {gone}"


# Targets first: a match may need the object a target creates (rateest reads RATEEST's estimator).
def _order() -> list[str]:
    return sorted((n for n in REPS if n not in PENDING), key=lambda n: (not n.isupper(), n))


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_iptables_catalogue(netns: str, backend: str) -> None:
    loaded: dict[str, list[str]] = {"ipv4": [], "ipv6": []}
    failed: dict[str, str] = {}
    for name in _order():
        rep = REPS[name]
        families = set(rep.families) | ({"ipv6"} if name in V6_TOO else set())
        for fam in sorted(families):
            tool = f"{'ip6tables' if fam == 'ipv6' else 'iptables'}-{backend}"
            args = rep.args
            if fam == "ipv6":
                args = args.replace("10.1.0.0/24", "fd01::/64").replace("10.2.0.0/24", "fd02::/64")
            r = _run(netns, [tool, "-w", "10", "-t", rep.table, "-A", rep.chain, *shlex.split(args)])
            if r.returncode:
                failed[name] = r.stderr.strip()
            else:
                loaded[fam].append(name)
    assert set(failed) == set(UNLOADABLE_REASON), (
        f"loading failed for {sorted(set(failed) - set(UNLOADABLE_REASON))} "
        f"({ {n: failed[n] for n in set(failed) - set(UNLOADABLE_REASON)} }); "
        f"loaded although listed as unloadable: {sorted(set(UNLOADABLE_REASON) - set(failed))}")
    per_name: dict[str, list[Rule]] = {}
    for fam, names in loaded.items():
        if not names:
            continue
        tool = f"{'ip6tables' if fam == 'ipv6' else 'iptables'}-{backend}-save"
        dump = _run(netns, [tool]).stdout
        rs = _read(dump, f"catalogue.{backend}.{fam}.save")
        rules = [r for t in rs.tables for r in t.rules()]
        # One rule per loaded representative, in the order each chain received them.
        by_chain: dict[tuple[str, str], list[str]] = {}
        for name in names:
            rep = REPS[name]
            by_chain.setdefault((rep.table, rep.chain), []).append(name)
        for (table, chain), chain_names in by_chain.items():
            got = [r for r in rules if r.table == table and r.chain == chain]
            assert len(got) == len(chain_names), f"{table}/{chain}: {len(got)} rules for {chain_names}"
            for name, rule in zip(chain_names, got, strict=True):
                per_name.setdefault(name, []).append(rule)
    for name, rules in per_name.items():
        status, reasons = _status(rules)
        prev = RESULTS.get(name)
        if prev:
            status = "unknown" if "unknown" in (status, prev[0]) else status
            reasons |= prev[1]
        RESULTS[name] = (status, reasons)
    print(f"\n{backend}: {sum(len(v) for v in loaded.values())} rules loaded, "
          f"{len(per_name)} extensions read, {len(failed)} not loadable here; unknown: "
          f"{sorted(n for n in per_name if _status(per_name[n])[0] == 'unknown')}")


@pytest.mark.parametrize("name", sorted(PENDING))
@pytest.mark.xfail(strict=True, reason="kpa rejects this dump today (catalogue.PENDING)")
def test_iptables_catalogue_pending(netns: str, name: str) -> None:
    rep = REPS[name]
    for fam in rep.families:
        tool = "ip6tables" if fam == "ipv6" else "iptables"
        r = _run(netns, [f"{tool}-nft", "-w", "10", "-t", rep.table, "-A", rep.chain, *shlex.split(rep.args)])
        assert r.returncode == 0, r.stderr
        parse_text(_run(netns, [f"{tool}-nft-save"]).stdout, f"catalogue.{name}.save")


NFT_CHAINS = {
    "filter": "type filter hook input priority filter;",
    "output": "type filter hook output priority filter;",
    "prerouting": "type filter hook prerouting priority mangle;",
    "postrouting": "type filter hook postrouting priority mangle;",
    "raw": "type filter hook prerouting priority raw;",
    "dstnat": "type nat hook prerouting priority dstnat;",
    "srcnat": "type nat hook postrouting priority srcnat;",
}
NFT_SKELETON = (
    f"table inet {NFT_TABLE} {{\n"
    "  set allowed { type ipv4_addr; flags dynamic; }\n"
    "  counter cnt { }\n"
    '  ct helper ftp-std { type "ftp" protocol tcp; }\n'
    "  chain sub { }\n"
    + "".join(f"  chain {kind} {{ {spec} }}\n" for kind, spec in NFT_CHAINS.items())
    + "}\n"
)
# Expressions the kernel here cannot load, and why (checked: loading must fail).
NFT_UNLOADABLE = {
    "queue": "the kernel has no nft queue support (CONFIG_NFT_QUEUE)",
}


def test_nft_catalogue(netns: str) -> None:
    r = _run(netns, ["nft", "-f", "-"], NFT_SKELETON)
    assert r.returncode == 0, r.stderr
    failed: dict[str, str] = {}
    for name, (kind, text) in NFT_REPS.items():
        if name in NFT_PENDING:
            continue
        r = _run(netns, ["nft", "add", "rule", "inet", NFT_TABLE, kind, text])
        if r.returncode:
            failed[name] = r.stderr.strip()
    assert set(failed) == set(NFT_UNLOADABLE), failed
    listing = _run(netns, ["nft", "list", "ruleset"]).stdout
    as_json = _run(netns, ["nft", "-j", "list", "ruleset"]).stdout
    counts: dict[str, int] = {}
    for fmt, text in (("nft", listing), ("json", as_json)):
        rs = _read(text, f"catalogue.{fmt}")
        [table] = [t for t in rs.tables if t.name == NFT_TABLE]
        for kind in NFT_CHAINS:
            names = [n for n, (k, _) in NFT_REPS.items() if k == kind and n not in failed and n not in NFT_PENDING]
            got = table.chains[kind].rules
            assert len(got) == len(names), f"{fmt} {kind}: {[r.text for r in got]} for {names}"
            for name, rule in zip(names, got, strict=True):
                status, reasons = _status([rule])
                key = f"nft {name}"
                prev = RESULTS.get(key)
                if prev:
                    status = "unknown" if "unknown" in (status, prev[0]) else status
                    reasons |= prev[1]
                RESULTS[key] = (status, reasons)
                counts[fmt] = counts.get(fmt, 0) + 1
    print(f"\nnft: {counts} rules read; unknown: "
          f"{sorted(n for n, (s, _) in RESULTS.items() if n.startswith('nft ') and s == 'unknown')}")


@pytest.mark.parametrize("name", sorted(NFT_PENDING))
@pytest.mark.xfail(strict=True, reason="kpa rejects this nft text today (catalogue.NFT_PENDING)")
def test_nft_catalogue_pending(netns: str, name: str) -> None:
    kind, text = NFT_REPS[name]
    assert _run(netns, ["nft", "-f", "-"], NFT_SKELETON).returncode == 0
    r = _run(netns, ["nft", "add", "rule", "inet", NFT_TABLE, kind, text])
    assert r.returncode == 0, r.stderr
    parse_text(_run(netns, ["nft", "list", "ruleset"]).stdout, f"catalogue.{name}.nft")


def _doc_rows() -> dict[str, str]:
    rows: dict[str, str] = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\|\s*`([^`]+)`\s*\|\s*(modelled|unknown|not loadable)\s*\|", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_docs_table_matches_what_kpa_does() -> None:
    """Runs after the catalogue tests: the docs say, for each extension, what kpa really did."""
    if not RESULTS:
        pytest.skip("run together with the catalogue tests")
    report = os.environ.get("KPA_CATALOGUE_REPORT")
    if report:  # what kpa did with each representative, for docs/extensions.md
        Path(report).write_text(json.dumps({n: [s, sorted(r)] for n, (s, r) in sorted(RESULTS.items())}, indent=1))
    rows = _doc_rows()
    expected = {n: s for n, (s, _) in RESULTS.items()}
    expected.update({n: "not loadable" for n in UNLOADABLE_REASON})
    expected.update({f"nft {n}": "not loadable" for n in NFT_UNLOADABLE})
    wrong = {n: (rows.get(n), s) for n, s in expected.items() if rows.get(n) != s}
    assert not wrong, f"docs/extensions.md disagrees with kpa (name: (docs, kpa)): {wrong}"
