"""Render the nftables transaction kube-proxy (nftables mode) writes for a node.

:func:`render_nft` returns ``nft -f`` input equal to the transaction kube-proxy
sends on its first full sync on a fresh node: table ``ip kube-proxy`` (or
``ip6 kube-proxy``), its base chains, the dispatch maps and sets, and one
group of chains per Service port. The layout follows kube-proxy's nftables
proxier as of v1.32-v1.34 (the ``filter-prerouting`` / ``filter-output-post-dnat``
base chains at priorities dstnat-10 / dstnat+10 and the ``cluster-ips-check``
chain); the operations are emitted in kube-proxy's order, with Services
walked sorted by ServicePortName instead of in Go's random map order.

Differences from kube-proxy's iptables mode that the renderer reproduces:

* an empty ``--nodeport-addresses`` means ``primary`` (only the node IP
  accepts NodePorts), which kube-proxy applies as the nftables-mode default;
* there are no localhost NodePorts: ``ProxierOptions.localhost_nodeports``
  and ``nfacct`` are ignored, and loopback addresses are never put in
  ``nodeport-ips``;
* masquerading is always ``fully-random``; ``random_fully`` and
  ``conntrack_tcp_be_liberal`` do not apply;
* rule comments are never dropped for large clusters;
* ``loadBalancerSourceRanges`` install the firewall chain even when the
  Service has no endpoints.

Endpoint selection (ready / serving-terminating fallback, Local policies)
reuses :func:`kpa.gen.iptables.port_views` and
:func:`kpa.k8s.kubeproxy.categorize_endpoints`, so both writers pick the same
endpoints for the same cluster.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from pathlib import Path

import click

from kpa.gen.cluster import Cluster, Family, random_cluster
from kpa.gen.iptables import PortView, categorize_endpoints, port_views
from kpa.gen.options import ProxierOptions
from kpa.k8s import naming
from kpa.k8s.kubeproxy import EndpointInfo

TABLE = "kube-proxy"
TABLE_COMMENT = "rules for kube-proxy"

# Fixed chain, set and map names of kube-proxy's table.
SERVICES_CHAIN = "services"
SERVICE_IPS_MAP = "service-ips"
SERVICE_NODEPORTS_MAP = "service-nodeports"
NODEPORT_IPS_SET = "nodeport-ips"
CLUSTER_IPS_SET = "cluster-ips"
SERVICE_ENDPOINTS_CHECK_CHAIN = "service-endpoints-check"
NODEPORT_ENDPOINTS_CHECK_CHAIN = "nodeport-endpoints-check"
NO_ENDPOINT_SERVICES_MAP = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS_MAP = "no-endpoint-nodeports"
REJECT_CHAIN = "reject-chain"
CLUSTER_IPS_CHECK_CHAIN = "cluster-ips-check"
FIREWALL_IPS_MAP = "firewall-ips"
FIREWALL_CHECK_CHAIN = "firewall-check"
MARK_MASQ_CHAIN = "mark-for-masquerade"
MASQUERADING_CHAIN = "masquerading"

# (name, type, hook, priority). kube-proxy asks for "dstnat-10" etc.; its
# nftables library writes the numeric value, which older nft binaries need.
BASE_CHAINS: tuple[tuple[str, str, str, int], ...] = (
    # Filtering must see pre-DNAT destinations, so it runs just before DNAT.
    ("filter-prerouting", "filter", "prerouting", -110),
    ("filter-input", "filter", "input", -110),
    ("filter-forward", "filter", "forward", -110),
    ("filter-output", "filter", "output", -110),
    # ...except the ClusterIP checks on output, which need to run after DNAT.
    ("filter-output-post-dnat", "filter", "output", -90),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
)

# (destination chain, source base chain, match before the jump), in kube-proxy's order.
JUMP_CHAINS: tuple[tuple[str, str, str], ...] = (
    # reject is only allowed in input/forward/output hooks on older kernels,
    # hence no endpoints check from prerouting.
    (NODEPORT_ENDPOINTS_CHECK_CHAIN, "filter-input", "ct state new"),
    (SERVICE_ENDPOINTS_CHECK_CHAIN, "filter-input", "ct state new"),
    (SERVICE_ENDPOINTS_CHECK_CHAIN, "filter-forward", "ct state new"),
    (SERVICE_ENDPOINTS_CHECK_CHAIN, "filter-output", "ct state new"),
    (FIREWALL_CHECK_CHAIN, "filter-prerouting", "ct state new"),
    (FIREWALL_CHECK_CHAIN, "filter-output", "ct state new"),
    (SERVICES_CHAIN, "nat-output", ""),
    (SERVICES_CHAIN, "nat-prerouting", ""),
    (MASQUERADING_CHAIN, "nat-postrouting", ""),
    (CLUSTER_IPS_CHECK_CHAIN, "filter-forward", "ct state new"),
    (CLUSTER_IPS_CHECK_CHAIN, "filter-output-post-dnat", "ct state new"),
)

_NFT_FAMILY: dict[str, str] = {"ipv4": "ip", "ipv6": "ip6"}
_ADDR_TYPE: dict[str, str] = {"ipv4": "ipv4_addr", "ipv6": "ipv6_addr"}
_NO_LOCALHOST: dict[str, str] = {"ipv4": "ip daddr != 127.0.0.0/8", "ipv6": "ip6 daddr != ::1"}
_SUFFIX: dict[str, str] = {"ipv4": "v4", "ipv6": "v6"}

# Scenarios whose feature kube-proxy's nftables mode does not have.
UNSUPPORTED_SCENARIOS: dict[str, str] = {
    "localhost-nodeports": "nftables mode never accepts NodePort traffic on 127.0.0.1",
}


def _quote(text: str) -> str:
    """A double-quoted nft string (kube-proxy's names never need escapes beyond these)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Transaction:
    """Accumulates nft commands in the order kube-proxy queues them."""

    def __init__(self, family: Family) -> None:
        self.nfam = _NFT_FAMILY[family]
        self.lines: list[str] = []
        self._where = f"{self.nfam} {TABLE}"
        # Mirrors kube-proxy's per-container bookkeeping: a key is written once.
        self._elements: dict[str, dict[str, str]] = {}

    def add_table(self) -> None:
        self.lines.append(f"add table {self._where} {{ comment {_quote(TABLE_COMMENT)} ; }}")

    def add_chain(self, name: str, body: str = "") -> None:
        suffix = f" {{ {body} }}" if body else ""
        self.lines.append(f"add chain {self._where} {name}{suffix}")

    def flush_chain(self, name: str) -> None:
        self.lines.append(f"flush chain {self._where} {name}")

    def delete_chain(self, name: str) -> None:
        self.lines.append(f"delete chain {self._where} {name}")

    def ensure_chain(self, name: str, created: set[str]) -> None:
        """Create ``name`` empty, once per transaction (kube-proxy's ensureChain)."""
        if name in created:
            return
        created.add(name)
        self.add_chain(name)
        self.flush_chain(name)

    def add_rule(self, chain: str, rule: str, comment: str | None = None) -> None:
        tail = f" comment {_quote(comment)}" if comment is not None else ""
        self.lines.append(f"add rule {self._where} {chain} {rule}{tail}")

    def add_set(self, kind: str, name: str, body: str) -> None:
        self.lines.append(f"add {kind} {self._where} {name} {{ {body} }}")

    def flush_set(self, kind: str, name: str) -> None:
        self.lines.append(f"flush {kind} {self._where} {name}")

    def delete_set(self, kind: str, name: str) -> None:
        self.lines.append(f"delete {kind} {self._where} {name}")

    def element(
        self,
        container: str,
        key: str,
        value: str | None = None,
        comment: str | None = None,
    ) -> None:
        """Add an element unless an identical one was already queued."""
        seen = self._elements.setdefault(container, {})
        val = value or ""
        previous = seen.get(key)
        if previous == val:
            return
        if previous is not None:
            # Same key, new verdict: kube-proxy deletes and re-adds.
            self.lines.append(f"delete element {self._where} {container} {{ {key} }}")
        seen[key] = val
        text = key
        if comment is not None:
            text += f" comment {_quote(comment)}"
        if value is not None:
            text += f" : {value}"
        self.lines.append(f"add element {self._where} {container} {{ {text} }}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _nodeport_ips(options: ProxierOptions, node_ip: str | None, family: Family) -> list[str] | None:
    """The ``nodeport-ips`` elements, or None when every local address accepts NodePorts.

    kube-proxy's nftables mode turns an empty ``--nodeport-addresses`` into
    ``primary``, which stands for the node IP of each family.
    """
    entries = options.nodeport_addresses or ("primary",)
    cidrs: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for entry in entries:
        if entry == "primary":
            if node_ip and not ipaddress.ip_address(node_ip).is_loopback:
                cidrs.append(ipaddress.ip_network(node_ip))
            continue
        net = ipaddress.ip_network(entry, strict=False)
        if (net.version == 6) == (family == "ipv6"):
            cidrs.append(net)
    if not cidrs or any(net.prefixlen == 0 for net in cidrs):
        return None
    # The node's local addresses are its node IP and loopback; kube-proxy
    # refuses loopback here because localhost NodePorts are not supported.
    if node_ip and any(ipaddress.ip_address(node_ip) in net for net in cidrs):
        return [node_ip]
    return []


def _setup(
    tx: _Transaction,
    cluster: Cluster,
    options: ProxierOptions,
    family: Family,
    node_ip: str | None,
) -> None:
    """kube-proxy's setupNFTables: everything that does not depend on Services."""
    ipx = tx.nfam
    addr_type = _ADDR_TYPE[family]
    mark = options.masquerade_mark
    no_localhost = _NO_LOCALHOST[family]

    tx.add_table()
    # The first sync deletes any old base chains so changed priorities apply.
    for name, _, _, _ in BASE_CHAINS:
        tx.add_chain(name)
        tx.delete_chain(name)
    for name, ctype, hook, priority in BASE_CHAINS:
        tx.add_chain(name, f"type {ctype} hook {hook} priority {priority} ;")
        tx.flush_chain(name)

    created: set[str] = set()
    for dst, src, match in JUMP_CHAINS:
        tx.ensure_chain(dst, created)
        tx.add_rule(src, f"{match} jump {dst}" if match else f"jump {dst}")
    for name in (SERVICES_CHAIN, CLUSTER_IPS_CHECK_CHAIN, MASQUERADING_CHAIN, MARK_MASQ_CHAIN):
        tx.ensure_chain(name, created)

    tx.add_rule(MARK_MASQ_CHAIN, f"mark set mark or {mark}")
    tx.add_rule(MASQUERADING_CHAIN, f"mark and {mark} == 0 return")
    tx.add_rule(MASQUERADING_CHAIN, f"mark set mark xor {mark}")
    tx.add_rule(MASQUERADING_CHAIN, "masquerade fully-random")

    tx.add_set("set", CLUSTER_IPS_SET, f'type {addr_type} ; comment "Active ClusterIPs" ;')
    tx.add_rule(
        CLUSTER_IPS_CHECK_CHAIN,
        f"{ipx} daddr @{CLUSTER_IPS_SET} reject",
        "Reject traffic to invalid ports of ClusterIPs",
    )
    service_cidr = cluster.service_cidrs.get(family)
    if service_cidr:
        # Only known when kube-proxy watches ServiceCIDR objects (default from v1.33).
        tx.add_rule(
            CLUSTER_IPS_CHECK_CHAIN,
            f"{ipx} daddr {{ {service_cidr} }} drop",
            "Drop traffic to unallocated ClusterIPs",
        )

    nodeport_ips = _nodeport_ips(options, node_ip, family)
    tx.add_set(
        "set", NODEPORT_IPS_SET, f'type {addr_type} ; comment "IPs that accept NodePort traffic" ;'
    )
    if nodeport_ips is None:
        # kube-proxy adds then deletes, so the delete cannot fail on a missing set.
        tx.delete_set("set", NODEPORT_IPS_SET)
    else:
        tx.flush_set("set", NODEPORT_IPS_SET)
        for ip in nodeport_ips:
            tx.element(NODEPORT_IPS_SET, ip)

    tx.add_set(
        "map",
        NO_ENDPOINT_SERVICES_MAP,
        f"type {addr_type} . inet_proto . inet_service : verdict ;"
        ' comment "vmap to drop or reject packets to services with no endpoints" ;',
    )
    tx.add_set(
        "map",
        NO_ENDPOINT_NODEPORTS_MAP,
        "type inet_proto . inet_service : verdict ;"
        ' comment "vmap to drop or reject packets to service nodeports with no endpoints" ;',
    )
    tx.add_chain(
        REJECT_CHAIN, 'comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ;'
    )
    tx.flush_chain(REJECT_CHAIN)
    tx.add_rule(REJECT_CHAIN, "reject")
    tx.add_rule(
        SERVICE_ENDPOINTS_CHECK_CHAIN,
        f"{ipx} daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES_MAP}",
    )
    nodeport_dst = no_localhost if nodeport_ips is None else f"{ipx} daddr @{NODEPORT_IPS_SET}"
    tx.add_rule(
        NODEPORT_ENDPOINTS_CHECK_CHAIN,
        f"{nodeport_dst} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS_MAP}",
    )

    tx.add_set(
        "map",
        FIREWALL_IPS_MAP,
        f"type {addr_type} . inet_proto . inet_service : verdict ;"
        ' comment "destinations that are subject to LoadBalancerSourceRanges" ;',
    )
    tx.ensure_chain(FIREWALL_CHECK_CHAIN, created)
    tx.add_rule(
        FIREWALL_CHECK_CHAIN, f"{ipx} daddr . meta l4proto . th dport vmap @{FIREWALL_IPS_MAP}"
    )

    tx.add_set(
        "map",
        SERVICE_IPS_MAP,
        f"type {addr_type} . inet_proto . inet_service : verdict ;"
        ' comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ;',
    )
    tx.add_set(
        "map",
        SERVICE_NODEPORTS_MAP,
        'type inet_proto . inet_service : verdict ; comment "NodePort traffic" ;',
    )
    tx.add_rule(SERVICES_CHAIN, f"{ipx} daddr . meta l4proto . th dport vmap @{SERVICE_IPS_MAP}")
    if nodeport_ips is None:
        nodeport_match = f"fib daddr type local {no_localhost}"
    else:
        nodeport_match = f"{ipx} daddr @{NODEPORT_IPS_SET}"
    tx.add_rule(
        SERVICES_CHAIN, f"{nodeport_match} meta l4proto . th dport vmap @{SERVICE_NODEPORTS_MAP}"
    )

    tx.flush_set("set", CLUSTER_IPS_SET)
    for name in (
        SERVICE_IPS_MAP,
        FIREWALL_IPS_MAP,
        NO_ENDPOINT_SERVICES_MAP,
        NO_ENDPOINT_NODEPORTS_MAP,
        SERVICE_NODEPORTS_MAP,
    ):
        tx.flush_set("map", name)


class _EndpointNames:
    """nftables names for one endpoint of one Service port."""

    __slots__ = ("affinity_set", "chain", "info")

    def __init__(self, view: PortView, info: EndpointInfo) -> None:
        base = naming.nft_endpoint_base(view.name, view.protocol, info.endpoint)
        self.info = info
        self.chain = naming.NFT_PREFIXES["endpoint"] + base
        self.affinity_set = naming.NFT_PREFIXES["affinity"] + base


def _write_service(
    tx: _Transaction,
    view: PortView,
    options: ProxierOptions,
    family: Family,
    node_ip: str | None,
    local_cidr: str | None,
    active: set[str],
) -> None:
    """One iteration of kube-proxy's per-ServicePort loop."""
    ipx = tx.nfam
    proto = view.protocol
    port = view.port.port
    spn = view.name
    svc = view.service
    cat = categorize_endpoints(view)
    affinity = svc.session_affinity == "ClientIP"

    base = naming.nft_service_base(spn, proto)
    cluster_chain = naming.NFT_PREFIXES["service"] + base
    local_chain = naming.NFT_PREFIXES["local"] + base
    ext_chain = naming.NFT_PREFIXES["external"] + base
    fw_chain = naming.NFT_PREFIXES["firewall"] + base
    names = {info.endpoint: _EndpointNames(view, info) for info in cat.reachable}
    for info in cat.cluster + cat.local:
        if info.endpoint not in names:
            names[info.endpoint] = _EndpointNames(view, info)

    for info in cat.reachable:
        tx.ensure_chain(names[info.endpoint].chain, active)

    uses_cluster_chain = bool(cat.cluster) and view.uses_cluster_endpoints
    if uses_cluster_chain:
        tx.ensure_chain(cluster_chain, active)
    uses_local_chain = bool(cat.local) and view.uses_local_endpoints
    if uses_local_chain:
        tx.ensure_chain(local_chain, active)

    has_endpoints = cat.has_any
    internal_chain = cluster_chain
    has_internal = has_endpoints
    if view.internal_policy_local:
        internal_chain = local_chain
        has_internal = bool(cat.local)
    external_policy_chain = cluster_chain
    has_external = has_endpoints
    if view.external_policy_local:
        external_policy_chain = local_chain
        has_external = bool(cat.local)

    # Needed even without external endpoints, for the short-circuit rules.
    uses_ext_chain = has_endpoints and view.externally_accessible
    if uses_ext_chain:
        tx.ensure_chain(ext_chain, active)

    reject = f"goto {REJECT_CHAIN}"
    internal_verdict = reject if not has_endpoints else "drop"
    external_verdict = internal_verdict

    cip = view.cluster_ip
    tx.element(CLUSTER_IPS_SET, cip)
    if has_internal:
        tx.element(SERVICE_IPS_MAP, f"{cip} . {proto} . {port}", f"goto {internal_chain}")
    else:
        tx.element(NO_ENDPOINT_SERVICES_MAP, f"{cip} . {proto} . {port}", internal_verdict, spn)

    for eip in view.external_ips:
        if has_endpoints:
            tx.element(SERVICE_IPS_MAP, f"{eip} . {proto} . {port}", f"goto {ext_chain}")
        if not has_external:
            tx.element(NO_ENDPOINT_SERVICES_MAP, f"{eip} . {proto} . {port}", external_verdict, spn)

    uses_fw_chain = bool(view.lb_vips) and bool(view.source_ranges)
    if uses_fw_chain:
        tx.ensure_chain(fw_chain, active)
    for vip in view.lb_vips:
        if has_endpoints:
            tx.element(SERVICE_IPS_MAP, f"{vip} . {proto} . {port}", f"goto {ext_chain}")
        if uses_fw_chain:
            tx.element(FIREWALL_IPS_MAP, f"{vip} . {proto} . {port}", f"goto {fw_chain}")
    if not has_external:
        for vip in view.lb_vips:
            tx.element(NO_ENDPOINT_SERVICES_MAP, f"{vip} . {proto} . {port}", external_verdict, spn)

    node_port = view.port.node_port
    if node_port:
        if has_endpoints:
            # NodePorts are not subject to loadBalancerSourceRanges.
            tx.element(SERVICE_NODEPORTS_MAP, f"{proto} . {node_port}", f"goto {ext_chain}")
        if not has_external:
            tx.element(NO_ENDPOINT_NODEPORTS_MAP, f"{proto} . {node_port}", external_verdict, spn)

    if has_internal:
        dest = f"{ipx} daddr {cip} {proto} dport {port}"
        if options.masquerade_all:
            tx.add_rule(internal_chain, f"{dest} jump {MARK_MASQ_CHAIN}")
        elif local_cidr is not None:
            # Off-cluster clients routed to a ClusterIP may be bounced to
            # another node, so they must be masqueraded.
            tx.add_rule(
                internal_chain, f"{dest} {ipx} saddr != {local_cidr} jump {MARK_MASQ_CHAIN}"
            )

    if uses_ext_chain:
        if not view.external_policy_local:
            # Cluster policy may cross nodes, which needs SNAT.
            tx.add_rule(ext_chain, f"jump {MARK_MASQ_CHAIN}")
        else:
            if local_cidr is not None:
                # Pods reaching an external address ignore traffic policy, as
                # if they had gone out to the load balancer and back.
                tx.add_rule(
                    ext_chain,
                    f"{ipx} saddr {local_cidr} goto {cluster_chain}",
                    "short-circuit pod traffic",
                )
            tx.add_rule(
                ext_chain,
                f"fib saddr type local jump {MARK_MASQ_CHAIN}",
                "masquerade local traffic",
            )
            tx.add_rule(
                ext_chain,
                f"fib saddr type local goto {cluster_chain}",
                "short-circuit local traffic",
            )
        if has_external:
            tx.add_rule(ext_chain, f"goto {external_policy_chain}")

    if uses_fw_chain:
        sources = list(view.source_ranges)
        allow_from_node = node_ip is not None and any(
            ipaddress.ip_address(node_ip) in ipaddress.ip_network(cidr)
            for cidr in view.source_ranges
        )
        if allow_from_node:
            # A VIP routed locally loops back with itself as the source.
            sources.extend(view.lb_vips)
        tx.add_rule(fw_chain, f"{ipx} saddr != {{ {' , '.join(sources)} }} drop")

    if affinity:
        addr_type = _ADDR_TYPE[family]
        timeout = svc.affinity_timeout
        for info in cat.reachable:
            # "dynamic" is set up front: the kernel adds it anyway, and a
            # later re-add with different flags would fail.
            tx.add_set(
                "set",
                names[info.endpoint].affinity_set,
                f"type {addr_type} ; flags dynamic,timeout ; timeout {timeout}s ;",
            )

    if uses_cluster_chain:
        _write_service_to_endpoints(tx, cluster_chain, cat.cluster, names, affinity)
    if uses_local_chain:
        _write_service_to_endpoints(tx, local_chain, cat.local, names, affinity)

    for info in cat.reachable:
        ep = names[info.endpoint]
        tx.add_rule(ep.chain, f"{ipx} saddr {info.ip} jump {MARK_MASQ_CHAIN}")
        if affinity:
            tx.add_rule(ep.chain, f"update @{ep.affinity_set} {{ {ipx} saddr }}")
        tx.add_rule(ep.chain, f"meta l4proto {proto} dnat to {info.endpoint}")


def _write_service_to_endpoints(
    tx: _Transaction,
    chain: str,
    endpoints: tuple[EndpointInfo, ...],
    names: dict[str, _EndpointNames],
    affinity: bool,
) -> None:
    if affinity:
        for info in endpoints:
            ep = names[info.endpoint]
            tx.add_rule(chain, f"{tx.nfam} saddr @{ep.affinity_set} goto {ep.chain}")
    arms = " , ".join(
        f"{i} : goto {names[info.endpoint].chain}" for i, info in enumerate(endpoints)
    )
    tx.add_rule(chain, f"numgen random mod {len(endpoints)} vmap {{ {arms} }}")


def render_nft(cluster: Cluster, options: ProxierOptions, family: Family = "ipv4") -> str:
    """The ``nft -f`` transaction kube-proxy's ``family`` proxier writes on a fresh node."""
    if family not in _NFT_FAMILY:
        raise ValueError(f"bad family {family!r}")
    node_ip = cluster.node(options.node_name).ip(family)
    local_cidr = next(
        (
            str(ipaddress.ip_network(c, strict=False))
            for c in options.cluster_cidr
            if (":" in c) == (family == "ipv6")
        ),
        None,
    )
    tx = _Transaction(family)
    _setup(tx, cluster, options, family, node_ip)
    active: set[str] = set()
    for view in port_views(cluster, options, family):
        _write_service(tx, view, options, family, node_ip, local_cidr, active)
    return tx.text()


def render_random_nft(
    seed: int,
    services: int,
    endpoints_per_service: int,
    family: Family = "ipv4",
    *,
    families: Iterable[Family] | None = None,
) -> str:
    """kube-proxy's nftables payload for :func:`kpa.gen.cluster.random_cluster` (node-0's view).

    ``families`` are the cluster's families (default: just ``family``); the
    payload is the one written by the ``family`` proxier. Meant for
    benchmarks, which build large payloads on the fly instead of storing them.
    """
    fams = tuple(families) if families is not None else (family,)
    if family not in fams:
        raise ValueError(f"{family} is not among the cluster families {fams}")
    cluster = random_cluster(seed, services, endpoints_per_service, fams)
    return render_nft(cluster, ProxierOptions(node_name="node-0"), family)


def nft_scenarios() -> list[str]:
    """Names of the scenarios kube-proxy's nftables mode can express."""
    from kpa.gen.scenarios import SCENARIOS

    return [name for name in SCENARIOS if name not in UNSUPPORTED_SCENARIOS]


def write_fixtures(out_dir: Path, only: Iterable[str] = ()) -> list[Path]:
    """Capture ``<scenario>.<v4|v6>.nft`` and ``.json`` from the real nft for each scenario."""
    from kpa.gen.nft_capture import capture_nft
    from kpa.gen.scenarios import SCENARIOS

    wanted = set(only)
    unknown = wanted - set(SCENARIOS)
    if unknown:
        raise ValueError(f"unknown scenarios: {', '.join(sorted(unknown))}")
    unsupported = wanted & set(UNSUPPORTED_SCENARIOS)
    if unsupported:
        raise ValueError(f"not expressible in nftables mode: {', '.join(sorted(unsupported))}")
    written: list[Path] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in nft_scenarios():
        if wanted and name not in wanted:
            continue
        cluster, options = SCENARIOS[name]()
        for fam in cluster.families:
            payload = render_nft(cluster, options, fam)
            for ext, as_json in (("nft", False), ("json", True)):
                path = out_dir / f"{name}.{_SUFFIX[fam]}.{ext}"
                path.write_text(capture_nft(payload, json=as_json))
                written.append(path)
    return written


@click.group()
def main() -> None:
    """kube-proxy nftables-mode payloads and their real-kernel fixtures."""


@main.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("tests/fixtures/nft/kube-proxy"),
    show_default=True,
)
@click.option("--only", multiple=True, help="Regenerate just these scenarios (repeatable).")
def fixtures(out_dir: Path, only: tuple[str, ...]) -> None:
    """Load each scenario into a scratch netns and save what ``nft list ruleset`` prints."""
    from kpa.gen.capture import CaptureError

    try:
        for path in write_fixtures(out_dir, only):
            click.echo(f"wrote {path}")
    except ValueError as error:
        raise click.UsageError(str(error)) from error
    except CaptureError as error:
        raise click.ClickException(str(error)) from error


@main.command("render")
@click.argument("scenario")
@click.option("--family", type=click.Choice(["ipv4", "ipv6"]), default="ipv4", show_default=True)
def render_cmd(scenario: str, family: str) -> None:
    """Print the ``nft -f`` payload of one scenario."""
    from kpa.gen.scenarios import SCENARIOS

    if scenario not in SCENARIOS:
        raise click.UsageError(f"unknown scenario {scenario!r}")
    cluster, options = SCENARIOS[scenario]()
    fam: Family = "ipv6" if family == "ipv6" else "ipv4"
    click.echo(render_nft(cluster, options, fam), nl=False)


@main.command("random")
@click.option("--seed", type=int, required=True)
@click.option("--services", type=int, required=True)
@click.option("--endpoints", type=int, required=True, help="Mean endpoints per Service.")
@click.option("--family", type=click.Choice(["ipv4", "ipv6"]), default="ipv4", show_default=True)
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), required=True)
def random_cmd(seed: int, services: int, endpoints: int, family: str, out_file: Path) -> None:
    """Write the nft payload of a random cluster (not loaded anywhere)."""
    fam: Family = "ipv6" if family == "ipv6" else "ipv4"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(render_random_nft(seed, services, endpoints, fam))
    click.echo(f"wrote {out_file}")


if __name__ == "__main__":
    main()
