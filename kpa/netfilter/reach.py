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
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from kpa.netfilter.engine import MAX_DEPTH
from kpa.netfilter.index import MIN_RULES, address_value
from kpa.netfilter.index import text_pin as _pin
from kpa.netfilter.model import HOOKS, Chain, Family, Ruleset, Table

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
    __slots__ = ("by_dport", "by_dst", "full", "generic", "groups", "indexed", "rules", "same_in", "texts")

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

    def __init__(self, ruleset: Ruleset) -> None:
        self.ruleset = ruleset
        self.usable = bool(ruleset.tables) and all(t.source.startswith("iptables") for t in ruleset.tables)
        if self.usable:
            # A trace that walks a loop, or nests jumps deeper than the engine allows, warns;
            # such rulesets are always traced.
            self.usable = _depth_ok(ruleset)
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
            for pos, text in enumerate(info.texts):
                pin = _pin(text)
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
        if got is not None:
            return got
        rule = chain.rules[pos]
        refs = tuple(name for _, name in rule.chain_refs())
        text = rule.text
        if "--comment" in text:
            text = _COMMENT.sub("", text)
        dnat: Any = None
        targets = _TARGET.findall(text)
        if len(targets) > 1 or '"' in text or "'" in text:
            dnat = ANY  # quoting other than the comment's, or several targets: do not guess
        elif targets and targets[0] not in table.chains and targets[0] not in _KEEPS_DST:
            m = _DNAT.search(text) if targets[0] == "DNAT" else None
            if m and m.end() == len(text.rstrip()):
                addr = address_value(m.group(1) or m.group(2), "128" if m.group(2) else "32")
                dnat = ANY if addr is None else (addr, int(m.group(3)) if m.group(3) else None)
            else:
                dnat = ANY
        got = info.rules[pos] = (refs, dnat, rule.known, text.count("-m statistic"))
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


def _depth_ok(ruleset: Ruleset) -> bool:
    """No loop among the chains, and no chain nesting deeper than the engine follows without a warning."""
    for t in ruleset.tables:
        succ = {name: [n for r in c.rules for _, n in r.chain_refs()] for name, c in t.chains.items()}
        depth: dict[str, int] = {}
        for root in succ:
            if root in depth:
                continue
            # Iterative depth-first search; a chain on the current path seen again is a loop.
            on_path: set[str] = {root}
            stack: list[tuple[str, Iterator[str]]] = [(root, iter(succ[root]))]
            while stack:
                name, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    stack.pop()
                    on_path.discard(name)
                    depth[name] = 1 + max((depth.get(n, 0) for n in succ[name] if n in succ), default=0)
                    continue
                if nxt in on_path:
                    return False
                if nxt in depth or nxt not in succ:
                    continue
                on_path.add(nxt)
                stack.append((nxt, iter(succ[nxt])))
        if max(depth.values(), default=0) > MAX_DEPTH // 2:
            return False
    return True
