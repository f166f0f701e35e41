"""meta (nft_meta): packet metadata such as l4proto, nfproto, interfaces, mark.

Interface names compare like iptables' `-i`: exact, or by prefix when nft
prints a trailing `*` (`iifname "veth*"`). `meta iif`/`oif` compare interface
indexes; nft prints them as names, and kpa treats them as names. `meta random`
is a fresh 32-bit random number per packet (iptables-nft's translation of
`-m statistic`), handled in kpa.ext.nft.bitwise; other keys are unknown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kpa.ext.base import Split, parts
from kpa.ext.nft.base import Key, UnmodelledKey, Value, names, union
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


def meta_key(key: str) -> Key:
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

