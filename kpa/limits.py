"""Bounds on what kpa reads, so no input can exhaust memory or the stack.

Rules dumps and cluster objects are read whole. A file (or stdin, or a gzip
stream once decompressed) larger than `max_input_bytes` is refused with a
message that says how to raise the bound (`kpa --max-input-size`). Nested
JSON and YAML are checked for depth before they are decoded (the real dumps
and Kubernetes objects nest a few dozen levels; decoders recurse per level),
and YAML aliases may not refer to themselves or expand past a bound.
"""

from __future__ import annotations

import gzip
import io
import re
from itertools import accumulate
from typing import Any, BinaryIO

from kpa.errors import InputError

DEFAULT_MAX_INPUT_BYTES = 256 << 20  # 256 MiB: well above the largest real dumps (tens of MB)
MAX_NESTING = 200
MAX_YAML_NODES = 5_000_000

_limits = {"input": DEFAULT_MAX_INPUT_BYTES}


def max_input_bytes() -> int:
    return _limits["input"]


def set_max_input_bytes(n: int) -> None:
    _limits["input"] = n


def parse_size(text: str) -> int:
    """`200M`, `2G`, `1048576` -> bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"expected a size like 500M or 2G, found {text!r}")
    return int(m.group(1)) << (10 * " KMGT".index(m.group(2).upper() or " "))


def _too_large(name: str, what: str) -> InputError:
    return InputError(name, None, f"{what} larger than {human(max_input_bytes())}; "
                                  "raise the bound with `kpa --max-input-size SIZE ...`")


def human(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def read_bounded(fh: BinaryIO, name: str) -> bytes:
    """All of a stream, at most the input bound; gzip data is decompressed within the same bound."""
    limit = max_input_bytes()
    data = fh.read(limit + 1)
    if len(data) > limit:
        raise _too_large(name, "input")
    if data[:2] == b"\x1f\x8b":
        data = gunzip_bounded(data, name)
    return data


def gunzip_bounded(data: bytes, name: str) -> bytes:
    limit = max_input_bytes()
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
            out = gz.read(limit + 1)
    except (OSError, EOFError) as exc:
        raise InputError(name, None, f"expected a complete gzip stream, found a damaged one ({exc})") from None
    if len(out) > limit:
        raise _too_large(name, "decompressed input")
    return out


_DROPPED = bytes(b for b in range(256) if b not in b'"\\[]{}')
# A backslash with the character after it, paired left to right as the scan pairs them in
# a string; the pair goes when that character is one the scan ignores.
_ESCAPE = re.compile(r'\\[^"\\\[\]{}]|(\\[\s\S])')
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_DEPTH_STEP = [0] * 256
_DEPTH_STEP[ord("[")] = _DEPTH_STEP[ord("{")] = 1
_DEPTH_STEP[ord("]")] = _DEPTH_STEP[ord("}")] = -1
# Opens as "(", closes as ")"; the quotes and backslashes left outside strings go.
_PARENS = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_PIECE = 1 << 18  # characters of a text encoded at a time by _nesting_within
_COUNT_BELOW = 1 << 16  # characters: check_nesting counts brackets first only in texts this short


def _nesting_within(text: str, limit: int) -> bool:
    """True only if `_nesting_scan` accepts `text`; False when the scan has to run to be sure.

    The scan cares only about quotes, backslashes and brackets, so everything else is
    dropped first, in C (in UTF-8 no other character's bytes look like those). A backslash
    pair whose second character is ignored goes with it: in a string it escapes nothing
    that matters, outside one both are ordinary. Without backslashes, removing two adjacent
    quotes moves no other character into or out of a string, which removes nearly every
    string in one pass; a regex removes what strings are left. The depth is then the
    number of passes that empty the brackets by removing adjacent open-close pairs, or,
    when they do not empty, a running sum over them; a sum below zero (a close without
    an open, which the scan clamps) sends the text to the scan.
    """
    if "\\" in text:
        text = _ESCAPE.sub(r"\1", text)
    # In pieces: one encoded copy of a large text is fresh memory, and the kernel's first touch
    # of each page of it costs nearly what the copying does; a piece's memory is reused.
    kept = b"".join([text[i : i + _PIECE].encode("utf-8", "surrogatepass").translate(None, _DROPPED)
                     for i in range(0, len(text), _PIECE)])
    if b"\\" not in kept:
        kept = kept.replace(b'""', b"")
    brackets = _STRING.sub(b"", kept)
    # Removing every adjacent open-close pair at once lowers the depth of a balanced text
    # by exactly one (each deepest open is followed by its close; the open around it is
    # not), so a text that empties in n such passes is n deep and never closes too early.
    pairs, passes = brackets.translate(_PARENS, _NOT_BRACKET), 0
    while pairs and passes <= limit:
        fewer = pairs.replace(b"()", b"")
        if len(fewer) == len(pairs):
            break
        pairs, passes = fewer, passes + 1
    if not pairs:
        return passes <= limit
    # Unbalanced, or deeper than the limit: the running sum tells exactly.
    sums = list(accumulate(map(_DEPTH_STEP.__getitem__, brackets)))
    return not sums or (min(sums) >= 0 and max(sums) <= limit)


def check_nesting(text: str, name: str, limit: int = MAX_NESTING) -> None:
    """Refuse JSON or flow-style YAML nested deeper than `limit` brackets (outside strings)."""
    # Too few brackets to nest that deep: counting them reads the text twice more, which is
    # worth it only for a short text (a large one nearly always has more, and the shortcut
    # below then takes less than the count took).
    if len(text) <= _COUNT_BELOW and text.count("[") + text.count("{") <= limit:
        return
    if _nesting_within(text, limit):
        return
    _nesting_scan(text, name, limit)


def _nesting_scan(text: str, name: str, limit: int) -> None:
    """The reference scan, character by character: it names the line where nesting goes too deep."""
    depth = 0
    in_str: str | None = None
    escaped = False
    line = 1
    for c in text:
        if c == "\n":
            line += 1
            in_str = None if in_str == "'" else in_str
        if in_str is not None:
            if escaped:
                escaped = False
            elif c == "\\" and in_str == '"':
                escaped = True
            elif c == in_str:
                in_str = None
            continue
        if c == '"':
            in_str = '"'
        elif c in "[{":
            depth += 1
            if depth > limit:
                raise InputError(name, line, f"expected at most {limit} levels of nesting, found more")
        elif c in "]}":
            depth = max(0, depth - 1)


def check_yaml_node(node: Any, name: str) -> None:
    """Refuse YAML whose aliases refer to themselves, nest too deep, or expand past MAX_YAML_NODES."""
    import yaml

    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[Any, int, bool]] = [(node, 0, False)]
    while stack:
        n, depth, done = stack.pop()
        key = id(n)
        if done:
            active.discard(key)
            children = _children(n, yaml)
            total = 1 + sum(sizes[id(c)] for c in children)
            if total > MAX_YAML_NODES:
                raise InputError(name, n.start_mark.line + 1,
                                 f"expected at most {MAX_YAML_NODES} values once aliases are expanded, found more")
            sizes[key] = total
            continue
        if key in sizes:
            continue
        if key in active:
            raise InputError(name, n.start_mark.line + 1, "expected aliases to earlier values, found one that "
                                                          "refers to itself")
        if depth > MAX_NESTING:
            raise InputError(name, n.start_mark.line + 1, f"expected at most {MAX_NESTING} levels of nesting, "
                                                          "found more")
        active.add(key)
        stack.append((n, depth, True))
        for c in _children(n, yaml):
            if id(c) in active:
                raise InputError(name, c.start_mark.line + 1, "expected aliases to earlier values, found one "
                                                              "that refers to itself")
            if id(c) not in sizes:
                stack.append((c, depth + 1, False))


def _children(n: Any, yaml: Any) -> list[Any]:
    if isinstance(n, yaml.MappingNode):
        return [x for pair in n.value for x in pair]
    if isinstance(n, yaml.SequenceNode):
        return list(n.value)
    return []


__all__ = ["check_nesting", "check_yaml_node", "max_input_bytes", "parse_size", "read_bounded", "set_max_input_bytes"]
