"""tcp, udp and sctp port matches (xt_tcpudp, xt_sctp), and the TCP flags of a traced packet.

kpa traces one packet of a connection, so its TCP flags follow from its
conntrack state: a packet in state NEW is the connection's first packet, a
bare SYN; a packet of a connection in any other state is taken as an ACK.
A state whose conntrack state is still open is split on the flags where a
test tells the two apart (`--syn`, `--tcp-flags`, nft `tcp flags`).
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
    Split,
    Unsupported,
    match,
    parse_port_range,
)
from kpa.netfilter.packet import State

TCP_FLAGS = {"FIN": 0x01, "SYN": 0x02, "RST": 0x04, "PSH": 0x08, "ACK": 0x10, "URG": 0x20,
             "ECE": 0x40, "CWR": 0x80, "ALL": 0xFF, "NONE": 0}


SYN, ACK = 0x02, 0x10
SYN_NOTE = "TCP flags: a packet in conntrack state NEW is taken as the connection's first packet (SYN), others as ACK"


def flags_split(st: State, pred: Callable[[int], bool]) -> Split:
    """Split a state on `pred(its TCP flags)`: SYN when its conntrack state is NEW, else ACK (or as set)."""
    other = st.tcp_flags if st.tcp_flags != SYN else ACK
    if SYN_NOTE not in st.notes:
        st = st.note(SYN_NOTE)
    if "NEW" not in st.ctstate:
        return ([st], []) if pred(other) else ([], [st])
    if st.ctstate == frozenset({"NEW"}):
        return ([st], []) if pred(SYN) else ([], [st])
    if pred(SYN) == pred(other):
        return ([st], []) if pred(SYN) else ([], [st])
    new, rest = st.restrict_ctstate(frozenset({"NEW"}))
    assert new is not None and rest is not None
    new, rest = new.set(tcp_flags=SYN), rest.set(tcp_flags=other)
    return ([new], [rest]) if pred(SYN) else ([rest], [new])


def _flags(text: str) -> int:
    value = 0
    for part in text.split(","):
        if part.upper() not in TCP_FLAGS:
            raise OptionError(f"expected TCP flags like SYN,ACK, found {part!r}")
        value |= TCP_FLAGS[part.upper()]
    return value


def _flag_cond(mask: int, comp: int, negated: bool) -> Cond:
    return FnCond(lambda s, c: flags_split(s, lambda f: (f & mask) == comp), negated)


def _ports(opts: list[Option], name: str, allowed: set[str]) -> Match:
    conds: list[Cond] = []
    for o in opts:
        if o.name in ("--sport", "--source-port"):
            conds.append(IntCond("sport", parse_port_range(o.arg()), o.negated))
        elif o.name in ("--dport", "--destination-port"):
            conds.append(IntCond("dport", parse_port_range(o.arg()), o.negated))
        elif o.name == "--tcp-flags" and "flags" in allowed:
            if len(o.args) != 2:
                raise OptionError("--tcp-flags expects MASK COMP, e.g. SYN,RST,ACK,FIN SYN")
            conds.append(_flag_cond(_flags(o.args[0]), _flags(o.args[1]), o.negated))
        elif o.name == "--syn" and "flags" in allowed:
            conds.append(_flag_cond(0x17, 0x02, o.negated))
        else:
            raise Unsupported(f"{name} option {o.name} is not modelled")
    return Match(name=name, options=opts, conds=conds)


@match("tcp")
def parse_tcp(opts: list[Option], ctx: ParseCtx) -> Match:
    return _ports(opts, "tcp", {"flags"})


@match("udp", "udplite")
def parse_udp(opts: list[Option], ctx: ParseCtx) -> Match:
    return _ports(opts, "udp", set())


@match("sctp")
def parse_sctp(opts: list[Option], ctx: ParseCtx) -> Match:
    return _ports(opts, "sctp", set())


@match("dccp")
def parse_dccp(opts: list[Option], ctx: ParseCtx) -> Match:
    return _ports(opts, "dccp", set())
