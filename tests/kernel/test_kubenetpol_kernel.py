"""kube-network-policies' table against the kernel: where its queue rules meet the packet.

kpa judges a packet that reaches one of the table's queue rules with its NetworkPolicy
engine, taking the packet as it is at that rule: destination after DNAT, source before
SNAT. What the kernel can show here:

- `test_queue_rules_see_post_dnat_pre_snat_packets`: the generator's table with every
  queue statement written as `counter` (the only change; this kernel may have no nft
  queue support) is loaded in the node namespace together with a DNAT and a masquerade
  rule. Real packets go external→ClusterIP (DNAT to a pod), pod→remote pod (masqueraded)
  and pod→node. The rule counters show which of the table's rules each packet reached,
  and conntrack shows the DNAT and SNAT did happen; kpa's trace of what `nft list
  ruleset` (and `nft -j`) printed must reach exactly those rules, and on the table with
  the queue statements kpa's decision must name the DNAT target and the unmasqueraded
  source. This proves the rules kpa evaluates and the packet kpa judges; it does not
  prove what the agent itself answers (no agent runs here).
- `test_matrix_cells_decided_before_the_queue_agree_with_the_kernel`: what `kpa policy
  matrix --rules` claims per cell — judged at this queue rule, or decided before any
  queue (let through by `udp dport 53 accept` or because neither pod is in the sets;
  dropped by another table) — against counters and conntrack for every cell the
  topology can send, on 8080/TCP and 53/UDP.
- `test_queue_table_loads_where_the_kernel_has_nft_queue`: the table as the agent
  writes it (text and JSON) is loaded, listed, and read back by kpa, which recognises it
  and judges at the same rules. Skipped, by name, on kernels without nft queue.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kpa.gen.kubenetpol import KnpOptions, capture, nft_queue_missing, render_json, render_text
from kpa.k8s.kubenetpol import TABLE, queue_decider, recognised
from kpa.k8s.objects import load_objects
from kpa.netfilter.engine import Outcome, trace
from kpa.netfilter.model import Family, Ruleset
from kpa.netfilter.packet import PacketSpec, TraceContext, node_local_addresses
from kpa.sources import combine, parse_text

from .features import skip_without
from .harness import Flow, Topology, _cali_name, default_spec

pytestmark = pytest.mark.kernel

CLUSTER = Path(__file__).parent.parent / "fixtures" / "kube-router" / "cluster.yaml"
WEB, DB, CLIENT, REMOTE, NODE = "10.244.0.10", "10.244.0.11", "10.244.0.5", "10.244.1.10", "192.168.10.2"
CLUSTER_IP = "10.96.0.20"
# What kube-proxy would do: a ClusterIP DNATed to the web pod, pod traffic leaving the node masqueraded.
NAT = f"""table ip kpa-nat {{
	chain prerouting {{
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr {CLUSTER_IP} tcp dport 80 dnat to {WEB}:8080
	}}
	chain postrouting {{
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 10.244.0.0/16 oifname "eth0" masquerade
	}}
}}
"""
# Each flow alone, with what kpa's NetworkPolicy engine must say at the queue rule.
FLOWS: list[tuple[Flow, str]] = [
    # Port 80 from 203.0.113.10 is admitted by web-from-clients; after DNAT it is 8080, which is not.
    (("external", "203.0.113.10", CLUSTER_IP, "tcp", 80), "denied — 203.0.113.10 -> pod/a/web port 8080/TCP"),
    # web may reach named port http only; before masquerade the source is still a/web.
    ((f"pod:{WEB}", WEB, REMOTE, "tcp", 443), "denied — pod/a/web -> pod/b/remote port 443/TCP"),
    ((f"pod:{WEB}", WEB, REMOTE, "tcp", 9090), "allowed — pod/a/web -> pod/b/remote port 9090/TCP"),
    (("client_pod", CLIENT, NODE, "tcp", 30001), f"denied — pod/b/client -> {NODE} port 30001/TCP"),
    (("client_pod", CLIENT, WEB, "tcp", 8080), "allowed — pod/b/client -> pod/a/web port 8080/TCP"),
]
# Neither end in the pod sets: the table lets it through without asking.
UNQUEUED: Flow = ("external", "203.0.113.10", REMOTE, "tcp", 9090)


def _rs(text: str, name: str) -> Ruleset:
    return parse_text(text, name)


def _counters(topo: Topology) -> dict[tuple[str, int], int]:
    """(chain, rule number from 1) -> packets, for the table's rules that count."""
    doc = json.loads(topo.run_in("node", ["nft", "-j", "list", "table", "inet", TABLE]))
    out: dict[tuple[str, int], int] = {}
    index: dict[str, int] = {}
    for item in doc["nftables"]:
        rule = item.get("rule")
        if rule is None:
            continue
        index[rule["chain"]] = index.get(rule["chain"], 0) + 1
        for expr in rule["expr"]:
            if "counter" in expr:
                out[(rule["chain"], index[rule["chain"]])] = expr["counter"]["packets"]
    return out


def _spec(flow: Flow, sport: int | None) -> PacketSpec:
    origin, src, dst, proto, dport = flow
    iif = "eth0" if origin == "external" else _cali_name(src or "")
    oif = "eth0" if dst == REMOTE else None if dst == NODE else _cali_name(WEB if dst == CLUSTER_IP else dst or "")
    return PacketSpec(src=src, dst=dst, proto=proto, sport=sport, dport=dport, iif=iif, oif=oif)


def _trace(rs: Ruleset, flow: Flow, sport: int | None, objects: object = None) -> Outcome:
    ctx = TraceContext(local=node_local_addresses([NODE]))
    ctx.queue_decider = queue_decider(rs, objects)
    result = trace(rs, _spec(flow, sport), ctx)
    assert len(result.outcomes) == 1, [(o.verdict, o.reason) for o in result.outcomes]
    return result.outcomes[0]


def _table_hops(outcome: Outcome) -> list[tuple[str, int]]:
    return [(h.chain, h.rule) for h in outcome.path if h.table == TABLE and h.rule is not None]


def test_queue_rules_see_post_dnat_pre_snat_packets() -> None:
    objects = load_objects([str(CLUSTER)])
    counted_payload = render_text(objects, KnpOptions(node="node-1", queue=False))
    # The table as the agent writes it, queue statements included, beside the same NAT rules.
    nat = _rs(NAT, "nat.nft")
    queued = combine([], [nat, _rs(render_text(objects, KnpOptions(node="node-1")), "kube-network-policies.nft")])
    queued_json = combine([], [nat, _rs(render_json(objects, KnpOptions(node="node-1")),
                                        "kube-network-policies.json")])
    compared = 0
    with Topology(default_spec("ipv4")) as topo:
        topo.load_nft(NAT + counted_payload)
        dump_text = topo.run_in("node", ["nft", "list", "ruleset"])
        dump_json = topo.run_in("node", ["nft", "-j", "list", "ruleset"])
        for flow, decision in [*FLOWS, (UNQUEUED, "")]:
            before = _counters(topo)
            [obs] = topo.send_many([flow], timeout=0.2)
            after = _counters(topo)
            reached = sorted(k for k in after if after[k] > before.get(k, 0))
            if flow[2] == NODE:
                # The node answers a connection to a closed port with a RST, which leaves through
                # postrouting: a packet of the node's own, not the one traced.
                reached = [k for k in reached if k[0] != "postrouting"]
            entries = topo.conntrack_for(obs)
            for rs in (_rs(dump_text, "nft.txt"), _rs(dump_json, "nft.json")):
                outcome = _trace(rs, flow, obs.sport)
                # The counting rules kpa's walk matched are the ones whose counters went up.
                assert sorted(set(_table_hops(outcome)) & set(after)) == reached, (flow, reached, outcome.path)
                assert outcome.verdict == "ACCEPT"
                compared += 1
            # conntrack: the DNAT and the masquerade did happen to these packets.
            if flow[2] == CLUSTER_IP:
                assert [e.dnat for e in entries] == [(WEB, 8080)], flow
            if flow[1] == WEB and flow[2] == REMOTE:
                assert [e.snat for e in entries] == [NODE], flow
            if not decision:
                assert reached == []
                continue
            # The queue rule kpa stops at is the first counting rule the packet reached.
            for rs in (queued, queued_json):
                plain = _trace(rs, flow, obs.sport)
                assert plain.verdict == "QUEUE"
                assert _table_hops(plain)[-1] == reached[0]
                judged = _trace(rs, flow, obs.sport, objects)
                reason = judged.reason + " ".join(judged.state.notes)
                assert f"decided by kube-network-policies (queue 100): {decision}" in reason, reason
                assert judged.verdict == ("ACCEPT" if decision.startswith("allowed") else "DROP")
                compared += 1
        topo.run_in("node", ["nft", "flush", "ruleset"])
    assert compared == 2 * (len(FLOWS) + 1) + 2 * len(FLOWS)


def test_queue_table_loads_where_the_kernel_has_nft_queue() -> None:
    skip_without("nft-queue", nft_queue_missing())
    objects = load_objects([str(CLUSTER)])
    opts = KnpOptions(node="node-1")
    for payload, as_json in ((render_text(objects, opts), False), (render_json(objects, opts), True)):
        text, js = capture(payload, json_input=as_json)
        for rs in (_rs(text, "nft.txt"), _rs(js, "nft.json")):
            assert recognised(rs)
            flow, decision = FLOWS[0]
            outcome = _trace(rs, flow, 40000, objects)
            assert outcome.verdict == "DROP"
            assert decision in outcome.reason


def test_ipv6_queue_rules_on_a_dual_stack_node(tmp_path: Path) -> None:
    """The podips-v6 rules: IPv6 flows on a dual-stack node reach the rules kpa says, and are judged by policy."""
    from .test_kuberouter_kernel import V6, dual_stack_cluster

    objects = load_objects([str(dual_stack_cluster(tmp_path))])
    counted_payload = render_text(objects, KnpOptions(node="node-1", queue=False))
    queued = _rs(render_text(objects, KnpOptions(node="node-1")), "kube-network-policies.nft")
    web6, client6, remote6 = V6[WEB], V6[CLIENT], V6[REMOTE]
    flows: list[tuple[Flow, str]] = [
        (("client_pod", client6, web6, "tcp", 8080), "allowed — pod/b/client -> pod/a/web port 8080/TCP"),
        (("external", "2001:db8::10", web6, "tcp", 80), "allowed — 2001:db8::10 -> pod/a/web port 80/TCP"),
        (("external", "2001:db8::10", web6, "tcp", 8080), "denied — 2001:db8::10 -> pod/a/web port 8080/TCP"),
        ((f"pod:{web6}", web6, remote6, "tcp", 443), "denied — pod/a/web -> pod/b/remote port 443/TCP"),
    ]
    v4_of = {v6: v4 for v4, v6 in V6.items()}
    compared = 0
    with Topology(default_spec("ipv4")) as topo:
        topo.add_ipv6(default_spec("ipv6"))
        topo.load_nft(counted_payload)
        dump = topo.run_in("node", ["nft", "-j", "list", "ruleset"])
        assert web6 in dump and client6 in dump
        for flow, decision in flows:
            before = _counters(topo)
            [obs] = topo.send_many([flow], timeout=0.2)
            after = _counters(topo)
            reached = sorted(k for k in after if after[k] > before.get(k, 0))
            origin, src, dst, proto, dport = flow
            spec = PacketSpec(family=Family.IPV6, src=src, dst=dst, proto=proto, sport=obs.sport, dport=dport,
                              iif="eth0" if origin == "external" else _cali_name(v4_of[src or ""]),
                              oif="eth0" if dst == remote6 else _cali_name(v4_of[dst]))
            for rs, objs in ((_rs(dump, "nft.json"), None), (queued, objects)):
                ctx = TraceContext(local=node_local_addresses([NODE, "fd00:10::2"]))
                ctx.queue_decider = queue_decider(rs, objs)
                [outcome] = trace(rs, spec, ctx).outcomes
                hops = [(h.chain, h.rule) for h in outcome.path if h.table == TABLE and h.rule is not None]
                if objs is None:
                    assert sorted(set(hops) & set(after)) == reached, (flow, reached, hops)
                    assert reached and all(chain == "postrouting" for chain, _ in reached)
                else:
                    # kpa stops at the first of them, and judges the packet there.
                    assert hops[-1] == reached[0], (hops, reached)
                    assert f"decided by kube-network-policies (queue 100): {decision}" in \
                        outcome.reason + " ".join(outcome.state.notes)
                compared += 1
        topo.run_in("node", ["nft", "flush", "ruleset"])
    assert compared == 2 * len(flows)


# Another table of the node, met before the queue: it drops client -> web on 8080 (which the policies allow).
NODE_FILTER = f"""table ip node-filter {{
	chain forward {{
		type filter hook forward priority filter; policy accept;
		ip saddr {CLIENT} ip daddr {WEB} tcp dport 8080 counter drop
	}}
}}
"""


def _filter_drops(topo: Topology) -> int:
    doc = json.loads(topo.run_in("node", ["nft", "-j", "list", "table", "ip", "node-filter"]))
    return sum(e["counter"]["packets"] for item in doc["nftables"] if "rule" in item
               for e in item["rule"]["expr"] if "counter" in e)


def test_matrix_cells_decided_before_the_queue_agree_with_the_kernel() -> None:
    """`kpa policy matrix --rules` says, per cell, whether the queue or a rule before it decided.

    The table without the DNS workaround (`udp dport 53 accept` first) and another table
    dropping client -> web are loaded with queue statements written as `counter`; each
    cell the kernel can send is sent. A cell the matrix says the queue decided must reach
    that very queue rule first (its counter); a cell decided before the queue must reach
    no queue rule, and the kernel must let it through (a confirmed conntrack entry) or
    drop it (the other table's counter, no entry) as the matrix says.
    """
    from dataclasses import replace

    from kpa.k8s.kubenetpol import EnforcedQueueMatrix

    objects = load_objects([str(CLUSTER)])
    opts = KnpOptions(node="node-1", dns_workaround=False, fail_open=False)
    knp = _rs(render_text(objects, opts), "kube-network-policies.nft")
    [table] = [t for t in knp.tables if t.name == TABLE]
    queue_rules = {(c.name, k + 1) for c in table.chains.values() for k, r in enumerate(c.rules) if "queue" in r.text}
    rs = combine([], [_rs(NODE_FILTER, "node-filter.nft"), knp])
    sources = [("client_pod", CLIENT), (f"pod:{WEB}", WEB), (f"pod:{DB}", DB), ("external", "203.0.113.10")]
    targets = [WEB, DB, REMOTE]
    counts = {"queued": 0, "before-allowed": 0, "before-denied": 0}
    with Topology(default_spec("ipv4")) as topo:
        topo.load_nft(NODE_FILTER + render_text(objects, replace(opts, queue=False)))
        for port, proto in ((8080, "tcp"), (53, "udp")):
            m = EnforcedQueueMatrix(rs, objects, [NODE], [s for _, s in sources], targets, port, proto.upper())
            for i, (origin, src) in enumerate(sources):
                for j, dst in enumerate(targets):
                    e = m.answer(i, j)
                    if e is None or (origin == "external" and dst == REMOTE):
                        continue  # the same address, or a path the topology does not route
                    before, drops = _counters(topo), _filter_drops(topo)
                    [obs] = topo.send_many([(origin, src, dst, proto, port)], timeout=0.2)  # type: ignore[list-item]
                    after = _counters(topo)
                    reached = sorted(k for k in after if after[k] > before.get(k, 0) and k in queue_rules)
                    passed = bool(topo.conntrack_for(obs))
                    cell = (src, dst, port, e)
                    if "queued to its program" in (e.where or ""):
                        # The deciding rule is the first queue rule the real packet reached.
                        chain, number = reached[0]
                        assert e.deciding is not None and e.deciding.endswith(table.chains[chain].rules[number - 1].text), cell
                        counts["queued"] += 1
                    else:
                        assert reached == [], cell
                        assert e.verdict in ("allowed", "denied"), cell
                        assert passed == (e.verdict == "allowed"), cell
                        if e.verdict == "denied":
                            assert _filter_drops(topo) > drops and "node-filter/forward" in (e.where or ""), cell
                        counts["before-" + e.verdict] += 1
        topo.run_in("node", ["nft", "flush", "ruleset"])
    # Each kind of cell occurred: judged at the queue, let through before it (DNS, pods outside the
    # sets), dropped before it (the other table).
    assert all(counts.values()) and sum(counts.values()) == 2 * 9, counts
