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


def test_dotted_quads_read_as_ipaddress_reads_them() -> None:
    import ipaddress

    from kpa.ext.nft.base import _dotted_quad

    rng = random.Random(5)
    samples = ["0.0.0.0", "255.255.255.255", "10.0.0.1", "1.2.3", "1.2.3.4.5", "01.2.3.4", "1.2.3.256", "1..2.3",
               "٣.1.1.1", "1.2.3.4 ", " 1.2.3.4", "+1.2.3.4", "1.2.3.-4", "0x1.2.3.4", "00.0.0.0", ""]
    for _ in range(20000):
        parts = [rng.choice([str(rng.randrange(256)), str(rng.randrange(1000)), "0" + str(rng.randrange(10)), "",
                             "a"]) if rng.random() < 0.1 else str(rng.randrange(256)) for _ in range(4)]
        samples.append(".".join(parts))
    for text in samples:
        try:
            expected: int | None = int(ipaddress.IPv4Address(text))
        except ValueError:
            expected = None
        assert _dotted_quad(text) in (expected, None)
        if expected is not None and str(ipaddress.IPv4Address(text)) == text:
            assert _dotted_quad(text) == expected  # every canonical spelling takes the fast path


def _head_lines() -> list[str]:
    rng = random.Random(9)
    lines = [line.strip() for p in NFT_FILES for line in p.read_text().splitlines()]
    alphabet = ["a", "1", "-", "/", " ", "\t", "{", "}", ",", ";", "(", '"', "\\", "\xa0", "\x0b", "\u2028"]
    lines += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 14))) for _ in range(20000)]
    lines += ["chain a {", "chain a\xa0b {", "set s {", "table ip t {", "chain a, {", "chain {", " {", "a  {",
              "chain a\t{", 'chain "a" {', "chain a {{", "chain a{"]
    return lines


def test_plain_block_heads_split_as_tokenize_splits_them() -> None:
    from kpa.parse.nft_text import _PLAIN_HEAD

    for line in _head_lines():
        if _PLAIN_HEAD.fullmatch(line):
            assert line.split() == [t.text for t in tokenize(line, "f", 1)], repr(line)


def test_closed_quotes_are_what_the_tokenizer_accepts() -> None:
    from kpa.errors import InputError
    from kpa.parse.nft_text import _QUOTES_CLOSED

    rng = random.Random(10)
    lines = _head_lines() + ["".join(rng.choice(['"', "\\", "a", " "]) for _ in range(rng.randrange(0, 10)))
                             for _ in range(20000)]
    for line in lines:
        try:
            tokenize_by_char(line, "f", 1)
            ok = True
        except InputError:
            ok = False
        assert bool(_QUOTES_CLOSED.fullmatch(line)) == ok, repr(line)
