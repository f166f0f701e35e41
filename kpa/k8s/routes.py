"""Routes the cluster objects imply, for reverse-path checks (`-m rpfilter`).

A node can route back to every pod and every node of its cluster: the pod
CIDRs of all Nodes (its own included), each Node's addresses, and each
(non-hostNetwork) Pod's address. Which interface carries such a route depends
on the CNI (a pod's veth, tunl0, vxlan.calico, flannel.1, the uplink), so
these routes name none: they decide loose reverse-path checks, and strict
ones stay unknown unless `kpa trace --route CIDR=IFACE` states the interface.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from kpa.k8s.objects import ClusterObjects
from kpa.netfilter.domain import IntSet, network_set

Routes = dict[int, list[tuple[IntSet, str | None]]]


def cluster_routes(objects: ClusterObjects) -> Routes:
    """Routes (prefix, no interface) to the cluster's pod CIDRs, nodes and pods, per IP version."""
    seen: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
    out: Routes = {}

    def add(texts: Iterable[str]) -> None:
        for text in texts:
            try:
                net = ipaddress.ip_network(text, strict=False)
            except ValueError:
                continue  # objects are validated where they are read; a bad value adds no route
            if net not in seen:
                seen.add(net)
                out.setdefault(net.version, []).append((network_set(net), None))

    for node in objects.nodes:
        add(node.pod_cidrs)
        add([*node.internal_ips, *node.external_ips])
    for pod in objects.pods:
        if not pod.host_network:
            add(pod.pod_ips)
    return out


def merged(stated: Routes, derived: Routes) -> Routes:
    """Stated routes, and the derived ones for sources no stated route covers: a derived route
    inside a stated prefix is dropped, so it never hides the stated route's interface."""
    out: Routes = {v: list(r) for v, r in stated.items()}
    for v, routes in derived.items():
        mine = stated.get(v, [])
        out.setdefault(v, []).extend((prefix, iface) for prefix, iface in routes
                                     if not any(not (prefix - s) for s, _ in mine))
    return out
