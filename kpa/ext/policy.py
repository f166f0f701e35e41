"""policy (xt_policy): whether a packet was (in) or will be (out) handled by IPsec.

The kernel (net/netfilter/xt_policy.c) looks at the packet's security path
(`--dir in`) or its xfrm bundle (`--dir out`). Without IPsec there is neither,
and the match holds exactly for `--pol none`. kpa assumes a node with no IPsec
policy, which is what Kubernetes nodes without an IPsec CNI have, and says so;
`kpa trace --ipsec` states that packets are IPsec-protected instead. Then
`--pol none` does not match, and `--pol ipsec` matches when it names no
policy element to compare (SPI, protocol, mode, addresses, reqid), and is
unknown when it does.
"""

from __future__ import annotations

from kpa.ext.base import (
    FnCond,
    Match,
    Option,
    OptionError,
    ParseCtx,
    Split,
    Unsupported,
    both_ways,
    match,
)
from kpa.netfilter.packet import State, TraceContext

ELEMENT_OPTIONS = {"--reqid", "--spi", "--proto", "--mode", "--tunnel-src", "--tunnel-dst", "--strict", "--next"}
NO_IPSEC = "no IPsec policy on the node (assumed; kpa trace --ipsec says otherwise)"


@match("policy")
def parse_policy(opts: list[Option], ctx: ParseCtx) -> Match:
    pol = None
    elements = False
    for o in opts:
        if o.name == "--dir":
            if o.arg() not in ("in", "out"):
                raise OptionError(f"expected --dir in|out, found {o.arg()!r}")
        elif o.name == "--pol":
            pol = o.arg()
            if pol not in ("none", "ipsec"):
                raise OptionError(f"expected --pol none|ipsec, found {pol!r}")
        elif o.name in ELEMENT_OPTIONS:
            elements = True
        else:
            raise Unsupported(f"policy option {o.name} is not modelled")
    if pol is None:
        raise OptionError("policy expects --pol none|ipsec")

    def test(st: State, c: TraceContext) -> Split:
        if not c.ipsec:
            return ([st.note(NO_IPSEC)], []) if pol == "none" else ([], [st.note(NO_IPSEC)])
        if pol == "none":
            return [], [st]
        if not elements:
            return [st], []
        yes, no = both_ways(st, c, "-m policy", "which IPsec policy element protects the packet is not known")
        return [yes], [no]

    return Match(name="policy", options=opts, conds=[FnCond(test)])
