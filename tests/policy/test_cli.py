"""`kpa policy check|matrix|lint` and `kpa lint` with policies, as users run them."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import yaml

from tests.policy.clirun import kpa
from tests.policy.world import default_objects, load, policy

FIXTURES = Path(__file__).parent.parent / "fixtures"

DENY_X = policy("x", "deny-all", {"podSelector": {}})
ALLOW_Y = policy("x", "from-y", {
    "podSelector": {"matchLabels": {"pod": "a"}},
    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                 "ports": [{"port": "serve-80-tcp"}]}],
})


@pytest.fixture
def objects(tmp_path: Path) -> str:
    load(tmp_path, [*default_objects(), DENY_X, ALLOW_Y], "cluster.yaml")
    return str(tmp_path / "cluster.yaml")


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("check", "matrix", "lint"):
        res = kpa(capsys, "policy", command, "--help")
        assert res.code == 0 and "Examples:" in res.out, command
    assert "policy" in kpa(capsys, "--help").out


def test_check_answers_first_and_names_the_admitting_rule(
    objects: str, capsys: pytest.CaptureFixture[str]
) -> None:
    res = kpa(capsys, "policy", "check", "-c", objects, "--from", "pod/y/b", "--to", "pod/x/a",
              "--port", "80")
    assert res.code == 0, res.err
    lines = res.out.splitlines()
    assert lines[0] == "ALLOWED: pod/y/b -> pod/x/a port 80/TCP"
    assert "ingress allowed by x/from-y ingress[0]: from[0] namespaceSelector ns=y, " \
           "ports[0] serve-80-tcp/TCP" in lines[1]
    assert "isolated by: x/deny-all, x/from-y" in res.out


def test_check_denied_lists_nearest_misses_with_reasons(
    objects: str, capsys: pytest.CaptureFixture[str]
) -> None:
    res = kpa(capsys, "policy", "check", "-c", objects, "--from", "pod/z/b", "--to",
              "pod/x/a:80")
    assert res.code == 1
    assert res.out.splitlines()[0] == "DENIED: pod/z/b -> pod/x/a port 80/TCP"
    assert "ingress denied: isolated by x/deny-all, x/from-y" in res.out.splitlines()[1]
    assert "namespaceSelector ns=y does not select namespace z" in res.out
    assert f"x/from-y ingress[0] ({objects}:" in res.out
    doc = json.loads(kpa(capsys, "policy", "check", "-c", objects, "--from", "pod/z/b",
                         "--to", "pod/x/a", "--port", "81", "-o", "json").out)
    assert doc["allowed"] is False
    misses = doc["ingress"]["nearest_misses"]
    # A rule that fails on peer and port still comes before a policy with no rules.
    assert misses[0]["policy"] == "x/from-y" and len(misses[0]["reasons"]) == 2
    assert misses[1]["policy"] == "x/deny-all" and misses[1]["rule"] == -1


def test_check_from_an_outside_address(objects: str, capsys: pytest.CaptureFixture[str]) -> None:
    res = kpa(capsys, "policy", "check", "-c", objects, "--from", "203.0.113.7", "--to",
              "pod/y/a", "--port", "80", "-o", "yaml")
    doc = yaml.safe_load(res.out)
    assert res.code == 0 and doc["allowed"] is True
    assert (doc["from"], doc["to"], doc["from_ip"], doc["to_ip"]) == (
        "203.0.113.7", "pod/y/a", "203.0.113.7", "10.0.2.1")
    assert doc["egress"]["note"] == "outside the cluster"


def test_check_bad_input_is_exit_2(objects: str, capsys: pytest.CaptureFixture[str]) -> None:
    for args, text in (
        (["--from", "pod/x", "--to", "pod/x/a", "--port", "80"], "pod/NAMESPACE/NAME"),
        (["--from", "pod/x/nope", "--to", "pod/x/a", "--port", "80"], "no Pod x/nope"),
        (["--from", "pod/x/a", "--to", "pod/x/b"], "--port"),
        (["--from", "pod/x/a", "--to", "svc/x/none"], "no Service x/none"),
        (["--from", "banana", "--to", "pod/x/b", "--port", "1"], "an IP address"),
    ):
        res = kpa(capsys, "policy", "check", "-c", objects, *args)
        assert res.code == 2, (args, res.out)
        assert text in res.err and "Traceback" not in res.err


def test_matrix_formats(objects: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = kpa(capsys, "policy", "matrix", "-c", objects, "-n", "x", "-n", "y")
    assert text.code == 0
    assert text.out.splitlines()[1:] == [
        "-   x/a x/b x/c y/a y/b y/c",
        "x/a .   X   X   .   .   .",
        "x/b X   .   X   .   .   .",
        "x/c X   X   .   .   .   .",
        "y/a .   X   X   .   .   .",
        "y/b .   X   X   .   .   .",
        "y/c .   X   X   .   .   .",
    ]
    doc = json.loads(kpa(capsys, "policy", "matrix", "-c", objects, "-o", "json").out)
    cell = next(c for c in doc["cells"] if c["from"] == "pod/y/a" and c["to"] == "pod/x/a")
    assert cell == {"from": "pod/y/a", "to": "pod/x/a", "port": 80, "protocol": "TCP",
                    "allowed": True, "from_ip": "10.0.2.1", "to_ip": "10.0.1.1"}
    assert len(doc["cells"]) == 81
    rows = list(csv.reader(io.StringIO(kpa(capsys, "policy", "matrix", "-c", objects,
                                           "-o", "csv").out)))
    assert rows[0][:3] == ["from", "x/a", "x/b"] and rows[4][:2] == ["y/a", "allowed"]
    md = kpa(capsys, "policy", "matrix", "-c", objects, "-o", "markdown").out.splitlines()
    assert md[0].startswith("| from \\ to | x/a |") and md[1].startswith("|---|")
    udp = yaml.safe_load(kpa(capsys, "policy", "matrix", "-c", objects, "--protocol", "udp",
                             "-o", "yaml").out)
    assert not next(c for c in udp["cells"] if c["from"] == "pod/y/a"
                    and c["to"] == "pod/x/a")["allowed"]


def test_lint_names_code_object_and_file_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    typo = policy("x", "typo", {"podSelector": {"matchLabels": {"pod": "nope"}}})
    load(tmp_path, [*default_objects(), typo], "cluster.yaml")
    path = tmp_path / "cluster.yaml"
    line = next(n for n, text in enumerate(path.read_text().splitlines(), start=1)
                if text == "kind: NetworkPolicy") - 1
    res = kpa(capsys, "policy", "lint", "-c", str(path))
    assert res.code == 1
    assert res.out.splitlines()[0] == (
        f"{path}:{line}: warning: policy-selects-no-pods: x/typo: podSelector pod=nope selects "
        "no pod in namespace x")
    doc = json.loads(kpa(capsys, "policy", "lint", "-c", str(path), "-o", "json").out)
    assert doc["findings"][0]["object"] == "x/typo"
    assert doc["findings"][0]["location"] == f"{path}:{line}"
    clean = tmp_path / "clean"
    clean.mkdir()
    load(clean, default_objects(), "cluster.yaml")
    res = kpa(capsys, "policy", "lint", "-c", str(clean / "cluster.yaml"))
    assert res.code == 0 and res.out == "no NetworkPolicy findings\n"


def test_kpa_lint_includes_policy_findings_when_policies_are_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = FIXTURES / "iptables" / "clusterip.nft.v4.save"
    cluster = FIXTURES / "clusters" / "clusterip.yaml"
    typo = policy("default", "typo", {"podSelector": {"matchLabels": {"app": "wbe"}}})
    load(tmp_path, [typo], "policies.yaml")
    without = kpa(capsys, "lint", "-r", str(rules), "-c", str(cluster), "--node", "node-a")
    assert "policy-selects-no-pods" not in without.out
    res = kpa(capsys, "lint", "-r", str(rules), "-c", str(cluster), "-c",
              str(tmp_path / "policies.yaml"), "--node", "node-a", "--fail-on", "warning",
              "-o", "json")
    assert res.code == 1
    found = [f for f in json.loads(res.out)["findings"] if f["code"] == "policy-selects-no-pods"]
    assert found and found[0]["message"].startswith("NetworkPolicy default/typo:")
    assert found[0]["location"].startswith(str(tmp_path / "policies.yaml") + ":")


def test_matrix_per_family_leaves_out_pods_without_that_family(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.policy.world import namespace, pod

    docs = [namespace("x"), pod("x", "dual", ["10.0.1.1", "fd00::1"]),
            pod("x", "v4", ["10.0.1.2"]), pod("x", "v6", ["fd00::3"])]
    load(tmp_path, docs, "cluster.yaml")
    res = kpa(capsys, "policy", "matrix", "-c", str(tmp_path / "cluster.yaml"), "--family", "6",
              "-o", "json")
    assert res.code == 0
    cells = json.loads(res.out)["cells"]
    assert {c["from"] for c in cells} == {"pod/x/dual", "pod/x/v6"}
    assert {c["to_ip"] for c in cells} == {"fd00::1", "fd00::3"}
    assert "1 pod(s) without an IPv6 address left out (e.g. x/v4)" in res.err


def test_objects_from_stdin(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    typo = policy("x", "typo", {"podSelector": {"matchLabels": {"pod": "nope"}}})
    load(tmp_path, [*default_objects(), typo], "cluster.yaml")
    data = (tmp_path / "cluster.yaml").read_bytes()
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
    res = kpa(capsys, "policy", "lint", "-c", "-")
    assert res.code == 1
    assert res.out.startswith("<stdin>:") and "policy-selects-no-pods: x/typo" in res.out


def test_check_to_a_pod_s_named_container_port(objects: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    res = kpa(capsys, "policy", "check", "-c", objects, "--from", "pod/y/b", "--to",
              "pod/x/a:serve-80-udp")
    assert res.out.splitlines()[0] == "DENIED: pod/y/b -> pod/x/a port 80/UDP"
    res = kpa(capsys, "policy", "check", "-c", objects, "--from", "pod/y/b", "--to",
              "pod/x/a:serve-80-tcp")
    assert res.code == 0 and res.out.startswith("ALLOWED: pod/y/b -> pod/x/a port 80/TCP")
    res = kpa(capsys, "policy", "check", "-c", objects, "--from", "pod/y/b", "--to",
              "pod/x/a:nope")
    assert res.code == 2 and "declares no container port named 'nope'" in res.err
