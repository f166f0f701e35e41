"""recent (xt_recent): kube-proxy's session affinity lists.

Whether the client is already in a list is state kpa cannot see in a dump.
By default it is not (a first connection); `--affinity NAME` puts it in;
left open, the trace follows both cases and says which it assumed.

`--hitcount N` further needs N packets from the client in the list (within
--seconds). How many there were is not in a ruleset: `kpa trace
--recent-hits N` states it; otherwise a member's check is unknown.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from kpa.ext.base import Option, OptionError, ParseCtx, Unsupported, both_ways, match, parse_int
from kpa.netfilter.model import Expr, Flow, Step
from kpa.netfilter.packet import State, TraceContext

HITS_UNKNOWN = "recent --hitcount depends on how many packets the client sent before (kpa trace --recent-hits)"


@dataclass(eq=False)
class RecentMatch(Expr):
    """`-m recent`: whether the source was seen recently, which depends on earlier packets."""

    name: str = "recent"
    options: list[Option] = field(default_factory=list)
    list_name: str = "DEFAULT"
    command: str = "--rcheck"
    negated: bool = False
    hitcount: int = 0

    def step(self, st: State, ctx: TraceContext) -> Iterable[Step]:
        current = st.recent_member(self.list_name, ctx.affinity.get(self.list_name, ctx.affinity_default))
        cases = [True, False] if current is None else [current]
        for member in cases:
            s = st
            if current is None:
                fact = f"client {'in' if member else 'not in'} recent list {self.list_name}"
                s = s.set(recent={**s.recent, self.list_name: member}, facts=(*s.facts, fact))
            if self.command == "--set":
                hit, after = True, True
            elif self.command == "--remove":
                hit, after = member, False
            else:  # --rcheck, --update
                hit, after = member, member
            if after != member:
                s = s.set(recent={**s.recent, self.list_name: after})
            for s2, h in self._hits(s, ctx, hit):
                yield s2, (Flow.CONTINUE if h != self.negated else Flow.NO_MATCH)

    def _hits(self, st: State, ctx: TraceContext, member_hit: bool) -> list[tuple[State, bool]]:
        """A member's check also needs --hitcount packets in the list."""
        if not member_hit or not self.hitcount or self.command not in ("--rcheck", "--update"):
            return [(st, member_hit)]
        if ctx.recent_hits is not None:
            return [(st, ctx.recent_hits >= self.hitcount)]
        yes, no = both_ways(st, ctx, self.describe(), HITS_UNKNOWN)
        return [(yes, True), (no, False)]

    def render(self) -> list[str]:
        return ["-m", "recent"] + [t for o in self.options for t in o.render()]


@match("recent")
def parse_recent(opts: list[Option], ctx: ParseCtx) -> Expr:
    m = RecentMatch(options=opts)
    commands = [o for o in opts if o.name in ("--set", "--rcheck", "--update", "--remove")]
    if len(commands) != 1:
        raise OptionError("recent expects exactly one of --set, --rcheck, --update, --remove")
    m.command, m.negated = commands[0].name, commands[0].negated
    for o in opts:
        if o.name == "--name":
            m.list_name = o.arg()
        elif o.name == "--rdest":
            raise Unsupported("recent --rdest is not modelled (kpa tracks source addresses)")
        elif o.name == "--hitcount":
            m.hitcount = parse_int(o.arg(), "a hit count")
        elif o.name not in ("--set", "--rcheck", "--update", "--remove", "--seconds", "--reap", "--rttl", "--rsource", "--mask"):
            raise Unsupported(f"recent option {o.name} is not modelled")
    return m
