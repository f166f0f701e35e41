"""kpa's one intermediate representation of a netfilter ruleset.

Every input format (iptables-save, ip6tables-save, nft text, nft JSON) parses
into these types. A rule is an ordered list of expressions, as in nftables:
matches narrow the packet, statements change it, and at most one verdict ends
the rule. An iptables rule is the special case "matches, then one target".
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from kpa.netfilter.packet import State, TraceContext


class Family(str, Enum):
    IPV4 = "ip"
    IPV6 = "ip6"
    INET = "inet"
    ARP = "arp"
    BRIDGE = "bridge"
    NETDEV = "netdev"

    @property
    def version(self) -> int:
        return 6 if self is Family.IPV6 else 4


@dataclass(frozen=True, slots=True)
class Location:
    """Where something was read: a file (or `<stdin>`, a live source) and a 1-based line."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


_LOCATION_FILE = Location.__dict__["file"].__set__
_LOCATION_LINE = Location.__dict__["line"].__set__


def new_location(file: str, line: int) -> Location:
    """Location(file, line), set through its slots: a frozen dataclass's __init__ sets each field through
    object.__setattr__, which costs as much again for the tens of thousands of chains read in bulk."""
    loc = object.__new__(Location)
    _LOCATION_FILE(loc, file)
    _LOCATION_LINE(loc, line)
    return loc


class VerdictKind(str, Enum):
    ACCEPT = "ACCEPT"
    DROP = "DROP"
    REJECT = "REJECT"
    RETURN = "RETURN"
    JUMP = "JUMP"
    GOTO = "GOTO"
    QUEUE = "QUEUE"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a rule or chain decides: accept, drop, reject, queue, return, jump or goto (with its chain)."""

    kind: VerdictKind
    chain: str | None = None
    # REJECT's reply (icmp-port-unreachable, tcp-reset, ...) or why a DROP happened.
    detail: str | None = None

    @property
    def terminal(self) -> bool:
        return self.kind in (VerdictKind.ACCEPT, VerdictKind.DROP, VerdictKind.REJECT, VerdictKind.QUEUE)

    def __str__(self) -> str:
        if self.chain:
            return f"{self.kind.value.lower()} {self.chain}"
        return self.kind.value + (f" ({self.detail})" if self.detail else "")


ACCEPT = Verdict(VerdictKind.ACCEPT)
DROP = Verdict(VerdictKind.DROP)
RETURN = Verdict(VerdictKind.RETURN)


class Flow(Enum):
    """What an expression tells the engine to do next, besides a verdict."""

    CONTINUE = "continue"  # go on to the next expression of this rule
    NO_MATCH = "no-match"  # this rule does not apply: go to the next rule


Step = tuple["State", "Flow | Verdict"]


class Expr:
    """One piece of a rule. Extension modules subclass this.

    `step` is the symbolic semantics: given a packet state it returns every
    way the expression can go, each with the (narrowed or rewritten) state.
    Probabilistic expressions scale the states' probability.
    """

    #: Module name as the source format spells it (`tcp`, `statistic`, `DNAT`...).
    name: str = ""
    #: False for an expression kpa parsed but cannot evaluate.
    known: bool = True

    def step(self, st: State, ctx: TraceContext) -> Iterable[Step]:
        raise NotImplementedError

    def render(self) -> list[str]:
        """Tokens in iptables-save syntax (unquoted values; the renderer quotes)."""
        raise NotImplementedError

    def describe(self) -> str:
        return " ".join(self.render())

    def chain_refs(self) -> Iterator[tuple[VerdictKind, str]]:
        """Chains this expression can jump or go to."""
        return iter(())

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "text": self.describe(), "known": self.known}


class Rule:
    """One rule: its position, its source text, and its ordered expressions."""

    # lineno, _refs, _shape and _source are LazyRule's: with one layout for both, a lazy rule
    # becomes a plain Rule once built.
    __slots__ = ("__weakref__", "_refs", "_shape", "_source", "chain", "comment", "counters", "exprs", "handle",
                 "index", "lineno", "location", "table", "text")

    table: str
    chain: str
    index: int  # 1-based position in its chain, as `iptables -L --line-numbers` counts
    exprs: list[Expr]
    location: Location
    text: str
    comment: str | None
    counters: tuple[int, int] | None
    handle: int | None

    def __init__(self, table: str, chain: str, index: int, exprs: list[Expr], location: Location, text: str,
                 comment: str | None = None, counters: tuple[int, int] | None = None,
                 handle: int | None = None) -> None:
        self.table = table
        self.chain = chain
        self.index = index
        self.exprs = exprs
        self.location = location
        self.text = text
        self.comment = comment
        self.counters = counters
        self.handle = handle

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.table}/{self.chain} #{self.index} at {self.location}: {self.text!r})"

    def where(self) -> str:
        """`FILE:LINE` of the rule, as `str(rule.location)` gives it."""
        return str(self.location)

    @property
    def known(self) -> bool:
        return all(e.known for e in self.exprs)

    def unknown_exprs(self) -> list[Expr]:
        return [e for e in self.exprs if not e.known]

    def chain_refs(self) -> Iterator[tuple[VerdictKind, str]]:
        for e in self.exprs:
            yield from e.chain_refs()


class RuleShape:
    """What every rule of one shape shares, as far as validation needs.

    Parsers that validate many rules of identical structure at once (see
    kpa.parse.iptables_save) record here whether the shape's rules have
    expressions kpa does not model, and which chains they jump or go to.
    """

    __slots__ = ("counters", "unknown")

    def __init__(self, unknown: bool, counters: tuple[int, int] | None) -> None:
        self.unknown = unknown
        self.counters = counters


class RuleSource(Protocol):
    """Builds a lazy rule's expressions from its text, exactly as an eager parse would have."""

    file: str

    def materialise(self, rule: DeferredRule) -> tuple[list[Expr], str | None]: ...


# The storage behind Rule's attributes, which LazyRule's properties of the same names hide.
_SLOTS: dict[str, Any] = {name: Rule.__dict__[name] for name in ("exprs", "comment", "location")}


class DeferredRule(Rule):
    """A rule whose text has been validated but whose expressions are built on first use.

    Validation (kpa check) needs only what the rule's shape tells: whether it
    holds unknown expressions and where it jumps. Reading or setting `exprs`
    or `comment` builds them exactly as an eager parse would have, and turns
    the rule into a plain Rule; `location` is worked out without parsing.
    Its text is in the syntax of the reader that made it: LazyRule (iptables)
    or LazyNftRule (nftables).
    """

    __slots__ = ()

    lineno: int
    _source: RuleSource
    _shape: RuleShape
    _refs: tuple[tuple[VerdictKind, str], ...]

    def __init__(self, table: str, chain: str, index: int, text: str, lineno: int, source: RuleSource,
                 shape: RuleShape, refs: tuple[tuple[VerdictKind, str], ...]) -> None:
        self.table = table
        self.chain = chain
        self.index = index
        self.text = text
        self.lineno = lineno
        self._source = source
        self._shape = shape
        self._refs = refs
        self.counters = shape.counters
        self.handle = None

    def build(self) -> Rule:
        """Build this rule's expressions now; it is a plain Rule from then on."""
        exprs, comment = self._source.materialise(self)
        _SLOTS["exprs"].__set__(self, exprs)
        _SLOTS["comment"].__set__(self, comment)
        self._locate()
        object.__setattr__(self, "__class__", Rule)
        return self

    def _locate(self) -> Location:
        try:
            loc: Location = _SLOTS["location"].__get__(self, Rule)
        except AttributeError:
            loc = Location(self._source.file, self.lineno)
            _SLOTS["location"].__set__(self, loc)
        return loc

    def _set_location(self, loc: Location) -> None:
        _SLOTS["location"].__set__(self, loc)

    if not TYPE_CHECKING:
        def _built(name: str) -> property:
            def get(self: DeferredRule) -> Any:
                return getattr(self.build(), name)

            def set_(self: DeferredRule, value: Any) -> None:
                setattr(self.build(), name, value)

            return property(get, set_)

        exprs = _built("exprs")
        comment = _built("comment")
        # Where a rule is needs no parsing: reading it leaves the rule lazy.
        location = property(_locate, _set_location)
        del _built

    def where(self) -> str:
        # A lazy rule's location is only ever its source file and line; this reads them
        # without making (and caching) a Location.
        return f"{self._source.file}:{self.lineno}"

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.table}/{self.chain} #{self.index} at {self._source.file}:{self.lineno}: "
                f"{self.text!r})")

    @property
    def known(self) -> bool:
        return not self._shape.unknown

    def unknown_exprs(self) -> list[Expr]:
        return self.build().unknown_exprs() if self._shape.unknown else []

    def chain_refs(self) -> Iterator[tuple[VerdictKind, str]]:
        return iter(self._refs)


class LazyRule(DeferredRule):
    """A deferred rule read from iptables-save text (`-A CHAIN ...`): code that reads such
    text directly (kpa.k8s.kubeproxy, kpa.netfilter.index) may answer from it unbuilt."""

    __slots__ = ()


class LazyNftRule(DeferredRule):
    """A deferred rule read from `nft list ruleset` text (kpa.parse.nft_shapes)."""

    __slots__ = ()


# iptables tables hook in at fixed priorities; nftables base chains carry theirs.
# These are the kernel's NF_IP_PRI_* values, which is also what nft's named
# priorities (raw, mangle, dstnat, filter, security, srcnat) stand for.
IPTABLES_PRIORITY: dict[tuple[str, str], int] = {
    ("raw", "PREROUTING"): -300,
    ("raw", "OUTPUT"): -300,
    ("mangle", "PREROUTING"): -150,
    ("mangle", "INPUT"): -150,
    ("mangle", "FORWARD"): -150,
    ("mangle", "OUTPUT"): -150,
    ("mangle", "POSTROUTING"): -150,
    ("nat", "PREROUTING"): -100,
    ("nat", "OUTPUT"): -100,
    ("nat", "INPUT"): 100,
    ("nat", "POSTROUTING"): 100,
    ("filter", "INPUT"): 0,
    ("filter", "FORWARD"): 0,
    ("filter", "OUTPUT"): 0,
    ("security", "INPUT"): 50,
    ("security", "FORWARD"): 50,
    ("security", "OUTPUT"): 50,
}

IPTABLES_TABLES = ("raw", "mangle", "nat", "filter", "security")
HOOKS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")


@dataclass(eq=False, slots=True)
class Chain:
    """A chain of one table: its rules in order and, for a base chain, its hook, priority and policy."""

    name: str
    table: str
    rules: list[Rule] = field(default_factory=list)
    # Base chains only: where they hook in, how, and what happens at their end.
    hook: str | None = None
    priority: int | None = None
    kind: str | None = None  # "filter" | "nat" | "route"
    policy: str | None = None
    counters: tuple[int, int] | None = None
    location: Location | None = None
    handle: int | None = None
    # Lazily built lookup used by the engine to skip rules that pin another
    # destination address; see kpa.netfilter.index.
    _index: Any = field(default=None, repr=False)

    @property
    def is_base(self) -> bool:
        return self.hook is not None


@dataclass(eq=False)
class NamedSet:
    """An nftables set or map (ipset lists use the same shape)."""

    name: str
    key_types: tuple[str, ...]
    # Each element is a tuple of key parts; a part is an IntSet-able value or a name.
    elements: list[tuple[Any, ...]] = field(default_factory=list)
    # For maps: the value each element maps to (a verdict or data), index-aligned.
    values: list[Any] | None = None
    flags: frozenset[str] = frozenset()
    location: Location | None = None
    # Sets a rule can add to at runtime (`update @set`), so their content is not final.
    dynamic: bool = False
    # Element comments (kube-proxy names the Service port of each element), index-aligned; None if none.
    comments: list[str | None] | None = None


@dataclass(eq=False)
class IpSetMember:
    """One `add` line of an `ipset save` dump: the element's parts as written, and its flags."""

    # The element's parts as values (see kpa.parse.ipset_save), e.g. ((0x0a000000, 8), ("eth0", False)).
    parts: tuple[Any, ...]
    nomatch: bool = False
    options: dict[str, str] = field(default_factory=dict)  # timeout, packets, bytes, comment, skbmark...
    location: Location | None = None


@dataclass(eq=False)
class IpSet:
    """One ipset as `ipset save` printed it (`create` line plus its `add` lines).

    kpa.ext.ipset builds the lookup structures from this on first use.
    """

    name: str
    type: str  # "hash:ip", "hash:net,iface", "list:set", ...
    family: str | None  # "inet", "inet6", or None for family-less types (bitmap:port, list:set)
    options: dict[str, str] = field(default_factory=dict)  # hashsize, timeout, netmask, range, counters...
    members: list[IpSetMember] = field(default_factory=list)
    location: Location | None = None
    _index: Any = field(default=None, repr=False)


@dataclass(eq=False)
class Table:
    """One table of one family (iptables' raw/mangle/nat/filter, or an nftables table) with its chains and sets."""

    family: Family
    name: str
    chains: dict[str, Chain] = field(default_factory=dict)
    sets: dict[str, NamedSet] = field(default_factory=dict)
    # Which input this table came from, e.g. "iptables-nft", "iptables-legacy", "nft".
    source: str = ""
    location: Location | None = None
    # Tables that iptables-nft manages, seen through `nft list ruleset`.
    managed_by_iptables: bool = False

    def chain(self, name: str) -> Chain | None:
        return self.chains.get(name)

    def base_chains(self) -> Iterator[Chain]:
        return (c for c in self.chains.values() if c.is_base)

    def rules(self) -> Iterator[Rule]:
        for c in self.chains.values():
            yield from c.rules


@dataclass(eq=False)
class Ruleset:
    """Every table read from a node's dumps, with the ipsets the rules refer to; what every reader produces."""

    tables: list[Table] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # ipsets by name, from `ipset save` dumps (the `set` match and SET target look them up here).
    ipsets: dict[str, IpSet] = field(default_factory=dict)
    # (family, hook) -> [(table, base chain)], built on first use: large rulesets
    # have tens of thousands of chains but only a handful of base chains.
    _hooks: dict[tuple[Family, str | None], list[tuple[Table, Chain]]] = field(default_factory=dict, repr=False)

    def table(self, family: Family, name: str) -> Table | None:
        for t in self.tables:
            if t.family is family and t.name == name:
                return t
        return None

    def families(self) -> set[Family]:
        return {t.family for t in self.tables}

    def hook_chains(self, family: Family, hook: str) -> list[tuple[Table, Chain]]:
        """Base chains on a hook for packets of `family`, in the kernel's order.

        inet tables see both IPv4 and IPv6 packets. The sort is stable, so at
        equal priority the table registered first runs first.
        """
        key = (family, hook)
        cached = self._hooks.get(key)
        if cached is not None:
            return cached
        if (family, None) not in self._hooks:
            # Every hook of the family in one pass over the chains (there may be tens of thousands).
            self._hooks[(family, None)] = []
            for t in self.tables:
                if t.family is family or (t.family is Family.INET and family in (Family.IPV4, Family.IPV6)):
                    for c in t.base_chains():
                        if c.hook is not None:
                            self._hooks.setdefault((family, c.hook), []).append((t, c))
            for k, chains in self._hooks.items():
                if k[0] is family and k[1] is not None:
                    chains.sort(key=lambda tc: tc[1].priority if tc[1].priority is not None else 0)
        return self._hooks.setdefault(key, [])

    def merge(self, other: Ruleset) -> None:
        self.tables.extend(other.tables)
        self.warnings.extend(other.warnings)
        for name, ipset in other.ipsets.items():
            first = self.ipsets.get(name)
            if first is None:
                self.ipsets[name] = ipset
            elif first is not ipset:
                self.warnings.append(f"ipset {name} is given twice ({first.location} and {ipset.location}); "
                                     "using the first")
        self._hooks.clear()
