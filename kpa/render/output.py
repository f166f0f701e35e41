"""Machine-readable output: JSON and YAML of the same documents."""

from __future__ import annotations

import codecs
import json
import os
from typing import Any


def dump(doc: Any, fmt: str) -> str:
    if fmt == "json":
        return indented_json(doc) + "\n"
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
    raise ValueError(fmt)


def indented_json(doc: Any) -> str:
    """`doc` as JSON indented by two spaces, the layout of `json.dumps(doc, indent=2)`.

    orjson writes it: json's indenting encoder is pure Python and takes seconds on `show`
    of a large cluster. The text differs from json's only where JSON allows a choice:
    non-ASCII characters are written as they are rather than escaped, a float may be
    spelled differently (``1e16`` for ``1e+16``), and NaN and infinities (which JSON does
    not have) become null. Documents orjson refuses (keys other than strings, integers
    beyond 64 bits, other types) are written by json, which raises its usual error for
    what it cannot write either.
    """
    import orjson

    try:
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()
    except TypeError:  # (orjson.JSONEncodeError is one)
        return json.dumps(doc, indent=2)


def json_output(doc: Any) -> str | bytes:
    """`dump(doc, "json")` for `click.echo` to write: as the bytes that text becomes where standard
    output takes text as UTF-8 unchanged, otherwise as the text.

    Decoding orjson's bytes to text and `click.echo` encoding it back cost about a tenth of a
    second of `show -o json` on a large cluster (20 MB). `click.echo` strips escape sequences
    from text written to a pipe, but JSON holds none (its control characters are escaped).
    """
    import click

    stream = click.get_text_stream("stdout")
    encoding = getattr(stream, "encoding", None)
    if (os.linesep != "\n" or not encoding or codecs.lookup(encoding).name != "utf-8"
            or getattr(stream, "buffer", None) is None):
        return dump(doc, "json")
    import orjson

    try:
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
    except TypeError:  # as indented_json; json's text is ASCII (it escapes the rest)
        return (json.dumps(doc, indent=2) + "\n").encode()


SEVERITY_COLOURS = {"error": "red", "warning": "yellow", "info": "cyan", "note": "cyan", "unknown": "magenta"}


def colour_severities(text: str) -> str:
    """Colour the leading `error:` / `warning:` / `info:` / `note:` of each line (for a TTY)."""
    import re

    import click

    def paint(m: re.Match[str]) -> str:
        return m.group(1) + click.style(m.group(2), fg=SEVERITY_COLOURS[m.group(2)[:-1]], bold=True)

    return re.sub(r"(?m)^(\s*)(error:|warning:|info:|note:|unknown:)", paint, text)
