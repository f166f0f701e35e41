"""Reader for `nft -j list ruleset` (libnftables JSON, schema version 1).

The objects (table, chain, set, map, rule) are handed to the shared lowering
in kpa.parse.nft_common. `nft -j` prints everything on one line; when the
JSON is pretty-printed, errors point at the line of the offending object.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from typing import Any

from kpa.errors import InputError
from kpa.limits import check_nesting
from kpa.netfilter.model import Ruleset, Table
from kpa.parse import nft_json_shapes
from kpa.parse.nft_common import Builder

HEAD = re.compile(r'\s*\{\s*"nftables"\s*:\s*\[')
# Objects nft lists that do not affect a packet's path through the hooks.
IGNORED = {"metainfo", "flowtable", "counter", "quota", "ct helper", "ct timeout", "ct expectation", "limit",
           "secmark", "synproxy", "element", "tunnel"}


def _objects(text: str, file: str, whole: bool = True) -> Iterator[tuple[int, Any]]:
    """Each element of the top-level `nftables` array with the line it starts on (whole=False: always an
    object at a time)."""
    check_nesting(text, file)
    m = HEAD.match(text)
    dec = json.JSONDecoder()
    if m is None:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(file, exc.lineno, f"expected nft JSON, {exc.msg}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("nftables"), list):
            raise InputError(file, 1, 'expected an object {"nftables": [...]}, found something else')
        for obj in doc["nftables"]:
            yield 1, obj
        return
    pos, line = m.end(), text.count("\n", 0, m.end()) + 1
    # `nft -j` writes everything on one line: then the whole array decodes in one call, every object on
    # the same line. Anything else (line breaks, a decoding error) is read an object at a time below.
    array: Any = None
    end = -1
    if whole:
        with contextlib.suppress(json.JSONDecodeError):
            array, end = dec.raw_decode(text, pos - 1)
    if isinstance(array, list) and text.find("\n", pos, end) < 0:
        for obj in array:
            yield line, obj
        if not re.fullmatch(r"\}\s*", text[end:].strip()):
            raise InputError(file, text.count("\n", 0, end - 1) + 1, "expected '}' after the nftables array")
        return
    counted = pos
    while (start := nft_json_shapes.next_object(text, pos, file)) >= 0:
        line += text.count("\n", counted, start)
        counted = start
        obj, pos = nft_json_shapes.decode_object(dec, text, start, file)
        yield line, obj
    nft_json_shapes.array_closed(text, nft_json_shapes.array_end(text, pos), file)


def _str(obj: dict[str, Any], key: str, what: str, file: str, line: int) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise InputError(file, line, f"expected {what} ({key!r}) as a string, found {value!r}")
    return value


class _Reader:
    """Hands each top-level object to the Builder, in input order."""

    def __init__(self, b: Builder, file: str) -> None:
        self.b = b
        self.file = file
        self.tables: dict[tuple[str, Any], Table] = {}

    def table_of(self, family: str, body: dict[str, Any], line: int) -> Table:
        tname = body.get("table")
        table = self.tables.get((family, tname)) if type(tname) is str else None
        if table is None:
            table = self.tables[(family, tname)] = self.b.table(family, _str(body, "table", "a table name", self.file,
                                                                             line), line)
        return table

    def handle(self, line: int, obj: Any) -> None:
        b, file = self.b, self.file
        if not isinstance(obj, dict) or len(obj) != 1:
            raise InputError(file, line, f"expected an object with one key (table, chain, rule...), found {str(obj)[:60]!r}")
        (kind, body), = obj.items()
        if kind in IGNORED:
            return
        if not isinstance(body, dict):
            raise InputError(file, line, f"expected the attributes of a {kind}, found {body!r}")
        family = _str(body, "family", "a family", file, line)
        if kind == "table":
            b.table(family, _str(body, "name", "a table name", file, line), line)
            return
        if kind not in ("chain", "set", "map", "rule"):
            b.ruleset.warnings.append(f"{file}:{line}: nft object {kind!r} ignored")
            return
        table = self.table_of(family, body, line)
        if kind == "chain":
            b.chain(table, _str(body, "name", "a chain name", file, line), line, body.get("handle"),
                    body.get("type"), body.get("hook"), body.get("prio"), body.get("policy"))
        elif kind in ("set", "map"):
            b.set(table, _str(body, "name", "a set name", file, line), line, body)
        else:
            exprs = body.get("expr")
            if not isinstance(exprs, list):
                raise InputError(file, line, f"expected the rule's statements ('expr') as a list, found {exprs!r}")
            b.rule(table, _str(body, "chain", "a chain name", file, line), line, exprs,
                   comment=body.get("comment"), handle=body.get("handle"))


def parse_nft_json(text: str, file: str = "<stdin>", shapes: bool = True, text_shapes: bool = True) -> Ruleset:
    """Read `nft -j list ruleset`; `shapes=False` lowers every rule up front (same result, slower);
    `text_shapes=False` decodes every object before keying rules by shape (same result, slower)."""
    b = Builder(file)
    b.shapes = shapes
    reader = _Reader(b, file)
    if not (shapes and text_shapes and nft_json_shapes.read(text, file, reader)):
        for line, obj in _objects(text, file):
            reader.handle(line, obj)
    return b.finish()


__all__ = ["parse_nft_json"]
