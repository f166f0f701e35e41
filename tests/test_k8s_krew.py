"""The krew manifest follows krew's plugin schema and matches the packaged entry point."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).parent.parent
SEMVER = re.compile(r"^v\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$")


def manifest() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / ".krew.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_manifest_header_and_documentation_fields() -> None:
    plugin = manifest()
    assert plugin["apiVersion"] == "krew.googlecontainertools.github.com/v1alpha2"
    assert plugin["kind"] == "Plugin"
    assert plugin["metadata"]["name"] == "kpa"
    spec = plugin["spec"]
    assert SEMVER.match(spec["version"])
    assert spec["homepage"].startswith("https://")
    # krew search shows the short description in a narrow column.
    assert 0 < len(spec["shortDescription"]) <= 50
    assert spec["description"].strip()
    assert "python3" in spec["caveats"]


def test_platforms_cover_linux_and_darwin_on_amd64_and_arm64() -> None:
    spec = manifest()["spec"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    seen = set()
    for platform in spec["platforms"]:
        labels = platform["selector"]["matchLabels"]
        seen.add((labels["os"], labels["arch"]))
        assert platform["uri"].startswith("https://")
        assert platform["uri"].endswith((".tar.gz", ".zip"))
        assert spec["version"] in platform["uri"]
        assert re.fullmatch(r"[0-9a-f]{64}", platform["sha256"])
        # krew links kubectl-<name> to `bin`, which must be an installed file.
        assert platform["bin"] == "kubectl-kpa"
        entry_point = f'{platform["bin"]} = "kpa.cli:'
        assert any(line.startswith(entry_point) for line in pyproject.splitlines())
        assert {"from": "kubectl-kpa", "to": "."} in platform["files"]
    assert seen == {(os, arch) for os in ("linux", "darwin") for arch in ("amd64", "arm64")}
    assert len(seen) == len(spec["platforms"])
