"""`-o html` pages, opened in a real headless Chromium: what a person sees and what a click opens."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HIGHLIGHT = (0xFE, 0xF9, 0xC3)  # the background of the rule's own line in the dump
ENDPOINT = (0xDC, 0xFC, 0xE7)  # endpoint pod boxes
ENTRY = (0xDB, 0xEA, 0xFE)  # entry point boxes
ACCEPT = (0x04, 0x78, 0x57)  # ACCEPT text

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")


def kpa_html(tmp_path: Path, name: str, *args: str) -> Path:
    res = subprocess.run([sys.executable, "-m", "kpa", *args, "-o", "html"], capture_output=True, text=True,
                         check=False, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    page = tmp_path / name
    page.write_text(res.stdout)
    return page


def assert_self_contained(text: str) -> None:
    assert "<link" not in text and "@import" not in text and "<iframe" not in text
    refs = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']+)', text)
    assert refs == [], refs
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", text)) - {"http://www.w3.org/2000/svg"}
    assert urls == set(), urls


def chromium(tmp_path: Path, url: str, *extra: str) -> str:
    assert CHROMIUM is not None
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    res = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--window-size=1400,1000", *extra, url],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def png_pixels(path: Path) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Decode a non-interlaced 8-bit RGB/RGBA PNG (what Chromium writes) with the standard library."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and interlace == 0 and colour in (2, 6)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytearray] = []
    prev = bytearray(stride)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b, c = prev[i], prev[i - channels] if i >= channels else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(line)
        prev = line
    pixels = [(r[i], r[i + 1], r[i + 2]) for r in rows for i in range(0, stride, channels)]
    return width, height, pixels


def count(pixels: list[tuple[int, int, int]], colour: tuple[int, int, int]) -> int:
    return sum(1 for p in pixels if p == colour)


@needs_chromium
def test_trace_page_opens_outcomes_and_rules_in_chromium(tmp_path: Path) -> None:
    page = kpa_html(tmp_path, "trace.html", "trace", "--example", "--dst", "10.96.0.11", "-p", "tcp", "--dport", "80")
    text = page.read_text()
    assert_self_contained(text)
    # The DOM after a click-through (a link to outcome 1's second rule opens the outcome, then the rule).
    dom = chromium(tmp_path, f"{page.as_uri()}#rule-1-1", "--dump-dom")
    assert re.search(r'<tr class="hops open" id="hops-1">', dom)
    rule = re.search(r'<div class="rule open" id="rule-1-1">(.*?)</div>', dom, re.S)
    assert rule, "the clicked rule did not open"
    assert "-A KUBE-SERVICES -d 10.96.0.11/32 -p tcp" in rule.group(1)
    assert '<pre class="hit">  126  -A KUBE-SERVICES' in rule.group(1)  # its line in the dump, highlighted
    assert 'class="hops" id="hops-2"' in dom  # other outcomes stay closed
    # What the screen shows: the highlighted dump line appears only once the rule is opened.
    shut, opened = tmp_path / "shut.png", tmp_path / "open.png"
    chromium(tmp_path, page.as_uri(), f"--screenshot={shut}")
    chromium(tmp_path, f"{page.as_uri()}#rule-1-1", f"--screenshot={opened}")
    _, _, before = png_pixels(shut)
    width, height, after = png_pixels(opened)
    assert (width, height) == (1400, 1000)
    assert count(before, HIGHLIGHT) == 0
    assert count(after, HIGHLIGHT) > 5000  # a full-width band behind the rule's line
    assert count(before, ACCEPT) > 100 and count(after, ACCEPT) > 100  # the green verdicts of the summary


@needs_chromium
def test_service_graph_page_shows_endpoints_and_rules_in_chromium(tmp_path: Path) -> None:
    page = kpa_html(tmp_path, "graph.html", "graph", "--example", "--service", "shop/frontend")
    text = page.read_text()
    assert_self_contained(text)
    assert "frontend-a10" in text and "node-a" in text and "50%" in text
    dom = chromium(tmp_path, f"{page.as_uri()}#node=ip/nat/KUBE-SVC-D4LVFIRJ4ZSSG6YW", "--dump-dom")
    panel = re.search(r'<div id="panel">(.*?)</div>', dom, re.S)
    assert panel and "<strong>KUBE-SVC-D4LVFIRJ4ZSSG6YW</strong>" in panel.group(1)
    assert "-A KUBE-SVC-D4LVFIRJ4ZSSG6YW -m comment" in panel.group(1)
    shot = tmp_path / "graph.png"
    chromium(tmp_path, page.as_uri(), f"--screenshot={shot}")
    _, _, pixels = png_pixels(shot)
    assert count(pixels, ENDPOINT) > 2000  # two endpoint pod boxes and the legend swatch
    assert count(pixels, ENTRY) > 2000  # three entry point boxes


def test_graph_for_one_service_without_a_browser() -> None:
    res = subprocess.run([sys.executable, "-m", "kpa", "graph", "--example", "--service", "shop/frontend"],
                         capture_output=True, text=True, check=False, cwd=ROOT)
    dot = res.stdout
    assert dot.startswith("digraph service {")
    assert '"endpoint/10.244.0.10:8443" [label="10.244.0.10:8443\\npod frontend-a10\\nnode node-a"' in dot
    assert dot.count('[label="50%"]') == 2
    assert '[label="-s 198.51.100.0/24"]' in dot  # the source range that lets a client through
    assert "subgraph cluster_legend" in dot
    # No floating chains: every chain drawn is reached from an entry point.
    nodes = set(re.findall(r'^  "([^"]+)" \[label', dot, re.M))
    targets = set(re.findall(r'-> "([^"]+)"', dot))
    assert {n for n in nodes if not n.startswith("entry/")} <= targets
    mermaid = subprocess.run([sys.executable, "-m", "kpa", "graph", "--example", "--service", "shop/frontend", "-o",
                              "mermaid"], capture_output=True, text=True, check=False, cwd=ROOT).stdout
    assert mermaid.startswith("flowchart LR") and "subgraph legend" in mermaid
    for rules in (ROOT / "tests/fixtures/nft/kube-proxy/loadbalancer-source-ranges.v4.nft",
                  ROOT / "tests/fixtures/iptables/loadbalancer-source-ranges.legacy.v4.save"):
        res = subprocess.run([sys.executable, "-m", "kpa", "graph", "-r", str(rules), "-c",
                              str(ROOT / "tests/fixtures/clusters/loadbalancer-source-ranges.yaml"), "--service",
                              "shop/frontend", "-o", "json"], capture_output=True, text=True, check=False, cwd=ROOT)
        assert res.returncode == 0, res.stderr
        import json

        doc = json.loads(res.stdout)
        assert sorted(e["share"] for e in doc["edges"] if e["share"]) == ["33.3%"] * 3, rules
        assert any(n["kind"] == "action" and n["label"] == "DROP" for n in doc["nodes"]), rules
        assert len([n for n in doc["nodes"] if n["kind"] == "endpoint"]) == 3, rules
