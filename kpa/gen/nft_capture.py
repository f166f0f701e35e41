"""Load an nftables ruleset into a throw-away network namespace with the real
``nft`` and return what ``nft list ruleset`` prints there, so nftables fixtures
are the kernel's view of the rules rather than kpa's own text."""

from __future__ import annotations

import os
import shutil
import subprocess

from kpa.gen.capture import CaptureError, scratch_netns

__all__ = ["CaptureError", "capture_nft", "check_nft", "missing_nft_prerequisites"]


def missing_nft_prerequisites() -> str | None:
    """Why nft capture cannot run here (a sentence), or None when it can."""
    if os.geteuid() != 0:
        return "capturing nftables rules needs root (network namespaces and netfilter)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def _nft(netns: str, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, "nft", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )


def _load(netns: str, ruleset_text: str, check_only: bool) -> None:
    args = ["-c", "-f", "-"] if check_only else ["-f", "-"]
    loaded = _nft(netns, args, ruleset_text)
    if loaded.returncode != 0:
        verb = "check" if check_only else "load"
        raise CaptureError(
            f"nft refused to {verb} the ruleset (exit {loaded.returncode}): {loaded.stderr.strip()}"
        )


def capture_nft(ruleset_text: str, json: bool = False) -> str:
    """Load ``ruleset_text`` with ``nft -f -`` in a fresh namespace; return
    ``nft list ruleset`` (``nft -j list ruleset`` when ``json``) verbatim.

    The namespace is always deleted; a refusal raises CaptureError carrying
    nft's stderr.
    """
    with scratch_netns("kpa-nft") as netns:
        _load(netns, ruleset_text, check_only=False)
        listed = _nft(netns, ["-j", "list", "ruleset"] if json else ["list", "ruleset"])
        if listed.returncode != 0:
            raise CaptureError(
                f"nft list ruleset failed (exit {listed.returncode}): {listed.stderr.strip()}"
            )
        return listed.stdout


def check_nft(ruleset_text: str) -> None:
    """Ask the real nft to validate ``ruleset_text`` (``nft -c``) in a fresh
    namespace; raise CaptureError with nft's stderr if it refuses."""
    with scratch_netns("kpa-nft") as netns:
        _load(netns, ruleset_text, check_only=True)
