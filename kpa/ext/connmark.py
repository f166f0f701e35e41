"""connmark (xt_connmark): the connection's mark, as a match and CONNMARK target."""

from __future__ import annotations

from kpa.ext.base import (
    Match,
    Option,
    OptionError,
    ParseCtx,
    PredCond,
    Statement,
    Unsupported,
    match,
    parse_value_mask,
    target,
)
from kpa.ext.mark import MASK32, apply_mark, mark_update
from kpa.netfilter.model import Expr
from kpa.netfilter.packet import State, TraceContext


@match("connmark")
def parse_connmark(opts: list[Option], ctx: ParseCtx) -> Match:
    if len(opts) != 1 or opts[0].name != "--mark":
        raise OptionError("connmark expects --mark value[/mask]")
    value, mask = parse_value_mask(opts[0].arg())
    return Match(name="connmark", options=opts,
                 conds=[PredCond(lambda s, c: (s.ctmark & mask) == value, opts[0].negated)])


@target("CONNMARK")
def parse_connmark_target(opts: list[Option], ctx: ParseCtx) -> Expr:
    by = {o.name: o for o in opts}
    nfmask = parse_value_mask(by["--nfmask"].arg())[0] if "--nfmask" in by else MASK32
    ctmask = parse_value_mask(by["--ctmask"].arg())[0] if "--ctmask" in by else MASK32
    if "--save-mark" in by:
        def apply(st: State, c: TraceContext) -> State:
            return st.set(ctmark=(st.ctmark & ~ctmask) ^ (st.mark & nfmask) & MASK32)
    elif "--restore-mark" in by:
        def apply(st: State, c: TraceContext) -> State:
            return st.set(mark=(st.mark & ~nfmask) ^ (st.ctmark & ctmask) & MASK32)
    else:
        first = opts[0] if opts else None
        if first is None or first.name not in ("--set-xmark", "--set-mark", "--or-mark", "--and-mark", "--xor-mark"):
            raise Unsupported("CONNMARK form is not modelled")
        zero, xor = mark_update(first)

        def apply(st: State, c: TraceContext) -> State:
            return st.set(ctmark=apply_mark(st.ctmark, zero, xor))
    return Statement(name="CONNMARK", options=opts, apply=apply)
