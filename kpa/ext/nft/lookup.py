"""lookup (nft_lookup, nft_dynset): `KEY @set`, `KEY { ... }`, `KEY vmap @map`.

A set lookup splits the state into the part whose key is an element and
the rest. A verdict map splits it per element, each part taking that
element's verdict; a packet whose key is in no element breaks the rule (the
next rule runs). Sets a rule adds to at runtime (`update @set { ip saddr }`,
kube-proxy's session affinity) hold state kpa cannot see: as with the
`recent` match, membership is taken from the trace context, or left open and
explored both ways.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from kpa.ext.base import Split
from kpa.ext.nft.base import ConcatKey, Element, Key, Value
from kpa.netfilter.domain import IntSet
from kpa.netfilter.model import Expr, Flow, NamedSet, Step, Verdict, VerdictKind
from kpa.netfilter.packet import State, TraceContext


def affinity_split(st: State, ctx: TraceContext, set_name: str) -> list[tuple[State, bool]]:
    """The ways the client can stand toward a runtime set: (state, is member)."""
    current = st.recent_member(set_name, ctx.affinity.get(set_name, ctx.affinity_default))
    if current is not None:
        return [(st, current)]
    out: list[tuple[State, bool]] = []
    for member in (True, False):
        fact = f"client {'in' if member else 'not in'} set @{set_name}"
        out.append((st.set(recent={**st.recent, set_name: member}, facts=(*st.facts, fact)), member))
    return out


def prefilter(key: Key, st: State, elements: Sequence[Element]) -> list[int]:
    """Indexes of the elements that can match a state, judged on its concrete fields.

    Large maps (one element per Service port) would otherwise be walked
    element by element for every packet.
    """
    keys = key.keys if isinstance(key, ConcatKey) else [key]
    checks: list[tuple[int, int]] = []
    for pos, k in enumerate(keys):
        fld = k.state_field()
        if fld is not None:
            v = st.concrete(fld)
            if v is not None:
                checks.append((pos, v))
    if not checks:
        return list(range(len(elements)))
    out: list[int] = []
    for i, el in enumerate(elements):
        if all(not isinstance(el[pos], IntSet) or v in el[pos] for pos, v in checks):
            out.append(i)
    return out


@dataclass(eq=False)
class SetLookup(Expr):
    """`KEY [!=] @set` or `KEY [!=] { elements }`."""

    key: Key = field(default_factory=Key)
    set: NamedSet | None = None  # named set; None for an anonymous one
    elements: list[Element] = field(default_factory=list)
    negated: bool = False
    text: str = ""
    _values: list[Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.name = "lookup"

    def _elements(self) -> list[Element]:
        return self.set.elements if self.set is not None else self.elements

    def step(self, st: State, ctx: TraceContext) -> Iterable[Step]:
        yes_g, no_g = self.key.guard(st, ctx)
        for s in no_g:
            yield s, Flow.NO_MATCH
        for s in yes_g:
            for s2, hit in self._split(s, ctx):
                yield s2, (Flow.CONTINUE if hit != self.negated else Flow.NO_MATCH)

    def _split(self, st: State, ctx: TraceContext) -> Iterator[tuple[State, bool]]:
        if self.set is not None and self.set.dynamic:
            yield from affinity_split(st, ctx, self.set.name)
            return
        if self._values is None:
            self._values = [self.key.element_values(el)[0] for el in self._elements()]
        values: Sequence[Value] = self._values
        yes, no = self.key.test(st, ctx, values)
        yield from ((s, True) for s in yes)
        yield from ((s, False) for s in no)

    def render(self) -> list[str]:
        return self.text.split()


@dataclass(eq=False)
class VerdictMap(Expr):
    """`KEY vmap @map` / `KEY vmap { element : verdict, ... }`."""

    key: Key = field(default_factory=Key)
    set: NamedSet | None = None
    elements: list[Element] = field(default_factory=list)
    # Flow.CONTINUE stands for nft's `continue` verdict (on to the next rule).
    verdicts: list[Verdict | Flow] = field(default_factory=list)
    text: str = ""

    def __post_init__(self) -> None:
        self.name = "vmap"

    def _pairs(self) -> tuple[list[Element], list[Verdict | Flow]]:
        if self.set is not None:
            return self.set.elements, list(self.set.values or [])
        return self.elements, self.verdicts

    def step(self, st: State, ctx: TraceContext) -> Iterable[Step]:
        elements, verdicts = self._pairs()
        yes_g, no_g = self.key.guard(st, ctx)
        for s in no_g:
            yield s, Flow.NO_MATCH
        for s in yes_g:
            idx = prefilter(self.key, s, elements)
            for pos, s2 in self.key.partition(s, ctx, [elements[i] for i in idx]):
                if pos is None:
                    yield s2, Flow.NO_MATCH
                    continue
                v = verdicts[idx[pos]]
                comments = self.set.comments if self.set is not None else None
                said = comments[idx[pos]] if comments else None
                if said:
                    s2 = s2.note(f"@{self.set.name if self.set else ''} element {said!r}")
                yield s2, v

    def chain_refs(self) -> Iterator[tuple[VerdictKind, str]]:
        for v in self._pairs()[1]:
            if isinstance(v, Verdict) and v.chain:
                yield v.kind, v.chain

    def render(self) -> list[str]:
        return self.text.split()


def partition_data(key: Key, st: State, ctx: TraceContext, elements: Sequence[Element]) -> list[tuple[int | None, State]]:
    """Split a state over a data map's keys (used by `dnat to KEY map {...}`)."""
    idx = prefilter(key, st, elements)
    return [(None if pos is None else idx[pos], s) for pos, s in key.partition(st, ctx, [elements[i] for i in idx])]


__all__ = ["SetLookup", "Split", "VerdictMap", "affinity_split", "partition_data", "prefilter"]
