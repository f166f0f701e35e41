"""kpa.k8s.live against recorded API responses served over HTTP to the real client."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from k8s import apiserver as api

from kpa.errors import KpaError
from kpa.k8s.live import LIVE_POD_FIELD_SELECTOR, load_live

SERVICES = r"/api/v1/services"
SLICES = r"/apis/discovery\.k8s\.io/v1/endpointslices"
ENDPOINTS = r"/api/v1/endpoints"
NODES = r"/api/v1/nodes"
PODS = r"/api/v1/pods"


def serve_cluster(server: Any) -> None:
    """Route the recorded cluster: every list, with endpointslices split over two pages."""
    page1 = api.recorded("endpointslices-page1.json")
    token = page1["metadata"]["continue"]

    def slices(request: Any) -> Any:
        if request.param("continue") == token:
            return api.Reply(200, api.recorded("endpointslices-page2.json"))
        return api.Reply(200, page1)

    server.route("GET", SERVICES, api.Reply(200, api.recorded("services.json")))
    server.route("GET", SLICES, slices)
    server.route("GET", ENDPOINTS, api.Reply(200, api.recorded("endpoints.json")))
    server.route("GET", NODES, api.Reply(200, api.recorded("nodes.json")))
    server.route("GET", PODS, api.Reply(200, api.recorded("pods.json")))


@pytest.fixture
def server() -> Iterator[Any]:
    running = api.FakeApiServer().start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def kubeconfig(server: Any, tmp_path: Path) -> str:
    path = api.write_kubeconfig(tmp_path / "config", {"kind": server.url}, "kind")
    return str(path)


def test_lists_every_resource_and_converts_it(server: Any, kubeconfig: str) -> None:
    serve_cluster(server)
    objects = load_live(kubeconfig, None, None, page_size=2)

    assert {s.key for s in objects.services} == {
        ("default", "kubernetes"),
        ("kube-system", "kube-dns"),
        ("shop", "web"),
        ("shop", "db"),
        ("shop", "old-api"),
    }
    web = objects.service_by_cluster_ip("10.96.120.15")
    assert web is not None and web.name == "web"
    assert objects.service_by_cluster_ip("fd00:10:96:0:0:0:0:7a1f") is web
    assert [e.address for e in objects.endpoints_for("kube-system", "kube-dns", "dns", "UDP")] == [
        "10.244.0.3",
        "10.244.0.4",
    ]
    node = objects.node("kind-worker")
    assert node is not None and node.external_ips == ("203.0.113.10",)
    pod = objects.pod_by_ip("10.244.1.5")
    assert pod is not None and pod.name == "web-6d4cf56db6-abcde"
    # Legacy Endpoints arrive too and fill in for the service that has no slices.
    assert [e.address for e in objects.endpoints_for("shop", "old-api")] == [
        "10.244.0.31",
        "10.244.1.30",
    ]
    # The bearer token from the kubeconfig user reached the server.
    assert all(r.headers.get("authorization") == "Bearer token-kind" for r in server.requests)


def test_requests_are_read_only_paginated_and_filter_finished_pods(
    server: Any, kubeconfig: str
) -> None:
    serve_cluster(server)
    load_live(kubeconfig, None, None, page_size=2)

    assert {r.method for r in server.requests} == {"GET"}
    assert all(r.param("limit") == "2" for r in server.requests)
    (pods,) = server.seen("GET", PODS)
    assert pods.param("fieldSelector") == LIVE_POD_FIELD_SELECTOR


def test_follows_continue_tokens_and_keeps_both_pages(server: Any, kubeconfig: str) -> None:
    serve_cluster(server)
    objects = load_live(kubeconfig, None, None, page_size=2)

    first, second = server.seen("GET", SLICES)
    token = api.recorded("endpointslices-page1.json")["metadata"]["continue"]
    assert first.param("continue") is None
    assert second.param("continue") == token
    names = {s.name for s in objects.endpoint_slices if not s.from_endpoints}
    assert {"kube-dns-7hhsv", "kubernetes"} <= names  # page 1
    assert {"web-8fz2c", "web-q7v4n", "web-2m9xd", "db-5kq2w"} <= names  # page 2


def test_namespace_scopes_namespaced_lists_but_not_nodes(server: Any, kubeconfig: str) -> None:
    serve_cluster(server)
    ns = r"/api/v1/namespaces/shop"
    server.route("GET", ns + "/services", api.Reply(200, {"kind": "ServiceList", "items": []}))
    server.route("GET", ns + "/endpoints", api.Reply(200, {"kind": "EndpointsList", "items": []}))
    server.route("GET", ns + "/pods", api.Reply(200, {"kind": "PodList", "items": []}))
    server.route(
        "GET",
        r"/apis/discovery\.k8s\.io/v1/namespaces/shop/endpointslices",
        api.Reply(200, {"kind": "EndpointSliceList", "items": []}),
    )
    objects = load_live(kubeconfig, None, "shop")

    paths = {r.path for r in server.requests}
    assert "/api/v1/namespaces/shop/services" in paths
    assert "/api/v1/services" not in paths
    assert "/api/v1/nodes" in paths
    assert objects.services == () and len(objects.nodes) == 2


def test_forbidden_list_names_resource_verb_and_clusterrole(server: Any, kubeconfig: str) -> None:
    serve_cluster(server)
    server.route("GET", SERVICES, api.Reply(403, api.recorded("forbidden-list-services.json")))

    with pytest.raises(KpaError) as caught:
        load_live(kubeconfig, None, None)
    message = str(caught.value)
    assert message.startswith("forbidden: cannot list services at cluster scope")
    assert 'User "system:serviceaccount:default:viewer"' in message
    assert "docs/kubernetes.md" in message and "endpointslices" in message
    assert "\n" not in message and "Traceback" not in message


def test_unauthorized_is_reported_without_the_response_dump(server: Any, kubeconfig: str) -> None:
    server.route(
        "GET", SERVICES, api.Reply(401, {"kind": "Status", "code": 401, "message": "Unauthorized"})
    )
    with pytest.raises(KpaError, match=r"^unauthorized: .* rejected the credentials"):
        load_live(kubeconfig, None, None)


def test_context_flag_selects_the_cluster(server: Any, tmp_path: Path) -> None:
    serve_cluster(server)
    other = api.FakeApiServer().start()
    try:
        other.route("GET", r".*", api.Reply(200, {"kind": "List", "items": []}))
        path = api.write_kubeconfig(
            tmp_path / "config", {"staging": other.url, "prod": server.url}, "staging"
        )
        objects = load_live(str(path), "prod", None)
        assert len(objects.services) == 5
        assert other.requests == []
        assert server.requests[0].headers["authorization"] == "Bearer token-prod"

        # Without --context the current-context wins.
        assert load_live(str(path), None, None).services == ()
        assert other.requests
    finally:
        other.stop()


def test_unknown_context_is_a_clean_error(kubeconfig: str) -> None:
    with pytest.raises(KpaError, match="cannot use kubeconfig"):
        load_live(kubeconfig, "nope", None)


def test_kubeconfig_env_var_is_honoured(
    server: Any, kubeconfig: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve_cluster(server)
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    assert len(load_live(None, None, None).nodes) == 2


def test_unreachable_server_is_a_clean_error(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = api.write_kubeconfig(tmp_path / "config", {"gone": f"http://127.0.0.1:{port}"}, "gone")
    with pytest.raises(
        KpaError, match=rf"^cannot reach the Kubernetes API server at http://127\.0\.0\.1:{port}"
    ):
        load_live(str(path), None, None)


def test_expired_continue_token_restarts_the_list_once(server: Any, kubeconfig: str) -> None:
    serve_cluster(server)
    page1 = api.recorded("endpointslices-page1.json")
    expired = {
        "kind": "Status",
        "code": 410,
        "reason": "Expired",
        "message": "The provided continue parameter is too old to display a consistent list result.",
    }
    answers = iter([page1, expired, page1, api.recorded("endpointslices-page2.json")])

    def slices(_request: Any) -> Any:
        body = next(answers)
        return api.Reply(410 if body is expired else 200, body)

    server.route("GET", SLICES, slices)
    objects = load_live(kubeconfig, None, None, page_size=2)

    tokens = [r.param("continue") for r in server.seen("GET", SLICES)]
    assert tokens == [None, page1["metadata"]["continue"], None, page1["metadata"]["continue"]]
    # The fresh list still delivers both pages.
    names = {s.name for s in objects.endpoint_slices if not s.from_endpoints}
    assert {"kube-dns-7hhsv", "web-8fz2c"} <= names
