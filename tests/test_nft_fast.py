"""Fast paths of the nftables readers give exactly what the general code gives."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import pytest

from kpa.errors import InputError
from kpa.parse import nft_text
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
    samples += ["1.2.3.4 x", "1.2.3.4\n", "1.2.3.4\t5", "1.2.3.4\x00", "0177.0.0.1", "0x7f.1", "127.1", "1",
                "4294967295", "1.2.3.4.", ".1.2.3.4", "1.2.3.4\x0b", "10.0.0.1\u00a0", "\u0661\u0662.1.1.1", "1.2.3.\uff14"]
    for _ in range(20000):
        samples.append("".join(rng.choice("0123456789.. x\t\n\x00x\u0661") for _ in range(rng.randrange(0, 17))))

    def by_parts(text: str) -> int | None:
        """Four decimal parts of ASCII digits 0-255 without leading zeros."""
        parts = text.split(".")
        if len(parts) != 4:
            return None
        value = 0
        for p in parts:
            if not (p.isascii() and p.isdigit() and (p == "0" or p[0] != "0")) or int(p) > 255:
                return None
            value = value << 8 | int(p)
        return value

    for text in samples:
        try:
            expected: int | None = int(ipaddress.IPv4Address(text))
        except ValueError:
            expected = None
        assert _dotted_quad(text) in (expected, None)
        assert _dotted_quad(text) == by_parts(text), repr(text)
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


# The general loop split_statements had before lines without ';' or braces went through in slices.
def split_statements_by_line(lines: list[str]) -> tuple[list[str], list[int]]:
    """kpa.parse.nft_text.split_statements as it was, a line at a time (the oracle), with the input line each comes from.

    nft also reads blocks and statements written on one line (`set s { type
    ipv4_addr; elements = { 1.2.3.4 } }`, `chain c { ...; tcp dport 22 accept; }`):
    such lines are split at the block level into one statement per line. Braces
    inside a statement (sets, anonymous chains, elements) are kept as they are, and
    lines already in listing form pass through unchanged.
    """
    out: list[str] = []
    nos: list[int] = []
    stack: list[bool] = []  # open braces: True for a block, False inside a statement
    for no, line in enumerate(lines, 1):
        s = line.strip()
        inner = bool(stack) and not stack[-1]
        if not s or s.startswith("#") or inner or not nft_text._needs_split(s, len(stack)):
            out.append(line)
            nos.append(no)
            if not s or s.startswith("#"):
                continue
            if not inner and s.endswith("{") and nft_text._block_head(s[:-1].strip(), len(stack)):
                stack.append(True)
            elif not inner and s == "}":
                if stack:
                    stack.pop()
            elif "{" in s or "}" in s:
                d = nft_text._depth(s) if '"' in s else s.count("{") - s.count("}")
                if d > 0:
                    stack.extend([False] * d)
                for _ in range(-d):
                    if stack and not stack[-1]:
                        stack.pop()
            continue
        buf: list[str] = []

        def emit(text: str, no: int = no) -> None:
            text = text.strip()
            if text:
                out.append(text)
                nos.append(no)

        quoted = False
        i = 0
        while i < len(s):
            c = s[i]
            i += 1
            if c == '"':
                quoted = not quoted
                buf.append(c)
                continue
            if quoted:
                buf.append(c)
                continue
            at_block = not stack or stack[-1]
            if c == "#" and at_block:
                buf.append(s[i - 1:])  # a comment (or `# handle N`) to the end of the line
                break
            if c == "{":
                head = "".join(buf).strip()
                if at_block and nft_text._block_head(head, len(stack)):
                    emit(head + " {")
                    buf = []
                    stack.append(True)
                else:
                    buf.append(c)
                    stack.append(False)
            elif c == "}":
                if stack and stack[-1]:
                    emit("".join(buf))
                    buf = []
                    emit("}")
                    stack.pop()
                else:
                    buf.append(c)
                    if stack:
                        stack.pop()
            elif c == ";" and at_block:
                text = "".join(buf).strip()
                if text.startswith("type ") and " hook " in text:
                    # A base chain's head keeps its `;`, and the `policy P;` that may follow it.
                    buf.append(c)
                    rest = s[i:].lstrip()
                    if rest.startswith("policy ") and " policy " not in f" {text}":
                        continue
                    emit("".join(buf))
                    buf = []
                    continue
                emit(text)
                buf = []
            else:
                buf.append(c)
        emit("".join(buf))
    return out, nos


def test_split_statements_equals_the_line_by_line_loop() -> None:
    rng = random.Random(13)
    texts = [p.read_text().splitlines() for p in NFT_FILES]
    pieces = ["table ip t {", "chain c {", "}", "set s { type ipv4_addr; elements = { 1.2.3.4 } }", "tcp dport 22 accept",
              "type filter hook input priority 0; policy accept;", "elements = { 1.2.3.4,", "5.6.7.8 }", "",
              "# x { y", "jump { accept; drop }", 'comment "a { b"', "chain d { tcp dport 1 accept; }", "  }  ",
              "ip saddr { 1.1.1.1, 2.2.2.2 } drop", "map m {", "{", "}}", "a ; b"]
    for _ in range(3000):
        texts.append([rng.choice(pieces) for _ in range(rng.randrange(0, 12))])
    for lines in texts:
        assert nft_text.split_statements(lines) == split_statements_by_line(lines)


def test_simple_elements_read_as_the_parser_reads_them() -> None:
    from kpa.parse.nft_text import RuleParser, Unparsed, elements_fast

    rng = random.Random(14)
    words = ["10.96.0.1", "tcp", "53", ".", ":", ",", "goto", "jump", "svc-1", "a.b", "drop", "accept", "queue", "*",
             "10.0.0.0/8", "1-5", "a:b", "@s", "{", "}", "timeout", "comment", '"x"', "|", "return", "x.",
             "comment", "comment", '""', '"a:b, c"', '"q\\"x"', '"{ }"', "10.96.0.1 comment", '"svc:dns"', "goto"]
    samples = ["{ 10.96.0.1, 10.96.0.2 }", "{ 10.96.0.1 . tcp . 53 : goto svc-a, 10.96.0.2 . udp . 53 : drop }",
               "{ 1 : accept }", "{ a . b }", "{ a : b . c }", "{ a, }", "{ }", "{a}", " {  a ,  b }  ",
               '{ tcp . 80 comment "data/svc-1:http" : drop, udp . 53 comment "" : drop }',
               '{ a comment "x, y : z" }', '{ a comment "x" : b }']
    for path in NFT_FILES:
        for m in re.finditer(r"elements = (\{[^}]*\})", path.read_text()):
            samples.append(" ".join(m.group(1).split()))
    fast = 0
    for _ in range(20000):
        samples.append("{ " + " ".join(rng.choice(words) for _ in range(rng.randrange(0, 12))) + " }")
    for text in samples:
        for verdicts in (True, False):
            got = elements_fast(text, verdicts)
            if got is None:
                continue
            toks = tokenize(text, "f", 1)
            p = RuleParser(toks)
            try:
                slow = p.rhs(map_verdicts=verdicts)
            except Unparsed:
                raise AssertionError(text) from None
            assert p.pos == len(toks), text
            assert got == slow, text
            fast += 1
    assert fast > 1000


def test_simple_elements_are_what_the_whole_pattern_and_finditer_give() -> None:
    """simple_elements reads the elements piece by piece: it must accept only texts the whole pattern
    matches, give each element's groups as finditer does, and accept what nft lists."""
    from kpa.parse.nft_text import _ELEMENT, _SIMPLE_ELEMENTS, simple_elements

    rng = random.Random(16)
    parts = ["{", "}", " ", "\t", ",", ", ", " . ", " : ", "10.96.0.1", "tcp", "53", "a.b", "goto svc-1", "drop",
             "jump", " comment ", '"x y"', '""', '"a:b, c"', "accept", "x.", ":", "@s", "1-5", "*"]
    samples = [" ".join(m.group(1).split()) for path in NFT_FILES
               for m in re.finditer(r"elements = (\{[^}]*\})", path.read_text())]
    listed = len(samples)
    samples += ["{ a }", " {  a ,  b }  ", "{ a, }", "{ }", "{ a . b : c . d }", "{ 1 : goto x, 2 : drop }",
                '{ a comment "x" : accept }', "{ a b }", "{ a , b }", "{ a,\tb }"]
    for _ in range(30000):
        samples.append("".join(rng.choice(parts) for _ in range(rng.randrange(1, 14))))
    keys = ["10.96.0.1", "10.96.0.1 . tcp . 53", "a.b", "x.", "tcp . 80", "1-5", "*", "a:b", "@s", "a  .  b"]
    tails = ["", " : drop", " : goto svc-1", " : jump c.d", " : accept", " : 10.0.0.1 . 80", ' comment "x, y"',
             ' comment "a" : drop', ' comment ""', " :drop", " : goto"]
    for _ in range(10000):
        items = [rng.choice(keys) + rng.choice(tails) for _ in range(rng.randrange(1, 5))]
        samples.append(rng.choice(["{ ", "{", " {\t"]) + rng.choice([", ", ",\t", " , ", ","]).join(items)
                       + rng.choice([" }", "}", " } ", ", }"]))
    accepted = 0
    for text in samples:
        for verdicts in (True, False):
            found = simple_elements(text, verdicts)
            whole = _SIMPLE_ELEMENTS[verdicts].fullmatch(text) is not None
            if found is None:
                assert not whole or text not in samples[:listed], text
                continue
            assert whole, text
            assert found == [m.groups() for m in _ELEMENT[verdicts].finditer(text)], text
            accepted += 1
    assert accepted > 2000


def test_brace_lines_are_found_as_a_line_by_line_scan_finds_them() -> None:
    from kpa.parse.nft_text import _brace_line

    rng = random.Random(17)
    pieces = ["", "a", "10.96.0.1,", "\t\t     b . c : goto d,", "{", "}", "x }", "elements = { a,", "\t"]
    for _ in range(3000):
        lines = [rng.choice(pieces) for _ in range(rng.randrange(0, 40))]
        i = rng.randrange(0, len(lines) + 1)
        slow = next((j for j in range(i, len(lines)) if "{" in lines[j] or "}" in lines[j]), len(lines))
        for step in (1, 2, 3, 7, 512):
            assert _brace_line(lines, i, step) == slow, (lines, i, step)


def test_json_objects_read_whole_as_one_at_a_time() -> None:
    import json

    from kpa.parse.nft_json import _objects

    def objects(text: str, whole: bool) -> Any:
        try:
            return list(_objects(text, "f", whole))
        except InputError as exc:
            return str(exc)

    rng = random.Random(15)
    texts = [p.read_text() for p in sorted((FIX / "nft").rglob("*.json"))]
    texts += [json.dumps(json.loads(t), indent=2) for t in texts[:3]]
    base = texts[0]
    for _ in range(3000):
        k = rng.randrange(len(base))
        texts.append(base[:k] + rng.choice(["", ",", ", ,", "]", "}", "\n", " ", '"', "{}", "x", "[]"]) + base[k + rng.randrange(0, 3):])
    texts += ['{"nftables": []}', '{"nftables": [{}] }  ', '{"nftables": [{}]} x', '{"nftables": [{}], "a": 1}',
              '{"nftables": [{},,{}]}', '{"nftables": [{} {}]}', '{"nftables": [{}]', '{"nftables": [1, "a"]}\n']
    for text in texts:
        assert objects(text, True) == objects(text, False)


def test_listing_form_is_only_claimed_when_nothing_is_split() -> None:
    """listing_form() lets split_statements skip its loop: it must never be True for a text the loop changes,
    and it must hold for what nft lists (every kube-proxy capture), or the fast path is never taken."""
    rng = random.Random(29)
    fixtures = [p.read_text().splitlines() for p in NFT_FILES]
    listed = [lines for p, lines in zip(NFT_FILES, fixtures, strict=True) if "kube-proxy" in p.parts]
    assert len(listed) >= 18 and all(nft_text.listing_form(lines) for lines in listed)
    pieces = ["table ip t {", "chain c {", "}", "\t}", "set s {", "map m {", "tcp dport 22 accept", "elements = { 1.2.3.4,",
              "5.6.7.8 }", 'elements = { 1.1.1.1 comment "a" : drop,', '2.2.2.2 comment "b" : drop }',
              'elements = { 1.1.1.1 comment "}{" : drop,', 'elements = { "{" ,', '"}" }', "# x {", "# y }", "x }", "x }}",
              "type filter hook input priority 0; policy accept;", "a ; b", "chain d { accept }", "set s { type ipv4_addr }",
              "ip saddr { 1.1.1.1, 2.2.2.2 } drop", "jump {", "{", "}}", "", "chain e { # c", "table ip u { chain f {",
              'comment "a { b"', "elements = { 1.2.3.4 } }", "update @s { ip saddr }", "vmap { 1 : drop }"]
    fast = 0
    for lines in fixtures + [[rng.choice(pieces) for _ in range(rng.randrange(0, 14))] for _ in range(20000)]:
        if nft_text.listing_form(lines):
            fast += 1
            assert split_statements_by_line(lines) == (lines, list(range(1, len(lines) + 1))), lines
            assert nft_text.split_statements_by_line(lines) == (lines, list(range(1, len(lines) + 1))), lines
        assert nft_text.split_statements(lines) == split_statements_by_line(lines), lines
    assert fast > 2000
