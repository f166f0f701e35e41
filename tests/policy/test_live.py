"""`kpa policy` reads Namespaces and NetworkPolicies from the API (list only), through the
real kubernetes client talking to recorded responses over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from k8s import apiserver as api

from kpa.k8s.live import load_live
from tests.policy.clirun import kpa

NAMESPACES = r"/api/v1/namespaces"
POLICIES = r"/apis/networking\.k8s\.io/v1/networkpolicies"


@pytest.fixture
def server() -> Iterator[Any]:
    running = api.FakeApiServer().start()
    try:
        from tests.test_k8s_live import serve_cluster

        serve_cluster(running)
        running.route("GET", NAMESPACES, api.Reply(200, api.recorded("namespaces.json")))
        running.route("GET", POLICIES, api.Reply(200, api.recorded("networkpolicies.json")))
        yield running
    finally:
        running.stop()


def test_policy_objects_are_listed_only_when_asked(server: Any, tmp_path: Path) -> None:
    config = str(api.write_kubeconfig(tmp_path / "config", {"kind": server.url}, "kind"))
    plain = load_live(config, None, None)
    assert plain.network_policies == () and plain.namespaces == ()
    assert not server.seen("GET", POLICIES)
    objects = load_live(config, None, None, policy=True)
    assert {n.name for n in objects.namespaces} == {"default", "kube-system", "shop"}
    assert objects.namespace("shop") is not None
    assert objects.namespace("shop").label_map["team"] == "shop"  # type: ignore[union-attr]
    (pol,) = objects.network_policies
    assert pol.key == "shop/allow-dns" and pol.policy_types == ("Egress",)
    assert pol.egress[0].ports[1].port == "dns-tcp"
    assert {r.method for r in server.requests} == {"GET"}
    assert server.seen("GET", NAMESPACES) and server.seen("GET", POLICIES)


def test_policy_lint_over_the_api(server: Any, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    config = str(api.write_kubeconfig(tmp_path / "config", {"kind": server.url}, "kind"))
    res = kpa(capsys, "policy", "lint", "--kube", "--kubeconfig", config, "-o", "json")
    assert res.code in (0, 1), res.err
    assert server.seen("GET", POLICIES)


def test_forbidden_policy_list_names_the_resource(server: Any, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    server.route("GET", POLICIES, api.Reply(403, {
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
        "code": 403, "message": 'networkpolicies.networking.k8s.io is forbidden: User "jane" '
        'cannot list resource "networkpolicies"'}))
    config = str(api.write_kubeconfig(tmp_path / "config", {"kind": server.url}, "kind"))
    res = kpa(capsys, "policy", "lint", "--kube", "--kubeconfig", config)
    assert res.code == 2
    assert "cannot list networkpolicies.networking.k8s.io at cluster scope" in res.err
    assert "kpa-reader ClusterRole" in res.err


def test_as_a_kubectl_plugin_policy_reads_the_api_by_default(
    server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from kpa.cli import kubectl_main

    config = str(api.write_kubeconfig(tmp_path / "config", {"kind": server.url}, "kind"))
    monkeypatch.setattr("sys.argv", ["kubectl-kpa", "policy", "lint", "--kubeconfig", config])
    with pytest.raises(SystemExit) as exit_info:
        kubectl_main()
    assert exit_info.value.code in (0, 1), capsys.readouterr().err
    assert server.seen("GET", POLICIES) and server.seen("GET", NAMESPACES)


def test_kpa_lint_over_the_api_includes_policies_where_it_may_list_them(
    server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = Path(__file__).parent.parent.parent / "kpa" / "data" / "example" / "rules.v4.save"
    typo = {"kind": "NetworkPolicyList", "apiVersion": "networking.k8s.io/v1", "items": [{
        "metadata": {"name": "typo", "namespace": "default"},
        "spec": {"podSelector": {"matchLabels": {"app": "nothing-has-this"}}}}]}
    server.route("GET", POLICIES, api.Reply(200, typo))
    config = str(api.write_kubeconfig(tmp_path / "config", {"kind": server.url}, "kind"))
    res = kpa(capsys, "lint", "-r", str(rules), "--kube", "--kubeconfig", config, "-o", "json")
    assert res.code in (0, 1), res.err
    assert "policy-selects-no-pods" in res.out
    assert server.seen("GET", POLICIES)
    # Without RBAC for them, lint still runs and says what it skipped.
    server.route("GET", POLICIES, api.Reply(403, {"kind": "Status", "code": 403,
                                                   "message": "forbidden"}))
    res = kpa(capsys, "lint", "-r", str(rules), "--kube", "--kubeconfig", config, "-o", "json")
    assert res.code in (0, 1), res.err
    assert "cannot list networkpolicies.networking.k8s.io; NetworkPolicy checks skipped" in res.err
    assert "policy-selects-no-pods" not in res.out
