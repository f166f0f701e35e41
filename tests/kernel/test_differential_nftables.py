"""kpa's tracing of kube-proxy's nftables mode against the real kernel.

For every ``nft list ruleset`` fixture of kube-proxy's nftables mode (IPv4, and IPv6
where present) the text dump is loaded into the harness's node namespace with
``nft -f``, the probe flows derived from the cluster objects are sent, and what the
kernel did to each flow is compared with kpa's trace of the same packet (see
diffutil.py for the evidence and the comparison). kpa reads most scenarios from the
text dump and some from the ``nft -j`` JSON dump, so both readers face the kernel.

Session affinity lives in nft sets with timeouts here, not in xt_recent lists: the
second connection is predicted from the sets the kernel filled on the first one.
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import pytest
import yaml

from kpa.netfilter.engine import trace
from kpa.netfilter.model import Ruleset
from kpa.netfilter.packet import TraceContext, node_local_addresses
from kpa.sources import load_rules
from kpa.sources import parse_text as load_rules_text

from .diffutil import (
    DETERMINISTIC_FLOWS,
    ClusterView,
    Fate,
    Prediction,
    Probe,
    Verdict,
    affinity_rounds,
    canon,
    cluster_view,
    collect,
    finish_module,
    flow,
    flow_count,
    from_json,
    from_outcomes,
    install_observer,
    kernel_fate,
    packet_spec,
    probes,
    report,
    run_batch,
)
from .harness import (
    Family,
    Observation,
    Topology,
    TraceLine,
)

pytestmark = pytest.mark.kernel

FIXTURES = Path(__file__).parent.parent / "fixtures"
NFT_DIR = FIXTURES / "nft" / "kube-proxy"
SUFFIX = {"ipv4": "v4", "ipv6": "v6"}
FAMILY = {"v4": "ipv4", "v6": "ipv6"}
TABLE = "kube-proxy"
# kpa reads these from the ``nft -j`` dump instead of the text one; together they cover
# source ranges, affinity sets, numgen maps and IPv6.
JSON_CASES = {("loadbalancer-source-ranges", "ipv4"), ("session-affinity", "ipv4"),
              ("dual-stack", "ipv6")}
SPLIT_FLOWS = 200
# The kitchen sink repeats Services the small scenarios measure with SPLIT_FLOWS.
LARGE_SPLIT_FLOWS = 40
# kube-proxy's nftables mode has no SCTP-specific handling the kernel here could run.
PROTOCOLS = ("tcp", "udp")


@dataclass(frozen=True)
class Case:
    name: str
    family: Family

    @property
    def reader(self) -> str:
        return "json" if (self.name, self.family) in JSON_CASES else "text"

    @property
    def id(self) -> str:
        return f"{self.name}-{SUFFIX[self.family]}-{self.reader}"

    def path(self, ext: str) -> Path:
        return NFT_DIR / f"{self.name}.{SUFFIX[self.family]}.{ext}"


def _cases() -> list[Case]:
    out = []
    for p in sorted(NFT_DIR.glob("*.nft")):
        name, suffix, _ = p.name.rsplit(".", 2)
        out.append(Case(name, FAMILY[suffix]))  # type: ignore[arg-type]
    return out


CASES = _cases()


@dataclass
class Env:
    case: Case
    topo: Topology
    view: ClusterView
    ruleset: Ruleset
    rules_path: Path
    probes: list[Probe]
    split_flows: int


def _build_env(case: Case) -> Iterator[Env]:
    meta = json.loads((FIXTURES / "clusters" / f"{case.name}.meta.json").read_text())
    objects = list(yaml.safe_load_all(
        (FIXTURES / "clusters" / f"{case.name}.yaml").read_text()))
    view = cluster_view(meta, objects, case.family)
    rules_path = case.path("json" if case.reader == "json" else "nft")
    ruleset = load_rules([str(rules_path)])
    with Topology(view.spec()) as topo:
        # The kernel always runs the text dump: it is what `nft -f` takes back.
        topo.load_nft(case.path("nft").read_text())
        install_observer(topo)
        yield Env(case, topo, view, ruleset, rules_path, probes(view, PROTOCOLS),
                  LARGE_SPLIT_FLOWS if case.name == "kitchen-sink" else SPLIT_FLOWS)


_TALLY: collections.Counter[str] = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def summary(request: pytest.FixtureRequest) -> Iterator[None]:
    """Report how much was compared, and prove no namespace outlived its topology."""
    yield
    finish_module(request, _TALLY, "nftables differential")


@pytest.fixture(scope="module", params=CASES, ids=[c.id for c in CASES])
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    yield from _build_env(request.param)


# ------------------------------------------------------------------------------ predicting
# nft spells reject types as "<icmp|icmpv6|icmpx|tcp> <code>"; diffutil knows which socket
# error each iptables --reject-with name produces, so nft's names are translated to those.
_ICMPV6_CODES = {"admin-prohibited": "adm-prohibited"}


def iptables_reject_name(detail: str | None, family: Family) -> str | None:
    """The iptables --reject-with name of an nft reject type (None: the default)."""
    if not detail:
        return None
    words = detail.replace(" type ", " ").replace(" code ", " ").split()
    if words == ["tcp", "reset"]:
        return "tcp-reset"
    if len(words) != 2:
        return detail
    kind, code = words
    if kind == "icmpx":  # the family's own ICMP; icmpx no-route is net-unreachable in v4
        kind = "icmpv6" if family == "ipv6" else "icmp"
        if kind == "icmp" and code == "no-route":
            code = "net-unreachable"
    if kind == "icmpv6":
        return "icmp6-" + _ICMPV6_CODES.get(code, code)
    return f"{kind}-{code}"


def nft_predict(ruleset: Ruleset, probe: Probe, view: ClusterView,
                affinity: Sequence[str] = ()) -> list[Prediction]:
    ctx = TraceContext(local=node_local_addresses(view.all_node_ips),
                       affinity={name: True for name in affinity}, affinity_default=False)
    outcomes = trace(ruleset, packet_spec(probe, view.family), ctx).outcomes
    return from_outcomes(
        dataclasses.replace(o, detail=iptables_reject_name(o.detail, view.family))
        if o.verdict == "REJECT" else o for o in outcomes)


def nft_predict_cli(rules: Path, probe: Probe, view: ClusterView) -> list[Prediction]:
    """``kpa trace … -o json`` as a user runs it."""
    argv = [sys.executable, "-m", "kpa", "trace", "-r", str(rules), "--src", probe.src,
            "--dst", probe.dst, "-p", probe.proto, "--dport", str(probe.dport),
            "--origin", probe.kpa_origin, "-o", "json"]
    for ip in view.all_node_ips:
        argv += ["--node-ip", ip]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(argv)} failed: {proc.stderr.strip()}"
    doc = json.loads(proc.stdout)
    for o in doc["outcomes"]:
        if o.get("reject_with"):
            o["reject_with"] = iptables_reject_name(o["reject_with"], view.family)
    return from_json(doc)


# ------------------------------------------------------------------------------ running
def run(env: Env, items: Sequence[Probe], preds: dict[Probe, list[Prediction]],
        counts: dict[Probe, int]) -> list[Verdict]:
    return run_batch(env.topo, env.view, items, preds, counts, _TALLY)


# ------------------------------------------------------------------------------ affinity
def _elem_addr(elem: object) -> str | None:
    # Elements of a timeout set come as {"elem": {"val": addr, "timeout": …}}.
    if isinstance(elem, dict):
        inner = elem.get("elem", elem)
        val = inner.get("val") if isinstance(inner, dict) else inner
    else:
        val = elem
    return canon(val) if isinstance(val, str) else None


def affinity_sets(topo: Topology) -> dict[str, set[str]]:
    """kube-proxy's dynamic set name -> client addresses the kernel put in it."""
    doc = json.loads(topo.run_in("node", ["nft", "-j", "list", "sets"]))
    out: dict[str, set[str]] = {}
    for item in doc["nftables"]:
        s = item.get("set")
        # nft 1.0.6 lists a "dynamic,timeout" set with the timeout flag only.
        flags = set(s.get("flags") or []) if s else set()
        if not s or s.get("table") != TABLE or not flags & {"dynamic", "timeout"}:
            continue
        out[s["name"]] = {a for e in s.get("elem", []) if (a := _elem_addr(e))}
    return out


def flush_affinity(topo: Topology) -> None:
    """Empty every affinity set: like xt_recent lists, they outlive the flows."""
    for name in affinity_sets(topo):
        fam = "ip6" if topo.spec.family == "ipv6" else "ip"
        topo.run_in("node", ["nft", "flush", "set", fam, TABLE, name])


# ------------------------------------------------------------------------------ tests
def test_kpa_agrees_with_kernel(env: Env) -> None:
    """Flows to Services without session affinity: every probe in one batch."""
    items = [p for p in env.probes if not p.affinity]
    preds = {p: nft_predict(env.ruleset, p, env.view) for p in items}
    counts = {p: flow_count(p, preds[p], env.split_flows) for p in items}
    flush_affinity(env.topo)
    verdicts = run(env, items, preds, counts)
    assert all(not v.problems for v in verdicts), report(verdicts)


def test_session_affinity_sticks(env: Env) -> None:
    """A first connection goes where kpa's default (client in no set) allows; a second
    one from the same source must follow the sets the kernel filled in between."""
    items = [p for p in env.probes if p.affinity]
    if not items:
        pytest.skip("no Service with session affinity")
    verdicts: list[Verdict] = []
    for group in affinity_rounds(items):
        flush_affinity(env.topo)
        first = {p: nft_predict(env.ruleset, p, env.view) for p in group}
        got = run(env, group, first, dict.fromkeys(group, 1))
        verdicts += got
        sets = affinity_sets(env.topo)
        member = {p: sorted(n for n, srcs in sets.items() if canon(p.src) in srcs)
                  for p in group}
        for v in got:
            (fate,) = v.kernel
            # Otherwise the second connection would test nothing new.
            assert fate.dnat is None or member[v.probe], f"{v.probe.label}: no set entry"
        second = {p: nft_predict(env.ruleset, p, env.view, member[p]) for p in group}
        verdicts += run(env, group, second, dict.fromkeys(group, DETERMINISTIC_FLOWS))
    assert all(not v.problems for v in verdicts), report(verdicts)


def test_cli_trace_json_agrees_with_kernel() -> None:
    """The same comparison through ``kpa trace -o json`` reading the JSON dump."""
    case = Case("loadbalancer-source-ranges", "ipv4")
    assert case.reader == "json"
    for env in _build_env(case):
        items = [p for p in env.probes if not p.affinity]
        preds = {p: nft_predict_cli(env.rules_path, p, env.view) for p in items}
        counts = {p: flow_count(p, preds[p], env.split_flows) for p in items}
        verdicts = run(env, items, preds, counts)
        assert all(not v.problems for v in verdicts), report(verdicts)


def _by_fate(preds: Sequence[Prediction]) -> dict[tuple[Fate, tuple[str, ...]], Fraction]:
    out: dict[tuple[Fate, tuple[str, ...]], Fraction] = collections.defaultdict(Fraction)
    for x in preds:
        out[(x.fate, x.conditions)] += x.probability
    return dict(out)


def test_readers_agree() -> None:
    """Text and JSON dumps of each scenario give kpa the same predictions, so the
    kernel comparison of one reader speaks for the other as well."""
    for case in CASES:
        meta = json.loads((FIXTURES / "clusters" / f"{case.name}.meta.json").read_text())
        objects = list(yaml.safe_load_all(
            (FIXTURES / "clusters" / f"{case.name}.yaml").read_text()))
        view = cluster_view(meta, objects, case.family)
        text = load_rules([str(case.path("nft"))])
        js = load_rules([str(case.path("json"))])
        for p in probes(view, PROTOCOLS):
            a, b = _by_fate(nft_predict(text, p, view)), _by_fate(nft_predict(js, p, view))
            assert a == b, f"{case.id} {p.label}: text {a} != json {b}"


def _kernel_chains(lines: Sequence[TraceLine]) -> list[str]:
    """kube-proxy chains of the first traced packet, consecutive repeats folded."""
    ids = [t.trace_id for t in lines if t.table == TABLE]
    assert ids, "nft monitor trace reported nothing for kube-proxy's table"
    first = ids[0]
    chains = [t.chain for t in lines if t.trace_id == first and t.table == TABLE]
    return [c for i, c in enumerate(chains) if i == 0 or chains[i - 1] != c]


def _kpa_chains(path: Sequence[object]) -> list[str]:
    chains = [h.chain for h in path if h.table == TABLE]  # type: ignore[attr-defined]
    return [c for i, c in enumerate(chains) if i == 0 or chains[i - 1] != c]


def test_path_matches_nft_trace() -> None:
    """kpa's chain sequence for one pod -> ClusterIP flow is the one `nft monitor trace`
    reports; the kernel's random endpoint choice picks which of kpa's outcomes."""
    case = Case("clusterip", "ipv4")
    for env in _build_env(case):
        probe = next(p for p in env.probes if p.origin == "client_pod"
                     and p.label.endswith("pod->clusterIP") and p.endpoints > 1)
        addr = "ip6" if env.view.family == "ipv6" else "ip"
        topo = env.topo
        sent: list[Observation] = []

        def send(topo: Topology = topo, probe: Probe = probe,
                 sent: list[Observation] = sent) -> None:
            sent.extend(topo.send_many([flow(probe)], timeout=0.3))

        lines = topo.nft_trace(
            send, match=f"{addr} saddr {probe.src} {addr} daddr {probe.dst} "
                  f"{probe.proto} dport {probe.dport}")
        (obs,) = sent
        ev = collect(env.topo)
        fate = kernel_fate(obs, ev, {env.view.node_ip, "::1"})
        ctx = TraceContext(local=node_local_addresses(env.view.all_node_ips),
                           affinity_default=False)
        outcomes = trace(env.ruleset, packet_spec(probe, env.view.family), ctx).outcomes
        kernel = _kernel_chains(lines)
        candidates = []
        for o in outcomes:
            dnat = None
            if o.state.dnat is not None:
                dnat = (str(ipaddress.ip_address(o.state.dnat[0])), o.state.dnat[1])
            if o.verdict == fate.verdict and dnat == fate.dnat:
                candidates.append(_kpa_chains(o.path))
        assert candidates, f"kernel fate {fate} is not among kpa's outcomes"
        assert kernel in candidates, (
            f"kernel chains {kernel}\nkpa chains for {fate}: {candidates}")


@pytest.mark.parametrize("mutation", ["numgen", "dnat-port", "masquerade"])
def test_comparison_flags_a_wrong_prediction(mutation: str) -> None:
    """The comparison has teeth for nft rules too: kpa fed a subtly different ruleset
    than the kernel runs must be caught, by the binomial check or an unpredicted fate."""
    case = Case("clusterip", "ipv4")
    first = "goto endpoint-3SIRFEN2-default/web/tcp/http__10.244.0.10/8080"
    for env in _build_env(case):
        text = case.path("nft").read_text()
        wrong = {
            # Same endpoints, different shares: 4/6 to the first instead of the kernel's
            # 1/3, far enough apart that 200 flows tell them apart every time.
            "numgen": [(f"numgen random mod 3 vmap {{ 0 : {first}, 1 :",
                        "numgen random mod 6 vmap { "
                        + ", ".join(f"{k} : {first}" for k in range(4)) + ", 4 :"),
                       (" 2 : goto endpoint-4ZRRYAFG", " 5 : goto endpoint-4ZRRYAFG")],
            "dnat-port": [("dnat to 10.244.1.11:8080", "dnat to 10.244.1.11:8081")],
            # Nothing marked: flows from outside the cluster would keep their source.
            "masquerade": [("meta mark set meta mark | 0x00004000",
                            "meta mark set meta mark | 0x00000000")],
        }[mutation]
        for old, new in wrong:
            assert text.count(old) == 1, old
            text = text.replace(old, new)
        bad = load_rules_text(text, "mutated.nft")
        items = [p for p in env.probes if not p.affinity]
        preds = {p: nft_predict(bad, p, env.view) for p in items}
        counts = {p: SPLIT_FLOWS if p.endpoints > 1 else DETERMINISTIC_FLOWS for p in items}
        verdicts = run(env, items, preds, counts)
        assert any(v.problems for v in verdicts), report(verdicts)
