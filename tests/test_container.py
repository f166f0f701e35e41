"""The container image recipe holds every tool the debug pod's collection script runs.

The image is Debian 12 with the packages the Dockerfile installs; this machine is
Debian too, so dpkg here says which package ships each tool the script calls.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kpa import __version__
from kpa.k8s.debugpod import COLLECT_SCRIPT, DEFAULT_IMAGE

ROOT = Path(__file__).parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def _dockerfile_packages() -> set[str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    (install,) = re.findall(r"apt-get install ([^&]*)", text)
    return {w for w in install.split() if not w.startswith("-")}


def _script_tools() -> set[str]:
    tools = set()
    for word in re.findall(r"(?<![\w$-])(ip6?tables(?:-\$backend|-\$1)?-save|\$1-save|nft|chroot|grep|sh|cat)(?![\w-])",
                           COLLECT_SCRIPT):
        for backend in ("legacy", "nft"):
            expanded = word.replace("$backend", backend)
            if "$1" in expanded:  # count_rules/has_hint are called with iptables-legacy, iptables-nft
                tools.add(expanded.replace("$1", f"iptables-{backend}"))
                tools.add(expanded.replace("$1", f"ip6tables-{backend}").replace("ip6iptables", "ip6tables"))
            else:
                tools.add(expanded)
    return tools


def _package_of(tool: str) -> str:
    found = shutil.which(tool)
    assert found, f"{tool} is not installed here"
    real = os.path.realpath(found)
    for path in dict.fromkeys([real, found, "/bin/" + Path(real).name, "/bin/" + Path(found).name]):
        res = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True, check=False)
        owners = [line.split(":", 1)[0] for line in res.stdout.splitlines() if not line.startswith("diversion")]
        if res.returncode == 0 and owners:
            return owners[0]
    raise AssertionError(f"no package owns {tool}")


def _essential(package: str) -> bool:
    res = subprocess.run(["dpkg-query", "-W", "-f=${Essential}", package], capture_output=True, text=True,
                         check=False)
    return res.stdout.strip() == "yes"


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs a Debian system to look packages up")
def test_the_image_ships_every_tool_the_collection_script_runs() -> None:
    assert "FROM python:3.11-slim-bookworm" in DOCKERFILE.read_text()
    packages = _dockerfile_packages()
    tools = _script_tools()
    assert {"iptables-legacy-save", "ip6tables-nft-save", "iptables-save", "nft", "chroot", "grep"} <= tools
    for tool in sorted(tools):
        package = _package_of(tool)
        assert package in packages or _essential(package), f"{tool} comes from {package}, not in the image"


def test_the_debug_pod_defaults_to_kpas_own_image() -> None:
    assert f"ghcr.io/kpa-dev/kpa:v{__version__}" == DEFAULT_IMAGE
    docs = (ROOT / "docs" / "lint.md").read_text() + (ROOT / "docs" / "kubernetes.md").read_text()
    assert "ghcr.io/kpa-dev/kpa:v" in docs
    # The pod replaces the entrypoint with the collection script.
    assert 'ENTRYPOINT ["kpa"]' in DOCKERFILE.read_text()
