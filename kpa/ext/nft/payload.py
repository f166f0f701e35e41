"""payload (nft_payload): header fields such as `ip daddr`, `tcp dport`, `th dport`.

A header field only exists when its header does: nft guards `tcp dport` with
`meta l4proto tcp` and, in inet/bridge/netdev tables, `ip daddr` with
`meta nfproto ipv4`. kpa keeps that guard apart from the comparison, so a
negated test (`ip saddr != 10.0.0.0/8`) never matches an IPv6 packet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kpa.ext.base import Cond, IntCond, Split, both_ways, parts
from kpa.ext.nft.base import Key, UnmodelledKey, Value, ValueError_, union
from kpa.netfilter.domain import IntSet
from kpa.netfilter.packet import State, TraceContext, parse_mac

PORT_PROTOCOLS = IntSet.of((6, 6), (17, 17), (33, 33), (132, 132), (136, 136))
L4 = {"tcp": 6, "udp": 17, "sctp": 132, "udplite": 136, "dccp": 33}

# (protocol, field) -> (state field, datatype, IP version or None, l4 protocols or None)
FIELDS: dict[tuple[str, str], tuple[str, str, int | None, IntSet | None]] = {
    ("ip", "saddr"): ("src", "ipv4_addr", 4, None),
    ("ip", "daddr"): ("dst", "ipv4_addr", 4, None),
    ("ip", "protocol"): ("proto", "inet_proto", 4, None),
    ("ip6", "saddr"): ("src", "ipv6_addr", 6, None),
    ("ip6", "daddr"): ("dst", "ipv6_addr", 6, None),
    ("ip6", "nexthdr"): ("proto", "inet_proto", 6, None),
    ("th", "sport"): ("sport", "inet_service", None, PORT_PROTOCOLS),
    ("th", "dport"): ("dport", "inet_service", None, PORT_PROTOCOLS),
    ("icmp", "type"): ("icmp_type", "icmp_type", 4, IntSet.single(1)),
    ("icmpv6", "type"): ("icmp_type", "icmpv6_type", 6, IntSet.single(58)),
}
for _proto, _num in L4.items():
    FIELDS[(_proto, "sport")] = ("sport", "inet_service", None, IntSet.single(_num))
    FIELDS[(_proto, "dport")] = ("dport", "inet_service", None, IntSet.single(_num))


@dataclass(eq=False)
class FieldKey(Key):
    """A header field kpa tracks as a packet domain."""

    field: str = ""
    version: int | None = None  # None: the table's family already implies it
    protocols: IntSet | None = None

    def state_field(self) -> str | None:
        return self.field

    def needs_guard(self) -> bool:
        return self.version is not None or self.protocols is not None

    def guard(self, st: State, ctx: TraceContext) -> Split:
        if self.version is not None and st.version != self.version:
            return [], [st]
        if self.protocols is None:
            return [st], []
        return parts(*st.restrict("proto", self.protocols))

    def test(self, st: State, ctx: TraceContext, values: Sequence[Value]) -> Split:
        return parts(*st.restrict(self.field, union(values)))

    def cond(self, values: Sequence[Value], negated: bool = False) -> Cond:
        # A plain IntCond lets kpa.netfilter.index see pinned destinations.
        return IntCond(self.field, union(values), negated)


@dataclass(eq=False)
class EtherSrcKey(FieldKey):
    """`ether saddr`: the Ethernet source of a received packet (kpa trace --src-mac), as `-m mac`.

    nft puts `meta iiftype ether` in front of it, so a packet looped back over lo never matches.
    """

    def needs_guard(self) -> bool:
        return True

    def guard(self, st: State, ctx: TraceContext) -> Split:
        return ([], [st]) if st.local_origin else ([st], [])

    def parse(self, raw: Any) -> Value:
        try:
            return IntSet.single(parse_mac(str(raw)))
        except ValueError as exc:
            raise ValueError_(str(exc)) from None


def payload_key(protocol: str, fld: str, family: str) -> FieldKey:
    """The key for `PROTOCOL FIELD` in a table of `family` (ip, ip6, inet, ...)."""
    if (protocol, fld) == ("ether", "saddr"):
        return EtherSrcKey(field="mac", dtype="ether_addr", text="ether saddr")
    spec = FIELDS.get((protocol, fld))
    if spec is None:
        raise UnmodelledKey(f"payload {protocol} {fld} is not modelled")
    state_field, dtype, version, protos = spec
    # In an ip or ip6 table every packet has that network header already.
    if family in ("ip", "ip6") and version is not None and (version == 6) == (family == "ip6"):
        version = None
    elif family in ("ip", "ip6") and version is not None:
        # An ip table never sees IPv6 packets, so the field never exists.
        version = 6 if family == "ip" else 4
    return FieldKey(field=state_field, dtype=dtype, text=f"{protocol} {fld}", version=version, protocols=protos)


# Raw payload `@BASE,OFFSET,LEN` that lands exactly on a field kpa tracks:
# (base, bit offset, bit length) -> {IP version: state field}. nft itself lists
# `@th,0,16` / `@th,16,16` as `th sport` / `th dport`; the network header ones
# stay raw (`@nh,96,32` is the IPv4 source, but bytes of the address in IPv6).
RAW_FIELDS: dict[tuple[str, int, int], dict[int, str]] = {
    ("nh", 96, 32): {4: "src"}, ("nh", 128, 32): {4: "dst"}, ("nh", 72, 8): {4: "proto"},
    ("nh", 64, 128): {6: "src"}, ("nh", 192, 128): {6: "dst"}, ("nh", 48, 8): {6: "proto"},
    ("th", 0, 16): {4: "sport", 6: "sport"}, ("th", 16, 16): {4: "dport", 6: "dport"},
}


@dataclass(eq=False)
class RawPayloadKey(Key):
    """`@nh,96,32` and the like: a field kpa knows where the packet's headers put it there.

    nft adds no dependency to raw payload: a packet whose headers put other bytes
    there (an IPv6 packet under an IPv4 offset, an ICMP packet under `@th,16,16`)
    is compared byte for byte with values kpa does not know, so that part of the
    state is unknown both ways, never assumed.
    """

    base: str = "nh"
    offset: int = 0
    length: int = 0

    def __post_init__(self) -> None:
        self.dtype = "integer"
        self.text = f"@{self.base},{self.offset},{self.length}"

    def parse(self, raw: Any) -> Value:
        value = super().parse(raw)
        if isinstance(value, IntSet) and value and value.spans[-1][1] >= 1 << self.length:
            raise ValueError_(f"expected a value of at most {self.length} bits for {self.text}, found {raw!r}")
        return value

    def _unknown(self, st: State, ctx: TraceContext, why: str) -> Split:
        yes, no = both_ways(st, ctx, self.text, why)
        return [yes], [no]

    def test(self, st: State, ctx: TraceContext, values: Sequence[Value]) -> Split:
        fld = RAW_FIELDS.get((self.base, self.offset, self.length), {}).get(st.version)
        if fld is None:
            return self._unknown(st, ctx, f"{self.text} reads other bytes than a known field in an IPv{st.version} packet")
        if self.base != "th":
            return parts(*st.restrict(fld, union(values)))
        ported, other = st.restrict("proto", PORT_PROTOCOLS)
        yes: list[State] = []
        no: list[State] = []
        if ported is not None:
            y, n = ported.restrict(fld, union(values))
            yes += [y] if y is not None else []
            no += [n] if n is not None else []
        if other is not None:
            oy, on = self._unknown(other, ctx, f"{self.text} of a protocol without ports is not modelled")
            yes += oy
            no += on
        return yes, no


def raw_payload_key(base: str, offset: int, length: int) -> RawPayloadKey:
    if (base, offset, length) not in RAW_FIELDS:
        raise UnmodelledKey(f"raw payload @{base},{offset},{length} is not a field kpa knows")
    return RawPayloadKey(base=base, offset=offset, length=length)


@dataclass(eq=False)
class MaskedFieldKey(FieldKey):
    """`ip saddr & 255.255.0.0 == 10.1.0.0`: an address under a prefix mask (nft lists it as a prefix).

    (addr & mask) == v holds for exactly the addresses of v's prefix when v has no bit
    outside the mask, and for none when it has; other masks are not modelled.
    """

    mask: int = 0
    width: int = 32

    def validate(self, values: Sequence[Value]) -> None:
        if not all(isinstance(v, IntSet) and v.single_value() is not None for v in values):
            raise UnmodelledKey(f"{self.text} compared with a range or prefix is not modelled")

    def _widen(self, values: Sequence[Value]) -> IntSet:
        host = ((1 << self.width) - 1) ^ self.mask
        out = IntSet()
        for v in values:
            x = v.single_value() if isinstance(v, IntSet) else None
            if x is not None and not x & host:
                out = out | IntSet.range(x, x | host)
        return out

    def test(self, st: State, ctx: TraceContext, values: Sequence[Value]) -> Split:
        return parts(*st.restrict(self.field, self._widen(values)))

    def cond(self, values: Sequence[Value], negated: bool = False) -> Cond:
        return IntCond(self.field, self._widen(values), negated)


def masked_field_key(inner: FieldKey, mask: int) -> MaskedFieldKey:
    width = 32 if inner.dtype == "ipv4_addr" else 128
    host = ((1 << width) - 1) ^ mask
    if inner.field not in ("src", "dst") or mask >> width or host & (host + 1):
        raise UnmodelledKey(f"{inner.text} & {mask:#x} (not a prefix mask) is not modelled")
    return MaskedFieldKey(field=inner.field, dtype=inner.dtype, text=f"{inner.text} & mask", version=inner.version,
                          protocols=inner.protocols, mask=mask, width=width)
