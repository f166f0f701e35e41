"""Inputs from kpa's fuzzer (tests/fuzzer.py) that must stay clean errors.

`python3 tests/fuzzer.py --seconds 600` mutates real dumps and objects and
runs kpa's commands on them; a traceback, a case past its time bound, or an
error that names no line or runs past a screen is printed with a reproducer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import fuzzer


@pytest.mark.parametrize("bomb", range(4))
def test_yaml_bombs_are_clean_errors(bomb: int, tmp_path: Path) -> None:
    import random

    class Fixed(random.Random):
        def randrange(self, *args: object) -> int:  # type: ignore[override]
            return bomb

    path = tmp_path / "bomb.yaml"
    path.write_bytes(fuzzer.yaml_bomb(Fixed()))
    outcome, detail = fuzzer.run_cli(["show", "-r", str(fuzzer.RULES[0]), "-c", str(path)], 30)
    assert outcome == "clean", detail
    assert f"{path}:" in detail and len(detail) < 600
