"""bitwise (nft_bitwise) on marks and on `meta random`, and mark-setting statements.

kube-proxy marks packets for masquerade with `meta mark set meta mark | 0x4000`
and tests `meta mark & 0x4000 == 0`; marks are always concrete in kpa, so
these evaluate exactly. iptables-nft translates `-m statistic --probability`
into `meta random & 2147483647 < N`: a uniform 32-bit number, masked to its
low bits, compared with N, so the chance is an exact fraction as well.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from kpa.ext.base import Split, Statement
from kpa.ext.nft.base import Element, Key, UnmodelledKey, Value, union
from kpa.ext.nft.lookup import partition_data
from kpa.ext.nft.meta import MarkKey
from kpa.netfilter.domain import IntSet
from kpa.netfilter.model import Expr, Flow, NamedSet, Step
from kpa.netfilter.packet import State, TraceContext

MASK32 = 0xFFFFFFFF
OPS: dict[str, Callable[[int, int], int]] = {
    "&": lambda a, b: a & b, "|": lambda a, b: a | b, "^": lambda a, b: a ^ b,
    "<<": lambda a, b: (a << b) & MASK32, ">>": lambda a, b: a >> b,
}
OP_WORDS = {"and": "&", "or": "|", "xor": "^", "lshift": "<<", "rshift": ">>"}


@dataclass(eq=False)
class MaskedMarkKey(Key):
    """`meta mark & MASK` (or `ct mark & MASK`)."""

    inner: MarkKey = field(default_factory=MarkKey)
    mask: int = MASK32

    def __post_init__(self) -> None:
        self.dtype = "mark"
        self.text = f"{self.inner.text} & {self.mask:#010x}"

    def test(self, st: State, ctx: TraceContext, values: Sequence[Value]) -> Split:
        return ([st], []) if (self.inner.value(st) & self.mask) in union(values) else ([], [st])


@dataclass(eq=False)
class RandomKey(Key):
    """`meta random [& MASK]`: uniform over 32 bits, masked to a run of low bits."""

    mask: int = MASK32

    def __post_init__(self) -> None:
        if self.mask & (self.mask + 1):
            raise UnmodelledKey(f"meta random & {self.mask:#x} is not a low-bit mask")
        self.dtype = "integer"
        self.text = "meta random" + (f" & {self.mask}" if self.mask != MASK32 else "")

    def probability(self, values: IntSet) -> Fraction:
        hits = (values & IntSet.range(0, self.mask)).size()
        return Fraction(hits, self.mask + 1)

    def test(self, st: State, ctx: TraceContext, values: Sequence[Value]) -> Split:
        p = self.probability(union(values))
        return ([st.scaled(p)] if p > 0 else []), ([st.scaled(1 - p)] if p < 1 else [])


# A mark expression: an int, `meta mark`/`ct mark`, or [op, left, right].
MarkExpr = int | str | tuple[str, "MarkExpr", "MarkExpr"]


def eval_mark(expr: MarkExpr, st: State) -> int:
    if isinstance(expr, int):
        return expr & MASK32
    if isinstance(expr, str):
        return st.ctmark if expr == "ct mark" else st.mark
    op, a, b = expr
    return OPS[op](eval_mark(a, st), eval_mark(b, st)) & MASK32


def render_mark(expr: MarkExpr) -> str:
    if isinstance(expr, int):
        return f"{expr:#010x}"
    if isinstance(expr, str):
        return expr
    op, a, b = expr
    return f"{render_mark(a)} {op} {render_mark(b)}"


@dataclass(eq=False)
class MarkSet(Statement):
    """`meta mark set EXPR` / `ct mark set EXPR`."""

    target: str = "meta mark"
    value: MarkExpr = 0

    def __post_init__(self) -> None:
        self.name = f"{self.target} set"
        target, value = self.target, self.value

        def apply(st: State, ctx: TraceContext) -> State:
            new = eval_mark(value, st)
            return st.set(ctmark=new) if target == "ct mark" else st.set(mark=new)
        self.apply = apply

    def render(self) -> list[str]:
        return [*self.target.split(), "set", *render_mark(self.value).split()]


@dataclass(eq=False)
class MarkMapSet(Expr):
    """`meta mark set KEY map @m` (or `{ k : v, … }`): the mark the packet's key maps to.

    A key in no element ends the rule there, as nft_lookup does (NFT_BREAK); a
    catch-all `*` element is the default.
    """

    target: str = "meta mark"
    key: Key = field(default_factory=Key)
    set: NamedSet | None = None
    elements: list[Element] = field(default_factory=list)
    values: list[int] = field(default_factory=list)
    text: str = ""

    def __post_init__(self) -> None:
        self.name = f"{self.target} set"

    def _pairs(self) -> tuple[list[Element], list[int]]:
        if self.set is not None:
            return self.set.elements, [_mark_of(v) for v in self.set.values or []]
        return self.elements, self.values

    def step(self, st: State, ctx: TraceContext) -> Iterable[Step]:
        elements, values = self._pairs()
        yes_g, no_g = self.key.guard(st, ctx)
        for s in no_g:
            yield s, Flow.NO_MATCH
        for s in yes_g:
            for pos, s2 in partition_data(self.key, s, ctx, elements):
                if pos is None:
                    yield s2, Flow.NO_MATCH
                    continue
                new = values[pos]
                yield (s2.set(ctmark=new) if self.target == "ct mark" else s2.set(mark=new)), Flow.CONTINUE

    def render(self) -> list[str]:
        return self.text.split()


def _mark_of(value: object) -> int:
    """A data map's value (a one-part element) as a mark."""
    part = value[0] if isinstance(value, tuple) and value else value
    mark = part.single_value() if isinstance(part, IntSet) else None
    if mark is None:
        raise UnmodelledKey(f"a mark map value {value!r} that is not one number is not modelled")
    return mark
