"""statistic (xt_statistic): random and nth sampling.

The kernel does not compare against the decimal iptables prints. iptables
stores `lround(p * 2^31)` and the kernel matches when a 31-bit random number
is below it, so the exact probability is that integer over 2^31. kpa uses
that rational, which is why a kube-proxy cascade of 1/n, 1/(n-1), ... sums to
exactly 1 and gives each endpoint 1/n to within 2^-31.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction

from kpa.ext.base import Option, OptionError, ParseCtx, Unsupported, match, parse_int
from kpa.netfilter.model import Expr, Flow, Step
from kpa.netfilter.packet import State, TraceContext

RANDOM_SCALE = 1 << 31


def kernel_probability(text: str) -> Fraction:
    try:
        p = float(text)
    except ValueError as exc:
        raise OptionError(f"expected a probability between 0 and 1, found {text!r}") from exc
    if not 0.0 <= p <= 1.0:
        raise OptionError(f"expected a probability between 0 and 1, found {text!r}")
    return Fraction(math.floor(p * RANDOM_SCALE + 0.5), RANDOM_SCALE)


@dataclass(eq=False)
class StatisticMatch(Expr):
    """`-m statistic`: matches a share of packets (random or every nth); kube-proxy's load balancing."""

    name: str = "statistic"
    options: list[Option] = field(default_factory=list)
    probability: Fraction = Fraction(1)
    negated: bool = False
    nth: bool = False

    def step(self, st: State, ctx: TraceContext) -> Iterable[Step]:
        hit, miss = self.shares()
        if hit:
            s = st.scaled(hit)
            if self.nth:
                s = s.note("statistic nth mode counts packets; the probability is its long-run share")
            yield s, Flow.CONTINUE
        if miss:
            yield st.scaled(miss), Flow.NO_MATCH

    def shares(self) -> tuple[Fraction, Fraction]:
        """(share that matches, share that does not); worked out once, as every packet needs them."""
        cached: tuple[Fraction, Fraction] | None = self.__dict__.get("_shares")
        if cached is None:
            p = 1 - self.probability if self.negated else self.probability
            cached = self.__dict__["_shares"] = (p, 1 - p)
        return cached

    def render(self) -> list[str]:
        return ["-m", "statistic"] + [t for o in self.options for t in o.render()]


@match("statistic")
def parse_statistic(opts: list[Option], ctx: ParseCtx) -> Expr:
    by = {o.name: o for o in opts}
    mode = by.get("--mode")
    if mode is None:
        raise OptionError("statistic expects --mode random|nth")
    if mode.arg() == "random":
        prob = by.get("--probability")
        if prob is None:
            raise OptionError("statistic --mode random expects --probability P")
        return StatisticMatch(options=opts, probability=kernel_probability(prob.arg()), negated=prob.negated)
    if mode.arg() == "nth":
        every = by.get("--every")
        if every is None:
            raise OptionError("statistic --mode nth expects --every N")
        n = parse_int(every.arg(), "a packet count")
        if n < 1:
            raise OptionError(f"expected --every of at least 1, found {n}")
        return StatisticMatch(options=opts, probability=Fraction(1, n), negated=every.negated, nth=True)
    raise Unsupported(f"statistic mode {mode.arg()!r} is not modelled")
