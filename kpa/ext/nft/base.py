"""Shared pieces of the nftables expressions: keys, values, the match expression.

An nft rule compares a *key* (a payload field, a meta or ct key, a fib
result, a random number, or a concatenation of these) with constants, sets
and maps. Each expression family module defines its keys; this module holds
what they share: typed constant parsing, the generic match, and splitting a
state over the elements of a set or map.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from socket import inet_aton as _inet_aton
from socket import inet_ntoa as _inet_ntoa
from typing import Any

from kpa.ext.base import Cond, FnCond, Match, Split, conjunction
from kpa.netfilter.domain import IntSet, network_set
from kpa.netfilter.model import Expr, Flow, Step
from kpa.netfilter.packet import State, TraceContext
from kpa.netfilter.protocols import BadNumber, c_uint, nft_protocol

# One part of a set element or constant, in its key's datatype: integers
# (addresses, ports, marks, protocol numbers) as IntSet, symbols as str.
Value = IntSet | str
# A set element: one Value per concatenated key part.
Element = tuple[Value, ...]


class ValueError_(ValueError):
    """A constant that does not fit its key's datatype."""


@dataclass(eq=False)
class Key:
    """The left side of an nft comparison, lookup or map."""

    dtype: str = "integer"
    text: str = ""

    # nft adds a dependency (`meta nfproto ipv4`, `meta l4proto tcp`) in front
    # of header fields; a packet without that header never matches, even `!=`.
    def guard(self, st: State, ctx: TraceContext) -> Split:
        return [st], []

    def needs_guard(self) -> bool:
        return False

    def validate(self, values: Sequence[Value]) -> None:
        """Reject constants this key cannot take (raises ValueError_ or UnmodelledKey)."""

    def state_field(self) -> str | None:
        """The packet domain this key reads directly, if it is one."""
        return None

    def test(self, st: State, ctx: TraceContext, values: Sequence[Value]) -> Split:
        """Split a guarded state on `key is one of values`."""
        raise NotImplementedError

    def cond(self, values: Sequence[Value], negated: bool = False) -> Cond:
        return FnCond(lambda s, c: self.test(s, c, values), negated)

    def parse(self, raw: Any) -> Value:
        return parse_value(self.dtype, raw)

    def partition(self, st: State, ctx: TraceContext, elements: Sequence[Element]) -> list[tuple[int | None, State]]:
        """Split a state over a map's elements: (element index, state), None for no element.

        Elements of an nft set never overlap, so testing them in turn and
        carrying the rest on is exact.
        """
        out: list[tuple[int | None, State]] = []
        rest = [st]
        for i, el in enumerate(elements):
            nxt: list[State] = []
            for s in rest:
                yes, no = self.test(s, ctx, self.element_values(el))
                out.extend((i, y) for y in yes)
                nxt.extend(no)
            rest = nxt
            if not rest:
                break
        out.extend((None, s) for s in rest)
        return out

    @property
    def parts(self) -> int:
        return 1

    def element_values(self, el: Element) -> list[Any]:
        # A plain key compares with the element's one part, a concatenation with the tuple.
        return [el[0]] if self.parts == 1 else [el]


class UnmodelledKey(Exception):
    """A key kpa parses but does not evaluate; the expression becomes unknown."""


@dataclass(eq=False)
class NftMatch(Match):
    """`KEY [op] VALUES`: a Match whose conditions come from a key."""

    key: Key | None = None
    text: str = ""

    def render(self) -> list[str]:
        return self.text.split()


def key_match(key: Key, values: Sequence[Value], negated: bool, text: str, name: str = "") -> list[Expr]:
    """The expressions for one comparison: the key's header guard, then the test."""
    key.validate(values)
    out: list[Expr] = []
    if key.needs_guard():
        out.append(GuardExpr(key=key))
    field = key.state_field()
    # Header fields are named after their state field (as iptables' -s/-d are)
    # so the destination index recognises `ip daddr ADDR`.
    out.append(NftMatch(name=name or field or key.text, conds=[key.cond(values, negated)],
                        implicit=field is not None, key=key, text=text))
    return out


@dataclass(eq=False)
class GuardExpr(Expr):
    """The implicit protocol dependency nft puts before a header match."""

    key: Key = field(default_factory=Key)

    def __post_init__(self) -> None:
        self.name = "dependency"

    def step(self, st: State, ctx: TraceContext) -> Iterable[Step]:
        yes, no = self.key.guard(st, ctx)
        for s in yes:
            yield s, Flow.CONTINUE
        for s in no:
            yield s, Flow.NO_MATCH

    def render(self) -> list[str]:
        return []

    def describe(self) -> str:
        return f"({self.key.text} needs its header)"


@dataclass(eq=False)
class ConcatKey(Key):
    """`a . b . c`: one value per part; an element matches when every part does."""

    keys: list[Key] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.text = " . ".join(k.text for k in self.keys)
        self.dtype = " . ".join(k.dtype for k in self.keys)

    @property
    def parts(self) -> int:
        return len(self.keys)

    def needs_guard(self) -> bool:
        return any(k.needs_guard() for k in self.keys)

    def guard(self, st: State, ctx: TraceContext) -> Split:
        conds: list[Cond] = [FnCond(k.guard) for k in self.keys if k.needs_guard()]
        return conjunction(conds, st, ctx)

    def test(self, st: State, ctx: TraceContext, values: Sequence[Value]) -> Split:
        yes_all: list[State] = []
        rest = [st]
        for el in values:
            assert isinstance(el, tuple)
            nxt: list[State] = []
            for s in rest:
                conds = [k.cond([v]) for k, v in zip(self.keys, el, strict=True)]
                yes, no = conjunction(conds, s, ctx)
                yes_all.extend(yes)
                nxt.extend(no)
            rest = nxt
        return yes_all, rest


# -- constants ------------------------------------------------------------

ICMP_TYPES = {
    "echo-reply": 0, "destination-unreachable": 3, "source-quench": 4, "redirect": 5, "echo-request": 8,
    "router-advertisement": 9, "router-solicitation": 10, "time-exceeded": 11, "parameter-problem": 12,
    "timestamp-request": 13, "timestamp-reply": 14, "info-request": 15, "info-reply": 16,
    "address-mask-request": 17, "address-mask-reply": 18,
}
ICMPV6_TYPES = {
    "destination-unreachable": 1, "packet-too-big": 2, "time-exceeded": 3, "parameter-problem": 4,
    "echo-request": 128, "echo-reply": 129, "mld-listener-query": 130, "mld-listener-report": 131,
    "mld-listener-done": 132, "mld-listener-reduction": 132, "nd-router-solicit": 133, "nd-router-advert": 134,
    "nd-neighbor-solicit": 135, "nd-neighbor-advert": 136, "nd-redirect": 137, "router-renumbering": 138,
    "ind-neighbor-solicit": 141, "ind-neighbor-advert": 142, "mld2-listener-report": 143,
}
NFPROTO = {"ipv4": 2, "ipv6": 10}
ETHER_TYPES = {"ip": 0x0800, "ip6": 0x86DD, "arp": 0x0806, "vlan": 0x8100}
INTEGER_TYPES = {"integer", "mark", "inet_service", "inet_proto", "ipv4_addr", "ipv6_addr", "icmp_type",
                 "icmpv6_type", "nf_proto", "ether_type", "ct_mark", "u32", "ifindex", "iface_index"}
# A bare `integer` is as wide as its key: raw payload such as `@nh,64,128` (an IPv6 address) is 128 bits.
BITS = {"mark": 32, "ct_mark": 32, "u32": 32, "ifindex": 32, "iface_index": 32, "integer": 128,
        "ipv4_addr": 32, "ipv6_addr": 128, "inet_service": 16, "inet_proto": 8, "icmp_type": 8,
        "icmpv6_type": 8, "nf_proto": 8, "ether_type": 16}


def _int(text: str, bits: int = 128) -> int:
    # nft's scanner reads numbers with strtoull(s, NULL, 0): decimal, 0x hex, 0-prefixed octal.
    try:
        return c_uint(text, (1 << bits) - 1)
    except BadNumber:
        raise ValueError_(f"expected a number of at most {bits} bits, found {text!r}") from None


def _address(dtype: str, text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    addr = ipaddress.ip_address(text)
    if (addr.version == 6) != (dtype == "ipv6_addr"):
        raise ValueError_(f"expected an IPv{6 if dtype == 'ipv6_addr' else 4} address, found {text!r}")
    return addr


def _network(dtype: str, text: str) -> IntSet:
    net = ipaddress.ip_network(text, strict=False)
    if dtype in ("ipv4_addr", "ipv6_addr") and (net.version == 6) != (dtype == "ipv6_addr"):
        raise ValueError_(f"expected an IPv{6 if dtype == 'ipv6_addr' else 4} network, found {text!r}")
    return network_set(net)


def _dotted_quad(text: str) -> int | None:
    """A canonical dotted quad (what nft prints) as an integer; None for anything else. The C parser takes
    more spellings than that (octal, hex, fewer parts, anything after a blank), so only a text that is what
    the C formatter writes back for its address is one."""
    try:
        packed = _inet_aton(text)
    except (OSError, ValueError, UnicodeError):
        return None
    return int.from_bytes(packed, "big") if _inet_ntoa(packed) == text else None


def _scalar(dtype: str, text: str) -> int:
    if dtype == "ipv4_addr":
        fast = _dotted_quad(text)
        if fast is not None:
            return fast
    if dtype in ("ipv4_addr", "ipv6_addr"):
        return int(_address(dtype, text))
    if dtype == "inet_service":
        if text[:1].isdigit():
            try:
                return c_uint(text, 65535)
            except BadNumber:
                raise ValueError_(f"expected a port 0-65535, found {text!r}") from None
        import socket
        try:
            return socket.getservbyname(text)
        except (OSError, UnicodeError, ValueError):
            raise ValueError_(f"expected a port, found {text!r}") from None
    if dtype == "inet_proto":
        try:
            return nft_protocol(text)
        except ValueError:
            raise ValueError_(f"expected a protocol name or number 0-255, found {text!r}") from None
    if dtype == "icmp_type":
        return ICMP_TYPES[text] if text in ICMP_TYPES else _int(text, 8)
    if dtype == "icmpv6_type":
        return ICMPV6_TYPES[text] if text in ICMPV6_TYPES else _int(text, 8)
    if dtype == "nf_proto":
        return NFPROTO[text] if text in NFPROTO else _int(text, 8)
    if dtype == "ether_type":
        return ETHER_TYPES[text] if text in ETHER_TYPES else _int(text, 16)
    return _int(text, BITS.get(dtype, 64))


def fmt_range(lo: Any, hi: Any) -> str:
    return f"{str(lo)[:40]}-{str(hi)[:40]}"


def parse_value(dtype: str, raw: Any) -> Value:
    """One constant (number, name, range, prefix) as a Value of `dtype`."""
    try:
        if dtype not in INTEGER_TYPES:
            if isinstance(raw, dict):
                raise ValueError_(f"expected a {dtype} value, found {raw!r}")
            return str(raw)
        if isinstance(raw, bool):
            raise ValueError_(f"expected a {dtype} value, found {raw!r}")
        if isinstance(raw, int):
            if not 0 <= raw < 1 << BITS.get(dtype, 64):
                raise ValueError_(f"expected a {dtype} value of at most {BITS.get(dtype, 64)} bits, found {raw}")
            return IntSet.single(raw)
        if isinstance(raw, dict):
            if "prefix" in raw:
                p = raw["prefix"]
                return _network(dtype, f"{p['addr']}/{p['len']}")
            if "range" in raw:
                lo, hi = raw["range"]
                a, b = parse_value(dtype, lo), parse_value(dtype, hi)
                assert isinstance(a, IntSet) and isinstance(b, IntSet)
                if a.min() > b.spans[-1][1]:
                    raise ValueError_(f"expected a range low-high, found {fmt_range(lo, hi)!r}")
                return IntSet.range(a.min(), b.spans[-1][1])
            raise ValueError_(f"expected a {dtype} value, found {raw!r}")
        text = str(raw)
        if dtype in ("ipv4_addr", "ipv6_addr") and "/" in text:
            return _network(dtype, text)
        if "-" in text[1:]:
            # Names may contain '-' (ipv6-icmp, echo-request): only a failed name is a range.
            try:
                return IntSet.single(_scalar(dtype, text))
            except (ValueError, KeyError):
                lo_s, hi_s = text.split("-", 1)
                lo_n, hi_n = _scalar(dtype, lo_s), _scalar(dtype, hi_s)
                if lo_n > hi_n:
                    raise ValueError_(f"expected a range low-high, found {text!r}") from None
                return IntSet.range(lo_n, hi_n)
        return IntSet.single(_scalar(dtype, text))
    except ValueError_:
        raise
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise ValueError_(f"expected a {dtype} value, found {raw!r}") from exc


def union(values: Sequence[Value]) -> IntSet:
    out = IntSet()
    for v in values:
        if isinstance(v, IntSet):
            out = out | v
    return out


def names(values: Sequence[Value]) -> list[str]:
    out: list[str] = []
    for v in values:
        if isinstance(v, str):
            out.extend(p.strip() for p in v.split(",") if p.strip())
    return out
