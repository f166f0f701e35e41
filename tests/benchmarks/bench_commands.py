#!/usr/bin/env python3
"""Whole-cluster commands (`lint`, `show`, `diff`, nftables-mode `check`) at cluster scale.

Builds random clusters with every feature kpa.gen has (NodePorts, load
balancers with source ranges, external IPs, both traffic policies, session
affinity, UDP/SCTP, endpoints not ready or terminating), loads each into a
scratch network namespace with the real restore tools, and keeps what the real
save tools print. Every figure is a ratio to a reference measured in the same
run on the same machine, so that other work on the machine affects both sides:

* `kpa lint` (objects as JSON and as YAML), `kpa show` and `kpa diff` of two
  dumps: against `iptables-restore --test` on the iptables dump;
* `kpa check` of the nftables-mode ruleset (`nft list ruleset` text and `-j`
  JSON): against `kpa check` of the iptables-mode dump of the same cluster.

Each command runs as a whole process (start-up included, kpa from compiled
bytecode as an installed kpa runs: bench.installed_env), best of --repeat
runs; peak memory is the process's maximum RSS. The runs go in rounds, each of
the reference and then every command once, so a figure and its reference come
from the same minutes. The second dump for `diff` is
the same cluster after a rollout: a few Services gained, lost or changed
endpoints.

Needs root (network namespaces). Usage:
    python3 tests/benchmarks/bench_commands.py [--sizes 5000x5,10000x10] [--repeat 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from bench import run_measured  # the sibling script: one way to time a whole process

from kpa.gen.capture import capture_iptables, scratch_netns
from kpa.gen.cluster import Cluster, random_cluster
from kpa.gen.iptables import render_restore
from kpa.gen.nft_capture import capture_nft
from kpa.gen.nftables import render_nft
from kpa.gen.objects import to_objects
from kpa.gen.options import ProxierOptions

NODE = "node-0"
GOALS = {
    "lint_json": 1.5, "lint_yaml": 2.0, "show": 1.5, "diff": 3.0,
    "check_nft_text": 1.5, "check_nft_json": 1.5,
}


def best(runs: list[tuple[float, int, int]]) -> dict[str, Any]:
    """The best time and the highest peak of a command's runs (`bench.run_measured`'s answers)."""
    codes = {code for _, _, code in runs}
    if not codes <= {0, 1}:
        return {"failed": sorted(codes)}
    return {"seconds": min(r[0] for r in runs), "peak_mib": max(r[1] for r in runs) / 1024}


def rollout(cluster: Cluster, seed: int) -> None:
    """What a rollout changes between two dumps: endpoints come and go on a few Services."""
    rng = random.Random(seed)
    services = [s for s in cluster.services if s.endpoints]
    for svc in rng.sample(services, max(1, len(services) // 100)):
        if len(svc.endpoints) > 1 and rng.random() < 0.5:
            svc.endpoints.pop(rng.randrange(len(svc.endpoints)))
        else:
            svc.endpoints[0].ready = not svc.endpoints[0].ready


def prepare(services: int, endpoints: int, workdir: Path, only: set[str] | None = None) -> dict[str, Path]:
    """Generate (or reuse, from an earlier --keep) the files the selected commands read.

    With --only, the nftables captures are made only for the nftables-mode
    checks and the second dump only for diff: at 10,000 x 10 the nftables
    captures alone take the longest.
    """
    options = ProxierOptions(node_name=NODE)
    cluster = random_cluster(seed=1, services=services, endpoints_per_service=endpoints)
    paths = {k: workdir / f"{services}x{endpoints}.{k}" for k in
             ("save", "after.save", "objects.json", "objects.yaml", "nft", "nft.json")}
    wants = (lambda name: only is None or name in only)  # noqa: E731
    if not paths["save"].exists():
        paths["save"].write_text(capture_iptables(render_restore(cluster, options, "ipv4"), "nft", "ipv4"))
    if not paths["objects.json"].exists() or not paths["objects.yaml"].exists():
        objs = to_objects(cluster)
        paths["objects.json"].write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}, indent=4))
        paths["objects.yaml"].write_text(yaml.safe_dump_all(objs, sort_keys=False))
    if (wants("check_nft_text") or wants("check_nft_json")) and (
            not paths["nft"].exists() or not paths["nft.json"].exists()):
        nft_text = render_nft(cluster, options, "ipv4")
        paths["nft"].write_text(capture_nft(nft_text))
        paths["nft.json"].write_text(capture_nft(nft_text, json=True))
    if wants("diff") and not paths["after.save"].exists():
        after = random_cluster(seed=1, services=services, endpoints_per_service=endpoints)
        rollout(after, seed=2)
        paths["after.save"].write_text(capture_iptables(render_restore(after, options, "ipv4"), "nft", "ipv4"))
    return paths


def bench_size(services: int, endpoints: int, workdir: Path, repeat: int, only: set[str] | None) -> dict[str, Any]:
    p = prepare(services, endpoints, workdir, only)
    kpa = [sys.executable, "-m", "kpa"]
    commands: dict[str, list[str]] = {
        "lint_json": [*kpa, "lint", "-r", str(p["save"]), "-c", str(p["objects.json"]), "--node", NODE, "-o", "json"],
        "lint_yaml": [*kpa, "lint", "-r", str(p["save"]), "-c", str(p["objects.yaml"]), "--node", NODE, "-o", "json"],
        "show": [*kpa, "show", "-r", str(p["save"]), "-c", str(p["objects.json"]), "--node", NODE],
        "check_ipt": [*kpa, "check", "-r", str(p["save"])],
        "check_nft_text": [*kpa, "check", "-r", str(p["nft"])],
        "check_nft_json": [*kpa, "check", "-r", str(p["nft.json"])],
        "diff": [*kpa, "diff", str(p["save"]), str(p["after.save"]), "-c", str(p["objects.json"]), "--node", NODE],
    }
    text = p["save"].read_text()
    out: dict[str, Any] = {"services": services, "endpoints": endpoints,
                           "rules": sum(1 for line in text.splitlines() if line.startswith("-A ")),
                           "bytes": len(text.encode())}
    wanted = {name: argv for name, argv in commands.items() if not only or name in only or name == "check_ipt"}
    with scratch_netns("kpab") as ns:
        # In rounds: each round runs the reference and then every command once, so that a figure and its
        # reference are taken over the same minutes; the machine's speed drifts more than that between
        # the start and the end of a run.
        runs: dict[str, list[tuple[float, int, int]]] = {"iptables_restore_test": []}
        runs.update({name: [] for name in wanted})
        for _ in range(repeat):
            runs["iptables_restore_test"].append(
                run_measured(["ip", "netns", "exec", ns, "iptables-restore", "--test"], str(p["save"])))
            for name, argv in wanted.items():
                runs[name].append(run_measured(argv))
    for name, taken in runs.items():
        out[name] = best(taken)
        print(f"  {name:<22} {out[name]}", flush=True)
    ref = out["iptables_restore_test"].get("seconds")
    check_ref = out.get("check_ipt", {}).get("seconds")
    ratios = {}
    for name in GOALS:
        sec = out.get(name, {}).get("seconds")
        base = check_ref if name.startswith("check_nft") else ref
        if sec and base:
            ratios[name] = sec / base
    out["ratios"] = ratios
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="5000x5,10000x10", help="SERVICESxENDPOINTS, comma separated")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement (best is kept)")
    ap.add_argument("--only", help="comma-separated subset of: " + ", ".join(GOALS)
                    + " (only the files these need are generated)")
    ap.add_argument("--keep", metavar="DIR", help="keep the generated dumps here and reuse them")
    ap.add_argument("--out", help="also write the results as JSON here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("benchmarks load rules into a network namespace: run as root")
    only = set(args.only.split(",")) if args.only else None
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.keep or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for size in args.sizes.split(","):
            services, endpoints = (int(x) for x in size.split("x"))
            print(f"== {services} services x {endpoints} endpoints", flush=True)
            r = bench_size(services, endpoints, workdir, args.repeat, only)
            results.append(r)
            print(f"  {r['rules']} rules, {r['bytes'] / 1e6:.1f} MB")
            for k, v in r.items():
                if isinstance(v, dict) and "seconds" in v:
                    ratio = r["ratios"].get(k)
                    goal = f"  {ratio:5.2f}x (goal {GOALS[k]}x)" if ratio is not None else ""
                    print(f"  {k:<22} {v['seconds']:8.3f} s {v['peak_mib']:8.1f} MiB{goal}", flush=True)
                elif isinstance(v, dict) and "failed" in v:
                    print(f"  {k:<22} failed: {v['failed']}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
