"""connlimit (xt_connlimit): how many connections the client (or its network) has.

The kernel counts the tracked connections of the packet's group (source or
destination address under --connlimit-mask), this one included, and matches
when the count is above the limit (`--connlimit-above N`) or at most it
(`--connlimit-upto N`). How many connections exist is not in a ruleset:
`kpa trace --connections N` states how many the client already has besides
this one; otherwise the rule is unknown.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from kpa.ext.base import Option, OptionError, ParseCtx, Unsupported, both_ways, match, parse_int
from kpa.netfilter.model import Expr, Flow, Step
from kpa.netfilter.packet import State, TraceContext

UNKNOWN = "depends on how many connections the client already has (kpa trace --connections states it)"


@dataclass(eq=False)
class ConnLimit(Expr):
    """`-m connlimit`: depends on how many connections the client already has (as stated, else unknown)."""

    name: str = "connlimit"
    options: list[Option] = field(default_factory=list)
    limit: int = 0
    upto: bool = False
    text: str = ""

    def step(self, st: State, ctx: TraceContext) -> Iterable[Step]:
        if ctx.connections is not None:
            count = ctx.connections + 1
            hit = count <= self.limit if self.upto else count > self.limit
            yield st.note(f"connlimit: {count} connections in the group, this one included (as stated)"), (
                Flow.CONTINUE if hit else Flow.NO_MATCH)
            return
        yes, no = both_ways(st, ctx, self.describe(), UNKNOWN)
        yield yes, Flow.CONTINUE
        yield no, Flow.NO_MATCH

    def render(self) -> list[str]:
        if self.text:
            return self.text.split()
        return ["-m", "connlimit"] + [t for o in self.options for t in o.render()]


@match("connlimit")
def parse_connlimit(opts: list[Option], ctx: ParseCtx) -> Expr:
    m = ConnLimit(options=opts)
    seen = False
    for o in opts:
        if o.name in ("--connlimit-above", "--connlimit-upto"):
            m.limit = parse_int(o.arg(), "a connection count")
            # `! --connlimit-above N` is --connlimit-upto N, and the other way round.
            m.upto = (o.name == "--connlimit-upto") != o.negated
            seen = True
        elif o.name in ("--connlimit-mask", "--connlimit-saddr", "--connlimit-daddr"):
            continue
        else:
            raise Unsupported(f"connlimit option {o.name} is not modelled")
    if not seen:
        raise OptionError("connlimit expects --connlimit-above or --connlimit-upto")
    return m
