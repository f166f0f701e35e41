"""Load rules into a throw-away network namespace and read back what the real
save tool prints, so fixtures are genuine kernel output rather than our text."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

Backend = Literal["nft", "legacy"]
IPFamily = Literal["ipv4", "ipv6"]

# iptables-legacy takes a global lock; wait for it instead of failing.
_LOCK_WAIT_SECONDS = "10"


class CaptureError(RuntimeError):
    """A namespace could not be created, or the rules could not be loaded or saved."""


def tool_name(kind: Literal["restore", "save"], backend: Backend, family: IPFamily) -> str:
    """e.g. ``ip6tables-legacy-restore``."""
    base = "ip6tables" if family == "ipv6" else "iptables"
    return f"{base}-{backend}-{kind}"


def missing_prerequisites(backend: Backend = "nft", family: IPFamily = "ipv4") -> str | None:
    """Why capture cannot run here (a sentence), or None when it can."""
    if os.geteuid() != 0:
        return "capturing rules needs root (network namespaces and netfilter)"
    for tool in ("ip", tool_name("restore", backend, family), tool_name("save", backend, family)):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def _run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, check=False)


@contextmanager
def scratch_netns(prefix: str = "kpa") -> Iterator[str]:
    """A freshly created, uniquely named network namespace, deleted on exit."""
    name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:10]}"
    created = _run(["ip", "netns", "add", name])
    if created.returncode != 0:
        raise CaptureError(f"ip netns add {name} failed: {created.stderr.strip()}")
    try:
        yield name
    finally:
        _run(["ip", "netns", "delete", name])


def _restore(netns: str, payload: str, backend: Backend, family: IPFamily, test: bool) -> None:
    args = ["ip", "netns", "exec", netns, tool_name("restore", backend, family)]
    args += ["-w", _LOCK_WAIT_SECONDS]
    if test:
        args.append("--test")
    loaded = _run(args, stdin=payload)
    if loaded.returncode != 0:
        raise CaptureError(
            f"{tool_name('restore', backend, family)} rejected the rules "
            f"(exit {loaded.returncode}): {loaded.stderr.strip()}"
        )


def capture_iptables(
    payload: str,
    backend: Backend,
    family: IPFamily,
    counters: bool = False,
) -> str:
    """Load ``payload`` into a fresh namespace and return the save tool's output verbatim."""
    with scratch_netns() as netns:
        _restore(netns, payload, backend, family, test=False)
        args = ["ip", "netns", "exec", netns, tool_name("save", backend, family)]
        if counters:
            args.append("-c")
        saved = _run(args)
        if saved.returncode != 0:
            raise CaptureError(
                f"{tool_name('save', backend, family)} failed "
                f"(exit {saved.returncode}): {saved.stderr.strip()}"
            )
        return saved.stdout


def check_restore(payload: str, backend: Backend, family: IPFamily) -> None:
    """Ask the real restore tool to parse ``payload`` (``--test``); raise CaptureError if it refuses."""
    with scratch_netns() as netns:
        _restore(netns, payload, backend, family, test=True)
