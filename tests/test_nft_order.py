"""nft input in any order of tables, chains, sets, maps and rules reads as nft resolves it.

The reordered fixtures are real listings rearranged into orders the real nft
accepts (`nft -f`, `nft -j -f`; tests/fixtures/tools/capture.py checks that
nft loads them back into the same ruleset): chains before the sets and maps
they use, chains in reverse order. kpa must trace them exactly as it traces
the original listing. JSON is also shuffled at random here, in orders nft
itself would refuse to load: kpa resolves names only once everything is read.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from kpa.diff import diff_rulesets
from kpa.k8s.objects import load_objects
from kpa.netfilter.engine import trace
from kpa.netfilter.model import Family
from kpa.netfilter.packet import PacketSpec, TraceContext, node_local_addresses
from kpa.parse.nft_json import parse_nft_json
from kpa.sources import load_rules

FIX = Path(__file__).parent / "fixtures"
TOOLS = FIX / "tools"


def _meta(scenario: str) -> dict[str, object]:
    data: dict[str, object] = json.loads((FIX / "clusters" / f"{scenario}.meta.json").read_text())
    return data


@pytest.mark.parametrize("scenario", ["session-affinity", "kitchen-sink"])
@pytest.mark.parametrize("suffix", ["nft", "json"])
def test_reordered_listing_behaves_as_the_original(scenario: str, suffix: str) -> None:
    meta = _meta(scenario)
    node_ips = [ip for ip in meta["node_ips"].values() if ip]  # type: ignore[attr-defined]
    original = load_rules([str(FIX / "nft" / "kube-proxy" / f"{scenario}.v4.nft")])
    reordered = load_rules([str(TOOLS / f"{scenario}.v4.reordered.{suffix}")])
    objects = load_objects([str(FIX / "clusters" / f"{scenario}.yaml")])
    report = diff_rulesets(original, reordered, objects, node_ips)
    assert report.exit_code == 0, [p.service for p in report.differing]
    assert report.ports, "no entry point was compared"
    unknown = [e for t in reordered.tables for r in t.rules() for e in r.unknown_exprs()]
    assert not unknown, unknown[:3]


def _cluster_ip_outcomes(text: str, name: str) -> list[str]:
    rs = parse_nft_json(text, name)
    spec = PacketSpec(family=Family.IPV4, src="10.244.0.5", dst="10.96.0.20", proto="tcp", dport=80)
    ctx = TraceContext(local=node_local_addresses(["192.168.0.2"]))
    result = trace(rs, spec, ctx)
    return sorted(f"{o.verdict} {o.probability} {o.dnat_text()}" for o in result.outcomes)


def test_shuffled_json_resolves_names_whatever_the_order() -> None:
    text = (FIX / "nft" / "kube-proxy" / "session-affinity.v4.json").read_text()
    expected = _cluster_ip_outcomes(text, "original.json")
    assert any("10.244." in o for o in expected), expected  # the ClusterIP reaches its endpoints
    objs = json.loads(text)["nftables"]
    rng = random.Random(13)
    for _ in range(5):
        body = objs[:]
        rng.shuffle(body)
        # Only each chain's rule order is meaningful: keep it.
        rules = iter([o for o in objs if "rule" in o])
        body = [next(rules) if "rule" in o else o for o in body]
        shuffled = json.dumps({"nftables": body})
        assert _cluster_ip_outcomes(shuffled, "shuffled.json") == expected
