"""The iptables-save parser: structure, syntax variants, and bad input."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from kpa.errors import InputError
from kpa.ext.base import UnknownExpr
from kpa.netfilter.model import Family
from kpa.parse.iptables_save import parse_iptables, tokenize
from kpa.sources import load_rules

FIXTURES = Path(__file__).parent / "fixtures" / "iptables"
ALL_DUMPS = sorted(FIXTURES.glob("*.save"))

HEAD = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"


def kpa(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kpa", *args], input=stdin.decode() if stdin else None,
                          capture_output=True, text=True, check=False)


@pytest.mark.parametrize("dump", ALL_DUMPS, ids=lambda p: p.name)
def test_every_kernel_dump_parses_with_no_unknowns(dump: Path) -> None:
    rs = parse_iptables(dump.read_text(), str(dump))
    rules = [r for t in rs.tables for r in t.rules()]
    assert rules, "fixture holds kube-proxy rules"
    assert [str(r.location) for r in rules if not r.known] == []
    expected = Family.IPV6 if dump.name.endswith(".v6.save") else Family.IPV4
    assert {t.family for t in rs.tables} == {expected}
    # Every rule remembers its own line: the text at that line is the rule.
    lines = dump.read_text().splitlines()
    for r in rules[:50]:
        assert lines[r.location.line - 1].strip() == r.text


def test_counters_in_both_forms_and_policies() -> None:
    text = ("*filter\n:INPUT DROP [12:3456]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [1:2]\n:X - [0:0]\n"
            "[5:600] -A INPUT -s 10.0.0.0/8 -j X\n-A X -c 7 800 -j ACCEPT\nCOMMIT\n")
    rs = parse_iptables(text, "t")
    t = rs.tables[0]
    assert t.chains["INPUT"].policy == "DROP" and t.chains["INPUT"].counters == (12, 3456)
    assert t.chains["INPUT"].rules[0].counters == (5, 600)
    assert t.chains["X"].rules[0].counters == (7, 800)


def test_quoting_escapes_and_negation_forms() -> None:
    toks = tokenize(r'-A X -m comment --comment "a \"quoted\" back\\slash" -j ACCEPT', "f", 1)
    assert toks[5].text == 'a "quoted" back\\slash' and toks[5].quoted
    text = HEAD + ":X - [0:0]\n-A X ! -s 10.0.0.0/8 -p tcp -m tcp --dport ! 80 -j RETURN\n-A X -s ! 1.2.3.4 -j RETURN\nCOMMIT\n"
    rs = parse_iptables(text, "t")
    r1, r2 = rs.tables[0].chains["X"].rules
    assert r1.exprs[0].describe() == "! -s 10.0.0.0/8"
    assert "! --dport 80" in r1.exprs[2].describe()
    assert r2.exprs[0].describe() == "! -s 1.2.3.4"


def test_long_options_and_implicit_protocol_module() -> None:
    text = HEAD + ":X - [0:0]\n-A X --source 10.1.0.0/16 --protocol udp --dport 53 --jump RETURN\nCOMMIT\n"
    rule = parse_iptables(text, "t").tables[0].chains["X"].rules[0]
    assert [e.name for e in rule.exprs] == ["src", "proto", "udp", "RETURN"]


def test_unknown_module_and_target_are_kept_verbatim() -> None:
    text = HEAD + ":X - [0:0]\n-A X -m bpf --bytecode \"4,48 0 0 9\" -j HMARK --hmark-mod 10\nCOMMIT\n"
    rule = parse_iptables(text, "t").tables[0].chains["X"].rules[0]
    assert not rule.known
    unknown = rule.unknown_exprs()
    assert all(isinstance(e, UnknownExpr) for e in unknown)
    assert [e.name for e in unknown] == ["bpf", "HMARK"]
    assert "--bytecode" in unknown[0].describe()


def test_warning_lines_are_kept() -> None:
    text = "# Warning: iptables-legacy tables present, use iptables-legacy-save to see them\n" + HEAD + "COMMIT\n"
    assert "iptables-legacy tables present" in parse_iptables(text, "t").warnings[0]


@pytest.mark.parametrize(("text", "line", "expected"), [
    (HEAD + "-A PREROUTING -j ACCEPT\n", 7, "expected COMMIT"),                 # truncated / missing COMMIT
    ("-A INPUT -j ACCEPT\n", 1, "expected a table header"),                     # rule before any table
    ("*nonsense\nCOMMIT\n", 1, "expected a table name"),                        # unknown table
    (HEAD + "-A PREROUTING -s 10.0.0.300/8 -j ACCEPT\nCOMMIT\n", 6, "expected an address or CIDR"),
    (HEAD + "-A PREROUTING -p tcp -m tcp --dport 70000 -j ACCEPT\nCOMMIT\n", 6, "expected a port number"),
    (HEAD + "-A PREROUTING -p tcp -m multiport --dports 1,x -j ACCEPT\nCOMMIT\n", 6, "expected a port number"),
    (HEAD + "-A NOPE -j ACCEPT\nCOMMIT\n", 6, "expected a chain declared"),
    (HEAD + "-A PREROUTING -m comment --comment \"open\nCOMMIT\n", 6, "closing"),
    (HEAD + "*filter\n", 6, "expected COMMIT"),
])
def test_bad_input_names_file_line_and_expectation(text: str, line: int, expected: str) -> None:
    with pytest.raises(InputError) as err:
        parse_iptables(text, "bad.save")
    assert err.value.line == line
    assert expected in err.value.message
    assert str(err.value).startswith(f"bad.save:{line}: ")


def test_one_bad_rule_in_a_large_dump_names_exactly_its_line(tmp_path: Path) -> None:
    body = "".join(f"-A KUBE-SERVICES -d 10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}/32 -p tcp -m tcp --dport 80 -j ACCEPT\n"
                   for i in range(30000))
    lines = body.splitlines()
    lines[21233] = lines[21233].replace("--dport 80", "--dport 8o")
    text = HEAD + ":KUBE-SERVICES - [0:0]\n" + "\n".join(lines) + "\nCOMMIT\n"
    with pytest.raises(InputError) as err:
        parse_iptables(text, "big.save")
    assert err.value.line == 6 + 1 + 21233


def test_cli_bad_inputs_exit_2_without_traceback(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 4)
    truncated = tmp_path / "trunc.save"
    truncated.write_text(HEAD + "-A PREROUTING -j ACC")
    for path in (garbage, truncated, tmp_path / "missing.save"):
        res = kpa("check", "--rules", str(path))
        assert res.returncode == 2, res
        assert "Traceback" not in res.stderr
        assert res.stderr.startswith(f"kpa: error: {path}")


def test_gzip_and_stdin_sources(tmp_path: Path) -> None:
    dump = FIXTURES / "clusterip.nft.v4.save"
    gz = tmp_path / "dump.save.gz"
    gz.write_bytes(gzip.compress(dump.read_bytes()))
    plain = load_rules([str(dump)])
    zipped = load_rules([str(gz)])
    assert [len(list(t.rules())) for t in plain.tables] == [len(list(t.rules())) for t in zipped.tables]
    res = kpa("check", "--rules", "-", stdin=dump.read_bytes())
    assert res.returncode == 0, res.stderr
    assert "nat" in res.stdout


def test_non_contiguous_mask_is_unknown_not_an_error() -> None:
    text = HEAD + "-A PREROUTING -d 1.0.0.0/255.0.255.0 -j ACCEPT\n-A PREROUTING -d 1.0.0.0/255.0.0.0 -j ACCEPT\nCOMMIT\n"
    r1, r2 = parse_iptables(text, "t").tables[0].chains["PREROUTING"].rules
    assert not r1.known and "non-contiguous" in r1.unknown_exprs()[0].reason  # type: ignore[attr-defined]
    assert r2.known
