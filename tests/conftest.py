"""Shared pytest setup: gate ``@pytest.mark.kernel`` tests on root + network namespaces.

Outside CI a missing capability skips kernel tests with an explicit reason (and a banner
in the summary, so the skip is never silent). With ``CI=true`` the same condition fails
the test, because a CI run that silently skipped the kernel oracle would prove nothing.
The one allowed exception is a named kernel feature the machine's kernel lacks
(tests/kernel/features.py), listed again in the summary.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import subprocess

import pytest

_REQUIRED_TOOLS = ("ip", "iptables-nft-restore", "iptables-legacy-restore", "nft", "conntrack", "ipset")
_skipped_kernel: list[str] = []


@functools.cache
def kernel_unavailable_reason() -> str | None:
    """Why kernel tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "kernel tests need root (network namespaces, netfilter); run as root"
    missing = [t for t in _REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        return f"kernel tests need these tools on PATH: {', '.join(missing)}"
    probe = f"kpat-probe-{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True,
                          check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    try:
        ok = subprocess.run(["ip", "netns", "exec", probe, "nft", "list", "ruleset"],
                            capture_output=True, text=True, check=False)
        if ok.returncode != 0:
            return f"netfilter unusable inside a namespace: {ok.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kernel") is None:
        return
    reason = kernel_unavailable_reason()
    if reason is None:
        return
    if _in_ci():
        pytest.fail(f"CI=true but kernel test cannot run: {reason}", pytrace=False)
    _skipped_kernel.append(item.nodeid)
    pytest.skip(f"KERNEL TEST SKIPPED: {reason}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from kernel.features import SKIPPED

    for test, feature, reason in SKIPPED:
        terminalreporter.write_sep("!", f"KERNEL FEATURE MISSING ({feature}), allowed skip: {test}: {reason}",
                                   yellow=True, bold=True)
    if _skipped_kernel:
        terminalreporter.write_sep(
            "!", f"{len(_skipped_kernel)} kernel test(s) SKIPPED: "
                 f"{kernel_unavailable_reason()}", red=True, bold=True)
