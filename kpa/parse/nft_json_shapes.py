"""Rule shapes read from the undecoded text of `nft -j list ruleset`.

`nft -j` prints one JSON document on one line; kube-proxy's rulesets hold tens
of thousands of rules and chains that differ only in names, addresses, ports
and handles. Decoding all of it into Python objects takes longer than the
whole iptables-mode check, so the objects are read the way the iptables
reader reads its lines (kpa.parse.shapes):

- C regex passes over the text of the top-level array replace values that
  are plain in their place by placeholders: the string of a `"chain"`,
  `"name"` or `"comment"` attribute (no quote, backslash, brace or control
  character), a `"handle"` number, a jump or goto `"target"` of plain
  characters, the dotted quad or `@set` compared with an `ip saddr|daddr`
  payload, the port compared with a `tcp|udp|sctp dport|sport` payload, a
  `dnat`'s address and port, the `@set` of a set update. An object's
  skeleton is its text with placeholders (`object_key`, on the object's own
  text: the passes never reach beyond it).
- The first objects of each skeleton are decoded and read as usual. At the
  third (TEMPLATE_AFTER), the skeleton is decoded with a numbered marker
  value in each placeholder (`_template`), and accepted only if every marker
  is a whole value, found once, and the object decoded is the markers'
  object with its values in their place. For a rule, the markers must sit in the rule's
  `chain`, `handle` and `comment` attributes or where kpa.parse.nft_shapes
  takes statement values as interchangeable (`json_key`); for a chain or set,
  only in its own attributes.
- Every later object of an accepted skeleton must match the skeleton's
  pattern (placeholders as strict value classes) at its place in the text.
  A chain or set is then made from the template and its values and read as
  usual. A rule is queued as it is (its match, in a `_Batch`), and placed
  in finish() as a LazyJsonRule when its statements' skeleton is accepted as
  a shape by `nft_shapes.json_analyse` (which the first such rule decides);
  it decodes its own object when it is built, and works its text and
  handle out when they are first read. Otherwise it is decoded and read in full then.
- Anything else (no pattern, no match, not one line) is decoded where it is,
  object at a time, exactly as kpa.parse.nft_json reads it: same objects,
  same order, same errors. The nesting limit is checked only if the objects
  read go deeper, or before any error is raised, so errors are as before.

Most objects need no skeleton worked out: the templates that followed an
object of the previous object's skeleton are tried first (`FOLLOWERS`, the
latest first), and the first whose pattern matches at the object's place
reads it. A wrong guess costs one failed match; a right one reads exactly
what the object's own template would (a template's pattern, not the key it
was found by, decides what is read). Only an object no guess matches gets its
skeleton worked out, ~1% of a kube-proxy ruleset's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from kpa.errors import InputError
from kpa.limits import MAX_NESTING, _nesting_within, check_nesting
from kpa.netfilter.model import (
    Chain,
    DeferredRule,
    Expr,
    LazyNftRule,
    Location,
    Rule,
    RuleShape,
    RuleSource,
    Table,
    VerdictKind,
)
from kpa.parse import nft_shapes
from kpa.parse.nft_common import Builder, PendingRule
from kpa.parse.shapes import _IPV4, _PORT

if TYPE_CHECKING:
    from kpa.parse.nft_json import _Reader

# Placeholders: control characters, which valid JSON never holds raw (a template is made only from an
# object that decoded, and value classes hold none).
ADDR, PORT, TARGET, NAT_ADDR, LOOKUP = "\x01", "\x02", "\x03", "\x04", "\x05"
RULE_CHAIN, HANDLE, COMMENT, NAME, UPDATE, NAT_PORT = "\x06", "\x07", "\x08", "\x0b", "\x0c", "\x0e"
SLOTS = ADDR + PORT + TARGET + NAT_ADDR + LOOKUP + RULE_CHAIN + HANDLE + COMMENT + NAME + UPDATE + NAT_PORT
INTS = {PORT, HANDLE, NAT_PORT}
# A JSON string's characters that decode to themselves (and no brace, so that objects split the same way).
_STR = r'[^"\\\x00-\x1f{}]*'
# A JSON integer of at most 18 digits (no leading zero, as JSON has it).
_INT = r"(?:0|[1-9][0-9]{0,17})"
_NAME = nft_shapes._NAME
_CLASS = {RULE_CHAIN: _STR, NAME: _STR, COMMENT: _STR, TARGET: _NAME, HANDLE: _INT, ADDR: _IPV4,
          LOOKUP: f"@{_NAME}", PORT: _PORT, UPDATE: f"@{_NAME}", NAT_ADDR: _IPV4, NAT_PORT: _PORT}
# What kpa.parse.nft_shapes' statement skeleton must call a value of each kind.
_STATEMENT_KIND = {ADDR: nft_shapes.ADDR, NAT_ADDR: nft_shapes.ADDR, PORT: nft_shapes.PORT,
                   NAT_PORT: nft_shapes.PORT, TARGET: nft_shapes.CHAIN, LOOKUP: nft_shapes.SET,
                   UPDATE: nft_shapes.SET}
_ATTRIBUTE = {RULE_CHAIN: "chain", HANDLE: "handle", COMMENT: "comment"}


def _pass(context: str, value: str, after: str, placeholder: str, behind: str = "") -> tuple[str, re.Pattern[str],
                                                                                               str]:
    """Replace `value` after the literal `context` (and the optional look-behind) by `placeholder`. The
    pattern opens with the literal, so the regex engine searches for it; a context's opening quote is
    checked by looking behind instead (the engine looks for the first character, and quotes are
    everywhere in JSON). The replacement is literal."""
    lead = context.startswith('"')
    literal = context[1:] if lead else context
    return (literal, re.compile(re.escape(literal) + (f"(?<={re.escape(context)})" if lead else "") + behind + value
                                + after), literal + placeholder + ('"' if after == '"' else ""))


_NUMBER_END = "(?=[,}])"
_IP_ADDR = r'(?<="ip", "field": "[sd]addr"\}\}, "right": ")'
_L4_PORT = r'(?<=p", "field": "[sd]port"\}\}, "right": )'
_PASSES = [
    _pass('"chain": "', _STR, '"', RULE_CHAIN),
    _pass('"name": "', _STR, '"', NAME),
    _pass('"target": "', _NAME, '"', TARGET),
    _pass('"handle": ', _INT, _NUMBER_END, HANDLE),
    _pass('"addr": "', f'{_IPV4}", "port": {_PORT}', _NUMBER_END, f'{NAT_ADDR}", "port": {NAT_PORT}'),
    _pass('addr"}}, "right": "', _IPV4, '"', ADDR, _IP_ADDR),
    _pass('addr"}}, "right": "', f"@{_NAME}", '"', LOOKUP, _IP_ADDR),
    _pass('port"}}, "right": ', _PORT, _NUMBER_END, PORT, _L4_PORT),
    _pass('"set": "', f"@{_NAME}", '"', UPDATE),
    _pass('"comment": "', _STR, '"', COMMENT),
]
# Between two top-level objects (each `{"KIND": {"family": ...}}`).
SEP = re.compile(r'\}\}, \{"(?=[a-z][a-z ]*": \{"family": )')
# Objects read in full before their skeleton gets a pattern.
TEMPLATE_AFTER = 3
# Templates guessed after an object of a given skeleton (the latest that followed one).
FOLLOWERS = 4


def skeleton(region: str) -> str:
    for context, pattern, repl in _PASSES:
        if context in region:
            region = pattern.sub(repl, region)
    return region


def pieces(region: str) -> list[str]:
    """Each object's skeleton, without its opening `{"` and closing `}}`."""
    out = SEP.split(skeleton(region))
    if out[0].startswith('{"'):
        out[0] = out[0][2:]
    if out[-1].endswith("}}"):
        out[-1] = out[-1][:-2]
    return out


def object_key(text: str, pos: int, stop: int) -> str:
    """The skeleton of the object at `pos` as pieces() gives it for the array text[..:stop]: up to the next
    separator (an object holding a string that reads like one gets the key of its first part)."""
    m = SEP.search(text, pos, stop)
    # With the closing braces, after which a number ends (as in the whole text); then without them.
    key = skeleton(text[pos:m.start() + 2 if m is not None else stop])
    return key[2 if key.startswith('{"') else 0:-2 if key.endswith("}}") else None]


def _mark(kind: str, i: int) -> str | int:
    """A valid value of the kind, numbered, that the template follows through decoding."""
    if kind == ADDR:
        return f"127.99.{i}.7"
    if kind == NAT_ADDR:
        return f"127.98.{i}.7"
    if kind == PORT:
        return 50000 + i
    if kind == NAT_PORT:
        return 51000 + i
    if kind == HANDLE:
        return 7_700_000_000 + i
    if kind == TARGET:
        return f"kpa-shape-chain-{i}-end"
    if kind in (LOOKUP, UPDATE):
        return f"@kpa-shape-set-{i}-end"
    return f"kpa-shape-{ord(kind)}-{i}-end"


def _core(key: str) -> str:
    parts = re.split(f"([{SLOTS}])", key)
    return r'\{"' + "".join(f"({_CLASS[p]})" if i % 2 else re.escape(p) for i, p in enumerate(parts)) + r"\}\}"


class _Template:
    """An accepted skeleton: its pattern, and how its objects are read."""

    __slots__ = ("fast", "key", "kinds", "rule")

    def __init__(self, fast: re.Pattern[str], kinds: list[str]) -> None:
        self.fast = fast
        self.kinds = kinds
        self.rule = False
        self.key = ""

    def take(self, m: re.Match[str], reader: _Reader, line: int, stop: int) -> int:
        """Read the object `m` matched (a chain or set template: maybe the objects that follow it too);
        where the last object read ends."""
        raise NotImplementedError


class _ObjectTemplate(_Template):
    """A chain, set or map whose values are all its own attributes: made from the template."""

    __slots__ = ("attrs", "body", "kind")

    def __init__(self, fast: re.Pattern[str], kinds: list[str], kind: str, body: dict[str, Any],
                 attrs: list[tuple[str, int]]) -> None:
        super().__init__(fast, kinds)
        self.kind = kind
        self.body = body
        self.attrs = attrs

    def take(self, m: re.Match[str], reader: _Reader, line: int, stop: int) -> int:
        vals = m.groups()
        body = {k: _copy(v) for k, v in self.body.items()}
        for key, i in self.attrs:
            body[key] = int(vals[i]) if self.kinds[i] in INTS else vals[i]
        reader.handle(line, {self.kind: body})
        return m.end()


class _ChainTemplate(_Template):
    """A chain with nothing but its family, table, name and handle: made as Builder.chain makes it."""

    __slots__ = ("handle", "location", "name", "table")

    def __init__(self, fast: re.Pattern[str], kinds: list[str], table: Table, location: Location,
                 name: int, handle: tuple[int, Any]) -> None:
        super().__init__(fast, kinds)
        self.table = table
        self.location = location
        self.name = name
        self.handle = handle

    def take(self, m: re.Match[str], reader: _Reader, line: int, stop: int) -> int:
        # Chains are listed one after another (39,000 of them for 5,000 Services): this reads the run of
        # them that this pattern matches in turn, without going back to the guesses between two. Any
        # template whose pattern matches an object reads it the same, so this one may read them all.
        fast, chains, tname, location, ni = self.fast, self.table.chains, self.table.name, self.location, self.name
        hi, handle = self.handle
        if type(handle) is not int:
            handle = None
        text = m.string
        while True:
            vals = m.groups()
            name = vals[ni]
            if name not in chains:
                chains[name] = Chain(name, tname, location=location, handle=int(vals[hi]) if hi >= 0 else handle)
            end = m.end()
            got = fast.match(text, end, stop)
            if got is None:
                return end
            m = got


_UNSET: Any = object()


def _copy(x: Any) -> Any:
    """A fresh copy of a decoded value's lists and objects (each object read gets its own, as decoded)."""
    if type(x) is dict:
        return {k: _copy(v) for k, v in x.items()}
    if type(x) is list:
        return [_copy(v) for v in x]
    return x


class _RuleTemplate(_Template):
    """A rule skeleton whose statement values are where nft_shapes takes them as interchangeable."""

    __slots__ = ("ci", "conv", "handle", "hi", "jshape", "line", "lookups", "name", "refs", "refs_of", "rkey", "table",
                 "text", "tname", "updates")

    def __init__(self, fast: re.Pattern[str], kinds: list[str], table: Table, line: int, rkey: str,
                 conv: list[tuple[int, Any]], chain: tuple[int, Any], handle: tuple[int, Any]) -> None:
        super().__init__(fast, kinds)
        self.rule = True
        self.table = table
        self.line = line
        self.rkey = rkey
        # For each statement value of the shape: (index of this skeleton's value, or -1, and the constant).
        self.conv = conv
        # The chain and handle: a value's index, or -1 and the attribute as written (a handle that is not
        # a number is none).
        self.ci, self.name = chain
        self.hi, literal = handle
        self.handle = literal if type(literal) is int else None
        self.tname = table.name
        self.jshape: Any = _UNSET
        self.text = ""
        self.lookups: tuple[int, ...] = ()
        self.refs: tuple[tuple[VerdictKind, str, int], ...] = ()
        self.refs_of: Callable[[tuple[str, ...]], tuple[tuple[VerdictKind, str], ...]] = lambda vals: ()
        self.updates: tuple[tuple[str, int], ...] = ()

    def resolve(self, b: Builder) -> Any:
        """The shape nft_shapes accepted for these statements (decided by the first such rule), or None."""
        js = b._shapes.get((id(self.table), self.rkey))
        self.jshape = js
        if js is None:
            return None
        conv = self.conv

        def value(g: int) -> tuple[int, Any]:
            return conv[g]

        text = []
        for piece in js.text:
            if isinstance(piece, str):
                text.append(piece.replace("{", "{{").replace("}", "}}"))
            else:
                i, const = value(piece)
                text.append(f"{{{i}}}" if i >= 0 else str(const).replace("{", "{{").replace("}", "}}"))
        self.text = "".join(text)
        lookups = []
        for g in js.lookups:
            i, const = value(g)
            if i < 0:
                # A constant set: exists or not for every rule alike; checked per rule as values are.
                return self._refuse()
            lookups.append(i)
        self.lookups = tuple(lookups)
        refs = []
        for kind, name, g in js.refs:
            if g < 0:
                refs.append((kind, name, -1))
            else:
                i, const = value(g)
                refs.append((kind, const, -1) if i < 0 else (kind, "", i))
        self.refs = tuple(refs)
        if all(i < 0 for _, _, i in refs):
            static = tuple((k, n) for k, n, _ in refs)
            self.refs_of = lambda vals: static
        elif len(refs) == 1:
            kind, i = refs[0][0], refs[0][2]
            self.refs_of = lambda vals: ((kind, vals[i]),)
        else:
            self.refs_of = lambda vals: tuple((k, vals[i] if i >= 0 else n) for k, n, i in refs)
        updates = []
        for name, g in js.updates:
            if g < 0:
                updates.append((name, -1))
            else:
                i, const = value(g)
                updates.append((str(const), -1) if i < 0 else ("", i))
        self.updates = tuple(updates)
        return js

    def _refuse(self) -> None:
        self.jshape = None


class _Source(tuple[Builder, _RuleTemplate, re.Match[str]]):
    """One deferred rule's object in the text (builder, template, match): decoded and lowered as the
    eager read does. A tuple, as there is one per rule; the match is the one the object was read with."""

    __slots__ = ()

    @property
    def file(self) -> str:
        return self[0].file

    def materialise(self, rule: DeferredRule) -> tuple[list[Expr], str | None]:
        b, t, m = self
        body = _DECODER.raw_decode(m.string, m.start())[0]["rule"]
        exprs, _, comment, _ = b.lower_rule(t.table, rule.chain, rule.lineno, body["expr"], None, body.get("comment"))
        return exprs, comment


_DECODER = json.JSONDecoder()
# Typed as what LazyNftRule takes (a read-only `file` is all it reads of it).
_new_source = cast(Callable[[type, tuple[Builder, _RuleTemplate, re.Match[str]]], RuleSource], tuple.__new__)
# The storage behind Rule.text and Rule.handle, which LazyJsonRule's properties of the same names hide.
_TEXT: Any = Rule.__dict__["text"]
_HANDLE: Any = Rule.__dict__["handle"]


class LazyJsonRule(LazyNftRule):
    """A LazyNftRule read from its template's pattern: its text (the template's with the rule's values) and
    its handle are worked out from the match when first read (kpa check reads neither) and kept."""

    __slots__ = ()

    def __init__(self, table: str, chain: str, index: int, lineno: int, source: RuleSource, shape: RuleShape,
                 refs: tuple[tuple[VerdictKind, str], ...]) -> None:
        self.table = table
        self.chain = chain
        self.index = index
        self.lineno = lineno
        self._source = source
        self._shape = shape
        self._refs = refs
        self.counters = shape.counters

    def _text(self) -> str:
        try:
            text: str = _TEXT.__get__(self, Rule)
        except AttributeError:
            _, t, m = cast(_Source, self._source)
            text = t.text.format(*m.groups())
            _TEXT.__set__(self, text)
        return text

    def _set_text(self, text: str) -> None:
        _TEXT.__set__(self, text)

    def _handle(self) -> int | None:
        try:
            handle: int | None = _HANDLE.__get__(self, Rule)
        except AttributeError:
            _, t, m = cast(_Source, self._source)
            handle = int(m.group(t.hi + 1)) if t.hi >= 0 else t.handle
            _HANDLE.__set__(self, handle)
        return handle

    def _set_handle(self, handle: int | None) -> None:
        _HANDLE.__set__(self, handle)

    if not TYPE_CHECKING:
        text = property(_text, _set_text)
        handle = property(_handle, _set_handle)

    def build(self) -> Rule:
        # A plain Rule reads its text and handle from their slots.
        self._text()
        self._handle()
        return super().build()


class _Batch:
    """Consecutive rules of accepted skeletons, queued in input order (kpa.parse.nft_common.QueuedRules)."""

    __slots__ = ("matches", "templates")

    def __init__(self) -> None:
        self.templates: list[_RuleTemplate] = []
        self.matches: list[re.Match[str]] = []

    def settle(self, b: Builder) -> None:
        updated = b._updated
        for t, m in zip(self.templates, self.matches, strict=True):
            js = t.jshape
            if js is _UNSET:
                js = t.resolve(b)
            vals = m.groups()
            name = vals[t.ci] if t.ci >= 0 else t.name
            chain = t.table.chains.get(name) if js is not None else None
            if chain is None or (t.lookups and not all(vals[i][1:] in t.table.sets for i in t.lookups)):
                b.settle_unkeyed(_full(t, m))
                continue
            rules = chain.rules
            rules.append(LazyJsonRule(t.tname, name, len(rules) + 1, t.line, _new_source(_Source, (b, t, m)), js,
                                      t.refs_of(vals)))
            if t.updates:
                for uname, i in t.updates:
                    updated.add((id(t.table), (vals[i] if i >= 0 else uname).lstrip("@")))


def _full(t: _RuleTemplate, m: re.Match[str]) -> PendingRule:
    """The rule as the object-at-a-time reader queues it."""
    body = _DECODER.raw_decode(m.string, m.start())[0]["rule"]
    return PendingRule(t.table, body["chain"], t.line, body["expr"], None, body.get("comment"), body.get("handle"))


def _template(key: str, text: str, pos: int, end: int, obj: Any, reader: _Reader, line: int) -> _Template | None:
    """The template of `key`, the skeleton of the object text[pos:end] decoded as `obj` (already read)."""
    kinds = [c for c in key if c in SLOTS]
    if len(kinds) > nft_shapes.MAX_PLACEHOLDERS:
        return None
    fast = re.compile(_core(key) + "(?:, |\\Z)")
    m = fast.match(text, pos, end + 2)
    if m is None or m.end() != end + 2:
        return None
    values = [int(v) if k in INTS else v for k, v in zip(kinds, m.groups(), strict=True)]
    markers = [_mark(k, i) for i, k in enumerate(kinds)]
    parts = re.split(f"[{SLOTS}]", key)
    marked = '{"' + "".join(p + (str(markers[i]) if i < len(markers) else "") for i, p in enumerate(parts)) + "}}"
    try:
        tmpl = json.loads(marked)
    except ValueError:
        return None
    counts: dict[Any, int] = {}
    nft_shapes._walk(tmpl, counts)
    leaves = [nft_shapes._leaf(mk) for mk in markers]
    if any(counts.get(lf) != 1 for lf in leaves):
        return None
    to = {lf: (nft_shapes._leaf(v), v) for lf, v in zip(leaves, values, strict=True)}
    if nft_shapes._substitute(tmpl, to) != obj or type(tmpl) is not dict or len(tmpl) != 1:
        return None
    (kind, body), = tmpl.items()
    if type(body) is not dict:
        return None
    where = {lf: i for i, lf in enumerate(leaves)}
    attrs = [(k, where[nft_shapes._leaf(v)]) for k, v in body.items() if nft_shapes._leaf(v) in where]
    if kind in ("chain", "set", "map"):
        if len(attrs) != len(kinds):
            return None  # a value inside another attribute
        family, tname = body.get("family"), body.get("table")
        table = reader.tables.get((family, tname)) if type(family) is str and type(tname) is str else None
        at = dict(attrs)
        if kind == "chain" and table is not None and set(body) <= {"family", "table", "name", "handle"} \
                and "name" in at and kinds[at["name"]] == NAME and set(at) <= {"name", "handle"}:
            handle: tuple[int, Any] = (at["handle"], None) if "handle" in at else (-1, body.get("handle"))
            return _ChainTemplate(fast, kinds, table, Location(reader.file, line), at["name"], handle)
        return _ObjectTemplate(fast, kinds, kind, body, attrs)
    if kind != "rule":
        return None
    chain: tuple[int, Any] = (-1, body.get("chain"))
    handle = (-1, body.get("handle"))
    for k, i in attrs:
        if _ATTRIBUTE.get(kinds[i]) != k:
            return None
        if k == "chain":
            chain = (i, None)
        elif k == "handle":
            handle = (i, None)
    if type(chain[1]) is not str and chain[0] < 0:
        return None
    in_attrs = {i for _, i in attrs}
    expr = body.get("expr")
    if type(expr) is not list:
        return None
    found = nft_shapes.json_key(expr)
    if found is None:
        return None
    rkey, skinds, svalues, _ = found
    conv: list[tuple[int, Any]] = []
    seen: set[int] = set()
    for skind, sv in zip(skinds, svalues, strict=True):
        i = where.get(nft_shapes._leaf(sv), -1)
        if i >= 0:
            if _STATEMENT_KIND.get(kinds[i]) != skind or i in seen:
                return None
            seen.add(i)
            conv.append((i, None))
        else:
            conv.append((-1, sv))
    if len(seen) + len(in_attrs) != len(kinds):
        return None  # a value somewhere its value could matter
    family, tname = body.get("family"), body.get("table")
    table = reader.tables.get((family, tname)) if type(family) is str and type(tname) is str else None
    if table is None:
        return None
    return _RuleTemplate(fast, kinds, table, line, rkey, conv, chain, handle)


def read(text: str, file: str, reader: _Reader) -> bool:
    """Read the objects of a one-line `nft -j` document into the reader; False (nothing read) if the text
    is not in that form (kpa.parse.nft_json then reads it object at a time)."""
    from kpa.parse.nft_json import HEAD

    head = HEAD.match(text)
    if head is None:
        return False
    start = head.end()
    stop = len(text)
    while stop > start and text[stop - 1] in " \t\r\n":
        stop -= 1
    stop -= 2
    if stop < start or text[stop:stop + 2] != "]}" or text.find("\n", start, stop) >= 0:
        return False
    try:
        _read(text, file, reader, start, stop)
    except Exception:
        # The object-at-a-time reader checks the nesting first: so does this one before any error.
        check_nesting(text, file)
        raise
    return True


def _read(text: str, file: str, reader: _Reader, start: int, stop: int) -> None:
    line = text.count("\n", 0, start) + 1
    templates: dict[str, _Template | None] = {}
    seen: dict[str, int] = {}
    # By the skeleton of an object: the templates that matched the object after one of its skeleton, the
    # latest first (at most FOLLOWERS). A guess only: what is read from a template is what its pattern
    # matched at the object's place, whichever template is tried.
    follow: dict[str, list[_Template]] = {}
    dec = _DECODER
    pending = reader.b.pending
    batch: _Batch | None = None
    too_deep = False
    # An object's brackets and braces (outside strings) sit inside the document's `{"nftables": [`.
    inside = MAX_NESTING - 2
    pos = start
    prev = ""
    t: Any = None
    while True:
        # Objects read from the template of a skeleton that followed the previous object's before.
        while True:
            guesses = follow.get(prev)
            if not guesses:
                break
            for t in guesses:
                m = t.fast.match(text, pos, stop)
                if m is not None:
                    break
            else:
                break
            if t is not guesses[0]:
                guesses.remove(t)
                guesses.insert(0, t)
            if t.rule:
                if batch is None:
                    batch = _Batch()
                    pending.append(batch)
                    tappend, mappend = batch.templates.append, batch.matches.append
                tappend(t)
                mappend(m)
                pos = m.end()
            else:
                pos = t.take(m, reader, line, stop)
            prev = t.key
        at = next_object(text, pos, file)
        if at < 0:
            break  # pos stays at the array's `]`, which array_closed reads from
        pos = at
        key = object_key(text, pos, stop)
        t = templates.get(key, _UNSET)
        if t is not None and t is not _UNSET:
            m = t.fast.match(text, pos, stop)
            if m is not None:
                # A template not guessed: it follows the previous object's skeleton from now on.
                guesses = follow.setdefault(prev, [])
                guesses.insert(0, t)
                del guesses[FOLLOWERS:]
                if t.rule:
                    if batch is None:
                        batch = _Batch()
                        pending.append(batch)
                        tappend, mappend = batch.templates.append, batch.matches.append
                    tappend(t)
                    mappend(m)
                    pos = m.end()
                else:
                    pos = t.take(m, reader, line, stop)
                prev = key
                continue
        # One object, as kpa.parse.nft_json._objects reads it.
        obj, end = decode_object(dec, text, pos, file)
        batch = None
        reader.handle(line, obj)
        if not too_deep and text.count("{", pos, end) + text.count("[", pos, end) > inside:
            too_deep = not _nesting_within(text[pos:end], inside)
        if t is _UNSET:
            # A skeleton gets its pattern (a few milliseconds to compile) once it recurs.
            count = seen[key] = seen.get(key, 0) + 1
            if count >= TEMPLATE_AFTER:
                made = templates[key] = _template(key, text, pos, end, obj, reader, line)
                if made is not None:
                    made.key = key
        prev = key
        pos = end + 2 if text.startswith(", ", end) else end
    array_closed(text, pos, file)
    if too_deep:
        check_nesting(text, file)


def next_object(text: str, pos: int, file: str) -> int:
    """Where the array's next object starts at or after `pos`, or -1 when the array's `]` comes first."""
    n = len(text)
    while pos < n and text[pos] in " \t\r\n,":
        pos += 1
    if pos >= n:
        raise InputError(file, text.count("\n") + 1, "expected ']' closing the nftables array, found end of input")
    return -1 if text[pos] == "]" else pos


def array_end(text: str, pos: int) -> int:
    """Where the array's `]` stands, `pos` being after its last object."""
    while text[pos] != "]":
        pos += 1
    return pos


def decode_object(dec: json.JSONDecoder, text: str, pos: int, file: str) -> tuple[Any, int]:
    """The object starting at `pos` and where it ends; a decoding error names its line."""
    try:
        return dec.raw_decode(text, pos)
    except json.JSONDecodeError as exc:
        raise InputError(file, exc.lineno, f"expected nft JSON, {exc.msg}") from None


def array_closed(text: str, pos: int, file: str) -> None:
    """After the array's `]` at `pos`, only the document's closing `}` may follow."""
    if not re.fullmatch(r"\}\s*", text[pos + 1:].strip()):
        raise InputError(file, text.count("\n", 0, pos) + 1, "expected '}' after the nftables array")
