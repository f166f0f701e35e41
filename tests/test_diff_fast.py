"""`kpa diff`'s shortcut gives exactly the report of the full computation.

The shortcut skips an entry point whose traces would read the same rules in
A and B (kpa.netfilter.reach). These tests diff pairs of rulesets twice, with
the shortcut and with every entry point traced (`shortcut=False`), and
require the same JSON report, warnings and uncertain outcomes included: real
fixtures against each other, and random clusters before and after rollouts
and unrelated changes, IPv4 and IPv6, iptables-save text through the kernel
(kernel tests) and the generator's restore text (no kernel needed).
"""

from __future__ import annotations

import copy
import ipaddress
import json
import pickle
import random
from pathlib import Path
from typing import Any

import pytest

from kpa.cli import DIFF_KINDS
from kpa.diff import diff_rulesets
from kpa.gen.cluster import Cluster, Endpoint, random_cluster
from kpa.gen.iptables import render_restore
from kpa.gen.objects import to_objects
from kpa.gen.options import ProxierOptions
from kpa.k8s.objects import ClusterObjects, load_objects, objects_from_documents
from kpa.netfilter import reach
from kpa.netfilter.domain import IntSet, describe_addresses
from kpa.netfilter.index import address_value, build, text_pin
from kpa.netfilter.model import Chain, Family, LazyRule, Rule, Ruleset, Table
from kpa.netfilter.reach import Comparison, Signatures, rule_facts
from kpa.parse.iptables_save import parse_iptables
from kpa.sources import load_rules

FIX = Path(__file__).parent / "fixtures"
SAVES = sorted((FIX / "iptables").glob("*.save"))


def _both(a: Ruleset, b: Ruleset, objects: ClusterObjects | None, node_ips: list[str],
          cidrs: list[str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    fast = diff_rulesets(a, b, objects, node_ips, service_cidrs=cidrs).to_json()
    full = diff_rulesets(a, b, objects, node_ips, service_cidrs=cidrs, shortcut=False).to_json()
    return fast, full


def _meta(scenario: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIX / "clusters" / f"{scenario}.meta.json").read_text())
    return data


def _fixture_pairs() -> list[tuple[Path, Path]]:
    """Each fixture against itself, its other backend's dump, and the next scenario of its family."""
    out: list[tuple[Path, Path]] = []
    by_family: dict[str, list[Path]] = {}
    for p in SAVES:
        by_family.setdefault(p.name.split(".")[2], []).append(p)
    for paths in by_family.values():
        for k, p in enumerate(paths):
            out.append((p, p))
            out.append((p, paths[(k + 1) % len(paths)]))
            out.append((p, paths[(k + 7) % len(paths)]))
    return out


@pytest.mark.parametrize(("a", "b"), _fixture_pairs(), ids=lambda p: p.name)
def test_fixture_pairs_give_the_same_report(a: Path, b: Path) -> None:
    scenario = a.name.split(".")[0]
    meta = _meta(scenario)
    node_ips = [ip for ip in meta["node_ips"].values() if ip]
    objects = load_objects([str(FIX / "clusters" / f"{scenario}.yaml")])
    ra, rb = load_rules([str(a)]), load_rules([str(b)])
    fast, full = _both(ra, rb, objects, node_ips, list(meta["service_cidrs"].values()))
    assert fast == full
    # `kpa diff` reads only the kinds it uses (Services, Nodes): the same report.
    some = load_objects([str(FIX / "clusters" / f"{scenario}.yaml")], kinds=DIFF_KINDS)
    assert not some.pods and not some.endpoint_slices
    assert diff_rulesets(ra, rb, some, node_ips, service_cidrs=list(meta["service_cidrs"].values())).to_json() == fast
    # The fast comparison says "same" wherever walking A's rules does (and maybe more often).
    _assert_fast_covers_walk(ra, rb, node_ips)
    # Without objects, the entry points come from the rules themselves.
    fast, full = _both(load_rules([str(a)]), load_rules([str(b)]), None, node_ips)
    assert fast == full


def _assert_fast_covers_walk(a: Ruleset, b: Ruleset, node_ips: list[str]) -> tuple[int, int]:
    """Entry points the walk skips are skipped by the fast comparison too; (fast skips, walk skips)."""
    from kpa.diff import _same_traces, entry_points_from_rules

    fast, walk = _same_traces(a, b), _same_traces(a, b, walk=True)
    if fast is None or walk is None:
        assert fast is None and walk is None
        return 0, 0
    # The same comparison carrying every DNAT target, not only those some large chain pins.
    everything = _Everything()
    real = Comparison._pinned
    Comparison._pinned = lambda self, family: (everything, everything)  # type: ignore[method-assign,assignment,return-value]
    try:
        unfiltered = _same_traces(a, b)
        assert unfiltered is not None
        entries = entry_points_from_rules((a, b), node_ips)
        carried = [unfiltered(e) for e in entries]
    finally:
        Comparison._pinned = real  # type: ignore[method-assign]
    n_fast = n_walk = 0
    for e, c in zip(entries, carried, strict=True):
        f, w = fast(e), walk(e)
        assert f or not w, e
        assert f == c, e
        n_fast += f
        n_walk += w
    return n_fast, n_walk


class _Everything(frozenset[int]):
    """Holds every address and port."""

    def __contains__(self, value: object) -> bool:
        return value is not None


def test_an_identical_fixture_pair_is_not_traced() -> None:
    """The shortcut does skip: a dump compared with itself needs no trace at all."""
    path = FIX / "iptables" / "kitchen-sink.nft.v4.save"
    rs = load_rules([str(path)])
    sig = Signatures(rs)
    assert sig.usable
    base = sig.base(Family.IPV4)
    assert base is not None and not base.anything
    assert sig.signature(Family.IPV4, 0x0A60000A, 53) is not None


# ---------------------------------------------------------------- random clusters


def _rollout(c: Cluster, rng: random.Random, keep_one: bool = False) -> None:
    """Endpoints come and go on a few Services, as in a rolling update.

    With `keep_one`, no Service loses its last usable endpoint (then the
    small filter chains of kube-proxy, which every trace reads, stay the same).
    """
    services = [s for s in c.services if len(s.endpoints) > (2 if keep_one else 0)
                and (not keep_one or all(e.ready for e in s.endpoints))]
    for svc in rng.sample(services, max(1, len(services) // 10)):
        action = rng.randrange(4)
        if action == 0 and len(svc.endpoints) > 1:
            svc.endpoints.pop(rng.randrange(len(svc.endpoints)))
        elif action == 1:
            svc.endpoints[0].ready = not svc.endpoints[0].ready
        elif action == 2:
            ep = svc.endpoints[-1]
            svc.endpoints.append(Endpoint(ip=ep.ip[:-1] + ("7" if ep.ip[-1] != "7" else "8"),
                                          node_name=ep.node_name, ready=True))
        else:
            svc.endpoints[-1].terminating = True
            svc.endpoints[-1].ready = False


def _unrelated(c: Cluster, rng: random.Random) -> None:
    """Changes that are not rollouts: policies, ranges, affinity, whole Services."""
    for svc in rng.sample(c.services, max(1, len(c.services) // 20)):
        action = rng.randrange(5)
        if action == 0:
            svc.external_traffic_policy = "Local" if svc.external_traffic_policy == "Cluster" else "Cluster"
        elif action == 1:
            svc.internal_traffic_policy = "Local" if svc.internal_traffic_policy == "Cluster" else "Cluster"
        elif action == 2:
            svc.session_affinity = "ClientIP" if svc.session_affinity == "None" else "None"
        elif action == 3 and svc.type == "LoadBalancer":
            svc.lb_source_ranges = [*svc.lb_source_ranges, "203.0.113.0/24"]
        else:
            svc.endpoints = []
    del c.services[rng.randrange(len(c.services))]


def _render(c: Cluster, family: str) -> Ruleset:
    return parse_iptables(render_restore(c, ProxierOptions(node_name="node-0"), family), f"{family}.rules")  # type: ignore[arg-type]


@pytest.mark.parametrize(("family", "change", "with_objects"), [
    ("ipv4", "rollout", True), ("ipv6", "rollout", False), ("ipv4", "gentle rollout", False),
    ("ipv6", "gentle rollout", True), ("ipv4", "unrelated", False), ("ipv6", "unrelated", True),
])
def test_random_cluster_pairs_give_the_same_report(family: str, change: str, with_objects: bool) -> None:
    seed = {"ipv4": 21, "ipv6": 22}[family] + 10 * ["rollout", "gentle rollout", "unrelated"].index(change)
    before = random_cluster(seed=seed, services=80, endpoints_per_service=3, families=(family,))  # type: ignore[arg-type]
    after = copy.deepcopy(before)
    if change == "unrelated":
        _unrelated(after, random.Random(seed))
    else:
        _rollout(after, random.Random(seed), keep_one=change == "gentle rollout")
    node_ips = before.node("node-0").ips
    objects = objects_from_documents(to_objects(after)) if with_objects else None
    a, b = _render(before, family), _render(after, family)
    fast, full = _both(a, b, objects, node_ips)
    assert fast == full
    assert not fast["identical"]


def test_random_pair_skips_most_entry_points() -> None:
    """What makes diff fast: after a rollout, almost every entry point needs no trace."""
    before = random_cluster(seed=5, services=200, endpoints_per_service=3)
    # Two load balancers share an address on different ports (past 240 Services the generator's
    # do too); one of them is rolled out.
    lbs = [s for s in before.services if s.type == "LoadBalancer" and s.endpoints]
    first, second = lbs[0], next(s for s in lbs[1:] if not {p.port for p in s.ports} & {p.port for p in lbs[0].ports})
    second.lb_ingress_ips = list(first.lb_ingress_ips)
    after = copy.deepcopy(before)
    _rollout(after, random.Random(5), keep_one=True)
    after.services[before.services.index(first)].endpoints.pop()
    from kpa.diff import _same_traces, entry_points_from_rules

    a, b = _render(before, "ipv4"), _render(after, "ipv4")
    same = _same_traces(a, b)
    assert same is not None
    entries = entry_points_from_rules((a, b), before.node("node-0").ips)
    skipped = sum(1 for e in entries if same(e))
    assert skipped > 0.7 * len(entries)
    assert skipped < len(entries)
    # Rules for a Service's other ports do not make its unchanged ports be traced: the fast
    # comparison skips strictly more than walking A's rules does.
    n_fast, n_walk = _assert_fast_covers_walk(a, b, before.node("node-0").ips)
    assert n_fast == skipped and n_fast > n_walk
    # The engine's indexes that the comparison set up from its own reading of the pins are
    # the indexes the engine builds itself.
    prebuilt = [c for rs in (a, b) for t in rs.tables for c in t.chains.values() if c._index is not None]
    assert len(prebuilt) >= 4
    for chain in prebuilt:
        assert chain._index == build(chain), chain.name
    # Walking A while checking B's chains decides as comparing both sides' signatures does.
    sa, sb = Signatures(a), Signatures(b)
    for e in entries:
        dst = int(ipaddress.ip_address(e.address))
        ga, gb = sa.signature(Family.IPV4, dst, e.port), sb.signature(Family.IPV4, dst, e.port)
        assert sa.same(sb, Family.IPV4, dst, e.port) == (ga is not None and ga == gb)


@pytest.mark.kernel
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_captured_random_pairs_give_the_same_report(family: str) -> None:
    """iptables-save's own text, after a rollout and unrelated changes."""
    from kpa.gen.capture import capture_iptables

    before = random_cluster(seed=31, services=150, endpoints_per_service=3, families=(family,))  # type: ignore[arg-type]
    after = copy.deepcopy(before)
    rng = random.Random(31)
    _rollout(after, rng)
    _unrelated(after, rng)
    options = ProxierOptions(node_name="node-0")
    texts = [capture_iptables(render_restore(c, options, family), "nft", family)  # type: ignore[arg-type]
             for c in (before, after)]
    a, b = (parse_iptables(t, f"{n}.save") for n, t in zip(("a", "b"), texts, strict=True))
    objects = objects_from_documents(to_objects(after))
    fast, full = _both(a, b, objects, before.node("node-0").ips)
    assert fast == full
    assert not fast["identical"]


# ---------------------------------------------------------------- what pins a rule


@pytest.mark.parametrize(("text", "pin"), [
    ('-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m comment --comment "default/kubernetes:https cluster IP" '
     "-m tcp --dport 443 -j KUBE-SVC-NPX46M4PTMTKRN6Y", (0x0A600001, 443)),
    ("-A KUBE-SERVICES -m comment --comment x -m tcp -p tcp -d 10.96.0.23 --dport 443 -j KUBE-SVC-X", (0x0A600017, 443)),
    ('-A KUBE-NODEPORTS -p tcp -m comment --comment "a:b health check node port" -m tcp --dport 30014 -j ACCEPT',
     (None, 30014)),
    ('-A KUBE-EXTERNAL-SERVICES -p udp -m comment --comment "x" -m addrtype --dst-type LOCAL -m udp --dport 53 '
     "-j REJECT --reject-with icmp-port-unreachable", (None, 53)),
    ("-A KUBE-SERVICES -d fd00:96::a/128 -p tcp -m tcp --dport 80 -j KUBE-SVC-X", (0xFD000096 << 96 | 0xA, 80)),
    # Anything else pins nothing: negations, prefixes, ranges, more matches, other quoting.
    ("-A KUBE-SERVICES ! -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j X", None),
    ("-A KUBE-SERVICES -d 10.96.0.0/24 -p tcp -m tcp --dport 443 -j X", None),
    ("-A KUBE-SERVICES -d fd00:96::/32 -p tcp -m tcp --dport 443 -j X", None),
    ("-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 443:445 -j X", None),
    ("-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp ! --dport 443 -j X", None),
    ("-A KUBE-SERVICES -d 10.96.0.1/32 -s 10.0.0.0/8 -p tcp -m tcp --dport 443 -j X", None),
    ("-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -m tcp --dport 444 -j X", None),
    ("-A KUBE-SERVICES -d 10.96.0.1/32 -p udp -m tcp --dport 443 -j X", None),
    ("-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 443 -j X", (0x0A600001, 443)),
    ("-A KUBE-SERVICES -p tcp -m addrtype --dst-type LOCAL,BROADCAST -m tcp --dport 443 -j X", None),
    ("-A KUBE-SERVICES -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 443 -j DNAT --to-destination 1.2.3.4", None),
    ("-A KUBE-SERVICES -p tcp -m addrtype --src-type LOCAL -m tcp --dport 443 -j X", None),
    ("-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j LOG --log-prefix 'a b'", None),
    ('-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m comment --comment "a" --comment "b" -m tcp --dport 443 -j X', None),
    ("-A KUBE-SERVICES -d 10.96.0.256/32 -p tcp -m tcp --dport 443 -j X", None),
    ("-A KUBE-SERVICES -d 010.96.0.1/32 -p tcp -m tcp --dport 443 -j X", None),
])
def test_pins_are_read_only_from_plain_dispatch_rules(text: str, pin: tuple[int | None, int] | None) -> None:
    assert text_pin(text) == pin


def _indexes(rs: Ruleset) -> dict[str, Any]:
    return {f"{t.family.value} {t.name}/{c.name}": build(c) for t in rs.tables for c in t.chains.values()
            if len(c.rules) > 1}


@pytest.mark.parametrize("save", SAVES, ids=lambda p: p.name)
def test_index_from_rule_text_is_the_index_from_built_rules(save: Path) -> None:
    text = save.read_text()
    assert _indexes(parse_iptables(text, save.name)) == _indexes(parse_iptables(text, save.name, shapes=False))


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_random_cluster_index_from_rule_text_is_the_index_from_built_rules(family: str) -> None:
    cluster = random_cluster(seed=41, services=300, endpoints_per_service=2, families=(family,))  # type: ignore[arg-type]
    text = render_restore(cluster, ProxierOptions(node_name="node-0"), family)  # type: ignore[arg-type]
    lazy = parse_iptables(text, "lazy.rules")
    indexes = _indexes(lazy)
    assert any(i.by_dst for i in indexes.values()) and any(i.by_dport for i in indexes.values())
    assert indexes == _indexes(parse_iptables(text, "full.rules", shapes=False))


# ---------------------------------------------------------------- address text


def _summarised(values: IntSet, version: int) -> list[str]:
    """What describe_addresses means, spelled with ipaddress."""
    cls = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    out: list[str] = []
    for lo, hi in values:
        nets = list(ipaddress.summarize_address_range(cls(lo), cls(hi)))  # type: ignore[arg-type]
        if len(nets) <= 4:
            out.extend(n.compressed if n.prefixlen != n.max_prefixlen else str(n.network_address) for n in nets)
        else:
            out.append(f"{cls(lo)}-{cls(hi)}")
    return out


def test_address_sets_are_described_as_ipaddress_summarises_them() -> None:
    rng = random.Random(7)
    for _ in range(5000):
        version = rng.choice([4, 6])
        bits = 32 if version == 4 else 128
        values = IntSet()
        for _ in range(rng.randrange(1, 4)):
            a = rng.randrange(0, 1 << bits)
            if rng.random() < 0.5:
                host = rng.randrange(0, bits + 1)
                a = a >> host << host
                b = a + (1 << host) - 1
            else:
                b = min(a + rng.randrange(0, 1 << rng.randrange(0, bits)), (1 << bits) - 1)
            values = values | IntSet.range(a, b)
        assert describe_addresses(values, version) == _summarised(values, version)
    for version, bits in ((4, 32), (6, 128)):
        for values in (IntSet.range(0, (1 << bits) - 1), IntSet.single(0), IntSet.single((1 << bits) - 1),
                       IntSet.range(1, (1 << bits) - 2)):
            assert describe_addresses(values, version) == _summarised(values, version)


# ---------------------------------------------------------------- the fast comparison's parts


def _rules_of(rs: Ruleset) -> list[tuple[Table, Rule]]:
    return [(t, r) for t in rs.tables for c in t.chains.values() for r in c.rules]


def _assert_facts_by_shape(rs: Ruleset) -> None:
    cache = reach._FactCache()
    rules = _rules_of(rs)
    for t, r in rules:
        assert cache.facts(t, r) == rule_facts(t, r), r
    # Every rule again, now that every shape is known.
    for t, r in rules:
        assert cache.facts(t, r) == rule_facts(t, r), r


@pytest.mark.parametrize("save", SAVES, ids=lambda p: p.name)
def test_rule_facts_read_once_per_shape_are_each_rules_facts(save: Path) -> None:
    _assert_facts_by_shape(parse_iptables(save.read_text(), save.name))


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_random_cluster_rule_facts_read_once_per_shape_are_each_rules_facts(family: str) -> None:
    cluster = random_cluster(seed=43, services=200, endpoints_per_service=3, families=(family,))  # type: ignore[arg-type]
    rs = _render(cluster, family)
    assert sum(isinstance(r, LazyRule) for _, r in _rules_of(rs)) > 1000
    _assert_facts_by_shape(rs)


def _broken_pairs() -> list[tuple[Ruleset, Ruleset, ClusterObjects, list[str]]]:
    """Pairs where the shortcut skips most entry points: a gentle rollout, and Service ports renumbered."""
    out = []
    for seed in (61, 62):
        before = random_cluster(seed=seed, services=120, endpoints_per_service=3)
        after = copy.deepcopy(before)
        if seed == 61:
            _rollout(after, random.Random(seed), keep_one=True)
        else:
            for svc in random.Random(seed).sample([s for s in after.services if s.endpoints], 5):
                svc.ports[0].port += 1000
        out.append((_render(before, "ipv4"), _render(after, "ipv4"), objects_from_documents(to_objects(after)),
                    before.node("node-0").ips))
    return out


def test_broken_shortcuts_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The report comparison has teeth: each of these plausible mistakes changes some report."""
    pairs = [(a, b, o, ips, diff_rulesets(a, b, o, ips, shortcut=False).to_json()) for a, b, o, ips in _broken_pairs()]

    def caught() -> bool:
        return any(diff_rulesets(a, b, o, ips).to_json() != full for a, b, o, ips, full in pairs)

    assert not caught()
    with monkeypatch.context() as m:
        # A chain outside the base taken as unchanged and leading nowhere.
        m.setattr(Comparison, "_chain", lambda self, state, table, chain: reach._NOTHING)
        assert caught()
    with monkeypatch.context() as m:
        # A changed indexed chain (KUBE-SERVICES) compared with itself instead of with B's.
        m.setattr(Comparison, "_b_side", lambda self, index: index)
        assert caught()
    assert not caught()


def _quad(text: str) -> int | None:
    """A canonical dotted quad's value, spelled out."""
    parts = text.split(".")
    if len(parts) == 4 and all(p.isdigit() and p.isascii() and (p == "0" or p[0] != "0") and int(p) < 256
                               for p in parts):
        a, b, c, d = (int(p) for p in parts)
        return (a << 24) | (b << 16) | (c << 8) | d
    try:
        return int(ipaddress.IPv4Address(text))
    except ValueError:
        return None


def test_dotted_quads_are_read_as_ipaddress_reads_them() -> None:
    rng = random.Random(9)
    pieces = ["0", "1", "00", "01", "9", "10", "99", "100", "199", "200", "249", "250", "255", "256", "300",
              "1000", "", " ", "a", "0x1", "-1", "+1", "\u0661", "\uff11", "\n"]
    for _ in range(20000):
        text = ".".join(rng.choice(pieces) for _ in range(rng.choice([3, 4, 4, 4, 5])))
        assert address_value(text, "32") == _quad(text), repr(text)


def _deepest(succ: dict[str, list[str]], name: str, path: frozenset[str], depth: dict[str, int]) -> int | None:
    """The most chains on a path of jumps from `name` (None: a loop)."""
    if name in path:
        return None
    if name not in depth:
        kids = [_deepest(succ, n, path | {name}, depth) for n in succ[name]]
        if any(k is None for k in kids):
            return None
        depth[name] = 1 + max((k for k in kids if k is not None), default=0)
    return depth[name]


def _depth_ok_by_search(ruleset: Ruleset) -> bool:
    """No loop, and no nesting deeper than half the engine's bound: a plain depth-first search."""
    from kpa.netfilter.engine import MAX_DEPTH

    for t in ruleset.tables:
        succ = {name: [n for r in c.rules for _, n in r.chain_refs() if n in t.chains] for name, c in t.chains.items()}
        depth: dict[str, int] = {}
        for name in succ:
            d = _deepest(succ, name, frozenset(), depth)
            if d is None or d > MAX_DEPTH // 2:
                return False
    return True


def test_loops_and_deep_nesting_are_found_as_a_search_finds_them() -> None:
    from kpa.netfilter.model import Location

    rng = random.Random(11)
    for _ in range(300):
        n = rng.randrange(1, 60)
        table = Table(Family.IPV4, "filter", source="iptables")
        names = [f"C{i}" for i in range(n)]
        for name in names:
            table.chains[name] = Chain(name, "filter")
        deep = rng.random() < 0.3
        for i, name in enumerate(names):
            for _ in range(rng.randrange(0, 3)):
                # Mostly downward jumps (a DAG, sometimes a long one), now and then one back up.
                j = i + 1 if deep else rng.randrange(n)
                if j >= n or (j <= i and rng.random() < 0.8):
                    continue
                text = f"-A {name} -j {names[j]}"
                rule = parse_iptables(f"*filter\n:{name} - [0:0]\n:{names[j]} - [0:0]\n{text}\nCOMMIT\n",
                                      "t").tables[0].chains[name].rules[0]
                rule.location = Location("t", 1)
                table.chains[name].rules.append(rule)
        rs = Ruleset(tables=[table])
        assert reach._depth_ok(rs) == _depth_ok_by_search(rs)


# ---------------------------------------------------------------- half of the Service ports in a child process


def _with_notes() -> tuple[Ruleset, Ruleset, ClusterObjects, list[str]]:
    """A rollout where every Service chain holds a rule kpa does not model, in A and in B.

    Every entry point is traced, and each trace leaves uncertain outcomes named after its entry
    point on both sides: the merged lists show whether they come in entry order.
    """
    before = random_cluster(seed=71, services=40, endpoints_per_service=2, families=("ipv4",))
    after = copy.deepcopy(before)
    _rollout(after, random.Random(71))
    options = ProxierOptions(node_name="node-0")

    def unmodelled(text: str) -> str:
        out = []
        for line in text.splitlines():
            out.append(line)
            if line.startswith("-A KUBE-SVC-") and "KUBE-MARK-MASQ" in line:
                out.append(f'-A {line.split()[1]} -m u32 --u32 "0x0=0x0"')
        return "\n".join(out) + "\n"

    a, b = (parse_iptables(unmodelled(render_restore(c, options, "ipv4")), f"{n}.rules")
            for n, c in (("a", before), ("b", after)))
    return a, b, objects_from_documents(to_objects(after)), before.node("node-0").ips


def _split_pairs() -> list[tuple[Ruleset, Ruleset, ClusterObjects | None, list[str]]]:
    out: list[tuple[Ruleset, Ruleset, ClusterObjects | None, list[str]]] = [_with_notes()]
    for a, b, objects, ips in _broken_pairs():
        out.append((a, b, objects, ips))
        out.append((a, b, None, ips))  # entry points from the rules
    return out


def test_comparing_half_the_ports_in_a_child_gives_the_same_report(monkeypatch: pytest.MonkeyPatch) -> None:
    from kpa import diff, forked

    received: list[int] = []
    collect = forked.ChildJob.collect

    def counted(self: forked.ChildJob) -> bytes | None:
        data = collect(self)
        received.append(len(data or b""))
        return data

    monkeypatch.setattr(forked.ChildJob, "collect", counted)
    pairs = _split_pairs()
    for k, (a, b, objects, ips) in enumerate(pairs):
        alone = diff_rulesets(a, b, objects, ips).to_json()
        split = diff_rulesets(a, b, objects, ips, fork=True).to_json()
        assert split == alone
        assert len(received) == k + 1 and received[-1] > 0  # the child's half came from the child
        assert not alone["identical"]
    notes = diff_rulesets(*pairs[0]).to_json()
    assert {u.split(":")[0] for u in notes["uncertain"]} == {"A", "B"}
    # The child's share of the uncertain outcomes is not empty: the order of the merge is tested.
    assert len(notes["uncertain"]) > 20
    assert not diff._split(None, diff.SPLIT_ENTRIES - 1)


def test_broken_splits_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    from kpa import diff

    pairs = [(a, b, o, ips, diff_rulesets(a, b, o, ips).to_json()) for a, b, o, ips in _split_pairs()[:2]]

    def caught() -> bool:
        return any(diff_rulesets(a, b, o, ips, fork=True).to_json() != alone for a, b, o, ips, alone in pairs)

    assert not caught()
    with monkeypatch.context() as m:
        # Each run of ports handed to both processes, and the child's ports taken without a look.
        m.setattr(diff._Claims, "ports", lambda self: iter(range(self.bounds[-1])))
        assert not caught()  # the child compared ports the parent did too: its part is not used
        m.setattr(diff, "_received", lambda data, theirs: pickle.loads(data) if data else None)
        assert caught()
    with monkeypatch.context() as m:
        # Notes of the two processes put one after the other rather than in entry order.
        def by_part(order: list[diff.ServicePortDiff], parts: list[diff._Part]) -> list[list[str]]:
            for part in parts:
                for k, j, sources in part.differences:
                    order[k].differences.append(diff.EntryDiff(order[k].entries[j], sources))
            return [[x for part in parts for n in part.notes.values() for x in n[i]] for i in range(4)]

        m.setattr(diff, "_merge", by_part)
        assert caught()
    with monkeypatch.context() as m:
        # A child whose result is lost, taken for a child that compared nothing.
        m.setattr(diff, "_received", lambda data, theirs: diff._Part())
        assert caught()
    assert not caught()


def _looped(text: str) -> str:
    """The rules with a chain that jumps to itself: no trace reaches it, but no entry point may be skipped."""
    lines = text.splitlines()
    at = lines.index("*nat") + 1
    lines[at:at] = [":KUBE-LOOPY - [0:0]"]
    end = next(k for k in range(at, len(lines)) if lines[k] == "COMMIT")
    lines[end:end] = ["-A KUBE-LOOPY -j KUBE-LOOPY"]
    return "\n".join(lines) + "\n"


def _reached(text: str, depth: int) -> str:
    """The rules with the first KUBE-SVC chain first jumping down `depth` new chains, the last of them
    jumping back to the first (a loop) when `depth` is 1 (then every packet of that Service drops)."""
    lines = text.splitlines()
    at = lines.index("*nat") + 1
    svc = next(line.split()[0][1:] for line in lines if line.startswith(":KUBE-SVC-"))
    names = [f"KUBE-DEEP-{k}" for k in range(depth)]
    lines[at:at] = [f":{n} - [0:0]" for n in names]
    first = next(k for k, line in enumerate(lines) if line.startswith(f"-A {svc} "))
    lines[first:first] = [f"-A {svc} -j {names[0]}"]
    end = next(k for k in range(first, len(lines)) if lines[k] == "COMMIT")
    lines[end:end] = [f"-A {x} -j {y}" for x, y in zip(names, [*names[1:], names[0]] if depth == 1 else names[1:],
                                                         strict=False)]
    return "\n".join(lines) + "\n"


def _loop_pairs() -> list[tuple[str, Ruleset, Ruleset, ClusterObjects, list[str]]]:
    before = random_cluster(seed=62, services=40, endpoints_per_service=2)
    after = copy.deepcopy(before)
    _rollout(after, random.Random(62), keep_one=True)
    options = ProxierOptions(node_name="node-0")
    ta, tb = (render_restore(c, options, "ipv4") for c in (before, after))
    objects, ips = objects_from_documents(to_objects(after)), before.node("node-0").ips
    return [(side, parse_iptables(x, "a.rules"), parse_iptables(y, "b.rules"), objects, ips)
            for side, x, y in (("none", ta, tb), ("A", _looped(ta), tb), ("B", ta, _looped(tb)),
                               ("B reached", ta, _reached(tb, 1)), ("B deep", ta, _reached(tb, 40)))]


def test_a_loop_in_b_is_traced_where_a_trace_reaches_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only A is checked for loops and deep nesting; with a loop or deep nesting in B, the child and
    the parent still give the report of the full computation. A loop in A means every entry point is
    traced, in both halves."""
    from kpa import diff

    traced: list[int] = []
    merge = diff._merge

    def counted(order: list[diff.ServicePortDiff], parts: list[diff._Part]) -> list[list[str]]:
        traced.append(sum(p.traced for p in parts))
        return merge(order, parts)

    monkeypatch.setattr(diff, "_merge", counted)
    pairs = _loop_pairs()

    def run(fork: bool, shortcut: bool = True) -> list[tuple[int, int, dict[str, Any]]]:
        out = []
        for _, a, b, o, ips in pairs:
            report = diff_rulesets(a, b, o, ips, fork=fork, shortcut=shortcut)
            out.append((traced[-1], sum(len(p.entries) for p in report.ports), report.to_json()))
        return out

    full = [report for _, _, report in run(False, shortcut=False)]
    alone = run(False)
    assert [report for _, _, report in alone] == full
    assert run(True) == alone
    counts = {side: (n, total) for (side, *_), (n, total, _) in zip(pairs, alone, strict=True)}
    assert counts["none"][0] < counts["none"][1] / 2
    assert counts["A"][0] == counts["A"][1]  # a loop in A: every entry point traced
    assert counts["B"][0] == counts["none"][0]  # an unreached loop in B changes no trace
    assert counts["none"][0] < counts["B reached"][0] < counts["B reached"][1] / 2
    assert any("jump loop" in w for w in alone[3][2]["warnings"])
    # Plausible mistakes: the child's half kept although it skipped entry points and A has a
    # loop; B's small chains taken to have A's rules (then B's loop is never traced).
    with monkeypatch.context() as m:
        m.setattr(diff._Part, "skipped", property(lambda self: False, lambda self, v: None), raising=False)
        assert run(True) != alone
    init = reach.Comparison.__init__

    def careless(self: reach.Comparison, a: Signatures, b: Signatures) -> None:
        init(self, a, b)
        b._tables = a._tables  # B's chains looked up by name are A's

    with monkeypatch.context() as m:
        m.setattr(reach.Comparison, "__init__", careless)
        assert [report for _, _, report in run(False)] != full


# ---------------------------------------------------------------- reasons worked out once per pair of distributions


def _reason_pairs() -> list[tuple[Ruleset, Ruleset, ClusterObjects | None, list[str]]]:
    """Rollouts and policy changes: reasons that name endpoints, shares, fates and source classes."""
    out: list[tuple[Ruleset, Ruleset, ClusterObjects | None, list[str]]] = [_with_notes()]
    for seed in (81,):
        before = random_cluster(seed=seed, services=40, endpoints_per_service=3, families=("ipv4",))
        after = copy.deepcopy(before)
        _unrelated(after, random.Random(seed))
        out.append((_render(before, "ipv4"), _render(after, "ipv4"), objects_from_documents(to_objects(after)),
                    before.node("node-0").ips))
    return out


def test_reasons_worked_out_once_are_the_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    from kpa import diff

    pairs = _reason_pairs()
    cached = [diff_rulesets(a, b, o, ips).to_json() for a, b, o, ips in pairs]
    assert len(diff._REASONS) > 20
    with monkeypatch.context() as m:
        m.setattr(diff, "explain", diff._explain)
        assert [diff_rulesets(a, b, o, ips).to_json() for a, b, o, ips in pairs] == cached

    def caught(key: Any) -> bool:
        with monkeypatch.context() as m:
            m.setattr(diff, "_REASONS", {})
            seen: dict[Any, list[str]] = {}

            def broken(a: Any, b: Any, source: str) -> list[str]:
                k = key(a, b, source)
                if k not in seen:
                    seen[k] = diff._explain(a, b, source)
                return list(seen[k])

            m.setattr(diff, "explain", broken)
            return [diff_rulesets(a, b, o, ips).to_json() for a, b, o, ips in pairs] != cached

    assert not caught(lambda a, b, source: (tuple(a.items()), tuple(b.items()), source))
    # Keyed without the source class (reasons name it), or on A's distribution only.
    assert caught(lambda a, b, source: (tuple(a.items()), tuple(b.items())))
    assert caught(lambda a, b, source: (tuple(a.items()), source))


# ---------------------------------------------------------------- an atom's distribution from one of its addresses


def _dist_by_intersection(outcomes: Any, atom: IntSet) -> dict[Any, Any]:
    d: dict[Any, Any] = {}
    for src, k, p in outcomes:
        if src & atom:
            d[k] = d[k] + p if k in d else p
    return d


def test_an_atoms_distribution_is_read_from_one_of_its_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    from kpa import diff

    pairs = _reason_pairs()
    fast = [diff_rulesets(a, b, o, ips).to_json() for a, b, o, ips in pairs]
    with monkeypatch.context() as m:
        m.setattr(diff, "_dist", _dist_by_intersection)
        assert [diff_rulesets(a, b, o, ips).to_json() for a, b, o, ips in pairs] == fast
    # Atom by atom, on the traces of the entry points that differ; and on atoms cut by A's
    # sources only (B's outcomes then overlap atoms partly), one address does not tell.
    checked = partly = 0
    for a, b, objects, ips in pairs:
        report = diff_rulesets(a, b, objects, ips)
        ta, tb = diff._Tracer(a, ips, "A"), diff._Tracer(b, ips, "B")
        for entry in [d.entry for p in report.differing for d in p.differences][:12]:
            loopback = entry.address.startswith("127.")
            for sc in diff.source_classes(objects, ips, entry.version, loopback):
                oa, ob = diff._keyed(ta.run(entry, sc.origin)), diff._keyed(tb.run(entry, sc.origin))
                cuts = list(dict.fromkeys(src for src, _, _ in (*oa, *ob)))
                for atom in diff._atoms(sc.addresses, cuts):
                    for side in (oa, ob):
                        assert diff._dist(side, atom) == _dist_by_intersection(side, atom)
                        checked += 1
                for atom in diff._atoms(sc.addresses, list(dict.fromkeys(src for src, _, _ in oa))):
                    partly += diff._dist(ob, atom) != _dist_by_intersection(ob, atom)
    assert checked > 50
    assert partly > 0


# ---------------------------------------------------------------- the command ends without freeing its data


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_the_command_ends_at_once_with_all_its_output(fmt: str) -> None:
    """`kpa diff` as a process flushes its output and exits without tearing down its objects:
    the same output and exit status as the command run in-process (which returns normally)."""
    import os
    import subprocess
    import sys

    from click.testing import CliRunner

    from kpa.cli import cli

    a, b = FIX / "iptables" / "kitchen-sink.nft.v4.save", FIX / "nft" / "kube-proxy" / "kitchen-sink.v4.nft"
    args = ["diff", str(a), str(b), "-c", str(FIX / "clusters" / "kitchen-sink.yaml"), "-o", fmt]
    inside = CliRunner().invoke(cli, args)
    assert inside.exit_code == 1 and len(inside.stdout) > 2000
    assert fmt == "json" or len(inside.stdout) < 8192

    # Standard output buffered, as it is by default when it is not a terminal.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}

    def run(prelude: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", f"import kpa.cli as c; {prelude}; c.main()", *args],
                              capture_output=True, text=True, check=False, env=env)

    whole = run("pass")
    assert (whole.returncode, whole.stdout) == (1, inside.stdout), whole.stderr
    # Output left in the buffer (written without click.echo's own flush) is flushed before the
    # end; without that flush it would be lost.
    unflushed = "import sys; c.click.echo = lambda m=None, nl=True, **k: sys.stdout.write((m or '') + chr(10) * nl)"
    kept = run(unflushed)
    assert (kept.returncode, kept.stdout) == (1, inside.stdout), kept.stderr
    if len(inside.stdout) < 8192:  # a larger write goes past the buffer, straight out
        lost = run(unflushed + "; c._flush_streams = lambda: None")
        assert lost.returncode == 1 and lost.stdout != inside.stdout
    # A reader that goes away early ends the command as before: no traceback.
    head = subprocess.run(f"{sys.executable} -m kpa {' '.join(args)} | head -c 100 >/dev/null; "
                          "echo ${PIPESTATUS[0]}", shell=True, executable="/bin/bash",
                          capture_output=True, text=True, check=False)
    assert "Traceback" not in head.stderr and head.stdout.strip() in ("0", "1")


def test_an_entry_point_called_from_python_leaves_the_process_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() and kubectl_main() end the process at once only while they run: a later command
    run in-process (a test runner's) returns normally."""
    import sys

    from kpa import cli

    for entry in (cli.main, cli.kubectl_main):
        monkeypatch.setattr(sys, "argv", ["kpa", "--version"])
        with pytest.raises(SystemExit):
            entry()
        assert not cli._WHOLE_PROCESS
