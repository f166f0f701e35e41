"""numgen (nft_numgen): kube-proxy's endpoint choice, `numgen random mod N`.

The kernel draws a 32-bit random x and scales it to [0, N) as (x * N) >> 32
(reciprocal_scale), then adds the offset. So value k has probability
#{x : (x*N) >> 32 == k} / 2^32 = (ceil((k+1)·2^32/N) - ceil(k·2^32/N)) / 2^32,
which kpa uses exactly; the shares sum to 1. `numgen inc` counts packets
round-robin; kpa gives each value its long-run share 1/N and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from kpa.ext.base import Split
from kpa.ext.nft.base import Element, Key, Value, union
from kpa.netfilter.domain import IntSet
from kpa.netfilter.packet import State, TraceContext

SCALE = 1 << 32
INC_NOTE = "numgen inc is round-robin; its probability is the long-run share of each value"


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def value_probability(k: int, modulus: int) -> Fraction:
    """Chance that reciprocal_scale(random u32, modulus) == k."""
    if not 0 <= k < modulus:
        return Fraction(0)
    count = _ceil_div((k + 1) * SCALE, modulus) - _ceil_div(k * SCALE, modulus)
    return Fraction(count, SCALE)


@dataclass(eq=False)
class NumgenKey(Key):
    mode: str = "random"
    modulus: int = 1
    offset: int = 0

    def __post_init__(self) -> None:
        self.dtype = "integer"
        self.text = f"numgen {self.mode} mod {self.modulus}" + (f" offset {self.offset}" if self.offset else "")

    def probability(self, values: IntSet) -> Fraction:
        total = Fraction(0)
        for lo, hi in values:
            for v in range(max(lo, self.offset), min(hi, self.offset + self.modulus - 1) + 1):
                total += self._p(v - self.offset)
        return total

    def _p(self, k: int) -> Fraction:
        if self.mode == "inc":
            return Fraction(1, self.modulus) if 0 <= k < self.modulus else Fraction(0)
        return value_probability(k, self.modulus)

    def _mark(self, st: State) -> State:
        return st.note(INC_NOTE) if self.mode == "inc" else st

    def test(self, st: State, ctx: TraceContext, values: Sequence[Value]) -> Split:
        p = self.probability(union(values))
        yes = [self._mark(st.scaled(p))] if p > 0 else []
        no = [self._mark(st.scaled(1 - p))] if p < 1 else []
        return yes, no

    def partition(self, st: State, ctx: TraceContext, elements: Sequence[Element]) -> list[tuple[int | None, State]]:
        # Each element takes its own unconditional share; testing them in turn
        # would rescale already-scaled remainders.
        out: list[tuple[int | None, State]] = []
        rest = Fraction(1)
        for i, el in enumerate(elements):
            v = el[0]
            p = self.probability(v) if isinstance(v, IntSet) else Fraction(0)
            if p > 0:
                out.append((i, self._mark(st.scaled(p))))
                rest -= p
        if rest > 0:
            out.append((None, self._mark(st.scaled(rest))))
        return out
