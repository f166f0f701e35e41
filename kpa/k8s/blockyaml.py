"""Block-style YAML as `kubectl get -o yaml` and `yaml.dump` write it, read fast.

The safe loader (libyaml's parser, then PyYAML's composer and constructor) spends
most of the time of reading a large objects file. The YAML those tools write uses
a small part of the language: one key or one sequence item per line, plain or
quoted one-line scalars, `{}` and `[]`. This module reads exactly that part with
one regular expression over the whole text and a walk over its lines, and gives
the same values (plain scalars are typed by the loader's own resolver and
constructors), the same mapping and key lines, and the same bounds.

It accepts a document only when every line is of a form whose meaning is certain,
and the structure is one the safe loader reads the same way; on anything else
(anchors, tags, flow collections with content, block or multi-line scalars,
escapes, odd characters, tabs, CR, directives, odd indentation, a bound reached,
YAML the loader would refuse) it stops and says from which line the general
reader must take over. Documents before that line were read exactly as the
general reader reads them, so the caller yields them and hands the rest over.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from itertools import pairwise
from typing import Any

from kpa import limits

# One match per line: ("---", indent, "- ", key, value after the key, a lone value, "---").
# Blank and comment-only lines match with all groups empty. The groups are loose; a
# key or value is checked (once per distinct text) by `_plain_ok` or `_QUOTED`.
_LINE = re.compile(
    r"""^ *(?:#.*)?$|^(---)$|^( *)(- +)?(?:([^ \n'"][^:\n]*|'[^'\n]*(?:''[^'\n]*)*'|"[^"\\\n]*"):(?: (.+))?|(.+))$""",
    re.MULTILINE,
)
_SEP, _INDENT, _DASH, _KEY, _VALUE, _LONE = range(6)
_QUOTED = re.compile("'[^']*(?:''[^']*)*'|\"[^\"\\\\]*\"")
_INDICATORS = frozenset("-?:,[]{}#&*!|>'\"%@` ")


def _plain_ok(text: str) -> bool:
    """A plain scalar on one line that the loader reads as this very text."""
    first = text[0]
    if first in _INDICATORS and (first not in "-?:" or len(text) < 2 or text[1] == " "):
        return False
    return ": " not in text and " #" not in text and text[-1] not in " :"


# Characters the loader reads specially (line breaks other than LF, tabs, BOM) or refuses.
_ODD_TEXT = re.compile(
    "[^\n\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
)
_ASCII_OK = bytes(range(0x20, 0x7F)) + b"\n"
_SIMPLE_KEY_LIMIT = 1000  # the loader refuses implicit keys longer than 1024 characters


class Unfit(Exception):
    """This text (from here on) is not in the part of YAML this reader is sure of."""


class Rest:
    """The general reader must read the text from this (0-based) line on."""

    def __init__(self, line: int, offset: int) -> None:
        self.line, self.offset = line, offset


def _text_is_plain(text: str) -> bool:
    """No character the loader reads specially or refuses (lines starting with `---`,
    `...` or `%` need no check here: the line forms below leave them to the loader)."""
    if text.isascii():
        return not text.encode("ascii").translate(None, _ASCII_OK)
    return _ODD_TEXT.search(text) is None


def documents(
    text: str,
    mapping: Callable[[], Any],
    plain: Callable[[str], Any],
) -> Iterator[Any]:
    """The documents of `text`, then (if needed) a Rest saying where the general reader takes over.

    `mapping()` makes an empty mapping with `line` and `key_lines` attributes;
    `plain(text)` gives a plain scalar's value as the loader constructs it, or raises Unfit.
    """
    if not _text_is_plain(text):
        yield Rest(0, 0)
        return
    rows = _LINE.findall(text)
    lines = text.count("\n") + 1
    if len(rows) != lines:
        yield Rest(0, 0)
        return
    # Lines that hold no value: document separators, blank lines, comments.
    others = [i for i, r in enumerate(rows) if not r[_KEY] and not r[_LONE]]
    seps = [i for i in others if rows[i][_SEP]]
    nums: Any
    if len(others) == len(seps):
        nums = range(1, lines + 1)
    else:
        # Drop blank and comment lines, keeping every other line's number.
        keep = [i for i, r in enumerate(rows) if r[_KEY] or r[_LONE] or r[_SEP]]
        nums = [i + 1 for i in keep]
        rows = [rows[i] for i in keep]
        seps = [n for n, r in enumerate(rows) if r[_SEP]]
    bounds = [-1, *seps, len(rows)]
    node_bound = limits.MAX_YAML_NODES // 4  # a line makes at most 4 nodes
    document = _reader(rows, nums, mapping, plain)
    for n, (a, b) in enumerate(pairwise(bounds)):
        start, end = a + 1, b
        if start == end:
            if n > 0:
                yield None  # an empty explicit document
            continue
        try:
            if end - start > node_bound:
                raise Unfit
            yield document(start, end)
        except (Unfit, RecursionError):
            # The general reader starts at the separator before this document (or at the top).
            line = nums[a] - 1 if a >= 0 else 0
            offset = 0
            if line:
                offset = sum(map(len, text.split("\n", line)[:line])) + line
            yield Rest(line, offset)
            return


def _reader(rows: list[tuple[str, ...]], nums: Any,
            mapping: Callable[[], Any], plain: Callable[[str], Any]) -> Callable[[int, int], Any]:
    """`document(start, end)`: the value of rows[start:end], one document, or Unfit."""
    keys: dict[str, tuple[str, Any]] = {}  # a key as written: its text and its value
    values: dict[str, Any] = {}  # a short scalar as written: its value
    max_depth = limits.MAX_NESTING
    end = 0
    # Row fields (see _LINE).
    indent_, dash_, key_, value_, lone_ = _INDENT, _DASH, _KEY, _VALUE, _LONE

    def key_of(raw: str) -> tuple[str, Any]:
        c = raw[0]
        if c == "'" or c == '"':
            if not _QUOTED.fullmatch(raw):
                raise Unfit
            text = raw[1:-1].replace("''", "'") if c == "'" else raw[1:-1]
            found = (text, text)
        else:
            # (At the start of a line, '--- ' and '... ' are document markers, not a key.)
            if len(raw) > _SIMPLE_KEY_LIMIT or not _plain_ok(raw) or raw.startswith(("--- ", "... ")):
                raise Unfit
            found = (raw, plain(raw))
        keys[raw] = found
        return found

    def scalar(raw: str, line: int) -> Any:
        c = raw[0]
        if c == "'" or c == '"':
            if not _QUOTED.fullmatch(raw):
                raise Unfit
            value = raw[1:-1].replace("''", "'") if c == "'" else raw[1:-1]
        elif raw == "{}":
            data = mapping()
            data.line, data.key_lines = line, {}
            return data
        elif raw == "[]":
            return []
        else:
            if not _plain_ok(raw):
                raise Unfit
            value = plain(raw)
        if len(raw) <= 64:
            values[raw] = value
        return value

    def block_map(i: int, col: int, depth: int) -> tuple[Any, int]:
        """The mapping whose first key is on row i at column col; the row after it."""
        if depth >= max_depth:
            raise Unfit
        data = mapping()
        data.line = nums[i]
        key_lines: dict[str, int] = {}
        data.key_lines = key_lines
        spaces = " " * col
        while True:
            row = rows[i]
            raw = row[key_]
            found = keys.get(raw) or key_of(raw)
            key_lines[found[0]] = nums[i]
            i += 1
            raw = row[value_]
            if raw:
                value = values.get(raw, values)
                if value is values:
                    value = scalar(raw, nums[i - 1])
            else:
                # Nothing after the colon: a block below, a sequence at this column, or null.
                value = None
                if i < end:
                    nxt = rows[i]
                    indent = len(nxt[indent_])
                    if nxt[dash_]:
                        if indent >= col:
                            value, i = block_seq(i, indent, depth + 1)
                    elif indent > col:
                        if not nxt[key_]:
                            raise Unfit
                        value, i = block_map(i, indent, depth + 1)
            data[found[1]] = value
            if i == end:
                return data, i
            nxt = rows[i]
            if nxt[indent_] == spaces and nxt[key_] and not nxt[dash_]:
                continue
            if len(nxt[indent_]) < col:
                return data, i
            raise Unfit  # deeper (a continuation), a sequence item here, or a lone value

    def block_seq(i: int, col: int, depth: int) -> tuple[list[Any], int]:
        """The sequence whose first item is on row i, its dash at column col; the row after it."""
        if depth >= max_depth:
            raise Unfit
        items: list[Any] = []
        spaces = " " * col
        while True:
            row = rows[i]
            if row[key_]:
                value, i = block_map(i, col + len(row[dash_]), depth + 1)
            else:
                raw = row[lone_]
                value = values.get(raw, values)
                if value is values:
                    value = scalar(raw, nums[i])
                i += 1
            items.append(value)
            if i == end:
                return items, i
            nxt = rows[i]
            if nxt[indent_] == spaces:
                if nxt[dash_]:
                    continue
                return items, i  # the key after a sequence at a mapping's own column
            if len(nxt[indent_]) < col:
                return items, i
            raise Unfit

    def document(start: int, stop: int) -> Any:
        nonlocal end
        end = stop
        first = rows[start]
        if first[indent_]:
            raise Unfit  # a document indented as a whole
        if first[dash_]:
            value, i = block_seq(start, 0, 0)
        elif first[key_]:
            value, i = block_map(start, 0, 0)
        else:
            raise Unfit  # a lone scalar, {} or []
        if i != end:
            raise Unfit
        return value

    return document
