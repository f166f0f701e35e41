"""Kubernetes API objects (Service, EndpointSlice, Node, Pod) for a model cluster,
shaped like ``kubectl get -o yaml`` output so kpa's loaders see realistic input."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

import yaml

from kpa.gen.cluster import Cluster, Endpoint, Family, Service, family_of

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY_CONTROLLER = "endpointslice-controller.k8s.io"
# The EndpointSlice controller's default maxEndpointsPerSlice.
MAX_ENDPOINTS_PER_SLICE = 100
_CREATED = "2024-01-01T00:00:00Z"

Obj = dict[str, Any]


def _uid(*parts: str) -> str:
    """A stable fake UID, so regenerated fixtures do not churn."""
    h = hashlib.sha256("/".join(parts).encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def _meta(kind: str, name: str, namespace: str | None = None) -> Obj:
    meta: Obj = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta["uid"] = _uid(kind, namespace or "", name)
    meta["resourceVersion"] = "1"
    meta["creationTimestamp"] = _CREATED
    return meta


_FAMILY_NAMES = {"ipv4": "IPv4", "ipv6": "IPv6"}


def service_object(svc: Service) -> Obj:
    families = [_FAMILY_NAMES[family_of(ip)] for ip in svc.cluster_ips]
    spec: Obj = {
        "type": svc.type,
        "selector": {"app": svc.name},
        "clusterIP": svc.cluster_ips[0] if svc.cluster_ips else "None",
        "clusterIPs": list(svc.cluster_ips) or ["None"],
        "ipFamilies": families,
        "ipFamilyPolicy": "RequireDualStack" if len(families) > 1 else "SingleStack",
        "ports": [],
        "sessionAffinity": svc.session_affinity,
        "internalTrafficPolicy": svc.internal_traffic_policy,
    }
    for sp in svc.ports:
        port: Obj = {}
        if sp.name:
            port["name"] = sp.name
        port.update({"protocol": sp.protocol, "port": sp.port, "targetPort": sp.target_port})
        if sp.node_port:
            port["nodePort"] = sp.node_port
        spec["ports"].append(port)
    if svc.session_affinity == "ClientIP":
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": svc.affinity_timeout}}
    if svc.type in ("NodePort", "LoadBalancer") or svc.external_ips:
        # The apiserver only defaults externalTrafficPolicy for NodePort/LB,
        # but kube-proxy honours it for externalIPs too.
        spec["externalTrafficPolicy"] = svc.external_traffic_policy
    if svc.external_ips:
        spec["externalIPs"] = list(svc.external_ips)
    if svc.lb_source_ranges:
        spec["loadBalancerSourceRanges"] = list(svc.lb_source_ranges)
    if svc.health_check_node_port:
        spec["healthCheckNodePort"] = svc.health_check_node_port
    status: Obj = {"loadBalancer": {}}
    if svc.lb_ingress_ips:
        status["loadBalancer"] = {
            "ingress": [{"ip": ip, "ipMode": "VIP"} for ip in svc.lb_ingress_ips]
        }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta("Service", svc.name, svc.namespace),
        "spec": spec,
        "status": status,
    }


def _endpoint_object(ep: Endpoint, namespace: str) -> Obj:
    obj: Obj = {
        "addresses": [ep.ip],
        "conditions": {"ready": ep.ready, "serving": ep.serving, "terminating": ep.terminating},
    }
    if ep.node_name:
        obj["nodeName"] = ep.node_name
    if ep.pod_name:
        obj["targetRef"] = {
            "kind": "Pod",
            "namespace": namespace,
            "name": ep.pod_name,
            "uid": _uid("Pod", namespace, ep.pod_name),
        }
    return obj


def endpoint_slice_objects(svc: Service) -> list[Obj]:
    """One or more EndpointSlices per address family, 100 endpoints each at most."""
    slices: list[Obj] = []
    ports = [
        {
            **({"name": sp.name} if sp.name else {"name": ""}),
            "protocol": sp.protocol,
            "port": sp.target_port,
        }
        for sp in svc.ports
    ]
    for family in ("ipv4", "ipv6"):
        if family not in svc.families:
            continue
        eps = [ep for ep in svc.endpoints if ep.family == family]
        chunks = [
            eps[i : i + MAX_ENDPOINTS_PER_SLICE]
            for i in range(0, len(eps), MAX_ENDPOINTS_PER_SLICE)
        ] or [[]]
        for n, chunk in enumerate(chunks):
            suffix = hashlib.sha256(f"{svc.key}/{family}/{n}".encode()).hexdigest()[:5]
            name = f"{svc.name}-{suffix}"
            meta = _meta("EndpointSlice", name, svc.namespace)
            meta["labels"] = {
                SERVICE_NAME_LABEL: svc.name,
                MANAGED_BY_LABEL: MANAGED_BY_CONTROLLER,
            }
            meta["generateName"] = f"{svc.name}-"
            meta["ownerReferences"] = [
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "name": svc.name,
                    "uid": _uid("Service", svc.namespace, svc.name),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ]
            slices.append(
                {
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": meta,
                    "addressType": _FAMILY_NAMES[family],
                    "endpoints": [_endpoint_object(ep, svc.namespace) for ep in chunk],
                    "ports": ports,
                }
            )
    return slices


def node_objects(cluster: Cluster) -> list[Obj]:
    out: list[Obj] = []
    for node in cluster.nodes:
        meta = _meta("Node", node.name)
        meta["labels"] = {
            "kubernetes.io/hostname": node.name,
            "kubernetes.io/os": "linux",
        }
        addresses = [{"type": "InternalIP", "address": ip} for ip in node.ips]
        addresses.append({"type": "Hostname", "address": node.name})
        spec: Obj = {}
        if node.pod_cidrs:
            spec = {"podCIDR": node.pod_cidrs[0], "podCIDRs": list(node.pod_cidrs)}
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": meta,
                "spec": spec,
                "status": {"addresses": addresses},
            }
        )
    return out


def pod_objects(cluster: Cluster) -> list[Obj]:
    """Pods behind the endpoints; dual-stack pods carry both IPs."""
    pods: dict[tuple[str, str], tuple[str | None, list[str], Service]] = {}
    for svc in cluster.services:
        for ep in svc.endpoints:
            if not ep.pod_name:
                continue
            key = (svc.namespace, ep.pod_name)
            _, ips, _ = pods.setdefault(key, (ep.node_name, [], svc))
            if ep.ip not in ips:
                ips.append(ep.ip)
    host_ips = {node.name: node.ips for node in cluster.nodes}
    out: list[Obj] = []
    for (namespace, name), (node_name, ips, owner) in pods.items():
        ips.sort(key=lambda ip: family_of(ip) != _primary_family(owner))
        status: Obj = {
            "phase": "Running",
            "podIP": ips[0],
            "podIPs": [{"ip": ip} for ip in ips],
        }
        if node_name and host_ips.get(node_name):
            status["hostIP"] = host_ips[node_name][0]
        meta = _meta("Pod", name, namespace)
        meta["labels"] = {"app": owner.name}
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": meta,
                "spec": {"nodeName": node_name, "containers": [{"name": "app", "image": "app"}]},
                "status": status,
            }
        )
    return out


def _primary_family(svc: Service) -> Family:
    return svc.families[0] if svc.families else "ipv4"


def to_objects(cluster: Cluster) -> list[Obj]:
    """All objects kube-proxy (and kpa) would read: Nodes, Services, EndpointSlices, Pods."""
    objs: list[Obj] = list(node_objects(cluster))
    for svc in cluster.services:
        objs.append(service_object(svc))
        objs.extend(endpoint_slice_objects(svc))
    objs.extend(pod_objects(cluster))
    return objs


def dump_yaml(objs: Iterable[Obj]) -> str:
    """Multi-document YAML, one object per document."""
    return yaml.safe_dump_all(list(objs), sort_keys=False, default_flow_style=False)


def dump_list_json(objs: Iterable[Obj]) -> str:
    """A kubectl-style ``List`` (as ``kubectl get ... -o json`` prints for several kinds)."""
    doc = {
        "apiVersion": "v1",
        "kind": "List",
        "items": list(objs),
        "metadata": {"resourceVersion": ""},
    }
    return json.dumps(doc, indent=4) + "\n"
