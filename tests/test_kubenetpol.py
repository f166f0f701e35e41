"""kube-network-policies: the generator's table as kpa's nft readers see it, and the queue judged by policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kpa.cli import cli
from kpa.gen.kubenetpol import KnpOptions, managed_ips, render_json, render_text
from kpa.k8s.kubenetpol import TABLE, queue_decider, recognised
from kpa.k8s.objects import load_objects
from kpa.netfilter.engine import trace
from kpa.netfilter.model import Ruleset
from kpa.netfilter.packet import PacketSpec, TraceContext, node_local_addresses
from kpa.sources import combine, parse_text

CLUSTER = Path(__file__).parent / "fixtures" / "kube-router" / "cluster.yaml"
NODE = "192.168.10.2"
NAT = """table ip kpa-nat {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 10.96.0.20 tcp dport 80 dnat to 10.244.0.10:8080
	}
}
"""


@pytest.fixture(scope="module")
def objects() -> object:
    return load_objects([str(CLUSTER)])


def _shape(rs: Ruleset) -> list[tuple[str, str | None, int | None, int]]:
    [table] = [t for t in rs.tables if t.name == TABLE]
    return [(c.name, c.hook, c.priority, len(c.rules)) for c in table.chains.values()]


def test_text_and_json_read_alike_and_are_recognised(objects: object) -> None:
    opts = KnpOptions(node="node-1")
    text = parse_text(render_text(objects, opts), "knp.nft")  # type: ignore[arg-type]
    js = parse_text(render_json(objects, opts), "knp.json")  # type: ignore[arg-type]
    assert recognised(text) and recognised(js)
    assert _shape(text) == _shape(js) == [("postrouting", "POSTROUTING", 95, 12), ("input", "INPUT", 101, 3),
                                          ("prerouting", "PREROUTING", -95, 6)]
    for rs in (text, js):
        [table] = [t for t in rs.tables if t.name == TABLE]
        queues = [r for c in table.chains.values() for r in c.rules if "queue" in r.text]
        assert len(queues) == 4 + 2 + 4
        assert set(table.sets) == {"podips-v4", "podips-v6"}
    # Local pods some policy selects: web, db (namespace a) and client (b); never the remote pod.
    assert sorted(managed_ips(objects, "node-1")[0]) == ["10.244.0.10", "10.244.0.11", "10.244.0.5"]  # type: ignore[arg-type]


def test_other_tables_are_not_recognised() -> None:
    rs = parse_text("table ip kube-network-policies {\n\tchain c {\n\t\ttype filter hook postrouting priority 0;"
                    "\n\t\tqueue to 3\n\t}\n}\n", "x.nft")
    assert not recognised(rs)
    assert queue_decider(rs, None) is None


def _trace(rs: Ruleset, objects: object, **packet: object) -> list[tuple[str, str]]:
    ctx = TraceContext(local=node_local_addresses([NODE]))
    ctx.queue_decider = queue_decider(rs, objects)
    result = trace(rs, PacketSpec(**packet), ctx)  # type: ignore[arg-type]
    return [(o.verdict, o.reason) for o in result.outcomes]


@pytest.mark.parametrize("form", ["text", "json"])
def test_queue_judged_post_dnat(objects: object, form: str) -> None:
    render = render_text if form == "text" else render_json
    rs = combine([], [parse_text(NAT, "nat.nft"), parse_text(render(objects, KnpOptions(node="node-1")), "knp")])  # type: ignore[arg-type]
    # Port 80 from this address would be admitted; DNAT makes it 8080, which no rule admits.
    [(verdict, reason)] = _trace(rs, objects, src="203.0.113.10", dst="10.96.0.20", proto="tcp", dport=80)
    assert verdict == "DROP"
    assert reason.startswith("decided by kube-network-policies (queue 100): denied — 203.0.113.10 -> pod/a/web "
                             "port 8080/TCP: ingress denied")
    [(verdict, reason)] = _trace(rs, objects, src="10.244.0.5", dst="10.96.0.20", proto="tcp", dport=80)
    assert verdict == "ACCEPT"
    # Without cluster objects the queue stays the plain outcome.
    [(verdict, reason)] = _trace(rs, None, src="203.0.113.10", dst="10.96.0.20", proto="tcp", dport=80)
    assert verdict == "QUEUE" and reason.startswith("decided by a userspace program (queue 100)")


def test_open_fields_keep_the_queue(objects: object) -> None:
    rs = parse_text(render_text(objects, KnpOptions(node="node-1")), "knp.nft")  # type: ignore[arg-type]
    outcomes = _trace(rs, objects, dst="10.244.0.10", proto="tcp")
    queued = [r for v, r in outcomes if v == "QUEUE"]
    assert queued and all("kpa judges it only for one source" in r for r in queued)


def test_options_change_the_rules(objects: object) -> None:
    closed = render_text(objects, KnpOptions(node="node-1", fail_open=False, dns_workaround=False))  # type: ignore[arg-type]
    assert "queue to 100" in closed and "bypass" not in closed and "chain prerouting" not in closed
    assert "meta l4proto udp udp dport 53 accept" in closed
    everything = render_text(objects, KnpOptions(node="node-1", divert_all=True))  # type: ignore[arg-type]
    assert "podips" not in everything
    counted = render_text(objects, KnpOptions(node="node-1", queue=False))  # type: ignore[arg-type]
    assert "queue" not in counted
    assert counted == render_text(objects, KnpOptions(node="node-1")).replace(  # type: ignore[arg-type]
        "queue flags bypass to 100", "counter")
    doc = json.loads(render_json(objects, KnpOptions(node="node-1", fail_open=False)))  # type: ignore[arg-type]
    stmts = [e for item in doc["nftables"] if "rule" in item for e in item["rule"]["expr"] if "queue" in e]
    assert stmts and all(e == {"queue": {"num": 100}} for e in stmts)


def test_cli_trace_says_who_decided(tmp_path: Path, objects: object) -> None:
    (tmp_path / "knp.nft").write_text(render_text(objects, KnpOptions(node="node-1")))  # type: ignore[arg-type]
    (tmp_path / "nat.nft").write_text(NAT)
    args = ["trace", "-r", str(tmp_path / "nat.nft"), "-r", str(tmp_path / "knp.nft"), "--node-ip", NODE,
            "--src", "10.244.0.10", "--dst", "10.244.1.10", "-p", "tcp", "--dport", "443"]
    res = CliRunner().invoke(cli, [*args, "-c", str(CLUSTER), "-o", "json"])
    assert res.exit_code == 0, res.output
    [outcome] = json.loads(res.output)["outcomes"]
    assert outcome["verdict"] == "DROP"
    assert "decided by kube-network-policies (queue 100): denied — pod/a/web -> pod/b/remote port 443/TCP" \
        in outcome["reason"]
    text = CliRunner().invoke(cli, [*args, "-c", str(CLUSTER), "-v"])
    assert "decided by kube-network-policies (queue 100)" in text.output
    allowed = CliRunner().invoke(cli, [*args[:-1], "9090", "-c", str(CLUSTER)])
    assert "ACCEPT" in allowed.output and "↳ why: decided by kube-network-policies (queue 100): allowed — pod/a/web " \
        "-> pod/b/remote port 9090/TCP" in allowed.output
    plain = CliRunner().invoke(cli, [*args, "-o", "json"])
    assert [o["verdict"] for o in json.loads(plain.output)["outcomes"]] == ["QUEUE"]


def test_policy_check_rules_on_a_kube_network_policies_node(tmp_path: Path, objects: object) -> None:
    from kpa.k8s.kuberouter import enforced

    (tmp_path / "knp.nft").write_text(render_text(objects, KnpOptions(node="node-1")))  # type: ignore[arg-type]
    base = ["policy", "check", "-c", str(CLUSTER), "-r", str(tmp_path / "knp.nft"), "--node-ip", NODE, "-o", "json"]
    for src, dst, port, allowed in (("pod/b/client", "pod/a/web", "8080", True),
                                    ("pod/a/web", "pod/b/remote", "443", False)):
        res = CliRunner().invoke(cli, [*base, "--from", src, "--to", dst, "--port", port])
        assert res.exit_code in (0, 1), res.output
        doc = json.loads(res.output)
        assert doc["allowed"] is allowed
        assert doc["enforced"]["verdict"] == ("allowed" if allowed else "denied") and doc["differs"] is False
        assert "queue flags bypass to 100" in doc["enforced"]["rule"]
    # Without a decider the queued packet's fate is the program's: unknown, never "denied".
    rs = parse_text(render_text(objects, KnpOptions(node="node-1")), "knp.nft")  # type: ignore[arg-type]
    e = enforced(rs, [NODE], "10.244.0.10", "10.244.1.10", 443, "tcp")
    assert (e.verdict, e.outcome) == ("unknown", "QUEUE")
