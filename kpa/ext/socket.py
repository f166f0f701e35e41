"""socket (xt_socket) and TPROXY (xt_TPROXY): packets that belong to a local socket.

`-m socket` looks up the socket a received packet belongs to (an established
one, or a listener unless --nowildcard; with --transparent only sockets with
IP_TRANSPARENT). TPROXY looks up a socket for the packet, or a listener on
--on-ip/--on-port, marks the packet and hands it to that socket; when it finds
none, the kernel drops the packet (net/netfilter/xt_TPROXY.c).

Which sockets exist is not in a ruleset. `kpa trace --socket none` states that
no socket matches (no transparent proxy listening); `--socket found` that one
does. Otherwise both rules are unknown. With a socket found, TPROXY's delivery
depends on the node's policy routing for its mark, which kpa does not model,
so it stays unknown.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from kpa.ext.base import Option, ParseCtx, Unsupported, assumed, match, parse_value_mask, target
from kpa.netfilter.model import Expr, Flow, Step, Verdict, VerdictKind
from kpa.netfilter.packet import State, TraceContext

OPTIONS = {"--transparent", "--nowildcard", "--restore-skmark"}
UNKNOWN = "depends on which sockets are open on the node (kpa trace --socket states it)"


def _assume(st: State, ctx: TraceContext, why: str, matched: bool) -> State:
    return assumed(st, ctx, "", why, matched)


@dataclass(eq=False)
class SocketMatch(Expr):
    """`-m socket`: whether a local socket owns the packet, as the trace context states."""

    name: str = "socket"
    options: list[Option] = field(default_factory=list)
    restore_mark: bool = False

    def step(self, st: State, ctx: TraceContext) -> Iterable[Step]:
        if ctx.socket == "none":
            yield st.note("socket: no socket matches (as stated)"), Flow.NO_MATCH
            return
        if ctx.socket == "found" and not self.restore_mark:
            yield st.note("socket: a socket matches (as stated)"), Flow.CONTINUE
            return
        why = UNKNOWN if ctx.socket is None else "--restore-skmark copies the socket's mark, which kpa does not know"
        yield _assume(st, ctx, why, True), Flow.CONTINUE
        if ctx.socket is None:
            yield _assume(st, ctx, why, False), Flow.NO_MATCH

    def render(self) -> list[str]:
        return ["-m", "socket"] + [t for o in self.options for t in o.render()]


@match("socket")
def parse_socket(opts: list[Option], ctx: ParseCtx) -> Expr:
    for o in opts:
        if o.name not in OPTIONS:
            raise Unsupported(f"socket option {o.name} is not modelled")
    return SocketMatch(options=opts, restore_mark=any(o.name == "--restore-skmark" for o in opts))


@dataclass(eq=False)
class Tproxy(Expr):
    """`-j TPROXY`: hands the packet to a local transparent-proxy socket, or drops it without one."""

    name: str = "TPROXY"
    options: list[Option] = field(default_factory=list)
    mark: tuple[int, int] | None = None

    def step(self, st: State, ctx: TraceContext) -> Iterable[Step]:
        drop = Verdict(VerdictKind.DROP, detail="TPROXY found no socket")
        if ctx.socket == "none":
            yield st.note("TPROXY: no socket for the packet (as stated)"), drop
            return
        why = ("the packet goes to the proxy's socket; where it is delivered depends on policy routing "
               "for the TPROXY mark, which kpa does not model")
        s = st
        if self.mark is not None:
            value, mask = self.mark
            s = s.set(mark=(s.mark & ~mask) ^ value)
        yield _assume(s, ctx, why, True), Verdict(VerdictKind.ACCEPT, detail="TPROXY")
        if ctx.socket is None:
            yield _assume(st, ctx, UNKNOWN + "; with no socket the kernel drops", False), drop

    def render(self) -> list[str]:
        return ["-j", "TPROXY"] + [t for o in self.options for t in o.render()]


@target("TPROXY")
def parse_tproxy(opts: list[Option], ctx: ParseCtx) -> Expr:
    t = Tproxy(options=opts)
    for o in opts:
        if o.name == "--tproxy-mark":
            t.mark = parse_value_mask(o.arg())
        elif o.name not in ("--on-port", "--on-ip"):
            raise Unsupported(f"TPROXY option {o.name} is not modelled")
    return t
