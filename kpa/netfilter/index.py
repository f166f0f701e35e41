"""Skipping rules that cannot match, without changing what matches.

KUBE-SERVICES on a large cluster holds a rule per Service port, each pinned
to one destination address. When every packet state in play has a concrete
destination, only the rules pinned to that address, plus the rules that pin
no address, can apply. The index yields exactly those, in chain order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from kpa.netfilter.model import Chain, Rule
from kpa.netfilter.packet import State

# Below this size a plain scan is as fast as consulting the index.
MIN_RULES = 32


@dataclass
class DstIndex:
    generic: list[int]
    by_dst: dict[int, list[int]]


def pinned_destination(rule: Rule) -> int | None:
    from kpa.ext.base import IntCond, Match

    for e in rule.exprs:
        if isinstance(e, Match) and e.name == "dst" and len(e.conds) == 1:
            c = e.conds[0]
            if isinstance(c, IntCond) and not c.negated and c.field == "dst":
                return c.values.single_value()
    return None


def build(chain: Chain) -> DstIndex:
    generic: list[int] = []
    by_dst: dict[int, list[int]] = {}
    for pos, rule in enumerate(chain.rules):
        dst = pinned_destination(rule)
        if dst is None:
            generic.append(pos)
        else:
            by_dst.setdefault(dst, []).append(pos)
    return DstIndex(generic, by_dst)


def candidate_rules(chain: Chain, states: list[State]) -> Iterator[Rule]:
    rules = chain.rules
    if len(rules) < MIN_RULES:
        yield from rules
        return
    dsts = set()
    for s in states:
        d = s.concrete("dst")
        if d is None:
            yield from rules
            return
        dsts.add(d)
    if chain._index is None:
        chain._index = build(chain)
    idx: DstIndex = chain._index
    positions = set(idx.generic)
    for d in dsts:
        positions.update(idx.by_dst.get(d, ()))
    for pos in sorted(positions):
        yield rules[pos]
