"""kube-router's layout: the generator, the chain/set mapping, enforced verdicts, and intent vs enforcement.

The dumps are tests/fixtures/kube-router/*.save, captured from the kernel by
`python -m kpa.gen.kuberouter fixtures`; tests/kernel/test_kuberouter_kernel.py
checks the verdicts against real packets.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kpa.gen.kuberouter import KubeRouterOptions, render
from kpa.k8s.kuberouter import KubeRouterMap, enforced, enforcement_findings, policy_set_names
from kpa.k8s.objects import load_objects
from kpa.sources import load_rules

F = Path(__file__).parent / "fixtures" / "kube-router"
NODE = "192.168.10.2"
CLIENT, WEB, DB = "10.244.0.5", "10.244.0.10", "10.244.0.11"


@pytest.fixture(scope="module", params=["nft", "legacy"])
def ruleset(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    return load_rules([str(F / f"{request.param}.v4.save"), str(F / "ipset.v4.save")])


def objects():  # type: ignore[no-untyped-def]
    return load_objects([str(F / "cluster.yaml")])


def test_generator_is_what_the_fixtures_were_captured_from() -> None:
    out = render(objects(), KubeRouterOptions(node="node-1"))
    payload = out["iptables-restore.v4"]
    saved = (F / "nft.v4.save").read_text()
    # Every chain the payload declares is in the kernel's dump, and vice versa for kube-router's chains.
    declared = {line[1:].split()[0] for line in payload.splitlines() if line.startswith(":")}
    dumped = {line[1:].split()[0] for line in saved.splitlines() if line.startswith(":")}
    assert declared == dumped
    sets = {line.split()[1] for line in (F / "ipset.v4.save").read_text().splitlines() if line.startswith("create")}
    assert sets == {line.split()[1] for line in out["ipset-restore.v4"].splitlines()
                    if line.startswith("create") and not line.split()[1].startswith("TMP-")}
    # Top-level jumps first in the built-in chains; per-pod chains end with reject and the netpol-ok mark.
    assert saved.index("-A FORWARD -m comment --comment \"kube-router netpol") < saved.index("-A KUBE-ROUTER-FORWARD")
    assert "--comment \"a/web reject\"" in saved and "--set-xmark 0x20000/0x20000" in saved


def test_generator_scales_and_is_deterministic() -> None:
    from kpa.gen.policies import policy_cluster
    from kpa.k8s.objects import objects_from_documents

    objs = objects_from_documents(policy_cluster(pods=300, namespaces=6, policies=40, seed=3))
    a = render(objs, KubeRouterOptions(node="node-0"))
    assert a == render(objs, KubeRouterOptions(node="node-0"))
    local = [p for p in objs.pods if p.node_name == "node-0"]
    assert len(local) > 100 and a["iptables-restore.v4"].count(":KUBE-POD-FW-") == len(local)
    assert a["iptables-restore.v4"].count(":KUBE-NWPLCY-") - 3 == len(objs.network_policies)


def test_map_names_pods_policies_and_sets(ruleset) -> None:  # type: ignore[no-untyped-def]
    objs = objects()
    kr = KubeRouterMap.from_ruleset(ruleset, objs.network_policies)
    assert sorted(kr.pod_chains.values()) == ["a/db", "a/web", "b/client"]
    assert sorted(kr.policy_chains.values()) == ["a/db-from-web", "a/deny-all", "a/web-egress-http",
                                                 "a/web-from-clients", "b/client-egress"]
    assert set(kr.sets) == {s for s in ruleset.ipsets}
    assert policy_set_names("a", "web-from-clients", 2, 0, 4)  # names are recomputable from the object


def test_enforced_verdicts_and_deciding_rules(ruleset) -> None:  # type: ignore[no-untyped-def]
    kr = KubeRouterMap.from_ruleset(ruleset, objects().network_policies)
    ok = enforced(ruleset, [NODE], CLIENT, WEB, 8080, "TCP", kr)
    assert (ok.verdict, ok.admitted_by) == ("allowed", ("policy a/web-from-clients", "policy b/client-egress"))
    denied = enforced(ruleset, [NODE], CLIENT, DB, 9999, "TCP", kr)
    assert denied.verdict == "denied" and denied.where is not None and "pod b/client's firewall" in denied.where
    assert denied.deciding is not None and "b/client reject" in denied.deciding
    node = enforced(ruleset, [NODE], NODE, DB, 1, "TCP", kr, src_is_node=True)
    assert node.verdict == "allowed" and node.admitted_by == ("kube-router's 'from local node' rule",)


def test_lint_reports_each_difference() -> None:
    rs = load_rules([str(F / "nft.v4.save"), str(F / "ipset.v4.save")])
    findings = enforcement_findings(rs, objects(), [NODE])
    assert {f.code for f in findings} == {"policy-not-enforced", "blocked-without-policy"}
    loose = [f for f in findings if f.code == "policy-not-enforced"]
    texts = [f.message for f in loose]
    assert any(t.startswith("pod/b/client -> pod/a/db port 5432/TCP: the policies deny it") for t in texts)
    # Differences 1 and 4 of docs/enforcement.md, each admitted by the policy that causes it.
    assert all("admitted by policy a/db-from-web" in t or "admitted by policy a/web-egress-http" in t for t in texts)
    assert any(t.startswith("pod/a/web -> pod/b/client port 8080/TCP") for t in texts)
    assert all(f.location and "KUBE-NWPLCY-" in f.location for f in loose)
    # Egress with no `to` resolves the named port in a/web's own namespace only (8080, not b/remote's 9090).
    strict = {f.message.split(":")[0] for f in findings if f.code == "blocked-without-policy"}
    assert "pod/a/web -> pod/b/remote port 9090/TCP" in strict
    assert all("a/web reject" in (f.location or "") for f in findings if f.code == "blocked-without-policy")


def _kpa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kpa", *args], capture_output=True, text=True, check=False)


def test_policy_check_and_matrix_give_both_answers() -> None:
    rules = ["-r", str(F / "legacy.v4.save"), "-r", str(F / "ipset.v4.save"), "--node-ip", NODE]
    out = _kpa("policy", "check", "-c", str(F / "cluster.yaml"), *rules, "--from", "pod/b/client", "--to",
               "pod/a/db", "--port", "5432", "-o", "json")
    doc = json.loads(out.stdout)
    assert out.returncode == 1 and doc["allowed"] is False
    assert doc["enforced"]["verdict"] == "allowed" and doc["differs"] is True
    out = _kpa("policy", "matrix", "-c", str(F / "cluster.yaml"), *rules, "--port", "8080")
    assert out.returncode == 0 and "! enforced differently" in out.stdout
    doc = json.loads(_kpa("policy", "matrix", "-c", str(F / "cluster.yaml"), *rules, "--port", "5432",
                          "-o", "json").stdout)
    assert doc["differences"] == 2
    assert {(c["from"], c["to"]) for c in doc["cells"] if c.get("differs")} == {
        ("pod/b/client", "pod/a/db"), ("pod/b/remote", "pod/a/db")}


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_default_deny_mode_from_the_fixtures(backend: str) -> None:
    from kpa.gen.kuberouter import DEFAULT_DENY_CIDRS
    from kpa.k8s.kuberouter import enforcement_classes

    out = render(objects(), KubeRouterOptions(node="node-1", default_deny=True, pod_cidrs=DEFAULT_DENY_CIDRS))
    saved = (F / f"default-deny.{backend}.v4.save").read_text()
    tail = [line for line in saved.splitlines() if line.startswith("-A KUBE-NWPLCY-TAIL")]
    # Set-gated REJECTs first, then the netpol-ok ACCEPT, then the CIDR REJECTs: as kube-router appends them.
    assert ["local-pods src" in tail[0], "local-pods dst" in tail[1], "accept netpol-ok" in tail[2],
            "-s 10.244.0.0/24" in tail[3], "-d 10.244.0.0/24" in tail[4]] == [True] * 5
    assert "create kube-router-local-pods hash:ip" in out["ipset-restore.v4"]
    rs = load_rules([str(F / f"default-deny.{backend}.v4.save"), str(F / "default-deny.ipset.v4.save")])
    kr = KubeRouterMap.from_ruleset(rs, objects().network_policies)
    assert kr.default_deny_cidrs == ["10.244.0.0/24"] and "kube-router-local-pods" in kr.sets
    denied = enforced(rs, [NODE], CLIENT, "10.244.0.12", 8080, "tcp", kr)
    assert denied.verdict == "denied" and "not in kube-router-local-pods" in (denied.where or "")
    assert enforced(rs, [NODE], CLIENT, WEB, 8080, "tcp", kr).verdict == "allowed"
    # Without the mode the same connection to a pod with no chain goes through.
    plain = load_rules([str(F / f"{backend}.v4.save"), str(F / "ipset.v4.save")])
    assert enforced(plain, [NODE], CLIENT, "10.244.0.12", 8080, "tcp").verdict == "allowed"
    # An unprogrammed local pod and a remote pod are told apart by the default-deny CIDR rules.
    classes = enforcement_classes(rs, kr, ["10.244.0.12", "10.244.1.10"], [NODE])
    assert classes["10.244.0.12"] != classes["10.244.1.10"]
