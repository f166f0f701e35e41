"""The command line as users run it: real processes, real kubectl plugin discovery."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


def kpa(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kpa", *args], capture_output=True, text=True, check=False,
                          env=env)


def test_help_has_examples_for_every_command() -> None:
    top = kpa("--help")
    assert top.returncode == 0
    for command in ("check", "graph", "show", "trace", "completion"):
        res = kpa(command, "--help")
        assert res.returncode == 0, res.stderr
        assert "Examples:" in res.stdout, command


def test_trace_json_schema_on_the_example() -> None:
    res = kpa("trace", "--example", "--dst", "10.96.0.11", "-p", "tcp", "--dport", "80", "--src", "10.244.0.9",
              "-o", "json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert set(doc) >= {"packet", "outcomes", "warnings"}
    outcomes = doc["outcomes"]
    assert abs(sum(o["probability"] for o in outcomes) - 1) < 1e-12
    # With objects, each endpoint is named by the pod the Service's EndpointSlice lists for the DNAT address
    # (in the example several pods of different Services share addresses, so the slice decides).
    objects = yaml.safe_load_all((ROOT / "kpa" / "data" / "example" / "cluster.yaml").read_text())
    owners = {ep["addresses"][0]: f"pod/{ep['targetRef']['namespace']}/{ep['targetRef']['name']} on node "
              f"{ep['nodeName']}" for d in objects
              if d and d["kind"] == "EndpointSlice" and d["metadata"]["labels"]["kubernetes.io/service-name"] == "web"
              for ep in d["endpoints"]}
    assert doc["service"]["service_port"] == "shop/web:http"
    for o in outcomes:
        assert o["endpoint"] == owners[o["dnat"].split(":")[0]]
    for o in outcomes:
        assert set(o) >= {"probability", "verdict", "delivery", "dnat", "masquerade", "snat", "conditions",
                          "unknown", "path"}
        for hop in o["path"]:
            assert set(hop) >= {"hook", "table", "chain", "rule", "file", "line", "text"}
            if hop["rule"] is not None:
                # The reported line really holds the reported rule.
                assert Path(hop["file"]).read_text().splitlines()[hop["line"] - 1].strip() == hop["text"]


def test_trace_yaml_matches_json() -> None:
    args = ("trace", "--example", "--dst", "10.96.0.14", "-p", "tcp", "--dport", "80")
    as_json = json.loads(kpa(*args, "-o", "json").stdout)
    as_yaml = yaml.safe_load(kpa(*args, "-o", "yaml").stdout)
    assert as_json == as_yaml


def test_text_output_has_no_colour_when_not_a_tty() -> None:
    res = kpa("trace", "--example", "--dst", "10.96.0.14", "-p", "tcp", "--dport", "80")
    assert res.returncode == 0
    assert "\x1b[" not in res.stdout
    assert "REJECT" in res.stdout


def test_check_exit_codes(tmp_path: Path) -> None:
    assert kpa("check", "--example").returncode == 0
    bad = tmp_path / "dangling.save"
    bad.write_text("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                   "-A INPUT -m bpf --bytecode \"1,6 0 0 0\" -j ACCEPT\nCOMMIT\n")
    res = kpa("check", "--rules", str(bad), "-o", "json")
    assert res.returncode == 1
    doc = json.loads(res.stdout)
    assert doc["tables"][0]["unknown"][0]["location"] == f"{bad}:5"


def test_graph_formats_and_from_chain() -> None:
    dot = kpa("graph", "--example")
    assert dot.returncode == 0 and dot.stdout.startswith("digraph")
    mermaid = kpa("graph", "--example", "-o", "mermaid", "--from-chain", "KUBE-SERVICES")
    assert mermaid.returncode == 0 and mermaid.stdout.startswith("flowchart")
    full = json.loads(kpa("graph", "--example", "-o", "json").stdout)
    sub = json.loads(kpa("graph", "--example", "-o", "json", "--from-chain", "nat/KUBE-NODEPORTS").stdout)
    assert 0 < len(sub["nodes"]) < len(full["nodes"])
    assert all(e["to"].startswith("nat/") for e in sub["edges"])


def test_show_names_service_ports_and_endpoints() -> None:
    doc = json.loads(kpa("show", "--example", "-o", "json").stdout)
    views = {v["service_port"]: v for v in doc["service_ports"]}
    web = views["shop/web:http"]
    assert {e["kind"] for e in web["entries"]} >= {"clusterIP", "nodePort"}
    assert abs(sum(e["probability"] for e in web["endpoints"]) - 1) < 1e-12
    assert views["shop/checkout:http"]["no_endpoints"]


def test_completion_scripts() -> None:
    for shell in ("bash", "zsh", "fish"):
        res = kpa("completion", shell)
        assert res.returncode == 0 and "_KPA_COMPLETE" in res.stdout


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_discovers_the_plugin(tmp_path: Path) -> None:
    entry = shutil.which("kubectl-kpa")
    assert entry, "kubectl-kpa must be installed as a console script (pip install .)"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "kubectl-kpa").symlink_to(entry)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    plugins = subprocess.run(["kubectl", "plugin", "list"], capture_output=True, text=True, env=env, check=False)
    assert str(bindir / "kubectl-kpa") in plugins.stdout
    res = subprocess.run(["kubectl", "kpa", "trace", "--example", "--dst", "10.96.0.14", "-p", "tcp", "--dport", "80",
                          "-o", "json"], capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["outcomes"][0]["verdict"] == "REJECT"
    helped = subprocess.run(["kubectl", "kpa", "--help"], capture_output=True, text=True, env=env, check=False)
    assert "kubectl kpa" in helped.stdout


def test_diff_exit_codes_and_json() -> None:
    ipt = FIXTURES / "iptables" / "kitchen-sink.nft.v4.save"
    nft = FIXTURES / "nft" / "kube-proxy" / "kitchen-sink.v4.nft"
    objects = FIXTURES / "clusters" / "kitchen-sink.yaml"
    same = kpa("diff", str(ipt), str(ipt), "-c", str(objects))
    assert same.returncode == 0, same.stderr
    differ = kpa("diff", str(ipt), str(nft), "-c", str(objects), "-o", "json")
    assert differ.returncode == 1, differ.stderr
    doc = json.loads(differ.stdout)
    assert doc["identical"] is False
