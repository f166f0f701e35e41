"""Kernel features a kernel may lack: the only allowed reasons to skip a kernel test that can run.

Kernel tests never skip silently, and under CI=true a missing prerequisite fails them
(tests/conftest.py). One exception is allowed, feature by feature: a kernel built
without a netfilter module kpa must still understand. Each such feature is named
here with what the tests that need it lose; a test calls `skip_without(feature,
reason)` and is skipped (also under CI) with "KERNEL FEATURE MISSING (feature)",
listed again in the summary. Any other name fails the test.
"""

from __future__ import annotations

import pytest

ALLOWED: dict[str, str] = {
    "nft-queue": "nft's `queue` statement (nft_queue): without it no ruleset holding a queue rule loads, so "
                 "kube-network-policies' table cannot be loaded as the agent writes it; the same table with "
                 "each queue statement written as `counter` is tested instead",
}


def skip_without(feature: str, reason: str | None) -> None:
    """Skip the running test when `reason` says the kernel lacks `feature` (an ALLOWED name)."""
    if reason is None:
        return
    if feature not in ALLOWED:
        pytest.fail(f"{feature!r} is not an allowed missing kernel feature: {reason}", pytrace=False)
    pytest.skip(f"KERNEL FEATURE MISSING ({feature}): {reason}")
