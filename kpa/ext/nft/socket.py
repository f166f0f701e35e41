"""socket and tproxy (nft_socket, nft_tproxy): nftables' forms of -m socket and TPROXY.

`socket transparent 1` looks up the socket a received packet belongs to; with no
socket the rule breaks (does not match, whatever the comparison). `tproxy to
ADDR:PORT` hands the packet to a local (transparent) socket; with none the rule
breaks (xt_TPROXY drops instead). Like their iptables forms (kpa.ext.socket) they depend on which
sockets the node has: `kpa trace --socket found|none` states it, otherwise they
are unknown. Other socket keys (mark, wildcard, cgroupv2) are not modelled.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kpa.ext.base import Split, assumed, both_ways
from kpa.ext.nft.base import Key, UnmodelledKey, Value, union
from kpa.ext.socket import UNKNOWN, Tproxy
from kpa.netfilter.model import Flow, Step
from kpa.netfilter.packet import State, TraceContext


@dataclass(eq=False)
class SocketKey(Key):
    """`socket transparent`: 1 for a transparent socket found for the packet."""

    def __post_init__(self) -> None:
        self.dtype, self.text = "integer", "socket transparent"

    def needs_guard(self) -> bool:
        return True

    def guard(self, st: State, ctx: TraceContext) -> Split:
        if ctx.socket == "none":
            return [], [st.note("socket: no socket matches (as stated)")]
        if ctx.socket == "found":
            return [st], []
        yes, no = both_ways(st, ctx, self.text, UNKNOWN + " (a transparent socket found)",
                            why_not=UNKNOWN + " (no socket: the rule breaks)")
        return [yes], [no]

    def test(self, st: State, ctx: TraceContext, values: Sequence[Value]) -> Split:
        return ([st], []) if 1 in union(values) else ([], [st])


def socket_key(key: str) -> Key:
    if key == "transparent":
        return SocketKey()
    raise UnmodelledKey(f"socket {key} is not modelled")


@dataclass(eq=False)
class NftTproxy(Tproxy):
    """Unlike xt_TPROXY, nft's tproxy breaks the rule when it finds no socket (nft_tproxy.c), and with
    one it assigns the socket and the rule goes on."""

    text: str = ""

    def step(self, st: State, ctx: TraceContext) -> Iterable[Step]:
        if ctx.socket == "none":
            yield st.note("tproxy: no socket for the packet, the rule breaks (as stated)"), Flow.NO_MATCH
            return
        why = ("the packet goes to the proxy's socket; where it is delivered depends on policy routing, "
               "which kpa does not model")
        yield assumed(st, ctx, self.text, why, True), Flow.CONTINUE
        if ctx.socket is None:
            yield assumed(st, ctx, self.text, UNKNOWN + "; with no socket the rule breaks", False), Flow.NO_MATCH

    def render(self) -> list[str]:
        return self.text.split()


def nft_tproxy(text: str) -> Tproxy:
    """`tproxy [ip|ip6] to [ADDR][:PORT]`; nft sets no mark itself (a separate `meta mark set` does)."""
    return NftTproxy(name="tproxy", text=text)
