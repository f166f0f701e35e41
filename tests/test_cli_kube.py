"""`kpa`/`kubectl kpa` end to end against an API server over real HTTP.

The server replays the example cluster's objects as list responses and plays
the debug pod's life cycle, whose log carries the example node's real
iptables-save dump; the real kubernetes client inside the kpa process talks
to it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "kpa" / "data" / "example"


from k8s import apiserver as api  # noqa: E402  (tests/ is on sys.path under pytest)

LISTS = {"Service": r"/api/v1/services", "EndpointSlice": r"/apis/discovery\.k8s\.io/v1/endpointslices",
         "Endpoints": r"/api/v1/endpoints", "Node": r"/api/v1/nodes", "Pod": r"/api/v1/pods"}
PODS = r"/api/v1/namespaces/default/pods"


def collector_log() -> str:
    dump = (EXAMPLE / "rules.v4.save").read_text()
    return (
        "==== kpa-begin iptables-backend ====\nnft\n==== kpa-end iptables-backend rc=0 ====\n"
        f"==== kpa-begin iptables-save ====\n{dump}==== kpa-end iptables-save rc=0 ====\n"
        "==== kpa-done ====\n"
    )


@pytest.fixture
def cluster_server(tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    server = api.FakeApiServer().start()
    docs = [d for d in yaml.safe_load_all((EXAMPLE / "cluster.yaml").read_text()) if d]
    for kind, path in LISTS.items():
        items = [d for d in docs if d["kind"] == kind]
        server.route("GET", path, api.Reply(200, {"kind": f"{kind}List", "apiVersion": "v1",
                                                  "metadata": {}, "items": items}))
    state: dict[str, Any] = {}

    def create(request: Any) -> Any:
        state["pod"] = dict(request.body, status={"phase": "Pending"})
        return api.Reply(201, state["pod"])

    server.route("POST", PODS, create)
    server.route("GET", PODS + r"/[^/]+", lambda r: api.Reply(200, dict(state["pod"], status={"phase": "Succeeded"})))
    server.route("GET", PODS + r"/[^/]+/log", lambda r: api.Reply(200, collector_log(), "text/plain"))
    server.route("DELETE", PODS + r"/[^/]+", lambda r: api.Reply(200, state["pod"]))
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", {"test": server.url}, "test")
    try:
        yield server, kubeconfig
    finally:
        server.stop()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kpa", *args], capture_output=True, text=True, check=False)


def test_trace_reads_objects_and_node_rules_from_the_cluster(cluster_server: tuple[Any, Path]) -> None:
    server, kubeconfig = cluster_server
    res = run("trace", "--kube", "--kubeconfig", str(kubeconfig), "--node", "node-a",
              "--to", "svc/shop/web:http", "--from", "external", "-o", "json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["packet"]["dst"] == "10.96.0.11" and doc["packet"]["dport"] == 80
    dnats = {o["dnat"] for o in doc["outcomes"]}
    assert dnats == {"10.244.0.10:8080", "10.244.1.11:8080", "10.244.2.12:8080"}
    # Read-only towards the cluster except the debug pod, which is always deleted.
    writes = [r.method for r in server.requests if r.method not in ("GET",)]
    assert writes == ["POST", "DELETE"]


def test_collect_saves_rules_and_objects_for_offline_use(cluster_server: tuple[Any, Path], tmp_path: Path) -> None:
    _, kubeconfig = cluster_server
    out = tmp_path / "bundle"
    res = run("collect", "--kubeconfig", str(kubeconfig), "--node", "node-a", "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert (out / "iptables.save").read_text().strip() == (EXAMPLE / "rules.v4.save").read_text().strip()
    offline = run("trace", "-r", str(out / "iptables.save"), "-c", str(out / "cluster.json"), "--node", "node-a",
                  "--to", "svc/shop/checkout:http", "-o", "json")
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout)["outcomes"][0]["verdict"] == "REJECT"


def test_forbidden_list_is_a_clear_error(tmp_path: Path) -> None:
    server = api.FakeApiServer().start()
    try:
        server.route("GET", LISTS["Service"], api.Reply(403, api.recorded("forbidden-list-services.json")))
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", {"test": server.url}, "test")
        res = run("lint", "-r", str(EXAMPLE / "rules.v4.save"), "--kube", "--kubeconfig", str(kubeconfig))
        assert res.returncode == 2
        assert "Traceback" not in res.stderr
        assert res.stderr.startswith("kpa: error: forbidden: cannot list services")
        assert "ClusterRole" in res.stderr
    finally:
        server.stop()


@pytest.mark.skipif(shutil.which("kubectl") is None or shutil.which("kubectl-kpa") is None,
                    reason="needs kubectl and the installed kubectl-kpa entry point")
def test_kubectl_plugin_talks_to_the_cluster_by_default(cluster_server: tuple[Any, Path]) -> None:
    _, kubeconfig = cluster_server
    res = subprocess.run(["kubectl", "kpa", "lint", "--kubeconfig", str(kubeconfig), "-r",
                          str(EXAMPLE / "rules.v4.save"), "--node", "node-a", "-o", "json"],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    codes = {f["code"] for f in json.loads(res.stdout)["findings"]}
    assert "no-endpoints" in codes
