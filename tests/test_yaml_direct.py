"""Services, EndpointSlices and Pods built straight from YAML templates' values are exactly
what their documents give.

A template of a Service, EndpointSlice or Pod document builds the object from the values
without the document (kpa.k8s.objects, "built straight from a YAML template's values").
The objects (all their values and types), their order, the kinds passed over and every
error must be what `_Collector.add_document` makes of the documents, on fixtures,
generated clusters in several styles, values of every type in the places the objects are
built from, random edits, and `load_objects_early` against `load_objects`; and
deliberately broken shortcuts must be caught by these checks.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from kpa.k8s import blockyaml
from kpa.k8s import objects as o
from tests.test_yaml_block import SCALARS, _cluster_objects, _styles
from tests.test_yaml_templates import _edits, _places, _templated, _with_scalar

FIXTURES = Path(__file__).parent / "fixtures"
KINDS: list[frozenset[str] | None] = [None, frozenset({"Service", "EndpointSlice", "Node"}), frozenset({"Pod"})]
# Values of every type the objects' fields are read as, and near them.
VALUES = ["null", "~", "''", '""', "0", "1", "-1", "80", "65535", "65536", "70000", "true", "false", "'true'",
          "yes", "x", "'x'", '"x"', "None", "'None'", "ClientIP", "1.5", "0x1F", "2024-01-01", "10.0.0.1",
          "'10.0.0.1'", "fd00::1", "'fd00:0::1'", "'10.0.0.01'", "12:30", "Pod", "Service", "EndpointSlice",
          "v1", "v2", "'80'", "'²'", "http", "'a, b'", "a,b", "IPv4", "IPv6", "FQDN"]


def _objects(text: str, direct: bool, kinds: frozenset[str] | None = None, checked: bool = False
             ) -> tuple[object, int]:
    """What a collector holds after the documents (or the error), and how many objects templates gave.

    Unless `checked`, a template's direct code is used without first checking it on the
    template's own document, so that what is tested is the code alone."""
    collector = o._Collector()
    collector.source, collector.kinds = "f.yaml", kinds
    count = 0
    blockyaml.CHECK_DIRECT = checked
    try:
        if direct:
            for document in o._yaml_documents(text, "f.yaml", direct=o._direct_objects("f.yaml", kinds)):
                count += type(document) in (o.Service, o.Pod, tuple)
                collector.add_read(document)
        else:
            for document in o._yaml_documents(text, "f.yaml"):
                collector.add_document(document, getattr(document, "line", None), None)
    except o._SchemaError as error:
        return ("schema", error.line, error.message), count
    except Exception as error:
        return ("error", type(error).__name__, str(error)), count
    finally:
        blockyaml.CHECK_DIRECT = True
    return (collector.services, collector.slices, collector.pods, sorted(collector.ignored.items())), count


def _both(text: str, kinds: frozenset[str] | None = None, checked: bool = False) -> int:
    """How many objects templates gave, asserting that they are those the documents give."""
    full, _ = _objects(text, False, kinds)
    built, count = _objects(text, True, kinds, checked)
    assert o._same(built, full), (text[:300], kinds)
    return count


def _kind_count(text: str) -> int:
    return sum(text.count(f"kind: {k}\n") for k in ("Service", "EndpointSlice", "Pod"))


def test_fixtures_and_generated_clusters() -> None:
    for path in sorted(FIXTURES.rglob("*.y*ml")):
        for kinds in KINDS:
            _both(path.read_text(), kinds)
    objs = _cluster_objects(seed=21, services=50)
    wanted = sum(d["kind"] in ("Service", "EndpointSlice", "Pod") for d in objs)
    for name, text in _styles(objs).items():
        count = _both(text)
        if name in ("documents", "yaml.dump sorted", "explicit starts", "indented sequences"):
            # Most objects of the styles kubectl and yaml.dump write are built from templates' values.
            assert count >= wanted * 3 // 4, (name, count, wanted)
            for kinds in KINDS[1:]:
                _both(text, kinds)


def _kind_shapes() -> list[str]:
    """Service, EndpointSlice and Pod documents of one shape each, six times over with other values."""
    by_skeleton: dict[str, list[str]] = {}
    for obj in _cluster_objects(seed=5, services=60):
        if obj["kind"] in ("Service", "EndpointSlice", "Pod"):
            doc = yaml.safe_dump(obj, sort_keys=False)
            by_skeleton.setdefault(blockyaml._MARK.join(blockyaml._VALUES.split(doc)[0::2]), []).append(doc)
    return ["---\n".join(docs[:6]) for docs in by_skeleton.values() if len(docs) >= 6]


def test_values_of_every_type_in_every_place() -> None:
    """The last document of each shape has one value replaced (the first template made reads
    words and quoted strings only; the second any scalar, so the objects' checks see every type)."""
    rng = random.Random(11)
    shapes = _kind_shapes()
    kinds_seen = {text.split("kind: ", 1)[1].split("\n", 1)[0] for text in shapes}
    assert kinds_seen >= {"Service", "EndpointSlice", "Pod"}, kinds_seen
    runs = 0
    for text in shapes:
        # Every document a template reads comes as its object.
        assert _both(text) == _templated(text)[1] >= 2
        places = [p for p in _places(text) if p[2] != "key"]
        for value in VALUES:
            for place in rng.sample(places, min(5, len(places))):
                mutated = _with_scalar(text, place, value)
                # Twice: the second time, a template of any scalars reads it.
                _both(mutated + "---\n" + mutated.rsplit("---\n", 1)[1])
                runs += 1
    assert runs > 1000
    for text in shapes:
        for flat in _flattened(text):
            _both(flat)
    for text in _labelled_pods():
        assert _both(text) >= 4


def _flattened(text: str) -> list[str]:
    """The text with a block (a mapping or a list under a key) replaced by a scalar in every
    document, one block at a time, each with a few scalars."""
    docs = [doc.split("\n") for doc in text.split("---\n")]
    texts = []
    first = docs[0]
    for i, line in enumerate(first[:-1]):
        column = len(line) - len(line.lstrip(" -"))  # the key's

        def inside(line: str, column: int = column) -> bool:
            indent = len(line) - len(line.lstrip(" "))
            return bool(line) and (indent > column or (indent == column and line[indent:].startswith("- ")))

        if not line.endswith(":") or not inside(first[i + 1]):
            continue
        end = i + 1
        while end < len(first) and inside(first[end]):
            end += 1
        for value in ("x", "'x'", "1", "null", "true", "{}", "[]"):
            texts.append("---\n".join("\n".join([*doc[:i], doc[i] + " " + (value if n == len(docs) - 1 else "null"),
                                                  *doc[end:]]) for n, doc in enumerate(docs)))
    return texts


def _labelled_pods() -> list[str]:
    """Pods with several labels, not in sorted order; then one whose label is of another type."""
    docs = []
    for n in range(6):
        labels: dict[str, Any] = {"tier": f"t{n}", "app": f"a{n}", "zone": "z", "b": "'x'"}
        docs.append({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p{n}", "labels": labels},
                     "spec": {"nodeName": "n"}, "status": {"podIP": f"10.0.0.{n}"}})
    text = yaml.safe_dump_all(docs, sort_keys=False)
    last = text.rsplit("---\n", 1)[1]
    return [text, *(text + "---\n" + last.replace("app: a5", f"app: {value}") for value in ("5", "null", "true", "'5'"))]


def test_odd_scalars_and_random_edits() -> None:
    rng = random.Random(1204)
    for text in _kind_shapes()[:3]:
        places = _places(text)
        for scalar in SCALARS:
            _both(_with_scalar(text, rng.choice(places), scalar))
    objs = _cluster_objects(seed=9, services=8)
    for text in (yaml.safe_dump_all(objs, sort_keys=False), yaml.safe_dump_all(objs, explicit_start=True, indent=4)):
        assert _both(text) > 10
        for mutated in _edits(text, rng, 100):
            _both(mutated)


def test_another_kind_in_a_templates_shape() -> None:
    """A document of a template's shape whose kind or apiVersion differs is what its document gives."""
    shapes = _kind_shapes()
    for text in shapes:
        last = text.rsplit("---\n", 1)[1]
        kind = last.split("kind: ", 1)[1].split("\n", 1)[0]
        for other in ("Service", "EndpointSlice", "Pod", "Node", "Thing", "'Pod'", "null"):
            changed = last.replace(f"kind: {kind}\n", f"kind: {other}\n")
            for version in ("v1", "discovery.k8s.io/v1", "v2", "null", "1"):
                _both(text + "---\n" + changed.replace(last.split("\n", 1)[0], f"apiVersion: {version}")
                      if last.startswith("apiVersion:") else text + "---\n" + changed)
            for kinds in KINDS:
                _both(text + "---\n" + changed, kinds)


def _early_strict(path: str) -> None:
    """load_objects_early and load_objects, both with templates' objects, give what load_objects
    gives from the documents."""
    blockyaml.DIRECT = False
    try:
        objects = o.load_objects([path])
    finally:
        blockyaml.DIRECT = True
    pods = objects.detach_pods()
    early, finish = o.load_objects_early([path])
    assert o._same(list(early.services), list(objects.services))
    assert o._same(early._packed, objects._packed)
    assert o._same(list(finish().items()), list(pods.items()))
    whole = o.load_objects([path])
    assert o._same(list(whole.services), list(objects.services))
    assert o._same(whole._packed, objects._packed)
    assert o._same(list(whole.detach_pods().items()), list(pods.items()))


def test_objects_read_early_are_the_objects_read_whole(tmp_path: Path) -> None:
    """load_objects_early and load_objects (templates give objects) against load_objects from the
    documents, types included."""
    taken = 0
    add_read = o._Collector.add_read

    def counting(self: o._Collector, document: Any) -> None:
        nonlocal taken
        taken += type(document) in (o.Service, o.Pod, tuple)
        add_read(self, document)

    o._Collector.add_read = counting  # type: ignore[method-assign]
    try:
        objs = _cluster_objects(seed=17, services=120)
        for n, text in enumerate([yaml.safe_dump_all(objs), yaml.safe_dump_all(objs, explicit_start=True, indent=4)]):
            path = tmp_path / f"c{n}.yaml"
            path.write_text(text)
            _early_strict(str(path))
    finally:
        o._Collector.add_read = add_read  # type: ignore[method-assign]
    wanted = 2 * sum(d["kind"] in ("Service", "EndpointSlice", "Pod") for d in objs)
    assert taken >= 2 * wanted * 9 // 10, (taken, wanted)  # (each file read early, then whole)


def _checks_pass(checked: bool = False) -> bool:
    """A shorter run of the checks above, False at the first difference (or if templates
    do not give their documents' objects)."""
    rng = random.Random(3)
    try:
        for text in _kind_shapes()[:6]:
            assert _both(text, checked=checked) == _templated(text)[1] >= 2
            places = [p for p in _places(text) if p[2] != "key"]
            for value in VALUES:
                for place in rng.sample(places, min(2, len(places))):
                    mutated = _with_scalar(text, place, value)
                    _both(mutated + "---\n" + mutated.rsplit("---\n", 1)[1], checked=checked)
            last = text.rsplit("---\n", 1)[1]
            kind = last.split("kind: ", 1)[1].split("\n", 1)[0]
            _both(text + "---\n" + last.replace(f"kind: {kind}\n", "kind: Thing\n"), checked=checked)
            for flat in _flattened(text):
                _both(flat, checked=checked)
        for text in _labelled_pods():
            _both(text, checked=checked)
    except AssertionError:
        return False
    return True


def _accept_any(value: Any) -> Any:
    return value


@pytest.mark.parametrize("broken", ["string check", "ready default", "not a mapping", "kind check", "selector",
                                    "name check", "label order"])
def test_broken_shortcuts_are_caught(broken: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if broken == "string check":
        # A value taken as a string without asking whether it is one.
        monkeypatch.setattr(o, "_direct_t", _accept_any)
    elif broken == "ready default":
        # An endpoint's readiness taken as true whatever its value.
        monkeypatch.setattr(o, "_direct_ready", lambda value: True)
    elif broken == "not a mapping":
        # A scalar where a mapping goes taken as an empty mapping (the template is always made).
        real = o._n_d
        monkeypatch.setattr(o, "_n_d", lambda node, key: real(node, key) if o._child(node, key) is None
                            or o._child(node, key)[0] == "map" else o._EMPTY_NODE)  # type: ignore[index]
    elif broken == "kind check":
        # Any document of the template's shape taken as of the template's kind.
        monkeypatch.setattr(o, "_direct_kind", lambda tree, kind: [])
    elif broken == "selector":
        # Every Service taken as having a selector.
        monkeypatch.setattr(o, "_n_truth", lambda node, key: "True")
    elif broken == "name check":
        # An empty or missing name accepted.
        monkeypatch.setattr(o, "_direct_named", _accept_any)
    else:
        # A Pod's labels in the document's order, not sorted.
        monkeypatch.setattr(o, "_n_labels", lambda node: list(node[1].items()))
    assert not _checks_pass()


def test_direct_code_wrong_for_its_own_document_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check made when a template is made keeps a direct code that is wrong on the
    template's own document from being used (here: every Service given a selector)."""
    monkeypatch.setattr(o, "_n_truth", lambda node, key: "True")
    flat = [t for text in _kind_shapes() if "kind: Service\n" in text for t in _flattened(text)
            if "  selector: null\n" in t]
    assert flat
    for text in flat:
        _both(text, checked=True)
