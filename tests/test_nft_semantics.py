"""What nft expressions do to a symbolic packet: numgen, vmaps, fib, marks, guards, affinity."""

from __future__ import annotations

import ipaddress
from fractions import Fraction
from pathlib import Path

from kpa.ext.nft.numgen import value_probability
from kpa.netfilter.domain import IntSet
from kpa.netfilter.engine import trace
from kpa.netfilter.model import Family, Flow, Rule, Ruleset, Verdict, VerdictKind
from kpa.netfilter.packet import PacketSpec, State, TraceContext
from kpa.parse.iptables_save import parse_iptables
from kpa.parse.mixed import combine
from kpa.parse.nft_json import parse_nft_json
from kpa.parse.nft_text import parse_nft_text

FIX = Path(__file__).parent / "fixtures" / "nft"
NODE = int(ipaddress.ip_address("192.168.0.2"))


def sampler() -> Ruleset:
    return parse_nft_text((FIX / "sampler.txt").read_text(), "sampler.txt")


def rule(rs: Ruleset, chain: str, index: int, family: Family = Family.IPV4, table: str = "kube-proxy") -> Rule:
    t = rs.table(family, table)
    assert t is not None
    return t.chains[chain].rules[index - 1]


def run(r: Rule, st: State, ctx: TraceContext) -> list[tuple[State, Flow | Verdict]]:
    """Evaluate one rule as the engine does: each expression on the states still going."""
    ctx.rule = r
    states, out = [st], []
    for e in r.exprs:
        nxt = []
        for s in states:
            for s2, flow in e.step(s, ctx):
                (nxt.append(s2) if flow is Flow.CONTINUE else out.append((s2, flow)))
        states = nxt
    out.extend((s, Flow.CONTINUE) for s in states)
    return out


def ctx() -> TraceContext:
    return TraceContext(local={4: IntSet.single(NODE)})


def state(**kw: object) -> State:
    return PacketSpec(**kw).initial_state()  # type: ignore[arg-type]


def test_numgen_probabilities_are_exact_and_sum_to_one() -> None:
    for n in (1, 2, 3, 7, 10):
        shares = [value_probability(k, n) for k in range(n)]
        assert sum(shares) == 1
        assert max(shares) - min(shares) <= Fraction(1, 2**32)
    r = rule(sampler(), "service-2QRHZV4L-default/kubernetes/tcp/https", 3)
    out = run(r, state(src="10.0.0.5", dst="10.96.0.1", proto="tcp", dport=443), ctx())
    by_chain = {v.chain: s.probability for s, v in out if isinstance(v, Verdict)}
    assert set(by_chain) == {"endpoint-A", "endpoint-B", "endpoint-C"}
    assert sum(by_chain.values()) == 1
    assert by_chain["endpoint-A"] == Fraction(1431655766, 2**32)  # ceil(2^32/3) values of x


def test_numgen_match_with_offset() -> None:
    r = rule(sampler(), "misc", 17)  # numgen random mod 10 offset 5 5 accept
    out = run(r, state(), ctx())
    accepted = sum(s.probability for s, v in out if isinstance(v, Verdict))
    assert accepted == value_probability(0, 10)


def test_service_vmap_picks_the_element_chain() -> None:
    r = rule(sampler(), "services", 1)
    out = run(r, state(dst="10.96.0.10", proto="udp", dport=53), ctx())
    assert [(v.kind, v.chain) for _, v in out if isinstance(v, Verdict)] == [
        (VerdictKind.GOTO, "service-FY5PMXPG-kube-system/kube-dns/udp/dns")]
    miss = run(r, state(dst="10.96.0.10", proto="tcp", dport=53), ctx())
    assert [f for _, f in miss] == [Flow.NO_MATCH]
    # An open destination splits: each service address to its chain, the rest on.
    split = run(r, state(proto="tcp", dport=443), ctx())
    hits = [s for s, v in split if isinstance(v, Verdict)]
    assert len(hits) == 1 and hits[0].concrete("dst") == int(ipaddress.ip_address("10.96.0.1"))
    assert any(f is Flow.NO_MATCH for _, f in split)


def test_fib_daddr_type_local() -> None:
    r = rule(sampler(), "services", 2)  # fib daddr type local ... vmap @service-nodeports
    out = run(r, state(dst="192.168.0.2", proto="tcp", dport=30080), ctx())
    assert [(v.kind, v.chain) for _, v in out if isinstance(v, Verdict)] == [(VerdictKind.GOTO, "external-X")]
    assert [f for _, f in run(r, state(dst="192.168.0.9", proto="tcp", dport=30080), ctx())] == [Flow.NO_MATCH]


def test_marks_set_and_tested_bitwise() -> None:
    rs = sampler()
    set_mark = rule(rs, "mark-for-masquerade", 1)
    (s1, _), = run(set_mark, state(mark=0x1), ctx())
    assert s1.mark == 0x4001
    ret = rule(rs, "masquerading", 1)  # meta mark & 0x4000 == 0 return
    assert [f for _, f in run(ret, state(mark=0x1), ctx())] == [Verdict(VerdictKind.RETURN)]
    assert [f for _, f in run(ret, s1, ctx())] == [Flow.NO_MATCH]
    (s2, _), = run(rule(rs, "masquerading", 2), s1, ctx())  # meta mark set meta mark ^ 0x4000
    assert s2.mark == 0x1


def test_meta_random_from_iptables_statistic() -> None:
    r = rule(sampler(), "misc", 21)  # meta mark & 0xff00 != 0x100 meta random & 2147483647 < 1073741824 drop
    out = run(r, state(), ctx())
    dropped = sum(s.probability for s, v in out if isinstance(v, Verdict))
    assert dropped == Fraction(1, 2)


def test_inet_guard_keeps_negations_to_their_family() -> None:
    rs = sampler()
    r = rule(rs, "input", 3, Family.INET, "filter")  # ip daddr 10.0.0.0/8 counter drop
    v6 = PacketSpec(family=Family.IPV6, dst="::a00:1").initial_state()
    assert [f for _, f in run(r, v6, ctx())] == [Flow.NO_MATCH]
    neg = rule(rs, "service-2QRHZV4L-default/kubernetes/tcp/https", 1)  # ... ip saddr != 10.244.0.0/16 jump
    udp = run(neg, state(dst="10.96.0.1", proto="udp", dport=443), ctx())
    assert [f for _, f in udp] == [Flow.NO_MATCH]  # tcp dport needs tcp


def test_interface_wildcards_and_ct_status() -> None:
    rs = sampler()
    r = rule(rs, "misc", 1)  # iifname "veth*" oifname != "eth0" counter accept
    assert [f for _, f in run(r, state(iif="veth12", oif="eth1"), ctx())] == [Verdict(VerdictKind.ACCEPT)]
    assert [f for _, f in run(r, state(iif="eth0", oif="eth1"), ctx())] == [Flow.NO_MATCH]
    st = rule(rs, "filter-forward", 2)  # ct status dnat accept
    assert [f for _, f in run(st, state(), ctx())] == [Flow.NO_MATCH]
    assert [f for _, f in run(st, state().set(dnat=(1, 80)), ctx())] == [Verdict(VerdictKind.ACCEPT)]


def test_affinity_set_membership_follows_updates_and_context() -> None:
    rs = sampler()
    check = rule(rs, "service-2QRHZV4L-default/kubernetes/tcp/https", 2)  # ip saddr @affinity-abc goto endpoint-A
    assert [f for _, f in run(check, state(src="10.0.0.5"), ctx())] == [Flow.NO_MATCH]
    sticky = TraceContext(local={4: IntSet()}, affinity={"affinity-abc": True})
    assert [f for _, f in run(check, state(src="10.0.0.5"), sticky)] == [Verdict(VerdictKind.GOTO, "endpoint-A")]
    (after, _), = run(rule(rs, "endpoint-A", 2), state(src="10.0.0.5"), ctx())  # update @affinity-abc { ip saddr }
    assert [f for _, f in run(check, after, ctx())] == [Verdict(VerdictKind.GOTO, "endpoint-A")]
    open_ctx = TraceContext(local={4: IntSet()}, affinity_default=None)
    both = run(check, state(src="10.0.0.5"), open_ctx)
    assert len(both) == 2 and all(s.facts for s, _ in both)


def test_dnat_through_a_map_and_statements() -> None:
    rs = sampler()
    out = run(rule(rs, "misc", 19), state(dst="10.96.7.7", proto="tcp", dport=80), ctx())  # dnat ... map @dnat-targets
    (s, v), = out
    assert isinstance(v, Verdict) and s.dnat == (int(ipaddress.ip_address("10.180.7.7")), 8080)
    (s2, v2), = run(rule(rs, "endpoint-B", 2), state(proto="udp"), ctx())  # dnat to 10.180.0.2:53
    assert s2.dnat == (int(ipaddress.ip_address("10.180.0.2")), 53) and isinstance(v2, Verdict)


def test_end_to_end_kube_proxy_listing_text_and_json() -> None:
    base = FIX / "kube-proxy"
    spec = PacketSpec(src="10.244.5.5", dst="10.96.0.20", proto="tcp", dport=80)
    results = []
    for rs in (parse_nft_text((base / "session-affinity.v4.nft").read_text(), "t"),
               parse_nft_json((base / "session-affinity.v4.json").read_text(), "j")):
        res = trace(rs, spec, ctx())
        assert sum(o.probability for o in res.outcomes) == 1
        results.append(sorted((o.dnat_text(), o.probability) for o in res.outcomes))
    assert results[0] == results[1] and len(results[0]) == 3


def test_mixed_host_prefers_iptables_save_for_its_tables() -> None:
    ipt = parse_iptables((FIX / "mixed.iptables.save").read_text(), "mixed.iptables.save")
    nft = parse_nft_text((FIX / "mixed.txt").read_text(), "mixed.txt")
    rs = combine([ipt], [nft])
    names = [(t.family.value, t.name) for t in rs.tables]
    assert len(names) == len(set(names))
    assert {t.name: t.source for t in rs.tables if t.family is Family.IPV4 and t.name in ("filter", "nat")} == {
        "filter": "iptables-nft", "nat": "iptables-nft"}
    inet = rs.table(Family.INET, "filter")  # a native table that only shares the name
    assert inet is not None and inet.source == "nft"
    kp = rs.table(Family.IPV4, "kube-proxy")
    assert kp is not None and kp.source == "nft"
    dropped = [w for w in rs.warnings if "dropped" in w]
    assert len(dropped) == len({t.name for t in ipt.tables})
    # The iptables view keeps `-m recent` options, so nothing there is unknown for that reason.
    nat = rs.table(Family.IPV4, "nat")
    assert nat is not None and all(e.name != "recent" or e.known for r in nat.rules() for e in r.exprs)
