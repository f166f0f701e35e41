"""physdev (xt_physdev): bridge ports of a bridged packet.

kpa traces routed packets, which carry no bridge information. For those
the kernel treats every physdev test as false (then applies `!`), which is
what kpa does too.
"""

from __future__ import annotations

from kpa.ext.base import Cond, Match, Option, ParseCtx, PredCond, Unsupported, match

OPTIONS = {"--physdev-in", "--physdev-out", "--physdev-is-in", "--physdev-is-out", "--physdev-is-bridged"}


@match("physdev")
def parse_physdev(opts: list[Option], ctx: ParseCtx) -> Match:
    conds: list[Cond] = []
    for o in opts:
        if o.name not in OPTIONS:
            raise Unsupported(f"physdev option {o.name} is not modelled")
        conds.append(PredCond(lambda s, c: False, o.negated))
    return Match(name="physdev", options=opts, conds=conds)
