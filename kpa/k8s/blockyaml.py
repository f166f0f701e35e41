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

import functools
import itertools
import re
from collections.abc import Callable, Iterator
from typing import Any

from kpa import limits

# One match per line: ("---", indent, "- ", key, value after the key, a lone value, "---").
# Blank and comment-only lines match with all groups empty. The groups are loose; a
# key or value is checked (once per distinct text) by `_plain_ok` or `_QUOTED`.
_LINE = re.compile(
    r"""^(---)$|^( *)(- +)?(?:([^ \n'"#][^:\n]*+|'[^'\n]*(?:''[^'\n]*)*'|"[^"\\\n]*"):(?: (.+))?|(?!#)(.+))$"""
    r"""|^ *(?:#.*)?$""",
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
# The text is read in pieces of about this size, each ending before a line that starts
# in column 0 (not a comment), so only the top level of a document spans pieces.
_PIECE = 1 << 20
_PIECE_END = re.compile(r"\n(?=[^ \n#])")


_LITERAL = object()  # the value of `|` and `|-`: a literal block scalar follows
_OPEN = object()  # a single-quoted scalar that goes on over the next lines
_SQ_PART = re.compile("(?:[^']|'')*")
_SQ_LAST = re.compile("(?:[^']|'')*'")
_CONTINUED = frozenset("#-?:,[]{}&*!|>'\"%@`")  # first characters of a continuation line left to the loader


class Unfit(Exception):
    """This text (from here on) is not in the part of YAML this reader is sure of."""


class Rest:
    """The general reader must read the text from this (0-based) line on (at this offset).

    With `end`, the next document separator starts at that offset: the general reader
    may read just the one document up to it, if it reads it without an error, and
    blockyaml goes on after it; otherwise (and with no `end`) it reads the whole rest.
    """

    def __init__(self, line: int, offset: int, end: int | None = None) -> None:
        self.line, self.offset, self.end = line, offset, end


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
    ranges: list[tuple[int, int, int]] | None = None,
    plain_text: tuple[str, str | None] | None = None,
    known_plain: bool = False,
    direct: Direct | None = None,
) -> Iterator[Any]:
    """The documents of `text`, then (if needed) a Rest saying where the general reader takes over.

    `mapping()` makes an empty mapping with `line` and `key_lines` attributes;
    `plain(text)` gives a plain scalar's value as the loader constructs it, or raises Unfit.
    `plain_text`, if given, says which plain scalars (on one line) `plain` may give as other
    than their own text: an expression that matches the whole text of every such scalar, and
    the characters they may begin with (None: any).

    `ranges`: read only these parts of the text, as (offset, end offset, number of the first
    line), in order; each must start at the text's start or at a `---` line and end at the
    text's end or where a `---` line starts, so that each holds whole documents. A Rest
    still counts from the text's start; with no `end`, it says to read the text's whole rest.

    `known_plain`: the caller found the text plain (`_text_is_plain`) already.

    Documents whose shape recurs are read by templates (see `_Templates`), the others
    line by line; both give the same values. With `direct`, a template may give, in a
    document's place, what `direct` makes of it instead (see `Direct`).
    """
    if not known_plain and not _text_is_plain(text):
        yield Rest(0, 0)
        return
    if TEMPLATES:
        yield from _templated(text, mapping, plain, ranges, plain_text, direct)
    else:
        yield from _documents(text, mapping, plain, ranges)


def _documents(
    text: str,
    mapping: Callable[[], Any],
    plain: Callable[[str], Any],
    ranges: list[tuple[int, int, int]] | None = None,
) -> Iterator[Any]:
    """`documents` line by line, of a text already found plain."""
    reader = _Reader(text, mapping, plain, ranges)
    separator = 0  # the line of the separator that began the current document (0: none)
    seen_from = (0, 1)  # where the piece holding that separator starts: offset and line
    started = False  # a separator was read and no document after it yet
    try:
        while reader.fill():
            row = reader.rows[reader.i]
            if row[_SEP]:
                if started:
                    yield None  # an empty explicit document
                started, separator = True, reader.nums[reader.i]
                seen_from = (reader.pos, reader.first)
                reader.i += 1
                continue
            try:
                document = reader.document()
            except (Unfit, RecursionError):
                # The general reader reads this document, up to the next separator.
                start = _offset(text, seen_from, separator)
                while reader.fill() and not reader.rows[reader.i][_SEP]:
                    reader.i += 1
                if not reader.fill():
                    # The document ends where the last range does: at a separator, or the text's end.
                    stop = ranges[-1][1] if ranges else len(text)
                    yield Rest(separator - 1 if separator else 0, start, stop if stop < len(text) else None)
                    return
                end = _offset(text, (reader.pos, reader.first), reader.nums[reader.i])
                yield Rest(separator - 1 if separator else 0, start, end)
            else:
                yield document
            started = False
        if started:
            yield None
    except (Unfit, RecursionError):
        # The general reader starts at the separator before this document (or at the top)
        # and reads the rest of the text.
        yield Rest(separator - 1 if separator else 0, _offset(text, seen_from, separator))


def _offset(text: str, piece: tuple[int, int], line: int) -> int:
    """Where a line (1-based; 0 for the top) starts, counted from a piece (its offset and first line)."""
    if not line:
        return 0
    offset, at = piece
    while at < line:
        offset = text.index("\n", offset) + 1
        at += 1
    return offset


def _pieces(text: str, ranges: list[tuple[int, int, int]] | None = None
            ) -> Iterator[tuple[list[tuple[str, ...]], Any, str, int, bool, int]]:
    """Rows of the text (blank and comment lines left out) and their line numbers, piece by piece.

    With each piece: its text, its first line's number, whether it is the last, and its offset.
    With `ranges` (see `documents`), only those parts.
    """
    size = len(text)
    for start, stop, line in ranges if ranges is not None else [(0, size, 1)]:
        pos = start
        while pos < stop:
            end = stop
            if pos + _PIECE < stop:
                found = _PIECE_END.search(text, pos + _PIECE, stop)
                if found:
                    end = found.start()
            piece = text[pos:end]
            rows = _LINE.findall(piece)
            count = piece.count("\n") + 1
            if len(rows) != count:
                raise Unfit
            nums: Any = range(line, line + count)
            if any(not r[_KEY] and not r[_LONE] and not r[_SEP] for r in rows):
                keep = [n for n, r in enumerate(rows) if r[_KEY] or r[_LONE] or r[_SEP]]
                nums = [line + n for n in keep]
                rows = [rows[n] for n in keep]
            yield rows, nums, piece, line, end == size, pos
            pos, line = end + 1, line + count


class _Reader:
    """Reads documents from rows that arrive piece by piece (see `_pieces`).

    Below the top level a block never spans pieces (a piece ends before a line in
    column 0), so nested blocks are read from the current piece's rows by index; the
    top level (the root mapping or sequence, and a sequence in column 0 under a root
    key) asks `fill` for the next piece when one runs out.
    """

    def __init__(self, text: str, mapping: Callable[[], Any], plain: Callable[[str], Any],
                 ranges: list[tuple[int, int, int]] | None = None) -> None:
        self.pieces = _pieces(text, ranges)
        self.rows: list[tuple[str, ...]] = []
        self.nums: Any = ()
        self.piece, self.first, self.last, self.pos = "", 1, True, 0
        self.lines: list[str] | None = None  # the piece's lines, split when a literal scalar needs them
        self.i = 0
        self.read = 0  # rows of earlier pieces
        self.mapping, self.plain = mapping, plain
        self.keys: dict[str, tuple[str, Any]] = {}  # a key as written: its text and its value
        self.values: dict[str, Any] = {"|": _LITERAL, "|-": _LITERAL}  # a short scalar as written: its value
        self.block_map, self.block_seq = self._nested()

    def fill(self) -> bool:
        """Whether there is a row at `i`, reading the next piece when this one is done."""
        while self.i == len(self.rows):
            piece = next(self.pieces, None)
            if piece is None:
                return False
            self.read += len(self.rows)
            self.rows, self.nums, self.piece, self.first, self.last, self.pos = piece
            self.lines = None
            self.i = 0
        return True

    def key(self, raw: str) -> tuple[str, Any]:
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
            found = (raw, self.plain(raw))
        self.keys[raw] = found
        return found

    def scalar(self, raw: str, line: int, value_of_key: bool = False) -> Any:
        c = raw[0]
        if c == "'" or c == '"':
            if not _QUOTED.fullmatch(raw):
                if c == "'" and value_of_key:
                    return _OPEN  # (a mapping's value may go on over the next lines)
                raise Unfit
            value = raw[1:-1].replace("''", "'") if c == "'" else raw[1:-1]
        elif raw == "{}":
            data = self.mapping()
            data.line, data.key_lines = line, {}
            return data
        elif raw == "[]":
            return []
        else:
            if not _plain_ok(raw):
                raise Unfit
            value = self.plain(raw)
        if len(raw) <= 64:
            self.values[raw] = value
        return value

    def folded(self, i: int, col: int) -> tuple[Any, int]:
        """A plain or single-quoted scalar of a mapping at column col, from row i (its key) over the next lines.

        Only lines deeper than col, neither empty nor of spaces only nor ending in a
        space; a plain one's lines begin with no indicator, hold no `: ` nor ` #` and
        end in no `:`. Folded into one line, as the loader does (one space for each
        line break). Gives its value and the row after it.
        """
        lines = self.lines
        if lines is None:
            lines = self.lines = self.piece.split("\n")
        raw = self.rows[i][_VALUE]
        k = self.nums[i] - self.first + 1
        quoted = raw[0] == "'"
        first = raw[1:].rstrip(" ") if quoted else raw
        if not first or (quoted and not _SQ_PART.fullmatch(first)):
            raise Unfit
        parts = [first]
        closed = not quoted
        while k < len(lines):
            line = lines[k]
            part = line.lstrip(" ")
            if not part or len(line) - len(part) <= col:
                break
            if part[-1] == " " or (not quoted and part[0] in _CONTINUED):
                raise Unfit
            k += 1
            if quoted:
                if _SQ_LAST.fullmatch(part):
                    parts.append(part[:-1])
                    closed = True
                    break
                if not _SQ_PART.fullmatch(part):
                    raise Unfit
            elif ": " in part or " #" in part or part[-1] == ":":
                raise Unfit
            parts.append(part)
        if not closed or len(parts) == 1:
            raise Unfit
        value = " ".join(parts).replace("''", "'") if quoted else self.plain(" ".join(parts))
        end, nums, after = len(self.rows), self.nums, self.first + k
        i += 1
        while i < end and nums[i] < after:
            i += 1
        return value, i

    def literal(self, i: int, col: int, header: str) -> tuple[str, int]:
        """The literal block scalar (`|` or `|-`) of a mapping at column col, whose key is on row i.

        Only the plainest form: its first line not empty and indented deeper than col,
        no line of spaces only, no indentation or chomping indicator but `-`. Gives its
        value and the row after it.
        """
        lines = self.lines
        if lines is None:
            lines = self.lines = self.piece.split("\n")
        k = self.nums[i] - self.first + 1  # the first content line, within the piece
        if k >= len(lines):
            raise Unfit
        indent = len(lines[k]) - len(lines[k].lstrip(" "))
        if indent <= col or indent == len(lines[k]):
            raise Unfit
        content = []
        while k < len(lines):
            line = lines[k]
            if line:
                spaces = len(line) - len(line.lstrip(" "))
                if spaces == len(line):
                    raise Unfit  # a line of spaces only
                if spaces < indent:
                    break
            content.append(line[indent:])
            k += 1
        else:
            if self.last and lines[-1]:
                raise Unfit  # the text ends without a line break after the scalar
        while not content[-1]:
            content.pop()
        value = "\n".join(content)
        if header == "|":
            value += "\n"
        end, nums, after = len(self.rows), self.nums, self.first + k
        i += 1
        while i < end and nums[i] < after:
            i += 1
        return value, i

    def document(self) -> Any:
        """The document whose first row is at `i` (not a separator); `i` is left at the row after it."""
        first = self.rows[self.i]
        start = self.read + self.i
        if first[_INDENT]:
            raise Unfit  # a document indented as a whole
        if first[_DASH]:
            value = self.top_seq(0)
        elif first[_KEY]:
            value = self.top_map()
        else:
            raise Unfit  # a lone scalar, {} or []
        if self.fill() and not self.rows[self.i][_SEP]:
            raise Unfit
        if self.read + self.i - start > limits.MAX_YAML_NODES // 4:
            raise Unfit  # perhaps more values than the bound (a line makes at most 4)
        return value

    def top_map(self) -> Any:
        """The root mapping, its first key at `i`."""
        if limits.MAX_NESTING <= 0:
            raise Unfit
        data = self.mapping()
        data.line = self.nums[self.i]
        key_lines: dict[str, int] = {}
        data.key_lines = key_lines
        while True:
            rows, i = self.rows, self.i
            row = rows[i]
            raw = row[_KEY]
            found = self.keys.get(raw) or self.key(raw)
            line = self.nums[i]
            key_lines[found[0]] = line
            self.i = i = i + 1
            raw = row[_VALUE]
            value: Any = None
            if raw:
                value = self.values.get(raw, self.values)
                if value is self.values:
                    value = self.scalar(raw, line, True)
                    if value is _OPEN:
                        value, self.i = self.folded(i - 1, 0)
                elif value is _LITERAL:
                    value, self.i = self.literal(i - 1, 0, raw)
            elif self.fill():
                rows, i = self.rows, self.i
                nxt = rows[i]
                indent = len(nxt[_INDENT])
                if nxt[_DASH]:
                    if indent:
                        value, self.i = self.block_seq(i, indent, 1)
                    else:
                        value = self.top_seq(1)
                elif indent:
                    if not nxt[_KEY]:
                        raise Unfit
                    value, self.i = self.block_map(i, indent, 1)
            data[found[1]] = value
            if not self.fill():
                return data
            nxt = self.rows[self.i]
            if nxt[_INDENT] and raw and _plain_ok(raw):
                # A plain scalar that goes on over the next lines.
                data[found[1]], self.i = self.folded(self.i - 1, 0)
                if not self.fill():
                    return data
                nxt = self.rows[self.i]
            if nxt[_SEP]:
                return data
            if nxt[_INDENT] or nxt[_DASH] or not nxt[_KEY]:
                raise Unfit
            # the next root key

    def top_seq(self, depth: int) -> list[Any]:
        """A sequence in column 0 (the root, or under a root key), its first item at `i`."""
        if depth >= limits.MAX_NESTING:
            raise Unfit
        items: list[Any] = []
        while True:
            rows, i = self.rows, self.i
            row = rows[i]
            if row[_KEY]:
                value, self.i = self.block_map(i, len(row[_DASH]), depth + 1)
            else:
                raw = row[_LONE]
                value = self.values.get(raw, self.values)
                if value is self.values or value is _LITERAL:
                    value = self.scalar(raw, self.nums[i])
                self.i = i + 1
            items.append(value)
            if not self.fill():
                return items
            nxt = self.rows[self.i]
            if nxt[_INDENT]:
                raise Unfit
            if not nxt[_DASH]:
                return items  # a root key or a separator: the caller decides
            # the next item

    def _nested(self) -> tuple[Callable[[int, int, int], tuple[Any, int]],
                               Callable[[int, int, int], tuple[list[Any], int]]]:
        """`block_map` and `block_seq` over the current piece's rows, for blocks not in column 0."""
        reader = self
        mapping, keys, values, key_of, scalar = self.mapping, self.keys, self.values, self.key, self.scalar
        literal, literal_ = self.literal, _LITERAL
        folded, open_ = self.folded, _OPEN
        max_depth = limits.MAX_NESTING
        # Row fields (see _LINE).
        indent_, dash_, key_, value_, lone_ = _INDENT, _DASH, _KEY, _VALUE, _LONE

        def block_map(i: int, col: int, depth: int) -> tuple[Any, int]:
            """The mapping whose first key is on row i at column col; the row after it."""
            if depth >= max_depth:
                raise Unfit
            rows, nums = reader.rows, reader.nums
            end = len(rows)
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
                        value = scalar(raw, nums[i - 1], True)
                        if value is open_:
                            value, i = folded(i - 1, col)
                    elif value is literal_:
                        value, i = literal(i - 1, col, raw)
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
                if len(nxt[indent_]) > col and raw and _plain_ok(raw):
                    # A plain scalar that goes on over the next lines.
                    data[found[1]], i = folded(i - 1, col)
                    if i == end:
                        return data, i
                    nxt = rows[i]
                    if nxt[indent_] == spaces and not nxt[dash_] and nxt[key_]:
                        continue
                    if len(nxt[indent_]) < col:
                        return data, i
                raise Unfit  # deeper, a sequence item here, or a lone value

        def block_seq(i: int, col: int, depth: int) -> tuple[list[Any], int]:
            """The sequence whose first item is on row i, its dash at column col; the row after it."""
            if depth >= max_depth:
                raise Unfit
            rows, nums = reader.rows, reader.nums
            end = len(rows)
            items: list[Any] = []
            spaces = " " * col
            while True:
                row = rows[i]
                if row[key_]:
                    value, i = block_map(i, col + len(row[dash_]), depth + 1)
                else:
                    raw = row[lone_]
                    value = values.get(raw, values)
                    if value is values or value is literal_:
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

        return block_map, block_seq


# --------------------------------------------------------------------------------------
# Templates: documents of one shape, read without their lines being walked.
#
# kubectl and yaml.dump print every object of a kind with the same keys in the same
# order, so the documents of a large file come in a few dozen shapes. One C pass
# (`_VALUES.split`) takes a document's values out of its lines: what follows the first
# `: ` of a line, or its `- ` when no `key:` follows (`{}` and `[]` stay). What is left
# is the document's skeleton. Once a skeleton recurs (TEMPLATE_AFTER), its document is
# read line by line as usual and becomes a template: a function that builds a
# document from the values, made from the document's lines, and kept only if it builds
# that very document equal to what the line reader gave (same values and types, same
# mapping and key lines, same order). A later document with the same skeleton is built
# by the template if each value is of the class its place admits; anything else (no
# template, a value out of class) is read line by line, where it is.
#
# Why that gives what the line reader gives: the skeletons are equal, so the lines are
# the template's lines with other values at their ends. The template's lines are only
# block keys and `- ` items (no comments, blank lines, block or folded scalars, flow
# content but `{}` and `[]`). A value's class admits only a scalar closed on its line
# that changes nothing around it (no key is split differently, no line folded into it,
# no block begun): a plain scalar of one word (no space, `:` or `#`) whose first
# character is no indicator, which the loader types as a string (`plain_text`); a
# single-quoted one without quotes inside; or any scalar `_scalar` accepts, typed as the
# line reader types it. So the line reader meets the same lines, of the same forms, in
# the same order, and builds the same document around the values.

TEMPLATES = True  # read recurring documents by templates (False: line by line only; for tests)
DIRECT = True  # let templates give what `Direct` makes of their documents (False: the documents; for tests)
CHECK_DIRECT = True  # use a template's direct code only if it is right for the template's own document (for tests)
TEMPLATE_AFTER = 2  # a skeleton becomes a template when a document of it is seen this many times
_MAX_TEMPLATE_LINES = 4000  # larger documents are read line by line
_MAX_SKELETON_TEMPLATES = 2  # per skeleton: one with the strictest classes its document fits, one of any scalars

# Where a `---` line starts (after the line break found), within a range.
_SEPARATOR = re.compile(r"\n---(?=\n|\Z)")
# A value: after the first `: ` of a line, or after `- ` when no `key:` follows; not `{}` or `[]`.
# Split by it (the space before the value goes too), a text gives [text, value, text, value, ..., text].
_VALUES = re.compile(r" (?<=[:-] )(?:(?<=: )|(?![^\n]*:(?: |$)))(?!(?:\{\}|\[\])$)([^\n]+)", re.MULTILINE)
_MARK = "\0"  # where a skeleton's values were (no text holds it: `_text_is_plain`)
# Plain strings, each after a line break: an indicator first.
_INDICATOR_FIRST = re.compile("\n[-?,\\[\\]{}&*!|>'\"%@`]")


def _not_words(text: str) -> bool:
    """Whether a text of plain strings, each after a line break, has one that is not one word
    (a space, `:` or `#` in it) or begins with an indicator."""
    return " " in text or ":" in text or "#" in text or _INDICATOR_FIRST.search(text) is not None
# Single-quoted scalars without quotes inside, one a line.
_QUOTED_LINES = re.compile("(?:'[^'\\n]*'\n)*'[^'\\n]*'")


class _Scalars(dict[str, Any]):
    """A scalar's value by its text as written, for any scalar a template's place admits."""

    def __init__(self, plain: Callable[[str], Any]) -> None:
        super().__init__()
        self.plain = plain

    def __missing__(self, raw: str) -> Any:
        value = _scalar(raw, self.plain)
        if len(raw) <= 64:
            self[raw] = value
        return value


def _scalar(raw: str, plain: Callable[[str], Any]) -> Any:
    """A one-line scalar as `_Reader.scalar` reads it, refusing (Unfit) `{}`, `[]`, block and open scalars."""
    c = raw[0]
    if c == "'" or c == '"':
        if not _QUOTED.fullmatch(raw):
            raise Unfit
        return raw[1:-1].replace("''", "'") if c == "'" else raw[1:-1]
    if not _plain_ok(raw):
        raise Unfit
    return plain(raw)


class _Strings(dict[str, str]):
    """Plain scalars of one word (see `_INDICATOR_FIRST`) that the loader reads as their own text:
    those that `typed` does not match, or (if `keyed` is not None) whose first character is not in
    `keyed`; looked up as they are met, kept when short. Any other is Unfit."""

    def __init__(self, typed: Callable[[str], Any], keyed: str | None) -> None:
        super().__init__()
        self.typed, self.keyed = typed, keyed

    def __missing__(self, text: str) -> str:
        if (self.keyed is None or text[0] in self.keyed) and self.typed(text):
            raise Unfit
        if len(text) <= 64:
            self[text] = text
        return text


# A document's shape as its template reads it, given to `Direct`: ("map", {key: node}, row) for
# a mapping (its items as the document has them: a later duplicate key wins, in the first one's
# place; row: its first line, counted from the document's first line), ("seq", [node, ...]),
# ("value", name, is_str) for a scalar (`name`: the local variable that holds its value; `is_str`:
# it is a str whenever the template reads a document), ("null",) for a key without a value.
Node = tuple[Any, ...]
# What `Direct` gives for a template: Python statements computing, from the values' names and
# `L` (the document's first line), what to give in the document's place, ending with `return`
# (other names they use begin with `d_`); the names they use, by name; and `check(given)`,
# whether what they give for the template's own document is right. If they raise (anything),
# the template gives the document.
DirectCode = tuple[list[str], dict[str, Any], Callable[[Any], bool]]
# `direct(tree, document)`: the DirectCode for a template of this shape made from this document
# (as the line reader read it), or None.
Direct = Callable[[Node, Any], DirectCode | None]


class _Templates:
    """The templates of one text, found as its documents are read."""

    def __init__(self, mapping: Callable[[], Any], plain: Callable[[str], Any],
                 plain_text: tuple[str, str | None] | None, direct: Direct | None = None) -> None:
        self.mapping, self.plain, self.direct = mapping, plain, direct
        self.strings = _Strings(re.compile(f"(?:{plain_text[0]})\\Z").match, plain_text[1]) \
            if plain_text is not None else None
        self.scalars = _Scalars(plain)
        self.by_skeleton: dict[str, list[Callable[[list[str], int], Any]]] = {}  # in the order to try them
        self.seen: dict[str, int] = {}  # skeleton: documents of it not read by a template
        self.made: dict[str, int] = {}  # skeleton: templates made (or refused) from it

    def read(self, text: str, start: int, end: int, line: int) -> tuple[Any, str, list[str]]:
        """The document text[start:end] (first line `line`) if a template reads it (else None),
        its skeleton and its values."""
        parts = _VALUES.split(text[start:end])
        skeleton, values = _MARK.join(parts[0::2]), parts[1::2]
        for build in self.by_skeleton.get(skeleton, ()):
            try:
                return build(values, line), skeleton, values
            except Unfit:
                pass
        return None, skeleton, values

    def wanted(self, skeleton: str) -> bool:
        """Whether a document of this skeleton, which no template read, should now become one."""
        seen = self.seen.get(skeleton, 0) + 1
        self.seen[skeleton] = seen
        return seen >= TEMPLATE_AFTER and self.made.get(skeleton, 0) < _MAX_SKELETON_TEMPLATES

    def make(self, skeleton: str, values: list[str], body: str, line: int, document: Any) -> None:
        """Make a template of a document's text (its values taken out: skeleton and values),
        which the line reader read as `document`."""
        made = self.made.get(skeleton, 0)
        self.made[skeleton] = made + 1
        self.seen[skeleton] = 0
        check: Callable[[Any], bool] | None = None
        try:
            build, check = _template(body, values, self.mapping, self.plain, self.scalars,
                                     self.strings if made < _MAX_SKELETON_TEMPLATES - 1 else None,
                                     self.direct if DIRECT else None, document)
            built = build(values, line, True)
        except (Unfit, RecursionError):
            built = _Unequal
        if not _equal(built, document):
            self.made[skeleton] = _MAX_SKELETON_TEMPLATES
            return
        if check is not None and CHECK_DIRECT:
            try:
                right = check(build(values, line))
            except Exception:
                right = False
            if not right:
                build = functools.partial(build, F=True)  # the document, never the direct code's result
        self.by_skeleton.setdefault(skeleton, []).append(build)


_Unequal = object()


def _equal(a: Any, b: Any) -> bool:
    """Same values of the same types, mappings with the same items in order, lines and key lines."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return (list(a) == list(b) and all(type(k) is type(j) for k, j in zip(a, b, strict=True))
                and all(_equal(v, b[k]) for k, v in a.items())
                and getattr(a, "line", None) == getattr(b, "line", None)
                and getattr(a, "key_lines", None) == getattr(b, "key_lines", None))
    if isinstance(a, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _template(body: str, values: list[str], mapping: Callable[[], Any], plain: Callable[[str], Any],
              scalars: _Scalars, strings: _Strings | None, direct: Direct | None = None, document: Any = None,
              ) -> tuple[Callable[..., Any], Callable[[Any], bool] | None]:
    """The build function of a document's text (which ends with a line break) and its values as
    `_VALUES` takes them out; Unfit if it has other lines, or its values are not where its lines
    have them. `build(values, line, F)` gives the document, or with F false, what the direct
    code (if `direct` gave one for `document`, the line reader's reading of this text) gives,
    if it gives something. With it, the direct code's `check` (else None).

    With `strings`, a value the document has as a plain or single-quoted string is admitted only
    as one (plain strings checked by `strings`); any other value, and every value without
    `strings`, as any scalar `_scalar` accepts, typed when built.
    """
    lines = body[:-1].split("\n")
    if len(lines) > _MAX_TEMPLATE_LINES:
        raise Unfit
    rows = []
    for text in lines:
        row = _LINE.fullmatch(text)
        if row is None or row[1] or not (row[4] or row[6]):
            raise Unfit  # a separator, blank or comment line
        rows.append(row)
    code: list[str] = []  # statements of the build function
    typed: list[str] = []  # statements giving each value (`v0`, `v1`, ...), in the document's order
    consts: list[Any] = []  # keys the code names
    words: list[str] = []  # values that must be plain strings
    quoted: list[str] = []  # values that must be single-quoted strings
    slot = 0  # the next value
    names = 0

    def const(value: Any) -> str:
        if type(value) is str:
            return repr(value)
        consts.append(value)
        return f"K[{len(consts) - 1}]"

    def value_of(raw: str, i: int) -> tuple[str, Node]:
        """The expression of the value written as raw on row i, and its node."""
        nonlocal slot, names
        if raw == "{}":
            names += 1
            code.append(f"e{names} = M(); e{names}.line = L + {i}; e{names}.key_lines = {{}}")
            return f"e{names}", ("map", {}, i)
        if raw == "[]":
            return "[]", ("seq", [])
        if slot >= len(values) or values[slot] != raw:
            raise Unfit  # not where the lines have it
        _scalar(raw, plain)  # the document's own value must be one a place admits
        group, name = f"g[{slot}]", f"v{slot}"
        slot += 1
        if strings is not None and not _not_words("\n" + raw) and not strings.typed(raw):
            words.append(group)
            typed.append(f"{name} = S[{group}]")
            return name, ("value", name, True)
        if strings is not None and _QUOTED_LINES.fullmatch(raw):
            quoted.append(group)
            typed.append(f"{name} = {group}[1:-1]")
            return name, ("value", name, True)
        typed.append(f"{name} = C[{group}]")
        return name, ("value", name, False)

    def key_of(raw: str) -> tuple[Any, str]:
        c = raw[0]
        if c == "'" or c == '"':
            if not _QUOTED.fullmatch(raw):
                raise Unfit
            text = raw[1:-1].replace("''", "'") if c == "'" else raw[1:-1]
            return text, text
        if len(raw) > _SIMPLE_KEY_LIMIT or not _plain_ok(raw) or raw.startswith(("--- ", "... ")):
            raise Unfit
        return plain(raw), raw

    def block_map(i: int, col: int, depth: int) -> tuple[str, int, Node]:
        """The mapping whose first key is on row i at column col: its expression, the row after it, its node."""
        nonlocal names
        if depth >= limits.MAX_NESTING:
            raise Unfit
        items: list[str] = []
        key_lines: list[str] = []
        tree: dict[Any, Node] = {}
        first = i
        while True:
            row = rows[i]
            key, text = key_of(row[4])
            key_lines.append(f"{const(text)}: L + {i}")
            raw = row[5]
            node: Node
            if raw:
                value, node = value_of(raw, i)
                i += 1
            else:
                i += 1
                value, node = "None", ("null",)
                if i < len(rows):
                    nxt = rows[i]
                    indent = len(nxt[2])
                    if nxt[3]:
                        if indent >= col:
                            value, i, node = block_seq(i, indent, depth + 1)
                    elif indent > col:
                        if not nxt[4]:
                            raise Unfit
                        value, i, node = block_map(i, indent, depth + 1)
            items.append(f"{const(key)}: {value}")
            tree[key] = node
            if i == len(rows):
                break
            nxt = rows[i]
            indent = len(nxt[2])
            if indent == col and nxt[4] and not nxt[3]:
                continue  # the next key
            if indent < col:
                break
            raise Unfit  # deeper after a value, a sequence item here, or a lone value
        names += 1
        name = f"m{names}"
        code.append(f"{name} = M({{{', '.join(items)}}}); {name}.line = L + {first}; "
                    f"{name}.key_lines = {{{', '.join(key_lines)}}}")
        return name, i, ("map", tree, first)

    def block_seq(i: int, col: int, depth: int) -> tuple[str, int, Node]:
        """The sequence whose first item is on row i, its dash at column col: its expression, the row after it,
        its node."""
        nonlocal names
        if depth >= limits.MAX_NESTING:
            raise Unfit
        items: list[str] = []
        tree: list[Node] = []
        while True:
            row = rows[i]
            node: Node
            if row[4]:
                # the item's mapping starts after the dash
                value, i, node = block_map(i, col + len(row[3]), depth + 1)
            else:
                value, node = value_of(row[6], i)
                i += 1
            items.append(value)
            tree.append(node)
            if i == len(rows):
                break
            nxt = rows[i]
            indent = len(nxt[2])
            if indent == col and nxt[3]:
                continue
            if indent <= col:
                break
            raise Unfit
        names += 1
        code.append(f"s{names} = [{', '.join(items)}]")
        return f"s{names}", i, ("seq", tree)

    first = rows[0]
    if first[2] or first[3] or not first[4]:
        raise Unfit  # only a root mapping (a root sequence is left to the line reader)
    root, end, tree = block_map(0, 0, 0)
    if end != len(rows) or slot != len(values):
        raise Unfit
    checks = [f"if len(g) != {slot}: raise U"]
    if words:
        checks.append(f"j = '\\n'.join(('', {', '.join(words)}))")
        checks.append("if W(j): raise U")
    if quoted:
        checks.append(f"if not Q('\\n'.join(({', '.join(quoted)},))): raise U")
    namespace: dict[str, Any] = {"M": mapping, "K": tuple(consts), "C": scalars, "W": _not_words,
                                 "S": strings, "Q": _QUOTED_LINES.fullmatch, "U": Unfit}
    given = direct(tree, document) if direct is not None else None
    shortcut: list[str] = []
    check = None
    if given is not None:
        statements, used, check = given
        if any(not name.startswith("d_") for name in used):
            raise ValueError("the direct code's names must begin with d_")
        namespace.update(used)
        shortcut = ["if not F:", "    try:", *(f"        {c}" for c in statements), "    except Exception:",
                    "        pass"]
    source = ("def build(g, L, F=False, M=M, K=K, C=C, S=S, W=W, Q=Q, U=U):\n"
              + "".join(f"    {c}\n" for c in checks + typed + shortcut + code) + f"    return {root}\n")
    exec(compile(source, "<yaml template>", "exec"), namespace)  # names, integers and str literals only
    build: Callable[..., Any] = namespace["build"]
    return build, check


def _templated(
    text: str,
    mapping: Callable[[], Any],
    plain: Callable[[str], Any],
    ranges: list[tuple[int, int, int]] | None,
    plain_text: tuple[str, str | None] | None,
    direct: Direct | None = None,
) -> Iterator[Any]:
    """`documents` with templates: each range cut at its `---` lines into documents, each read by a
    template or (runs of them) line by line."""
    templates = _Templates(mapping, plain, plain_text, direct)
    for start, stop, line in ranges if ranges is not None else [(0, len(text), 1)]:
        cuts = [start, *(m.start() + 1 for m in _SEPARATOR.finditer(text, start, stop)), stop]
        run, run_line = start, line  # the documents not read yet: where they start, their first line
        at, at_line = start, line  # a line number known
        for a, b in itertools.pairwise(cuts):
            if a == b:
                continue
            at_line += text.count("\n", at, a)
            at = a
            body, body_line = a, at_line
            if text.startswith("---", a) and text[a + 3 : a + 4] in ("\n", ""):
                body, body_line = a + 4, at_line + 1
            if body >= b:
                continue
            document, skeleton, values = templates.read(text, body, b, body_line)
            if document is None and not templates.wanted(skeleton):
                continue
            if run < a:
                yield from _documents(text, mapping, plain, [(run, a, run_line)])
            run, run_line = b, at_line + text.count("\n", a, b)
            if document is not None:
                yield document
            else:
                alone = list(_documents(text, mapping, plain, [(a, b, at_line)]))
                yield from alone
                read = [d for d in alone if d is not None]
                if len(read) == 1 and type(read[0]) is not Rest:
                    templates.make(skeleton, values, text[body:b], body_line, read[0])
            at, at_line = run, run_line
        if run < stop:
            yield from _documents(text, mapping, plain, [(run, stop, run_line)])
