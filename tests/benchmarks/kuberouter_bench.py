#!/usr/bin/env python3
"""Enforced NetworkPolicy on a kube-router node: tracing and the intended-vs-enforced matrix.

Builds a cluster with kpa.gen.policies (every pod on one node), writes kube-router's
payloads with kpa.gen.kuberouter, loads them into a scratch network namespace with the
real `ipset restore` and `iptables-nft-restore`, keeps what `iptables-save` and
`ipset save` print, and measures:

* reading both dumps (kpa's parser);
* one trace pod -> pod through kube-router's chains and ipsets (median and p95 over
  distinct pairs, after one warm-up trace);
* `kpa policy matrix --rules` for one port as a whole process, next to the same
  command without --rules (intent only) as the reference measured in the same run.

Needs root. Usage: python3 tests/benchmarks/kuberouter_bench.py [--pods 1000] [--policies 500]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kpa.gen.kuberouter import KubeRouterOptions, capture, render
from kpa.gen.policies import policy_cluster
from kpa.k8s.kuberouter import KubeRouterMap, enforced
from kpa.k8s.objects import objects_from_documents
from kpa.sources import load_rules

NODE_IP = "192.168.0.2"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--policies", type=int, default=500)
    ap.add_argument("--namespaces", type=int, default=20)
    ap.add_argument("--port", type=int, default=8080)
    args = ap.parse_args()
    docs = policy_cluster(pods=args.pods, namespaces=args.namespaces, policies=args.policies, seed=1)
    for doc in docs:
        if doc["kind"] == "Pod":
            doc["spec"]["nodeName"] = "node-0"  # every pod local to the node under test
    objects = objects_from_documents(docs)
    t = time.perf_counter()
    payloads = render(objects, KubeRouterOptions(node="node-0", cluster_ip_ranges=("10.96.0.0/12",)))
    gen_s = time.perf_counter() - t
    rules, sets = capture(payloads, "nft")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "rules.save").write_text(rules)
        (d / "ipset.save").write_text(sets)
        (d / "cluster.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
        t = time.perf_counter()
        rs = load_rules([str(d / "rules.save"), str(d / "ipset.save")])
        parse_s = time.perf_counter() - t
        kr = KubeRouterMap.from_ruleset(rs, objects.network_policies)
        pods = [p for p in objects.pods if p.pod_ips]
        rng = random.Random(1)
        pairs = [(rng.choice(pods).pod_ips[0], rng.choice(pods).pod_ips[0]) for _ in range(201)]
        enforced(rs, [NODE_IP], pairs[0][0], pairs[0][1], args.port, "TCP", kr)  # warm-up: set indexes
        times = []
        for src, dst in pairs[1:]:
            t = time.perf_counter()
            enforced(rs, [NODE_IP], src, dst, args.port, "TCP", kr)
            times.append((time.perf_counter() - t) * 1000)
        times.sort()

        def run(extra: list[str]) -> tuple[float, dict[str, object]]:
            argv = [sys.executable, "-m", "kpa", "policy", "matrix", "-c", str(d / "cluster.json"),
                    "--port", str(args.port), "-o", "json", *extra]
            t = time.perf_counter()
            out = subprocess.run(argv, capture_output=True, text=True, check=True)
            return time.perf_counter() - t, json.loads(out.stdout)

        ref_s, _ = run([])
        matrix_s, doc = run(["-r", str(d / "rules.save"), "-r", str(d / "ipset.save"), "--node-ip", NODE_IP])
    result = {
        "pods": len(pods), "policies": len(objects.network_policies),
        "rules": sum(1 for line in rules.splitlines() if line.startswith("-A ")),
        "ipsets": len(rs.ipsets), "set_members": sum(len(s.members) for s in rs.ipsets.values()),
        "generate_s": round(gen_s, 2), "parse_s": round(parse_s, 2),
        "trace_ms_median": round(statistics.median(times), 2),
        "trace_ms_p95": round(times[int(len(times) * 0.95)], 2),
        "matrix_cells": len(doc["cells"]), "matrix_traces": doc.get("traces"),
        "matrix_differences": doc.get("differences"),
        "matrix_enforced_s": round(matrix_s, 1), "matrix_intent_only_s": round(ref_s, 1),
        "matrix_ratio_to_intent_only": round(matrix_s / ref_s, 1),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
