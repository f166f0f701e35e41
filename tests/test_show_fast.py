"""`kpa show`'s shortcuts give the plain computation's answers.

`describe_rules` writes the texts of each share once per Fraction object (`share_texts`) and
looks for session affinity's ``--rcheck`` by substring before its expression. Each is
compared with the plain computation on the fixtures and generated clusters (shares that are
dyadic, that are not, and that are too long to print exactly), and broken on purpose to show
that the comparison notices. `json_output` hands `click.echo` the bytes of the JSON text where
standard output takes UTF-8, and the text elsewhere: either way what is written is the text's.
"""

from __future__ import annotations

import functools
import inspect
import io
import json
import re
import sys
import textwrap
from collections.abc import Callable
from types import ModuleType
from typing import Any

import click
import pytest

from kpa.gen.cluster import random_cluster
from kpa.gen.iptables import render_restore
from kpa.gen.options import ProxierOptions
from kpa.k8s import kubeproxy, showview
from kpa.k8s.kubeproxy import ServicePortView, natural_key, service_ports
from kpa.k8s.showview import _host_port, _rules_source_ranges
from kpa.k8s.story import fmt_share
from kpa.netfilter.model import Ruleset
from kpa.render.output import dump, json_output
from kpa.sources import parse_text
from tests.test_lint_compare import CASES


def _plain_affinity(rs: Ruleset, v: ServicePortView) -> str | None:
    """`_rules_affinity` as it was: the expression searched in every rule."""
    for kind, chain_name in v.chains.items():
        if kind not in ("SVC", "SVL", "service", "local"):
            continue
        for t in rs.tables:
            c = t.chains.get(chain_name)
            if c is None:
                continue
            for r in c.rules:
                m = re.search(r"--rcheck --seconds (\d+)", r.text)
                if m:
                    return f"ClientIP ({m.group(1)}s)"
                if "@affinity-" in r.text:
                    return "ClientIP"
    return None


def _plain_rules(views: list[ServicePortView], rs: Ruleset) -> list[Any]:
    """What `describe_rules` gives, each share's texts written for each endpoint."""
    out = []
    for v in sorted(views, key=lambda v: (natural_key(v.name or "~"), v.family)):
        doc = v.to_json()
        endpoints = []
        for key, eps in (("endpoints", v.endpoints), ("local_endpoints", v.local_endpoints)):
            for e, view in zip(doc[key], eps, strict=True):
                e["share"] = fmt_share(view.probability)
                endpoints.append((e, *_host_port(e["endpoint"])))
        out.append((doc, _plain_affinity(rs, v), _rules_source_ranges(rs, v), endpoints))
    return out


def _text(described: list[Any]) -> str:
    """The documents as JSON, keys in their order (so the order is compared too), and the rest."""
    return json.dumps(described)


def _generated(seed: int, endpoints: int) -> Callable[[], Ruleset]:
    text = render_restore(random_cluster(seed, 12, endpoints), ProxierOptions(node_name="node-0"), "ipv4")
    return lambda: parse_text(text, "gen.save", "iptables")


@functools.cache
def _rulesets() -> list[Callable[[], Ruleset]]:
    # Fixtures (session affinity in both modes among them), drifted generated clusters (a share
    # that is not dyadic among them), and Service ports with so many endpoints that their last
    # shares print as decimals.
    return [c[1] for c in CASES] + [_generated(31, 6), _generated(32, 140)]


def _compare_all() -> tuple[list[int], int, int, int]:
    """(the rulesets whose documents differ, then the endpoints, affinities and shares printed as
    decimals compared). Differences are counted, not asserted: pytest's account of two long texts
    that differ takes minutes."""
    differ = []
    endpoints = affinities = decimals = 0
    for i, parse in enumerate(_rulesets()):
        rs = parse()
        views = service_ports(rs)
        got = [(d.doc, d.affinity, d.ranges, d.endpoints) for d in showview.describe_rules(views, rs)]
        plain = _plain_rules(service_ports(rs), rs)
        if _text(got) != _text(plain) or got != plain:
            differ.append(i)
        endpoints += sum(len(d[3]) for d in got)
        affinities += sum(1 for d in got if d[1] is not None)
        decimals += sum(1 for d in got for e, _, _ in d[3] if "exact fraction" in e["probability_exact"])
    return differ, endpoints, affinities, decimals


def test_described_rules_equal_the_plain_computation() -> None:
    differ, endpoints, affinities, decimals = _compare_all()
    assert differ == []
    assert endpoints > 1500 and affinities > 5 and decimals > 10


def _broken(module: ModuleType, name: str, edits: list[tuple[str, str]]) -> Callable[..., Any]:
    """``module.name`` compiled again with each (text, replacement) of ``edits`` made: a shortcut broken on purpose."""
    source = textwrap.dedent(inspect.getsource(getattr(module, name)))
    for text, replacement in edits:
        assert text in source, text
        source = source.replace(text, replacement)
    scope = dict(vars(module))
    exec(compile(source, module.__file__ or name, "exec"), scope)
    return scope[name]  # type: ignore[no-any-return]


_BROKEN = [
    # A memo keyed by the denominator alone: shares that differ only in their numerator are
    # given the texts of the first one.
    (kubeproxy, "share_texts", [("memo.get(id(p))", "memo.get(p.denominator)"), ("known[0] is not p", "False"),
                                ("memo[id(p)] =", "memo[p.denominator] =")]),
    (showview, "describe_rules", [("shares.get(id(p))", "shares.get(p.denominator)"), ("share[0] is not p", "False"),
                                  ("shares[id(p)] =", "shares[p.denominator] =")]),
    # The substring looked for before the expression is more than the expression needs.
    (showview, "_rules_affinity", [('"--rcheck --seconds " in text', '"--rcheck --seconds 1" in text')]),
]


@pytest.mark.parametrize("broken", _BROKEN, ids=[f"{b[1]}: {b[2][0][1]}" for b in _BROKEN])
def test_broken_shortcuts_give_other_documents(broken: tuple[ModuleType, str, list[tuple[str, str]]],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    module, name, edits = broken
    monkeypatch.setattr(module, name, _broken(module, name, edits))
    assert _compare_all()[0] != []


# ---------------------------------------------------------------- -o json


_DOCS: list[Any] = [
    {"service_ports": []},
    {"service_ports": [{"name": "ns/café:80", "share": "33.3%", "probability": 1 / 3, "big": 2**40,
                        "control": "a\x1b[1mb\x00\n\t", "nothing": None, "yes": True, "nested": {"a": [1, 2.5]}}]},
    {"beyond 64 bits": 2**70},  # orjson refuses it: json writes it
    {"nan": float("nan"), "inf": float("inf")},
]


def _written(doc: Any, encoding: str, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """What `click.echo(json_output(doc), nl=False)` writes to a standard output in ``encoding``."""
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding=encoding, errors="strict", write_through=True)
    monkeypatch.setattr(sys, "stdout", stream)
    out = json_output(doc)
    assert isinstance(out, bytes) == (encoding == "utf-8")
    click.echo(out, nl=False)
    stream.flush()
    return raw.getvalue()


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_json_output_writes_the_bytes_of_the_json_text(encoding: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for doc in _DOCS:
        text = dump(doc, "json")
        assert "\x1b" not in text  # nothing for click.echo to strip from the text either
        assert _written(doc, encoding, monkeypatch) == text.encode(encoding)
