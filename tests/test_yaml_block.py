"""The block-style YAML reader gives exactly what the safe loader gives.

Every document, value, mapping line, key line and error of `_yaml_documents`
(blockyaml first, the safe loader for what it is not sure of) must equal what the
safe loader alone (`_loaded_yaml_documents`) gives, on fixtures, generated
clusters in kubectl-like and yaml.dump-like styles, a corpus of odd YAML and
random one-edit mutations; and the bounds on nesting and size keep holding.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kpa import limits
from kpa.errors import InputError
from kpa.gen.cluster import random_cluster
from kpa.gen.objects import to_objects
from kpa.k8s import blockyaml
from kpa.k8s import objects as o
from kpa.k8s.lint import lint
from kpa.parse.iptables_save import parse_iptables

FIXTURES = Path(__file__).parent / "fixtures"


def _shape(value: object) -> object:
    """Every mapping's items, type, line and key lines, in order; scalars by type and repr."""
    if isinstance(value, dict):
        return [(repr(k), _shape(v)) for k, v in value.items()] + [
            getattr(value, "line", None), getattr(value, "key_lines", None), isinstance(value, o._LinedDict)]
    if isinstance(value, list):
        return ["list", *(_shape(v) for v in value)]
    return (type(value).__name__, repr(value))


def _read(documents: Iterator[Any]) -> object:
    try:
        return _shape(list(documents))
    except InputError as exc:
        return ("error", str(exc))


def _same(text: str) -> object:
    """What both readers give (asserted equal)."""
    fast = _read(o._yaml_documents(text, "f.yaml"))
    slow = _read(o._loaded_yaml_documents(text, "f.yaml"))
    assert fast == slow, text[:300]
    return fast


def _all_block(text: str) -> bool:
    """Whether blockyaml reads every document of text itself."""
    return not any(type(d) is blockyaml.Rest for d in blockyaml.documents(text, o._LinedDict, o._plain_scalars()))


def _cluster_objects(seed: int, services: int) -> list[dict[str, Any]]:
    return to_objects(random_cluster(seed=seed, services=services, endpoints_per_service=3))


def _last_applied(value: dict[str, Any]) -> str:
    """A List as `kubectl get -o yaml` shows objects made by `kubectl apply`: the applied object as JSON."""
    items, applied = [], []
    for n, item in enumerate(value["items"]):
        applied.append(json.dumps(item, separators=(",", ":")))
        annotations = {"kubectl.kubernetes.io/last-applied-configuration": f"APPLIED-{n}"}
        items.append({**item, "metadata": {**item["metadata"], "annotations": annotations}})
    text = yaml.safe_dump({**value, "items": items}, sort_keys=False)
    return re.sub(r"( *)(kubectl.kubernetes.io/last-applied-configuration: )APPLIED-(\d+)\n",
                  lambda m: f"{m[1]}{m[2]}|\n{m[1]}  {applied[int(m[3])]}\n", text)


def _long_strings(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Objects with long annotations, which yaml.dump folds over lines (plain and single-quoted)."""
    notes = {"note": "word " * 12 + "end", "why": "a: b " * 14 + "end", "q": "x 'y' " * 10, "n": "1 2 " * 12}
    return [{**o, "metadata": {**o["metadata"], "annotations": notes}} for o in objs]


def _styles(objs: list[dict[str, Any]]) -> dict[str, str]:
    as_list = {"apiVersion": "v1", "kind": "List", "items": objs, "metadata": {"resourceVersion": ""}}
    return {
        "kubectl List": yaml.safe_dump(as_list, sort_keys=False),
        "documents": yaml.safe_dump_all(objs, sort_keys=False),
        "yaml.dump sorted": yaml.safe_dump_all(objs),
        "explicit starts": yaml.safe_dump_all(objs, explicit_start=True),
        "indented sequences": yaml.safe_dump_all(objs, indent=4, sort_keys=False),
        "all double-quoted": yaml.safe_dump_all(objs[:30], default_style='"'),
        "all single-quoted": yaml.safe_dump_all(objs[:30], default_style="'"),
        "flow leaves": yaml.safe_dump_all(objs[:30], default_flow_style=None),
        "narrow": yaml.safe_dump_all(objs[:30], width=20),
        "JSON-ish": json.dumps(as_list, indent=2),
        "last-applied": _last_applied(as_list),
        "long strings": yaml.safe_dump_all(_long_strings(objs), width=40),
    }


@pytest.fixture(params=["whole", "small pieces"])
def pieces(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Large texts are read in pieces; small pieces make every top-level block span several."""
    if request.param == "small pieces":
        monkeypatch.setattr(blockyaml, "_PIECE", 40)


@pytest.mark.usefixtures("pieces")
def test_fixtures_and_generated_clusters_read_the_same() -> None:
    texts = [p.read_text() for p in sorted(FIXTURES.rglob("*.y*ml"))]
    for text in texts:
        _same(text)
    styles = _styles(_cluster_objects(seed=7, services=60))
    for name, text in styles.items():
        result = _same(text)
        assert isinstance(result, list) and result, name
    # The styles kubectl and yaml.dump write by default are read by blockyaml alone.
    # (All-quoted styles tag their numbers and booleans, `!!int "80"`: those go to the safe loader.)
    for name in ("kubectl List", "documents", "yaml.dump sorted", "explicit starts", "indented sequences",
                 "last-applied", "narrow", "long strings"):
        assert _all_block(styles[name]), name
    assert sum(_all_block(t) for t in texts) >= len(texts) // 2


def test_objects_and_findings_are_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole objects (FILE:LINE locations included) and lint findings, with and without blockyaml."""
    cluster = random_cluster(seed=11, services=40, endpoints_per_service=3)
    from kpa.gen.iptables import render_restore
    from kpa.gen.options import ProxierOptions

    save = parse_iptables(render_restore(cluster, ProxierOptions(node_name="node-0"), "ipv4"), "rules.save")
    path = tmp_path / "objects.yaml"
    path.write_text(_styles(to_objects(cluster))["kubectl List"])

    def findings() -> tuple[object, list[str]]:
        objects = o.load_objects([str(path)])
        return objects.__dict__, [json.dumps(f.to_json(), sort_keys=True) for f in lint(save, objects, "node-0")]

    fast = findings()
    monkeypatch.setattr(blockyaml, "documents", lambda *a: iter([blockyaml.Rest(0, 0)]))
    assert findings() == fast
    assert any(":" in f for f in fast[1])


SCALARS = [
    "yes", "no", "Yes", "NO", "on", "off", "On", "OFF", "y", "n", "Y", "N", "true", "False", "TRUE",
    "0x1f", "0X1F", "0o17", "017", "0b101", "1_000", "1,000", "-1", "+1", "+0", "-0", "0", "00", "190:20:30",
    "1.5", "1.5e3", "1e3", "-1.5E-3", ".5", "5.", "1_000.5", ".inf", "-.Inf", "+.INF", ".nan", ".NaN",
    "~", "null", "Null", "NULL", "nul", "2024-01-01", "2024-01-01T00:00:00Z", "2024-1-1 1:00:00",
    "2024-01-01t00:00:00.5+02:00", "2001-12-14 21:59:43.10 -5", "<<", "=", "!tag x", "&a x", "*a", "! x",
    "'quoted'", "'it''s'", '"dq"', '"esc\\n"', '"a\\"b"', "'a' b", '"a" b', "''", '""', "'", '"',
    "a: b", "a:b", "a :b", "a #b", "a#b", "a  b", "a ", " a", "-", "- a", "-a", "?", "? a", "?a", ":", ":a",
    "[]", "{}", "[a]", "{a: b}", "[", "]", "{", "}", ",a", "a,b", "a[b]", "|", ">", "|-", "%x", "@x", "`x",
    "http://x/y?z=1&w=2", "10.0.0.1/24", "fe80::1", "::1", "2001:db8::/32", "é", "名前", "a\u00a0b",
    "\u00a0a", "\u3000", "---", "...", "--- a", "#", "x" * 70, "1" * 70, "k" * 1030,
]


def _corpus() -> list[str]:
    texts = []
    for s in SCALARS:
        texts += [f"a: {s}\n", f"- {s}\n", f"{s}: v\n", f"a:\n- {s}\n- x\nb: 1\n", f"m:\n  {s}: {s}\n",
                  f"- k: {s}\n  j: 1\n"]
    texts += [
        "", "\n", "---\n", "---\n---\n", "a: 1\n---\n", "a: 1\n---", "---\na: 1\n", "a: 1\n...\n", "a: 1\n...\nb: 2\n",
        "%YAML 1.1\n---\na: 1\n", "\ufeffa: 1\n", "a: 1\r\nb: 2\r\n", "a: 1\rb: 2\n", "a:\t1\n", "a: 1\t\n",
        "a: 1 \n", "a: 1\n\n\nb: 2\n", "# c\na: 1\n  # c\nb: 2 # c\n", "a: # c\n  b: 1\n", "a:\n  # c\n  b: 1\n",
        "a:\n\n  b: 1\n", "a: 1\n  \nb: 2\n", "  a: 1\n  b: 2\n", "a: 1\n b: 2\n", "a:\n  b: 1\n c: 2\n",
        "a:\n  - 1\n  b: 2\n", "a:\n- 1\nb: 2\n", "a:\n  - 1\n- 2\n", "a: 1\n- 2\n", "- 1\na: 2\n", "- 1\n - 2\n",
        "-  a: 1\n   b: 2\n", "- a: 1\n  b:\n  - x\n  c: 2\n- d\n", "- - a\n  - b\n", "-\n  a: 1\n", "- \n",
        "a:\n  b:\n    c:\n      d: 1\n", "a: b\n  c\n", "a: b\n\n  c\n", "a: 'b\n  c'\n", 'a: "b\n  c"\n',
        "a: |\n  x\n  y\nb: 1\n", "a: >-\n  x\n  y\n", "a: |+\n  x\n\n", "a: &x 1\nb: *x\n", "a: !!str 1\n",
        "a: !!binary aGVsbG8=\n", "? a\n: b\n", "a: {b: 1, c: [2, 3]}\n", "[1, 2]\n", "{a: 1}\n", "scalar\n",
        "- {}\n- []\n- {a: 1}\n", "a: 1\na: 2\nb: 3\n", "1: a\n0x1: b\n", "a: 1\nb\n", "a\nb: 1\n", "a: b: c\n",
        "a:: b\n", "'a': 1\n\"b\": 2\n'': 3\n", "'a''b': 1\n", "a: 1\n---\nb: &x 2\n---\nc: *y\n---\nd: 4\n",
        "a: 1\n---\n- [\n---\nb: 2\n", "a: 1\n--- b\n", "a: 1\n--- # c\nb: 2\n", "---x: 1\n", "...: 1\n",
        "a: 1\n# end", "a:\n", "a:\nb:\n", "- \n- a\n", "-\n", "a: -\n", "a: - b\n", "a: 'x' # c\n",
        "a: |\n  {\"x\": 1}\n  # not a comment\n\n    deeper\n  - item\n  k: v\nb: 2\n", "a: |-\n  x\n\n\nb: 2\n",
        "a:\n  b: |\n    x\n  c: 1\n", "a:\n  b: |\n   x\n    y\n", "a:\n  b: |\n  x\n", "a: |\n\n  x\n",
        "a: |\n  x\n   \n  y\n", "a: |\n  x", "a: |\n  x\n\n", "a: |\n  x\n---\nb: 1\n", "a: | # c\n  x\n",
        "a: |2\n   x\n", "a: |+\n  x\n\n", "- |\n  x\n", "- a: |\n    x\n  b: 1\n", "a: |\n  x\n y: 1\n",
        "a: |\nb: 1\n", "a: |\n  x\n  y: |\n    z\n", "a: |\n  x: 1\nb: |-\n  y\n",
        "a: one two\n  three four\nb: 1\n", "a: one\n  two\n\n  three\n", "a: one\n   two\n  three\nb: 2\n",
        "a: one\n  two: x\n", "a: one\n  # c\n", "a: one\n  - two\n", "a: one\n  two #c\n", "a: one\n  two \n",
        "a: 1\n  2\n", "a: yes\n  no\n", "a: 2024-01-01\n  x\n", "m:\n  a: one\n   two\n  b: 1\n",
        "m:\n  a: one\n  two\n", "m:\n  a: one\n    two\n      three\n", "- a: one\n    two\n  b: 1\n",
        "- one\n  two\n", "a: 'one\n  two'\n", "a: 'one \n   two  '\n", "a: 'one\n\n  two'\n", "a: 'one\n  two\n",
        "a: 'it''s\n  ''fine'''\nb: 1\n", "a: 'one\n  two' x\n", "a: 'one\n  two'\n  three\n", "a: '\n  two'\n",
        "m:\n  a: 'one\n  two'\n", "m:\n  a: 'one\n    two'\n  b: 'x\n     y\n     z'\n", "a: 'one\ntwo'\n",
        "a: 'one\n  - two'\n", "a: 'one\n  #two'\n", "a: 'one\n  two: x'\n", "a: one\n  two\n---\nb: x\n  y\n",
        '"a": "one\n  two"\n', "a: one\n  two", "a: 'one\n  two'", "a: x\n  'y'\n", "a: x\n  y'\n",
        "a: one\n  two\n  three: x\n", "a: x\n  y\nb:\n  c: p\n    q\n", "a: 'x\n  y''\n  z'\n", "a: 'x''\n  y'\n",
        "a: '''\n  x'\n", "a: 'x\n  '''\n", "a: x:\n  y\n", "a: x\n  y:\n", "a: x\n  :y\n", "a: x\n  y\n z\n",
        "a: 'x\n  ''y'''\n", "a: 'x\n  : y'\n", "m:\n  a: 'x\n   y'\n", "a: 'x\n  ---'\n", "a: 'x\n---'\n",
        "a: 'x\n  y'''\n", "a: 'x\n  y' \n", "- a: 'x\n    y'\n  b: 'p\n    q'\n", "a: x\n  'y\n",
        "a: 1\x85b: 2\n", "a: 1\u2028b: 2\n", "a: \x01\n", "a: \x7f\n", "a: \ud7ff\n", "\ue000: 1\n",
    ]
    return texts


@pytest.mark.usefixtures("pieces")
def test_odd_yaml_reads_the_same() -> None:
    for text in _corpus():
        _same(text)
    # Multi-document streams where the safe loader takes over partway: lines stay the file's.
    stream = "a: 1\n---\nb: 2\n---\nc: &x 3\nd: *x\n---\ne:\n  f: 1\n  g: [\n"
    result = _same(stream)
    assert result[0] == "error" and ":11:" in str(result[1]), result
    docs = list(o._yaml_documents(stream.rsplit("---", 1)[0], "f.yaml"))
    assert [d.line for d in docs] == [1, 3, 5] and docs[2].key_lines == {"c": 5, "d": 6}


def _mutations(text: str, rng: random.Random, count: int) -> Iterator[str]:
    lines = text.split("\n")
    inserts = [*" -:#'\"{}[],&*!|>%@`?\t\r\ufeff\x85\u2028\n", "  ", "- ", ": ", " #", "---", "..."]
    for _ in range(count):
        mutated = list(lines)
        n = rng.randrange(len(mutated))
        line = mutated[n]
        kind = rng.randrange(7)
        if kind == 0 and ": " in line:
            mutated[n] = line.split(": ", 1)[0] + ": " + rng.choice(SCALARS)
        elif kind == 1:
            p = rng.randrange(len(line) + 1)
            mutated[n] = line[:p] + rng.choice(inserts) + line[p:]
        elif kind == 2 and line:
            p = rng.randrange(len(line))
            mutated[n] = line[:p] + line[p + 1:]
        elif kind == 3:
            mutated[n] = " " * rng.choice((1, 2, 4)) + line if rng.random() < 0.5 else line[rng.choice((1, 2)):]
        elif kind == 4:
            mutated.insert(n, rng.choice(["", "  ", "# c", "---", "...", "- x", "x", "  - y", "k: v", "  k: v"]))
        elif kind == 5:
            mutated.insert(n, line)
        else:
            mutated[n] = rng.choice(SCALARS) + ": " + rng.choice(SCALARS)
        yield "\n".join(mutated)


@pytest.mark.usefixtures("pieces")
def test_random_one_edit_mutations_read_the_same() -> None:
    rng = random.Random(1212)
    objs = _cluster_objects(seed=3, services=4)
    for style in ("kubectl List", "documents", "last-applied", "long strings"):
        text = _styles(objs)[style]
        assert _all_block(text)
        for mutated in _mutations(text, rng, 250):
            _same(mutated)


def test_bounds_hold() -> None:
    deep_block = "".join("  " * i + f"k{i}:\n" for i in range(205)) + "  " * 205 + "v: 1\n"
    deep_seq = "".join("  " * i + "-\n" for i in range(3)) + "".join("  " * i + f"- k{i}:\n" for i in range(205))
    for text in (deep_block, "a: " + "[" * 201 + "]" * 201 + "\n", deep_seq):
        with pytest.raises(InputError, match="nesting"):
            list(o._yaml_documents(text, "f.yaml"))
    # Just within the bound: read by blockyaml.
    ok = "".join("  " * i + f"k{i}:\n" for i in range(limits.MAX_NESTING // 2)) + "  " * 100 + "v: 1\n"
    assert _all_block(ok)
    _same(ok)
    original = limits.MAX_YAML_NODES
    limits.MAX_YAML_NODES = 40
    try:
        text = "".join(f"k{i}: {i}\n" for i in range(30))
        assert not _all_block(text)
        with pytest.raises(InputError, match="at most 40 values"):
            list(o._yaml_documents(text, "f.yaml"))
    finally:
        limits.MAX_YAML_NODES = original


def test_a_document_the_loader_reads_alone_leaves_the_rest_to_blockyaml() -> None:
    streams = [
        "a: 1\n---\nb: &x 1\nc: *x\n---\nd: 2\n---\ne: {f: [1]}\n---\ng: 3\n",
        "a: 1\n---\nb: 'x\n---\nc: 1\n", "%YAML 1.1\n---\na: 1\n---\nb: 2\n", "a: 1\n--- b\n---\nc: 1\n",
        "a: 1\n---\nb: !!str 1\n...\n%TAG ! tag:x,2000:\n---\nc: !y 1\n---\nd: 1\n",
        "a: x\n---\nb: |+\n  x\n\n---\nc: 1\n", "a: [1,\n---\nb: 1\n", "a: 1\n---\nb: &x [*x]\n---\nc: 1\n",
        "a: 1\n---\n? [x]\n: 1\n", "a: {\n", "a: 1\n---\nb: >\n  x\n---\n---\nc: 1\n...\n",
    ]
    for text in streams:
        _same(text)
    text = streams[0]
    rests = [d for d in blockyaml.documents(text, o._LinedDict, o._plain_scalars()) if type(d) is blockyaml.Rest]
    assert [(r.line, r.end is not None) for r in rests] == [(1, True), (6, True)]
    docs = list(o._yaml_documents(text, "f.yaml"))
    assert [d.line for d in docs] == [1, 3, 6, 8, 10] and docs[1] == {"b": 1, "c": 1}


def test_many_documents_the_loader_reads_stay_linear() -> None:
    """Each document read alone costs blank lines up to its line; past a budget the rest is read at once."""
    docs = [f"a{n}: !!str {n}\nb: [1, 2]\n" if n % 3 else f"a{n}: {n}\nb: x\n" for n in range(1500)]
    text = "---\n".join(docs)
    result = _same(text)
    assert isinstance(result, list) and len(result) == 1 + 1500
