"""Routes kpa derives from cluster objects for -m rpfilter (kpa/k8s/routes.py)."""

from __future__ import annotations

import ipaddress

from kpa.k8s.objects import ClusterObjects, Node, Pod
from kpa.k8s.routes import cluster_routes, merged
from kpa.netfilter.domain import network_set


def test_pod_cidrs_nodes_and_pods_are_routes_without_an_interface() -> None:
    objects = ClusterObjects(
        nodes=[Node("a", ("192.168.0.2",), (), ("10.244.0.0/24", "fd00:10:244::/64")),
               Node("b", ("192.168.0.3",), ("203.0.113.9",), ("10.244.1.0/24",))],
        pods=[Pod("ns", "web", "a", ("10.8.0.7",), False), Pod("ns", "agent", "b", ("192.168.0.4",), True)])
    routes = cluster_routes(objects)
    assert all(iface is None for v in routes for _, iface in routes[v])
    want = ["10.244.0.0/24", "192.168.0.2/32", "10.244.1.0/24", "192.168.0.3/32", "203.0.113.9/32", "10.8.0.7/32"]
    assert [p for p, _ in routes[4]] == [network_set(ipaddress.ip_network(n)) for n in want]
    # A hostNetwork pod has the node's network: no route of its own.
    assert [p for p, _ in routes[6]] == [network_set(ipaddress.ip_network("fd00:10:244::/64"))]


def test_a_stated_route_is_never_hidden_by_a_derived_one() -> None:
    stated = {4: [(network_set(ipaddress.ip_network("10.244.0.0/16")), "eth0")]}
    derived = {4: [(network_set(ipaddress.ip_network("10.244.0.5/32")), None),
                   (network_set(ipaddress.ip_network("10.96.0.0/12")), None)]}
    out = merged(stated, derived)
    assert out[4] == [stated[4][0], derived[4][1]]
