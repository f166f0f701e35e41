"""kube-proxy settings that change the rules it writes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from kpa.gen.cluster import CLUSTER_CIDR, Cluster


@dataclass
class ProxierOptions:
    """The subset of kube-proxy's configuration that shapes iptables output.

    ``cluster_cidr`` holds at most one CIDR per family; it drives the
    ClusterCIDR local-traffic detector (``! -s CIDR -j KUBE-MARK-MASQ``).
    Leave it empty to model kube-proxy running without a local detector.
    ``nodeport_addresses`` mirrors ``--nodeport-addresses`` (CIDRs or
    ``primary``); empty means every local address.
    ``nfacct`` says whether the kernel's nfacct counters exist, which makes
    kube-proxy add ``-m nfacct`` rules (and the localhost NodePort rule).
    """

    node_name: str
    masquerade_all: bool = False
    cluster_cidr: tuple[str, ...] = field(
        default_factory=lambda: (CLUSTER_CIDR["ipv4"], CLUSTER_CIDR["ipv6"])
    )
    masquerade_bit: int = 14
    localhost_nodeports: bool = True
    nodeport_addresses: tuple[str, ...] = ()
    nfacct: bool = False
    random_fully: bool = True
    conntrack_tcp_be_liberal: bool = False

    @property
    def masquerade_mark(self) -> str:
        """The mark as kube-proxy formats it (Go ``%#08x``): 0x004000 for bit 14."""
        return "0x" + format(1 << self.masquerade_bit, "x").zfill(6)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cluster_cidr"] = list(self.cluster_cidr)
        data["nodeport_addresses"] = list(self.nodeport_addresses)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProxierOptions:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("cluster_cidr", "nodeport_addresses"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)


def meta_dict(cluster: Cluster, options: ProxierOptions) -> dict[str, Any]:
    """What a fixture's ``meta.json`` records: the node and the proxier options."""
    node = cluster.node(options.node_name)
    return {
        "node_name": node.name,
        "node_ips": {"ipv4": node.ipv4, "ipv6": node.ipv6},
        "pod_cidrs": list(node.pod_cidrs),
        "service_cidrs": dict(cluster.service_cidrs),
        "cluster_cidrs": dict(cluster.cluster_cidrs),
        "families": list(cluster.families),
        "proxier": options.to_dict(),
        "proxy_mode": "iptables",
    }


def dump_meta(cluster: Cluster, options: ProxierOptions) -> str:
    return json.dumps(meta_dict(cluster, options), indent=2, sort_keys=True) + "\n"
