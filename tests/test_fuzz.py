"""kpa's fuzzer (tests/fuzzer.py) on every commit: YAML bombs, and 25 mutated cases in separate processes.

`python3 tests/fuzzer.py --seconds 600` (or `tests/benchmarks/bench.py --fuzz
600`) runs longer: it mutates real dumps and objects and runs kpa's commands on
them; a traceback, a case past its time bound, or an error that names no line
or runs past a screen is printed with a reproducer.
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


def test_mutated_dumps_and_objects_in_separate_processes(tmp_path: Path) -> None:
    """A fixed run of the fuzzer, each case in its own `kpa` process with a hard time bound.

    About 25 cases (tens of seconds); the same seed gives the same cases.
    """
    import random
    import subprocess

    rng = random.Random(int(__import__("os").environ.get("KPA_FUZZ_SEED", "20260")))
    failures: list[str] = []
    for i in range(int(__import__("os").environ.get("KPA_FUZZ_CASES", "25"))):
        work = tmp_path / f"case{i}"
        work.mkdir()
        case, paths = fuzzer.make_case(rng, str(work))
        try:
            res = subprocess.run([sys.executable, "-m", "kpa", *case.command], capture_output=True, text=True,
                                 timeout=120)
        except subprocess.TimeoutExpired:
            failures.append(f"hang: kpa {' '.join(case.command)} ({case.origin})")
            continue
        if "Traceback" in res.stderr:
            failures.append(f"traceback: kpa {' '.join(case.command)} ({case.origin})\n{res.stderr[-1500:]}")
        elif res.returncode == 2 and res.stderr.startswith("kpa: error: "):
            why = fuzzer.check_message(res.stderr.strip().removeprefix("kpa: error: "), paths)
            if why:
                failures.append(f"message: kpa {' '.join(case.command)}: {why}")
    assert not failures, "\n".join(failures)


def test_making_cases_never_expands_a_yaml_bomb(tmp_path: Path) -> None:
    """A bomb from one mutation, mutated again, loads cheaply but would be expanded without end when
    re-serialised, outside any case's time bound: the in-process fuzzer (seed 20260) used to stall at
    its 126th case that way. Making the first 200 cases of that seed must take seconds, in a process
    of its own so that a regression fails instead of hanging the suite."""
    import subprocess

    code = ("import random, sys, tempfile\nsys.path.insert(0, sys.argv[1])\nimport fuzzer\n"
            "rng = random.Random(20260)\n"
            "with tempfile.TemporaryDirectory() as tmp:\n"
            "    for _ in range(200):\n        fuzzer.make_case(rng, tmp)\nprint('ok')\n")
    res = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)], capture_output=True, text=True,
                         timeout=120)
    assert res.stdout.strip() == "ok", res.stderr[-1000:]
