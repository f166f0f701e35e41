"""Round trip: parse every kernel dump, render it back, and have the kernel accept it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kpa.parse.iptables_save import parse_iptables
from kpa.render.iptables import render_ruleset

FIXTURES = Path(__file__).parent / "fixtures" / "iptables"


def _restore_tool(dump: Path) -> str:
    backend = "legacy" if ".legacy." in dump.name else "nft"
    family = "ip6tables" if dump.name.endswith(".v6.save") else "iptables"
    return f"{family}-{backend}-restore"


@pytest.mark.kernel
@pytest.mark.parametrize("dump", sorted(FIXTURES.glob("*.save")), ids=lambda p: p.name)
def test_render_back_is_accepted_and_saves_identically(dump: Path, tmp_path: Path) -> None:
    rendered = render_ruleset(parse_iptables(dump.read_text(), str(dump)))
    ns = f"kpat-rt-{abs(hash(dump.name)) % 10**8}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        tool = _restore_tool(dump)
        test = subprocess.run(["ip", "netns", "exec", ns, tool, "-w", "10", "--test"], input=rendered, text=True,
                              capture_output=True, check=False)
        assert test.returncode == 0, test.stderr
        subprocess.run(["ip", "netns", "exec", ns, tool, "-w", "10"], input=rendered, text=True, check=True)
        saved = subprocess.run(["ip", "netns", "exec", ns, tool.replace("-restore", "-save")], text=True,
                               capture_output=True, check=True).stdout
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)

    def tables(text: str) -> dict[str, list[str]]:
        # Backends list tables in different orders; each table's text must match exactly.
        out: dict[str, list[str]] = {}
        current: list[str] = []
        for line in text.splitlines():
            if line.startswith("*"):
                current = out.setdefault(line, [])
            elif not line.startswith("#"):
                current.append(line)
        return out

    # What the kernel holds after loading kpa's rendering is what it held originally.
    assert tables(saved) == tables(dump.read_text())
