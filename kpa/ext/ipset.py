"""set (xt_set) and SET: membership in an ipset, and adding to or deleting from one.

The sets come from an `ipset save` dump (kpa.parse.ipset_save); a set the dump
does not hold is unknown, both ways. Lookups follow the kernel
(net/netfilter/ipset/ip_set_core.c, ip_set_hash_gen.h, ip_set_list_set.c,
ip_set_bitmap_port.c, xt_set.c):

* `--match-set NAME dir[,dir...]` gives one direction per dimension of the set;
  fewer directions than the set has dimensions, or a set of the other address
  family, never matches (ip_set_test returns 0).
* hash types with a network dimension look the address up under each prefix
  length the set holds, most specific first; the first element found decides,
  and a `nomatch` element means "not in the set".
* `--return-nomatch` turns the answer round for types that know `nomatch`
  elements: a normal element no longer matches and a `nomatch` element does.
* a port dimension keys on (protocol, port): TCP, UDP, SCTP and UDP-Lite use
  the source or destination port, ICMP uses type and code, other protocols port
  0. bitmap:port only looks at TCP, UDP, SCTP and UDP-Lite packets.
* hash:net,iface's interface dimension is the input (src) or output (dst)
  interface; an empty name never matches, and `physdev:` elements are never
  found by the match (it never asks for bridge ports).
* list:set tries its member sets in order; the first that matches decides.
* elements with a timeout are present as long as the dump lists them.

Lookups never scan the members: each set is indexed on first use (interval
lists searched by bisection, and dictionaries).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kpa.ext.base import (
    Option,
    OptionError,
    ParseCtx,
    Statement,
    Unsupported,
    both_ways,
    match,
    target,
)
from kpa.netfilter.domain import IntSet
from kpa.netfilter.model import Expr, Family, Flow, IpSet, Step
from kpa.netfilter.packet import State, TraceContext
from kpa.parse.ipset_save import DIMENSIONS, NOMATCH_TYPES

MATCH, NOMATCH, MISS = "match", "nomatch", "miss"
# Protocols whose ports the kernel reads for a set's port dimension (ip_set_proto_with_ports).
PORT_PROTOCOLS = frozenset({6, 17, 132, 136})
_PORT_PROTOCOL_SET = IntSet.of(*((p, p) for p in PORT_PROTOCOLS))
COUNTER_OPTIONS = {"--packets-eq", "--packets-lt", "--packets-gt", "--bytes-eq", "--bytes-lt", "--bytes-gt"}
# Each part of a lookup is a state and what the set says of it: MATCH, NOMATCH, MISS or Unknown.


@dataclass(frozen=True)
class Unknown:
    """A set lookup kpa cannot answer for these packets, and why."""

    reason: str


Result = Any  # str (MATCH/NOMATCH/MISS) | Unknown


# -- the index -------------------------------------------------------------

class IntIndex:
    """Disjoint integer sets, each with a child: bisection for a concrete value, a split for an open one."""

    __slots__ = ("groups", "spans", "starts", "union")

    def __init__(self, groups: list[tuple[IntSet, Any]]) -> None:
        self.groups = [(s, c) for s, c in groups if s]
        spans = sorted((lo, hi, i) for i, (s, _) in enumerate(self.groups) for lo, hi in s)
        self.spans = spans
        self.starts = [s[0] for s in spans]
        self.union = IntSet.of(*((lo, hi) for lo, hi, _ in spans))

    def split(self, st: State, name: str) -> list[tuple[State, Any]]:
        """(state, child) for each part of `st`; child None where the value is in no group."""
        value = st.peek(name)
        if value is not None:
            k = bisect_right(self.starts, value) - 1
            if k >= 0 and value <= self.spans[k][1]:
                allowed, child = self.groups[self.spans[k][2]]
                yes, _ = st.restrict(name, allowed)  # records the read for the memo
                assert yes is not None
                return [(yes, child)]
            _, no = st.restrict(name, self.union)
            assert no is not None
            return [(no, None)]
        out: list[tuple[State, Any]] = []
        rest: State | None = st
        for allowed, child in self.groups:
            assert rest is not None
            yes, rest = rest.restrict(name, allowed)
            if yes is not None:
                out.append((yes, child))
            if rest is None:
                break
        if rest is not None:
            out.append((rest, None))
        return out


class Node:
    def split(self, st: State, dirs: list[str]) -> list[tuple[State, Result]]:
        raise NotImplementedError


class Leaf(Node):
    def __init__(self, result: str) -> None:
        self.result = result

    def split(self, st: State, dirs: list[str]) -> list[tuple[State, Result]]:
        return [(st, self.result)]


LEAF_MATCH, LEAF_NOMATCH = Leaf(MATCH), Leaf(NOMATCH)


def _descend(parts: list[tuple[State, Any]], dirs: list[str]) -> list[tuple[State, Result]]:
    out: list[tuple[State, Result]] = []
    for s, child in parts:
        if child is None:
            out.append((s, MISS))
        else:
            out.extend(child.split(s, dirs))
    return out


class AddrNode(Node):
    def __init__(self, dim: int, index: IntIndex) -> None:
        self.dim, self.index = dim, index

    def split(self, st: State, dirs: list[str]) -> list[tuple[State, Result]]:
        return _descend(self.index.split(st, dirs[self.dim]), dirs)


class PortNode(Node):
    """(protocol, port): protocols first, then the port (or ICMP type) of each."""

    def __init__(self, dim: int, protos: IntIndex) -> None:
        self.dim, self.protos = dim, protos

    def split(self, st: State, dirs: list[str]) -> list[tuple[State, Result]]:
        port_field = "sport" if dirs[self.dim] == "src" else "dport"
        out: list[tuple[State, Result]] = []
        for s, entry in self.protos.split(st, "proto"):
            if entry is None:
                out.append((s, MISS))
                continue
            kind, payload = entry
            if kind == "ports":
                out.extend(_descend(payload.split(s, port_field), dirs))
            elif kind == "icmp":
                for s2, child in payload.split(s, "icmp_type"):
                    out.append((s2, MISS if child is None else
                                Unknown("the set holds ICMP type/code elements; kpa does not model the ICMP code")))
            else:  # other protocols are keyed with port 0
                out.extend([(s, MISS)] if payload is None else payload.split(s, dirs))
        return out


class BarePortNode(Node):
    def __init__(self, dim: int, index: IntIndex) -> None:
        self.dim, self.index = dim, index

    def split(self, st: State, dirs: list[str]) -> list[tuple[State, Result]]:
        port_field = "sport" if dirs[self.dim] == "src" else "dport"
        yes, no = st.restrict("proto", _PORT_PROTOCOL_SET)
        out: list[tuple[State, Result]] = [] if no is None else [(no, MISS)]
        if yes is not None:
            out = _descend(self.index.split(yes, port_field), dirs) + out
        return out


class IfaceNode(Node):
    def __init__(self, dim: int, names: dict[str, Node]) -> None:
        self.dim, self.names = dim, names

    def split(self, st: State, dirs: list[str]) -> list[tuple[State, Result]]:
        name_field = "iif" if dirs[self.dim] == "src" else "oif"
        out: list[tuple[State, Result]] = []
        rest: State | None = st
        for name, child in self.names.items():
            assert rest is not None
            yes, rest = rest.restrict_name(name_field, name, False)
            if yes is not None:
                out.extend(child.split(yes, dirs))
            if rest is None:
                break
        if rest is not None:
            out.append((rest, MISS))
        return out


def _host_span(value: int, plen: int, bits: int) -> tuple[int, int]:
    host = (1 << (bits - plen)) - 1
    return value & ~host, (value & ~host) | host


def _build(ipset: IpSet, order: list[tuple[str, int]], elems: list[tuple[tuple[Any, ...], bool]],
           bits: int) -> tuple[Node, Any]:
    """The index over `elems` for the dimensions in `order`, and a key equal for equal indexes."""
    if not order:
        nomatch = any(nm for _, nm in elems)
        return (LEAF_NOMATCH, "N") if nomatch else (LEAF_MATCH, "M")
    kind, dim = order[0]
    rest = order[1:]
    if kind == "net":
        # Most specific prefix first: a longer prefix overrides a shorter one.
        by_len: dict[int, tuple[list[tuple[int, int]], list[tuple[int, int]]]] = {}
        for parts, nm in elems:
            value, plen = parts[dim]
            yes_no = by_len.setdefault(plen, ([], []))
            yes_no[1 if nm else 0].append(_host_span(value, plen, bits))
        matched, nomatched = IntSet(), IntSet()
        for plen in sorted(by_len):
            yes, no = IntSet.of(*by_len[plen][0]), IntSet.of(*by_len[plen][1])
            matched = (matched - no) | yes
            nomatched = (nomatched - yes) | no
        return (AddrNode(dim, IntIndex([(matched, LEAF_MATCH), (nomatched, LEAF_NOMATCH)])),
                ("net", dim, matched.spans, nomatched.spans))
    if kind == "ip" and not rest:
        # The common case (hash:ip): every element is a leaf; no grouping needed.
        netmask = int(ipset.options.get("netmask", bits)) if ipset.type == "hash:ip" else bits
        spans = IntSet.of(*(_host_span(parts[dim][0], min(parts[dim][1], netmask), bits) for parts, _ in elems))
        return AddrNode(dim, IntIndex([(spans, LEAF_MATCH)])), ("ip", dim, (("M", spans.spans),))
    groups: dict[Any, list[tuple[tuple[Any, ...], bool]]] = {}
    for parts, nm in elems:
        groups.setdefault(parts[dim], []).append((parts, nm))
    if kind == "ip":
        netmask = int(ipset.options.get("netmask", bits)) if ipset.type == "hash:ip" else bits
        merged: dict[Any, tuple[list[tuple[int, int]], Node]] = {}
        for (value, plen), sub in groups.items():
            child, key = _build(ipset, rest, sub, bits)
            merged.setdefault(key, ([], child))[0].append(_host_span(value, min(plen, netmask), bits))
        return _merged_node(AddrNode, dim, "ip", merged)
    if kind == "bare_port":
        merged = {}
        for port, sub in groups.items():
            child, key = _build(ipset, rest, sub, bits)
            merged.setdefault(key, ([], child))[0].append((port, port))
        return _merged_node(BarePortNode, dim, "bport", merged)
    if kind == "port":
        per_proto: dict[int, dict[int, list[tuple[tuple[Any, ...], bool]]]] = {}
        for (proto, port), sub in groups.items():
            per_proto.setdefault(proto, {})[port] = sub
        entries: list[tuple[IntSet, Any]] = []
        keys: list[Any] = []
        for proto, ports in sorted(per_proto.items()):
            if proto in PORT_PROTOCOLS:
                merged = {}
                for port, sub in ports.items():
                    child, key = _build(ipset, rest, sub, bits)
                    merged.setdefault(key, ([], child))[0].append((port, port))
                sets = [(k, IntSet.of(*spans), child) for k, (spans, child) in merged.items()]
                payload: Any = IntIndex([(values, child) for _, values, child in sets])
                entries.append((IntSet.single(proto), ("ports", payload)))
                keys.append((proto, tuple((k, values.spans) for k, values, _ in sets)))
            elif proto in (1, 58):
                types = IntSet.of(*((p >> 8, p >> 8) for p in ports))
                entries.append((IntSet.single(proto), ("icmp", IntIndex([(types, True)]))))
                keys.append((proto, types.spans))
            else:
                zero = ports.get(0)
                other: tuple[Node | None, Any] = _build(ipset, rest, zero, bits) if zero else (None, None)
                entries.append((IntSet.single(proto), ("other", other[0])))
                keys.append((proto, other[1]))
        return PortNode(dim, IntIndex(entries)), ("port", dim, tuple(keys))
    if kind == "iface":
        names: dict[str, Node] = {}
        keys = []
        for (name, physdev), sub in sorted(groups.items()):
            if physdev:
                continue  # the match never looks up bridge ports
            child, key = _build(ipset, rest, sub, bits)
            names[name] = child
            keys.append((name, key))
        return IfaceNode(dim, names), ("iface", dim, tuple(keys))
    raise AssertionError(kind)


def _merged_node(cls: Any, dim: int, tag: str, merged: dict[Any, tuple[list[tuple[int, int]], Node]]) -> tuple[Node, Any]:
    """A node over groups whose children are equal, each group one integer set."""
    sets = [(k, IntSet.of(*spans), child) for k, (spans, child) in merged.items()]
    node = cls(dim, IntIndex([(values, child) for _, values, child in sets]))
    return node, (tag, dim, tuple((k, values.spans) for k, values, _ in sets))


def index_of(ipset: IpSet) -> Node:
    if ipset._index is None:
        dims = DIMENSIONS[ipset.type]
        # The network dimension goes last: its most-specific-prefix rule applies among
        # the elements that agree on every other dimension.
        order = sorted(((kind, i) for i, kind in enumerate(dims)), key=lambda kd: kd[0] == "net")
        bits = 128 if ipset.family == "inet6" else 32
        elems = [(m.parts, m.nomatch) for m in ipset.members]
        ipset._index = _build(ipset, order, elems, bits)[0]
    node: Node = ipset._index
    return node


def address_member(ipset: IpSet, value: int) -> bool | None:
    """Whether one address is in a one-dimension address set (hash:ip, hash:net), as `set_test`
    answers for it, without building a packet state; None when the set is not that simple."""
    if ipset.type not in ("hash:ip", "hash:net"):
        return None
    node = index_of(ipset)
    if not isinstance(node, AddrNode):
        return None
    idx = node.index
    k = bisect_right(idx.starts, value) - 1
    if k < 0 or value > idx.spans[k][1]:
        return False
    child = idx.groups[idx.spans[k][2]][1]
    return True if child is LEAF_MATCH else False if child is LEAF_NOMATCH else None


def dimension(ipset: IpSet) -> int:
    return 0 if ipset.type == "list:set" else len(DIMENSIONS.get(ipset.type, ()))


def set_test(ipset: IpSet, st: State, dirs: list[str], return_nomatch: bool,
             sets: dict[str, IpSet], depth: int = 0) -> list[tuple[State, bool | Unknown]]:
    """What the kernel's ip_set_test answers for each part of `st`: in the set (True) or not."""
    if ipset.type not in DIMENSIONS:
        return [(st, Unknown(f"ipset {ipset.name!r} has type {ipset.type}, which kpa does not model"))]
    if len(dirs) < dimension(ipset):
        return [(st, False)]
    if ipset.family is not None and (ipset.family == "inet6") != (st.family is Family.IPV6):
        return [(st, False)]
    if ipset.type == "list:set":
        return _list_test(ipset, st, dirs, return_nomatch, sets, depth)
    invert = return_nomatch and ipset.type in NOMATCH_TYPES
    out: list[tuple[State, bool | Unknown]] = []
    for s, r in index_of(ipset).split(st, dirs):
        if isinstance(r, Unknown):
            out.append((s, r))
        elif r == MATCH:
            out.append((s, not invert))
        elif r == NOMATCH:
            out.append((s, invert))
        else:
            out.append((s, False))
    return out


def _list_test(ipset: IpSet, st: State, dirs: list[str], return_nomatch: bool,
               sets: dict[str, IpSet], depth: int) -> list[tuple[State, bool | Unknown]]:
    out: list[tuple[State, bool | Unknown]] = []
    pending = [st]
    for member in ipset.members:
        name = member.parts[0]
        sub = sets.get(name)
        nxt: list[State] = []
        for s in pending:
            if sub is None or depth > 8:
                out.append((s, Unknown(f"ipset {name!r}, a member of list:set {ipset.name!r}, is unknown "
                                       "(not in the `ipset save` dump)")))
                continue
            for s2, r in set_test(sub, s, dirs, return_nomatch, sets, depth + 1):
                if r is False:
                    nxt.append(s2)
                else:
                    out.append((s2, r))
        pending = nxt
        if not pending:
            break
    out.extend((s, False) for s in pending)
    return out


# -- the match ----------------------------------------------------------------

@dataclass(eq=False)
class SetMatch(Expr):
    """`-m set`: whether the packet's fields (in the given directions) are in a named ipset."""

    name: str = "set"
    options: list[Option] = field(default_factory=list)
    set_name: str = ""
    dirs: list[str] = field(default_factory=list)
    negated: bool = False
    return_nomatch: bool = False
    counters: bool = False  # --packets-*/--bytes-* given

    @property
    def field_name(self) -> str:
        return self.dirs[0] if self.dirs else "src"

    def step(self, st: State, ctx: TraceContext) -> Iterable[Step]:
        ipset = ctx.ipsets.get(self.set_name)
        if ipset is None:
            yes, no = both_ways(st, ctx, self.describe(),
                                f"ipset {self.set_name!r} is unknown (not in any `ipset save` dump given)")
            yield yes, Flow.CONTINUE
            yield no, Flow.NO_MATCH
            return
        for s, r in set_test(ipset, st, self.dirs, self.return_nomatch, ctx.ipsets):
            if r is True and self.counters and "counters" in ipset.options:
                r = Unknown(f"the element's packet/byte counters in ipset {self.set_name!r} decide this match")
            if isinstance(r, Unknown):
                yes, no = both_ways(s, ctx, self.describe(), r.reason)
                yield yes, Flow.CONTINUE
                yield no, Flow.NO_MATCH
            elif r != self.negated:
                yield s, Flow.CONTINUE
            else:
                yield s, Flow.NO_MATCH

    def render(self) -> list[str]:
        return ["-m", "set"] + [t for o in self.options for t in o.render()]


def parse_dirs(text: str) -> list[str]:
    dirs = text.split(",")
    if not 1 <= len(dirs) <= 6 or any(d not in ("src", "dst") for d in dirs):
        raise OptionError(f"expected src|dst[,src|dst...] (at most 6), found {text!r}")
    return dirs


@match("set")
def parse_set(opts: list[Option], ctx: ParseCtx) -> Expr:
    m = SetMatch(options=opts)
    for o in opts:
        if o.name == "--match-set":
            if len(o.args) != 2:
                raise OptionError("--match-set expects NAME src|dst[,...]")
            m.set_name = o.args[0]
            m.dirs = parse_dirs(o.args[1])
            m.negated = o.negated
        elif o.name == "--return-nomatch":
            m.return_nomatch = True
        elif o.name in COUNTER_OPTIONS:
            m.counters = True
        elif o.name not in ("--update-counters", "--update-subcounters"):
            raise Unsupported(f"set option {o.name} is not modelled")
    if not m.set_name:
        raise OptionError("set expects --match-set NAME src|dst")
    return m


@target("SET")
def parse_set_target(opts: list[Option], ctx: ParseCtx) -> Expr:
    """--add-set/--del-set change a set at runtime: a side effect, reported; the rule goes on."""
    notes: list[str] = []
    for o in opts:
        if o.name in ("--add-set", "--del-set"):
            if len(o.args) != 2:
                raise OptionError(f"{o.name} expects NAME src|dst[,...]")
            name, dirs = o.args[0], parse_dirs(o.args[1])
            verb = "adds" if o.name == "--add-set" else "deletes"
            prep = "to" if o.name == "--add-set" else "from"
            notes.append(f"SET {verb} the packet's {','.join(dirs)} {prep} ipset {name} (side effect; "
                         "lookups in this trace use the dump's contents)")
        elif o.name == "--map-set":
            raise Unsupported("SET --map-set (mark, priority or queue from the set's skbinfo) is not modelled")
        elif o.name not in ("--exist", "--timeout"):
            raise OptionError(f"SET expects --add-set, --del-set or --map-set, found {o.name}")
    if not notes:
        raise OptionError("SET expects --add-set or --del-set NAME src|dst")

    def apply(st: State, c: TraceContext) -> State:
        for n in notes:
            st = st.note(n)
        return st
    return Statement(name="SET", options=opts, apply=apply)
