"""addrtype (xt_addrtype): the routing type of source or destination.

LOCAL means "an address of this node", which kpa takes from --node-ip (or
the Node object) plus loopback. Types that depend on the full routing table
(BLACKHOLE, PROHIBIT, ...) are reported unknown. With --limit-iface-in/out only
the packet's interface counts: an address the node does not own is LOCAL on
no interface, a loopback address only on `lo`, and the node's other addresses
are unknown (kpa does not know which interface holds them).
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
    both_ways,
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


def _limited_cond(field: str, types: frozenset[str], negated: bool, iface_field: str) -> Cond:
    """LOCAL on one interface (--limit-iface-in/out): an address the node does not own is on none of
    its interfaces; one it owns counts only on its own interface, which kpa knows for loopback."""
    loopback = {4: network_set(ipaddress.ip_network("127.0.0.0/8")), 6: IntSet.single(1)}

    def test(st: State, ctx: TraceContext) -> Split:
        local = ctx.is_local(st.version)
        yes, no = st.restrict(field, local)
        hit: list[State] = []
        miss: list[State] = [no] if no is not None else []
        if yes is not None:
            lo_addr, other = yes.restrict(field, loopback[st.version])
            for s, on_lo in ((lo_addr, True), (other, False)):
                if s is None:
                    continue
                if on_lo:
                    a, b = s.restrict_name(iface_field, "lo", False)
                    hit.extend([a] if a is not None else [])
                    miss.extend([b] if b is not None else [])
                    continue
                y, n = both_ways(s, ctx, "-m addrtype", "which interface holds the node's address is not known",
                                 negated)
                hit.append(y)
                miss.append(n)
        return hit, miss
    return FnCond(test, negated)


@match("addrtype")
def parse_addrtype(opts: list[Option], ctx: ParseCtx) -> Match:
    limit = None
    for o in opts:
        if o.name in ("--limit-iface-in", "--limit-iface-out"):
            limit = "iif" if o.name == "--limit-iface-in" else "oif"
    conds: list[Cond] = []
    for o in opts:
        if o.name in ("--src-type", "--dst-type"):
            field = "src" if o.name == "--src-type" else "dst"
            types = _types(o.arg())
            if limit is None:
                conds.append(_cond(field, types, o.negated))
            elif types == frozenset({"LOCAL"}):
                conds.append(_limited_cond(field, types, o.negated, limit))
            else:
                raise Unsupported(f"addrtype {','.join(sorted(types))} on one interface needs its routes")
        elif o.name in ("--limit-iface-in", "--limit-iface-out"):
            continue
        else:
            raise Unsupported(f"addrtype option {o.name} is not modelled")
    return Match(name="addrtype", options=opts, conds=conds)
