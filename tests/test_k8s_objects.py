"""kpa.k8s.objects: reading object dumps and the lookups tracing relies on."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kpa.errors import InputError
from kpa.k8s.objects import (
    DEFAULT_AFFINITY_TIMEOUT,
    ClusterObjects,
    EndpointConditions,
    load_objects,
)

RECORDED = Path(__file__).parent / "k8s" / "recorded"
FIXTURE_CLUSTERS = Path(__file__).parent / "fixtures" / "clusters"


@pytest.fixture(scope="module")
def recorded() -> ClusterObjects:
    """The recorded API list responses, whose items carry no kind of their own."""
    return load_objects([str(RECORDED)])


def load_text(text: str) -> ClusterObjects:
    return load_objects(["-"], stdin=io.StringIO(textwrap.dedent(text)))


def test_list_items_take_their_kind_from_the_list(recorded: ClusterObjects) -> None:
    assert len(recorded.services) == 5
    assert {n.name for n in recorded.nodes} == {"kind-control-plane", "kind-worker"}
    assert len(recorded.pods) == 4
    # The two recorded Status bodies are not objects kpa uses: skipped and counted.
    assert recorded.ignored_kinds == {"Status": 2}
    assert recorded.warnings == ["ignored 2 objects of other kinds: 2 Status"]


def test_service_fields(recorded: ClusterObjects) -> None:
    web = recorded.service("shop", "web")
    assert web is not None
    assert web.type == "LoadBalancer"
    assert web.cluster_ips == ("10.96.120.15", "fd00:10:96::7a1f")
    (http,) = web.ports
    assert (http.name, http.protocol, http.port, http.target_port, http.node_port) == (
        "http",
        "TCP",
        80,
        "http",
        30080,
    )
    assert web.external_ips == ("203.0.113.50",)
    assert web.load_balancer_ips == ("198.51.100.20",)
    assert web.load_balancer_ingress[0].ip_mode == "VIP"
    assert web.load_balancer_source_ranges == ("198.51.100.0/24",)
    assert web.external_traffic_policy == "Local"
    assert web.health_check_node_port == 31234
    assert (web.session_affinity, web.session_affinity_timeout) == ("ClientIP", 600)
    assert web.ip_families == ("IPv4", "IPv6")

    dns = recorded.service("kube-system", "kube-dns")
    assert dns is not None
    assert (dns.session_affinity, dns.session_affinity_timeout) == ("None", None)
    assert [(p.name, p.protocol) for p in dns.ports] == [
        ("dns", "UDP"),
        ("dns-tcp", "TCP"),
        ("metrics", "TCP"),
    ]
    old_api = recorded.service("shop", "old-api")
    assert old_api is not None
    assert old_api.internal_traffic_policy == "Local" and not old_api.has_selector
    db = recorded.service("shop", "db")
    assert db is not None and db.headless and db.cluster_ips == ()


def test_service_lookups_by_ip(recorded: ClusterObjects) -> None:
    web = recorded.service("shop", "web")
    assert recorded.service_by_cluster_ip("10.96.120.15") is web
    # Any spelling of the IPv6 cluster IP finds the service.
    assert recorded.service_by_cluster_ip("FD00:10:96:0::7A1F") is web
    assert recorded.services_by_external_ip("203.0.113.50") == (web,)
    assert recorded.services_by_load_balancer_ip("198.51.100.20") == (web,)
    assert recorded.service_by_cluster_ip("10.96.99.99") is None
    assert recorded.services_by_external_ip("10.96.120.15") == ()


def test_endpoint_conditions_follow_api_defaulting(recorded: ClusterObjects) -> None:
    by_address = {
        e.addresses[0]: e.conditions for s in recorded.endpoint_slices for e in s.endpoints
    }
    # conditions: {} -> ready, serving as ready, not terminating
    assert by_address["10.244.0.9"] == EndpointConditions(True, True, False)
    # explicit values are kept
    assert by_address["10.244.1.6"] == EndpointConditions(False, True, True)
    # ready: false and serving unset -> serving copies ready
    assert by_address["10.244.1.7"] == EndpointConditions(False, False, False)


def test_condition_defaulting_without_conditions_key() -> None:
    objects = load_text(
        """
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: s, namespace: ns, labels: {kubernetes.io/service-name: svc}}
        addressType: IPv4
        ports: [{port: 80}]
        endpoints:
        - addresses: [10.1.0.1]
        - addresses: [10.1.0.2]
          conditions: {ready: false, serving: null, terminating: true}
        """
    )
    first, second = objects.endpoints_for("ns", "svc")
    assert (first.ready, first.serving, first.terminating) == (True, True, False)
    assert (second.ready, second.serving, second.terminating) == (False, False, True)
    assert first.protocol == "TCP"


def test_endpoints_merge_slices_and_deduplicate_preferring_ready(
    recorded: ClusterObjects,
) -> None:
    endpoints = recorded.endpoints_for("shop", "web", "http", "TCP", family=4)
    assert [e.address for e in endpoints] == [
        "10.244.0.9",
        "10.244.1.5",
        "10.244.1.6",
        "10.244.1.7",
    ]
    duplicated = endpoints[1]
    # 10.244.1.5 is ready in web-8fz2c and not ready in web-q7v4n: the ready copy wins.
    assert duplicated.ready and duplicated.node_name == "kind-worker"
    assert duplicated.zone == "zone-a" and duplicated.hint_zones == ("zone-a",)
    assert duplicated.target_ref is not None and duplicated.target_ref.name.startswith("web-")
    assert {e.port for e in endpoints} == {8080}

    (v6,) = recorded.endpoints_for("shop", "web", "http", family=6)
    assert v6.address == "fd00:10:244:1::5"
    assert len(recorded.endpoints_for("shop", "web", "http")) == 5
    # Wrong port name or protocol matches nothing.
    assert recorded.endpoints_for("shop", "web", "https") == ()
    assert recorded.endpoints_for("shop", "web", "http", "UDP") == ()


def test_endpoints_are_selected_per_port_name(recorded: ClusterObjects) -> None:
    dns_udp = recorded.endpoints_for("kube-system", "kube-dns", "dns", "UDP")
    metrics = recorded.endpoints_for("kube-system", "kube-dns", "metrics")
    assert [(e.address, e.port, e.protocol) for e in dns_udp] == [
        ("10.244.0.3", 53, "UDP"),
        ("10.244.0.4", 53, "UDP"),
    ]
    assert {e.port for e in metrics} == {9153}


def test_legacy_endpoints_convert_and_only_fill_gaps(recorded: ClusterObjects) -> None:
    old_api = recorded.endpoints_for("shop", "old-api")
    assert [(e.address, e.port, e.ready, e.serving, e.node_name) for e in old_api] == [
        ("10.244.0.31", 8080, False, False, "kind-control-plane"),
        ("10.244.1.30", 8080, True, True, "kind-worker"),
    ]
    assert all(s.from_endpoints for s in recorded.slices_for_service("shop", "old-api"))
    # default/kubernetes has both an Endpoints object and a slice: only the slice counts.
    slices = recorded.slices_for_service("default", "kubernetes")
    assert [s.name for s in slices] == ["kubernetes"] and not slices[0].from_endpoints


def test_node_and_pod_lookups(recorded: ClusterObjects) -> None:
    worker = recorded.node("kind-worker")
    assert worker is not None
    assert worker.internal_ips == ("172.18.0.3",) and worker.external_ips == ("203.0.113.10",)
    assert worker.pod_cidrs == ("10.244.1.0/24", "fd00:10:244:1::/64")
    assert worker.zone == "zone-a"
    assert recorded.node_by_ip("203.0.113.10") is worker
    assert recorded.node_by_ip("fc00:f853:ccd:e793::2") is recorded.node("kind-control-plane")
    pod = recorded.pod_by_ip("fd00:10:244:1:0::5")
    assert pod is not None and (pod.namespace, pod.name) == ("shop", "web-6d4cf56db6-abcde")
    assert pod.node_name == "kind-worker" and not pod.host_network


def test_pod_with_its_own_ip_wins_over_host_network_pod() -> None:
    objects = load_text(
        """
        apiVersion: v1
        kind: Pod
        metadata: {name: real, namespace: a}
        spec: {nodeName: n1}
        status: {podIPs: [{ip: 10.0.0.5}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: agent, namespace: kube-system}
        spec: {nodeName: n1, hostNetwork: true}
        status: {podIP: 10.0.0.5}
        """
    )
    pod = objects.pod_by_ip("10.0.0.5")
    assert pod is not None and pod.name == "real"


def test_kubectl_json_single_object_file(tmp_path: Path) -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "api", "namespace": "prod"},
        "spec": {"clusterIP": "10.0.0.7", "ports": [{"port": 443}], "sessionAffinity": "ClientIP"},
    }
    path = tmp_path / "svc.json"
    path.write_text(json.dumps(service, indent=2))
    (loaded,) = load_objects([str(path)]).services
    assert loaded.cluster_ips == ("10.0.0.7",)
    assert loaded.ports[0].target_port == 443 and loaded.ports[0].name == ""
    assert loaded.session_affinity_timeout == DEFAULT_AFFINITY_TIMEOUT


def test_list_kind_yaml_and_multi_document_yaml(tmp_path: Path) -> None:
    listed = tmp_path / "list.yaml"
    listed.write_text(
        textwrap.dedent(
            """\
            apiVersion: v1
            kind: List
            items:
            - apiVersion: v1
              kind: Node
              metadata: {name: n1}
              status: {addresses: [{type: InternalIP, address: 192.0.2.1}]}
            - apiVersion: apps/v1
              kind: Deployment
              metadata: {name: d}
            """
        )
    )
    multi = tmp_path / "multi.yml"
    multi.write_text(
        "---\napiVersion: v1\nkind: Node\nmetadata: {name: n2}\n---\n---\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n"
    )
    objects = load_objects([str(listed), str(multi)])
    assert [n.name for n in objects.nodes] == ["n1", "n2"]
    assert objects.ignored_kinds == {"Deployment": 1, "ConfigMap": 1}
    assert objects.warnings == ["ignored 2 objects of other kinds: 1 ConfigMap, 1 Deployment"]


def test_directories_are_read_recursively(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    node = "apiVersion: v1\nkind: Node\nmetadata: {{name: {}}}\n"
    (tmp_path / "top.yaml").write_text(node.format("top"))
    (tmp_path / "a" / "b" / "deep.json").write_text(
        json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "deep"}})
    )
    (tmp_path / "a" / "notes.txt").write_text("not: [yaml")
    (tmp_path / ".git" / "hidden.yaml").write_text(node.format("hidden"))
    assert sorted(n.name for n in load_objects([str(tmp_path)]).nodes) == ["deep", "top"]


def test_gzipped_dumps_are_read(tmp_path: Path) -> None:
    (tmp_path / "nodes.json.gz").write_bytes(gzip.compress((RECORDED / "nodes.json").read_bytes()))
    (tmp_path / "broken.yaml.gz").write_bytes(b"\x1f\x8b\x08\x00truncated")
    with pytest.raises(InputError, match=r"broken\.yaml\.gz: expected a complete gzip stream"):
        load_objects([str(tmp_path)])
    (tmp_path / "broken.yaml.gz").unlink()
    assert len(load_objects([str(tmp_path)]).nodes) == 2


def test_stdin_dash_in_a_subprocess() -> None:
    document = (RECORDED / "nodes.json").read_text()
    code = (
        "from kpa.k8s.objects import load_objects; "
        "print(sorted(n.name for n in load_objects(['-']).nodes))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], input=document, capture_output=True, text=True, check=True
    )
    assert run.stdout.strip() == "['kind-control-plane', 'kind-worker']"


def test_unsupported_api_version_is_skipped_and_counted() -> None:
    objects = load_text(
        """
        apiVersion: discovery.k8s.io/v1beta1
        kind: EndpointSlice
        metadata: {name: s}
        addressType: IPv4
        """
    )
    assert objects.endpoint_slices == ()
    assert objects.ignored_kinds == {"EndpointSlice (discovery.k8s.io/v1beta1)": 1}


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bad.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\n - oops\nspec: {}\n",
    )
    with pytest.raises(InputError) as caught:
        load_objects([path])
    assert (caught.value.file, caught.value.line) == (path, 5)
    assert str(caught.value).startswith(f"{path}:5: expected valid YAML, found a syntax error (")


def test_json_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path, "bad.json", '{\n  "kind": "Node",\n  "metadata": {"name": "n"}\n  "spec": {}\n}\n'
    )
    with pytest.raises(InputError) as caught:
        load_objects([path])
    assert caught.value.line == 4
    assert str(caught.value) == (
        f"{path}:4: expected valid JSON, found expecting ',' delimiter at column 3"
    )


def test_wrong_field_type_in_yaml_points_at_the_object_line(tmp_path: Path) -> None:
    text = (
        "apiVersion: v1\nkind: Node\nmetadata: {name: n}\n---\n"
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n"
        "  ports:\n  - name: web\n    port: http\n"
    )
    path = write(tmp_path, "types.yaml", text)
    with pytest.raises(InputError) as caught:
        load_objects([path])
    assert (
        str(caught.value) == f"{path}:11: expected an integer at spec.ports[0].port, found 'http'"
    )


def test_wrong_field_type_in_json_is_located_too(tmp_path: Path) -> None:
    document = {
        "kind": "NodeList",
        "apiVersion": "v1",
        "items": [
            {"metadata": {"name": "a"}},
            {"metadata": {"name": "b"}, "spec": {"podCIDRs": "10.0.0.0/24"}},
        ],
    }
    path = write(tmp_path, "nodes.json", json.dumps(document, indent=2))
    with pytest.raises(InputError) as caught:
        load_objects([path])
    assert caught.value.line == 15  # the line of item b's podCIDRs
    assert (
        caught.value.message == "expected a list of strings at spec.podCIDRs, found '10.0.0.0/24'"
    )


def test_missing_kind_and_missing_path_are_input_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "nokind.yaml", "metadata: {name: x}\n")
    with pytest.raises(
        InputError, match=r"nokind\.yaml:1: expected a Kubernetes object with 'kind'"
    ):
        load_objects([path])
    with pytest.raises(InputError, match="expected a file or directory"):
        load_objects([str(tmp_path / "absent.yaml")])


@pytest.mark.parametrize("fixture", sorted(FIXTURE_CLUSTERS.glob("*.yaml")), ids=lambda p: p.stem)
def test_fixture_clusters_load_cleanly(fixture: Path) -> None:
    objects = load_objects([str(fixture)])
    assert objects.warnings == []
    for endpoint_slice in objects.endpoint_slices:
        assert endpoint_slice.service_name is not None
        assert objects.service(endpoint_slice.namespace, endpoint_slice.service_name)


def test_an_unreadable_cluster_directory_is_an_error_not_empty() -> None:
    import os
    import shutil
    import tempfile

    import pytest

    from kpa.errors import InputError
    from kpa.k8s.objects import load_objects

    if os.geteuid() != 0:
        pytest.skip("needs root to drop to another user in a child process")
    tmp_path = Path(tempfile.mkdtemp(prefix="kpa-unreadable-", dir="/tmp"))
    tmp_path.chmod(0o755)
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "svc.yaml").write_text("kind: List\nitems: []\n")
    sub.chmod(0)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reads as an unprivileged user, who cannot list `sub`
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                load_objects([str(tmp_path)])
                os.write(write, b"read as empty")
            except InputError as exc:
                os.write(write, str(exc).encode()[:500])
            except BaseException as exc:
                os.write(write, repr(exc).encode()[:500])
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    os.close(write)
    said = os.read(read, 1000).decode()
    sub.chmod(0o755)
    shutil.rmtree(tmp_path)
    assert said.startswith(f"{sub}: cannot read this directory"), said
