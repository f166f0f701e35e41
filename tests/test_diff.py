"""`kpa diff`: behavioural comparison of two dumps of one cluster.

Fixture pairs (iptables mode vs nftables mode of the same scenario) must
differ exactly where kube-proxy's two modes genuinely behave differently;
generator pairs (one change in the cluster, captured through the kernel)
must differ exactly in the changed Service port.
"""

from __future__ import annotations

import copy
import ipaddress
import json
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import pytest

from kpa.diff import (
    TOLERANCE,
    DiffReport,
    OutcomeKey,
    diff_rulesets,
    entry_points_from_rules,
    explain,
    render_text,
    same_dist,
)
from kpa.gen.capture import capture_iptables
from kpa.gen.cluster import Cluster
from kpa.gen.iptables import render_restore
from kpa.gen.nft_capture import capture_nft
from kpa.gen.nftables import render_nft
from kpa.gen.objects import to_objects
from kpa.gen.options import ProxierOptions
from kpa.gen.scenarios import SCENARIOS, THIS_NODE
from kpa.k8s.objects import ClusterObjects, Service, load_objects, objects_from_documents
from kpa.netfilter.model import Ruleset
from kpa.sources import load_rules, parse_text

FIX = Path(__file__).parent / "fixtures"


def _meta(scenario: str) -> dict[str, object]:
    data: dict[str, object] = json.loads((FIX / "clusters" / f"{scenario}.meta.json").read_text())
    return data


def _pairs() -> list[tuple[str, str]]:
    out = []
    for scenario in SCENARIOS:
        for fam in ("v4", "v6"):
            if (FIX / "nft" / "kube-proxy" / f"{scenario}.{fam}.nft").exists():
                out.append((scenario, fam))
    return out


def _mode_pair(scenario: str, fam: str, with_objects: bool = True) -> DiffReport:
    meta = _meta(scenario)
    node_ips = [ip for ip in meta["node_ips"].values() if ip]  # type: ignore[attr-defined]
    a = load_rules([str(FIX / "iptables" / f"{scenario}.nft.{fam}.save")])
    b = load_rules([str(FIX / "nft" / "kube-proxy" / f"{scenario}.{fam}.nft")])
    objects = load_objects([str(FIX / "clusters" / f"{scenario}.yaml")]) if with_objects else None
    cidrs = list(meta["service_cidrs"].values())  # type: ignore[attr-defined]
    return diff_rulesets(a, b, objects, node_ips, service_cidrs=cidrs)


def _found(report: DiffReport) -> set[tuple[str, str, str, str]]:
    """(service port, entry kind, source classes, first reason) of every difference."""
    return {
        (p.service, d.entry.kind, s.source, s.reasons[0])
        for p in report.differing
        for d in p.differences
        for s in d.sources
    }


def _usable(objects: ClusterObjects, svc: Service, port: str, proto: str) -> tuple[int, bool]:
    """(number of endpoints, any on this node), as kube-proxy picks them."""
    eps = objects.endpoints_for(svc.namespace, svc.name, port, proto, 4)
    chosen = [e for e in eps if e.ready] or [e for e in eps if e.serving and e.terminating]
    return len(chosen), any(e.node_name == THIS_NODE for e in chosen)


def _expected_mode_differences(scenario: str, version: int) -> set[tuple[str, str, str, str]]:
    """Where kube-proxy's iptables mode (A) and nftables mode (B) genuinely differ.

    Derived from the cluster objects and the proxier options, one rule per
    documented difference (docs/diff.md).
    """
    meta = _meta(scenario)
    objects = load_objects([str(FIX / "clusters" / f"{scenario}.yaml")])
    localhost_np = bool(meta["proxier"]["localhost_nodeports"])  # type: ignore[index]
    node_self = "the node itself"
    remote = "pods on this node, pods on other nodes, clients outside the pod network"
    out: set[tuple[str, str, str, str]] = set()
    cluster_ips = [s for s in objects.services if s.cluster_ips and not s.headless]
    fam_ips = sorted((ip for s in cluster_ips for ip in s.cluster_ips if ipaddress.ip_address(ip).version == version),
                     key=lambda ip: int(ipaddress.ip_address(ip)))
    if fam_ips:
        out.add(("(unallocated ClusterIP)", "unallocatedClusterIP", remote, "A forwards without DNAT, B drops"))
        out.add(("(unallocated ClusterIP)", "unallocatedClusterIP", node_self, "A sends out without DNAT, B drops"))
        unused = f"(unused port of ClusterIP {fam_ips[0]})"
        out.add((unused, "clusterIPUnusedPort", remote, "A forwards without DNAT, B rejects"))
        out.add((unused, "clusterIPUnusedPort", node_self, "A sends out without DNAT, B rejects"))
    for svc in objects.services:
        if version != 4 or not any(":" not in ip for ip in svc.cluster_ips):
            continue  # kube-proxy's only IPv6-specific behaviour here is the probes above
        for sp in svc.ports:
            name = f"{svc.namespace}/{svc.name}" + (f":{sp.name}" if sp.name else "")
            has_eps, has_local = _usable(objects, svc, sp.name, sp.protocol)
            if sp.node_port and localhost_np:
                # nftables mode has no localhost NodePorts: the packet stays on the node.
                a_fate = f"A load-balances over {has_eps} endpoints" if has_eps else "A rejects"
                out.add((name, "localhostNodePort", node_self,
                         f"{a_fate}, B delivers to the node itself without DNAT"))
            external = [("externalIP", ip) for ip in svc.external_ips] + [
                ("loadBalancerIP", ip) for ip in svc.load_balancer_ips]
            for kind, _ip in external:
                if not has_eps:
                    # iptables mode rejects in KUBE-EXTERNAL-SERVICES, which OUTPUT does not run.
                    out.add((name, kind, node_self, "A sends out without DNAT, B rejects"))
                elif svc.external_traffic_policy == "Local" and not has_local:
                    # iptables mode sends the node's own traffic to all endpoints; nftables drops it.
                    out.add((name, kind, node_self, f"A load-balances over {has_eps} endpoints, B drops"))
    return out


@pytest.mark.parametrize(("scenario", "fam"), _pairs())
def test_iptables_and_nftables_modes_differ_only_where_kube_proxy_does(scenario: str, fam: str) -> None:
    report = _mode_pair(scenario, fam)
    expected = _expected_mode_differences(scenario, 6 if fam == "v6" else 4)
    assert _found(report) == expected
    assert report.exit_code == (1 if expected else 0)
    assert not report.uncertain


def test_mode_pair_without_objects_finds_the_same_entry_points() -> None:
    with_objects = _mode_pair("kitchen-sink", "v4")
    without = _mode_pair("kitchen-sink", "v4", with_objects=False)
    entries = {(e.address, e.port, e.protocol) for p in with_objects.ports for e in p.entries}
    assert {(e.address, e.port, e.protocol) for p in without.ports for e in p.entries} == entries
    # Without pod CIDRs there is one remote class, but the same entry points differ.
    assert ({(d.entry.address, d.entry.port) for p in without.differing for d in p.differences}
            == {(d.entry.address, d.entry.port) for p in with_objects.differing for d in p.differences})


def test_entry_points_from_nftables_maps_carry_service_names() -> None:
    rs = load_rules([str(FIX / "nft" / "kube-proxy" / "loadbalancer-source-ranges.v4.nft")])
    got = {(e.service, e.kind, e.address, e.port) for e in entry_points_from_rules([rs], ["192.168.0.2"])}
    assert ("shop/frontend:https", "loadBalancerIP", "203.0.113.10", 443) in got
    assert ("shop/frontend:https", "nodePort", "192.168.0.2", 30443) in got
    assert ("shop/frontend:https", "localhostNodePort", "127.0.0.1", 30443) in got


def test_same_dump_is_identical() -> None:
    rs = load_rules([str(FIX / "iptables" / "kitchen-sink.nft.v4.save")])
    objects = load_objects([str(FIX / "clusters" / "kitchen-sink.yaml")])
    report = diff_rulesets(rs, rs, objects, ["192.168.0.2"])
    assert report.identical and report.exit_code == 0
    assert "behave the same" in render_text(report)
    assert json.loads(json.dumps(report.to_json()))["identical"] is True


def test_probabilities_within_tolerance_are_equal() -> None:
    key = OutcomeKey("ACCEPT", "forward", "10.244.0.10:8080", False, "")
    third = Fraction(1, 3)
    assert same_dist({key: third}, {key: third + TOLERANCE})
    assert not same_dist({key: third}, {key: third + 2 * TOLERANCE})


def test_explain_names_the_change() -> None:
    ep1 = OutcomeKey("ACCEPT", "forward", "10.244.0.10:8080", False, "")
    ep2 = OutcomeKey("ACCEPT", "forward", "10.244.1.5:8080", False, "")
    masq = OutcomeKey("ACCEPT", "forward", "10.244.0.10:8080", True, "")
    half = Fraction(1, 2)
    assert explain({ep1: Fraction(1)}, {ep1: half, ep2: half}, "pods") == [
        "endpoint 10.244.1.5:8080 only in B",
        "endpoint 10.244.0.10:8080 gets all in A, 1/2 in B",
    ]
    assert explain({ep1: Fraction(1)}, {masq: Fraction(1)}, "pods on this node") == [
        "B masquerades traffic from pods on this node, A does not"]
    reject = OutcomeKey("REJECT", "", "", False, "")
    drop = OutcomeKey("DROP", "", "", False, "")
    assert explain({reject: Fraction(1)}, {drop: Fraction(1)}, "x") == ["A rejects, B drops"]


# ---------------------------------------------------------------- before/after pairs through the kernel


def _capture(cluster: Cluster, options: ProxierOptions, mode: str) -> Ruleset:
    if mode == "iptables":
        text = capture_iptables(render_restore(cluster, options, "ipv4"), "nft", "ipv4")
        return parse_text(text, "iptables-save")
    return parse_text(capture_nft(render_nft(cluster, options, "ipv4")), "nft list ruleset")


def _before_after(
    scenario: str, change: Callable[[Cluster], None], mode: str
) -> tuple[DiffReport, ClusterObjects]:
    cluster, options = SCENARIOS[scenario]()
    after = copy.deepcopy(cluster)
    change(after)
    objects = objects_from_documents(to_objects(after))
    node_ips = cluster.node(THIS_NODE).ips
    report = diff_rulesets(_capture(cluster, options, mode), _capture(after, options, mode), objects, node_ips)
    return report, objects


MODES = ["iptables", "nftables"]


@pytest.mark.kernel
@pytest.mark.parametrize("mode", MODES)
def test_removed_endpoint_is_reported_for_that_service_only(mode: str) -> None:
    def drop_last(c: Cluster) -> None:
        c.services[0].endpoints.pop()  # 10.244.2.12, the endpoint on node-c

    report, _ = _before_after("clusterip", drop_last, mode)
    assert [p.service for p in report.differing] == ["default/web:http"]
    [entry] = report.differing[0].differences
    assert entry.entry.kind == "clusterIP"
    for s in entry.sources:
        assert s.reasons[0] == "endpoint 10.244.2.12:8080 only in A"
        assert "endpoint 10.244.0.10:8080 gets 1/3 in A, 1/2 in B" in s.reasons
    classes = ", ".join(s.source for s in entry.sources)
    assert all(c in classes for c in ("pods on this node", "clients outside the pod network", "the node itself"))


@pytest.mark.kernel
@pytest.mark.parametrize("mode", MODES)
def test_flipping_external_traffic_policy_changes_external_sources_only(mode: str) -> None:
    def to_local(c: Cluster) -> None:
        c.services[0].external_traffic_policy = "Local"
        c.services[0].health_check_node_port = 32000

    report, _ = _before_after("loadbalancer-source-ranges", to_local, mode)
    assert [p.service for p in report.differing] == ["shop/frontend:https"]
    diffs = [(d.entry.kind, s) for d in report.differing[0].differences for s in d.sources]
    outside = "clients outside the pod network"
    # External clients now reach only the local endpoint, with their source address kept.
    external = [(kind, s) for kind, s in diffs if s.source == outside and "only in A" in s.reasons[0]]
    assert {kind for kind, _ in external} == {"nodePort", "loadBalancerIP"}
    for _, s in external:
        assert s.reasons == ["endpoint 10.244.1.11:8443 only in A", "endpoint 10.244.2.12:8443 only in A",
                             "endpoint 10.244.0.10:8443 gets 1/3 in A, all in B",
                             f"A masquerades traffic from {outside}, B does not"]
    # Every other change: the NodePort stops masquerading sources kube-proxy treats as
    # cluster-internal (pod CIDR), which keep all endpoints; the node itself is unchanged.
    for kind, s in diffs:
        if (kind, s) in external:
            continue
        assert kind == "nodePort" and s.source != "the node itself"
        assert len(s.reasons) == 1 and "masquerades" in s.reasons[0] and s.reasons[0].startswith("A ")
        assert {k.dnat for k in s.a} == {k.dnat for k in s.b}


@pytest.mark.kernel
@pytest.mark.parametrize("mode", MODES)
def test_widened_source_range_admits_exactly_the_new_clients(mode: str) -> None:
    def widen(c: Cluster) -> None:
        c.services[0].lb_source_ranges = ["198.51.100.0/24", "192.168.0.0/16"]

    report, _ = _before_after("loadbalancer-source-ranges", widen, mode)
    assert [p.service for p in report.differing] == ["shop/frontend:https"]
    [entry] = report.differing[0].differences
    assert entry.entry.kind == "loadBalancerIP"
    [src] = entry.sources
    assert (src.source, src.addresses) == ("clients outside the pod network", ["198.51.100.128/25"])
    assert src.reasons[0] == "A drops, B load-balances over 3 endpoints"
