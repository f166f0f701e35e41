"""nft constructs and TCP flags against the kernel: anonymous chains, catch-all elements,
flag lists (`,` `|` `!` `/`), masked marks, marks from maps, parenthesised expressions, raw payload,
NAT maps with address ranges; iptables --syn/--tcp-flags.

Each ruleset is loaded into a node namespace with the real nft (or iptables-restore),
listed back as text and as JSON, and read by kpa; real TCP connections from a pod
(their first packet, a SYN in conntrack state NEW) cross the node, and kpa's verdict
for each one must be the kernel's, with no assumption left.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from kpa.netfilter.engine import trace
from kpa.netfilter.model import Family as KpaFamily
from kpa.netfilter.model import Ruleset
from kpa.netfilter.packet import PacketSpec, TraceContext, node_local_addresses
from kpa.sources import parse_text

from .harness import SENDER, Observation, Topology, TopologySpec

pytestmark = pytest.mark.kernel

NODE = "192.168.10.2"
CLIENT = "10.244.0.5"
REMOTES = ["10.244.1.10", "10.244.1.11", "10.244.1.12", "10.244.1.13"]

CONSTRUCTS = """table ip kpacons {
  map vm {
    typeof tcp dport : verdict
    elements = { 200 : accept, 201 : jump rej, * : drop }
  }
  set catch {
    typeof ip daddr
    elements = { 10.244.1.11, * }
  }
  map marks {
    typeof tcp dport : meta mark
    elements = { 800 : 0x100, 801 : 0x200, * : 0x4100 }
  }
  chain rej {
    reject with tcp reset
  }
  chain flags_c {
    tcp dport 100 ct state established,related reject with tcp reset
    tcp dport 100 ct state established | related reject with tcp reset
    tcp dport 101 ct state new,untracked reject with tcp reset
    tcp dport 102 ct state new | established reject with tcp reset
    tcp dport 103 ct state != established | related reject with tcp reset
    tcp dport 104 ct state { established, related } reject with tcp reset
    tcp dport 105 ct state & (new | invalid) != 0 reject with tcp reset
    tcp dport 106 ct state & (established | related) == 0 drop
    tcp dport 107 ct state == established | new reject with tcp reset
    tcp dport 110 tcp flags syn / syn,ack reject with tcp reset
    tcp dport 111 tcp flags & (syn | ack) == syn | ack reject with tcp reset
    tcp dport 112 tcp flags == syn reject with tcp reset
    tcp dport 113 tcp flags & (fin | syn | rst | ack) != syn reject with tcp reset
    tcp dport 114 tcp flags syn reject with tcp reset
    tcp dport 115 tcp flags ack reject with tcp reset
    tcp dport 116 tcp flags != syn drop
    tcp dport 117 tcp flags { syn, syn | ack } drop
    tcp dport 118 tcp flags ! fin,rst drop
  }
  chain marks_c {
    tcp dport 300 meta mark set 0x100
    tcp dport 301 meta mark set 0x1ff
    tcp dport 302 meta mark set 0x200
    tcp dport 303 meta mark set 0x4100
    tcp dport 310 meta mark set 0x12
    ct mark set (meta mark & 0xff) << 8
    meta mark & 0xff00 == 0x100 reject with tcp reset
    meta mark & 0xff00 == 0x4100 drop
    meta mark & (0xf000 | 0x0f00) != 0x200 ct mark & 0xff00 == 0x1200 reject with tcp reset
    meta mark & 0xff00 != 0x200 accept
    drop
  }
  chain markmap_c {
    tcp dport 850-859 meta mark set tcp dport map { 850 : 0x100 } reject with tcp reset
    tcp dport 850-859 accept
    meta mark set tcp dport map @marks
    meta mark & 0xff00 == 0x100 reject with tcp reset
    meta mark 0x4100 drop
  }
  chain forward_chain {
    type filter hook forward priority filter; policy accept;
    tcp dport 100-199 jump flags_c
    tcp dport 200-299 tcp dport vmap @vm
    tcp dport 300-399 jump marks_c
    tcp dport 400-499 ip daddr @catch jump { tcp dport 401 reject with tcp reset; tcp dport 402 drop; }
    tcp dport 500-599 ip daddr != @catch drop
    tcp dport 800-899 jump markmap_c
    tcp dport 600-699 jump { tcp dport 601 goto rej; tcp dport 602 counter drop; }
  }
}
"""

# (destination, port, the kernel's verdict): the expectations keep the cases apart.
CASES = [
    (REMOTES[0], 100, "ACCEPT"), (REMOTES[0], 101, "REJECT"), (REMOTES[0], 102, "REJECT"),
    (REMOTES[0], 103, "REJECT"), (REMOTES[0], 104, "ACCEPT"), (REMOTES[0], 105, "REJECT"),
    (REMOTES[0], 106, "DROP"), (REMOTES[0], 107, "ACCEPT"),
    (REMOTES[0], 110, "REJECT"), (REMOTES[0], 111, "ACCEPT"), (REMOTES[0], 112, "REJECT"),
    (REMOTES[0], 113, "ACCEPT"), (REMOTES[0], 114, "REJECT"), (REMOTES[0], 115, "ACCEPT"),
    (REMOTES[0], 116, "ACCEPT"), (REMOTES[0], 117, "DROP"), (REMOTES[0], 118, "DROP"),
    (REMOTES[0], 200, "ACCEPT"), (REMOTES[0], 201, "REJECT"), (REMOTES[0], 202, "DROP"),
    (REMOTES[0], 300, "REJECT"), (REMOTES[0], 301, "REJECT"), (REMOTES[0], 302, "DROP"),
    (REMOTES[0], 303, "DROP"), (REMOTES[0], 304, "ACCEPT"), (REMOTES[0], 310, "REJECT"),
    (REMOTES[0], 401, "REJECT"), (REMOTES[1], 402, "DROP"), (REMOTES[0], 403, "ACCEPT"),
    (REMOTES[0], 501, "ACCEPT"), (REMOTES[1], 501, "ACCEPT"),
    (REMOTES[0], 601, "REJECT"), (REMOTES[0], 602, "DROP"), (REMOTES[0], 603, "ACCEPT"),
    # marks from a map (a catch-all default; a key in no element ends the rule)
    (REMOTES[0], 800, "REJECT"), (REMOTES[0], 801, "ACCEPT"), (REMOTES[0], 802, "DROP"),
    (REMOTES[0], 850, "REJECT"), (REMOTES[0], 851, "ACCEPT"),
]

TCP_FLAGS_IPT = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -p tcp -m tcp --dport 120 --syn -j REJECT --reject-with tcp-reset
-A FORWARD -p tcp -m tcp --dport 121 ! --syn -j REJECT --reject-with tcp-reset
-A FORWARD -p tcp -m tcp --dport 122 --tcp-flags SYN,ACK SYN,ACK -j REJECT --reject-with tcp-reset
-A FORWARD -p tcp -m tcp --dport 123 --tcp-flags ALL SYN -j REJECT --reject-with tcp-reset
-A FORWARD -p tcp -m tcp --dport 124 ! --tcp-flags FIN,SYN,RST,ACK SYN -j REJECT --reject-with tcp-reset
-A FORWARD -p tcp -m tcp --dport 125 ! --syn -m conntrack --ctstate NEW -j DROP
-A FORWARD -p tcp -m tcp --dport 125 --syn -m conntrack --ctstate NEW -j REJECT --reject-with tcp-reset
COMMIT
"""
TCP_FLAGS_CASES = [(120, "REJECT"), (121, "ACCEPT"), (122, "ACCEPT"), (123, "REJECT"), (124, "ACCEPT"),
                   (125, "REJECT")]


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with Topology(TopologySpec(remote_endpoint_ips=REMOTES)) as t:
        yield t


def send(topo: Topology, cases: list[tuple[str, int]]) -> list[Observation]:
    req = {"timeout": 0.4, "flows": [{"family": 4, "proto": "tcp", "src": None, "sport": 0, "dst": dst,
                                      "dport": dport} for dst, dport in cases]}
    out = subprocess.run(["ip", "netns", "exec", topo.name("client"), sys.executable, str(SENDER)],
                         input=json.dumps(req), capture_output=True, text=True, check=True).stdout
    return [Observation("client_pod", "tcp", r["src"], r["sport"], dst, dport, r["result"])
            for r, (dst, dport) in zip(json.loads(out), cases, strict=True)]


def kernel_verdict(topo: Topology, obs: Observation) -> str:
    if obs.result == "refused":
        return "REJECT"
    assert obs.result == "timeout", obs
    return "ACCEPT" if topo.conntrack_for(obs) else "DROP"


def kpa_verdicts(rs: Ruleset, obs: Observation, ctstate: str | None = "NEW") -> list[tuple[str, tuple[str, ...]]]:
    spec = PacketSpec(family=KpaFamily.IPV4, src=obs.src, dst=obs.dst, proto="tcp", dport=obs.dport,
                      sport=obs.sport, ctstate=ctstate)
    ctx = TraceContext(local=node_local_addresses([NODE]))
    return [(o.verdict, tuple(a.describe() for a in o.state.assumptions)) for o in trace(rs, spec, ctx).outcomes]


def compare(topo: Topology, dumps: dict[str, str], cases: list[tuple[str, int, str]]) -> int:
    """Send every case one after the other (each its own connection); kpa must agree for every dump."""
    rulesets = {name: parse_text(text, name) for name, text in dumps.items()}
    compared = 0
    for dst, dport, expected in cases:
        [obs] = send(topo, [(dst, dport)])
        got = kernel_verdict(topo, obs)
        assert got == expected, f"{dst}:{dport}: the kernel said {got}, the case expects {expected}"
        for name, rs in rulesets.items():
            predicted = kpa_verdicts(rs, obs)
            assert predicted == [(got, ())], f"{name} {dst}:{dport}: kernel {got}, kpa {predicted}"
            compared += 1
    return compared


def test_nft_constructs_against_the_kernel(topo: Topology) -> None:
    topo.reset()
    topo.load_nft(CONSTRUCTS)
    dumps = {"constructs.txt": topo.run_in("node", ["nft", "list", "ruleset"]),
             "constructs.json": topo.run_in("node", ["nft", "-j", "list", "ruleset"])}
    # The listing carries the constructs as nft prints them, not as written above.
    text = dumps["constructs.txt"]
    for printed in ("ct state ! established,related", "ct state != established | related", "* : drop",
                    "tcp flags syn / syn,ack", "tcp flags != syn / fin,syn,rst,ack", "(meta mark & 0x000000ff) << 8",
                    "jump {"):
        assert printed in text, printed
    assert compare(topo, dumps, CASES) == 2 * len(CASES)


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_iptables_tcp_flags_against_the_kernel(topo: Topology, backend: str) -> None:
    topo.reset()
    topo.load_iptables(TCP_FLAGS_IPT, backend=backend)
    dump = topo.save(backend, counters=False)
    assert compare(topo, {f"flags.{backend}": dump}, [(REMOTES[0], p, v) for p, v in TCP_FLAGS_CASES]) == len(
        TCP_FLAGS_CASES)
    # An open conntrack state: the NEW part is a SYN, so `! --syn --ctstate NEW` drops nothing.
    rs = parse_text(dump, f"flags.{backend}")
    obs = Observation("client_pod", "tcp", CLIENT, 40000, REMOTES[0], 125, "timeout")
    assert "DROP" not in {v for v, _ in kpa_verdicts(rs, obs, ctstate=None)}


def _int(ip: str) -> int:
    return int(ipaddress.ip_address(ip))


RAW = f"""table inet kparaw {{
  set ra {{
    typeof @nh,128,32
    elements = {{ {_int(REMOTES[1])} }}
  }}
  map rm {{
    typeof @th,16,16 : verdict
    elements = {{ 705 : drop, 706 : jump rej }}
  }}
  chain rej {{
    reject with tcp reset
  }}
  chain c {{
    type filter hook forward priority filter;
    ct state invalid drop
    tcp dport 700 @nh,128,32 @ra reject with tcp reset
    tcp dport 701 @nh,96,32 {_int(CLIENT)} reject with tcp reset
    tcp dport 702 @nh,72,8 6 reject with tcp reset
    @th,16,16 703 reject with tcp reset
    tcp dport 704 @nh,128,32 != {_int(REMOTES[0])} drop
    @th,16,16 vmap @rm
  }}
}}
"""
RAW_CASES = [
    (REMOTES[1], 700, "REJECT"), (REMOTES[0], 700, "ACCEPT"), (REMOTES[0], 701, "REJECT"),
    (REMOTES[0], 702, "REJECT"), (REMOTES[0], 703, "REJECT"), (REMOTES[0], 704, "ACCEPT"),
    (REMOTES[1], 704, "DROP"), (REMOTES[0], 705, "DROP"), (REMOTES[0], 706, "REJECT"), (REMOTES[0], 707, "ACCEPT"),
]


def test_raw_payload_against_the_kernel(topo: Topology) -> None:
    """`typeof @nh,…` sets and raw payload comparisons on fields kpa knows: IPv4 addresses, protocol, ports."""
    topo.reset()
    topo.load_nft(RAW)
    dumps = {"raw.txt": topo.run_in("node", ["nft", "list", "ruleset"]),
             "raw.json": topo.run_in("node", ["nft", "-j", "list", "ruleset"])}
    assert "typeof @nh,128,32" in dumps["raw.txt"] and "@nh,96,32" in dumps["raw.txt"]
    assert compare(topo, dumps, RAW_CASES) == 2 * len(RAW_CASES)


SERVICES = [f"10.96.0.{50 + i}" for i in range(8)]
NAT_MAP = f"""table ip kpanatmap {{
  map r {{
    type ipv4_addr : interval ipv4_addr
    flags interval
    elements = {{ {", ".join(f"{s} : {REMOTES[0]}-{REMOTES[-1]}" for s in SERVICES)} }}
  }}
  map rp {{
    type ipv4_addr : interval ipv4_addr . inet_service
    flags interval
    elements = {{ 10.96.0.70 : {REMOTES[0]}-{REMOTES[-1]} . 8000-8010 }}
  }}
  chain pre {{
    type nat hook prerouting priority dstnat;
    meta l4proto tcp dnat ip addr . port to ip daddr map @rp
    ip daddr 10.96.0.71 meta l4proto tcp dnat ip addr . port to ip daddr map {{ 10.96.0.71 : {REMOTES[1]} . 9000-9009 }}
    ip daddr 10.96.0.60 dnat to ip daddr map {{ 10.96.0.60 : {REMOTES[1]}-{REMOTES[2]} }}
    ip daddr 10.96.0.61 dnat to ip daddr map {{ 10.96.0.61 : {REMOTES[2]}-{REMOTES[3]} }} persistent
    dnat to ip daddr map @r
  }}
}}
"""


def test_nat_map_with_address_ranges_against_the_kernel(topo: Topology) -> None:
    """`dnat to ip daddr map { … : a-b }`: the kernel's hash picks the address, as for `dnat to a-b`."""
    topo.reset()
    topo.load_nft(NAT_MAP)
    dumps = {"natmap.txt": topo.run_in("node", ["nft", "list", "ruleset"]),
             "natmap.json": topo.run_in("node", ["nft", "-j", "list", "ruleset"])}
    rulesets = {name: parse_text(text, name) for name, text in dumps.items()}
    chosen = set()
    ports = []
    probes = [(dst, 80) for dst in [*SERVICES, "10.96.0.60", "10.96.0.61"]]
    # Address and port ranges: a port outside the range takes its first port, one inside is kept.
    probes += [("10.96.0.70", 80), ("10.96.0.70", 8005), ("10.96.0.71", 9003), ("10.96.0.71", 80)]
    for dst, dport in probes:
        [obs] = send(topo, [(dst, dport)])
        assert obs.result == "timeout", obs
        [entry] = topo.conntrack_for(obs)
        assert entry.dnat is not None
        got = (entry.dnat[0], entry.dnat[1] or dport)
        chosen.add(got[0])
        ports.append(got[1])
        for name, rs in rulesets.items():
            spec = PacketSpec(family=KpaFamily.IPV4, src=obs.src, dst=dst, proto="tcp", dport=dport,
                              sport=obs.sport)
            outs = trace(rs, spec, TraceContext(local=node_local_addresses([NODE]))).outcomes
            predicted = [(o.verdict, (str(ipaddress.ip_address(o.state.dnat[0])),
                                      o.state.dnat[1] if o.state.dnat[1] is not None else dport)
                          if o.state.dnat else None, len(o.state.assumptions)) for o in outs]
            assert predicted == [("ACCEPT", got, 0)], f"{name} {dst}:{dport}: kernel DNAT to {got}, kpa {predicted}"
    assert len(chosen) > 2, "the hash should spread the destinations over the range"
    assert ports[-4:] == [8000, 8005, 9003, 9000]


def test_raw_payload_ipv6_against_the_kernel() -> None:
    """IPv6 offsets of raw payload (source, destination, next header), and an IPv4 offset that reads
    other bytes of an IPv6 packet: kpa leaves that one unknown, and the kernel's fate is one of its ways."""
    from .harness import default_spec

    spec = default_spec("ipv6")
    client, remote = spec.client_pod_ip, spec.remote_endpoint_ips[0]
    assert client is not None
    ruleset = f"""table inet kparaw6 {{
  chain c {{
    type filter hook forward priority filter;
    ct state invalid drop
    tcp dport 700 @nh,192,128 {_int(remote):#x} reject with tcp reset
    tcp dport 701 @nh,64,128 {_int(client):#x} reject with tcp reset
    tcp dport 702 @nh,48,8 6 reject with tcp reset
    tcp dport 703 @nh,64,128 != {_int(client):#x} reject with tcp reset
    tcp dport 704 @nh,128,32 0 drop
  }}
}}
"""
    with Topology(spec) as topo:
        topo.load_nft(ruleset)
        dumps = {"raw6.txt": topo.run_in("node", ["nft", "list", "ruleset"]),
                 "raw6.json": topo.run_in("node", ["nft", "-j", "list", "ruleset"])}
        rulesets = {name: parse_text(text, name) for name, text in dumps.items()}
        for dport, expected in ((700, "REJECT"), (701, "REJECT"), (702, "REJECT"), (703, "ACCEPT"), (704, "DROP")):
            req = {"timeout": 0.4, "flows": [{"family": 6, "proto": "tcp", "src": None, "sport": 0, "dst": remote,
                                              "dport": dport}]}
            out = subprocess.run(["ip", "netns", "exec", topo.name("client"), sys.executable, str(SENDER)],
                                 input=json.dumps(req), capture_output=True, text=True, check=True).stdout
            [r] = json.loads(out)
            obs = Observation("client_pod", "tcp", r["src"], r["sport"], remote, dport, r["result"])
            got = kernel_verdict(topo, obs)
            assert got == expected, (dport, got)
            for name, rs in rulesets.items():
                pspec = PacketSpec(family=KpaFamily.IPV6, src=obs.src, dst=remote, proto="tcp", dport=dport,
                                   sport=obs.sport)
                outs = [(o.verdict, bool(o.state.assumptions))
                        for o in trace(rs, pspec, TraceContext(local=node_local_addresses([spec.node_ips[0]]))).outcomes]
                if dport == 704:  # `@nh,128,32` is part of the IPv6 source address: unknown, both ways
                    assert sorted(outs) == [("ACCEPT", True), ("DROP", True)], (name, outs)
                else:
                    assert outs == [(got, False)], (name, dport, got, outs)
