#!/usr/bin/env python3
"""`kpa policy` on a generated cluster: the full matrix for one port, and one check.

Builds Namespaces, Pods and NetworkPolicies with kpa.gen.policies, writes them as one
`kubectl get -o json`-style List, and measures in this process:

* loading the objects (the real loader, validation included);
* the full pod-to-pod matrix for one port (every cell counted), and its peak memory;
* one `PolicyEngine.decide` with its explanation after loading (median and p95 over
  many random pairs);
* `policy lint` over the whole cluster;
* `kpa policy check` as a whole process (start-up and loading included);
* a reference workload in the same run (sorting a fixed list of random floats), so the
  figures can be read as ratios on a shared machine.

Usage:
    python3 tests/benchmarks/policy_bench.py [--pods 5000] [--namespaces 100]
        [--policies 1000] [--port 8080] [--unique-labels] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kpa.gen.policies import policy_cluster
from kpa.k8s.objects import load_objects
from kpa.policy.engine import PolicyEngine
from kpa.policy.lint import lint_policies
from kpa.policy.matrix import matrix


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reference_seconds() -> float:
    rng = random.Random(0)
    values = [rng.random() for _ in range(1_000_000)]
    start = time.perf_counter()
    sorted(values)
    return time.perf_counter() - start


def run(pods: int, namespaces: int, policies: int, port: int,
        unique_labels: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"pods": pods, "namespaces": namespaces, "policies": policies,
                           "port": port, "unique_labels": unique_labels,
                           "reference_sort_1M_s": reference_seconds()}
    docs = policy_cluster(pods=pods, namespaces=namespaces, policies=policies,
                          unique_labels=unique_labels)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cluster.json"
        path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
        start = time.perf_counter()
        objects = load_objects([str(path)])
        engine = PolicyEngine.from_objects(objects)
        out["load_s"] = time.perf_counter() - start
        first, last = engine.pods[1], engine.pods[-1]
        argv = [sys.executable, "-m", "kpa", "policy", "check", "-c", str(path),
                "--from", f"pod/{first.namespace}/{first.name}",
                "--to", f"pod/{last.namespace}/{last.name}", "--port", str(port)]
        start = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        out["cli_check_process_s"] = time.perf_counter() - start
        assert proc.returncode in (0, 1), proc.stderr
    out["rss_after_load_mib"] = peak_mib()
    subjects = [engine.subject(p) for p in sorted(engine.pods, key=lambda p: (p.namespace, p.name))]
    start = time.perf_counter()
    m = matrix(engine, subjects, subjects, port, "TCP")
    allowed = m.allowed_count()
    out["matrix_s"] = time.perf_counter() - start
    out["matrix_cells"] = len(subjects) ** 2
    out["matrix_allowed"] = allowed
    out["matrix_classes"] = m.class_count
    out["matrix_peak_rss_mib"] = peak_mib()
    rng = random.Random(1)
    times = []
    for _ in range(200):
        src, dst = rng.choice(subjects), rng.choice(subjects)
        start = time.perf_counter()
        decision = engine.decide(src, dst, port, "TCP")
        times.append(time.perf_counter() - start)
        assert decision.allowed == m.allowed(subjects.index(src), subjects.index(dst))
    times.sort()
    out["check_median_ms"] = statistics.median(times) * 1000
    out["check_p95_ms"] = times[int(len(times) * 0.95) - 1] * 1000
    start = time.perf_counter()
    findings = lint_policies(objects, engine)
    out["lint_s"] = time.perf_counter() - start
    out["lint_findings"] = len(findings)
    out["peak_rss_mib"] = peak_mib()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pods", type=int, default=5000)
    ap.add_argument("--namespaces", type=int, default=100)
    ap.add_argument("--policies", type=int, default=1000)
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--unique-labels", action="store_true",
                    help="Give every pod a label of its own (worst case: no two pods alike).")
    ap.add_argument("--out", metavar="FILE")
    args = ap.parse_args()
    result = run(args.pods, args.namespaces, args.policies, args.port, args.unique_labels)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    sys.exit(0)


if __name__ == "__main__":
    main()
