"""set (xt_set): membership in an ipset, known only with an `ipset save` dump."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from kpa.ext.base import Option, OptionError, ParseCtx, Unsupported, match
from kpa.netfilter.model import Expr, Flow, Step
from kpa.netfilter.packet import Assumption, State, TraceContext


@dataclass(eq=False)
class SetMatch(Expr):
    name: str = "set"
    options: list[Option] = field(default_factory=list)
    set_name: str = ""
    field_name: str = "src"
    negated: bool = False

    def step(self, st: State, ctx: TraceContext) -> Iterable[Step]:
        members = ctx.ipsets.get(self.set_name)
        if members is None:
            rule = ctx.rule
            loc, text = (rule.location, rule.text) if rule else (None, self.describe())
            why = f"ipset {self.set_name!r} is unknown (give an `ipset save` dump)"
            yield st.assume(Assumption(loc, text, why, True)), Flow.CONTINUE
            yield st.assume(Assumption(loc, text, why, False)), Flow.NO_MATCH
            return
        yes, no = st.restrict(self.field_name, members)
        if self.negated:
            yes, no = no, yes
        if yes is not None:
            yield yes, Flow.CONTINUE
        if no is not None:
            yield no, Flow.NO_MATCH

    def render(self) -> list[str]:
        return ["-m", "set"] + [t for o in self.options for t in o.render()]


@match("set")
def parse_set(opts: list[Option], ctx: ParseCtx) -> Expr:
    m = SetMatch(options=opts)
    for o in opts:
        if o.name == "--match-set":
            if len(o.args) != 2:
                raise OptionError("--match-set expects NAME src|dst[,...]")
            m.set_name, dims = o.args
            m.negated = o.negated
            if dims not in ("src", "dst"):
                raise Unsupported(f"ipset lookups on {dims!r} are not modelled")
            m.field_name = dims
        elif o.name not in ("--return-nomatch", "--update-counters", "--update-subcounters"):
            raise Unsupported(f"set option {o.name} is not modelled")
    if not m.set_name:
        raise OptionError("set expects --match-set NAME src|dst")
    return m
