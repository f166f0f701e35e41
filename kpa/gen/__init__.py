"""Synthetic clusters and the kube-proxy rules they produce.

``cluster`` models what kube-proxy sees, ``iptables`` renders kube-proxy's
iptables-mode rules for one node, ``objects`` writes the matching Kubernetes
API objects, ``capture`` round-trips rules through a real kernel, and
``scenarios`` names small clusters that each exercise one feature.
"""

from kpa.gen.cluster import Cluster, Endpoint, Node, Service, ServicePort, random_cluster
from kpa.gen.options import ProxierOptions

__all__ = [
    "Cluster",
    "Endpoint",
    "Node",
    "ProxierOptions",
    "Service",
    "ServicePort",
    "random_cluster",
]
