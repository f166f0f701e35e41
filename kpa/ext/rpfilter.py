"""rpfilter (xt_rpfilter): reverse-path filtering of a received packet's source.

The kernel (net/ipv4/netfilter/ipt_rpfilter.c, ip6t_rpfilter.c) looks up the
route back to the source address, as if replying from the input interface:

* a packet from the loopback interface always passes;
* IPv4 source 0.0.0.0 passes when sent to broadcast or link-local multicast;
* the route must be unicast: a source that is one of the node's own addresses
  passes only with --accept-local, multicast and broadcast sources never;
* in strict mode the route must leave through the input interface; --loose
  accepts any route.

kpa knows the node's addresses; routes come from `kpa trace --route CIDR[=IFACE]`
(a pod's /32 through its veth, the pod CIDRs, a default route) and, with
cluster objects, from every Node's pod CIDRs and addresses and every Pod's
address (kpa.k8s.routes; no interface). A source no known route covers is
unknown, as is strict mode where the route's interface is not known. --validmark (the mark in the lookup) matters only with policy
routing, which kpa does not model; it is noted. `--invert` turns the result
around.
"""

from __future__ import annotations

import ipaddress

from kpa.ext.base import FnCond, Match, Option, ParseCtx, Split, Unsupported, both_ways, match
from kpa.netfilter.domain import IntSet, network_set
from kpa.netfilter.packet import State, TraceContext

OPTIONS = {"--loose", "--validmark", "--accept-local", "--invert"}
SPECIAL = {
    4: [network_set(ipaddress.ip_network(n)) for n in ("224.0.0.0/4", "255.255.255.255/32", "0.0.0.0/8")],
    6: [network_set(ipaddress.ip_network("ff00::/8"))],
}


def _route_for(ctx: TraceContext, version: int, src: int) -> tuple[bool, str | None]:
    """(a stated route covers src, its interface) for the longest stated prefix."""
    best: tuple[int, str | None] | None = None
    for prefix, iface in ctx.routes.get(version, []):
        if src in prefix:
            size = prefix.size()
            if best is None or size < best[0]:
                best = (size, iface)
    return (best is not None, best[1] if best else None)


@match("rpfilter")
def parse_rpfilter(opts: list[Option], ctx: ParseCtx) -> Match:
    names = {o.name for o in opts}
    if names - OPTIONS:
        raise Unsupported(f"rpfilter option {sorted(names - OPTIONS)[0]} is not modelled")
    loose, accept_local, invert = "--loose" in names, "--accept-local" in names, "--invert" in names

    def passes(st: State, ctx: TraceContext) -> list[tuple[State, bool]]:
        """Split on the reverse-path check itself (before --invert)."""
        out: list[tuple[State, bool]] = []
        rest: list[State] = []
        no_iface: list[State] = []
        yes, no = st.restrict_name("iif", "lo", False)
        if yes is not None:
            out.append((yes, True))
        if no is None:
            return out
        v = no.version
        local, not_local = no.restrict("src", ctx.is_local(v))
        if local is not None:
            if not accept_local:
                out.append((local, False))
            elif loose:
                out.append((local, True))
            else:
                rest.append(local)
        if not_local is not None:
            special = IntSet()
            for net in SPECIAL[v]:
                special = special | net
            bad, ordinary = not_local.restrict("src", special)
            if bad is not None:
                # 0.0.0.0 passes when sent to broadcast or link-local multicast (left unknown); others fail.
                zero, other = bad.restrict("src", IntSet.single(0)) if v == 4 else (None, bad)
                if zero is not None:
                    rest.append(zero)
                if other is not None:
                    out.append((other, False))
            if ordinary is not None:
                src = ordinary.concrete("src")
                if src is None:
                    rest.append(ordinary)
                else:
                    covered, iface = _route_for(ctx, v, src)
                    if not covered:
                        rest.append(ordinary)
                    elif loose:
                        out.append((ordinary, True))
                    elif iface is None:
                        no_iface.append(ordinary)
                    else:
                        same, other_if = ordinary.restrict_name("iif", iface, False)
                        if same is not None:
                            out.append((same, True))
                        if other_if is not None:
                            out.append((other_if, False))
        for s in rest:
            why = "the route back to the source is not known (kpa trace --route CIDR=IFACE states routes)"
            yes, no = both_ways(s, ctx, "-m rpfilter", why, invert)
            out.extend([(yes, True), (no, False)])
        for s in no_iface:
            why = ("a route back to the source exists, but not which interface it leaves through "
                   "(kpa trace --route CIDR=IFACE states it)")
            yes, no = both_ways(s, ctx, "-m rpfilter", why, invert)
            out.extend([(yes, True), (no, False)])
        return out

    def test(st: State, ctx: TraceContext) -> Split:
        yes: list[State] = []
        no: list[State] = []
        for s, ok in passes(st, ctx):
            (yes if ok != invert else no).append(s)
        return yes, no

    return Match(name="rpfilter", options=opts, conds=[FnCond(test)])
