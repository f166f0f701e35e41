"""kpa.forked: work done in a child process while the parent goes on."""

from __future__ import annotations

import os
import sys

import pytest

from kpa.forked import ChildJob

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc to see the child's descriptors")


def test_a_child_never_holds_the_commands_output() -> None:
    """A child may outlive the command by a moment; a pipeline reading the command's output (or its
    errors) must see the end of it when the command ends, so the child keeps neither open."""

    def where_output_goes() -> list[bytes]:
        return [os.readlink(f"/proc/self/fd/{fd}").encode() + b"\n" for fd in (1, 2)]

    r, w = os.pipe()
    saved = os.dup(1)
    os.dup2(w, 1)  # the command's output is a pipe while the child starts
    try:
        job = ChildJob(where_output_goes)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(w)
    try:
        assert job.started
        assert job.collect() == b"/dev/null\n/dev/null\n"
        assert os.read(r, 1) == b""  # nobody else holds the pipe's write end: it has ended
    finally:
        os.close(r)
