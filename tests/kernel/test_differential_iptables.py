"""kpa's iptables tracing against the real kernel, for iptables-nft and iptables-legacy.

For every scenario fixture (and a few random clusters captured through the real save
tool) the saved kube-proxy rules are loaded into a namespace topology, probe flows
derived from the cluster objects are sent, and what the kernel did to each flow is
compared with kpa's trace of the same packet (see diffutil.py for the evidence and the
comparison). The kernel is the reference; no test states what a Service should do.
"""

from __future__ import annotations

import collections
import json
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from kpa.gen.capture import capture_iptables
from kpa.gen.cluster import random_cluster
from kpa.gen.iptables import render_restore
from kpa.gen.objects import to_objects
from kpa.gen.options import ProxierOptions, meta_dict
from kpa.netfilter.model import Ruleset
from kpa.parse.iptables_save import parse_iptables

from .diffutil import (
    DETERMINISTIC_FLOWS,
    ClusterView,
    Prediction,
    Probe,
    Verdict,
    affinity_rounds,
    cluster_view,
    finish_module,
    flow_count,
    install_observer,
    predict,
    predict_cli,
    probes,
    recent_lists,
    report,
    run_batch,
)
from .harness import (
    Backend,
    Family,
    Topology,
)

pytestmark = pytest.mark.kernel

FIXTURES = Path(__file__).parent.parent / "fixtures"
SUFFIX = {"ipv4": "v4", "ipv6": "v6"}
BACKENDS: tuple[Backend, ...] = ("nft", "legacy")
SCENARIO_NAMES = sorted(p.name.removesuffix(".meta.json")
                        for p in (FIXTURES / "clusters").glob("*.meta.json"))
RANDOM_SEEDS = (1, 2, 3)
RANDOM_SERVICES = 20
RANDOM_ENDPOINTS = 3
# Flows per probe when the kernel picks an endpoint at random (diffutil.DETERMINISTIC_FLOWS
# otherwise).
SPLIT_FLOWS = 200
# The kitchen sink and random clusters repeat Services the small scenarios already
# measure with SPLIT_FLOWS; fewer flows keep the module fast and still catch gross errors.
LARGE_SPLIT_FLOWS = 40


def _sctp_supported() -> bool:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
    except OSError:
        return False
    return True


PROTOCOLS = ("tcp", "udp", "sctp") if _sctp_supported() else ("tcp", "udp")


def _families(name: str) -> list[Family]:
    meta = json.loads((FIXTURES / "clusters" / f"{name}.meta.json").read_text())
    return list(meta["families"])


@dataclass(frozen=True)
class Case:
    backend: Backend
    name: str  # scenario name, or random-<seed>
    family: Family

    @property
    def id(self) -> str:
        return f"{self.backend}-{self.name}-{SUFFIX[self.family]}"


CASES = [Case(b, n, f) for b in BACKENDS for n in SCENARIO_NAMES for f in _families(n)]
CASES += [Case(b, f"random-{s}", "ipv4") for b in BACKENDS for s in RANDOM_SEEDS]


@dataclass
class Env:
    case: Case
    topo: Topology
    view: ClusterView
    ruleset: Ruleset
    rules_path: Path | None
    probes: list[Probe]
    split_flows: int


def _inputs(case: Case) -> tuple[str, Path | None, dict[str, object], list[dict[str, object]]]:
    if case.name.startswith("random-"):
        cluster = random_cluster(int(case.name.split("-")[1]), RANDOM_SERVICES,
                                 RANDOM_ENDPOINTS)
        options = ProxierOptions(node_name="node-0")
        text = capture_iptables(render_restore(cluster, options, case.family), case.backend,
                                case.family)
        return text, None, meta_dict(cluster, options), to_objects(cluster)
    path = FIXTURES / "iptables" / f"{case.name}.{case.backend}.{SUFFIX[case.family]}.save"
    meta = json.loads((FIXTURES / "clusters" / f"{case.name}.meta.json").read_text())
    objects = list(yaml.safe_load_all((FIXTURES / "clusters" / f"{case.name}.yaml").read_text()))
    return path.read_text(), path, meta, objects


def _build_env(case: Case, probe_filter: str | None = None) -> Iterator[Env]:
    text, path, meta, objects = _inputs(case)
    view = cluster_view(meta, objects, case.family)
    ruleset = parse_iptables(text, str(path or f"{case.name}.save"))
    large = case.name == "kitchen-sink" or case.name.startswith("random-")
    with Topology(view.spec()) as topo:
        topo.load_iptables(text, backend=case.backend)
        install_observer(topo)
        yield Env(case, topo, view, ruleset, path, probes(view, PROTOCOLS),
                  LARGE_SPLIT_FLOWS if large else SPLIT_FLOWS)


_TALLY: collections.Counter[str] = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def summary(request: pytest.FixtureRequest) -> Iterator[None]:
    """Report how much was compared, and prove no namespace outlived its topology."""
    yield
    finish_module(request, _TALLY, "differential")


@pytest.fixture(scope="module", params=CASES, ids=[c.id for c in CASES])
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    yield from _build_env(request.param)


# ------------------------------------------------------------------------------ running
def run(env: Env, items: Sequence[Probe], preds: dict[Probe, list[Prediction]],
        counts: dict[Probe, int]) -> list[Verdict]:
    return run_batch(env.topo, env.view, items, preds, counts, _TALLY)


# ------------------------------------------------------------------------------ tests
def test_kpa_agrees_with_kernel(env: Env) -> None:
    """Flows to Services without session affinity: every probe in one batch."""
    items = [p for p in env.probes if not p.affinity]
    preds = {p: predict(env.ruleset, p, env.view) for p in items}
    counts = {p: flow_count(p, preds[p], env.split_flows) for p in items}
    env.topo.clear_recent()
    verdicts = run(env, items, preds, counts)
    assert all(not v.problems for v in verdicts), report(verdicts)


def test_session_affinity_sticks(env: Env) -> None:
    """A first connection goes where kpa's default (client in no list) allows; a second
    one from the same source must follow the lists the kernel filled in between."""
    items = [p for p in env.probes if p.affinity]
    if not items:
        pytest.skip("no Service with session affinity")
    verdicts: list[Verdict] = []
    for group in affinity_rounds(items):
        env.topo.clear_recent()
        first = {p: predict(env.ruleset, p, env.view) for p in group}
        got = run(env, group, first, dict.fromkeys(group, 1))
        verdicts += got
        lists = recent_lists(env.topo)
        member = {p: sorted(n for n, srcs in lists.items() if p.src in srcs) for p in group}
        for v in got:
            (fate,) = v.kernel
            # Otherwise the second connection would test nothing new.
            assert fate.dnat is None or member[v.probe], f"{v.probe.label}: no recent entry"
        second = {p: predict(env.ruleset, p, env.view, member[p]) for p in group}
        verdicts += run(env, group, second, dict.fromkeys(group, DETERMINISTIC_FLOWS))
    assert all(not v.problems for v in verdicts), report(verdicts)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cli_trace_json_agrees_with_kernel(backend: Backend) -> None:
    """The same comparison through ``kpa trace -o json`` as a user runs it."""
    case = Case(backend, "loadbalancer-source-ranges", "ipv4")
    for env in _build_env(case):
        assert env.rules_path is not None
        items = [p for p in env.probes if not p.affinity]
        preds = {p: predict_cli(env.rules_path, p, env.view) for p in items}
        counts = {p: flow_count(p, preds[p], env.split_flows) for p in items}
        verdicts = run(env, items, preds, counts)
        assert all(not v.problems for v in verdicts), report(verdicts)


@pytest.mark.parametrize("mutation", ["probability", "dnat-port", "masquerade"])
def test_comparison_flags_a_wrong_prediction(mutation: str) -> None:
    """The comparison has teeth: kpa fed a subtly different ruleset than the kernel runs
    must be caught, by the binomial check or by an unpredicted kernel fate."""
    case = Case("nft", "clusterip", "ipv4")
    for env in _build_env(case):
        text = (FIXTURES / "iptables" / "clusterip.nft.v4.save").read_text()
        wrong = {
            # 1/3 -> 9/10 for the first endpoint: same endpoints, different shares (far
            # enough apart that 200 flows tell them apart every time).
            "probability": ("--probability 0.33333333349", "--probability 0.90000000000"),
            "dnat-port": ("10.244.1.11:8080", "10.244.1.11:8081"),
            # Nothing marked for masquerade: node-originated flows would keep their source.
            "masquerade": ("-j MARK --set-xmark 0x4000/0x4000", "-j MARK --set-xmark 0x0/0x0"),
        }[mutation]
        assert wrong[0] in text
        bad = parse_iptables(text.replace(wrong[0], wrong[1]), "mutated.save")
        items = [p for p in env.probes if not p.affinity]
        preds = {p: predict(bad, p, env.view) for p in items}
        counts = {p: SPLIT_FLOWS if p.endpoints > 1 else DETERMINISTIC_FLOWS for p in items}
        verdicts = run(env, items, preds, counts)
        assert any(v.problems for v in verdicts), report(verdicts)
