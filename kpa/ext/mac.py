"""mac (xt_mac): the Ethernet source address of a received packet.

The kernel (net/netfilter/xt_mac.c) matches only packets that came in on an
Ethernet device with their link-layer header in place; for anything else
(locally generated packets looped back over `lo`) the match is false, and `!`
does not turn that into true. iptables allows it in PREROUTING, INPUT and
FORWARD.

The sender's address is not in the ruleset: `kpa trace --src-mac` states it;
left out, it stays open and the outcomes say which addresses they need.
"""

from __future__ import annotations

from kpa.ext.base import (
    Cond,
    FnCond,
    Match,
    Option,
    OptionError,
    ParseCtx,
    Split,
    Unsupported,
    match,
)
from kpa.netfilter.domain import IntSet
from kpa.netfilter.packet import State, TraceContext, parse_mac


def mac_test(value: IntSet, negated: bool) -> FnCond:
    def test(st: State, ctx: TraceContext) -> Split:
        if st.local_origin:
            return [], [st]  # looped back over lo: no Ethernet header
        yes, no = st.restrict("mac", value)
        if negated:
            yes, no = no, yes
        return ([yes] if yes is not None else []), ([no] if no is not None else [])
    return FnCond(test)


@match("mac")
def parse_mac_match(opts: list[Option], ctx: ParseCtx) -> Match:
    conds: list[Cond] = []
    for o in opts:
        if o.name != "--mac-source":
            raise Unsupported(f"mac option {o.name} is not modelled")
        try:
            value = parse_mac(o.arg())
        except ValueError as exc:
            raise OptionError(str(exc)) from None
        conds.append(mac_test(IntSet.single(value), o.negated))
    if not conds:
        raise OptionError("mac expects --mac-source ADDRESS")
    return Match(name="mac", options=opts, conds=conds)
