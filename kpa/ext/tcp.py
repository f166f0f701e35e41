"""tcp, udp and sctp port matches (xt_tcpudp, xt_sctp)."""

from __future__ import annotations

from kpa.ext.base import (
    Cond,
    IntCond,
    Match,
    Option,
    OptionError,
    ParseCtx,
    PredCond,
    Unsupported,
    match,
    parse_port_range,
)

TCP_FLAGS = {"FIN": 0x01, "SYN": 0x02, "RST": 0x04, "PSH": 0x08, "ACK": 0x10, "URG": 0x20,
             "ECE": 0x40, "CWR": 0x80, "ALL": 0xFF, "NONE": 0}


def _flags(text: str) -> int:
    value = 0
    for part in text.split(","):
        if part.upper() not in TCP_FLAGS:
            raise OptionError(f"expected TCP flags like SYN,ACK, found {part!r}")
        value |= TCP_FLAGS[part.upper()]
    return value


def _flag_cond(mask: int, comp: int, negated: bool) -> Cond:
    return PredCond(lambda s, c: (s.tcp_flags & mask) == comp, negated)


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
