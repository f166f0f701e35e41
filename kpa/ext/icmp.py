"""icmp and icmp6 (xt_tcpudp's icmp part, ip6t_icmp6): message types."""

from __future__ import annotations

from kpa.ext.base import IntCond, Match, Option, OptionError, ParseCtx, Unsupported, match
from kpa.netfilter.domain import IntSet

ICMP_TYPES = {
    "echo-reply": 0, "pong": 0, "destination-unreachable": 3, "source-quench": 4, "redirect": 5,
    "echo-request": 8, "ping": 8, "router-advertisement": 9, "router-solicitation": 10,
    "time-exceeded": 11, "ttl-exceeded": 11, "parameter-problem": 12, "timestamp-request": 13,
    "timestamp-reply": 14, "address-mask-request": 17, "address-mask-reply": 18,
}
ICMP6_TYPES = {
    "destination-unreachable": 1, "packet-too-big": 2, "time-exceeded": 3, "ttl-exceeded": 3,
    "parameter-problem": 4, "echo-request": 128, "ping": 128, "echo-reply": 129, "pong": 129,
    "router-solicitation": 133, "router-advertisement": 134, "neighbour-solicitation": 135,
    "neighbor-solicitation": 135, "neighbour-advertisement": 136, "neighbor-advertisement": 136,
    "redirect": 137,
}


def _type(text: str, table: dict[str, int]) -> IntSet:
    if text == "any":
        return IntSet.range(0, 255)
    head, _, code = text.partition("/")
    if code:
        raise Unsupported("ICMP codes are not modelled")
    if head in table:
        return IntSet.single(table[head])
    if head.isdigit() and int(head) <= 255:
        return IntSet.single(int(head))
    raise OptionError(f"expected an ICMP type name or number, found {text!r}")


@match("icmp")
def parse_icmp(opts: list[Option], ctx: ParseCtx) -> Match:
    conds = []
    for o in opts:
        if o.name != "--icmp-type":
            raise Unsupported(f"icmp option {o.name} is not modelled")
        conds.append(IntCond("icmp_type", _type(o.arg(), ICMP_TYPES), o.negated))
    return Match(name="icmp", options=opts, conds=list(conds))


@match("icmp6", "icmpv6")
def parse_icmp6(opts: list[Option], ctx: ParseCtx) -> Match:
    conds = []
    for o in opts:
        if o.name != "--icmpv6-type":
            raise Unsupported(f"icmp6 option {o.name} is not modelled")
        conds.append(IntCond("icmp_type", _type(o.arg(), ICMP6_TYPES), o.negated))
    return Match(name="icmp6", options=opts, conds=list(conds))
