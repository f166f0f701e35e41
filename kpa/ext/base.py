"""Shared pieces for extension modules: options, conditions, registration.

Each module in kpa.ext (one per netfilter match or target, like the kernel's
xt_*.c and iptables' libxt_*.c) parses its own options and carries its own
symbolic semantics. It registers a parser under the name iptables uses after
`-m` or `-j`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from kpa.netfilter.domain import IntSet, network_set
from kpa.netfilter.model import Expr, Family, Flow, Step, Verdict, VerdictKind
from kpa.netfilter.packet import Assumption, State, TraceContext
from kpa.netfilter.protocols import BadNumber, c_uint


class OptionError(ValueError):
    """A known option with a value that is not valid (bad CIDR, bad port...)."""


class Unsupported(Exception):
    """An option kpa parses but does not model: the expression becomes unknown."""


@dataclass
class Option:
    """One option of a match or target as written, e.g. `--dport 80` or `! -s 10.0.0.0/8`."""

    name: str  # as written, e.g. "--dport"
    args: list[str]
    negated: bool = False

    def render(self) -> list[str]:
        return (["!"] if self.negated else []) + [self.name, *self.args]

    def arg(self, n: int = 0) -> str:
        if len(self.args) <= n:
            raise OptionError(f"{self.name} expects a value")
        return self.args[n]


@dataclass
class ParseCtx:
    """What a match or target parser knows of the rule around it: the family and the rule's `-p`."""

    family: Family
    protocol: str | None = None  # the rule's -p, which implies tcp/udp/... modules


MatchParser = Callable[[list[Option], ParseCtx], Expr]
TargetParser = Callable[[list[Option], ParseCtx], Expr]
MATCHES: dict[str, MatchParser] = {}
TARGETS: dict[str, TargetParser] = {}


def match(*names: str) -> Callable[[MatchParser], MatchParser]:
    def deco(fn: MatchParser) -> MatchParser:
        for n in names:
            MATCHES[n] = fn
        return fn
    return deco


def target(*names: str) -> Callable[[TargetParser], TargetParser]:
    def deco(fn: TargetParser) -> TargetParser:
        for n in names:
            TARGETS[n] = fn
        return fn
    return deco


# -- conditions ----------------------------------------------------------

# Each side is a list because one test can leave several disjoint parts.
Split = tuple[list[State], list[State]]


def parts(yes: State | None, no: State | None) -> Split:
    return ([yes] if yes is not None else []), ([no] if no is not None else [])


def assumed(st: State, ctx: TraceContext, fallback: str, why: str, matched: bool) -> State:
    """`st`, recording that the rule being evaluated (or `fallback`, its text when there is
    no rule) was assumed to match, or not to, and why."""
    rule = ctx.rule
    loc, text = (rule.location, rule.text) if rule else (None, fallback)
    return st.assume(Assumption(loc, text, why, matched))


def both_ways(st: State, ctx: TraceContext, fallback: str, why: str, negated: bool = False,
              why_not: str | None = None) -> tuple[State, State]:
    """An unknown test: (`st` where it holds, `st` where it does not), each recording the
    assumption. With `negated` the rule matches where the test does not hold."""
    return (assumed(st, ctx, fallback, why, not negated),
            assumed(st, ctx, fallback, why if why_not is None else why_not, negated))


class Cond:
    """One test on the packet; `split` returns (holds, does not hold)."""

    negated: bool = False

    def test(self, st: State, ctx: TraceContext) -> Split:
        raise NotImplementedError

    def split(self, st: State, ctx: TraceContext) -> Split:
        yes, no = self.test(st, ctx)
        return (no, yes) if self.negated else (yes, no)


@dataclass
class IntCond(Cond):
    """A condition that a numeric packet field lies in a set of values."""

    field: str
    values: IntSet
    negated: bool = False

    def test(self, st: State, ctx: TraceContext) -> Split:
        return parts(*st.restrict(self.field, self.values))


@dataclass
class NameCond(Cond):
    """A condition on an interface-like name: equal to a pattern, or starting with it (`eth+`)."""

    field: str
    pattern: str
    prefix: bool
    negated: bool = False

    def test(self, st: State, ctx: TraceContext) -> Split:
        return parts(*st.restrict_name(self.field, self.pattern, self.prefix))


@dataclass
class PredCond(Cond):
    """A test on state kpa always knows concretely (marks, flags)."""

    pred: Callable[[State, TraceContext], bool]
    negated: bool = False

    def test(self, st: State, ctx: TraceContext) -> Split:
        return ([st], []) if self.pred(st, ctx) else ([], [st])


@dataclass
class FnCond(Cond):
    """A condition decided by a function of the state, for tests no field set expresses."""

    fn: Callable[[State, TraceContext], Split]
    negated: bool = False

    def test(self, st: State, ctx: TraceContext) -> Split:
        return self.fn(st, ctx)


def conjunction(conds: Iterable[Cond], st: State, ctx: TraceContext) -> tuple[list[State], list[State]]:
    """Split a state on an AND of conditions: every part that passes all, and every part that fails one."""
    yes = [st]
    no: list[State] = []
    for cond in conds:
        passing: list[State] = []
        for s in yes:
            y, n = cond.split(s, ctx)
            passing.extend(y)
            no.extend(n)
        yes = passing
        if not yes:
            break
    return yes, no


@dataclass(eq=False)
class Match(Expr):
    """A match module instance: its options, and the conditions they mean."""

    name: str = ""
    options: list[Option] = field(default_factory=list)
    conds: list[Cond] = field(default_factory=list)
    # Core matches (-s, -d, -p, -i, -o) render without "-m NAME".
    implicit: bool = False

    def step(self, st: State, ctx: TraceContext) -> Iterable[Step]:
        yes, no = conjunction(self.conds, st, ctx)
        for s in yes:
            yield s, Flow.CONTINUE
        for s in no:
            yield s, Flow.NO_MATCH

    def render(self) -> list[str]:
        head = [] if self.implicit else ["-m", self.name]
        return head + [t for o in self.options for t in o.render()]


@dataclass(eq=False)
class UnknownExpr(Expr):
    """A match or target kpa does not model. Kept verbatim; both ways are explored."""

    name: str = ""
    tokens: list[str] = field(default_factory=list)
    reason: str = ""
    is_target: bool = False
    known: bool = False

    def step(self, st: State, ctx: TraceContext) -> Iterable[Step]:
        rule = ctx.rule
        loc = rule.location if rule else None
        text = rule.text if rule else self.describe()
        why = self.reason or f"{'target' if self.is_target else 'match'} {self.name!r} is not modelled"
        if self.is_target:
            # An unknown target may or may not end the packet's walk.
            yield st.assume(Assumption(loc, text, why + " (may continue)", True)), Flow.CONTINUE
            yield st.assume(Assumption(loc, text, why + " (may drop)", True)), Verdict(VerdictKind.DROP, detail=f"unknown target {self.name}")
            return
        yield st.assume(Assumption(loc, text, why, True)), Flow.CONTINUE
        yield st.assume(Assumption(loc, text, why, False)), Flow.NO_MATCH

    def render(self) -> list[str]:
        return list(self.tokens)


@dataclass(eq=False)
class VerdictExpr(Expr):
    """A target that ends the rule with a verdict (ACCEPT, DROP, RETURN, a jump, ...)."""

    verdict: Verdict = field(default_factory=lambda: Verdict(VerdictKind.ACCEPT))

    def __post_init__(self) -> None:
        self.name = self.verdict.kind.value

    def step(self, st: State, ctx: TraceContext) -> Iterable[Step]:
        yield st, self.verdict

    def render(self) -> list[str]:
        v = self.verdict
        if v.kind is VerdictKind.JUMP:
            return ["-j", v.chain or ""]
        if v.kind is VerdictKind.GOTO:
            return ["-g", v.chain or ""]
        return ["-j", v.kind.value]

    def chain_refs(self) -> Iterator[tuple[VerdictKind, str]]:
        if self.verdict.chain:
            yield self.verdict.kind, self.verdict.chain


@dataclass(eq=False)
class Statement(Expr):
    """A non-terminating target or nft statement: changes state, then rule goes on."""

    name: str = ""
    options: list[Option] = field(default_factory=list)
    apply: Callable[[State, TraceContext], State] | None = None

    def step(self, st: State, ctx: TraceContext) -> Iterable[Step]:
        yield (self.apply(st, ctx) if self.apply else st), Flow.CONTINUE

    def render(self) -> list[str]:
        return ["-j", self.name] + [t for o in self.options for t in o.render()]


# -- parsing helpers -----------------------------------------------------

def _fast_ipv4(text: str) -> IntSet | None:
    """Plain dotted-quad with an optional prefix: the common case, parsed without ipaddress."""
    addr, _, plen = text.partition("/")
    parts = addr.split(".")
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 for p in parts):
        return None
    a, b, c, d = (int(p) for p in parts)
    if a > 255 or b > 255 or c > 255 or d > 255:
        return None
    bits = 32
    if plen:
        if not plen.isdigit() or int(plen) > 32:
            return None
        bits = int(plen)
    value = (a << 24) | (b << 16) | (c << 8) | d
    host = (1 << (32 - bits)) - 1
    lo = value & ~host
    return IntSet(((lo, lo | host),))


def parse_network(text: str, family: Family) -> IntSet:
    if family is not Family.IPV6:
        fast = _fast_ipv4(text)
        if fast is not None:
            return fast
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        addr, _, mask = text.partition("/")
        try:
            ipaddress.ip_address(addr)
            ipaddress.ip_address(mask)
        except ValueError:
            raise OptionError(f"expected an address or CIDR, found {text!r}") from exc
        # iptables-save prints a non-contiguous mask in dotted form; kpa does not model those.
        raise Unsupported(f"non-contiguous address mask {mask} is not modelled") from exc
    if (net.version == 6) != (family is Family.IPV6) and family in (Family.IPV4, Family.IPV6):
        raise OptionError(f"expected an IPv{family.version} address, found {text!r}")
    return network_set(net)


def parse_networks(text: str, family: Family) -> IntSet:
    out = IntSet()
    for part in text.split(","):
        out = out | parse_network(part, family)
    return out


def parse_port(text: str) -> int:
    """A port as libxtables reads it: a C number 0-65535 (`80`, `0x50`, `+80`), else a service name.

    iptables-save prints numbers; names only occur in restore payloads, and
    iptables itself looks those up in this host's services database.
    """
    try:
        return c_uint(text, 65535, sign=True)
    except BadNumber:
        pass
    if text[:1].isdigit() or text[:1] == "+":
        raise OptionError(f"expected a port number 0-65535, found {text[:40]!r}")
    import socket
    try:
        return socket.getservbyname(text)
    except (OSError, UnicodeError, ValueError):
        raise OptionError(f"expected a port number or service name, found {text[:40]!r}") from None


def parse_port_range(text: str) -> IntSet:
    if ":" in text:
        lo_s, hi_s = text.split(":", 1)
        lo = parse_port(lo_s) if lo_s else 0
        hi = parse_port(hi_s) if hi_s else 65535
        if lo > hi:
            raise OptionError(f"expected a port range low:high, found {text!r}")
        return IntSet.range(lo, hi)
    return IntSet.single(parse_port(text))


def parse_int(text: str, what: str = "a number", maximum: int = 0xFFFFFFFF) -> int:
    """An unsigned number as libxtables' strtoui reads it (C base 0: `10`, `0x10`, `010`)."""
    try:
        return c_uint(text, maximum, sign=True)
    except BadNumber:
        raise OptionError(f"expected {what} (0-{maximum:#x}), found {text[:40]!r}") from None


def parse_value_mask(text: str, full: int = 0xFFFFFFFF) -> tuple[int, int]:
    """`value[/mask]` as used by mark, connmark and MARK."""
    value_s, _, mask_s = text.partition("/")
    value = parse_int(value_s, "a mark value")
    mask = parse_int(mask_s, "a mark mask") if mask_s else full
    return value, mask
