"""Namespaces, Pods and NetworkPolicies of any size, for benchmarks and tests of
`kpa policy`.

The shape follows common practice: every namespace denies ingress by default, most
also deny egress except to the cluster DNS, and each application admits its callers
by tier (with named ports), by team (namespaceSelector with matchLabels or
matchExpressions), from the cluster's load balancers (ipBlock with except), or on a
port range. Deterministic for a given seed.
"""

from __future__ import annotations

import ipaddress
import random
from typing import Any

TIERS = ("web", "api", "db", "cache", "worker")
TIER_PORTS: dict[str, list[tuple[str, int, str]]] = {
    "web": [("http", 8080, "TCP"), ("metrics", 9090, "TCP")],
    "api": [("http", 8080, "TCP"), ("grpc", 9000, "TCP"), ("metrics", 9090, "TCP")],
    "db": [("postgres", 5432, "TCP")],
    "cache": [("redis", 6379, "TCP")],
    "worker": [("metrics", 9090, "TCP"), ("stats", 8125, "UDP")],
}
CALLERS = {"api": "web", "db": "api", "cache": "api", "worker": "api"}
POD_CIDR = "10.244.0.0/16"
NODE_CIDR = "192.168.0.0/16"


def _namespace(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, **labels}}}


def _pod(ns: str, name: str, labels: dict[str, str], ip: str, node: str,
         ports: list[tuple[str, int, str]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{
            "name": "app", "image": "app",
            "ports": [{"name": n, "containerPort": p, "protocol": proto} for n, p, proto in ports],
        }]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


def _policy(ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": ns, "name": name}, "spec": spec}


def _app_policy(rng: random.Random, ns: str, app: str, tier: str, teams: int,
                index: int) -> dict[str, Any]:
    selector = {"matchLabels": {"app": app}}
    # Each app of a namespace gets a different mix of rule kinds.
    kind = (index + index // 5) % 5
    if kind == 0 and tier in CALLERS:
        rule = {"from": [{"podSelector": {"matchLabels": {"tier": CALLERS[tier]}}}],
                "ports": [{"port": TIER_PORTS[tier][0][0]}]}
    elif kind == 1:
        team = f"team-{rng.randrange(teams)}"
        rule = {"from": [{"namespaceSelector": {"matchLabels": {"team": team}},
                          "podSelector": {"matchExpressions": [
                              {"key": "tier", "operator": "In", "values": ["web", "api"]}]}}],
                "ports": [{"port": TIER_PORTS[tier][0][1]}]}
    elif kind == 2:
        rule = {"from": [{"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.128/25"]}},
                         {"ipBlock": {"cidr": "10.244.0.0/17"}}],
                "ports": [{"port": 8000, "endPort": 9100}]}
    elif kind == 3:
        rule = {"from": [{"namespaceSelector": {"matchExpressions": [
            {"key": "env", "operator": "NotIn", "values": ["dev"]}]}}],
            "ports": [{"port": "metrics"}]}
    else:
        rule = {"from": [{"podSelector": {"matchExpressions": [
            {"key": "tier", "operator": "Exists"}]}}]}
    return _policy(ns, f"{app}-ingress-{index}", {"podSelector": selector, "ingress": [rule]})


def policy_cluster(
    pods: int = 5000,
    namespaces: int = 100,
    policies: int = 1000,
    apps_per_namespace: int = 5,
    teams: int = 10,
    seed: int = 1,
    unique_labels: bool = False,
) -> list[dict[str, Any]]:
    """Kubernetes objects (as `kubectl get -o json` items) for a cluster of that size.

    `unique_labels` gives every pod a label of its own (as StatefulSets do with
    `statefulset.kubernetes.io/pod-name`), so no two pods are alike.
    """
    rng = random.Random(seed)
    pod_net = ipaddress.ip_network(POD_CIDR)
    docs: list[dict[str, Any]] = [_namespace("kube-system", {})]
    docs.append(_pod("kube-system", "coredns-0", {"k8s-app": "kube-dns"},
                     str(pod_net[65534]), "node-0", [("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")]))
    envs = ("prod", "staging", "dev")
    per_ns = max(1, pods // namespaces)
    per_app = max(1, per_ns // apps_per_namespace)
    made = 0
    ns_names = [f"ns-{i:03d}" for i in range(namespaces)]
    for i, ns in enumerate(ns_names):
        docs.append(_namespace(ns, {"team": f"team-{i % teams}", "env": envs[i % len(envs)]}))
    policy_docs: list[dict[str, Any]] = []
    budget = policies
    for i, ns in enumerate(ns_names):
        apps = [(f"app-{a}", TIERS[a % len(TIERS)]) for a in range(apps_per_namespace)]
        count = per_ns if i < namespaces - 1 else pods - made
        for k in range(count):
            app, tier = apps[(k // per_app) % len(apps)]
            ip = str(pod_net[made + 1])
            node = f"node-{made // 110}"
            labels = {"app": app, "tier": tier, "pod-template-hash": f"{i:03d}{app[-1]}"}
            if unique_labels:
                labels["statefulset.kubernetes.io/pod-name"] = f"{app}-{k}"
            docs.append(_pod(ns, f"{app}-{k}", labels, ip, node, TIER_PORTS[tier]))
            made += 1
        share = budget // (namespaces - i)
        budget -= share
        base: list[dict[str, Any]] = []
        if share > 0:
            base.append(_policy(ns, "default-deny-ingress", {"podSelector": {}}))
        if share > 1 and i % 2 == 0:
            base.append(_policy(ns, "default-deny-egress-allow-dns", {
                "podSelector": {}, "policyTypes": ["Egress"],
                "egress": [{"to": [{"namespaceSelector": {"matchLabels": {
                    "kubernetes.io/metadata.name": "kube-system"}},
                                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                            "ports": [{"port": 53, "protocol": "UDP"},
                                      {"port": 53, "protocol": "TCP"}]},
                           {"to": [{"podSelector": {}}]},
                           {"to": [{"ipBlock": {"cidr": "0.0.0.0/0",
                                                "except": ["10.0.0.0/8"]}}],
                            "ports": [{"port": 443}]}],
            }))
        policy_docs.extend(base)
        for index in range(share - len(base)):
            app, tier = apps[index % len(apps)]
            policy_docs.append(_app_policy(rng, ns, app, tier, teams, index))
    return docs + policy_docs


__all__ = ["policy_cluster"]
