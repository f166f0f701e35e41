"""`kpa lint` and `kpa show` as processes end at once, with all their output, like `kpa diff`.

Freeing the ruleset and the cluster objects one by one at the end changes nothing, so a
command run as the kpa process flushes its output and ends (`kpa.cli._leave`). Its
output and exit status must be those of the same command run in-process (which returns
normally), also when its output is still in the buffer, and a reader that goes away
early must still end it without a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kpa.cli import cli

FIX = Path(__file__).parent / "fixtures"
RULES = str(FIX / "iptables" / "kitchen-sink.nft.v4.save")
OBJECTS = str(FIX / "clusters" / "kitchen-sink.yaml")

RUNS = {
    "lint-json": (["lint", "-r", RULES, "-c", OBJECTS, "--node", "node-a", "-o", "json"], 0),
    "lint-text-failing": (["lint", "-r", RULES, "-c", OBJECTS, "--node", "node-a", "--fail-on", "info"], 1),
    "show-text": (["show", "-r", RULES, "-c", OBJECTS], 0),
    "show-json": (["show", "-r", RULES, "-c", OBJECTS, "-o", "json"], 0),
    "show-name": (["show", "-r", RULES, "-c", OBJECTS, "-o", "name"], 0),
}

# Standard output buffered, as it is by default when it is not a terminal.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
# click.echo without its own flush: what is written stays in the buffer until the end (text in
# sys.stdout's, bytes in the binary buffer under it, as click.echo writes them).
UNFLUSHED = ("import sys; c.click.echo = lambda m=None, nl=True, **k: "
             "sys.stdout.buffer.write(m + bytes([10]) * nl) if isinstance(m, bytes) "
             "else sys.stdout.write((m or '') + chr(10) * nl)")


def _run(args: list[str], prelude: str = "pass") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", f"import kpa.cli as c; {prelude}; c.main()", *args],
                          capture_output=True, text=True, check=False, env=ENV)


@pytest.mark.parametrize("name", list(RUNS))
def test_the_command_ends_at_once_with_all_its_output(name: str) -> None:
    args, status = RUNS[name]
    inside = CliRunner().invoke(cli, args)
    assert inside.exit_code == status and inside.stdout, inside.output
    whole = _run(args)
    assert (whole.returncode, whole.stdout) == (status, inside.stdout), whole.stderr
    kept = _run(args, UNFLUSHED)
    assert (kept.returncode, kept.stdout) == (status, inside.stdout), kept.stderr
    if len(inside.stdout) < 8192:  # a larger write goes past the buffer, straight out
        # Without the flush before the end the buffered output is lost: the process did end at once.
        lost = _run(args, UNFLUSHED + "; c._flush_streams = lambda: None")
        assert lost.returncode == status and lost.stdout != inside.stdout


def test_a_baseline_is_written_whole_before_the_end(tmp_path: Path) -> None:
    args = ["lint", "-r", RULES, "-c", OBJECTS, "--node", "node-a"]
    inside = tmp_path / "inside.json"
    assert CliRunner().invoke(cli, [*args, "--write-baseline", str(inside)]).exit_code == 0
    whole = tmp_path / "whole.json"
    done = _run([*args, "--write-baseline", str(whole)])
    assert done.returncode == 0 and "wrote" in done.stderr
    assert whole.read_text() == inside.read_text() and len(inside.read_text()) > 100


@pytest.mark.parametrize("name", ["lint-json", "show-text"])
def test_a_reader_that_goes_away_early_ends_the_command_quietly(name: str) -> None:
    args, status = RUNS[name]
    head = subprocess.run(f"{sys.executable} -m kpa {' '.join(args)} | head -c 100 >/dev/null; "
                          "echo ${PIPESTATUS[0]}", shell=True, executable="/bin/bash",
                          capture_output=True, text=True, check=False)
    assert "Traceback" not in head.stderr and head.stdout.strip() in ("0", str(status))
