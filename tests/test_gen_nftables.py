"""kube-proxy nftables-mode writer: real-nft validity, structure that matters for
tracing (load balancing, no-endpoint handling, firewalls, affinity, masquerade),
names computed like kpa.k8s.naming, and the committed real-kernel fixtures."""

from __future__ import annotations

import json
import re
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kpa.gen.capture import CaptureError
from kpa.gen.cluster import Family, pod_ip
from kpa.gen.iptables import categorize_endpoints, port_views
from kpa.gen.nft_capture import capture_nft, check_nft
from kpa.gen.nftables import (
    UNSUPPORTED_SCENARIOS,
    nft_scenarios,
    render_nft,
    render_random_nft,
)
from kpa.gen.options import ProxierOptions
from kpa.gen.scenarios import SCENARIOS
from kpa.k8s import naming

FIXTURES = Path(__file__).parent / "fixtures" / "nft" / "kube-proxy"
_SUFFIX = {"ipv4": "v4", "ipv6": "v6"}

_RULE = re.compile(r"^add rule ip6? kube-proxy (\S+) (.*)$")
_CHAIN = re.compile(r"^add chain ip6? kube-proxy (\S+)")
_ELEMENT = re.compile(r"^add element ip6? kube-proxy (\S+) \{ (.*) \}$")
_SET = re.compile(r"^add (?:set|map) ip6? kube-proxy (\S+) \{ (.*) \}$")


@dataclass
class Payload:
    """The parts of an ``nft -f`` payload the assertions look at."""

    text: str
    chains: set[str] = field(default_factory=set)
    rules: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    elements: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    sets: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Payload:
        payload = cls(text)
        for line in text.splitlines():
            if m := _RULE.match(line):
                payload.rules[m.group(1)].append(m.group(2))
            elif m := _CHAIN.match(line):
                payload.chains.add(m.group(1))
            elif m := _ELEMENT.match(line):
                payload.elements[m.group(1)].append(m.group(2))
            elif m := _SET.match(line):
                payload.sets[m.group(1)] = m.group(2)
        return payload

    def element(self, container: str, key: str) -> str | None:
        """The value (or whole entry, for sets) stored under ``key``."""
        for entry in self.elements[container]:
            head, _, value = entry.partition(" : ")
            if head.split(" comment ")[0] == key:
                return value or head
        return None


def _scenario_payload(name: str, family: Family = "ipv4") -> Payload:
    cluster, options = SCENARIOS[name]()
    return Payload.parse(render_nft(cluster, options, family))


def _scenario_cases() -> list[tuple[str, Family]]:
    cases: list[tuple[str, Family]] = []
    for name in nft_scenarios():
        cluster, _ = SCENARIOS[name]()
        cases.extend((name, fam) for fam in cluster.families)
    return cases


def _numgen_targets(rule: str) -> list[str]:
    m = re.search(r"numgen random mod (\d+) vmap \{ (.*) \}", rule)
    assert m is not None, rule
    targets = re.findall(r"(\d+) : goto (\S+)", m.group(2))
    assert [int(i) for i, _ in targets] == list(range(int(m.group(1))))
    return [t for _, t in targets]


# ---------------------------------------------------------------- structure


@pytest.mark.parametrize(("name", "family"), _scenario_cases())
def test_every_referenced_chain_and_set_is_declared(name: str, family: Family) -> None:
    payload = _scenario_payload(name, family)
    declared_sets = set(payload.sets)
    for chain, rules in payload.rules.items():
        assert chain in payload.chains, chain
        for rule in rules:
            for target in re.findall(r"(?:goto|jump) (\S+)", rule):
                assert target in payload.chains, (chain, rule)
            for ref in re.findall(r"@(\S+)", rule):
                assert ref in declared_sets, (chain, rule)
    for entries in payload.elements.values():
        for entry in entries:
            for target in re.findall(r"goto (\S+)", entry):
                assert target in payload.chains, entry


@pytest.mark.parametrize(("name", "family"), _scenario_cases())
def test_numgen_modulus_matches_the_endpoints_the_iptables_writer_picks(
    name: str, family: Family
) -> None:
    cluster, options = SCENARIOS[name]()
    payload = Payload.parse(render_nft(cluster, options, family))
    balanced: set[str] = set()
    for view in port_views(cluster, options, family):
        cat = categorize_endpoints(view)
        for chain_of, chosen in (
            (naming.nft_service_chain, cat.cluster),
            (naming.nft_local_chain, cat.local),
        ):
            chain = chain_of(view.name, view.protocol)
            if chain not in payload.chains:
                continue
            balanced.add(chain)
            numgen = [r for r in payload.rules[chain] if r.startswith("numgen")]
            assert len(numgen) == 1, chain
            assert _numgen_targets(numgen[0]) == [
                naming.nft_endpoint_chain(view.name, view.protocol, ep.endpoint) for ep in chosen
            ]
            for ep in chosen:
                target = naming.nft_endpoint_chain(view.name, view.protocol, ep.endpoint)
                assert payload.rules[target][-1] == (
                    f"meta l4proto {view.protocol} dnat to {ep.endpoint}"
                )
    # Every per-service balancing chain was accounted for above.
    assert balanced == {
        c for c in payload.chains if c.startswith(("service-", "local-")) and "/" in c
    }


def test_clusterip_balances_over_all_three_endpoints_with_kube_proxy_names() -> None:
    payload = _scenario_payload("clusterip")
    spn = naming.service_port_name("default", "web", "http")
    chain = naming.nft_service_chain(spn, "tcp")
    assert chain == "service-SUSTUHLJ-default/web/tcp/http"
    assert payload.element("service-ips", "10.96.0.11 . tcp . 80") == f"goto {chain}"
    assert payload.element("cluster-ips", "10.96.0.11") is not None
    expected = [
        naming.nft_endpoint_chain(spn, "tcp", ep)
        for ep in ("10.244.0.10:8080", "10.244.1.11:8080", "10.244.2.12:8080")
    ]
    assert _numgen_targets(payload.rules[chain][-1]) == expected
    # Off-cluster sources are masqueraded; the endpoint hairpin is too.
    assert payload.rules[chain][0] == (
        "ip daddr 10.96.0.11 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade"
    )
    assert payload.rules[expected[0]] == [
        "ip saddr 10.244.0.10 jump mark-for-masquerade",
        "meta l4proto tcp dnat to 10.244.0.10:8080",
    ]


def test_names_match_kube_proxy_test_vectors() -> None:
    # pkg/proxy/nftables/proxier_test.go uses these for ns1/svc1:p80.
    assert naming.nft_service_chain("ns1/svc1:p80", "tcp") == "service-ULMVA6XW-ns1/svc1/tcp/p80"
    assert (
        naming.nft_endpoint_chain("ns1/svc1:p80", "tcp", "[fd00:10:180::2:1]:80")
        == "endpoint-2CRNCTTE-ns1/svc1/tcp/p80__fd00.10.180..2.1/80"
    )


def test_no_endpoints_service_is_rejected_not_dispatched() -> None:
    payload = _scenario_payload("no-endpoints")
    spn = naming.service_port_name("default", "empty", "http")
    for key in ("10.96.0.22 . tcp . 80", "198.51.100.30 . tcp . 80", "203.0.113.30 . tcp . 80"):
        assert payload.element("no-endpoint-services", key) == "goto reject-chain"
        assert payload.element("service-ips", key) is None
    assert payload.element("no-endpoint-nodeports", "tcp . 30700") == "goto reject-chain"
    assert payload.element("service-nodeports", "tcp . 30700") is None
    assert f'comment "{spn}"' in payload.text
    assert naming.nft_service_chain(spn, "tcp") not in payload.chains
    assert naming.nft_external_chain(spn, "tcp") not in payload.chains
    # Endpoints that are neither ready nor serving count as none.
    assert payload.element("no-endpoint-services", "10.96.0.23 . tcp . 80") == "goto reject-chain"
    assert payload.rules["reject-chain"] == ["reject"]
    assert payload.rules["service-endpoints-check"] == [
        "ip daddr . meta l4proto . th dport vmap @no-endpoint-services"
    ]


def test_source_ranges_install_a_firewall_that_lets_the_node_reach_its_vip() -> None:
    payload = _scenario_payload("loadbalancer-source-ranges")
    spn = naming.service_port_name("shop", "frontend", "https")
    fw = naming.nft_firewall_chain(spn, "tcp")
    assert payload.element("firewall-ips", "203.0.113.10 . tcp . 443") == f"goto {fw}"
    # 192.168.0.0/16 holds the node IP, so the VIP itself is allowed as a source.
    assert payload.rules[fw] == [
        "ip saddr != { 198.51.100.0/25 , 192.168.0.0/16 , 203.0.113.10 } drop"
    ]
    assert payload.element("service-ips", "203.0.113.10 . tcp . 443") == (
        f"goto {naming.nft_external_chain(spn, 'tcp')}"
    )
    assert payload.rules["firewall-check"] == [
        "ip daddr . meta l4proto . th dport vmap @firewall-ips"
    ]
    assert "ct state new jump firewall-check" in payload.rules["filter-prerouting"]


def test_session_affinity_uses_timed_sets_per_endpoint() -> None:
    payload = _scenario_payload("session-affinity")
    for name, port_name, timeout, count in (
        ("sticky", "http", 10800, 3),
        ("sticky-short", "", 600, 2),
    ):
        spn = naming.service_port_name("payments", name, port_name)
        chain = naming.nft_service_chain(spn, "tcp")
        endpoints = _numgen_targets(payload.rules[chain][-1])
        assert len(endpoints) == count
        affinity_rules = [r for r in payload.rules[chain] if " saddr @affinity-" in r]
        assert len(affinity_rules) == count
        for endpoint_chain in endpoints:
            affinity = "affinity-" + endpoint_chain.removeprefix("endpoint-")
            assert payload.sets[affinity] == (
                f"type ipv4_addr ; flags dynamic,timeout ; timeout {timeout}s ;"
            )
            assert f"ip saddr @{affinity} goto {endpoint_chain}" in affinity_rules
            assert f"update @{affinity} {{ ip saddr }}" in payload.rules[endpoint_chain]


def test_internal_traffic_policy_local() -> None:
    payload = _scenario_payload("itp-local")
    with_local = naming.service_port_name("monitoring", "node-agent", "metrics")
    local = naming.nft_local_chain(with_local, "tcp")
    assert payload.element("service-ips", "10.96.0.18 . tcp . 9100") == f"goto {local}"
    # Only node-a's endpoint is used.
    assert _numgen_targets(payload.rules[local][-1]) == [
        naming.nft_endpoint_chain(with_local, "tcp", "10.244.0.10:9100")
    ]
    # No local endpoint: dropped, not rejected, since endpoints exist elsewhere.
    assert payload.element("no-endpoint-services", "10.96.0.19 . tcp . 9100") == "drop"


def test_external_traffic_policy_local() -> None:
    payload = _scenario_payload("etp-local")
    spn = naming.service_port_name("ingress", "lb-remote-only", "http")
    ext = naming.nft_external_chain(spn, "tcp")
    cluster_chain = naming.nft_service_chain(spn, "tcp")
    assert payload.rules[ext] == [
        f'ip saddr 10.244.0.0/16 goto {cluster_chain} comment "short-circuit pod traffic"',
        'fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"',
        f'fib saddr type local goto {cluster_chain} comment "short-circuit local traffic"',
    ]
    assert payload.element("no-endpoint-services", "203.0.113.21 . tcp . 80") == "drop"
    assert payload.element("no-endpoint-nodeports", "tcp . 30501") == "drop"
    with_local = naming.service_port_name("ingress", "lb-local", "http")
    ext_local = naming.nft_external_chain(with_local, "tcp")
    assert payload.rules[ext_local][-1] == f"goto {naming.nft_local_chain(with_local, 'tcp')}"
    # Cluster policy masquerades everything reaching an external destination.
    nodeport_spn = naming.service_port_name("default", "web-np", "http")
    np_payload = _scenario_payload("nodeport")
    assert np_payload.rules[naming.nft_external_chain(nodeport_spn, "tcp")] == [
        "jump mark-for-masquerade",
        f"goto {naming.nft_service_chain(nodeport_spn, 'tcp')}",
    ]


def test_terminating_endpoints_are_a_fallback_only() -> None:
    payload = _scenario_payload("terminating")
    draining = naming.service_port_name("default", "draining", "http")
    # Two serving-terminating endpoints; the non-serving one is never used.
    targets = _numgen_targets(payload.rules[naming.nft_service_chain(draining, "tcp")][-1])
    assert targets == [
        naming.nft_endpoint_chain(draining, "tcp", ep)
        for ep in ("10.244.0.10:8080", "10.244.1.11:8080")
    ]
    rolling = naming.service_port_name("default", "rolling", "http")
    # Cluster policy ignores the terminating pod; Local falls back to it.
    assert len(_numgen_targets(payload.rules[naming.nft_service_chain(rolling, "tcp")][-1])) == 2
    assert _numgen_targets(payload.rules[naming.nft_local_chain(rolling, "tcp")][-1]) == [
        naming.nft_endpoint_chain(rolling, "tcp", "10.244.0.10:8080")
    ]


def test_masquerade_all_marks_every_clusterip_connection() -> None:
    payload = _scenario_payload("masquerade-all")
    spn = naming.service_port_name("default", "web", "http")
    assert payload.rules[naming.nft_service_chain(spn, "tcp")][0] == (
        "ip daddr 10.96.0.11 tcp dport 80 jump mark-for-masquerade"
    )
    assert payload.rules["mark-for-masquerade"] == ["mark set mark or 0x004000"]
    assert payload.rules["masquerading"] == [
        "mark and 0x004000 == 0 return",
        "mark set mark xor 0x004000",
        "masquerade fully-random",
    ]


def test_nodeports_default_to_the_primary_node_ip_and_never_localhost() -> None:
    for name in ("nodeport", "nodeport-addresses", "no-localhost-nodeports"):
        payload = _scenario_payload(name)
        assert payload.elements["nodeport-ips"] == ["192.168.0.2"], name
        assert "127.0.0.1" not in payload.text
        assert payload.rules["services"][-1] == (
            "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"
        )
    assert "localhost-nodeports" in UNSUPPORTED_SCENARIOS
    assert "localhost-nodeports" not in nft_scenarios()


def test_nodeport_addresses_matching_everything_use_fib() -> None:
    cluster, _ = SCENARIOS["nodeport"]()
    options = ProxierOptions(node_name="node-a", nodeport_addresses=("0.0.0.0/0",))
    payload = Payload.parse(render_nft(cluster, options, "ipv4"))
    assert "delete set ip kube-proxy nodeport-ips" in payload.text
    assert payload.rules["services"][-1] == (
        "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports"
    )
    assert payload.rules["nodeport-endpoints-check"] == [
        "ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports"
    ]


def test_ipv6_uses_the_ip6_table_and_bracketed_dnat() -> None:
    payload = _scenario_payload("ipv6", "ipv6")
    assert payload.text.startswith('add table ip6 kube-proxy { comment "rules for kube-proxy" ; }')
    assert " ip " not in payload.text.replace("add table ip6", "")
    spn = naming.service_port_name("default", "web6", "http")
    pod = pod_ip("ipv6", 0, 10)
    endpoint = naming.nft_endpoint_chain(spn, "tcp", f"[{pod}]:8080")
    assert "." in endpoint and ":" not in endpoint
    assert payload.rules[endpoint][-1] == f"meta l4proto tcp dnat to [{pod}]:8080"
    assert payload.elements["nodeport-ips"] == ["fd00:192:168::2"]
    assert (
        payload.element("no-endpoint-services", "fd00:10:96::c . tcp . 80") == "goto reject-chain"
    )


def test_base_chains_hooks_and_priorities() -> None:
    payload = _scenario_payload("clusterip")
    lines = payload.text.splitlines()
    specs = [line for line in lines if " hook " in line]
    assert [s.split(" kube-proxy ")[1] for s in specs] == [
        "filter-prerouting { type filter hook prerouting priority -110 ; }",
        "filter-input { type filter hook input priority -110 ; }",
        "filter-forward { type filter hook forward priority -110 ; }",
        "filter-output { type filter hook output priority -110 ; }",
        "filter-output-post-dnat { type filter hook output priority -90 ; }",
        "nat-prerouting { type nat hook prerouting priority -100 ; }",
        "nat-output { type nat hook output priority -100 ; }",
        "nat-postrouting { type nat hook postrouting priority 100 ; }",
    ]
    assert payload.rules["cluster-ips-check"] == [
        'ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"',
        'ip daddr { 10.96.0.0/12 } drop comment "Drop traffic to unallocated ClusterIPs"',
    ]


def test_random_payload_is_deterministic_and_family_checked() -> None:
    first = render_random_nft(7, 60, 4)
    assert first == render_random_nft(7, 60, 4)
    assert first != render_random_nft(8, 60, 4)
    dual = render_random_nft(7, 20, 2, "ipv6", families=("ipv4", "ipv6"))
    assert dual.startswith("add table ip6 kube-proxy")
    with pytest.raises(ValueError):
        render_random_nft(7, 5, 1, "ipv6", families=("ipv4",))


# ---------------------------------------------------------------- real nft


@pytest.mark.kernel
@pytest.mark.parametrize(("name", "family"), _scenario_cases())
def test_real_nft_accepts_every_scenario(name: str, family: Family) -> None:
    cluster, options = SCENARIOS[name]()
    check_nft(render_nft(cluster, options, family))


@pytest.mark.kernel
def test_real_nft_accepts_a_random_mixed_cluster() -> None:
    # Mixed protocols, policies, affinity timeouts and empty Services.
    check_nft(render_random_nft(3, 300, 4))
    check_nft(render_random_nft(3, 60, 3, "ipv6", families=("ipv4", "ipv6")))


@pytest.mark.kernel
def test_capture_reports_nft_errors_and_removes_its_namespace() -> None:
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    with pytest.raises(CaptureError, match="nft refused"):
        capture_nft("add rule ip nosuchtable nosuchchain accept\n")
    after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert after == before


def _installed_nft_version() -> str:
    out = subprocess.run(["nft", "--version"], capture_output=True, text=True).stdout
    return out.split()[1].lstrip("v") if out else ""


@pytest.mark.kernel
@pytest.mark.parametrize(("name", "family"), _scenario_cases())
def test_fixtures_are_what_real_nft_prints_for_the_current_writer(
    name: str, family: Family
) -> None:
    text_path = FIXTURES / f"{name}.{_SUFFIX[family]}.nft"
    json_path = FIXTURES / f"{name}.{_SUFFIX[family]}.json"
    recorded = json.loads(json_path.read_text())["nftables"][0]["metainfo"]["version"]
    if recorded != _installed_nft_version():
        pytest.skip(f"fixtures were printed by nft {recorded}; listing format may differ")
    cluster, options = SCENARIOS[name]()
    live = capture_nft(render_nft(cluster, options, family))
    assert live == text_path.read_text(), (
        "stale fixture: python -m kpa.gen.nftables fixtures --only " + name
    )


def test_fixture_set_is_complete_and_holds_only_kube_proxy_tables() -> None:
    expected = {
        f"{name}.{_SUFFIX[fam]}.{ext}" for name, fam in _scenario_cases() for ext in ("nft", "json")
    }
    assert {p.name for p in FIXTURES.iterdir()} == expected
    for path in FIXTURES.glob("*.json"):
        objects = json.loads(path.read_text())["nftables"]
        tables = [o["table"] for o in objects if "table" in o]
        assert [(t["family"], t["name"]) for t in tables] in (
            [("ip", "kube-proxy")],
            [("ip6", "kube-proxy")],
        )
