"""nft rule skeletons (kpa.parse.nft_shapes) change nothing: every answer equals the eager read's.

Each input is read twice, with skeletons (rules of one accepted shape become
LazyNftRule) and without (every rule lowered up front), and compared: first
what `kpa check` reads without building anything (known, unknown expressions,
chain references, counters, handles, locations, texts, set flags), then every
rule's expressions once built. Bad input must fail with the same message at
the same line. Inputs: every .nft fixture, random one-value mutations of their
rules, crafted rules, and (kernel tests) random kube-proxy clusters listed by
the real `nft list ruleset`, with their own mutations.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from kpa.errors import InputError
from kpa.netfilter.model import LazyNftRule, Ruleset
from kpa.parse.nft_json import parse_nft_json
from kpa.parse.nft_shapes import pattern_of, skeleton_lines
from kpa.parse.nft_text import parse_nft_text

FIX = Path(__file__).parent / "fixtures"
NFT_FILES = sorted(p for p in FIX.rglob("*") if p.is_file() and p.suffix == ".nft")
JSON_FILES = sorted(p for p in (FIX / "nft").rglob("*.json") if p.is_file())


def check_view(rs: Ruleset) -> list[Any]:
    """What `kpa check` reads, read before any rule is built."""
    out: list[Any] = [list(rs.warnings)]
    for t in rs.tables:
        out.append(("table", t.family.value, t.name, t.source, t.managed_by_iptables, str(t.location)))
        for name, c in t.chains.items():
            out.append(("chain", name, c.hook, c.priority, c.kind, c.policy, str(c.location), c.handle, len(c.rules)))
            for r in c.rules:
                out.append(("rule", r.table, r.chain, r.index, r.where(), str(r.location), r.text, r.counters, r.handle,
                            r.known, tuple(r.chain_refs())))
                out.append([(e.describe(), getattr(e, "reason", "")) for e in r.unknown_exprs()])
        for name, ns in t.sets.items():
            out.append(("set", name, ns.key_types, sorted(ns.flags), ns.dynamic, len(ns.elements), ns.values is None))
    return out


def built_view(rs: Ruleset) -> list[Any]:
    """Every rule built: its comment and expressions."""
    out: list[Any] = []
    for t in rs.tables:
        for c in t.chains.values():
            for r in c.rules:
                out.append((str(r.location), r.comment, r.known, tuple(r.chain_refs()),
                            [(type(e).__name__, e.to_json(), e.describe()) for e in r.exprs]))
    return out


def read(text: str, shapes: bool, is_json: bool = False) -> tuple[str, Any]:
    try:
        rs = (parse_nft_json if is_json else parse_nft_text)(text, "rules.nft", shapes=shapes)
    except InputError as exc:
        return "error", str(exc)
    try:
        return "ok", (check_view(rs), built_view(rs), rs)
    except Exception as exc:  # a crash is a bug of its own; here it only has to be the same crash
        return "error", f"{type(exc).__name__}: {exc}"


def assert_same(text: str, is_json: bool = False) -> Ruleset | None:
    lazy, eager = read(text, True, is_json), read(text, False, is_json)
    assert lazy[0] == eager[0], (lazy[1] if lazy[0] == "error" else eager[1])
    if lazy[0] == "error":
        assert lazy[1] == eager[1]
        return None
    assert lazy[1][0] == eager[1][0]
    assert lazy[1][1] == eager[1][1]
    # Built now, a lazy ruleset reads as the eager one did before.
    assert check_view(lazy[1][2]) == eager[1][0]
    rs: Ruleset = lazy[1][2]
    return rs


def lazy_count(text: str, is_json: bool = False) -> int:
    rs = (parse_nft_json if is_json else parse_nft_text)(text, "rules.nft")
    return sum(isinstance(r, LazyNftRule) for t in rs.tables for r in t.rules())


def test_there_are_nft_fixtures() -> None:
    assert len(NFT_FILES) > 10


@pytest.mark.parametrize("path", NFT_FILES, ids=lambda p: str(p.relative_to(FIX)))
def test_every_fixture_reads_the_same(path: Path) -> None:
    assert_same(path.read_text())


def test_kube_proxy_fixtures_defer_most_rules() -> None:
    text = (FIX / "nft" / "kube-proxy" / "kitchen-sink.v4.nft").read_text()
    total = sum(1 for t in parse_nft_text(text, "f", shapes=False).tables for _ in t.rules())
    assert lazy_count(text) > total // 3


# -- one-value mutations ----------------------------------------------------------

_VALUE = re.compile(r"(?<=[\t ])(?:@[A-Za-z0-9_][A-Za-z0-9_./:-]*|[0-9][0-9a-fA-Fx./:\[\]-]*"
                    r"|(?<=goto )[^\s,{}]+|(?<=jump )[^\s,{}]+)(?=[ ,\n]|$)")
_ODD = ["0", "1", "255", "256", "65535", "65536", "70000", "070", "0x50", "-1", "99999999999", "10.0.0.256",
        "1.2.3", "1.2.3.4.5", "01.2.3.4", "10.0.0.0/8", "10.0.0.1/33", "10.1.2.3/24", "255.255.255.255",
        "0.0.0.0", "::1", "fd00::1", "10.0.0.1:80", "10.0.0.1:65536", "10.0.0.1:0", "1.2.3.4-1.2.3.9",
        "10.0.0.1:80-90", "@missing-set", "@cluster-ips", "@service-ips", "@no-endpoint-services",
        "nowhere", "accept", "drop", "{", "mark-for-masquerade", "services", "a:b", "x.y", "__",
        "10.244.0.0/16", "2", "5", "53", "tcp", "udp", "ip", "saddr"]


def _mutations(text: str, rng: random.Random, n: int) -> list[str]:
    lines = text.splitlines(keepends=True)
    candidates = [i for i, line in enumerate(lines) if _VALUE.search(line) and not line.lstrip().startswith(
        ("table ", "chain ", "set ", "map ", "type ", "flags ", "policy "))]
    names = sorted(set(re.findall(r"(?:chain|set|map) (\S+) \{", text)))
    out: list[str] = []
    for _ in range(n):
        if not candidates:
            break
        # Later rules of a shape are the deferred ones: favour the second half of the text.
        i = candidates[rng.randrange(len(candidates) // 2, len(candidates)) if rng.random() < 0.7
                       else rng.randrange(len(candidates))]
        spots = list(_VALUE.finditer(lines[i]))
        m = rng.choice(spots)
        old = m.group(0)
        pool = _ODD + names + ["@" + x for x in names[:20]]
        if re.fullmatch(r"[0-9.]+", old) and old.count(".") == 3:
            octets = old.split(".")
            octets[rng.randrange(4)] = str(rng.choice([0, 1, 9, 10, 99, 100, 199, 200, 249, 250, 255, 256, 300]))
            pool = pool + [".".join(octets)] * 10
        new = rng.choice(pool)
        copy = list(lines)
        copy[i] = lines[i][: m.start()] + new + lines[i][m.end():]
        out.append("".join(copy))
    return out


@pytest.mark.parametrize("path", [p for p in NFT_FILES if "kube-proxy" in str(p)] or NFT_FILES[:5],
                         ids=lambda p: str(p.relative_to(FIX)))
def test_one_value_mutations_read_the_same(path: Path) -> None:
    rng = random.Random(str(path.name))
    for text in _mutations(path.read_text(), rng, 40):
        assert_same(text)


def test_mutations_of_every_fixture_read_the_same() -> None:
    rng = random.Random(11)
    for path in NFT_FILES:
        for text in _mutations(path.read_text(), rng, 8):
            assert_same(text)


# -- crafted rules --------------------------------------------------------------------

_HEAD = """table ip t {
	set s {
		type ipv4_addr
		elements = { 10.0.0.1 }
	}
	map m {
		type ipv4_addr : verdict
		elements = { 10.0.0.2 : goto a }
	}
	chain a {
	}
	chain b {
	}
	chain c {
"""


@pytest.mark.parametrize("rules", [
    ["ip saddr 10.0.0.1 jump a", "ip saddr 10.0.0.2 jump b", "ip saddr 10.0.0.3 jump nowhere"],
    ["ip saddr 10.0.0.1 jump a", "ip saddr 10.0.0.256 jump a"],
    ["ip saddr 10.0.0.1 jump a", "ip saddr 010.0.0.1 jump a"],
    ["tcp dport 80 accept", "tcp dport 65535 accept", "tcp dport 65536 accept", "tcp dport 0x50 accept"],
    ["udp sport != 53 drop", "udp sport != 5353 drop"],
    ["meta l4proto tcp dnat to 10.0.0.1:80", "meta l4proto tcp dnat to 10.0.0.2:8080",
     "meta l4proto tcp dnat to 10.0.0.3:99999"],
    ["ip saddr @s goto a", "ip saddr @m goto a", "ip saddr @nothere goto a", "ip saddr @s goto b"],
    ["update @s { ip saddr }", "update @m { ip saddr }", "update @zz { ip saddr }"],
    ["numgen random mod 2 vmap { 0 : goto a, 1 : goto b }", "numgen random mod 2 vmap { 0 : goto b, 1 : goto nowhere }"],
    ["ip daddr 10.0.0.1 tcp dport 80 jump a comment \"x\"", "ip daddr 10.0.0.2 tcp dport 81 jump b comment \"x\"",
     "ip daddr 10.0.0.3 tcp dport 82 jump b comment \"x"],
    ["jump a", "jump a", "goto b", "goto b"],
    ["ip saddr 10.0.0.1 jump a # handle 4", "ip saddr 10.0.0.2 jump b # handle 5"],
    ["ip saddr 10.0.0.1 counter packets 1 bytes 2 jump a", "ip saddr 10.0.0.2 counter packets 1 bytes 2 jump a"],
    ["ip6 saddr ::1 jump a", "ip6 saddr ::2 jump a"],
    ["ip saddr 10.0.0.1 jump { accept }", "ip saddr 10.0.0.2 jump { accept }"],
    ["ip saddr 10.0.0.1 . tcp dport 80 accept", "ip saddr 10.0.0.2 . tcp dport 81 accept"],
    ["ip daddr 10.0.0.1 - 10.0.0.9 accept", "ip daddr 10.0.0.2 - 10.0.0.9 accept"],
    ["ip saddr 10.0.0.1 jump a", "ip saddr 10.0.0.2 jump kpa-shape-chain-0", "ip saddr 127.99.0.7 jump a"],
])
def test_crafted_rules_read_the_same(rules: list[str]) -> None:
    text = _HEAD + "".join(f"\t\t{r}\n" for r in rules) + "\t}\n}\n"
    assert_same(text)
    for k in range(len(rules)):  # each rule also first of its shape
        rotated = rules[k:] + rules[:k]
        assert_same(_HEAD + "".join(f"\t\t{r}\n" for r in rotated) + "\t}\n}\n")


def _json_ruleset(rules: list[list[Any]]) -> str:
    objs: list[Any] = [{"table": {"family": "ip", "name": "t"}},
                       {"set": {"family": "ip", "table": "t", "name": "s", "type": "ipv4_addr", "elem": ["10.0.0.1"]}},
                       *({"chain": {"family": "ip", "table": "t", "name": n}} for n in ("a", "b", "c"))]
    objs += [{"rule": {"family": "ip", "table": "t", "chain": "c", "expr": r}} for r in rules]
    return json.dumps({"nftables": objs})


def _saddr(addr: str) -> dict[str, Any]:
    return {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": addr}}


@pytest.mark.parametrize("rules", [
    [[_saddr("10.0.0.1"), {"jump": {"target": "a"}}], [_saddr("10.0.0.2"), {"jump": {"target": "b"}}],
     [_saddr("10.0.0.3"), {"jump": {"target": "nowhere"}}], [_saddr("10.0.0.256"), {"jump": {"target": "a"}}]],
    [[_saddr("10.0.0.1"), {"jump": {"rules": [[{"accept": None}]]}}],
     [_saddr("10.0.0.2"), {"jump": {"rules": [[{"accept": None}]]}}]],
    [[_saddr("@s"), {"goto": {"target": "a"}}], [_saddr("@nothere"), {"goto": {"target": "a"}}],
     [_saddr("@s"), {"goto": {"target": True}}]],
    [[{"set": {"op": "update", "elem": {"payload": {"protocol": "ip", "field": "saddr"}}, "set": "@s"}}],
     [{"set": {"op": "update", "elem": {"payload": {"protocol": "ip", "field": "saddr"}}, "set": "@zz"}}]],
    [[{"dnat": {"addr": "10.0.0.1", "port": 80}}], [{"dnat": {"addr": "10.0.0.2", "port": 65536}}],
     [{"dnat": {"addr": "10.0.0.3", "port": 8080}}]],
    [[_saddr("10.0.0.1"), {"jump": {"target": "kpa-shape-chain-0-end"}}],
     [_saddr("127.99.0.7"), {"jump": {"target": "a"}}], [_saddr("10.0.0.2"), "jump a"]],
])
def test_crafted_json_rules_read_the_same(rules: list[list[Any]]) -> None:
    for k in range(len(rules)):
        assert_same(_json_ruleset(rules[k:] + rules[:k]), is_json=True)


def test_a_rule_in_an_undeclared_chain_is_the_same_error() -> None:
    # The chain of a deferred rule is checked as a built one's is.
    text = _HEAD + "\t\tip saddr 10.0.0.1 jump a\n\t}\n}\n"
    assert_same(text)


def test_skeleton_patterns_match_what_they_replaced() -> None:
    line = "\t\tip daddr 10.96.0.1 tcp dport 443 ip saddr != 10.244.0.0/16 jump mark-for-masquerade"
    (skel,) = skeleton_lines(line) or [""]
    assert skel.count("\x01") == 1 and skel.count("\x02") == 1 and skel.count("\x03") == 1
    assert pattern_of(skel.strip()).fullmatch(line.strip())
    assert skeleton_lines("x\x01") is None


# -- nft -j ------------------------------------------------------------------------------

def test_there_are_json_fixtures() -> None:
    assert len(JSON_FILES) > 10


@pytest.mark.parametrize("path", JSON_FILES, ids=lambda p: str(p.relative_to(FIX)))
def test_every_json_fixture_reads_the_same(path: Path) -> None:
    assert_same(path.read_text(), is_json=True)


def test_json_kube_proxy_fixtures_defer_most_rules() -> None:
    text = (FIX / "nft" / "kube-proxy" / "kitchen-sink.v4.json").read_text()
    total = sum(1 for t in parse_nft_json(text, "f", shapes=False).tables for _ in t.rules())
    assert lazy_count(text, is_json=True) > total // 3


_ODD_JSON: list[Any] = [*_ODD, 0, 1, 80, 65535, 65536, -1, 2**40, True, False, None, [], {}, ["x"], {"a": 1}, 1.5,
                        "\u0001a", "10.0.0.1\n", "@", ""]


def _leaves(x: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(x, dict):
        return [q for k, v in x.items() for q in _leaves(v, (*path, k))]
    if isinstance(x, list):
        return [q for i, v in enumerate(x) for q in _leaves(v, (*path, i))]
    return [path]


def _json_mutations(text: str, rng: random.Random, n: int) -> list[str]:
    doc = json.loads(text)
    rules = [i for i, o in enumerate(doc["nftables"]) if "rule" in o]
    names = sorted({o[k]["name"] for o in doc["nftables"] for k in ("chain", "set", "map") if k in o})
    out: list[str] = []
    for _ in range(n):
        if not rules:
            break
        i = rules[rng.randrange(len(rules) // 2, len(rules)) if rng.random() < 0.7 else rng.randrange(len(rules))]
        copy = json.loads(text)
        expr = copy["nftables"][i]["rule"]["expr"]
        spots = _leaves(expr)
        if not spots:
            continue
        path = rng.choice(spots)
        target = expr
        for step in path[:-1]:
            target = target[step]
        old = target[path[-1]]
        pool = _ODD_JSON + names + ["@" + x for x in names[:20]]
        if isinstance(old, str) and old.count(".") == 3:
            octets = old.split(".")
            octets[rng.randrange(4)] = str(rng.choice([0, 9, 10, 99, 100, 199, 200, 249, 250, 255, 256, 300]))
            pool = pool + [".".join(octets)] * 10
        target[path[-1]] = rng.choice(pool)
        out.append(json.dumps(copy))
    return out


@pytest.mark.parametrize("path", [p for p in JSON_FILES if "kube-proxy" in str(p)] or JSON_FILES[:5],
                         ids=lambda p: str(p.relative_to(FIX)))
def test_json_one_value_mutations_read_the_same(path: Path) -> None:
    rng = random.Random(str(path.name))
    for text in _json_mutations(path.read_text(), rng, 40):
        assert_same(text, is_json=True)


def test_json_mutations_of_every_fixture_read_the_same() -> None:
    rng = random.Random(12)
    for path in JSON_FILES:
        for text in _json_mutations(path.read_text(), rng, 8):
            assert_same(text, is_json=True)


# -- real nft listings of random clusters (kernel) --------------------------------------

@pytest.mark.kernel
def test_captured_random_clusters_read_the_same() -> None:
    from kpa.gen.cluster import random_cluster
    from kpa.gen.nft_capture import capture_nft
    from kpa.gen.nftables import render_nft
    from kpa.gen.options import ProxierOptions

    rng = random.Random(7)
    for seed in (1,):
        cluster = random_cluster(seed=seed, services=50, endpoints_per_service=4)
        text = capture_nft(render_nft(cluster, ProxierOptions(node_name="node-0"), "ipv4"))
        rs = assert_same(text)
        assert rs is not None
        total = sum(1 for t in rs.tables for _ in t.rules())
        assert lazy_count(text) > total * 0.8
        for mutated in _mutations(text, rng, 30):
            assert_same(mutated)
        listed = capture_nft(render_nft(cluster, ProxierOptions(node_name="node-0"), "ipv4"), json=True)
        rs = assert_same(listed, is_json=True)
        assert rs is not None
        assert lazy_count(listed, is_json=True) > total * 0.8
        for mutated in _json_mutations(listed, rng, 30):
            assert_same(mutated, is_json=True)
