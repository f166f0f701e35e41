"""multiport (xt_multiport): up to 15 ports or ranges in one rule."""

from __future__ import annotations

from kpa.ext.base import (
    Cond,
    FnCond,
    IntCond,
    Match,
    Option,
    ParseCtx,
    Split,
    Unsupported,
    match,
    parse_port_range,
    parts,
)
from kpa.netfilter.domain import IntSet
from kpa.netfilter.packet import State, TraceContext


def _ports(text: str) -> IntSet:
    out = IntSet()
    for part in text.split(","):
        out = out | parse_port_range(part)
    return out


@match("multiport")
def parse_multiport(opts: list[Option], ctx: ParseCtx) -> Match:
    conds: list[Cond] = []
    for o in opts:
        if o.name in ("--dports", "--destination-ports"):
            conds.append(IntCond("dport", _ports(o.arg()), o.negated))
        elif o.name in ("--sports", "--source-ports"):
            conds.append(IntCond("sport", _ports(o.arg()), o.negated))
        elif o.name == "--ports":
            ports = _ports(o.arg())

            # Either port may match: split on sport first, then dport for the rest.
            def either(st: State, c: TraceContext, ports: IntSet = ports) -> Split:
                y1, n1 = st.restrict("sport", ports)
                if n1 is None:
                    return parts(y1, None)
                y2, n2 = n1.restrict("dport", ports)
                yes = [s for s in (y1, y2) if s is not None]
                return yes, ([n2] if n2 is not None else [])
            conds.append(FnCond(either, o.negated))
        else:
            raise Unsupported(f"multiport option {o.name} is not modelled")
    return Match(name="multiport", options=opts, conds=conds)
