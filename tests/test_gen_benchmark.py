"""Benchmark-size generation: 10,000 Services x 10 endpoints must stay within seconds."""

from __future__ import annotations

from typing import Any

import pytest

from kpa.gen.cluster import random_cluster
from kpa.gen.iptables import render_restore
from kpa.gen.options import ProxierOptions

pytestmark = pytest.mark.slow


def test_generate_and_render_10k_services(benchmark: Any) -> None:
    def run() -> str:
        cluster = random_cluster(2024, 10_000, 10)
        return render_restore(cluster, ProxierOptions(node_name="node-0"), "ipv4")

    payload = benchmark.pedantic(run, rounds=1, iterations=1)
    sep_rules = [line for line in payload.splitlines() if line.startswith("-A KUBE-SEP-")]
    # About 2 rules per endpoint, and large-cluster mode strips their comments.
    assert len(sep_rules) > 150_000
    assert not any("-m comment" in line for line in sep_rules[:1000])
