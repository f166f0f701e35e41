"""Reader for `nft list ruleset` text (also `nft -a`), nftables 0.9.x to 1.1.x.

Blocks (table, chain, set, map) are read line by line; each rule line is
parsed into the JSON-schema shapes of kpa.parse.nft_common and lowered from
there, so text and JSON input mean exactly the same IR. A construct the
reader does not know is kept as one unknown expression covering the rest of
the rule, never silently dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kpa.errors import InputError
from kpa.ext.nft.base import UnmodelledKey, ValueError_, parse_value
from kpa.ext.nft.verdict import verdict_value
from kpa.netfilter.model import Chain, LazyNftRule, Location, NamedSet, Ruleset, Table, new_location
from kpa.netfilter.protocols import BadNumber, c_uint
from kpa.parse.nft_common import KEYED, VERDICTS, Builder, PendingRule, clip
from kpa.parse.nft_shapes import (
    FOLLOWERS,
    MISSING,
    KeyJob,
    LineKeys,
    NftShape,
    defer_text,
    text_source,
)

# A line that opens a table, chain, set or other named block: never part of a rule.
BLOCK_START = re.compile(r"(?:table|chain|set|map|flowtable|counter|quota|limit|ct\s+\S+|secmark|synproxy)\s+"
                         r"(?:\S+\s+){0,2}\{\s*$")
HANDLE = re.compile(r"\s*#\s*handle\s+(\d+)\s*$")
WARNING = re.compile(r"#\s*Warning:\s*table\s+(\S+)\s+(\S+)\s+is managed by iptables-nft")
SKIPPED_BLOCKS = {"flowtable", "counter", "quota", "ct", "limit", "secmark", "synproxy", "tunnel"}

PAYLOAD = {"ip", "ip6", "tcp", "udp", "udplite", "sctp", "dccp", "th", "icmp", "icmpv6", "ether", "vlan", "arp",
           "ah", "esp", "comp", "igmp", "gre", "ipcomp", "dst", "hbh", "frag", "rt", "mh", "auth"}
BARE_META = {"iif", "oif", "iifname", "oifname", "iiftype", "oiftype", "mark", "skuid", "skgid", "nftrace",
             "rtclassid", "pkttype", "cpu", "iifgroup", "oifgroup", "cgroup", "random", "l4proto", "nfproto",
             "priority", "length", "secmark", "ibrname", "obrname", "ibrvproto", "ibrpvid", "time", "day", "hour"}
CT_KEYS = {"state", "status", "mark", "direction", "l3proto", "protocol", "proto-src", "proto-dst", "saddr",
           "daddr", "expiration", "helper", "zone", "count", "id", "label", "bytes", "packets", "avgpkt", "event"}
BINOPS = {"&": "&", "|": "|", "^": "^", "<<": "<<", ">>": ">>", "and": "&", "or": "|", "xor": "^"}
# `!` is how nft prints "none of these flags" (`ct state ! established,related`).
CMP = {"==", "!=", "<", ">", "<=", ">=", "eq", "ne", "lt", "gt", "le", "ge", "!"}
CMP_WORDS = {"eq": "==", "ne": "!=", "lt": "<", "gt": ">", "le": "<=", "ge": ">="}
NAT_FLAGS = {"random", "fully-random", "persistent", "netmap", "prefix"}
ELEMENT_ATTRS = {"timeout", "expires", "counter", "comment", "packets", "bytes"}


class Unparsed(Exception):
    """Syntax the rule reader does not know: the rest of the rule becomes unknown."""


@dataclass(slots=True)
class Tok:
    text: str
    quoted: bool = False


# Without quotes, what `tokenize_by_char` finds: ";", braces, parentheses, a "," before a blank,
# a "}" or the end, and runs of anything else but blanks, braces, parentheses, quotes and ";".
# tests/test_nft_fast.py holds the two to each other.
_UNQUOTED_TOKEN = re.compile(r'[;{}()]|,(?=[ \t}]|\Z)|(?:[^ \t{}();",]|,(?![ \t}]|\Z))+')


# A line of words and a final `{`, none of which tokenize would split further.
_PLAIN_HEAD = re.compile(r'[^\s{}();",]+(?:[ \t]+[^\s{}();",]+)*[ \t]+\{')
# Every quoted string closed, as tokenize_by_char reads them (a backslash escapes the next character).
_QUOTES_CLOSED = re.compile(r'(?:[^"]|"(?:[^"\\]|\\.)*")*')


def tokenize(line: str, file: str, lineno: int) -> list[Tok]:
    if '"' not in line:
        return [Tok(t) for t in _UNQUOTED_TOKEN.findall(line)]
    return tokenize_by_char(line, file, lineno)


def tokenize_by_char(line: str, file: str, lineno: int) -> list[Tok]:
    """`tokenize`, a character at a time (any line, quoted strings included)."""
    out: list[Tok] = []
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c in " \t":
            i += 1
            continue
        if c == ";":
            out.append(Tok(";"))
            i += 1
            continue
        if c == '"':
            j = i + 1
            buf: list[str] = []
            while j < n and line[j] != '"':
                if line[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(line[j])
                j += 1
            if j >= n:
                raise InputError(file, lineno, 'expected a closing ", found end of line')
            out.append(Tok("".join(buf), True))
            i = j + 1
            continue
        if c in "{}()":
            out.append(Tok(c))
            i += 1
            continue
        if c == "," and (i + 1 >= n or line[i + 1] in " \t}"):
            out.append(Tok(","))
            i += 1
            continue
        j = i
        while j < n and line[j] not in ' \t{}();"' and not (line[j] == "," and (j + 1 >= n or line[j + 1] in " \t}")):
            j += 1
        out.append(Tok(line[i:j]))
        i = j
    return out


class RuleParser:
    """Turns the tokens of one rule into nft JSON-schema statements."""

    def __init__(self, toks: list[Tok]) -> None:
        self.toks = toks
        self.pos = 0

    # -- token helpers -------------------------------------------------------
    def peek(self, k: int = 0) -> str | None:
        p = self.pos + k
        return self.toks[p].text if p < len(self.toks) and not self.toks[p].quoted else (
            None if p >= len(self.toks) else "\x00" + self.toks[p].text)

    def next(self) -> str:
        if self.pos >= len(self.toks):
            raise Unparsed("unexpected end of rule")
        t = self.toks[self.pos]
        self.pos += 1
        return t.text

    def number(self) -> int:
        t = self.next()
        try:
            return c_uint(t, 0xFFFFFFFF)
        except BadNumber:
            raise Unparsed(f"expected a number, found {clip(t)!r}") from None

    def accept(self, word: str) -> bool:
        if self.peek() == word:
            self.pos += 1
            return True
        return False

    def rest_text(self) -> str:
        return " ".join(f'"{t.text}"' if t.quoted else t.text for t in self.toks[self.pos:])

    # -- statements ------------------------------------------------------------
    def statements(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while self.pos < len(self.toks):
            if self.accept(";"):
                continue
            start = self.pos
            try:
                out.append(self.statement())
            except Unparsed as exc:
                self.pos = start
                out.append({"unparsed": {"text": self.rest_text(), "reason": str(exc)}})
                break
        return out

    def statement(self) -> dict[str, Any]:
        t = self.peek()
        if t in VERDICTS:
            self.next()
            if t in ("jump", "goto"):
                if self.accept("{"):
                    return {t: {"rules": self.anonymous_chain()}}
                return {t: {"target": self.next()}}
            if t == "queue":
                queue: dict[str, Any] = {}
                flags: list[str] = []
                while self.peek() in ("num", "bypass", "fanout", "to", "flags") or (self.peek() or "x")[0].isdigit():
                    word = self.next()
                    if word == "num" or word == "to":
                        queue["num"] = self.next()
                    elif word in ("bypass", "fanout"):
                        flags.append(word)
                    elif word == "flags":
                        flags.extend(self.next().split(","))
                if flags:
                    queue["flags"] = flags
                return {t: queue or None}
            return {t: None}
        if t == "reject":
            self.next()
            if not self.accept("with"):
                return {"reject": None}
            kind = self.next()
            if kind == "tcp":
                self.next()  # reset
                return {"reject": {"type": "tcp reset"}}
            self.accept("type")
            return {"reject": {"type": kind, "expr": self.next()}}
        if t == "counter":
            self.next()
            body: dict[str, Any] = {}
            while self.peek() in ("packets", "bytes", "name"):
                k = self.next()
                body[k] = self.next()
            return {"counter": {k: int(v) if v.isdigit() else v for k, v in body.items()} or None}
        if t == "log":
            self.next()
            opts: dict[str, Any] = {}
            while self.peek() in ("prefix", "level", "group", "snaplen", "queue-threshold", "flags"):
                k = self.next()
                opts[k] = self.next()
            return {"log": opts or None}
        if t == "limit":
            self.next()
            if not self.accept("rate"):
                raise Unparsed("expected `limit rate`")
            over = self.accept("over")
            self.accept("until")
            rate = self.next()
            if "/" not in rate:
                rate += " " + self.next()
            if self.accept("burst"):
                self.next()
                self.accept("packets")
                self.accept("bytes")
            return {"limit": {"rate": rate, "inv": over}}
        if t == "quota":
            self.next()
            over = self.accept("over")
            self.accept("until")
            amount = self.next() + " " + self.next()
            if self.accept("used"):
                self.next()
                self.next()
            return {"quota": {"val": amount, "inv": over}}
        if t is not None and t.startswith("\x00"):
            raise Unparsed(f"unexpected string {t[1:]!r}")
        if t == "comment":
            self.next()
            return {"comment": self.next()}
        if t == "notrack":
            self.next()
            return {"notrack": None}
        if t in ("dnat", "snat", "masquerade", "redirect"):
            return self.nat()
        if t == "tproxy":
            self.next()
            tp: dict[str, Any] = {}
            if self.peek() in ("ip", "ip6"):
                tp["family"] = self.next()
            if self.accept("to"):
                addr, port = split_nat_address(self.next())
                if addr is not None:
                    tp["addr"] = addr
                if port is not None:
                    tp["port"] = port
            return {"tproxy": tp}
        if t in ("update", "add", "delete") and (self.peek(1) or "").startswith("@"):
            op = self.next()
            name = self.next()
            if not self.accept("{"):
                raise Unparsed("expected `{ key }` after the set")
            elem = self.concat_expr()
            for _ in range(8):  # element options such as `timeout 3h`
                if self.peek() == "}":
                    break
                self.next()
            if not self.accept("}"):
                raise Unparsed("expected } closing the set element")
            return {"set": {"op": op, "elem": elem, "set": name}}
        if t == "xt":
            self.next()
            return {"xt": {"type": self.next(), "name": self.next()}}
        if t == "flow":
            self.next()
            self.accept("add")
            self.accept("offload")
            return {"flow": {"flowtable": self.next()}}
        left = self.concat_expr()
        nt = self.peek()
        if nt == "set":
            self.next()
            return {"mangle": {"key": left, "value": self.value_expr()}}
        if nt == "vmap":
            self.next()
            return {"vmap": {"key": left, "data": self.rhs(map_verdicts=True)}}
        # Without an operator nft means "equal" for a value, a set and a `|`
        # combination, and "any of these bits" for a flag list (`ct state
        # established,related`): "in", as `nft -j` writes it; the lowering reads
        # "in" as "==" for keys that are not flags.
        op = "in"
        if nt in CMP:
            op = CMP_WORDS.get(self.next(), nt)
        right = self.rhs()
        if op == "in" and isinstance(right, dict) and ("set" in right or "|" in right):
            # A set, or a combination (`ct state established | new`: exactly that value).
            op = "=="
        if self.accept("/"):
            # `tcp flags syn / syn,ack`: the flags under the mask equal the value.
            left = {"&": [left, self.operand()]}
            op = "==" if op == "in" else op
        return {"match": {"op": op, "left": left, "right": right}}

    def anonymous_chain(self) -> list[list[dict[str, Any]]]:
        """The rules of `jump { rule; rule }` (after the `{`), each as statements."""
        rules: list[list[dict[str, Any]]] = []
        depth, group = 0, list[Tok]()
        while True:
            if self.pos >= len(self.toks):
                raise Unparsed("expected '}' closing the anonymous chain")
            tok = self.toks[self.pos]
            self.pos += 1
            if not tok.quoted and tok.text == "{":
                depth += 1
            elif not tok.quoted and tok.text == "}":
                if depth == 0:
                    break
                depth -= 1
            elif not tok.quoted and tok.text == ";" and depth == 0:
                if group:
                    rules.append(RuleParser(group).statements())
                group = []
                continue
            group.append(tok)
        if group:
            rules.append(RuleParser(group).statements())
        return rules

    # -- expressions ----------------------------------------------------------
    def primary(self) -> dict[str, Any]:
        t = self.next()
        raw = re.fullmatch(r"@(ll|nh|th|ih),(\d+),(\d+)", t)
        if raw:  # a raw payload expression, as `nft -j` writes it
            return {"payload": {"base": raw.group(1), "offset": int(raw.group(2)), "len": int(raw.group(3))}}
        if t in PAYLOAD:
            fld = self.next()
            if fld in ("option", "ext", "hdr") or not re.fullmatch(r"[a-z][a-z0-9-]*", fld):
                raise Unparsed(f"{t} {fld} is not read")
            return {"payload": {"protocol": t, "field": fld}}
        if t == "meta":
            return {"meta": {"key": self.next()}}
        if t in BARE_META:
            return {"meta": {"key": t}}
        if t == "ct":
            direction = None
            if self.peek() in ("original", "reply"):
                direction = self.next()
            key = self.next()
            if key in ("ip", "ip6"):
                key = f"{key} {self.next()}"
            elif key not in CT_KEYS:
                raise Unparsed(f"ct {key} is not read")
            body: dict[str, Any] = {"key": key}
            if direction:
                body["dir"] = direction
            return {"ct": body}
        if t == "socket":
            return {"socket": {"key": self.next()}}
        if t == "fib":
            flags = [self.next()]
            while self.accept("."):
                flags.append(self.next())
            return {"fib": {"result": self.next(), "flags": flags}}
        if t == "numgen":
            mode = self.next()
            if not self.accept("mod"):
                raise Unparsed("expected numgen MODE mod N")
            body = {"mode": mode, "mod": self.number(), "offset": 0}
            if self.accept("offset"):
                body["offset"] = self.number()
            return {"numgen": body}
        if t in ("jhash", "symhash"):
            expr = self.concat_expr() if t == "jhash" else None
            if not self.accept("mod"):
                raise Unparsed(f"expected {t} ... mod N")
            body = {"mod": self.number()}  # in the order `nft -j` writes them
            if expr is not None:
                body["expr"] = expr
            for opt in ("seed", "offset"):
                if self.accept(opt):
                    body[opt] = self.next()
            return {t: body}
        raise Unparsed(f"{t!r} is not read as an expression")

    def unary(self) -> dict[str, Any]:
        if self.accept("("):
            left = self.unary()
            if not self.accept(")"):
                raise Unparsed("expected ')' closing the expression")
        else:
            left = self.primary()
        while self.peek() in BINOPS:
            op = BINOPS[self.next()]
            left = {op: [left, self.operand()]}
        return left

    def operand(self) -> Any:
        """A constant operand: a word, or a parenthesised expression of constants (`(syn | ack)`)."""
        if not self.accept("("):
            return self.next()
        value = self.operand()
        while self.peek() in BINOPS:
            op = BINOPS[self.next()]
            value = {op: [value, self.operand()]}
        if not self.accept(")"):
            raise Unparsed("expected ')' closing the expression")
        return value

    def concat_expr(self) -> dict[str, Any]:
        parts = [self.unary()]
        while self.accept("."):
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else {"concat": parts}

    def value_expr(self) -> Any:
        t = self.peek()
        left: Any
        if t == "(":
            self.next()
            left = self.value_expr()
            if not self.accept(")"):
                raise Unparsed("expected ')' closing the expression")
        elif t is not None and (t in PAYLOAD or t in BARE_META
                                or t in ("meta", "ct", "numgen", "fib", "socket", "jhash", "symhash")):
            left = self.primary()
        else:
            left = self.next()
        while self.peek() in BINOPS:
            op = BINOPS[self.next()]
            left = {op: [left, self.operand()]}
        if self.accept("map"):  # `meta mark set tcp dport map @marks`
            left = {"map": {"key": left, "data": self.rhs()}}
        return left

    def scalar(self) -> Any:
        t = self.peek()
        if t is None:
            raise Unparsed("expected a value, found end of rule")
        if t in ("{", "}", ",", ":"):
            raise Unparsed(f"expected a value, found {t!r}")
        value: Any = self.operand()
        while self.peek() == "|":  # a flag combination: `established | related`, `syn | ack`
            self.next()
            value = {"|": [value, self.operand()]}
        parts = [value]
        while self.accept("."):
            parts.append(self.operand())
        return parts[0] if len(parts) == 1 else {"concat": parts}

    def rhs(self, map_verdicts: bool = False) -> Any:
        if self.peek() is not None and (self.peek() or "").startswith("@"):
            return self.next()
        if not self.accept("{"):
            if map_verdicts:
                raise Unparsed("expected a verdict map")
            return self.scalar()
        items: list[Any] = []
        while not self.accept("}"):
            key = self.scalar()
            comment = None
            while self.peek() in ELEMENT_ATTRS:
                comment = self._skip_attr() or comment
            if comment is not None:
                key = {"elem": {"val": key, "comment": comment}}  # as `nft -j` writes it
            if self.accept(":"):
                value = self.verdict_value() if map_verdicts else self.scalar()
                items.append([key, value])
            else:
                items.append(key)
            while self.peek() in ELEMENT_ATTRS:
                self._skip_attr()
            if not self.accept(",") and self.peek() != "}":
                raise Unparsed(f"expected ',' or '}}' in a set, found {self.peek()!r}")
        return {"set": items}

    def _skip_attr(self) -> str | None:
        """Skip an element attribute; return the text of a `comment`."""
        w = self.next()
        if w in ("timeout", "expires", "comment", "packets", "bytes"):
            value = self.next()
            if w == "comment":
                return value[1:] if value.startswith("\x00") else value
        return None

    def verdict_value(self) -> dict[str, Any]:
        t = self.next()
        if t in ("jump", "goto"):
            return {t: {"target": self.next()}}
        if t in VERDICTS:
            return {t: None}
        raise Unparsed(f"expected a verdict, found {t!r}")

    def nat(self) -> dict[str, Any]:
        kind = self.next()
        body: dict[str, Any] = {}
        if self.peek() in ("ip", "ip6") and self.peek(1) in ("to", "addr"):
            body["family"] = self.next()
        if self.accept("addr"):  # `dnat ip addr . port to ...` (concatenated map data)
            self.accept(".")
            self.accept("port")
        if self.accept("to"):
            t = self.peek() or ""
            starts_expr = (t in PAYLOAD and self.peek(1) not in (None, ",")) or t in ("meta", "ct", "numgen", "jhash", "symhash")
            if starts_expr and not re.match(r"^[\d\[:]", t):
                key = self.concat_expr()
                if not self.accept("map"):
                    raise Unparsed("expected `map` after the nat key")
                body["addr"] = {"map": {"key": key, "data": self.rhs()}}
            else:
                target = self.next()
                if self.peek() == ":" and not target.endswith(":"):  # `10.0.0.1 : 53`, as nft -f reads it
                    self.next()
                    target += ":" + self.next()
                addr, port = split_nat_address(target)
                if addr is not None:
                    body["addr"] = addr
                if port is not None:
                    body["port"] = port
        flags: list[str] = []
        while self.peek() is not None and all(f in NAT_FLAGS for f in (self.peek() or "").split(",")):
            flags.extend(self.next().split(","))
        if flags:
            body["flags"] = flags
        return {kind: body or None}


# Elements as kube-proxy's sets and maps list them: `{ a, b }`, `{ a . tcp . 53 : goto c, ... }`, each key
# optionally with `comment "text"` (no quote or backslash in it). A part is a token with no blank, quote,
# brace, parenthesis, ';', ',', ':', '|' or '@', and dots only inside.
_PART = r'[^\s{}();",:|@.]+(?:\.[^\s{}();",:|@.]+)*'
_KEY = rf"{_PART}(?:[ \t]+\.[ \t]+{_PART})*"
_COMMENT = r'(?:[ \t]+comment[ \t]+"({c}[^"\\]*)")?'
_VERDICT = rf"(?:accept|drop|continue|return|(?:jump|goto)[ \t]+{_PART})"


def _element(verdicts: bool, capture: bool) -> str:
    c = "" if capture else "?:"
    value = _VERDICT if verdicts else _KEY
    tail = rf"[ \t]+:[ \t]+({c}{value})" if verdicts else rf"(?:[ \t]+:[ \t]+({c}{value}))?"
    return f"({c}{_KEY})" + _COMMENT.replace("{c}", c) + tail


_ELEMENT = {v: re.compile(_element(v, True)) for v in (True, False)}
_SIMPLE_ELEMENTS = {
    v: re.compile(rf"[ \t]*\{{[ \t]*{_element(v, False)}(?:,[ \t]+{_element(v, False)})*[ \t]*\}}[ \t]*")
    for v in (True, False)
}
# _SIMPLE_ELEMENTS a piece at a time: the `{` and the first element, each `,` and element after it, the `}`.
_FIRST_ELEMENT = {v: re.compile(rf"[ \t]*\{{[ \t]*{_element(v, True)}") for v in (True, False)}
_NEXT_ELEMENT = {v: re.compile(rf",[ \t]+{_element(v, True)}") for v in (True, False)}
_ELEMENTS_END = re.compile(r"[ \t]*\}[ \t]*")

# Each element's key, comment and value (None where the element has none).
Elements = list[tuple[Any, ...]]


def simple_elements(text: str, verdicts: bool) -> Elements | None:
    """The groups (key, comment, value) of each element, as _ELEMENT's finditer gives them, of a text that
    _SIMPLE_ELEMENTS matches whole; one pass over the text rather than a match and a search. None for
    anything else (also for a text the whole pattern would only match by reading an element otherwise
    than finditer does)."""
    m = _FIRST_ELEMENT[verdicts].match(text)
    if m is None:
        return None
    found: Elements = [m.groups()]
    following = _NEXT_ELEMENT[verdicts].match
    pos = m.end()
    while (m := following(text, pos)) is not None:
        found.append(m.groups())
        pos = m.end()
    return found if _ELEMENTS_END.fullmatch(text, pos) else None


def _scalar_of(text: str) -> Any:
    words = text.split()
    return words[0] if len(words) == 1 else {"concat": words[::2]}


def elements_fast(text: str, verdicts: bool) -> dict[str, Any] | None:
    """What RuleParser.rhs reads from `{ elements }` of the simple forms above; None for anything else."""
    found = simple_elements(text, verdicts)
    return None if found is None else elements_value(found, verdicts)


def elements_value(found: Elements, verdicts: bool) -> dict[str, Any]:
    """elements_fast's answer from simple_elements' groups."""
    items: list[Any] = []
    for key, comment, value in found:
        k = _scalar_of(key)
        if comment:  # as RuleParser.rhs: an empty comment is none
            k = {"elem": {"val": k, "comment": comment}}
        if value is None:
            items.append(k)
        elif verdicts:
            words = value.split()
            items.append([k, {words[0]: {"target": words[1]}} if len(words) == 2 else {words[0]: None}])
        else:
            items.append([k, _scalar_of(value)])
    return {"set": items}


def _range(text: str) -> Any:
    if "-" in text:
        lo, hi = text.split("-", 1)
        return {"range": [lo, hi]}
    return text


def split_nat_address(text: str) -> tuple[Any, Any]:
    """`10.0.0.1:80`, `[fd00::1]:80`, `:8080`, `fd00::1`, `10.0.0.1-10.0.0.9`."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
        return host, (_range(port) if port else None)
    if text.startswith(":"):
        return None, _range(text[1:])
    if text.count(":") == 1:
        host, port = text.split(":")
        return _range(host), _range(port)
    return _range(text), None


def _port_value(v: Any) -> Any:
    return int(v) if isinstance(v, str) and v.isdigit() else v


# The head of a block: a table at the top level, the others inside a table.
_TABLE_HEAD = re.compile(r"table(?:\s+[^\s{}]+){1,2}\s*")
_INNER_HEAD = re.compile(r"(?:(?:chain|set|map|flowtable|counter|quota|limit|secmark|synproxy)|ct\s+(?:helper|timeout|expectation))"
                         r"\s+[^\s{}]+\s*")


def _block_head(head: str, depth: int) -> bool:
    """Whether `HEAD {` opens a block at this brace depth (0: top level, 1: inside a table)."""
    return bool((_TABLE_HEAD if depth == 0 else _INNER_HEAD).fullmatch(head)) if depth < 2 else False


def _needs_split(s: str, depth: int) -> bool:
    """Whether a line is in `nft -f` shorthand, not one statement per line as nft lists it:
    `;`-separated statements, content after a block's `{`, or a block's `}` after content."""
    if ";" in s and not (s.startswith("type ") and " hook " in s):
        return True
    brace = s.find("{")
    if brace >= 0 and s[brace + 1:].strip() and _block_head(s[:brace].strip(), depth):
        return True
    return s != "}" and s.endswith("}") and s.count("}") > s.count("{")


def _any_block_head(head: str) -> bool:
    """Whether `HEAD {` opens a block at some brace depth (_block_head at depth 0 or 1)."""
    return bool(_TABLE_HEAD.fullmatch(head) or _INNER_HEAD.fullmatch(head))


def listing_form(lines: list[str]) -> bool:
    """True only if split_statements(lines) is the lines as they are, each from its own line.

    That holds when no line reaches the splitting branch: no line may be split at any depth
    (a `;` outside a base chain's head, content after a block head's `{`) and every line that
    closes more braces than it opens and has content before its `}` (the last line of a set's
    elements) is inside a statement's brace: the last line with a brace before it opens one
    that is not a block (more `{` than `}`, also outside quotes; no `;`, not a comment or block head).
    False says nothing: split_statements then reads line by line.
    """
    for line in [line for line in lines if ";" in line]:
        s = line.strip()
        if not s.startswith("#") and not (s.startswith("type ") and " hook " in s):
            return False
    for line in [line for line in lines if "{" in line]:
        brace = line.find("{")
        if line[brace + 1:].strip() and not line.lstrip().startswith("#") and _any_block_head(line[:brace].strip()):
            return False
    braces = [n for n, line in enumerate(lines) if "{" in line or "}" in line]
    for at, n in enumerate(braces):
        s = lines[n].strip()
        if s == "}" or not s.endswith("}") or s.startswith("#") or s.count("}") <= s.count("{"):
            continue
        if at == 0:
            return False
        prev = lines[braces[at - 1]].strip()
        if (";" in prev or prev.startswith("#") or prev.count("{") <= prev.count("}")
                or ('"' in prev and _depth(prev) < 1) or (prev.endswith("{") and _any_block_head(prev[:-1].strip()))):
            return False
    return True


# For listing_form_text: a `{` with something after it on its line; a `}` ending a line (blanks aside)
# right after something other than a line break, or a tab after something other than a line break.
_CONTENT_AFTER_BRACE = re.compile(r"\{[^\n]*?\S")
_HEAD_WORDS = ("table", "chain", "set", "map", "flowtable", "counter", "quota", "limit", "secmark", "synproxy", "ct")
_LINE_END_CLOSE = (re.compile(r"\}(?<![\n\t]\})[^\S\n]*$", re.M), re.compile(r"\t\}(?<!\n\t\})[^\S\n]*$", re.M))


def listing_form_text(text: str) -> bool:
    """listing_form(text.splitlines()) for a text whose only line break is "\n", from C searches for the
    few lines each check looks at rather than a pass over every line: lines with a `;`, lines with
    something after their first `{`, and lines that end in a `}` with something before it (the two
    _LINE_END_CLOSE patterns find every such line: what precedes the `}` is not a line break or tab,
    or is a tab that does not start the line), each with the last line with a brace before it."""
    size = len(text)

    def line_at(pos: int) -> tuple[int, int]:
        end = text.find("\n", pos)
        return text.rfind("\n", 0, pos) + 1, size if end < 0 else end

    pos = text.find(";")
    while pos >= 0:
        start, end = line_at(pos)
        s = text[start:end].strip()
        if not s.startswith("#") and not (s.startswith("type ") and " hook " in s):
            return False
        pos = text.find(";", end)
    last = -1
    for m in _CONTENT_AFTER_BRACE.finditer(text):
        start, end = line_at(m.start())
        if start == last:
            continue
        last = start
        line = text[start:end]
        if not line.lstrip().startswith(_HEAD_WORDS):
            continue  # never a block head (the words each starts with)
        brace = line.find("{")
        if line[brace + 1:].strip() and not line.lstrip().startswith("#") and _any_block_head(line[:brace].strip()):
            return False
    # By line start: the line's end (each pattern ends at its line's end).
    closing = {text.rfind("\n", 0, m.start()) + 1: m.end() for pattern in _LINE_END_CLOSE for m in pattern.finditer(text)}
    for start, end in closing.items():
        s = text[start:end].strip()
        if s == "}" or not s.endswith("}") or s.startswith("#") or s.count("}") <= s.count("{"):
            continue
        brace = max(text.rfind("{", 0, start), text.rfind("}", 0, start))
        if brace < 0:
            return False
        p_start, p_end = line_at(brace)
        prev = text[p_start:p_end].strip()
        if (";" in prev or prev.startswith("#") or prev.count("{") <= prev.count("}")
                or ('"' in prev and _depth(prev) < 1) or (prev.endswith("{") and _any_block_head(prev[:-1].strip()))):
            return False
    return True


def split_statements(lines: list[str]) -> tuple[list[str], list[int]]:
    """Lines as nft lists them, with the input line each comes from.

    nft also reads blocks and statements written on one line (`set s { type
    ipv4_addr; elements = { 1.2.3.4 } }`, `chain c { ...; tcp dport 22 accept; }`):
    such lines are split at the block level into one statement per line. Braces
    inside a statement (sets, anonymous chains, elements) are kept as they are, and
    lines already in listing form pass through unchanged.
    """
    if listing_form(lines):
        # As nft lists a ruleset: nothing to split (the loop below would pass every line through).
        return list(lines), list(range(1, len(lines) + 1))
    return split_statements_by_line(lines)


def split_statements_by_line(lines: list[str]) -> tuple[list[str], list[int]]:
    """split_statements, following open braces line by line."""
    out: list[str] = []
    nos: list[int] = []
    stack: list[bool] = []  # open braces: True for a block, False inside a statement
    # A line with no ';' and no brace has nothing to split and no brace to count: it passes
    # through as the general path below would pass it, with the lines around it, in one slice.
    done = 0
    for no in [n for n, line in enumerate(lines, 1) if ";" in line or "{" in line or "}" in line]:
        if no - 1 > done:
            out.extend(lines[done:no - 1])
            nos.extend(range(done + 1, no))
        done = no
        line = lines[no - 1]
        s = line.strip()
        if s == "}":
            # Closes whatever is open: a block, or a brace inside a statement.
            out.append(line)
            nos.append(no)
            if stack:
                stack.pop()
            continue
        inner = bool(stack) and not stack[-1]
        if not s or s.startswith("#") or inner or not _needs_split(s, len(stack)):
            out.append(line)
            nos.append(no)
            if not s or s.startswith("#"):
                continue
            if not inner and s.endswith("{") and _block_head(s[:-1].strip(), len(stack)):
                stack.append(True)
            elif not inner and s == "}":
                if stack:
                    stack.pop()
            elif "{" in s or "}" in s:
                d = _depth(s) if '"' in s else s.count("{") - s.count("}")
                if d > 0:
                    stack.extend([False] * d)
                for _ in range(-d):
                    if stack and not stack[-1]:
                        stack.pop()
            continue
        buf: list[str] = []

        def emit(text: str, no: int = no) -> None:
            text = text.strip()
            if text:
                out.append(text)
                nos.append(no)

        quoted = False
        i = 0
        while i < len(s):
            c = s[i]
            i += 1
            if c == '"':
                quoted = not quoted
                buf.append(c)
                continue
            if quoted:
                buf.append(c)
                continue
            at_block = not stack or stack[-1]
            if c == "#" and at_block:
                buf.append(s[i - 1:])  # a comment (or `# handle N`) to the end of the line
                break
            if c == "{":
                head = "".join(buf).strip()
                if at_block and _block_head(head, len(stack)):
                    emit(head + " {")
                    buf = []
                    stack.append(True)
                else:
                    buf.append(c)
                    stack.append(False)
            elif c == "}":
                if stack and stack[-1]:
                    emit("".join(buf))
                    buf = []
                    emit("}")
                    stack.pop()
                else:
                    buf.append(c)
                    if stack:
                        stack.pop()
            elif c == ";" and at_block:
                text = "".join(buf).strip()
                if text.startswith("type ") and " hook " in text:
                    # A base chain's head keeps its `;`, and the `policy P;` that may follow it.
                    buf.append(c)
                    rest = s[i:].lstrip()
                    if rest.startswith("policy ") and " policy " not in f" {text}":
                        continue
                    emit("".join(buf))
                    buf = []
                    continue
                emit(text)
                buf = []
            else:
                buf.append(c)
        emit("".join(buf))
    if len(lines) > done:
        out.extend(lines[done:])
        nos.extend(range(done + 1, len(lines) + 1))
    return out, nos


# A chain block as `nft list ruleset` prints it, which TextReader._block would read as a chain head,
# one rule per line and the closing brace: `\tchain NAME {`, lines `\t\tRULE` and `\t}`. NAME is one
# plain word (what _PLAIN_HEAD and split() read; no `#`, so no handle). A RULE starts and ends with a
# non-blank (strip() leaves it as it is), does not start with `type `, `comment ` or `policy ` (the
# chain's head, comment and policy), has no `#` (no handle, no comment line) and no `;`; its braces
# come in pairs on the line, without quotes or braces inside (`vmap { 0 : goto a, 1 : goto b }`), and
# its quoted strings hold no quote, backslash, brace, `#` or `;`. Text with a line break other than
# "\n" (which str.splitlines() would split at) is never read this way (_ODD_BREAKS).
_BULK_PLAIN = r'[^\n#";{}]*'
_BULK_RULE = (r'\t\t(?!type |comment |policy )(?=\S)'
              rf'{_BULK_PLAIN}(?:(?:\{{{_BULK_PLAIN}\}}|"[^\n"\\#;{{}}]*"){_BULK_PLAIN})*(?<=\S)\n')
# `\tchain ` at a line's start, written as the literal and a look back at the line's start so that the
# regex engine searches for the literal. Group 3 (looked ahead at, not part of the match) holds the empty
# lines after the block.
_CHAIN_BLOCK = re.compile(r'\tchain (?<=^\tchain )([^\s{}();",#]+) \{\n((?:' + _BULK_RULE + r')*)\t\}\n(?=(\n*))',
                          re.M)
# Line breaks of str.splitlines() other than "\n".
_ODD_BREAKS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def chain_blocks(text: str) -> dict[int, list[re.Match[str]]]:
    """The chain blocks of `text` in the form above, in runs of blocks with only empty lines between
    them, each run by the index of its first head line in text.splitlines(); empty if the text has a
    line break other than "\n". Which of them the reader meets as a chain head (at a table's level) is
    the reader's business."""
    return _chain_runs(text)[0]


def _chain_runs(text: str) -> tuple[dict[int, list[re.Match[str]]], int]:
    """chain_blocks(text), and how many characters its blocks cover."""
    if any(c in text for c in _ODD_BREAKS):
        return {}, 0
    found: dict[int, list[re.Match[str]]] = {}
    count = text.count
    line = pos = covered = 0
    run: list[re.Match[str]] = []
    after = -1  # where the last block's empty lines end
    for m in _CHAIN_BLOCK.finditer(text):
        start, end = m.span()
        covered += end - start
        if start != after:
            line += count("\n", pos, start)
            pos = start
            run = found[line] = []
        run.append(m)
        after = m.end(3)
    return found, covered


class ChainBatch:
    """The rules of chain blocks read in bulk (chain_blocks), as (chain, line of its first rule, texts):
    each is settled in Builder.finish() as the PendingRule the line-by-line reader queues for it would
    be (TextReader._key, Builder.settle_keyed), with the common case, a rule that fits its skeleton's
    shape, deferred without one."""

    __slots__ = ("chains", "reader", "table")

    def __init__(self, reader: TextReader, table: Table) -> None:
        self.reader = reader
        self.table = table
        self.chains: list[tuple[str, int, list[str]]] = []

    def settle(self, b: Builder) -> None:
        reader, table = self.reader, self.table
        keys = reader._keys
        if keys is None:
            for name, line, texts in self.chains:
                for lineno, text in enumerate(texts, line):
                    b._build_rule(PendingRule(table, name, lineno, None, text))  # as TextReader._key: no key
            return
        tid = id(table)
        source = text_source(b, table)
        tname = table.name
        # By the shape of a rule (None: one read in full): the shapes of the rules that followed one, the
        # latest first. A rule that fits one of them is deferred as its own skeleton's shape would defer
        # it (a text that fits a shape's pattern has that shape's skeleton); any other rule is keyed.
        follow = reader._follow.setdefault(tid, {})
        following = follow.get
        prev: NftShape | None = reader._prev.get(tid)
        chains = table.chains
        lazy = LazyNftRule
        for name, line, texts in self.chains:
            chain = chains.get(name)
            if chain is None:
                for lineno, text in enumerate(texts, line):
                    prev = self._keyed(b, None, name, lineno, text, prev)
                continue
            rules = chain.rules
            append = rules.append
            for lineno, text in enumerate(texts, line):
                guesses = following(prev)
                if guesses:
                    # The latest follower first; a hit further down the list moves to its front.
                    shape = guesses[0]
                    m = shape.fullmatch(text)
                    if m is None:
                        for shape in guesses[1:]:
                            m = shape.fullmatch(text)
                            if m is not None:
                                guesses.remove(shape)
                                guesses.insert(0, shape)
                                break
                    if m is not None:
                        if shape.plain:
                            # defer_text for a shape with nothing to check but its pattern (a rule in bulk has
                            # no handle), without the call; refs_of's common cases inline.
                            refs = shape.static
                            if refs is None:
                                one = shape.one
                                refs = ((one[0], m.group(one[1])),) if one is not None else shape.refs_of(m)
                            append(lazy(tname, name, len(rules) + 1, text, lineno, source, shape, refs))
                            prev = shape
                            continue
                        if defer_text(b, table, chain, text, lineno, None, shape, source):
                            prev = shape
                            continue
                prev = self._keyed(b, chain, name, lineno, text, prev)
        reader._prev[tid] = prev

    def _keyed(self, b: Builder, chain: Chain | None, name: str, lineno: int, text: str,
               prev: NftShape | None) -> NftShape | None:
        """A rule no guess fits, by its own skeleton as the line-by-line reader reads it; the shape of the
        rule (None: read in full), which also becomes a follower of `prev`'s if the rule fits it."""
        table = self.table
        tid = id(table)
        keys = self.reader._keys
        assert keys is not None
        handle, _, key = keys.entry(lineno).partition("\x00")
        if handle or not key:
            b._build_rule(PendingRule(table, name, lineno, None, text))
            return None
        known = b._shapes.get((tid, key), MISSING)
        if known is not MISSING and known is not None and chain is not None \
                and defer_text(b, table, chain, text, lineno, None, known, text_source(b, table)):
            guesses = self.reader._follow[tid].setdefault(prev, [])
            guesses.insert(0, known)
            del guesses[FOLLOWERS:]
            return known  # type: ignore[no-any-return]
        b.settle_keyed(PendingRule(table, name, lineno, None, text, None, None, key))
        got = b._shapes.get((tid, key))
        return got if isinstance(got, NftShape) else None


class TextReader:
    def __init__(self, file: str, shapes: bool = True, bulk: bool = True) -> None:
        self.file = file
        self.b = Builder(file)
        self.b.parse_rule = self._statements
        self._no: list[int] = []
        self._lines = 0
        # Rules that share a skeleton share a shape (kpa.parse.nft_shapes); shapes=False reads each in full.
        self.shapes = shapes
        # With shapes, chain blocks in listing form are read in bulk (chain_blocks); bulk=False reads
        # them line by line (the same ruleset, slower).
        self.bulk = bulk
        self._text = ""
        self._physical: list[str] = []
        self._keys: LineKeys | KeyJob | None = None
        # ChainBatch's, by id(table): the shapes that followed each shape, and the shape of the last rule.
        self._follow: dict[int, dict[NftShape | None, list[NftShape]]] = {}
        self._prev: dict[int, NftShape | None] = {}
        # _block's, when reading in bulk: the lines of the last set or map block of attribute lines only
        # (kube-proxy lists thousands of affinity sets alike), and the spec they make.
        self._attrs: tuple[list[str], dict[str, Any]] | None = None

    def _statements(self, line: str, lineno: int) -> list[dict[str, Any]]:
        stmts = RuleParser(tokenize(line, self.file, lineno)).statements()
        for st in stmts:
            if "unparsed" not in st:
                _fix_ports(st)
        return stmts

    def error(self, line: int, message: str) -> InputError:
        return InputError(self.file, line, message)

    def parse(self, text: str) -> Ruleset:
        if "\x00" in text:
            raise self.error(text[: text.index("\x00")].count("\n") + 1, "expected nft text, found binary data")
        physical = text.splitlines()
        self._lines = len(physical)
        self._text = text
        if self.shapes:
            # Rule skeletons, worked out for a line when asked.
            self._physical, self._keys = physical, LineKeys(physical)
            self.b.key_of = self._key
        try:
            return self._parse(physical)
        finally:
            if isinstance(self._keys, KeyJob):
                self._keys.close()

    def _parse(self, physical: list[str]) -> Ruleset:
        bulk: dict[int, list[re.Match[str]]] = {}
        covered = 0  # characters of the text in `bulk`'s blocks
        text = self._text
        if listing_form_text(text) if not any(c in text for c in _ODD_BREAKS) else listing_form(physical):
            # As split_statements: nothing to split. Lines and physical lines are then one and the same.
            lines, self._no = list(physical), list(range(1, len(physical) + 1))
            if self.bulk and self._keys is not None:
                bulk, covered = _chain_runs(self._text)
        else:
            lines, self._no = split_statements_by_line(physical)
        if self._keys is not None and KeyJob.wanted(text) \
                and covered < len(text) // 2:
            # Most rules are read line by line (not in bulk, where guesses spare most lines a skeleton):
            # every line's skeleton at once, in a second process, while the structure is read.
            self._keys = KeyJob(text, physical)
        i = 0
        table: Table | None = None
        table_line = 0
        while i < len(lines):
            if table is not None and i in bulk:
                # A chain head at the table's level, and its block in listing form: read in bulk.
                i = self._bulk_chains(table, bulk, lines, i)
                continue
            lineno = self._no[i]
            raw = lines[i].strip()
            i += 1
            if not raw:
                continue
            if raw.startswith("#"):
                m = WARNING.search(raw)
                if m:
                    self.b.managed.add((m.group(1), m.group(2)))
                continue
            handle, line = _handle(raw)
            # `chain NAME {` and the like: plain words, as tokenize would find them.
            words = line.split() if _PLAIN_HEAD.fullmatch(line) else [t.text for t in tokenize(line, self.file, lineno)]
            if table is None:
                if len(words) >= 3 and words[0] == "table" and words[-1] == "{":
                    fam, name = (words[1], words[2]) if len(words) == 4 else ("ip", words[1])
                    table = self.b.table(fam, name, lineno)
                    table_line = lineno
                    continue
                raise self.error(lineno, f"expected 'table FAMILY NAME {{', found {line[:60]!r}")
            if words == ["}"]:
                table = None
                continue
            if words and words[0] in ("chain", "set", "map") and words[-1] == "{" and len(words) == 3:
                i = self._block(words[0], words[1], table, lines, i, lineno, handle)
                continue
            if words and words[-1] == "{" and (words[0] in SKIPPED_BLOCKS):
                i = self._skip(lines, i, lineno)
                continue
            if words and words[0] in ("flags", "comment"):
                continue
            raise self.error(lineno, f"expected a chain, set or map in table {table.name!r}, found {line[:60]!r}")
        if table is not None:
            raise self.error(self._lines + 1, f"expected '}}' closing table {table.name!r} (opened at line {table_line}), found end of input")
        return self.b.finish()

    def _bulk_chains(self, table: Table, bulk: dict[int, list[re.Match[str]]], lines: list[str], i: int) -> int:
        """What _block reads from the run of chain blocks whose first head is line i (0-based, in `bulk`),
        and from the empty lines after each; the index of the line after the last."""
        chains = table.chains
        tname, file = table.name, self.file
        batch = ChainBatch(self, table)
        queued = batch.chains
        for m in bulk[i]:
            name, body = m.group(1, 2)
            if name not in chains:
                # As Builder.chain does for a chain head without type and hook.
                chains[name] = Chain(name, tname, location=new_location(file, i + 1))
            if body:
                texts = body[2:-1].split("\n\t\t")
                queued.append((name, i + 2, texts))
                i += 2 + len(texts)
            else:
                i += 2
            start, end = m.span(3)
            i += end - start  # one empty line per "\n"
        if queued:
            self.b.pending.append(batch)
        return i

    def _skip(self, lines: list[str], i: int, start: int) -> int:
        depth = 1
        while i < len(lines):
            depth += lines[i].count("{") - lines[i].count("}")
            i += 1
            if depth <= 0:
                return i
        raise self.error(start, "expected '}' closing this block, found end of input")

    def _block(self, kind: str, name: str, table: Table, lines: list[str], i: int, start: int, handle: int | None) -> int:
        spec: dict[str, Any] = {}
        # The text of elements of elements_fast's forms and whether they map to verdicts, until the end.
        simple: tuple[Elements, bool] | None = None
        chain = self.b.chain(table, name, start, handle) if kind == "chain" else None
        if chain is None and self._attrs is not None:
            body, known = self._attrs
            end = i + len(body)
            if end < len(lines) and lines[end].strip() == "}" and lines[i:end] == body:
                # The lines of the last such block, which make the same spec (_set_attr reads nothing else).
                self._declare_set(table, name, start, _spec_copy(known), None)
                return end + 1
        first = i
        attrs_only = chain is None and self.bulk and self.shapes  # so far, and whether to keep them
        while i < len(lines):
            lineno = self._no[i]
            raw = lines[i].strip()
            i += 1
            if not raw or raw.startswith("#"):
                continue
            rule_handle, line = _handle(raw) if "#" in raw else (None, raw)
            if line == "}":
                if kind != "chain":
                    if attrs_only and simple is None and all(
                            type(v) is str or (type(v) is list and all(type(w) is str for w in v))
                            for v in spec.values()):
                        self._attrs = (lines[first:i - 1], _spec_copy(spec))
                    self._declare_set(table, name, start, spec, simple)
                return i
            if line.endswith("{") and BLOCK_START.match(line):
                raise self.error(lineno, f"expected '}}' closing {kind} {clip(name)!r} (opened at line {start}) "
                                         f"before {clip(line)!r}")
            if chain is not None:
                if not line.startswith(("type ", "comment ", "policy ")) and "{" not in line:
                    # A rule on one line (the common case; the branches below handle it the same way).
                    self._rule(table, name, line, lineno, rule_handle,
                               self._keys is not None and lines[i - 1] is self._physical[lineno - 1])
                    continue
                if _depth(line) > 0:
                    # A rule over several lines: an anonymous chain (`jump {`) or set.
                    first = lineno
                    parts = [line]
                    depth = _depth(line)
                    while depth > 0 and i < len(lines):
                        nxt = lines[i].strip()
                        i += 1
                        if BLOCK_START.match(nxt):
                            raise self.error(first, f"expected '}}' closing the block opened in this rule, found "
                                                    f"{clip(nxt)!r} at line {self._no[i - 1]}")
                        depth += _depth(nxt)
                        parts.append(nxt)
                    if depth > 0:
                        raise self.error(first, "expected '}' closing the block opened in this rule, found end of input")
                    joined = " ; ".join(parts)
                    rule_handle, line = _handle(joined)
                    self._rule(table, name, line, first, rule_handle)
                    continue
                if line.startswith("type ") and " hook " in line:
                    self._chain_head(table, name, line, start, handle, lineno)
                elif line.startswith("comment ") and not chain.rules and re.fullmatch(r'comment "(?:[^"\\]|\\.)*"', line):
                    continue
                elif line.startswith("policy "):
                    # `policy P` on a line of its own (nft -f input); nft lists it in the chain's head.
                    pol = line[len("policy "):].strip().rstrip(";").strip().upper()
                    if pol not in ("ACCEPT", "DROP"):
                        raise self.error(lineno, f"expected policy accept or drop, found {clip(line)!r}")
                    chain.policy = pol
                else:
                    self._rule(table, name, line, lineno, rule_handle,
                               self._keys is not None and lines[i - 1] is self._physical[lineno - 1])
                continue
            # set or map attribute; `elements = { ... }` may span lines
            if line.startswith("elements"):
                attrs_only = False
                # One part per line, joined once: adding to a string line by line is quadratic. Only lines
                # with a brace change the depth: those are found a slice of lines at a time.
                depth = line.count("{") - line.count("}")
                end = i
                while depth > 0 and end < len(lines):
                    end = _brace_line(lines, end)
                    if end < len(lines):
                        nxt = lines[end]
                        depth += nxt.count("{") - nxt.count("}")
                        end += 1
                text = " ".join([line, *map(str.strip, lines[i:end])])
                i = end
                head, eq, rest = text.partition("=")
                if not eq or head.strip() != "elements":
                    raise self.error(lineno, f"expected 'elements = {{ ... }}' in set {clip(name)!r}, found {clip(line)!r}")
                verdicts = "map" in spec and spec["map"] == "verdict"
                found = simple_elements(rest, verdicts)
                if found is not None:
                    # Read at the block's end, in one go when it can be (_simple_set), else as elements_fast reads it.
                    simple = (found, verdicts)
                    spec.pop("elem", None)
                    continue
                simple = None
                toks = tokenize(rest, self.file, lineno)
                p = RuleParser(toks)
                try:
                    value = p.rhs(map_verdicts=verdicts)
                    if p.pos < len(toks):
                        raise Unparsed(f"expected the end of the elements, found {clip(p.rest_text())!r}")
                except Unparsed as exc:
                    raise self.error(lineno, f"set {clip(name)}: {exc}") from None
                if isinstance(value, dict) and isinstance(value.get("set"), list):
                    spec["elem"] = value["set"]
                elif isinstance(value, (str, dict)):
                    spec["elem"] = [value]
                else:
                    raise self.error(lineno, f"set {clip(name)}: expected elements, found {clip(text)!r}")
                continue
            self._set_attr(spec, line, lineno, table)
        raise self.error(start, f"expected '}}' closing {kind} {name!r}, found end of input")

    def _declare_set(self, table: Table, name: str, start: int, spec: dict[str, Any],
                     simple: tuple[Elements, bool] | None) -> None:
        # With bulk reading (and skeletons: shapes=False is the reference read), sets of plain forms are
        # declared here; anything else, and anything _simple_set is unsure of, goes to Builder.set.
        fast = self.bulk and self.shapes
        if fast and simple is None and "elem" not in spec \
                and self._simple_set(table, name, start, spec, [], spec.get("map") == "verdict"):
            return
        if simple is not None:
            if fast and self._simple_set(table, name, start, spec, *simple):
                return
            spec["elem"] = elements_value(*simple)["set"]
        self.b.set(table, name, start, spec)

    def _simple_set(self, table: Table, name: str, line: int, spec: dict[str, Any], found: Elements,
                    verdicts: bool) -> bool:
        """What Builder.set makes of `spec` with the elements `found` (simple_elements' groups), made here
        without the statement shapes in between, for a set or verdict map of plain types; False (nothing
        done) for anything else, and for a value Builder.set would refuse or leave unmodelled."""
        b = self.b
        types, data = spec.get("type"), spec.get("map")
        if not isinstance(types, str) or data not in (None, "verdict") or verdicts != (data == "verdict"):
            return False
        key_types = tuple(p.strip() for p in types.split(" . "))
        n = len(key_types)
        flags = spec.get("flags", [])
        flags = [flags] if isinstance(flags, str) else list(flags) if isinstance(flags, list) else []
        cache = b._values
        elements: list[tuple[Any, ...]] = []
        values: list[Any] | None = [] if verdicts else None
        comments: list[str | None] = []
        try:
            for key, comment, value in found:
                parts = key.split()[::2]  # `a . b . c`
                if len(parts) != n or parts == ["*"] or (value is not None) != verdicts:
                    return False  # the general reader's message, or a catch-all
                element = []
                for dtype, part in zip(key_types, parts, strict=True):
                    v = cache.get((dtype, part))
                    if v is None:
                        v = cache[(dtype, part)] = parse_value(dtype, part)
                    element.append(v)
                elements.append(tuple(element))
                comments.append(comment or None)
                if values is not None:
                    words = value.split()
                    values.append(verdict_value(words[0], words[1] if len(words) == 2 else None))
        except (ValueError_, UnmodelledKey, ValueError, KeyError, TypeError):
            return False  # Builder.set says what
        ns = NamedSet(name, key_types, flags=frozenset(str(f) for f in flags), location=Location(b.file, line),
                      dynamic="dynamic" in flags)
        ns.elements = elements
        ns.values = values
        if any(c is not None for c in comments):
            ns.comments = comments
        b.unmodelled.pop((id(table), name), None)
        table.sets[name] = ns
        return True

    def _set_attr(self, spec: dict[str, Any], line: str, lineno: int, table: Table) -> None:
        word, _, rest = line.partition(" ")
        if word in ("type", "typeof"):
            key_part, _, data = rest.partition(" : ")
            if word == "type":
                spec["type"] = key_part.strip()
            else:
                p = RuleParser(tokenize(key_part, self.file, lineno))
                try:
                    spec["type"] = {"typeof": p.concat_expr()}
                except Unparsed as exc:
                    # nft accepts it (e.g. a raw payload `@nh,16,16`); lookups in this set become unknown.
                    spec["type"] = {"typeof": {"unparsed": f"typeof {key_part.strip()} ({exc})"}}
            if data:
                data = data.strip()
                if data.startswith(("ipv4_addr", "ipv6_addr", "inet_service", "verdict", "mark", "ifname", "integer")):
                    spec["map"] = data
                else:
                    p = RuleParser(tokenize(data, self.file, lineno))
                    try:
                        spec["map"] = {"typeof": p.concat_expr()}
                    except Unparsed:
                        spec["map"] = data
        elif word == "flags":
            spec["flags"] = [f.strip() for f in rest.split(",")]
        # size, timeout, gc-interval, policy, auto-merge, counter, comment: no effect on lookups

    def _chain_head(self, table: Table, name: str, line: str, start: int, handle: int | None, lineno: int) -> None:
        m = re.match(r"type\s+(\S+)\s+hook\s+(\S+)(?:\s+devices?\s*=?\s*(?:\"[^\"]*\"|\{[^}]*\}|\S+))?\s+priority\s+([^;]+?)\s*(?:;|$)"
                     r"(?:\s*policy\s+(\S+?)\s*(?:;|$))?", line)
        if not m:
            raise self.error(lineno, f"expected 'type TYPE hook HOOK priority PRIO;', found {line[:60]!r}")
        self.b.chain(table, name, lineno, handle, m.group(1), m.group(2), m.group(3).strip(), m.group(4))

    def _key(self, p: PendingRule) -> str | None:
        """The skeleton of a rule given on one line of its own (kpa.parse.nft_shapes.line_keys); else None."""
        lineno = p.line or 0
        if self._keys is None or not 0 < lineno <= len(self._physical):
            return None
        handle, _, key = self._keys.entry(lineno).partition("\x00")
        return (key or None) if handle == ("" if p.handle is None else str(p.handle)) else None

    def _rule(self, table: Table, chain: str, line: str, lineno: int, handle: int | None,
              keyed: bool = False) -> None:
        if keyed:
            if '"' in line and not _QUOTES_CLOSED.fullmatch(line):
                tokenize(line, self.file, lineno)  # an unclosed quote is an error now, as without skeletons
            # Read when the rule is built, or never (kpa.parse.nft_shapes): its key is found in finish().
            self.b.rule(table, chain, lineno, None, text=line, handle=handle, key=KEYED)
            return
        self.b.rule(table, chain, lineno, self._statements(line, lineno), text=line, handle=handle)


def statements_from_text(text: str, file: str, lineno: int) -> list[dict[str, Any]]:
    """The statements of one rule written in nft's syntax (newlines separate an anonymous chain's rules)."""
    joined = " ; ".join(part.strip() for part in text.splitlines())
    stmts = RuleParser(tokenize(joined, file, lineno)).statements()
    for st in stmts:
        if "unparsed" not in st:
            _fix_ports(st)
    return stmts


def _spec_copy(spec: dict[str, Any]) -> dict[str, Any]:
    """A set block's spec of attribute lines (strings, lists of strings) that its reader may change freely."""
    return {k: list(v) if isinstance(v, list) else v for k, v in spec.items()}


def _brace_line(lines: list[str], i: int, step: int = 512) -> int:
    """The index of the first of lines[i:] with a `{` or `}`, len(lines) if none; `step` lines at a time,
    joined (no line holds a "\n": they are split at line breaks) and searched in C."""
    n = len(lines)
    while i < n:
        chunk = "\n".join(lines[i:i + step])
        opening, closing = chunk.find("{"), chunk.find("}")
        at = closing if opening < 0 else opening if closing < 0 else min(opening, closing)
        if at >= 0:
            return i + chunk.count("\n", 0, at)
        i += step
    return n


def _depth(line: str) -> int:
    """How many more `{` than `}` a line opens, outside quoted strings."""
    if '"' not in line:
        return line.count("{") - line.count("}")
    depth, quoted = 0, False
    for c in line:
        if c == '"':
            quoted = not quoted
        elif not quoted and c == "{":
            depth += 1
        elif not quoted and c == "}":
            depth -= 1
    return depth


def _fix_ports(stmt: dict[str, Any]) -> None:
    for kind in ("dnat", "snat", "masquerade", "redirect"):
        body = stmt.get(kind)
        if isinstance(body, dict) and "port" in body:
            body["port"] = _port_value(body["port"])


def _handle(line: str) -> tuple[int | None, str]:
    if "#" not in line:
        return None, line
    m = HANDLE.search(line)
    if m and line.count('"', 0, m.start()) % 2 == 0:
        return int(m.group(1)), line[: m.start()].rstrip()
    return None, line


def parse_nft_text(text: str, file: str = "<stdin>", shapes: bool = True, bulk: bool = True) -> Ruleset:
    """Read `nft list ruleset` text; `shapes=False` reads every rule in full up front, `bulk=False` every
    line one at a time (same result, slower)."""
    return TextReader(file, shapes, bulk).parse(text)


__all__ = ["parse_nft_text", "tokenize"]
