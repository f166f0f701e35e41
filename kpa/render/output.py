"""Machine-readable output: JSON and YAML of the same documents."""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii as _string  # json's own (in C where built)
from typing import Any

import yaml


def dump(doc: Any, fmt: str) -> str:
    if fmt == "json":
        return indented_json(doc) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
    raise ValueError(fmt)


# `json.dumps(doc, indent=2)` runs json's pure-Python encoder (its C encoder does not indent),
# which takes most of the time of a large `-o json`. `indented_json` writes the same text with
# a tighter loop over the JSON types themselves, and leaves anything else to json.
_FLOAT_REPR = float.__repr__
_INT_REPR = int.__repr__
_INF = float("inf")


def _float(o: float) -> str:
    if o != o:
        return "NaN"
    if o == _INF:
        return "Infinity"
    if o == -_INF:
        return "-Infinity"
    return _FLOAT_REPR(o)


class _Unsupported(Exception):
    pass


def _key(k: Any) -> str:
    if isinstance(k, str):
        return _string(k)
    if k is True:
        return '"true"'
    if k is False:
        return '"false"'
    if k is None:
        return '"null"'
    if isinstance(k, float):
        return _string(_float(k))
    if isinstance(k, int):
        return _string(_INT_REPR(k))
    raise _Unsupported


def _scalar(o: Any) -> str | None:
    """The JSON text of a scalar as json writes it; None for a container (or an unsupported value)."""
    t = type(o)
    if t is str:
        return _string(o)
    if o is None:
        return "null"
    if o is True:
        return "true"
    if o is False:
        return "false"
    if t is int:
        return _INT_REPR(o)
    if t is float:
        return _float(o)
    return None


def indented_json(doc: Any) -> str:
    """Exactly `json.dumps(doc, indent=2)`: dicts, lists, tuples, str, int, float, bool and None
    (of those very types) are written here; for anything else json writes the whole document."""
    out: list[str] = []
    add = out.append

    def value(o: Any, pad: str) -> None:
        t = type(o)
        if t is dict:
            if not o:
                add("{}")
                return
            inner = pad + "  "
            sep = "{\n" + inner
            for k, v in o.items():
                key = _string(k) if type(k) is str else _key(k)
                tv = type(v)
                if tv is str:
                    add(sep + key + ": " + _string(v))
                else:
                    text = _scalar(v)
                    if text is not None:
                        add(sep + key + ": " + text)
                    else:
                        add(sep + key + ": ")
                        value(v, inner)
                sep = ",\n" + inner
            add("\n" + pad + "}")
        elif t is list or t is tuple:
            if not o:
                add("[]")
                return
            inner = pad + "  "
            sep = "[\n" + inner
            for v in o:
                text = _scalar(v)
                if text is not None:
                    add(sep + text)
                else:
                    add(sep)
                    value(v, inner)
                sep = ",\n" + inner
            add("\n" + pad + "]")
        else:
            text = _scalar(o)
            if text is None:
                raise _Unsupported
            add(text)

    try:
        value(doc, "")
    except (_Unsupported, RecursionError):
        return json.dumps(doc, indent=2)
    return "".join(out)


SEVERITY_COLOURS = {"error": "red", "warning": "yellow", "info": "cyan", "note": "cyan", "unknown": "magenta"}


def colour_severities(text: str) -> str:
    """Colour the leading `error:` / `warning:` / `info:` / `note:` of each line (for a TTY)."""
    import re

    import click

    def paint(m: re.Match[str]) -> str:
        return m.group(1) + click.style(m.group(2), fg=SEVERITY_COLOURS[m.group(2)[:-1]], bold=True)

    return re.sub(r"(?m)^(\s*)(error:|warning:|info:|note:|unknown:)", paint, text)
