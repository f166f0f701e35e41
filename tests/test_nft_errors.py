"""Bad input fails with FILE:LINE; constructs kpa does not model stay in the rule as unknown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kpa.errors import InputError
from kpa.netfilter.model import Family
from kpa.parse.nft_json import parse_nft_json
from kpa.parse.nft_text import parse_nft_text

FIX = Path(__file__).parent / "fixtures" / "nft"


def captured_lines() -> list[str]:
    return (FIX / "sampler.txt").read_text().splitlines()


def test_unclosed_table_reports_end_of_input() -> None:
    lines = captured_lines()
    cut = lines[: lines.index("table inet filter {")]
    with pytest.raises(InputError) as err:
        parse_nft_text("\n".join(cut[:-1]) + "\n", "cut.nft")  # drop the table's closing brace
    assert err.value.file == "cut.nft" and "closing" in err.value.message


def test_bad_address_reports_its_line() -> None:
    lines = captured_lines()
    at = next(i for i, line in enumerate(lines) if "ip daddr 10.96.0.1 tcp dport 443" in line)
    lines[at] = lines[at].replace("10.96.0.1", "10.96.0.300")
    with pytest.raises(InputError) as err:
        parse_nft_text("\n".join(lines), "bad.nft")
    assert err.value.line == at + 1 and "10.96.0.300" in err.value.message


def test_bad_priority_and_stray_line() -> None:
    lines = captured_lines()
    at = next(i for i, line in enumerate(lines) if "priority dstnat - 10" in line)
    bad = list(lines)
    bad[at] = bad[at].replace("dstnat - 10", "sideways")
    with pytest.raises(InputError) as err:
        parse_nft_text("\n".join(bad), "prio.nft")
    assert err.value.line == at + 1
    with pytest.raises(InputError) as err:
        parse_nft_text("hello world\n" + "\n".join(lines), "stray.nft")
    assert err.value.line == 1


def test_unknown_text_syntax_keeps_the_rule() -> None:
    lines = captured_lines()
    at = next(i for i, line in enumerate(lines) if line.strip() == "ip protocol icmp drop")
    lines[at] = "\t\tosf name \"Linux\" drop"
    rs = parse_nft_text("\n".join(lines), "osf.nft")
    t = rs.table(Family.IPV4, "kube-proxy")
    assert t is not None
    r = next(r for r in t.rules() if r.location.line == at + 1)
    assert not r.known and r.text.startswith("osf")


def test_json_unknown_expression_is_kept_as_unknown() -> None:
    doc = json.loads((FIX / "sampler.json").read_text())
    rules = [o["rule"] for o in doc["nftables"] if "rule" in o]
    target = next(r for r in rules if r["chain"] == "masquerading" and len(r["expr"]) == 1)
    target["expr"].insert(0, {"frobnicate": {"level": 11}})
    rs = parse_nft_json(json.dumps(doc, indent=2), "u.json")
    t = rs.table(Family.IPV4, "kube-proxy")
    assert t is not None
    r = next(r for r in t.chains["masquerading"].rules if r.handle == target["handle"])
    assert not r.known and r.unknown_exprs()[0].name == "frobnicate"
    assert r.exprs[-1].known  # the masquerade itself is still modelled
    # Pretty-printed, the rule reports the line its object starts on.
    text = json.dumps(doc, indent=2)
    assert text.splitlines()[r.location.line - 1].strip() == "{"
    assert f'"handle": {target["handle"]}' in "\n".join(text.splitlines()[r.location.line:r.location.line + 8])


def test_json_malformed_objects_and_syntax() -> None:
    doc = json.loads((FIX / "sampler.json").read_text())
    doc["nftables"].append({"rule": {"family": "ip", "table": "kube-proxy", "chain": "no-such-chain", "expr": []}})
    text = json.dumps(doc, indent=1)
    with pytest.raises(InputError) as err:
        parse_nft_json(text, "m.json")
    assert err.value.line is not None and "no-such-chain" in err.value.message
    assert '"no-such-chain"' in "\n".join(text.splitlines()[err.value.line - 1:err.value.line + 6])
    with pytest.raises(InputError) as err:
        parse_nft_json('{"nftables": [\n{"table": {"family": "ip", "name": "t"}},\n{"chain": }\n]}', "s.json")
    assert err.value.line == 3
