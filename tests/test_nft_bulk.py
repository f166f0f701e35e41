"""Chain blocks read in bulk (kpa.parse.nft_text.chain_blocks, ChainBatch) change nothing.

Each input is read three ways: in bulk (the default), line by line with rule
skeletons (`bulk=False`), and every rule in full (`shapes=False`). All three
must give the same check view and the same built rules, or the same error
message; bulk and line by line must also defer exactly the same rules. Inputs:
every .nft fixture, random one-value mutations of them, and random texts made
of chain blocks with odd lines (blanks at either end, `type`/`comment`/`policy`
lines, handles, quotes, braces over several lines, other line breaks, blocks
inside element lists or anonymous chains), so that every way a line can fall
out of the bulk form is tried. A kube-proxy listing must be read mostly in bulk.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from kpa.errors import InputError
from kpa.netfilter.model import LazyNftRule, Ruleset
from kpa.parse import nft_text
from kpa.parse.nft_text import chain_blocks, parse_nft_text
from tests.test_nft_shapes import NFT_FILES, _mutations, built_view, check_view

FIX = Path(__file__).parent / "fixtures"


def _read(text: str, **how: bool) -> tuple[str, Any]:
    try:
        rs = parse_nft_text(text, "rules.nft", **how)
    except InputError as exc:
        return "error", str(exc)
    lazy = [isinstance(r, LazyNftRule) for t in rs.tables for r in t.rules()]
    return "ok", (check_view(rs) + sets_view(rs), lazy, built_view(rs), check_view(rs) + sets_view(rs))


def sets_view(rs: Ruleset) -> list[Any]:
    """Every set and map in full (the bulk reader declares those of kube-proxy's forms itself)."""
    return [(t.name, name, ns.name, ns.key_types, ns.elements, ns.values, sorted(ns.flags), str(ns.location),
             ns.dynamic, ns.comments, [type(v).__name__ for v in ns.values or []])
            for t in rs.tables for name, ns in t.sets.items()] + [sorted(rs.warnings)]


def assert_three_ways(text: str) -> str:
    bulk, lines, eager = _read(text), _read(text, bulk=False), _read(text, shapes=False)
    assert bulk[0] == lines[0] == eager[0], (bulk[1] if bulk[0] == "error" else lines[1])
    if bulk[0] == "error":
        assert bulk[1] == lines[1] == eager[1]
        return "error"
    # Before building: what check reads, and which rules wait; then built; then read again.
    assert bulk[1][0] == lines[1][0] == eager[1][0]
    assert bulk[1][1] == lines[1][1]
    assert bulk[1][2] == lines[1][2] == eager[1][2]
    assert bulk[1][3] == eager[1][0]
    return "ok"


def bulk_rules(text: str, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """(rules read in bulk, rules) of a read of `text`."""
    seen = [0]
    original = nft_text.TextReader._bulk_chains

    def counting(self: nft_text.TextReader, table: Any, bulk: Any, lines: list[str], i: int) -> int:
        end = original(self, table, bulk, lines, i)
        batch = self.b.pending[-1] if self.b.pending else None
        if isinstance(batch, nft_text.ChainBatch):
            seen[0] += sum(len(texts) for _, _, texts in batch.chains)
        return end

    monkeypatch.setattr(nft_text.TextReader, "_bulk_chains", counting)
    rs = parse_nft_text(text, "rules.nft")
    return seen[0], sum(1 for t in rs.tables for _ in t.rules())


@pytest.mark.parametrize("path", NFT_FILES, ids=lambda p: str(p.relative_to(FIX)))
def test_every_fixture_reads_the_same_three_ways(path: Path) -> None:
    assert_three_ways(path.read_text())


def test_kube_proxy_listings_are_read_mostly_in_bulk(monkeypatch: pytest.MonkeyPatch) -> None:
    listed = [p for p in NFT_FILES if "kube-proxy" in p.parts]
    assert len(listed) >= 18
    counts = [bulk_rules(path.read_text(), monkeypatch) for path in listed]
    # Base chains (`type ... hook ...`), chains with a `comment "..."` line and the like are read line by line.
    assert all(in_bulk > 0 for in_bulk, _ in counts)
    assert sum(in_bulk for in_bulk, _ in counts) > 0.6 * sum(total for _, total in counts), counts


def test_one_value_mutations_read_the_same_three_ways() -> None:
    rng = random.Random(41)
    for path in [p for p in NFT_FILES if "kube-proxy" in p.parts]:
        for text in _mutations(path.read_text(), rng, 12):
            assert_three_ways(text)


def test_odd_line_breaks_are_never_read_in_bulk() -> None:
    block = "table ip t {\n\tchain a {\n\t\taccept\n\t}\n}\n"
    assert list(chain_blocks(block)) == [1]
    for brk in "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029":
        assert chain_blocks(block.replace("\t\taccept\n", f"\t\taccept\n#{brk}\n")) == {}


# -- random texts ---------------------------------------------------------------------

_RULES = [
    "ip saddr 10.0.0.1 jump a", "ip saddr 10.0.0.2 jump b", "ip saddr 10.0.0.3 jump nowhere", "jump a", "goto b",
    "meta l4proto tcp dnat to 10.0.0.1:80", "meta l4proto tcp dnat to 10.0.0.2:8080", "tcp dport 80 accept",
    "ip daddr 10.0.0.9 tcp dport 443 ip saddr != 10.244.0.0/16 jump a", "ip saddr @s goto a", "ip saddr @nothere goto a",
    "update @s { ip saddr }", "numgen random mod 2 vmap { 0 : goto a, 1 : goto b }",
    "numgen random mod 2 vmap { 0 : goto b, 1 : goto nowhere }", 'fib saddr type local jump a comment "local"',
    'ip saddr 10.0.0.4 jump a comment "x { y"', 'ip saddr 10.0.0.5 jump a comment "x # y"',
    "ip saddr != { 10.0.0.0/8, 192.168.0.0/16 } drop", "counter packets 1 bytes 2 accept", "reject", "drop",
]
_ODD_RULES = [
    "ip saddr 10.0.0.1 jump a # handle 7", "ip saddr 10.0.0.256 jump a", "type filter hook input priority 0; policy accept;", "policy drop",
    'comment "a chain"', "comment", "typeof x", "# a comment line", "", " ", "\t", "ip saddr 10.0.0.1 jump a ",
    " ip saddr 10.0.0.1 jump a", "ip saddr 10.0.0.1\xa0jump a", "ip saddr 10.0.0.1 jump a\xa0", "\x1fjump a",
    "accept;", "jump {", "accept", "}", "{", "jump { accept }", 'comment "unclosed', 'jump a comment "\\" x"',
    "ip saddr { 10.0.0.1,", "10.0.0.2 } drop", "chain x {", "set y {", "ip saddr { { 1.1.1.1 } } drop",
    "elements = { 10.0.0.1 }", "map m {", "ip saddr 10.0.0.1 jump a }", "}}", "meta mark set 0x1",
]
_NAMES = ["a", "b", "c", "d", "x", "a", "svc-1/tcp/p__10.0.0.1/80"] * 6 + ["e#f", 'g"h', "i{j", "k;l"]


def _chain(rng: random.Random, odd: float) -> list[str]:
    name = rng.choice(_NAMES)
    head = rng.choice([f"\tchain {name} {{"] * 8 + [f"\tchain {name}  {{", f"  chain {name} {{", f"\tchain {name} {{ ",
                                                         f"\tchain {name} {{ # handle 3", f"chain {name} {{"])
    lines = [head]
    if rng.random() < 0.2:
        lines.append("\t\ttype filter hook input priority 0; policy accept;")
    for _ in range(rng.randrange(0, 5)):
        r = rng.random()
        if r < odd:
            lines.append(rng.choice(["\t\t", "\t\t", "\t\t", "\t", "", "\t\t\t", "    "]) + rng.choice(_ODD_RULES))
        elif r < 2 * odd:
            # Nearly the bulk form: a blank at either end, a handle, a comment.
            lines.append(rng.choice(["\t\t"] * 4 + ["\t\t ", "\t\t\xa0", "\t \t", "\t\t\x1f", " \t\t"])
                         + rng.choice(_RULES)
                         + rng.choice(["", "", "", " ", "\t", "\xa0", "\u3000", "\x1f", " # handle 9", "#", " # x",
                                       ' comment "c"', ' comment "c;"', ' comment "c\\"', ";"]))
        else:
            lines.append("\t\t" + rng.choice(_RULES))
    lines.append(rng.choice(["\t}"] * 10 + ["}", "\t} ", "\t}}", "\t\t}"]))
    return lines


_SETS = [
    ["\tset s {", "\t\ttype ipv4_addr", "\t\telements = { 10.0.0.1, 10.0.0.2 }", "\t}"],
    ["\tmap m {", "\t\ttype ipv4_addr : verdict", "\t\telements = { 10.0.0.2 : goto a,", "\t\t\t     10.0.0.3 : goto b }",
     "\t}"],
    ["\tset s {", "\t\ttype ipv4_addr", "\t\telements = { 10.0.0.1,"],  # a chain block follows inside the elements
]
_SET_TYPES = ["ipv4_addr", "inet_service", "ipv4_addr . inet_proto . inet_service", "inet_proto . inet_service",
              "ipv6_addr", "ifname", "mark", "ipv4_addr . inet_service", "typeof ip saddr", "ether_addr"]
_GOOD = {"ipv4_addr": ["10.0.0.1", "10.0.0.2", "10.96.0.10", "192.168.0.2", "0.0.0.0", "10.0.0.0/8", "10.0.0.1-10.0.0.9"],
         "inet_service": ["53", "80", "65535", "0", "http", "1-5"], "inet_proto": ["tcp", "udp", "sctp", "6"],
         "ipv6_addr": ["fd00::1", "::1", "fd00::/64"], "ifname": ["eth0", "lo"], "mark": ["0x1", "7"],
         "ether_addr": ["aa:bb:cc:dd:ee:ff"]}
_BAD = ["10.0.0.256", "010.0.0.1", "65536", "0x50", "nosuchport", "tcpx", "*", "1.2.3", "10.0.0.9-10.0.0.1", "x",
        "fd00::zz", "-1"]
_SET_DATA = ["", "", " : verdict", " : verdict", " : verdict", " : ipv4_addr", " : interval verdict",
             " : ipv4_addr . inet_service"]
_VERDICTS = ["goto a", "jump b", "drop", "accept", "continue", "return", "goto nowhere", "goto svc-1/tcp/p__10.0.0.1/80"]
_BAD_VERDICTS = ["queue", "goto", "10.0.0.1", "jump a b"]


def _random_set(rng: random.Random, odd: float) -> list[str]:
    kind = rng.choice(["set", "map"])
    data = rng.choice(_SET_DATA) if kind == "map" else rng.choice(["", "", "", " : verdict"])
    types = rng.choice(_SET_TYPES)
    head = [f"\t{kind} {rng.choice(['s', 'm', 'n', 's'])} {{", f"\t\ttype {types}{data}"]
    if rng.random() < 0.3:
        head.append(f"\t\tflags {rng.choice(['interval', 'dynamic,timeout', 'timeout', 'constant'])}")
    parts = [t.strip() for t in types.removeprefix("typeof ip saddr").split(" . ")] if "typeof" not in types \
        else ["ipv4_addr"]
    elements = []
    for _ in range(rng.randrange(0, 6)):
        arity = len(parts) if rng.random() > odd else rng.choice([1, 2, 3])
        key = " . ".join(rng.choice(_GOOD.get(parts[k % len(parts)], ["x"])) if rng.random() > odd else rng.choice(_BAD)
                         for k in range(arity))
        if rng.random() < 0.3:
            key += rng.choice([' comment "svc:port"', ' comment ""', ' comment "a, b : c"', ' comment "x"'])
        if data or rng.random() < odd:
            value = rng.choice(_VERDICTS) if "verdict" in data else rng.choice(_GOOD["ipv4_addr"])
            key += " : " + (value if rng.random() > odd else rng.choice(_BAD_VERDICTS + _BAD))
        elements.append(key)
    body = []
    if elements or rng.random() < 0.3:
        body.append("\t\telements = { " + ",\n\t\t\t     ".join(elements) + " }")
    if rng.random() < 0.1:
        body.append(rng.choice(["\t\tsize 65535", "\t\ttimeout 1h", "\t\telements = { 10.0.0.9 }", "\t\tcomment \"c\""]))
    return head + body + ["\t}"]


def _text(rng: random.Random) -> str:
    odd = rng.choice([0.0, 0.0, 0.05, 0.2])
    out = ["table ip t {"]
    if rng.random() < 0.8:
        out += _SETS[0] + [""] + _SETS[1] + [""]
    for _ in range(rng.choice([0, 0, 1, 3])):
        out += [*_random_set(rng, 0.0 if rng.random() < 0.7 else 0.1), ""]
    for _ in range(rng.randrange(1, 7)):
        r = rng.random()
        if r < 0.02:
            out += _SETS[2]
        elif r < 0.04:
            out += ["\tchain z {", "\t\tjump {"]  # an anonymous chain left open: the next block is inside it
        elif r < 0.05:
            out += ["}", "table ip u {"]
        elif r < 0.06:
            out += ["}"]  # the table closed: the next block is at the top level
        out += _chain(rng, odd)
        out += [""] * rng.choice([0, 1, 1, 2])
    out.append(rng.choice(["}"] * 9 + ["", "\t}"]))
    text = "\n".join(out) + rng.choice(["\n", "\n", ""])
    if rng.random() < 0.05:
        text = text.replace("\n", rng.choice(["\r\n", "\n\x85", "\n\u2028"]), 1)
    return text


def test_locations_of_chains_read_in_bulk_are_locations() -> None:
    from kpa.netfilter.model import Location, new_location

    for file, line in (("rules.nft", 1), ("a b", 10**6), ("", 0)):
        fast, slow = new_location(file, line), Location(file, line)
        assert type(fast) is Location and fast == slow and hash(fast) == hash(slow)
        assert (repr(fast), str(fast), fast.file, fast.line) == (repr(slow), str(slow), slow.file, slow.line)
        with pytest.raises(AttributeError):
            fast.line = 2  # type: ignore[misc]


def test_runs_of_chain_blocks_are_the_blocks_with_only_empty_lines_between() -> None:
    """chain_blocks groups blocks in runs; each later block of a run starts its line right after the
    empty lines that follow the one before, which the reader counts from the run's first line."""
    rng = random.Random(44)
    longer = 0
    for _ in range(500):
        text = _text(rng)
        lines = text.splitlines()
        blocks = chain_blocks(text)
        heads = {text.count("\n", 0, m.start()) for run in blocks.values() for m in run}
        # What the reader weighs against the text's length to read every line's skeleton in a child.
        assert nft_text._chain_runs(text)[1] == sum(len(m.group(0)) for run in blocks.values() for m in run)
        for first, run in blocks.items():
            line = first
            for m in run:
                assert text.count("\n", 0, m.start()) == line
                line += m.group(0).count("\n")
                while line < len(lines) and not lines[line]:
                    line += 1
            # A block right after the run's empty lines belongs to the run.
            assert line not in heads
            longer += len(run) > 1
    assert longer > 25, longer


def test_random_texts_read_the_same_three_ways() -> None:
    rng = random.Random(43)
    outcomes = {"ok": 0, "error": 0}
    bulk_read = 0
    for _ in range(1500):
        text = _text(rng)
        outcomes[assert_three_ways(text)] += 1
        bulk_read += bool(chain_blocks(text))
    # Both outcomes are common, and the bulk reader was in play in most texts.
    assert outcomes["ok"] > 400 and outcomes["error"] > 400, outcomes
    assert bulk_read > 600


def test_random_sets_read_the_same_three_ways() -> None:
    rng = random.Random(47)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(1500):
        odd = rng.choice([0.0, 0.0, 0.05, 0.2])
        lines = ["table ip t {", *_random_set(rng, odd), "", *_random_set(rng, odd), ""]
        lines += ["\tchain a {", "\t\tip saddr @s goto b", "\t\tip daddr . meta l4proto . th dport vmap @m", "\t}",
                  "\tchain b {", "\t}", "}"]
        outcomes[assert_three_ways("\n".join(lines) + "\n")] += 1
    assert outcomes["ok"] > 500 and outcomes["error"] > 200, outcomes


def test_sets_alike_read_the_same_three_ways() -> None:
    """In bulk, a set or map block of the same attribute lines as the one before takes its spec: blocks
    alike, nearly alike (a line more or less, other flags, elements, a handle, no closing brace), in one
    table or two, read as they read one at a time."""
    rng = random.Random(48)
    bodies = [["\t\ttype ipv4_addr", "\t\tsize 65535", "\t\tflags dynamic,timeout", "\t\ttimeout 3h"],
              ["\t\ttype ipv4_addr", "\t\tsize 65535", "\t\tflags dynamic,timeout"],
              ["\t\ttype ipv4_addr", "\t\tflags interval"], ["\t\ttype ipv4_addr", "", "\t\tflags interval"],
              ["\t\ttype ipv4_addr . inet_proto . inet_service : verdict"], ["\t\ttype ipv4_addr"], [],
              ["\t\ttype ipv4_addr", "\t\telements = { 10.0.0.1 }"], ["\t\ttype ipv6_addr", "\t\tflags constant"],
              ["\t\ttypeof ip saddr", "\t\tflags timeout"], ["\t\ttype ipv4_addr # handle 7"], ["\t\ttype bogus"],
              ["\t\ttype ipv4_addr", "\t\t# a comment"], ["\t\ttype ipv4_addr", "\t\tflags dynamic, timeout"]]
    closings = ["\t}", "\t}", "\t}", "\t} # handle 9", "  }  "]
    outcomes = {"ok": 0, "error": 0}
    for _ in range(600):
        lines = ["table ip t {"]
        for n in range(rng.randrange(1, 8)):
            if rng.random() < 0.05:
                lines += ["}", "table ip u {"]
            lines += [f"\t{rng.choice(['set', 'set', 'map'])} s{n} {{", *rng.choice(bodies[:3] * 4 + bodies)]
            if rng.random() > 0.02:
                lines.append(rng.choice(closings))
            lines.append("")
        lines += ["\tchain a {", "\t\tip saddr @s0 drop", "\t}", "}"]
        outcomes[assert_three_ways("\n".join(lines) + "\n")] += 1
    assert outcomes["ok"] > 300 and outcomes["error"] > 30, outcomes


def test_listing_form_from_the_text_is_listing_form() -> None:
    """listing_form_text (C searches for the lines that matter) says what listing_form says of the lines."""
    rng = random.Random(53)
    for path in NFT_FILES:
        text = path.read_text()
        assert nft_text.listing_form_text(text) == nft_text.listing_form(text.splitlines()), path
    pieces = ["table ip t {", "chain c {", "}", "\t}", "set s {", "map m {", "tcp dport 22 accept", "elements = { 1.2.3.4,",
              "5.6.7.8 }", 'elements = { 1.1.1.1 comment "a" : drop,', '2.2.2.2 comment "b" : drop }',
              'elements = { 1.1.1.1 comment "}{" : drop,', 'elements = { "{" ,', '"}" }', "# x {", "# y }", "x }", "x }}",
              "type filter hook input priority 0; policy accept;", "a ; b", "chain d { accept }", "set s { type ipv4_addr }",
              "ip saddr { 1.1.1.1, 2.2.2.2 } drop", "jump {", "{", "}}", "", "chain e { # c", "table ip u { chain f {",
              'comment "a { b"', "elements = { 1.2.3.4 } }", "update @s { ip saddr }", "vmap { 1 : drop }", "\t\t}", " }",
              "}\t", "x\t}", "\tx }", "\xa0}", "x\xa0}", "}\xa0", "\t\t\t}", "{ }", "\t{", "x {\t", "x {\xa0y",
              "ct helper h { x", "map\tm { a", "table ip x { y", "set{ a", "# ;", "type x hook y;", ";"]
    claimed = 0
    for _ in range(30000):
        lines = [rng.choice(["", "\t", "\t\t", " ", "\xa0"]) + rng.choice(pieces) for _ in range(rng.randrange(0, 14))]
        text = "\n".join(lines) + rng.choice(["", "\n"])
        expected = nft_text.listing_form(text.splitlines())
        assert nft_text.listing_form_text(text) == expected, lines
        claimed += expected
    assert 3000 < claimed < 27000


def test_skeleton_passes_skip_only_what_cannot_match() -> None:
    """skeleton_lines asks once per shared context (`sport `, `dport != `) before running a pass: the same
    lines as every pass run whenever its context is there."""
    from kpa.parse.nft_shapes import _PASSES, skeleton_lines

    def every_pass(text: str) -> list[str]:
        for literal, pattern, repl in _PASSES:
            if literal in text:
                text = pattern.sub(repl, text)
        return text.splitlines()

    rng = random.Random(59)
    texts = [p.read_text() for p in NFT_FILES]
    texts += [m for p in NFT_FILES if "kube-proxy" in p.parts for m in _mutations(p.read_text(), rng, 5)]
    words = ["ip", "saddr", "daddr", "tcp", "udp", "sctp", "sport", "dport", "!=", "10.0.0.1", "80", "@s", "jump",
             "goto", "a", "dnat", "to", "10.0.0.1:80", "update", "{", "}", "\n", "\t", "65536"]
    texts += [" ".join(rng.choice(words) for _ in range(rng.randrange(1, 30))) for _ in range(3000)]
    for text in texts:
        assert skeleton_lines(text) == every_pass(text)


def test_keys_of_one_line_are_the_whole_texts() -> None:
    """LineKeys works out a line's skeleton entry alone, when asked: the entry line_keys gives that line
    from the whole text, for fixtures, mutations and random texts; "" for a line with a placeholder."""
    from kpa.parse.nft_shapes import LineKeys, line_keys

    rng = random.Random(67)
    texts = [p.read_text() for p in NFT_FILES]
    texts += [m for p in NFT_FILES if "kube-proxy" in p.parts for m in _mutations(p.read_text(), rng, 5)]
    texts += [_text(rng) for _ in range(1500)]
    words = ["ip", "saddr", "daddr", "tcp", "udp", "sctp", "sport", "dport", "!=", "10.0.0.1", "80", "@s", "jump",
             "goto", "a", "dnat", "to", "10.0.0.1:80", "update", "{", "}", "\n", "\t", "65536", "#", "handle", "7",
             ",", '"', "\x85", "\r"]
    texts += [" ".join(rng.choice(words) for _ in range(rng.randrange(1, 30))) for _ in range(3000)]
    compared = 0
    for text in texts:
        whole = line_keys(text)
        lines = text.splitlines()
        keys = LineKeys(lines)
        assert whole is not None and len(whole.ids) == len(lines)
        assert [keys.entry(n) for n in range(1, len(lines) + 1)] == [whole.keys[k] for k in whole.ids]
        compared += len(lines)
    assert compared > 50000
    assert LineKeys(["\t\tip saddr 10.0.0.1 jump a\x03"]).entry(1) == ""


@pytest.mark.parametrize("child", ["answers", "garbage"])
def test_texts_read_line_by_line_get_their_keys_from_a_child(child: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large text mostly outside chain blocks in bulk form (here: every rule with its `# handle N`, as
    `nft -a` lists them) has every line's skeleton worked out at once by a forked child (KeyJob): the same
    reading three ways, the same entries as LineKeys, and with a child that answers garbage too."""
    from kpa.parse import nft_shapes

    monkeypatch.setattr(nft_shapes, "FORK_THRESHOLD", 0)
    if child == "garbage":
        monkeypatch.setattr(nft_shapes.KeyJob, "_child", lambda self: [b"\xff" * 9])
    jobs: list[Any] = []
    init = nft_shapes.KeyJob.__init__

    def spy(self: Any, *args: Any) -> None:
        init(self, *args)
        jobs.append(self)

    monkeypatch.setattr(nft_shapes.KeyJob, "__init__", spy)
    answered = read = 0
    for path in [p for p in NFT_FILES if "kube-proxy" in p.parts]:
        handle = iter(range(1000, 10**6))
        text = "".join(line + f" # handle {next(handle)}\n" if line.startswith("\t\t") and not line.rstrip().endswith(
            ("{", ",")) else line + "\n" for line in path.read_text().splitlines())
        jobs.clear()
        if assert_three_ways(text) != "ok":
            continue  # a handle inside a rule over several lines
        read += 1
        assert jobs, path
        lines = text.splitlines()
        keys = nft_shapes.LineKeys(lines)
        assert all(job.entry(n) == keys.entry(n) for job in jobs for n in range(1, len(lines) + 1))
        answered += any(job._result is not None for job in jobs)
    assert read >= 5
    assert answered == (read if child == "answers" else 0)


@pytest.mark.parametrize("followers", [0, 1, 64])
def test_guessed_shapes_read_the_same_three_ways(followers: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rule read in bulk is tried against the shapes that followed the previous rule's (FOLLOWERS of
    them), else keyed by its own skeleton: no guess, one, or many (most of them wrong) read the same."""
    monkeypatch.setattr(nft_text, "FOLLOWERS", followers)
    rng = random.Random(71)
    for path in [p for p in NFT_FILES if "kube-proxy" in p.parts]:
        text = path.read_text()
        assert_three_ways(text)
        for mutated in _mutations(text, rng, 3):
            assert_three_ways(mutated)
    for _ in range(300):
        assert_three_ways(_text(rng))


def test_a_guess_taken_without_its_match_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A guessed shape must match the rule's own text: a shape whose pattern answers a failed match with
    the last match it made (a broken guess) reads differently from the eager read, which is noticed."""
    from kpa.parse import nft_shapes

    analyse = nft_shapes.analyse

    class Stale:
        def __init__(self, pattern: Any) -> None:
            self.pattern = pattern
            self.last: Any = None

        def fullmatch(self, text: str) -> Any:
            m = self.pattern.fullmatch(text)
            if m is not None:
                self.last = m
            return m or self.last

    def stale(*args: Any) -> Any:
        shape = analyse(*args)
        if shape is not None:
            shape.pattern = Stale(shape.pattern)
            shape.fullmatch = shape.pattern.fullmatch
        return shape

    monkeypatch.setattr(nft_shapes, "analyse", stale)
    with pytest.raises(AssertionError):
        for path in [p for p in NFT_FILES if "kube-proxy" in p.parts]:
            assert_three_ways(path.read_text())


# -- real nft listings of random clusters (kernel) --------------------------------------

@pytest.mark.kernel
def test_captured_random_cluster_reads_the_same_three_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    from kpa.gen.cluster import random_cluster
    from kpa.gen.nft_capture import capture_nft
    from kpa.gen.nftables import render_nft
    from kpa.gen.options import ProxierOptions

    rng = random.Random(61)
    cluster = random_cluster(seed=3, services=60, endpoints_per_service=4)
    text = capture_nft(render_nft(cluster, ProxierOptions(node_name="node-0"), "ipv4"))
    assert assert_three_ways(text) == "ok"
    in_bulk, total = bulk_rules(text, monkeypatch)
    assert in_bulk > 0.8 * total, (in_bulk, total)
    for mutated in _mutations(text, rng, 30):
        assert_three_ways(mutated)
