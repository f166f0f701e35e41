"""limit and hashlimit (xt_limit, xt_hashlimit): token-bucket rate limits.

Whether a packet finds a token depends on the packets before it, which a
ruleset does not show. kpa explores both ways and reports the rule as unknown,
unless `kpa trace --rate-limits within|exceeded` states which it is. `limit`
and `hashlimit --hashlimit-upto` match while the rate is within the limit;
`hashlimit --hashlimit-above` (and nft `limit rate over`) match once it is
exceeded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from kpa.ext.base import Option, ParseCtx, both_ways, match
from kpa.netfilter.model import Expr, Flow, Step
from kpa.netfilter.packet import State, TraceContext

UNKNOWN = "whether the rate limit is exceeded depends on earlier packets (kpa trace --rate-limits states it)"


@dataclass(eq=False)
class RateLimit(Expr):
    """Matches while within the limit (`over`: once exceeded)."""

    name: str = "limit"
    options: list[Option] = field(default_factory=list)
    over: bool = False
    text: str = ""

    def step(self, st: State, ctx: TraceContext) -> Iterable[Step]:
        if ctx.rate_limits is not None:
            exceeded = ctx.rate_limits == "exceeded"
            s = st.note(f"{self.name}: rate {'exceeded' if exceeded else 'within the limit'} (as stated)")
            yield s, (Flow.CONTINUE if exceeded == self.over else Flow.NO_MATCH)
            return
        yes, no = both_ways(st, ctx, self.describe(), UNKNOWN)
        yield yes, Flow.CONTINUE
        yield no, Flow.NO_MATCH

    def render(self) -> list[str]:
        if self.text:
            return self.text.split()
        return ["-m", self.name] + [t for o in self.options for t in o.render()]


@match("limit")
def parse_limit(opts: list[Option], ctx: ParseCtx) -> Expr:
    return RateLimit(name="limit", options=opts)


@match("hashlimit")
def parse_hashlimit(opts: list[Option], ctx: ParseCtx) -> Expr:
    return RateLimit(name="hashlimit", options=opts, over=any(o.name == "--hashlimit-above" for o in opts))
