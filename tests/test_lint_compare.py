"""The comparison `kpa lint` and `kpa show` make gives the full computation's answers.

Work done on the ruleset before the cluster objects are read (`rules_side`,
`rules_ahead`, `service_ports_ahead`) must leave the correlation, the findings and
the views exactly as computing everything after the objects are read; where the
rules' half would depend on the objects it must step aside. Each shortcut is held
to the full computation on every fixture and on generated clusters with drift, and
a deliberately broken variant is shown to give different answers.
"""

from __future__ import annotations

import ipaddress
import json
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kpa.gen.cluster import random_cluster
from kpa.gen.iptables import render_restore
from kpa.gen.objects import to_objects
from kpa.gen.options import ProxierOptions
from kpa.k8s import kubeproxy, naming
from kpa.k8s.correlate import (
    Actual,
    EndpointRef,
    Expected,
    FamilyName,
    Mode,
    RulesSide,
    _Collected,
    _endpoint_chain,
    _ip_version,
    _iptables_actual,
    _object_ports,
    _ObjPort,
    correlate,
    expected_port,
    kube_proxy_layouts,
    rules_side,
)
from kpa.k8s.kubeproxy import (
    EndpointInfo,
    categorize_endpoints,
    hash_names,
    service_ports,
    service_ports_ahead,
    traffic_policy,
)
from kpa.k8s.lint import _endpoint_drift, lint, rules_ahead
from kpa.k8s.naming import service_port_name
from kpa.k8s.objects import ClusterObjects, canonical_ip, load_objects, objects_from_documents
from kpa.k8s.showview import describe, describe_ahead, describe_objects
from kpa.netfilter.model import Ruleset
from kpa.sources import parse_text

FIXTURES = Path(__file__).parent / "fixtures"
IPT = sorted((FIXTURES / "iptables").glob("*.save"))
NFT = sorted((FIXTURES / "nft" / "kube-proxy").glob("*.v[46].nft")) + sorted(
    (FIXTURES / "nft" / "kube-proxy").glob("*.v[46].json"))


def _fmt(path: Path) -> str:
    return "iptables" if path.suffix == ".save" else ("nft-json" if path.suffix == ".json" else "nft-text")


def _fixture(path: Path) -> tuple[Callable[[], Ruleset], ClusterObjects, str]:
    scenario = path.name.split(".")[0]
    meta = json.loads((FIXTURES / "clusters" / f"{scenario}.meta.json").read_text())
    objects = load_objects([str(FIXTURES / "clusters" / f"{scenario}.yaml")])
    text = path.read_text()
    return (lambda: parse_text(text, str(path), _fmt(path))), objects, meta["node_name"]


def _strip_comments(text: str) -> str:
    return re.sub(r' -m comment --comment ("[^"]*"|\S+)', "", text)


def _drifted(seed: int, family: str, services: int = 120) -> Iterator[tuple[str, str, ClusterObjects]]:
    """(name, iptables text, objects) of a generated cluster, as is and with drift on either side."""
    cluster = random_cluster(seed, services, 4, (family,))  # type: ignore[arg-type]
    text = render_restore(cluster, ProxierOptions(node_name="node-0"), family)  # type: ignore[arg-type]
    docs = to_objects(cluster)
    objects = objects_from_documents(docs)
    yield "as-is", text, objects
    rng = random.Random(seed)
    # Objects drift: a deleted Service, an EndpointSlice gone, a port renamed.
    services_docs = [d for d in docs if d["kind"] == "Service"]
    gone = rng.choice(services_docs)["metadata"]["name"]
    slice_gone = rng.choice([d for d in docs if d["kind"] == "EndpointSlice"])
    fewer = [d for d in docs if not (d["kind"] == "Service" and d["metadata"]["name"] == gone)
             and d is not slice_gone]
    yield "objects-drift", text, objects_from_documents(fewer)
    # Rules drift: a Service chain's jump to an endpoint dropped (an orphan endpoint chain),
    # an endpoint chain renamed, a probability changed.
    lines = text.split("\n")
    jumps = [i for i, line in enumerate(lines) if line.startswith("-A KUBE-SVC-") and "-j KUBE-SEP-" in line]
    for i in rng.sample(jumps, 3):
        lines[i] = ""
    kept = [i for i in jumps if lines[i]]
    i, j = rng.sample(kept, 2)
    lines[i] = lines[i].split(" -j ")[0] + " -j " + lines[j].split(" -j ")[1]
    probs = [i for i, line in enumerate(lines) if "--probability" in line]
    i = rng.choice(probs)
    lines[i] = re.sub(r"--probability \S+", "--probability 0.10000000009", lines[i])
    yield "rules-drift", "\n".join(lines), objects
    # Without comments, chains are named by recomputed hashes: the rules' half needs the objects.
    yield "no-comments", _strip_comments(text), objects
    yield "no-comments-drift", _strip_comments("\n".join(lines)), objects_from_documents(fewer)


def _generated() -> Iterator[tuple[str, Callable[[], Ruleset], ClusterObjects, str]]:
    for seed, family in ((3, "ipv4"), (4, "ipv6")):
        for name, text, objects in _drifted(seed, family):
            yield (f"{family}-{name}", (lambda t=text, f=family: parse_text(  # type: ignore[misc]
                t, "gen.save", "iptables")), objects, "node-0")


CASES = [(p.name, *_fixture(p)) for p in IPT + NFT] + list(_generated())


def _lint_json(rs: Ruleset, objects: ClusterObjects, node: str | None, **kw: object) -> list[str]:
    return [json.dumps(f.to_json(), sort_keys=True) for f in lint(rs, objects, node, **kw)]  # type: ignore[arg-type]


def _known(objects: ClusterObjects) -> dict[str, str]:
    return hash_names([(service_port_name(s.namespace, s.name, p.name), p.protocol)
                       for s in objects.services for p in s.ports])


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_the_rules_half_worked_out_first_gives_the_full_answers(case: tuple[object, ...]) -> None:
    _, parse, objects, node = case
    assert callable(parse) and isinstance(objects, ClusterObjects) and isinstance(node, str)
    for who in (node, None):
        full_rs, rs = parse(), parse()
        side = rules_side(rs)
        assert correlate(rs, objects, who, side) == correlate(full_rs, objects, who)
        assert side.collected is None  # used once
        full_rs, rs = parse(), parse()
        assert _lint_json(rs, objects, who, ahead=rules_ahead(rs)) == _lint_json(full_rs, objects, who)
    # show: the views named by comments alone are the views named with the objects' hashes,
    # and their documents, completed with the objects, are describe's, for any subset kept.
    rs, full_rs = parse(), parse()
    early = service_ports_ahead(rs)
    full_views = service_ports(full_rs, _known(objects))
    if early is not None:
        assert [v.to_json() for v in early] == [v.to_json() for v in full_views]
    ahead = describe_ahead(rs)
    assert (ahead is None) == (early is None)
    if ahead is not None:
        views, described = ahead
        assert describe_objects(described, objects) == describe(full_views, full_rs, objects)
        rs, full_rs = parse(), parse()
        views, described = describe_ahead(rs) or ([], [])
        full_views = service_ports(full_rs, _known(objects))
        kept = {id(v) for i, v in enumerate(views) if i % 3 == 1}
        part = describe_objects([d for d in described if id(d.view) in kept], objects)
        assert part == describe([v for i, v in enumerate(full_views) if i % 3 == 1], full_rs, objects)


def test_the_rules_half_is_taken_where_comments_name_every_chain_and_left_where_not() -> None:
    taken = {str(c[0]) for c in CASES
             if callable(c[1]) and rules_side(c[1]()).collected is not None}
    assert {p.name for p in IPT} <= taken  # every real capture has kube-proxy's comments
    assert {"ipv4-as-is", "ipv4-objects-drift", "ipv6-as-is", "ipv6-rules-drift"} <= taken
    assert not taken & {"ipv4-no-comments", "ipv6-no-comments", "ipv4-no-comments-drift"}
    assert not taken & {p.name for p in NFT}


def _careless_side(rs: Ruleset) -> RulesSide:
    """A broken rules' half: takes the objects' inputs as empty instead of stepping aside."""
    layouts = list(kube_proxy_layouts(rs))
    out = _Collected()
    views = service_ports(rs, {})
    for _, t in layouts:
        _iptables_actual(rs, t, {}, out, [], views)
    return RulesSide(rs, layouts, out)


def test_a_rules_half_that_guesses_the_objects_inputs_gives_other_answers() -> None:
    differs = 0
    for name, parse, objects, node in CASES:
        if "no-comments" not in str(name):
            continue
        assert callable(parse) and isinstance(objects, ClusterObjects)
        rs, full_rs = parse(), parse()
        careless = correlate(rs, objects, str(node), _careless_side(rs))
        differs += careless != correlate(full_rs, objects, str(node))
        rs = parse()
        assert service_ports(rs, {}) != service_ports(rs, _known(objects))
        assert service_ports_ahead(rs) is None
    assert differs == 4  # every comment-free case


def test_an_orphan_chain_without_a_comment_waits_for_the_objects() -> None:
    """Naming an orphan endpoint chain by hash needs the objects' Service ports."""
    _, text, objects = next(_drifted(3, "ipv4"))
    lines = text.split("\n")
    i = next(i for i, line in enumerate(lines) if line.startswith("-A KUBE-SVC-") and "-j KUBE-SEP-" in line)
    lines[i] = ""
    # Endpoint chains without comments, as kube-proxy writes them for large clusters.
    lines = [_strip_comments(line) if line.startswith("-A KUBE-SEP-") else line for line in lines]
    rs = parse_text("\n".join(lines), "orphan.save", "iptables")
    assert rules_side(rs).collected is None
    full = correlate(parse_text("\n".join(lines), "orphan.save", "iptables"), objects, "node-0")
    assert [o.service for o in full.orphans] and all(o.service for o in full.orphans)
    rs = parse_text("\n".join(lines), "orphan.save", "iptables")
    assert correlate(rs, objects, "node-0", _careless_side(rs)).orphans != full.orphans


def test_a_side_of_another_ruleset_is_not_used() -> None:
    _, parse, objects, node = CASES[0]
    assert callable(parse) and isinstance(objects, ClusterObjects)
    other, rs = parse(), parse()
    side = rules_side(other)
    assert correlate(rs, objects, str(node), side) == correlate(parse(), objects, str(node))
    assert lint(rs, objects, str(node), rules_ahead(other)) == lint(parse(), objects, str(node))


def test_the_unread_stand_in_refuses_every_look() -> None:
    unread = kubeproxy.UNREAD
    for look in (lambda: "x" in unread, lambda: unread["x"], lambda: list(unread), lambda: len(unread),
                 lambda: bool(unread)):
        with pytest.raises(kubeproxy.NeedsObjects):
            look()


def test_commands_answer_the_same_when_the_rules_half_fails(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A failure in the work done while the objects are read leaves it to the full computation."""
    from kpa.cli import _run
    from kpa.k8s import background

    monkeypatch.setattr(background, "spare_core", lambda: True)  # the objects read by a child

    save = FIXTURES / "iptables" / "kitchen-sink.nft.v4.save"
    args = ["-r", str(save), "-c", str(FIXTURES / "clusters" / "kitchen-sink.yaml")]
    runs = [["lint", *args, "--node", "node-a", "-o", "json"], ["show", *args, "-o", "wide"],
            ["lint", "-r", str(save), "-c", str(FIXTURES / "clusters" / "missing.yaml")]]

    def answers() -> list[tuple[int, str, str]]:
        out = []
        for run in runs:
            with pytest.raises(SystemExit) as exit_info:
                _run("kpa", run)
            out.append((int(exit_info.value.code or 0), *capsys.readouterr()))
        return out

    before = answers()
    assert [code for code, _, _ in before] == [0, 0, 2]
    assert "missing.yaml" in before[2][2]

    failed: list[Ruleset] = []

    def fail(rs: Ruleset) -> None:
        failed.append(rs)
        raise RuntimeError("fails")

    monkeypatch.setattr("kpa.k8s.lint.rules_ahead", fail)
    monkeypatch.setattr("kpa.k8s.showview.describe_ahead", fail)
    assert answers() == before
    assert len(failed) == 3
    # With the objects read here, nothing overlaps: the rules' half is left to the full computation.
    monkeypatch.setattr(background, "spare_core", lambda: False)
    assert answers() == before
    assert len(failed) == 3


# ------------------------------------------------------------- the objects' side


def _expected_reference(op: _ObjPort, node_name: str | None, mode: Mode) -> Expected:
    """The expected side as it was computed before: EndpointInfo per endpoint, sorted input."""
    svc, sp, version = op.service, op.port, 6 if op.family == "ipv6" else 4
    same = tuple(ip for ip in svc.external_ips if _ip_version(ip) == version)
    vips = tuple(canonical_ip(i.ip) for i in svc.load_balancer_ingress
                 if i.ip and i.ip_mode != "Proxy" and _ip_version(i.ip) == version)
    ranges = tuple(str(ipaddress.ip_network(c.strip(), strict=False))
                   for c in svc.load_balancer_source_ranges if _ip_version(c.strip()) == version)
    chain_of = naming.sep_chain if mode == "iptables" else naming.nft_endpoint_chain
    infos = tuple(
        EndpointInfo(endpoint=key, ip=ep.address, is_local=node_name is not None and ep.node_name == node_name,
                     ready=ep.ready, serving=ep.serving, terminating=ep.terminating,
                     chain=chain_of(op.name, op.protocol, key))
        for key, ep in sorted((naming.endpoint_string(ep.address, ep.port), ep) for ep in op.endpoints))
    policy = traffic_policy(svc.type, sp.node_port or 0, same, vips, svc.external_traffic_policy,
                            svc.internal_traffic_policy)
    cat = categorize_endpoints(infos, policy)
    node_of = {naming.endpoint_string(e.address, e.port): e.node_name for e in op.endpoints}

    def refs(chosen: tuple[EndpointInfo, ...]) -> tuple[EndpointRef, ...]:
        return tuple(EndpointRef(i.endpoint, i.chain, node_of.get(i.endpoint)) for i in chosen)

    if mode == "iptables":
        names = naming.iptables_service_chains(op.name, op.protocol)
        kinds = ("svc", "svl", "ext", "fw")
    else:
        kinds = ("service", "local", "external", "firewall")
        names = {"service": naming.nft_service_chain(op.name, op.protocol),
                 "local": naming.nft_local_chain(op.name, op.protocol),
                 "external": naming.nft_external_chain(op.name, op.protocol),
                 "firewall": naming.nft_firewall_chain(op.name, op.protocol)}
    chains: dict[str, str] = {}
    if cat.cluster and policy.uses_cluster_endpoints:
        chains[kinds[0]] = names[kinds[0]]
    if cat.local and policy.uses_local_endpoints:
        chains[kinds[1]] = names[kinds[1]]
    if cat.has_any and policy.externally_accessible:
        chains[kinds[2]] = names[kinds[2]]
    if vips and ranges and (cat.has_any or mode != "iptables"):
        chains[kinds[3]] = names[kinds[3]]
    return Expected(
        service_type=svc.type, cluster_ip=op.cluster_ip, node_port=sp.node_port,
        internal_policy_local=policy.internal_policy_local, external_policy_local=policy.external_policy_local,
        externally_accessible=policy.externally_accessible, endpoints=refs(infos), cluster=refs(cat.cluster),
        local=refs(cat.local) if node_name is not None else (), has_endpoints=cat.has_any,
        local_known=node_name is not None, chains=chains,
        health_check_node_port=svc.health_check_node_port if svc.type == "LoadBalancer" else None)


def _object_ports_sorted(objects: ClusterObjects, family: FamilyName) -> list[_ObjPort]:
    """The Service ports with their endpoints sorted by address, as they were listed before."""
    out = []
    for op in _object_ports(objects, family):
        eps = objects.endpoints_for(op.service.namespace, op.service.name, op.port.name, op.port.protocol,
                                    6 if family == "ipv6" else 4)
        assert sorted(eps, key=repr) == sorted(op.endpoints, key=repr)  # the same, in another order
        out.append(_ObjPort(op.service, op.port, op.name, op.protocol, family, op.cluster_ip, eps))
    return out


def _port_objects() -> Iterator[tuple[ClusterObjects, str]]:
    seen: set[int] = set()
    for _, _, objects, node in CASES:
        assert isinstance(objects, ClusterObjects)
        if id(objects) not in seen:
            seen.add(id(objects))
            yield objects, str(node)
    # Every condition and policy mixed: random endpoint states on a generated cluster.
    docs = to_objects(random_cluster(8, 150, 5, ("ipv4", "ipv6")))
    rng = random.Random(8)
    for d in docs:
        if d["kind"] == "EndpointSlice":
            for ep in d.get("endpoints", []):
                ep["conditions"] = {k: rng.random() < 0.5 for k in ("ready", "serving", "terminating")}
                if rng.random() < 0.3:
                    ep["nodeName"] = "node-0"
        if d["kind"] == "Service" and rng.random() < 0.3:
            d["spec"]["internalTrafficPolicy"] = "Local"
    yield objects_from_documents(docs), "node-0"


def test_expected_ports_equal_the_computation_with_endpoint_infos() -> None:
    compared = 0
    for objects, node in _port_objects():
        for family in ("ipv4", "ipv6"):
            for op, sorted_op in zip(_object_ports(objects, family), _object_ports_sorted(objects, family),
                                     strict=True):
                for who in (node, None):
                    for mode in ("iptables", "nftables"):
                        want = _expected_reference(sorted_op, who, mode)  # type: ignore[arg-type]
                        assert expected_port(op, who, mode) == want  # type: ignore[arg-type]
                        compared += 1
    assert compared > 4000


def _drift_reference(e: Expected, a: Actual, local: bool) -> list[tuple[str, str]]:
    """(code, chain) of every endpoint drift finding, by the dictionaries alone."""
    expected = {r.chain: r for r in (e.local if local else e.cluster)}
    actual = {r.chain: r for r in (a.local if local else a.cluster)}
    return ([("stale-endpoint", n) for n in actual if n not in expected]
            + [("missing-endpoint", n) for n in expected if n not in actual])


def test_endpoint_drift_equals_the_dictionary_comparison() -> None:
    drifted = 0
    for _, parse, objects, node in CASES:
        assert callable(parse) and isinstance(objects, ClusterObjects)
        for pc in correlate(parse(), objects, str(node)).ports:
            if pc.expected is None or pc.actual is None or not pc.actual.programmed:
                continue
            for local in (False, True):
                got = [(f.code, f.message.split(" via ")[-1].split(" ")[0] if f.code == "stale-endpoint"
                        else f.message.rsplit("expected ", 1)[-1].rstrip(")"))
                       for f in _endpoint_drift(pc, pc.expected, pc.actual, local)]
                want = _drift_reference(pc.expected, pc.actual, local)
                assert got == want, pc.label
                drifted += bool(want)
    assert drifted >= 4


def test_endpoint_chain_names_read_from_the_rules_are_kube_proxys() -> None:
    """The names rules_side keeps are the hashes; expected ports made with them are unchanged."""
    kept = 0
    for _, parse, objects, node in CASES:
        assert callable(parse) and isinstance(objects, ClusterObjects)
        side = rules_side(parse())
        for (spn, proto, ep), chain in side.names.items():
            assert chain == _endpoint_chain("iptables", spn, proto, ep) == naming.sep_chain(spn, proto, ep)
        kept += len(side.names)
        for family in ("ipv4", "ipv6"):
            for op in _object_ports(objects, family):  # type: ignore[arg-type]
                for mode in ("iptables", "nftables"):
                    assert (expected_port(op, str(node), mode, side.names)  # type: ignore[arg-type]
                            == expected_port(op, str(node), mode))  # type: ignore[arg-type]
    assert kept > 1000
    # A wrong name among them would show in the expected side.
    _, parse, objects, node = next(c for c in CASES if c[0] == "ipv4-as-is")
    assert callable(parse) and isinstance(objects, ClusterObjects)
    side = rules_side(parse())
    key = next(iter(side.names))
    wrong = {**side.names, key: "KUBE-SEP-AAAAAAAAAAAAAAAA"}
    op = next(o for o in _object_ports(objects, "ipv4") if (o.name, o.protocol) == key[:2])
    assert expected_port(op, str(node), "iptables", wrong) != expected_port(op, str(node), "iptables")
    for spn, proto, ep in (("ns/a:p", "tcp", "10.0.0.1:80"), ("ns/b", "udp", "[fd00::1]:53")):
        assert _endpoint_chain("nftables", spn, proto, ep) == naming.nft_endpoint_chain(spn, proto, ep)


# ---------------------------------------------------------------- clusters with the objects' own conditions
# (OBJECT_CASES: also used by test_lint_lean)


def _objects_cases() -> Iterator[tuple[str, Callable[[], Ruleset], ClusterObjects, str]]:
    yield from ((n, p, o, node) for n, p, o, node in CASES)  # type: ignore[misc]
    # Dual-stack objects with random endpoint conditions and policies against each family's rules.
    objects, node = list(_port_objects())[-1]
    cluster = random_cluster(8, 150, 5, ("ipv4", "ipv6"))
    for family in ("ipv4", "ipv6"):
        text = render_restore(cluster, ProxierOptions(node_name="node-0"), family)  # type: ignore[arg-type]
        yield (f"random-conditions-{family}", (lambda t=text: parse_text(t, "gen.save", "iptables")),  # type: ignore[misc]
               objects, node)


OBJECT_CASES = list(_objects_cases())
