#!/usr/bin/env python3
"""Enforced NetworkPolicy on a kube-network-policies node: the intended-vs-enforced matrix.

Builds a cluster with kpa.gen.policies (every pod on the node under test, or a fifth
elsewhere with --remote), writes kube-network-policies' table with kpa.gen.kubenetpol
(nft text as the agent's `nft list ruleset` shows it; the queue table cannot be loaded
on kernels without nft queue, so kpa reads the generator's text), and measures
`kpa policy matrix --rules … --node-ip … --port N` as a whole process with `-o text` and
`-o json`, each next to the same command without --rules (intent only) as the reference
measured in the same run: wall and CPU seconds (user + system) and their ratios, best of
--repeat runs, and the load average before and after (the machine may be shared).

Usage: python3 tests/benchmarks/kubenetpol_bench.py [--pods 1000] [--policies 500] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from kpa.gen.kubenetpol import KnpOptions, render_text
from kpa.gen.policies import policy_cluster
from kpa.k8s.objects import objects_from_documents

NODE_IP = "192.168.0.2"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--policies", type=int, default=500)
    ap.add_argument("--namespaces", type=int, default=20)
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--remote", action="store_true", help="Put every fifth pod on another node.")
    args = ap.parse_args()
    docs = policy_cluster(pods=args.pods, namespaces=args.namespaces, policies=args.policies, seed=1)
    pods = [doc for doc in docs if doc["kind"] == "Pod"]
    for k, doc in enumerate(pods):
        doc["spec"]["nodeName"] = "node-1" if args.remote and k % 5 == 0 else "node-0"
    objects = objects_from_documents(docs)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "knp.nft").write_text(render_text(objects, KnpOptions(node="node-0")))
        (d / "cluster.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))

        def run(fmt: str, extra: list[str]) -> tuple[float, float, Path]:
            """Best wall and CPU seconds of whole `kpa policy matrix` processes; where the output is."""
            out = d / f"matrix{len(extra)}.{fmt}"
            argv = [sys.executable, "-m", "kpa", "policy", "matrix", "-c", str(d / "cluster.json"),
                    "--port", str(args.port), "-o", fmt, *extra]
            best = (float("inf"), float("inf"))
            for _ in range(args.repeat):
                with out.open("wb") as sink:
                    start = os.times().elapsed
                    proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.DEVNULL)
                    _, status, usage = os.wait4(proc.pid, 0)
                    wall = os.times().elapsed - start
                if os.waitstatus_to_exitcode(status) != 0:
                    raise SystemExit(f"{' '.join(argv)} failed")
                best = min(best, (wall, usage.ru_utime + usage.ru_stime))
            return best[0], best[1], out

        enforce = ["-r", str(d / "knp.nft"), "--node-ip", NODE_IP]
        load_before = os.getloadavg()[0]
        measured: dict[str, dict[str, float]] = {}
        counts: dict[str, int] = {}
        for fmt in ("text", "json"):
            ref_s, ref_cpu, ref_out = run(fmt, [])
            enf_s, enf_cpu, enf_out = run(fmt, enforce)
            measured[fmt] = {"enforced_s": round(enf_s, 2), "enforced_cpu_s": round(enf_cpu, 2),
                             "intent_only_s": round(ref_s, 2), "intent_only_cpu_s": round(ref_cpu, 2),
                             "ratio_wall": round(enf_s / ref_s, 1), "ratio_cpu": round(enf_cpu / ref_cpu, 1),
                             "output_mb": round(enf_out.stat().st_size / 1e6, 1)}
            if fmt == "json":
                doc = json.loads(enf_out.read_text())
                counts = {"cells": len(doc["cells"]), "traces": doc["traces"], "differences": doc["differences"],
                          "unknown": sum(1 for c in doc["cells"]
                                         if c.get("enforced", {}).get("verdict") == "unknown")}
            enf_out.unlink()
            ref_out.unlink()
        load_after = os.getloadavg()[0]
    result = {"pods": len(pods), "policies": len(objects.network_policies), "remote_pods": args.remote,
              "repeat": args.repeat, "matrix": counts, "matrix_text": measured["text"],
              "matrix_json": measured["json"],
              "load_average_before_after": [round(load_before, 1), round(load_after, 1)]}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
