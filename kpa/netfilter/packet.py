"""The symbolic packet the engine pushes through the hooks.

A `State` describes a set of packets (every field a domain) together with
what has happened to them so far: probability, rewrites, marks, path. The
domains describe the packet *as sent*; NAT rewrites are kept separately in
`rewrites`, so the conditions reported at the end are always about the
packet the user asked about.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from kpa.netfilter.domain import IntSet, NameSet, network_set
from kpa.netfilter.model import Family, IpSet, Location, Rule
from kpa.netfilter.protocols import PRINTED, iptables_protocol

PROTOCOL_NAMES = PRINTED

CT_STATES = frozenset({"NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED", "SNAT", "DNAT"})
# The states a real packet is in; SNAT/DNAT are derived from the conntrack status.
PACKET_CT_STATES = frozenset({"NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED"})

ADDR_BITS = {4: 32, 6: 128}

# Field reads, recorded while the engine memoises a base chain (kpa.netfilter.memo).
# Expressions read packet fields only through State's methods below (never
# `state.domains[...]` directly), so this list is everything a chain looked at.
READ_IN = 0  # (READ_IN, field, allowed, hit): a concrete value tested against a set
READ_DOM = 1  # (READ_DOM, field, domain): an open, un-rewritten field's whole domain mattered
READ_VAL = 2  # (READ_VAL, field, value or None): the concrete value itself (or that there is none)
READ_ORIG = 3  # (READ_ORIG, field, domain): the field as sent, before any NAT
READ_NAME = 4  # (READ_NAME, field, NameSet): an interface constraint
READ_GROUP = 5  # (READ_GROUP, field, groups, key): which index group a concrete value falls in
READ_RECENT = 6  # (READ_RECENT, list, membership or ABSENT): what the state says of an address list
ABSENT = object()
_reads: list[tuple[Any, ...]] | None = None


def record_reads(reads: list[tuple[Any, ...]] | None) -> list[tuple[Any, ...]] | None:
    """Start (a list) or stop (None) recording field reads; returns the previous recorder."""
    global _reads
    previous, _reads = _reads, reads
    return previous


def note_read(read: tuple[Any, ...]) -> None:
    if _reads is not None:
        _reads.append(read)


def note_reads(reads: list[tuple[Any, ...]]) -> None:
    """Record reads made earlier on the recorder now running (a replayed memo entry's, say)."""
    if _reads is not None:
        _reads.extend(reads)
INT_FIELDS = ("src", "dst", "proto", "sport", "dport", "icmp_type", "uid", "gid", "mac")
NAME_FIELDS = ("iif", "oif")


def full_domain(name: str, version: int) -> IntSet:
    if name in ("src", "dst"):
        return IntSet.range(0, (1 << ADDR_BITS[version]) - 1)
    if name in ("sport", "dport"):
        return IntSet.range(0, 65535)
    if name in ("uid", "gid"):
        # The sending socket's owner (owner match, meta skuid/skgid); only local packets have one.
        return IntSet.range(0, 0xFFFFFFFF)
    if name == "mac":
        return IntSet.range(0, (1 << 48) - 1)  # the Ethernet source address (mac match)
    return IntSet.range(0, 255)


@dataclass(frozen=True)
class Miss:
    """A rule that did not match just before a hit, and the part that failed (--explain)."""

    chain: str
    rule: int
    location: Location | None
    text: str
    failed: str

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "file": self.location.file if self.location else None,
                "line": self.location.line if self.location else None, "text": self.text,
                "failed": self.failed}


@dataclass(frozen=True)
class Hop:
    """One rule the packet matched (or a chain's policy/end) on its way."""

    hook: str
    table: str
    chain: str
    rule: int | None  # None for a chain policy
    location: Location | None
    text: str
    comment: str | None = None
    note: str | None = None
    family: str = ""
    # With --explain: the rules of this chain just before this one that did not match.
    misses: tuple[Miss, ...] = ()
    # The chain this rule jumped or went to, if it did.
    target: str | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "hook": self.hook, "table": self.table, "chain": self.chain, "rule": self.rule,
            "file": self.location.file if self.location else None,
            "line": self.location.line if self.location else None,
            "text": self.text, "comment": self.comment, "note": self.note,
        }
        if self.misses:
            doc["not_matched"] = [m.to_json() for m in self.misses]
        if self.target:
            doc["target"] = self.target
        return doc


@dataclass(frozen=True)
class Assumption:
    """A rule kpa could not evaluate, and which way this outcome assumed it went."""

    location: Location | None
    text: str
    reason: str
    matched: bool

    def describe(self) -> str:
        where = f"{self.location}: " if self.location else ""
        way = "assumed to match" if self.matched else "assumed not to match"
        return f"{where}{self.text} — {self.reason}; {way}"


@dataclass(frozen=True)
class State:
    """A set of packets (each field a set of values) on its way through the hooks, with what happened to it."""

    family: Family
    domains: dict[str, Any]  # field -> IntSet | NameSet
    ctstate: frozenset[str] = frozenset({"NEW"})
    mark: int = 0
    ctmark: int = 0
    tcp_flags: int = 0x02  # SYN: the first packet of a connection
    probability: Fraction = Fraction(1)
    rewrites: dict[str, int] = field(default_factory=dict)
    dnat: tuple[int, int | None] | None = None
    snat: tuple[int, int | None] | None = None
    masquerade: bool = False
    # Address lists of the `recent` match (session affinity): list name -> member?
    recent: dict[str, bool | None] = field(default_factory=dict)
    path: tuple[Hop, ...] = ()
    assumptions: tuple[Assumption, ...] = ()
    notes: tuple[str, ...] = ()
    # Conditions on state kpa cannot see (e.g. affinity lists), chosen on an open split.
    facts: tuple[str, ...] = ()
    misses: tuple[Miss, ...] = ()
    # Fields the engine itself fixed (e.g. routing picked `lo`): not user conditions.
    derived: frozenset[str] = frozenset()
    hook: str = ""
    # Sent by a process on this node (origin output): it has a socket, with an owner.
    local_origin: bool = False

    @property
    def version(self) -> int:
        return self.family.version

    def _with(self, **changes: Any) -> State:
        # dataclasses.replace re-validates through __init__ and dominated trace
        # time; states are immutable values, so a shallow copy is enough.
        new = object.__new__(State)
        d = new.__dict__
        d.update(self.__dict__)
        d.update(changes)
        return new

    # -- reading fields -------------------------------------------------
    def concrete(self, name: str) -> int | None:
        value = self.peek(name)
        if _reads is not None:
            _reads.append((READ_VAL, name, value))
        return value

    def peek(self, name: str) -> int | None:
        """The field's one value if it has one, without recording the read (for indexes that record their own)."""
        if name in self.rewrites:
            return self.rewrites[name]
        dom = self.domains[name]
        return dom.single_value() if isinstance(dom, IntSet) else None

    def original(self, name: str) -> IntSet:
        """The field as the packet was sent, before NAT (conntrack's original tuple)."""
        dom: IntSet = self.domains[name]
        if _reads is not None:
            _reads.append((READ_ORIG, name, dom))
        return dom

    def recent_member(self, name: str, default: bool | None) -> bool | None:
        """Whether the client is in a `recent` list / runtime set, as far as this state has decided."""
        value = self.recent.get(name, ABSENT)
        if _reads is not None:
            _reads.append((READ_RECENT, name, value))
        return default if value is ABSENT else value  # type: ignore[return-value]

    # -- narrowing ------------------------------------------------------
    def restrict(self, name: str, allowed: IntSet) -> tuple[State | None, State | None]:
        """Split on `name in allowed`: (states where it holds, where it does not)."""
        if name in self.rewrites:
            hit = self.rewrites[name] in allowed
            if _reads is not None:
                _reads.append((READ_IN, name, allowed, hit))
            return (self, None) if hit else (None, self)
        dom: IntSet = self.domains[name]
        single = dom.single_value()
        if single is not None:
            # A concrete field never splits: it is in the set or not.
            hit = single in allowed
            if _reads is not None:
                _reads.append((READ_IN, name, allowed, hit))
            return (self, None) if hit else (None, self)
        if _reads is not None:
            _reads.append((READ_DOM, name, dom))
        yes, no = dom & allowed, dom - allowed
        if not no:
            return self, None
        if not yes:
            return None, self
        return self.with_domain(name, yes), self.with_domain(name, no)

    def restrict_name(self, name: str, pattern: str, is_prefix: bool) -> tuple[State | None, State | None]:
        dom: NameSet = self.domains[name]
        if _reads is not None:
            _reads.append((READ_NAME, name, dom))
        yes, no = dom.split(pattern, is_prefix)
        return (
            None if yes is None else (self if yes is dom else self.with_domain(name, yes)),
            None if no is None else (self if no is dom else self.with_domain(name, no)),
        )

    def restrict_ctstate(self, allowed: frozenset[str]) -> tuple[State | None, State | None]:
        yes, no = self.ctstate & allowed, self.ctstate - allowed
        return (
            self._with(ctstate=yes) if yes else None,
            self._with(ctstate=no) if no else None,
        )

    def with_domain(self, name: str, value: Any) -> State:
        domains = dict(self.domains)
        domains[name] = value
        return self._with(domains=domains)

    # -- changing the packet --------------------------------------------
    def rewrite(self, **values: int) -> State:
        rw = dict(self.rewrites)
        rw.update(values)
        return self._with(rewrites=rw)

    def scaled(self, factor: Fraction) -> State:
        return self._with(probability=self.probability * factor)

    def hop(self, h: Hop) -> State:
        return self._with(path=(*self.path, h))

    def assume(self, a: Assumption) -> State:
        return self._with(assumptions=(*self.assumptions, a))

    def note(self, text: str) -> State:
        return self._with(notes=(*self.notes, text))

    def set(self, **changes: Any) -> State:
        return self._with(**changes)


@dataclass
class PacketSpec:
    """What the user asked about. None leaves a field open."""

    family: Family = Family.IPV4
    src: str | None = None
    dst: str | None = None
    proto: str | None = None
    sport: int | None = None
    dport: int | None = None
    icmp_type: int | None = None
    iif: str | None = None
    oif: str | None = None
    origin: str = "prerouting"  # or "output"
    ctstate: str | None = "NEW"  # None leaves it open
    mark: int = 0
    # Sources left out of an open source (e.g. `--from external`: pod CIDRs, node addresses).
    src_exclude: tuple[str, ...] = ()
    # The sending process's user and group (locally generated packets), and the
    # Ethernet source address (packets from a network interface). None leaves them open.
    uid: int | None = None
    gid: int | None = None
    src_mac: str | None = None

    def initial_state(self) -> State:
        v = self.family.version
        doms: dict[str, Any] = {}
        for name in INT_FIELDS:
            doms[name] = full_domain(name, v)
        if self.src:
            doms["src"] = network_set(ipaddress.ip_network(self.src, strict=False))
        for text in self.src_exclude:
            net = ipaddress.ip_network(text, strict=False)
            if net.version == v:
                doms["src"] = doms["src"] - network_set(net)
        if self.dst:
            doms["dst"] = network_set(ipaddress.ip_network(self.dst, strict=False))
        if self.proto:
            doms["proto"] = IntSet.single(protocol_number(self.proto, self.family))
        if self.sport is not None:
            doms["sport"] = IntSet.single(self.sport)
        if self.dport is not None:
            doms["dport"] = IntSet.single(self.dport)
        if self.icmp_type is not None:
            doms["icmp_type"] = IntSet.single(self.icmp_type)
        if self.uid is not None:
            doms["uid"] = IntSet.single(self.uid)
        if self.gid is not None:
            doms["gid"] = IntSet.single(self.gid)
        if self.src_mac is not None:
            doms["mac"] = IntSet.single(parse_mac(self.src_mac))
        doms["iif"] = NameSet(self.iif) if self.iif else NameSet()
        doms["oif"] = NameSet(self.oif) if self.oif else NameSet()
        if self.origin == "output":
            # Locally generated packets have no input interface.
            doms["iif"] = NameSet("")
        ct = frozenset({self.ctstate.upper()}) if self.ctstate else PACKET_CT_STATES
        flags = 0x02 if "NEW" in ct and len(ct) == 1 else 0x10
        return State(self.family, doms, ctstate=ct, mark=self.mark, tcp_flags=flags,
                     local_origin=self.origin == "output")


def parse_mac(text: str) -> int:
    """`02:00:00:00:00:01` as a 48-bit number."""
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) in (1, 2) and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts):
        raise ValueError(f"expected a MAC address like 02:00:00:00:00:01, found {text!r}")
    return int("".join(p.zfill(2) for p in parts), 16)


def format_mac(value: int) -> str:
    return ":".join(f"{(value >> s) & 0xFF:02x}" for s in range(40, -1, -8))


def protocol_number(name: str, family: Family = Family.IPV4) -> int:
    """A protocol the user names on kpa's command line; `icmp` means ICMPv6 for an IPv6 packet."""
    if name.lower() == "icmp" and family is Family.IPV6:
        return 58
    return iptables_protocol(name)


def node_local_addresses(ips: list[str]) -> dict[int, IntSet]:
    """The addresses `addrtype LOCAL` and routing treat as this node's: given ones plus loopback."""
    local = {4: network_set(ipaddress.ip_network("127.0.0.0/8")), 6: IntSet.single(1)}
    for ip in ips:
        a = ipaddress.ip_address(ip)
        local[a.version] = local[a.version] | IntSet.single(int(a))
    return local


@dataclass(frozen=True)
class QueueDecision:
    """What the program listening on a queue does with a packet, as a layer above the engine knows it.

    `verdict` is "ACCEPT" (the packet goes on after the queueing base chain, as if
    it had accepted), "DROP", or "QUEUE" (the listener is known but its decision is
    not: the outcome stays QUEUE, with `reason`); `reason` says who decided and why.
    """

    verdict: str
    reason: str


# Given the state at a queue rule (its last hop is that rule) and the queue verdict's
# detail ("queue 3, bypass"), the listener's decision, or None when the listener is
# not known (the outcome stays the plain QUEUE).
QueueDecider = Callable[[State, str], "QueueDecision | None"]


@dataclass
class TraceContext:
    """Facts about the node that are not in the ruleset."""

    local: dict[int, IntSet]  # IP version -> the node's local addresses
    # recent-match lists the client is in (True), not in (False), or open (None).
    affinity: dict[str, bool | None] = field(default_factory=dict)
    affinity_default: bool | None = False
    # The ruleset's ipsets (set by the engine from Ruleset.ipsets) for the `set` match.
    ipsets: dict[str, IpSet] = field(default_factory=dict)
    # Node state a ruleset does not show, as the user stated it (None: unknown, both ways explored).
    ipsec: bool = False  # whether packets are IPsec-protected (-m policy); by default no IPsec policy
    rate_limits: str | None = None  # "within" or "exceeded": limit, hashlimit, nft limit
    connections: int | None = None  # connections the client already has (connlimit, ct count)
    recent_hits: int | None = None  # packets seen from the client in a recent list (--hitcount)
    socket: str | None = None  # "found" or "none": whether -m socket / TPROXY find a socket
    # Addresses the node routes, per IP version: prefix -> interface (None: interface not known).
    routes: dict[int, list[tuple[IntSet, str | None]]] = field(default_factory=dict)
    max_outcomes: int = 512
    explain: bool = False
    # Reuse base-chain evaluations between states the chain cannot tell apart (kpa.netfilter.memo).
    memo: bool = True
    warnings: list[str] = field(default_factory=list)
    # Set by the engine: the rule being evaluated, for assumptions and hops.
    rule: Rule | None = None
    chain_lookup: Any = None
    # The program listening on queues, if a layer above the engine knows what it decides.
    queue_decider: QueueDecider | None = None

    def is_local(self, version: int) -> IntSet:
        return self.local.get(version, IntSet())

    def facts_key(self) -> tuple[Any, ...]:
        """The stated node facts that change what rules do (memoised walks are per these)."""
        return (self.ipsec, self.rate_limits, self.connections, self.recent_hits, self.socket,
                tuple((v, tuple(r)) for v, r in sorted(self.routes.items())))
