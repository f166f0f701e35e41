"""Read cluster object files on a second core while the caller reads the ruleset.

`kpa lint` and `kpa show` read two large inputs that do not depend on each other: a
ruleset dump and the cluster objects. On a system with `os.fork`, `BackgroundObjects`
reads the objects in a child process and hands them back pickled, so both inputs are
read at once. The Pods, which lint and show rarely look at, are handed back separately
and unpickled only when something asks for them.

It does so only when a core is idle (`spare_core`): on a busy machine the two
processes would take turns, and handing over the objects would be pure cost. A child
reading JSON, whose part is the shorter one, runs at a lower priority than its caller
(`_gives_way`).

The answer is always exactly what `load_objects` gives in this process: the child
sends only a complete result, and on anything else (bad input, a crash, a kill, no
fork) the objects are read again here, which raises the very same errors. Standard
input is never read in the child.

With `early=True` (lint and show) the child hands the objects over before it has built
the Pods of a JSON List or checked its nesting (`load_objects_early`), and does that
while the caller already compares; the caller must then call `ClusterObjects.settle()`
(see `settled`) before it says anything: that waits for the child's word that the
objects are whole, or reads them here, which raises the error reading them gives. The
child then pickles the Pods only when the caller asks for them, which it rarely does; a
caller that ends without asking ends the child too, which meanwhile waits without taking
a core (from the caller's output, or from a next command judging `spare_core`). The
caller's words to the child go over a socket pair: that it waits for the objects (see
`extra`), that it wants the Pods, and, by closing it, that it has ended.

With `extra` as well, the child also works out `extra(objects)` on the objects it handed
over early, for the caller, who would otherwise do that work itself: it sends the answer
right after the objects, unless the caller has asked for the objects by then (the caller
is then already waiting for the child, and the child is the later of the two; see
`result`'s `meanwhile`). `extra` answers the same whatever the objects handed over turn
out to be (for example a memo of a pure function), so its answer holds even when
settling finds them changed.

The objects handed over early can even be wrong: the child passes over the Pod items of
a JSON List where kubectl's layout shows them, without decoding them, and only then
checks that each was exactly one Pod. If it was not (or the child did not finish),
settling reads the objects here: that raises the error reading them gives, or, if they
read fine, `ObjectsChanged` with them, and whatever was worked out from the objects
handed over must be worked out again from those (`settled_run` does that).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from kpa.forked import ChildJob, readable_now

if TYPE_CHECKING:
    import socket

    from kpa.k8s.objects import ClusterObjects, Pod

# kpa.k8s.objects is imported where it is used: a command starts the child before it has
# imported it (see kpa.cli.start_objects), and each process imports what it needs itself.

T = TypeVar("T")

_HEADER = struct.Struct("<QQ")  # lengths of the objects' and the Pods' pickles
_LENGTH = struct.Struct("<Q")  # early hand-over: the length of each pickle
_WHOLE = b"whole\x00\x00\x00"  # early hand-over: the objects handed over are what the files hold
_EXTRA = b"extra\x00\x00\x00"  # early hand-over: the pickle of `extra`'s answer follows
_NO_EXTRA = b"noextra\x00"  # early hand-over: the child left `extra` to the caller
_WAITING = b"w"  # early hand-over, to the child: the caller waits for the objects
_PODS_WANTED = b"p"  # early hand-over, to the child: the caller wants the Pods


# How far the child reading JSON objects lowers its priority (nice), see `_gives_way`.
JSON_CHILD_NICENESS = 5


def _gives_way(paths: Sequence[str]) -> bool:
    """Whether the early child should run at a lower priority than the caller: when every object
    file is JSON.

    While the caller reads the ruleset, three processes share two cores: the caller, this child
    and the rules' skeleton child (kpa.parse.shapes). Reading JSON objects takes the child less
    time than the rules and the comparison take the caller (at 5,000 Services x 5 endpoints it
    hands them over 0.24 s before the caller asks), so the caller's share is what decides when
    the command ends: lint then ends about 0.05 s sooner. YAML takes the child longer than the
    caller's part, and there the child keeps its share.
    """
    for path in paths:
        try:
            with open(path, "rb") as f:
                head = f.read(4096).lstrip()
        except OSError:  # a directory, or unreadable: the child's reading says what it is
            return False
        if not head.startswith((b"{", b"[")):
            return False
    return bool(paths)


def _forkable(paths: Sequence[str]) -> bool:
    if not paths or not hasattr(os, "fork") or sys.platform == "win32":
        return False
    # `-` is standard input, which belongs to this process.
    return all(p != "-" for p in paths)


def spare_core() -> bool:
    """Whether a core is idle enough for a second process to pay off.

    Handing the objects over costs about a fifth of reading them; when the other cores
    are busy, the two processes take turns on one and that cost is all that is left.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        with open("/proc/loadavg") as f:
            return spare_in(f.read(), cores)
    except (OSError, ValueError, IndexError):
        pass
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return False
    return cores - load >= 1.0


def spare_in(loadavg: str, cores: int) -> bool:
    """Whether `/proc/loadavg`'s text leaves a core for a second process besides this one.

    Its fourth field counts the tasks runnable right now, this process among them. The
    one-minute average would still count work that has just ended (such as the command
    run before this one), and keep the second core unused when it is idle.
    """
    runnable = int(loadavg.split()[3].split("/", 1)[0])
    return cores - (runnable - 1) >= 2


class BackgroundObjects:
    """`with BackgroundObjects(paths) as pending: ...; objects = pending.result()`.

    The child is started on entry; leaving the block without taking the result (for
    example because reading the rules failed) stops it.
    """

    def __init__(self, paths: Sequence[str], fork: bool | None = None, kinds: frozenset[str] | None = None,
                 early: bool = False, extra: Callable[[ClusterObjects], object] | None = None) -> None:
        """`fork`: True or False to decide; by default, when `spare_core()` says so. `kinds`: see load_objects.
        `early`: hand the objects over before the Pods are built; `extra`: work the child may do for the
        caller on those objects, given then as `extra` (see the module's help)."""
        self._paths = list(paths)
        self._kinds = kinds
        self._fork = fork
        self._early = early
        self._extra_work = extra if early else None
        #: What `extra` answered in the child, once `result` has taken it; None if the child left it.
        self.extra: object | None = None
        # Early hand-over: the caller's words to the child, on a socket pair (see `_say`).
        self._to_child: socket.socket | None = None
        self._from_caller: socket.socket | None = None
        self._job: ChildJob | None = None
        self._handed = False  # the early objects were taken: the child goes on after the block
        self._whole = False  # the child said the objects handed over early are whole
        self._ended = False  # the `with` block has ended
        self._pods: dict[tuple[str, str], Pod] | None = None
        self._changed: ObjectsChanged | None = None

    @property
    def child(self) -> int | None:
        """The process id of the child reading the objects, while there is one."""
        return self._job.pid if self._job is not None else None

    def __enter__(self) -> BackgroundObjects:
        if _forkable(self._paths) and (spare_core() if self._fork is None else self._fork):
            if self._early:
                import socket

                with contextlib.suppress(OSError):  # without them the child goes on as if told at once
                    self._to_child, self._from_caller = socket.socketpair()
            self._job = ChildJob(self._send_early if self._early else self._send)
            if self._from_caller is not None:
                self._from_caller.close()  # the child's end
                self._from_caller = None
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._ended = True
        if self._to_child is not None:
            self._to_child.close()  # a child waiting to be asked for the Pods ends
            self._to_child = None
        # Once the objects are whole, only the Pods are still to come: a caller that has not
        # asked for them by now reads them from the files if it ever does.
        if self._job is not None and (not self._handed or (self._whole and self._pods is None)):
            self._job.stop()

    def result(self, meanwhile: Callable[[], None] | None = None) -> ClusterObjects:
        """The objects, from the child if it sent them whole; otherwise read here.

        `meanwhile`: the caller's own way to the work `extra` does (early, with `extra`), run here if
        the child has not yet handed the objects over: it runs while the child still reads them, and
        the child, told that the caller waits, leaves `extra` to it. So either `meanwhile` ran, or
        `self.extra` holds `extra`'s answer, or (when the child hands the objects over just as the
        caller asks) neither: the caller then does that work when it needs it, as without a child.
        """
        from kpa.k8s.objects import load_objects

        if self._early:
            return self._early_result(meanwhile)
        data = self._job.collect() if self._job is not None else None
        received = _receive(data) if data is not None else None
        if received is None:
            return load_objects(self._paths, kinds=self._kinds)
        return received

    def _send(self) -> list[bytes]:
        """In the child: the objects and, apart, the Pods, pickled behind their lengths. An error
        ends the child without a result, and the parent reads the objects again and reports it."""
        from kpa.k8s.objects import load_objects

        objects = load_objects(self._paths, kinds=self._kinds)
        pods = objects.detach_pods()
        main = pickle.dumps(objects, protocol=pickle.HIGHEST_PROTOCOL)
        rest = pickle.dumps(pods, protocol=pickle.HIGHEST_PROTOCOL)
        return [_HEADER.pack(len(main), len(rest)), main, rest]


    def _send_early(self) -> Iterator[bytes]:
        """In the child: the objects without their Pods, the word `_WHOLE`, then the Pods, each pickle
        behind its length. `_WHOLE` and the Pods are written only if `load_objects` would have read the
        files without error."""
        from kpa.k8s.objects import load_objects_early

        if _gives_way(self._paths):
            with contextlib.suppress(OSError):
                os.nice(JSON_CHILD_NICENESS)
        if self._to_child is not None:
            self._to_child.close()  # the caller's end: the child sees the caller end with it
            self._to_child = None
        objects, finish = load_objects_early(self._paths, kinds=self._kinds)
        main = pickle.dumps(objects, protocol=pickle.HIGHEST_PROTOCOL)
        yield _LENGTH.pack(len(main))
        yield main
        del main
        if self._extra_work is not None:
            yield from self._extra_pieces(objects)
        del objects
        pods = finish()
        # The caller waits for this word before it reports; it rarely reads the Pods themselves, so
        # they are pickled only once asked for. A caller that ends without asking ends the child
        # with it, which until then waits without taking a core from anything.
        yield _WHOLE
        if not self._told_pods_wanted():
            return
        data = pickle.dumps(pods, protocol=pickle.HIGHEST_PROTOCOL)
        yield _LENGTH.pack(len(data))
        yield data

    def _extra_pieces(self, objects: ClusterObjects) -> Iterator[bytes]:
        """In the child: `_EXTRA` and `extra`'s answer pickled behind its length, or `_NO_EXTRA` when the
        caller already waits for the objects (the child is then the later side) or `extra` failed."""
        assert self._extra_work is not None
        if not self._asked():
            try:
                data = pickle.dumps(self._extra_work(objects), protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:  # the caller does the work itself, as it would without a child
                pass
            else:
                yield _EXTRA
                yield _LENGTH.pack(len(data))
                yield data
                return
        yield _NO_EXTRA

    def _asked(self) -> bool:
        """In the child: whether the caller has said it waits for the objects (or has ended)."""
        return self._from_caller is None or readable_now(self._from_caller.fileno()) is not False

    def _told_pods_wanted(self) -> bool:
        """In the child: wait for the caller to ask for the Pods (True) or to end (False)."""
        if self._from_caller is None:
            return True
        try:
            while word := self._from_caller.recv(1):
                if word == _PODS_WANTED:
                    return True
        except OSError:
            pass
        return False

    def _say(self, word: bytes) -> None:
        """In the caller: tell the child something. Never raises (not even SIGPIPE): a child that is gone
        has nothing to hear, and what it would have sent is then read here."""
        if self._to_child is not None:
            import socket

            with contextlib.suppress(OSError):
                self._to_child.send(word, getattr(socket, "MSG_NOSIGNAL", 0))

    def _early_result(self, meanwhile: Callable[[], None] | None) -> ClusterObjects:
        from kpa.k8s.objects import ClusterObjects, load_objects

        job = self._job
        self._say(_WAITING)
        # Said before looking: a child that has not handed the objects over yet will see it (see `result`).
        if meanwhile is not None and job is not None and not job.ready():
            meanwhile()
        main = _read_sized(job)
        objects: ClusterObjects | None = None
        if main is not None:
            sent = pickle.loads(main)
            objects = sent if isinstance(sent, ClusterObjects) else None
        if objects is None:
            if job is not None:
                job.stop()
            return load_objects(self._paths, kinds=self._kinds)
        if self._extra_work is not None:
            self.extra = self._take_extra()
        self._handed = True
        objects.attach_pods(self._child_pods, self._settle)
        return objects

    def _take_extra(self) -> object | None:
        """What the child sends after the objects: `extra`'s answer, or None. A child that ends here is
        stopped, and settling then reads the objects from the files."""
        job = self._job
        if job is None or job.read(len(_EXTRA)) != _EXTRA:
            return None
        data = _read_sized(job)
        return pickle.loads(data) if data is not None else None

    def _settle(self) -> None:
        """Wait for the child's word that the objects are whole; without it, read the objects here,
        which raises the error that reading them gives, or else `ObjectsChanged` with them."""
        from kpa.k8s.objects import load_objects

        if self._whole:
            return
        if self._changed is not None:
            raise self._changed
        if self._job is not None and self._job.read(len(_WHOLE)) == _WHOLE:
            self._whole = True
            if self._ended:
                self._job.stop()  # as when the block ends after settling: no child outlives both
            return
        # The objects handed over may not be what the files hold (see the module's help): the
        # files are read here, which raises their error if they have one, and else they are the answer.
        self._changed = ObjectsChanged(load_objects(self._paths, kinds=self._kinds))
        raise self._changed

    def _child_pods(self) -> dict[tuple[str, str], Pod]:
        from kpa.k8s.objects import load_objects

        self._settle()
        if self._pods is None:
            self._say(_PODS_WANTED)
            rest = self._job.collect() if self._job is not None else None
            if rest is not None and len(rest) >= _LENGTH.size and len(rest) == _LENGTH.size + _LENGTH.unpack_from(rest)[0]:
                self._pods = pickle.loads(memoryview(rest)[_LENGTH.size:])
            else:
                # The objects are whole (settled), but the Pods did not arrive: read them here.
                self._pods = load_objects(self._paths, kinds=self._kinds).detach_pods()
        return self._pods


class ObjectsChanged(Exception):
    """Settling found that objects handed over early may not be what their files hold: `objects` is
    what they hold, and anything worked out from the objects handed over is to be worked out again."""

    def __init__(self, objects: ClusterObjects) -> None:
        super().__init__("the objects handed over early were not whole")
        self.objects = objects


def settled_run(objects: ClusterObjects | None, compute: Callable[[ClusterObjects | None, bool], T]) -> T:
    """`compute(objects, True)` with `objects` settled when it ends (see `settled`); if settling finds
    them changed, `compute(objects read from the files, False)` instead. The second argument says
    whether the objects are the ones handed over, that is, whether this is the first computation:
    work a caller did ahead that a computation consumes (lint's rules' half) is for the first only."""
    try:
        with settled(objects):
            return compute(objects, True)
    except ObjectsChanged as changed:
        return compute(changed.objects, False)


@contextmanager
def settled(objects: ClusterObjects | None) -> Iterator[None]:
    """Settle `objects` (see `ClusterObjects.settle`) when the block ends, and first thing if it
    raises: an error in the objects is then reported instead, as when they were read first.
    Settling may raise `ObjectsChanged`, which only `settled_run` handles."""
    try:
        yield
    except BaseException:
        if objects is not None:
            objects.settle()
        raise
    if objects is not None:
        objects.settle()


def _read_sized(job: ChildJob | None) -> bytes | None:
    """The next piece the child sends behind its length (`_LENGTH`), or None if it ends first."""
    head = job.read(_LENGTH.size) if job is not None else None
    return job.read(_LENGTH.unpack(head)[0]) if job is not None and head is not None else None


def _receive(data: bytes) -> ClusterObjects | None:
    """The objects a child sent, or None unless it sent all of them."""
    from kpa.k8s.objects import ClusterObjects

    if len(data) < _HEADER.size:
        return None
    main_len, pods_len = _HEADER.unpack_from(data)
    start = _HEADER.size
    if len(data) != start + main_len + pods_len:
        return None
    objects = pickle.loads(memoryview(data)[start : start + main_len])
    if not isinstance(objects, ClusterObjects):
        return None
    pods = bytes(memoryview(data)[start + main_len :])
    del data
    objects.attach_pods(lambda: pickle.loads(pods))
    return objects


__all__ = ["BackgroundObjects", "ObjectsChanged", "settled", "settled_run"]
