"""Skipping rules that cannot match, without changing what matches.

KUBE-SERVICES on a large cluster holds a rule per Service port, each pinned
to one destination address. When every packet state in play has a concrete
destination, only the rules pinned to that address, plus the rules that pin
no address, can apply. KUBE-NODEPORTS pins ports instead, and is indexed
the same way on the destination port; kube-router's KUBE-ROUTER-* chains pin
one source address per pod, indexed on the source. The index yields exactly
the rules that may apply, in chain order.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from kpa.netfilter.model import Chain, LazyRule, Rule
from kpa.netfilter.packet import READ_GROUP, READ_VAL, State, note_read

# Below this size a plain scan is as fast as consulting the index.
MIN_RULES = 32


@dataclass
class DstIndex:
    generic: list[int]  # rules that pin neither destination address nor port
    by_dst: dict[int, list[int]]
    by_dport: dict[int, list[int]]  # rules that pin only the destination port (NodePorts)
    by_src: dict[int, list[int]]  # rules that pin only the source address (per-pod jumps)


def pinned(rule: Rule, field: str) -> int | None:
    """The single value a rule requires of `field`, if one of its matches demands it."""
    from kpa.ext.base import IntCond, Match

    for e in rule.exprs:
        if isinstance(e, Match):
            for c in e.conds:
                if isinstance(c, IntCond) and c.field == field and not c.negated:
                    value = c.values.single_value()
                    if value is not None:
                        return value
    return None


_COMMENT = re.compile(r'--comment (?:"(?:[^"\\]|\\.)*"|\S+)')
_PIN_OPTIONS = {"-p", "-m", "--dport", "-d", "--dst-type", "-j", "--reject-with"}


def text_pin(text: str) -> tuple[int | None, int] | None:
    """(address, port) a kube-proxy dispatch rule requires of the destination, or None.

    Only rules made of nothing but a protocol, its port match with one
    destination port, an optional exact destination address, an optional
    `addrtype --dst-type LOCAL`, a comment and a target are recognised; the
    address is None when the rule pins only the port.
    """
    if "!" in text:
        return None
    if "--comment" in text:
        text = _COMMENT.sub("", text, count=1)
    if '"' in text or "'" in text or "\\" in text or "--comment" in text:
        return None
    tokens = text.split()
    if len(tokens) % 2 or tokens[0] != "-A":
        return None
    opts: dict[str, str] = {}
    modules: set[str] = set()
    for k in range(2, len(tokens), 2):
        option, value = tokens[k], tokens[k + 1]
        if option not in _PIN_OPTIONS:
            return None
        if option == "-m":
            if value in modules:
                return None
            modules.add(value)
        elif option in opts:
            return None
        else:
            opts[option] = value
    proto = opts.get("-p")
    if proto not in ("tcp", "udp", "sctp") or "--dport" not in opts or "-j" not in opts:
        return None
    if not modules <= {proto, "comment", "addrtype"} or ("addrtype" in modules) != ("--dst-type" in opts):
        return None
    if opts.get("--dst-type", "LOCAL") != "LOCAL" or ("--reject-with" in opts and opts["-j"] != "REJECT"):
        return None
    port = opts["--dport"]
    if not (port.isdigit() and port.isascii() and len(port) <= 5 and int(port) < 65536):
        return None
    if "-d" not in opts:
        return None, int(port)
    addr, _, prefix = opts["-d"].partition("/")
    dst = address_value(addr, prefix or ("128" if ":" in addr else "32"))
    return None if dst is None else (dst, int(port))


_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_QUAD = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")


def address_value(text: str, prefix: str) -> int | None:
    """The address `text` as an integer if `prefix` makes it a single host (32 for IPv4, 128 for IPv6)."""
    # The canonical dotted quad iptables-save prints; anything else goes through ipaddress.
    if prefix == "32" and _QUAD.fullmatch(text):
        return int.from_bytes(socket.inet_aton(text), "big")
    try:
        parsed = ipaddress.ip_address(text)
    except ValueError:
        return None
    if (parsed.version, prefix) not in ((4, "32"), (6, "128")):
        return None
    return int(parsed)


def build(chain: Chain, pins: Sequence[tuple[int | None, int] | None] | None = None) -> DstIndex:
    """The chain's index; `pins`, when given, are `text_pin` of each rule's text, already read."""
    idx = DstIndex([], {}, {}, {})
    for pos, rule in enumerate(chain.rules):
        # kube-proxy's dispatch rules say what they pin in plain text: reading it there
        # leaves a lazy rule unbuilt. Exactly what `pinned` finds once the rule is built.
        pin = (text_pin(rule.text) if pins is None else pins[pos]) if isinstance(rule, LazyRule) else None
        if pin is not None:
            if pin[0] is not None:
                idx.by_dst.setdefault(pin[0], []).append(pos)
            else:
                idx.by_dport.setdefault(pin[1], []).append(pos)
            continue
        dst = pinned(rule, "dst")
        if dst is not None:
            idx.by_dst.setdefault(dst, []).append(pos)
            continue
        dport = pinned(rule, "dport")
        if dport is not None:
            idx.by_dport.setdefault(dport, []).append(pos)
            continue
        src = pinned(rule, "src")
        if src is not None:
            idx.by_src.setdefault(src, []).append(pos)
        else:
            idx.generic.append(pos)
    return idx


def candidate_rules(chain: Chain, states: list[State]) -> Iterator[Rule]:
    rules = chain.rules
    if len(rules) < MIN_RULES:
        yield from rules
        return
    if chain._index is None:
        chain._index = build(chain)
    idx: DstIndex = chain._index
    dsts: set[int] = set()
    dports: set[int] | None = set()
    srcs: set[int] | None = set()
    for s in states:
        d = s.peek("dst")
        if d is None:
            note_read((READ_VAL, "dst", None))
            yield from rules
            return
        # Which rules apply depends only on the group the value falls in.
        note_read((READ_GROUP, "dst", idx.by_dst, d if d in idx.by_dst else None))
        dsts.add(d)
        if not idx.by_dport:
            continue
        p = s.peek("dport")
        note_read((READ_VAL, "dport", None) if p is None
                  else (READ_GROUP, "dport", idx.by_dport, p if p in idx.by_dport else None))
        if p is None:
            dports = None
        elif dports is not None:
            dports.add(p)
    for s in states if idx.by_src else ():
        a = s.peek("src")
        note_read((READ_VAL, "src", None) if a is None
                  else (READ_GROUP, "src", idx.by_src, a if a in idx.by_src else None))
        if a is None:
            srcs = None
            break
        assert srcs is not None
        srcs.add(a)
    positions = set(idx.generic)
    if srcs is None:
        for group in idx.by_src.values():
            positions.update(group)
    else:
        for a in srcs:
            positions.update(idx.by_src.get(a, ()))
    for d in dsts:
        positions.update(idx.by_dst.get(d, ()))
    if dports is None:
        for group in idx.by_dport.values():
            positions.update(group)
    else:
        for p in dports:
            positions.update(idx.by_dport.get(p, ()))
    for pos in sorted(positions):
        yield rules[pos]
