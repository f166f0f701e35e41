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
) -> Iterator[Any]:
    """The documents of `text`, then (if needed) a Rest saying where the general reader takes over.

    `mapping()` makes an empty mapping with `line` and `key_lines` attributes;
    `plain(text)` gives a plain scalar's value as the loader constructs it, or raises Unfit.

    `ranges`: read only these parts of the text, as (offset, end offset, number of the first
    line), in order; each must start at the text's start or at a `---` line and end at the
    text's end or where a `---` line starts, so that each holds whole documents. A Rest
    still counts from the text's start and says to read the text's whole rest.
    """
    if not _text_is_plain(text):
        yield Rest(0, 0)
        return
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
                    yield Rest(separator - 1 if separator else 0, start)
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
