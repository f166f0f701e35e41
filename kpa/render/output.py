"""Machine-readable output: JSON and YAML of the same documents."""

from __future__ import annotations

import json
from typing import Any

import yaml


def dump(doc: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
    raise ValueError(fmt)


SEVERITY_COLOURS = {"error": "red", "warning": "yellow", "info": "cyan", "note": "cyan", "unknown": "magenta"}


def colour_severities(text: str) -> str:
    """Colour the leading `error:` / `warning:` / `info:` / `note:` of each line (for a TTY)."""
    import re

    import click

    def paint(m: re.Match[str]) -> str:
        return m.group(1) + click.style(m.group(2), fg=SEVERITY_COLOURS[m.group(2)[:-1]], bold=True)

    return re.sub(r"(?m)^(\s*)(error:|warning:|info:|note:|unknown:)", paint, text)
