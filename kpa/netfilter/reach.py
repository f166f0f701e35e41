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

import ipaddress
import re
from collections.abc import Iterable, Iterator
from typing import Any

from kpa.netfilter.engine import MAX_DEPTH
from kpa.netfilter.index import MIN_RULES
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


class _Summary:
    """What some rules of a chain contribute to a signature walk."""

    __slots__ = ("anything", "branches", "dports", "dsts", "refs", "safe")

    def __init__(self) -> None:
        self.refs: list[str] = []
        self.dsts: set[int] = set()
        self.dports: set[int] = set()
        self.anything = False  # a rule may set the destination to anything
        self.safe = True  # every rule fully modelled
        self.branches = 0  # statistic (load-balancing) matches


class _ChainInfo:
    __slots__ = ("by_dport", "by_dst", "full", "generic", "groups", "indexed", "rules", "texts")

    def __init__(self, texts: tuple[str, ...]) -> None:
        self.texts = texts
        self.indexed = len(texts) >= MIN_RULES
        self.generic: list[int] = []
        self.by_dst: dict[int, list[int]] = {}
        self.by_dport: dict[int, list[int]] = {}
        self.full: _Summary | None = None
        self.groups: dict[Any, _Summary] = {}
        self.rules: dict[int, tuple[tuple[str, ...], Any, bool, int]] = {}


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
                addr = _address(m.group(1) or m.group(2), "128" if m.group(2) else "32")
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
        base = self.base(family)
        if base is None:
            return None
        if base.anything:
            walked = self._walk(family, {dst}, {dport}, True)
            return None if walked is None else walked[0]
        dsts, dports = {dst} | base.dsts, {dport} | base.dports
        reads: dict[tuple[str, str], set[int]] = {}  # indexed chains: the positions read
        indexed: list[tuple[Table, Chain]] = list(base.indexed)
        done: dict[tuple[str, str], tuple[set[int], set[int]]] = {}  # per indexed chain: dsts, dports seen
        extra: dict[tuple[str, str], tuple[str, ...]] = {}
        stack: list[tuple[Table, Chain]] = []
        branches = base.branches
        while True:
            grew = False
            for table, chain in indexed:
                key = (table.name, chain.name)
                info = self._chain(chain)
                seen_d, seen_p = done.setdefault(key, (set(), set()))
                new: list[int] = []
                summaries: list[_Summary] = []
                for d in dsts - seen_d:
                    group = info.by_dst.get(d)
                    if group:
                        new.extend(group)
                        summaries.append(self._group(table, chain, info, ("d", d), group))
                for p in dports - seen_p:
                    group = info.by_dport.get(p)
                    if group:
                        new.extend(group)
                        summaries.append(self._group(table, chain, info, ("p", p), group))
                seen_d |= dsts
                seen_p |= dports
                if not new:
                    continue
                reads.setdefault(key, set(info.generic)).update(new)
                summary = summaries[0] if len(summaries) == 1 else _merge(summaries)
                if not summary.safe:
                    return None
                if summary.anything:
                    walked = self._walk(family, {dst}, {dport}, True)
                    return None if walked is None else walked[0]
                branches += summary.branches
                dsts |= summary.dsts
                dports |= summary.dports
                stack.extend((table, table.chains[n]) if n in table.chains else (table, None)  # type: ignore[misc]
                             for n in summary.refs)
            while stack:
                table, chain = stack.pop()
                if chain is None:
                    return None  # a jump to an undefined chain: the trace warns
                key = (table.name, chain.name)
                if key in base.seen or key in extra:
                    continue
                grew = True
                info = self._chain(chain)
                if info.indexed:
                    extra[key] = ()
                    indexed.append((table, chain))
                    reads.setdefault(key, set(info.generic))
                    summary = self._group(table, chain, info, "generic", info.generic)
                else:
                    extra[key] = info.texts
                    if info.full is None:
                        info.full = self._summary(table, chain, info, range(len(info.texts)))
                    summary = info.full
                if not summary.safe:
                    return None
                if summary.anything:
                    walked = self._walk(family, {dst}, {dport}, True)
                    return None if walked is None else walked[0]
                branches += summary.branches
                dsts |= summary.dsts
                dports |= summary.dports
                stack.extend((table, table.chains[n]) if n in table.chains else (table, None)  # type: ignore[misc]
                             for n in summary.refs)
            if not grew and all(done.get((t.name, c.name), (set(), set())) == (dsts, dports) for t, c in indexed):
                break
        if branches > MAX_BRANCHES:
            return None
        for table, chain in indexed:
            key = (table.name, chain.name)
            if key in reads:
                texts = self._chain(chain).texts
                extra[key] = tuple(texts[i] for i in sorted(reads[key]))
        return tuple(sorted(extra.items()))

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


_PIN_OPTIONS = {"-p", "-m", "--dport", "-d", "--dst-type", "-j", "--reject-with"}


def _pin(text: str) -> tuple[int | None, int] | None:
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
    dst = _address(addr, prefix or ("128" if ":" in addr else "32"))
    return None if dst is None else (dst, int(port))


def _merge(summaries: list[_Summary]) -> _Summary:
    out = _Summary()
    for s in summaries:
        out.refs.extend(s.refs)
        out.dsts |= s.dsts
        out.dports |= s.dports
        out.anything = out.anything or s.anything
        out.safe = out.safe and s.safe
        out.branches += s.branches
    return out


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


def _address(text: str, prefix: str) -> int | None:
    if prefix == "32":
        parts = text.split(".")
        # The canonical dotted quad iptables-save prints; anything else goes through ipaddress.
        if len(parts) == 4 and all(p.isdigit() and p.isascii() and (p == "0" or p[0] != "0") and int(p) < 256
                                   for p in parts):
            a, b, c, d = (int(p) for p in parts)
            return (a << 24) | (b << 16) | (c << 8) | d
    try:
        parsed = ipaddress.ip_address(text)
    except ValueError:
        return None
    if (parsed.version, prefix) not in ((4, "32"), (6, "128")):
        return None
    return int(parsed)
