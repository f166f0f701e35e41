"""kube-proxy's chains read from the rules' text give what the built rules give.

`kpa lint` and `kpa show` read each Service chain's jumps to endpoint chains (with
their statistic shares) and each endpoint chain's DNAT target from the not-yet-built
rules' text where the spelling leaves no doubt, and find dangling jumps without
building the chain graph. Each shortcut is held here to the full computation: the
same ruleset with every rule built, where only the general code answers, on every
iptables fixture and on generated clusters with drift and with unusual spellings.
A deliberately broken shortcut is shown to give other answers.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kpa.errors import KpaError
from kpa.gen.cluster import random_cluster
from kpa.gen.iptables import render_restore
from kpa.gen.options import ProxierOptions
from kpa.graph import build_graph, chain_problems, find_problems
from kpa.k8s import kubeproxy
from kpa.k8s.correlate import rules_side
from kpa.k8s.lint import lint, rules_ahead
from kpa.k8s.objects import ClusterObjects
from kpa.netfilter.model import DeferredRule, Ruleset
from kpa.sources import parse_text
from tests.test_lint_compare import CASES, _drifted, _known


def _built(rs: Ruleset) -> Ruleset:
    """``rs`` with every rule built: the general code reads them, no shortcut applies."""
    for t in rs.tables:
        for c in t.chains.values():
            for r in c.rules:
                if isinstance(r, DeferredRule):
                    r.build()
    return rs


def _spellings(seed: int) -> Iterator[tuple[str, str]]:
    """A generated cluster's iptables text, and the same rules in other spellings the parser accepts."""
    cluster = random_cluster(seed, 60, 4, ("ipv4",))
    text = render_restore(cluster, ProxierOptions(node_name="node-0"), "ipv4")
    yield "as-is", text
    rng = random.Random(seed)
    lines = text.split("\n")
    jumps = [i for i, line in enumerate(lines) if line.startswith("-A KUBE-SVC-") and "-j KUBE-SEP-" in line]
    dnats = [i for i, line in enumerate(lines) if "-j DNAT --to-destination" in line]

    def variant(picks: list[int], change: Callable[[str], str]) -> str:
        out = list(lines)
        for i in picks:
            out[i] = change(out[i])
        return "\n".join(out)

    # Endpoint jumps: a comment that is quoted, bare, or holds words of a rule; a statistic
    # share with other digits or other options; the jump as a goto; a quoted target.
    yield "comments", variant(rng.sample(jumps, len(jumps) // 2), lambda s: s.replace(
        " -m statistic", ' -m comment --comment "a/b:c -> 1.2.3.4:5 -j KUBE-SEP-AAAA"  -m statistic', 1)
        if " -m statistic" in s else s.replace(" -j ", ' -m comment --comment "x -m statistic" -j ', 1))
    yield "bare-comment", variant(rng.sample(jumps, len(jumps) // 2), lambda s: s.replace(" -j ", " -m comment --comment x -j ", 1))
    yield "shares", variant(rng.sample(jumps, len(jumps) // 2), lambda s: re.sub(
        r"--probability (\S+)", lambda m: "--probability " + rng.choice(
            ["0.5", "0.25000000000", "1", "0.1", "0.33", "0.000000001", "1.0"]), s))
    yield "negated", variant(rng.sample(jumps, len(jumps) // 2), lambda s: s.replace(
        "-m statistic --mode random", "-m statistic --mode random !", 1))
    yield "every", variant(rng.sample(jumps, len(jumps) // 2), lambda s: re.sub(
        r"--mode random --probability \S+", "--mode nth --every 2 --packet 0", s))
    yield "goto", variant(rng.sample(jumps, len(jumps) // 2), lambda s: s.replace(" -j KUBE-SEP-", " -g KUBE-SEP-"))
    yield "quoted-target", variant(rng.sample(jumps, len(jumps) // 2), lambda s: re.sub(r"-j (KUBE-SEP-\S+)", r'-j "\1"', s))
    yield "affinity", variant(rng.sample(jumps, len(jumps) // 2), lambda s: s.replace(
        " -j ", " -m recent --rcheck --seconds 10800 --reap --name X --mask 255.255.255.255 --rsource -j ", 1))
    # DNAT targets: ports with leading zeros or out of range, addresses not canonical,
    # no port, a comment after the target or holding one.
    yield "dnat-port", variant(rng.sample(dnats, len(dnats) // 2), lambda s: re.sub(
        r":(\d+)$", lambda m: ":" + rng.choice(["0", "65535", "1", "65534"]), s))
    yield "dnat-no-port", variant(rng.sample(dnats, len(dnats) // 2), lambda s: re.sub(r":\d+$", "", s))
    yield "dnat-comment", variant(rng.sample(dnats, len(dnats) // 2), lambda s: s.replace(
        " -j DNAT", ' -m comment --comment "y -j DNAT --to-destination 9.9.9.9:9" -j DNAT', 1))
    yield "dnat-range", variant(rng.sample(dnats, len(dnats) // 2), lambda s: re.sub(
        r"--to-destination (\S+):(\d+)$", r"--to-destination \1-\1:\2", s))


def _texts() -> Iterator[tuple[str, str, str]]:
    for seed in (21, 22):
        for name, text in _spellings(seed):
            yield f"{seed}-{name}", "gen.save", text
    for seed, family in ((3, "ipv4"), (4, "ipv6")):
        for name, text, _ in _drifted(seed, family, services=60):
            yield f"{family}-{name}", "gen.save", text


def _parsed(text: str) -> Ruleset | None:
    try:
        return parse_text(text, "gen.save", "iptables")
    except KpaError:
        return None  # a spelling the parser refuses is none the shortcuts need to agree on


TEXTS = list(_texts())


def _split(rs: Ruleset) -> list[tuple[str, list[Any]]]:
    """Every chain's endpoint split and DNAT target, with where each rule is."""
    out: list[tuple[str, list[Any]]] = []
    for t in rs.tables:
        version = t.family.version if t.family.version in (4, 6) else 4
        for c in t.chains.values():
            split = [(r.where(), target, p) for r, target, p in kubeproxy.endpoint_split(c)]
            out.append((c.name, [split, kubeproxy.dnat_target(c, version)]))
    return out


def _views(rs: Ruleset, known: dict[str, str]) -> str:
    return json.dumps([v.to_json() for v in kubeproxy.service_ports(rs, known)])


@pytest.mark.parametrize("name,where,text", TEXTS, ids=[t[0] for t in TEXTS])
def test_chains_read_from_text_are_the_built_rules_chains(name: str, where: str, text: str) -> None:
    lazy = _parsed(text)
    if lazy is None:
        pytest.skip("the parser refuses this spelling")
    full = _built(parse_text(text, where, "iptables"))
    assert _split(lazy) == _split(full)
    assert _views(lazy, {}) == _views(full, {})
    assert chain_problems(lazy) == chain_problems(full) == find_problems(build_graph(full))


def test_the_spellings_take_both_ways() -> None:
    """The variants hold rules the shortcuts read and rules they leave to the parser."""
    taken = left = 0
    for name, _, text in TEXTS:
        rs = _parsed(text)
        if rs is None or not name.startswith("21-"):
            continue
        for t in rs.tables:
            for c in t.chains.values():
                for r in c.rules:
                    if isinstance(r, DeferredRule) and "KUBE-SEP-" in r.text and r.chain.startswith("KUBE-SVC-"):
                        if kubeproxy._SEP_JUMP_RE.fullmatch(r.text):
                            taken += 1
                        else:
                            left += 1
    assert taken > 500 and left > 30


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_fixture_chains_read_from_text_are_the_built_rules_chains(case: tuple[object, ...]) -> None:
    _, parse, objects, node = case
    assert callable(parse) and isinstance(objects, ClusterObjects) and isinstance(node, str)
    lazy, full = parse(), _built(parse())
    assert isinstance(lazy, Ruleset) and isinstance(full, Ruleset)
    assert _split(lazy) == _split(full)
    assert _views(lazy, _known(objects)) == _views(full, _known(objects))
    assert chain_problems(lazy) == chain_problems(full)
    lazy = parse()
    assert isinstance(lazy, Ruleset)
    findings = [f.to_json() for f in lint(lazy, objects, node, rules_ahead(lazy))]
    assert findings == [f.to_json() for f in lint(full, objects, node)]


def test_whole_lint_on_generated_spellings_is_the_built_rules_lint() -> None:
    from kpa.gen.objects import to_objects
    from kpa.k8s.objects import objects_from_documents

    cluster = random_cluster(21, 60, 4, ("ipv4",))
    objects = objects_from_documents(to_objects(cluster))
    compared = 0
    for name, where, text in TEXTS:
        if not name.startswith("21-"):
            continue
        lazy = _parsed(text)
        if lazy is None:
            continue
        full = _built(parse_text(text, where, "iptables"))
        side = rules_side(lazy)
        assert side.collected is not None
        ahead = rules_ahead(parse_text(text, where, "iptables"))
        assert [f.to_json() for f in lint(ahead.ruleset, objects, "node-0", ahead)] == \
            [f.to_json() for f in lint(full, objects, "node-0")], name
        compared += 1
    assert compared >= 10


@pytest.mark.parametrize("broken", ["share", "negation", "dnat"])
def test_a_careless_text_reading_gives_other_answers(broken: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the comparison above would catch: shortcuts that read a little too much or too loosely."""
    if broken == "share":  # the statistic share ignored: every jump taken as all that is left
        monkeypatch.setattr(kubeproxy, "_SEP_JUMP_RE", re.compile(
            r"-A \S+(?: -m comment --comment \"[^\"\\]*\")?(?: -m statistic --mode random --probability [0-9.]+)?((?!))?"
            r" -j (KUBE-SEP-\S+)"))
    elif broken == "negation":  # a negated statistic match read as it stands
        monkeypatch.setattr(kubeproxy, "_SEP_JUMP_RE", re.compile(
            r"-A \S+(?: -m comment --comment \"[^\"\\]*\")?(?: -m statistic --mode random(?: !)? --probability ([0-9.]+))?"
            r" -j (KUBE-SEP-\S+)"))
    else:  # the port left out of the group that is printed
        monkeypatch.setattr(kubeproxy, "_DNAT_V4_PRINTED", re.compile(
            r" -j DNAT --to-destination ((?:\d+\.){3}\d+)(?::\d+)?"))
    differ = 0
    for _, where, text in TEXTS:
        lazy = _parsed(text)
        if lazy is None:
            continue
        full = _built(parse_text(text, where, "iptables"))
        differ += _split(lazy) != _split(full)
    assert differ > 0
