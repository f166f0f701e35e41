"""CT and NOTRACK (xt_CT): exempting packets from connection tracking.

An untracked packet has ctstate UNTRACKED and never reaches the nat table.
"""

from __future__ import annotations

from kpa.ext.base import Option, ParseCtx, Statement, Unsupported, target
from kpa.netfilter.model import Expr
from kpa.netfilter.packet import State, TraceContext


def _untrack(st: State, ctx: TraceContext) -> State:
    return st.set(ctstate=frozenset({"UNTRACKED"}))


@target("NOTRACK")
def parse_notrack(opts: list[Option], ctx: ParseCtx) -> Expr:
    return Statement(name="NOTRACK", options=opts, apply=_untrack)


@target("CT")
def parse_ct(opts: list[Option], ctx: ParseCtx) -> Expr:
    if any(o.name == "--notrack" for o in opts):
        return Statement(name="CT", options=opts, apply=_untrack)
    if all(o.name in ("--zone", "--zone-orig", "--zone-reply", "--helper", "--timeout", "--ctevents", "--expevents") for o in opts):
        return Statement(name="CT", options=opts)
    raise Unsupported("CT option is not modelled")
