"""The committed nft fixtures still match what the real nft prints for their sources."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from test_nft_parse import facts  # type: ignore[import-not-found]

from kpa.parse.iptables_save import parse_iptables
from kpa.parse.mixed import combine
from kpa.parse.nft_json import parse_nft_json
from kpa.parse.nft_text import parse_nft_text

FIX = Path(__file__).parent / "fixtures" / "nft"


def capture_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nft_capture", FIX / "capture.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.kernel
def test_live_capture_parses_like_the_fixture() -> None:
    cap = capture_module()
    live = cap.capture((FIX / "sampler.nft").read_text())
    committed = facts(parse_nft_text((FIX / "sampler.txt").read_text(), "sampler.txt"))
    assert facts(parse_nft_text(live["txt"], "live.txt")) == committed
    assert facts(parse_nft_text(live["a.txt"], "live.a.txt")) == committed
    assert facts(parse_nft_json(live["json"], "live.json")) == committed


@pytest.mark.kernel
def test_live_mixed_host() -> None:
    cap = capture_module()
    live = cap.capture((FIX / "sampler.nft").read_text(), cap.MIXED_IPTABLES.read_text())
    ipt = parse_iptables(live["iptables.save"], "live.save")
    nft = parse_nft_text(live["txt"], "live.txt")
    assert {t.name for t in nft.tables if t.managed_by_iptables} >= {t.name for t in ipt.tables}
    rs = combine([ipt], [nft])
    keys = [(t.family, t.name) for t in rs.tables]
    assert len(keys) == len(set(keys))
    assert len([w for w in rs.warnings if "dropped" in w]) == len(ipt.tables)
