"""The IP header matches every rule has: -s, -d, -i, -o, -p, -f.

These live in `struct ipt_ip` rather than in an extension, but they are
matches all the same. Interface names ending in `+` match by prefix, as in
the kernel's ifname comparison with a shortened mask.
"""

from __future__ import annotations

from kpa.ext.base import (
    IntCond,
    Match,
    NameCond,
    Option,
    OptionError,
    ParseCtx,
    PredCond,
    parse_networks,
)
from kpa.netfilter.domain import IntSet
from kpa.netfilter.protocols import iptables_protocol


def address(opt: Option, ctx: ParseCtx, field: str) -> Match:
    values = parse_networks(opt.arg(), ctx.family)
    return Match(name=field, options=[opt], conds=[IntCond(field, values, opt.negated)], implicit=True)


def interface(opt: Option, field: str) -> Match:
    name = opt.arg()
    prefix = name.endswith("+")
    return Match(name=field, options=[opt], conds=[NameCond(field, name.rstrip("+") if prefix else name, prefix, opt.negated)], implicit=True)


def protocol(opt: Option, ctx: ParseCtx) -> Match:
    text = opt.arg()
    try:
        number = iptables_protocol(text)
    except ValueError as exc:
        raise OptionError(f"expected a protocol name or number 0-255, found {text!r}") from exc
    if number == 0:
        # `-p all` (or 0, `ip`, `hopopt`: iptables stores 0 and prints no -p) matches everything; `! -p all` nothing.
        # `-p all` matches everything; `! -p all` nothing.
        return Match(name="proto", options=[opt], conds=[PredCond(lambda s, c: True, opt.negated)], implicit=True)
    return Match(name="proto", options=[opt], conds=[IntCond("proto", IntSet.single(number), opt.negated)], implicit=True)


def fragment(opt: Option) -> Match:
    # kpa traces whole (unfragmented) packets: `-f` only matches later fragments.
    return Match(name="fragment", options=[opt], conds=[PredCond(lambda s, c: False, opt.negated)], implicit=True)
