"""Rule skeletons for `nft list ruleset` text: each distinct rule shape is read in full once.

kube-proxy's nftables mode writes tens of thousands of rules from a few
patterns that differ only in addresses, ports and hash-named chains (`ip
saddr 10.244.1.5 jump mark-for-masquerade`, `meta l4proto tcp dnat to
10.244.1.5:8080`, `numgen random mod 3 vmap { 0 : goto endpoint-..., ... }`).
`skeleton_lines` replaces such values in a text by placeholders, one C regex
pass per kind (`skeleton_line`, the same for one line, is what a reader asks
for: only for a rule whose shape it cannot guess). A value becomes a placeholder only where it is
strictly valid for its position: a dotted quad (octets 0-255) right after
`ip saddr` / `ip daddr` (optionally `!=`), a port 0-65535 in decimal right
after `tcp|udp|sctp dport|sport`, an address:port right after `dnat to`, a
chain name of plain characters right after `jump` / `goto`. Anything else
stays in the skeleton as written.

Rules are grouped by (table, skeleton). The first rule of a group is read
and lowered in full; `analyse` then reads the skeleton itself with a marker
value in each placeholder and accepts the group only if

- every marker ends up once, and only as the right-hand side of an
  `ip saddr|daddr` or `tcp|udp|sctp dport|sport` comparison, the target of a
  jump or goto (also as a verdict-map element's), or the address and port of
  a `dnat to`: positions where any valid value reads and lowers the same way;
- the first rule's statements are the markers' statements with its values
  put in their place;
- lowering the markers' statements gives the same known/unknown answer,
  counters, and chain references (with the first rule's values in place of
  the markers) as lowering the first rule did;
- no statement has effects beyond its rule (anonymous chains, set updates).

Every later rule of an accepted group must match the group's pattern exactly
(`defer`), and becomes a LazyNftRule: validated, with its chain references
read from its values, and its expressions built on first use by the same code
as an eager read. Any other rule is read in full, in input order, so errors
are the same, at the same line, as without skeletons.
"""

from __future__ import annotations

import re
import struct
from array import array
from typing import Any

from kpa.errors import InputError
from kpa.forked import ChildJob
from kpa.netfilter.model import (
    Chain,
    DeferredRule,
    Expr,
    LazyNftRule,
    Rule,
    RuleShape,
    Table,
    VerdictKind,
)
from kpa.parse.nft_common import Builder, PendingRule
from kpa.parse.shapes import _IPV4, _PORT, FORK_THRESHOLD, Skeletons, _can_fork

ADDR, PORT, CHAIN, NAT, SET = "\x01", "\x02", "\x03", "\x04", "\x05"
PLACEHOLDERS = ADDR + PORT + CHAIN + NAT + SET
# What a chain or set name is allowed to be to become a placeholder: no blank, brace, quote, comma, ';', '#', '@'.
_NAME = r"[A-Za-z0-9_][A-Za-z0-9_./:-]*"
_AFTER = r"(?=[ \n]|\Z)"


class _Pattern:
    """A pattern compiled when first used: the JSON reader, and a text whose rules all fit a shape already
    known, never run most passes (compiling them all takes ~10 ms)."""

    __slots__ = ("compiled", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.compiled: re.Pattern[str] | None = None

    def sub(self, repl: str, text: str) -> str:
        compiled = self.compiled
        if compiled is None:
            compiled = self.compiled = re.compile(self.pattern)
        return compiled.sub(repl, text)


def _pass(context: str, value: str, after: str, placeholder: str) -> tuple[str, _Pattern, str]:
    """Replace `value` right after `context` (itself after a blank) by `placeholder`. The pattern opens
    with the context's first word so that the regex engine can search for it; the replacement is
    literal (no group to expand per match)."""
    word, rest = context.split(" ", 1)
    return (context, _Pattern(f"{re.escape(word)}(?<=[\t ]{re.escape(word)}) {re.escape(rest)}{value}{after}"),
            context + placeholder)


_PASSES: list[tuple[str, _Pattern, str]] = [
    *(_pass(f"ip {f}addr {op}", v, _AFTER, ph) for f in "sd" for op in ("", "!= ")
      for v, ph in ((_IPV4, ADDR), (f"@{_NAME}", SET))),
    *(_pass(f"{proto} {f}port {op}", _PORT, _AFTER, PORT) for proto in ("tcp", "udp", "sctp") for f in "sd"
      for op in ("", "!= ")),
    _pass("dnat to ", f"{_IPV4}:{_PORT}", _AFTER, NAT),
    _pass("update ", f"@{_NAME}", r"(?= \{ )", SET),
    *(_pass(f"{verdict} ", _NAME, r"(?=[ \n]|, |\Z)", CHAIN) for verdict in ("goto", "jump")),
]
_GROUPS = {ADDR: f"({_IPV4})", PORT: f"({_PORT})", CHAIN: f"({_NAME})", NAT: f"({_IPV4}:{_PORT})",
           SET: f"(@{_NAME})"}
_SPLIT = re.compile(f"([{PLACEHOLDERS}])")
# Shapes a reader tries for a rule before working out its skeleton: the latest that followed a rule of
# the previous rule's shape (a guess: what is read is what the shape's pattern matches). Six, not four:
# in a kube-proxy listing a service chain's last rule is followed by chains of more than four shapes
# (endpoints by protocol, external, firewall), and each miss works a skeleton out (5000x5.nft: 1308
# skeletons with four, 400 with six).
FOLLOWERS = 6
# At most this many placeholders in one rule (markers are numbered within a byte).
MAX_PLACEHOLDERS = 200


def skeleton_lines(text: str) -> list[str] | None:
    """The lines of `text` with valid values replaced by placeholders; None if the text holds one already."""
    if any(c in text for c in PLACEHOLDERS):
        return None
    return skeleton_line(text).splitlines()


def skeleton_line(line: str) -> str:
    """skeleton_lines' line for a line of a text without placeholders (no pass reaches past a line break,
    nor looks behind a line's first character but for a blank, which a line break is not), or the
    skeleton of a whole such text."""
    text = line
    # Whether the text has a context, asked once per suffix shared by several passes (`sport `, `dport != `)
    # before the pass's own: passes keep their context words, so the first answer holds throughout.
    present: dict[str, bool] = {}
    for literal, pattern, repl in _PASSES:
        shared = literal.split(" ", 1)[1]
        found = present.get(shared)
        if found is None:
            found = present[shared] = shared in text
        if found and literal in text:
            text = pattern.sub(repl, text)
    return text


def _entry(skeleton: str) -> str:
    """A skeleton line's entry: its handle, a NUL and its key; "" for none."""
    from kpa.parse.nft_text import _handle

    s = skeleton.strip()
    if not s or s[-1] in "{,":
        return ""
    if "#" in s:
        handle, key = _handle(s)
        return f"{'' if handle is None else handle}\x00{key}"
    return "\x00" + s


def line_keys(text: str) -> Skeletons | None:
    """For each line, an index into `keys`: the line's skeleton stripped and without its `# handle N`,
    after the handle and a NUL. Index 0 (no key): an empty line, or one that ends in `{` or `,` (a
    block's head, elements going on: never a rule that a skeleton could be of use to; one that is,
    oddly written, is read in full). None if the text holds a placeholder already. The whole text's
    answer, which LineKeys gives a line at a time."""
    lines = skeleton_lines(text)
    if lines is None:
        return None
    index: dict[str, int] = {"": 0}
    ids = array("i")
    append = ids.append
    for line in lines:
        entry = _entry(line)
        kid = index.get(entry)
        if kid is None:
            kid = index[entry] = len(index)
        append(kid)
    return Skeletons(list(index), ids)


class LineKeys:
    """The entry of line_keys for one line (by number) of a text, worked out when asked: its handle, a
    NUL and its key, or "" for none (also for a line that holds a placeholder already). Rules of a shape
    already known need none (kpa.parse.nft_text.ChainBatch guesses theirs), so most lines never ask."""

    __slots__ = ("lines",)

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def entry(self, lineno: int) -> str:
        line = self.lines[lineno - 1]
        if any(c in line for c in PLACEHOLDERS):
            return ""
        return _entry(skeleton_line(line))


class KeyJob:
    """LineKeys' entries of a large text, worked out for every line at once in a forked child while the
    parent reads the structure (as kpa.parse.shapes.SkeletonJob does for iptables): for a text whose rules
    are mostly read line by line (with handles, say), where guesses do not apply and most lines would ask.
    The child's answer is checked (one entry per line); any failure of the child: LineKeys, the same
    entries a line at a time."""

    def __init__(self, text: str, lines: list[str]) -> None:
        self.text = text
        self.lines = LineKeys(lines)
        self._done = False
        self._result: Skeletons | None = None
        self._job: ChildJob | None = ChildJob(self._child)

    @staticmethod
    def wanted(text: str) -> bool:
        """Whether a child may work the entries out: a large text without placeholders, and a fork."""
        return len(text) >= FORK_THRESHOLD and _can_fork() and not any(c in text for c in PLACEHOLDERS)

    def _child(self) -> list[bytes] | None:
        keys = line_keys(self.text)
        return None if keys is None else [keys.to_bytes()]

    def entry(self, lineno: int) -> str:
        if not self._done:
            self._done = True
            data = self._job.collect() if self._job is not None else None
            if data is not None:
                try:
                    sent = Skeletons.from_bytes(data)
                    if len(sent.ids) == len(self.lines.lines):
                        self._result = sent
                except (ValueError, struct.error):
                    pass
        got = self._result
        return got.keys[got.ids[lineno - 1]] if got is not None else self.lines.entry(lineno)

    def close(self) -> None:
        """Stop the child if its answer was never needed (the read failed first)."""
        if self._job is not None:
            self._job.stop()


def _marker(kind: str, i: int) -> str:
    """A valid value of the kind, numbered: what analyse() follows through the parser."""
    if kind == ADDR:
        return f"127.99.{i}.7"
    if kind == PORT:
        return str(50000 + i)
    if kind == CHAIN:
        return f"kpa-shape-chain-{i}-end"
    if kind == SET:
        return f"@kpa-shape-set-{i}-end"
    return f"127.98.{i}.7:{51000 + i}"


def _leaves(kind: str, value: str) -> list[str | int]:
    """The leaves a value becomes in the statements: `dnat to A:P` gives the address and the port number."""
    if kind == NAT:
        addr, port = value.split(":")
        return [addr, int(port)]
    return [value]


class NftShape(RuleShape):
    """An accepted skeleton: its pattern, and its chain references (literal, or a value's group)."""

    __slots__ = ("fullmatch", "lookups", "one", "pattern", "plain", "refs", "static", "updates")

    def __init__(self, rule: Rule, pattern: re.Pattern[str], refs: tuple[tuple[VerdictKind, str, int], ...],
                 lookups: tuple[int, ...], updates: tuple[tuple[str, int], ...]) -> None:
        super().__init__(not rule.known, rule.counters)
        self.pattern = pattern
        # The pattern's fullmatch, bound once: kpa.parse.nft_text.ChainBatch tries it on most rules.
        self.fullmatch = pattern.fullmatch
        self.refs = refs
        # Groups naming a set looked up (it must exist in the table), and the sets the rule updates.
        self.lookups = lookups
        self.updates = updates
        # The references when no value names a chain.
        self.static: tuple[tuple[VerdictKind, str], ...] | None = (
            tuple((k, n) for k, n, _ in refs) if all(g < 0 for _, _, g in refs) else None)
        # The one reference, to a value's chain: its kind and group.
        self.one: tuple[VerdictKind, int] | None = (refs[0][0], refs[0][2]) if len(refs) == 1 and refs[0][2] > 0 \
            else None
        # Nothing to check but the pattern, nothing to record but the rule (defer_text's common case).
        self.plain = not lookups and not updates

    def refs_of(self, m: re.Match[str]) -> tuple[tuple[VerdictKind, str], ...]:
        if self.static is not None:
            return self.static
        one = self.one
        if one is not None:
            return ((one[0], m.group(one[1])),)
        return tuple([(k, m.group(g) if g > 0 else n) for k, n, g in self.refs])


# What a skeleton not seen yet maps to (beside its shape, or None once rejected).
MISSING: Any = object()


class _TextSource:
    """Builds a deferred rule's expressions from its text, as the eager read does."""

    def __init__(self, builder: Builder, table: Table) -> None:
        self.builder = builder
        self.table = table
        self.file = builder.file

    def materialise(self, rule: DeferredRule) -> tuple[list[Expr], str | None]:
        b = self.builder
        assert b.parse_rule is not None
        stmts = b.parse_rule(rule.text, rule.lineno)
        exprs, _, comment, _ = b.lower_rule(self.table, rule.chain, rule.lineno, stmts, rule.text, None)
        return exprs, comment


def _walk(x: Any, counts: dict[Any, int]) -> None:
    if isinstance(x, dict):
        for k, v in x.items():
            counts[("s", k)] = counts.get(("s", k), 0) + 1
            _walk(v, counts)
    elif isinstance(x, list):
        for v in x:
            _walk(v, counts)
    elif isinstance(x, str):
        counts[("s", x)] = counts.get(("s", x), 0) + 1
    elif isinstance(x, int) and not isinstance(x, bool):
        counts[("i", x)] = counts.get(("i", x), 0) + 1


def _leaf(x: Any) -> Any:
    if isinstance(x, str):
        return ("s", x)
    if isinstance(x, int) and not isinstance(x, bool):
        return ("i", x)
    return None


def _substitute(x: Any, to: dict[Any, Any]) -> Any:
    if isinstance(x, dict):
        return {k: _substitute(v, to) for k, v in x.items()}
    if isinstance(x, list):
        return [_substitute(v, to) for v in x]
    leaf = _leaf(x)
    if leaf is not None and leaf in to:
        return to[leaf][1]
    return x


_PAYLOAD_KINDS = {
    ("ip", "saddr"): ADDR, ("ip", "daddr"): ADDR,
    **{(p, f): PORT for p in ("tcp", "udp", "sctp") for f in ("dport", "sport")},
}


def _allowed(stmts: list[Any], kinds: dict[Any, str]) -> tuple[dict[Any, int], dict[Any, str]] | None:
    """How often each marker leaf is found where any value of its kind reads the same, and where each set
    marker is ("lookup" or "update"); None: a statement with effects beyond its rule (an anonymous chain)."""
    found: dict[Any, int] = {}
    roles: dict[Any, str] = {}

    def see(leaf: Any, *allowed: str) -> bool:
        if kinds.get(leaf) in allowed:
            found[leaf] = found.get(leaf, 0) + 1
            return True
        return False

    def verdict(v: Any) -> None:
        if isinstance(v, dict) and len(v) == 1:
            (k, body), = v.items()
            if k in ("jump", "goto") and isinstance(body, dict) and list(body) == ["target"]:
                see(_leaf(body["target"]), CHAIN)

    for st in stmts:
        if not isinstance(st, dict) or len(st) != 1:
            continue
        (k, v), = st.items()
        if k in ("jump", "goto") and isinstance(v, dict) and "rules" in v:
            return None
        if k == "match" and isinstance(v, dict) and v.get("op") in ("in", "==", "!="):
            left = v.get("left")
            if isinstance(left, dict) and list(left) == ["payload"] and isinstance(left["payload"], dict) \
                    and sorted(left["payload"]) == ["field", "protocol"] and isinstance(v.get("right"), str):
                kind = _PAYLOAD_KINDS.get((left["payload"]["protocol"], left["payload"]["field"]))
                leaf = _leaf(v["right"])
                if kind == ADDR and see(leaf, SET):
                    roles[leaf] = "lookup"
                elif kind is not None:
                    see(leaf, kind)
        elif k in ("jump", "goto"):
            verdict(st)
        elif k == "vmap" and isinstance(v, dict):
            data = v.get("data")
            if isinstance(data, dict) and list(data) == ["set"] and isinstance(data["set"], list):
                for item in data["set"]:
                    if isinstance(item, list) and len(item) == 2:
                        verdict(item[1])
        elif k == "dnat" and isinstance(v, dict) and "addr" in v and "port" in v:
            addr, port = _leaf(v["addr"]), _leaf(v["port"])
            if kinds.get(addr) == NAT and kinds.get(port) == NAT:
                found[addr] = found.get(addr, 0) + 1
                found[port] = found.get(port, 0) + 1
        elif k == "set" and isinstance(v, dict) and "op" in v:
            leaf = _leaf(v.get("set"))
            if see(leaf, SET):
                roles[leaf] = "update"
    return found, roles


def pattern_of(key: str) -> re.Pattern[str]:
    parts = _SPLIT.split(key)
    return re.compile("".join(_GROUPS[p] if i % 2 else re.escape(p) for i, p in enumerate(parts)))


def _lower_skeleton(b: Builder, p: PendingRule, stmts: list[Any], text: str | None, comment: Any,
                    aliases: list[str]) -> tuple[list[Expr], tuple[int, int] | None, str] | None:
    """Lower a rule's skeleton (None if the reader refuses it) with `aliases`, set markers standing for
    the first rule's sets, in place; the aliases and what lowering records of set updates are taken
    back afterwards, so trying a shape leaves the table as it was."""
    updated = set(b._updated)
    try:
        exprs, counters, _, rendered = b.lower_rule(p.table, p.chain, p.line, stmts, text, comment)
    except InputError:
        return None
    finally:
        for name in aliases:
            del p.table.sets[name]
        b._updated = updated
    return exprs, counters, rendered


def analyse(b: Builder, p: PendingRule, rule: Rule) -> NftShape | None:
    """The shape of p's skeleton if any valid values read as the first rule's do (see the module's doc)."""
    key, text = p.key, p.text
    if key is None or text is None or p.stmts is None:
        return None
    kinds_in_order = [c for c in key if c in PLACEHOLDERS]
    if len(kinds_in_order) > MAX_PLACEHOLDERS:
        return None
    pattern = pattern_of(key)
    m = pattern.fullmatch(text)
    if m is None:
        return None
    values = m.groups()
    markers = [_marker(kind, i) for i, kind in enumerate(kinds_in_order)]
    pieces = _SPLIT.split(key)
    marked = "".join(markers[i // 2] if i % 2 else piece for i, piece in enumerate(pieces))
    assert b.parse_rule is not None
    try:
        stmts = b.parse_rule(marked, p.line or 0)
    except InputError:
        return None
    # Marker leaves, their kinds, and the first rule's leaves in their place.
    kinds: dict[Any, str] = {}
    to: dict[Any, Any] = {}
    for kind, marker, value in zip(kinds_in_order, markers, values, strict=True):
        for ml, vl in zip(_leaves(kind, marker), _leaves(kind, value), strict=True):
            kinds[_leaf(ml)] = kind
            to[_leaf(ml)] = (_leaf(vl), vl)
    allowed = _allowed(stmts, kinds)
    if allowed is None:
        return None
    found, roles = allowed
    counts: dict[Any, int] = {}
    _walk(stmts, counts)
    if any(found.get(leaf) != 1 or counts.get(leaf) != 1 for leaf in kinds):
        return None
    if _substitute(stmts, to) != p.stmts:
        return None
    # A set marker looked up stands for the first rule's set (which must exist: then any existing set
    # gives a known lookup); what the lowering records of set updates is put back as it was.
    table = p.table
    lookups: list[int] = []
    aliases: list[str] = []
    for i, (kind, marker, value) in enumerate(zip(kinds_in_order, markers, values, strict=True)):
        if kind == SET and roles.get(_leaf(marker)) == "lookup":
            ns = table.sets.get(value[1:])
            if ns is None or marker[1:] in table.sets:
                for name in aliases:
                    del table.sets[name]
                return None
            table.sets[marker[1:]] = ns
            aliases.append(marker[1:])
            lookups.append(i + 1)
    lowered = _lower_skeleton(b, p, stmts, marked, None, aliases)
    if lowered is None:
        return None
    exprs, counters, _ = lowered
    if all(e.known for e in exprs) != rule.known or counters != rule.counters:
        return None
    group = {markers[i]: i + 1 for i, kind in enumerate(kinds_in_order) if kind in (CHAIN, SET)}
    refs = tuple((kind, name, group.get(name, -1)) for e in exprs for kind, name in e.chain_refs())
    if tuple((k, values[g - 1] if g > 0 else n) for k, n, g in refs) != tuple(rule.chain_refs()):
        return None
    updates = tuple((str(v.get("set", "")), group.get(str(v.get("set", "")), -1))
                    for st in stmts if isinstance(st, dict) and len(st) == 1
                    for k, v in st.items() if k == "set" and isinstance(v, dict) and "op" in v)
    return NftShape(rule, pattern, refs, tuple(lookups), updates)


def defer(b: Builder, p: PendingRule, shape: NftShape) -> bool:
    """Append p to its chain as a LazyNftRule if it fits the shape exactly; False: read it in full."""
    text = p.text
    if text is None:
        return False
    chain = p.table.chains.get(p.chain)
    if chain is None:
        return False
    return defer_text(b, p.table, chain, text, p.line or 0, p.handle, shape, text_source(b, p.table))


def text_source(b: Builder, table: Table) -> _TextSource:
    """The one source of a table's deferred text rules."""
    source = b._sources.get(id(table))
    if source is None:
        source = b._sources[id(table)] = _TextSource(b, table)
    return source  # type: ignore[no-any-return]


def defer_text(b: Builder, table: Table, chain: Chain, text: str, lineno: int, handle: Any, shape: NftShape,
               source: _TextSource) -> bool:
    """Append a rule of `chain` as a LazyNftRule if its text fits the shape exactly; False: read it in full."""
    m = shape.pattern.fullmatch(text)
    if m is None:
        return False
    if shape.lookups:
        sets = table.sets
        for g in shape.lookups:
            if m.group(g)[1:] not in sets:
                return False
    rules = chain.rules
    rule = LazyNftRule(table.name, chain.name, len(rules) + 1, text, lineno, source, shape, shape.refs_of(m))
    if isinstance(handle, int) and not isinstance(handle, bool):
        rule.handle = handle
    rules.append(rule)
    for name, g in shape.updates:
        # What lowering the rule's set updates would record: the set is updated at runtime.
        b._updated.add((id(table), (m.group(g) if g > 0 else name).lstrip("@")))
    return True


# -- `nft -j list ruleset` ----------------------------------------------------------------
#
# A JSON rule's skeleton is its statements with the same values as in text replaced by
# placeholder strings, written out by repr(): a comparison of `ip saddr|daddr` with a
# dotted quad or an @set, of `tcp|udp|sctp dport|sport` with a port number, a jump or goto
# target (also in a verdict map's elements), a `dnat`'s address and port, the set of an
# update. The positions are known by construction; `json_analyse` lowers the skeleton with
# a marker in each placeholder and accepts it if the lowering agrees with the first rule's
# (known, counters, chain references, text).

_IPV4_RE = re.compile(_IPV4)
_NAME_RE = re.compile(_NAME)
_SET_RE = re.compile(f"@{_NAME}")
JSON_MARKERS = {ADDR: "\x01a", PORT: "\x01p", CHAIN: "\x01c", NAT: "\x01n", SET: "\x01s"}


def _slot_str(value: Any, kind: str) -> bool:
    if type(value) is not str:
        return False
    if kind == ADDR:
        return _IPV4_RE.fullmatch(value) is not None
    if kind == SET:
        return _SET_RE.fullmatch(value) is not None
    return _NAME_RE.fullmatch(value) is not None


def _port(value: Any) -> bool:
    return type(value) is int and 0 <= value <= 65535


class _Skeleton:
    __slots__ = ("kinds", "values")

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.values: list[Any] = []

    def slot(self, kind: str, value: Any) -> str:
        self.kinds.append(kind)
        self.values.append(value)
        return JSON_MARKERS[kind]

    def verdict(self, v: Any) -> Any:
        if type(v) is dict and len(v) == 1:
            (k, body), = v.items()
            if k in ("jump", "goto") and type(body) is dict and len(body) == 1 and _slot_str(body.get("target"), CHAIN):
                return {k: {"target": self.slot(CHAIN, body["target"])}}
        return v

    def stmt(self, st: Any) -> Any:
        if type(st) is not dict or len(st) != 1:
            return st
        (k, v), = st.items()
        if type(v) is not dict:
            return st
        if k == "match" and len(v) == 3:
            left, right = v.get("left"), v.get("right")
            if type(left) is dict and len(left) == 1 and type(left.get("payload")) is dict:
                pl = left["payload"]
                proto, fld = pl.get("protocol"), pl.get("field")
                kind = _PAYLOAD_KINDS.get((proto, fld)) if len(pl) == 2 and type(proto) is str and type(fld) is str \
                    else None
                if kind == ADDR and _slot_str(right, ADDR):
                    return {"match": {**v, "right": self.slot(ADDR, right)}}
                if kind == ADDR and _slot_str(right, SET):
                    return {"match": {**v, "right": self.slot(SET, right)}}
                if kind == PORT and _port(right):
                    return {"match": {**v, "right": self.slot(PORT, right)}}
            return st
        if k in ("jump", "goto"):
            return self.verdict(st)
        if k == "vmap":
            data = v.get("data")
            if type(data) is dict and len(data) == 1 and type(data.get("set")) is list:
                items = [[it[0], self.verdict(it[1])] if type(it) is list and len(it) == 2 else it
                         for it in data["set"]]
                return {"vmap": {**v, "data": {"set": items}}}
            return st
        if k == "dnat" and _slot_str(v.get("addr"), ADDR) and _port(v.get("port")):
            addr = self.slot(ADDR, v["addr"])
            return {"dnat": {**v, "addr": addr, "port": self.slot(PORT, v["port"])}}
        if k == "set" and "op" in v and _slot_str(v.get("set"), SET):
            return {"set": {**v, "set": self.slot(SET, v["set"])}}
        return st


def json_key(stmts: list[Any]) -> tuple[str, list[str], list[Any], list[Any]] | None:
    """(skeleton text, kinds, values, skeleton statements) of a JSON rule; None if it is read in full."""
    sk = _Skeleton()
    out = []
    for st in stmts:
        if type(st) is str:
            return None  # an anonymous chain as text
        if type(st) is dict and len(st) == 1:
            body = st.get("jump", st.get("goto"))
            if isinstance(body, dict) and "rules" in body:
                return None  # an anonymous chain: lowering it adds a chain
        out.append(sk.stmt(st))
    # repr() tells apart every value JSON decodes to (1, 1.0, True, "1"), keeps the order of keys, and is
    # quicker than encoding JSON again.
    key = repr(out)
    if key.count("\\x01") != len(sk.kinds):
        return None  # a string of the input that looks like a placeholder
    return key, sk.kinds, sk.values, out


class JsonShape(RuleShape):
    """An accepted JSON skeleton: its statements with placeholders, and what a rule's values give."""

    __slots__ = ("kinds", "lookups", "refs", "skeleton", "text", "updates")

    def __init__(self, rule: Rule, kinds: list[str], skeleton: list[Any], text: list[str | int],
                 refs: tuple[tuple[VerdictKind, str, int], ...], lookups: tuple[int, ...],
                 updates: tuple[tuple[str, int], ...]) -> None:
        super().__init__(not rule.known, rule.counters)
        self.kinds = kinds
        self.skeleton = skeleton
        # The rule's text: literal pieces and value indexes.
        self.text = text
        self.refs = refs
        self.lookups = lookups
        self.updates = updates

    def text_of(self, values: list[Any]) -> str:
        return "".join(p if isinstance(p, str) else str(values[p]) for p in self.text)


def _json_markers(kinds: list[str]) -> list[Any]:
    out: list[Any] = []
    for i, kind in enumerate(kinds):
        if kind == PORT:
            out.append(50000 + i)
        elif kind == NAT:
            out.append(f"127.98.{i}.7")
        else:
            out.append(_marker(kind, i))
    return out


def _fill(x: Any, markers: list[Any], it: list[int]) -> Any:
    """The skeleton statements with the placeholders filled in order from `markers`."""
    if type(x) is dict:
        return {k: _fill(v, markers, it) for k, v in x.items()}
    if type(x) is list:
        return [_fill(v, markers, it) for v in x]
    if type(x) is str and x[:1] == "\x01" and x in _JSON_PLACEHOLDERS:
        i = it[0]
        it[0] += 1
        return markers[i]
    return x


_JSON_PLACEHOLDERS = set(JSON_MARKERS.values())


class _JsonSource:
    """One deferred JSON rule's statements and comment, built as the eager read builds them."""

    __slots__ = ("builder", "comment", "file", "stmts", "table")

    def __init__(self, builder: Builder, table: Table, stmts: list[Any], comment: Any) -> None:
        self.builder = builder
        self.table = table
        self.file = builder.file
        self.stmts = stmts
        self.comment = comment

    def materialise(self, rule: DeferredRule) -> tuple[list[Expr], str | None]:
        exprs, _, comment, _ = self.builder.lower_rule(self.table, rule.chain, rule.lineno, self.stmts, None,
                                                       self.comment)
        return exprs, comment


def json_analyse(b: Builder, p: PendingRule, rule: Rule, kinds: list[str], values: list[Any],
                 skeleton: list[Any]) -> JsonShape | None:
    """The shape of a JSON rule's skeleton if its values cannot change how its rules read."""
    if len(kinds) > MAX_PLACEHOLDERS:
        return None
    markers = _json_markers(kinds)
    stmts = _fill(skeleton, markers, [0])
    if _fill(skeleton, values, [0]) != p.stmts:
        return None
    table = p.table
    lookups: list[int] = []
    aliases: list[str] = []
    # Set markers stand for the first rule's sets where they are looked up, as in text.
    for i, kind in enumerate(kinds):
        if kind != SET:
            continue
        looked_up = any(type(st) is dict and "match" in st and type(st["match"]) is dict
                        and st["match"].get("right") == markers[i] for st in stmts)
        if looked_up:
            ns = table.sets.get(values[i][1:])
            if ns is None or markers[i][1:] in table.sets:
                for name in aliases:
                    del table.sets[name]
                return None
            table.sets[markers[i][1:]] = ns
            aliases.append(markers[i][1:])
            lookups.append(i)
    lowered = _lower_skeleton(b, p, stmts, None, p.comment, aliases)
    if lowered is None:
        return None
    exprs, counters, text = lowered
    if all(e.known for e in exprs) != rule.known or counters != rule.counters:
        return None
    index = {m: i for i, (m, kind) in enumerate(zip(markers, kinds, strict=True)) if kind in (CHAIN, SET)}
    refs = tuple((kind, name, index.get(name, -1)) for e in exprs for kind, name in e.chain_refs())
    if tuple((k, values[g] if g >= 0 else n) for k, n, g in refs) != tuple(rule.chain_refs()):
        return None
    # The text with each marker (each once, as its str) replaced by the value's.
    shown = [str(m) for m in markers]
    if shown and any(text.count(s) != 1 for s in shown):
        return None
    pieces: list[str | int] = []
    if shown:
        where = re.compile("|".join(re.escape(s) for s in sorted(shown, key=len, reverse=True)))
        pos = 0
        slot = {s: i for i, s in enumerate(shown)}
        for m in where.finditer(text):
            pieces.append(text[pos:m.start()])
            pieces.append(slot[m.group(0)])
            pos = m.end()
        pieces.append(text[pos:])
    else:
        pieces.append(text)
    if "".join(p_ if isinstance(p_, str) else str(values[p_]) for p_ in pieces) != rule.text:
        return None
    updates = tuple((str(st["set"].get("set", "")), index.get(str(st["set"].get("set", "")), -1))
                    for st in stmts if type(st) is dict and "set" in st and type(st["set"]) is dict
                    and "op" in st["set"])
    return JsonShape(rule, kinds, skeleton, pieces, refs, tuple(lookups), updates)


def json_defer(b: Builder, p: PendingRule, shape: JsonShape, values: list[Any]) -> bool:
    """Append a JSON rule to its chain as a LazyNftRule; False: read it in full."""
    chain = p.table.chains.get(p.chain)
    if chain is None or p.stmts is None:
        return False
    sets = p.table.sets
    for i in shape.lookups:
        if values[i][1:] not in sets:
            return False
    source = _JsonSource(b, p.table, p.stmts, p.comment)
    refs = tuple((k, values[g] if g >= 0 else n) for k, n, g in shape.refs)
    rule = LazyNftRule(p.table.name, p.chain, len(chain.rules) + 1, shape.text_of(values), p.line or 0, source,
                       shape, refs)
    if isinstance(p.handle, int) and not isinstance(p.handle, bool):
        rule.handle = p.handle
    chain.rules.append(rule)
    for name, g in shape.updates:
        b._updated.add((id(p.table), (values[g] if g >= 0 else name).lstrip("@")))
    return True
