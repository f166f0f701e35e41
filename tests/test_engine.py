"""The trace engine's netfilter semantics on small rulesets.

Kernel agreement is proved in tests/kernel; these tests pin down the
engine's own rules (traversal order, jump/goto/return, NAT only on NEW,
symbolic splitting, probability arithmetic) on rulesets small enough to
reason about by hand.
"""

from __future__ import annotations

from fractions import Fraction

from kpa.netfilter.engine import trace
from kpa.netfilter.model import Family
from kpa.netfilter.packet import PacketSpec, TraceContext, node_local_addresses
from kpa.parse.iptables_save import parse_iptables

NODE = "192.168.0.2"


def nat(body: str, chains: str = "") -> str:
    return ("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
            + chains + body + "COMMIT\n")


def filt(body: str, chains: str = "", forward: str = "ACCEPT") -> str:
    return (f"*filter\n:INPUT ACCEPT [0:0]\n:FORWARD {forward} [0:0]\n:OUTPUT ACCEPT [0:0]\n" + chains + body + "COMMIT\n")


def run(text: str, **packet: object) -> list:  # type: ignore[type-arg]
    rs = parse_iptables(text, "t.save")
    spec = PacketSpec(family=Family.IPV4, **packet)  # type: ignore[arg-type]
    ctx = TraceContext(local=node_local_addresses([NODE]))
    return trace(rs, spec, ctx).outcomes


def test_goto_returns_to_the_caller_of_the_calling_chain() -> None:
    text = filt("-A FORWARD -j A\n-A FORWARD -j DROP\n-A A -g B\n-A A -j ACCEPT\n-A B -j RETURN\n",
                ":A - [0:0]\n:B - [0:0]\n")
    [o] = run(text, src="10.0.0.1", dst="10.0.0.2", proto="tcp", dport=1)
    # RETURN from B goes back past A (which was left by goto) to FORWARD rule 2.
    assert o.verdict == "DROP"
    assert [(h.chain, h.rule) for h in o.path] == [("FORWARD", 1), ("A", 1), ("B", 1), ("FORWARD", 2)]


def test_jump_return_continues_after_the_jump() -> None:
    text = filt("-A FORWARD -j A\n-A FORWARD -j REJECT --reject-with icmp-host-prohibited\n-A A -j RETURN\n", ":A - [0:0]\n")
    [o] = run(text, src="10.0.0.1", dst="10.0.0.2", proto="udp", dport=1)
    assert o.verdict == "REJECT" and o.detail == "icmp-host-prohibited"


def test_policy_applies_at_the_end_of_a_base_chain() -> None:
    [o] = run(filt("", forward="DROP"), src="10.0.0.1", dst="10.0.0.2", proto="tcp", dport=1)
    assert o.verdict == "DROP" and "policy" in o.reason


def test_routing_sends_local_destinations_to_input() -> None:
    text = filt("-A INPUT -p tcp -m tcp --dport 22 -j DROP\n")
    [o] = run(text, src="10.0.0.1", dst=NODE, proto="tcp", dport=22)
    assert o.verdict == "DROP" and o.ended_in == "INPUT"
    [o] = run(text, src="10.0.0.1", dst="10.9.9.9", proto="tcp", dport=22)
    assert o.verdict == "ACCEPT" and o.delivery == "forward"


def test_dnat_changes_what_later_hooks_see() -> None:
    text = nat("-A PREROUTING -d 10.96.0.1/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 192.168.0.2:8080\n")
    text += filt("-A INPUT -p tcp -m tcp --dport 8080 -j REJECT --reject-with tcp-reset\n")
    [o] = run(text, src="10.0.0.1", dst="10.96.0.1", proto="tcp", dport=80)
    # After DNAT to a local address the routing decision picks INPUT, where port 8080 is rejected.
    assert o.verdict == "REJECT" and o.dnat_text() == "192.168.0.2:8080"


def test_nat_runs_only_for_new_connections() -> None:
    text = nat("-A PREROUTING -d 10.96.0.1/32 -j DNAT --to-destination 10.244.0.5\n")
    text += filt("-A FORWARD -m conntrack --ctstate ESTABLISHED -j ACCEPT\n-A FORWARD -j DROP\n")
    [new] = run(text, src="10.0.0.1", dst="10.96.0.1", proto="tcp", dport=80)
    assert new.verdict == "DROP" and new.dnat_text() == "10.244.0.5:80"
    [est] = run(text, src="10.0.0.1", dst="10.96.0.1", proto="tcp", dport=80, ctstate="ESTABLISHED")
    # An established packet follows its connection's mapping without re-running nat rules.
    assert est.verdict == "ACCEPT" and est.dnat_text() == "10.244.0.5:80"
    assert any(h.note and "conntrack" in h.note for h in est.path)


def test_marks_set_by_mark_are_read_by_mark_match() -> None:
    text = nat("-A PREROUTING -s 10.0.0.0/8 -j MARK --set-xmark 0x4000/0x4000\n"
               "-A POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE\n")
    [o] = run(text, src="10.1.1.1", dst="8.8.8.8", proto="udp", dport=53)
    assert o.state.masquerade and o.state.mark == 0x4000
    [o] = run(text, src="172.16.0.1", dst="8.8.8.8", proto="udp", dport=53)
    assert not o.state.masquerade


def test_statistic_cascade_splits_exactly_and_sums_to_one() -> None:
    n = 7
    chains = ":SVC - [0:0]\n" + "".join(f":E{i} - [0:0]\n" for i in range(n))
    body = "-A PREROUTING -j SVC\n"
    for i in range(n):
        prob = f" -m statistic --mode random --probability {1 / (n - i):.11f}" if i < n - 1 else ""
        body += f"-A SVC{prob} -j E{i}\n-A E{i} -j DNAT --to-destination 10.244.0.{i + 1}\n"
    outs = run(nat(body, chains), src="10.0.0.1", dst="10.96.0.1", proto="udp", dport=1)
    assert len(outs) == n
    assert sum(o.probability for o in outs) == 1
    for o in outs:
        assert abs(o.probability - Fraction(1, n)) < Fraction(1, 2**30)
    # The kernel's quantum: every probability is a dyadic rational.
    assert all((o.probability.denominator & (o.probability.denominator - 1)) == 0 for o in outs)


def test_open_source_splits_with_conditions() -> None:
    text = filt("-A FORWARD -s 10.0.0.0/8 -j DROP\n")
    outs = run(text, dst="10.9.9.9", proto="tcp", dport=1)
    by_verdict = {o.verdict: o for o in outs}
    assert by_verdict["DROP"].conditions == ["src in 10.0.0.0/8"]
    assert by_verdict["ACCEPT"].conditions == ["src not in 10.0.0.0/8"]
    assert all(o.probability == 1 for o in outs)


def test_unknown_match_is_explored_both_ways_and_reported() -> None:
    text = filt("-A FORWARD -m bpf --bytecode \"1,6 0 0 0\" -j DROP\n")
    outs = run(text, src="10.0.0.1", dst="10.9.9.9", proto="tcp", dport=1)
    assert {o.verdict for o in outs} == {"DROP", "ACCEPT"}
    assert all(o.state.assumptions and "bpf" in o.state.assumptions[0].reason for o in outs)


def test_affinity_list_open_is_followed_both_ways() -> None:
    chains = ":SVC - [0:0]\n:A - [0:0]\n:B - [0:0]\n"
    body = ("-A PREROUTING -j SVC\n-A SVC -m recent --rcheck --seconds 10800 --reap --name B -j B\n"
            "-A SVC -j A\n-A A -j DNAT --to-destination 10.244.0.1\n"
            "-A B -m recent --set --name B -j DNAT --to-destination 10.244.0.2\n")
    rs = parse_iptables(nat(body, chains), "t")
    spec = PacketSpec(src="10.0.0.1", dst="10.96.0.1", proto="tcp", dport=80)
    first = trace(rs, spec, TraceContext(local=node_local_addresses([NODE]))).outcomes
    assert [o.dnat_text() for o in first] == ["10.244.0.1:80"]
    sticky = trace(rs, spec, TraceContext(local=node_local_addresses([NODE]), affinity={"B": True})).outcomes
    assert [o.dnat_text() for o in sticky] == ["10.244.0.2:80"]
    both = trace(rs, spec, TraceContext(local=node_local_addresses([NODE]), affinity_default=None)).outcomes
    assert sorted(o.dnat_text() or "" for o in both) == ["10.244.0.1:80", "10.244.0.2:80"]
    assert all(any("recent list B" in c for c in o.conditions) for o in both)


def test_output_to_local_address_loops_back_through_input_without_nat() -> None:
    text = nat("-A PREROUTING -j DNAT --to-destination 10.1.1.1\n") + filt("-A INPUT -i lo -j ACCEPT\n-A INPUT -j DROP\n")
    [o] = run(text, src=NODE, dst="127.0.0.1", proto="tcp", dport=80, origin="output")
    assert o.verdict == "ACCEPT" and o.delivery == "local" and o.dnat_text() is None


def test_identical_outcomes_merge() -> None:
    text = filt("-A FORWARD -m statistic --mode random --probability 0.5 -j ACCEPT\n")
    outs = run(text, src="10.0.0.1", dst="10.9.9.9", proto="tcp", dport=1)
    # Two paths (rule hit / policy) differ, so two outcomes remain, each 1/2.
    assert sorted(o.probability for o in outs) == [Fraction(1, 2), Fraction(1, 2)]


def test_explain_names_the_failing_part_of_the_rules_before_a_hit() -> None:
    text = filt("-A FORWARD -s 10.1.0.0/16 -j DROP\n-A FORWARD -p udp -j DROP\n-A FORWARD -p tcp -m tcp --dport 22 -j REJECT\n")
    rs = parse_iptables(text, "t.save")
    spec = PacketSpec(src="10.2.0.1", dst="10.9.9.9", proto="tcp", dport=22)
    [o] = trace(rs, spec, TraceContext(local=node_local_addresses([NODE]), explain=True)).outcomes
    hit = o.path[-1]
    assert hit.rule == 3
    assert [(m.rule, m.failed) for m in hit.misses] == [(1, "-s 10.1.0.0/16"), (2, "-p udp")]
    plain = trace(rs, spec, TraceContext(local=node_local_addresses([NODE]))).outcomes[0]
    assert plain.path[-1].misses == ()


def test_conditions_read_as_a_network_with_holes() -> None:
    text = filt("-A FORWARD -s 10.244.0.5/32 -j ACCEPT\n-A FORWARD -s 10.244.0.0/16 -j DROP\n")
    outs = run(text, dst="10.9.9.9", proto="tcp", dport=1)
    conds = sorted(c for o in outs for c in o.conditions)
    assert conds == ["src in 10.244.0.0/16 except 10.244.0.5", "src in 10.244.0.5", "src not in 10.244.0.0/16"]


def _unknown_loop_ruleset(goto_self: bool) -> str:
    rules = ["-A LOOP -m foo --bar 1 -j LOOP", "-A LOOP -m foo --bar 2 -j LOOP",
             "-A LOOP -g LOOP" if goto_self else "-A LOOP -j ACCEPT"]
    return ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:LOOP - [0:0]\n"
            "-A INPUT -j LOOP\n-A FORWARD -j LOOP\n" + "\n".join(rules) + "\nCOMMIT\n")


def test_a_chain_that_jumps_or_goes_to_itself_stops_the_trace() -> None:
    rs = parse_iptables(_unknown_loop_ruleset(goto_self=True), "loop.save")
    ctx = TraceContext(local=node_local_addresses(["192.168.0.2"]))
    result = trace(rs, PacketSpec(family=Family.IPV4), ctx)
    assert any("jump loop in table filter: LOOP -> LOOP" in w for w in result.warnings)
    assert all(o.verdict in ("ACCEPT", "DROP") for o in result.outcomes)
    assert not result.truncated and len(result.outcomes) < 20


def test_max_outcomes_bounds_the_outcomes_and_says_so() -> None:
    # 12 unknown matches in a row: 2^12 ways through, more than --max-outcomes allows.
    rules = "".join(f"-A INPUT -m foo --bar {i} -j MARK --set-xmark {1 << i}/{1 << i}\n" for i in range(12))
    rs = parse_iptables(f"*mangle\n:INPUT ACCEPT [0:0]\n{rules}COMMIT\n", "many.save")
    for bound in (5, 64):
        ctx = TraceContext(local=node_local_addresses(["192.168.0.2"]), max_outcomes=bound)
        result = trace(rs, PacketSpec(family=Family.IPV4, dst="192.168.0.2"), ctx)
        assert result.truncated and 0 < len(result.outcomes) <= bound
    ctx = TraceContext(local=node_local_addresses(["192.168.0.2"]), max_outcomes=10_000)
    result = trace(rs, PacketSpec(family=Family.IPV4, dst="192.168.0.2"), ctx)
    assert not result.truncated and len(result.outcomes) == 4096
