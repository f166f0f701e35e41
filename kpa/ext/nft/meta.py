"""meta (nft_meta): packet metadata such as l4proto, nfproto, interfaces, mark.

Interface names compare like iptables' `-i`: exact, or by prefix when nft
prints a trailing `*` (`iifname "veth*"`). `meta iif`/`oif` compare interface
indexes; nft prints them as names, and kpa treats them as names. `meta random`
is a fresh 32-bit random number per packet (iptables-nft's translation of
`-m statistic`), handled in kpa.ext.nft.bitwise; other keys are unknown.

`meta skuid`/`skgid` read the owner of the packet's full socket (nft_meta.c:
no socket, or one without a file, breaks the rule, so even `!=` does not
match a forwarded packet). kpa gives a socket to packets a local process
sent (`--origin output`) in the output and postrouting hooks; the user and
group are `kpa trace --uid/--gid`, open when not given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kpa.ext.base import Split, both_ways, parts
from kpa.ext.nft.base import Key, UnmodelledKey, Value, names, union
from kpa.ext.owner import has_socket
from kpa.netfilter.domain import IntSet
from kpa.netfilter.packet import State, TraceContext


@dataclass(eq=False)
class L4ProtoKey(Key):
    def __post_init__(self) -> None:
        self.dtype, self.text = "inet_proto", "meta l4proto"

    def test(self, st: State, ctx: TraceContext, values: Sequence[Value]) -> Split:
        return parts(*st.restrict("proto", union(values)))


@dataclass(eq=False)
class NfprotoKey(Key):
    """`meta nfproto` (2/10) or `meta protocol` (the ethertype): the IP version."""

    ethertype: bool = False

    def __post_init__(self) -> None:
        self.dtype = "ether_type" if self.ethertype else "nf_proto"
        self.text = "meta protocol" if self.ethertype else "meta nfproto"

    def test(self, st: State, ctx: TraceContext, values: Sequence[Value]) -> Split:
        mine = (0x86DD if st.version == 6 else 0x0800) if self.ethertype else (10 if st.version == 6 else 2)
        return ([st], []) if mine in union(values) else ([], [st])


@dataclass(eq=False)
class IfaceKey(Key):
    field: str = "iif"

    def test(self, st: State, ctx: TraceContext, values: Sequence[Value]) -> Split:
        yes_all: list[State] = []
        rest = [st]
        for pattern in names(values):
            prefix = pattern.endswith("*") and not pattern.endswith("\\*")
            pat = pattern[:-1] if prefix else pattern.replace("\\*", "*")
            nxt: list[State] = []
            for s in rest:
                yes, no = s.restrict_name(self.field, pat, prefix)
                if yes is not None:
                    yes_all.append(yes)
                if no is not None:
                    nxt.append(no)
            rest = nxt
        return yes_all, rest


@dataclass(eq=False)
class MarkKey(Key):
    """The packet mark (or, with ct=True, the connection mark): always concrete."""

    ct: bool = False

    def __post_init__(self) -> None:
        self.dtype = "mark"
        self.text = "ct mark" if self.ct else "meta mark"

    def value(self, st: State) -> int:
        return st.ctmark if self.ct else st.mark

    def test(self, st: State, ctx: TraceContext, values: Sequence[Value]) -> Split:
        return ([st], []) if self.value(st) in union(values) else ([], [st])


@dataclass(eq=False)
class SkOwnerKey(Key):
    """`meta skuid` / `meta skgid`: the sending socket's owner."""

    field: str = "uid"

    def __post_init__(self) -> None:
        self.dtype = self.field
        self.text = f"meta sk{self.field}"

    def needs_guard(self) -> bool:
        return True

    def guard(self, st: State, ctx: TraceContext) -> Split:
        sock = has_socket(st)
        if sock is None:
            yes, no = both_ways(st, ctx, self.text,
                                f"{self.text} reads a socket kpa does not know about in the {st.hook or 'this'} hook")
            return [yes], [no]
        return ([st], []) if sock else ([], [st])

    def parse(self, raw: Any) -> Value:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return IntSet.single(raw)
        text = str(raw)
        if isinstance(raw, dict) and "range" in raw:
            lo, hi = raw["range"]
            a, b = self.parse(lo), self.parse(hi)
            assert isinstance(a, IntSet) and isinstance(b, IntSet)
            return IntSet.range(a.min(), b.min())
        if text.isdigit():
            return IntSet.single(int(text))
        if "-" in text and all(p.isdigit() for p in text.split("-", 1)):
            lo_s, hi_s = text.split("-", 1)
            return IntSet.range(int(lo_s), int(hi_s))
        if text == "root":
            return IntSet.single(0)
        # nft prints the name of an id its host knows; this host's names need not be the node's.
        raise UnmodelledKey(f"{self.text} {text!r} is a name; kpa compares numeric ids")

    def state_field(self) -> str | None:
        return None

    def test(self, st: State, ctx: TraceContext, values: Sequence[Value]) -> Split:
        return parts(*st.restrict(self.field, union(values)))


@dataclass(eq=False)
class SecpathKey(Key):
    """`meta secpath exists|missing`: whether the packet came through IPsec, as `-m policy --dir in`.

    kpa assumes no IPsec policy on the node unless `kpa trace --ipsec` says otherwise.
    """

    def __post_init__(self) -> None:
        self.dtype, self.text = "boolean", "meta secpath"

    def parse(self, raw: Any) -> Value:
        text = str(raw).lower()
        if text in ("true", "exists", "1"):
            return IntSet.single(1)
        if text in ("false", "missing", "0"):
            return IntSet.single(0)
        raise UnmodelledKey(f"meta secpath {raw!r} is not modelled")

    def test(self, st: State, ctx: TraceContext, values: Sequence[Value]) -> Split:
        s = st if ctx.ipsec else st.note("no IPsec policy on the node (assumed; kpa trace --ipsec says otherwise)")
        return ([s], []) if int(ctx.ipsec) in union(values) else ([], [s])


def meta_key(key: str) -> Key:
    if key in ("secpath", "ipsec"):
        return SecpathKey()
    if key in ("skuid", "skgid"):
        return SkOwnerKey(field=key[2:])
    if key == "l4proto":
        return L4ProtoKey()
    if key in ("nfproto", "protocol"):
        return NfprotoKey(ethertype=key == "protocol")
    if key in ("iifname", "oifname", "iif", "oif"):
        dtype = "ifname" if key.endswith("name") else "iface_name"
        return IfaceKey(field=key[:3], dtype=dtype, text=f"meta {key}")
    if key == "mark":
        return MarkKey()
    raise UnmodelledKey(f"meta {key} is not modelled")

