"""addrtype (xt_addrtype): the routing type of source or destination.

LOCAL means "an address of this node", which kpa takes from --node-ip (or
the Node object) plus loopback. Types that depend on the full routing table
(BLACKHOLE, PROHIBIT, ...) and per-interface limits are reported unknown.
"""

from __future__ import annotations

import ipaddress

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
    parts,
)
from kpa.netfilter.domain import IntSet, network_set
from kpa.netfilter.packet import State, TraceContext

MODELLED = {"LOCAL", "UNICAST", "MULTICAST", "BROADCAST", "UNSPEC"}
ALL_TYPES = MODELLED | {"ANYCAST", "BLACKHOLE", "UNREACHABLE", "PROHIBIT", "THROW", "NAT", "XRESOLVE"}


def _fixed(version: int) -> dict[str, IntSet]:
    if version == 4:
        return {
            "MULTICAST": network_set(ipaddress.ip_network("224.0.0.0/4")),
            "BROADCAST": IntSet.single(0xFFFFFFFF),
            "UNSPEC": IntSet.single(0),
        }
    return {"MULTICAST": network_set(ipaddress.ip_network("ff00::/8")), "BROADCAST": IntSet(), "UNSPEC": IntSet.single(0)}


def type_set(types: frozenset[str], version: int, local: IntSet) -> IntSet:
    fixed = _fixed(version)
    everything = IntSet.range(0, (1 << (32 if version == 4 else 128)) - 1)
    out = IntSet()
    for t in types:
        if t == "LOCAL":
            out = out | local
        elif t == "UNICAST":
            out = out | (everything - local - fixed["MULTICAST"] - fixed["BROADCAST"] - fixed["UNSPEC"])
        else:
            out = out | fixed[t]
    return out


def _cond(field: str, types: frozenset[str], negated: bool) -> Cond:
    def test(st: State, ctx: TraceContext) -> Split:
        return parts(*st.restrict(field, type_set(types, st.version, ctx.is_local(st.version))))
    return FnCond(test, negated)


def _types(text: str) -> frozenset[str]:
    types = frozenset(t.strip().upper() for t in text.split(","))
    bad = types - ALL_TYPES
    if bad:
        raise OptionError(f"expected address types among {','.join(sorted(ALL_TYPES))}, found {','.join(sorted(bad))}")
    if types - MODELLED:
        raise Unsupported(f"address types {','.join(sorted(types - MODELLED))} depend on the routing table")
    return types


@match("addrtype")
def parse_addrtype(opts: list[Option], ctx: ParseCtx) -> Match:
    conds: list[Cond] = []
    for o in opts:
        if o.name == "--src-type":
            conds.append(_cond("src", _types(o.arg()), o.negated))
        elif o.name == "--dst-type":
            conds.append(_cond("dst", _types(o.arg()), o.negated))
        elif o.name in ("--limit-iface-in", "--limit-iface-out"):
            raise Unsupported(f"addrtype {o.name} needs per-interface addresses")
        else:
            raise Unsupported(f"addrtype option {o.name} is not modelled")
    return Match(name="addrtype", options=opts, conds=conds)
