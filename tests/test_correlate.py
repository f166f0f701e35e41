"""Correlating kube-proxy chains with Service ports: real fixtures, hash-only names, nftables."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kpa.ext.base import VerdictExpr
from kpa.gen.capture import capture_iptables, missing_prerequisites
from kpa.gen.cluster import random_cluster
from kpa.gen.iptables import LARGE_CLUSTER_ENDPOINTS_THRESHOLD, render_restore
from kpa.gen.objects import to_objects
from kpa.gen.options import ProxierOptions
from kpa.k8s import naming
from kpa.k8s.correlate import Correlation, correlate
from kpa.k8s.objects import ClusterObjects, load_objects, objects_from_documents
from kpa.netfilter.model import Chain, Family, Location, Rule, Ruleset, Table, Verdict, VerdictKind
from kpa.parse.iptables_save import parse_iptables

FIXTURES = Path(__file__).parent / "fixtures"
SAVES = sorted((FIXTURES / "iptables").glob("*.save"))
PER_SERVICE = re.compile(r"^KUBE-(SVC|SVL|EXT|FW|SEP)-")


def _scenario(save: Path) -> str:
    return save.name.split(".")[0]


def _load(save: Path) -> tuple[Ruleset, ClusterObjects, str]:
    scenario = _scenario(save)
    meta = json.loads((FIXTURES / "clusters" / f"{scenario}.meta.json").read_text())
    objects = load_objects([str(FIXTURES / "clusters" / f"{scenario}.yaml")])
    return parse_iptables(save.read_text(), str(save)), objects, meta["node_name"]


def _per_service_chains(rs: Ruleset) -> set[str]:
    nat = next(t for t in rs.tables if t.name == "nat")
    return {name for name in nat.chains if PER_SERVICE.match(name)}


def _mapped_chains(corr: Correlation) -> set[str]:
    out: set[str] = set()
    for p in corr.ports:
        if p.actual is not None:
            out.update(c.name for c in p.actual.chains.values())
            out.update(e.chain for e in (*p.actual.cluster, *p.actual.local))
    return out


def _assert_agrees(corr: Correlation) -> None:
    """Rules kube-proxy wrote for these objects match what correlate expects, chain for chain."""
    for p in corr.ports:
        assert p.expected is not None, p.label
        assert p.service_exists, p.label
        actual_chains = {c.name for c in p.actual.chains.values()} if p.actual else set()
        assert set(p.expected.chains.values()) == actual_chains, p.label
        actual_cluster = [e.chain for e in p.actual.cluster] if p.actual else []
        assert [e.chain for e in p.expected.cluster] == actual_cluster, p.label
        if p.expected.local_known:
            actual_local = [e.chain for e in p.actual.local] if p.actual else []
            assert [e.chain for e in p.expected.local] == actual_local, p.label


@pytest.mark.parametrize("save", SAVES, ids=lambda p: p.name)
def test_every_kube_proxy_chain_of_a_real_capture_is_mapped(save: Path) -> None:
    rs, objects, node = _load(save)
    corr = correlate(rs, objects, node)
    assert corr.unmapped == []
    assert corr.orphans == []
    assert _per_service_chains(rs) <= _mapped_chains(corr)
    _assert_agrees(corr)


@pytest.mark.parametrize("save", SAVES, ids=lambda p: p.name)
def test_every_service_port_of_the_objects_is_listed_once_per_family(save: Path) -> None:
    rs, objects, node = _load(save)
    corr = correlate(rs, objects, node)
    family = "ipv6" if ".v6." in save.name else "ipv4"
    version = 6 if family == "ipv6" else 4
    wanted = {
        (naming.service_port_name(s.namespace, s.name, p.name), p.protocol.lower())
        for s in objects.services
        if any(":" in ip if version == 6 else "." in ip for ip in s.cluster_ips)
        for p in s.ports
    }
    got = [(p.name, p.protocol) for p in corr.ports]
    assert sorted(got) == sorted(wanted)
    assert {p.family for p in corr.ports} == {family}
    assert corr.layouts == [("iptables", family)]


def test_endpoint_shares_come_from_the_statistic_cascade() -> None:
    rs, objects, node = _load(FIXTURES / "iptables" / "kitchen-sink.nft.v4.save")
    port = correlate(rs, objects, node).port("default/web:http", "tcp")
    assert port is not None and port.actual is not None
    shares = [e.probability for e in port.actual.cluster]
    assert [e.endpoint for e in port.actual.cluster] == [
        "10.244.0.10:8080", "10.244.1.11:8080", "10.244.2.12:8080"
    ]
    assert sum(s for s in shares if s is not None) == 1
    assert all(s is not None and abs(s - 1 / 3) < 3 / 2**31 for s in shares)
    assert all(e.location and e.location.startswith(str(FIXTURES)) for e in port.actual.cluster)


def test_node_is_inferred_from_local_policy_chains() -> None:
    rs, objects, node = _load(FIXTURES / "iptables" / "etp-local.nft.v4.save")
    corr = correlate(rs, objects, None)
    assert (corr.node_name, corr.node_source) == (node, "inferred")
    port = corr.port("ingress/lb-local:http")
    assert port is not None and port.expected is not None
    assert [e.endpoint for e in port.expected.local] == ["10.244.0.10:8080"]


def test_without_any_node_local_expectations_are_left_unchecked() -> None:
    rs, objects, _ = _load(FIXTURES / "iptables" / "clusterip.nft.v4.save")
    corr = correlate(rs, objects, None)
    assert corr.node_source == "unknown"
    assert all(p.expected and not p.expected.local_known for p in corr.ports)


def test_traffic_policy_targets_are_read_from_the_rules() -> None:
    rs, objects, node = _load(FIXTURES / "iptables" / "kitchen-sink.nft.v4.save")
    corr = correlate(rs, objects, node)
    local = corr.port("ingress/lb-local:http")
    cluster = corr.port("shop/frontend:https")
    itp = corr.port("monitoring/node-agent:metrics")
    assert local and local.actual and local.actual.external_target
    assert local.actual.external_target.startswith("KUBE-SVL-")
    assert cluster and cluster.actual and cluster.actual.external_target
    assert cluster.actual.external_target.startswith("KUBE-SVC-")
    assert itp and itp.actual and itp.actual.internal_target
    assert itp.actual.internal_target.startswith("KUBE-SVL-")


# ---------------------------------------------------------------- hash-only names


def _strip_comments(text: str) -> str:
    return re.sub(r' -m comment --comment ("[^"]*"|\S+)', "", text)


def _big_cluster() -> tuple[ClusterObjects, str]:
    cluster = random_cluster(11, 250, 6)
    total = sum(len(s.endpoints) for s in cluster.services)
    assert total > LARGE_CLUSTER_ENDPOINTS_THRESHOLD
    text = render_restore(cluster, ProxierOptions(node_name="node-0"))
    return objects_from_documents(to_objects(cluster)), text


def test_comment_free_rules_are_named_by_recomputed_hashes() -> None:
    objects, text = _big_cluster()
    rs = parse_iptables(_strip_comments(text), "bare.save")
    corr = correlate(rs, objects, "node-0")
    with_rules = [p for p in corr.ports if p.actual is not None and p.actual.programmed]
    assert with_rules
    assert {p.actual.name_source for p in with_rules if p.actual} == {"hash"}
    assert corr.unmapped == []
    assert _per_service_chains(rs) <= _mapped_chains(corr)
    _assert_agrees(corr)


def test_a_deleted_service_leaves_unnamed_chains_without_comments() -> None:
    objects, text = _big_cluster()
    rs = parse_iptables(_strip_comments(text), "bare.save")
    gone = next(
        p for p in correlate(rs, objects, "node-0").ports
        if p.actual and "svc" in p.actual.chains
    )
    ns, name, _ = naming.split_service_port_name(gone.name)
    fewer = ClusterObjects(
        [s for s in objects.services if (s.namespace, s.name) != (ns, name)],
        objects.endpoint_slices, objects.nodes, objects.pods,
    )
    corr = correlate(rs, fewer, "node-0")
    assert gone.actual is not None
    assert gone.actual.chains["svc"].name in {u.chain for u in corr.unmapped}
    assert corr.port(gone.name) is None


@pytest.mark.kernel
def test_large_cluster_captured_from_the_kernel_maps_endpoint_chains_by_hash() -> None:
    reason = missing_prerequisites("nft", "ipv4")
    if reason is not None:
        pytest.skip(f"KERNEL TEST SKIPPED: {reason}")
    objects, text = _big_cluster()
    saved = capture_iptables(text, "nft", "ipv4")
    rs = parse_iptables(saved, "captured.save")
    nat = next(t for t in rs.tables if t.name == "nat")
    seps = [c for c in nat.chains.values() if c.name.startswith("KUBE-SEP-")]
    # Above the threshold kube-proxy writes endpoint chains without comments.
    assert seps and all(r.comment is None for c in seps for r in c.rules)
    corr = correlate(rs, objects, "node-0")
    assert corr.unmapped == [] and corr.orphans == []
    assert _per_service_chains(rs) <= _mapped_chains(corr)
    _assert_agrees(corr)


# ---------------------------------------------------------------- nftables layout


def _nft_ir(path: Path) -> Ruleset:
    """The chains and goto/jump targets of a kube-proxy nftables dump, as kpa's IR holds them.

    Only what correlation reads: chain names and each rule's chain references.
    """
    family = Family.IPV6 if ".v6." in path.name else Family.IPV4
    table = Table(family, "kube-proxy", source="nft")
    chain: Chain | None = None
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("chain "):
            name = stripped.split()[1]
            chain = table.chains[name] = Chain(name, table.name, location=Location(path.name, lineno))
        elif stripped == "}":
            continue
        elif chain is not None and stripped and not stripped.startswith(("type ", "comment ")):
            refs = re.findall(r"\b(jump|goto) ([^\s,}]+)", stripped)
            exprs = [
                VerdictExpr(Verdict(VerdictKind.JUMP if k == "jump" else VerdictKind.GOTO, t))
                for k, t in refs
            ]
            chain.rules.append(Rule(table.name, chain.name, len(chain.rules) + 1, list(exprs),
                                    Location(path.name, lineno), stripped))
    return Ruleset([table])


NFT_DUMPS = sorted((FIXTURES / "nft" / "kube-proxy").glob("*.nft"))


@pytest.mark.parametrize("dump", NFT_DUMPS, ids=lambda p: p.name)
def test_nftables_chains_map_to_service_ports(dump: Path) -> None:
    scenario = dump.name.split(".")[0]
    meta = json.loads((FIXTURES / "clusters" / f"{scenario}.meta.json").read_text())
    objects = load_objects([str(FIXTURES / "clusters" / f"{scenario}.yaml")])
    rs = _nft_ir(dump)
    corr = correlate(rs, objects, meta["node_name"])
    assert corr.layouts and all(mode == "nftables" for mode, _ in corr.layouts)
    assert corr.unmapped == [] and corr.orphans == []
    _assert_agrees(corr)


def test_nftables_names_are_recomputed_when_readable_part_is_not_trusted() -> None:
    dump = FIXTURES / "nft" / "kube-proxy" / "etp-local.v4.nft"
    objects = load_objects([str(FIXTURES / "clusters" / "etp-local.yaml")])
    rs = _nft_ir(dump)
    corr = correlate(rs, objects, "node-a")
    port = corr.port("ingress/lb-local:http", "tcp", "ipv4", "nftables")
    assert port is not None and port.actual is not None
    assert port.actual.name_source == "chain-name"
    assert port.actual.chains["local"].name == naming.nft_local_chain("ingress/lb-local:http", "tcp")
    assert port.actual.external_target == naming.nft_local_chain("ingress/lb-local:http", "tcp")


def test_rulesets_without_kube_proxy_give_an_empty_correlation() -> None:
    rs = parse_iptables("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n", "plain.save")
    objects = load_objects([str(FIXTURES / "clusters" / "clusterip.yaml")])
    corr = correlate(rs, objects, None)
    assert corr.layouts == [] and corr.ports == []


def test_dual_stack_rules_give_one_port_per_family() -> None:
    rs = Ruleset()
    for family in ("v4", "v6"):
        save = FIXTURES / "iptables" / f"dual-stack.nft.{family}.save"
        rs.merge(parse_iptables(save.read_text(), str(save)))
    objects = load_objects([str(FIXTURES / "clusters" / "dual-stack.yaml")])
    corr = correlate(rs, objects, None)
    assert sorted(corr.layouts) == [("iptables", "ipv4"), ("iptables", "ipv6")]
    v6 = corr.port("default/web-ds:http", "tcp", "ipv6")
    assert v6 is not None and v6.actual is not None and v6.actual.cluster
    assert all(e.endpoint and e.endpoint.startswith("[") for e in v6.actual.cluster)
    assert all(e.location and ".v6." in e.location for e in v6.actual.cluster)
    _assert_agrees(corr)
