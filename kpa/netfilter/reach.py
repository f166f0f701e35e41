"""What a trace to one destination can read: a signature to tell identical traces apart cheaply.

A trace is a deterministic function of the rules it evaluates (and of the
base chains, ipsets and node facts around them). `Signatures.signature`
collects, without tracing, every rule a trace of a packet with a concrete
destination address and port can evaluate, as text: all base chains of the
family, and every chain a collected rule can jump or go to. In a large chain
(one the engine indexes, see kpa.netfilter.index) a rule that pins the
destination address (or, pinning no address, the destination port) to a
value the packet can never carry is left out, as the engine's index leaves
it out; small chains are read whole, as the engine reads them. What every
packet of a family reads (`Signatures.base`) is worked out once, and a
signature holds only what a packet reads beyond it. The values the packet can carry are the entry's own and every DNAT
target among the collected rules; a rule that may rewrite the destination
in any other way (REDIRECT, an unknown target, a DNAT range) stops all such
pruning for that signature.

If two rulesets give the same signature for a packet, a trace of it in one
evaluates exactly the rules it would evaluate in the other, so the two traces
give the same outcomes, warnings and paths. `None` means no signature: the
caller must trace (undefined chains, loops, rules kpa does not fully model,
many load-balancing branches, or a ruleset that is not iptables text).

One thing is bounded by rule of thumb rather than proven: a trace that hits
--max-outcomes or its step budget says so in a warning, and a skipped trace
says nothing. Traces with more than MAX_BRANCHES load-balancing branches
(kube-proxy's statistic rules, the usual cause of many outcomes) are never
skipped; a trace with fewer that still hits the bound would lose its warning.

Only iptables text is read (the pins and targets of kube-proxy's rules are
recognised by anchored patterns; anything else pins nothing, which only
makes the signature larger).

`Signatures.same` walks A's rules for one packet and checks B's on the way;
`Comparison.same` (what `kpa diff` uses) decides the same question for many
packets, sharing the work between them, and prunes a little more (see its
docstring). tests/test_diff_fast.py checks that it says "same" wherever
the walk does, and that diff's report is the same with and without it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from kpa.netfilter.engine import MAX_DEPTH
from kpa.netfilter.index import MIN_RULES, address_value
from kpa.netfilter.index import build as build_index
from kpa.netfilter.index import text_pin as _pin
from kpa.netfilter.model import HOOKS, Chain, Family, LazyRule, Rule, Ruleset, Table

_HASHED_CHAIN = re.compile(r"KUBE-[A-Z]{2,3}-[A-Z0-9]{16}")
_COMMENT = re.compile(r'--comment (?:"(?:[^"\\]|\\.)*"|\S+)')
_TARGET = re.compile(r"(?:^|\s)(?:-j|-g|--jump|--goto)\s+(\S+)")
_DNAT = re.compile(r" -j DNAT --to-destination (?:([0-9.]+)|\[([0-9A-Fa-f:]+)\])(?::([0-9]{1,5}))?")
# Targets that never change the destination address or port.
_KEEPS_DST = frozenset({"ACCEPT", "DROP", "RETURN", "REJECT", "MARK", "CONNMARK", "MASQUERADE", "SNAT",
                        "LOG", "NFLOG", "NOTRACK", "CT"})
# More load-balancing branches than this may make a trace hit --max-outcomes; such
# entries are traced rather than skipped.
MAX_BRANCHES = 32

ANY = object()  # a rule that may set the destination to anything
_SAME = object()


class _Summary:
    """What some rules of a chain contribute to a signature walk."""

    __slots__ = ("anything", "branches", "dports", "dsts", "kids", "refs", "safe")

    def __init__(self) -> None:
        self.refs: list[str] = []
        # The chains `refs` name, resolved in the table (None: no such chain).
        self.kids: list[tuple[Table, Chain | None]] = []
        self.dsts: set[int] = set()
        self.dports: set[int] = set()
        self.anything = False  # a rule may set the destination to anything
        self.safe = True  # every rule fully modelled
        self.branches = 0  # statistic (load-balancing) matches


class _ChainInfo:
    __slots__ = ("by_dport", "by_dst", "full", "generic", "groups", "indexed", "pins", "rules", "same_in", "texts")

    def __init__(self, texts: tuple[str, ...]) -> None:
        self.texts = texts
        self.indexed = len(texts) >= MIN_RULES
        self.generic: list[int] = []
        self.by_dst: dict[int, list[int]] = {}
        self.by_dport: dict[int, list[int]] = {}
        self.full: _Summary | None = None
        self.groups: dict[Any, _Summary] = {}
        self.rules: dict[int, tuple[tuple[str, ...], Any, bool, int]] = {}
        self.same_in: dict[int, bool] = {}  # id(other Signatures) -> same texts there
        self.pins: list[tuple[int | None, int] | None] = []  # indexed chains: each rule's text_pin

    def twin(self) -> _ChainInfo:
        """What a chain with the same rule texts has in common with this one: texts and pins, no more.

        The facts and summaries of rules depend on the table around them; those are not shared.
        """
        twin = _ChainInfo(self.texts)
        twin.pins, twin.generic, twin.by_dst, twin.by_dport = self.pins, self.generic, self.by_dst, self.by_dport
        return twin


class _Base:
    """What every packet of a family reads: base chains, and all they reach by rules that pin nothing."""

    def __init__(self, seen: dict[tuple[str, str], tuple[str, ...]], dsts: set[int], dports: set[int],
                 anything: bool, branches: int) -> None:
        self.seen = seen
        self.dsts = dsts
        self.dports = dports
        self.anything = anything
        self.branches = branches
        self.indexed: list[tuple[Table, Chain]] = []


class Signatures:
    """Trace signatures of one ruleset, with what they are built from worked out once."""

    def __init__(self, ruleset: Ruleset, usable: bool | None = None) -> None:
        """`usable`: what `usable(ruleset)` says, when the caller knows or assumes it (else worked out here)."""
        self.ruleset = ruleset
        self.usable = usable_rules(ruleset) if usable is None else usable
        self._chains: dict[int, _ChainInfo] = {}
        self._bases: dict[Family, _Base | None] = {}
        self._tables = {(t.family, t.name): t for t in ruleset.tables}
        self._reached: list[tuple[Table, Chain]] = []

    def context(self) -> Any:
        """Everything around the chains a trace reads: base chains, their hooks and policies, ipsets."""
        return (
            tuple((t.family.value, t.name, tuple((c.name, c.hook, c.priority, c.kind, c.policy)
                                                 for c in t.base_chains())) for t in self.ruleset.tables),
            tuple(sorted((name, repr(s.type), repr(s.family), repr(sorted(s.options.items())),
                          repr([(m.parts, m.nomatch, sorted(m.options.items())) for m in s.members]))
                         for name, s in self.ruleset.ipsets.items())),
        )

    def _chain(self, chain: Chain) -> _ChainInfo:
        info = self._chains.get(id(chain))
        if info is not None:
            return info
        info = _ChainInfo(tuple(r.text for r in chain.rules))
        if info.indexed:
            info.pins = [_pin(text) for text in info.texts]
            if chain._index is None and len(chain.rules) == len(info.texts):
                chain._index = build_index(chain, info.pins)  # the engine's index, from the same reading
            for pos, pin in enumerate(info.pins):
                if pin is None:
                    info.generic.append(pos)
                elif pin[0] is not None:
                    info.by_dst.setdefault(pin[0], []).append(pos)
                else:
                    info.by_dport.setdefault(pin[1], []).append(pos)
        self._chains[id(chain)] = info
        return info

    def _rule(self, table: Table, chain: Chain, info: _ChainInfo, pos: int) -> tuple[tuple[str, ...], Any, bool, int]:
        """A rule's chain references, its effect on the destination, whether kpa models it, its branches."""
        got = info.rules.get(pos)
        if got is None:
            got = info.rules[pos] = rule_facts(table, chain.rules[pos])
        return got

    def _summary(self, table: Table, chain: Chain, info: _ChainInfo, positions: Iterable[int]) -> _Summary:
        s = _Summary()
        for pos in positions:
            refs, dnat, known, branches = self._rule(table, chain, info, pos)
            s.refs.extend(refs)
            s.safe = s.safe and known
            s.branches += branches
            if dnat is ANY:
                s.anything = True
            elif dnat is not None:
                if dnat[0] is not None:
                    s.dsts.add(dnat[0])
                if dnat[1] is not None:
                    s.dports.add(dnat[1])
        s.kids = [(table, table.chains.get(n)) for n in s.refs]
        return s

    def base(self, family: Family) -> _Base | None:
        """What every packet of `family` reads, whatever its destination (None: not usable)."""
        if not self.usable:
            return None
        if family not in self._bases:
            walked = self._walk(family, set(), set(), False)
            base = None
            if walked is not None:
                sig, dsts, dports, anything, branches = walked
                base = _Base(dict(sig), dsts, dports, anything, branches)
                for table, chain in self._reached:
                    if self._chain(chain).indexed:
                        base.indexed.append((table, chain))
            self._bases[family] = base
        return self._bases[family]

    def _group(self, table: Table, chain: Chain, info: _ChainInfo, key: Any, positions: list[int]) -> _Summary:
        got = info.groups.get(key)
        if got is None:
            got = info.groups[key] = self._summary(table, chain, info, positions)
        return got

    def signature(self, family: Family, dst: int, dport: int) -> Any | None:
        """What a trace of a packet of `family` to `dst`:`dport` reads beyond `base(family)`, or None.

        None: no signature, the packet must be traced.
        """
        return self._extra(family, dst, dport, None)

    def same(self, other: Signatures, family: Family, dst: int, dport: int) -> bool:
        """Whether a trace of this packet reads the same rules here and in `other`, whose base must be ours.

        Equal to ``signature(...) == other.signature(...)`` when neither is None: a
        walk here that reads only what `other` holds identically is the walk there.
        """
        return self._extra(family, dst, dport, other) is _SAME

    def _other_texts(self, other: Signatures, table: Table, chain: Chain) -> tuple[str, ...] | None:
        """`other`'s rule texts for the chain of this name, or None if it has no such chain."""
        t = other._tables.get((table.family, table.name))
        c = t.chains.get(chain.name) if t is not None else None
        return None if c is None else other._chain(c).texts

    def _extra(self, family: Family, dst: int, dport: int, other: Signatures | None) -> Any | None:
        base = self.base(family)
        if base is None:
            return None
        if base.anything:
            return self._without_pruning(family, dst, dport, other)
        dsts, dports = {dst} | base.dsts, {dport} | base.dports
        reads: dict[tuple[str, str], set[int]] = {}  # indexed chains: the positions read
        indexed: list[tuple[Table, Chain]] = list(base.indexed)
        done_d: set[int] = set()  # the destinations and ports every indexed chain has been searched for
        done_p: set[int] = set()
        extra: dict[tuple[str, str], tuple[str, ...]] = {}
        stack: list[tuple[Table, Chain | None]] = []
        branches = base.branches
        fresh: list[tuple[Table, Chain]] = []  # indexed chains found since the last search
        seen_base = base.seen
        while True:
            new_d, new_p = dsts - done_d, dports - done_p
            searches = [(tc, new_d, new_p) for tc in indexed] if new_d or new_p else []
            searches.extend((tc, dsts, dports) for tc in fresh)
            indexed.extend(fresh)
            fresh = []
            done_d |= new_d
            done_p |= new_p
            for (table, chain), ds, ps in searches:
                info = self._chain(chain)
                new: list[int] = []
                summaries: list[_Summary] = []
                for d in ds:
                    group = info.by_dst.get(d)
                    if group:
                        new.extend(group)
                        summaries.append(self._group(table, chain, info, ("d", d), group))
                for p in ps:
                    group = info.by_dport.get(p)
                    if group:
                        new.extend(group)
                        summaries.append(self._group(table, chain, info, ("p", p), group))
                if not new:
                    continue
                key = (table.name, chain.name)
                got = reads.get(key)
                if got is None:
                    got = reads[key] = set(info.generic)
                got.update(new)
                for summary in summaries:
                    if not summary.safe:
                        return None
                    if summary.anything:
                        return self._without_pruning(family, dst, dport, other)
                    branches += summary.branches
                    dsts |= summary.dsts
                    dports |= summary.dports
                    stack.extend(summary.kids)
            while stack:
                tbl, ch = stack.pop()
                if ch is None:
                    return None  # a jump to an undefined chain: the trace warns
                key = (tbl.name, ch.name)
                if key in seen_base or key in extra:
                    continue
                info = self._chain(ch)
                if info.indexed:
                    extra[key] = ()
                    fresh.append((tbl, ch))
                    reads.setdefault(key, set(info.generic))
                    summary = self._group(tbl, ch, info, "generic", info.generic)
                else:
                    if other is not None:
                        same = info.same_in.get(id(other))
                        if same is None:
                            same = info.same_in[id(other)] = self._other_texts(other, tbl, ch) == info.texts
                        if not same:
                            return None  # this chain differs: so do the traces, as far as is known
                    extra[key] = info.texts
                    if info.full is None:
                        info.full = self._summary(tbl, ch, info, range(len(info.texts)))
                    summary = info.full
                if not summary.safe:
                    return None
                if summary.anything:
                    return self._without_pruning(family, dst, dport, other)
                branches += summary.branches
                dsts |= summary.dsts
                dports |= summary.dports
                stack.extend(summary.kids)
            if not fresh and dsts == done_d and dports == done_p:
                break
        if branches > MAX_BRANCHES:
            return None
        for table, chain in indexed:
            key = (table.name, chain.name)
            if key in reads:
                texts = self._chain(chain).texts
                extra[key] = tuple(texts[i] for i in sorted(reads[key]))
            if other is not None:
                t = other._tables.get((table.family, table.name))
                c = t.chains.get(chain.name) if t is not None else None
                if c is None:
                    return None
                o = other._chain(c)
                if not o.indexed:
                    return None
                positions = set(o.generic)
                for d in dsts:
                    positions.update(o.by_dst.get(d, ()))
                for p in dports:
                    positions.update(o.by_dport.get(p, ()))
                if tuple(o.texts[i] for i in sorted(positions)) != extra.get(key, base.seen.get(key)):
                    return None
        return _SAME if other is not None else tuple(sorted(extra.items()))

    def _without_pruning(self, family: Family, dst: int, dport: int, other: Signatures | None) -> Any | None:
        walked = self._walk(family, {dst}, {dport}, True)
        if walked is None or other is None:
            return None if walked is None else walked[0]
        theirs = other._walk(family, {dst}, {dport}, True)
        return _SAME if theirs is not None and walked[0] == theirs[0] else None

    def _walk(self, family: Family, dsts: set[int], dports: set[int],
              anything: bool) -> tuple[Any, set[int], set[int], bool, int] | None:
        seen: dict[tuple[str, str], tuple[str, ...]] = {}
        self._reached = []
        found_dsts: set[int] = set()
        found_dports: set[int] = set()
        found_anything = False
        branches = 0
        stack: list[tuple[Table, Chain]] = []
        for hook in HOOKS:
            stack.extend(self.ruleset.hook_chains(family, hook))
        while stack:
            table, chain = stack.pop()
            key = (table.name, chain.name)
            if key in seen:
                continue
            info = self._chain(chain)
            self._reached.append((table, chain))
            if info.indexed and not anything:
                positions: set[int] = set(info.generic)
                for d in dsts:
                    positions.update(info.by_dst.get(d, ()))
                for p in dports:
                    positions.update(info.by_dport.get(p, ()))
                read = sorted(positions)
                seen[key] = tuple(info.texts[i] for i in read)
                summary = self._summary(table, chain, info, read)
            else:
                seen[key] = info.texts
                if info.full is None:
                    info.full = self._summary(table, chain, info, range(len(info.texts)))
                summary = info.full
            if not summary.safe:
                return None
            branches += summary.branches
            found_anything = found_anything or summary.anything
            found_dsts |= summary.dsts
            found_dports |= summary.dports
            for name in summary.refs:
                target = table.chains.get(name)
                if target is None:
                    return None  # a jump to an undefined chain: the trace warns
                stack.append((table, target))
        if branches > MAX_BRANCHES:
            return None
        return tuple(sorted(seen.items())), found_dsts, found_dports, found_anything, branches


def iptables_text(ruleset: Ruleset) -> bool:
    """Whether the ruleset is iptables text, the only kind signatures read."""
    return bool(ruleset.tables) and all(t.source.startswith("iptables") for t in ruleset.tables)


def usable_rules(ruleset: Ruleset) -> bool:
    """Whether traces of this ruleset can be told apart by signature: iptables text, no loop among the
    chains and no nesting deeper than the engine follows (a trace that walks a loop, or nests jumps
    deeper than the engine allows, warns; such rulesets are always traced)."""
    return iptables_text(ruleset) and _depth_ok(ruleset)


def _depth_ok(ruleset: Ruleset) -> bool:
    """No loop among the chains, and no chain nesting deeper than the engine follows without a warning."""
    for t in ruleset.tables:
        chains = t.chains
        succ: dict[str, list[str]] = {}
        indegree = dict.fromkeys(chains, 0)
        for name, c in chains.items():
            kids = []
            for r in c.rules:
                for _, n in (r._refs if type(r) is LazyRule else r.chain_refs()):
                    if n in chains:
                        kids.append(n)
                        indegree[n] += 1
            succ[name] = kids
        # Kahn's order: every chain after all chains that jump to it; a loop leaves chains out.
        order = [name for name, k in indegree.items() if k == 0]
        for name in order:
            for n in succ[name]:
                indegree[n] -= 1
                if indegree[n] == 0:
                    order.append(n)
        if len(order) != len(succ):
            return False
        # The longest chain of jumps from each chain, counting the chains on it.
        depth: dict[str, int] = {}
        deepest = 0
        for name in reversed(order):
            kids = succ[name]
            d = 1 + max([depth[n] for n in kids]) if kids else 1
            depth[name] = d
            if d > deepest:
                deepest = d
        if deepest > MAX_DEPTH // 2:
            return False
    return True


# ---------------------------------------------------------------- what one rule does to a walk

Facts = tuple[tuple[str, ...], Any, bool, int]


def rule_facts(table: Table, rule: Rule) -> Facts:
    """What a rule contributes to a walk, read from its text.

    The chains it jumps or goes to; what it may set the destination to (None:
    nothing, ANY: anything, else (address or None, port or None) of a plain
    DNAT); whether kpa models every part of it; how many load-balancing
    (statistic) matches it holds.
    """
    refs = tuple(name for _, name in rule.chain_refs())
    text = rule.text
    if "--comment" in text:
        text = _COMMENT.sub("", text)
    dnat: Any = None
    targets = _TARGET.findall(text)
    if len(targets) > 1 or '"' in text or "'" in text:
        dnat = ANY  # quoting other than the comment's, or several targets: do not guess
    elif targets and targets[0] not in table.chains and targets[0] not in _KEEPS_DST:
        dnat = _dnat(text) if targets[0] == "DNAT" else ANY
    return refs, dnat, rule.known, text.count("-m statistic")


def _dnat(text: str) -> Any:
    """The (address, port) a comment-free `-j DNAT --to-destination` rule sets, or ANY."""
    m = _DNAT.search(text)
    if not (m and m.end() == len(text.rstrip())):
        return ANY
    addr = address_value(m.group(1) or m.group(2), "128" if m.group(2) else "32")
    return ANY if addr is None else (addr, int(m.group(3)) if m.group(3) else None)


# How the facts of a rule follow from its shape's first rule (see _FactCache).
_CONST, _JUMP, _DNAT_RULE = 0, 1, 2


class _FactCache:
    """`rule_facts` for many rules, worked out once per rule shape where the values cannot change them.

    The iptables parser gives rules that differ only in values (addresses,
    ports, DNAT addresses, comments without quotes, kube-proxy's hash-named
    chains; see kpa.parse.shapes) one shape object. Those values hold no
    space outside a comment and no quote, and the comment is removed before
    anything is read, so rules of one shape have the same targets, quoting,
    statistic matches and modelling; only three things can differ, and are
    read per rule: where a jump to a hash-named chain goes, and whether that
    chain exists; the address of a DNAT. Anything else is read in full.
    """

    def __init__(self) -> None:
        self._shapes: dict[int, tuple[int, Facts, Any]] = {}

    def facts(self, table: Table, rule: Rule) -> Facts:
        if type(rule) is not LazyRule:
            return rule_facts(table, rule)
        key = id(rule._shape)
        got = self._shapes.get(key)
        if got is None:
            first = rule_facts(table, rule)
            self._shapes[key] = (self._kind(table, rule), first, rule._shape)
            return first
        kind, first, _ = got
        pairs = rule._refs  # what chain_refs() gives, without a generator
        refs = () if not pairs else (pairs[0][1],) if len(pairs) == 1 else tuple([n for _, n in pairs])
        if kind == _CONST:
            return refs, first[1], first[2], first[3]
        if kind == _JUMP:
            if len(refs) == 1 and refs[0] in table.chains and rule.text.endswith(" " + refs[0]):
                return refs, None, first[2], first[3]
            return rule_facts(table, rule)
        text = rule.text
        if "--comment" in text:
            text = _COMMENT.sub("", text)
        return refs, _dnat(text), first[2], first[3]

    @staticmethod
    def _kind(table: Table, rule: Rule) -> int:
        text = rule.text
        if "--comment" in text:
            text = _COMMENT.sub("", text)
        targets = _TARGET.findall(text)
        if len(targets) != 1 or '"' in text or "'" in text:
            return _CONST
        target = targets[0]
        if _HASHED_CHAIN.fullmatch(target):
            return _JUMP  # a value: each rule's own chain, which may or may not exist
        if target == "DNAT":
            return _DNAT_RULE
        return _CONST  # the same word in every rule of the shape


# ---------------------------------------------------------------- deciding entry by entry, fast


class _Reach:
    """What a walk gathers from some rules and every chain they lead to (beyond the base)."""

    __slots__ = ("anything", "branches", "dports", "dsts", "indexed", "stat")

    def __init__(self) -> None:
        self.stat: frozenset[int] = frozenset()  # ids of the chains reached that hold statistic matches
        self.dsts: frozenset[int] = frozenset()
        self.dports: frozenset[int] = frozenset()
        self.indexed: tuple[tuple[Table, Chain], ...] = ()  # indexed chains reached, outside the base
        self.anything = False  # a rule may set the destination to anything
        self.branches = 0  # statistic matches of the rules themselves (not of the chains they reach)


# What rules that lead nowhere outside the base and change nothing reach (shared).
_NOTHING = _Reach()


class _Index:
    """An indexed chain's rules by what they pin: the destination address and port, or the port only."""

    __slots__ = ("by_dport", "by_dst", "chain", "generic", "groups", "same", "table", "texts")

    def __init__(self, table: Table, chain: Chain, info: _ChainInfo) -> None:
        self.table = table
        self.chain = chain
        self.texts = info.texts
        self.generic: list[int] = []
        self.by_dst: dict[int, dict[int, list[int]]] = {}
        self.by_dport: dict[int, list[int]] = {}
        for pos, pin in enumerate(info.pins):
            if pin is None:
                self.generic.append(pos)
            elif pin[0] is not None:
                self.by_dst.setdefault(pin[0], {}).setdefault(pin[1], []).append(pos)
            else:
                self.by_dport.setdefault(pin[1], []).append(pos)
        self.groups: dict[Any, _Reach | None] = {}
        self.same: bool | None = None  # the other ruleset's chain of this name has the same rules

    def selection(self, dsts: set[int], dports: set[int]) -> list[str]:
        """The texts of the rules a walk with these destinations and ports reads, in chain order."""
        positions = set(self.generic)
        for d in dsts:
            ports = self.by_dst.get(d)
            if ports:
                for p in dports:
                    positions.update(ports.get(p, ()))
        for p in dports:
            positions.update(self.by_dport.get(p, ()))
        texts = self.texts
        return [texts[i] for i in sorted(positions)]


class _FamilyState:
    __slots__ = ("base", "chains", "dsts", "full", "index_of", "indexed", "ports")

    def __init__(self, base: _Base) -> None:
        self.base = base
        # Every address and port a rule of a large chain (A's or B's) pins. A DNAT target
        # outside them selects no rule anywhere, so walks need not carry it.
        self.dsts: frozenset[int] = frozenset()
        self.ports: frozenset[int] = frozenset()
        self.chains: dict[int, _Reach | None] = {}  # id(chain) -> what it reaches (None: the walk must stop)
        self.index_of: dict[int, _Index] = {}  # id(chain) -> its index, for indexed chains outside the base
        self.indexed: list[_Index] = []
        self.full: bool | None = None  # both full walks read the same rules


class Comparison:
    """Whether a trace to a destination reads the same rules in two rulesets, for many destinations.

    `same` decides as walking A's rules and checking B's (Signatures.same)
    would, with three differences that only ever make it say "same" more
    often, and each time rightly:

    * A rule of an indexed chain that pins the destination address *and* a
      port the packet can never have (neither its own nor a DNAT target
      port read on the way) is not read. Such a rule (see index.text_pin:
      nothing but address, protocol, port, LOCAL address type, comment and
      target) cannot match any state of the packet, so its text and where it
      leads cannot change the trace. A Service's other ports thus do not
      make its unchanged ports be traced.
    * What a chain outside the base reaches (itself and every chain below
      it, with their DNAT targets, statistic matches and indexed chains) is
      worked out once and shared by every packet that reaches the chain.
    * An indexed chain whose rules are the same in both rulesets reads the
      same rules whatever the packet: its selection is not compared.

    A rule's facts are read once per shape where its values cannot change
    them (_FactCache). The caller checks first that A's Signatures are
    usable, that B is iptables text and that both have the same context
    (kpa.diff._same_traces does). B need not be checked for loops and deep
    nesting: "same" means every chain a trace can read in B has A's rules
    (small chains are compared whole, the base walks and the selections of
    indexed chains read the same texts), hence A's jumps, so the part of B
    such a trace reads is as loop-free and shallow as A.
    """

    def __init__(self, a: Signatures, b: Signatures) -> None:
        self.a = a
        self.b = b
        self.facts = _FactCache()
        self._families: dict[Family, _FamilyState | None] = {}
        self._stat: dict[int, int] = {}  # id(chain) -> its statistic matches
        self._b_index: dict[int, _Index | None] = {}

    def _family(self, family: Family) -> _FamilyState | None:
        if family not in self._families:
            ba = self.a.base(family)
            if ba is not None:
                self._share_pins(family)
            bb = self.b.base(family)
            state = None
            if ba is not None and bb is not None and ba.seen == bb.seen:
                state = _FamilyState(ba)
                state.indexed = [_Index(t, c, self.a._chain(c)) for t, c in ba.indexed]
                state.dsts, state.ports = self._pinned(family)
            self._families[family] = state
        return self._families[family]

    def _share_pins(self, family: Family) -> None:
        """B's large chains with A's rules take A's reading of them (the same texts pin the same)."""
        for t in self.a.ruleset.tables:
            if t.family is not family:
                continue
            theirs = self.b._tables.get((t.family, t.name))
            if theirs is None:
                continue
            for name, chain in t.chains.items():
                other = theirs.chains.get(name)
                if (other is None or len(chain.rules) < MIN_RULES or len(other.rules) != len(chain.rules)
                        or id(other) in self.b._chains):
                    continue
                mine = self.a._chain(chain)
                if mine.texts == tuple(r.text for r in other.rules):
                    self.b._chains[id(other)] = mine.twin()
                    if other._index is None:
                        other._index = build_index(other, mine.pins)

    def _pinned(self, family: Family) -> tuple[frozenset[int], frozenset[int]]:
        """Every address and port some large chain of A or B pins (see _FamilyState)."""
        dsts: set[int] = set()
        ports: set[int] = set()
        for sig in (self.a, self.b):
            for t in sig.ruleset.tables:
                if t.family is not family:
                    continue
                for chain in t.chains.values():
                    if len(chain.rules) >= MIN_RULES:
                        for pin in sig._chain(chain).pins:
                            if pin is not None:
                                if pin[0] is not None:
                                    dsts.add(pin[0])
                                ports.add(pin[1])
        return frozenset(dsts), frozenset(ports)

    def _full(self, family: Family, state: _FamilyState) -> bool:
        """Whether walks that read every rule (no destination pruning) read the same in both."""
        if state.full is None:
            wa = self.a._walk(family, set(), set(), True)
            wb = self.b._walk(family, set(), set(), True) if wa is not None else None
            state.full = wa is not None and wb is not None and wa[0] == wb[0]
        return state.full

    def _other(self, table: Table, chain: Chain) -> Chain | None:
        t = self.b._tables.get((table.family, table.name))
        return t.chains.get(chain.name) if t is not None else None

    def _rules(self, state: _FamilyState, table: Table, rules: Iterable[Rule]) -> _Reach | None:
        """What these rules of `table` reach (None: a walk must stop: unmodelled rule, missing or changed chain)."""
        facts = self.facts.facts
        chains = table.chains
        seen = state.base.seen
        tname = table.name
        memo = state.chains
        pinned_dsts, pinned_ports = state.dsts, state.ports
        anything = False
        branches = 0
        stat: set[int] | None = None
        dsts: set[int] | None = None
        dports: set[int] | None = None
        indexed: list[tuple[Table, Chain]] | None = None
        for rule in rules:
            refs, dnat, known, n = facts(table, rule)
            if not known:
                return None
            branches += n
            if dnat is not None:
                if dnat is ANY:
                    anything = True
                else:
                    if dnat[0] in pinned_dsts:
                        if dsts is None:
                            dsts = set()
                        dsts.add(dnat[0])
                    if dnat[1] in pinned_ports:
                        if dports is None:
                            dports = set()
                        dports.add(dnat[1])
            for name in refs:
                kid = chains.get(name)
                if kid is None:
                    return None  # a jump to an undefined chain: the trace warns
                if (tname, name) in seen:
                    continue
                if len(kid.rules) >= MIN_RULES:
                    if indexed is None:
                        indexed = []
                    indexed.append((table, kid))
                    continue
                sub = memo[id(kid)] if id(kid) in memo else self._chain(state, table, kid)
                if sub is None:
                    return None
                if sub is _NOTHING:
                    continue
                anything = anything or sub.anything
                if sub.stat:
                    stat = set(sub.stat) if stat is None else stat | sub.stat
                if sub.dsts:
                    dsts = set(sub.dsts) if dsts is None else dsts | sub.dsts
                if sub.dports:
                    dports = set(sub.dports) if dports is None else dports | sub.dports
                if sub.indexed:
                    indexed = list(sub.indexed) if indexed is None else indexed + list(sub.indexed)
        if not (anything or branches or stat or dsts or dports or indexed):
            return _NOTHING
        out = _Reach()
        out.anything = anything
        out.branches = branches
        if stat:
            out.stat = frozenset(stat)
        if dsts:
            out.dsts = frozenset(dsts)
        if dports:
            out.dports = frozenset(dports)
        if indexed:
            out.indexed = tuple(indexed)
        return out

    def _chain(self, state: _FamilyState, table: Table, chain: Chain) -> _Reach | None:
        """What a small chain outside the base reaches, itself included (None: the walk must stop)."""
        key = id(chain)
        if key in state.chains:
            return state.chains[key]
        state.chains[key] = None  # no loops (Signatures.usable), but never recurse forever
        got: _Reach | None = None
        t = self.b._tables.get((table.family, table.name))
        other = t.chains.get(chain.name) if t is not None else None
        if other is not None:
            mine, theirs = chain.rules, other.rules
            if len(mine) == len(theirs):
                for x, y in zip(mine, theirs):  # noqa: B905 (same length)
                    if x.text != y.text:
                        break
                else:
                    got = self._rules(state, table, mine)
        if got is not None and got.branches:
            self._stat[key] = got.branches
            reach = _Reach()
            reach.anything, reach.dsts, reach.dports, reach.indexed = got.anything, got.dsts, got.dports, got.indexed
            reach.stat = got.stat | {key}
            got = reach
        state.chains[key] = got
        return got

    def _group(self, state: _FamilyState, index: _Index, key: Any, positions: list[int]) -> _Reach | None:
        if key in index.groups:
            return index.groups[key]
        rules = index.chain.rules
        got = index.groups[key] = self._rules(state, index.table, [rules[i] for i in positions])
        return got

    def _b_side(self, index: _Index) -> _Index | None:
        key = id(index.chain)
        if key not in self._b_index:
            other = self._other(index.table, index.chain)
            self._b_index[key] = _Index(index.table, other, self.b._chain(other)) if other is not None and len(
                other.rules) >= MIN_RULES else None
        return self._b_index[key]

    def same(self, family: Family, dst: int, dport: int) -> bool:
        """Whether a trace of a packet of `family` to `dst`:`dport` reads the same rules in A and B."""
        state = self._family(family)
        if state is None:
            return False
        base = state.base
        if base.anything:
            return self._full(family, state)
        dsts, dports = {dst} | base.dsts, {dport} | base.dports
        branches = base.branches
        stat: set[int] = set()
        indexes = list(state.indexed)
        done: list[set[Any]] = [set() for _ in indexes]
        fresh: list[bool] = [False] * len(indexes)  # reached outside the base: its unpinned rules too
        known = {id(i.chain) for i in indexes}
        grew = True
        while grew:
            grew = False
            k = 0
            while k < len(indexes):
                index, seen = indexes[k], done[k]
                found: list[tuple[Any, list[int]]] = []
                if fresh[k]:
                    fresh[k] = False
                    found.append(("generic", index.generic))
                by_dst = index.by_dst
                for d in dsts:
                    ports = by_dst.get(d)
                    if ports:
                        for p in dports:
                            group = ports.get(p)
                            if group and (d, p) not in seen:
                                found.append(((d, p), group))
                by_dport = index.by_dport
                if by_dport:
                    for p in dports:
                        group = by_dport.get(p)
                        if group and p not in seen:
                            found.append((p, group))
                for key, group in found:
                    seen.add(key)
                    reach = self._group(state, index, key, group)
                    if reach is None:
                        return False
                    if reach.anything:
                        return self._full(family, state)
                    branches += reach.branches
                    stat.update(reach.stat)
                    if not reach.dsts <= dsts:
                        dsts.update(reach.dsts)
                        grew = True
                    if not reach.dports <= dports:
                        dports.update(reach.dports)
                        grew = True
                    for table, chain in reach.indexed:
                        if id(chain) not in known:
                            known.add(id(chain))
                            new = state.index_of.get(id(chain))
                            if new is None:
                                new = state.index_of[id(chain)] = _Index(table, chain, self.a._chain(chain))
                            indexes.append(new)
                            done.append(set())
                            fresh.append(True)
                            grew = True
                k += 1
        branches += sum(self._stat[i] for i in stat)
        if branches > MAX_BRANCHES:
            return False
        for index in indexes:
            if index.same is None:
                other = self._other(index.table, index.chain)
                index.same = other is not None and len(other.rules) == len(index.texts) and all(
                    x == y.text for x, y in zip(index.texts, other.rules, strict=True))
            if index.same:
                continue
            theirs = self._b_side(index)
            if theirs is None or theirs.selection(dsts, dports) != index.selection(dsts, dports):
                return False
        return True
