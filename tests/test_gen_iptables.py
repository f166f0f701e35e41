"""Structure of the rules kpa renders for kube-proxy's iptables mode."""

from __future__ import annotations

import re
import shlex
import time

import pytest

from kpa.gen.cluster import Cluster, Endpoint, Node, Service, ServicePort, random_cluster
from kpa.gen.iptables import (
    LARGE_CLUSTER_ENDPOINTS_THRESHOLD,
    render_kube_proxy_payload,
    render_restore,
)
from kpa.gen.options import ProxierOptions
from kpa.gen.scenarios import SCENARIOS
from kpa.k8s import naming

NODE = "node-a"


def _nodes() -> list[Node]:
    return [
        Node("node-a", "192.168.0.2", "fd00:192:168::2", ["10.244.0.0/24", "fd00:10:244::/64"]),
        Node("node-b", "192.168.0.3", "fd00:192:168::3", ["10.244.1.0/24", "fd00:10:244:1::/64"]),
    ]


def _ep(ip: str, node: str = "node-b", **kw: bool) -> Endpoint:
    return Endpoint(ip=ip, node_name=node, pod_name=f"p-{ip.replace(':', '-')}", **kw)


def _svc(**kw: object) -> Service:
    base: dict[str, object] = {
        "namespace": "ns",
        "name": "svc",
        "cluster_ips": ["10.96.0.50"],
        "ports": [ServicePort(name="http", port=80, target_port=8080)],
    }
    base.update(kw)
    return Service(**base)  # type: ignore[arg-type]


def _payload(*services: Service, family: str = "ipv4", **opts: object) -> str:
    cluster = Cluster(nodes=_nodes(), services=list(services))
    options = ProxierOptions(node_name=NODE, **opts)  # type: ignore[arg-type]
    return render_kube_proxy_payload(cluster, options, family)  # type: ignore[arg-type]


def _table(payload: str, table: str) -> list[str]:
    lines = payload.splitlines()
    start = lines.index(f"*{table}")
    end = lines.index("COMMIT", start)
    return lines[start + 1 : end]


def _rules(payload: str, table: str, chain: str) -> list[str]:
    return [r for r in _table(payload, table) if r.startswith(f"-A {chain} ")]


def _chains(payload: str, table: str) -> set[str]:
    return {line[1:].split()[0] for line in _table(payload, table) if line.startswith(":")}


SPN = "ns/svc:http"
SVC = naming.svc_chain(SPN, "tcp")
SVL = naming.svl_chain(SPN, "tcp")
EXT = naming.ext_chain(SPN, "tcp")
FW = naming.fw_chain(SPN, "tcp")


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_probability_cascade_is_one_over_remaining(n: int) -> None:
    eps = [_ep(f"10.244.1.{10 + i}") for i in range(n)]
    payload = _payload(_svc(endpoints=eps))
    jumps = [r for r in _rules(payload, "nat", SVC) if "KUBE-SEP-" in r]
    assert len(jumps) == n
    probs = []
    for rule in jumps:
        m = re.search(r"--probability (\S+)", rule)
        probs.append(m.group(1) if m else None)
    assert probs[-1] is None  # the last endpoint is the catch-all
    assert probs[:-1] == [f"{1 / (n - i):.10f}" for i in range(n - 1)]
    # Product of "not chosen" so far times p gives each endpoint exactly 1/n.
    remaining = 1.0
    for p in probs[:-1]:
        assert p is not None
        assert remaining * float(p) == pytest.approx(1 / n, abs=1e-9)
        remaining *= 1 - float(p)
    assert remaining == pytest.approx(1 / n, abs=1e-9)


def test_endpoints_sorted_by_string_and_hashed_like_kube_proxy() -> None:
    eps = [_ep("10.244.1.9"), _ep("10.244.1.10"), _ep("10.244.0.2", NODE)]
    payload = _payload(_svc(endpoints=eps))
    targets = [r.split(" -j ")[-1] for r in _rules(payload, "nat", SVC) if "KUBE-SEP-" in r]
    order = sorted(["10.244.1.9:8080", "10.244.1.10:8080", "10.244.0.2:8080"])
    assert targets == [naming.sep_chain(SPN, "tcp", e) for e in order]
    for ep in order:
        sep = naming.sep_chain(SPN, "tcp", ep)
        dnat = _rules(payload, "nat", sep)[-1]
        assert dnat.endswith(f"-m tcp -p tcp -j DNAT --to-destination {ep}")


def test_service_without_endpoints_is_rejected_in_filter_table() -> None:
    svc = _svc(
        type="LoadBalancer",
        ports=[ServicePort(name="http", port=80, target_port=8080, node_port=30080)],
        lb_ingress_ips=["203.0.113.9"],
        external_ips=["198.51.100.9"],
    )
    payload = _payload(svc)
    assert _rules(payload, "filter", "KUBE-SERVICES") == [
        '-A KUBE-SERVICES -m comment --comment "ns/svc:http has no endpoints" -m tcp -p tcp'
        " -d 10.96.0.50 --dport 80 -j REJECT"
    ]
    ext = _rules(payload, "filter", "KUBE-EXTERNAL-SERVICES")
    assert len(ext) == 3 and all(r.endswith("-j REJECT") for r in ext)
    assert any("-m addrtype --dst-type LOCAL" in r and "--dport 30080" in r for r in ext)
    # No NAT state at all for the service.
    assert not any("ns/svc" in line for line in _table(payload, "nat"))


def test_source_ranges_build_firewall_chain() -> None:
    svc = _svc(
        type="LoadBalancer",
        ports=[ServicePort(name="http", port=80, target_port=8080, node_port=30080)],
        lb_ingress_ips=["203.0.113.9"],
        lb_source_ranges=["198.51.100.0/25", "192.168.0.0/24"],
        endpoints=[_ep("10.244.1.10")],
    )
    payload = _payload(svc)
    assert FW in _chains(payload, "nat")
    lb = [r for r in _rules(payload, "nat", "KUBE-SERVICES") if "loadbalancer IP" in r]
    assert lb == [
        '-A KUBE-SERVICES -m comment --comment "ns/svc:http loadbalancer IP" -m tcp -p tcp'
        f" -d 203.0.113.9 --dport 80 -j {FW}"
    ]
    fw = _rules(payload, "nat", FW)
    sources = [shlex.split(r)[shlex.split(r).index("-s") + 1] for r in fw if " -s " in r]
    # The node IP falls inside 192.168.0.0/24, so the VIP itself is allowed too.
    assert sources == ["198.51.100.0/25", "192.168.0.0/24", "203.0.113.9"]
    assert all(r.endswith(f"-j {EXT}") for r in fw[:-1])
    assert " -j " not in fw[-1]  # the last rule only counts; the filter table drops
    drop = _rules(payload, "filter", "KUBE-PROXY-FIREWALL")
    assert drop == [
        f'-A KUBE-PROXY-FIREWALL -m comment --comment "ns/svc:http traffic not accepted by {FW}"'
        " -m tcp -p tcp -d 203.0.113.9 --dport 80 -j DROP"
    ]


def test_etp_local_without_local_endpoints_drops_external_traffic() -> None:
    svc = _svc(
        type="NodePort",
        ports=[ServicePort(name="http", port=80, target_port=8080, node_port=30080)],
        external_traffic_policy="Local",
        endpoints=[_ep("10.244.1.10")],
    )
    payload = _payload(svc)
    assert SVL not in _chains(payload, "nat")
    ext = _rules(payload, "nat", EXT)
    # Pods and the node itself are short-circuited to the cluster-wide chain...
    assert any("-s 10.244.0.0/16" in r and r.endswith(f"-j {SVC}") for r in ext)
    assert any("--src-type LOCAL" in r and r.endswith(f"-j {SVC}") for r in ext)
    # ...everything else falls off the end of EXT and is dropped in filter.
    assert not any(r.endswith(f"-j {SVL}") for r in ext)
    assert _rules(payload, "filter", "KUBE-EXTERNAL-SERVICES") == [
        '-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns/svc:http has no local endpoints"'
        " -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30080 -j DROP"
    ]
    # ClusterIP traffic still works.
    assert any(r.endswith(f"-j {SVC}") for r in _rules(payload, "nat", "KUBE-SERVICES"))


def test_etp_local_with_local_endpoint_uses_local_chain() -> None:
    svc = _svc(
        type="NodePort",
        ports=[ServicePort(name="http", port=80, target_port=8080, node_port=30080)],
        external_traffic_policy="Local",
        endpoints=[_ep("10.244.1.10"), _ep("10.244.0.10", NODE)],
    )
    payload = _payload(svc)
    assert _rules(payload, "nat", EXT)[-1] == f"-A {EXT} -j {SVL}"
    local = [r for r in _rules(payload, "nat", SVL) if "KUBE-SEP-" in r]
    assert local == [
        f'-A {SVL} -m comment --comment "ns/svc:http -> 10.244.0.10:8080"'
        f" -j {naming.sep_chain(SPN, 'tcp', '10.244.0.10:8080')}"
    ]
    assert not _rules(payload, "filter", "KUBE-EXTERNAL-SERVICES")


def test_itp_local_without_local_endpoints_drops_cluster_ip() -> None:
    payload = _payload(_svc(internal_traffic_policy="Local", endpoints=[_ep("10.244.1.10")]))
    assert _rules(payload, "filter", "KUBE-SERVICES") == [
        '-A KUBE-SERVICES -m comment --comment "ns/svc:http has no local endpoints" -m tcp -p tcp'
        " -d 10.96.0.50 --dport 80 -j DROP"
    ]
    assert SVC not in _chains(payload, "nat")


def test_itp_local_routes_cluster_ip_to_local_chain() -> None:
    payload = _payload(
        _svc(
            internal_traffic_policy="Local", endpoints=[_ep("10.244.1.10"), _ep("10.244.0.7", NODE)]
        )
    )
    cip = [r for r in _rules(payload, "nat", "KUBE-SERVICES") if "cluster IP" in r]
    assert cip[0].endswith(f"-j {SVL}")
    assert SVC not in _chains(payload, "nat")
    # The off-cluster masquerade rule lives in the chain actually used.
    assert any("! -s 10.244.0.0/16" in r for r in _rules(payload, "nat", SVL))


def test_terminating_endpoints_are_a_fallback_only() -> None:
    ready = _ep("10.244.1.10")
    draining = _ep("10.244.1.11", ready=False, serving=True, terminating=True)
    dead = _ep("10.244.1.12", ready=False, serving=False, terminating=True)
    with_ready = _payload(_svc(endpoints=[ready, draining, dead]))
    used_when_ready = [r for r in _rules(with_ready, "nat", SVC) if "KUBE-SEP" in r]
    assert len(used_when_ready) == 1
    assert used_when_ready[0].endswith(naming.sep_chain(SPN, "tcp", "10.244.1.10:8080"))
    only_terminating = _payload(_svc(endpoints=[draining, dead]))
    used = [r for r in _rules(only_terminating, "nat", SVC) if "KUBE-SEP" in r]
    assert used == [
        f'-A {SVC} -m comment --comment "ns/svc:http -> 10.244.1.11:8080"'
        f" -j {naming.sep_chain(SPN, 'tcp', '10.244.1.11:8080')}"
    ]
    none_serving = _payload(_svc(endpoints=[dead]))
    assert "has no endpoints" in _rules(none_serving, "filter", "KUBE-SERVICES")[0]


def test_session_affinity_rules() -> None:
    svc = _svc(
        session_affinity="ClientIP",
        affinity_timeout=600,
        endpoints=[_ep("10.244.1.10"), _ep("10.244.1.11")],
    )
    payload = _payload(svc)
    svc_rules = _rules(payload, "nat", SVC)
    seps = [naming.sep_chain(SPN, "tcp", e) for e in ("10.244.1.10:8080", "10.244.1.11:8080")]
    recent = [r for r in svc_rules if "-m recent" in r]
    assert recent == [
        f'-A {SVC} -m comment --comment "ns/svc:http -> {ep}" -m recent --name {sep}'
        f" --rcheck --seconds 600 --reap -j {sep}"
        for ep, sep in zip(("10.244.1.10:8080", "10.244.1.11:8080"), seps, strict=True)
    ]
    # Affinity checks come before the random spread.
    assert svc_rules.index(recent[-1]) < min(i for i, r in enumerate(svc_rules) if "statistic" in r)
    for sep in seps:
        assert (
            f"-m recent --name {sep} --set -m tcp -p tcp -j DNAT" in _rules(payload, "nat", sep)[-1]
        )


def test_masquerade_all_and_mark_bit() -> None:
    payload = _payload(_svc(endpoints=[_ep("10.244.1.10")]), masquerade_all=True, masquerade_bit=5)
    masq = _rules(payload, "nat", SVC)[0]
    assert masq.endswith("--dport 80 -j KUBE-MARK-MASQ") and " -s " not in masq
    assert _rules(payload, "nat", "KUBE-MARK-MASQ") == [
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x000020"
    ]


def test_default_masquerade_mark_is_bit_14() -> None:
    payload = _payload(_svc(endpoints=[_ep("10.244.1.10")]))
    assert "-A KUBE-POSTROUTING -m mark ! --mark 0x004000/0x004000 -j RETURN" in payload
    assert (
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT"'
        " -j MASQUERADE --random-fully"
    ) in payload


@pytest.mark.parametrize(
    ("family", "localhost", "expected_tail"),
    [
        ("ipv4", True, "-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"),
        ("ipv4", False, "-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS"),
        ("ipv6", True, "-m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS"),
    ],
)
def test_nodeports_jump_is_last_and_handles_localhost(
    family: str, localhost: bool, expected_tail: str
) -> None:
    svc = _svc(
        cluster_ips=["10.96.0.50", "fd00:10:96::50"],
        endpoints=[_ep("10.244.1.10"), _ep("fd00:10:244:1::10")],
    )
    payload = _payload(svc, family=family, localhost_nodeports=localhost)
    last = _rules(payload, "nat", "KUBE-SERVICES")[-1]
    assert "NOTE: this must be the last rule in this chain" in last
    assert last.endswith(expected_tail)
    has_localnet_guard = "block incoming localnet connections" in payload
    assert has_localnet_guard == (family == "ipv4" and localhost)


def test_nodeport_addresses_give_per_ip_jumps() -> None:
    payload = _payload(_svc(endpoints=[_ep("10.244.1.10")]), nodeport_addresses=("192.168.0.0/24",))
    last = _rules(payload, "nat", "KUBE-SERVICES")[-1]
    assert last.endswith("-d 192.168.0.2 -j KUBE-NODEPORTS")
    # 127.0.0.1 is outside the CIDRs, so localhost NodePorts are off.
    assert "block incoming localnet connections" not in payload


def test_ipv6_uses_ipv6_addresses_only() -> None:
    svc = _svc(
        cluster_ips=["10.96.0.50", "fd00:10:96::50"],
        external_ips=["198.51.100.9", "2001:db8:198::9"],
        endpoints=[_ep("10.244.1.10"), _ep("fd00:10:244:1::10")],
    )
    payload = _payload(svc, family="ipv6")
    assert "10.96.0.50" not in payload and "198.51.100.9" not in payload
    assert "-d fd00:10:96::50 --dport 80" in payload
    assert "--to-destination [fd00:10:244:1::10]:8080" in payload
    assert naming.sep_chain(SPN, "tcp", "[fd00:10:244:1::10]:8080") in payload
    assert "-s fd00:10:244:1::10 -j KUBE-MARK-MASQ" in payload


def test_large_clusters_drop_endpoint_comments() -> None:
    per_service = 10
    services = LARGE_CLUSTER_ENDPOINTS_THRESHOLD // per_service

    def build(n_services: int) -> str:
        svcs = [
            _svc(
                name=f"s{i}",
                cluster_ips=[f"10.96.{i // 200}.{i % 200 + 10}"],
                endpoints=[_ep(f"10.244.1.{j + 10}") for j in range(per_service)],
            )
            for i in range(n_services)
        ]
        return _payload(*svcs)

    at_threshold = build(services)  # exactly 1000 endpoints: comments kept
    above = build(services + 1)
    sep_rule = next(r for r in _table(at_threshold, "nat") if r.startswith("-A KUBE-SEP-"))
    assert "-m comment" in sep_rule
    seps = [r for r in _table(above, "nat") if r.startswith("-A KUBE-SEP-")]
    assert seps and not any("-m comment" in r for r in seps)
    svc_to_sep = [
        r for r in _table(above, "nat") if r.startswith("-A KUBE-SVC-") and "KUBE-SEP-" in r
    ]
    assert not any("-m comment" in r for r in svc_to_sep)
    # The cluster-IP masquerade rule keeps its comment regardless.
    assert any(r.startswith("-A KUBE-SVC-") and "cluster IP" in r for r in _table(above, "nat"))


def test_every_chain_jumped_to_is_declared() -> None:
    for build in SCENARIOS.values():
        cluster, options = build()
        for family in cluster.families:
            payload = render_restore(cluster, options, family)
            for table in ("filter", "nat"):
                declared = _chains(payload, table)
                for rule in _table(payload, table):
                    m = re.search(r" -j (KUBE-\S+)", rule)
                    if m:
                        assert m.group(1) in declared, rule


def test_builtin_chain_jumps_follow_prepend_order() -> None:
    cluster, options = SCENARIOS["clusterip"]()
    payload = render_restore(cluster, options, "ipv4")
    inputs = [r.split(" -j ")[-1] for r in _rules(payload, "filter", "INPUT")]
    assert inputs == [
        "KUBE-FIREWALL",
        "KUBE-PROXY-FIREWALL",
        "KUBE-NODEPORTS",
        "KUBE-EXTERNAL-SERVICES",
    ]
    forwards = [r.split(" -j ")[-1] for r in _rules(payload, "filter", "FORWARD")]
    assert forwards == [
        "KUBE-PROXY-FIREWALL",
        "KUBE-FORWARD",
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
    ]
    assert _rules(payload, "nat", "PREROUTING") == [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
    ]


def test_chain_names_agree_with_comments() -> None:
    cluster = random_cluster(11, 80, 4)
    payload = render_kube_proxy_payload(cluster, ProxierOptions(node_name="node-0"), "ipv4")
    pat = re.compile(r'--comment "(\S+) cluster IP" -m (\w+) .* -j (KUBE-SV[CL]-\S+)')
    checked = 0
    for rule in _rules(payload, "nat", "KUBE-SERVICES"):
        m = pat.search(rule)
        if m:
            spn, proto, chain = m.groups()
            assert chain in (naming.svc_chain(spn, proto), naming.svl_chain(spn, proto))
            checked += 1
    assert checked > 50


def test_rendering_is_fast() -> None:
    cluster = random_cluster(5, 1000, 10)
    start = time.perf_counter()
    payload = render_restore(cluster, ProxierOptions(node_name="node-0"), "ipv4")
    elapsed = time.perf_counter() - start
    assert payload.count("\n") > 30_000
    # 10x this size must stay within seconds; leave slack for slow CI.
    assert elapsed < 3.0
