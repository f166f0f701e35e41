"""Protocol names and numbers as iptables 1.8 and nft print and accept them.

The fixtures hold one rule per protocol number 0-255, loaded into a kernel
and printed back by iptables-save (nft and legacy backends, both families)
and by nft (text and JSON); see tests/fixtures/tools/capture.py. Each rule
must match exactly the packets of its own protocol number.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kpa.errors import InputError
from kpa.netfilter.domain import IntSet
from kpa.netfilter.model import Family, Flow, Rule, Ruleset, Verdict
from kpa.netfilter.packet import PacketSpec, State, TraceContext
from kpa.netfilter.protocols import BadNumber, c_uint, iptables_protocol, nft_protocol
from kpa.parse.iptables_save import parse_iptables
from kpa.sources import parse_text

FIX = Path(__file__).parent / "fixtures" / "tools"


def matches(r: Rule, proto: int, family: Family) -> bool:
    """Whether a packet of protocol `proto` gets through all of the rule's matches."""
    ctx = TraceContext(local={4: IntSet(), 6: IntSet()})
    ctx.rule = r
    st: State = PacketSpec(family=family, proto=str(proto), src="10.0.0.1" if family is Family.IPV4 else "fd00::1",
                           ).initial_state()
    states = [st]
    for e in r.exprs:
        if e.name in ("accept", "drop", "ACCEPT", "DROP"):
            break
        nxt = []
        for s in states:
            nxt.extend(s2 for s2, flow in e.step(s, ctx) if flow is Flow.CONTINUE and not isinstance(flow, Verdict))
        states = nxt
    return bool(states)


@pytest.mark.parametrize("name", [f"protocols.{b}.{f}.save" for b in ("nft", "legacy") for f in ("v4", "v6")])
def test_iptables_save_prints_every_protocol_kpa_reads(name: str) -> None:
    family = Family.IPV6 if ".v6." in name else Family.IPV4
    rs = parse_iptables((FIX / name).read_text(), name)
    chain = rs.tables[0].chains["INPUT"]
    assert len(chain.rules) == 256
    # `-p 0` is stored as "any protocol": iptables-save prints no -p at all.
    assert "-p" not in chain.rules[0].text
    for n, r in enumerate(chain.rules):
        for probe in (n, (n + 1) % 256):
            assert matches(r, probe, family) == (n == 0 or probe == n), (r.location, r.text, probe)
    for r in rs.tables[0].chains["OUTPUT"].rules:
        number = iptables_protocol(r.text.split()[4])
        assert not matches(r, number, family) and matches(r, 6, family), r.text


@pytest.mark.parametrize("name", ["protocols.txt", "protocols.json"])
def test_nft_prints_every_protocol_kpa_reads(name: str) -> None:
    rs: Ruleset = parse_text((FIX / name).read_text(), name)
    t = rs.tables[0]
    for chain, family in (("l4proto", Family.IPV4), ("v4", Family.IPV4), ("v6", Family.IPV6)):
        rules = t.chains[chain].rules
        for n in range(256):
            r = rules[n]
            for probe in (n, (n + 1) % 256):
                assert matches(r, probe, family) == (probe == n), (r.location, r.text, probe)
            # The header test never holds for the other family (nft's implicit dependency).
            if chain != "l4proto":
                other = Family.IPV6 if family is Family.IPV4 else Family.IPV4
                assert not matches(r, n, other)
    anon, negated = t.chains["l4proto"].rules[256:]
    assert [p for p in range(256) if matches(anon, p, Family.IPV4)] == [4, 94, 108, 135]
    assert [p for p in range(256) if not matches(negated, p, Family.IPV4)] == [4]


def test_names_from_other_protocol_databases() -> None:
    # Red Hat's /etc/protocols (the IANA list) names 4 `ipv4` and 73 `cphb`; netbase says ipencap and rspf.
    assert iptables_protocol("ipv4") == iptables_protocol("ipencap") == 4
    assert nft_protocol("cphb") == nft_protocol("rspf") == 73
    assert iptables_protocol("sat-expak") == 64
    # libxtables' own names, and iptables lower-casing its argument.
    assert iptables_protocol("mh") == iptables_protocol("ipv6-mh") == iptables_protocol("IPV6-MH") == 135
    assert iptables_protocol("all") == 0
    assert iptables_protocol("icmp") == 1  # also in ip6tables, which prints ICMPv6 as ipv6-icmp
    # nft takes the database's aliases as written (getprotobyname is case-sensitive).
    assert nft_protocol("IPSEC-ESP") == 50 and nft_protocol("IP-ENCAP") == 4
    for bad in ("Ipencap", "256", "ip-encap", "8_0", "+6", "٦"):
        with pytest.raises(ValueError):
            nft_protocol(bad)
    with pytest.raises(ValueError):
        iptables_protocol("ip-encap")  # lower-cased IP-ENCAP: iptables rejects it too


def test_numbers_read_as_c_strtoul_reads_them() -> None:
    assert c_uint("010", 255) == 8 and c_uint("0x2f", 255) == 47 and c_uint("+17", 255, sign=True) == 17
    for bad in ("8_0", "+80", "٨٠", "0x", "09", "-1", "", " 8", "256"):
        with pytest.raises(BadNumber):
            c_uint(bad, 255)


@pytest.mark.parametrize(("rule", "message"), [
    ("-A INPUT -p ip-encap -j ACCEPT", "protocol"),
    ("-A INPUT -p 256 -j ACCEPT", "protocol"),
    ("-A INPUT -p tcp --dport 8_0 -j ACCEPT", "port"),
    ("-A INPUT -p tcp --dport ٨٠ -j ACCEPT", "port"),
    ("-A INPUT -p tcp --dport 65536 -j ACCEPT", "port"),
    ("-A INPUT -m mark --mark 0x100000000 -j ACCEPT", "mark"),
    ("-A INPUT -s fd00::1 -j ACCEPT", "IPv4"),
])
def test_values_iptables_rejects_are_errors(rule: str, message: str) -> None:
    with pytest.raises(InputError) as exc:
        parse_iptables(f"# Generated by iptables-save v1.8.9 (nf_tables)\n*filter\n:INPUT ACCEPT [0:0]\n{rule}\nCOMMIT\n",
                       "x.save")
    assert exc.value.line == 4 and message in str(exc.value)


def test_values_iptables_accepts_read_as_it_does() -> None:
    # iptables-restore takes these (C's strtoul); iptables-save prints them as 80, 80 and 8.
    rs = parse_iptables("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp --dport +80 -j ACCEPT\n"
                        "-A INPUT -p tcp --dport 0x50 -j ACCEPT\n-A INPUT -p tcp --dport 010 -j ACCEPT\nCOMMIT\n")
    rules = rs.tables[0].chains["INPUT"].rules
    st = {p: PacketSpec(family=Family.IPV4, proto="tcp", dport=p).initial_state() for p in (8, 80)}
    assert [[matches(r, 6, Family.IPV4) and _dport_ok(r, st[p]) for p in (8, 80)] for r in rules] == [
        [False, True], [False, True], [True, False]]


def _dport_ok(r: Rule, st: State) -> bool:
    ctx = TraceContext(local={4: IntSet()})
    ctx.rule = r
    states = [st]
    for e in r.exprs[:-1]:
        states = [s2 for s in states for s2, flow in e.step(s, ctx) if flow is Flow.CONTINUE]
    return bool(states)


@pytest.mark.parametrize(("rule", "message"), [
    ("tcp dport 65536 accept", "port"),
    ("meta mark 0x100000000 accept", "mark"),
    ("ip saddr fd00::1 accept", "IPv4"),
    ("ip daddr 10.0.0.0/8 accept", None),
    ("ip6 daddr 10.0.0.1 accept", "IPv6"),
    ("meta l4proto 256 accept", "protocol"),
    ("tcp dport 8_0 accept", "port"),
])
def test_values_nft_rejects_are_errors(rule: str, message: str | None) -> None:
    text = f"table ip t {{\n\tchain c {{\n\t\t{rule}\n\t}}\n}}\n"
    if message is None:
        parse_text(text, "x.nft")
        return
    with pytest.raises(InputError) as exc:
        parse_text(text, "x.nft")
    assert exc.value.line == 3 and message in str(exc.value), str(exc.value)
