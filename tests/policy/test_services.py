"""Service destinations are judged per endpoint after kube-proxy's DNAT.

The endpoints come from the real kube-proxy rule fixtures (what iptables-nft-save and
`nft list ruleset` printed after the generator's rules were loaded into a kernel), in
iptables mode and nftables mode, or from the EndpointSlices; both must agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kpa.k8s.objects import load_objects
from kpa.policy.engine import PolicyEngine
from kpa.policy.services import decide_service, service_target
from kpa.sources import load_rules
from tests.policy.clirun import kpa
from tests.policy.world import load, namespace, pod, policy

FIXTURES = Path(__file__).parent.parent / "fixtures"
CLUSTER = FIXTURES / "clusters" / "clusterip.yaml"
RULES = {
    "iptables": FIXTURES / "iptables" / "clusterip.nft.v4.save",
    "iptables-legacy": FIXTURES / "iptables" / "clusterip.legacy.v4.save",
    "nftables": FIXTURES / "nft" / "kube-proxy" / "clusterip.v4.nft",
}
# web's endpoints: web-a10 (10.244.0.10, node-a), web-b11, web-c12, all on 8080.


def extra(policies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    client = pod("default", "client", ["10.244.0.50"], labels={"app": "client"}, ports=[])
    return [namespace("default", {"team": "shop"}), client, *policies]


ONLY_A10 = policy("default", "web", {
    "podSelector": {"matchLabels": {"app": "web"}},
    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                 "ports": [{"port": 8080}]}],
})
# The ClusterIP's port (80) never reaches a pod: only the targetPort 8080 does.
SERVICE_PORT_ONLY = policy("default", "web", {
    "podSelector": {"matchLabels": {"app": "web"}},
    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                 "ports": [{"port": 80}]}],
})


def _decide(tmp_path: Path, policies: list[dict[str, Any]], mode: str | None) -> Any:
    objects = load_objects([str(CLUSTER)]).merged(load(tmp_path, extra(policies)))
    engine = PolicyEngine.from_objects(objects)
    svc = objects.service("default", "web")
    assert svc is not None
    target = service_target(svc, svc.ports[0], 4)
    assert target is not None
    src = engine.subject(objects.pod("default", "client"))
    ruleset = load_rules([str(RULES[mode])]) if mode else None
    return decide_service(engine, objects, src, target, ruleset, ["192.168.0.2"])


@pytest.mark.parametrize("mode", [None, "iptables", "iptables-legacy", "nftables"])
def test_each_endpoint_is_judged_on_its_target_port(tmp_path: Path, mode: str | None) -> None:
    allowed = _decide(tmp_path, [ONLY_A10], mode)
    assert allowed.source == ("endpointslices" if mode is None else "rules")
    assert [e.endpoint for e in allowed.endpoints] == [
        "10.244.0.10:8080", "10.244.1.11:8080", "10.244.2.12:8080"]
    assert [e.subject.name for e in allowed.endpoints] == [
        "pod/default/web-a10", "pod/default/web-b11", "pod/default/web-c12"]
    assert allowed.allowed
    if mode is not None:
        # The statistic cascade's exact shares, as the kernel implements them.
        assert sum(e.probability for e in allowed.endpoints) == 1
    denied = _decide(tmp_path, [SERVICE_PORT_ONLY], mode)
    assert not denied.allowed
    assert all(not e.decision.allowed for e in denied.endpoints)
    miss = denied.endpoints[0].decision.ingress.misses[0]
    assert miss.reasons == ("ports[0]: port 8080 is not 80/TCP",)


def test_a_service_is_allowed_only_when_every_endpoint_is(tmp_path: Path) -> None:
    one_node = policy("default", "web", {
        "podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"from": [{"podSelector": {}}]}],
    })
    deny_c12 = policy("default", "deny-c12", {
        "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]},
        "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.0.0/16",
                                           "except": ["10.244.0.0/24"]}}]}],
    })
    # Policies add up: web pods admit every pod of the namespace, so all are allowed.
    assert _decide(tmp_path, [one_node, deny_c12], "iptables").allowed
    only_ipblock = _decide(tmp_path, [deny_c12], "nftables")
    assert not only_ipblock.allowed
    assert [e.decision.allowed for e in only_ipblock.endpoints] == [False, False, False]


def test_an_ip_block_on_the_cluster_ip_never_admits(tmp_path: Path) -> None:
    cluster_ip = policy("default", "web", {
        "podSelector": {"matchLabels": {"app": "web"}},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [{"podSelector": {}}]}],
        "egress": [],
    })
    client_egress = policy("default", "client", {
        "podSelector": {"matchLabels": {"app": "client"}},
        "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.96.0.11/32"}}]}],
    })
    for mode in ("iptables", "nftables"):
        d = _decide(tmp_path, [cluster_ip, client_egress], mode)
        assert not d.allowed
        assert "10.244.0.10 is not in ipBlock 10.96.0.11/32" in d.endpoints[0].decision.reason() \
            or "10.244.0.10 is not in ipBlock 10.96.0.11/32" in " ".join(
                d.endpoints[0].decision.egress.misses[0].reasons)


def test_internal_traffic_policy_local_uses_only_the_source_node_endpoints(
    tmp_path: Path,
) -> None:
    cluster = FIXTURES / "clusters" / "itp-local.yaml"
    for mode in (None, "iptables", "nftables"):
        rules = {"iptables": FIXTURES / "iptables" / "itp-local.nft.v4.save",
                 "nftables": FIXTURES / "nft" / "kube-proxy" / "itp-local.v4.nft"}
        objects = load_objects([str(cluster)])
        engine = PolicyEngine.from_objects(objects)
        src = engine.subject(objects.pod("monitoring", "agent-a10"))
        local = objects.service("monitoring", "node-agent")
        remote = objects.service("monitoring", "remote-agent")
        assert local is not None and remote is not None
        ruleset = load_rules([str(rules[mode])]) if mode else None
        near = decide_service(engine, objects, src, service_target(local, local.ports[0], 4),
                              ruleset, ["192.168.0.2"])
        assert [e.endpoint for e in near.endpoints] == ["10.244.0.10:9100"], mode
        far = decide_service(engine, objects, src, service_target(remote, remote.ports[0], 4),
                             ruleset, ["192.168.0.2"])
        assert far.endpoints == [] and not far.allowed, mode


def test_policy_check_cli_for_a_service(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    objs = tmp_path / "extra.yaml"
    load(tmp_path, extra([SERVICE_PORT_ONLY]), "extra.yaml")
    base = ["policy", "check", "-c", str(CLUSTER), "-c", str(objs),
            "--from", "pod/default/client", "--to", "svc/default/web:http"]
    res = kpa(capsys, *base, "-r", str(RULES["iptables"]))
    assert res.code == 1
    first, reason = res.out.splitlines()[:2]
    assert first.startswith("DENIED: pod/default/client -> svc/default/web port http")
    assert "3 of 3 endpoint(s) denied" in reason and "web-a10" in reason
    assert "endpoints from the node's rules (traced)" in res.out
    # Endpoints the same rules deny are explained once.
    assert "(pod/default/web-b11) p=1431655765/4294967296: DENIED, by the same rules as " \
           "10.244.0.10:8080" in res.out
    assert res.out.count("nearest rules that did not") == 1
    doc = json.loads(kpa(capsys, *base, "-o", "json").out)
    assert doc["allowed"] is False and doc["endpoints_from"] == "endpointslices"
    assert [e["pod"] for e in doc["endpoints"]] == [
        "pod/default/web-a10", "pod/default/web-b11", "pod/default/web-c12"]
    assert doc["endpoints"][0]["decision"]["ingress"]["nearest_misses"][0]["location"] == \
        f"{objs}:{_line_of(objs, '- from:')}"


def _line_of(path: Path, text: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip().startswith(text):
            return number
    raise AssertionError(text)


def test_service_matrix_lists_endpoints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    objs = tmp_path / "extra.yaml"
    load(tmp_path, extra([ONLY_A10]), "extra.yaml")
    res = kpa(capsys, "policy", "matrix", "-c", str(CLUSTER), "-c", str(objs),
              "--targets", "services", "-o", "json")
    assert res.code == 0, res.err
    cells = json.loads(res.out)["cells"]
    by_from = {c["from"]: c for c in cells}
    assert by_from["pod/default/client"]["to"] == "svc/default/web"
    assert by_from["pod/default/client"]["allowed"] is True
    assert by_from["pod/default/web-a10"]["allowed"] is False
    assert [e["endpoint"] for e in by_from["pod/default/client"]["endpoints"]] == [
        "10.244.0.10:8080", "10.244.1.11:8080", "10.244.2.12:8080"]


def _objects(tmp_path: Path, fixture: str, docs: list[dict[str, Any]]) -> Any:
    return load_objects([str(FIXTURES / "clusters" / f"{fixture}.yaml")]).merged(
        load(tmp_path, docs, f"{fixture}-extra.yaml"))


@pytest.mark.parametrize("mode", [None, "iptables", "nftables"])
def test_udp_and_sctp_service_ports(tmp_path: Path, mode: str | None) -> None:
    client = pod("telecom", "client", ["10.244.0.50"], labels={"app": "client"}, ports=[])
    sip_only = policy("telecom", "sip", {
        "podSelector": {"matchLabels": {"app": "signalling"}},
        "ingress": [{"ports": [{"port": 5060, "protocol": "UDP"}]}],
    })
    objects = _objects(tmp_path, "udp-sctp", [namespace("telecom"), client, sip_only])
    engine = PolicyEngine.from_objects(objects)
    svc = objects.service("telecom", "signalling")
    assert svc is not None
    rules = {"iptables": FIXTURES / "iptables" / "udp-sctp.nft.v4.save",
             "nftables": FIXTURES / "nft" / "kube-proxy" / "udp-sctp.v4.nft"}
    ruleset = load_rules([str(rules[mode])]) if mode else None
    src = engine.subject(objects.pod("telecom", "client"))
    verdicts = {}
    for sp in svc.ports:
        target = service_target(svc, sp, 4)
        assert target is not None
        d = decide_service(engine, objects, src, target, ruleset, ["192.168.0.2"])
        assert [e.endpoint for e in d.endpoints] == ["10.244.0.10:" + str(sp.port),
                                                     "10.244.1.11:" + str(sp.port)], (mode, sp)
        verdicts[sp.protocol] = d.allowed
    assert verdicts == {"UDP": True, "SCTP": False}


@pytest.mark.parametrize("mode", [None, "iptables", "nftables"])
def test_dual_stack_service_is_judged_per_family(tmp_path: Path, mode: str | None) -> None:
    client = pod("default", "client", ["10.244.0.50", "fd00:10:244::32"],
                 labels={"app": "client"}, ports=[])
    # Only IPv6 clients in the pod range, and not ds-c12's node range.
    v6_only = policy("default", "v6", {
        "podSelector": {"matchLabels": {"app": "web-ds"}},
        "ingress": [{"from": [{"ipBlock": {"cidr": "fd00:10:244::/56"}}]}],
    })
    objects = _objects(tmp_path, "dual-stack", [namespace("default"), client, v6_only])
    engine = PolicyEngine.from_objects(objects)
    svc = objects.service("default", "web-ds")
    assert svc is not None
    for family, allowed in ((4, False), (6, True)):
        suffix = "v4" if family == 4 else "v6"
        rules = {"iptables": FIXTURES / "iptables" / f"dual-stack.nft.{suffix}.save",
                 "nftables": FIXTURES / "nft" / "kube-proxy" / f"dual-stack.{suffix}.nft"}
        ruleset = load_rules([str(rules[mode])]) if mode else None
        node_ip = "192.168.0.2" if family == 4 else "fd00:192:168::2"
        src = engine.subject(objects.pod("default", "client"), family=family)
        target = service_target(svc, svc.ports[0], family)
        assert target is not None
        d = decide_service(engine, objects, src, target, ruleset, [node_ip])
        assert len(d.endpoints) == 3, (mode, family, d.other_outcomes)
        assert d.allowed is allowed, (mode, family)
        if family == 6:
            assert "[fd00:10:244::a]:8080" in {e.endpoint for e in d.endpoints}


def test_named_target_ports_resolve_per_pod_through_the_slices(tmp_path: Path) -> None:
    def web(name: str, ip: str, number: int) -> dict[str, Any]:
        return pod("shop", name, [ip], {"app": "web"},
                   ports=[{"name": "web", "containerPort": number}])

    docs = [
        namespace("shop"),
        pod("shop", "client", ["10.244.0.50"], {"app": "client"}, ports=[]),
        web("old", "10.244.0.10", 8080), web("new", "10.244.0.11", 9090),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "shop", "name": "web"},
         "spec": {"clusterIP": "10.96.0.40", "clusterIPs": ["10.96.0.40"],
                  "ports": [{"name": "http", "port": 80, "targetPort": "web"}]}},
    ]
    # The slice controller writes one slice per resolved port number.
    for name, ip, number in (("old", "10.244.0.10", 8080), ("new", "10.244.0.11", 9090)):
        docs.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": "shop", "name": f"web-{name}",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True},
                           "targetRef": {"kind": "Pod", "namespace": "shop", "name": name}}],
            "ports": [{"name": "http", "port": number, "protocol": "TCP"}],
        })
    docs.append(policy("shop", "web", {
        "podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"ports": [{"port": 8080}]}],
    }))
    objects = load(tmp_path, docs)
    engine = PolicyEngine.from_objects(objects)
    svc = objects.service("shop", "web")
    assert svc is not None
    target = service_target(svc, svc.ports[0], 4)
    assert target is not None
    d = decide_service(engine, objects, engine.subject(objects.pod("shop", "client")), target)
    assert [(e.endpoint, e.decision.allowed) for e in d.endpoints] == [
        ("10.244.0.10:8080", True), ("10.244.0.11:9090", False)]
    assert not d.allowed
    assert "1 of 2 endpoint(s) denied; pod/shop/new" in d.reason()


def test_a_cluster_ip_destination_means_its_service(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    load(tmp_path, extra([ONLY_A10]), "extra.yaml")
    res = kpa(capsys, "policy", "check", "-c", str(CLUSTER), "-c", str(tmp_path / "extra.yaml"),
              "--from", "pod/default/client", "--to", "10.96.0.11:80")
    assert res.code == 0, res.err
    assert res.out.startswith("ALLOWED: pod/default/client -> svc/default/web port http")
    assert "10.96.0.11 is the ClusterIP of Service default/web" in res.err


def test_service_matrix_from_the_node_rules(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    load(tmp_path, extra([ONLY_A10]), "extra.yaml")
    res = kpa(capsys, "policy", "matrix", "-c", str(CLUSTER), "-c", str(tmp_path / "extra.yaml"),
              "--targets", "services", "-r", str(RULES["nftables"]), "--node-ip", "192.168.0.2",
              "-o", "json")
    assert res.code == 0, res.err
    cells = {c["from"]: c for c in json.loads(res.out)["cells"]}
    assert cells["pod/default/client"]["endpoints_from"] == "rules"
    assert cells["pod/default/client"]["allowed"] is True
    assert len(cells["pod/default/client"]["endpoints"]) == 3


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_host_network_source_is_traced_from_the_node_and_seen_with_its_address(
    tmp_path: Path, mode: str
) -> None:
    agent = pod("default", "agent", ["192.168.0.2"], {"app": "agent"}, ports=[],
                host_network=True, node="node-a")
    from_nodes = policy("default", "web", {
        "podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"from": [{"ipBlock": {"cidr": "192.168.0.0/24"}}],
                     "ports": [{"port": 8080}]}],
    })
    objects = load_objects([str(CLUSTER)]).merged(
        load(tmp_path, [namespace("default"), agent, from_nodes]))
    engine = PolicyEngine.from_objects(objects)
    svc = objects.service("default", "web")
    assert svc is not None
    target = service_target(svc, svc.ports[0], 4)
    assert target is not None
    src = engine.subject(objects.pod("default", "agent"))
    d = decide_service(engine, objects, src, target, load_rules([str(RULES[mode])]),
                       ["192.168.0.2"])
    assert len(d.endpoints) == 3 and d.allowed
    assert d.endpoints[0].decision.egress.note is not None  # hostNetwork: no egress isolation


def test_masquerading_rules_are_reported_not_silently_assumed(tmp_path: Path) -> None:
    # kube-proxy with --masquerade-all source-NATs every Service connection.
    cluster = FIXTURES / "clusters" / "masquerade-all.yaml"
    client = pod("default", "client", ["10.244.0.50"], {"app": "client"}, ports=[])
    objects = load_objects([str(cluster)]).merged(load(tmp_path, [namespace("default"), client]))
    engine = PolicyEngine.from_objects(objects)
    svc = objects.service("default", "web")
    assert svc is not None
    target = service_target(svc, svc.ports[0], 4)
    assert target is not None
    src = engine.subject(objects.pod("default", "client"))
    masq = decide_service(engine, objects, src, target,
                          load_rules([str(FIXTURES / "iptables" / "masquerade-all.nft.v4.save")]),
                          ["192.168.0.2"])
    assert masq.endpoints and all("masquerade" in e.notes[0] for e in masq.endpoints)
    plain = decide_service(engine, objects, src, target, load_rules([str(RULES["iptables"])]),
                           ["192.168.0.2"])
    assert plain.endpoints and all(e.notes == () for e in plain.endpoints)


@pytest.mark.parametrize("policies", [[ONLY_A10], [SERVICE_PORT_ONLY], []])
def test_service_cells_at_once_equal_decide_service_per_source(
    tmp_path: Path, policies: list[dict[str, Any]]
) -> None:
    from kpa.policy.services import service_cells

    objects = load_objects([str(CLUSTER)]).merged(load(tmp_path, extra(policies)))
    engine = PolicyEngine.from_objects(objects)
    svc = objects.service("default", "web")
    assert svc is not None
    target = service_target(svc, svc.ports[0], 4)
    assert target is not None
    sources = [engine.subject(p) for p in objects.pods] + [engine.subject(ip="203.0.113.5")]
    cells = service_cells(engine, objects, sources, target)
    for src, cell in zip(sources, cells, strict=True):
        one = decide_service(engine, objects, src, target)
        assert cell.allowed == one.allowed, src.name
        assert cell.endpoints == tuple(
            (e.endpoint, e.subject.name, e.decision.allowed) for e in one.endpoints)
