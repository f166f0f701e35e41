"""Memoised base chains must give exactly the outcomes of a fresh evaluation.

Every fixture is traced twice: once packet after packet with one shared
memo (as a sweep does), and once per packet with the memo off. The JSON of
every result, paths, conditions, probabilities and warnings included, must
be identical.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kpa.k8s.kubeproxy import service_ports
from kpa.netfilter.engine import trace
from kpa.netfilter.memo import memo_for
from kpa.netfilter.model import Family, Ruleset
from kpa.netfilter.packet import PacketSpec, TraceContext, node_local_addresses
from kpa.parse.iptables_save import parse_iptables
from kpa.sources import load_rules

FIXTURES = Path(__file__).parent / "fixtures"
IPTABLES = sorted((FIXTURES / "iptables").glob("*.save"))
NFT = sorted((FIXTURES / "nft" / "kube-proxy").glob("*.nft")) + sorted((FIXTURES / "nft" / "kube-proxy").glob("*.json"))
SOURCES = {4: ("10.244.0.9", "203.0.113.7"), 6: ("fd00:10:244::9", "2001:db8::7")}


def scenario(path: Path) -> tuple[str, int]:
    name = path.name.split(".")[0]
    return name, 6 if ".v6." in path.name else 4


def node_ip(name: str, version: int) -> str | None:
    meta = json.loads((FIXTURES / "clusters" / f"{name}.meta.json").read_text())
    ip: str | None = meta["node_ips"]["ipv6" if version == 6 else "ipv4"]
    return ip


def packets(name: str, version: int) -> list[PacketSpec]:
    """Every Service entry of the scenario, from several kinds of client, plus packets with open fields."""
    family = Family.IPV6 if version == 6 else Family.IPV4
    rs = load_rules([str(next((FIXTURES / "iptables").glob(f"{name}.nft.v{version}.save")))])
    node = node_ip(name, version)
    pod, external = SOURCES[version]
    out: list[PacketSpec] = []
    for view in service_ports(rs):
        proto = (view.protocol or "tcp").lower()
        for e in view.entries:
            dst = e.address or node
            for src in (pod, external, node):
                out.append(PacketSpec(family=family, src=src, dst=dst, proto=proto, dport=e.port))
            out.append(PacketSpec(family=family, dst=dst, proto=proto, dport=e.port, origin="output"))
            out.append(PacketSpec(family=family, dst=dst, proto=proto, dport=e.port))  # any source
            out.append(PacketSpec(family=family, src=pod, dst=dst, proto=proto))  # any port
            out.append(PacketSpec(family=family, src=pod, dst=dst, proto=proto, dport=e.port, ctstate=None))
    return out


def context(node: str | None, memo: bool) -> TraceContext:
    return TraceContext(local=node_local_addresses([node] if node else []), memo=memo)


def compare(rs: Ruleset, specs: list[PacketSpec], node: str | None) -> int:
    shared = context(node, True)
    for spec in specs:
        shared.warnings.clear()
        memoised = trace(rs, spec, shared).to_json()
        fresh = trace(rs, spec, context(node, False)).to_json()
        assert memoised == fresh, f"memoised trace differs for {spec}"
    memo = memo_for(rs, shared)
    assert memo is not None
    return memo.hits


@pytest.mark.parametrize("path", IPTABLES, ids=lambda p: p.name)
def test_memo_matches_fresh_evaluation_iptables(path: Path) -> None:
    name, version = scenario(path)
    specs = packets(name, version)
    assert specs
    hits = compare(load_rules([str(path)]), specs, node_ip(name, version))
    # Each Service's endpoints share FORWARD and POSTROUTING: the memo must be in use.
    assert hits > 0


@pytest.mark.parametrize("path", NFT, ids=lambda p: p.name)
def test_memo_matches_fresh_evaluation_nftables(path: Path) -> None:
    name, version = scenario(path)
    compare(load_rules([str(path)]), packets(name, version), node_ip(name, version))


def run_pair(text: str, dsts: list[str], **common: Any) -> list[list[tuple[str, str | None]]]:
    rs = parse_iptables(text, "t.save")
    ctx = context("192.168.0.2", True)
    return [[(o.verdict, o.dnat_text()) for o in trace(rs, PacketSpec(dst=d, **common), ctx).outcomes] for d in dsts]


def test_states_a_chain_tells_apart_are_not_shared() -> None:
    # Both Services DNAT to pods; FORWARD drops traffic to one pod only. The first
    # trace records FORWARD for 10.244.1.5; the second must not reuse it.
    text = ("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
            "-A PREROUTING -d 10.96.0.1/32 -p tcp -j DNAT --to-destination 10.244.1.5:80\n"
            "-A PREROUTING -d 10.96.0.2/32 -p tcp -j DNAT --to-destination 10.244.1.6:80\nCOMMIT\n"
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            "-A FORWARD -d 10.244.1.6/32 -j DROP\nCOMMIT\n")
    first, second = run_pair(text, ["10.96.0.1", "10.96.0.2"], src="10.244.0.9", proto="tcp", dport=80)
    assert first == [("ACCEPT", "10.244.1.5:80")]
    assert second == [("DROP", "10.244.1.6:80")]


def test_open_fields_are_split_the_same_way_after_a_replay() -> None:
    # FORWARD splits an open source port; the replayed result must carry the same split.
    text = ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            "-A FORWARD -p tcp -m tcp --sport 1000:2000 -j DROP\nCOMMIT\n")
    rs = parse_iptables(text, "t.save")
    ctx = context("192.168.0.2", True)
    runs = [trace(rs, PacketSpec(src="10.244.0.9", dst=d, proto="tcp", dport=80), ctx) for d in ("10.1.0.1", "10.1.0.2")]
    memo = memo_for(rs, ctx)
    assert memo is not None and memo.hits == 1
    for result in runs:
        assert sorted((o.verdict, o.conditions[0]) for o in result.outcomes) == [
            ("ACCEPT", "sport not in 1000-2000"), ("DROP", "sport in 1000-2000")]


def test_memo_matches_fresh_evaluation_on_an_indexed_cluster() -> None:
    # Large enough that KUBE-SERVICES and KUBE-NODEPORTS go through the index,
    # whose group lookups are recorded reads too.
    from kpa.gen.cluster import random_cluster
    from kpa.gen.iptables import render_restore
    from kpa.gen.options import ProxierOptions

    cluster = random_cluster(seed=7, services=120, endpoints_per_service=3)
    options = ProxierOptions(node_name="node-0")
    rs = parse_iptables(render_restore(cluster, options, "ipv4"), "cluster.restore")
    node = next(ip for n in cluster.nodes if n.name == "node-0" for ip in n.ips)
    specs: list[PacketSpec] = []
    for view in service_ports(rs):
        for e in view.entries:
            proto = (view.protocol or "tcp").lower()
            # An address no rule pins first: its recorded walk skipped every pinned
            # rule, so it must not be replayed for the Service's own address.
            specs.append(PacketSpec(src="10.244.0.9", dst="10.96.255.254", proto=proto, dport=e.port))
            specs.append(PacketSpec(src="10.244.0.9", dst=e.address or node, proto=proto, dport=e.port))
            specs.append(PacketSpec(src="203.0.113.7", dst=e.address or node, proto=proto, dport=e.port))
    assert len(specs) > 300
    assert compare(rs, specs, node) > len(specs)


def test_expressions_read_packet_fields_only_through_state_methods() -> None:
    # The memo sees only reads made through State's methods; a direct
    # `.domains` access in an extension would go unrecorded.
    ext = Path(__file__).parent.parent / "kpa" / "ext"
    offenders = [f"{p.relative_to(ext)}:{n}" for p in ext.rglob("*.py")
                 for n, line in enumerate(p.read_text().splitlines(), 1) if ".domains" in line]
    assert offenders == []


def test_address_lists_set_earlier_are_part_of_what_a_chain_reads() -> None:
    # nat PREROUTING adds only the second destination's client to list X; FORWARD
    # drops clients in X. The FORWARD walk recorded for the first must not be replayed.
    text = ("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
            "-A PREROUTING -d 10.1.0.2/32 -m recent --set --name X --mask 255.255.255.255 --rsource\nCOMMIT\n"
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            "-A FORWARD -m recent --rcheck --name X --mask 255.255.255.255 --rsource -j DROP\nCOMMIT\n")
    first, second = run_pair(text, ["10.1.0.1", "10.1.0.2"], src="10.244.0.9", proto="tcp", dport=80)
    assert first == [("ACCEPT", None)]
    assert second == [("DROP", None)]
