"""recent (xt_recent): kube-proxy's session affinity lists.

Whether the client is already in a list is state kpa cannot see in a dump.
By default it is not (a first connection); `--affinity NAME` puts it in;
left open, the trace follows both cases and says which it assumed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from kpa.ext.base import Option, OptionError, ParseCtx, Unsupported, match
from kpa.netfilter.model import Expr, Flow, Step
from kpa.netfilter.packet import State, TraceContext


@dataclass(eq=False)
class RecentMatch(Expr):
    name: str = "recent"
    options: list[Option] = field(default_factory=list)
    list_name: str = "DEFAULT"
    command: str = "--rcheck"
    negated: bool = False

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
            if self.negated:
                hit = not hit
            yield s, (Flow.CONTINUE if hit else Flow.NO_MATCH)

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
            raise Unsupported("recent --hitcount depends on earlier packets")
        elif o.name not in ("--set", "--rcheck", "--update", "--remove", "--seconds", "--reap", "--rttl", "--rsource", "--mask"):
            raise Unsupported(f"recent option {o.name} is not modelled")
    return m
