"""kube-router's NetworkPolicy chains against the kernel, on iptables-nft and iptables-legacy.

The generator's payloads for tests/fixtures/kube-router/cluster.yaml (namespaces,
pods with named ports, policies with pod, namespace and ipBlock peers, port ranges,
ingress and egress) are loaded into the node namespace with `ipset restore` and
`iptables-restore`; each pod lives in its own namespace behind the node. Real
packets go pod→pod, pod→remote pod, external→pod and node→pod. kube-router rejects
what policy denies, and the pods never answer, so a refused flow was denied and a
timed-out one was let through. kpa traces each flow from what `iptables-save` and
`ipset save` printed, and must agree on every one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kpa.gen.kuberouter import KubeRouterOptions, render
from kpa.k8s.objects import load_objects
from kpa.netfilter.engine import trace
from kpa.netfilter.packet import PacketSpec, TraceContext, node_local_addresses
from kpa.sources import combine, parse_text

from .harness import Backend, Flow, Observation, Topology, _cali_name, default_spec

pytestmark = pytest.mark.kernel

CLUSTER = Path(__file__).parent.parent / "fixtures" / "kube-router" / "cluster.yaml"
WEB, DB, CLIENT, REMOTE, NODE = "10.244.0.10", "10.244.0.11", "10.244.0.5", "10.244.1.10", "192.168.10.2"

FLOWS: list[Flow] = [
    ("client_pod", CLIENT, WEB, "tcp", 8080),
    ("client_pod", CLIENT, WEB, "tcp", 80),
    ("client_pod", CLIENT, DB, "tcp", 5432),
    ("client_pod", CLIENT, DB, "tcp", 9999),
    ("client_pod", CLIENT, DB, "icmp", 0),
    (f"pod:{WEB}", WEB, DB, "tcp", 5432),
    (f"pod:{WEB}", WEB, DB, "tcp", 5433),
    (f"pod:{WEB}", WEB, REMOTE, "tcp", 443),
    (f"pod:{WEB}", WEB, REMOTE, "tcp", 9090),
    (f"pod:{WEB}", WEB, REMOTE, "tcp", 8080),
    ("external", "203.0.113.10", WEB, "tcp", 80),
    ("external", "203.0.113.200", WEB, "tcp", 80),
    ("external", "203.0.113.10", WEB, "tcp", 8080),
    ("external", "203.0.113.10", DB, "tcp", 5432),
    ("client_pod", CLIENT, REMOTE, "tcp", 9050),
    ("client_pod", CLIENT, REMOTE, "tcp", 8000),
    ("client_pod", CLIENT, REMOTE, "udp", 53),
    ("client_pod", CLIENT, REMOTE, "udp", 54),
    ("node", NODE, WEB, "tcp", 8080),
    ("node", NODE, DB, "tcp", 1234),
]
# Flows that end at the node itself: nothing listens, so any delivery is refused too and only
# the rules' counters tell kube-router's REJECT apart.
COUNTED: list[Flow] = [
    ("client_pod", CLIENT, NODE, "tcp", 30001),
    ("client_pod", CLIENT, NODE, "tcp", 29999),
]


def _iface(topo: Topology, origin: str, ip: str) -> str | None:
    if origin == "external":
        return "eth0"
    if origin == "node":
        return None
    return _cali_name(ip)


def kpa_verdict(rules: str, sets: str, topo: Topology, obs: Observation) -> str:
    rs = combine([parse_text(rules, "iptables-save", "iptables")], [], [parse_text(sets, "ipset-save", "ipset")])
    icmp = obs.proto == "icmp"
    spec = PacketSpec(src=obs.src, dst=obs.dst, proto=obs.proto, sport=None if icmp else obs.sport,
                      dport=None if icmp else obs.dport, icmp_type=8 if icmp else None,
                      iif=_iface(topo, obs.origin, obs.src),
                      oif=_cali_name(obs.dst) if obs.dst in topo.spec.local_pod_ips else None if obs.dst == NODE
                      else "eth0",
                      origin="output" if obs.origin == "node" else "prerouting")
    # Few packets are sent: NFLOG's `-m limit` stays within its burst.
    result = trace(rs, spec, TraceContext(local=node_local_addresses(topo.spec.node_ips), rate_limits="within"))
    assert len(result.outcomes) == 1, [(o.verdict, o.conditions) for o in result.outcomes]
    [outcome] = result.outcomes
    assert not outcome.state.assumptions, [a.describe() for a in outcome.state.assumptions]
    return outcome.verdict


def _reject_rules(rules: str) -> list[tuple[str, int]]:
    """(chain, index) of every REJECT rule in a dump."""
    out: list[tuple[str, int]] = []
    counts: dict[str, int] = {}
    for line in rules.splitlines():
        if line.startswith("-A "):
            chain = line.split()[1]
            counts[chain] = counts.get(chain, 0) + 1
            if line.endswith("-j REJECT") or " -j REJECT " in line:
                out.append((chain, counts[chain]))
    return out


def _observe_alone(topo: Topology, backend: Backend, rules: str, flow: Flow) -> Observation:
    """Endpoint pods drop what they receive, so a REJECT's reply never reaches them: count it instead."""
    rejects = _reject_rules(rules)
    before = topo.counters("filter", backend)
    [obs] = topo.send_many([flow], timeout=0.2)
    after = topo.counters("filter", backend)
    hit = any(after.get(r, 0) > before.get(r, 0) for r in rejects)
    return Observation(obs.origin, obs.proto, obs.src, obs.sport, obs.dst, obs.dport, "refused" if hit else "timeout")


def kernel_verdict(obs: Observation) -> str:
    return "ACCEPT" if obs.result == "timeout" else "REJECT"


def payloads() -> dict[str, str]:
    return render(load_objects([str(CLUSTER)]), KubeRouterOptions(node="node-1"))


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_kube_router_policies_agree_with_kernel(backend: Backend) -> None:
    out = payloads()
    with Topology(default_spec("ipv4")) as topo:
        topo.run_in("node", ["ipset", "-exist", "restore"], stdin=out["ipset-restore.v4"])
        topo.load_iptables(out["iptables-restore.v4"], backend=backend)
        rules = topo.save(backend, counters=False)
        sets = topo.save_ipset()
        observed = topo.send_many([f for f in FLOWS if not f[0].startswith("pod:")], timeout=0.4)
        observed += [_observe_alone(topo, backend, rules, flow) for flow in FLOWS if flow[0].startswith("pod:")]
        observed += [_observe_alone(topo, backend, rules, flow) for flow in COUNTED]
        topo.reset()
        topo.destroy_ipsets()
    mismatches = [f"{o.origin} {o.proto} {o.src} -> {o.dst}:{o.dport}: kernel {kernel_verdict(o)} ({o.result}), "
                  f"kpa {kpa_verdict(rules, sets, topo, o)}"
                  for o in observed if kernel_verdict(o) != kpa_verdict(rules, sets, topo, o)]
    assert not mismatches, "\n".join(mismatches)
    verdicts = {(o.src, o.dst, o.proto, o.dport): kernel_verdict(o) for o in observed}
    # Both answers occur, so the comparison is not vacuous.
    assert set(verdicts.values()) == {"ACCEPT", "REJECT"}
    # kube-router's known differences from the NetworkPolicy API, as the kernel shows them:
    from kpa.policy.engine import PolicyEngine

    engine = PolicyEngine.from_objects(load_objects([str(CLUSTER)]))
    by_ip = {p.pod_ips[0]: p for p in engine.pods}

    def intended(src: str, dst: str, port: int) -> bool:
        s = engine.subject(by_ip[src]) if src in by_ip else engine.subject(ip=src)
        d = engine.subject(by_ip[dst]) if dst in by_ip else engine.subject(ip=dst)
        return engine.decide(s, d, port, "TCP").allowed

    # 1. An ingress rule whose only port is a named port no selected pod declares admits every port.
    assert not intended(CLIENT, DB, 5432) and verdicts[(CLIENT, DB, "tcp", 5432)] == "ACCEPT"
    # 2. Traffic from a pod to the node's NodePort range skips the pod's egress policy (KUBE-ROUTER-INPUT
    #    returns before the pod's chain); just below the range the policy applies.
    assert not intended(CLIENT, NODE, 30001) and verdicts[(CLIENT, NODE, "tcp", 30001)] == "ACCEPT"
    assert verdicts[(CLIENT, NODE, "tcp", 29999)] == "REJECT"
    # 3. ICMP echo requests are always accepted (KUBE-NWPLCY-COMMON), even from a pod whose egress
    #    policy admits only TCP and UDP ports.
    assert verdicts[(CLIENT, DB, "icmp", 0)] == "ACCEPT"
    # 4. Egress with no `to` resolves a named port against the policy's own namespace only: web may send
    #    to "http" anywhere, and b/remote's http is 9090, but the node admits only a/web's 8080.
    assert intended(WEB, REMOTE, 9090) and verdicts[(WEB, REMOTE, "tcp", 9090)] == "REJECT"
    assert verdicts[(WEB, REMOTE, "tcp", 8080)] == "ACCEPT"


# --netpol-default-deny: a local pod in the node's pod CIDR whose firewall chain kube-router has not
# programmed yet (it is not in cluster.yaml, as for a pod created since the last sync).
UNPROGRAMMED = "10.244.0.12"
DEFAULT_DENY_FLOWS: list[Flow] = [
    ("client_pod", CLIENT, UNPROGRAMMED, "tcp", 8080),  # client's egress admits 8080 in 10.244.0.0/16
    ("external", "203.0.113.10", UNPROGRAMMED, "tcp", 80),
    (f"pod:{UNPROGRAMMED}", UNPROGRAMMED, REMOTE, "tcp", 9090),
    (f"pod:{UNPROGRAMMED}", UNPROGRAMMED, WEB, "tcp", 8080),  # web's ingress denies it in both modes
    ("client_pod", CLIENT, WEB, "tcp", 8080),  # programmed pods: the same in both modes
    ("client_pod", CLIENT, DB, "tcp", 9999),
    ("external", "203.0.113.10", REMOTE, "tcp", 9090),  # no local pod at either end
]


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_default_deny_mode_agrees_with_kernel(backend: Backend) -> None:
    """Both modes on one topology: which flows --netpol-default-deny changes, by the kernel and by kpa."""
    from kpa.gen.kuberouter import DEFAULT_DENY_CIDRS
    from kpa.k8s.kuberouter import KubeRouterMap, enforced

    objects = load_objects([str(CLUSTER)])
    spec = default_spec("ipv4")
    spec.local_pod_ips = [*spec.local_pod_ips, UNPROGRAMMED]
    verdicts: dict[str, list[str]] = {}
    for mode, opts in (("default", KubeRouterOptions(node="node-1")),
                       ("default-deny", KubeRouterOptions(node="node-1", default_deny=True,
                                                          pod_cidrs=DEFAULT_DENY_CIDRS))):
        out = render(objects, opts)
        with Topology(spec) as topo:
            topo.run_in("node", ["ipset", "-exist", "restore"], stdin=out["ipset-restore.v4"])
            topo.load_iptables(out["iptables-restore.v4"], backend=backend)
            rules = topo.save(backend, counters=False)
            sets = topo.save_ipset()
            observed = [_observe_alone(topo, backend, rules, flow) for flow in DEFAULT_DENY_FLOWS]
            topo.reset()
            topo.destroy_ipsets()
        kernel = [kernel_verdict(o) for o in observed]
        kpa = [kpa_verdict(rules, sets, topo, o) for o in observed]
        assert kpa == kernel, (mode, list(zip(DEFAULT_DENY_FLOWS, kernel, kpa, strict=True)))
        verdicts[mode] = kernel
        if mode == "default-deny":
            assert "kube-router-local-pods" in sets and "reject unprogrammed local pod (default-deny)" in rules
            rs = combine([parse_text(rules, "iptables-save", "iptables")], [], [parse_text(sets, "ipset", "ipset")])
            kr = KubeRouterMap.from_ruleset(rs, objects.network_policies)
            assert kr.default_deny_cidrs == list(DEFAULT_DENY_CIDRS)
            e = enforced(rs, [NODE], CLIENT, UNPROGRAMMED, 8080, "tcp", kr)
            assert e.verdict == "denied" and e.where is not None and "default-deny" in e.where
    # The mode rejects exactly the flows to and from the unprogrammed pod that were let through before.
    changed = [f for f, a, b in zip(DEFAULT_DENY_FLOWS, verdicts["default"], verdicts["default-deny"], strict=True)
               if a != b]
    assert changed == DEFAULT_DENY_FLOWS[:3]
    assert all(v == "REJECT" for v in verdicts["default-deny"][:4])


CLUSTER_IP, NODE_PORT = "10.96.0.20", 30080


def kube_proxy_payload() -> str:
    from kpa.gen.cluster import Cluster, Endpoint, Node, Service, ServicePort
    from kpa.gen.iptables import render_restore
    from kpa.gen.options import ProxierOptions

    cluster = Cluster(
        nodes=[Node("node-1", ipv4=NODE, pod_cidrs=["10.244.0.0/24"]), Node("node-2", ipv4="192.168.10.3")],
        services=[Service("a", "web", [ServicePort(80, 8080, "http", "TCP", NODE_PORT)], [CLUSTER_IP], "NodePort",
                          endpoints=[Endpoint(WEB, "node-1", "web")])])
    return render_restore(cluster, ProxierOptions(node_name="node-1"))


SERVICE_FLOWS: list[Flow] = [
    ("client_pod", CLIENT, CLUSTER_IP, "tcp", 80),  # client egress and web ingress allow 8080 after DNAT
    ("external", "203.0.113.10", NODE, "tcp", NODE_PORT),  # web admits 203.0.113.0/25 on port 80 only
    ("node", NODE, CLUSTER_IP, "tcp", 80),  # from the local node: always accepted
]


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_service_traffic_through_kube_proxy_then_kube_router(backend: Backend, tmp_path: Path) -> None:
    """kube-proxy DNATs first (nat PREROUTING/OUTPUT), then kube-router's filter chains judge the endpoint."""
    import json
    import subprocess
    import sys

    out = payloads()
    with Topology(default_spec("ipv4")) as topo:
        topo.load_iptables(kube_proxy_payload(), backend=backend)
        topo.run_in("node", ["ipset", "-exist", "restore"], stdin=out["ipset-restore.v4"])
        # kube-router edits the filter table kube-proxy already uses, so its payload must not flush it.
        topo.run_in("node", [f"iptables-{backend}-restore", "-w", "10", "--noflush"],
                    stdin=out["iptables-restore.v4"])
        rules = topo.save(backend, counters=False)
        sets = topo.save_ipset()
        observed = topo.send_many(SERVICE_FLOWS, timeout=0.4)
        dnat = {o.src: [e.dnat for e in topo.conntrack_for(o)] for o in observed}
        topo.reset()
        topo.destroy_ipsets()
    assert "KUBE-SERVICES" in rules and "KUBE-ROUTER-FORWARD" in rules
    (tmp_path / "iptables-save.txt").write_text(rules)
    (tmp_path / "ipset.save").write_text(sets)
    results = []
    for o in observed:
        # The contract: two --rules inputs, --node-ip, a pod source, a ClusterIP, -o json.
        argv = [sys.executable, "-m", "kpa", "trace", "--rules", str(tmp_path / "iptables-save.txt"),
                "--rules", str(tmp_path / "ipset.save"), "--node-ip", NODE, "--src", o.src, "--dst", o.dst,
                "-p", "tcp", "--dport", str(o.dport), "--sport", str(o.sport), "--rate-limits", "within",
                "-o", "json"]
        if o.origin == "node":
            argv += ["--origin", "output"]
        else:
            argv += ["--in-iface", _iface(topo, o.origin, o.src) or ""]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        [outcome] = doc["outcomes"]
        assert {"verdict", "dnat", "probability"} <= set(outcome)
        assert not outcome["unknown"], outcome["unknown"]
        results.append((o, outcome))
    for o, outcome in results:
        assert outcome["verdict"] == kernel_verdict(o), (o, outcome["verdict"], outcome["reason"])
        assert outcome["probability"] == 1.0
        if kernel_verdict(o) == "ACCEPT":
            # The kernel's conntrack entry shows where the DNAT sent the flow; kpa must say the same.
            [entry] = dnat[o.src]
            assert entry is not None and outcome["dnat"] == f"{entry[0]}:{entry[1]}", (entry, outcome["dnat"])
    assert [kernel_verdict(o) for o in observed] == ["ACCEPT", "REJECT", "ACCEPT"]


V6 = {"10.244.0.10": "fd00:10:244::10", "10.244.0.11": "fd00:10:244::11", "10.244.0.5": "fd00:10:244::5",
      "10.244.1.10": "fd00:10:244:1::10", "203.0.113.0/24": "2001:db8::/64",
      "203.0.113.128/25": "2001:db8:0:0:8000::/65", "10.244.0.0/16": "fd00:10:244::/56",
      "10.244.0.11/32": "fd00:10:244::11/128"}
V6_FLOWS: list[Flow] = [
    ("client_pod", V6["10.244.0.5"], V6["10.244.0.10"], "tcp", 8080),
    ("client_pod", V6["10.244.0.5"], V6["10.244.0.10"], "tcp", 80),
    ("client_pod", V6["10.244.0.5"], V6["10.244.0.11"], "tcp", 5432),
    ("client_pod", V6["10.244.0.5"], V6["10.244.0.11"], "tcp", 9999),
    ("external", "2001:db8::10", V6["10.244.0.10"], "tcp", 80),
    ("external", "2001:db8:1::7", V6["10.244.0.10"], "tcp", 80),
    ("client_pod", V6["10.244.0.5"], V6["10.244.1.10"], "tcp", 9050),
    ("client_pod", V6["10.244.0.5"], V6["10.244.1.10"], "tcp", 8000),
]


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_kube_router_ipv6_agrees_with_kernel(backend: Backend, tmp_path: Path) -> None:
    """The same cluster on IPv6: inet6: sets, ip6tables, ipv6-icmp; REJECTs seen by their counters."""
    from kpa.netfilter.model import Family

    text = CLUSTER.read_text()
    for v4, v6 in sorted(V6.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(v4, v6)
    (tmp_path / "cluster.yaml").write_text(text)
    out = render(load_objects([str(tmp_path / "cluster.yaml")]), KubeRouterOptions(
        node="node-1", families=(6,), cluster_ip_ranges=("fd00:10:96::/112",)))
    with Topology(default_spec("ipv6")) as topo:
        topo.run_in("node", ["ipset", "-exist", "restore"], stdin=out["ipset-restore.v6"])
        topo.load_iptables(out["iptables-restore.v6"], backend=backend)
        rules = topo.save(backend, counters=False)
        sets = topo.save_ipset()
        observed = [_observe_alone(topo, backend, rules, flow) for flow in V6_FLOWS]
        topo.reset()
        topo.destroy_ipsets()
    assert "inet6:KUBE-DST-" in sets and "ipv6-icmp" in rules
    rs = combine([parse_text(rules, "ip6tables-save", "iptables")], [], [parse_text(sets, "ipset-save", "ipset")])
    mismatches = []
    for o in observed:
        spec = PacketSpec(family=Family.IPV6, src=o.src, dst=o.dst, proto=o.proto, sport=o.sport, dport=o.dport,
                          iif="eth0" if o.origin == "external" else _cali_name(o.src),
                          oif=_cali_name(o.dst) if o.dst in topo.spec.local_pod_ips else "eth0")
        result = trace(rs, spec, TraceContext(local=node_local_addresses(topo.spec.node_ips), rate_limits="within"))
        [outcome] = result.outcomes
        assert not outcome.state.assumptions, [a.describe() for a in outcome.state.assumptions]
        if outcome.verdict != kernel_verdict(o):
            mismatches.append(f"{o.src} -> {o.dst}:{o.dport}: kernel {kernel_verdict(o)}, kpa {outcome.verdict}")
    assert not mismatches, "\n".join(mismatches)
    assert {kernel_verdict(o) for o in observed} == {"ACCEPT", "REJECT"}


def dual_stack_cluster(tmp_path: Path) -> Path:
    """cluster.yaml with every pod dual-stack and every ipBlock peer joined by its IPv6 counterpart."""
    import yaml

    docs = list(yaml.safe_load_all(CLUSTER.read_text()))
    for doc in docs:
        if doc["kind"] == "Pod":
            ip = doc["status"]["podIP"]
            doc["status"]["podIPs"] = [{"ip": ip}, {"ip": V6[ip]}]
        elif doc["kind"] == "NetworkPolicy":
            for rule in (*doc["spec"].get("ingress", []), *doc["spec"].get("egress", [])):
                for key in ("from", "to"):
                    peers = rule.get(key) or []
                    for peer in list(peers):
                        block = peer.get("ipBlock")
                        if block:
                            six = {"cidr": V6[block["cidr"]]}
                            if block.get("except"):
                                six["except"] = [V6[e] for e in block["except"]]
                            peers.append({"ipBlock": six})
    out = tmp_path / "dual-stack.yaml"
    out.write_text(yaml.safe_dump_all(docs))
    return out


# Each IPv4 flow with its IPv6 twin: one node, one ruleset holding both families.
DUAL_FLOWS: list[Flow] = [
    ("client_pod", CLIENT, WEB, "tcp", 8080),
    ("client_pod", CLIENT, WEB, "tcp", 80),
    ("client_pod", CLIENT, DB, "tcp", 9999),
    ("external", "203.0.113.10", WEB, "tcp", 80),
    ("external", "198.51.100.7", WEB, "tcp", 80),
    ("client_pod", CLIENT, REMOTE, "tcp", 9050),
    ("client_pod", CLIENT, REMOTE, "tcp", 8000),
]
EXTERNAL6 = {"203.0.113.10": "2001:db8::10", "198.51.100.7": "2001:db8:1::7"}
# The unprogrammed pod of the default-deny test, in both families; flows to it change with the mode.
UNPROGRAMMED6 = "fd00:10:244::12"
DUAL_DENY_FLOWS: list[Flow] = [
    ("client_pod", CLIENT, UNPROGRAMMED, "tcp", 8080),
    ("external", "203.0.113.10", UNPROGRAMMED, "tcp", 80),
]


@pytest.mark.parametrize("mode", ["default", "default-deny"])
@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_kube_router_dual_stack_agrees_with_kernel(backend: Backend, mode: str, tmp_path: Path) -> None:
    """iptables + ip6tables + inet and inet6 sets from one payload set, loaded together on one node.

    Both modes: with --netpol-default-deny the node's IPv4 and IPv6 pod CIDRs are gated by
    kube-router-local-pods and inet6:kube-router-local-pods, and a local pod kube-router has not
    programmed yet is rejected in both families.
    """
    from kpa.netfilter.model import Family

    deny = mode == "default-deny"
    out = render(load_objects([str(dual_stack_cluster(tmp_path))]), KubeRouterOptions(
        node="node-1", families=(4, 6), cluster_ip_ranges=("10.96.0.0/12", "fd00:10:96::/112"),
        default_deny=deny, pod_cidrs=("10.244.0.0/24", "fd00:10:244::/64")))
    six = {**V6, UNPROGRAMMED: UNPROGRAMMED6}
    base = [*DUAL_FLOWS, *DUAL_DENY_FLOWS]
    flows = [*base, *[(o, EXTERNAL6.get(s or "") or six[s or ""], six[d], p, port) for o, s, d, p, port in base]]
    spec4, spec6 = default_spec("ipv4"), default_spec("ipv6")
    spec4.local_pod_ips = [*spec4.local_pod_ips, UNPROGRAMMED]
    spec6.local_pod_ips = [*spec6.local_pod_ips, UNPROGRAMMED6]
    with Topology(spec4) as topo:
        topo.add_ipv6(spec6)
        for version in (4, 6):
            topo.run_in("node", ["ipset", "-exist", "restore"], stdin=out[f"ipset-restore.v{version}"])
        topo.load_iptables(out["iptables-restore.v4"], backend=backend, family="ipv4")
        topo.load_iptables(out["iptables-restore.v6"], backend=backend, family="ipv6")
        rules4 = topo.save(backend, family="ipv4", counters=False)
        rules6 = topo.save(backend, family="ipv6", counters=False)
        sets = topo.save_ipset()
        observed = []
        for flow in flows:
            family = "ipv6" if ":" in flow[2] else "ipv4"
            rejects = _reject_rules(rules6 if family == "ipv6" else rules4)
            before = topo.counters("filter", backend, family=family)
            [obs] = topo.send_many([flow], timeout=0.2)
            after = topo.counters("filter", backend, family=family)
            hit = any(after.get(r, 0) > before.get(r, 0) for r in rejects)
            observed.append((obs, "REJECT" if hit or obs.result == "refused" else "ACCEPT"))
        topo.reset()
        topo.destroy_ipsets()
    assert "family inet6" in sets and "family inet " in sets
    assert ("inet6:kube-router-local-pods" in sets) == deny == ("kube-router-local-pods src" in rules4)
    # One ruleset, both families: what kpa reads from the node.
    rs = combine([parse_text(rules4, "iptables-save", "iptables"), parse_text(rules6, "ip6tables-save", "iptables")],
                 [], [parse_text(sets, "ipset-save", "ipset")])
    assert {Family.IPV4, Family.IPV6} <= rs.families()
    local = {*spec4.local_pod_ips, *spec6.local_pod_ips}
    v4_of = {v6: v4 for v4, v6 in six.items()}
    mismatches = []
    verdicts = []
    for obs, kernel in observed:
        v6 = ":" in obs.dst
        src4 = v4_of.get(obs.src, obs.src)
        spec = PacketSpec(family=Family.IPV6 if v6 else Family.IPV4, src=obs.src, dst=obs.dst, proto=obs.proto,
                          sport=obs.sport, dport=obs.dport,
                          iif="eth0" if obs.origin == "external" else _cali_name(src4),
                          oif=_cali_name(v4_of.get(obs.dst, obs.dst)) if obs.dst in local else "eth0")
        result = trace(rs, spec, TraceContext(local=node_local_addresses([NODE, "fd00:10::2"]),
                                              rate_limits="within"))
        [outcome] = result.outcomes
        assert not outcome.state.assumptions, [a.describe() for a in outcome.state.assumptions]
        verdicts.append(kernel)
        if outcome.verdict != kernel:
            mismatches.append(f"{obs.src} -> {obs.dst}:{obs.dport}: kernel {kernel}, kpa {outcome.verdict}")
    assert not mismatches, "\n".join(mismatches)
    # The same policies give the same answers in both families, and both answers occur.
    assert verdicts[:len(base)] == verdicts[len(base):]
    assert set(verdicts) == {"ACCEPT", "REJECT"}
    # The unprogrammed pod: let through without the mode, rejected with it, in both families.
    assert {verdicts[i] for i in (len(base) - 2, len(base) - 1, -2, -1)} == {"REJECT" if deny else "ACCEPT"}
