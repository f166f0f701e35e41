"""Start-up: what a command imports before it reads its inputs.

Every module imported at start is paid on every run, serially, before the rules are
read. Modules only some commands or formats need (PyYAML and the block YAML reader for
YAML objects, XML for JUnit, orjson for JSON, the Kubernetes client, networkx, ...)
are imported where they are used. These tests keep them out, so a later top-level
import cannot bring one back unnoticed; each is run in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"

# Never needed to start kpa or to read the command line.
NOT_AT_START = (
    "yaml", "kpa.k8s.blockyaml", "kpa.k8s.objects", "xml.etree.ElementTree", "orjson", "pickle",
    "subprocess", "fractions", "networkx", "kubernetes", "kpa.netfilter.model", "kpa.render.output",
    "kpa.k8s.lint", "kpa.sources",
)
# Never needed by a command that reads JSON objects and writes JSON.
NOT_FOR_JSON = ("yaml", "kpa.k8s.blockyaml", "xml.etree.ElementTree", "networkx", "kubernetes")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["KPA_NO_PROGRESS"] = "1"
    return env


def _loaded_after(code: str) -> set[str]:
    """The modules loaded once `code` ran in a fresh interpreter."""
    script = f"{code}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True,
                         check=True, cwd=ROOT)
    return set(out.stdout.split())


def _loaded_by_command(args: list[str], tmp_path: Path) -> tuple[int, set[str]]:
    """Exit status and the modules loaded in the kpa process (not its children) after `kpa ARGS`."""
    record = tmp_path / "modules.txt"
    script = (
        "import os, sys\n"
        "from kpa.cli import cli\n"
        "pid = os.getpid()\n"
        "try:\n"
        f"    cli.main({args!r}, prog_name='kpa')\n"
        "finally:\n"
        "    if os.getpid() == pid:\n"
        f"        open({str(record)!r}, 'w').write('\\n'.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, cwd=ROOT)
    return done.returncode, set(record.read_text().split())


def test_import_kpa_cli_leaves_the_heavy_modules_out() -> None:
    loaded = _loaded_after("import kpa.cli")
    assert "kpa.cli" in loaded and "click" in loaded
    assert sorted(set(NOT_AT_START) & loaded) == []


def test_the_modules_lint_and_show_need_leave_yaml_and_xml_out() -> None:
    loaded = _loaded_after(
        "import kpa.cli, kpa.findings, kpa.k8s.lint, kpa.k8s.showview, kpa.k8s.background, kpa.render.findings, "
        "kpa.render.output, kpa.sources, kpa.parse.iptables_save"
    )
    assert "kpa.k8s.objects" in loaded and "kpa.k8s.correlate" in loaded
    assert sorted(set(NOT_FOR_JSON) & loaded) == []


def _json_objects(tmp_path: Path) -> Path:
    docs = list(yaml.safe_load_all((FIXTURES / "clusters" / "clusterip.yaml").read_text()))
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [d for d in docs if d]}, indent=4))
    return path


@pytest.mark.parametrize("command", ["lint", "show"])
def test_a_json_command_on_json_objects_reads_them_without_yaml(command: str, tmp_path: Path) -> None:
    objects = _json_objects(tmp_path)
    rules = str(FIXTURES / "iptables" / "clusterip.legacy.v4.save")
    args = [command, "-r", rules, "-c", str(objects), *(["--node", "node-a"] if command == "lint" else []), "-o", "json"]
    status, loaded = _loaded_by_command(args, tmp_path)
    assert status in (0, 1)
    assert "kpa.k8s.objects" in loaded and "orjson" in loaded
    assert sorted(set(NOT_FOR_JSON) & loaded) == []
    # The same command with YAML objects or YAML output does import PyYAML: the check above can fail.
    yaml_args = [*args[:-1], "yaml"]
    status, loaded = _loaded_by_command(yaml_args, tmp_path)
    assert status in (0, 1) and "yaml" in loaded


def test_junit_output_imports_xml_where_it_is_written(tmp_path: Path) -> None:
    objects = _json_objects(tmp_path)
    rules = str(FIXTURES / "iptables" / "clusterip.legacy.v4.save")
    status, loaded = _loaded_by_command(["lint", "-r", rules, "-c", str(objects), "--node", "node-a", "-o", "junit"],
                                        tmp_path)
    assert status in (0, 1) and "xml.etree.ElementTree" in loaded
