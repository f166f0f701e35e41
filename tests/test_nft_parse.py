"""nft text, `nft -a` text and JSON, all captured from the real nft, mean the same IR."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kpa.ext.base import IntCond, Match
from kpa.ext.nft.lookup import VerdictMap
from kpa.netfilter.domain import IntSet
from kpa.netfilter.model import Family, Ruleset, Verdict, VerdictKind
from kpa.parse.nft_json import parse_nft_json
from kpa.parse.nft_text import parse_nft_text

FIX = Path(__file__).parent / "fixtures" / "nft"


def load(name: str) -> Ruleset:
    path = FIX / name
    parse = parse_nft_json if name.endswith(".json") else parse_nft_text
    return parse(path.read_text(), str(path))


def facts(rs: Ruleset) -> dict[str, Any]:
    """What must not depend on the input format."""
    out: dict[str, Any] = {}
    for t in rs.tables:
        tk = f"{t.family.value} {t.name}"
        out[tk] = {
            "chains": {c.name: (c.hook, c.priority, c.kind, c.policy, len(c.rules),
                                [sorted(type(e).__name__ for e in r.exprs) for r in c.rules],
                                [r.known for r in c.rules], sorted({ref for r in c.rules for ref in r.chain_refs()}))
                       for c in t.chains.values()},
            "sets": {n: (s.key_types, sorted(map(repr, s.elements)), None if s.values is None else sorted(map(repr, s.values)),
                         s.dynamic) for n, s in t.sets.items()},
            "managed": t.managed_by_iptables,
        }
    return out


def test_text_handles_and_json_agree() -> None:
    txt, with_handles, js = load("sampler.txt"), load("sampler.a.txt"), load("sampler.json")
    assert facts(txt) == facts(with_handles) == facts(js)
    handles_a = [r.handle for t in with_handles.tables for c in t.chains.values() for r in c.rules]
    handles_j = [r.handle for t in js.tables for c in t.chains.values() for r in c.rules]
    assert handles_a == handles_j and all(h is not None for h in handles_a)
    assert all(r.handle is None for t in txt.tables for c in t.chains.values() for r in c.rules)


@pytest.mark.parametrize("scenario", sorted(p.stem for p in (FIX / "kube-proxy").glob("*.nft")))
def test_kube_proxy_listings_text_equals_json(scenario: str) -> None:
    txt, js = load(f"kube-proxy/{scenario}.nft"), load(f"kube-proxy/{scenario}.json")
    assert facts(txt) == facts(js)
    # kube-proxy's own rules are all modelled.
    unknown = [r.text for t in txt.tables for r in t.rules() if not r.known]
    assert unknown == []


def test_base_chains_families_and_priorities() -> None:
    rs = load("sampler.txt")
    kp = rs.table(Family.IPV4, "kube-proxy")
    assert kp is not None
    pre = kp.chains["filter-prerouting"]
    assert (pre.hook, pre.priority, pre.kind, pre.policy) == ("PREROUTING", -110, "filter", "ACCEPT")
    post = kp.chains["nat-postrouting"]
    assert (post.hook, post.priority, post.kind) == ("POSTROUTING", 100, "nat")
    assert kp.chains["services"].hook is None
    inet = rs.table(Family.INET, "filter")
    assert inet is not None and inet.chains["input"].policy == "DROP"
    bridge = rs.table(Family.BRIDGE, "br")
    assert bridge is not None and bridge.chains["pre"].priority == -200  # printed as bridge "filter"
    netdev = rs.table(Family.NETDEV, "nd")
    assert netdev is not None and netdev.chains["ing"].hook == "ingress"
    six = rs.table(Family.IPV6, "six")
    assert six is not None and (six.chains["out"].kind, six.chains["out"].priority) == ("route", -150)
    assert {t.family for t in rs.tables} == set(Family)


def test_sets_and_maps() -> None:
    kp = load("sampler.txt").table(Family.IPV4, "kube-proxy")
    assert kp is not None
    s = kp.sets
    assert s["service-ips"].key_types == ("ipv4_addr", "inet_proto", "inet_service")
    elems = dict(zip(s["service-ips"].elements, s["service-ips"].values or [], strict=True))
    key = (IntSet.single(0x0A600001), IntSet.single(6), IntSet.single(443))
    assert elems[key] == Verdict(VerdictKind.GOTO, "service-2QRHZV4L-default/kubernetes/tcp/https")
    cidrs = s["cidrs"].elements
    assert (IntSet.range(0x0A000000, 0x0AFFFFFF),) in cidrs
    assert (IntSet.range(0xC0A80101, 0xC0A80109),) in cidrs
    assert s["typed"].key_types == ("ipv4_addr", "inet_service")
    assert (IntSet.range(0x0A010000, 0x0A01FFFF), IntSet.range(80, 90)) in s["typed"].elements
    assert s["timed"].elements == [(IntSet.single(0x0A030001),)]
    assert s["affinity-abc"].dynamic and not s["cluster-ips"].dynamic
    assert s["dnat-targets"].values == [(0x0AB40707, 8080)]


def test_rule_details() -> None:
    kp = load("sampler.a.txt").table(Family.IPV4, "kube-proxy")
    assert kp is not None
    svc = kp.chains["service-2QRHZV4L-default/kubernetes/tcp/https"]
    first = svc.rules[0]
    # `ip daddr 10.96.0.1` is an indexable destination match.
    dst = [e for e in first.exprs if isinstance(e, Match) and e.name == "dst"]
    assert len(dst) == 1 and dst[0].implicit
    cond = dst[0].conds[0]
    assert isinstance(cond, IntCond) and cond.values == IntSet.single(0x0A600001) and not cond.negated
    assert first.location.line > 0 and first.handle is not None
    vmap = svc.rules[2].exprs[0]
    assert isinstance(vmap, VerdictMap)
    assert sorted(c for _, c in vmap.chain_refs()) == ["endpoint-A", "endpoint-B", "endpoint-C"]
    misc = kp.chains["misc"]
    assert misc.rules[0].counters == (0, 0)
    unknown = {r.index: r.unknown_exprs()[0].describe() for r in misc.rules if not r.known}
    # `tcp flags syn` is modelled (any of the bits: the SYN of a NEW connection); jhash is not.
    assert any("jhash" in d for d in unknown.values())
    assert len(unknown) == 1
    [flags] = [r for r in misc.rules if "tcp flags syn" in r.text]
    assert flags.known


def test_iptables_nft_tables_seen_through_nft() -> None:
    rs = load("mixed.txt")
    managed = {t.name for t in rs.tables if t.managed_by_iptables}
    assert managed == {"filter", "nat", "mangle"}
    kp = rs.table(Family.IPV4, "kube-proxy")
    assert kp is not None and not kp.managed_by_iptables
    nat = rs.table(Family.IPV4, "nat")
    assert nat is not None
    xt = [e for r in nat.rules() for e in r.exprs if not e.known]
    assert xt and all(e.name == "recent" for e in xt)
    # iptables' `-m statistic` arrives as `meta random & 2147483647 < N` and is modelled.
    assert any("meta random" in r.text and r.known for r in nat.rules())
    js = load("mixed.json")
    assert {t.name for t in js.tables if t.managed_by_iptables} == {"filter", "nat", "mangle"}
