"""Fast paths of the nftables readers give exactly what the general code gives."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from kpa.parse.nft_text import _depth, tokenize, tokenize_by_char

FIX = Path(__file__).parent / "fixtures"
NFT_FILES = sorted(p for p in FIX.rglob("*") if p.is_file() and p.suffix == ".nft")


def _depth_by_char(line: str) -> int:
    depth, quoted = 0, False
    for c in line:
        if c == '"':
            quoted = not quoted
        elif not quoted and c == "{":
            depth += 1
        elif not quoted and c == "}":
            depth -= 1
    return depth


def test_there_are_nft_fixtures() -> None:
    assert len(NFT_FILES) > 10


@pytest.mark.parametrize("path", NFT_FILES, ids=lambda p: str(p.relative_to(FIX)))
def test_every_fixture_line_tokenizes_the_same(path: Path) -> None:
    for n, line in enumerate(path.read_text().splitlines(), 1):
        assert tokenize(line, str(path), n) == tokenize_by_char(line, str(path), n)
        assert _depth(line) == _depth_by_char(line)


def test_random_lines_tokenize_the_same() -> None:
    rng = random.Random(3)
    alphabet = ["a", "b", "1", ":", ".", "/", "-", "@", "!", "=", " ", " ", "\t", ",", ",", "{", "}", ";", "$", "*", "(", ")", "|", "&"]
    for _ in range(20000):
        line = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
        assert tokenize(line, "f", 1) == tokenize_by_char(line, "f", 1), repr(line)
        assert _depth(line) == _depth_by_char(line)
