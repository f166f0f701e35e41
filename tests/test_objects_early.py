"""Objects handed over before they are all read (`load_objects_early`, `BackgroundObjects(early=True)`).

Each shortcut is held to the full computation, `load_objects`: the same objects, the same
Pods in the same order, and for every input that `load_objects` refuses, a refusal
(which the caller then turns into `load_objects`' own message).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from kpa.errors import InputError
from kpa.gen.cluster import random_cluster
from kpa.gen.iptables import render_restore
from kpa.gen.objects import to_objects
from kpa.gen.options import ProxierOptions
from kpa.k8s import blockyaml
from kpa.k8s import objects as o
from kpa.k8s.objects import ClusterObjects, load_objects, load_objects_early
from tests.test_lint_fast import _cli

FIXTURES = Path(__file__).parent / "fixtures"
CLUSTERS = sorted((FIXTURES / "clusters").glob("*.yaml"))


def _seen(objects: ClusterObjects) -> object:
    """Everything a reader of the objects can see apart from the Pods, lookups included."""
    return (objects.services, objects.endpoint_slices, objects.nodes, objects.namespaces,
            objects.network_policies, objects.warnings, objects.unlisted, sorted(objects.ignored_kinds.items()),
            [(objects.service_by_cluster_ip(ip), objects.services_by_external_ip(ip),
              objects.services_by_load_balancer_ip(ip))
             for s in objects.services for ip in (*s.cluster_ips, *s.external_ips, *s.load_balancer_ips)],
            [objects.endpoints_for(s.namespace, s.name, p.name, p.protocol) for s in objects.services
             for p in s.ports],
            [objects.node_by_ip(ip) for n in objects.nodes for ip in (*n.internal_ips, *n.external_ips)])


def _full(paths: list[str], kinds: frozenset[str] | None = None) -> object:
    try:
        objects = load_objects(paths, kinds=kinds)
    except InputError as error:
        return ("error", str(error))
    pods = objects.detach_pods()
    return _seen(objects), list(pods.items())


def _early(paths: list[str], kinds: frozenset[str] | None = None) -> object:
    """What load_objects_early gives, with "refused" for any exception in either step."""
    try:
        objects, finish = load_objects_early(paths, kinds=kinds)
        seen = _seen(objects)
        assert not objects.pods
        pods = finish()
    except Exception:
        return "refused"
    return seen, list(pods.items())


def _items(docs: list[Any]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}, indent=4)


def _cases(tmp_path: Path) -> list[list[str]]:
    big = to_objects(random_cluster(seed=21, services=40, endpoints_per_service=4))
    pod = next(d for d in big if d["kind"] == "Pod")
    svc = next(d for d in big if d["kind"] == "Service")

    def variant(change: Callable[[dict[str, Any]], None], of: dict[str, Any] = pod) -> dict[str, Any]:
        copy = json.loads(json.dumps(of))
        change(copy)
        return copy

    pods = [d for d in big if d["kind"] == "Pod"]
    bad_port = variant(lambda p: p["spec"]["containers"][0].update(ports=[{"containerPort": 70000}]))
    texts: dict[str, str] = {
        "cluster.json": _items(big),
        "compact.json": json.dumps({"kind": "List", "items": big}),
        # Pods of other versions are counted, not built; Pods without apiVersion are built.
        "versions.json": _items([*big[:20], variant(lambda p: p.update(apiVersion="v2")),
                                 variant(lambda p: p.pop("apiVersion")),
                                 variant(lambda p: p["metadata"].update(name="other")), *big[20:]]),
        "duplicates.json": _items([*big, variant(lambda p: p["spec"].update(nodeName="node-x"))]),
        # Refused by load_objects only because of a Pod, or of the nesting inside one.
        "bad-pod.json": _items([*big, bad_port]),
        "pod-version-type.json": _items([*big, variant(lambda p: p.update(apiVersion=1))]),
        "deep-pod.json": _items([*big, variant(lambda p: p["metadata"].update(
            annotations={"x": json.loads("[" * 300 + "]" * 300)}))]),
        "deep-pod-only.json": _items([variant(lambda p: p["spec"].update(x=json.loads("[" * 250 + "]" * 250)))]),
        "bad-service.json": _items([*big, variant(lambda s: s["spec"]["ports"][0].update(port="x"), svc)]),
        "truncated.json": _items(big)[:-30000],
        "no-pods.json": _items([d for d in big if d["kind"] != "Pod"]),
        # Pods before, in and after a nested List: the nested ones are read at once, in their place.
        "nested-pods.json": _items([*pods[:5], {"kind": "List", "items": pods[5:10]}, *big]),
        "only-pods.json": _items([d for d in big if d["kind"] == "Pod"]),
        "not-a-list.json": json.dumps(pod, indent=2),
        "cluster.yaml": yaml.safe_dump_all(big),
        "explicit.yaml": yaml.safe_dump_all(big, explicit_start=True),
        "versions.yaml": yaml.safe_dump_all([*big[:20], variant(lambda p: p.update(apiVersion="v2")),
                                             variant(lambda p: p.pop("apiVersion")), *big[20:]]),
        "bad-pod.yaml": yaml.safe_dump_all([*big, bad_port]),
        "deep-pod.yaml": yaml.safe_dump_all(big) + "---\n" + yaml.safe_dump(variant(
            lambda p: p["metadata"].update(annotations={"x": json.loads("[" * 300 + "]" * 300)}))),
        # A Pod the text does not show (a comment after its kind): read in one step, Pods in order.
        "commented.yaml": yaml.safe_dump_all(big[:40]) + "---\n"
        + yaml.safe_dump(variant(lambda p: p["metadata"].update(name="odd"))).replace("kind: Pod", "kind: Pod # x")
        + "---\n" + yaml.safe_dump_all(big[40:]),
        # `kind: Pod` in column 0 inside a quoted scalar of a document without a kind.
        "quoted.yaml": yaml.safe_dump_all(big[:10]) + '---\napiVersion: v1\nmetadata:\n  name: q\n  annotations:\n'
        '    a: "one\nkind: Pod\n      two"\n---\n' + yaml.safe_dump_all(big[10:]),
        "quoted-ok.yaml": yaml.safe_dump_all(big[:10]) + '---\napiVersion: v1\nkind: Service\nmetadata:\n'
        '  name: q\n  annotations:\n    a: "one\nkind: Pod\n      two"\n---\n' + yaml.safe_dump_all(big[10:]),
        "empty-docs.yaml": "---\n---\n" + yaml.safe_dump_all(big[:50], explicit_start=True) + "---\n# c\n---\n"
        + yaml.safe_dump_all(big[50:], explicit_start=True) + "---\n",
        "indent4.yaml": yaml.safe_dump_all(big, indent=4),
        "shuffled.yaml": yaml.safe_dump_all(random.Random(5).sample(big, len(big))),
        "yaml-syntax.yaml": yaml.safe_dump_all(big) + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: [x\n",
    }
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.yaml").write_text((FIXTURES / "clusters" / "kitchen-sink.yaml").read_text())
    (tmp_path / "dir" / "b.json").write_text(texts["duplicates.json"])
    (tmp_path / "dir" / "c.yaml").write_text(yaml.safe_dump_all(big[:30]))
    cases = [[str(p)] for p in CLUSTERS]
    cases += [[str(tmp_path / name)] for name in texts]
    cases += [[str(tmp_path / "dir")], [str(tmp_path / "cluster.yaml"), str(tmp_path / "versions.json"),
                                        str(CLUSTERS[0]), str(tmp_path / "duplicates.json")],
              [str(tmp_path / "missing.json")]]
    return cases


def test_objects_read_early_equal_the_objects_read_whole(tmp_path: Path) -> None:
    """Objects, Pods (values and order) and refusals, with and without a kinds filter."""
    refused = 0
    deferred = 0
    original = o._LaterPods.build

    def counting(self: o._LaterPods) -> list[o.Pod]:
        nonlocal deferred
        deferred += len(self.items)
        return original(self)

    o._LaterPods.build = counting  # type: ignore[method-assign]
    try:
        for paths in _cases(tmp_path):
            for kinds in (None, frozenset({"Service", "EndpointSlice", "Node"}), frozenset({"Pod", "Node"})):
                full, early = _full(paths, kinds), _early(paths, kinds)
                if isinstance(full, tuple) and full[0] == "error":
                    assert early == "refused", (paths, kinds, full)
                    refused += 1
                else:
                    assert early == full, (paths, kinds)
    finally:
        o._LaterPods.build = original  # type: ignore[method-assign]
    assert refused >= 6 * 3  # bad pod, version type, two nesting cases, bad service, truncated (+ missing)
    assert deferred > 1000


def _build_without_the_nesting_check(self: o._LaterPods) -> list[o.Pod]:
    scratch = o._Collector()
    scratch.source, scratch.kinds = self.source, self.kinds
    for start, _ in self.items:
        line = self.text.count("\n", 0, start) + 1
        scratch.add_document(o._JSON.raw_decode(self.text, start)[0], line, None)
    return scratch.pods


@pytest.mark.parametrize("mutation", ["no-nesting-check", "other-versions", "no-build", "yaml-api-version",
                                      "yaml-lines"])
def test_a_broken_early_reader_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mutation: str) -> None:
    """Each way of getting the early reader wrong makes the comparison above fail."""
    if mutation == "no-nesting-check":
        monkeypatch.setattr(o._LaterPods, "build", _build_without_the_nesting_check)
    elif mutation == "other-versions":  # Pods of other versions deferred (and so built) too
        monkeypatch.setattr(o, "_built_as_pod", lambda item: item["kind"] == "Pod")
    elif mutation == "yaml-api-version":  # YAML Pods of other versions left for later too
        monkeypatch.setattr(o, "_YAML_API_VERSION", "\n\0")
    elif mutation == "yaml-lines":  # the parts after the first counted one line off
        split = o._yaml_pod_split

        def shifted(text: str) -> tuple[o._Ranges, o._Ranges, int] | None:
            found = split(text)
            if found is None:
                return None
            others, pods, count = found
            return [(a, b, line + (a > 0)) for a, b, line in others], pods, count

        monkeypatch.setattr(o, "_yaml_pod_split", shifted)
    else:
        monkeypatch.setattr(o._LaterPods, "build", lambda self: [])
    differs = 0
    suffix = ".yaml" if mutation.startswith("yaml") else ".json"
    for paths in _cases(tmp_path):
        if not paths[0].endswith(suffix):
            continue
        expected, got = _full(paths), _early(paths)
        if isinstance(expected, tuple) and expected[0] == "error":
            differs += got != "refused"
        else:
            differs += got != expected
    assert differs


def _background(paths: list[str], fork: bool) -> object:
    from kpa.k8s.background import BackgroundObjects, settled_run

    def seen(objects: ClusterObjects | None, handed: bool) -> object:
        assert objects is not None
        return _seen(objects), objects.pods, [objects.pod_by_ip(ip) for p in objects.pods for ip in p.pod_ips]

    try:
        with BackgroundObjects(paths, fork=fork, early=True) as pending:
            objects = pending.result()
        return settled_run(objects, seen)
    except InputError as error:
        return ("error", str(error))


def test_objects_handed_over_early_by_a_child_equal_objects_read_here(tmp_path: Path) -> None:
    """Forked, early: the same objects and Pods, and the same message for every bad input, which the
    child may only find after it has handed the objects over."""
    errors = 0
    for paths in _cases(tmp_path):
        here = _background(paths, fork=False)
        assert _background(paths, fork=True) == here, paths
        errors += isinstance(here, tuple) and here[0] == "error"
    assert errors == 11


def test_an_early_child_waits_to_be_settled_and_is_reaped(tmp_path: Path) -> None:
    from kpa.k8s.background import BackgroundObjects, settled

    (tmp_path / "c.json").write_text(_items(to_objects(random_cluster(seed=22, services=20,
                                                                      endpoints_per_service=2))))
    with BackgroundObjects([str(tmp_path / "c.json")], fork=True, early=True) as pending:
        pid = pending.child
        assert pid is not None
        objects = pending.result()
    assert objects._pod_loader is not None  # the Pods are still to come
    with pytest.raises(RuntimeError), settled(objects):
        raise RuntimeError("the comparison failed")  # settles first, then the error goes on
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped: no zombie left
    assert objects._pod_loader is not None  # settling does not unpickle the Pods
    assert objects.pods == load_objects([str(tmp_path / "c.json")]).pods


@pytest.mark.parametrize(("layout", "gives_way"), [("json", True), ("yaml", False), ("directory", False)])
def test_a_child_reading_json_files_runs_below_its_callers_priority(
        tmp_path: Path, layout: str, gives_way: bool) -> None:
    """Reading JSON files, the child gives way to its caller, whose part is the longer one then; reading
    YAML (or files it finds in a directory), it keeps its caller's priority."""
    from kpa.k8s.background import JSON_CHILD_NICENESS, BackgroundObjects

    docs = to_objects(random_cluster(seed=23, services=20, endpoints_per_service=2))
    if layout == "directory":
        (tmp_path / "objects").mkdir()
        (tmp_path / "objects" / "c.json").write_text(_items(docs))
        path = tmp_path / "objects"
    else:
        path = tmp_path / f"c.{layout}"
        path.write_text(_items(docs) if layout == "json" else yaml.safe_dump_all(docs))
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    with BackgroundObjects([str(path)], fork=True, early=True) as pending:
        child = pending.child
        assert child is not None
        objects = pending.result()  # handed over: the child has long set its priority, and waits
        theirs = os.getpriority(os.PRIO_PROCESS, child)
    objects.settle()
    with pytest.raises(ChildProcessError):
        os.waitpid(child, os.WNOHANG)  # reaped: no child left behind for the next test
    assert theirs == (min(mine + JSON_CHILD_NICENESS, 19) if gives_way else mine)
    assert objects.services == load_objects([str(path)]).services
    assert os.getpriority(os.PRIO_PROCESS, 0) == mine


def test_the_pods_asked_for_in_the_block_come_from_the_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settled in the block, the Pods asked for there are the child's (the files are not read again),
    and the child is reaped once they are taken."""
    from kpa.k8s import background

    path = tmp_path / "c.json"
    path.write_text(_items(to_objects(random_cluster(seed=27, services=20, endpoints_per_service=2))))
    expected = load_objects([str(path)]).pods
    with background.BackgroundObjects([str(path)], fork=True, early=True) as pending:
        pid = pending.child
        assert pid is not None
        objects = pending.result()
        objects.settle()

        def no_second_read(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("the objects were read again")

        monkeypatch.setattr(o, "load_objects", no_second_read)
        assert objects.pods == expected
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_the_objects_are_whole_before_the_pods_are_pickled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child says the objects are whole as soon as it has checked the Pods: settling does not wait
    for their pickle (here one that never ends), and Pods asked for after the block are read here."""
    import pickle

    from kpa.k8s import background

    path = tmp_path / "c.json"
    path.write_text(_items(to_objects(random_cluster(seed=28, services=20, endpoints_per_service=2))))
    real = pickle.dumps

    def stalling(value: Any, *args: Any, **kwargs: Any) -> bytes:  # the forked child inherits this
        if isinstance(value, dict) and value and all(isinstance(p, o.Pod) for p in value.values()):
            time.sleep(60)
        return real(value, *args, **kwargs)

    monkeypatch.setattr(background.pickle, "dumps", stalling)
    with background.BackgroundObjects([str(path)], fork=True, early=True) as pending:
        pid = pending.child
        assert pid is not None
        objects = pending.result()
        objects.settle()
        assert os.waitpid(pid, os.WNOHANG) == (0, 0)  # settled while the child still pickles
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # the block stopped the child it no longer needs
    assert objects.pods == load_objects([str(path)]).pods


def _proc_state(pid: int) -> tuple[str, int] | None:
    """A process's state letter and the CPU ticks it has used, or None once it is gone (or a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in "ZX" else (fields[0], int(fields[11]) + int(fields[12]))


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to watch the child")
def test_a_child_never_asked_for_the_pods_waits_idle_and_ends_with_its_caller(tmp_path: Path) -> None:
    """After saying the objects are whole, the child does nothing until asked for the Pods: it takes no
    core from the caller or from the next command, and a caller that ends as the kpa command does
    (os._exit, no cleanup) ends it too."""
    from kpa.k8s.background import BackgroundObjects

    path = tmp_path / "c.json"
    path.write_text(_items(to_objects(random_cluster(seed=31, services=30, endpoints_per_service=3))))
    said_r, said_w = os.pipe()
    end_r, end_w = os.pipe()
    caller = os.fork()
    if caller == 0:  # the caller
        status = 1
        try:
            os.close(said_r)
            os.close(end_w)
            with BackgroundObjects([str(path)], fork=True, early=True) as pending:
                objects = pending.result()
                objects.settle()
                os.write(said_w, str(pending.child).encode())
                os.read(end_r, 1)
                os._exit(0)  # leaves the block as the command does: not at all
        finally:
            os._exit(status)
    os.close(said_w)
    os.close(end_r)
    try:
        child = int(os.read(said_r, 64) or 0)
        assert child, "the caller did not settle"
        deadline = time.monotonic() + 30
        while (state := _proc_state(child)) is not None and state[0] != "S" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert state is not None and state[0] == "S", state  # waits, and has not ended on its own
        time.sleep(0.3)
        assert _proc_state(child) == state  # no CPU used meanwhile
        os.write(end_w, b"!")
        assert os.waitpid(caller, 0)[1] == 0
        while _proc_state(child) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _proc_state(child) is None, "the child outlived its caller"
    finally:
        os.close(said_r)
        os.close(end_w)  # a caller still waiting ends
        with contextlib.suppress(ChildProcessError):
            os.waitpid(caller, 0)


def test_the_child_works_out_extra_for_a_caller_that_asks_late(tmp_path: Path) -> None:
    """A caller that asks for the objects after the child has handed them over gets `extra`'s answer
    (here the objects' endpoint chain names) from the child, and runs nothing meanwhile."""
    import select

    from kpa.k8s.background import BackgroundObjects
    from kpa.k8s.naming import endpoint_chain_names

    path = tmp_path / "c.json"
    path.write_text(_items(to_objects(random_cluster(seed=29, services=20, endpoints_per_service=3))))
    r, w = os.pipe()

    def extra(objects: ClusterObjects) -> object:  # in the child, which was not told the caller waits
        os.write(w, b"!")
        return endpoint_chain_names(objects)

    ran: list[bool] = []
    try:
        with BackgroundObjects([str(path)], fork=True, early=True, extra=extra) as pending:
            assert select.select([r], [], [], 60)[0], "the child never got to `extra`"
            # The child's writer thread may not have put the objects in the pipe yet: "late" means
            # once they are there to read.
            deadline = time.monotonic() + 60
            while pending._job is not None and not pending._job.ready() and time.monotonic() < deadline:
                time.sleep(0.01)
            objects = pending.result(lambda: ran.append(True))
            objects.settle()
    finally:
        os.close(r)
        os.close(w)
    expected = endpoint_chain_names(load_objects([str(path)]))
    assert ran == [] and len(expected) > 40 and pending.extra == expected
    assert objects.pods == load_objects([str(path)]).pods


def test_a_caller_that_waits_works_meanwhile_and_the_child_leaves_extra(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller that asks before the child has handed the objects over runs its `meanwhile` while it
    waits, and the child, told so, leaves `extra` to it; the objects are the same."""
    from kpa.k8s.background import BackgroundObjects

    path = tmp_path / "c.json"
    path.write_text(_items(to_objects(random_cluster(seed=30, services=20, endpoints_per_service=3))))
    r, w = os.pipe()
    real = o.load_objects_early

    def held(paths: Any, kinds: Any = None) -> Any:  # the forked child inherits this
        os.read(r, 1)  # reads the objects only once the caller waits
        return real(paths, kinds=kinds)

    monkeypatch.setattr(o, "load_objects_early", held)
    called = tmp_path / "extra-called"

    def extra(objects: ClusterObjects) -> object:
        called.write_text("the child worked out `extra` though the caller waited")
        return {}

    ran: list[bool] = []

    def meanwhile() -> None:
        ran.append(True)
        os.write(w, b"!")

    try:
        with BackgroundObjects([str(path)], fork=True, early=True, extra=extra) as pending:
            objects = pending.result(meanwhile)
            objects.settle()
    finally:
        os.close(r)
        os.close(w)
    assert ran == [True] and pending.extra is None and not called.exists()
    assert _seen(objects) == _seen(load_objects([str(path)]))


def test_lint_and_show_report_a_bad_pod_the_child_finds_late(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A Pod (or nesting) error is found after the objects were handed over; the commands still
    say exactly what they say when the objects are read first, and nothing else."""
    from kpa.k8s import background

    cluster = random_cluster(seed=23, services=25, endpoints_per_service=3)
    save = tmp_path / "gen.save"
    save.write_text(render_restore(cluster, ProxierOptions(node_name="node-0"), "ipv4"))
    docs = to_objects(cluster)
    pod = next(d for d in docs if d["kind"] == "Pod")
    bad = json.loads(json.dumps(pod))
    bad["spec"]["containers"][0]["ports"] = [{"containerPort": 0}]
    deep = json.loads(json.dumps(pod))
    deep["metadata"]["annotations"] = {"x": json.loads("[" * 300 + "]" * 300)}
    for name, items in (("good", docs), ("bad", [*docs, bad]), ("deep", [*docs, deep])):
        (tmp_path / f"{name}.json").write_text(_items(items))
    runs = []
    for name in ("good", "bad", "deep"):
        objects = str(tmp_path / f"{name}.json")
        runs += [
            ["lint", "-r", str(save), "-c", objects, "--node", "node-0", "-o", "json"],
            ["lint", "-r", str(save), "-c", objects, "--node", "node-9"],  # no such node: which error first?
            ["show", "-r", str(save), "-c", objects, "-o", "wide"],
            ["show", "-r", str(save), "-c", objects, "svc/default/nothing"],
        ]
    statuses = []
    for args in runs:
        answers = []
        for spare in (True, False):
            monkeypatch.setattr(background, "spare_core", lambda spare=spare: spare)
            answers.append(_cli(args, capsys))
        assert answers[0] == answers[1], args
        statuses.append(answers[0][0])
    # Good objects: lint passes, an unknown node or Service is refused (2); bad objects: refused (2), with
    # the objects' message even where the node or the Service would have been refused.
    assert statuses == [0, 2, 0, 2] + [2] * 8


def _queries(objects: ClusterObjects) -> list[tuple[str, str, str, str | None, int | None]]:
    names = {(s.namespace, s.service_name or "") for s in objects.endpoint_slices}
    names |= {(s.namespace, s.name) for s in objects.services}
    ports = {p.name for s in objects.endpoint_slices for p in s.ports} | {"", "nothing"}
    return [(ns, name, port, protocol, family) for ns, name in sorted(names) for port in sorted(ports)
            for protocol in (None, "TCP", "UDP", "SCTP") for family in (None, 4, 6)]


def test_slices_handed_over_as_tuples_answer_as_the_slices(tmp_path: Path) -> None:
    """Pickled objects carry their slices as tuples and answer endpoint questions from them: the same
    backends (every field) for every Service, port name, protocol and family; the slices themselves come
    back equal, in their order, and so does each Service's choice of slices."""
    import pickle

    cases = [load_objects([str(p)]) for p in CLUSTERS]
    docs = to_objects(random_cluster(seed=24, services=60, endpoints_per_service=5))
    (tmp_path / "c.json").write_text(_items(docs))
    cases.append(load_objects([str(tmp_path / "c.json")]))
    legacy = [{"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "old", "namespace": "default"},
               "subsets": [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "fd00::1", "nodeName": "n"}],
                            "notReadyAddresses": [{"ip": "10.0.0.2", "targetRef": {"kind": "Pod", "name": "p"}}],
                            "ports": [{"port": 80, "name": "http"}, {"port": 53, "protocol": "UDP"}]}]}]
    cases.append(o.objects_from_documents([*docs[:40], *legacy]))
    cases.append(cases[-2].merged(cases[0]))
    asked = 0
    for objects in cases:
        again = pickle.loads(pickle.dumps(objects))
        assert again._packed is not None
        for query in _queries(objects):
            want = objects.endpoints_by_address(*query)
            assert again.endpoints_by_address(*query) == want, query
            assert list(again.endpoints_by_address(*query)) == list(want), query
            asked += bool(want)
        assert again._packed is not None  # answered without building the slices
        keys = sorted({(s.namespace, s.service_name or "") for s in objects.endpoint_slices})
        assert [again.slices_for_service(*k) for k in keys] == [objects.slices_for_service(*k) for k in keys]
        assert again._packed is None
        assert again.endpoint_slices == objects.endpoint_slices
        assert pickle.loads(pickle.dumps(again)).endpoint_slices == objects.endpoint_slices
    assert asked > 500


@pytest.mark.parametrize("mutation", ["ready", "family", "first-address"])
def test_a_broken_tuple_reader_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mutation: str) -> None:
    """The comparison above fails when the tuple reader departs from the slices in any of its rules."""
    import pickle

    original = o._packed_endpoints

    def broken(packed: o._PackedSlices, namespace: str, name: str, port_name: str, protocol: str | None,
               family: int | None) -> dict[tuple[str, int], o.ServiceEndpoint]:
        records, by_service = packed
        if mutation == "family":
            family = None
        if mutation in ("ready", "first-address"):
            changed = []
            for r in records:
                eps = r[6]
                if mutation == "ready":  # every endpoint read as ready: a not-ready copy wins
                    eps = tuple((e[0], True, *e[2:]) for e in eps)
                else:
                    eps = tuple((e[0][-1:], *e[1:]) for e in eps)
                changed.append((*r[:6], eps))
            records = changed  # type: ignore[assignment]
        return original((records, by_service), namespace, name, port_name, protocol, family)

    monkeypatch.setattr(o, "_packed_endpoints", broken)
    docs = [d for p in CLUSTERS for d in yaml.safe_load_all(p.read_text()) if isinstance(d, dict)]
    dup = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
           "metadata": {"name": "dup-b", "namespace": "default", "labels": {"kubernetes.io/service-name": "dup"}},
           "endpoints": [{"addresses": ["10.9.0.1", "10.9.0.2"], "conditions": {"ready": False}}],
           "ports": [{"port": 80}]}
    dup2 = json.loads(json.dumps(dup))
    dup2["metadata"]["name"] = "dup-a"
    dup2["endpoints"][0]["conditions"]["ready"] = True
    differs = 0
    for objects in (o.objects_from_documents([*docs, dup, dup2]),):
        again = pickle.loads(pickle.dumps(objects))
        differs += sum(again.endpoints_by_address(*q) != objects.endpoints_by_address(*q) for q in _queries(objects))
    assert differs


@pytest.mark.parametrize(("loadavg", "cores", "spare"), [
    ("0.10 0.20 0.30 1/78 123", 2, True),  # only this process runs
    ("1.90 1.50 0.80 1/78 123", 2, True),  # the last minute was busy, now it is idle
    ("0.10 0.20 0.30 2/78 123", 2, False),  # another task runs now
    ("0.10 0.20 0.30 3/78 123", 4, True),
    ("0.10 0.20 0.30 4/78 123", 4, False),
    ("0.10 0.20 0.30 1/78 123", 1, False),  # one core: nothing to share
])
def test_a_spare_core_is_judged_by_the_tasks_runnable_now(loadavg: str, cores: int, spare: bool) -> None:
    from kpa.k8s.background import spare_in

    assert spare_in(loadavg, cores) is spare


def test_a_child_that_dies_after_the_hand_over_leaves_the_objects_to_be_read_here(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after handing the objects over but before saying they are whole: settling reads the files
    here, and whatever was worked out from the objects handed over is to be worked out again."""
    import signal

    from kpa.k8s.background import BackgroundObjects, ObjectsChanged, settled

    path = tmp_path / "c.json"
    path.write_text(_items(to_objects(random_cluster(seed=25, services=10, endpoints_per_service=2))))
    real = o.load_objects_early

    def stalling(paths: Any, kinds: Any = None) -> Any:  # the forked child inherits this
        objects, finish = real(paths, kinds=kinds)

        def stalled() -> Any:
            time.sleep(120)
            return finish()
        return objects, stalled

    monkeypatch.setattr(o, "load_objects_early", stalling)
    with BackgroundObjects([str(path)], fork=True, early=True) as pending:
        pid = pending.child
        assert pid is not None
        objects = pending.result()
        os.kill(pid, signal.SIGKILL)  # while it checks the Pods
    with pytest.raises(ObjectsChanged) as changed, settled(objects):
        pass
    assert changed.value.objects.pods == load_objects([str(path)]).pods


def _item_text(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=4)


def _list_text(items: list[str]) -> str:
    """A List as kubectl prints it, from its items' texts (each as json.dumps(indent=4) prints it)."""
    body = ",\n".join(textwrap.indent(t, " " * 8) for t in items)
    return '{\n    "apiVersion": "v1",\n    "items": [\n' + body + '\n    ],\n    "kind": "List"\n}\n'


def _as_pod_head(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` with apiVersion v1 and kind Pod as its first keys (as a Pod's text begins)."""
    return {"apiVersion": "v1", "kind": "Pod", **{k: v for k, v in doc.items() if k not in ("apiVersion", "kind")}}


def _lying_texts(docs: list[dict[str, Any]], fake: dict[str, Any]) -> dict[str, str]:
    """Valid kubectl-style Lists whose layout lies about where the Pods are: each hides a Service from
    a reader that trusts the layout, or shows it one that is not there (`fake`, nested in a Pod)."""
    texts = [_item_text(d) for d in docs]
    pods = [n for n, d in enumerate(docs) if d["kind"] == "Pod"]
    services = [n for n, d in enumerate(docs) if d["kind"] == "Service"]
    out: dict[str, str] = {}
    # A Service whose text begins as a Pod's; its later `kind` key wins.
    hidden = list(texts)
    service = docs[services[1]]
    text = _item_text(_as_pod_head(service))
    hidden[services[1]] = text[: text.rindex("\n}")] + f',\n    "kind": "{service["kind"]}"\n}}'
    out["duplicate-kind.json"] = _list_text(hidden)
    # A Pod and a Service after it on the same line: the layout shows one item where there are two.
    joined = list(texts)
    joined[pods[2]] = texts[pods[2]] + ", " + json.dumps(docs[services[2]])
    del joined[services[2]]
    out["two-in-one.json"] = _list_text(joined)
    # A Pod with a field holding objects printed at the items' indentation: a Pod-like one, a Service
    # that is not in the cluster, another Pod-like one; the layout shows four items where there is one.
    nested = list(texts)
    pod = _item_text(docs[pods[3]])
    inner = ",\n".join([_item_text({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p1"}}),
                        _item_text(fake), _item_text({"apiVersion": "v1", "kind": "Pod", "z": 1})])
    nested[pods[3]] = pod[: pod.rindex("\n}")] + ',\n    "x": [\n' + inner + "\n    ]\n}"  # at the items' column
    out["nested.json"] = _list_text(nested)
    # A string with an escaped separator and Pod head in it: nothing to see for the layout (and no lie).
    quoted = json.loads(json.dumps(docs[pods[4]]))
    quoted["metadata"].setdefault("annotations", {})["a"] = '\n        },\n        {\n            "apiVersion": "v1",'
    out["quoted-ok.json"] = _list_text([*texts[: pods[4]], _item_text(quoted), *texts[pods[4] + 1:]])
    return out


_GHOST = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ghost", "namespace": "default"},
          "spec": {"clusterIP": "10.96.250.250", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}


def test_a_layout_that_lies_about_the_pods_is_found_out(tmp_path: Path) -> None:
    """Items passed over undecoded because the layout shows a Pod there: when the layout lies, the
    objects of the first step are wrong, and the second step refuses (so the caller reads them again)."""
    docs = to_objects(random_cluster(seed=26, services=30, endpoints_per_service=3))
    lies = 0
    for name, text in _lying_texts(docs, _GHOST).items():
        path = tmp_path / name
        path.write_text(text)
        whole = _full([str(path)])
        assert isinstance(whole, tuple) and whole[0] != "error"  # valid files, all of them
        objects, finish = load_objects_early([str(path)])
        if name.endswith("-ok.json"):
            assert (_seen(objects), list(finish().items())) == whole
            continue
        assert _seen(objects) != whole[0], name  # the layout's guess was wrong here...
        with pytest.raises(o._Unfit):
            finish()  # ...and the second step says so
        lies += 1
    assert lies == 3


def test_objects_handed_over_wrong_are_read_again(tmp_path: Path) -> None:
    """Through a child: whatever is worked out from objects the layout lied about is worked out again
    from the objects read whole (`settled_run`), and equals what reading them here gives."""
    from kpa.k8s import background

    docs = to_objects(random_cluster(seed=27, services=20, endpoints_per_service=2))
    changed = 0
    original = background.ObjectsChanged

    class Counted(original):  # type: ignore[misc, valid-type]
        def __init__(self, objects: ClusterObjects) -> None:
            nonlocal changed
            changed += 1
            super().__init__(objects)

    background.ObjectsChanged = Counted  # type: ignore[misc]
    try:
        for name, text in _lying_texts(docs, _GHOST).items():
            (tmp_path / name).write_text(text)
            paths = [str(tmp_path / name)]
            assert _background(paths, fork=True) == _background(paths, fork=False), name
    finally:
        background.ObjectsChanged = original  # type: ignore[misc]
    assert changed == 3


def _no_redo_settle(self: Any) -> None:
    """Settling as it was when the objects handed over were always right: the Pods read here are kept."""
    from kpa.k8s.background import _PODS_WANTED

    if self._pods is not None:
        return
    self._say(_PODS_WANTED)
    rest = self._job.collect() if self._job is not None else None
    if rest is not None and len(rest) > 8:
        self._pods = rest[8:]
        return
    self._pods = load_objects(self._paths, kinds=self._kinds).detach_pods()


def _build_without_the_end_check(self: o._LaterPods) -> list[o.Pod]:
    scratch = o._Collector()
    scratch.source, scratch.kinds = self.source, self.kinds
    for start, _ in self.items:
        line = self.text.count("\n", 0, start) + 1
        item = o._JSON.raw_decode(self.text, start)[0]
        if item.get("kind") == "Pod":
            scratch.add_document(item, line, None)
    return scratch.pods


def _build_without_the_kind_check(self: o._LaterPods) -> list[o.Pod]:
    scratch = o._Collector()
    scratch.source, scratch.kinds = self.source, self.kinds
    for start, end in self.items:
        line = self.text.count("\n", 0, start) + 1
        item, stop = o._JSON.raw_decode(self.text, start)
        if end >= 0 and stop != end:
            raise o._Unfit
        scratch.add_document(item, line, None)
    return scratch.pods


@pytest.mark.parametrize("mutation", [None, "no-redo", "no-end-check", "no-kind-check"])
def test_lint_and_show_answer_as_with_the_objects_read_first_when_the_layout_lies(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        mutation: str | None) -> None:
    """Whole commands, the child forced on and off: the same output, status and messages for Lists whose
    layout hides a Service that has rules, or shows one that is not there. Each way of getting the
    shortcut wrong (no redo, no check that an item passed over ends where the layout said, none that it
    is a Pod) changes an answer."""
    from kpa.k8s import background

    cluster = random_cluster(seed=28, services=25, endpoints_per_service=3)
    save = tmp_path / "gen.save"
    save.write_text(render_restore(cluster, ProxierOptions(node_name="node-0"), "ipv4"))
    docs = to_objects(cluster)
    if mutation == "no-redo":
        monkeypatch.setattr(background.BackgroundObjects, "_settle", _no_redo_settle)
    elif mutation == "no-end-check":
        monkeypatch.setattr(o._LaterPods, "build", _build_without_the_end_check)
    elif mutation == "no-kind-check":
        monkeypatch.setattr(o._LaterPods, "build", _build_without_the_kind_check)
    differs = []
    for name, text in _lying_texts(docs, _GHOST).items():
        objects = tmp_path / name
        objects.write_text(text)
        for args in (["lint", "-r", str(save), "-c", str(objects), "--node", "node-0", "-o", "json"],
                     ["show", "-r", str(save), "-c", str(objects), "-o", "wide"]):
            answers = []
            for spare in (True, False):
                monkeypatch.setattr(background, "spare_core", lambda spare=spare: spare)
                answers.append(_cli(args, capsys))
            if mutation is None:
                assert answers[0] == answers[1], args
                assert answers[0][0] in (0, 1), answers[0]
            differs.append(answers[0] != answers[1])
    assert any(differs) == (mutation is not None)


@pytest.mark.parametrize("kind_first", [False, True])
def test_pod_items_are_passed_over_undecoded(tmp_path: Path, kind_first: bool) -> None:
    """In kubectl's layout (keys sorted, or kind first), every Pod item but the last is passed over
    without decoding it before the objects are handed over, and the answer is still the whole one."""
    docs = to_objects(random_cluster(seed=29, services=30, endpoints_per_service=3))
    if kind_first:
        docs = [{"kind": d["kind"], **{k: v for k, v in d.items() if k != "kind"}} for d in docs]
    path = tmp_path / "c.json"
    path.write_text(_items(docs))
    decoded = []
    original = o._JSON.raw_decode

    class Counting(json.JSONDecoder):
        def raw_decode(self, s: str, idx: int = 0) -> tuple[Any, int]:
            decoded.append(s[idx : idx + 200])
            return original(s, idx)

    pods = sum(d["kind"] == "Pod" for d in docs)
    saved, o._JSON = o._JSON, Counting()
    try:
        objects, finish = load_objects_early([str(path)])
        before = list(decoded)
        whole = (_seen(objects), list(finish().items()))
    finally:
        o._JSON = saved
    assert whole == _full([str(path)])
    assert sum('"kind": "Pod"' in d for d in before) == 1  # only the last Pod item, which no separator follows
    assert pods > 40 and sum('"kind": "Pod"' in d for d in decoded) == pods + 1  # each once more in finish()


def _pod_split_reference(text: str) -> tuple[o._Ranges, o._Ranges, int] | None:
    """`_yaml_pod_split` written plainly: every column-0 kind and apiVersion line, by regular expression."""
    if not blockyaml._text_is_plain(text):
        return None
    t = "\n" + text
    if o._YAML_MARKERS.search(t) or o._YAML_ODD_COLUMN_0.search(t):
        return None
    starts = [0, *(m.start() for m in o._YAML_SEPARATOR.finditer(t)), len(text)]
    kinds = [(m.start(), m[1]) for m in re.finditer(r"\nkind:([^\n]*)", t)]
    versions = [(m.start(), m[1]) for m in re.finditer(r"\napiVersion:([^\n]*)", t)]
    others: o._Ranges = []
    pods: o._Ranges = []
    count = 0
    for a, b in itertools.pairwise(starts):
        if a == b:
            continue
        line = text.count("\n", 0, a) + 1
        found_kinds = [k for at, k in kinds if a <= at < b]
        found_versions = [v for at, v in versions if a <= at < b]
        pod = (found_kinds == [" Pod"] and found_versions in ([], [" v1"])
               and o._YAML_MAPPING_FIRST.match(text, a) is not None)
        count += pod
        into = pods if pod else others
        if into and into[-1][1] == a:
            into[-1] = (into[-1][0], b, into[-1][2])
        else:
            into.append((a, b, line))
    return (others, pods, count) if count else None


def test_yaml_pod_split_finds_what_every_kind_line_says() -> None:
    """The Pods' split (found by searching each document) against every kind and apiVersion line
    found in the whole text, on random texts of such lines, separators and others."""
    pieces = ["apiVersion: v1\n", "apiVersion: v2\n", "apiVersion: v1 \n", "apiVersion: v1", "apiVersion:",
              "apiVersion: 'v1'\n", "kind: Pod\n", "kind: Pod", "kind: Pods\n", "kind: Service\n", "kind:\n",
              "kind:", "kind: Pod # c\n", " kind: Pod\n", "metadata:\n  name: x\n", "  kind: Pod\n",
              "- kind: Pod\n", "---\n", "---", "--- \n", "# c\n", "\n", "a: b\n", "'kind': Pod\n"]
    rng = random.Random(12)
    split = 0
    for _ in range(8000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 14)))
        expected = _pod_split_reference(text)
        assert o._yaml_pod_split(text) == expected, text
        split += expected is not None
    assert split > 80
    text = yaml.safe_dump_all(to_objects(random_cluster(seed=3, services=30, endpoints_per_service=3)))
    assert o._yaml_pod_split(text) == _pod_split_reference(text) is not None
