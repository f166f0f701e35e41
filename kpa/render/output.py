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
