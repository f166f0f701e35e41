"""Extension models against the kernel: owner, meta skuid, mac, policy, limit, connlimit, NAT ranges.

Each case loads a small ruleset into a node namespace (iptables-nft, iptables-legacy,
and nftables where nft has the construct), sends real packets, and compares what
happened with what kpa predicts for the same packet from the real tool's dump, with
the trace options (--uid, --src-mac, --rate-limits, --connections) set to what the
sender really was.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kpa.netfilter.engine import Outcome, trace
from kpa.netfilter.model import Family as KpaFamily
from kpa.netfilter.model import Ruleset
from kpa.netfilter.packet import PacketSpec, TraceContext, node_local_addresses
from kpa.sources import parse_text

from .harness import SENDER, Observation, Topology, TopologySpec, _cali_name

pytestmark = pytest.mark.kernel

NODE = "192.168.10.2"
NODE2 = "192.168.10.3"
CLIENT = "10.244.0.5"
REMOTES = ["10.244.1.10", "10.244.1.11", "10.244.1.12", "10.244.1.13"]
BACKENDS = ["nft", "legacy"]


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    spec = TopologySpec(remote_endpoint_ips=REMOTES, extra_local_ips=[NODE2])
    with Topology(spec) as t:
        yield t


def send(topo: Topology, origin: str, dst: str, dport: int, uid: int | None = None, count: int = 1,
         sport: int = 0) -> list[Observation]:
    """Send TCP flows from the client pod or the node, as user `uid` (setpriv) when given."""
    role = {"client_pod": "client", "node": "node"}[origin]
    argv = ["ip", "netns", "exec", topo.name(role)]
    if uid is not None:
        argv += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    req = {"timeout": 0.4, "flows": [{"family": 4, "proto": "tcp", "src": None, "sport": sport, "dst": dst,
                                      "dport": dport} for _ in range(count)]}
    out = subprocess.run([*argv, sys.executable, str(SENDER)], input=json.dumps(req), capture_output=True,
                         text=True, check=True).stdout
    return [Observation(origin, "tcp", r["src"], r["sport"], dst, dport, r["result"])  # type: ignore[arg-type]
            for r in json.loads(out)]


@dataclass(frozen=True)
class Fate:
    verdict: str  # ACCEPT, DROP, REJECT
    dnat: tuple[str, int] | None = None
    snat: str | None = None


def kernel_fate(topo: Topology, obs: Observation) -> Fate:
    if obs.result == "refused":
        return Fate("REJECT")
    if obs.result == "unreachable:EPERM":
        return Fate("DROP")
    assert obs.result == "timeout", obs
    entries = topo.conntrack_for(obs)
    if not entries:
        return Fate("DROP")
    [e] = entries
    dnat = (e.dnat[0], e.dnat[1] or 0) if e.dnat else None
    return Fate("ACCEPT", dnat, e.snat)


def kpa_fates(rs: Ruleset, origin: str, src: str, dst: str, dport: int, sport: int | None = None,
              **facts: object) -> list[tuple[Fate, list[str]]]:
    spec_kw = {k: facts.pop(k) for k in ("uid", "gid", "src_mac") if k in facts}
    spec = PacketSpec(family=KpaFamily.IPV4, src=src, dst=dst, proto="tcp", dport=dport, sport=sport,
                      origin="output" if origin == "node" else "prerouting", **spec_kw)  # type: ignore[arg-type]
    ctx = TraceContext(local=node_local_addresses([NODE, NODE2]), **facts)  # type: ignore[arg-type]
    return [(_fate(o), [a.describe() for a in o.state.assumptions]) for o in trace(rs, spec, ctx).outcomes]


def _fate(o: Outcome) -> Fate:
    st = o.state
    dnat = None
    if st.dnat:
        ip, port = st.dnat
        dnat = (str(ipaddress.ip_address(ip)), port or 0)
    snat = str(ipaddress.ip_address(st.snat[0])) if st.snat else None
    return Fate(o.verdict, dnat, snat)


def load(topo: Topology, backend: str, text: str) -> Ruleset:
    topo.reset()
    if backend == "nftables":
        topo.load_nft(text)
        dump = topo.run_in("node", ["nft", "list", "ruleset"])
    else:
        topo.load_iptables(text, backend=backend)
        dump = topo.save(backend, counters=False)
    return parse_text(dump, f"extensions.{backend}")


def check(topo: Topology, rs: Ruleset, origin: str, dst: str, dport: int, uid: int | None = None,
          sport: int = 0, **facts: object) -> Fate:
    """Send one flow; kpa, told the same facts, must predict exactly one outcome, the kernel's."""
    [obs] = send(topo, origin, dst, dport, uid=uid, sport=sport)
    got = kernel_fate(topo, obs)
    if uid is not None:
        facts["uid"] = facts["gid"] = uid  # setpriv sets both
    predicted = kpa_fates(rs, origin, obs.src, dst, dport, sport=obs.sport, **facts)
    assert [p for p, _ in predicted] == [got], f"{origin} -> {dst}:{dport} uid={uid}: kernel {got}, kpa {predicted}"
    assert not predicted[0][1], f"kpa left assumptions: {predicted[0][1]}"
    return got


OWNER_IPT = f"""*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -p tcp -m owner ! --uid-owner 1337 -j SNAT --to-source {NODE2}
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A OUTPUT -p tcp -m tcp --dport 81 -m owner --uid-owner 1337 -j DROP
-A OUTPUT -p tcp -m tcp --dport 82 -m owner --socket-exists -j REJECT --reject-with tcp-reset
COMMIT
"""

OWNER_NFT = f"""table ip kpaowner {{
  chain post {{
    type nat hook postrouting priority srcnat;
    meta l4proto tcp meta skuid != 1337 snat to {NODE2}
  }}
  chain out {{
    type filter hook output priority filter;
    tcp dport 81 meta skuid 1337 drop
    tcp dport 82 meta skgid 0 reject with tcp reset
  }}
}}
"""


@pytest.mark.parametrize("backend", [*BACKENDS, "nftables"])
def test_owner(topo: Topology, backend: str) -> None:
    rs = load(topo, backend, OWNER_NFT if backend == "nftables" else OWNER_IPT)
    remote = REMOTES[0]
    fates = {
        "sidecar": check(topo, rs, "node", remote, 80, uid=1337),
        "root": check(topo, rs, "node", remote, 80, uid=0),
        "forwarded": check(topo, rs, "client_pod", remote, 80),
        "sidecar-81": check(topo, rs, "node", remote, 81, uid=1337),
        "app-81": check(topo, rs, "node", remote, 81, uid=1000),
        "root-82": check(topo, rs, "node", remote, 82, uid=0),
        "forwarded-82": check(topo, rs, "client_pod", remote, 82),
    }
    # The cases must tell the semantics apart, or the comparison proves little.
    assert fates["sidecar"].snat is None and fates["root"].snat == NODE2
    assert fates["sidecar-81"].verdict == "DROP" and fates["app-81"].verdict == "ACCEPT"
    assert fates["root-82"].verdict == "REJECT" and fates["forwarded-82"].verdict == "ACCEPT"
    # A forwarded packet has no socket: `! --uid-owner` matches it, nft's `!=` does not.
    assert fates["forwarded"].snat == (None if backend == "nftables" else NODE2)


def test_owner_open_uid_splits(topo: Topology) -> None:
    rs = load(topo, "nft", OWNER_IPT)
    fates = kpa_fates(rs, "node", NODE, REMOTES[0], 81)
    assert sorted(f.verdict for f, _ in fates) == ["ACCEPT", "DROP"]


def _client_mac(topo: Topology) -> str:
    [link] = json.loads(topo.run_in("client", ["ip", "-j", "link", "show", "eth0"]))
    return str(link["address"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_mac_policy_limit(topo: Topology, backend: str) -> None:
    mac = _client_mac(topo)
    rs = load(topo, backend, f"""*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m conntrack --ctstate INVALID -j DROP
-A OUTPUT -m conntrack --ctstate INVALID -j DROP
-A FORWARD -p tcp -m tcp --dport 80 -m mac --mac-source {mac} -j REJECT --reject-with tcp-reset
-A FORWARD -p tcp -m tcp --dport 81 -m mac ! --mac-source 02:00:00:00:00:99 -j REJECT --reject-with tcp-reset
-A FORWARD -p tcp -m tcp --dport 82 -m policy --dir in --pol none -j REJECT --reject-with tcp-reset
-A FORWARD -p tcp -m tcp --dport 83 -m policy --dir in --pol ipsec -j REJECT --reject-with tcp-reset
-A FORWARD -p tcp -m tcp --dport 84 -m limit --limit 1/hour --limit-burst 1 -j REJECT --reject-with tcp-reset
-A OUTPUT -p tcp -m tcp --dport 85 -m policy --dir out --pol none -j REJECT --reject-with tcp-reset
COMMIT
""")
    remote = REMOTES[0]
    assert check(topo, rs, "client_pod", remote, 80, src_mac=mac).verdict == "REJECT"
    assert check(topo, rs, "client_pod", remote, 81, src_mac=mac).verdict == "REJECT"
    other = kpa_fates(rs, "client_pod", CLIENT, remote, 80, src_mac="02:00:00:00:00:98")
    assert [f.verdict for f, _ in other] == ["ACCEPT"]
    assert check(topo, rs, "client_pod", remote, 82).verdict == "REJECT"
    assert check(topo, rs, "client_pod", remote, 83).verdict == "ACCEPT"
    assert check(topo, rs, "node", remote, 85).verdict == "REJECT"
    # The bucket holds one token: the first packet is within the limit, the next exceeds it.
    assert check(topo, rs, "client_pod", remote, 84, rate_limits="within").verdict == "REJECT"
    assert check(topo, rs, "client_pod", remote, 84, rate_limits="exceeded").verdict == "ACCEPT"
    unknown = kpa_fates(rs, "client_pod", CLIENT, remote, 84)
    assert sorted(f.verdict for f, _ in unknown) == ["ACCEPT", "REJECT"] and all(a for _, a in unknown)


@pytest.mark.parametrize("backend", BACKENDS)
def test_connlimit(topo: Topology, backend: str) -> None:
    rs = load(topo, backend, """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -p tcp -m tcp --dport 86 -m connlimit --connlimit-above 1 --connlimit-mask 32 --connlimit-saddr -j REJECT --reject-with tcp-reset
COMMIT
""")
    remote = REMOTES[0]
    assert check(topo, rs, "client_pod", remote, 86, connections=0).verdict == "ACCEPT"
    assert check(topo, rs, "client_pod", remote, 86, connections=1).verdict == "REJECT"


def _nat_rules(family_nft: bool) -> str:
    svc = [f"10.96.0.{50 + i}" for i in range(8)]
    if family_nft:
        lines = [f"ip daddr {d} tcp dport 80 dnat to {REMOTES[0]}-{REMOTES[-1]}:8000-8010" for d in svc]
        lines += [f"ip daddr 10.96.0.60 tcp dport 8005 dnat to {REMOTES[0]}:8000-8010",
                  f"ip daddr 10.96.0.61 tcp dport 90 dnat to {REMOTES[0]}-{REMOTES[-1]} persistent"]
        snat = [f"ip daddr {r} tcp dport 7000 snat to {NODE}-192.168.10.9" for r in REMOTES]
        return ("table ip kpanat {\n  chain pre { type nat hook prerouting priority dstnat;\n    "
                + "\n    ".join(lines) + "\n  }\n  chain post { type nat hook postrouting priority srcnat;\n    "
                + "\n    ".join(snat) + "\n  }\n}\n")
    rules = [f"-A PREROUTING -d {d}/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination "
             f"{REMOTES[0]}-{REMOTES[-1]}:8000-8010" for d in svc]
    rules += [f"-A PREROUTING -d 10.96.0.60/32 -p tcp -m tcp --dport 8005 -j DNAT --to-destination {REMOTES[0]}:8000-8010",
              f"-A PREROUTING -d 10.96.0.61/32 -p tcp -m tcp --dport 90 -j DNAT --to-destination "
              f"{REMOTES[0]}-{REMOTES[-1]} --persistent",
              f"-A PREROUTING -d 10.96.0.62/32 -p tcp -m tcp -j DNAT --to-destination {REMOTES[1]}:9000-9009/8000"]
    rules += [f"-A POSTROUTING -d {r}/32 -p tcp -m tcp --dport 7000 -j SNAT --to-source {NODE}-192.168.10.9"
              for r in REMOTES]
    return ("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
            + "\n".join(rules) + "\nCOMMIT\n")


@pytest.mark.parametrize("backend", [*BACKENDS, "nftables"])
def test_nat_ranges(topo: Topology, backend: str) -> None:
    rs = load(topo, backend, _nat_rules(backend == "nftables"))
    chosen = set()
    for i in range(8):
        f = check(topo, rs, "client_pod", f"10.96.0.{50 + i}", 80)
        assert f.dnat is not None and f.dnat[1] == 8000  # outside the port range: its first port
        chosen.add(f.dnat[0])
    assert len(chosen) > 1, "the hash should spread eight destinations over the range"
    assert check(topo, rs, "client_pod", "10.96.0.60", 8005).dnat == (REMOTES[0], 8005)  # inside: kept
    assert check(topo, rs, "client_pod", "10.96.0.61", 90).dnat is not None
    if backend != "nftables":
        for port in (8003, 8012, 7999):
            assert check(topo, rs, "client_pod", "10.96.0.62", port).dnat == (REMOTES[1], 9000 + ((port - 8000) & 0xFFFF) % 10)
    # SNAT keeps a source already in the range, and hashes one from outside it.
    assert check(topo, rs, "node", REMOTES[0], 7000).snat is None
    snats = {check(topo, rs, "client_pod", r, 7000).snat for r in REMOTES}
    assert None not in snats


SOCKET_IPT = """*mangle
:PREROUTING ACCEPT [0:0]
-A PREROUTING -p tcp -m tcp --dport 91 -j TPROXY --on-port 15006 --on-ip 127.0.0.1 --tproxy-mark 0x1/0x1
-A PREROUTING -p tcp -m tcp --dport 92 -m socket --transparent -j DROP
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m conntrack --ctstate INVALID -j DROP
-A FORWARD -p tcp -m tcp --dport 93 -m addrtype ! --dst-type LOCAL --limit-iface-out -j REJECT --reject-with tcp-reset
COMMIT
"""
SOCKET_NFT = """table ip kpasock {
  chain pre {
    type filter hook prerouting priority mangle;
    tcp dport 91 tproxy to 127.0.0.1:15006
    tcp dport 92 socket transparent 1 drop
  }
  chain forward_chain {
    type filter hook forward priority filter;
    ct state invalid drop
  }
}
"""


@pytest.mark.parametrize("backend", [*BACKENDS, "nftables"])
def test_tproxy_socket_addrtype_iface(topo: Topology, backend: str) -> None:
    """No transparent socket listens: xt TPROXY drops (nft's tproxy breaks the rule), the socket match
    fails; a remote address is LOCAL on no interface."""
    rs = load(topo, backend, SOCKET_NFT if backend == "nftables" else SOCKET_IPT)
    remote = REMOTES[0]
    tproxied = check(topo, rs, "client_pod", remote, 91, socket="none").verdict
    assert tproxied == ("ACCEPT" if backend == "nftables" else "DROP")
    assert check(topo, rs, "client_pod", remote, 92, socket="none").verdict == "ACCEPT"
    if backend != "nftables":
        assert check(topo, rs, "client_pod", remote, 93).verdict == "REJECT"
    unknown = kpa_fates(rs, "client_pod", CLIENT, remote, 91)
    assert len(unknown) == 2 and all(a for _, a in unknown)


def test_nft_ether_saddr_and_secpath(topo: Topology) -> None:
    """nft's forms of -m mac and -m policy: ether saddr (with its iiftype dependency) and meta secpath."""
    mac = _client_mac(topo)
    rs = load(topo, "nftables", f"""table ip kpaeth {{
  chain forward_chain {{
    type filter hook forward priority filter;
    ct state invalid drop
    tcp dport 80 ether saddr {mac} reject with tcp reset
    tcp dport 81 ether saddr != 02:00:00:00:00:99 reject with tcp reset
    tcp dport 82 meta secpath missing reject with tcp reset
    tcp dport 83 meta secpath exists reject with tcp reset
  }}
}}
""")
    remote = REMOTES[0]
    assert check(topo, rs, "client_pod", remote, 80, src_mac=mac).verdict == "REJECT"
    assert check(topo, rs, "client_pod", remote, 81, src_mac=mac).verdict == "REJECT"
    assert [f.verdict for f, _ in kpa_fates(rs, "client_pod", CLIENT, remote, 80, src_mac="02:00:00:00:00:98")] == [
        "ACCEPT"]
    assert check(topo, rs, "client_pod", remote, 82).verdict == "REJECT"
    assert check(topo, rs, "client_pod", remote, 83).verdict == "ACCEPT"


RPFILTER_IPT = """*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -p tcp -m tcp --dport 95 -m rpfilter --loose --invert -j DROP
-A PREROUTING -p tcp -m tcp --dport 96 -m rpfilter --invert -j DROP
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m conntrack --ctstate INVALID -j DROP
COMMIT
"""
OBJECTS = f"""apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: {{name: node-1}}
  spec: {{podCIDR: 10.244.0.0/24, podCIDRs: [10.244.0.0/24]}}
  status: {{addresses: [{{type: InternalIP, address: {NODE}}}]}}
- apiVersion: v1
  kind: Node
  metadata: {{name: node-2}}
  spec: {{podCIDR: 10.244.1.0/24, podCIDRs: [10.244.1.0/24]}}
  status: {{addresses: [{{type: InternalIP, address: {NODE2}}}]}}
- apiVersion: v1
  kind: Pod
  metadata: {{name: client, namespace: default}}
  spec: {{nodeName: node-1, containers: [{{name: c, image: busybox}}]}}
  status: {{phase: Running, podIP: {CLIENT}, podIPs: [{{ip: {CLIENT}}}]}}
"""


def _kpa_trace(dump: Path, args: list[str]) -> list[tuple[str, int]]:
    """`kpa trace … -o json` as a user runs it: (verdict, number of unknown rules) per outcome."""
    out = subprocess.run([sys.executable, "-m", "kpa", "trace", "-r", str(dump), *args, "-o", "json"],
                         capture_output=True, text=True, check=True).stdout
    return [(o["verdict"], len(o.get("unknown") or [])) for o in json.loads(out)["outcomes"]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_rpfilter_routes_from_cluster_objects(topo: Topology, backend: str, tmp_path: Path) -> None:
    """With Node and Pod objects kpa knows the route back to a pod: loose rpfilter is decided (and the
    kernel agrees); strict rpfilter still needs the interface, so it stays unknown without --route."""
    topo.reset()
    topo.load_iptables(RPFILTER_IPT, backend=backend)
    dump = tmp_path / f"rpfilter.{backend}.save"
    dump.write_text(topo.save(backend, counters=False))
    objects = tmp_path / "objects.yaml"
    objects.write_text(OBJECTS)
    remote = REMOTES[0]
    iface = _cali_name(CLIENT)
    base = ["--node", "node-1", "-s", CLIENT, "-d", remote, "-p", "tcp", "--in-iface", iface]
    # Loose: the client pod's source has a route back (its veth); the kernel passes it.
    [obs] = send(topo, "client_pod", remote, 95)
    assert kernel_fate(topo, obs).verdict == "ACCEPT"
    assert _kpa_trace(dump, [*base, "--dport", "95", "--cluster", str(objects)]) == [("ACCEPT", 0)]
    assert sorted(_kpa_trace(dump, [*base, "--dport", "95"])) == [("ACCEPT", 1), ("DROP", 1)]
    # Strict: the route must leave through the input interface; the objects do not say which it is.
    [obs] = send(topo, "client_pod", remote, 96)
    assert kernel_fate(topo, obs).verdict == "ACCEPT"
    assert sorted(_kpa_trace(dump, [*base, "--dport", "96", "--cluster", str(objects)])) == [("ACCEPT", 1), ("DROP", 1)]
    stated = ["--route", f"{CLIENT}/32={iface}", "--cluster", str(objects)]
    assert _kpa_trace(dump, [*base, "--dport", "96", *stated]) == [("ACCEPT", 0)]
    # A derived route never hides a stated one: kpa follows the stated route (here through the wrong interface).
    wrong = ["--route", "10.244.0.0/16=eth0", "--cluster", str(objects)]
    assert _kpa_trace(dump, [*base, "--dport", "96", *wrong]) == [("DROP", 0)]
