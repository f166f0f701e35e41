"""iprange (xt_iprange): inclusive address ranges."""

from __future__ import annotations

import ipaddress

from kpa.ext.base import Cond, IntCond, Match, Option, OptionError, ParseCtx, Unsupported, match
from kpa.netfilter.domain import IntSet


def _range(text: str) -> IntSet:
    lo_s, _, hi_s = text.partition("-")
    try:
        lo, hi = ipaddress.ip_address(lo_s), ipaddress.ip_address(hi_s or lo_s)
    except ValueError as exc:
        raise OptionError(f"expected an address range a.b.c.d-e.f.g.h, found {text!r}") from exc
    return IntSet.range(int(lo), int(hi))


@match("iprange")
def parse_iprange(opts: list[Option], ctx: ParseCtx) -> Match:
    conds: list[Cond] = []
    for o in opts:
        if o.name == "--src-range":
            conds.append(IntCond("src", _range(o.arg()), o.negated))
        elif o.name == "--dst-range":
            conds.append(IntCond("dst", _range(o.arg()), o.negated))
        else:
            raise Unsupported(f"iprange option {o.name} is not modelled")
    return Match(name="iprange", options=opts, conds=conds)
