"""The random cluster generator: deterministic, well-addressed, feature-mixed."""

from __future__ import annotations

import ipaddress
from collections import Counter

import pytest

from kpa.gen.cluster import Cluster, random_cluster
from kpa.gen.iptables import render_restore
from kpa.gen.objects import dump_list_json, dump_yaml, to_objects
from kpa.gen.options import ProxierOptions


def test_same_seed_same_cluster_and_rules() -> None:
    a = random_cluster(7, 60, 5, ("ipv4", "ipv6"))
    b = random_cluster(7, 60, 5, ("ipv4", "ipv6"))
    assert a == b
    opts = ProxierOptions(node_name="node-0")
    assert render_restore(a, opts, "ipv4") == render_restore(b, opts, "ipv4")
    assert dump_yaml(to_objects(a)) == dump_yaml(to_objects(b))


def test_different_seed_different_cluster() -> None:
    assert random_cluster(1, 60, 5) != random_cluster(2, 60, 5)


@pytest.fixture(scope="module")
def mixed() -> Cluster:
    return random_cluster(42, 400, 6, ("ipv4", "ipv6"))


def test_addresses_come_from_the_documented_ranges(mixed: Cluster) -> None:
    nets = {
        "svc4": ipaddress.ip_network("10.96.0.0/12"),
        "svc6": ipaddress.ip_network("fd00:10:96::/112"),
        "lb4": ipaddress.ip_network("203.0.113.0/24"),
        "ext4": ipaddress.ip_network("198.51.100.0/24"),
        "v6doc": ipaddress.ip_network("2001:db8::/32"),
        "node4": ipaddress.ip_network("192.168.0.0/16"),
        "node6": ipaddress.ip_network("fd00:192:168::/64"),
    }
    nodes = {n.name: n for n in mixed.nodes}
    for node in mixed.nodes:
        assert ipaddress.ip_address(node.ipv4 or "") in nets["node4"]
        assert ipaddress.ip_address(node.ipv6 or "") in nets["node6"]
    for svc in mixed.services:
        v4, v6 = svc.cluster_ip("ipv4"), svc.cluster_ip("ipv6")
        assert v4 and ipaddress.ip_address(v4) in nets["svc4"]
        assert v6 and ipaddress.ip_address(v6) in nets["svc6"]
        for ip in svc.lb_ingress_ips:
            addr = ipaddress.ip_address(ip)
            assert addr in nets["lb4"] or addr in nets["v6doc"]
        for ip in svc.external_ips:
            addr = ipaddress.ip_address(ip)
            assert addr in nets["ext4"] or addr in nets["v6doc"]
        for ep in svc.endpoints:
            assert ep.node_name is not None
            # Each endpoint lies inside its node's pod CIDR for its family.
            cidrs = [ipaddress.ip_network(c) for c in nodes[ep.node_name].pod_cidrs]
            assert any(ipaddress.ip_address(ep.ip) in c for c in cidrs)


def test_cluster_ips_and_node_ports_are_unique(mixed: Cluster) -> None:
    ips = [ip for svc in mixed.services for ip in svc.cluster_ips]
    assert len(ips) == len(set(ips))
    node_ports = [p.node_port for svc in mixed.services for p in svc.ports if p.node_port]
    node_ports += [
        svc.health_check_node_port for svc in mixed.services if svc.health_check_node_port
    ]
    assert len(node_ports) == len(set(node_ports))
    assert all(30000 <= p <= 32767 for p in node_ports)


def test_all_features_are_mixed_in(mixed: Cluster) -> None:
    types = Counter(svc.type for svc in mixed.services)
    assert types["ClusterIP"] and types["NodePort"] and types["LoadBalancer"]
    protocols = Counter(p.protocol for svc in mixed.services for p in svc.ports)
    assert protocols["TCP"] and protocols["UDP"] and protocols["SCTP"]
    svcs = mixed.services
    assert any(s.lb_source_ranges for s in svcs)
    assert any(s.external_ips for s in svcs)
    assert any(s.external_traffic_policy == "Local" for s in svcs)
    assert any(s.internal_traffic_policy == "Local" for s in svcs)
    assert any(s.session_affinity == "ClientIP" for s in svcs)
    assert any(not s.endpoints for s in svcs)
    assert any(len(s.ports) > 1 for s in svcs)
    eps = [ep for s in svcs for ep in s.endpoints]
    assert any(ep.terminating and ep.serving for ep in eps)
    assert any(not ep.ready and not ep.terminating for ep in eps)
    assert any(ep.node_name == "node-0" for ep in eps)  # some endpoints are local


def test_this_node_can_be_renamed() -> None:
    cluster = random_cluster(3, 10, 2, this_node="worker-7")
    assert cluster.node("worker-7").ipv4 == "192.168.0.2"


def test_objects_cover_every_service_and_endpoint(mixed: Cluster) -> None:
    objs = to_objects(mixed)
    kinds = Counter(o["kind"] for o in objs)
    assert kinds["Service"] == len(mixed.services)
    assert kinds["Node"] == len(mixed.nodes)
    slices = [o for o in objs if o["kind"] == "EndpointSlice"]
    assert all(len(s["endpoints"]) <= 100 for s in slices)
    assert {s["addressType"] for s in slices} == {"IPv4", "IPv6"}
    in_slices = sum(len(s["endpoints"]) for s in slices)
    assert in_slices == sum(len(svc.endpoints) for svc in mixed.services)
    for s in slices:
        assert s["metadata"]["labels"]["kubernetes.io/service-name"]
        for ep in s["endpoints"]:
            assert set(ep["conditions"]) == {"ready", "serving", "terminating"}
            assert ep["targetRef"]["kind"] == "Pod"
    pods = [o for o in objs if o["kind"] == "Pod"]
    # Dual-stack pods list both families.
    assert all(len(p["status"]["podIPs"]) == 2 for p in pods)
    assert '"kind": "List"' in dump_list_json(objs[:3])
