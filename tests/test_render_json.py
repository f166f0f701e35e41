"""`-o json` writes exactly what `json.dumps(doc, indent=2)` writes.

`kpa.render.output.indented_json` writes the JSON types itself (json's indenting
encoder is pure Python and slow on `show` of a large cluster) and leaves anything
else to json. Its text is held to json's on random documents of every JSON type,
on values json writes in its own way, on what json refuses, on every fixture's
`show` and `lint` documents, and a deliberately careless variant is caught.
"""

from __future__ import annotations

import enum
import json
import math
import random
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest

from kpa.render import output
from kpa.render.output import dump, indented_json

FIXTURES = Path(__file__).parent / "fixtures"


def _random_doc(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10 if depth < 5 else 7)
    if kind == 0:
        return rng.choice(["", "plain", 'quote " and \\ back', "tab\tnew\nline", "é ü 中文 \U0001f600", "\x00\x1f\x7f",
                           "</script>", " spaces "])
    if kind == 1:
        return rng.choice([0, 1, -1, 2**63, -(2**70), 12345678901234567890])
    if kind == 2:
        return rng.choice([0.0, -0.0, 1.5, 1e300, 1e-300, 0.1 + 0.2, float("nan"), float("inf"), float("-inf"), 3.0])
    if kind == 3:
        return rng.choice([True, False])
    if kind == 4:
        return None
    if kind in (5, 6):
        return rng.choice([[], {}, ()])
    if kind == 7:
        return [_random_doc(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 8:
        return tuple(_random_doc(rng, depth + 1) for _ in range(rng.randrange(4)))
    keys: list[Any] = ["a", "b c", 'q"', "é", "", 1, -2, 1.5, float("nan"), True, False, None, 2**65]
    return {rng.choice(keys): _random_doc(rng, depth + 1) for _ in range(rng.randrange(5))}


def test_random_documents_are_written_as_json_writes_them() -> None:
    rng = random.Random(12)
    for _ in range(3000):
        doc = _random_doc(rng)
        assert indented_json(doc) == json.dumps(doc, indent=2)


class Colour(enum.IntEnum):
    RED = 1


class Text(str):
    pass


class Number(float):
    pass


@pytest.mark.parametrize("doc", [
    {"k": Colour.RED}, {Colour.RED: "v"}, [Text("x")], {Text("k"): 1}, [Number(2.5)], {Number(2.5): 1},
    OrderedDict(a=1), {"nested": OrderedDict(b=[1, 2])}, [math.pi, -math.e], {"deep": [[[[{"x": [()]}]]]]},
], ids=str)
def test_subclasses_and_rare_values_are_written_as_json_writes_them(doc: Any) -> None:
    assert indented_json(doc) == json.dumps(doc, indent=2)


@pytest.mark.parametrize("doc", [{"k": object()}, [{1, 2}], {(1, 2): "tuple key"}, {"b": b"bytes"}], ids=str)
def test_what_json_refuses_is_refused_alike(doc: Any) -> None:
    with pytest.raises(TypeError) as want:
        json.dumps(doc, indent=2)
    with pytest.raises(TypeError) as got:
        indented_json(doc)
    assert str(got.value) == str(want.value)


def test_a_cycle_is_refused_alike() -> None:
    doc: list[Any] = [1]
    doc.append(doc)
    with pytest.raises(ValueError, match="Circular reference"):
        indented_json(doc)


def test_every_fixture_documents_are_written_as_json_writes_them() -> None:
    from kpa.findings import make_report
    from kpa.k8s.kubeproxy import service_ports
    from kpa.k8s.lint import lint
    from kpa.k8s.objects import load_objects
    from kpa.k8s.showview import describe
    from kpa.render.findings import to_sarif
    from kpa.sources import parse_text

    written = 0
    for path in sorted((FIXTURES / "iptables").glob("*.save")):
        scenario = path.name.split(".")[0]
        meta = json.loads((FIXTURES / "clusters" / f"{scenario}.meta.json").read_text())
        objects = load_objects([str(FIXTURES / "clusters" / f"{scenario}.yaml")])
        rs = parse_text(path.read_text(), str(path), "iptables")
        docs = {"service_ports": describe(service_ports(rs, {}), rs, objects)}
        report = make_report(lint(rs, objects, meta["node_name"]))
        for doc in (docs, report.to_json("1.0"), to_sarif(report, "1.0")):
            assert dump(doc, "json") == json.dumps(doc, indent=2) + "\n"
            written += 1
    assert written >= 60


@pytest.mark.parametrize("broken", ["nan", "key", "tuple"])
def test_a_careless_writer_is_caught(broken: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if broken == "nan":  # floats by repr alone: nan, inf
        monkeypatch.setattr(output, "_float", float.__repr__)
    elif broken == "key":  # non-string keys as their repr
        monkeypatch.setattr(output, "_key", lambda k: output._string(repr(k)))
    else:  # tuples left to json's fallback... as if they were not sequences
        real = output._scalar
        monkeypatch.setattr(output, "_scalar", lambda o: "null" if type(o) is tuple else real(o))
    rng = random.Random(12)
    assert any(indented_json(doc) != json.dumps(doc, indent=2) for doc in (_random_doc(rng) for _ in range(3000)))
