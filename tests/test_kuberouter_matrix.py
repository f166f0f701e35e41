"""The enforced matrix's shortcuts give exactly what tracing every pair in full gives.

`kpa.k8s.kuberouter.EnforcedMatrix` answers each pair of address classes once and,
between two local pods, combines two half traces (the source's pod chain, the
destination's) instead of tracing the whole walk. For every pair of addresses, on
every port checked, its answer (verdict, outcome, deciding rule, where, admitted_by)
must equal `enforced()` for that pair alone; `differs` follows from the verdict.

The fixture dumps hold kube-router's known differences from the API
(docs/enforcement.md); the generated clusters (several seeds and sizes, some pods on
another node) are loaded into a kernel and read back, as the fixtures were.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kpa.k8s.kuberouter import (
    ELSEWHERE,
    NOT_HERE,
    EnforcedMatrix,
    KubeRouterMap,
    _layout,
    compared,
    enforced,
    intended_here,
    on_this_node,
)
from kpa.k8s.objects import load_objects, objects_from_documents
from kpa.netfilter.model import Family, Ruleset
from kpa.policy.engine import PolicyEngine
from kpa.sources import load_rules

F = Path(__file__).parent / "fixtures" / "kube-router"
NODE = "192.168.10.2"
PORTS = [(8080, "TCP"), (5432, "TCP"), (9090, "TCP"), (53, "UDP"), (80, "TCP")]


def _addresses(objs: Any, node_ips: list[str], extra: tuple[str, ...] = ()) -> list[str]:
    pods = sorted((p for p in objs.pods if p.pod_ips), key=lambda p: (p.namespace, p.name))
    return [p.pod_ips[0] for p in pods] + node_ips + ["203.0.113.7", *extra]


def _same_as_full_traces(rs: Ruleset, objs: Any, node_ips: list[str], ports: list[tuple[int, str]],
                         extra: tuple[str, ...] = (), elsewhere: int = 0) -> int:
    """Check every pair on every port; the number of half traces used.

    Pairs with neither end on this node (`on_this_node`, the Node objects included) are
    `NOT_HERE`; there are `elsewhere` such pairs per port."""
    kr = KubeRouterMap.from_ruleset(rs, objs.network_policies)
    ips = _addresses(objs, node_ips, extra)
    here = on_this_node(rs, objs, node_ips)
    halves = 0
    for port, proto in ports:
        fast = EnforcedMatrix(rs, kr, node_ips, list(ips), list(ips), port, proto, here=here)
        not_here = 0
        for i, s in enumerate(ips):
            row = fast.row(i)
            for j, d in enumerate(ips):
                got = fast.answer(i, j)
                assert row[j] == got
                if s == d:
                    assert got is None
                    continue
                if not (here(s) or here(d)):
                    assert got is NOT_HERE and got.verdict == "unknown"
                    not_here += 1
                    continue
                want = enforced(rs, node_ips, s, d, port, proto, kr, src_is_node=s in node_ips)
                assert got == want, (s, d, port, proto)
        assert not_here == elsewhere
        halves += fast.half_traces
    return halves


@pytest.mark.parametrize("variant", ["", "default-deny."])
@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_fixture_matrix_equals_full_traces(backend: str, variant: str) -> None:
    rs = load_rules([str(F / f"{variant}{backend}.v4.save"), str(F / f"{variant}ipset.v4.save")])
    table = rs.table(Family.IPV4, "filter")
    assert table is not None and _layout(rs, table) is not None
    # b/remote (on node-2) and the external address: neither end on this node, both ways.
    assert _same_as_full_traces(rs, load_objects([str(F / "cluster.yaml")]), [NODE], PORTS, elsewhere=2) > 0


def test_layout_that_does_not_split_is_traced_whole() -> None:
    rs = load_rules([str(F / "nft.v4.save"), str(F / "ipset.v4.save")])
    table = rs.table(Family.IPV4, "filter")
    assert table is not None
    # A pod chain that no longer sets the "netpol ok" mark at its end: the halves are not independent.
    chain = next(c for n, c in table.chains.items() if n.startswith("KUBE-POD-FW-"))
    chain.rules = chain.rules[:-1]
    assert _layout(rs, table) is None
    assert _same_as_full_traces(rs, load_objects([str(F / "cluster.yaml")]), [NODE], PORTS[:2], elsewhere=2) == 0


def test_matrix_json_cells_are_the_full_traces() -> None:
    rules = ["-r", str(F / "legacy.v4.save"), "-r", str(F / "ipset.v4.save"), "--node-ip", NODE]
    out = subprocess.run([sys.executable, "-m", "kpa", "policy", "matrix", "-c", str(F / "cluster.yaml"), *rules,
                          "--port", "5432", "-o", "json"], capture_output=True, text=True, check=True)
    doc = json.loads(out.stdout)
    rs = load_rules([str(F / "legacy.v4.save"), str(F / "ipset.v4.save")])
    objs = load_objects([str(F / "cluster.yaml")])
    kr = KubeRouterMap.from_ruleset(rs, objs.network_policies)
    engine = PolicyEngine.from_objects(objs)
    here = on_this_node(rs, objs, [NODE])
    differences = partial = 0
    for cell in doc["cells"]:
        if cell["from_ip"] == cell["to_ip"]:
            assert "enforced" not in cell
            continue
        want = enforced(rs, [NODE], cell["from_ip"], cell["to_ip"], 5432, "TCP", kr)
        if not (here(cell["from_ip"]) or here(cell["to_ip"])):
            want = NOT_HERE
        assert cell["enforced"] == want.to_json()
        # Only the directions this node enforces are compared: the source's egress when only
        # the source is here, the destination's ingress when only the destination is.
        decision = engine.decide(engine.subject(ip=cell["from_ip"]), engine.subject(ip=cell["to_ip"]), 5432, "TCP")
        assert decision.allowed == cell["allowed"]
        scope = compared(here(cell["from_ip"]), here(cell["to_ip"]))
        ok = intended_here(decision.egress.allowed, decision.ingress.allowed, scope)
        assert cell["differs"] == (want.verdict != "unknown" and (want.verdict == "allowed") != ok)
        assert cell.get("note") == (ELSEWHERE[scope] if scope != "both" and want.verdict != "unknown" else None)
        differences += cell["differs"]
        partial += "note" in cell
    assert doc["differences"] == differences == 2
    assert partial > 0
    assert doc["traces"] > 0 and doc["warnings"] == []


@pytest.mark.kernel
@pytest.mark.parametrize(("pods", "policies", "seed", "backend", "default_deny"),
                         [(24, 12, 1, "nft", False), (36, 20, 2, "legacy", False), (48, 30, 3, "nft", False),
                          (30, 16, 4, "nft", True)])
def test_generated_cluster_matrix_equals_full_traces(pods: int, policies: int, seed: int, backend: str,
                                                    default_deny: bool, tmp_path: Path) -> None:
    from kpa.gen.kuberouter import KubeRouterOptions, capture, render
    from kpa.gen.policies import policy_cluster

    docs = policy_cluster(pods=pods, namespaces=4, policies=policies, seed=seed)
    for k, doc in enumerate(d for d in docs if d["kind"] == "Pod"):
        doc["spec"]["nodeName"] = "node-1" if k % 5 == 4 else "node-0"  # a fifth of the pods elsewhere
    objs = objects_from_documents(docs)
    # --netpol-default-deny over a range that holds only some of the local pods, so that its
    # address tests tell pods apart that the ipsets do not.
    opts = KubeRouterOptions(node="node-0", default_deny=default_deny,
                             pod_cidrs=("10.244.0.0/28",) if default_deny else ())
    rules, sets = capture(render(objs, opts), backend)
    _check_capture(rules, sets, objs, tmp_path)


@pytest.mark.kernel
@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_matrix_behind_kube_proxy_equals_full_traces(backend: str, tmp_path: Path) -> None:
    """kube-proxy's rules first (its marks, masquerade and Service chains), kube-router's
    loaded after them without flushing, as on a node running both."""
    import subprocess

    from kpa.gen.capture import scratch_netns
    from kpa.gen.cluster import Cluster, Endpoint, Node, Service, ServicePort
    from kpa.gen.iptables import render_restore
    from kpa.gen.kuberouter import KubeRouterOptions, render
    from kpa.gen.options import ProxierOptions
    from kpa.gen.policies import policy_cluster

    docs = policy_cluster(pods=30, namespaces=3, policies=15, seed=5)
    pods = [d for d in docs if d["kind"] == "Pod"]
    for k, doc in enumerate(pods):
        doc["spec"]["nodeName"] = "node-1" if k % 4 == 3 else "node-0"
    objs = objects_from_documents(docs)
    ip = pods[1]["status"]["podIP"]
    cluster = Cluster(
        nodes=[Node("node-0", ipv4="192.168.0.2", pod_cidrs=["10.244.0.0/24"]), Node("node-1", ipv4="192.168.0.3")],
        services=[Service("ns-000", "web", [ServicePort(80, 8080, "http", "TCP", 30080)], ["10.96.0.20"],
                          "NodePort", endpoints=[Endpoint(ip, "node-0", "web")])])
    kube_router = render(objs, KubeRouterOptions(node="node-0"))
    with scratch_netns() as netns:
        def run(args: list[str], stdin: str | None = None) -> str:
            res = subprocess.run(["ip", "netns", "exec", netns, *args], input=stdin, capture_output=True,
                                 text=True, check=True)
            return res.stdout

        run([f"iptables-{backend}-restore", "-w", "10"], render_restore(cluster, ProxierOptions(node_name="node-0")))
        run(["ipset", "-exist", "restore"], kube_router["ipset-restore.v4"])
        run([f"iptables-{backend}-restore", "-w", "10", "--noflush"], kube_router["iptables-restore.v4"])
        rules, sets = run([f"iptables-{backend}-save"]), run(["ipset", "save"])
        run([f"iptables-{backend}-restore", "-w", "10"], "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n"
            ":OUTPUT ACCEPT [0:0]\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n"
            ":OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n")
        run(["ipset", "destroy"])
    assert "KUBE-SERVICES" in rules and "KUBE-ROUTER-FORWARD" in rules
    # The Service's ClusterIP as a destination too: DNAT first, then the endpoint pod's chain.
    _check_capture(rules, sets, objs, tmp_path, ("10.96.0.20",))


def _check_capture(rules: str, sets: str, objs: Any, tmp_path: Path, extra: tuple[str, ...] = ()) -> None:
    (tmp_path / "rules.save").write_text(rules)
    (tmp_path / "ipset.save").write_text(sets)
    rs = load_rules([str(tmp_path / "rules.save"), str(tmp_path / "ipset.save")])
    table = rs.table(Family.IPV4, "filter")
    assert table is not None and _layout(rs, table) is not None
    # Pods of node-1, the external address and `extra` never pass node-0: every ordered pair of them.
    away = len({p.pod_ips[0] for p in objs.pods if p.pod_ips and p.node_name != "node-0"}) + 1 + len(extra)
    assert _same_as_full_traces(rs, objs, ["192.168.0.2"], [(8080, "TCP"), (53, "UDP")], extra,
                                elsewhere=away * (away - 1)) > 0


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_comments_read_from_rule_text_are_the_parsed_ones(backend: str) -> None:
    from kpa.k8s.kuberouter import _comment_of

    rs = load_rules([str(F / f"{backend}.v4.save")])
    rules = [r for t in rs.tables for c in t.chains.values() for r in c.rules]
    assert sum(1 for r in rules if r.comment) > 50
    assert all(_comment_of(r) == (r.comment or "") for r in rules)


@pytest.mark.parametrize("variant", ["", "default-deny."])
def test_address_membership_by_bisection_is_the_set_match(variant: str) -> None:
    """`address_member` (used to class addresses) answers as the `set` match does, nomatch included."""
    import ipaddress

    from kpa.ext.ipset import address_member, set_test
    from kpa.netfilter.packet import PacketSpec

    rs = load_rules([str(F / f"{variant}ipset.v4.save")])
    probes = set()
    for ipset in rs.ipsets.values():
        for member in ipset.members:
            value, plen = member.parts[0] if isinstance(member.parts[0], tuple) else (member.parts[0], 32)
            size = 1 << (32 - plen)
            probes.update({value - 1, value, value + size // 2, value + size - 1, value + size})
    checked = 0
    for ipset in rs.ipsets.values():
        for value in sorted(probes):
            addr = str(ipaddress.IPv4Address(value % (1 << 32)))
            st = PacketSpec(family=Family.IPV4, src=addr, dst=addr).initial_state()
            want = any(r is True for _, r in set_test(ipset, st, ["src"], False, rs.ipsets))
            got = address_member(ipset, value % (1 << 32))
            assert got is None or got == want, (ipset.name, addr)
            checked += got is not None
    assert checked > 100


def _two_node_cluster() -> list[dict[str, Any]]:
    """web, client and db on node-0 (this node), web and other on node-1; only client may reach web on
    8080; other may reach db on a named port db does not declare (which kube-router turns into every port)."""
    from kpa.gen.policies import _namespace, _pod, _policy

    def node(name: str, ip: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}

    return [_namespace("shop", {}),
            _pod("shop", "web-0", {"app": "web"}, "10.244.0.10", "node-0", [("http", 8080, "TCP")]),
            _pod("shop", "client-0", {"app": "client"}, "10.244.0.11", "node-0", []),
            _pod("shop", "db-0", {"app": "db"}, "10.244.0.12", "node-0", []),
            _pod("shop", "web-1", {"app": "web"}, "10.244.1.10", "node-1", [("http", 8080, "TCP")]),
            _pod("shop", "other-1", {"app": "other"}, "10.244.1.11", "node-1", []),
            _policy("shop", "web-from-client", {
                "podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                             "ports": [{"port": 8080, "protocol": "TCP"}]}]}),
            _policy("shop", "db-from-other", {
                "podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "other"}}}],
                             "ports": [{"port": "metrics", "protocol": "TCP"}]}]}),
            node("node-0", "192.168.0.2"), node("node-1", "192.168.0.3")]


@pytest.mark.kernel
@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_pairs_of_other_nodes_pods_are_unknown_not_differences(backend: str, tmp_path: Path) -> None:
    """A connection between two pods of another node never passes this node's rules: the
    matrix says so (unknown) instead of "allowed" by a node that has no chain for either
    pod, and reports no difference for it; lint reports nothing for it."""
    import yaml
    from click.testing import CliRunner

    from kpa.cli import cli
    from kpa.gen.kuberouter import KubeRouterOptions, capture, render

    docs = _two_node_cluster()
    rules, sets = capture(render(objects_from_documents(docs), KubeRouterOptions(node="node-0")), backend)
    (tmp_path / "rules.save").write_text(rules)
    (tmp_path / "ipset.save").write_text(sets)
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump_all(docs))
    given = ["-c", str(tmp_path / "cluster.yaml"), "-r", str(tmp_path / "rules.save"),
             "-r", str(tmp_path / "ipset.save"), "--node-ip", "192.168.0.2"]
    res = CliRunner().invoke(cli, ["policy", "matrix", *given, "--port", "8080", "-o", "json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    cells = {(c["from"], c["to"]): c for c in doc["cells"]}
    # other-1 -> web-1: the policies deny it; node-0 has no chain for either pod (its FORWARD
    # would let it through, had it ever seen it).
    away = cells[("pod/shop/other-1", "pod/shop/web-1")]
    assert away["allowed"] is False and away["differs"] is False
    assert away["enforced"]["verdict"] == "unknown" and away["enforced"]["rule"] is None
    assert away["enforced"]["where"].startswith("neither end is on this node")
    assert cells[("pod/shop/web-1", "pod/shop/other-1")]["enforced"]["verdict"] == "unknown"
    # Pairs with an end here are traced: other-1 -> web-0 is rejected in web-0's chain.
    near = cells[("pod/shop/other-1", "pod/shop/web-0")]
    assert near["enforced"]["verdict"] == "denied" and "KUBE-POD-FW-" in near["enforced"]["where"]
    assert not near["differs"]
    assert sum(c["enforced"]["verdict"] == "unknown" for c in doc["cells"] if "enforced" in c) == 2
    # web-0 (here) -> web-1 (node-1): web-1's ingress denies it, and node-1 enforces that;
    # node-0 enforces web-0's egress (not isolated) and lets it through: no difference. The
    # intended answer is still the policies' whole answer, and the cell says why.
    out = cells[("pod/shop/web-0", "pod/shop/web-1")]
    assert out["allowed"] is False and out["enforced"]["verdict"] == "allowed" and out["differs"] is False
    assert out["note"] == ELSEWHERE["egress"] and "ingress is enforced on the destination's node" in out["note"]
    # A real difference on a local pod's ingress is still one: other-1 (node-1) -> db-0 (here)
    # on 8080 is denied by db-0's ingress, which node-0 enforces, but kube-router admits every
    # port for the named port db-0 does not declare.
    wrong = cells[("pod/shop/other-1", "pod/shop/db-0")]
    assert wrong["allowed"] is False and wrong["enforced"]["verdict"] == "allowed" and wrong["differs"] is True
    assert wrong["note"] == ELSEWHERE["ingress"]
    assert wrong["enforced"]["admitted_by"] == ["policy shop/db-from-other"]
    assert [(c["from"], c["to"]) for c in doc["cells"] if c.get("differs")] == \
        [("pod/shop/other-1", "pod/shop/db-0")]
    assert doc["differences"] == 1
    # Cells with both ends here compare the whole answer and carry no note.
    assert "note" not in cells[("pod/shop/client-0", "pod/shop/web-0")]
    # The text grid marks the one real difference only: columns client-0, db-0, other-1, web-0, web-1.
    res = CliRunner().invoke(cli, ["policy", "matrix", *given, "--port", "8080"])
    assert res.exit_code == 0, res.output
    rows = {line.split()[0]: line.split()[1:] for line in res.output.splitlines()[2:]}
    assert rows["shop/other-1"] == [".", "!", ".", "X", "X"]
    assert rows["shop/web-0"] == [".", "X", ".", ".", "X"]  # web-0 -> web-1: denied, no "!"
    assert sum(r.count("!") for r in rows.values()) == 1
    # YAML (built cell by cell) says the same as the streamed JSON.
    res = CliRunner().invoke(cli, ["policy", "matrix", *given, "--port", "8080", "-o", "yaml"])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load(res.output)["cells"] == doc["cells"]
    # policy check: the same judgement for one connection.
    res = CliRunner().invoke(cli, ["policy", "check", *given, "--from", "pod/shop/web-0", "--to",
                                   "pod/shop/web-1", "--port", "8080", "-o", "json"])
    assert res.exit_code == 1, res.output
    one = json.loads(res.output)
    assert one["allowed"] is False and one["differs"] is False and one["note"] == ELSEWHERE["egress"]
    # lint: nothing about the pair of node-1's pods, nor web-0 -> web-1; other-1 -> db-0 is reported.
    res = CliRunner().invoke(cli, ["lint", *given, "-o", "json"])
    findings = json.loads(res.output)["findings"]
    assert not [f for f in findings if f["message"].startswith("pod/shop/other-1 -> pod/shop/web-1")]
    assert not [f for f in findings if f["message"].startswith("pod/shop/web-1 -> pod/shop/other-1")]
    assert not [f for f in findings if f["message"].startswith("pod/shop/web-0 -> pod/shop/web-1")]
    real = [f for f in findings if f["message"].startswith("pod/shop/other-1 -> pod/shop/db-0 port 8080/TCP")]
    assert [f["code"] for f in real] == ["policy-not-enforced"]
    assert ELSEWHERE["ingress"] in real[0]["message"]
    # policy check gives the matrix's answer for a pair of node-1's pods: unknown, no difference, and says why.
    res = CliRunner().invoke(cli, ["policy", "check", *given, "--from", "pod/shop/other-1", "--to",
                                   "pod/shop/web-1", "--port", "8080", "-o", "json"])
    assert res.exit_code == 1, res.output
    one = json.loads(res.output)
    assert one["allowed"] is False and one["differs"] is False
    assert one["enforced"] == away["enforced"]
    res = CliRunner().invoke(cli, ["policy", "check", *given, "--from", "pod/shop/other-1", "--to",
                                   "pod/shop/web-1", "--port", "8080"])
    assert "enforced on this node: unknown" in res.output and "neither end is on this node" in res.output
    assert "DIFFERS" not in res.output
