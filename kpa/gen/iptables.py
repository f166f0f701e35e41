"""Render the iptables rules kube-proxy (iptables mode, v1.31-v1.34) keeps on a node.

The structure follows kube-proxy's ``syncProxyRules``: per Service port it
categorises endpoints (ready, serving-terminating fallback, local vs
cluster), then writes the filter REJECT/DROP rules, the KUBE-SERVICES /
KUBE-NODEPORTS entry rules, and the EXT/FW/SVC/SVL/SEP chains, in that
order. kube-proxy walks its Service map in Go's random map order; kpa walks
Services sorted by ServicePortName so output is reproducible.

Two renderers are offered:

* :func:`render_kube_proxy_payload` - exactly the text kube-proxy hands to
  ``iptables-restore --noflush`` on a full sync;
* :func:`render_restore` - the whole node state a fresh network namespace
  needs (built-in chain jumps that kube-proxy installs one by one with
  ``iptables -I``, kubelet's canary/hint chains, then the payload).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kpa.gen.cluster import Cluster, Endpoint, Family, Service, ServicePort, family_of
from kpa.gen.options import ProxierOptions
from kpa.k8s import kubeproxy, naming
from kpa.k8s.kubeproxy import (
    Categorized,
    EndpointInfo,
    TrafficPolicy,
    traffic_policy,
)

LARGE_CLUSTER_ENDPOINTS_THRESHOLD = 1000
NFACCT_CT_STATE_INVALID = "ct_state_invalid_dropped_pkts"
NFACCT_LOCALHOST_NODEPORT = "localhost_nps_accepted_pkts"

_BUILTIN_CHAINS = {
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
}

# (table, target chain, source chain, comment, extra args) in kube-proxy's
# order; each is installed with ``-I`` (prepend), so on a fresh node a
# source chain ends up holding them in reverse order.
_JUMPS: tuple[tuple[str, str, str, str, str], ...] = (
    (
        "filter",
        "KUBE-EXTERNAL-SERVICES",
        "INPUT",
        "kubernetes externally-visible service portals",
        "-m conntrack --ctstate NEW",
    ),
    (
        "filter",
        "KUBE-EXTERNAL-SERVICES",
        "FORWARD",
        "kubernetes externally-visible service portals",
        "-m conntrack --ctstate NEW",
    ),
    ("filter", "KUBE-NODEPORTS", "INPUT", "kubernetes health check service ports", ""),
    (
        "filter",
        "KUBE-SERVICES",
        "FORWARD",
        "kubernetes service portals",
        "-m conntrack --ctstate NEW",
    ),
    (
        "filter",
        "KUBE-SERVICES",
        "OUTPUT",
        "kubernetes service portals",
        "-m conntrack --ctstate NEW",
    ),
    ("filter", "KUBE-FORWARD", "FORWARD", "kubernetes forwarding rules", ""),
    (
        "filter",
        "KUBE-PROXY-FIREWALL",
        "INPUT",
        "kubernetes load balancer firewall",
        "-m conntrack --ctstate NEW",
    ),
    (
        "filter",
        "KUBE-PROXY-FIREWALL",
        "OUTPUT",
        "kubernetes load balancer firewall",
        "-m conntrack --ctstate NEW",
    ),
    (
        "filter",
        "KUBE-PROXY-FIREWALL",
        "FORWARD",
        "kubernetes load balancer firewall",
        "-m conntrack --ctstate NEW",
    ),
    ("nat", "KUBE-SERVICES", "OUTPUT", "kubernetes service portals", ""),
    ("nat", "KUBE-SERVICES", "PREROUTING", "kubernetes service portals", ""),
    ("nat", "KUBE-POSTROUTING", "POSTROUTING", "kubernetes postrouting rules", ""),
    # kube-proxy's copy of kubelet's firewall chain, jumped to without a comment.
    ("filter", "KUBE-FIREWALL", "INPUT", "", ""),
    ("filter", "KUBE-FIREWALL", "OUTPUT", "", ""),
)


@dataclass(frozen=True)
class PortView:
    """A Service port as the single-family proxier sees it."""

    service: Service
    port: ServicePort
    name: str  # ServicePortName string
    protocol: str  # lower-case
    cluster_ip: str
    external_ips: tuple[str, ...]
    lb_vips: tuple[str, ...]
    source_ranges: tuple[str, ...]
    endpoints: tuple[EndpointInfo, ...]

    @property
    def policy(self) -> TrafficPolicy:
        svc = self.service
        return traffic_policy(
            svc.type,
            self.port.node_port,
            self.external_ips,
            self.lb_vips,
            svc.external_traffic_policy,
            svc.internal_traffic_policy,
        )

    @property
    def externally_accessible(self) -> bool:
        return self.policy.externally_accessible

    @property
    def external_policy_local(self) -> bool:
        return self.policy.external_policy_local

    @property
    def internal_policy_local(self) -> bool:
        return self.policy.internal_policy_local

    @property
    def uses_cluster_endpoints(self) -> bool:
        return self.policy.uses_cluster_endpoints

    @property
    def uses_local_endpoints(self) -> bool:
        return self.policy.uses_local_endpoints

    @property
    def health_check_node_port(self) -> int:
        svc = self.service
        if svc.type == "LoadBalancer" and svc.external_traffic_policy == "Local":
            return svc.health_check_node_port
        return 0


def _normalize_cidr(cidr: str) -> str:
    return str(ipaddress.ip_network(cidr, strict=False))


def _same_family(values: Iterable[str], family: Family) -> tuple[str, ...]:
    return tuple(v for v in values if family_of(v) == family)


def port_views(cluster: Cluster, options: ProxierOptions, family: Family) -> list[PortView]:
    """Every Service port kube-proxy's ``family`` proxier handles, sorted by name."""
    views: list[PortView] = []
    for svc in cluster.services:
        cluster_ip = svc.cluster_ip(family)
        if cluster_ip is None:
            continue  # headless, or not this family: kube-proxy ignores it
        fam_endpoints = [ep for ep in svc.endpoints if ep.family == family]
        for sp in svc.ports:
            spn = naming.service_port_name(svc.namespace, svc.name, sp.name)
            protocol = sp.protocol.lower()
            by_endpoint: dict[str, Endpoint] = {}
            for ep in fam_endpoints:
                by_endpoint.setdefault(naming.endpoint_string(ep.ip, sp.target_port), ep)
            infos = tuple(
                EndpointInfo(
                    endpoint=key,
                    ip=ep.ip,
                    is_local=ep.node_name == options.node_name,
                    ready=ep.ready,
                    serving=ep.serving,
                    terminating=ep.terminating,
                    chain=naming.sep_chain(spn, protocol, key),
                )
                # kube-proxy sorts each endpoint list by its string form.
                for key, ep in sorted(by_endpoint.items())
            )
            views.append(
                PortView(
                    service=svc,
                    port=sp,
                    name=spn,
                    protocol=protocol,
                    cluster_ip=cluster_ip,
                    external_ips=_same_family(svc.external_ips, family),
                    lb_vips=_same_family(svc.lb_ingress_ips, family),
                    source_ranges=tuple(
                        _normalize_cidr(c) for c in _same_family(svc.lb_source_ranges, family)
                    ),
                    endpoints=infos,
                )
            )
    views.sort(key=lambda v: v.name + "/" + v.protocol)
    return views


def categorize_endpoints(view: PortView) -> Categorized[EndpointInfo]:
    """kube-proxy's CategorizeEndpoints for one Service port (see kpa.k8s.kubeproxy)."""
    return kubeproxy.categorize_endpoints(view.endpoints, view.policy)


def probability(n: int) -> str:
    """kube-proxy's statistic probability for a rule with n endpoints left: 1/n as %0.10f."""
    return f"{1.0 / n:0.10f}"


def _node_ips_for_nodeports(
    cidrs: tuple[str, ...], node_ip: str | None, family: Family
) -> list[str]:
    """The node's addresses inside --nodeport-addresses (loopback comes first, as lo does)."""
    candidates = ["127.0.0.1" if family == "ipv4" else "::1"]
    if node_ip:
        candidates.append(node_ip)
    nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
    return [ip for ip in candidates if any(ipaddress.ip_address(ip) in n for n in nets)]


class _Writer:
    """Accumulates the four line buffers kube-proxy writes."""

    def __init__(self) -> None:
        self.filter_chains: list[str] = []
        self.filter_rules: list[str] = []
        self.nat_chains: list[str] = []
        self.nat_rules: list[str] = []


def _build(cluster: Cluster, options: ProxierOptions, family: Family) -> _Writer:
    if family not in ("ipv4", "ipv6"):
        raise ValueError(f"bad family {family!r}")
    is_ipv6 = family == "ipv6"
    node = cluster.node(options.node_name)
    node_ip = node.ip(family)
    mark = options.masquerade_mark
    w = _Writer()
    fc, fr, nc, nr = w.filter_chains, w.filter_rules, w.nat_chains, w.nat_rules

    # --nodeport-addresses, filtered to this family ("primary" = the node IP).
    np_cidrs: list[str] = []
    for entry in options.nodeport_addresses:
        if entry == "primary":
            if node_ip:
                np_cidrs.append(node_ip + ("/128" if is_ipv6 else "/32"))
        elif family_of(entry) == family:
            np_cidrs.append(_normalize_cidr(entry))
    np_match_all = not np_cidrs or any(ipaddress.ip_network(c).prefixlen == 0 for c in np_cidrs)
    contains_v4_loopback = not is_ipv6 and (
        np_match_all
        or any(ipaddress.ip_address("127.0.0.1") in ipaddress.ip_network(c) for c in np_cidrs)
    )
    localhost_nodeports = options.localhost_nodeports and contains_v4_loopback

    local_cidr = next((c for c in options.cluster_cidr if family_of(c) == family), None)
    if_not_local = f"! -s {_normalize_cidr(local_cidr)}" if local_cidr else None
    if_local = f"-s {_normalize_cidr(local_cidr)}" if local_cidr else None

    for chain in (
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL",
    ):
        fc.append(f":{chain} - [0:0]")
    for chain in ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"):
        nc.append(f":{chain} - [0:0]")

    nr.append(f"-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN")
    # Clearing the mark stops a re-traversing packet from being masqueraded twice.
    nr.append(f"-A KUBE-POSTROUTING -j MARK --xor-mark {mark}")
    masq = '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE'
    nr.append(masq + (" --random-fully" if options.random_fully else ""))
    nr.append(f"-A KUBE-MARK-MASQ -j MARK --or-mark {mark}")

    if not is_ipv6 and localhost_nodeports:
        # route_localnet opens a hole (kubernetes issue 90259) this closes.
        fc.append(":KUBE-FIREWALL - [0:0]")
        fr.append(
            '-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections"'
            " -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
        )

    views = port_views(cluster, options, family)
    total_endpoints = sum(len(v.endpoints) for v in views)
    large = total_endpoints > LARGE_CLUSTER_ENDPOINTS_THRESHOLD

    def svc_comment(text: str) -> str:
        # Large clusters drop these comments to shrink the ruleset.
        return "" if large else f" -m comment --comment {text}"

    for view in views:
        spn = view.name
        proto = view.protocol
        pmatch = f"-m {proto} -p {proto}"
        dport = view.port.port
        cat = categorize_endpoints(view)
        chains = naming.iptables_service_chains(spn, proto)
        cluster_chain, local_chain = chains["svc"], chains["svl"]
        ext_chain, fw_chain = chains["ext"], chains["fw"]

        uses_cluster_chain = bool(cat.cluster) and view.uses_cluster_endpoints
        uses_local_chain = bool(cat.local) and view.uses_local_endpoints
        has_endpoints = cat.has_any

        internal_chain = cluster_chain
        has_internal = has_endpoints
        if view.internal_policy_local:
            internal_chain = local_chain
            if not cat.local:
                has_internal = False
        external_policy_chain = cluster_chain
        has_external = has_endpoints
        if view.external_policy_local:
            external_policy_chain = local_chain
            if not cat.local:
                has_external = False
        uses_ext_chain = has_endpoints and view.externally_accessible
        uses_fw_chain = has_endpoints and bool(view.lb_vips) and bool(view.source_ranges)
        lb_chain = fw_chain if uses_fw_chain else ext_chain

        internal_target = external_target = ""
        internal_comment = external_comment = ""
        if not has_endpoints:
            internal_target = external_target = "REJECT"
            internal_comment = external_comment = f'"{spn} has no endpoints"'
        else:
            if not has_internal:
                internal_target = "DROP"
                internal_comment = f'"{spn} has no local endpoints"'
            if not has_external:
                external_target = "DROP"
                external_comment = f'"{spn} has no local endpoints"'

        cip = view.cluster_ip
        if has_internal:
            nr.append(
                f'-A KUBE-SERVICES -m comment --comment "{spn} cluster IP" {pmatch}'
                f" -d {cip} --dport {dport} -j {internal_chain}"
            )
        else:
            fr.append(
                f"-A KUBE-SERVICES -m comment --comment {internal_comment} {pmatch}"
                f" -d {cip} --dport {dport} -j {internal_target}"
            )

        for eip in view.external_ips:
            if has_endpoints:
                nr.append(
                    f'-A KUBE-SERVICES -m comment --comment "{spn} external IP" {pmatch}'
                    f" -d {eip} --dport {dport} -j {ext_chain}"
                )
            if not has_external:
                fr.append(
                    f"-A KUBE-EXTERNAL-SERVICES -m comment --comment {external_comment} {pmatch}"
                    f" -d {eip} --dport {dport} -j {external_target}"
                )

        for vip in view.lb_vips:
            if has_endpoints:
                nr.append(
                    f'-A KUBE-SERVICES -m comment --comment "{spn} loadbalancer IP" {pmatch}'
                    f" -d {vip} --dport {dport} -j {lb_chain}"
                )
            if uses_fw_chain:
                fr.append(
                    f'-A KUBE-PROXY-FIREWALL -m comment --comment "{spn} traffic not accepted by {fw_chain}"'
                    f" {pmatch} -d {vip} --dport {dport} -j DROP"
                )
        if not has_external:
            for vip in view.lb_vips:
                fr.append(
                    f"-A KUBE-EXTERNAL-SERVICES -m comment --comment {external_comment} {pmatch}"
                    f" -d {vip} --dport {dport} -j {external_target}"
                )

        node_port = view.port.node_port
        if node_port:
            if has_endpoints:
                if localhost_nodeports and not is_ipv6 and options.nfacct:
                    nr.append(
                        f"-A KUBE-NODEPORTS -m comment --comment {spn} {pmatch} -d 127.0.0.0/8"
                        f" --dport {node_port} -m nfacct --nfacct-name {NFACCT_LOCALHOST_NODEPORT}"
                        f" -j {ext_chain}"
                    )
                nr.append(
                    f"-A KUBE-NODEPORTS -m comment --comment {spn} {pmatch}"
                    f" --dport {node_port} -j {ext_chain}"
                )
            if not has_external:
                fr.append(
                    f"-A KUBE-EXTERNAL-SERVICES -m comment --comment {external_comment}"
                    f" -m addrtype --dst-type LOCAL {pmatch} --dport {node_port} -j {external_target}"
                )

        hc_port = view.health_check_node_port
        if hc_port:
            fr.append(
                f'-A KUBE-NODEPORTS -m comment --comment "{spn} health check node port"'
                f" -m tcp -p tcp --dport {hc_port} -j ACCEPT"
            )

        if has_internal:
            cip_args = f'-m comment --comment "{spn} cluster IP" {pmatch} -d {cip} --dport {dport}'
            if options.masquerade_all:
                nr.append(f"-A {internal_chain} {cip_args} -j KUBE-MARK-MASQ")
            elif if_not_local is not None:
                # Off-cluster clients reaching a ClusterIP via a route to
                # this node may be bounced to another node: masquerade them.
                nr.append(f"-A {internal_chain} {cip_args} {if_not_local} -j KUBE-MARK-MASQ")

        if uses_ext_chain:
            nc.append(f":{ext_chain} - [0:0]")
            if not view.external_policy_local:
                nr.append(
                    f'-A {ext_chain} -m comment --comment "masquerade traffic for {spn} external destinations"'
                    " -j KUBE-MARK-MASQ"
                )
            else:
                if if_local is not None:
                    nr.append(
                        f'-A {ext_chain} -m comment --comment "pod traffic for {spn} external destinations"'
                        f" {if_local} -j {cluster_chain}"
                    )
                nr.append(
                    f'-A {ext_chain} -m comment --comment "masquerade LOCAL traffic for {spn} external destinations"'
                    " -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ"
                )
                nr.append(
                    f'-A {ext_chain} -m comment --comment "route LOCAL traffic for {spn} external destinations"'
                    f" -m addrtype --src-type LOCAL -j {cluster_chain}"
                )
            if has_external:
                nr.append(f"-A {ext_chain} -j {external_policy_chain}")

        if uses_fw_chain:
            nc.append(f":{fw_chain} - [0:0]")
            fw_head = f'-A {fw_chain} -m comment --comment "{spn} loadbalancer IP"'
            allow_from_node = False
            node_addr = ipaddress.ip_address(node_ip) if node_ip else None
            for cidr in view.source_ranges:
                nr.append(f"{fw_head} -s {cidr} -j {ext_chain}")
                if node_addr is not None and node_addr in ipaddress.ip_network(cidr):
                    allow_from_node = True
            if allow_from_node:
                # A VIP routed locally loops back with itself as the source.
                for vip in view.lb_vips:
                    nr.append(f"{fw_head} -s {vip} -j {ext_chain}")
            nr.append(
                f'-A {fw_chain} -m comment --comment "other traffic to {spn} will be dropped by KUBE-PROXY-FIREWALL"'
            )

        if uses_cluster_chain:
            nc.append(f":{cluster_chain} - [0:0]")
            _write_service_to_endpoints(nr, view, cluster_chain, cat.cluster, svc_comment)
        if uses_local_chain:
            nc.append(f":{local_chain} - [0:0]")
            _write_service_to_endpoints(nr, view, local_chain, cat.local, svc_comment)

        affinity = view.service.session_affinity == "ClientIP"
        comment = svc_comment(spn)
        for ep in cat.reachable:
            nc.append(f":{ep.chain} - [0:0]")
            nr.append(f"-A {ep.chain}{comment} -s {ep.ip} -j KUBE-MARK-MASQ")
            recent = f" -m recent --name {ep.chain} --set" if affinity else ""
            nr.append(
                f"-A {ep.chain}{comment}{recent} {pmatch} -j DNAT --to-destination {ep.endpoint}"
            )

    nodeports_comment = (
        '"kubernetes service nodeports; NOTE: this must be the last rule in this chain"'
    )
    if np_match_all:
        destinations = "-m addrtype --dst-type LOCAL"
        if is_ipv6:
            destinations += " ! -d ::1/128"
        elif not localhost_nodeports:
            destinations += " ! -d 127.0.0.0/8"
        nr.append(
            f"-A KUBE-SERVICES -m comment --comment {nodeports_comment} {destinations} -j KUBE-NODEPORTS"
        )
    else:
        for ip in _node_ips_for_nodeports(tuple(np_cidrs), node_ip, family):
            if ipaddress.ip_address(ip).is_loopback and (is_ipv6 or not localhost_nodeports):
                continue
            nr.append(
                f"-A KUBE-SERVICES -m comment --comment {nodeports_comment} -d {ip} -j KUBE-NODEPORTS"
            )

    if not options.conntrack_tcp_be_liberal:
        nfacct = f" -m nfacct --nfacct-name {NFACCT_CT_STATE_INVALID}" if options.nfacct else ""
        fr.append(f"-A KUBE-FORWARD -m conntrack --ctstate INVALID{nfacct} -j DROP")
    fr.append(
        f'-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark {mark}/{mark} -j ACCEPT'
    )
    fr.append(
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule"'
        " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    )
    return w


def _write_service_to_endpoints(
    nr: list[str],
    view: PortView,
    chain: str,
    endpoints: tuple[EndpointInfo, ...],
    svc_comment: Callable[[str], str],
) -> None:
    spn = view.name
    if view.service.session_affinity == "ClientIP":
        timeout = view.service.affinity_timeout
        for ep in endpoints:
            comment = svc_comment(f'"{spn} -> {ep.endpoint}"')
            nr.append(
                f"-A {chain}{comment} -m recent --name {ep.chain} --rcheck --seconds {timeout}"
                f" --reap -j {ep.chain}"
            )
    n = len(endpoints)
    for i, ep in enumerate(endpoints):
        comment = svc_comment(f'"{spn} -> {ep.endpoint}"')
        stat = (
            f" -m statistic --mode random --probability {probability(n - i)}" if i < n - 1 else ""
        )
        nr.append(f"-A {chain}{comment}{stat} -j {ep.chain}")


def render_kube_proxy_payload(
    cluster: Cluster, options: ProxierOptions, family: Family = "ipv4"
) -> str:
    """The exact input kube-proxy gives ``iptables-restore --noflush`` on a full sync."""
    w = _build(cluster, options, family)
    parts = [
        "*filter",
        *w.filter_chains,
        *w.filter_rules,
        "COMMIT",
        "*nat",
        *w.nat_chains,
        *w.nat_rules,
        "COMMIT",
    ]
    return "\n".join(parts) + "\n"


def render_restore(cluster: Cluster, options: ProxierOptions, family: Family = "ipv4") -> str:
    """A complete ``iptables-restore`` input reproducing the node's kube-proxy state.

    On top of kube-proxy's payload it declares the built-in chains, kubelet's
    KUBE-IPTABLES-HINT and canary chains, kube-proxy's canary chains, and the
    jumps from built-in chains in the order a fresh node ends up with them.
    """
    w = _build(cluster, options, family)
    jumps: dict[tuple[str, str], list[str]] = {}
    for table, target, source, comment, extra in _JUMPS:
        args = extra
        if comment:
            args = (args + " " if args else "") + f'-m comment --comment "{comment}"'
        rule = f"-A {source}" + (f" {args}" if args else "") + f" -j {target}"
        # Prepending reverses the order within each source chain.
        jumps.setdefault((table, source), []).insert(0, rule)

    def builtin_lines(table: str) -> list[str]:
        return [f":{chain} ACCEPT [0:0]" for chain in _BUILTIN_CHAINS[table]]

    def jump_lines(table: str) -> list[str]:
        return [r for chain in _BUILTIN_CHAINS[table] for r in jumps.get((table, chain), [])]

    filter_chains = list(w.filter_chains)
    if ":KUBE-FIREWALL - [0:0]" not in filter_chains:
        # kube-proxy's EnsureChain creates it even when it stays empty.
        filter_chains.append(":KUBE-FIREWALL - [0:0]")
    canaries = [":KUBE-KUBELET-CANARY - [0:0]", ":KUBE-PROXY-CANARY - [0:0]"]
    out = [
        "*mangle",
        *builtin_lines("mangle"),
        ":KUBE-IPTABLES-HINT - [0:0]",
        *canaries,
        "COMMIT",
        "*filter",
        *builtin_lines("filter"),
        *canaries,
        *filter_chains,
        *jump_lines("filter"),
        *w.filter_rules,
        "COMMIT",
        "*nat",
        *builtin_lines("nat"),
        *canaries,
        *w.nat_chains,
        *jump_lines("nat"),
        *w.nat_rules,
        "COMMIT",
    ]
    return "\n".join(out) + "\n"
