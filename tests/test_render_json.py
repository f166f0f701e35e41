"""`-o json` writes the documents json would, in json's two-space layout.

`kpa.render.output.indented_json` has orjson write the text (json's indenting
encoder is pure Python and slow on `show` of a large cluster) and leaves what
orjson refuses to json. On kpa's own documents (every fixture's `show`, `lint`
and SARIF documents) the text is exactly `json.dumps(doc, indent=2)`; on random
documents of every JSON type it reads back as the same values; what json
refuses is refused with json's error.
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
        return rng.choice([0, 1, -1, 2**63, -(2**63), 2**64 - 1, 12345678901234567890])
    if kind == 2:
        return rng.choice([0.0, -0.0, 1.5, 1e300, 1e-300, 0.1 + 0.2, 3.0, 1e16, 1e-5, 2**-31])
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
    keys = ["a", "b c", 'q"', "é", "", "\n"]
    return {rng.choice(keys): _random_doc(rng, depth + 1) for _ in range(rng.randrange(5))}


def _layout(text: str) -> list[tuple[int, str, bool]]:
    """Each line's indentation, opening character (any value's as "v") and closing comma: json's
    layout, whatever the spelling of the values."""
    out = []
    for line in text.split("\n"):
        body = line.lstrip(" ")
        first = body[:1] if body[:1] in ('"', "{", "}", "[", "]") else "v"
        out.append((len(line) - len(body), first, line.endswith(",")))
    return out


def _floats(doc: Any) -> bool:
    if isinstance(doc, float):
        return True
    if isinstance(doc, dict):
        return any(_floats(v) for v in doc.values())
    return isinstance(doc, (list, tuple)) and any(_floats(v) for v in doc)


def test_random_documents_read_back_as_json_writes_them_in_its_layout() -> None:
    rng = random.Random(12)
    for _ in range(3000):
        doc = _random_doc(rng)
        text, want = indented_json(doc), json.dumps(doc, indent=2)
        assert json.loads(text) == json.loads(want)
        assert _layout(text) == _layout(want)
        # Characters json escapes (beyond ASCII, and DEL) and floats may be spelled apart.
        if all(" " <= c < "\x7f" or c == "\n" for c in text) and not _floats(doc):
            assert text == want


class Colour(enum.IntEnum):
    RED = 1


class Text(str):
    pass


class Number(float):
    pass


@pytest.mark.parametrize("doc", [
    {"k": Colour.RED}, [Text("x")], {Text("k"): 1}, [Number(2.5)], OrderedDict(a=1),
    {"nested": OrderedDict(b=[1, 2])}, [math.pi, -math.e], {"deep": [[[[{"x": [()]}]]]]},
    {1: "integer key"}, {None: 1, True: 2}, {Colour.RED: "v"}, [2**64], {"big": -(2**70)},
], ids=str)
def test_subclasses_and_rare_values_are_written_as_json_writes_them(doc: Any) -> None:
    assert indented_json(doc) == json.dumps(doc, indent=2)


# Named by hand: an object's default text holds its address, which differs between processes
# (pytest-xdist's workers must collect the same names).
@pytest.mark.parametrize("doc", [{"k": object()}, [{1, 2}], {(1, 2): "tuple key"}, {"b": b"bytes"}],
                         ids=["object", "set", "tuple-key", "bytes"])
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
    from kpa.render.findings import render, to_sarif
    from kpa.sources import parse_text

    written = 0
    for path in sorted((FIXTURES / "iptables").glob("*.save")):
        scenario = path.name.split(".")[0]
        meta = json.loads((FIXTURES / "clusters" / f"{scenario}.meta.json").read_text())
        objects = load_objects([str(FIXTURES / "clusters" / f"{scenario}.yaml")])
        rs = parse_text(path.read_text(), str(path), "iptables")
        docs = {"service_ports": describe(service_ports(rs, {}), rs, objects)}
        report = make_report(lint(rs, objects, meta["node_name"]))
        for doc in (docs, report.to_json("1.0")):
            assert dump(doc, "json") == json.dumps(doc, indent=2) + "\n"
            written += 1
        assert render(report, "sarif", "1.0") == json.dumps(to_sarif(report, "1.0"), indent=2) + "\n"
    assert written >= 60


def test_without_the_fallback_what_orjson_refuses_would_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback to json is what writes integer keys and big integers: without it they are refused."""
    def orjson_only(doc: Any) -> str:
        import orjson

        return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()

    monkeypatch.setattr(output, "indented_json", orjson_only)
    with pytest.raises(TypeError):
        dump({1: "integer key"}, "json")
    with pytest.raises(TypeError):
        dump([2**64], "json")
