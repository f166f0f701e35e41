"""kubectl's conventions: namespaces, plugin help, plugin completion, collect's flags, quiet HTTP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from tests.k8s import apiserver as api

ROOT = Path(__file__).parent.parent
EX = ROOT / "kpa" / "data" / "example"
COMMON = ("-r", str(EX / "rules.v4.save"), "-c", str(EX / "cluster.yaml"))


def kpa(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kpa", *args], capture_output=True, text=True, check=False,
                          env=env)


def kubeconfig_with_namespace(path: Path, namespace: str, server: str = "https://127.0.0.1:1") -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u", "namespace": namespace}}]}))
    return path


def test_short_svc_and_pod_refs_take_the_namespace_from_n_or_the_context(tmp_path: Path) -> None:
    full = json.loads(kpa("trace", *COMMON, "--to", "svc/shop/web:http", "--from", "pod/shop/cart-b10",
                          "-o", "json").stdout)
    by_n = json.loads(kpa("trace", *COMMON, "-n", "shop", "--to", "svc/web:http", "--from", "pod/cart-b10",
                          "-o", "json").stdout)
    assert by_n["packet"] == full["packet"] and by_n["packet"]["src"] == "10.244.1.10"
    config = kubeconfig_with_namespace(tmp_path / "config", "shop")
    by_context = json.loads(kpa("trace", *COMMON, "--kube", "--kubeconfig", str(config), "--to", "svc/web:http",
                                "-o", "json").stdout)
    assert by_context["packet"]["dst"] == "10.96.0.11"
    wrong = kpa("trace", *COMMON, "--to", "svc/web:http")  # namespace `default` has no Service web
    assert wrong.returncode == 2 and "no Service default/web" in wrong.stderr


def test_trace_summary_without_headers() -> None:
    args = ("trace", "--example", "--dst", "10.96.0.11", "-p", "tcp", "--dport", "80")
    assert "RESULT" in kpa(*args).stdout
    bare = kpa(*args, "--no-headers").stdout
    assert "RESULT" not in bare and "10.244.0.10:8080" in bare


def completion_env(tmp_path: Path) -> dict[str, str]:
    """PATH with kubectl-kpa and kubectl_complete-kpa as pip installs them (console scripts of this tree)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, func in (("kubectl-kpa", "kubectl_main"), ("kubectl_complete-kpa", "kubectl_complete_main")):
        script = bindir / name
        script.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(ROOT)!r})\n"
                          f"from kpa.cli import {func}\n{func}()\n")
        script.chmod(0o755)
    return {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}


def test_console_scripts_are_declared() -> None:
    scripts = {e.name: e.value for e in metadata.entry_points(group="console_scripts")}
    text = (ROOT / "pyproject.toml").read_text()
    assert 'kubectl_complete-kpa = "kpa.cli:kubectl_complete_main"' in text
    if "kubectl_complete-kpa" in scripts:  # the installed copy may predate this tree
        assert scripts["kubectl_complete-kpa"] == "kpa.cli:kubectl_complete_main"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_completes_the_plugin(tmp_path: Path) -> None:
    env = completion_env(tmp_path)

    def complete(*words: str) -> list[str]:
        res = subprocess.run(["kubectl", "__complete", "kpa", *words], capture_output=True, text=True, env=env,
                             check=False)
        assert res.returncode == 0, res.stderr
        return res.stdout.splitlines()

    out = complete("tr")
    assert out[0].startswith("trace\t") and out[-1] == ":4"
    assert complete("trace", "--example", "--to", "svc/shop/w") == ["svc/shop/web:http", ":4"]
    pods = complete("trace", "-c", str(EX / "cluster.yaml"), "--from", "pod/shop/web-")
    assert pods == ["pod/shop/web-a10", "pod/shop/web-b11", "pod/shop/web-c12", ":4"]
    assert "svc/shop/frontend" in complete("show", "--example", "svc/shop/")
    assert complete("trace", "--example", "--node", "node-") == ["node-a", "node-b", "node-c", ":4"]
    assert complete("trace", "-r", "") == [":0"]  # file names: left to the shell
    helped = subprocess.run(["kubectl", "kpa", "trace", "--help"], capture_output=True, text=True, env=env,
                            check=False).stdout
    assert "Usage: kubectl kpa trace" in helped
    assert "\n    kubectl kpa trace --example" in helped and "\n    kpa trace" not in helped


def test_collect_takes_dir_and_still_understands_o(tmp_path: Path) -> None:
    helped = kpa("collect", "--help").stdout
    assert "--dir" in helped and "--output-dir" not in helped
    missing = kpa("collect", "--node", "node-a")
    assert missing.returncode == 2 and "--dir" in missing.stderr


def self_signed(tmp_path: Path) -> tuple[str, str]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    return str(cert), str(key)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test server's certificate")
def test_no_urllib3_warnings_leak(tmp_path: Path) -> None:
    server = api.FakeApiServer(tls=self_signed(tmp_path)).start()
    try:
        docs = [d for d in yaml.safe_load_all((EX / "cluster.yaml").read_text()) if d]
        lists = {"Service": r"/api/v1/services", "EndpointSlice": r"/apis/discovery\.k8s\.io/v1/endpointslices",
                 "Endpoints": r"/api/v1/endpoints", "Node": r"/api/v1/nodes", "Pod": r"/api/v1/pods"}
        for kind, path in lists.items():
            server.route("GET", path, api.Reply(200, {"kind": f"{kind}List", "apiVersion": "v1", "metadata": {},
                                                      "items": [d for d in docs if d["kind"] == kind]}))
        config = kubeconfig_with_namespace(tmp_path / "config", "shop", server.url)
        res = kpa("show", "-r", str(EX / "rules.v4.save"), "--kube", "--kubeconfig", str(config), "svc/web")
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith("shop/web:http")
        assert "urllib3" not in res.stderr and "InsecureRequestWarning" not in res.stderr
        assert res.stderr.strip() == f"warning: the kubeconfig turns off TLS certificate checks for {server.url}"
    finally:
        server.stop()


def test_a_bad_kubeconfig_fails_before_any_talk_of_debug_pods(tmp_path: Path) -> None:
    bad = tmp_path / "config"
    bad.write_text("apiVersion: v1\nkind: Config\ncurrent-context: nowhere\nclusters: []\ncontexts: []\nusers: []\n")
    res = kpa("trace", "--kube", "--kubeconfig", str(bad), "--node", "node-a", "--dst", "10.96.0.11")
    assert res.returncode == 2
    assert "debug pod" not in res.stderr and res.stderr.startswith("kpa: error: ")
