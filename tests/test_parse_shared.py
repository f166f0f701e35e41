"""Dumps read together (`kpa diff`) skeletonise only the lines the dump before them did not hold.

kpa.parse.shapes.LineKeys takes a line's skeleton key from the dump read
before when that dump held the same line. These tests require the same
skeletons as the whole text's regex passes, and the same rulesets (rules,
expressions, which rules are lazy, warnings, errors) as reading each dump on
its own, on fixtures and generated clusters before and after rollouts; and
they check that deliberately wrong keys would be caught.
"""

from __future__ import annotations

import json
import random
from array import array
from pathlib import Path
from typing import Any

import pytest

from kpa.errors import InputError
from kpa.gen.cluster import Cluster, Endpoint, random_cluster
from kpa.gen.iptables import render_restore
from kpa.gen.options import ProxierOptions
from kpa.netfilter.model import Family, LazyRule, Ruleset
from kpa.parse import shapes
from kpa.parse.iptables_save import parse_iptables, share_skeletons
from kpa.parse.shapes import LineKeys, Skeletons, plain_lines, skeletonise

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "iptables").glob("*.save"))


def facts(rs: Ruleset) -> list[Any]:
    """Everything a reader of the ruleset can see, lazy rules built last (after `lazy` was read)."""
    lazy = [(r.table, r.chain, r.index, isinstance(r, LazyRule)) for t in rs.tables for r in t.rules()]
    rules = [(r.table, r.chain, r.index, r.text, str(r.location), r.comment, r.counters, r.known,
              [json.dumps(e.to_json(), sort_keys=True) for e in r.exprs], list(r.chain_refs()))
             for t in rs.tables for r in t.rules()]
    tables = [(t.family, t.name, t.source, str(t.location), [(c.name, c.policy, c.counters, str(c.location))
                                                              for c in t.chains.values()]) for t in rs.tables]
    return [lazy, rules, tables, rs.warnings]


def read(text: str, name: str) -> list[Any] | str:
    try:
        return facts(parse_iptables(text, name))
    except InputError as exc:
        return f"error: {exc}"


def alone(*texts: str) -> list[list[Any] | str]:
    return [read(t, f"dump{k}.save") for k, t in enumerate(texts)]


def together(*texts: str) -> list[list[Any] | str]:
    with share_skeletons():
        return [read(t, f"dump{k}.save") for k, t in enumerate(texts)]


def per_line(sk: Skeletons | None) -> list[str | None] | None:
    return None if sk is None else [sk.keys[i] if i else None for i in sk.ids]


def rollout(c: Cluster, rng: random.Random) -> None:
    """Endpoints come and go on a tenth of the Services; a few Services go and one comes."""
    for svc in rng.sample(c.services, max(1, len(c.services) // 10)):
        if len(svc.endpoints) > 1 and rng.random() < 0.5:
            svc.endpoints.pop(rng.randrange(len(svc.endpoints)))
        elif svc.endpoints:
            ep = svc.endpoints[-1]
            svc.endpoints.append(Endpoint(ip=ep.ip[:-1] + ("7" if ep.ip[-1] != "7" else "8"),
                                          node_name=ep.node_name, ready=True))
    for svc in rng.sample(c.services, 2):
        c.services.remove(svc)


def generated_pair(seed: int, family: str) -> tuple[str, str]:
    cluster = random_cluster(seed=seed, services=100, endpoints_per_service=3, families=(family,))  # type: ignore[arg-type]
    opts = ProxierOptions(node_name="node-0")
    before = render_restore(cluster, opts, family)  # type: ignore[arg-type]
    rollout(cluster, random.Random(seed))
    return before, render_restore(cluster, opts, family)  # type: ignore[arg-type]


def variants(text: str) -> list[str]:
    """The dump with lines it did not hold: bad values in known skeletons, odd spacing, comments."""
    lines = text.splitlines()
    rules = [k for k, line in enumerate(lines) if line.startswith("-A ")]
    out = []
    for change in (lambda s: s.replace("--dport ", "--dport 7000", 1),  # 70000.. or a port still valid
                   lambda s: s.replace("/32 ", "/33 ", 1),
                   lambda s: s + " ",
                   lambda s: s.replace(" -j ", "  -j ", 1),
                   lambda s: s.replace("-A ", "-A X", 1),
                   lambda s: "# Warning: " + s,
                   lambda s: ""):
        for k in rules[len(rules) // 3 :: max(1, len(rules) // 4)]:
            changed = list(lines)
            changed[k] = change(changed[k])
            out.append("\n".join(changed) + "\n")
    return out


def test_a_lines_key_from_another_dump_is_its_key_in_its_own_dump() -> None:
    pairs = [generated_pair(seed, fam) for seed, fam in ((1, "ipv4"), (2, "ipv6"))]
    pairs += [(a.read_text(), b.read_text()) for a, b in zip(FIXTURES, FIXTURES[1:] + FIXTURES[:1], strict=True)]
    taken = 0
    for a, b in pairs + [(first, v) for first, _ in pairs[:2] for v in variants(first)]:
        fa = Family.IPV6 if "ip6tables" in a[:200] or "fd00" in a else Family.IPV4
        fb = Family.IPV6 if "ip6tables" in b[:200] or "fd00" in b else Family.IPV4
        assert plain_lines(a) and plain_lines(b)
        ska = Skeletons.of(skeletonise(a, fa) or "")
        keys = LineKeys.of(a.splitlines(), fa, ska)
        assert keys is not None
        got = keys.skeletons(b.splitlines(), fb)
        if fa is not fb:
            assert got is None
            continue
        assert per_line(got) == per_line(Skeletons.of(skeletonise(b, fb) or ""))
        taken += 1
    assert taken > 20
    # A text with a placeholder or another line break is not plain: its lines are not taken apart.
    assert not plain_lines("-A X -s 10.0.0.1/32\x01\n") and not plain_lines("-A X\r\n-A Y\n")
    assert not plain_lines("-A X\u2028-A Y\n")


@pytest.mark.parametrize(("seed", "family"), [(11, "ipv4"), (12, "ipv6")])
def test_dumps_read_together_are_read_as_alone(seed: int, family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    before, after = generated_pair(seed, family)
    texts = [before, after, *variants(after)[::3], before.replace("\n", "\r\n"), after]
    skeletonised: list[int] = []
    real = shapes.skeletonise

    def counting(text: str, fam: Family) -> str | None:
        skeletonised.append(text.count("\n") + 1)
        return real(text, fam)

    monkeypatch.setattr(shapes, "skeletonise", counting)
    expected = alone(*texts)
    assert any(isinstance(e, str) for e in expected) and not isinstance(expected[1], str)
    whole = sum(skeletonised)
    skeletonised.clear()
    assert together(*texts) == expected
    # Each dump after a plain one skeletonised only its new lines (the text after CRLF in full).
    assert sum(skeletonised) < whole - (len(texts) - 4) * 0.8 * before.count("\n")


def test_fixtures_read_together_are_read_as_alone() -> None:
    texts = [p.read_text() for p in FIXTURES]
    assert together(*texts) == alone(*texts)
    assert together(*texts[::-1]) == alone(*texts[::-1])


def test_wrong_keys_would_be_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys taken by position rather than by text, or a new line given its neighbour's key, change the rules."""
    before, after = generated_pair(21, "ipv4")
    bad_port = after.replace("--dport ", "--dport 7", 1)  # a port over 65535 in a skeleton known from `before`
    expected = alone(before, after, bad_port)
    assert isinstance(expected[2], str) and "expected a port number" in expected[2]
    assert together(before, after, bad_port) == expected

    def by_position(self: LineKeys, lines: list[str], family: Family) -> Skeletons | None:
        ids = array("i", list(self.by_line.values())[: len(lines)])
        ids.extend([0] * (len(lines) - len(ids)))
        return Skeletons(list(self.keys), ids)

    def neighbours_key(self: LineKeys, lines: list[str], family: Family) -> Skeletons | None:
        got = [self.by_line.get(line, -1) for line in lines]
        for i, kid in enumerate(got):
            if kid < 0:
                got[i] = got[i - 1] if lines[i].startswith("-A ") and i else 0
        return Skeletons(list(self.keys), array("i", got))

    for wrong in (by_position, neighbours_key):
        monkeypatch.setattr(LineKeys, "skeletons", wrong)
        assert together(before, after, bad_port) != expected
