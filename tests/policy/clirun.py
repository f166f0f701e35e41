"""Run `kpa` in-process through its real entry point (error handling included)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from kpa.cli import _run


@dataclass
class Result:
    code: int
    out: str
    err: str


def kpa(capsys: pytest.CaptureFixture[str], *args: str) -> Result:
    capsys.readouterr()
    try:
        _run("kpa", list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)
