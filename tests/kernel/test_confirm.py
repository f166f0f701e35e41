"""`kpa trace --confirm`: the printed commands, run as printed in a node namespace, make the
kernel trace the packet through the chains kpa predicted, and the printed clean-up removes
every trace of them."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from .harness import Topology, default_spec, wait_until_traced, wait_until_tracing

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).parent.parent.parent
F = ROOT / "tests" / "fixtures"
CLIENT = "203.0.113.10"  # an external client of the harness topology


def kpa_confirm(rules: Path) -> dict[str, object]:
    res = subprocess.run([sys.executable, "-m", "kpa", "trace", "-r", str(rules), "--node-ip", "192.168.10.2",
                          "--src", CLIENT, "--dst", "10.96.0.11", "-p", "tcp", "--dport", "80", "--confirm",
                          "-o", "json"], capture_output=True, text=True, check=True, cwd=ROOT)
    doc: dict[str, object] = json.loads(res.stdout)
    return doc


def run_printed(topo: Topology, command: str) -> None:
    """Run a printed command the way a person would paste it into a root shell on the node."""
    topo.run_in("node", ["sh", "-c", command])


def watch(topo: Topology, command: str, action: object) -> str:
    monitor = subprocess.Popen(["ip", "netns", "exec", topo.name("node"), "sh", "-c", f"exec {command}"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_tracing(monitor)
        action()  # type: ignore[operator]
        wait_until_traced(monitor)
    finally:
        monitor.terminate()
        out, _ = monitor.communicate(timeout=5)
    return out


def predicted_chains(doc: dict[str, object]) -> set[str]:
    chains: set[str] = set()
    for o in doc["outcomes"]:  # type: ignore[attr-defined]
        chains.update(h["chain"] for h in o["path"])
    return chains


@pytest.mark.parametrize(("backend", "rules"), [
    ("nftables", F / "nft" / "kube-proxy" / "clusterip.v4.nft"),
    ("iptables-nft", F / "iptables" / "clusterip.nft.v4.save"),
])
def test_printed_commands_trace_the_predicted_chains_and_clean_up(backend: str, rules: Path) -> None:
    doc = kpa_confirm(rules)
    confirm = doc["confirm"]
    assert confirm["backend"] == backend  # type: ignore[index]
    with Topology(default_spec("ipv4")) as topo:
        if backend == "nftables":
            topo.load_nft(rules.read_text())
        else:
            topo.load_iptables(rules.read_text(), backend="nft")
        before = topo.run_in("node", ["nft", "-s", "list", "ruleset"])
        for cmd in confirm["setup"]:  # type: ignore[index]
            run_printed(topo, cmd)
        (watch_cmd,) = confirm["watch"]  # type: ignore[index]
        out = watch(topo, watch_cmd, lambda: topo.send("external", CLIENT, "10.96.0.11", "tcp", 80, timeout=0.3))
        traced = [ln for ln in out.splitlines() if "trace" in ln.lower() or "TRACE" in ln]
        assert traced, f"no trace from {watch_cmd!r}:\n{out}"
        # The kernel walked the Service's chains kpa named: the entry map/chain and the Service chain.
        service_chain = next(c for c in predicted_chains(doc) if c.startswith(("KUBE-SVC-", "service-")))
        entry_chain = "KUBE-SERVICES" if backend == "iptables-nft" else "services"
        assert any(entry_chain in ln for ln in traced), out
        assert any(service_chain in ln for ln in traced), out
        # Only the printed clean-up is needed to get back to the ruleset as loaded.
        for cmd in confirm["cleanup"]:  # type: ignore[index]
            run_printed(topo, cmd)
        after = topo.run_in("node", ["nft", "-s", "list", "ruleset"])
        if backend == "iptables-nft" and "table ip raw" not in before:
            # iptables-nft creates the raw table for the rule; deleting the rule leaves its empty
            # built-in chains, which change nothing.
            raw = topo.run_in("node", ["iptables-nft-save", "-t", "raw"])
            assert not [ln for ln in raw.splitlines() if ln.startswith("-A")], raw
            after = re.sub(r"table ip raw \{.*?\n\}\n", "", after, flags=re.S)
        assert after == before
    assert all(shlex.split(c) for c in confirm["setup"])  # type: ignore[index]
