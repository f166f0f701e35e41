#!/usr/bin/env python3
"""Enforced NetworkPolicy on a kube-router node: tracing and the intended-vs-enforced matrix.

Builds a cluster with kpa.gen.policies (every pod on one node), writes kube-router's
payloads with kpa.gen.kuberouter, loads them into a scratch network namespace with the
real `ipset restore` and `iptables-nft-restore`, keeps what `iptables-save` and
`ipset save` print, and measures:

* reading both dumps (kpa's parser);
* one trace pod -> pod through kube-router's chains and ipsets (median and p95 over
  distinct pairs, after one warm-up trace);
* `kpa policy matrix --rules` for one port as a whole process, with `-o text` and
  `-o json`, each next to the same command without --rules (intent only) as the
  reference measured in the same run: wall and CPU seconds (user + system) and
  their ratios, and the load average before and after (the machine may be shared).

Needs root. Usage: python3 tests/benchmarks/kuberouter_bench.py [--pods 1000] [--policies 500]
"""

from __future__ import annotations

import argparse
import json
import os
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

        def run(fmt: str, extra: list[str]) -> tuple[float, float, Path]:
            """Wall and CPU seconds of one whole `kpa policy matrix` process; where its output is."""
            out = d / f"matrix{len(extra)}.{fmt}"
            argv = [sys.executable, "-m", "kpa", "policy", "matrix", "-c", str(d / "cluster.json"),
                    "--port", str(args.port), "-o", fmt, *extra]
            with out.open("wb") as sink:
                t = time.perf_counter()
                proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.DEVNULL)
                _, status, usage = os.wait4(proc.pid, 0)
                wall = time.perf_counter() - t
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit(f"{' '.join(argv)} failed")
            return wall, usage.ru_utime + usage.ru_stime, out

        enforce = ["-r", str(d / "rules.save"), "-r", str(d / "ipset.save"), "--node-ip", NODE_IP]
        load_before = os.getloadavg()[0]
        measured: dict[str, dict[str, float]] = {}
        for fmt in ("text", "json"):
            ref_s, ref_cpu, ref_out = run(fmt, [])
            enf_s, enf_cpu, enf_out = run(fmt, enforce)
            measured[fmt] = {"enforced_s": round(enf_s, 1), "enforced_cpu_s": round(enf_cpu, 1),
                             "intent_only_s": round(ref_s, 1), "intent_only_cpu_s": round(ref_cpu, 1),
                             "ratio_wall": round(enf_s / ref_s, 1), "ratio_cpu": round(enf_cpu / ref_cpu, 1),
                             "output_mb": round(enf_out.stat().st_size / 1e6, 1)}
            if fmt == "text":
                # The same grid, with "!" where the node differs from the policies.
                grid = enf_out.read_text().splitlines()[1:]
                ref_grid = ref_out.read_text().splitlines()[1:]
                assert len(grid) == len(ref_grid) == len(pods) + 1
                marks = sum(line.count(" !") for line in grid)
            else:
                # One cell per line; the counts are at the end of the document.
                with enf_out.open("rb") as f:
                    cells = sum(1 for line in f if line.startswith(b'    {"from"'))
                    f.seek(max(0, f.tell() - 4096))
                    tail = f.read().decode()
                differences = int(tail.split('"differences": ')[1].split(",")[0])
                traces = int(tail.split('"traces": ')[1].split(",")[0])
            enf_out.unlink()
            ref_out.unlink()
        load_after = os.getloadavg()[0]
    result = {
        "pods": len(pods), "policies": len(objects.network_policies),
        "rules": sum(1 for line in rules.splitlines() if line.startswith("-A ")),
        "ipsets": len(rs.ipsets), "set_members": sum(len(s.members) for s in rs.ipsets.values()),
        "generate_s": round(gen_s, 2), "parse_s": round(parse_s, 2),
        "trace_ms_median": round(statistics.median(times), 2),
        "trace_ms_p95": round(times[int(len(times) * 0.95)], 2),
        "matrix_cells": cells, "matrix_traces": traces, "matrix_differences": differences,
        "text_grid_differing_cells": marks,
        "matrix_text": measured["text"], "matrix_json": measured["json"],
        "load_average_before_after": [round(load_before, 1), round(load_after, 1)],
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
