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
import re
import secrets
import shutil
import subprocess

import pytest

_REQUIRED_TOOLS = ("ip", "iptables-nft-restore", "iptables-legacy-restore", "nft", "conntrack", "ipset")
# Gathered from the test reports, which reach the process that prints the summary whether the
# tests ran in it or in pytest-xdist's workers: (test, reason) and (test, feature, reason).
_skipped_kernel: list[tuple[str, str]] = []
_missing_features: list[tuple[str, str, str]] = []
_SKIP_RE = re.compile(r"KERNEL TEST SKIPPED: (.*)", re.S)
_FEATURE_RE = re.compile(r"KERNEL FEATURE MISSING \(([^)]*)\): (.*)", re.S)


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
    pytest.skip(f"KERNEL TEST SKIPPED: {reason}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not report.skipped:
        return
    longrepr = report.longrepr
    message = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    if (m := _SKIP_RE.search(message)) is not None:
        _skipped_kernel.append((report.nodeid, m.group(1)))
    elif (m := _FEATURE_RE.search(message)) is not None:
        _missing_features.append((report.nodeid, m.group(1), m.group(2)))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for test, feature, reason in _missing_features:
        terminalreporter.write_sep("!", f"KERNEL FEATURE MISSING ({feature}), allowed skip: {test}: {reason}",
                                   yellow=True, bold=True)
    if _skipped_kernel:
        reasons = sorted({reason for _, reason in _skipped_kernel})
        terminalreporter.write_sep(
            "!", f"{len(_skipped_kernel)} kernel test(s) SKIPPED: {'; '.join(reasons)}", red=True, bold=True)
