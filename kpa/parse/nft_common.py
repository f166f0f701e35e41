"""Lowering nftables rulesets into kpa's IR, shared by the text and JSON readers.

Both readers turn their input into the shapes of nft's JSON schema
(libnftables-json): a rule is a list of statement objects such as
`{"match": {"op": "==", "left": {"payload": {...}}, "right": "10.96.0.1"}}`.
The text reader builds those objects from `nft list ruleset` lines, the JSON
reader takes them as they are. `Builder` turns them into tables, chains,
sets and rules; `lower_stmt` turns one statement into kpa expressions from
kpa.ext.nft.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kpa.errors import InputError
from kpa.ext.base import UnknownExpr
from kpa.ext.nat import NatRange
from kpa.ext.nfqueue import queue_detail
from kpa.ext.nft.base import (
    BITS,
    INTEGER_TYPES,
    ConcatKey,
    Element,
    Key,
    UnmodelledKey,
    Value,
    ValueError_,
    key_match,
    parse_value,
)
from kpa.ext.nft.bitwise import OP_WORDS, MarkExpr, MarkMapSet, MarkSet, MaskedMarkKey, RandomKey
from kpa.ext.nft.compat import xt_expr
from kpa.ext.nft.ct import ct_key
from kpa.ext.nft.dynset import SetUpdate
from kpa.ext.nft.fib import fib_key
from kpa.ext.nft.flags import flag_key, flag_match
from kpa.ext.nft.lookup import SetLookup, VerdictMap
from kpa.ext.nft.meta import MarkKey, meta_key
from kpa.ext.nft.nat import NftNat, NftNatMap
from kpa.ext.nft.numgen import NumgenKey
from kpa.ext.nft.passive import NotrackStmt, passive
from kpa.ext.nft.payload import FieldKey, masked_field_key, payload_key, raw_payload_key
from kpa.ext.nft.socket import nft_tproxy, socket_key
from kpa.ext.nft.verdict import NftVerdict, reject_expr, verdict_expr, verdict_value
from kpa.netfilter.domain import IntSet
from kpa.netfilter.model import (
    Chain,
    Expr,
    Family,
    Flow,
    Location,
    NamedSet,
    Rule,
    Ruleset,
    Table,
    Verdict,
    VerdictKind,
)
from kpa.netfilter.protocols import BadNumber, c_uint

PRIORITIES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}
BRIDGE_PRIORITIES = {"dstnat": -300, "filter": -200, "out": 100, "srcnat": 300}
IP_HOOKS = {"prerouting", "input", "forward", "output", "postrouting"}
VERDICTS = ("accept", "drop", "continue", "return", "jump", "goto", "queue")
PASSIVE = {"counter", "log", "limit", "quota", "comment", "flow", "ct helper", "ct timeout", "ct expectation",
           "meter", "synproxy", "dup", "fwd", "connlimit"}
IPTABLES_CHAINS = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}
DTYPE_BITS = {"ipv4_addr": 32, "ipv6_addr": 128, "inet_service": 16, "inet_proto": 8, "mark": 32,
              "integer": 32, "icmp_type": 8, "icmpv6_type": 8}


# Builder.set reads the elements of the forms nft lists most without its general branch (False: every
# element through it; the same sets, slower).
PLAIN_SETS = True


def _is_catch_all(raw: Any) -> bool:
    if isinstance(raw, dict) and "elem" in raw and isinstance(raw["elem"], dict):
        raw = raw["elem"].get("val")
    return isinstance(raw, str) and raw == "*"


class Malformed(Exception):
    """A statement whose shape does not fit nft's schema; the reader adds FILE:LINE."""


def _target(v: Any) -> str | None:
    """The chain a verdict names (`{"jump": {"target": "c"}}`), if any."""
    target = v.get("target") if isinstance(v, dict) else None
    if target is not None and not isinstance(target, str):
        raise Malformed(f"expected a chain name as the target, found {clip(fmt(target))!r}")
    return target


def parse_priority(value: Any, family: str) -> int:
    """`filter`, `dstnat - 10`, `-100`, or an int from JSON."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    m = re.fullmatch(r"([a-z]+)\s*(?:([+-])\s*(\d+))?", text)
    if m:
        names = BRIDGE_PRIORITIES if family == "bridge" else PRIORITIES
        if m.group(1) not in names:
            raise Malformed(f"expected a priority name ({', '.join(names)}) or number, found {text!r}")
        base = names[m.group(1)]
        off = int(m.group(3) or 0)
        return base - off if m.group(2) == "-" else base + off
    try:
        return int(text)
    except ValueError:
        raise Malformed(f"expected a priority name or number, found {text!r}") from None


def hook_name(hook: str) -> str:
    return hook.upper() if hook in IP_HOOKS else hook


def looks_iptables_managed(table: Table) -> bool:
    """iptables-nft's own tables: a classic name and base chains named after their hooks."""
    if table.family not in (Family.IPV4, Family.IPV6) or table.name not in ("filter", "nat", "mangle", "raw", "security"):
        return False
    bases = list(table.base_chains())
    return bool(bases) and all(c.name in IPTABLES_CHAINS and c.name == c.hook for c in bases)


# -- rendering (for rule text of JSON input and expression labels) ---------------

def fmt(x: Any) -> str:
    """An nft-syntax rendering of a JSON-schema expression or statement (of any shape)."""
    try:
        return _fmt(x)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError, RecursionError):
        return clip(repr(x), 200)


def _fmt(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, (int, str)):
        return str(x)
    if isinstance(x, list):
        return ",".join(fmt(v) for v in x)
    if not isinstance(x, dict) or len(x) != 1:
        return str(x)
    (k, v), = x.items()
    if k == "payload":
        if "field" in v:
            return f"{v.get('protocol', '')} {v.get('field', '')}".strip()
        return f"@{v.get('base')},{v.get('offset')},{v.get('len')}" if "base" in v else "@payload"
    if k == "meta":
        return f"meta {v['key']}"
    if k == "ct":
        return f"ct {v['dir'] + ' ' if v.get('dir') else ''}{v['key']}"
    if k == "fib":
        flags = v.get("flags", [])
        return f"fib {' . '.join(flags if isinstance(flags, list) else [flags])} {v.get('result', '')}"
    if k == "numgen":
        off = f" offset {v['offset']}" if v.get("offset") else ""
        return f"numgen {v.get('mode')} mod {v.get('mod')}{off}"
    if k == "concat":
        return " . ".join(fmt(p) for p in v)
    if k == "set":
        if isinstance(v, list):
            return "{ " + ", ".join(f"{fmt(e[0])} : {fmt(e[1])}" if isinstance(e, list) else fmt(e) for e in v) + " }"
        return fmt(v)
    if k == "prefix":
        return f"{v['addr']}/{v['len']}"
    if k == "range":
        return f"{fmt(v[0])}-{fmt(v[1])}"
    if k in ("&", "|", "^", "<<", ">>"):
        return f"{fmt(v[0])} {k} {fmt(v[1])}"
    if k == "elem":
        return fmt(v.get("val"))
    if k == "match":
        op = v.get("op", "==")
        shown = "" if op in ("==", "in") else f" {op}"
        return f"{fmt(v['left'])}{shown} {fmt(v['right'])}"
    if k in ("vmap", "map"):
        return f"{fmt(v['key'])} {k} {fmt(v['data'])}"
    if k in ("jump", "goto"):
        if isinstance(v, dict) and "rules" in v:
            return f"{k} {{ " + "; ".join(" ".join(fmt_stmt(s) for s in r) for r in v["rules"]) + " }"
        return f"{k} {v['target']}"
    if k in VERDICTS:
        return str(k)
    if k == "mangle":
        return f"{fmt(v['key'])} set {fmt(v['value'])}"
    if k in ("dnat", "snat", "masquerade", "redirect"):
        parts = [k]
        if isinstance(v, dict):
            if "addr" in v or "port" in v:
                addr = fmt(v.get("addr", ""))
                port = f":{v['port']}" if "port" in v else ""
                parts += ["to", addr + port]
            if v.get("flags"):
                parts.append(fmt(v["flags"]))
        return " ".join(parts)
    if k == "reject":
        if isinstance(v, dict) and v.get("type"):
            return f"reject with {v['type']} {v.get('expr', '')}".strip()
        return "reject"
    if k == "set" or (k in ("update", "add")):
        return f"{k} {fmt(v)}"
    if k == "xt":
        return f"xt {v.get('type')} {v.get('name')}"
    if k == "counter":
        return "counter" if not isinstance(v, dict) else f"counter packets {v.get('packets', 0)} bytes {v.get('bytes', 0)}"
    if v in (None, {}):
        return str(k)
    shown = fmt(v) if not isinstance(v, dict) else " ".join(f"{a} {fmt(b)}" for a, b in v.items())
    return f"{k} {shown}"


def fmt_stmt(stmt: dict[str, Any]) -> str:
    if not isinstance(stmt, dict):
        return fmt(stmt)
    if len(stmt) == 1 and "set" in stmt and isinstance(stmt["set"], dict) and "op" in stmt["set"]:
        s = stmt["set"]
        return f"{fmt(s.get('op'))} {fmt(s.get('set'))} {{ {fmt(s.get('elem'))} }}"
    return fmt(stmt)


# -- building the IR -----------------------------------------------------------

# PendingRule.key of a text rule whose skeleton the reader works out later (Builder.key_of).
KEYED = "\x00keyed"


@dataclass(slots=True)
class PendingRule:
    table: Table
    chain: str
    line: int | None
    # None for a text rule whose statements are read when it is built (Builder.parse_rule).
    stmts: list[Any] | None
    text: str | None = None
    comment: Any = None
    handle: Any = None
    # A text rule's skeleton (kpa.parse.nft_shapes): rules with one skeleton share a shape.
    key: str | None = None


class QueuedRules(Protocol):
    """Rules a reader queued together (kpa.parse.nft_text.ChainBatch, kpa.parse.nft_json_shapes._Batch):
    settled in finish(), in input
    order, each as a PendingRule would be."""

    def settle(self, b: Builder) -> None: ...


def clip(text: str, limit: int = 80) -> str:
    """At most `limit` characters of input quoted in a message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def unparsed_expr(text: str, reason: str) -> UnknownExpr:
    words = text.split()
    has_verdict = any(w in VERDICTS or w in ("reject", "dnat", "snat", "masquerade", "redirect") for w in words)
    return UnknownExpr(name="nft", tokens=words, is_target=has_verdict, reason=f"nft syntax not modelled ({reason})")


@dataclass
class Builder:
    file: str
    ruleset: Ruleset = field(default_factory=Ruleset)
    managed: set[tuple[str, str]] = field(default_factory=set)
    _updated: set[tuple[int, str]] = field(default_factory=set)
    # Sets and maps declared but not modelled (id(table), name) -> why; lookups in them are unknown.
    unmodelled: dict[tuple[int, str], str] = field(default_factory=dict)
    # Rules are lowered once every table, chain, set and map is known, so the order of the input does not matter.
    pending: list[PendingRule | QueuedRules] = field(default_factory=list)
    _anon: int = 0
    # The statements of the JSON rule being built and their texts: id -> (statement, text).
    _texts: dict[int, tuple[Any, str]] = field(default_factory=dict)
    # The text reader's: one rule's statements from its text and line number, and a rule's skeleton.
    parse_rule: Callable[[str, int], list[Any]] | None = None
    key_of: Callable[[PendingRule], str | None] | None = None
    # JSON input: rules that share a skeleton share a shape (kpa.parse.nft_shapes).
    shapes: bool = False
    # Rule shapes by (id(table), skeleton): kpa.parse.nft_shapes.
    _shapes: dict[tuple[int, str], Any] = field(default_factory=dict)
    _sources: dict[int, Any] = field(default_factory=dict)
    # Set and map element values by (type, text or number), as parse_value reads them.
    _values: dict[tuple[str, str | int], Value] = field(default_factory=dict)

    def error(self, line: int | None, message: str) -> InputError:
        return InputError(self.file, line, message)

    def table(self, family: str, name: str, line: int | None) -> Table:
        try:
            fam = Family(family)
        except ValueError:
            raise self.error(line, f"expected a table family (ip, ip6, inet, arp, bridge, netdev), found {family!r}") from None
        existing = self.ruleset.table(fam, name)
        if existing is not None:
            return existing
        t = Table(fam, name, source="nft", location=Location(self.file, line or 0))
        self.ruleset.tables.append(t)
        return t

    def chain(self, table: Table, name: str, line: int | None, handle: int | None = None,
              ctype: str | None = None, hook: str | None = None, prio: Any = None, policy: str | None = None) -> Chain:
        for what, value in (("type", ctype), ("hook", hook), ("policy", policy)):
            if value is not None and not isinstance(value, str):
                raise self.error(line, f"expected the chain's {what} as a string, found {clip(fmt(value))!r}")
        if (prio is not None and not isinstance(prio, (str, int))) or isinstance(prio, bool):
            raise self.error(line, f"expected the chain's priority as a number or name, found {clip(fmt(prio))!r}")
        if handle is not None and (not isinstance(handle, int) or isinstance(handle, bool)):
            handle = None
        c = table.chains.get(name)
        if c is None:
            c = Chain(name, table.name, location=Location(self.file, line or 0), handle=handle)
            table.chains[name] = c
        if hook is not None:
            try:
                c.priority = parse_priority(prio if prio is not None else 0, table.family.value)
            except Malformed as exc:
                raise self.error(line, str(exc)) from None
            c.hook = hook_name(hook)
            if ctype not in ("filter", "nat", "route"):
                raise self.error(line, f"expected chain type filter, nat or route, found {ctype!r}")
            c.kind = ctype
            pol = (policy or "accept").upper()
            if pol not in ("ACCEPT", "DROP"):
                raise self.error(line, f"expected policy accept or drop, found {policy!r}")
            c.policy = pol
        return c

    # sets ------------------------------------------------------------------
    def set(self, table: Table, name: str, line: int | None, spec: dict[str, Any]) -> NamedSet | None:
        """Declare a set or map; one kpa cannot model is left out and lookups in it become unknown."""
        try:
            ns = self._set(table, name, line, spec)
        except UnmodelledKey as exc:
            self.unmodelled[(id(table), name)] = f"set @{name}: {exc}"
            table.sets.pop(name, None)
            return None
        except (Malformed, ValueError_) as exc:
            raise self.error(line, f"set {name}: {exc}") from None
        self.unmodelled.pop((id(table), name), None)
        table.sets[name] = ns
        return ns

    def _set(self, table: Table, name: str, line: int | None, spec: dict[str, Any]) -> NamedSet:
        key_types = self._types(spec.get("type"), table)
        data = spec.get("map")
        if isinstance(data, str) and data.startswith("interval "):
            data = data[len("interval "):]
        flags = spec.get("flags", [])
        flags = [flags] if isinstance(flags, str) else list(flags) if isinstance(flags, list) else []
        ns = NamedSet(name, key_types, flags=frozenset(str(f) for f in flags), location=Location(self.file, line or 0),
                      dynamic="dynamic" in flags)
        ns.values = [] if data is not None else None
        data_types = self._types(data, table) if data is not None and data != "verdict" else ()
        elems = spec.get("elem", []) or []
        if not isinstance(elems, list):
            raise Malformed(f"expected the elements as a list, found {fmt(elems)!r}")
        catch_all: tuple[Element, Any, str | None] | None = None
        comments: list[str | None] = []
        cache = self._values
        elements, values = ns.elements, ns.values
        n = len(key_types)
        single = key_types[0] if n == 1 else None
        verdicts = data == "verdict"
        plain = PLAIN_SETS
        for item in elems:
            # The forms nft lists most, read here as the general branch below reads them: a plain key of one
            # string in a set; in a verdict map, a key of strings and numbers (one, or concatenated) and a jump or goto to a
            # named chain. No comment, no catch-all; values as element() makes them, in the same order.
            if not plain:
                pass
            elif data is None:
                if single is not None and type(item) is str and item != "*":
                    value = cache.get((single, item))
                    if value is None:
                        value = cache[(single, item)] = parse_value(single, item)
                    elements.append((value,))
                    comments.append(None)
                    continue
            elif verdicts and type(item) is list and len(item) == 2:
                raw_key, raw_value = item
                parts = [raw_key] if type(raw_key) is str and raw_key != "*" else raw_key.get("concat") \
                    if type(raw_key) is dict and len(raw_key) == 1 else None
                if type(raw_value) is dict and len(raw_value) == 1 and type(parts) is list and len(parts) == n:
                    (kind, body), = raw_value.items()
                    target = body.get("target") if kind in ("jump", "goto") and type(body) is dict else None
                    if type(target) is str and all(type(p) is str or type(p) is int for p in parts):
                        verdict = verdict_value(kind, target)
                        key: list[Value] = []
                        for t, p in zip(key_types, parts, strict=True):
                            # Numbers (ports) are kept as strings are: values are immutable, and (t, 80) and
                            # (t, "80") are different keys.
                            value = cache.get((t, p))
                            if value is None:
                                value = cache[(t, p)] = parse_value(t, p)
                            key.append(value)
                        elements.append(tuple(key))
                        comments.append(None)
                        assert values is not None
                        values.append(verdict)
                        continue
            first = item[0] if isinstance(item, list) and item else item
            said = first["elem"].get("comment") if isinstance(first, dict) and isinstance(first.get("elem"), dict) else None
            comment = str(said) if said is not None else None
            if data is not None:
                if not isinstance(item, list) or len(item) != 2:
                    raise Malformed(f"expected a `key : value` map element, found {fmt(item)!r}")
                raw_key, raw_value = item
            else:
                raw_key, raw_value = item, None
            value = self.map_value(raw_value, data == "verdict", data_types) if data is not None else None
            if _is_catch_all(raw_key):
                # `*` matches what no other element does: kept last, as the full domain of each part.
                catch_all = (self.catch_all(key_types), value, comment)
                continue
            ns.elements.append(self.element(raw_key, key_types))
            comments.append(comment)
            if ns.values is not None:
                ns.values.append(value)
        if catch_all is not None:
            ns.elements.append(catch_all[0])
            comments.append(catch_all[2])
            if ns.values is not None:
                ns.values.append(catch_all[1])
        if any(c is not None for c in comments):
            ns.comments = comments
        return ns

    @staticmethod
    def catch_all(dtypes: Sequence[str]) -> Element:
        parts: list[Value] = []
        for t in dtypes:
            if t not in INTEGER_TYPES:
                raise UnmodelledKey(f"a catch-all element of type {t} is not modelled")
            parts.append(IntSet.range(0, (1 << BITS.get(t, 64)) - 1))
        return tuple(parts)

    def _types(self, spec: Any, table: Table) -> tuple[str, ...]:
        if isinstance(spec, str):
            return tuple(p.strip() for p in spec.split(" . "))
        if isinstance(spec, list):
            return tuple(str(p) for p in spec)
        if isinstance(spec, dict) and "typeof" in spec:
            key = self.key(spec["typeof"], table.family.value)
            return tuple(k.dtype for k in key.keys) if isinstance(key, ConcatKey) else (key.dtype,)
        raise Malformed(f"expected a set type, found {spec!r}")

    def element(self, raw: Any, dtypes: Sequence[str]) -> Element:
        if isinstance(raw, dict) and "elem" in raw:
            raw = raw["elem"].get("val") if isinstance(raw["elem"], dict) else None
        parts = raw["concat"] if isinstance(raw, dict) and "concat" in raw else [raw]
        if not isinstance(parts, list):
            raise Malformed(f"expected the parts of a concatenation as a list, found {clip(fmt(parts))!r}")
        if len(parts) != len(dtypes):
            raise Malformed(f"expected {len(dtypes)} part(s) ({' . '.join(dtypes)}), found {fmt(raw)!r}")
        cache = self._values
        out: list[Value] = []
        for t, p in zip(dtypes, parts, strict=True):
            if type(p) is str:
                # Values are immutable (str, frozen IntSet): one per distinct (type, text) is enough.
                value = cache.get((t, p))
                if value is None:
                    value = cache[(t, p)] = parse_value(t, p)
                out.append(value)
            else:
                out.append(parse_value(t, p))
        return tuple(out)

    def map_value(self, raw: Any, verdict: bool, dtypes: Sequence[str]) -> Any:
        """A verdict, an (address, port) NAT target, or a data element; an address range is unmodelled."""
        if verdict:
            if not isinstance(raw, dict) or len(raw) != 1:
                raise Malformed(f"expected a verdict, found {fmt(raw)!r}")
            (k, v), = raw.items()
            if k not in VERDICTS:
                raise Malformed(f"expected a verdict, found {fmt(raw)!r}")
            return verdict_value(k, _target(v))
        el = self.element(raw, dtypes)
        if dtypes and dtypes[0] in ("ipv4_addr", "ipv6_addr"):
            ip = el[0].single_value() if isinstance(el[0], IntSet) else None
            port = el[1].single_value() if len(el) > 1 and isinstance(el[1], IntSet) else None
            if ip is not None and (len(el) == 1 or port is not None):
                return (ip, port)
            # An interval map's value `a-b` (or `a-b . p-q`): a NAT range, as `dnat to a-b:p-q`.
            if not all(isinstance(p, IntSet) and len(p.spans) == 1 for p in el):
                raise UnmodelledKey(f"translating to {fmt(raw)} (not one range) is not modelled")
            (ip_lo, ip_hi), = el[0].spans  # type: ignore[union-attr]
            ports = el[1].spans[0] if len(el) > 1 else (None, None)  # type: ignore[union-attr]
            return NatRange(ip_lo, ip_hi, ports[0], ports[1])
        return el

    # rules -----------------------------------------------------------------
    def rule(self, table: Table, chain_name: str, line: int | None, stmts: list[Any] | None,
             text: str | None = None, comment: str | None = None, handle: int | None = None,
             key: str | None = None) -> None:
        """Queue a rule; it is lowered in finish(), when every chain, set and map is known."""
        self.pending.append(PendingRule(table, chain_name, line, stmts, text, comment, handle, key))

    def _chain_of(self, p: PendingRule) -> Chain:
        chain = p.table.chains.get(p.chain)
        if chain is None:
            raise self.error(p.line, f"expected a chain declared in table {p.table.family.value} {p.table.name}, "
                                     f"found {clip(p.chain)!r}")
        return chain

    def statements_of(self, p: PendingRule) -> list[Any]:
        """The rule's statements, read from its text now if the reader left that for later."""
        if p.stmts is None:
            assert self.parse_rule is not None and p.text is not None
            p.stmts = self.parse_rule(p.text, p.line or 0)
        return p.stmts

    def _build_rule(self, p: PendingRule) -> Rule:
        table, chain_name, line = p.table, p.chain, p.line
        chain = self._chain_of(p)
        exprs, counters, comment, rule_text = self.lower_rule(table, chain_name, line, self.statements_of(p), p.text,
                                                              p.comment)
        handle = p.handle if isinstance(p.handle, int) and not isinstance(p.handle, bool) else None
        r = Rule(table.name, chain_name, len(chain.rules) + 1, exprs, Location(self.file, line or 0), rule_text,
                 comment=comment, counters=counters, handle=handle)
        chain.rules.append(r)
        return r

    def lower_rule(self, table: Table, chain_name: str, line: int | None, stmts: list[Any], text: str | None,
                   given_comment: Any) -> tuple[list[Expr], tuple[int, int] | None, str | None, str]:
        """A rule's expressions, counters, comment and text from its statements (text None: JSON input)."""
        exprs: list[Expr] = []
        counters: tuple[int, int] | None = None
        comment = given_comment if isinstance(given_comment, str) or given_comment is None else str(given_comment)
        texts: list[str] | None = None
        if text is None:
            # JSON input: each statement's text goes into the rule's text and its expressions' labels.
            texts = [fmt_stmt(s) if isinstance(s, dict) else str(s) for s in stmts]
            self._texts = {id(s): (s, t) for s, t in zip(stmts, texts, strict=True) if isinstance(s, dict)}
        for stmt in stmts:
            if isinstance(stmt, str):
                # nft 1.0 prints an anonymous chain in JSON as its text (`jump { ... }`).
                exprs.extend(self.text_statement(stmt, table, chain_name, line))
                continue
            if not isinstance(stmt, dict) or len(stmt) != 1:
                raise self.error(line, f"expected a statement object with one key, found {clip(str(stmt))!r}")
            if "unparsed" in stmt:
                u = stmt["unparsed"]
                exprs.append(unparsed_expr(str(u.get("text", "")), str(u.get("reason", ""))))
                continue
            c = stmt.get("counter")
            if isinstance(c, dict) and "packets" in c:
                try:
                    counters = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
                except (TypeError, ValueError):
                    raise self.error(line, f"expected counter packets and bytes as numbers, found {clip(fmt(c))!r}") from None
            if "comment" in stmt:
                # A rule attribute (as JSON has it), not a statement.
                comment = comment or str(stmt["comment"])
                continue
            try:
                anon = self.anonymous_chain(stmt, table, chain_name, line)
                exprs.extend(self.lower(anon or stmt, table))
            except (Malformed, ValueError_) as exc:
                raise self.error(line, f"{clip(fmt_stmt(stmt))}: {exc}") from None
            except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:
                # A statement of a known kind whose attributes do not have nft's shapes.
                raise self.error(line, f"{clip(fmt_stmt(stmt))}: expected nft's JSON shape for this statement "
                                       f"({type(exc).__name__}: {clip(str(exc))})") from None
        return exprs, counters, comment, " ".join(texts) if texts is not None else text or ""

    def anonymous_chain(self, stmt: dict[str, Any], table: Table, chain_name: str, line: int | None) -> dict[str, Any] | None:
        """`jump { rule; rule }`: the rules become a chain of their own, and the statement a jump to it."""
        (k, v), = stmt.items()
        if k not in ("jump", "goto") or not isinstance(v, dict) or "rules" not in v:
            return None
        self._anon += 1
        name = f"{chain_name}.anon{self._anon}@{line or 0}"
        self.chain(table, name, line)
        for rule_stmts in v["rules"]:
            self._build_rule(PendingRule(table, name, line, rule_stmts, " ".join(fmt_stmt(s) for s in rule_stmts)))
        return {k: {"target": name}}

    def text_statement(self, text: str, table: Table, chain_name: str, line: int | None) -> list[Expr]:
        from kpa.parse.nft_text import statements_from_text

        try:
            stmts = statements_from_text(text, self.file, line or 0)
        except InputError:
            return [unparsed_expr(text, "a statement given as text that kpa cannot read")]
        out: list[Expr] = []
        for stmt in stmts:
            if "unparsed" in stmt:
                u = stmt["unparsed"]
                out.append(unparsed_expr(str(u["text"]), str(u["reason"])))
                continue
            try:
                out.extend(self.lower(self.anonymous_chain(stmt, table, chain_name, line) or stmt, table))
            except (Malformed, ValueError_) as exc:
                raise self.error(line, f"{clip(text)}: {exc}") from None
        return out

    def finish(self) -> Ruleset:
        pending, self.pending = self.pending, []
        for p in pending:
            if not isinstance(p, PendingRule):
                p.settle(self)  # rules read in bulk (kpa.parse.nft_text.ChainBatch, kpa.parse.nft_json_shapes)
                continue
            if p.key is KEYED:
                p.key = self.key_of(p) if self.key_of is not None else None
            if p.key is None:
                self.settle_unkeyed(p)
                continue
            self.settle_keyed(p)
        for t in self.ruleset.tables:
            if (t.family.value, t.name) in self.managed or looks_iptables_managed(t):
                t.managed_by_iptables = True
            for name, ns in t.sets.items():
                if (id(t), name) in self._updated:
                    ns.dynamic = True
        return self.ruleset

    def settle_unkeyed(self, p: PendingRule) -> None:
        """Build a rule without a text skeleton, or defer a JSON rule whose statements have an accepted shape
        (kpa.parse.nft_shapes), in input order."""
        from kpa.parse import nft_shapes

        found = nft_shapes.json_key(p.stmts) if self.shapes and p.text is None and p.stmts is not None else None
        if found is None:
            self._build_rule(p)
            return
        key, kinds, values, skeleton = found
        jk = (id(p.table), key)
        jshape = self._shapes.get(jk, nft_shapes.MISSING)
        if jshape is nft_shapes.MISSING:
            self._shapes[jk] = nft_shapes.json_analyse(self, p, self._build_rule(p), kinds, values, skeleton)
        elif jshape is None or not nft_shapes.json_defer(self, p, jshape, values):
            self._build_rule(p)

    def settle_keyed(self, p: PendingRule) -> None:
        """Build or defer a text rule with a skeleton (p.key), in input order."""
        from kpa.parse import nft_shapes

        if p.key is None:
            self._build_rule(p)
            return
        sk = (id(p.table), p.key)
        shape = self._shapes.get(sk, nft_shapes.MISSING)
        if shape is nft_shapes.MISSING:
            # The first rule of a skeleton is built in full, and decides whether the others may wait.
            self._shapes[sk] = nft_shapes.analyse(self, p, self._build_rule(p))
        elif shape is None or not nft_shapes.defer(self, p, shape):
            self._build_rule(p)

    # -- lowering ------------------------------------------------------------
    def stmt_text(self, stmt: dict[str, Any]) -> str:
        """fmt_stmt(stmt), worked out once per statement of the rule being built."""
        known = self._texts.get(id(stmt))
        return known[1] if known is not None and known[0] is stmt else fmt_stmt(stmt)

    def key(self, raw: Any, family: str) -> Key:
        if not isinstance(raw, dict) or len(raw) != 1:
            raise UnmodelledKey(f"{fmt(raw)} is not a modelled key")
        (k, v), = raw.items()
        if k == "unparsed":
            raise UnmodelledKey(f"{v} is not modelled")
        if k in ("payload", "meta", "ct", "fib", "numgen") and not isinstance(v, dict):
            raise Malformed(f"expected the attributes of {k} as an object, found {clip(fmt(v))!r}")
        if k == "payload":
            assert isinstance(v, dict)
            if "field" not in v:
                base, offset, length = v.get("base"), v.get("offset"), v.get("len")
                if not (isinstance(base, str) and isinstance(offset, int) and isinstance(length, int)):
                    raise UnmodelledKey("raw payload expressions are not modelled")
                return raw_payload_key(base, offset, length)
            return payload_key(str(v.get("protocol")), str(v["field"]), family)
        if k == "meta":
            assert isinstance(v, dict)
            if v.get("key") == "random":
                return RandomKey()
            return meta_key(str(v.get("key")))
        if k == "ct":
            assert isinstance(v, dict)
            direction = v.get("dir")
            return ct_key(str(v.get("key")), direction if isinstance(direction, str) else None, family)
        if k == "socket" and isinstance(v, dict):
            return socket_key(str(v.get("key")))
        if k == "fib":
            assert isinstance(v, dict)
            flags = v.get("flags", [])
            return fib_key(str(v.get("result")), [str(f) for f in flags] if isinstance(flags, list) else [str(flags)])
        if k == "numgen":
            assert isinstance(v, dict)
            mod = self.const_int(v.get("mod", 0))
            if mod < 1:
                raise Malformed(f"expected numgen mod of at least 1, found {mod}")
            return NumgenKey(mode=str(v.get("mode")), modulus=mod, offset=self.const_int(v.get("offset", 0) or 0))
        if k == "concat":
            if not isinstance(v, list) or not v:
                raise Malformed(f"expected the parts of a concatenation as a list, found {clip(fmt(v))!r}")
            keys = [self.key(p, family) for p in v]
            if any(isinstance(p, (NumgenKey, RandomKey)) for p in keys):
                raise UnmodelledKey("a random number inside a concatenation is not modelled")
            return ConcatKey(keys=keys)
        if k == "&":
            if not isinstance(v, list) or len(v) != 2:
                raise Malformed(f"expected two operands of &, found {clip(fmt(v))!r}")
            inner, mask = v
            ik = self.key(inner, family)
            if type(ik) is FieldKey and ik.dtype in ("ipv4_addr", "ipv6_addr"):
                try:
                    m = int(ipaddress.ip_address(str(mask)))
                except ValueError:
                    m = self.const_int(mask, 32 if ik.dtype == "ipv4_addr" else 128)
                return masked_field_key(ik, m)
            if isinstance(ik, (MarkKey, RandomKey)):
                m = self.const_int(mask)
                return MaskedMarkKey(inner=ik, mask=m) if isinstance(ik, MarkKey) else RandomKey(mask=m)
        raise UnmodelledKey(f"{clip(fmt(raw))} is not a modelled key")

    @staticmethod
    def const_int(raw: Any, bits: int = 32) -> int:
        """A number as nft writes it (C's strtoul base 0), at most `bits` wide."""
        if isinstance(raw, int) and not isinstance(raw, bool):
            if 0 <= raw < 1 << bits:
                return raw
            raise Malformed(f"expected a number of at most {bits} bits, found {raw}")
        try:
            return c_uint(str(raw), (1 << bits) - 1)
        except BadNumber:
            raise Malformed(f"expected a number of at most {bits} bits, found {clip(str(raw))!r}") from None

    def values(self, key: Key, right: Any) -> list[Value | tuple[Value, ...]]:
        """The constants on the right of a comparison, typed by the key."""
        items = right["set"] if isinstance(right, dict) and "set" in right else (right if isinstance(right, list) else [right])
        out: list[Value | tuple[Value, ...]] = []
        for it in items:
            if isinstance(key, ConcatKey):
                out.append(self.element(it, [k.dtype for k in key.keys]))
            else:
                if isinstance(it, dict) and "elem" in it:
                    it = it["elem"].get("val") if isinstance(it["elem"], dict) else None
                out.append(key.parse(it))
        return out

    def unknown(self, stmt: dict[str, Any], reason: str, target: bool = False) -> UnknownExpr:
        (name,) = stmt.keys()
        return UnknownExpr(name=name, tokens=fmt_stmt(stmt).split(), reason=reason, is_target=target)

    def lower(self, stmt: dict[str, Any], table: Table) -> list[Expr]:
        (k, v), = stmt.items()
        if k == "queue":
            body = v if isinstance(v, dict) else {}
            num = str(body.get("num", 0))
            flags = body.get("flags", [])
            flags = [flags] if isinstance(flags, str) else list(flags)
            queues = f"queues {num}" if "-" in num else f"queue {num}"
            return [NftVerdict(verdict=Verdict(VerdictKind.QUEUE, detail=queue_detail(queues, "bypass" in flags)))]
        if k in VERDICTS:
            return [verdict_expr(k, _target(v))]
        if k == "match":
            return self.lower_match(stmt, v, table)
        if k == "vmap":
            return self.lower_vmap(stmt, v, table)
        if k == "reject":
            detail = None
            if isinstance(v, dict) and v.get("type"):
                detail = f"{v['type']} {v.get('expr', '')}".strip()
            return [reject_expr(detail)]
        if k in ("dnat", "snat", "masquerade", "redirect"):
            return self.lower_nat(stmt, k, v or {}, table)
        if k == "mangle":
            return self.lower_mangle(stmt, v, table)
        if k == "set" and isinstance(v, dict) and "op" in v:
            return self.lower_dynset(stmt, v, table)
        if k == "xt":
            return [xt_expr(str(v.get("type", "match")), str(v.get("name", "?")))]
        if k == "tproxy":
            return [nft_tproxy(fmt_stmt(stmt))]
        if k == "notrack":
            return [NotrackStmt()]
        if k in PASSIVE:
            over = isinstance(v, dict) and bool(v.get("inv"))
            return [passive(k, fmt_stmt(stmt), over)]
        return [self.unknown(stmt, f"nft statement {k!r} is not modelled", target=True)]

    def _named(self, ref: str, table: Table) -> NamedSet | None:
        return table.sets.get(ref[1:])

    def _absent(self, ref: str, table: Table, what: str = "set") -> str:
        return self.unmodelled.get((id(table), ref[1:])) or f"{what} {clip(ref)} is not in the dump"

    def lower_match(self, stmt: dict[str, Any], v: dict[str, Any], table: Table) -> list[Expr]:
        op = v.get("op", "==")
        if "left" not in v or "right" not in v:
            raise Malformed("expected a match with left and right")
        right = v["right"]
        left = v["left"]
        masked = isinstance(left, dict) and len(left) == 1 and isinstance(left.get("&"), list) and len(left["&"]) == 2
        fk = flag_key(left["&"][0] if masked else left)
        if fk is not None and not (isinstance(right, str) and right.startswith("@")):
            return flag_match(fk, left["&"][1] if masked else None, str(op), right, self.stmt_text(stmt))
        try:
            key = self.key(v["left"], table.family.value)
        except UnmodelledKey as exc:
            return [self.unknown(stmt, str(exc))]
        text = self.stmt_text(stmt)
        negated = op == "!="
        try:
            if isinstance(right, str) and right.startswith("@"):
                ns = self._named(right, table)
                if ns is None:
                    return [self.unknown(stmt, self._absent(right, table))]
                if isinstance(key, (NumgenKey, RandomKey)):
                    return [self.unknown(stmt, "a random number looked up in a named set is not modelled")]
                return [SetLookup(key=key, set=ns, negated=negated, text=text)]
            if op in ("<", ">", "<=", ">="):
                return key_match(key, [self.compare(key, op, right)], False, text)
            if op not in ("==", "!=", "in"):
                raise Malformed(f"expected a comparison operator, found {op!r}")
            vals = self.values(key, right)
            if isinstance(key, ConcatKey):
                return [SetLookup(key=key, elements=[x for x in vals if isinstance(x, tuple)], negated=negated, text=text)]
            return key_match(key, [x for x in vals if not isinstance(x, tuple)], negated, text)
        except UnmodelledKey as exc:
            return [self.unknown(stmt, str(exc))]

    def compare(self, key: Key, op: str, right: Any) -> IntSet:
        val = key.parse(right)
        if not isinstance(val, IntSet) or val.single_value() is None:
            raise Malformed(f"expected a number to compare with, found {fmt(right)!r}")
        n = val.min()
        top = (1 << DTYPE_BITS.get(key.dtype, 32)) - 1
        return {"<": IntSet.range(0, n - 1), "<=": IntSet.range(0, n), ">": IntSet.range(n + 1, top),
                ">=": IntSet.range(n, top)}[op]

    def lower_vmap(self, stmt: dict[str, Any], v: dict[str, Any], table: Table) -> list[Expr]:
        text = self.stmt_text(stmt)
        try:
            key = self.key(v.get("key"), table.family.value)
        except UnmodelledKey as exc:
            return [self.unknown(stmt, str(exc), target=True)]
        data = v.get("data")
        if isinstance(data, str) and data.startswith("@"):
            ns = self._named(data, table)
            if ns is None:
                return [self.unknown(stmt, self._absent(data, table, "map"), target=True)]
            if ns.values is None or not all(isinstance(x, (Verdict, Flow)) for x in ns.values):
                raise Malformed(f"expected a verdict map, found {'set' if ns.values is None else 'data map'} {clip(data)}")
            return [VerdictMap(key=key, set=ns, text=text)]
        items = data["set"] if isinstance(data, dict) and "set" in data else None
        if not isinstance(items, list):
            raise Malformed(f"expected a verdict map, found {fmt(data)!r}")
        dtypes = [k.dtype for k in key.keys] if isinstance(key, ConcatKey) else [key.dtype]
        elements: list[Element] = []
        verdicts: list[Verdict | Flow] = []
        for it in items:
            if not isinstance(it, list) or len(it) != 2:
                raise Malformed(f"expected `key : verdict`, found {fmt(it)!r}")
            try:
                elements.append(self.element(it[0], dtypes))
            except UnmodelledKey as exc:
                return [self.unknown(stmt, str(exc), target=True)]
            verdicts.append(self.map_value(it[1], True, ()))
        return [VerdictMap(key=key, elements=elements, verdicts=verdicts, text=text)]

    def lower_nat(self, stmt: dict[str, Any], kind: str, v: dict[str, Any], table: Table) -> list[Expr]:
        name = {"dnat": "DNAT", "snat": "SNAT", "masquerade": "MASQUERADE", "redirect": "REDIRECT"}[kind]
        text = self.stmt_text(stmt)
        addr = v.get("addr")
        port = v.get("port")
        if isinstance(addr, dict) and "map" in addr:
            m = addr["map"]
            try:
                key = self.key(m.get("key"), table.family.value)
            except UnmodelledKey as exc:
                return [self.unknown(stmt, str(exc), target=True)]
            data = m.get("data")
            if isinstance(data, str) and data.startswith("@"):
                ns = self._named(data, table)
                if ns is None:
                    return [self.unknown(stmt, self._absent(data, table, "map"), target=True)]
                if ns.values is None or not all(isinstance(x, NatRange) or (isinstance(x, tuple) and len(x) == 2
                                                                             and isinstance(x[0], int))
                                                for x in ns.values):
                    raise Malformed(f"expected a map of addresses, found {'set' if ns.values is None else 'another map'} "
                                    f"{clip(data)}")
                return [NftNatMap(name=name, key=key, set=ns, text=text)]
            items = data.get("set") if isinstance(data, dict) else None
            if not isinstance(items, list):
                raise Malformed(f"expected a nat map, found {fmt(data)!r}")
            dtypes = [k.dtype for k in key.keys] if isinstance(key, ConcatKey) else [key.dtype]
            v6 = v.get("family") == "ip6" or table.family is Family.IPV6
            addr_t = "ipv6_addr" if v6 else "ipv4_addr"
            elements: list[Element] = []
            targets: list[tuple[int, int | None] | NatRange] = []
            for it in items:
                elements.append(self.element(it[0], dtypes))
                try:
                    target = self.map_value(it[1], False, (addr_t, "inet_service") if isinstance(it[1], dict) and "concat" in it[1] else (addr_t,))
                except UnmodelledKey as exc:
                    return [self.unknown(stmt, str(exc), target=True)]
                if not isinstance(target, NatRange) and target[0] is None:
                    raise Malformed(f"expected one address to translate to, found {fmt(it[1])!r}")
                targets.append(target)
            return [NftNatMap(name=name, key=key, elements=elements, targets=targets, text=text)]
        if (isinstance(addr, dict) and "range" in addr) or (isinstance(port, dict) and "range" in port):
            return [self.nat_range(stmt, name, addr, port, v, text)]
        if (isinstance(addr, str) and "-" in addr) or isinstance(addr, dict):
            return [self.unknown(stmt, f"{kind} to an address expression is not modelled", target=True)]
        if isinstance(port, dict):
            return [self.unknown(stmt, f"{kind} to a port expression is not modelled", target=True)]
        ip: int | None = None
        if addr is not None:
            try:
                ip = int(ipaddress.ip_address(str(addr)))
            except ValueError:
                raise Malformed(f"expected an address to translate to, found {addr!r}") from None
        if kind in ("dnat", "snat") and ip is None:
            return [self.unknown(stmt, f"{kind} without an address is not modelled", target=True)]
        pnum = self.const_int(port) if port is not None else None
        return [NftNat(name=name, ip=ip, port=pnum, text=text)]

    def nat_range(self, stmt: dict[str, Any], name: str, addr: Any, port: Any, v: dict[str, Any],
                  text: str) -> Expr:
        """`dnat to a-b:p-q` (kpa.ext.nat's ranges)."""
        def bounds(raw: Any, what: str, conv: Any) -> tuple[int, int]:
            lo, hi = raw["range"] if isinstance(raw, dict) else (raw, raw)
            try:
                return conv(lo), conv(hi)
            except (ValueError, TypeError):
                raise Malformed(f"expected {what} range, found {fmt(raw)!r}") from None
        ip_lo = ip_hi = -1
        if addr is not None:
            ip_lo, ip_hi = bounds(addr, "an address", lambda x: int(ipaddress.ip_address(str(x))))
        p_lo = p_hi = None
        if port is not None:
            p_lo, p_hi = bounds(port, "a port", lambda x: self.const_int(x))
        flags = v.get("flags", [])
        flags = [flags] if isinstance(flags, str) else list(flags) if isinstance(flags, list) else []
        rng = NatRange(ip_lo, ip_hi, p_lo, p_hi)
        return NftNat(name=name, range=rng, random=bool({"random", "fully-random"} & set(flags)),
                      persistent="persistent" in flags, text=text)

    def mark_expr(self, raw: Any) -> MarkExpr:
        if isinstance(raw, dict) and len(raw) == 1:
            (k, v), = raw.items()
            if k == "meta" and v.get("key") == "mark":
                return "meta mark"
            if k == "ct" and v.get("key") == "mark" and not v.get("dir"):
                return "ct mark"
            k = OP_WORDS.get(k, k)
            if k in ("&", "|", "^", "<<", ">>") and isinstance(v, list) and len(v) == 2:
                return (k, self.mark_expr(v[0]), self.mark_expr(v[1]))
            raise UnmodelledKey(f"mark value {fmt(raw)} is not modelled")
        return self.const_int(raw)

    def lower_mangle(self, stmt: dict[str, Any], v: dict[str, Any], table: Table) -> list[Expr]:
        target = fmt(v.get("key"))
        value = v.get("value")
        if target in ("meta mark", "ct mark") and isinstance(value, dict) and isinstance(value.get("map"), dict):
            return self.lower_mark_map(stmt, target, value["map"], table)
        if target in ("meta mark", "ct mark"):
            try:
                return [MarkSet(target=target, value=self.mark_expr(v.get("value")))]
            except UnmodelledKey as exc:
                return [self.unknown(stmt, str(exc), target=True)]
        # Other fields (nftrace, priority, dscp...) do not steer the packet through netfilter. A conntrack
        # label set here is seen by `ct label` matches later in the same walk (kpa.ext.nft.ct.CtLabelKey).
        if target in ("meta nftrace", "meta priority", "ct zone", "ct helper", "ct label"):
            return [passive("set", fmt_stmt(stmt))]
        return [self.unknown(stmt, f"setting {target} is not modelled", target=True)]

    def lower_mark_map(self, stmt: dict[str, Any], target: str, m: dict[str, Any], table: Table) -> list[Expr]:
        """`meta mark set KEY map @m` / `map { k : v }` (kpa.ext.nft.bitwise.MarkMapSet)."""
        text = fmt_stmt(stmt)
        try:
            key = self.key(m.get("key"), table.family.value)
            data = m.get("data")
            if isinstance(data, str) and data.startswith("@"):
                ns = self._named(data, table)
                if ns is None:
                    return [self.unknown(stmt, self._absent(data, table, "map"), target=True)]
                if ns.values is None:
                    raise Malformed(f"expected a map, found set {clip(data)}")
                MarkMapSet(target=target, key=key, set=ns)._pairs()  # every value one number, or unmodelled
                return [MarkMapSet(target=target, key=key, set=ns, text=text)]
            items = data.get("set") if isinstance(data, dict) else None
            if not isinstance(items, list):
                raise Malformed(f"expected a map, found {fmt(data)!r}")
            dtypes = [k.dtype for k in key.keys] if isinstance(key, ConcatKey) else [key.dtype]
            elements: list[Element] = []
            values: list[int] = []
            for it in items:
                if not isinstance(it, list) or len(it) != 2:
                    raise Malformed(f"expected `key : mark`, found {fmt(it)!r}")
                elements.append(self.catch_all(dtypes) if _is_catch_all(it[0]) else self.element(it[0], dtypes))
                values.append(self.const_int(it[1]))
            return [MarkMapSet(target=target, key=key, elements=elements, values=values, text=text)]
        except UnmodelledKey as exc:
            return [self.unknown(stmt, str(exc), target=True)]

    def lower_dynset(self, stmt: dict[str, Any], v: dict[str, Any], table: Table) -> list[Expr]:
        name = str(v.get("set", "")).lstrip("@")
        self._updated.add((id(table), name))
        try:
            key = self.key(v.get("elem"), table.family.value)
        except UnmodelledKey as exc:
            return [self.unknown(stmt, str(exc), target=True)]
        return [SetUpdate(op=str(v.get("op")), set_name=name, key=key, text=fmt_stmt(stmt))]
