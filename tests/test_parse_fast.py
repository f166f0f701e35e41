"""The iptables-save fast path (rule skeletons, lazy expressions, graph facts without networkx).

Every test compares against the full parser (`shapes=False`), which parses
every rule up front exactly as kpa always did: the fast path must give the
same rules, the same expressions, the same check findings and the same
errors at the same lines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest

from kpa.errors import InputError
from kpa.gen.cluster import random_cluster
from kpa.gen.iptables import render_restore
from kpa.gen.options import ProxierOptions
from kpa.graph import build_graph, chain_problems, dangling_jumps, find_problems
from kpa.netfilter.model import Family, LazyRule, Location, Rule, Ruleset
from kpa.parse import shapes
from kpa.parse.iptables_save import parse_iptables
from kpa.parse.shapes import PLACEHOLDER, Skeletons, skeletonise
from kpa.render.iptables import render_ruleset

FIXTURES = Path(__file__).parent / "fixtures" / "iptables"
ALL_DUMPS = sorted(FIXTURES.glob("*.save"))
EXAMPLE = Path(__file__).parent.parent / "kpa" / "data" / "example" / "rules.v4.save"

HEAD = ("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
        ":KUBE-MARK-MASQ - [0:0]\n:KUBE-SVC-AAAAAAAAAAAAAAAA - [0:0]\n:KUBE-SEP-BBBBBBBBBBBBBBBB - [0:0]\n"
        ":KUBE-SEP-CCCCCCCCCCCCCCCC - [0:0]\n")
GOOD = [
    '-A KUBE-SEP-BBBBBBBBBBBBBBBB -s 10.244.1.2/32 -m comment --comment "ns/a:http" -j KUBE-MARK-MASQ',
    "-A KUBE-SEP-BBBBBBBBBBBBBBBB -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.244.1.2:8080",
    "-A KUBE-SVC-AAAAAAAAAAAAAAAA -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j KUBE-SEP-BBBBBBBBBBBBBBBB",
]
# The first line of each skeleton above again, with one value changed to a valid one.
SAME_SHAPE = [
    '-A KUBE-SEP-CCCCCCCCCCCCCCCC -s 10.244.1.3/32 -m comment --comment "ns/b:dns" -j KUBE-MARK-MASQ',
    "-A KUBE-SEP-CCCCCCCCCCCCCCCC -p tcp -m tcp --dport 53 -j DNAT --to-destination 10.244.1.3:53",
    "-A KUBE-SVC-AAAAAAAAAAAAAAAA -d 10.96.0.2/32 -p tcp -m tcp --dport 65535 -j KUBE-SEP-CCCCCCCCCCCCCCCC",
]


def dump(*rules: str) -> str:
    return HEAD + "".join(r + "\n" for r in rules) + "COMMIT\n"


def rules_of(rs: Ruleset) -> list[Rule]:
    return [r for t in rs.tables for r in t.rules()]


def facts_before_use(rs: Ruleset) -> list[tuple[object, ...]]:
    """What check reads of each rule, read before anything builds a lazy rule's expressions."""
    return [(r.table, r.chain, r.index, r.text, r.counters, r.known, len(r.unknown_exprs()), list(r.chain_refs()))
            for r in rules_of(rs)]


def full_facts(rs: Ruleset) -> list[tuple[object, ...]]:
    return [(r.table, r.chain, r.index, r.text, str(r.location), r.comment, r.counters, r.known,
             [json.dumps(e.to_json(), sort_keys=True) for e in r.exprs], [type(e).__name__ for e in r.exprs],
             list(r.chain_refs())) for r in rules_of(rs)]


def assert_same(text: str, name: str = "t") -> None:
    fast = parse_iptables(text, name)
    slow = parse_iptables(text, name, shapes=False)
    assert not any(isinstance(r, LazyRule) for r in rules_of(slow))
    assert facts_before_use(fast) == facts_before_use(slow)
    assert chain_problems(fast) == find_problems(build_graph(slow))
    assert full_facts(fast) == full_facts(slow)
    assert render_ruleset(fast) == render_ruleset(slow)
    assert fast.warnings == slow.warnings
    assert [(t.family, t.name, t.source, list(t.chains)) for t in fast.tables] == \
           [(t.family, t.name, t.source, list(t.chains)) for t in slow.tables]


def error_of(text: str, shapes: bool) -> str:
    with pytest.raises(InputError) as err:
        parse_iptables(text, "dump.save", shapes=shapes)
    return str(err.value)


@pytest.mark.parametrize("path", [*ALL_DUMPS, EXAMPLE], ids=lambda p: p.name)
def test_every_fixture_parses_the_same_fast_and_in_full(path: Path) -> None:
    assert_same(path.read_text(), str(path))


def test_kube_proxy_dumps_take_the_fast_path() -> None:
    rules = rules_of(parse_iptables((FIXTURES / "kitchen-sink.nft.v4.save").read_text(), "t"))
    lazy = [r for r in rules if isinstance(r, LazyRule)]
    assert len(lazy) > len(rules) // 3


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_a_generated_cluster_parses_the_same_fast_and_in_full(family: str) -> None:
    cluster = random_cluster(seed=7, services=300, endpoints_per_service=4, families=(family,))  # type: ignore[arg-type]
    text = render_restore(cluster, ProxierOptions(node_name="node-0"), family)  # type: ignore[arg-type]
    assert_same(text)
    rules = rules_of(parse_iptables(text, "t"))
    lazy = sum(isinstance(r, LazyRule) for r in rules)
    assert len(rules) > 2000 and lazy > 0.9 * len(rules)


@pytest.mark.parametrize("child", ["works", "fails"])
def test_the_forked_skeleton_pass_gives_the_same_result(monkeypatch: pytest.MonkeyPatch, child: str) -> None:
    cluster = random_cluster(seed=3, services=100, endpoints_per_service=3)
    text = render_restore(cluster, ProxierOptions(node_name="node-0"), "ipv4")
    forks: list[int] = []
    real_fork, real_skeletonise, parent = os.fork, shapes.skeletonise, os.getpid()

    def fork() -> int:
        forks.append(1)
        return real_fork()

    def skeletonise(text: str, family: Family) -> str | None:
        if child == "fails" and os.getpid() != parent:
            raise RuntimeError("the child fails")
        return real_skeletonise(text, family)

    monkeypatch.setattr(shapes, "FORK_THRESHOLD", 0)
    monkeypatch.setattr(shapes, "_can_fork", lambda: True)  # even with one CPU
    monkeypatch.setattr(os, "fork", fork)
    monkeypatch.setattr(shapes, "skeletonise", skeletonise)
    assert_same(text)
    assert forks
    lazy = sum(isinstance(r, LazyRule) for r in rules_of(parse_iptables(text, "t")))
    assert lazy > 1000
    # A parse that fails before it needs the skeletons still reaps its child.
    with pytest.raises(InputError):
        parse_iptables(text.replace("COMMIT", "COMMIT\nnonsense", 1), "t")
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def test_skeletons_of_parts_add_up_to_the_skeletons_of_the_whole() -> None:
    text = render_restore(random_cluster(seed=5, services=40, endpoints_per_service=3), ProxierOptions(node_name="node-0"),
                          "ipv4")
    text = text.replace("\n-A KUBE-SERVICES", "\n  -A KUBE-SERVICES", 1) + "-A X\n-A  Y -j Z"

    def per_line(sk: Skeletons) -> list[str | None]:
        return [sk.keys[i] if i else None for i in sk.ids]

    def of(part: str) -> Skeletons:
        return Skeletons.of(skeletonise(part, Family.IPV4) or "")

    whole = per_line(of(text))
    assert len(whole) == len(text.splitlines())
    assert whole[-2:] == [None, " Y -j Z"] and whole.count(None) > 100
    assert sum(PLACEHOLDER in (k or "") for k in whole) > 0.8 * text.count("\n-A ")
    for start in (0, text.index("\n") + 1, text.index("\n-A ") + 1, len(text) // 2, len(text) - 10):
        # Cut after a line break, as SkeletonJob does (or at the very end).
        cut = text.find("\n", start) + 1 if start else 0
        cut = cut or len(text)
        first = of(text[:cut])
        first.extend(Skeletons.from_bytes(of(text[cut:]).to_bytes()))
        assert per_line(first) == whole
        assert len(set(first.keys)) == len(first.keys)


def test_lazy_rules_build_their_expressions_once_and_on_demand() -> None:
    rs = parse_iptables(dump(*GOOD, *SAME_SHAPE), "t")
    lazy = sorted((r for r in rules_of(rs) if isinstance(r, LazyRule)), key=lambda r: r.lineno)
    assert [r.text for r in lazy] == SAME_SHAPE
    r = lazy[0]
    assert str(r.location) == f"t:{HEAD.count(chr(10)) + 4}"
    assert isinstance(r, LazyRule)  # knowing where a rule is takes no parsing
    assert r.comment == "ns/b:dns"
    assert type(r) is Rule
    exprs = r.exprs
    assert r.exprs is exprs
    assert str(r.location) == f"t:{HEAD.count(chr(10)) + 4}"
    assert isinstance(lazy[2], LazyRule)
    assert lazy[2].exprs[-1].describe() == "-j KUBE-SEP-CCCCCCCCCCCCCCCC"
    assert type(lazy[2]) is Rule
    # Setting an attribute builds the rest first.
    assert isinstance(lazy[1], LazyRule)
    lazy[1].comment = "changed"
    assert type(lazy[1]) is Rule and lazy[1].comment == "changed" and len(lazy[1].exprs) == 3
    loc = Location("elsewhere", 1)
    lazy[0].location = loc
    assert lazy[0].location is loc
    fresh = next(r for r in rules_of(parse_iptables(dump(*GOOD, *SAME_SHAPE), "t")) if isinstance(r, LazyRule))
    fresh.location = loc
    assert isinstance(fresh, LazyRule) and fresh.location is loc
    assert fresh.exprs and type(fresh) is Rule and fresh.location is loc


@pytest.mark.parametrize("bad", [
    # Each is a SAME_SHAPE line with one value that is not valid (or not of the skeleton's kind).
    "-A KUBE-SVC-AAAAAAAAAAAAAAAA -d 10.96.0.2/32 -p tcp -m tcp --dport 70000 -j KUBE-SEP-CCCCCCCCCCCCCCCC",
    "-A KUBE-SVC-AAAAAAAAAAAAAAAA -d 10.96.0.2/33 -p tcp -m tcp --dport 443 -j KUBE-SEP-CCCCCCCCCCCCCCCC",
    "-A KUBE-SVC-AAAAAAAAAAAAAAAA -d 10.0.0.256 -p tcp -m tcp --dport 443 -j KUBE-SEP-CCCCCCCCCCCCCCCC",
    "-A KUBE-SVC-AAAAAAAAAAAAAAAA -d 10.96.0.2/32 -p tcp -m tcp --dport http -j KUBE-SEP-CCCCCCCCCCCCCCCC",
    "-A KUBE-SVC-AAAAAAAAAAAAAAAA -d 10.96.0.2/32 -p tcp -m tcp --dport 443 --nope -j KUBE-SEP-CCCCCCCCCCCCCCCC",
    "-A KUBE-SVC-AAAAAAAAAAAAAAAA -d 10.96.0.2/32 -p tcp -m tcp --dport 443 -j KUBE-SEP-CCCCCCCCCCCCCCCC --x",
    "-A KUBE-SEP-CCCCCCCCCCCCCCCC -p tcp -m tcp --dport 53 -j DNAT --to-destination 10.244.1.3:70000",
    "-A KUBE-SEP-CCCCCCCCCCCCCCCC -p tcp -m tcp --dport 53 -j DNAT --to-destination 10.244.1.300:53",
    "-A KUBE-SEP-CCCCCCCCCCCCCCCC -p tcp -m tcp --dport 53 -j DNAT --to-destination 10.244.1.3",
    "-A KUBE-SEP-DDDDDDDDDDDDDDDD -p tcp -m tcp --dport 53 -j DNAT --to-destination 10.244.1.3:53",
    "-A KUBE-SEP-CCCCCCCCCCCCCCCC -s 10.244.1.3/32 -m comment --comment ns/b:dns -j KUBE-MARK-MASQ",
    "-A KUBE-SEP-CCCCCCCCCCCCCCCC -s 10.244.1.3/32 -m comment --comment \"ns/b:dns\" -j KUBE-MARK-MASQ --x",
    "-A KUBE-SEP-CCCCCCCCCCCCCCCC -s 10.244.1.3/32 -m comment --comment \"unclosed -j KUBE-MARK-MASQ",
    "-A KUBE-SEP-CCCCCCCCCCCCCCCC -s 10.244.1.3/32 -m comment --comment \"a\" \"b\" -j KUBE-MARK-MASQ",
])
def test_a_bad_value_in_a_known_skeleton_fails_at_its_line_as_before(bad: str) -> None:
    text = dump(*GOOD, *SAME_SHAPE, bad)
    line = HEAD.count("\n") + len(GOOD) + len(SAME_SHAPE) + 1
    try:
        parse_iptables(text, "dump.save", shapes=False)
    except InputError as exc:
        assert str(exc) == error_of(text, shapes=True)
        assert str(exc).startswith(f"dump.save:{line}: ")
    else:
        # Valid after all (kpa keeps what it cannot model as unknown): then everything must agree.
        assert_same(text)


@pytest.mark.parametrize(("first", "second"), [
    # -j CHAIN with target options is a jump if CHAIN exists and an unknown target if not.
    ("-A KUBE-MARK-MASQ -j KUBE-SEP-BBBBBBBBBBBBBBBB --x", "-A KUBE-MARK-MASQ -j KUBE-SEP-EEEEEEEEEEEEEEEE --x"),
    ("-A KUBE-MARK-MASQ -g KUBE-SEP-BBBBBBBBBBBBBBBB", "-A KUBE-MARK-MASQ -g KUBE-SEP-EEEEEEEEEEEEEEEE"),
    ("-A KUBE-MARK-MASQ -j KUBE-SEP-BBBBBBBBBBBBBBBB", "-A KUBE-MARK-MASQ -j KUBE-SEP-EEEEEEEEEEEEEEEE"),
    ("-A KUBE-MARK-MASQ -m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-BBBBBBBBBBBBBBBB --mask "
     "255.255.255.255 --rsource -j KUBE-SEP-BBBBBBBBBBBBBBBB",
     "-A KUBE-MARK-MASQ -m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-CCCCCCCCCCCCCCCC --mask "
     "255.255.255.255 --rsource -j KUBE-SEP-CCCCCCCCCCCCCCCC"),
    ("-A KUBE-MARK-MASQ -p udp --sport 0 -j RETURN", "-A KUBE-MARK-MASQ -p udp --sport 65535 -j RETURN"),
    ("-A KUBE-MARK-MASQ -p sctp -m sctp ! --dport 1 -j RETURN", "-A KUBE-MARK-MASQ -p sctp -m sctp ! --dport 9 -j RETURN"),
    ("-A KUBE-MARK-MASQ -j SNAT --to-source 10.0.0.1:1", "-A KUBE-MARK-MASQ -j SNAT --to-source 10.0.0.2:2"),
    ("-A KUBE-MARK-MASQ -p tcp -m comment --comment \"x\" --dport 80 -j RETURN",
     "-A KUBE-MARK-MASQ -p tcp -m comment --comment \"y\" --dport 81 -j RETURN"),
])
def test_rules_sharing_a_skeleton_parse_as_in_full(first: str, second: str) -> None:
    text = dump(first, second)
    try:
        parse_iptables(text, "t", shapes=False)
    except InputError:
        assert error_of(text, shapes=True) == error_of(text, shapes=False)
    else:
        assert_same(text)


def test_the_bad_values_named_in_the_issue_fail_with_their_own_messages() -> None:
    line = HEAD.count("\n") + len(GOOD) + len(SAME_SHAPE) + 1
    for bad, message in [
        (SAME_SHAPE[2].replace("--dport 65535", "--dport 70000"), "expected a port number 0-65535, found '70000'"),
        (SAME_SHAPE[2].replace("10.96.0.2/32", "10.96.0.2/33"), "expected an address or CIDR, found '10.96.0.2/33'"),
        (SAME_SHAPE[2].replace("10.96.0.2/32", "10.0.0.256"), "expected an address or CIDR, found '10.0.0.256'"),
        (SAME_SHAPE[1].replace("-p tcp -m tcp --dport", "--dport"), "expected -m MODULE before option --dport"),
        (SAME_SHAPE[1].replace("--dport 53", "--dport 53 -z"), "expected an option, found '-z'"),
        (SAME_SHAPE[1].replace("KUBE-SEP-CCCCCCCCCCCCCCCC", "KUBE-SEP-DDDDDDDDDDDDDDDD"),
         "expected a chain declared in table 'nat', found 'KUBE-SEP-DDDDDDDDDDDDDDDD'"),
    ]:
        text = dump(*GOOD, *SAME_SHAPE, bad)
        full = error_of(text, shapes=False)
        assert error_of(text, shapes=True) == full
        assert full.startswith(f"dump.save:{line}: ") and message in full, full


@pytest.mark.parametrize(("old", "new"), [
    ("fd00::2/128", "fd00::1/129"), ("fd00::2/128", "fd00:::2"), ("fd00::2/128", "10.0.0.1"),
    ("fd00::2/128", "fd00::2:80"), ("[fd00::2]:80", "[fd00::2]:70000"), ("[fd00::2]:80", "[fd00::g]:80"),
    ("[fd00::2]:80", "fd00::2"), ("[fd00::2]:80", "10.0.0.2:80"),
])
def test_a_bad_ipv6_value_in_a_known_skeleton_fails_at_its_line_as_before(old: str, new: str) -> None:
    rules = ["-A KUBE-SEP-BBBBBBBBBBBBBBBB -s fd00::1/128 -j DNAT --to-destination [fd00::1]:80",
             "-A KUBE-SEP-CCCCCCCCCCCCCCCC -s fd00::2/128 -j DNAT --to-destination [fd00::2]:80"]
    text = "# Generated by ip6tables-save v1.8.9\n" + dump(*rules, rules[1].replace(old, new))
    assert_same(text.replace(rules[1].replace(old, new), rules[1]))
    try:
        parse_iptables(text, "dump.save", shapes=False)
    except InputError as exc:
        assert str(exc).startswith(f"dump.save:{HEAD.count(chr(10)) + 4}: ")
        assert error_of(text, shapes=True) == str(exc)
    else:
        assert_same(text)


def test_the_first_error_in_file_order_wins() -> None:
    bad_port = SAME_SHAPE[2].replace("--dport 65535", "--dport 70000")
    undeclared = SAME_SHAPE[1].replace("KUBE-SEP-CCCCCCCCCCCCCCCC", "KUBE-SEP-DDDDDDDDDDDDDDDD")
    for text in (dump(*GOOD, undeclared, bad_port), dump(*GOOD, bad_port, undeclared),
                 dump(*GOOD, bad_port) + "garbage\n", HEAD + GOOD[0] + "\n" + bad_port + "\nnonsense\n"):
        assert error_of(text, shapes=True) == error_of(text, shapes=False)


@pytest.mark.parametrize("variant", [
    "crlf", "tabs", "leading-space", "trailing-space", "double-space", "quoted-chain", "append", "counters",
    "placeholder-in-text", "option-as-chain",
])
def test_unusual_spellings_parse_the_same(variant: str) -> None:
    text = dump(*GOOD, *SAME_SHAPE)
    if variant == "crlf":
        text = text.replace("\n", "\r\n")
    elif variant == "tabs":
        text = text.replace(" -s ", "\t-s\t")
    elif variant == "leading-space":
        text = text.replace("\n-A KUBE-SEP-C", "\n  -A KUBE-SEP-C")
    elif variant == "trailing-space":
        text = text.replace("-j KUBE-SEP-CCCCCCCCCCCCCCCC\n", "-j KUBE-SEP-CCCCCCCCCCCCCCCC  \n")
    elif variant == "double-space":
        text = text.replace("-A KUBE-SEP-CCCCCCCCCCCCCCCC ", "-A KUBE-SEP-CCCCCCCCCCCCCCCC  ")
    elif variant == "quoted-chain":
        text = text.replace(":KUBE-MARK-MASQ - [0:0]\n", ':KUBE-MARK-MASQ - [0:0]\n:A"B - [0:0]\n')
        text = text.replace("COMMIT\n", '-A A"B -s 10.244.1.4/32 -m comment --comment "x" -j KUBE-MARK-MASQ\nCOMMIT\n')
    elif variant == "append":
        text = text.replace("-A KUBE-SEP-C", "--append KUBE-SEP-C")
    elif variant == "counters":
        text = text.replace("-A KUBE-SEP-C", "[3:4] -A KUBE-SEP-C")
    elif variant == "placeholder-in-text":
        text = text.replace('"ns/b:dns"', f'"ns/b{PLACEHOLDER}dns"')
    elif variant == "option-as-chain":
        text = text.replace(":KUBE-MARK-MASQ - [0:0]\n", ":KUBE-MARK-MASQ - [0:0]\n:-s - [0:0]\n")
        text = text.replace("COMMIT\n", "-A -s 10.0.0.1 -j KUBE-MARK-MASQ\nCOMMIT\n")
    try:
        parse_iptables(text, "t", shapes=False)
    except InputError:
        assert error_of(text, shapes=True) == error_of(text, shapes=False)
    else:
        assert_same(text)


def test_skeletons_replace_only_strictly_valid_values() -> None:
    line = ('-A KUBE-SVC-AAAAAAAAAAAAAAAA -d 10.96.0.1/32 -p tcp -m comment --comment "a b" -m tcp --dport 443 '
            '-j KUBE-SEP-BBBBBBBBBBBBBBBB\n')
    skel = skeletonise(line, Family.IPV4)
    assert skel == (f"-A KUBE-SVC-AAAAAAAAAAAAAAAA -d {PLACEHOLDER} -p tcp -m comment --comment {PLACEHOLDER} "
                    f"-m tcp --dport {PLACEHOLDER} -j {PLACEHOLDER}\n")
    for value in ("10.96.0.1/33", "10.96.0.256", "010.96.0.1", "10.96.0.1/032", "10.96.0.1/", "::1"):
        assert f"-d {value} " in (skeletonise(line.replace("10.96.0.1/32", value), Family.IPV4) or "")
    for port in ("65536", "70000", "0443", "http", "1:2"):
        assert f"--dport {port} " in (skeletonise(line.replace("--dport 443", f"--dport {port}"), Family.IPV4) or "")
    for comment in ('"a\\"b"', "'a b'", '"a\tb"', "plain"):
        assert comment in (skeletonise(line.replace('"a b"', comment), Family.IPV4) or "")
    assert "-d 10.96.0.1/32 " in (skeletonise(line, Family.IPV6) or "")
    v6 = line.replace("10.96.0.1/32", "fd00:10:96::1/128")
    assert f"-d {PLACEHOLDER} " in (skeletonise(v6, Family.IPV6) or "")
    assert "-d fd00:10:96::1/128 " in (skeletonise(v6, Family.IPV4) or "")
    for value in ("fd00::1/129", "fd00:::1", "1:2:3:4:5:6:7:8:9", "1::2::3", "::ffff:1.2.3.4", "fe80::1%eth0"):
        assert f"-d {value} " in (skeletonise(v6.replace("fd00:10:96::1/128", value), Family.IPV6) or "")
    assert skeletonise(line, Family.INET) is None
    assert skeletonise(line.replace("a b", f"a{PLACEHOLDER}b"), Family.IPV4) is None


def graph_dump() -> str:
    return ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            ":A - [0:0]\n:B - [0:0]\n:C - [0:0]\n:UNUSED - [0:0]\n:EMPTY - [0:0]\n"
            "-A INPUT -j A\n-A INPUT -j MISSING1\n-A A -j B\n-A B -g C\n-A C -j MISSING2\n-A A -j MISSING1\n"
            "-A UNUSED -j ACCEPT\n-A C -j MISSING1\nCOMMIT\n")


@pytest.mark.parametrize("loop", ["none", "self", "long"])
def test_check_facts_without_networkx_match_the_graph(loop: str) -> None:
    text = graph_dump()
    if loop == "self":
        text = text.replace("-A UNUSED -j ACCEPT\n", "-A UNUSED -j UNUSED\n")
    elif loop == "long":
        text = text.replace("-A C -j MISSING2\n", "-A C -j MISSING2\n-A C -j A\n")
    rs = parse_iptables(text, "g")
    expected = find_problems(build_graph(rs))
    got = chain_problems(rs)
    assert got == expected
    assert dangling_jumps(rs) == got.dangling
    assert [n[2] for n, _ in got.dangling] == ["MISSING1", "MISSING2"]
    assert got.dangling[0][1] == (["g:11", "g:15", "g:17"] if loop != "long" else ["g:11", "g:16", "g:18"])
    assert bool(got.cycles) == (loop != "none")


@pytest.mark.parametrize("lazy", [True, False])
def test_check_facts_for_tables_given_twice_match_the_graph(lazy: bool) -> None:
    # Tables of one family and name share nodes in the graph: a chain missing from one
    # may be defined by the other, and their jumps merge.
    first = graph_dump()
    second = (graph_dump().replace(":EMPTY - [0:0]\n", ":EMPTY - [0:0]\n:MISSING2 - [0:0]\n")
              .replace("-A UNUSED -j ACCEPT\n", "-A UNUSED -j MISSING3\n-A B -j MISSING1\n"))
    nat = dump(*GOOD, "-A KUBE-SEP-CCCCCCCCCCCCCCCC -j KUBE-SEP-DDDDDDDDDDDDDDDD")
    rs = Ruleset()
    for i, text in enumerate((first, nat, second, nat)):
        rs.merge(parse_iptables(text, f"f{i}", shapes=lazy))
    got = chain_problems(rs)
    assert got == find_problems(build_graph(rs))
    assert dangling_jumps(rs) == got.dangling
    assert [n[2] for n, _ in got.dangling] == ["MISSING1", "KUBE-SEP-DDDDDDDDDDDDDDDD", "MISSING3"]


def test_deep_acyclic_and_cyclic_chains() -> None:
    # Deeper than the peeling rounds: the depth-first fallback decides.
    names = [f"C{i}" for i in range(40)]
    head = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
    decls = "".join(f":{n} - [0:0]\n" for n in names)
    jumps = "-A INPUT -j C0\n" + "".join(f"-A {a} -j {b}\n" for a, b in pairwise(names))
    for extra, looped in (("", False), ("-A C39 -j C20\n", True)):
        rs = parse_iptables(head + decls + jumps + extra + "COMMIT\n", "d")
        got = chain_problems(rs)
        assert got == find_problems(build_graph(rs))
        assert bool(got.cycles) == looped


def test_check_output_is_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "g.save"
    path.write_text(graph_dump().replace("-A UNUSED -j ACCEPT\n", "-A UNUSED -j UNUSED\n-A UNUSED -j CLUSTERIP\n"))
    out = subprocess.run([sys.executable, "-m", "kpa", "check", "-r", str(path)], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 1
    assert out.stdout.splitlines() == [
        "ip   filter         8 chains        9 rules    1 unknown   2 dangling jumps  [iptables]",
        f"  unknown: {path}:17: -j CLUSTERIP (target 'CLUSTERIP' is not modelled)",
        f"  dangling jump to MISSING1 (from {path}:11, {path}:15, {path}:18)",
        f"  dangling jump to MISSING2 (from {path}:14)",
        "loop: filter/UNUSED",
    ]
