#!/usr/bin/env python3
"""kpa's benchmarks on generated clusters, next to the kernel tools as the reference.

Builds clusters with kpa.gen, loads them into a scratch network namespace with
the real restore tools, keeps what the real save tools print, and measures:

* `kpa check` as a whole process (start-up included): wall time and peak RSS,
  next to `iptables-nft-restore --test` and `iptables-legacy-restore --test`
  on the same file;
* tracing: one packet after loading (median and p95 over every ClusterIP),
  and the full sweep that traces every Service port's ClusterIP once;
* nftables mode: parsing `nft list ruleset` text and `nft -j` JSON of the
  same cluster, next to `nft -c -f`.

Needs root (network namespaces). Usage:
    python3 tests/benchmarks/bench.py [--sizes 5000x5,10000x10] [--out FILE]
    python3 tests/benchmarks/bench.py --fuzz 600      # the fuzzer, for ten minutes
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kpa.gen.capture import capture_iptables, scratch_netns
from kpa.gen.cluster import random_cluster
from kpa.gen.iptables import render_restore
from kpa.gen.options import ProxierOptions

_BYTECODE: dict[str, str] = {}


def installed_env() -> dict[str, str]:
    """The environment of a measured process: kpa runs from compiled bytecode, as a pip install leaves it.

    A package installed by pip comes with its modules compiled. Run from a source tree with
    PYTHONDONTWRITEBYTECODE set (as on some build machines), every run would compile kpa's
    modules from source first, a cost no installed kpa pays. So kpa is compiled once into a
    scratch cache (PYTHONPYCACHEPREFIX), and every measured process reads it from there.
    """
    if not _BYTECODE:
        import kpa

        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = prefix = tempfile.mkdtemp(prefix="kpa-bench-pyc-")
        atexit.register(shutil.rmtree, prefix, True)
        tree = str(Path(kpa.__file__).parent)
        compiled = subprocess.run([sys.executable, "-m", "compileall", "-q", tree], env=env, check=False)
        if compiled.returncode != 0:
            raise SystemExit(f"could not compile the modules in {tree}")
        _BYTECODE.update(env)
    return dict(_BYTECODE)


# Starts the measured command from a small process of its own. A process forked from this
# script starts with this script's resident memory as its peak (Linux copies the high-water
# mark into the child's memory map and keeps it across exec), and this script holds whole
# generated clusters: every command would report at least that. Forked from a fresh
# `python -S` instead, the command's peak is its own. Prints: seconds, peak KiB, wait status.
_LAUNCHER = """
import os, sys, time
stdin = sys.argv[1]
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    if stdin:
        fd = os.open(stdin, os.O_RDONLY)
        os.dup2(fd, 0)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 1)
    if not stdin:
        os.dup2(null, 0)
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
print(time.perf_counter() - start, usage.ru_maxrss, status)
"""


def run_measured(argv: list[str], stdin_path: str | None = None) -> tuple[float, int, int]:
    """Wall seconds, peak RSS in KiB, and exit status of one whole process (kpa from bytecode: installed_env)."""
    launched = subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, stdin_path or "", *argv],
                              capture_output=True, env=installed_env(), check=False)
    if launched.returncode != 0 or not launched.stdout.strip():
        raise SystemExit(f"could not measure {argv[:3]}: {launched.stderr.decode(errors='replace')[-500:]}")
    elapsed, peak, status = launched.stdout.split()
    return float(elapsed), int(peak), os.waitstatus_to_exitcode(int(status))


def best_of(n: int, argv: list[str], stdin_path: str | None = None) -> tuple[float, int] | str:
    """Best time and peak memory over n runs, or why the command failed (e.g. killed)."""
    runs = [run_measured(argv, stdin_path) for _ in range(n)]
    for _, _, code in runs:
        if code not in (0, 1):
            return f"failed: exit status {code}" + (" (killed)" if code == -9 else "")
    return min(r[0] for r in runs), max(r[1] for r in runs)


def bench_size(services: int, endpoints: int, workdir: Path, repeat: int, nft_reference: bool) -> dict[str, Any]:
    cluster = random_cluster(seed=1, services=services, endpoints_per_service=endpoints)
    options = ProxierOptions(node_name="node-0")
    payload = render_restore(cluster, options, "ipv4")
    saved = capture_iptables(payload, "nft", "ipv4")
    dump = workdir / f"kube-proxy-{services}x{endpoints}.v4.save"
    dump.write_text(saved)
    rules = sum(1 for line in saved.splitlines() if line.startswith("-A "))
    out: dict[str, Any] = {"services": services, "endpoints": endpoints, "rules": rules,
                           "bytes": len(saved.encode())}
    out["kpa_check"] = best_of(repeat, [sys.executable, "-m", "kpa", "check", "-r", str(dump)])
    with scratch_netns("kpab") as ns:
        for backend in ("nft", "legacy"):
            out[f"restore_test_{backend}"] = best_of(
                repeat, ["ip", "netns", "exec", ns, f"iptables-{backend}-restore", "--test"], str(dump))
    out.update(bench_trace(dump, cluster, options))
    out.update(bench_nft(cluster, options, workdir, repeat, nft_reference))
    return out


def bench_trace(dump: Path, cluster: Any, options: Any) -> dict[str, Any]:
    from kpa.k8s.kubeproxy import service_ports
    from kpa.netfilter.engine import trace
    from kpa.netfilter.packet import PacketSpec, TraceContext, node_local_addresses
    from kpa.sources import load_rules

    t0 = time.perf_counter()
    rs = load_rules([str(dump)])
    load = time.perf_counter() - t0
    node_ips = [ip for n in cluster.nodes if n.name == options.node_name for ip in n.ips]
    local = node_local_addresses(node_ips)
    entries = [(e.address, e.port, (v.protocol or "TCP").lower())
               for v in service_ports(rs) for e in v.entries if e.kind == "clusterIP" and e.address]
    times: list[float] = []
    sweep0 = time.perf_counter()
    for ip, port, proto in entries:
        t = time.perf_counter()
        trace(rs, PacketSpec(src="10.244.0.9", dst=ip, proto=proto, dport=port), TraceContext(local=local))
        times.append(time.perf_counter() - t)
    sweep = time.perf_counter() - sweep0
    times.sort()
    return {"load_seconds": load, "clusterip_entries": len(entries), "trace_median_ms": statistics.median(times) * 1000,
            "trace_p95_ms": times[int(len(times) * 0.95)] * 1000, "sweep_seconds": sweep}


def bench_nft(cluster: Any, options: Any, workdir: Path, repeat: int, reference: bool = True) -> dict[str, Any]:
    try:
        from kpa.gen.nft_capture import capture_nft
        from kpa.gen.nftables import render_nft
    except ImportError:
        return {}
    text = render_nft(cluster, options, "ipv4")
    listing = capture_nft(text)
    as_json = capture_nft(text, json=True)
    text_path = workdir / "nftables-mode.nft"
    json_path = workdir / "nftables-mode.json"
    text_path.write_text(listing)
    json_path.write_text(as_json)
    out: dict[str, Any] = {}
    out["kpa_check_nft_text"] = best_of(repeat, [sys.executable, "-m", "kpa", "check", "-r", str(text_path)])
    out["kpa_check_nft_json"] = best_of(repeat, [sys.executable, "-m", "kpa", "check", "-r", str(json_path)])
    if reference:
        with scratch_netns("kpab") as ns:
            out["nft_c"] = best_of(repeat, ["ip", "netns", "exec", ns, "nft", "-c", "-f", str(text_path)])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="5000x5,10000x10", help="SERVICESxENDPOINTS, comma separated")
    ap.add_argument("--repeat", type=int, default=3, help="runs per whole-process measurement (best is kept)")
    ap.add_argument("--out", help="also write the results as JSON here")
    ap.add_argument("--no-nft-reference", action="store_true",
                    help="skip `nft -c -f` (nft 1.0.6 needs many GiB and tens of minutes at 10,000 Services)")
    ap.add_argument("--fuzz", type=float, metavar="SECONDS",
                    help="instead, run the fuzzer (tests/fuzzer.py) over mutated dumps and objects this long")
    ap.add_argument("--fuzz-seed", type=int, default=int(time.time()))
    args = ap.parse_args()
    if args.fuzz:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        import fuzzer

        report = fuzzer.fuzz(args.fuzz, args.fuzz_seed, per_case=60,
                             on_failure=lambda f: print(f"FAIL ({f.kind}): {fuzzer.reproducer(f, 'kpa-fuzz-failures')}\n"
                                                        f"{f.detail}", flush=True))
        print(f"fuzz seed {args.fuzz_seed}: {report.cases} cases in {args.fuzz:g} s, outcomes {report.by_outcome}, "
              f"{len(report.failures)} failures")
        raise SystemExit(1 if report.failures else 0)
    if os.geteuid() != 0:
        raise SystemExit("benchmarks load rules into a network namespace: run as root")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            services, endpoints = (int(x) for x in size.split("x"))
            print(f"== {services} services x {endpoints} endpoints", flush=True)
            r = bench_size(services, endpoints, Path(tmp), args.repeat, not args.no_nft_reference)
            results.append(r)
            for k, v in r.items():
                if isinstance(v, str):
                    print(f"  {k:<22} {v}")
                elif isinstance(v, tuple):
                    print(f"  {k:<22} {v[0]:8.3f} s  {v[1] / 1024:8.1f} MiB peak")
                elif isinstance(v, float):
                    print(f"  {k:<22} {v:8.3f}")
                else:
                    print(f"  {k:<22} {v}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
