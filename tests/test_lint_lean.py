"""`kpa lint`'s lean comparison gives the full computation's findings; `kpa show` the same documents.

With the rules' half worked out first (`rules_ahead`), `lint` asks `correlate` for lean
ports: a Service port whose endpoint chains agree with the rules gets a `LeanExpected`,
read from each endpoint's address, conditions and node alone, instead of an `Expected`
with an `EndpointRef` per endpoint. The findings (order, messages, locations) must be
exactly those of the full computation (`lint(..., ahead=None)`), on every fixture and on
generated clusters of several shapes with random drift on either side; and shortcuts
broken on purpose must be caught here. `kpa show` reads each endpoint's conditions, node
and target from packed slices without building them; its documents must be those read
from the built slices.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import random
import re
import textwrap
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

from kpa.gen.cluster import random_cluster
from kpa.gen.iptables import render_restore
from kpa.gen.objects import to_objects
from kpa.gen.options import ProxierOptions
from kpa.k8s import correlate as correlate_module
from kpa.k8s import naming
from kpa.k8s import objects as objects_module
from kpa.k8s.correlate import _object_ports, correlate
from kpa.k8s.lint import lint, rules_ahead
from kpa.k8s.naming import endpoint_chain_names
from kpa.k8s.objects import ClusterObjects, objects_from_documents
from kpa.k8s.showview import describe_ahead, describe_objects
from kpa.netfilter.model import Ruleset
from kpa.sources import parse_text
from tests.test_lint_compare import CASES, OBJECT_CASES

Obj = dict[str, Any]


# Where the lean comparison finds the endpoint chain names it looks up: the rules' (worked out
# while the objects are read), the objects' (worked out by the objects' reader), or none.
NAMES = ("rules", "objects", "none")


def _findings(rs: Ruleset, objects: ClusterObjects, node: str | None, lean: bool,
              names: str = "rules") -> list[str]:
    ahead = rules_ahead(rs) if lean else None
    if ahead is not None and names == "rules":
        ahead.meanwhile()
    elif ahead is not None and names == "objects":
        ahead.take_names(endpoint_chain_names(objects))
    return [json.dumps(f.to_json(), sort_keys=True) for f in lint(rs, objects, node, ahead)]


def _perturbed_objects(docs: list[Obj], rng: random.Random, family: str) -> list[Obj]:
    """The objects with endpoints added, removed, moved, not ready or terminating, twice listed,
    spelled otherwise, and Services with other policies, ports or gone."""
    docs = copy.deepcopy(docs)
    out: list[Obj] = []
    extra: list[Obj] = []
    for d in docs:
        kind = d["kind"]
        if kind == "Service":
            spec = d["spec"]
            roll = rng.random()
            if roll < 0.04:
                continue  # deleted: its rules are stale
            if roll < 0.12:
                spec["internalTrafficPolicy"] = rng.choice(["Local", "Cluster"])
            elif roll < 0.22 and spec.get("type") in ("NodePort", "LoadBalancer"):
                spec["externalTrafficPolicy"] = rng.choice(["Local", "Cluster"])
                if spec["type"] == "LoadBalancer" and rng.random() < 0.5:
                    spec["healthCheckNodePort"] = 30000 + rng.randrange(2000)
            elif roll < 0.26 and spec.get("ports"):
                spec["ports"][0]["name"] = "renamed"
            elif roll < 0.29:
                spec["type"] = "NodePort" if spec.get("type") == "ClusterIP" else "ClusterIP"
        elif kind == "EndpointSlice":
            eps = d.get("endpoints") or []
            kept = []
            for ep in eps:
                roll = rng.random()
                if roll < 0.05:
                    continue  # removed
                if roll < 0.15:
                    ep["conditions"] = {k: rng.random() < 0.5 for k in ("ready", "serving", "terminating")}
                elif roll < 0.25:
                    ep["nodeName"] = rng.choice(["node-0", "node-1", "node-2", "elsewhere"])
                elif roll < 0.28 and family == "ipv6":
                    ep["addresses"] = [ep["addresses"][0].upper().replace("::", ":0::", 1)]
                elif roll < 0.31:
                    # Listed by a second slice of the Service as well, in another state.
                    twin = copy.deepcopy(d)
                    twin["metadata"]["name"] += "-twin"
                    other = copy.deepcopy(ep)
                    other["conditions"] = {"ready": rng.random() < 0.5, "serving": True, "terminating": False}
                    if rng.random() < 0.5:  # the same address spelled otherwise
                        address = other["addresses"][0]
                        other["addresses"] = [address.upper().replace("::", ":0::", 1) if family == "ipv6"
                                              else f" {address}"]
                    twin["endpoints"] = [other]
                    extra.append(twin)
                kept.append(ep)
            if eps and rng.random() < 0.08:
                # A new endpoint on this node or another.
                new = copy.deepcopy(eps[0])
                address = new["addresses"][0]
                new["addresses"] = [address.rsplit(".", 1)[0] + ".250" if family == "ipv4"
                                    else address.rsplit(":", 1)[0] + ":fa"]
                new["nodeName"] = rng.choice(["node-0", "node-1"])
                kept.append(new)
            d["endpoints"] = kept
        out.append(d)
    return out + extra


def _perturbed_rules(text: str, rng: random.Random) -> str:
    """The rules with endpoint jumps dropped or swapped, shares changed and a Service's entry rules gone."""
    lines = text.split("\n")
    jumps = [i for i, line in enumerate(lines) if line.startswith("-A KUBE-SVC-") and "-j KUBE-SEP-" in line]
    for i in rng.sample(jumps, min(4, len(jumps))):
        lines[i] = ""
    kept = [i for i in jumps if lines[i]]
    if len(kept) >= 2:
        i, j = rng.sample(kept, 2)
        lines[i] = lines[i].split(" -j ")[0] + " -j " + lines[j].split(" -j ")[1]
    probs = [i for i, line in enumerate(lines) if "--probability" in line]
    for i in rng.sample(probs, min(2, len(probs))):
        lines[i] = re.sub(r"--probability \S+", "--probability 0.30000000009", lines[i])
    entries = [i for i, line in enumerate(lines) if line.startswith("-A KUBE-SERVICES") and "-j KUBE-SVC-" in line]
    for i in rng.sample(entries, min(2, len(entries))):
        lines[i] = ""
    return "\n".join(lines)


def _generated() -> Iterator[tuple[str, Callable[[], Ruleset], ClusterObjects, str]]:
    """Clusters of several shapes, as generated and with random drift on either side."""
    shapes = [(11, 60, 4, ("ipv4",), 3), (12, 60, 6, ("ipv6",), 3), (13, 50, 3, ("ipv4", "ipv6"), 2),
              (14, 40, 8, ("ipv4",), 1), (15, 80, 1, ("ipv4",), 4)]
    for seed, services, per, families, nodes in shapes:
        cluster = random_cluster(seed, services, per, families, nodes=nodes)  # type: ignore[arg-type]
        docs = to_objects(cluster)
        for family in families:
            text = render_restore(cluster, ProxierOptions(node_name="node-0"), family)  # type: ignore[arg-type]
            for round_ in range(3):
                rng = random.Random(f"{seed}-{family}-{round_}")
                variants = {
                    "as-is": (text, docs),
                    "objects": (text, _perturbed_objects(docs, rng, family)),
                    "rules": (_perturbed_rules(text, rng), docs),
                    "both": (_perturbed_rules(text, rng), _perturbed_objects(docs, rng, family)),
                } if round_ == 0 else {
                    "objects": (text, _perturbed_objects(docs, rng, family)),
                    "both": (_perturbed_rules(text, rng), _perturbed_objects(docs, rng, family)),
                }
                for what, (rules, objs) in variants.items():
                    yield (f"{seed}-{family}-{round_}-{what}",
                           (lambda t=rules: parse_text(t, "gen.save", "iptables")),  # type: ignore[misc]
                           objects_from_documents(objs), "node-0")


GENERATED = list(_generated())


def _unpacked(objects: ClusterObjects) -> ClusterObjects:
    unpacked = copy.copy(objects)
    unpacked.endpoint_slices  # noqa: B018  (the slices built: endpoints read from them)
    assert unpacked._packed is None
    return unpacked


def _fixture_cases() -> list[tuple[str, Callable[[], Ruleset], ClusterObjects, str]]:
    return [c for c in OBJECT_CASES]  # type: ignore[misc]


@pytest.mark.parametrize("case", _fixture_cases(), ids=[str(c[0]) for c in OBJECT_CASES])
def test_lean_findings_equal_the_full_computation_on_every_fixture(case: tuple[Any, ...]) -> None:
    _, parse, objects, node = case
    for who in (node, "node-1", "no-such-node", None):
        assert _findings(parse(), objects, who, True) == _findings(parse(), objects, who, False)


def test_lean_findings_equal_the_full_computation_on_generated_clusters_with_drift(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = correlate_module._lean_expected
    answers: list[bool] = []

    def counting(*args: Any) -> Any:
        got = real(*args)
        answers.append(got is not None)
        return got

    monkeypatch.setattr(correlate_module, "_lean_expected", counting)
    findings = 0
    for n, (name, parse, objects, node) in enumerate(GENERATED):
        for objs, nodes in ((objects, (node, "node-1")), (_unpacked(objects), (node,))):
            for who in nodes:
                full = _findings(parse(), objs, who, False)
                names = NAMES[n % len(NAMES)]
                assert _findings(parse(), objs, who, True, names) == full, (name, who, names)
                findings += len(full)
    # Both ways were taken many times, and the drift gave findings to compare.
    assert answers.count(True) > 5000 and answers.count(False) > 300
    assert findings > 3000


def test_lean_ports_are_used_only_where_lint_is_lean() -> None:
    """`correlate` stays whole unless asked, and show's correlation is unchanged."""
    for _, parse, objects, node in CASES[:6] + GENERATED[:4]:
        assert isinstance(objects, ClusterObjects) and callable(parse)
        corr = correlate(parse(), objects, str(node))
        assert all(p.lean is None for p in corr.ports)
        lean = correlate(parse(), objects, str(node), lean=True)
        modes = set(lean.layouts)
        if modes and all(m == "iptables" for m, _ in modes):
            assert any(p.lean is not None for p in lean.ports)
            for full_pc, lean_pc in zip(corr.ports, lean.ports, strict=True):
                assert (full_pc.name, full_pc.protocol, full_pc.family) == (
                    lean_pc.name, lean_pc.protocol, lean_pc.family)
                if lean_pc.lean is None:
                    assert lean_pc.expected == full_pc.expected
                else:
                    e, le = full_pc.expected, lean_pc.lean
                    assert e is not None
                    assert (le.has_endpoints, le.endpoint_count, le.no_local, le.internal_dropped,
                            le.external_dropped, le.health_check_node_port) == (
                        e.has_endpoints, len(e.endpoints), not e.local, e.internal_dropped,
                        e.external_dropped, e.health_check_node_port)
        else:
            assert all(p.lean is None for p in lean.ports)
        assert correlate(parse(), objects, None, lean=True) == correlate(parse(), objects, None)


def test_endpoint_states_are_the_backends_fields() -> None:
    compared = 0
    for _, _, objects, _ in GENERATED[::3]:
        for objs in (objects, _unpacked(objects)):
            for family in ("ipv4", "ipv6"):
                version = 6 if family == "ipv6" else 4
                for op in _object_ports(objs, family):  # type: ignore[arg-type]
                    svc, sp = op.service, op.port
                    for asked in ((sp.protocol, version), (None, None), (sp.protocol, None), (None, version)):
                        full = objs.endpoints_by_address(svc.namespace, svc.name, sp.name, *asked)
                        states = objs.endpoint_states(svc.namespace, svc.name, sp.name, *asked)
                        assert list(states) == list(full)
                        assert list(states.values()) == [
                            (e.ready, e.serving, e.terminating, e.node_name,
                             None if (r := e.target_ref) is None else (r.kind, r.namespace, r.name))
                            for e in full.values()]
                        compared += len(states)
    assert compared > 8000


# ---------------------------------------------------------------- show


def _show_docs(parse: Callable[[], Ruleset], objects: ClusterObjects) -> list[Any]:
    ahead = describe_ahead(parse())
    assert ahead is not None
    return describe_objects(ahead[1], objects)


@functools.cache
def _show_cases() -> list[tuple[Any, ...]]:
    return [c for c in [*CASES, *GENERATED] if describe_ahead(c[1]()) is not None]  # type: ignore[operator]


def test_show_documents_read_from_packed_slices_equal_the_built_slices() -> None:
    """Packed slices are read by `_packed_states`; built ones through `endpoints_by_address`."""
    filled = 0
    for _, parse, objects, _ in _show_cases():
        docs = _show_docs(parse, objects)
        assert docs == _show_docs(parse, _unpacked(objects))
        filled += sum(1 for d in docs for e in d["endpoints"] if "ready" in e)
    assert filled > 5000


_BROKEN_FOR_SHOW = [
    ('families = ("IPv4", "IPv6") if family is None', 'families = ("IPv4",) if family is None'),
    ("(ready, serving, terminating, node_name, ref)", "(ready, serving, terminating, node_name, None)"),
    ("if key in merged and not ready:", "if key in merged:"),
]


@pytest.mark.parametrize("broken", _BROKEN_FOR_SHOW, ids=[b[1] for b in _BROKEN_FOR_SHOW])
def test_a_broken_reading_of_packed_slices_gives_other_show_documents(
        broken: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    text, replacement = broken
    cases = _show_cases()
    monkeypatch.setattr(objects_module, "_packed_states", _broken(objects_module, "_packed_states", text, replacement))
    for _, parse, objects, _ in cases:
        if _show_docs(parse, objects) != _show_docs(parse, _unpacked(objects)):
            return
    pytest.fail(f"_packed_states with {replacement!r} for {text!r} went unnoticed")


# Shortcuts broken on purpose: (module, function, text, replacement).
_BROKEN = [
    (correlate_module, "_lean_expected", "((cat.cluster, actual.cluster), (cat.local, actual.local))",
     "((cat.cluster, actual.cluster),)"),  # the Local selection not compared
    (correlate_module, "_lean_expected", "if compared == () and cat.has_any:", "if False:"),  # rules missing
    (correlate_module, "_lean_expected", "no_local=not cat.local", "no_local=not cat.cluster"),
    (correlate_module, "_lean_expected", "endpoint_count=len(rows)", "endpoint_count=len(cat.cluster)"),
    (correlate_module, "_lean_expected", "node == node_name,", "node is not None,"),
    (correlate_module, "_lean_expected", "!= ref.chain", "is None"),  # chains not compared
    (objects_module, "_packed_states", "if key in merged and not ready:", "if key in merged:"),
    (objects_module, "_packed_states", "address = canonical_ip(address)", "pass"),
]


def _broken(module: ModuleType, name: str, text: str, replacement: str) -> Callable[..., Any]:
    source = textwrap.dedent(inspect.getsource(getattr(module, name)))
    assert source.count(text) == 1, text
    namespace = dict(vars(module))
    exec(compile("from __future__ import annotations\n" + source.replace(text, replacement),
                 f"<broken {name}>", "exec"), namespace)
    return namespace[name]  # type: ignore[no-any-return]


@pytest.mark.parametrize("broken", _BROKEN, ids=[f"{b[1]}:{b[3]}" for b in _BROKEN])
def test_a_broken_shortcut_gives_other_findings(broken: tuple[Any, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    module, name, text, replacement = broken
    monkeypatch.setattr(module, name, _broken(module, name, text, replacement))
    for _, parse, objects, node in GENERATED:
        if _findings(parse(), objects, node, True) != _findings(parse(), objects, node, False):
            return
    pytest.fail(f"{name} with {replacement!r} for {text!r} went unnoticed")


def test_the_objects_endpoint_chain_names_are_the_ones_the_comparison_asks_for(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`naming.endpoint_chain_names` holds every name the lean comparison looks up, and only
    kube-proxy's: with it, the comparison hashes nothing and finds what it finds without it."""
    asked: list[tuple[str, str, str]] = []
    missed: list[tuple[str, str, str]] = []

    class Watched(dict[tuple[str, str, str], str]):
        def get(self, key: Any, default: Any = None) -> Any:
            asked.append(key)
            if key not in self:
                missed.append(key)
            return super().get(key, default)

    hashed: list[str] = []
    real = naming.sep_chain

    def counted(*args: str) -> str:
        hashed.append(args[2])
        return real(*args)

    monkeypatch.setattr(naming, "sep_chain", counted)
    for name, parse, objects, node in GENERATED:
        rs = parse()
        ahead = rules_ahead(rs)
        names = Watched(endpoint_chain_names(objects))
        assert all(chain == real(*key) for key, chain in names.items()), name
        hashed.clear()
        ahead.take_names(names)
        with_names = [json.dumps(f.to_json(), sort_keys=True) for f in lint(rs, objects, node, ahead)]
        assert not missed and not hashed, (name, missed[:3], hashed[:3])
        assert with_names == _findings(parse(), objects, node, False), name
    assert len(asked) > 10000
