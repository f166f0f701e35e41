"""The kernel oracle must itself be right: check it against rules whose effect is known.

Each test loads a tiny hand-written ruleset into the node namespace and checks that the
harness reports what that ruleset must do (NAT visible in conntrack, REJECT vs DROP,
random split). The kernel facts the harness relies on are demonstrated here as well, so
a kernel or tool upgrade that changes them shows up as a failing test.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterator

import pytest

from .harness import (
    NS_PREFIX,
    Family,
    Flow,
    Topology,
    TopologySpec,
    created_namespaces,
    default_spec,
    list_namespaces,
    parse_conntrack,
    parse_nft_trace,
    parse_save_counters,
)

pytestmark = pytest.mark.kernel

LOADERS = ["iptables-nft", "iptables-legacy", "nft"]


def _leftovers(topo_names: list[str]) -> list[str]:
    return sorted(set(topo_names) & set(list_namespaces()))


@pytest.fixture(scope="module", autouse=True)
def no_namespace_left_behind() -> Iterator[None]:
    # Set up first, so torn down last: after every topology of this module is closed.
    yield
    leaked = _leftovers(created_namespaces())
    assert leaked == [], f"namespaces leaked: {leaked}"


@pytest.fixture(scope="module", params=["ipv4", "ipv6"])
def topo(request: pytest.FixtureRequest) -> Iterator[Topology]:
    with Topology(default_spec(request.param)) as t:
        names = list(t.ns.values())
        yield t
    assert _leftovers(names) == [], "topology namespaces survived close()"


@pytest.fixture
def t(topo: Topology) -> Iterator[Topology]:
    topo.reset()
    yield topo
    topo.reset()


@pytest.fixture
def t4() -> Iterator[Topology]:
    with Topology(default_spec("ipv4")) as topo:
        yield topo


def _ep(ip: str) -> str:
    """ip:port notation for iptables --to-destination / nft dnat to."""
    return f"[{ip}]" if ":" in ip else ip


def _nf(family: Family) -> str:
    return "ip6" if family == "ipv6" else "ip"


def _load(t: Topology, loader: str, ipt: str, nft: str) -> None:
    if loader == "nft":
        t.load_nft(nft)
    else:
        t.load_iptables(ipt, backend="nft" if loader == "iptables-nft" else "legacy")


def _plen(t: Topology) -> int:
    return 128 if t.spec.family == "ipv6" else 32


# ------------------------------------------------------------------------------ NAT
@pytest.mark.parametrize("loader", LOADERS)
def test_dnat_shows_in_conntrack_reply_tuple(t: Topology, loader: str) -> None:
    s = t.spec
    node, pod, client = s.node_ips[0], s.local_pod_ips[0], s.external_client_ips[0]
    _load(t, loader, f"""*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d {node}/{_plen(t)} -p tcp -m tcp --dport 30080 -j DNAT --to-destination {_ep(pod)}:8080
COMMIT
""", f"""table {_nf(s.family)} kpat_t {{
    chain pre {{
        type nat hook prerouting priority dstnat; policy accept;
        {_nf(s.family)} daddr {node} tcp dport 30080 dnat to {_ep(pod)}:8080
    }}
}}
""")
    [obs] = t.send("external", client, node, "tcp", 30080, timeout=0.5)
    assert obs.result == "timeout"  # the pod is silent
    [entry] = t.conntrack_for(obs)
    assert entry.dnat == (pod, 8080)
    assert (entry.reply.src, entry.reply.sport) == (pod, 8080)
    assert (entry.reply.dst, entry.reply.dport) == (client, obs.sport)
    assert entry.snat is None
    assert "UNREPLIED" in entry.flags


@pytest.mark.parametrize("loader", LOADERS)
def test_masquerade_shows_in_reply_destination(t: Topology, loader: str) -> None:
    s = t.spec
    node, remote, client = s.node_ips[0], s.remote_endpoint_ips[0], s.external_client_ips[1]
    fam = _nf(s.family)
    _load(t, loader, f"""*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -p udp --dport 31000 -j DNAT --to-destination {_ep(remote)}:53
-A POSTROUTING -d {remote}/{_plen(t)} -j MASQUERADE
COMMIT
""", f"""table {fam} kpat_t {{
    chain pre {{
        type nat hook prerouting priority dstnat; policy accept;
        udp dport 31000 dnat to {_ep(remote)}:53
    }}
    chain post {{
        type nat hook postrouting priority srcnat; policy accept;
        {fam} daddr {remote} masquerade
    }}
}}
""")
    [obs] = t.send("external", client, node, "udp", 31000, timeout=0.5)
    assert obs.result == "timeout"
    [entry] = t.conntrack_for(obs)
    assert entry.dnat == (remote, 53)
    # MASQUERADE picks the primary address of the uplink the packet leaves through.
    assert entry.snat == node


# ------------------------------------------------------------------------------ verdicts
@pytest.mark.parametrize("loader", LOADERS)
def test_reject_is_refused_or_unreachable(t: Topology, loader: str) -> None:
    s = t.spec
    node, client = s.node_ips[0], s.external_client_ips[0]
    v6 = s.family == "ipv6"
    host_unreach = "icmp6-addr-unreachable" if v6 else "icmp-host-unreachable"
    _load(t, loader, f"""*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p udp --dport 9 -j REJECT
-A INPUT -p tcp --dport 9 -j REJECT --reject-with tcp-reset
-A INPUT -p tcp --dport 10 -j REJECT --reject-with {host_unreach}
COMMIT
""", """table inet kpat_t {
    chain input {
        type filter hook input priority filter; policy accept;
        udp dport 9 reject
        tcp dport 9 reject with tcp reset
        tcp dport 10 reject with icmpx host-unreachable
    }
}
""")
    flows = [("external", client, node, "udp", 9),
             ("external", client, node, "tcp", 9),
             ("external", client, node, "tcp", 10),
             ("client_pod", None, node, "udp", 9)]
    obs = t.send_many(flows, timeout=2.0)
    # In a batch, an ICMP port unreachable now and then fails to reach its UDP sender within the
    # timeout (as in the ipset kernel tests); such a flow is sent again alone, and must be refused then.
    obs = [t.send_many([f], timeout=2.0)[0] if o.result == "timeout" and f[3] == "udp" else o
           for o, f in zip(obs, flows, strict=True)]
    assert [o.result for o in obs] == ["refused", "refused", "unreachable:EHOSTUNREACH",
                                       "refused"]
    assert obs[3].src == s.client_pod_ip


@pytest.mark.parametrize("loader", LOADERS)
def test_drop_is_timeout_and_leaves_no_conntrack_entry(t: Topology, loader: str) -> None:
    s = t.spec
    node, client = s.node_ips[0], s.external_client_ips[0]
    # The unused DNAT rule only makes conntrack active in the namespace: the kernel
    # attaches conntrack to a netns lazily, when some rule needs it.
    _load(t, loader, f"""*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp --dport 81 -j DROP
-A INPUT -p udp --dport 81 -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -p tcp --dport 1 -j DNAT --to-destination {_ep(s.local_pod_ips[0])}:80
COMMIT
""", f"""table inet kpat_t {{
    chain input {{
        type filter hook input priority filter; policy accept;
        meta l4proto {{ tcp, udp }} th dport 81 counter drop
    }}
    chain pre {{
        type nat hook prerouting priority dstnat; policy accept;
        tcp dport 1 dnat {_nf(s.family)} to {_ep(s.local_pod_ips[0])}:80
    }}
}}
""")
    udp81: Flow = ("external", client, node, "udp", 81)
    flows: list[Flow] = [("external", client, node, "tcp", 81), udp81, udp81, udp81,
                         ("external", client, node, "udp", 82)]
    obs = t.send_many(flows, timeout=0.5)
    assert [o.result for o in obs] == ["timeout"] * 4 + ["refused"]
    for o in obs[:4]:
        assert t.conntrack_for(o) == []
    # Control: an accepted flow is tracked, so the empty lookups above mean something.
    assert len(t.conntrack_for(obs[4])) == 1
    if loader != "nft":
        counters = t.counters("filter")
        assert counters[("INPUT", 2)] == 3  # exactly the three UDP datagrams
        assert counters[("INPUT", 1)] >= 1


def _tcp_81_dropped(s: TopologySpec) -> str:
    """iptables rules that drop TCP to port 81 in INPUT; the unused DNAT rule only makes conntrack active
    in the namespace (the kernel attaches conntrack to a netns when some rule needs it)."""
    return f"""*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp --dport 81 -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -p tcp --dport 1 -j DNAT --to-destination {_ep(s.local_pod_ips[0])}:80
COMMIT
"""


@pytest.mark.parametrize("loader", LOADERS)
def test_node_originated_drop_to_local_address_keeps_conntrack_entry(
        t: Topology, loader: str) -> None:
    s = t.spec
    node = s.node_ips[0]
    _load(t, loader, _tcp_81_dropped(s), f"""table inet kpat_t {{
    chain input {{
        type filter hook input priority filter; policy accept;
        tcp dport 81 drop
    }}
    chain pre {{
        type nat hook prerouting priority dstnat; policy accept;
        tcp dport 1 dnat {_nf(s.family)} to {_ep(s.local_pod_ips[0])}:80
    }}
}}
""")
    [obs] = t.send("node", None, node, "tcp", 81, timeout=0.5)
    assert obs.result == "timeout"
    assert obs.src == node
    # Confirmed at POSTROUTING, before the looped-back packet reached the INPUT DROP.
    [entry] = t.conntrack_for(obs)
    assert entry.dnat is None and "UNREPLIED" in entry.flags


# ------------------------------------------------------------------------------ statistic
@pytest.mark.parametrize("loader", LOADERS)
def test_random_half_split_is_binomial(t4: Topology, loader: str) -> None:
    t = t4  # the split does not depend on the address family; IPv4 covers it
    s = t.spec
    node, client = s.node_ips[0], s.external_client_ips[0]
    pod0, pod1 = s.local_pod_ips[:2]
    _load(t, loader, f"""*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -p tcp --dport 30080 -m statistic --mode random --probability 0.5000000000 -j DNAT --to-destination {pod0}:80
-A PREROUTING -p tcp --dport 30080 -j DNAT --to-destination {pod1}:80
COMMIT
""", f"""table ip kpat_t {{
    chain pre {{
        type nat hook prerouting priority dstnat; policy accept;
        tcp dport 30080 dnat to numgen random mod 2 map {{ 0 : {pod0}, 1 : {pod1} }}
    }}
}}
""")
    n = 200
    obs = t.send("external", client, node, "tcp", 30080, count=n, timeout=0.5)
    assert len({o.sport for o in obs}) == n
    assert all(o.result == "timeout" for o in obs)
    sports = {o.sport for o in obs}
    hits = collections.Counter(e.reply.src for e in t.conntrack()
                               if e.orig.src == client and e.orig.sport in sports)
    assert sum(hits.values()) == n
    assert set(hits) <= {pod0, pod1}
    # 5 standard deviations: a correct 50/50 split fails about once in 1.7 million runs.
    tolerance = 5 * math.sqrt(n * 0.25)
    assert abs(hits[pod0] - n / 2) <= tolerance, hits


# ------------------------------------------------------------------------------ kernel facts
def test_localhost_nodeport_needs_route_localnet(t4: Topology) -> None:
    t4.load_iptables("""*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A OUTPUT -d 127.0.0.1/32 -p tcp --dport 30080 -j DNAT --to-destination 10.244.0.10:80
-A POSTROUTING -s 127.0.0.1/32 -j MASQUERADE
COMMIT
""")
    [obs] = t4.send("node", "127.0.0.1", "127.0.0.1", "tcp", 30080, timeout=0.5)
    [entry] = t4.conntrack_for(obs)
    assert entry.dnat == ("10.244.0.10", 80)
    assert entry.snat == t4.spec.node_ips[0]

    t4.conntrack_flush()
    t4.sysctl("node", {"net.ipv4.conf.all.route_localnet": "0"})
    [obs] = t4.send("node", "127.0.0.1", "127.0.0.1", "tcp", 30080, timeout=0.5)
    assert all(e.dnat is None for e in t4.conntrack_for(obs))


def test_rst_from_endpoint_deletes_fresh_conntrack_entry() -> None:
    spec = TopologySpec(silent_endpoints=False)
    with Topology(spec) as topo:
        topo.load_iptables("""*nat
:PREROUTING ACCEPT [0:0]
-A PREROUTING -p tcp --dport 30080 -j DNAT --to-destination 10.244.0.10:80
-A PREROUTING -p udp --dport 30080 -j DNAT --to-destination 10.244.0.10:80
COMMIT
""")
        tcp, udp = topo.send_many([("external", "203.0.113.10", "192.168.10.2", "tcp", 30080),
                                   ("external", "203.0.113.10", "192.168.10.2", "udp", 30080)])
        assert (tcp.result, udp.result) == ("refused", "refused")
        assert topo.conntrack_for(tcp) == []  # why endpoints are silent by default
        assert len(topo.conntrack_for(udp)) == 1  # an ICMP error does not delete it


def test_default_icmp_rate_limit_masks_reject() -> None:
    with Topology() as topo:
        topo.load_iptables("""*filter
:INPUT ACCEPT [0:0]
-A INPUT -p udp --dport 9 -j REJECT
COMMIT
""")
        lifted = topo.send("external", "203.0.113.10", "192.168.10.2", "udp", 9, count=60,
                           timeout=0.5)
        assert all(o.result == "refused" for o in lifted)
        topo.sysctl("node", {"net.ipv4.icmp_ratelimit": "1000",
                             "net.ipv4.icmp_msgs_per_sec": "1000",
                             "net.ipv4.icmp_msgs_burst": "50"})
        limited = topo.send("external", "203.0.113.11", "192.168.10.2", "udp", 9, count=60,
                            timeout=0.5)
        results = collections.Counter(o.result for o in limited)
        assert results["timeout"] > 30, results


def test_recent_state_persists_until_cleared(t4: Topology) -> None:
    t4.load_iptables("""*filter
:INPUT ACCEPT [0:0]
-A INPUT -p udp --dport 9 -m recent --name kpat --rcheck --seconds 300 -j REJECT
-A INPUT -p udp --dport 9 -m recent --name kpat --set -j DROP
COMMIT
""", backend="legacy")
    args: Flow = ("external", "203.0.113.10", "192.168.10.2", "udp", 9)
    first = t4.send(*args, timeout=0.3)
    second = t4.send(*args, timeout=0.3)
    assert (first[0].result, second[0].result) == ("timeout", "refused")
    t4.clear_recent()
    assert t4.send(*args, timeout=0.3)[0].result == "timeout"


def test_node_originated_masquerade_to_remote(t4: Topology) -> None:
    t4.load_iptables("""*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A OUTPUT -d 10.96.0.10/32 -p udp --dport 53 -j DNAT --to-destination 10.244.1.10:5353
-A POSTROUTING -s 10.96.0.0/12 -j MASQUERADE
COMMIT
""")
    [obs] = t4.send("node", None, "10.96.0.10", "udp", 53, timeout=0.5)
    assert obs.result == "timeout"
    assert obs.src == "192.168.10.2"  # the default route's uplink primary address
    [entry] = t4.conntrack_for(obs)
    assert entry.dnat == ("10.244.1.10", 5353)
    assert entry.snat is None


def test_nft_trace_reports_rule_and_verdict(t4: Topology) -> None:
    t4.load_nft("""table ip kpat_t {
    chain input {
        type filter hook input priority filter; policy accept;
        udp dport 7 drop
    }
}
""")
    lines = t4.nft_trace(
        lambda: t4.send("external", "203.0.113.10", "192.168.10.2", "udp", 7, timeout=0.3),
        match="udp dport 7")
    drops = [ln for ln in lines if ln.table == "kpat_t" and ln.verdict == "drop"]
    assert drops and drops[0].chain == "input" and drops[0].handle is not None


# ------------------------------------------------------------------------------ parsers
def test_parse_conntrack_extended_lines() -> None:
    text = (
        "ipv4     2 tcp      6 118 SYN_SENT src=203.0.113.10 dst=192.168.10.2 sport=4000 "
        "dport=30080 [UNREPLIED] src=10.244.0.10 dst=192.168.10.2 sport=80 dport=4000 "
        "mark=16384 use=1\n"
        "ipv6     10 icmpv6   58 29 src=2001:db8::10 dst=fd00:10::2 type=128 code=0 id=77 "
        "src=fd00:10::2 dst=2001:db8::10 type=129 code=0 id=77 mark=0 use=1\n"
    )
    tcp, icmp = parse_conntrack(text)
    assert (tcp.state, tcp.mark, tcp.flags) == ("SYN_SENT", 16384, frozenset({"UNREPLIED"}))
    assert tcp.dnat == ("10.244.0.10", 80) and tcp.snat == "192.168.10.2"
    assert (icmp.family, icmp.proto, icmp.orig.sport, icmp.dnat) == ("ipv6", "icmpv6", 77, None)


def test_parse_save_counters_indexes_rules_per_chain() -> None:
    text = """*nat
:PREROUTING ACCEPT [5:300]
:KUBE-SVC-X - [0:0]
[4:240] -A PREROUTING -j KUBE-SVC-X
[1:60] -A KUBE-SVC-X -j DNAT --to-destination 10.244.0.10:80
[3:180] -A KUBE-SVC-X -j DNAT --to-destination 10.244.0.11:80
COMMIT
*filter
:INPUT ACCEPT [9:9]
[7:7] -A INPUT -j ACCEPT
COMMIT
"""
    rules, policies = parse_save_counters(text, "nat")
    assert rules == {("PREROUTING", 1): 4, ("KUBE-SVC-X", 1): 1, ("KUBE-SVC-X", 2): 3}
    assert policies == {"PREROUTING": 5}


def test_parse_nft_trace_lines() -> None:
    text = """trace id 1a2b ip kpat_t input packet: iif "eth0" ip saddr 203.0.113.10
trace id 1a2b ip kpat_t input rule udp dport 7 drop (verdict drop)
trace id 3c4d ip kpat_t input rule udp dport 7 jump x # handle 4 (verdict jump x)
trace id 5e6f ip kpat_t input policy accept
"""
    lines = parse_nft_trace(text)
    assert [(ln.chain, ln.verdict, ln.handle) for ln in lines] == [
        ("input", "drop", None), ("input", "jump x", 4), ("input", "accept", None)]


# ------------------------------------------------------------------------------ hygiene
def test_namespaces_removed_even_on_exception() -> None:
    names: list[str] = []
    with pytest.raises(RuntimeError), Topology() as topo:
        names = list(topo.ns.values())
        assert all(n.startswith(NS_PREFIX) for n in names)
        assert set(names) <= set(list_namespaces())
        raise RuntimeError("boom")
    assert names and _leftovers(names) == []


def test_spec_rejects_mixed_families() -> None:
    with pytest.raises(ValueError):
        Topology(TopologySpec(family="ipv6"))  # IPv4 default addresses


def test_conntrack_is_attached_lazily(t4: Topology) -> None:
    # Without any rule that needs conntrack the namespace tracks nothing, so a test that
    # asserts "no entry" must make sure something in its ruleset enables tracking.
    t4.load_iptables("""*filter
:INPUT ACCEPT [0:0]
-A INPUT -p udp --dport 81 -j DROP
COMMIT
""")
    [untracked] = t4.send("external", "203.0.113.10", "192.168.10.2", "udp", 82)
    assert untracked.result == "refused" and t4.conntrack() == []
    t4.load_iptables("""*filter
:INPUT ACCEPT [0:0]
-A INPUT -p udp --dport 81 -m conntrack --ctstate NEW -j DROP
COMMIT
""")
    [tracked] = t4.send("external", "203.0.113.10", "192.168.10.2", "udp", 82)
    assert len(t4.conntrack_for(tracked)) == 1


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_hairpin_from_endpoint_pod_is_masqueraded(t4: Topology, backend: str) -> None:
    t4.load_iptables("""*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d 10.96.0.20/32 -p tcp --dport 80 -j DNAT --to-destination 10.244.0.10:8080
-A POSTROUTING -s 10.244.0.10/32 -d 10.244.0.10/32 -j MASQUERADE
COMMIT
""", backend="nft" if backend == "nft" else "legacy")
    [obs] = t4.send("pod:10.244.0.10", None, "10.96.0.20", "tcp", 80, timeout=0.5)
    assert (obs.src, obs.result) == ("10.244.0.10", "timeout")
    [entry] = t4.conntrack_for(obs)
    assert entry.dnat == ("10.244.0.10", 8080)
    # No address on the cali interface: MASQUERADE uses the node's primary address.
    assert entry.snat == "192.168.10.2"


def test_flows_sent_again_after_conntrack_losses_are_only_traceless_ones_and_a_drop_stays_a_drop(
        t: Topology) -> None:
    """The differential tests send again, once, as many flows that left no trace as conntrack counted
    losses of its own (diffutil._resend_lost); a flow a rule drops is dropped the second time too."""
    from .diffutil import _resend_lost, collect, conntrack_losses, install_observer

    s = t.spec
    node, client = s.node_ips[0], s.external_client_ips[0]
    t.load_iptables(_tcp_81_dropped(s), backend="nft")
    install_observer(t)
    flows: list[Flow] = [("external", client, node, "tcp", 81)] * 3 + [("external", client, node, "udp", 82)]
    obs = t.send_many(flows, timeout=0.5)
    assert [o.result for o in obs] == ["timeout"] * 3 + ["refused"]
    tally: collections.Counter[str] = collections.Counter()
    again, _ = _resend_lost(t, flows, obs, collect(t), 2, tally, 0.5)
    assert tally["resent"] == 2
    assert [o.result for o in again] == ["timeout"] * 3 + ["refused"]
    assert all(a.sport != o.sport for a, o in zip(again[:2], obs[:2], strict=True))  # sent anew
    assert again[2:] == obs[2:]
    assert conntrack_losses(t) == 0  # nothing here was conntrack's own loss
