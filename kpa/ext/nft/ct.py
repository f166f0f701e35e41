"""ct (nft_ct): the packet's connection: state, status, mark, original/reply tuples.

`ct status dnat` holds once kpa has applied DNAT to the connection (the
first packet's walk through nat), `snat` after SNAT or masquerade. The
original tuple is the packet before any NAT, which is exactly the packet
kpa's domains describe; the reply tuple swaps in the NAT'd addresses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kpa.ext.base import Split, parts
from kpa.ext.conntrack import state_cond
from kpa.ext.nft.base import Key, UnmodelledKey, Value, ValueError_, names, union
from kpa.ext.nft.meta import MarkKey
from kpa.netfilter.packet import Assumption, State, TraceContext

STATES = {"new", "established", "related", "invalid", "untracked"}


@dataclass(eq=False)
class CtStateKey(Key):
    def __post_init__(self) -> None:
        self.dtype, self.text = "ct_state", "ct state"

    def validate(self, values: Sequence[Value]) -> None:
        bad = [w for w in names(values) if w.lower() not in STATES]
        if bad:
            raise ValueError_(f"expected a ct state ({', '.join(sorted(STATES))}), found {bad[0]!r}")

    def test(self, st: State, ctx: TraceContext, values: Sequence[Value]) -> Split:
        wanted = names(values)
        return state_cond(frozenset(w.upper() for w in wanted), False).split(st, ctx)


@dataclass(eq=False)
class CtStatusKey(Key):
    def __post_init__(self) -> None:
        self.dtype, self.text = "ct_status", "ct status"

    def test(self, st: State, ctx: TraceContext, values: Sequence[Value]) -> Split:
        wanted = {w.lower() for w in names(values)}
        hit = ("dnat" in wanted and st.dnat is not None) or (
            "snat" in wanted and (st.snat is not None or st.masquerade))
        return ([st], []) if hit else ([], [st])


@dataclass(eq=False)
class CtDirectionKey(Key):
    def __post_init__(self) -> None:
        self.dtype, self.text = "ct_dir", "ct direction"

    def test(self, st: State, ctx: TraceContext, values: Sequence[Value]) -> Split:
        # Traced packets travel in the connection's original direction.
        return ([st], []) if "original" in names(values) else ([], [st])


@dataclass(eq=False)
class CtTupleKey(Key):
    """`ct original|reply ip saddr|daddr`, `proto-src`, `proto-dst`, `protocol`."""

    field: str = "dst"
    reply: bool = False

    def test(self, st: State, ctx: TraceContext, values: Sequence[Value]) -> Split:
        allowed = union(values)
        if self.reply:
            # The reply travels from the (translated) destination back to the source.
            swapped = {"src": "dst", "dst": "src", "sport": "dport", "dport": "sport"}.get(self.field, self.field)
            if self.field in ("dst", "dport") and st.masquerade:
                st = st.note("ct reply daddr after masquerade: taken as the original source")
            return parts(*st.restrict(swapped, allowed))
        dom = st.original(self.field)
        yes, no = dom & allowed, dom - allowed
        return ([st.with_domain(self.field, yes)] if yes else []), ([st.with_domain(self.field, no)] if no else [])


@dataclass(eq=False)
class CtLabelKey(Key):
    """`ct label N`: a bit of the connection's labels.

    The first packet of a connection (ct state new) meets no label: a conntrack entry
    starts with none, and only `ct label set` (or a program through ctnetlink or a
    queue verdict) sets them. For other packets the labels are not in kpa's state.
    """

    def __post_init__(self) -> None:
        self.dtype, self.text = "integer", "ct label"

    def test(self, st: State, ctx: TraceContext, values: Sequence[Value]) -> Split:
        new, other = st.restrict_ctstate(frozenset({"NEW"}))
        if new is not None and any("ct label set" in h.text for h in new.path):
            other, new = new if other is None else other, None
        yes: list[State] = []
        no: list[State] = [new] if new is not None else []
        if other is not None:
            rule = ctx.rule
            why = "ct label of an existing connection is not in kpa's state"
            text = rule.text if rule else self.text
            loc = rule.location if rule else None
            yes.append(other.assume(Assumption(loc, text, why, True)))
            no.append(other.assume(Assumption(loc, text, why, False)))
        return yes, no


TUPLE_FIELDS = {"saddr": "src", "daddr": "dst", "ip saddr": "src", "ip daddr": "dst", "ip6 saddr": "src",
                "ip6 daddr": "dst", "proto-src": "sport", "proto-dst": "dport", "protocol": "proto"}


def ct_key(key: str, direction: str | None, family: str) -> Key:
    if key == "state":
        return CtStateKey()
    if key == "status":
        return CtStatusKey()
    if key == "mark":
        return MarkKey(ct=True)
    if key == "direction":
        return CtDirectionKey()
    if key == "label":
        return CtLabelKey()
    if key in ("l3proto",):
        raise UnmodelledKey("ct l3proto is not modelled")
    fld = TUPLE_FIELDS.get(key)
    if fld is None:
        raise UnmodelledKey(f"ct {key} is not modelled")
    if fld in ("src", "dst"):
        dtype = "ipv6_addr" if key.startswith("ip6") or family == "ip6" else "ipv4_addr"
    else:
        dtype = "inet_proto" if fld == "proto" else "inet_service"
    where = f"{direction} " if direction else ""
    return CtTupleKey(dtype=dtype, text=f"ct {where}{key}", field=fld, reply=direction == "reply")
