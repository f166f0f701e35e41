"""Reading `ipset save` dumps and the set match's symbolic semantics (kernel agreement: tests/kernel)."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from kpa.errors import InputError
from kpa.netfilter.engine import trace
from kpa.netfilter.packet import PacketSpec, TraceContext, node_local_addresses
from kpa.sources import detect_kind, load_rules, parse_text

SETS = """create pods hash:ip family inet hashsize 1024 maxelem 65536 timeout 100 bucketsize 12 initval 0x0b5dfda6
add pods 10.244.0.10 timeout 99
add pods 10.244.0.11
create blocks hash:net family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0xb92456de
add blocks 10.0.0.0/16 nomatch
add blocks 10.0.0.0/8
add blocks 10.0.5.0/24
create ports hash:ip,port family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x3a21def4
add ports 1.2.3.4,udp:53
add ports 1.2.3.4,icmp:echo-request
add ports 1.2.3.4,tcp:80
create counted hash:net family inet hashsize 1024 maxelem 65536 counters comment bucketsize 12 initval 0x1
add counted 1.2.3.0/24 packets 0 bytes 0 comment "hello world"
create mac hash:mac hashsize 1024 maxelem 65536 bucketsize 12 initval 0x2
"""


def rules(*lines: str) -> str:
    body = "".join(f"-A FORWARD {line}\n" for line in lines)
    return f"*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n{body}COMMIT\n"


def run(tmp_path: Path, rule_lines: list[str], **packet: object) -> list[tuple[str, list[str], list[str]]]:
    (tmp_path / "r.save").write_text(rules(*rule_lines))
    (tmp_path / "s.ipset").write_text(SETS)
    rs = load_rules([str(tmp_path / "r.save"), str(tmp_path / "s.ipset")])
    result = trace(rs, PacketSpec(**packet), TraceContext(local=node_local_addresses(["192.168.0.2"])))  # type: ignore[arg-type]
    return [(o.verdict, o.conditions, [a.reason for a in o.state.assumptions]) for o in result.outcomes]


def test_detects_ipset_save() -> None:
    assert detect_kind(SETS) == "ipset"
    assert detect_kind("add pods 10.0.0.1\n") == "ipset"
    assert detect_kind("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n") == "iptables"


def test_reads_gzip_and_stdin(tmp_path: Path) -> None:
    (tmp_path / "s.gz").write_bytes(gzip.compress(SETS.encode()))
    rs = load_rules([str(tmp_path / "s.gz")])
    assert sorted(rs.ipsets) == ["blocks", "counted", "mac", "pods", "ports"]
    assert rs.ipsets["pods"].members[0].options == {"timeout": "99"}
    assert rs.ipsets["counted"].members[0].options["comment"] == "hello world"
    (tmp_path / "r.save").write_text(rules("-m set --match-set pods src -j DROP"))
    out = subprocess.run([sys.executable, "-m", "kpa", "trace", "-r", str(tmp_path / "r.save"), "-r", "-",
                          "--src", "10.244.0.10", "--dst", "10.9.9.9", "-p", "tcp", "--dport", "80", "-o", "json"],
                         input=SETS, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert '"verdict": "DROP"' in out.stdout


@pytest.mark.parametrize(("text", "message"), [
    ("create a hash:ip\nadd b 1.2.3.4\n", "s:2: expected a `create b ...` line before elements are added to it"),
    ("create a hash:ip family inet\nadd a 1.2.3.400\n", "s:2: expected an IPv4 address, found '1.2.3.400'"),
    ("create a hash:net family inet6\nadd a 10.0.0.0/8\n", "s:2: expected an IPv6 address (the set's family)"),
    ("create a hash:ip,port family inet\nadd a 1.2.3.4\n", "s:2: expected a hash:ip,port element (2 parts"),
    ("create a hash:ip family inet\nadd a 1.2.3.4 nomatch\n", "s:2: nomatch is not valid for a hash:ip set"),
    ("create a hash:zz family inet\n", "s:1: expected an ipset type"),
    ("create a hash:ip family inet\ncreate a hash:ip family inet\n", "s:2: set a is created twice (first at s:1)"),
    ("create a hash:ip family inet\nswap a b\n", "s:2: expected `create` or `add`"),
    ("create a hash:ip family inet bogus 1\n", "s:1: expected a create option"),
    ("create a hash:ip,port family inet\nadd a 1.2.3.4,tcp:99999\n", "s:2: expected a port number 0-65535"),
    ('create a hash:ip family inet comment\nadd a 1.2.3.4 comment "open\n', "s:2: expected a closing"),
])
def test_bad_dumps_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(InputError) as err:
        parse_text(text, "s", "ipset")
    assert str(err.value).startswith(message), str(err.value)


def test_hash_net_most_specific_prefix_and_nomatch(tmp_path: Path) -> None:
    out = run(tmp_path, ["-m set --match-set blocks dst -j DROP"], src="1.1.1.1", dst="10.0.0.0/8", proto="tcp",
              dport=80)
    drop = [c for v, c, _ in out if v == "DROP"]
    assert drop == [["dst in 10.0.5.0/24, 10.1.0.0-10.255.255.255"]]


def test_return_nomatch_and_negation(tmp_path: Path) -> None:
    out = run(tmp_path, ["-m set --match-set blocks dst --return-nomatch -j DROP"], src="1.1.1.1",
              dst="10.0.0.0/8", proto="tcp", dport=80)
    assert [c for v, c, _ in out if v == "DROP"] == [["dst in 10.0.0.0/16 except 10.0.5.0/24"]]
    out = run(tmp_path, ["-m set ! --match-set pods src -j DROP"], src="10.244.0.10", dst="10.9.9.9", proto="tcp",
              dport=80)
    assert [v for v, _, _ in out] == ["ACCEPT"]


def test_port_dimension_keys_on_protocol(tmp_path: Path) -> None:
    out = run(tmp_path, ["-m set --match-set ports dst,dst -j DROP"], src="9.9.9.9", dst="1.2.3.4", proto="udp")
    assert sorted((v, c) for v, c, _ in out) == [("ACCEPT", ["dport not in 53"]), ("DROP", ["dport in 53"])]
    # ICMP elements are keyed on type and code; kpa does not model the code, so an echo request is unknown.
    out = run(tmp_path, ["-m set --match-set ports dst,dst -j DROP"], src="9.9.9.9", dst="1.2.3.4", proto="icmp",
              icmp_type=8)
    assert {v for v, _, _ in out} == {"ACCEPT", "DROP"} and all("ICMP code" in u[0] for _, _, u in out)
    out = run(tmp_path, ["-m set --match-set ports dst,dst -j DROP"], src="9.9.9.9", dst="1.2.3.4", proto="icmp",
              icmp_type=0)
    assert [(v, u) for v, _, u in out] == [("ACCEPT", [])]


def test_too_few_directions_never_match(tmp_path: Path) -> None:
    out = run(tmp_path, ["-m set --match-set ports dst -j DROP"], src="9.9.9.9", dst="1.2.3.4", proto="udp", dport=53)
    assert [v for v, _, _ in out] == ["ACCEPT"]


def test_unknown_sets_types_and_counters_are_unknown(tmp_path: Path) -> None:
    for line, why in [("-m set --match-set nosuch src -j DROP", "ipset 'nosuch' is unknown"),
                      ("-m set --match-set mac src -j DROP", "type hash:mac, which kpa does not model"),
                      ("-m set --match-set counted src --packets-gt 3 -j DROP", "counters")]:
        out = run(tmp_path, [line], src="1.2.3.4", dst="10.9.9.9", proto="tcp", dport=80)
        assert sorted(v for v, _, _ in out) == ["ACCEPT", "DROP"], line
        assert all(any(why in r for r in u) for _, _, u in out), (line, out)
    # Without a counters extension on the set, counter conditions are ignored, as in the kernel.
    out = run(tmp_path, ["-m set --match-set pods src --packets-gt 3 -j DROP"], src="10.244.0.11", dst="10.9.9.9",
              proto="tcp", dport=80)
    assert [(v, u) for v, _, u in out] == [("DROP", [])]


def test_set_target_is_a_side_effect(tmp_path: Path) -> None:
    (tmp_path / "r.save").write_text(rules("-j SET --add-set pods src --exist --timeout 5",
                                           "-m set --match-set pods src -j DROP"))
    (tmp_path / "s.ipset").write_text(SETS)
    rs = load_rules([str(tmp_path / "r.save"), str(tmp_path / "s.ipset")])
    result = trace(rs, PacketSpec(src="10.9.9.9", dst="10.8.8.8", proto="tcp", dport=80),
                   TraceContext(local=node_local_addresses([])))
    [o] = result.outcomes
    assert o.verdict == "ACCEPT"
    assert any("SET adds the packet's src to ipset pods" in n for n in o.state.notes)


def test_lookups_index_large_sets(tmp_path: Path) -> None:
    lines = ["create big hash:ip family inet"] + [f"add big 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
                                                   for i in range(0, 40000, 2)]
    rs = parse_text("\n".join(lines) + "\n", "big", "ipset")
    rs.merge(parse_text(rules("-m set --match-set big src -j DROP"), "r", "iptables"))
    ctx = TraceContext(local=node_local_addresses([]))
    hit = trace(rs, PacketSpec(src="10.0.1.2", dst="10.9.9.9", proto="tcp", dport=80), ctx)
    miss = trace(rs, PacketSpec(src="10.0.1.3", dst="10.9.9.9", proto="tcp", dport=80), ctx)
    assert [o.verdict for o in hit.outcomes] == ["DROP"] and [o.verdict for o in miss.outcomes] == ["ACCEPT"]


def test_queue_is_a_terminal_outcome(tmp_path: Path) -> None:
    rs = parse_text(rules("-p tcp --dport 80 -j NFQUEUE --queue-balance 1:4 --queue-bypass --queue-cpu-fanout",
                          "-p tcp --dport 81 -j QUEUE"), "r", "iptables")
    ctx = TraceContext(local=node_local_addresses([]))
    [o] = trace(rs, PacketSpec(src="10.9.9.9", dst="10.8.8.8", proto="tcp", dport=80), ctx).outcomes
    assert (o.verdict, o.detail) == ("QUEUE", "queues 1-4, bypass")
    assert o.to_json()["queue"] == "queues 1-4, bypass" and "accepted by this rule (bypass)" in o.reason
    [o] = trace(rs, PacketSpec(src="10.9.9.9", dst="10.8.8.8", proto="tcp", dport=81), ctx).outcomes
    assert o.reason == "decided by a userspace program (queue 0); with no program listening on it, the packet is dropped"
    nft = parse_text("table inet t {\n chain f {\n  type filter hook forward priority 0; policy accept;\n"
                     "  tcp dport 80 queue num 3 bypass\n  tcp dport 81 queue flags bypass,fanout to 1-3\n }\n}\n",
                     "n", "nft-text")
    [o] = trace(nft, PacketSpec(src="10.9.9.9", dst="10.8.8.8", proto="tcp", dport=80), ctx).outcomes
    assert (o.verdict, o.detail) == ("QUEUE", "queue 3, bypass")
    [o] = trace(nft, PacketSpec(src="10.9.9.9", dst="10.8.8.8", proto="tcp", dport=81), ctx).outcomes
    assert (o.verdict, o.detail) == ("QUEUE", "queues 1-3, bypass")


def test_debug_pod_collects_ipset_save() -> None:
    from kpa.k8s.debugpod import COLLECT_SCRIPT, parse_collector_output

    assert "section ipset-save" in COLLECT_SCRIPT
    out = parse_collector_output(f"==== kpa-begin ipset-save ====\n{SETS}\n==== kpa-end ipset-save rc=0 ====\n"
                                 "==== kpa-done ====\n")
    assert sorted(parse_text(out["ipset-save"], "n", "ipset").ipsets) == ["blocks", "counted", "mac", "pods",
                                                                           "ports"]
