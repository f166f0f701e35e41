"""Product code never imports the rule generator (kpa.gen)."""

from __future__ import annotations

import ast
from pathlib import Path

import kpa

ROOT = Path(kpa.__file__).parent


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_no_product_module_imports_the_generator() -> None:
    offenders = {}
    for path in sorted(ROOT.rglob("*.py")):
        if path.relative_to(ROOT).parts[0] == "gen":
            continue
        bad = sorted(m for m in _imports(path) if m == "kpa.gen" or m.startswith("kpa.gen."))
        if bad:
            offenders[str(path.relative_to(ROOT))] = bad
    assert offenders == {}


def test_the_check_sees_imports_of_the_generator(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from kpa.gen import cluster\nimport kpa.gen.iptables\n")
    assert _imports(probe) >= {"kpa.gen", "kpa.gen.iptables"}
