"""Constructs the real nft prints and accepts, read from its own listings (tests/fixtures/tools).

constructs.nft was loaded with `nft -f` and listed back as text and JSON. kpa
must read both; what it models must behave as nft's semantics say, and what
it does not model must be an unknown rule with its location and reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kpa.ext.base import UnknownExpr
from kpa.netfilter.domain import IntSet
from kpa.netfilter.model import Family, Flow, Ruleset, Table, Verdict, VerdictKind
from kpa.netfilter.packet import PacketSpec, TraceContext
from kpa.sources import parse_text

FIX = Path(__file__).parent / "fixtures" / "tools"
NAMES = ["constructs.txt", "constructs.json"]


def load(name: str) -> tuple[Ruleset, Table]:
    rs = parse_text((FIX / name).read_text(), name)
    t = rs.table(Family.INET, "constructs")
    assert t is not None
    return rs, t


def outcomes(t: Table, chain: str, index: int, **packet: object) -> list[Flow | Verdict]:
    r = t.chains[chain].rules[index - 1]
    ctx = TraceContext(local={4: IntSet()})
    ctx.rule = r
    st = PacketSpec(family=Family.IPV4, **packet).initial_state()  # type: ignore[arg-type]
    states, out = [st], []
    for e in r.exprs:
        nxt = []
        for s in states:
            for s2, flow in e.step(s, ctx):
                (nxt.append(s2) if flow is Flow.CONTINUE else out.append(flow))
        states = nxt
    out.extend(Flow.CONTINUE for _ in states)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_anonymous_chain_becomes_a_chain_of_its_own(name: str) -> None:
    _, t = load(name)
    jump = t.chains["svc"].rules[6]
    refs = list(jump.chain_refs())
    assert len(refs) == 1 and refs[0][0] is VerdictKind.JUMP
    anon = t.chains[refs[0][1]]
    assert len(anon.rules) == 2 and anon.rules[0].location.line == jump.location.line
    assert outcomes(t, anon.name, 1, src="10.0.0.1", dst="10.1.2.3") == [Verdict(VerdictKind.ACCEPT)]
    assert outcomes(t, anon.name, 2, src="10.0.0.1", dst="10.2.2.3")[0].kind is VerdictKind.DROP  # type: ignore[union-attr]
    assert outcomes(t, "svc", 7, src="10.0.0.1") == [Verdict(VerdictKind.JUMP, chain=anon.name)]
    assert outcomes(t, "svc", 7, src="11.0.0.1") == [Flow.NO_MATCH]


@pytest.mark.parametrize("name", NAMES)
def test_catch_all_elements(name: str) -> None:
    _, t = load(name)
    # `ip saddr @catch-all` with elements { 10.0.0.1, * }: every address is in the set.
    for src in ("10.0.0.1", "192.0.2.7"):
        assert outcomes(t, "svc", 9, src=src) == [Verdict(VerdictKind.ACCEPT)]
    # `tcp dport vmap @vm` with { 80 : accept, * : drop }.
    assert outcomes(t, "svc", 10, proto="tcp", dport=80) == [Verdict(VerdictKind.ACCEPT)]
    assert [v.kind for v in outcomes(t, "svc", 10, proto="tcp", dport=81)] == [VerdictKind.DROP]  # type: ignore[union-attr]


@pytest.mark.parametrize("name", NAMES)
def test_flag_lists_and_masks(name: str) -> None:
    _, t = load(name)
    for state, hit in (("ESTABLISHED", True), ("RELATED", True), ("NEW", False)):
        for index in (1, 2):  # `ct state established,related` and `ct state { established, related }`
            got = outcomes(t, "svc", index, ctstate=state)
            assert got == ([Verdict(VerdictKind.ACCEPT)] if hit else [Flow.NO_MATCH]), (index, state)
    # `meta mark & 0x0000ff00 == 0x00004000`
    assert outcomes(t, "svc", 6, mark=0x14000) == [Verdict(VerdictKind.ACCEPT)]
    assert outcomes(t, "svc", 6, mark=0x4100) == [Flow.NO_MATCH]
    # `ip saddr & 255.255.0.0 == 10.1.0.0`, which nft lists as a prefix
    assert outcomes(t, "svc", 12, src="10.1.9.9") == [Verdict(VerdictKind.ACCEPT)]


@pytest.mark.parametrize("name", NAMES)
def test_tcp_flags_follow_the_connection_state(name: str) -> None:
    _, t = load(name)
    tcp = {"proto": "tcp", "dport": 80}
    # `tcp flags syn / fin,syn,rst,ack counter`: a NEW connection's first packet is a bare SYN.
    assert outcomes(t, "svc", 3, ctstate="NEW", **tcp) == [Flow.CONTINUE]
    assert outcomes(t, "svc", 3, ctstate="ESTABLISHED", **tcp) == [Flow.NO_MATCH]
    # `tcp flags syn,ack / syn,ack accept` and `tcp flags == 0x12 accept`: a SYN-ACK, never the traced packet.
    for index in (4, 5):
        for state in ("NEW", "ESTABLISHED"):
            assert outcomes(t, "svc", index, ctstate=state, **tcp) == [Flow.NO_MATCH]
    # No TCP header, no flags: the rule does not match even a UDP packet.
    assert outcomes(t, "svc", 3, ctstate="NEW", proto="udp", dport=80) == [Flow.NO_MATCH]
    # An open state splits: its NEW part is the SYN.
    split = outcomes(t, "svc", 3, ctstate=None, **tcp)
    assert sorted(str(x) for x in split) == sorted([str(Flow.CONTINUE), str(Flow.NO_MATCH)])


@pytest.mark.parametrize("name", NAMES)
def test_unmodelled_constructs_are_unknown_with_location_and_reason(name: str) -> None:
    rs, t = load(name)
    unknown = {(r.chain, r.index): e for tb in rs.tables for r in tb.rules() for e in r.unknown_exprs()}
    assert all(isinstance(e, UnknownExpr) and e.reason for e in unknown.values())
    # a raw payload lookup at an offset that is no field kpa knows (`@nh,16,16`: IPv4's total length)
    assert set(unknown) == {("svc", 11)}
    assert "@nh,16,16" in unknown[("svc", 11)].reason
    for key in unknown:
        line = t.chains[key[0]].rules[key[1] - 1].location.line
        assert line > 1 if name.endswith(".txt") else line == 1


@pytest.mark.parametrize("name", NAMES)
def test_nat_map_range_values_pick_one_address_of_the_range(name: str) -> None:
    _, t = load(name)
    # `dnat ip to ip daddr map @nat-ranges` with { 10.96.0.20 : 10.244.0.10-10.244.0.12 }
    got = outcomes(t, "early", 3, src="10.244.0.5", dst="10.96.0.20", proto="tcp", sport=40000, dport=80)
    assert len(got) == 1 and got[0].kind is VerdictKind.ACCEPT  # type: ignore[union-attr]
    # An open source: each address of the range is a possible choice.
    spread = outcomes(t, "early", 3, dst="10.96.0.20", proto="tcp", dport=80)
    assert len(spread) == 3
    assert outcomes(t, "early", 3, src="10.244.0.5", dst="10.96.0.21", proto="tcp", dport=80) == [Flow.NO_MATCH]


def _shape(rs: Ruleset) -> dict[tuple[str, str, str], tuple[object, ...]]:
    # An anonymous chain is named after its line, which differs between the two files.
    return {(t.family.value, t.name, c.name.split("@")[0]): (c.hook, c.priority, c.policy, c.kind, len(c.rules))
            for t in rs.tables for c in t.chains.values()}


@pytest.mark.parametrize(("source", "listing"), [
    ("nft/sampler.nft", "nft/sampler.txt"),
    ("tools/constructs.nft", "tools/constructs.txt"),
])
def test_nft_input_files_read_as_nft_lists_them(source: str, listing: str) -> None:
    """What `nft -f` was given (blocks and statements on one line, `;` separators, a chain's `policy`
    on a line of its own, `10.0.0.1 : 53`) reads into the same chains and rules as nft's own listing
    of it (tests/fixtures/nft/capture.py and tests/fixtures/tools/capture.py loaded these files)."""
    fixtures = FIX.parent
    given = parse_text((fixtures / source).read_text(), source)
    listed = parse_text((fixtures / listing).read_text(), listing)
    assert _shape(given) == _shape(listed)
    unknown_given = sum(1 for t in given.tables for r in t.rules() if not r.known)
    unknown_listed = sum(1 for t in listed.tables for r in t.rules() if not r.known)
    assert unknown_given == unknown_listed


def test_masked_address_reads_as_the_prefix_nft_lists() -> None:
    # constructs.nft says `ip saddr & 255.255.0.0 == 10.1.0.0`; nft lists `ip saddr 10.1.0.0/16`.
    _, t = load("constructs.nft")
    assert outcomes(t, "svc", 12, src="10.1.9.9") == [Verdict(VerdictKind.ACCEPT)]
    assert outcomes(t, "svc", 12, src="10.2.0.1") == [Flow.NO_MATCH]
    split = outcomes(t, "svc", 12, src="10.0.0.0/8")
    assert sorted(map(str, split)) == sorted(map(str, [Verdict(VerdictKind.ACCEPT), Flow.NO_MATCH]))
