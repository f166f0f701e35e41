"""Documents read by templates are exactly what the line reader and the safe loader give.

blockyaml makes a template of a document shape once it recurs, and builds later
documents of that shape from their values alone (kpa.k8s.blockyaml, "Templates").
Every document, value, type, mapping line, key line and error must be the same with
templates, without them (the line reader alone) and with the safe loader alone, on
fixtures, generated clusters in several styles, every odd scalar in every kind of
place of a templated document, and random edits of documents read after their
template exists; and deliberately broken templates must be caught by these checks.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kpa.k8s import blockyaml
from kpa.k8s import objects as o
from tests.test_yaml_block import SCALARS, _cluster_objects, _read, _styles

FIXTURES = Path(__file__).parent / "fixtures"


def _templated(text: str) -> tuple[object, int]:
    """What the reader gives with templates on, and how many documents templates read."""
    count = 0
    read = blockyaml._Templates.read

    def counting(self: blockyaml._Templates, *args: Any) -> tuple[Any, str, list[str]]:
        nonlocal count
        found = read(self, *args)
        count += found[0] is not None
        return found

    blockyaml._Templates.read = counting  # type: ignore[method-assign]
    try:
        return _read(o._yaml_documents(text, "f.yaml")), count
    finally:
        blockyaml._Templates.read = read  # type: ignore[method-assign]


def _three_ways(text: str) -> tuple[object, int]:
    """What the templates give (asserted equal to the line reader and the loader), and how many
    documents templates read."""
    templated, count = _templated(text)
    blockyaml.TEMPLATES = False
    try:
        lines = _read(o._yaml_documents(text, "f.yaml"))
    finally:
        blockyaml.TEMPLATES = True
    assert templated == lines, text[:300]
    assert templated == _read(o._loaded_yaml_documents(text, "f.yaml")), text[:300]
    return templated, count


def _documents(objs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objs, sort_keys=False)


def test_fixtures_and_generated_clusters() -> None:
    for path in sorted(FIXTURES.rglob("*.y*ml")):
        _three_ways(path.read_text())
    objs = _cluster_objects(seed=21, services=50)
    for name, text in _styles(objs).items():
        result, count = _three_ways(text)
        assert isinstance(result, list) and result, name
        if name in ("documents", "yaml.dump sorted", "explicit starts", "indented sequences"):
            # Most documents of the styles kubectl and yaml.dump write are read by templates.
            assert count >= len(result) * 3 // 4, (name, count, len(result))


def _shapes() -> list[str]:
    """Documents of one shape each, several times over with other values (names, addresses, ports)."""
    by_skeleton: dict[str, list[str]] = {}
    for obj in _cluster_objects(seed=5, services=40):
        doc = yaml.safe_dump(obj, sort_keys=False)
        by_skeleton.setdefault(blockyaml._MARK.join(blockyaml._VALUES.split(doc)[0::2]), []).append(doc)
    return ["---\n".join(docs[:6]) for docs in by_skeleton.values() if len(docs) >= 5]


def _places(text: str) -> list[tuple[int, str, str]]:
    """Places of values in the last document of a text: (line index, text before the value, kind)."""
    lines = text.split("\n")
    start = max(i for i, line in enumerate(lines) if line == "---") + 1
    found = []
    for i in range(start, len(lines)):
        line = lines[i]
        m = re.match(r"( *(?:- )?[^ :'\"#-][^:]*: )(.+)$", line)
        if m:
            found.append((i, m[1], "key value"))
            found.append((i, line[: len(line) - len(line.lstrip(" -"))], "key"))
            continue
        m = re.match(r"( *- )([^:]+)$", line)
        if m:
            found.append((i, m[1], "item"))
    return found


def _with_scalar(text: str, place: tuple[int, str, str], scalar: str) -> str:
    lines = text.split("\n")
    i, prefix, kind = place
    if kind == "key":
        rest = lines[i][len(prefix):]
        lines[i] = prefix + scalar + rest[rest.index(":"):]
    else:
        lines[i] = prefix + scalar
    return "\n".join(lines)


def test_every_scalar_in_every_kind_of_place() -> None:
    """The last document of each shape has one value (or key) replaced by each odd scalar."""
    rng = random.Random(7)
    shapes = _shapes()
    assert len(shapes) >= 3
    for text in shapes:
        _, count = _three_ways(text)
        assert count >= 2
        places = _places(text)
        for scalar in SCALARS:
            for place in rng.sample(places, min(4, len(places))):
                _three_ways(_with_scalar(text, place, scalar))


def _edits(text: str, rng: random.Random, count: int) -> Iterator[str]:
    """Random edits of lines in the second half of a text: quoting, anchors, aliases, tags,
    folded and block scalars, comments, odd indentation, tabs, keys out of order and twice,
    bad values, separators."""
    lines = text.split("\n")
    half = len(lines) // 2
    for _ in range(count):
        mutated = list(lines)
        n = rng.randrange(half, len(mutated) - 1)
        line = mutated[n]
        body = line.lstrip(" -")
        lead = line[: len(line) - len(body)]
        kind = rng.randrange(10)
        if kind == 0 and ": " in body:
            key, value = body.split(": ", 1)
            mutated[n] = lead + key + ": " + rng.choice(["'" + value + "'", '"' + value + '"', "&a " + value,
                                                        "!!str " + value, value + " # c", "*a", "|\n" + lead + "  x",
                                                        value + "\n" + lead + "  more", "'" + value + "\n" + lead + "  x'"])
        elif kind == 1:
            p = rng.randrange(len(line) + 1)
            mutated[n] = line[:p] + rng.choice([" ", "\t", "#", "'", '"', ":", "- ", "{", "[", ",", "&", "*", "|"]) + line[p:]
        elif kind == 2:
            mutated[n] = " " * rng.choice((1, 2, 3)) + line if rng.random() < 0.5 else line[1:]
        elif kind == 3:
            mutated.insert(n, rng.choice(["", "# c", "  # c", "---", "...", "%YAML 1.1", "x", "  - y", "k: v", "  k: v"]))
        elif kind == 4:
            mutated.insert(n, line)  # a key twice (or an item twice)
        elif kind == 5 and n + 1 < len(mutated) and mutated[n + 1].startswith(lead) and ": " in mutated[n + 1]:
            mutated[n], mutated[n + 1] = mutated[n + 1], mutated[n]  # keys out of order
        elif kind == 6 and ": " in line:
            mutated[n] = line.split(": ", 1)[0] + ": " + rng.choice(SCALARS)
        elif kind == 7:
            mutated[n] = line.rstrip() + " "
        elif kind == 8:
            del mutated[n]
        else:
            mutated[n] = lead + rng.choice(SCALARS) + (": " + rng.choice(SCALARS) if rng.random() < 0.5 else "")
        yield "\n".join(mutated)


def test_random_edits_of_documents_read_after_their_template() -> None:
    rng = random.Random(1203)
    objs = _cluster_objects(seed=9, services=8)
    for text in (_documents(objs), yaml.safe_dump_all(objs, explicit_start=True, indent=4)):
        _, count = _three_ways(text)
        assert count > 10
        for mutated in _edits(text, rng, 150):
            _three_ways(mutated)


# Streams of one shape repeated, then documents close to it: a value moved to another key,
# keys swapped, an item more, a value's kind changed, lines indented otherwise.
_SHAPE = "a: x1\nb:\nc: 2\nd:\n- p\n- q\ne:\n  f: 'y'\n  g: true\n"
_CLOSE = [
    "a:\nb: x1\nc: 2\nd:\n- p\n- q\ne:\n  f: 'y'\n  g: true\n",
    "a: x1\nb:\nc: 2\nd:\n- p\n- q\ne:\n  g: true\n  f: 'y'\n",
    "a: x1\nb:\nc: 2\nd:\n- p\n- q\n- r\ne:\n  f: 'y'\n  g: true\n",
    "a: x1\nb:\nc: 2\nd:\n  - p\n  - q\ne:\n  f: 'y'\n  g: true\n",
    "a: x1\nb:\nc: 2\nd:\n- p\n- q\ne:\n   f: 'y'\n   g: true\n",
    "a: x1\nb:\nc: 2\nd:\n- p: 1\n- q\ne:\n  f: 'y'\n  g: true\n",
    "a: x1\nb:\nc: 2\nd:\n- p\n- q\ne:\n  f: y\n  g: 'true'\n",
    "a: x1\nb: {}\nc: 2\nd: []\ne:\n  f: 'y'\n  g: true\n",
    "a: x1\nb:\nc: 2\nd:\n- p\n- q\ne:\n  f: 'y'\n  f: 'z'\n",
    "a: x1\na: x2\nc: 2\nd:\n- p\n- q\ne:\n  f: 'y'\n  g: true\n",
    "a: x1\nb:\nc: 2\nd:\n- p\n- q\ne:\n  f: 'y'\n  g: true\n  h: 1\n",
    "a: x1\nb:\nc: 2\nd:\n-   p\n-   q\ne:\n  f: 'y'\n  g: true\n",
    "a: x1\nb:\nc: 2\nd:\n- p\n- q\ne:\n  f: 'y'\n  g: true\n# c\n",
    "a: x1\nb:\nc: 2\nd:\n- p\n- q\ne:\n  f: 'y'\n\n  g: true\n",
    "a: x1 \nb:\nc: 2\nd:\n- p\n- q\ne:\n  f: 'y'\n  g: true\n",
    "a: x1\nb:\nc: 2\nd:\n- p\n- q\ne:\n  f: 'y'\n  g: true",
]


def _streams() -> list[str]:
    return ["---\n".join([_SHAPE] * 4 + [close, _SHAPE]) for close in _CLOSE]


def test_documents_close_to_a_template() -> None:
    for text in _streams():
        _, count = _three_ways(text)
        assert count >= 2


def _checks_pass() -> bool:
    """A shorter run of the checks above, False at the first difference."""
    rng = random.Random(3)
    try:
        for text in _streams():
            _three_ways(text)
        for text in _shapes()[:3]:
            places = _places(text)
            for scalar in SCALARS:
                for place in rng.sample(places, min(3, len(places))):
                    _three_ways(_with_scalar(text, place, scalar))
        objs = _cluster_objects(seed=9, services=6)
        for mutated in _edits(_documents(objs), rng, 80):
            _three_ways(mutated)
    except AssertionError:
        return False
    return True


@pytest.mark.parametrize("broken", ["typed plain strings", "words", "quoted", "skeleton marks", "classes"])
def test_broken_templates_are_caught(broken: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if broken == "typed plain strings":
        # A plain string's value taken as its text without asking whether the loader types it.
        monkeypatch.setattr(blockyaml._Strings, "__missing__", lambda self, text: text)
    elif broken == "words":
        # A document's plain strings with spaces, comments or indicators taken as they are
        # (each value alone is still checked when a template is made).
        real = blockyaml._not_words
        monkeypatch.setattr(blockyaml, "_not_words", lambda text: text.count("\n") == 1 and real(text))
    elif broken == "quoted":
        # Any value admitted where a single-quoted one was.
        monkeypatch.setattr(blockyaml, "_QUOTED_LINES", re.compile(r"(?s).*"))
    elif broken == "skeleton marks":
        # Skeletons without the marks of where their values were: `a: 1` and `a:` alike.
        monkeypatch.setattr(blockyaml, "_MARK", "")
    else:
        # Any value admitted where any scalar is, typed by the resolver alone without `_scalar`'s refusals.
        monkeypatch.setattr(blockyaml, "_scalar", _unchecked)
    assert not _checks_pass()


def _unchecked(raw: str, plain: Any) -> Any:
    if raw[0] in "'\"":
        return raw[1:-1]
    try:
        return plain(raw)
    except blockyaml.Unfit:
        return raw


def test_the_templates_are_used_on_a_large_generated_cluster() -> None:
    """On a kubectl-like file of many documents, all but a few are read by templates, the same."""
    objs = _cluster_objects(seed=13, services=150)
    text = _documents(objs)
    blockyaml.TEMPLATES = False
    try:
        lines = _read(o._yaml_documents(text, "f.yaml"))
    finally:
        blockyaml.TEMPLATES = True
    templated, count = _templated(text)
    assert templated == lines
    assert isinstance(lines, list) and count >= len(lines) * 9 // 10
