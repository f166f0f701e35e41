"""What a person reads first: summary tables, Services and Kubernetes reasons, port misses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
F = ROOT / "tests" / "fixtures"
LBSR = ("loadbalancer-source-ranges", "203.0.113.10", "443")


def kpa(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """kpa with output to a pipe; no $COLUMNS unless a test sets one, so nothing wraps by accident."""
    if env is None:
        env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return subprocess.run([sys.executable, "-m", "kpa", *args], capture_output=True, text=True, check=False,
                          env=env)


def dumps(scenario: str) -> list[tuple[str, Path]]:
    return [("iptables-nft", F / "iptables" / f"{scenario}.nft.v4.save"),
            ("iptables-legacy", F / "iptables" / f"{scenario}.legacy.v4.save"),
            ("nftables", F / "nft" / "kube-proxy" / f"{scenario}.v4.nft")]


def test_readme_first_command_is_a_short_summary() -> None:
    res = kpa("trace", "--example", "--dst", "10.96.0.11", "-p", "tcp", "--dport", "80")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) <= 25
    assert lines[0].startswith("Packet: tcp * -> 10.96.0.11:80") and "Service shop/web:http (cluster IP)" in lines[0]
    rows = [ln for ln in lines if ln[:1].isdigit()]
    assert len(rows) == 9
    # Equal shares print alike, whatever the 9th digit of kube-proxy's probabilities.
    assert {w for ln in rows for w in ln.split() if w.endswith("%")} == {"33.3%"}
    # Each row names the endpoint's pod and node, masquerade, and the sources in words.
    assert any("10.244.1.11:8080 shop/web-b11 on node-b" in ln and " no " in ln
               and "pods in 10.244.0.0/16 except the endpoint pod itself (10.244.1.11)" in ln for ln in rows)
    assert any("sources outside the pod network 10.244.0.0/16" in ln and " yes " in ln for ln in rows)
    assert "KUBE-SEP" not in res.stdout  # no hops unless asked


def test_details_hide_hops_that_change_nothing() -> None:
    base = ("trace", "--example", "--src", "10.244.0.9", "--dst", "10.96.0.11", "-p", "tcp", "--dport", "80")
    some = kpa(*base, "-v").stdout
    every = kpa(*base, "-vv").stdout
    assert kpa(*base, "--details").stdout == some
    assert "KUBE-SEP-" in some and "DNAT to 10.244.0.10:8080" in some
    # FORWARD's jumps into chains that fell straight back, and ACCEPT policies, are noise by default.
    assert "KUBE-PROXY-FIREWALL" not in some and "policy ACCEPT" not in some
    assert "hops that changed nothing hidden" in some
    assert "KUBE-PROXY-FIREWALL" in every and "policy ACCEPT" in every


def test_json_names_the_service_and_keeps_exact_fractions() -> None:
    doc = json.loads(kpa("trace", "--example", "--dst", "10.96.0.11", "-p", "tcp", "--dport", "80", "-o",
                         "json").stdout)
    assert doc["service"] == {"namespace": "shop", "name": "web", "port": "http", "entry": "cluster IP",
                              "service_port": "shop/web:http"}
    assert {o["service"] for o in doc["outcomes"]} == {"shop/web:http"}
    assert {o["share"] for o in doc["outcomes"]} == {"33.3%"}
    assert len({o["probability_exact"] for o in doc["outcomes"]}) > 1  # the exact fractions do differ


@pytest.mark.parametrize(("backend", "rules"), dumps(LBSR[0]))
def test_load_balancer_source_ranges_reason(backend: str, rules: Path) -> None:
    res = kpa("trace", "-r", str(rules), "-c", str(F / "clusters" / f"{LBSR[0]}.yaml"), "--node", "node-a",
              "--dst", LBSR[1], "-p", "tcp", "--dport", LBSR[2], "--src", "198.51.100.200")
    assert res.returncode == 0, res.stderr
    assert "Service shop/frontend:https (load-balancer IP)" in res.stdout.splitlines()[0]
    assert "why: 198.51.100.200 is not in shop/frontend's loadBalancerSourceRanges" in res.stdout
    doc = json.loads(kpa("trace", "-r", str(rules), "--dst", LBSR[1], "-p", "tcp", "--dport", LBSR[2],
                         "--src", "198.51.100.200", "-o", "json").stdout)
    (o,) = doc["outcomes"]
    assert o["verdict"] == "DROP" and "loadBalancerSourceRanges" in o["reason"]
    assert o["netfilter_reason"].startswith("dropped in")


@pytest.mark.parametrize(("backend", "rules"), dumps("no-endpoints"))
def test_no_endpoints_reason(backend: str, rules: Path) -> None:
    res = kpa("trace", "-r", str(rules), "-c", str(F / "clusters" / "no-endpoints.yaml"), "--node", "node-a",
              "--dst", "10.96.0.22", "-p", "tcp", "--dport", "80")
    assert res.returncode == 0, res.stderr
    assert "why: default/empty:http has no endpoints" in res.stdout
    assert "Service default/empty:http" in res.stdout.splitlines()[0]


@pytest.mark.parametrize(("backend", "rules"), dumps("etp-local"))
def test_no_local_endpoints_reason(backend: str, rules: Path) -> None:
    res = kpa("trace", "-r", str(rules), "-c", str(F / "clusters" / "etp-local.yaml"), "--node", "node-a",
              "--dst", "203.0.113.21", "-p", "tcp", "--dport", "80", "--src", "198.51.100.7")
    assert res.returncode == 0, res.stderr
    assert "ingress/lb-remote-only:http has no local endpoints (externalTrafficPolicy: Local)" in res.stdout


def test_wrong_port_says_no_service_port_matched_with_the_nearest() -> None:
    args = ("trace", "--example", "--dst", "10.96.0.11", "-p", "tcp", "--dport", "8080")
    res = kpa(*args)
    lines = res.stdout.splitlines()
    assert lines[1] == "No Service port matched: tcp port 8080 of 10.96.0.11; nearest: shop/web has http:80→8080"
    doc = json.loads(kpa(*args, "-o", "json").stdout)
    assert doc["service"] is None and "shop/web has http:80→8080" in doc["service_port_miss"]
    # --explain shows why KUBE-SERVICES fell through: the right address, the wrong port.
    explained = kpa(*args, "--explain").stdout
    assert "nat/KUBE-SERVICES #7 did not match: -m tcp --dport 80" in explained
    assert "nat/KUBE-SERVICES end" in explained


def test_wrong_port_from_the_rules_alone() -> None:
    # Without objects the Service ports come from kube-proxy's own rules.
    for _, rules in dumps("clusterip")[:2]:
        res = kpa("trace", "-r", str(rules), "--dst", "10.96.0.11", "-p", "tcp", "--dport", "8080")
        assert res.returncode == 0, res.stderr
        assert "No Service port matched" in res.stdout, rules
        assert "default/web has http:80→8080" in res.stdout, rules


def test_nodeport_miss_names_the_nearest_nodeport() -> None:
    res = kpa("trace", "--example", "--dst", "192.168.0.2", "-p", "tcp", "--dport", "30081")
    assert "No Service port matched: NodePort 30081; nearest: shop/web has NodePort http:30080→8080" in res.stdout


# -- failing loudly -----------------------------------------------------------------


@pytest.mark.parametrize("content", ["", "\n\n", "# Generated by iptables-save v1.8.9\n"])
def test_empty_rules_input_exits_2(tmp_path: Path, content: str) -> None:
    empty = tmp_path / "node.save"
    empty.write_text(content)
    for cmd in (("check",), ("trace", "--dst", "10.96.0.11"), ("show",)):
        res = kpa(*cmd, "-r", str(empty))
        assert res.returncode == 2, (cmd, res.stdout)
        assert res.stderr.startswith(f"kpa: error: {empty}: ") and "Traceback" not in res.stderr
    piped = subprocess.run([sys.executable, "-m", "kpa", "check", "-r", "-"], input=content, capture_output=True,
                           text=True, check=False)
    assert piped.returncode == 2 and "<stdin>" in piped.stderr


def test_unknown_node_and_service_exit_2_with_near_names() -> None:
    ex = ROOT / "kpa" / "data" / "example"
    common = ("-r", str(ex / "rules.v4.save"), "-c", str(ex / "cluster.yaml"))
    for cmd in (("trace", *common, "--dst", "10.96.0.11"), ("show", *common), ("lint", *common)):
        res = kpa(*cmd, "--node", "node-d")
        assert res.returncode == 2, cmd
        assert "no Node 'node-d'" in res.stderr and "node-a" in res.stderr
    res = kpa("show", *common, "--service", "shop/wbe")
    assert res.returncode == 2 and "did you mean shop/web" in res.stderr
    res = kpa("trace", *common, "--to", "svc/shop/wbe")
    assert res.returncode == 2 and "did you mean shop/web" in res.stderr


def test_diff_names_a_and_b_and_warns_about_what_it_could_not_compare(tmp_path: Path) -> None:
    affinity = F / "iptables" / "session-affinity.nft.v4.save"
    plain = tmp_path / "plain.save"
    plain.write_text("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n")
    res = kpa("diff", str(affinity), str(plain))
    lines = res.stdout.splitlines()
    assert lines[:2] == [f"A: {affinity}", f"B: {plain}"]
    assert f"warning: B ({plain}) has no kube-proxy rules" in res.stdout
    assert "warning: session affinity was not compared" in res.stdout
    doc = json.loads(kpa("diff", str(affinity), str(plain), "-o", "json").stdout)
    assert doc["a"] == str(affinity) and doc["b"] == str(plain)


# -- sources mean what they say -----------------------------------------------------------


def test_from_external_leaves_out_pods_and_nodes() -> None:
    res = kpa("trace", "--example", "--to", "svc/shop/web:http", "--from", "external", "-o", "json")
    doc = json.loads(res.stdout)
    assert len(doc["outcomes"]) == 3
    assert all(o["masquerade"] and o["conditions"] == [] for o in doc["outcomes"])
    assert {"10.244.0.0/16", "192.168.0.2", "127.0.0.0/8"} <= set(doc["packet"]["src_exclude"])
    text = kpa("trace", "--example", "--to", "svc/shop/web:http", "--from", "external").stdout
    assert text.startswith("Packet: tcp external -> 10.96.0.11:80")
    assert "pods in" not in text and text.count("external sources (not pods, not nodes)") == 3


def test_from_a_pod_on_another_node_warns_where_its_nat_happens() -> None:
    res = kpa("trace", "--example", "--to", "svc/shop/web:http", "--from", "pod/shop/web-b11")
    assert "warning: pod shop/web-b11 runs on node node-b, not node-a: its Service NAT happens on node-b" \
        in res.stdout
    local = kpa("trace", "--example", "--to", "svc/shop/web:http", "--from", "pod/shop/web-a10")
    assert "warning: pod" not in local.stdout


def test_dport_without_protocol_hints_at_p_tcp() -> None:
    res = kpa("trace", "--example", "--dst", "10.96.0.11", "--dport", "80")
    assert res.returncode == 0
    assert "add -p tcp" in res.stderr
    assert "add -p tcp" not in kpa("trace", "--example", "--dst", "10.96.0.11", "--dport", "80", "-p", "tcp").stderr


# -- confirm it live ---------------------------------------------------------------------


@pytest.mark.parametrize(("backend", "rules"), dumps("clusterip"))
def test_confirm_prints_commands_for_the_dumps_backend(backend: str, rules: Path) -> None:
    args = ("trace", "-r", str(rules), "--src", "203.0.113.10", "--dst", "10.96.0.11", "-p", "tcp", "--dport", "80",
            "--confirm")
    text = kpa(*args).stdout
    doc = json.loads(kpa(*args, "-o", "json").stdout)["confirm"]
    assert doc["backend"] == backend
    assert f"To confirm this on the node ({backend} rules), as root — kpa does not run these:" in text
    for cmd in doc["setup"] + doc["watch"] + doc["cleanup"]:
        assert f"  {cmd}\n" in text
    match = "-s 203.0.113.10 -d 10.96.0.11 -p tcp --dport 80 -j TRACE"
    if backend == "nftables":
        assert doc["setup"][-1].endswith("ip saddr 203.0.113.10 ip daddr 10.96.0.11 meta l4proto tcp tcp dport 80 "
                                         "meta nftrace set 1")
        assert doc["watch"] == ["nft monitor trace"] and doc["cleanup"] == ["nft delete table inet kpa_trace"]
    elif backend == "iptables-nft":
        assert doc["setup"] == [f"iptables-nft -t raw -I PREROUTING {match}"]
        assert doc["watch"] == ["xtables-monitor --trace"]
        assert doc["cleanup"] == [f"iptables-nft -t raw -D PREROUTING {match}"]
    else:
        assert f"iptables-legacy -t raw -I PREROUTING {match}" in doc["setup"]
        assert "sysctl -w net.netfilter.nf_log.2=nf_log_ipv4" in doc["setup"]
        assert "dmesg" in doc["watch"][0]
        assert f"iptables-legacy -t raw -D PREROUTING {match}" in doc["cleanup"]


def test_confirm_for_locally_sent_ipv6() -> None:
    doc = json.loads(kpa("trace", "-r", str(F / "iptables" / "ipv6.nft.v6.save"), "--origin", "output",
                         "--dst", "fd00:10:96::11", "-p", "udp", "--dport", "53", "--confirm", "-o", "json").stdout)
    assert doc["confirm"]["setup"] == ["ip6tables-nft -t raw -I OUTPUT -d fd00:10:96::11 -p udp --dport 53 -j TRACE"]


# -- terminal care ---------------------------------------------------------------------------


def test_output_fits_the_terminal_width() -> None:
    env = {**os.environ, "COLUMNS": "80"}
    for extra in ((), ("-vv",), ("--explain",)):
        res = kpa("trace", "--example", "--dst", "10.96.0.11", "-p", "tcp", "--dport", "80", *extra, env=env)
        assert max(len(ln) for ln in res.stdout.splitlines()) <= 80, extra
    narrow = kpa("trace", "--example", "--dst", "10.96.0.11", "-p", "tcp", "--dport", "80", env=env).stdout
    assert "   ↳ for pods in 10.244.0.0/16 except the endpoint pod itself (10.244.0.10)" in narrow
    wide = kpa("trace", "--example", "--dst", "10.96.0.11", "-p", "tcp", "--dport", "80",
               env={**os.environ, "COLUMNS": "200"}).stdout
    assert "↳ for" not in wide and "SOURCES" in wide


def run_on_a_tty(*args: str) -> str:
    """Run kpa with its stdout on a pseudo-terminal, as in an interactive shell."""
    import pty

    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS")}
    proc = subprocess.Popen([sys.executable, "-m", "kpa", *args], stdout=follower, stderr=subprocess.DEVNULL,
                            env=env, cwd=ROOT)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait()
    os.close(leader)
    return b"".join(chunks).decode()


def test_severities_and_verdicts_are_coloured_on_a_tty_only() -> None:
    lint = run_on_a_tty("lint", "--example")
    assert "\x1b[36m\x1b[1minfo:\x1b[0m [no-endpoints]" in lint
    assert "\x1b[" not in kpa("lint", "--example").stdout
    rejected = run_on_a_tty("trace", "--example", "--dst", "10.96.0.14", "-p", "tcp", "--dport", "80")
    assert "\x1b[33m" in rejected and "REJECT" in rejected


def test_paths_print_as_given() -> None:
    rel = "tests/fixtures/iptables/clusterip.nft.v4.save"
    for given in (rel, str(ROOT / rel)):
        res = subprocess.run([sys.executable, "-m", "kpa", "trace", "-r", given, "--dst", "10.96.0.11", "-p", "tcp",
                              "--dport", "80", "--src", "10.244.0.9", "-v"], capture_output=True, text=True,
                             cwd=ROOT, check=False)
        assert f"({given}:" in res.stdout, given


def test_ipv6_endpoints_print_bracketed_everywhere() -> None:
    import re

    rules = F / "iptables" / "ipv6.nft.v6.save"
    cluster = F / "clusters" / "ipv6.yaml"
    outputs = [
        kpa("trace", "-r", str(rules), "-c", str(cluster), "--dst", "fd00:10:96::b", "-p", "tcp", "--dport", "80",
            "-v").stdout,
        kpa("show", "-r", str(rules), "-c", str(cluster)).stdout,
        kpa("show", "-r", str(F / "nft" / "kube-proxy" / "ipv6.v6.nft"), "-c", str(cluster)).stdout,
    ]
    for text in outputs:
        assert "[fd00:" in text
        # An IPv6 address followed by :PORT must be bracketed; bare ones end where the port would start.
        bare = re.findall(r"(?<![\[\w:])(fd00(?::[0-9a-f]*)+::?[0-9a-f]+):(\d{2,5})\b", text)
        assert bare == [], bare


@pytest.mark.parametrize("rules", [F / "nft" / "kube-proxy" / "no-endpoints.v4.nft",
                                   F / "nft" / "kube-proxy" / "no-endpoints.v4.json"])
def test_nft_map_element_comments_name_the_service_without_objects(rules: Path) -> None:
    res = kpa("trace", "-r", str(rules), "--dst", "10.96.0.23", "-p", "tcp", "--dport", "80", "-o", "json")
    doc = json.loads(res.stdout)
    assert doc["service"]["service_port"] == "default/not-ready:http"
    (o,) = doc["outcomes"]
    assert o["verdict"] == "REJECT" and o["reason"] == "default/not-ready:http has no endpoints"
    assert "@no-endpoint-services element 'default/not-ready:http'" in o["notes"]
