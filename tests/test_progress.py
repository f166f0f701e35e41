"""Progress on stderr: on a terminal only, and only for steps longer than about a second."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

SNIPPET = """
import sys, time
from kpa.render.progress import bar, status
with status("reading the rules"):
    time.sleep(float(sys.argv[1]))
with bar("comparing entry points") as advance:
    for i in range(3):
        advance(i + 1, 3)
        time.sleep(float(sys.argv[1]) / 3)
print("done")
"""


def _run_on_tty(seconds: float) -> tuple[str, str]:
    """Run the snippet with stderr on a pseudo-terminal; return (stdout, what the terminal got)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", SNIPPET, str(seconds)], stdout=subprocess.PIPE,
                            stderr=slave, text=True, env={**os.environ, "TERM": "xterm", "COLUMNS": "100"})
    os.close(slave)
    tty = _drain(master, proc, 60)
    out = proc.communicate()[0]
    os.close(master)
    return out, tty


def _drain(master: int, proc: subprocess.Popen[str], seconds: float) -> str:
    """What the process wrote to the terminal until it closed it or exited (at most `seconds`)."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_long_steps_show_progress_on_a_terminal() -> None:
    out, tty = _run_on_tty(2.5)
    assert out == "done\n"
    assert "kpa: reading the rules" in tty
    assert "kpa: comparing entry points" in tty


def test_short_steps_show_nothing_on_a_terminal() -> None:
    out, tty = _run_on_tty(0.1)
    assert out == "done\n" and "kpa:" not in tty


def test_no_progress_when_stderr_is_not_a_terminal() -> None:
    res = subprocess.run([sys.executable, "-c", SNIPPET, "1.5"], capture_output=True, text=True, check=True)
    assert res.stdout == "done\n" and res.stderr == ""


# -- the commands, as a person at a terminal sees them --------------------------------------

KR = Path(__file__).parent / "fixtures" / "kube-router"
RULES = ["-r", str(KR / "nft.v4.save"), "-r", str(KR / "ipset.v4.save")]
CLUSTER = ["-c", str(KR / "cluster.yaml")]
NODE = ["--node-ip", "192.168.10.2"]

COMMANDS = {
    "check": (["check", *RULES], "kpa: reading the rules"),
    "check-json": (["check", *RULES, "-o", "json"], "kpa: reading the rules"),
    "trace": (["trace", *RULES, *CLUSTER, *NODE, "--src", "10.244.0.5", "--dst", "10.244.0.10", "-p", "tcp",
               "--dport", "8080"], "kpa: tracing the packet"),
    "graph": (["graph", *RULES], "kpa: building the chain graph"),
    "policy-check": (["policy", "check", *CLUSTER, *RULES, *NODE, "--from", "pod/b/client", "--to", "pod/a/web",
                      "--port", "8080"], "kpa: tracing the connection through the rules"),
    "policy-matrix": (["policy", "matrix", *CLUSTER, *RULES, *NODE, "--port", "8080"],
                      "kpa: tracing 4x4 connections through the node's rules"),
    "policy-matrix-json": (["policy", "matrix", *CLUSTER, *RULES, *NODE, "--port", "8080", "-o", "json"],
                           "kpa: tracing 4x4 connections through the node's rules"),
    "policy-lint": (["policy", "lint", *CLUSTER], "kpa: checking the policies"),
}


def _kpa_on_tty(args: list[str], env: dict[str, str]) -> tuple[str, str, int]:
    """Run kpa with stderr on a pseudo-terminal (stdout a file): (stdout, terminal, exit status)."""
    master, slave = pty.openpty()
    with tempfile.TemporaryFile("w+") as stdout:
        proc = subprocess.Popen([sys.executable, "-m", "kpa", *args], stdout=stdout, stderr=slave, text=True,
                                env={**os.environ, "TERM": "xterm", "COLUMNS": "120", **env})
        os.close(slave)
        tty = _drain(master, proc, 120)
        code = proc.wait(timeout=60)
        os.close(master)
        stdout.seek(0)
        return stdout.read(), tty, code


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_commands_show_progress_on_a_terminal_and_nowhere_else(name: str) -> None:
    args, expected = COMMANDS[name]
    # Without a terminal: the reference output, and nothing about progress on stderr.
    # $COLUMNS as on the terminal below: kpa fits text output to it even on a pipe.
    plain = subprocess.run([sys.executable, "-m", "kpa", *args], capture_output=True, text=True,
                           env={**os.environ, "COLUMNS": "120", "KPA_PROGRESS_DELAY": "0"})
    assert "kpa:" not in plain.stderr
    # On a terminal, with every step slow enough to show (delay 0): the progress line is on the
    # terminal and stdout is byte for byte the same.
    out, tty, code = _kpa_on_tty(args, {"KPA_PROGRESS_DELAY": "0"})
    assert expected in tty, tty
    assert out == plain.stdout and code == plain.returncode
    # --no-progress (and KPA_NO_PROGRESS=1) keep the terminal quiet.
    out, tty, code = _kpa_on_tty(["--no-progress", *args], {"KPA_PROGRESS_DELAY": "0"})
    assert "kpa:" not in tty and out == plain.stdout
    out, tty, code = _kpa_on_tty(args, {"KPA_PROGRESS_DELAY": "0", "KPA_NO_PROGRESS": "1"})
    assert "kpa:" not in tty and out == plain.stdout


def test_quick_commands_show_nothing_at_the_normal_delay() -> None:
    args, _ = COMMANDS["check"]
    out, tty, code = _kpa_on_tty(args, {})
    assert "kpa:" not in tty and code == 0 and "filter" in out
