"""Every `kpa policy lint` code: one cluster that triggers it, one that must not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kpa.policy.lint import CODES, lint_policies
from tests.policy.world import load, namespace, pod, policy

APP = [namespace("shop"), namespace("kube-system")]
WEB = pod("shop", "web", ["10.244.0.10"], {"app": "web"},
          ports=[{"name": "http", "containerPort": 8080}])
CLIENT = pod("shop", "client", ["10.244.0.11"], {"app": "client"}, ports=[])
DNS_POD = pod("kube-system", "coredns", ["10.244.0.2"], {"k8s-app": "kube-dns"},
              ports=[{"name": "dns", "containerPort": 53, "protocol": "UDP"}])
DNS = [
    DNS_POD,
    {"apiVersion": "v1", "kind": "Service",
     "metadata": {"namespace": "kube-system", "name": "kube-dns"},
     "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
              "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53}]}},
    {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
     "metadata": {"namespace": "kube-system", "name": "kube-dns-1",
                  "labels": {"kubernetes.io/service-name": "kube-dns"}},
     "addressType": "IPv4",
     "endpoints": [{"addresses": ["10.244.0.2"], "conditions": {"ready": True},
                    "targetRef": {"kind": "Pod", "namespace": "kube-system",
                                  "name": "coredns"}}],
     "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]},
]


def codes(tmp_path: Path, docs: list[dict[str, Any]], **kwargs: Any) -> list[str]:
    objects = load(tmp_path, [*APP, WEB, CLIENT, *DNS, *docs])
    return [f.code for f in lint_policies(objects, **kwargs)]


def web_policy(spec_extra: dict[str, Any], selector: dict[str, Any] | None = None,
               name: str = "web") -> dict[str, Any]:
    return policy("shop", name, {
        "podSelector": selector if selector is not None else {"matchLabels": {"app": "web"}},
        **spec_extra,
    })


def test_policy_selects_no_pods(tmp_path: Path) -> None:
    assert "policy-selects-no-pods" in codes(
        tmp_path, [web_policy({}, {"matchLabels": {"app": "wbe"}})])
    assert "policy-selects-no-pods" not in codes(tmp_path, [web_policy({})])


def test_peer_selects_no_pods_or_no_namespace(tmp_path: Path) -> None:
    typo = web_policy({"ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "clinet"}}}]}]})
    assert "peer-selects-no-pods" in codes(tmp_path, [typo])
    no_ns = web_policy({"ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"team": "nobody"}}}]}]})
    assert "peer-selects-no-namespace" in codes(tmp_path, [no_ns])
    fine = web_policy({"ingress": [{"from": [
        {"podSelector": {"matchLabels": {"app": "client"}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}}}]}]})
    found = codes(tmp_path, [fine])
    assert "peer-selects-no-pods" not in found and "peer-selects-no-namespace" not in found


def test_named_port_not_declared_by_name_and_protocol(tmp_path: Path) -> None:
    udp = web_policy({"ingress": [{"ports": [{"port": "http", "protocol": "UDP"}]}]})
    assert "named-port-not-declared" in codes(tmp_path, [udp])
    tcp = web_policy({"ingress": [{"ports": [{"port": "http"}]}]})
    assert "named-port-not-declared" not in codes(tmp_path, [tcp])
    # Egress: resolved on the pods the rule reaches.
    egress = web_policy({"policyTypes": ["Egress"], "egress": [
        {"to": [{"podSelector": {"matchLabels": {"app": "client"}}}],
         "ports": [{"port": "http"}]}]}, {"matchLabels": {"app": "client"}})
    assert "named-port-not-declared" in codes(tmp_path, [egress])


def test_ip_block_holding_service_addresses(tmp_path: Path) -> None:
    cluster_ip = web_policy({"policyTypes": ["Egress"], "egress": [
        {"to": [{"ipBlock": {"cidr": "10.96.0.10/32"}}]}]})
    assert "ipblock-service-address" in codes(tmp_path, [cluster_ip])
    in_cidr = web_policy({"policyTypes": ["Egress"], "egress": [
        {"to": [{"ipBlock": {"cidr": "10.100.0.0/16"}}]}]})
    assert "ipblock-service-address" in codes(tmp_path, [in_cidr], service_cidrs=["10.96.0.0/12"])
    assert "ipblock-service-address" not in codes(tmp_path, [in_cidr])
    # A broad block that also holds pods is not about the Service.
    broad = web_policy({"policyTypes": ["Egress"], "egress": [
        {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]})
    assert "ipblock-service-address" not in codes(tmp_path, [broad], service_cidrs=["10.96.0.0/12"])


def test_dns_egress_blocked(tmp_path: Path) -> None:
    deny = web_policy({"policyTypes": ["Egress"]}, {})
    assert "dns-egress-blocked" in codes(tmp_path, [deny])
    allow_dns = web_policy({"policyTypes": ["Egress"], "egress": [{
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name":
                                                      "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
        "ports": [{"port": 53, "protocol": "UDP"}]}]}, {})
    assert "dns-egress-blocked" not in codes(tmp_path, [allow_dns])
    # Allowing the ClusterIP does not help: the endpoint is judged after DNAT.
    cluster_ip = web_policy({"policyTypes": ["Egress"], "egress": [{
        "to": [{"ipBlock": {"cidr": "10.96.0.10/32"}}]}]}, {})
    assert "dns-egress-blocked" in codes(tmp_path, [cluster_ip])


def test_redundant_rule(tmp_path: Path) -> None:
    client = {"podSelector": {"matchLabels": {"app": "client"}}}
    redundant = web_policy({"ingress": [{"from": [client]},
                                        {"from": [client], "ports": [{"port": 8080}]}]})
    assert codes(tmp_path, [redundant]).count("redundant-rule") == 1
    distinct = web_policy({"ingress": [{"from": [client], "ports": [{"port": 8080}]},
                                       {"from": [client], "ports": [{"port": 9090}]}]})
    assert "redundant-rule" not in codes(tmp_path, [distinct])


def test_duplicate_policy(tmp_path: Path) -> None:
    spec = {"ingress": [{"from": [{"podSelector": {}}]}]}
    assert "duplicate-policy" in codes(
        tmp_path, [web_policy(spec), web_policy(spec, name="web-copy")])
    assert "duplicate-policy" not in codes(
        tmp_path, [web_policy(spec), web_policy({}, name="web-deny")])


def test_namespace_not_isolated_is_info_and_off_by_default(tmp_path: Path) -> None:
    web = web_policy({})
    assert "namespace-not-isolated" not in codes(tmp_path, [web])
    found = codes(tmp_path, [web], include_info=True)
    assert found.count("namespace-not-isolated") == 1  # kube-system only
    assert CODES["namespace-not-isolated"][0] == "info"


def test_every_code_is_tested_here() -> None:
    source = Path(__file__).read_text()
    assert all(f'"{code}"' in source for code in CODES)
