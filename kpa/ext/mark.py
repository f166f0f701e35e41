"""mark (xt_mark): the packet mark, as a match and as the MARK target."""

from __future__ import annotations

from kpa.ext.base import (
    Match,
    Option,
    OptionError,
    ParseCtx,
    PredCond,
    Statement,
    match,
    parse_value_mask,
    target,
)
from kpa.netfilter.model import Expr
from kpa.netfilter.packet import State, TraceContext

MASK32 = 0xFFFFFFFF


@match("mark")
def parse_mark(opts: list[Option], ctx: ParseCtx) -> Match:
    if len(opts) != 1 or opts[0].name != "--mark":
        raise OptionError("mark expects --mark value[/mask]")
    value, mask = parse_value_mask(opts[0].arg())
    return Match(name="mark", options=opts,
                 conds=[PredCond(lambda s, c: (s.mark & mask) == value, opts[0].negated)])


def mark_update(opt: Option) -> tuple[int, int]:
    """MARK's forms reduce to `new = (old & ~zero) ^ xor`, as the kernel does."""
    name = opt.name
    if name == "--set-xmark":
        v, m = parse_value_mask(opt.arg())
        return m, v
    if name == "--set-mark":
        v, m = parse_value_mask(opt.arg())
        return m | v, v
    v, _ = parse_value_mask(opt.arg())
    if name == "--or-mark":
        return v, v
    if name == "--and-mark":
        return ~v & MASK32, 0
    if name == "--xor-mark":
        return 0, v
    raise OptionError(f"MARK expects --set-xmark, --set-mark, --or-mark, --and-mark or --xor-mark, found {name}")


def apply_mark(old: int, zero: int, xor: int) -> int:
    return ((old & ~zero) ^ xor) & MASK32


@target("MARK")
def parse_mark_target(opts: list[Option], ctx: ParseCtx) -> Expr:
    if len(opts) != 1:
        raise OptionError("MARK expects exactly one of --set-xmark/--set-mark/--or-mark/--and-mark/--xor-mark")
    zero, xor = mark_update(opts[0])

    def apply(st: State, c: TraceContext) -> State:
        return st.set(mark=apply_mark(st.mark, zero, xor))
    return Statement(name="MARK", options=opts, apply=apply)
