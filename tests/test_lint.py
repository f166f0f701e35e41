"""`kpa lint`'s engine: clean captures lint clean; drift between rules and objects is named.

Drift is made the way it happens on a node whose kube-proxy stopped syncing:
the rules stay as kube-proxy wrote them for one cluster state (committed
kernel captures, or fresh ones from a network namespace) while the objects
move on - a Service is deleted, an endpoint comes or goes, a policy flips.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from kpa.gen.capture import capture_iptables, missing_prerequisites
from kpa.gen.cluster import Cluster, Endpoint, Service, ServicePort, random_cluster
from kpa.gen.iptables import render_restore
from kpa.gen.objects import to_objects
from kpa.gen.options import ProxierOptions
from kpa.gen.scenarios import SCENARIOS
from kpa.k8s import naming
from kpa.k8s.lint import CODES, Finding, exit_status, format_text, lint
from kpa.k8s.objects import ClusterObjects, load_objects, objects_from_documents
from kpa.netfilter.model import Ruleset
from kpa.parse.iptables_save import parse_iptables

FIXTURES = Path(__file__).parent / "fixtures"
SAVES = sorted((FIXTURES / "iptables").glob("*.save"))
KITCHEN = FIXTURES / "iptables" / "kitchen-sink.nft.v4.save"
NODE = "node-a"


def _objects(cluster: Cluster) -> ClusterObjects:
    return objects_from_documents(to_objects(cluster))


def _service(cluster: Cluster, key: str) -> Service:
    return next(s for s in cluster.services if s.key == key)


def _kitchen_rules() -> Ruleset:
    return parse_iptables(KITCHEN.read_text(), str(KITCHEN))


def _edited(tmp_path: Path, edit: Callable[[str], str]) -> Ruleset:
    """The kitchen-sink capture edited by hand, saved so locations point at the edited file."""
    path = tmp_path / "edited.save"
    path.write_text(edit(KITCHEN.read_text()))
    return parse_iptables(path.read_text(), str(path))


def _drifted(change: Callable[[Cluster], object], node: str | None = NODE) -> list[Finding]:
    """Lint the committed kitchen-sink capture against objects changed by ``change``."""
    cluster, _ = SCENARIOS["kitchen-sink"]()
    change(cluster)
    return lint(_kitchen_rules(), _objects(cluster), node)


def _of(findings: list[Finding], code: str, service: str | None = None) -> list[Finding]:
    return [f for f in findings if f.code == code and (service is None or f.service == service)]


def _errors(findings: list[Finding]) -> set[tuple[str, str | None]]:
    return {(f.code, f.service) for f in findings if f.severity == "error"}


def _line_of(location: str | None) -> str:
    assert location is not None
    file, line = location.rsplit(":", 1)
    return Path(file).read_text().splitlines()[int(line) - 1]


# ---------------------------------------------------------------- clean captures


@pytest.mark.parametrize("node_given", [True, False])
@pytest.mark.parametrize("save", SAVES, ids=lambda p: p.name)
def test_real_captures_lint_clean_of_errors(save: Path, node_given: bool) -> None:
    scenario = save.name.split(".")[0]
    meta = json.loads((FIXTURES / "clusters" / f"{scenario}.meta.json").read_text())
    objects = load_objects([str(FIXTURES / "clusters" / f"{scenario}.yaml")])
    rs = parse_iptables(save.read_text(), str(save))
    findings = lint(rs, objects, meta["node_name"] if node_given else None)
    assert [f for f in findings if f.severity == "error"] == []
    # The only warnings a faithful capture earns are Local policies without local endpoints.
    assert {f.code for f in findings if f.severity == "warning"} <= {
        "local-policy-no-local-endpoints"
    }
    assert exit_status(findings) == 0


def test_local_policy_without_local_endpoints_is_reported_with_the_drop_rule() -> None:
    findings = lint(_kitchen_rules(), _objects(SCENARIOS["kitchen-sink"]()[0]), NODE)
    ext = _of(findings, "local-policy-no-local-endpoints", "ingress/lb-remote-only:http")
    itp = _of(findings, "local-policy-no-local-endpoints", "monitoring/remote-agent:metrics")
    assert len(ext) == 1 and "externalTrafficPolicy" in ext[0].message
    assert len(itp) == 1 and "internalTrafficPolicy" in itp[0].message
    # Behind a load balancer whose health check steers traffic away from this node the drop
    # is how eTP Local works; pods on this node losing their cluster-IP traffic is not.
    assert ext[0].severity == "info" and "health check (node port 32002)" in ext[0].message
    assert itp[0].severity == "warning"
    for f in ext + itp:
        assert "has no local endpoints" in _line_of(f.location)
        assert "-j DROP" in _line_of(f.location)
        assert str(f.location) in f.message


def test_services_without_endpoints_are_info_pointing_at_the_reject() -> None:
    findings = lint(_kitchen_rules(), _objects(SCENARIOS["kitchen-sink"]()[0]), NODE)
    infos = _of(findings, "no-endpoints")
    assert {f.service for f in infos} == {"default/empty:http", "default/not-ready:http"}
    for f in infos:
        assert f.severity == "info"
        assert "-j REJECT" in _line_of(f.location)


# ---------------------------------------------------------------- objects drift


def test_deleted_service_leaves_stale_rules() -> None:
    findings = _drifted(lambda c: c.services.remove(_service(c, "default/web")))
    assert _errors(findings) == {("stale-service-rules", "default/web:http")}
    (f,) = _of(findings, "stale-service-rules")
    chain = naming.svc_chain("default/web:http", "tcp")
    assert chain in f.message and str(f.location) in f.message
    assert "default/web:http cluster IP" in _line_of(f.location)
    assert exit_status(findings) == 1


def test_removed_endpoint_is_stale() -> None:
    def drop(c: Cluster) -> None:
        web = _service(c, "default/web")
        web.endpoints = [e for e in web.endpoints if e.ip != "10.244.2.12"]

    findings = _drifted(drop)
    assert _errors(findings) == {("stale-endpoint", "default/web:http")}
    (f,) = _of(findings, "stale-endpoint")
    sep = naming.sep_chain("default/web:http", "tcp", "10.244.2.12:8080")
    assert "10.244.2.12:8080" in f.message and sep in f.message
    assert f"-j {sep}" in _line_of(f.location)
    assert "not in the EndpointSlices" in f.message


def test_endpoint_that_stopped_being_ready_is_stale() -> None:
    def unready(c: Cluster) -> None:
        for e in _service(c, "default/web").endpoints:
            if e.ip == "10.244.1.11":
                e.ready = e.serving = False

    findings = _drifted(unready)
    (f,) = _of(findings, "stale-endpoint", "default/web:http")
    assert "10.244.1.11:8080" in f.message and "not usable" in f.message


def test_added_endpoint_is_missing() -> None:
    def add(c: Cluster) -> None:
        _service(c, "default/web").endpoints.append(Endpoint("10.244.2.40", "node-c", "web-x"))

    findings = _drifted(add)
    assert _errors(findings) == set()
    (f,) = _of(findings, "missing-endpoint", "default/web:http")
    assert f.severity == "warning"
    assert "10.244.2.40:8080" in f.message and "node-c" in f.message
    assert naming.svc_chain("default/web:http", "tcp") in f.message
    assert exit_status(findings, "warning") == 1 and exit_status(findings, "error") == 0


def test_flipping_external_policy_to_local_is_a_mismatch() -> None:
    findings = _drifted(
        lambda c: setattr(_service(c, "shop/frontend"), "external_traffic_policy", "Local")
    )
    assert _errors(findings) == {("traffic-policy-mismatch", "shop/frontend:https")}
    (f,) = _of(findings, "traffic-policy-mismatch")
    assert "externalTrafficPolicy is Local" in f.message
    assert naming.ext_chain("shop/frontend:https", "tcp") in f.message
    # The Local chain kube-proxy would now fill with node-a's endpoint does not exist yet.
    (m,) = _of(findings, "missing-endpoint", "shop/frontend:https")
    assert "10.244.0.10:8443" in m.message


def test_flipping_external_policy_to_cluster_is_a_mismatch() -> None:
    findings = _drifted(
        lambda c: setattr(_service(c, "ingress/lb-remote-only"), "external_traffic_policy",
                          "Cluster")
    )
    assert _errors(findings) == {("traffic-policy-mismatch", "ingress/lb-remote-only:http")}
    assert _of(findings, "local-policy-no-local-endpoints", "ingress/lb-remote-only:http") == []


def test_flipping_internal_policy_is_a_mismatch() -> None:
    findings = _drifted(
        lambda c: setattr(_service(c, "default/web"), "internal_traffic_policy", "Local")
    )
    (f,) = _of(findings, "traffic-policy-mismatch", "default/web:http")
    assert "internalTrafficPolicy is Local" in f.message
    assert "default/web:http cluster IP" in _line_of(f.location)


def test_new_service_has_no_rules() -> None:
    def add(c: Cluster) -> None:
        c.services.append(Service(
            namespace="shop", name="late", cluster_ips=["10.96.0.200"],
            ports=[ServicePort(name="http", port=80, target_port=8080)],
            endpoints=[Endpoint("10.244.1.50", "node-b", "late-a")],
        ))

    findings = _drifted(add)
    assert _errors(findings) == {("service-without-rules", "shop/late:http")}
    (f,) = _of(findings, "service-without-rules")
    assert naming.svc_chain("shop/late:http", "tcp") in f.message


def test_service_that_gained_endpoints_is_still_rejected() -> None:
    findings = _drifted(
        lambda c: _service(c, "default/empty").endpoints.append(
            Endpoint("10.244.1.60", "node-b", "empty-a"))
    )
    (f,) = _of(findings, "service-without-rules", "default/empty:http")
    assert "-j REJECT" in _line_of(f.location) and str(f.location) in f.message
    assert _of(findings, "no-endpoints", "default/empty:http") == []


def test_service_that_lost_every_endpoint() -> None:
    findings = _drifted(lambda c: setattr(_service(c, "data/db"), "endpoints", []))
    for port in ("data/db:pg", "data/db:metrics"):
        assert len(_of(findings, "stale-endpoint", port)) == 3
        assert len(_of(findings, "no-endpoints", port)) == 1


# ---------------------------------------------------------------- rule-level checks


def test_uneven_probabilities(tmp_path: Path) -> None:
    rs = _edited(tmp_path, lambda t: t.replace("--probability 0.33333333349", "--probability 0.6", 1))
    findings = lint(rs, _objects(SCENARIOS["kitchen-sink"]()[0]), NODE)
    (f,) = _of(findings, "uneven-probabilities")
    assert f.service == "default/web:http" and f.severity == "warning"
    assert "0.6000" in f.message and "1/3" in f.message
    assert "KUBE-SVC-CDGGSHYLG3RE2FKL" in _line_of(f.location)


def test_unknown_rules_are_warned_about(tmp_path: Path) -> None:
    rule = "-A KUBE-SERVICES -m quota --quota 1000 -j RETURN\n"
    rs = _edited(tmp_path, lambda t: t[: t.rindex("COMMIT")] + rule + t[t.rindex("COMMIT"):])
    findings = lint(rs, _objects(SCENARIOS["kitchen-sink"]()[0]), NODE)
    (f,) = _of(findings, "unknown-rules")
    assert "quota" in f.message and "KUBE-SERVICES" in f.message
    assert "--quota 1000" in _line_of(f.location)


def test_missing_endpoint_chain_is_a_dangling_jump(tmp_path: Path) -> None:
    sep = naming.sep_chain("default/web:http", "tcp", "10.244.2.12:8080")
    rs = _edited(tmp_path, lambda t: "".join(
        line for line in t.splitlines(keepends=True)
        if not line.startswith((f":{sep} ", f"-A {sep} "))
    ))
    findings = lint(rs, _objects(SCENARIOS["kitchen-sink"]()[0]), NODE)
    (f,) = _of(findings, "dangling-jump")
    assert f.service == "default/web:http" and f.severity == "error"
    assert sep in f.message and f"-j {sep}" in _line_of(f.location)


def test_ruleset_without_kube_proxy_rules() -> None:
    rs = parse_iptables("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n", "bare.save")
    findings = lint(rs, _objects(SCENARIOS["kitchen-sink"]()[0]), NODE)
    assert [f.code for f in findings] == ["no-kube-proxy-rules"]


def test_report_helpers() -> None:
    findings = _drifted(lambda c: c.services.remove(_service(c, "default/web")))
    text = format_text(findings)
    assert text.splitlines()[0].startswith("error: [stale-service-rules]")
    assert "1 error" in text.splitlines()[-1]
    assert format_text([]) == "no findings\n"
    doc = json.loads(json.dumps([f.to_json() for f in findings]))
    assert {d["code"] for d in doc} <= set(CODES)
    assert all(CODES[f.code][0] == f.severity for f in findings
               if f.code != "local-policy-no-local-endpoints")
    # Most severe first.
    ranks = [("error", "warning", "info").index(f.severity) for f in findings]
    assert ranks == sorted(ranks)


# ---------------------------------------------------------------- hash-only and kernel


def _strip_comments(text: str) -> str:
    return re.sub(r' -m comment --comment ("[^"]*"|\S+)', "", text)


def test_stale_service_is_found_without_comments() -> None:
    cluster, options = SCENARIOS["kitchen-sink"]()
    rs = parse_iptables(_strip_comments(render_restore(cluster, options)), "bare.save")
    assert lint(rs, _objects(cluster), NODE) == lint(rs, _objects(cluster), NODE)
    assert _errors(lint(rs, _objects(cluster), NODE)) == set()
    cluster.services.remove(_service(cluster, "shop/frontend"))
    findings = lint(rs, _objects(cluster), NODE)
    stale = _of(findings, "stale-service-rules")
    # Without comments the Service's name is gone with it; its chains form one finding.
    (f,) = stale
    assert f.service is None and f.severity == "error"
    for chain in (naming.svc_chain("shop/frontend:https", "tcp"),
                  naming.ext_chain("shop/frontend:https", "tcp"),
                  naming.fw_chain("shop/frontend:https", "tcp")):
        assert chain in f.message


def _captured(cluster: Cluster, options: ProxierOptions) -> Ruleset:
    reason = missing_prerequisites("nft", "ipv4")
    if reason is not None:
        pytest.skip(f"KERNEL TEST SKIPPED: {reason}")
    saved = capture_iptables(render_restore(cluster, options), "nft", "ipv4")
    return parse_iptables(saved, "captured.save")


@pytest.mark.kernel
def test_drift_on_a_random_cluster_captured_from_the_kernel() -> None:
    options = ProxierOptions(node_name="node-0")
    cluster = random_cluster(5, 40, 4)
    rs = _captured(cluster, options)
    assert _errors(lint(rs, _objects(cluster), "node-0")) == set()

    with_eps = [s for s in cluster.services if len({e.ip for e in s.endpoints if e.ready}) >= 2
                and s.type == "ClusterIP" and s.internal_traffic_policy == "Cluster"]
    gone, shrunk = with_eps[0], with_eps[1]
    cluster.services.remove(gone)
    dropped = next(e for e in shrunk.endpoints if e.ready)
    shrunk.endpoints.remove(dropped)
    findings = lint(rs, _objects(cluster), "node-0")

    gone_ports = {naming.service_port_name(gone.namespace, gone.name, p.name) for p in gone.ports}
    shrunk_ports = {naming.service_port_name(shrunk.namespace, shrunk.name, p.name)
                    for p in shrunk.ports}
    assert {s for c, s in _errors(findings) if c == "stale-service-rules"} == gone_ports
    stale = _of(findings, "stale-endpoint")
    assert {f.service for f in stale} == shrunk_ports
    assert all(dropped.ip in f.message for f in stale)
    assert {c for c, _ in _errors(findings)} == {"stale-service-rules", "stale-endpoint"}


def test_endpoint_chain_nothing_jumps_to_is_an_orphan(tmp_path: Path) -> None:
    sep = naming.sep_chain("default/web:http", "tcp", "10.244.2.12:8080")
    svc = naming.svc_chain("default/web:http", "tcp")
    rs = _edited(tmp_path, lambda t: "".join(
        line for line in t.splitlines(keepends=True)
        if not (line.startswith(f"-A {svc} ") and line.rstrip().endswith(f"-j {sep}"))
    ))
    findings = lint(rs, _objects(SCENARIOS["kitchen-sink"]()[0]), NODE)
    (f,) = _of(findings, "orphan-endpoint-chain")
    assert f.service == "default/web:http" and sep in f.message
    assert "10.244.2.12:8080" in f.message and f"-A {sep}" in _line_of(f.location)
    # The cascade now stops short: a third of the traffic falls through the chain.
    (u,) = _of(findings, "uneven-probabilities", "default/web:http")
    assert "sum 0.6667" in u.message
    (m,) = _of(findings, "missing-endpoint", "default/web:http")
    assert "10.244.2.12:8080" in m.message
