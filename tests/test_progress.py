"""Progress on stderr: on a terminal only, and only for steps longer than about a second."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

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
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
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
    out = proc.communicate()[0]
    os.close(master)
    return out, b"".join(chunks).decode(errors="replace")


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
