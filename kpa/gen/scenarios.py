"""Small named clusters, each exercising one kube-proxy feature, plus a kitchen sink.

Every scenario is a three-node cluster (node-a is "this node", node-b and
node-c are remote) with fixed addresses, so fixtures stay byte-stable apart
from the save tool's timestamp lines.
"""

from __future__ import annotations

from collections.abc import Callable

from kpa.gen.cluster import (
    CLUSTER_CIDR,
    SERVICE_CIDR,
    Cluster,
    Endpoint,
    Family,
    Node,
    Service,
    ServicePort,
    node_ip,
    node_pod_cidr,
    pod_ip,
    service_ip,
)
from kpa.gen.options import ProxierOptions

THIS_NODE = "node-a"
_NODE_NAMES = ("node-a", "node-b", "node-c")

Scenario = Callable[[], tuple[Cluster, ProxierOptions]]


def _nodes(families: tuple[Family, ...]) -> list[Node]:
    return [
        Node(
            name=name,
            ipv4=node_ip("ipv4", i) if "ipv4" in families else None,
            ipv6=node_ip("ipv6", i) if "ipv6" in families else None,
            pod_cidrs=[node_pod_cidr(fam, i) for fam in families],
        )
        for i, name in enumerate(_NODE_NAMES)
    ]


def _cluster(services: list[Service], families: tuple[Family, ...] = ("ipv4",)) -> Cluster:
    return Cluster(
        nodes=_nodes(families),
        services=services,
        service_cidrs={fam: SERVICE_CIDR[fam] for fam in families},
        cluster_cidrs={fam: CLUSTER_CIDR[fam] for fam in families},
    )


def _eps(
    app: str,
    placement: str,
    families: tuple[Family, ...] = ("ipv4",),
    *,
    ready: bool = True,
    serving: bool = True,
    terminating: bool = False,
    first_host: int = 10,
) -> list[Endpoint]:
    """Endpoints for pods placed on nodes by letter, e.g. "abb" = one on node-a, two on node-b."""
    out: list[Endpoint] = []
    for n, letter in enumerate(placement):
        node_index = ord(letter) - ord("a")
        host = first_host + n
        for fam in families:
            out.append(
                Endpoint(
                    ip=pod_ip(fam, node_index, host),
                    node_name=_NODE_NAMES[node_index],
                    pod_name=f"{app}-{letter}{host}",
                    ready=ready,
                    serving=serving,
                    terminating=terminating,
                )
            )
    return out


def _opts(**kwargs: object) -> ProxierOptions:
    return ProxierOptions(node_name=THIS_NODE, **kwargs)  # type: ignore[arg-type]


def _kube_dns(index: int = 0) -> Service:
    return Service(
        namespace="kube-system",
        name="kube-dns",
        cluster_ips=[service_ip("ipv4", index)],
        ports=[
            ServicePort(name="dns", protocol="UDP", port=53, target_port=53),
            ServicePort(name="dns-tcp", protocol="TCP", port=53, target_port=53),
            ServicePort(name="metrics", protocol="TCP", port=9153, target_port=9153),
        ],
        endpoints=_eps("coredns", "ab"),
    )


def clusterip() -> tuple[Cluster, ProxierOptions]:
    web = Service(
        namespace="default",
        name="web",
        cluster_ips=[service_ip("ipv4", 1)],
        ports=[ServicePort(name="http", port=80, target_port=8080)],
        endpoints=_eps("web", "abc"),
    )
    return _cluster([web]), _opts()


def nodeport() -> tuple[Cluster, ProxierOptions]:
    svc = Service(
        namespace="default",
        name="web-np",
        type="NodePort",
        cluster_ips=[service_ip("ipv4", 2)],
        ports=[ServicePort(name="http", port=80, target_port=8080, node_port=30080)],
        endpoints=_eps("web", "bc"),
    )
    return _cluster([svc]), _opts()


def loadbalancer_source_ranges() -> tuple[Cluster, ProxierOptions]:
    svc = Service(
        namespace="shop",
        name="frontend",
        type="LoadBalancer",
        cluster_ips=[service_ip("ipv4", 3)],
        ports=[ServicePort(name="https", port=443, target_port=8443, node_port=30443)],
        lb_ingress_ips=["203.0.113.10"],
        # The second range contains the node IP, which adds the "-s VIP" rule.
        lb_source_ranges=["198.51.100.0/25", "192.168.0.0/16"],
        endpoints=_eps("frontend", "abc"),
    )
    return _cluster([svc]), _opts()


def external_ips() -> tuple[Cluster, ProxierOptions]:
    svc = Service(
        namespace="default",
        name="legacy-gw",
        cluster_ips=[service_ip("ipv4", 4)],
        ports=[ServicePort(name="http", port=8080, target_port=8080)],
        external_ips=["198.51.100.20", "198.51.100.21"],
        endpoints=_eps("gw", "bc"),
    )
    return _cluster([svc]), _opts()


def etp_local() -> tuple[Cluster, ProxierOptions]:
    with_local = Service(
        namespace="ingress",
        name="lb-local",
        type="LoadBalancer",
        cluster_ips=[service_ip("ipv4", 5)],
        ports=[ServicePort(name="http", port=80, target_port=8080, node_port=30500)],
        lb_ingress_ips=["203.0.113.20"],
        external_traffic_policy="Local",
        health_check_node_port=32001,
        endpoints=_eps("ing", "abc"),
    )
    without_local = Service(
        namespace="ingress",
        name="lb-remote-only",
        type="LoadBalancer",
        cluster_ips=[service_ip("ipv4", 6)],
        ports=[ServicePort(name="http", port=80, target_port=8080, node_port=30501)],
        lb_ingress_ips=["203.0.113.21"],
        external_traffic_policy="Local",
        health_check_node_port=32002,
        endpoints=_eps("ing2", "bc"),
    )
    np_local = Service(
        namespace="ingress",
        name="np-local",
        type="NodePort",
        cluster_ips=[service_ip("ipv4", 7)],
        ports=[ServicePort(name="", port=80, target_port=8080, node_port=30502)],
        external_traffic_policy="Local",
        endpoints=_eps("np", "ab"),
    )
    return _cluster([with_local, without_local, np_local]), _opts()


def itp_local() -> tuple[Cluster, ProxierOptions]:
    with_local = Service(
        namespace="monitoring",
        name="node-agent",
        cluster_ips=[service_ip("ipv4", 8)],
        ports=[ServicePort(name="metrics", port=9100, target_port=9100)],
        internal_traffic_policy="Local",
        endpoints=_eps("agent", "abc"),
    )
    without_local = Service(
        namespace="monitoring",
        name="remote-agent",
        cluster_ips=[service_ip("ipv4", 9)],
        ports=[ServicePort(name="metrics", port=9100, target_port=9100)],
        internal_traffic_policy="Local",
        endpoints=_eps("ragent", "bc"),
    )
    return _cluster([with_local, without_local]), _opts()


def session_affinity() -> tuple[Cluster, ProxierOptions]:
    svc = Service(
        namespace="payments",
        name="sticky",
        cluster_ips=[service_ip("ipv4", 10)],
        ports=[ServicePort(name="http", port=80, target_port=8080)],
        session_affinity="ClientIP",
        endpoints=_eps("sticky", "abc"),
    )
    short = Service(
        namespace="payments",
        name="sticky-short",
        type="NodePort",
        cluster_ips=[service_ip("ipv4", 11)],
        ports=[ServicePort(name="", port=80, target_port=8080, node_port=30600)],
        session_affinity="ClientIP",
        affinity_timeout=600,
        endpoints=_eps("sticky2", "ab"),
    )
    return _cluster([svc, short]), _opts()


def no_endpoints() -> tuple[Cluster, ProxierOptions]:
    svc = Service(
        namespace="default",
        name="empty",
        type="LoadBalancer",
        cluster_ips=[service_ip("ipv4", 12)],
        ports=[ServicePort(name="http", port=80, target_port=8080, node_port=30700)],
        lb_ingress_ips=["203.0.113.30"],
        external_ips=["198.51.100.30"],
        endpoints=[],
    )
    not_ready = Service(
        namespace="default",
        name="not-ready",
        cluster_ips=[service_ip("ipv4", 13)],
        ports=[ServicePort(name="http", port=80, target_port=8080)],
        endpoints=_eps("nr", "ab", ready=False, serving=False),
    )
    return _cluster([svc, not_ready]), _opts()


def terminating() -> tuple[Cluster, ProxierOptions]:
    only_terminating = Service(
        namespace="default",
        name="draining",
        cluster_ips=[service_ip("ipv4", 14)],
        ports=[ServicePort(name="http", port=80, target_port=8080)],
        endpoints=(
            _eps("drain", "ab", ready=False, serving=True, terminating=True)
            + _eps("drain", "c", ready=False, serving=False, terminating=True, first_host=20)
        ),
    )
    mixed = Service(
        namespace="default",
        name="rolling",
        type="NodePort",
        cluster_ips=[service_ip("ipv4", 15)],
        ports=[ServicePort(name="http", port=80, target_port=8080, node_port=30800)],
        external_traffic_policy="Local",
        endpoints=(
            _eps("roll", "a", ready=False, serving=True, terminating=True)
            + _eps("roll", "bc", first_host=30)
        ),
    )
    return _cluster([only_terminating, mixed]), _opts()


def masquerade_all() -> tuple[Cluster, ProxierOptions]:
    cluster, _ = clusterip()
    cluster.services.append(_kube_dns())
    return cluster, _opts(masquerade_all=True)


def localhost_nodeports() -> tuple[Cluster, ProxierOptions]:
    cluster, _ = nodeport()
    return cluster, _opts(localhost_nodeports=True)


def no_localhost_nodeports() -> tuple[Cluster, ProxierOptions]:
    cluster, _ = nodeport()
    return cluster, _opts(localhost_nodeports=False)


def nodeport_addresses() -> tuple[Cluster, ProxierOptions]:
    cluster, _ = nodeport()
    return cluster, _opts(nodeport_addresses=("192.168.0.0/24", "127.0.0.0/8"))


def multi_port() -> tuple[Cluster, ProxierOptions]:
    svc = Service(
        namespace="data",
        name="db",
        type="NodePort",
        cluster_ips=[service_ip("ipv4", 16)],
        ports=[
            ServicePort(name="pg", port=5432, target_port=5432, node_port=30432),
            ServicePort(name="metrics", port=9187, target_port=9187, node_port=30433),
        ],
        endpoints=_eps("db", "abc"),
    )
    return _cluster([_kube_dns(), svc]), _opts()


def udp_sctp() -> tuple[Cluster, ProxierOptions]:
    svc = Service(
        namespace="telecom",
        name="signalling",
        type="NodePort",
        cluster_ips=[service_ip("ipv4", 17)],
        ports=[
            ServicePort(name="sip", protocol="UDP", port=5060, target_port=5060, node_port=30560),
            ServicePort(name="m3ua", protocol="SCTP", port=2905, target_port=2905, node_port=30905),
        ],
        endpoints=_eps("sig", "ab"),
    )
    return _cluster([svc]), _opts()


def ipv6() -> tuple[Cluster, ProxierOptions]:
    fams: tuple[Family, ...] = ("ipv6",)
    web = Service(
        namespace="default",
        name="web6",
        type="LoadBalancer",
        cluster_ips=[service_ip("ipv6", 1)],
        ports=[ServicePort(name="http", port=80, target_port=8080, node_port=30680)],
        lb_ingress_ips=["2001:db8:203::10"],
        lb_source_ranges=["2001:db8:1::/48"],
        external_ips=["2001:db8:198::20"],
        endpoints=_eps("web6", "abc", fams),
    )
    empty = Service(
        namespace="default",
        name="empty6",
        cluster_ips=[service_ip("ipv6", 2)],
        ports=[ServicePort(name="http", port=80, target_port=8080)],
    )
    return _cluster([web, empty], fams), _opts()


def dual_stack() -> tuple[Cluster, ProxierOptions]:
    fams: tuple[Family, ...] = ("ipv4", "ipv6")
    svc = Service(
        namespace="default",
        name="web-ds",
        type="NodePort",
        cluster_ips=[service_ip("ipv4", 20), service_ip("ipv6", 20)],
        ports=[ServicePort(name="http", port=80, target_port=8080, node_port=30880)],
        session_affinity="ClientIP",
        endpoints=_eps("ds", "abc", fams),
    )
    return _cluster([svc], fams), _opts()


def kitchen_sink() -> tuple[Cluster, ProxierOptions]:
    services: list[Service] = []
    for build in (
        clusterip,
        nodeport,
        loadbalancer_source_ranges,
        external_ips,
        etp_local,
        itp_local,
        session_affinity,
        no_endpoints,
        terminating,
        udp_sctp,
    ):
        services.extend(build()[0].services)
    services.append(_kube_dns())
    multi = multi_port()[0].services[1]
    services.append(multi)
    default_kubernetes = Service(
        namespace="default",
        name="kubernetes",
        cluster_ips=[service_ip("ipv4", -9)],  # 10.96.0.1, as the apiserver assigns it
        ports=[ServicePort(name="https", port=443, target_port=6443)],
        endpoints=[Endpoint(ip=node_ip("ipv4", 0), node_name=None)],
    )
    services.append(default_kubernetes)
    return _cluster(services), _opts()


SCENARIOS: dict[str, Scenario] = {
    "clusterip": clusterip,
    "nodeport": nodeport,
    "loadbalancer-source-ranges": loadbalancer_source_ranges,
    "external-ips": external_ips,
    "etp-local": etp_local,
    "itp-local": itp_local,
    "session-affinity": session_affinity,
    "no-endpoints": no_endpoints,
    "terminating": terminating,
    "masquerade-all": masquerade_all,
    "localhost-nodeports": localhost_nodeports,
    "no-localhost-nodeports": no_localhost_nodeports,
    "nodeport-addresses": nodeport_addresses,
    "multi-port": multi_port,
    "udp-sctp": udp_sctp,
    "ipv6": ipv6,
    "dual-stack": dual_stack,
    "kitchen-sink": kitchen_sink,
}


def example() -> tuple[Cluster, ProxierOptions]:
    """The small cluster bundled with kpa as its example (kpa/data/example)."""
    web = Service(
        namespace="shop",
        name="web",
        type="NodePort",
        cluster_ips=[service_ip("ipv4", 1)],
        ports=[ServicePort(name="http", port=80, target_port=8080, node_port=30080)],
        endpoints=_eps("web", "abc"),
    )
    frontend = Service(
        namespace="shop",
        name="frontend",
        type="LoadBalancer",
        cluster_ips=[service_ip("ipv4", 2)],
        ports=[ServicePort(name="https", port=443, target_port=8443, node_port=30443)],
        lb_ingress_ips=["203.0.113.10"],
        lb_source_ranges=["198.51.100.0/24"],
        endpoints=_eps("frontend", "ab"),
    )
    cart = Service(
        namespace="shop",
        name="cart",
        cluster_ips=[service_ip("ipv4", 3)],
        ports=[ServicePort(name="grpc", port=9090, target_port=9090)],
        session_affinity="ClientIP",
        endpoints=_eps("cart", "bc"),
    )
    checkout = Service(
        namespace="shop",
        name="checkout",
        cluster_ips=[service_ip("ipv4", 4)],
        ports=[ServicePort(name="http", port=80, target_port=8080)],
    )
    return _cluster([_kube_dns(0), web, frontend, cart, checkout]), _opts()
