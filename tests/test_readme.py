"""The README's samples are what kpa prints today; the first command's output fits a screen."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"```console\n(.*?)```", re.S)


def run(command: str) -> str:
    argv = shlex.split(command)
    assert argv[0] == "kpa", command
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "NO_COLOR")}
    res = subprocess.run([sys.executable, "-m", "kpa", *argv[1:]], capture_output=True, text=True, cwd=ROOT,
                         env=env, check=False)
    return res.stdout


def render_block(block: str) -> str:
    """Re-run each `$ kpa …` of a console block; a sample cut short with `...` stays as long."""
    out: list[str] = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        assert line.startswith("$ "), f"console blocks hold commands and their output: {line!r}"
        j = i + 1
        while j < len(lines) and not lines[j].startswith("$ "):
            j += 1
        sample = lines[i + 1:j]
        real = run(line[2:]).splitlines()
        out.append(line)
        if sample and sample[-1] == "...":
            out.extend([*real[:len(sample) - 1], "..."])
        else:
            out.extend(real)
        i = j
    return "\n".join(out) + "\n"


def render(text: str) -> str:
    return BLOCK.sub(lambda m: "```console\n" + render_block(m.group(1)) + "```", text)


def test_readme_samples_match_todays_output() -> None:
    text = README.read_text()
    assert text == render(text), "README samples differ from kpa's output: python -m tests.test_readme rewrites them"


def test_first_command_fits_25_lines() -> None:
    first = re.search(r"```sh\npython3 -m pip install \. && (kpa [^\n]+)\n```", README.read_text())
    assert first
    lines = run(first.group(1)).splitlines()
    assert 0 < len(lines) <= 25


def test_license_is_apache_2_as_declared() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert 'license = {text = "Apache-2.0"}' in (ROOT / "pyproject.toml").read_text()
    assert "- from: LICENSE" in (ROOT / ".krew.yaml").read_text()


if __name__ == "__main__":
    README.write_text(render(README.read_text()))
