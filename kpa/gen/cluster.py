"""A plain model of a cluster as kube-proxy on one node sees it, and a
deterministic random generator of such clusters."""

from __future__ import annotations

import ipaddress
import math
import random
from dataclasses import dataclass, field
from typing import Literal

Family = Literal["ipv4", "ipv6"]
Protocol = Literal["TCP", "UDP", "SCTP"]
ServiceType = Literal["ClusterIP", "NodePort", "LoadBalancer"]
TrafficPolicy = Literal["Cluster", "Local"]
Affinity = Literal["None", "ClientIP"]

FAMILIES: tuple[Family, ...] = ("ipv4", "ipv6")

SERVICE_CIDR = {"ipv4": "10.96.0.0/12", "ipv6": "fd00:10:96::/112"}
CLUSTER_CIDR = {"ipv4": "10.244.0.0/16", "ipv6": "fd00:10:244::/56"}
NODE_CIDR = {"ipv4": "192.168.0.0/16", "ipv6": "fd00:192:168::/64"}
LB_CIDR = {"ipv4": "203.0.113.0/24", "ipv6": "2001:db8:203::/112"}
EXTERNAL_IP_CIDR = {"ipv4": "198.51.100.0/24", "ipv6": "2001:db8:198::/112"}
# Client ranges used for loadBalancerSourceRanges (documentation ranges).
SOURCE_RANGE_POOL = {
    "ipv4": ["203.0.113.0/25", "192.0.2.0/24", "198.51.100.128/25", "192.168.0.0/16"],
    "ipv6": ["2001:db8:1::/48", "2001:db8:2::/48", "fd00:192:168::/64"],
}
DEFAULT_AFFINITY_TIMEOUT = 10800


def family_of(ip: str) -> Family:
    """Address family of an IP or CIDR string."""
    return "ipv6" if ":" in ip else "ipv4"


@dataclass
class Node:
    name: str
    ipv4: str | None = None
    ipv6: str | None = None
    pod_cidrs: list[str] = field(default_factory=list)

    def ip(self, family: Family) -> str | None:
        return self.ipv4 if family == "ipv4" else self.ipv6

    @property
    def ips(self) -> list[str]:
        return [ip for ip in (self.ipv4, self.ipv6) if ip]


@dataclass
class ServicePort:
    port: int
    target_port: int
    name: str = ""
    protocol: Protocol = "TCP"
    node_port: int = 0


@dataclass
class Endpoint:
    """One backend address of a Service (one family; dual-stack pods appear once per family)."""

    ip: str
    node_name: str | None = None
    pod_name: str | None = None
    ready: bool = True
    serving: bool = True
    terminating: bool = False

    @property
    def family(self) -> Family:
        return family_of(self.ip)


@dataclass
class Service:
    namespace: str
    name: str
    ports: list[ServicePort]
    cluster_ips: list[str]
    type: ServiceType = "ClusterIP"
    endpoints: list[Endpoint] = field(default_factory=list)
    external_ips: list[str] = field(default_factory=list)
    lb_ingress_ips: list[str] = field(default_factory=list)
    lb_source_ranges: list[str] = field(default_factory=list)
    external_traffic_policy: TrafficPolicy = "Cluster"
    internal_traffic_policy: TrafficPolicy = "Cluster"
    session_affinity: Affinity = "None"
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT
    health_check_node_port: int = 0

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def cluster_ip(self, family: Family) -> str | None:
        for ip in self.cluster_ips:
            if family_of(ip) == family:
                return ip
        return None

    @property
    def families(self) -> list[Family]:
        return [family_of(ip) for ip in self.cluster_ips]


@dataclass
class Cluster:
    nodes: list[Node]
    services: list[Service]
    service_cidrs: dict[str, str] = field(default_factory=lambda: dict(SERVICE_CIDR))
    cluster_cidrs: dict[str, str] = field(default_factory=lambda: dict(CLUSTER_CIDR))

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    @property
    def families(self) -> list[Family]:
        """Families in use by any Service, in canonical order."""
        used = {fam for svc in self.services for fam in svc.families}
        return [fam for fam in FAMILIES if fam in used]


# ---------------------------------------------------------------- addressing


def _nth(cidr: str, n: int) -> str:
    net = ipaddress.ip_network(cidr)
    if n >= net.num_addresses:
        raise ValueError(f"{cidr} has no address #{n}")
    return str(net.network_address + n)


def service_ip(family: Family, index: int) -> str:
    """The index-th Service ClusterIP (skips the range's first ten addresses)."""
    return _nth(SERVICE_CIDR[family], 10 + index)


def node_ip(family: Family, index: int) -> str:
    if family == "ipv4":
        return f"192.168.{index // 250}.{index % 250 + 2}"
    return _nth(NODE_CIDR["ipv6"], 2 + index)


def node_pod_cidr(family: Family, index: int) -> str:
    if family == "ipv4":
        return f"10.244.{index}.0/24"
    return str(ipaddress.ip_network(f"fd00:10:244:{index:x}::/64"))


def pod_ip(family: Family, node_index: int, host: int) -> str:
    if family == "ipv4":
        return f"10.244.{node_index}.{host}"
    # Canonical text: kube-proxy hashes the address as Go prints it.
    return str(ipaddress.ip_address(f"fd00:10:244:{node_index:x}::{host:x}"))


def lb_ip(family: Family, index: int) -> str:
    return _nth(LB_CIDR[family], 10 + index % 240)


def external_ip(family: Family, index: int) -> str:
    return _nth(EXTERNAL_IP_CIDR[family], 10 + index % 240)


def make_nodes(count: int, families: tuple[Family, ...]) -> list[Node]:
    nodes = []
    for i in range(count):
        nodes.append(
            Node(
                name=f"node-{i}",
                ipv4=node_ip("ipv4", i) if "ipv4" in families else None,
                ipv6=node_ip("ipv6", i) if "ipv6" in families else None,
                pod_cidrs=[node_pod_cidr(fam, i) for fam in families],
            )
        )
    return nodes


# ---------------------------------------------------------------- random


_NAMESPACES = ["default", "kube-system", "shop", "payments", "monitoring", "ingress", "data"]
_PORT_CHOICES: list[tuple[str, int, int]] = [
    ("http", 80, 8080),
    ("https", 443, 8443),
    ("grpc", 9090, 9090),
    ("metrics", 9100, 9100),
    ("dns", 53, 53),
    ("redis", 6379, 6379),
    ("pg", 5432, 5432),
]
_NODE_PORT_MIN = 30000
_NODE_PORT_MAX = 32767
_PODS_PER_NODE = 250


class _PortAllocator:
    """Hands out distinct NodePorts from kube-apiserver's default range."""

    def __init__(self, rng: random.Random) -> None:
        ports = list(range(_NODE_PORT_MIN, _NODE_PORT_MAX + 1))
        rng.shuffle(ports)
        self._free = ports

    def take(self) -> int:
        return self._free.pop() if self._free else 0


def random_cluster(
    seed: int,
    services: int,
    endpoints_per_service: int,
    families: tuple[Family, ...] = ("ipv4",),
    *,
    nodes: int | None = None,
    this_node: str = "node-0",
) -> Cluster:
    """A realistic mixed cluster, identical for identical arguments.

    Endpoint counts vary around ``endpoints_per_service``; a few Services have
    none, some endpoints are not ready or terminating, and the external
    features (NodePort, LoadBalancer with source ranges, externalIPs, traffic
    policies, session affinity, UDP/SCTP) are mixed in at plausible rates.
    ``this_node`` is node-0 unless told otherwise; it always exists.
    """
    if not families or any(fam not in FAMILIES for fam in families):
        raise ValueError(f"bad families {families!r}")
    rng = random.Random(seed)
    total = services * max(endpoints_per_service, 1)
    if nodes is None:
        nodes = min(256, max(3, math.ceil(total / 100)))
    if not 1 <= nodes <= 256:
        raise ValueError("nodes must be within 1..256 (one /24 of 10.244.0.0/16 each)")
    node_list = make_nodes(nodes, families)
    if this_node not in {n.name for n in node_list}:
        node_list[0].name = this_node

    # Pods are drawn round-robin from a pool; once the pool is exhausted,
    # later Services reuse pods (several Services selecting one workload).
    pool_size = nodes * _PODS_PER_NODE
    pod_cursor = 0
    ports = _PortAllocator(rng)
    svc_list: list[Service] = []
    for i in range(services):
        namespace = _NAMESPACES[i % len(_NAMESPACES)]
        name = f"svc-{i}"
        roll = rng.random()
        svc_type: ServiceType = "ClusterIP"
        if roll < 0.15:
            svc_type = "NodePort"
        elif roll < 0.30:
            svc_type = "LoadBalancer"

        nports = rng.choices((1, 2, 3), weights=(70, 22, 8))[0]
        picked = rng.sample(_PORT_CHOICES, nports)
        svc_ports: list[ServicePort] = []
        for pname, port, target in picked:
            proto_roll = rng.random()
            protocol: Protocol = "TCP"
            if pname == "dns" or proto_roll < 0.08:
                protocol = "UDP"
            elif proto_roll < 0.10:
                protocol = "SCTP"
            svc_ports.append(
                ServicePort(
                    name=pname if nports > 1 or rng.random() < 0.7 else "",
                    protocol=protocol,
                    port=port,
                    target_port=target,
                )
            )
        if svc_type != "ClusterIP":
            for sp in svc_ports:
                sp.node_port = ports.take()
            if any(sp.node_port == 0 for sp in svc_ports):
                # NodePort range exhausted: degrade to ClusterIP, as an
                # apiserver would have refused the Service.
                svc_type = "ClusterIP"
                for sp in svc_ports:
                    sp.node_port = 0

        svc = Service(
            namespace=namespace,
            name=name,
            ports=svc_ports,
            cluster_ips=[service_ip(fam, i) for fam in families],
            type=svc_type,
        )
        external = svc_type != "ClusterIP"
        if svc_type == "LoadBalancer":
            svc.lb_ingress_ips = [lb_ip(fam, i) for fam in families]
            if rng.random() < 0.3:
                svc.lb_source_ranges = [
                    r for fam in families for r in rng.sample(SOURCE_RANGE_POOL[fam], 2)
                ]
        if rng.random() < 0.05:
            svc.external_ips = [external_ip(fam, i) for fam in families]
            external = True
        if external and rng.random() < 0.3:
            svc.external_traffic_policy = "Local"
            if svc_type == "LoadBalancer":
                svc.health_check_node_port = ports.take()
        if rng.random() < 0.05:
            svc.internal_traffic_policy = "Local"
        if rng.random() < 0.10:
            svc.session_affinity = "ClientIP"
            svc.affinity_timeout = rng.choice((10800, 10800, 3600, 600))

        if rng.random() < 0.03:
            count = 0
        else:
            spread = max(1, endpoints_per_service // 3)
            count = max(1, endpoints_per_service + rng.randint(-spread, spread))
            count = min(count, pool_size)
        for _ in range(count):
            pod_index = pod_cursor % pool_size
            pod_cursor += 1
            node_index = pod_index % nodes
            host = pod_index // nodes + 2
            state = rng.random()
            ready, serving, terminating = True, True, False
            if state < 0.03:
                ready, serving, terminating = False, True, True
            elif state < 0.05:
                ready, serving, terminating = False, False, True
            elif state < 0.07:
                ready, serving, terminating = False, False, False
            for fam in families:
                svc.endpoints.append(
                    Endpoint(
                        ip=pod_ip(fam, node_index, host),
                        node_name=node_list[node_index].name,
                        pod_name=f"pod-{node_index}-{host}",
                        ready=ready,
                        serving=serving,
                        terminating=terminating,
                    )
                )
        svc_list.append(svc)

    cluster = Cluster(nodes=node_list, services=svc_list)
    cluster.service_cidrs = {fam: SERVICE_CIDR[fam] for fam in families}
    cluster.cluster_cidrs = {fam: CLUSTER_CIDR[fam] for fam in families}
    return cluster
