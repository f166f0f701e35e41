"""`kpa policy matrix --rules` on a kube-network-policies node: every cell as tracing it alone decides it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kpa.cli import cli
from kpa.gen.kubenetpol import KnpOptions, render_json, render_text
from kpa.gen.policies import policy_cluster
from kpa.k8s.kubenetpol import EnforcedQueueMatrix, on_this_node, queue_decider
from kpa.k8s.kuberouter import KubeRouterMap, enforced
from kpa.k8s.objects import load_objects, objects_from_documents
from kpa.netfilter.model import Ruleset
from kpa.policy.engine import PolicyEngine
from kpa.policy.matrix import matrix as intent_matrix
from kpa.sources import combine, parse_text

CLUSTER = Path(__file__).parent / "fixtures" / "kube-router" / "cluster.yaml"
NODE = "192.168.10.2"
# Other tables of the node: a filter that drops client -> web on port 8080 (which the policies
# allow) before the queue, and a masquerade for traffic leaving the cluster.
OTHER = """table ip node-filter {
	chain forward {
		type filter hook forward priority filter; policy accept;
		ip saddr 10.244.0.5 ip daddr 10.244.0.10 tcp dport 8080 drop
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip daddr != 10.244.0.0/16 masquerade
	}
}
"""


def _every_pair(rs: Ruleset, objects: Any, addrs: list[str], ports: list[tuple[int, str]],
                node_ips: list[str]) -> dict[str, int]:
    """Compare each cell with `enforced` on that pair alone (the answer `kpa policy check --rules` gives)."""
    engine = PolicyEngine.from_objects(objects)
    decider = queue_decider(rs, objects)
    subjects = [engine.subject(ip=a) for a in addrs]
    counts = {"cells": 0, "unknown": 0, "queued": 0, "before": 0, "traces": 0, "elsewhere": 0}
    here = on_this_node(rs, objects, node_ips)
    for port, proto in ports:
        m = intent_matrix(engine, subjects, subjects, port, proto)
        em = EnforcedQueueMatrix(rs, objects, node_ips, addrs, addrs, port, proto, m.row,
                                 [s.pod for s in subjects], [s.pod for s in subjects])
        for i, s in enumerate(addrs):
            row = em.row(i)
            for j, d in enumerate(addrs):
                if s == d:
                    assert row[j] is None and em.answer(i, j) is None
                    continue
                if not (here(s) or here(d)):
                    # Neither end on this node: its rules never see the connection.
                    assert row[j] is em.not_here is em.answer(i, j) and em.not_here.verdict == "unknown"
                    counts["elsewhere"] += 1
                    continue
                alone = enforced(rs, node_ips, s, d, port, proto, KubeRouterMap(), src_is_node=s in node_ips,
                                 queue_decider=decider)
                assert row[j] == alone == em.answer(i, j), (s, d, port, proto)
                counts["cells"] += 1
                if alone.verdict == "unknown":
                    # Only where the packet is undecidable: from the node (root's sockets are accepted
                    # before the queue, others' are queued: the sender's uid is open) or to it (`iifname
                    # "lo" accept`: the input interface is open).
                    assert node_ips[0] in (s, d) and alone.outcome == "ACCEPT|DROP", (s, d, alone)
                    counts["unknown"] += 1
                counts["queued"] += "queued to its program" in (alone.where or "")
                counts["before"] += "before its queue rules" in (alone.where or "")
        counts["traces"] += em.traces
    return counts


@pytest.fixture(scope="module")
def objects() -> Any:
    return load_objects([str(CLUSTER)])


ADDRS = ["10.244.0.10", "10.244.0.11", "10.244.0.5", "10.244.1.10", NODE, "203.0.113.9"]
PORTS = [(8080, "TCP"), (5432, "TCP"), (9090, "TCP"), (53, "UDP"), (80, "TCP")]


@pytest.mark.parametrize("variant", ["default", "dns-in-postrouting-fail-closed", "divert-all", "other-tables",
                                     "json"])
def test_every_cell_is_what_tracing_it_alone_gives(objects: Any, variant: str) -> None:
    opts = {"default": KnpOptions(node="node-1"),
            "dns-in-postrouting-fail-closed": KnpOptions(node="node-1", dns_workaround=False, fail_open=False),
            "divert-all": KnpOptions(node="node-1", divert_all=True),
            "other-tables": KnpOptions(node="node-1"), "json": KnpOptions(node="node-1")}[variant]
    parts = [parse_text((render_json if variant == "json" else render_text)(objects, opts), "knp.nft")]
    if variant == "other-tables":
        parts.append(parse_text(OTHER, "node.nft"))
    rs = combine([], parts)
    counts = _every_pair(rs, objects, ADDRS, PORTS, [NODE])
    # external <-> remote never pass this node (with divert-all there are no pod sets and no Node
    # object says which pods are here: every pair is traced).
    assert counts["cells"] + counts["elsewhere"] == 5 * 30
    assert (counts["elsewhere"] > 0) == (variant != "divert-all")
    # The queue is decided by the engine: no cell is left to the program.
    assert counts["queued"] > 0 and counts["unknown"] < counts["cells"] // 5
    # Cells share walks (six addresses that the rules mostly tell apart: only somewhat fewer).
    assert counts["traces"] < counts["cells"]
    if variant == "dns-in-postrouting-fail-closed":
        assert counts["before"] > 0  # `udp dport 53 accept` before the queue


def test_generated_cluster_with_remote_pods(objects: Any) -> None:
    docs = policy_cluster(pods=36, namespaces=4, policies=20, seed=3)
    for k, doc in enumerate(docs):
        if doc["kind"] == "Pod":
            doc["spec"]["nodeName"] = "node-1" if k % 5 else "node-2"
    cluster = objects_from_documents(docs)
    rs = combine([], [parse_text(render_text(cluster, KnpOptions(node="node-1")), "knp.nft"),
                      parse_text(OTHER, "node.nft")])
    addrs = [*[p.pod_ips[0] for p in cluster.pods if p.pod_ips][:30], NODE]
    counts = _every_pair(rs, cluster, addrs, [(8080, "TCP"), (53, "UDP")], [NODE])
    assert counts["queued"] > 0 and counts["traces"] < counts["cells"] // 10 and counts["elsewhere"] > 0


def test_cli_matrix_gives_enforced_answers(tmp_path: Path, objects: Any) -> None:
    (tmp_path / "knp.nft").write_text(render_text(objects, KnpOptions(node="node-1", dns_workaround=False)))
    (tmp_path / "node.nft").write_text(OTHER)
    base = ["policy", "matrix", "-c", str(CLUSTER), "-r", str(tmp_path / "knp.nft"), "-r", str(tmp_path / "node.nft"),
            "--node-ip", NODE]
    res = CliRunner().invoke(cli, [*base, "--port", "8080", "-o", "json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    cells = {(c["from"], c["to"]): c for c in doc["cells"]}
    assert all(c["enforced"]["verdict"] != "unknown" for c in doc["cells"] if c["from"] != c["to"])
    assert doc["traces"] < len(doc["cells"])
    # The node's own filter drops client -> web before the queue, which the policies allow.
    blocked = cells[("pod/b/client", "pod/a/web")]
    assert blocked["allowed"] is True and blocked["differs"] is True
    assert blocked["enforced"]["verdict"] == "denied" and "node.nft:4" in blocked["enforced"]["rule"]
    # Queued and judged by the policies: allowed (client's egress, no ingress policy for remote) ...
    queued = cells[("pod/b/client", "pod/b/remote")]
    assert queued["allowed"] is True and queued["enforced"]["verdict"] == "allowed" and not queued["differs"]
    assert "queued to its program" in queued["enforced"]["where"]
    # ... and denied (db's ingress admits nobody on 8080).
    denied = cells[("pod/a/web", "pod/a/db")]
    assert denied["allowed"] is False and denied["enforced"]["verdict"] == "denied" and not denied["differs"]
    assert doc["differences"] == 1
    # DNS accepted before the queue: egress policies that deny it are not enforced on this node.
    dns = json.loads(CliRunner().invoke(cli, [*base, "--port", "53", "--protocol", "udp", "-o", "json"]).output)
    differs = [c for c in dns["cells"] if c.get("differs")]
    assert dns["differences"] == len(differs) > 0
    assert all(c["allowed"] is False and c["enforced"]["verdict"] == "allowed"
               and "udp dport 53 accept" in c["enforced"]["rule"] for c in differs)
    text = CliRunner().invoke(cli, [*base, "--port", "53", "--protocol", "udp"])
    assert "! enforced differently on the node" in text.output and "!" in text.output.splitlines()[2]


def _lint(tmp_path: Path, knp: str, *extra: str) -> list[dict[str, Any]]:
    (tmp_path / "knp.nft").write_text(knp)
    (tmp_path / "node.nft").write_text(OTHER)
    res = CliRunner().invoke(cli, ["lint", "-r", str(tmp_path / "knp.nft"), *extra, "-c", str(CLUSTER),
                                   "--node", "node-1", "--node-ip", NODE, "--fail-on", "info", "-o", "json"])
    assert res.exit_code in (0, 1), res.output
    return [f for f in json.loads(res.output)["findings"]
            if f["code"] in ("policy-not-enforced", "blocked-without-policy", "netpol-fail-open")]


def test_lint_agrees_with_the_policies_when_only_the_queue_decides(tmp_path: Path, objects: Any) -> None:
    # The default table (DNS judged in prerouting), fail-closed: the program decides every
    # connection it sees, and kpa judges it by the same policies: nothing to report.
    assert _lint(tmp_path, render_text(objects, KnpOptions(node="node-1", fail_open=False))) == []
    # Fail-open is said once, as information, at the queue rule; from nft's JSON too.
    [info] = _lint(tmp_path, render_text(objects, KnpOptions(node="node-1")))
    assert info["code"] == "netpol-fail-open" and "bypass" in info["location"]
    [info] = _lint(tmp_path, render_json(objects, KnpOptions(node="node-1")))
    assert info["code"] == "netpol-fail-open" and "@podips-v4 queue" in info["location"]
    assert _lint(tmp_path, render_json(objects, KnpOptions(node="node-1", fail_open=False))) == []


def test_lint_reports_what_the_node_enforces_differently(tmp_path: Path, objects: Any) -> None:
    # DNS accepted before the queue, another table dropping client -> web, and web missing
    # from the pod sets (the program never sees connections to or from it).
    knp = render_text(objects, KnpOptions(node="node-1", dns_workaround=False, fail_open=False))
    assert "10.244.0.10, " in knp
    knp = knp.replace("10.244.0.10, ", "")
    findings = _lint(tmp_path, knp, "-r", str(tmp_path / "node.nft"))
    by = {(f["code"], f["message"].split(":")[0]) for f in findings}
    assert ("blocked-without-policy", "pod/b/client -> pod/a/web port 8080/TCP") in by
    blocked = next(f for f in findings if f["code"] == "blocked-without-policy")
    assert "node.nft:4" in blocked["location"] and "node-filter/forward" in blocked["message"]
    # web is no longer queued: remote -> web is let through although only client may connect.
    unqueued = next(f for f in findings if f["message"].startswith("pod/b/remote -> pod/a/web port 8080/TCP"))
    assert unqueued["code"] == "policy-not-enforced" and "not queued" in unqueued["message"]
    # DNS denied by egress policies but accepted before the queue.
    dns = [f for f in findings if "port 53/UDP" in f["message"]]
    assert dns and all(f["code"] == "policy-not-enforced" and "udp dport 53 accept" in f["location"]
                       for f in dns if "pod/a/web" not in f["message"])
    # Every reported connection really differs: tracing it alone says what the finding says.
    rs = combine([], [parse_text(knp, str(tmp_path / "knp.nft")), parse_text(OTHER, str(tmp_path / "node.nft"))])
    engine = PolicyEngine.from_objects(objects)
    for f in findings:
        who, _, rest = f["message"].partition(" port ")
        src, dst = (engine.subject(objects.pod(*ref[4:].split("/"))) for ref in who.split(" -> "))
        port, proto = rest.split(":")[0].split("/")
        alone = enforced(rs, [NODE], src.ip, dst.ip, int(port), proto, KubeRouterMap(),
                         queue_decider=queue_decider(rs, objects))
        assert alone.verdict == ("allowed" if f["code"] == "policy-not-enforced" else "denied")
        assert engine.decide(src, dst, int(port), proto).allowed == (f["code"] == "blocked-without-policy")


def test_one_end_elsewhere_compares_the_direction_this_node_enforces(tmp_path: Path) -> None:
    """A local pod no policy selects is not queued: this node enforces its (unrestricted) egress
    and the destination's node the destination's ingress. A pair with a queued end is judged
    whole by the program, here as on the other node."""
    import yaml

    from kpa.gen.policies import _pod
    from kpa.k8s.kuberouter import ELSEWHERE
    from tests.test_kuberouter_matrix import _two_node_cluster

    docs = _two_node_cluster()
    docs.insert(3, _pod("shop", "free-0", {"app": "free"}, "10.244.0.13", "node-0", []))
    knp = render_text(objects_from_documents(docs), KnpOptions(node="node-0", fail_open=False))
    assert "10.244.0.13" not in knp and "10.244.0.10" in knp  # free-0 is not queued, web-0 is
    (tmp_path / "knp.nft").write_text(knp)
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump_all(docs))
    given = ["-c", str(tmp_path / "cluster.yaml"), "-r", str(tmp_path / "knp.nft"), "--node-ip", "192.168.0.2"]
    res = CliRunner().invoke(cli, ["policy", "matrix", *given, "--port", "8080", "-o", "json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    cells = {(c["from"], c["to"]): c for c in doc["cells"]}
    # free-0 (here, unqueued) -> web-1 (node-1): web-1's ingress denies it on node-1; node-0 lets it pass.
    free = cells[("pod/shop/free-0", "pod/shop/web-1")]
    assert free["allowed"] is False and free["enforced"]["verdict"] == "allowed"
    assert free["differs"] is False and free["note"] == ELSEWHERE["egress"]
    # web-0 (queued) -> web-1: the program judges both directions here: denied, whole answer compared.
    queued = cells[("pod/shop/web-0", "pod/shop/web-1")]
    assert queued["enforced"]["verdict"] == "denied" and queued["differs"] is False and "note" not in queued
    assert doc["differences"] == 0
    res = CliRunner().invoke(cli, ["policy", "check", *given, "--from", "pod/shop/free-0", "--to",
                                   "pod/shop/web-1", "--port", "8080", "-o", "json"])
    assert res.exit_code == 1, res.output
    one = json.loads(res.output)
    assert one["differs"] is False and one["note"] == ELSEWHERE["egress"]
    res = CliRunner().invoke(cli, ["lint", *given, "-o", "json"])
    assert not [f for f in json.loads(res.output)["findings"] if f["message"].startswith("pod/shop/free-0 -> ")]
    # Two of node-1's pods: the program never sees them here; check answers as the matrix does.
    away = cells[("pod/shop/other-1", "pod/shop/web-1")]
    assert away["enforced"]["verdict"] == "unknown" and away["differs"] is False
    res = CliRunner().invoke(cli, ["policy", "check", *given, "--from", "pod/shop/other-1", "--to",
                                   "pod/shop/web-1", "--port", "8080", "-o", "json"])
    assert res.exit_code == 1, res.output
    one = json.loads(res.output)
    assert one["enforced"] == away["enforced"] and one["differs"] is False
