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


# -- the objects' child starts before the command's own imports ---------------------

def _at_fork(args: list[str], tmp_path: Path) -> tuple[int, str, list[set[str]]]:
    """Run `kpa ARGS` in a fresh interpreter with a core taken as spare: exit status, stdout,
    and for each fork of the kpa process the modules it had loaded then."""
    record = tmp_path / "forks.json"
    script = (
        "import json, os, sys\n"
        "import kpa.k8s.background as background\n"
        "background.spare_core = lambda: True\n"
        "pid, seen, real_fork = os.getpid(), [], os.fork\n"
        "def fork():\n"
        "    if os.getpid() == pid:\n"
        "        seen.append(sorted(sys.modules))\n"
        "    return real_fork()\n"
        "os.fork = fork\n"
        "from kpa.cli import cli\n"
        "try:\n"
        f"    cli.main({args!r}, prog_name='kpa')\n"
        "finally:\n"
        "    if os.getpid() == pid:\n"
        f"        open({str(record)!r}, 'w').write(json.dumps(seen))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, cwd=ROOT)
    return done.returncode, done.stdout, [set(m) for m in json.loads(record.read_text())]


# What only the parent needs (the rules, the comparison, the output) and what the child imports
# itself only if it reads YAML: none of it is imported before the objects' child starts.
NOT_BEFORE_THE_CHILD = ("kpa.sources", "kpa.parse.iptables_save", "kpa.k8s.lint", "kpa.k8s.correlate",
                        "kpa.k8s.kubeproxy", "kpa.k8s.showview", "kpa.diff", "kpa.render.findings",
                        "kpa.k8s.objects", "yaml", "kpa.k8s.blockyaml", "kpa.netfilter.model")


@pytest.mark.parametrize("command", ["lint", "show", "diff"])
def test_the_objects_child_starts_before_the_command_imports_the_rest(command: str, tmp_path: Path) -> None:
    objects = _json_objects(tmp_path)
    rules = str(FIXTURES / "iptables" / "clusterip.legacy.v4.save")
    args = {"lint": ["lint", "-r", rules, "-c", str(objects), "--node", "node-a", "-o", "json"],
            "show": ["show", "-r", rules, "-c", str(objects), "-o", "json"],
            "diff": ["diff", rules, rules, "-c", str(objects), "--node", "node-a", "-o", "json"]}[command]
    status, out, forks = _at_fork(args, tmp_path)
    assert status in (0, 1) and out
    assert forks, "no child was started"
    first = forks[0]  # the objects' child; reading the rules may start another one later
    assert "kpa.k8s.background" in first
    assert sorted(set(NOT_BEFORE_THE_CHILD) & first) == []
    # What the command printed is what it prints with the objects read in this process.
    assert _cli_out(args) == (status, out)


def _cli_out(args: list[str]) -> tuple[int, str]:
    """Exit status and stdout of `kpa ARGS` with the objects read in the kpa process itself."""
    script = (
        "import kpa.k8s.background as background\n"
        "background.spare_core = lambda: False\n"
        "from kpa.cli import cli\n"
        f"cli.main({args!r}, prog_name='kpa')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, cwd=ROOT)
    return done.returncode, done.stdout


def test_bad_options_found_after_the_child_started_stop_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown code, a malformed baseline or a missing rules file is found after the objects' child
    started: the same message and status as without a child, and the child is stopped and reaped."""
    from kpa.cli import _run
    from kpa.k8s import background

    objects = str(_json_objects(tmp_path))
    rules = str(FIXTURES / "iptables" / "clusterip.legacy.v4.save")
    baseline = tmp_path / "baseline.json"
    baseline.write_text('{"findings": [\n  {"code": 3}\n]}\n')
    runs = [
        ["lint", "-r", rules, "-c", objects, "--node", "node-a", "--only", "no-such-code"],
        ["lint", "-r", rules, "-c", objects, "--node", "node-a", "--ignore", "no-such-code"],
        ["lint", "-r", rules, "-c", objects, "--node", "node-a", "--baseline", str(baseline)],
        ["lint", "-r", str(tmp_path / "missing.save"), "-c", objects, "--node", "node-a"],
        ["show", "-r", str(tmp_path / "missing.save"), "-c", objects],
        ["diff", rules, str(tmp_path / "missing.save"), "-c", objects],
    ]
    children: list[int] = []
    real_fork = background.os.fork
    parent = background.os.getpid()

    def fork() -> int:
        pid = real_fork()
        if pid and background.os.getpid() == parent:
            children.append(pid)
        return pid

    monkeypatch.setattr(background.os, "fork", fork)
    for args in runs:
        answers = []
        for spare in (True, False):
            monkeypatch.setattr(background, "spare_core", lambda spare=spare: spare)
            forked = len(children)
            with pytest.raises(SystemExit) as exit_info:
                _run("kpa", args)
            answers.append((exit_info.value.code, *capsys.readouterr()))
            assert (len(children) > forked) == spare, args
        assert answers[0] == answers[1], args
        assert answers[0][0] == 2 and "Traceback" not in answers[0][2], answers[0]
    for pid in children:  # each child was stopped and reaped: no process, not even a zombie, is left
        with pytest.raises(ProcessLookupError):
            background.os.kill(pid, 0)
