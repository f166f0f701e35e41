"""A large Service, loaded into a kernel and traced (real nodes have Services this size).

Its exact shares are products of hundreds of 32-bit thresholds; kpa must
print them (as decimals past thousands of digits) instead of failing, as it
did from about 480 endpoints on. 600 endpoints keep CI short; KPA_BIG_SERVICE
sets another size (5,000 passes, in about six minutes on two cores).
"""

from __future__ import annotations

import json
import os
from fractions import Fraction

import pytest
from click.testing import CliRunner

from kpa.cli import cli
from kpa.gen.capture import capture_iptables
from kpa.gen.cluster import Cluster, Endpoint, Node, Service, ServicePort
from kpa.gen.iptables import render_restore
from kpa.gen.options import ProxierOptions

pytestmark = pytest.mark.kernel


def test_trace_a_service_with_hundreds_of_endpoints(tmp_path: object) -> None:
    n = int(os.environ.get("KPA_BIG_SERVICE", "600"))
    node = Node("node-a", ipv4="192.168.0.2", pod_cidrs=["10.244.0.0/24"])
    # Distinct addresses, 250 per /24, all on another node.
    endpoints = [Endpoint(ip=f"10.245.{i // 250}.{i % 250 + 1}", node_name="node-b") for i in range(n)]
    svc = Service("big", "web", [ServicePort(80, 8080, "http")], ["10.96.0.50"], endpoints=endpoints)
    cluster = Cluster([node, Node("node-b", ipv4="192.168.0.3", pod_cidrs=["10.244.1.0/24"])], [svc])
    dump = capture_iptables(render_restore(cluster, ProxierOptions(node_name="node-a")), "nft", "ipv4")
    path = tmp_path / "big.save"  # type: ignore[operator]
    path.write_text(dump)
    runner = CliRunner()
    res = runner.invoke(cli, ["trace", "-r", str(path), "--node-ip", "192.168.0.2", "--src", "10.244.0.9",
                              "--dst", "10.96.0.50", "-p", "tcp", "--dport", "80", "--max-outcomes", str(n + 100),
                              "-o", "json"])
    assert res.exception is None, res.output[-2000:]
    data = json.loads(res.output)
    dnat = [o for o in data["outcomes"] if o.get("dnat")]
    assert len(dnat) == n and not data["truncated"]
    assert abs(sum(o["probability"] for o in data["outcomes"]) - 1) < 1e-9
    # Shares are exact where Python can print them, decimals beyond.
    assert any("exact fraction of about" in o["probability_exact"] for o in dnat)
    for o in dnat:
        if "/" in o["probability_exact"]:
            assert abs(float(Fraction(o["probability_exact"])) - o["probability"]) < 1e-12
    res = runner.invoke(cli, ["show", "-r", str(path)])
    assert res.exception is None and res.output.count(":8080") >= n, res.output[-500:]
