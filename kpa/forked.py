"""Work done in a forked child process while the parent goes on, handed back as bytes.

Reading a large dump or objects file has parts that do not depend on each other
(the rule skeletons and the dump's structure, the objects and the rules). On
Linux a child can do one of them on the second core. The child's only way back
is a pipe; whatever goes wrong in it (an exception, a kill, a short write) makes
`ChildJob.collect` return None, and the caller then does the work itself: the
same answer, only slower.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterable


class ChildJob:
    """`work()` run in a forked child; `collect()` gives what it returned, or None.

    `work` returns the bytes to hand back (as one or more pieces, so that large
    results are never joined in the child), or None for "no result". The child
    exits 0 only when every byte was written; the parent takes the bytes only then.
    When fork or pipe is not available, nothing starts and `collect()` is None.

    The pieces are written by a thread of the child while `work`'s iterator goes on, so a
    generator can hand over a first part (which the parent takes with `read`) and carry
    on working while the parent has not read it yet. The pieces it gave before it raised
    are still written (then the child exits with an error).
    """

    def __init__(self, work: Callable[[], Iterable[bytes] | None]) -> None:
        self._pid = 0
        self._fd = -1
        try:
            r, w = os.pipe()
        except OSError:
            return
        try:
            pid = os.fork()
        except OSError:
            os.close(r)
            os.close(w)
            return
        if pid == 0:  # the child: never returns into the parent's code
            status = 1
            try:
                os.close(r)
                _let_go_of_output()
                pieces = work()
                if pieces is not None and _write_all(w, pieces):
                    status = 0
            finally:
                os._exit(status)
        os.close(w)
        self._pid, self._fd = pid, r

    @property
    def started(self) -> bool:
        return self._pid != 0

    @property
    def pid(self) -> int | None:
        """The child's process id until it is reaped."""
        return self._pid or None

    def ready(self) -> bool:
        """Whether a `read` would find bytes (or the child's end) without waiting; False without a child."""
        return bool(self._pid) and readable_now(self._fd) is True

    def read(self, size: int) -> bytes | None:
        """The next `size` bytes the child writes, or None (and the child is reaped) if it
        ends before writing them all."""
        if not self._pid:
            return None
        chunks: list[bytes] = []
        left = size
        try:
            while left:
                chunk = os.read(self._fd, min(left, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
        except OSError:
            left = -1
        if left:
            self.stop()
            return None
        return b"".join(chunks)

    def collect(self) -> bytes | None:
        """Wait for the child; the bytes not yet `read` if it finished its work, else None."""
        if not self._pid:
            return None
        chunks: list[bytes] = []
        try:
            while chunk := os.read(self._fd, 1 << 20):
                chunks.append(chunk)
        except OSError:
            chunks = []
        finally:
            os.close(self._fd)
            self._fd = -1
        if self._wait() != 0 or not chunks:
            return None
        return b"".join(chunks)

    def stop(self) -> None:
        """Stop and reap the child if its result is no longer wanted (e.g. reading failed first)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            self._wait()

    def _wait(self) -> int:
        """The child's exit status; 0 if someone else reaped it (SIGCHLD ignored): the caller then
        judges the bytes by themselves, which is why every result carries its own size or count."""
        pid, self._pid = self._pid, 0
        try:
            return os.waitpid(pid, 0)[1]
        except ChildProcessError:
            return 0


def _write_all(fd: int, pieces: Iterable[bytes]) -> bool:
    """Write every piece to `fd` from a second thread while `pieces` is iterated; whether all were written."""
    import queue
    import threading

    waiting: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    written = [True]

    def writer() -> None:
        while (piece := waiting.get()) is not None:
            view = memoryview(piece)
            try:
                while view:
                    view = view[os.write(fd, view):]
            except OSError:
                written[0] = False
                return

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        for piece in pieces:
            if not written[0]:
                return False
            waiting.put(piece)
    finally:
        # What was handed on is written even when the iterator then fails (the child then exits
        # with an error): a parent that waits for a first part gets it whatever comes after.
        waiting.put(None)
        thread.join()
    return written[0]


def _let_go_of_output() -> None:
    """In a child: point standard output and error at /dev/null. The child writes only to its pipe,
    and it may outlive the command by a moment (the command ends without waiting for work it no
    longer needs): a pipeline reading the command's output must not wait for it."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)


def readable_now(fd: int) -> bool | None:
    """Whether reading `fd` would find bytes or its end without waiting; None if it cannot be asked."""
    import select

    try:
        return bool(select.select([fd], [], [], 0)[0])
    except (OSError, ValueError):
        return None
