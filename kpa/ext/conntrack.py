"""conntrack and state (xt_conntrack, xt_state).

A traced packet's connection state is a field like any other: NEW by
default, or what the user gives, or open. The virtual states SNAT and DNAT
hold once kpa has applied that kind of NAT to the connection.
"""

from __future__ import annotations

from collections.abc import Callable

from kpa.ext.base import (
    Cond,
    FnCond,
    IntCond,
    Match,
    Option,
    OptionError,
    ParseCtx,
    PredCond,
    Split,
    Unsupported,
    match,
    parse_networks,
    parse_port_range,
    parts,
)
from kpa.netfilter.domain import IntSet
from kpa.netfilter.packet import CT_STATES, State, TraceContext
from kpa.netfilter.protocols import iptables_protocol


def _states(text: str) -> frozenset[str]:
    states = frozenset(s.strip().upper() for s in text.split(","))
    bad = states - CT_STATES
    if bad:
        raise OptionError(f"expected conntrack states among {','.join(sorted(CT_STATES))}, found {','.join(sorted(bad))}")
    return states


def state_cond(states: frozenset[str], negated: bool) -> Cond:
    real = states & frozenset({"NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED"})
    want_snat, want_dnat = "SNAT" in states, "DNAT" in states

    def test(st: State, ctx: TraceContext) -> Split:
        yes, no = st.restrict_ctstate(real)
        if no is not None and ((want_dnat and st.dnat) or (want_snat and (st.snat or st.masquerade))):
            return ([x for x in (yes, no) if x is not None], [])
        return parts(yes, no)
    return FnCond(test, negated)


def _orig_cond(field: str, values: IntSet, negated: bool) -> Cond:
    # The original tuple is the packet as it was before any NAT.
    def test(st: State, ctx: TraceContext) -> Split:
        dom = st.original(field)
        yes, no = dom & values, dom - values
        return ([st.with_domain(field, yes)] if yes else []), ([st.with_domain(field, no)] if no else [])
    return FnCond(test, negated)


def _const(value: bool) -> Callable[[State, TraceContext], bool]:
    return lambda st, ctx: value


@match("conntrack")
def parse_conntrack(opts: list[Option], ctx: ParseCtx) -> Match:
    conds: list[Cond] = []
    for o in opts:
        if o.name == "--ctstate":
            conds.append(state_cond(_states(o.arg()), o.negated))
        elif o.name == "--ctorigsrc":
            conds.append(_orig_cond("src", parse_networks(o.arg(), ctx.family), o.negated))
        elif o.name == "--ctorigdst":
            conds.append(_orig_cond("dst", parse_networks(o.arg(), ctx.family), o.negated))
        elif o.name == "--ctorigsrcport":
            conds.append(_orig_cond("sport", parse_port_range(o.arg()), o.negated))
        elif o.name == "--ctorigdstport":
            conds.append(_orig_cond("dport", parse_port_range(o.arg()), o.negated))
        elif o.name == "--ctproto":
            try:
                number = iptables_protocol(o.arg())
            except ValueError as exc:
                raise OptionError(f"expected a protocol, found {o.arg()!r}") from exc
            conds.append(IntCond("proto", IntSet.single(number), o.negated))
        elif o.name == "--ctdir":
            # Traced packets travel in the original direction.
            original = o.arg().upper() == "ORIGINAL"
            conds.append(PredCond(_const(original), o.negated))
        else:
            raise Unsupported(f"conntrack option {o.name} is not modelled")
    return Match(name="conntrack", options=opts, conds=conds)


@match("state")
def parse_state(opts: list[Option], ctx: ParseCtx) -> Match:
    if len(opts) != 1 or opts[0].name != "--state":
        raise OptionError("state expects --state STATES")
    return Match(name="state", options=opts, conds=[state_cond(_states(opts[0].arg()), opts[0].negated)])
