"""Truth tables derived from the networking.k8s.io/v1 API reference.

Each test builds a small cluster (see world.py), applies policies, and compares the
whole connectivity matrix with the table the API's semantics give; every cell is also
checked against `PolicyEngine.decide`. `.` is allowed and `X` denied, sources down,
destinations across, as the Kubernetes e2e netpol suite prints them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.policy.world import (
    default_objects,
    engine_for,
    namespace,
    pod,
    policy,
    table_text,
    truth_table,
)

ALL_ALLOWED = """
- x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a . . . . . . . . .
x/b . . . . . . . . .
x/c . . . . . . . . .
y/a . . . . . . . . .
y/b . . . . . . . . .
y/c . . . . . . . . .
z/a . . . . . . . . .
z/b . . . . . . . . .
z/c . . . . . . . . .
"""


def run(tmp_path: Path, policies: list[dict[str, Any]], port: int = 80,
        protocol: str = "TCP", extra: list[dict[str, Any]] | None = None) -> str:
    engine = engine_for(tmp_path, default_objects() + (extra or []) + policies)
    return truth_table(engine, port, protocol)


def test_without_policies_everything_is_allowed(tmp_path: Path) -> None:
    assert run(tmp_path, []) == table_text(ALL_ALLOWED)


def test_empty_pod_selector_with_no_rules_isolates_the_whole_namespace(tmp_path: Path) -> None:
    deny = policy("x", "deny-all", {"podSelector": {}})
    assert run(tmp_path, [deny]) == table_text("""
        - x/a x/b x/c y/a y/b y/c z/a z/b z/c
        x/a X X X . . . . . .
        x/b X X X . . . . . .
        x/c X X X . . . . . .
        y/a X X X . . . . . .
        y/b X X X . . . . . .
        y/c X X X . . . . . .
        z/a X X X . . . . . .
        z/b X X X . . . . . .
        z/c X X X . . . . . .
    """)


def test_pod_selector_alone_means_pods_of_the_policy_namespace(tmp_path: Path) -> None:
    allow = policy("x", "from-b", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
    })
    # Only x/b reaches x/a: y/b and z/b carry the same labels but live elsewhere.
    assert run(tmp_path, [allow]) == table_text("""
        - x/a x/b x/c y/a y/b y/c z/a z/b z/c
        x/a X . . . . . . . .
        x/b . . . . . . . . .
        x/c X . . . . . . . .
        y/a X . . . . . . . .
        y/b X . . . . . . . .
        y/c X . . . . . . . .
        z/a X . . . . . . . .
        z/b X . . . . . . . .
        z/c X . . . . . . . .
    """)


def test_namespace_selector_alone_means_every_pod_of_those_namespaces(tmp_path: Path) -> None:
    allow = policy("x", "from-y", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}],
    })
    assert run(tmp_path, [allow]) == table_text("""
        - x/a x/b x/c y/a y/b y/c z/a z/b z/c
        x/a X . . . . . . . .
        x/b X . . . . . . . .
        x/c X . . . . . . . .
        y/a . . . . . . . . .
        y/b . . . . . . . . .
        y/c . . . . . . . . .
        z/a X . . . . . . . .
        z/b X . . . . . . . .
        z/c X . . . . . . . .
    """)


def test_both_selectors_in_one_peer_are_an_and_in_two_peers_an_or(tmp_path: Path) -> None:
    both = policy("x", "and", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{
            "namespaceSelector": {"matchLabels": {"ns": "y"}},
            "podSelector": {"matchLabels": {"pod": "b"}},
        }]}],
    })
    assert run(tmp_path, [both]).splitlines()[1:] == table_text("""
        - x/a x/b x/c y/a y/b y/c z/a z/b z/c
        x/a X . . . . . . . .
        x/b X . . . . . . . .
        x/c X . . . . . . . .
        y/a X . . . . . . . .
        y/b . . . . . . . . .
        y/c X . . . . . . . .
        z/a X . . . . . . . .
        z/b X . . . . . . . .
        z/c X . . . . . . . .
    """).splitlines()[1:]
    either = policy("x", "or", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"ns": "y"}}},
            {"podSelector": {"matchLabels": {"pod": "b"}}},
        ]}],
    })
    assert run(tmp_path / "..", [either]).splitlines()[1:] == table_text("""
        - x/a x/b x/c y/a y/b y/c z/a z/b z/c
        x/a X . . . . . . . .
        x/b . . . . . . . . .
        x/c X . . . . . . . .
        y/a . . . . . . . . .
        y/b . . . . . . . . .
        y/c . . . . . . . . .
        z/a X . . . . . . . .
        z/b X . . . . . . . .
        z/c X . . . . . . . .
    """).splitlines()[1:]


def test_empty_namespace_selector_means_every_namespace(tmp_path: Path) -> None:
    allow = policy("x", "from-any-b", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {},
                               "podSelector": {"matchLabels": {"pod": "b"}}}]}],
    })
    column = [row.split()[1] for row in run(tmp_path, [allow]).splitlines()[1:]]
    assert column == [".", ".", "X", "X", ".", "X", "X", ".", "X"]  # x/a reaches itself


def test_match_expressions_in_notin_exists_doesnotexist(tmp_path: Path) -> None:
    extra = [pod("x", "d", ["10.0.1.4"], labels={"pod": "d", "tier": "db"})]

    def sources(expr: dict[str, Any]) -> list[str]:
        pol = policy("x", "sel", {
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"podSelector": {"matchExpressions": [expr]}}]}],
        })
        engine = engine_for(tmp_path, default_objects() + extra + [pol])
        rows = truth_table(engine).splitlines()[1:]
        # Column x/a: which other pods of x may reach it.
        return [r.split()[0] for r in rows
                if r.split()[1] == "." and r.startswith("x/") and not r.startswith("x/a ")]

    assert sources({"key": "pod", "operator": "In", "values": ["b", "d"]}) == ["x/b", "x/d"]
    # NotIn also selects pods without the key at all.
    assert sources({"key": "tier", "operator": "NotIn", "values": ["db"]}) == ["x/b", "x/c"]
    assert sources({"key": "tier", "operator": "Exists"}) == ["x/d"]
    assert sources({"key": "tier", "operator": "DoesNotExist"}) == ["x/b", "x/c"]


def test_egress_isolation_and_both_directions_must_allow(tmp_path: Path) -> None:
    egress = policy("x", "a-to-y", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "policyTypes": ["Egress"],
        "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}],
    })
    ingress = policy("y", "only-from-x-b", {
        "podSelector": {},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "x"}},
                               "podSelector": {"matchLabels": {"pod": "b"}}}]}],
    })
    # x/a may only send to y, and y only accepts x/b: so x/a reaches nothing.
    assert run(tmp_path, [egress, ingress]) == table_text("""
        - x/a x/b x/c y/a y/b y/c z/a z/b z/c
        x/a X X X X X X X X X
        x/b . . . . . . . . .
        x/c . . . X X X . . .
        y/a . . . X X X . . .
        y/b . . . X X X . . .
        y/c . . . X X X . . .
        z/a . . . X X X . . .
        z/b . . . X X X . . .
        z/c . . . X X X . . .
    """)


def test_policy_types_default_to_ingress_plus_egress_when_egress_rules_exist(
    tmp_path: Path,
) -> None:
    with_egress = policy("x", "egress-rules", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "egress": [{"to": [{"podSelector": {}}]}],
    })
    rows = run(tmp_path, [with_egress]).splitlines()[1:]
    # Ingress is isolated too (no ingress rules: nothing but x/a itself comes in) ...
    assert [r.split()[1] for r in rows] == ["."] + ["X"] * 8
    # ... and egress only reaches pods of x.
    assert rows[0].split()[1:] == [".", ".", ".", "X", "X", "X", "X", "X", "X"]


def test_an_empty_egress_list_does_not_add_egress_isolation(tmp_path: Path) -> None:
    empty_egress = policy("x", "empty", {"podSelector": {"matchLabels": {"pod": "a"}},
                                         "egress": []})
    rows = run(tmp_path, [empty_egress]).splitlines()[1:]
    assert rows[0].split()[1:] == ["."] * 9
    assert [r.split()[1] for r in rows] == ["."] + ["X"] * 8


def test_egress_only_policy_type_leaves_ingress_open(tmp_path: Path) -> None:
    deny_egress = policy("x", "deny-egress", {"podSelector": {}, "policyTypes": ["Egress"]})
    assert run(tmp_path, [deny_egress]) == table_text("""
        - x/a x/b x/c y/a y/b y/c z/a z/b z/c
        x/a X X X X X X X X X
        x/b X X X X X X X X X
        x/c X X X X X X X X X
        y/a . . . . . . . . .
        y/b . . . . . . . . .
        y/c . . . . . . . . .
        z/a . . . . . . . . .
        z/b . . . . . . . . .
        z/c . . . . . . . . .
    """)


def test_policies_are_additive(tmp_path: Path) -> None:
    from_y = policy("x", "from-y", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}],
    })
    from_z_c = policy("x", "from-z-c", {
        "podSelector": {},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}},
                               "podSelector": {"matchLabels": {"pod": "c"}}}]}],
    })
    rows = run(tmp_path, [from_y, from_z_c]).splitlines()[1:]
    assert [r.split()[1] for r in rows] == [".", "X", "X", ".", ".", ".", "X", "X", "."]
    assert [r.split()[2] for r in rows] == ["X", ".", "X", "X", "X", "X", "X", "X", "."]


def test_empty_or_absent_from_and_ports_mean_everyone_and_every_port(tmp_path: Path) -> None:
    for spec_rule in ({}, {"from": []}, {"ports": []}, {"from": [], "ports": []}):
        allow = policy("x", "open", {"podSelector": {}, "ingress": [spec_rule]})
        assert run(tmp_path, [allow], port=81) == table_text(ALL_ALLOWED), spec_rule


PORT_POLICY = {
    "podSelector": {"matchLabels": {"pod": "a"}},
    "ingress": [{"ports": []}],
}


def _x_a_column(tmp_path: Path, ports: list[dict[str, Any]], port: int, protocol: str,
                extra: list[dict[str, Any]] | None = None) -> str:
    pol = policy("x", "ports", {"podSelector": {"matchLabels": {"pod": "a"}},
                                "ingress": [{"ports": ports}]})
    rows = run(tmp_path, [pol], port, protocol, extra).splitlines()[2:]
    # Every source but x/a itself (a pod cannot block access to itself).
    return "".join(r.split()[1] for r in rows)


def test_numeric_ports_protocol_default_and_end_port(tmp_path: Path) -> None:
    assert _x_a_column(tmp_path, [{"port": 80}], 80, "TCP") == "........"
    assert _x_a_column(tmp_path, [{"port": 80}], 81, "TCP") == "XXXXXXXX"
    # protocol defaults to TCP, so UDP 80 is not admitted.
    assert _x_a_column(tmp_path, [{"port": 80}], 80, "UDP") == "XXXXXXXX"
    assert _x_a_column(tmp_path, [{"port": 80, "protocol": "UDP"}], 80, "UDP") == "........"
    assert _x_a_column(tmp_path, [{"port": 80, "protocol": "SCTP"}], 80, "SCTP") == "........"
    ranged = [{"port": 80, "endPort": 81}]
    assert _x_a_column(tmp_path, ranged, 81, "TCP") == "........"
    assert _x_a_column(tmp_path, ranged, 82, "TCP") == "XXXXXXXX"
    # A ports entry with only a protocol admits every port of that protocol.
    assert _x_a_column(tmp_path, [{"protocol": "UDP"}], 5353, "UDP") == "........"
    assert _x_a_column(tmp_path, [{"protocol": "UDP"}], 80, "TCP") == "XXXXXXXX"


def test_named_ports_resolve_on_the_destination_by_name_and_protocol(tmp_path: Path) -> None:
    assert _x_a_column(tmp_path, [{"port": "serve-81-tcp"}], 81, "TCP") == "........"
    assert _x_a_column(tmp_path, [{"port": "serve-81-tcp"}], 80, "TCP") == "XXXXXXXX"
    # The name exists only for UDP: a TCP rule (the default) does not resolve it.
    assert _x_a_column(tmp_path, [{"port": "serve-80-udp"}], 80, "TCP") == "XXXXXXXX"
    assert _x_a_column(tmp_path, [{"port": "serve-80-udp", "protocol": "UDP"}], 80,
                       "UDP") == "........"


def test_named_egress_ports_resolve_per_destination_pod(tmp_path: Path) -> None:
    # y/a serves "web" on 8080, y/b on 80: an egress rule for "web" admits 80 only to y/b.
    extra = [
        pod("y", "web-a", ["10.0.2.10"], {"pod": "web-a"},
            ports=[{"name": "web", "containerPort": 8080}]),
        pod("y", "web-b", ["10.0.2.11"], {"pod": "web-b"},
            ports=[{"name": "web", "containerPort": 80}]),
    ]
    pol = policy("x", "egress-web", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "policyTypes": ["Egress"],
        "egress": [{"ports": [{"port": "web"}]}],
    })
    engine = engine_for(tmp_path, default_objects() + extra + [pol])
    header, row = truth_table(engine).splitlines()[:2]
    cells = dict(zip(header.split()[1:], row.split()[1:], strict=True))
    assert cells["y/web-b"] == "." and cells["y/web-a"] == "X" and cells["y/a"] == "X"


def test_ip_block_is_cidr_minus_except_and_accepts_host_bits(tmp_path: Path) -> None:
    # 10.0.2.77/16 has host bits set; the API accepts it and it means 10.0.0.0/16.
    allow = policy("x", "ipblock", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.2.77/16",
                                           "except": ["10.0.2.0/31", "10.0.3.0/24"]}}]}],
    })
    rows = run(tmp_path, [allow]).splitlines()[1:]
    # Pods of x (10.0.1.x), y/b and y/c (10.0.2.2-3) are in; y/a (10.0.2.1) and z are not.
    assert "".join(r.split()[1] for r in rows) == "...X..XXX"


def test_host_network_pods_are_never_selected_and_seen_with_the_node_address(
    tmp_path: Path,
) -> None:
    # On another node than the other pods: traffic between a pod and its own node is
    # always allowed (see test_traffic_with_the_pod_s_own_node_is_always_allowed).
    host = pod("x", "h", ["192.168.0.5"], labels={"pod": "a"}, host_network=True,
               node="node-2")
    deny_all = policy("x", "deny-all", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})
    from_nodes = policy("y", "from-nodes", {
        "podSelector": {},
        "ingress": [{"from": [{"podSelector": {}, "namespaceSelector": {}},
                              {"ipBlock": {"cidr": "192.168.0.0/24"}}]}],
    })
    only_pods = policy("z", "from-pods", {
        "podSelector": {},
        "ingress": [{"from": [{"namespaceSelector": {}}]}],
    })
    engine = engine_for(tmp_path, [*default_objects(), host, deny_all, from_nodes, only_pods])
    table = truth_table(engine).splitlines()
    header = table[0].split()[1:]
    row = dict(zip(header, table[header.index("x/h") + 1].split()[1:], strict=True))
    column = {r.split()[0]: r.split()[1 + header.index("x/h")] for r in table[1:]}
    # x/h carries pod=a in a namespace with a deny-all policy, yet nothing isolates it:
    # only the senders' own egress isolation (x/a, x/b, x/c) stops traffic to it.
    assert {k for k, v in column.items() if v == "X"} == {"x/a", "x/b", "x/c"}
    assert row["x/a"] == "X"  # x/a is isolated and admits nobody
    assert row["y/a"] == "."  # the ipBlock on the node range admits it
    assert row["z/a"] == "X"  # a namespaceSelector never matches a hostNetwork pod


def test_outside_addresses_are_matched_by_ip_block_only(tmp_path: Path) -> None:
    allow = policy("x", "web", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {}},
                              {"ipBlock": {"cidr": "203.0.113.0/24"}}]}],
    })
    engine = engine_for(tmp_path, [*default_objects(), allow])
    x_a = engine.subject(engine.pods[0])
    assert x_a.name == "pod/x/a"
    inside = engine.decide(engine.subject(ip="203.0.113.9"), x_a, 80)
    outside = engine.decide(engine.subject(ip="198.51.100.1"), x_a, 80)
    assert inside.allowed and inside.ingress.admitted_by[0].peer == 1
    assert not outside.allowed
    assert "198.51.100.1 is not a pod" in " ".join(outside.ingress.misses[0].reasons)
    # Egress to an outside address: a named port never resolves there.
    egress = policy("y", "egress", {"podSelector": {}, "policyTypes": ["Egress"],
                                    "egress": [{"ports": [{"port": "serve-80-tcp"}]}]})
    engine = engine_for(tmp_path, [*default_objects(), egress])
    y_a = next(engine.subject(p) for p in engine.pods if p.namespace == "y")
    assert not engine.decide(y_a, engine.subject(ip="198.51.100.1"), 80).allowed
    assert engine.decide(y_a, engine.subject(ip="10.0.1.1"), 80).allowed


def test_ipv6_and_dual_stack_pods_are_judged_per_family(tmp_path: Path) -> None:
    docs = [
        namespace("x"),
        pod("x", "a", ["10.0.1.1", "fd00::1"]),
        pod("x", "b", ["10.0.1.2", "fd00::2"]),
        pod("x", "v6", ["fd00::3"], labels={"pod": "v6"}),
        policy("x", "v6-only", {
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"ipBlock": {"cidr": "fd00::/64", "except": ["fd00::3/128"]}}]}],
        }),
    ]
    engine = engine_for(tmp_path, docs)
    pods = {p.name: p for p in engine.pods}
    x_a4, x_a6 = engine.subject(pods["a"], family=4), engine.subject(pods["a"], family=6)
    assert x_a6.ip == "fd00::1"
    b4, b6 = engine.subject(pods["b"], family=4), engine.subject(pods["b"], family=6)
    assert not engine.decide(b4, x_a4, 80).allowed
    assert engine.decide(b6, x_a6, 80).allowed
    assert not engine.decide(engine.subject(pods["v6"], family=6), x_a6, 80).allowed
    v6_table = truth_table(engine, sources=[engine.subject(p, family=6) for p in engine.pods],
                           targets=[x_a6])
    assert v6_table.split()[2:] == ["x/a", ".", "x/b", ".", "x/v6", "X"]


def test_namespace_without_object_has_only_its_name_label(tmp_path: Path) -> None:
    docs = [
        pod("w", "a", ["10.0.9.1"]),
        namespace("x"),
        pod("x", "a", ["10.0.1.1"]),
        policy("x", "from-w", {
            "podSelector": {},
            "ingress": [{"from": [{"namespaceSelector": {
                "matchLabels": {"kubernetes.io/metadata.name": "w"}}}]}],
        }),
    ]
    engine = engine_for(tmp_path, docs)
    w_a, x_a = (engine.subject(p) for p in sorted(engine.pods, key=lambda p: p.namespace))
    assert engine.decide(w_a, x_a, 80).allowed
    assert engine.assumed_namespaces == {"w"}
    assert "no Namespace object for w" in engine.warnings()[0]


def test_an_address_in_one_rule_except_and_another_rule_cidr_is_allowed(tmp_path: Path) -> None:
    # Egress from x/a: 10.0.0.0/16 except 10.0.2.0/24 in one rule, 10.0.2.2/32 in another.
    egress = policy("x", "cidrs", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "policyTypes": ["Egress"],
        "egress": [
            {"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.2.0/24"]}}]},
            {"to": [{"ipBlock": {"cidr": "10.0.2.2/32"}}]},
        ],
    })
    row = run(tmp_path, [egress]).splitlines()[1].split()[1:]
    # x/* and z/* through the first rule, y/b through the second, y/a and y/c not at all.
    assert row == [".", ".", ".", "X", ".", "X", ".", ".", "."]


def test_ingress_and_egress_are_controlled_independently(tmp_path: Path) -> None:
    # x/a denies all ingress but may send anywhere; y/a may receive from anyone but send
    # only to z.
    ingress_only = policy("x", "deny-in", {"podSelector": {"matchLabels": {"pod": "a"}},
                                           "policyTypes": ["Ingress"]})
    egress_only = policy("y", "to-z", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "policyTypes": ["Egress"],
        "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}],
    })
    table = run(tmp_path, [ingress_only, egress_only]).splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in table[1:]}
    assert rows["x/a"] == ["."] * 9
    assert rows["y/a"] == ["X", "X", "X", ".", "X", "X", ".", ".", "."]
    assert [r[0] for r in rows.values()] == ["."] + ["X"] * 8


def test_a_policy_allowing_sctp_does_not_admit_tcp_on_the_same_port(tmp_path: Path) -> None:
    sctp = policy("x", "sctp", {"podSelector": {"matchLabels": {"pod": "a"}},
                                "ingress": [{"ports": [{"port": 80, "protocol": "SCTP"}]}]})
    assert "".join(r.split()[1] for r in run(tmp_path, [sctp], 80, "TCP").splitlines()[1:]) \
        == ".XXXXXXXX"  # only x/a itself
    assert "".join(r.split()[1] for r in run(tmp_path, [sctp], 80, "SCTP").splitlines()[1:]) \
        == "........."


def test_traffic_with_the_pod_s_own_node_is_always_allowed(tmp_path: Path) -> None:
    # x/a and y/a run on node-1; the Node's address and a hostNetwork agent on node-1 may
    # reach them (and they the node) whatever the policies say; node-2's agent may not.
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]}}
    agent1 = pod("y", "agent1", ["192.168.0.1"], {"agent": "1"}, ports=[],
                 host_network=True, node="node-1")
    agent2 = pod("y", "agent2", ["192.168.0.2"], {"agent": "2"}, ports=[],
                 host_network=True, node="node-2")
    deny = policy("x", "deny-all", {"podSelector": {},
                                    "policyTypes": ["Ingress", "Egress"]})
    engine = engine_for(tmp_path, [*default_objects(), node, agent1, agent2, deny])
    pods = {f"{p.namespace}/{p.name}": engine.subject(p) for p in engine.pods}
    into = engine.decide(pods["y/agent1"], pods["x/a"], 80)
    assert into.allowed and "its own node (node-1)" in into.ingress.reason()
    out = engine.decide(pods["x/a"], engine.subject(ip="192.168.0.1"), 10250)
    assert out.allowed and "its own node" in out.egress.reason()
    assert not engine.decide(pods["y/agent2"], pods["x/a"], 80).allowed
    # Other pods of the node are not the node: x/b still cannot reach x/a.
    assert not engine.decide(pods["x/b"], pods["x/a"], 80).allowed
    table = truth_table(engine).splitlines()
    header = table[0].split()[1:]
    rows = {line.split()[0]: dict(zip(header, line.split()[1:], strict=True))
            for line in table[1:]}
    assert rows["y/agent1"]["x/a"] == "." and rows["y/agent2"]["x/a"] == "X"
    assert rows["x/a"]["y/agent1"] == "." and rows["x/a"]["y/agent2"] == "X"
    assert rows["x/a"]["x/a"] == "." and rows["x/a"]["x/b"] == "X"
