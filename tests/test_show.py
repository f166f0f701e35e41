"""`kpa show` in both kube-proxy modes, with what the cluster objects add."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kpa.k8s.kubeproxy import ServicePortView
from kpa.k8s.showview import describe
from kpa.netfilter.model import Ruleset

ROOT = Path(__file__).parent.parent
F = ROOT / "tests" / "fixtures"
EX = ROOT / "kpa" / "data" / "example"


def kpa(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return subprocess.run([sys.executable, "-m", "kpa", *args], capture_output=True, text=True, check=False,
                          env=env)


def ports(rules: Path, cluster: Path | None = None) -> dict[str, dict[str, object]]:
    extra = ("-c", str(cluster), "--node", "node-a") if cluster else ()
    res = kpa("show", "-r", str(rules), *extra, "-o", "json")
    assert res.returncode == 0, res.stderr
    return {d["service_port"]: d for d in json.loads(res.stdout)["service_ports"]}


def summary(doc: dict[str, object]) -> tuple[object, ...]:
    def eps(key: str) -> list[tuple[str, str]]:
        return sorted((e["endpoint"], e["probability_exact"]) for e in doc[key])  # type: ignore[attr-defined]
    entries = sorted((e["kind"], e["address"], e["port"]) for e in doc["entries"])  # type: ignore[attr-defined]
    return entries, eps("endpoints"), eps("local_endpoints")


def test_nftables_mode_shows_what_iptables_mode_shows() -> None:
    for scenario in ("kitchen-sink", "etp-local", "session-affinity", "loadbalancer-source-ranges", "no-endpoints"):
        cluster = F / "clusters" / f"{scenario}.yaml"
        ipt = ports(F / "iptables" / f"{scenario}.nft.v4.save", cluster)
        nft = ports(F / "nft" / "kube-proxy" / f"{scenario}.v4.nft", cluster)
        assert set(nft) == set(ipt), scenario
        for name in nft:
            assert summary(nft[name]) == summary(ipt[name]), (scenario, name)
            for key in ("traffic_policies", "session_affinity", "source_ranges"):
                assert nft[name][key] == ipt[name][key], (scenario, name, key)


def test_rules_alone_give_affinity_and_source_ranges() -> None:
    for rules in (F / "iptables" / "session-affinity.nft.v4.save", F / "nft" / "kube-proxy" / "session-affinity.v4.nft"):
        docs = ports(rules)
        assert docs["payments/sticky:http"]["session_affinity"].startswith("ClientIP"), rules
    for rules in (F / "iptables" / "loadbalancer-source-ranges.legacy.v4.save",
                  F / "nft" / "kube-proxy" / "loadbalancer-source-ranges.v4.nft"):
        docs = ports(rules)
        assert set(docs["shop/frontend:https"]["source_ranges"]) >= {"198.51.100.0/25", "192.168.0.0/16"}, rules


def test_endpoint_conditions_pods_and_nodes() -> None:
    for rules in (F / "iptables" / "terminating.nft.v4.save", F / "nft" / "kube-proxy" / "terminating.v4.nft"):
        res = kpa("show", "-r", str(rules), "-c", str(F / "clusters" / "terminating.yaml"), "svc/default/rolling")
        assert res.returncode == 0, res.stderr
        lines = res.stdout.splitlines()
        assert "externalTrafficPolicy: Local" in lines[1]
        head = next(ln for ln in lines if "ENDPOINT" in ln).split()
        assert head == ["FOR", "ENDPOINT", "SHARE", "POD", "NODE", "READY", "SERVING", "TERMINATING"]
        assert any(ln.split() == ["local", "10.244.0.10:8080", "100%", "default/roll-a10", "node-a", "no", "yes",
                                  "yes"] for ln in lines), res.stdout


def test_show_takes_svc_refs_namespaces_and_kubectl_output_styles(tmp_path: Path) -> None:
    common = ("-r", str(EX / "rules.v4.save"), "-c", str(EX / "cluster.yaml"))
    by_arg = kpa("show", *common, "svc/shop/web")
    assert by_arg.returncode == 0 and by_arg.stdout.startswith("shop/web:http  TCP  ipv4")
    assert kpa("show", *common, "-n", "shop", "svc/web").stdout == by_arg.stdout
    assert kpa("show", *common, "--service", "shop/web").stdout == by_arg.stdout
    # The kubeconfig context's namespace is the default, as with kubectl.
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u, namespace: shop}}]\n")
    assert kpa("show", *common, "--kube", "--kubeconfig", str(kubeconfig), "svc/web").stdout == by_arg.stdout
    names = kpa("show", *common, "-o", "name").stdout.splitlines()
    assert "svc/shop/web:http" in names and all(n.startswith("svc/") for n in names)
    wide = kpa("show", *common, "svc/shop/web", "-o", "wide").stdout
    assert "KUBE-SVC-" in wide and "rules.v4.save:" in wide and "KUBE-SVC-" not in by_arg.stdout
    bare = kpa("show", *common, "svc/shop/web", "--no-headers").stdout
    assert "ENDPOINT" not in bare and "10.244.0.10:8080" in bare


def test_services_sort_naturally() -> None:
    views = [ServicePortView(f"ns/svc-{n}:http", "TCP", "ipv4") for n in (1000, 2, 10, 1)]
    for v in views:
        v.endpoints = []
    docs = describe(views, Ruleset(), None)
    assert [d["service_port"] for d in docs] == ["ns/svc-1:http", "ns/svc-2:http", "ns/svc-10:http",
                                                  "ns/svc-1000:http"]


def test_show_fits_the_terminal_width() -> None:
    env = {**os.environ, "COLUMNS": "72"}
    res = subprocess.run([sys.executable, "-m", "kpa", "show", "--example"], capture_output=True, text=True,
                         env=env, check=False)
    assert res.returncode == 0
    assert max(len(ln) for ln in res.stdout.splitlines()) <= 72
    assert "loadBalancerSourceRanges: 198.51.100.0/24" in res.stdout.replace("\n      ", " ")


def test_natural_order_of_service_names_with_any_digits() -> None:
    from kpa.k8s.kubeproxy import natural_key

    names = ["ns/svc-10:http", "ns/svc-2:http", "ns/svc²:http", "ns/svc-٣:http", "ns/svc:http", "²"]
    ordered = sorted(names, key=natural_key)
    assert ordered.index("ns/svc-2:http") < ordered.index("ns/svc-٣:http") < ordered.index("ns/svc-10:http")
    assert natural_key("²") == ["²"] and natural_key("a10b2") == ["a", 10, "b", 2, ""]
