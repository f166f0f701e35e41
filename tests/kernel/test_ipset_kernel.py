"""The `set` match against the kernel: every modelled set type and option, both iptables backends.

For each case the sets are created with `ipset restore` and one rule
`-A FORWARD <set match> -j REJECT` is loaded into the node namespace; real packets
are then sent from outside and from a pod. A flow the rule matched comes back
refused; one it did not reaches a silent endpoint and times out. kpa reads what the
kernel's `iptables-save` and `ipset save` printed and traces the same packets (with
the source port each one really used); the two answers must agree for every flow.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from kpa.netfilter.engine import trace
from kpa.netfilter.model import Family
from kpa.netfilter.packet import PacketSpec, TraceContext, node_local_addresses
from kpa.sources import combine, parse_text

from .harness import Backend, Flow, Observation, Topology, _cali_name, default_spec

pytestmark = pytest.mark.kernel

EXT1, EXT2, EXT3 = "203.0.113.10", "203.0.113.11", "198.51.100.7"
POD1, POD2, REMOTE, CLIENT = "10.244.0.10", "10.244.0.11", "10.244.1.10", "10.244.0.5"
V6_EXT1, V6_EXT2, V6_POD1, V6_POD2, V6_CLIENT = ("2001:db8::10", "2001:db8::11", "fd00:10:244::10",
                                                "fd00:10:244::11", "fd00:10:244::5")


@dataclass(frozen=True)
class Case:
    name: str
    sets: str  # ipset restore lines
    match: str  # the rule's match part
    flows: tuple[Flow, ...]
    family: str = "ipv4"


def _grid(srcs: tuple[tuple[str, str], ...], dsts: tuple[str, ...],
          ports: tuple[tuple[str, int], ...]) -> tuple[Flow, ...]:
    # The outside namespace reaches remote endpoints directly; only pods reach them through the node.
    return tuple((origin, src, dst, proto, port) for origin, src in srcs for dst in dsts for proto, port in ports
                 if not (dst == REMOTE and origin == "external"))


EXTS = (("external", EXT1), ("external", EXT2), ("external", EXT3))
ALL_SRCS = (*EXTS, ("client_pod", CLIENT))
DSTS = (POD1, POD2, REMOTE)
TCP80 = (("tcp", 80),)
PORTS = (("tcp", 80), ("udp", 80), ("tcp", 53), ("udp", 53))

NET_SETS = f"""create n hash:net family inet
add n 203.0.113.0/24
add n 203.0.113.8/29 nomatch
add n {EXT1}
add n 198.51.100.0/24 nomatch
"""

CASES = [
    Case("hash:ip src", f"create s hash:ip family inet\nadd s {EXT1}\nadd s {CLIENT}\n",
         "-m set --match-set s src", _grid(ALL_SRCS, (POD1,), TCP80)),
    Case("hash:ip dst, negated", f"create s hash:ip family inet\nadd s {POD1}\nadd s {REMOTE}\n",
         "-m set ! --match-set s dst", _grid(ALL_SRCS[::3], DSTS, TCP80)),
    Case("hash:ip netmask 24", "create s hash:ip family inet netmask 24\nadd s 10.244.0.0\n",
         "-m set --match-set s dst", _grid(ALL_SRCS[::3], DSTS, TCP80)),
    Case("hash:ip timeout", f"create s hash:ip family inet timeout 600\nadd s {EXT2} timeout 500\n",
         "-m set --match-set s src", _grid(EXTS, (POD1,), TCP80)),
    Case("hash:ip --return-nomatch (no nomatch feature)", f"create s hash:ip family inet\nadd s {EXT1}\n",
         "-m set --match-set s src --return-nomatch", _grid(EXTS, (POD1,), TCP80)),
    Case("hash:net nomatch, most specific prefix", NET_SETS, "-m set --match-set n src",
         _grid(ALL_SRCS, (POD1,), TCP80)),
    Case("hash:net --return-nomatch", NET_SETS, "-m set --match-set n src --return-nomatch",
         _grid(ALL_SRCS, (POD1,), TCP80)),
    Case("hash:net ! --return-nomatch", NET_SETS, "-m set ! --match-set n src --return-nomatch",
         _grid(ALL_SRCS, (POD1,), TCP80)),
    Case("hash:net --update-counters off", NET_SETS.replace("family inet", "family inet counters"),
         "-m set --match-set n src ! --update-counters", _grid(ALL_SRCS, (POD1,), TCP80)),
    Case("hash:ip,port src,dst",
         f"create p hash:ip,port family inet\nadd p {EXT1},tcp:80\nadd p {EXT2},udp:53\nadd p {EXT1},udp:80\n",
         "-m set --match-set p src,dst", _grid(EXTS, (POD1,), PORTS)),
    Case("hash:ip,port dst,dst", f"create p hash:ip,port family inet\nadd p {POD1},tcp:80\nadd p {REMOTE},udp:53\n",
         "-m set --match-set p dst,dst", _grid(ALL_SRCS[::3], DSTS, PORTS)),
    Case("hash:ip,port too few directions", f"create p hash:ip,port family inet\nadd p {EXT1},tcp:80\n",
         "-m set --match-set p src", _grid(EXTS, (POD1,), TCP80)),
    Case("hash:net,port", "create p hash:net,port family inet\nadd p 203.0.113.0/24,tcp:80\n"
         f"add p {EXT1},tcp:80 nomatch\nadd p 198.51.100.0/24,udp:53\n",
         "-m set --match-set p src,dst", _grid(EXTS, (POD1,), PORTS)),
    Case("hash:ip,port,ip", f"create t hash:ip,port,ip family inet\nadd t {EXT1},tcp:80,{POD1}\n"
         f"add t {EXT2},udp:53,{POD2}\n",
         "-m set --match-set t src,dst,dst", _grid(EXTS, (POD1, POD2), PORTS)),
    Case("hash:ip,port,net", f"create t hash:ip,port,net family inet\nadd t {POD1},tcp:80,203.0.113.0/24\n"
         f"add t {POD1},tcp:80,{EXT2} nomatch\nadd t {POD2},udp:53,198.51.100.0/24\n",
         "-m set --match-set t dst,dst,src", _grid(EXTS, (POD1, POD2), PORTS)),
    Case("hash:net,iface in", "create i hash:net,iface family inet\nadd i 203.0.113.0/24,eth0\n"
         f"add i 10.244.0.0/16,{_cali_name(CLIENT)}\nadd i 198.51.100.0/24,physdev:eth0\n",
         "-m set --match-set i src,src", _grid(ALL_SRCS, (POD1,), TCP80)),
    Case("hash:net,iface out", f"create i hash:net,iface family inet\nadd i 10.244.0.0/16,{_cali_name(POD1)}\n"
         "add i 10.244.1.0/24,eth0\nadd i 10.244.1.10,eth0 nomatch\n",
         "-m set --match-set i dst,dst", _grid(ALL_SRCS[::3], DSTS, TCP80)),
    Case("list:set", f"create a hash:ip family inet\nadd a {EXT3}\n" + NET_SETS
         + "create l list:set size 8\nadd l n\nadd l a\n",
         "-m set --match-set l src", _grid(ALL_SRCS, (POD1,), TCP80)),
    Case("list:set --return-nomatch", f"create a hash:ip family inet\nadd a {EXT3}\n" + NET_SETS
         + "create l list:set size 8\nadd l n\nadd l a\n",
         "-m set --match-set l src --return-nomatch", _grid(ALL_SRCS, (POD1,), TCP80)),
    Case("bitmap:port", "create b bitmap:port range 1-1000\nadd b 80\nadd b 53\n",
         "-m set --match-set b dst", _grid(EXTS[:1], (POD1,), (*PORTS, ("tcp", 81), ("icmp", 0)))),
    Case("bitmap:port src", "create b bitmap:port range 1-1000\nadd b 80\n",
         "-m set --match-set b src", _grid(EXTS[:1], (POD1,), TCP80)),
    Case("inet6 hash:net", "create n hash:net family inet6\nadd n 2001:db8::/64\nadd n 2001:db8::10 nomatch\n",
         "-m set --match-set n src", _grid((("external", V6_EXT1), ("external", V6_EXT2), ("client_pod", V6_CLIENT)),
                                           (V6_POD1,), TCP80), family="ipv6"),
    Case("inet6 hash:ip,port", f"create p hash:ip,port family inet6\nadd p {V6_POD1},tcp:80\nadd p {V6_POD2},udp:53\n",
         "-m set --match-set p dst,dst", _grid((("external", V6_EXT1),), (V6_POD1, V6_POD2), PORTS),
         family="ipv6"),
]


def _iface(topo: Topology, origin: str) -> str:
    return "eth0" if origin == "external" else _cali_name(topo.spec.client_pod_ip or "")


def _out_iface(topo: Topology, dst: str) -> str:
    return _cali_name(dst) if dst in topo.spec.local_pod_ips else "eth0"


def kpa_verdict(rules: str, sets: str, topo: Topology, obs: Observation) -> str:
    ipt = [parse_text(rules, "iptables-save", "iptables")]
    ipsets = [parse_text(sets, "ipset-save", "ipset")] if sets.strip() else []
    rs = combine(ipt, [], ipsets)
    family = Family.IPV6 if topo.spec.family == "ipv6" else Family.IPV4
    spec = PacketSpec(family=family, src=obs.src, dst=obs.dst, proto=obs.proto,
                      sport=None if obs.proto == "icmp" else obs.sport,
                      dport=None if obs.proto == "icmp" else obs.dport,
                      icmp_type=(8 if family is Family.IPV4 else 128) if obs.proto == "icmp" else None,
                      iif=_iface(topo, obs.origin), oif=_out_iface(topo, obs.dst))
    result = trace(rs, spec, TraceContext(local=node_local_addresses(topo.spec.node_ips)))
    assert len(result.outcomes) == 1, [o.conditions for o in result.outcomes]
    [outcome] = result.outcomes
    assert not outcome.state.assumptions, [a.describe() for a in outcome.state.assumptions]
    return outcome.verdict


def _observe(topo: Topology, backend: Backend, flows: tuple[Flow, ...]) -> list[Observation]:
    if topo.spec.family == "ipv4":
        return topo.send_many(list(flows), timeout=0.3)
    # The ICMPv6 errors of REJECT do not reliably reach the sender here, so each IPv6 flow
    # is sent alone and the rule's packet counter tells whether it matched.
    return _observe_counted(topo, backend, flows)


def _observe_counted(topo: Topology, backend: Backend, flows: tuple[Flow, ...]) -> list[Observation]:
    """Each flow sent alone; the REJECT rule's packet counter says whether the kernel matched it."""
    out: list[Observation] = []
    for flow in flows:
        before = topo.counters("filter", backend).get(("FORWARD", 1), 0)
        [obs] = topo.send_many([flow], timeout=0.2)
        hit = topo.counters("filter", backend).get(("FORWARD", 1), 0) > before
        out.append(Observation(obs.origin, obs.proto, obs.src, obs.sport, obs.dst, obs.dport,
                               "refused" if hit else "timeout"))
    return out


def kernel_verdict(obs: Observation) -> str:
    # A matched flow is rejected (refused, or unreachable for ICMP); an unmatched one reaches a silent pod.
    assert obs.result in ("refused", "timeout") or obs.result.startswith("unreachable"), obs
    return "ACCEPT" if obs.result == "timeout" else "REJECT"


@pytest.fixture(scope="module", params=["ipv4", "ipv6"])
def topo(request: pytest.FixtureRequest) -> Iterator[Topology]:
    with Topology(default_spec(request.param)) as t:
        yield t




@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_set_match_agrees_with_kernel(topo: Topology, backend: Backend) -> None:
    cases = [c for c in CASES if c.family == topo.spec.family]
    mismatches: list[str] = []
    for case in cases:
        topo.reset()
        topo.destroy_ipsets()
        topo.load_ipset(case.sets)
        topo.load_iptables(f"*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                           f"-A FORWARD {case.match} -j REJECT\nCOMMIT\n", backend=backend)
        rules = topo.save(backend, counters=False)
        assert "--match-set" in rules
        sets = topo.save_ipset()
        observed = _observe(topo, backend, case.flows)
        for obs, flow in zip(observed, case.flows, strict=True):
            want = kernel_verdict(obs)
            got = kpa_verdict(rules, sets, topo, obs)
            if want == "ACCEPT" and got == "REJECT":
                # An ICMP error can fail to reach a sender in a batch; the flow alone, judged by
                # the rule's counter, says whether the kernel matched it.
                [obs] = _observe_counted(topo, backend, (flow,))
                want, got = kernel_verdict(obs), kpa_verdict(rules, sets, topo, obs)
            if want != got:
                mismatches.append(f"{case.name}: {obs.proto} {obs.src}:{obs.sport} -> {obs.dst}:{obs.dport} "
                                  f"kernel {want}, kpa {got}")
    topo.reset()
    topo.destroy_ipsets()
    assert not mismatches, "\n".join(mismatches)
