"""Skeletons of the undecoded `nft -j` text (kpa.parse.nft_json_shapes) change nothing.

Every input is read three ways: object at a time with every rule lowered up
front (`shapes=False`, the reference), object at a time with rule shapes of
the decoded statements (`text_shapes=False`), and from the text's skeletons
(the default, which decodes only the objects it has no pattern for). All three
must give the same `kpa check` view before anything is built, the same rules
once built, and the same check view after; or the same error, message and
line. Inputs: every nft JSON fixture, read with patterns made from the first
and from the third object of a skeleton, with and without the forked child;
random one-value mutations of the decoded objects and of the text itself (bad
JSON, wrong types, bad values, escapes, duplicate keys, values that look like
the markers); and (kernel) random kube-proxy clusters listed by the real
`nft -j list ruleset`. Two deliberately broken shortcuts must be caught.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_nft_shapes import (  # type: ignore[import-not-found]
    JSON_FILES,
    _json_mutations,
    built_view,
    check_view,
)

from kpa.errors import InputError
from kpa.netfilter.model import LazyNftRule
from kpa.parse import nft_json_shapes
from kpa.parse.nft_json import _Reader, parse_nft_json

KUBE_PROXY = [p for p in JSON_FILES if "kube-proxy" in str(p)]
MODES: dict[str, dict[str, bool]] = {"text": {}, "decoded": {"text_shapes": False}, "eager": {"shapes": False}}


def read(text: str, **mode: bool) -> tuple[Any, ...]:
    try:
        rs = parse_nft_json(text, "rules.json", **mode)
    except InputError as exc:
        return ("error", str(exc))
    before = check_view(rs)
    return ("ok", before, built_view(rs), check_view(rs))


def assert_same(text: str) -> tuple[Any, ...]:
    got = {name: read(text, **mode) for name, mode in MODES.items()}
    assert got["text"] == got["eager"], (got["text"][:2] if got["text"][0] == "error" else got["eager"][:2])
    assert got["decoded"] == got["eager"]
    if got["eager"][0] == "ok":
        assert got["eager"][1] == got["eager"][3]
    return got["eager"]


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many objects were decoded and read as objects (the rest were read from their skeletons)."""
    calls = [0]
    handle = _Reader.handle

    def counting(self: _Reader, line: int, obj: Any) -> None:
        calls[0] += 1
        handle(self, line, obj)

    monkeypatch.setattr(_Reader, "handle", counting)
    yield calls


@pytest.fixture(params=[1, 3], ids=["pattern-at-once", "pattern-at-third"])
def after(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(nft_json_shapes, "TEMPLATE_AFTER", request.param)
    return int(request.param)


def test_there_are_json_fixtures() -> None:
    assert len(KUBE_PROXY) > 10


@pytest.mark.parametrize("path", JSON_FILES, ids=lambda p: p.name)
def test_every_json_fixture_reads_the_same(path: Path, after: int) -> None:
    assert assert_same(path.read_text())[0] == "ok"


def test_most_objects_are_read_from_their_skeletons(counted: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nft_json_shapes, "TEMPLATE_AFTER", 1)
    text = (KUBE_PROXY[0].parent / "kitchen-sink.v4.json").read_text()
    objects = len(json.loads(text)["nftables"])
    rs = parse_nft_json(text, "f")
    rules = [r for t in rs.tables for r in t.rules()]
    assert counted[0] < objects // 3
    assert sum(isinstance(r, LazyNftRule) for r in rules) > len(rules) * 0.6


@pytest.mark.parametrize("path", KUBE_PROXY, ids=lambda p: p.name)
def test_rules_built_before_their_text_is_read_have_the_eager_text(path: Path) -> None:
    """A rule read from its template works its text and handle out when first read (LazyJsonRule): read
    after the rule is built, never read before, they are what the eager read gives (assert_same reads
    them before building)."""
    text = path.read_text()
    lazy = [r for t in parse_nft_json(text, "rules.json").tables for r in t.rules()]
    eager = [r for t in parse_nft_json(text, "rules.json", shapes=False).tables for r in t.rules()]
    assert any(isinstance(r, nft_json_shapes.LazyJsonRule) for r in lazy)
    for r in lazy:
        assert r.exprs is not None  # built, its text unread
    assert [(type(r), r.text, r.handle, str(r.location)) for r in lazy] == \
        [(type(r), r.text, r.handle, str(r.location)) for r in eager]


def test_a_run_of_chains_is_read_by_one_template(monkeypatch: pytest.MonkeyPatch) -> None:
    """_ChainTemplate.take reads the chains its pattern matches one after another, without the guesses
    between two: the runs are long, and read the same."""
    monkeypatch.setattr(nft_json_shapes, "TEMPLATE_AFTER", 1)
    calls = [0]
    take = nft_json_shapes._ChainTemplate.take

    def counting(self: Any, *args: Any) -> int:
        calls[0] += 1
        return take(self, *args)

    monkeypatch.setattr(nft_json_shapes._ChainTemplate, "take", counting)
    text = (KUBE_PROXY[0].parent / "kitchen-sink.v4.json").read_text()
    chains = sum("chain" in o for o in json.loads(text)["nftables"])
    assert_same(text)
    assert 0 < calls[0] * 5 < chains


@pytest.mark.parametrize("followers", [0, 1, 64])
def test_guessed_templates_give_the_same_reading(followers: int, monkeypatch: pytest.MonkeyPatch,
                                                counted: list[int]) -> None:
    """The template of an object is guessed from the objects before it (FOLLOWERS of them after each
    skeleton), else found from the object's own skeleton: none (every object keyed, but the chains a
    chain template reads in a run), one, or many guesses (most of them wrong) read every kube-proxy
    fixture the same."""
    monkeypatch.setattr(nft_json_shapes, "FOLLOWERS", followers)
    monkeypatch.setattr(nft_json_shapes, "TEMPLATE_AFTER", 1)
    keyed = [0]
    object_key = nft_json_shapes.object_key

    def counting(*args: Any) -> str:
        keyed[0] += 1
        return object_key(*args)

    monkeypatch.setattr(nft_json_shapes, "object_key", counting)
    for path in KUBE_PROXY:
        assert_same(path.read_text())
    text = (KUBE_PROXY[0].parent / "kitchen-sink.v4.json").read_text()
    objects = len(json.loads(text)["nftables"])
    chains = sum("chain" in o for o in json.loads(text)["nftables"])
    counted[0] = keyed[0] = 0
    parse_nft_json(text, "f")
    assert counted[0] < 120
    if followers == 0:
        # Every object keyed but the chains a chain template reads in a run after the first.
        assert objects - chains <= keyed[0] < objects
    else:
        assert keyed[0] < objects // 2


def test_a_guess_taken_without_its_match_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A guessed template must match the object at its place: one that takes the next object its pattern
    finds further on instead (a broken guess) gives a different reading, which assert_same notices."""
    make = nft_json_shapes._template

    class Loose:
        def __init__(self, fast: re.Pattern[str]) -> None:
            self.fast = fast

        def match(self, text: str, pos: int, stop: int) -> re.Match[str] | None:
            return self.fast.match(text, pos, stop) or self.fast.search(text, pos, stop)

    def loose(*args: Any) -> Any:
        t = make(*args)
        if t is not None:
            t.fast = Loose(t.fast)
        return t

    monkeypatch.setattr(nft_json_shapes, "TEMPLATE_AFTER", 1)
    monkeypatch.setattr(nft_json_shapes, "_template", loose)
    with pytest.raises(AssertionError):
        for path in KUBE_PROXY:
            assert_same(path.read_text())


# -- mutations of the decoded objects ------------------------------------------------------

@pytest.mark.parametrize("path", KUBE_PROXY, ids=lambda p: p.name)
def test_one_value_mutations_read_the_same(path: Path, after: int) -> None:
    rng = random.Random(path.name + str(after))
    for text in _json_mutations(path.read_text(), rng, 12):
        assert_same(text)


# -- mutations of the text ---------------------------------------------------------------

_STRING = re.compile(r'"(chain|name|target|comment|right|addr|set|table|family)": "((?:[^"\\]|\\.)*)"')
_NUMBER = re.compile(r'"(handle|port|right|prio)": (-?[0-9][0-9.eE+-]*)')
# Raw JSON text put in place of a string's characters, or of a number.
_ODD_STRINGS = ["10.0.0.256", "01.2.3.4", "10.0.0.1 ", "1.2.3", "@", "", "a\\u0062c", "a\\\"b", "x{y", "x}y", "a,b",
                "\u00e9t\u00e9", "\\n", "kpa-shape-6-0-end", "kpa-shape-chain-0-end", "127.99.0.7", "127.98.1.7",
                "@kpa-shape-set-0-end", "\x01", "a\"b", "a\\", "tcp", "mark-for-masquerade", "@cluster-ips",
                "10.0.0.1", "255.255.255.255", "nowhere", "-", "a b", "}}, {\\\"rule\\\": {"]
_ODD_NUMBERS = ["0", "65535", "65536", "-1", "007", "1e3", "80.0", '"80"', "true", "null", "[]", "{}",
                "123456789012345678901234567890", "7700000000", "50000", "51001", "1"]


def _text_mutations(text: str, rng: random.Random, n: int) -> Iterator[str]:
    strings = list(_STRING.finditer(text))
    numbers = list(_NUMBER.finditer(text))
    names = sorted({m.group(2) for m in strings if m.group(1) in ("name", "target")})
    for _ in range(n):
        kind = rng.random()
        if kind < 0.45 and strings:
            m = strings[rng.randrange(len(strings) // 3, len(strings))]
            value = rng.choice(_ODD_STRINGS + names[:30])
            if rng.random() < 0.3 and m.group(2) and "\\" not in m.group(2):
                # The same characters, one of them spelled as an escape.
                k = rng.randrange(len(m.group(2)))
                value = m.group(2)[:k] + f"\\u{ord(m.group(2)[k]):04x}" + m.group(2)[k + 1:]
            yield text[:m.start(2)] + value + text[m.end(2):]
        elif kind < 0.75 and numbers:
            m = numbers[rng.randrange(len(numbers) // 3, len(numbers))]
            yield text[:m.start(2)] + rng.choice(_ODD_NUMBERS) + text[m.end(2):]
        elif kind < 0.82 and numbers:
            # A key twice in one object: the decoder keeps the last.
            m = numbers[rng.randrange(len(numbers) // 3, len(numbers))]
            yield text[:m.start()] + m.group(0) + ", " + m.group(1).join(['"', '": 9']) + text[m.end():]
        else:
            pos = rng.randrange(len(text) // 3, len(text))
            edit = rng.random()
            if edit < 0.3:
                yield text[:pos] + text[pos + 1:]
            elif edit < 0.6:
                yield text[:pos] + rng.choice('{}[],":\n \x01\\') + text[pos:]
            elif edit < 0.8:
                yield text[:pos]
            else:
                yield text[:pos] + text[pos:].replace(", ", ",  ", 1)


@pytest.mark.parametrize("path", KUBE_PROXY, ids=lambda p: p.name)
def test_text_mutations_read_the_same(path: Path, after: int) -> None:
    rng = random.Random("text" + path.name + str(after))
    errors = 0
    for text in _text_mutations(path.read_text(), rng, 20):
        errors += assert_same(text)[0] == "error"
    assert errors > 0


def test_crafted_objects_read_the_same(after: int) -> None:
    head = [{"table": {"family": "ip", "name": "t", "handle": 1}},
            {"set": {"family": "ip", "name": "s", "table": "t", "type": "ipv4_addr", "handle": 2,
                     "elem": ["10.0.0.1"]}}]
    chains = [{"chain": {"family": "ip", "table": "t", "name": n, "handle": 3 + k}}
              for k, n in enumerate(["a", "b", "c", "d{e", "kpa-shape-11-0-end"])]

    def rule(chain: str, handle: int, expr: list[Any], **extra: Any) -> dict[str, Any]:
        return {"rule": {"family": "ip", "table": "t", "chain": chain, "handle": handle, **extra, "expr": expr}}

    def saddr(addr: str) -> dict[str, Any]:
        return {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": addr}}

    def jump(target: Any) -> dict[str, Any]:
        return {"jump": {"target": target}}

    groups = [
        [rule("c", 10 + k, [saddr(f"10.0.0.{k}"), jump("a")]) for k in range(4)]
        + [rule("c", 20, [saddr("10.0.0.256"), jump("a")]), rule("c", 21, [saddr("10.0.0.9"), jump("nowhere")]),
           rule("nowhere", 22, [saddr("10.0.0.9"), jump("a")])],
        [rule("c", 10 + k, [saddr("@s"), jump("b")], comment=f"c{k}") for k in range(4)]
        + [rule("c", 30, [saddr("@zz"), jump("b")], comment="x"), rule("c", 31, [saddr("@s"), jump("b")], comment=5)],
        [rule("c", 10 + k, [{"dnat": {"addr": f"10.0.0.{k}", "port": 80 + k}}]) for k in range(4)]
        + [rule("c", 40, [{"dnat": {"addr": "10.0.0.1", "port": 65536}}])],
        [rule("c", 10 + k, [{"set": {"op": "update", "elem": {"payload": {"protocol": "ip", "field": "saddr"}},
                                     "set": s}}]) for k, s in enumerate(["@s", "@s", "@s", "@zz", "@s"])],
        [rule(c, 10 + k, [saddr("127.99.0.7" if k == 3 else "10.1.1.1"), jump(t)])
         for k, (c, t) in enumerate([("c", "a"), ("d{e", "a"), ("c", "d{e"), ("c", "a"), ("c", "kpa-shape-chain-1-end"),
                                     ("c", True), ("kpa-shape-11-0-end", "a")])],
        [rule("c", 10 + k, [{"match": {"op": "==", "left": {"payload": {"protocol": p, "field": "dport"}},
                                       "right": port}}, jump("a")])
         for k, (p, port) in enumerate([("tcp", 80), ("tcp", 81), ("th", 82), ("udp", 53), ("tcp", 50000),
                                        ("dccp", 1), ("tcp", 65535)])],
        [rule("c", 10 + k, [{"vmap": {"key": {"numgen": {"mode": "random", "mod": 2, "offset": 0}},
                                      "data": {"set": [[0, {"goto": {"target": x}}], [1, {"goto": {"target": y}}]]}}}])
         for k, (x, y) in enumerate([("a", "b"), ("b", "a"), ("a", "a"), ("a", "zz"), ("b", "c")])],
        [rule("c", 10 + k, [saddr("10.0.0.1"), {"jump": {"rules": [[{"accept": None}]]}}]) for k in range(4)],
        # Statements that read like the start of a top-level object: one object spans two pieces.
        [rule("c", 10 + k, [saddr("10.0.0.1"), *([{"rule": {"family": "ip", "x": 1}}] if k == 2 else []), jump("a")])
         for k in range(5)]
        + [rule("c", 20, [{"counter": {"packets": 0, "bytes": 0}}, {"chain": {"family": "ip"}}, saddr("10.0.0.2")])],
    ]
    for rules in groups:
        for k in range(len(rules)):
            doc = {"nftables": [*head, *chains, *rules[k:], *rules[:k]]}
            assert_same(json.dumps(doc))
    # Chains and sets whose names and handles vary, and oddly formed ones.
    objs = [*head, *chains, *({"chain": {"family": "ip", "table": "t", "name": f"x{k}", "handle": 100 + k}}
                              for k in range(5)),
            {"chain": {"family": "ip", "table": "t", "name": "x0", "handle": 200}},
            {"chain": {"family": "ip", "table": "t", "name": "x9", "handle": "h"}},
            *({"set": {"family": "ip", "name": f"s{k}", "table": "t", "type": "ipv4_addr", "handle": 300 + k,
                       "flags": ["timeout"], "timeout": 60}} for k in range(5)),
            {"set": {"family": "ip", "name": "s9", "table": "t", "type": "ipv5_addr", "handle": 9}}]
    for k in range(0, len(objs), 3):
        assert_same(json.dumps({"nftables": objs[k:] + objs[:k]}))


def _escaped(value: str, k: int) -> str:
    return value[:k] + f"\\u{ord(value[k]):04x}" + value[k + 1:]


# A value each skeleton pass takes, and what is put in place of a few such values (past the third).
_TARGETED = [
    (re.compile(r'"field": "[sd]addr"\}\}, "right": "([0-9.]+)"'), lambda v: ["10.0.0.256", "010.0.0.1", v + "0"]),
    (re.compile(r'"(?:target|chain)": "([^"\\]+)"'), lambda v: [_escaped(v, 0), _escaped(v, len(v) - 1), v + "{"]),
    (re.compile(r'"name": "([^"\\]+)"'), lambda v: [_escaped(v, 0), v + "}"]),
    (re.compile(r'"(?:port|handle)": ([0-9]+)'), lambda v: ["65536", "0" + v, v + ".0", f'"{v}"']),
]


def _targeted_mutations(text: str) -> Iterator[str]:
    for pattern, odd in _TARGETED:
        found = list(pattern.finditer(text))[3:]
        for m in found[:: max(1, len(found) // 5)]:
            for value in odd(m.group(1)):
                yield text[:m.start(1)] + value + text[m.end(1):]


@pytest.mark.parametrize("path", KUBE_PROXY, ids=lambda p: p.name)
def test_targeted_mutations_read_the_same(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nft_json_shapes, "TEMPLATE_AFTER", 1)
    texts = list(_targeted_mutations(path.read_text()))
    assert len(texts) > 20
    for text in texts:
        assert_same(text)


def test_broken_shortcuts_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above notice a fast path that takes values it must not: here the skeleton passes and
    the patterns of a kind of value are both made loose (either alone is caught by the other)."""
    monkeypatch.setattr(nft_json_shapes, "TEMPLATE_AFTER", 1)
    texts = [t for p in KUBE_PROXY[::3] for t in _targeted_mutations(p.read_text())]
    escaped = r'(?:[^"\\]|\\.)*'
    for kind, loose in ((nft_json_shapes.ADDR, '[^"]*'), (nft_json_shapes.TARGET, escaped),
                        (nft_json_shapes.NAME, escaped)):
        with monkeypatch.context() as m:
            m.setitem(nft_json_shapes._CLASS, kind, loose)
            behind = nft_json_shapes._IP_ADDR if kind == nft_json_shapes.ADDR else ""
            passes = [nft_json_shapes._pass(('"' if literal[0] != "a" else "") + literal, loose, '"', kind, behind)
                      if repl == f'{literal}{kind}"' else (literal, pattern, repl)
                      for literal, pattern, repl in nft_json_shapes._PASSES]
            assert passes != nft_json_shapes._PASSES
            m.setattr(nft_json_shapes, "_PASSES", passes)
            missed = 0
            for text in texts:
                try:
                    assert_same(text)
                except Exception:  # a different answer, or an error (or crash) only once built
                    missed += 1
                    break
            assert missed > 0, repr(kind)


def _sets(text: str) -> tuple[Any, ...]:
    try:
        rs = parse_nft_json(text, "rules.json")
    except InputError as exc:
        return ("error", str(exc))
    return ("ok", [(t.name, name, ns.name, ns.key_types, ns.elements, ns.values, sorted(ns.flags), str(ns.location),
                    ns.dynamic, ns.comments, [type(v).__name__ for v in ns.values or []])
                   for t in rs.tables for name, ns in t.sets.items()], sorted(rs.warnings), check_view(rs))


def _random_set(rng: random.Random) -> dict[str, Any]:
    """A set or verdict map object with elements of the forms nft lists and near misses of them."""
    types = rng.choice([["ipv4_addr"], ["ipv4_addr", "inet_proto", "inet_service"], ["inet_service"], ["ifname"],
                        ["ipv4_addr", "inet_service"], ["mark"]])
    values: dict[str, list[Any]] = {
        "ipv4_addr": ["10.0.0.1", "10.0.0.2", "10.0.0.0/8"], "inet_proto": ["tcp", "udp", "6", 17],
        "inet_service": ["53", "80", "http", "1-9", 53, 8080], "ifname": ["eth0", "lo"], "mark": ["0x1", "7", 7]}
    odd: dict[str, list[Any]] = {
        "ipv4_addr": ["10.0.0.300", "010.0.0.1", "1.2.3.9-1.2.3.4", 167772161], "inet_proto": ["nope", 300],
        "inet_service": ["70000", 70000, True, -1, 80.0], "ifname": ["", 3], "mark": ["-1", False]}
    is_map = rng.random() < 0.6

    def key() -> Any:
        parts: list[Any] = [rng.choice(odd[t] if rng.random() < 0.02 else values[t]) for t in types]
        if rng.random() < 0.03:
            parts[rng.randrange(len(parts))] = rng.choice([5, None, ["x"], {"prefix": {"addr": "10.0.0.0", "len": 8}}])
        if rng.random() < 0.02:
            parts = parts[:-1] or ["x", "y"]
        k: Any = parts[0] if len(parts) == 1 and rng.random() < 0.8 else {"concat": parts}
        form = rng.random()
        if form < 0.03:
            k = "*"
        elif form < 0.08:
            k = {"elem": {"val": k, "comment": "c"}}
        elif form < 0.09:
            k = {"concat": parts, "x": 1}
        return k

    elems: list[Any] = []
    for _ in range(rng.randrange(0, 7)):
        if not is_map:
            elems.append(key())
            continue
        value = rng.choice([{"goto": {"target": "c"}}, {"jump": {"target": "b"}}, {"accept": None}, {"drop": None}])
        if rng.random() < 0.05:
            value = rng.choice([{"goto": {"target": 5}}, {"goto": "c"}, {"jump": {"target": "c", "x": 1}}, "accept",
                                {"goto": {}}, {"goto": {"target": "c"}, "x": 1}, {"return": None}, {"nope": None},
                                {"nope": {"target": "c"}}, {"accept": {"target": "c"}}])
        elem: Any = [key(), value]
        if rng.random() < 0.04:
            elem = rng.choice([[key()], key(), [key(), value, value]])
        elems.append(elem)
    body: dict[str, Any] = {"family": "ip", "name": "s", "table": "t", "handle": 3,
                            "type": " . ".join(types) if rng.random() < 0.5 or len(types) == 1 else types,
                            "elem": elems}
    if is_map:
        body["map"] = "verdict"
    if rng.random() < 0.3:
        body["flags"] = rng.choice([["interval"], ["dynamic", "timeout"], "constant"])
    return {"map" if is_map else "set": body}


def test_sets_of_plain_forms_read_as_the_general_branch_reads_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Builder.set reads plain elements (a string key; a verdict map's string or concatenated key and a jump
    or goto) without its general branch: the same sets, check view and errors as with every element through
    it (PLAIN_SETS=False), for the fixtures and random sets and maps with odd elements."""
    from kpa.parse import nft_common

    rng = random.Random(73)
    texts = [p.read_text() for p in JSON_FILES]
    head = [{"table": {"family": "ip", "name": "t", "handle": 1}}]
    chains = [{"chain": {"family": "ip", "table": "t", "name": n, "handle": 9}} for n in ("a", "b", "c")]
    rules = [{"rule": {"family": "ip", "table": "t", "chain": "a", "handle": 10, "expr": [
        {"vmap": {"key": {"payload": {"protocol": "ip", "field": "daddr"}}, "data": "@s"}}]}}]
    for _ in range(1500):
        texts.append(json.dumps({"nftables": [*head, _random_set(rng), *chains, *rules]}))
    outcomes = {"ok": 0, "error": 0}
    for text in texts:
        got = _sets(text)
        with monkeypatch.context() as m:
            m.setattr(nft_common, "PLAIN_SETS", False)
            assert _sets(text) == got
        outcomes[got[0]] += 1
    assert outcomes["ok"] > 400 and outcomes["error"] > 200, outcomes


# -- real nft listings of random clusters (kernel) --------------------------------------

@pytest.mark.kernel
def test_captured_random_clusters_read_the_same(counted: list[int]) -> None:
    from kpa.gen.cluster import random_cluster
    from kpa.gen.nft_capture import capture_nft
    from kpa.gen.nftables import render_nft
    from kpa.gen.options import ProxierOptions

    rng = random.Random(11)
    cluster = random_cluster(seed=5, services=120, endpoints_per_service=4)
    listed = capture_nft(render_nft(cluster, ProxierOptions(node_name="node-0"), "ipv4"), json=True)
    assert assert_same(listed)[0] == "ok"
    counted[0] = 0
    rs = parse_nft_json(listed, "f")
    rules = [r for t in rs.tables for r in t.rules()]
    assert sum(isinstance(r, LazyNftRule) for r in rules) > len(rules) * 0.8
    assert counted[0] < len(json.loads(listed)["nftables"]) * 0.2
    for text in _text_mutations(listed, rng, 30):
        assert_same(text)
    for text in _json_mutations(listed, rng, 15):
        assert_same(text)
