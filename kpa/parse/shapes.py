"""Rule skeletons: validating each distinct iptables rule shape once.

kube-proxy writes hundreds of thousands of rules from a few dozen patterns
that differ only in addresses, ports, comments and hash-named chains.
`skeletonise` replaces such values in a whole dump by PLACEHOLDER, with one C
regex pass per option. A value becomes a placeholder only if it is strictly
valid for the option right before it and the dump's family: a dotted quad
with octets 0-255 and a prefix 0-32 (IPv4), an IPv6 address with a prefix
0-128 (IPv6), a port 0-65535, a DNAT/SNAT address:port, a hash-suffixed
chain name, a quoted comment without quotes, backslashes or control
characters in it. Anything else (a port 70000, a /33, 10.0.0.256, an
unknown option) stays in the skeleton as written, so it gives the rule a
skeleton of its own.

The parser keys rules by the skeleton of what follows `-A CHAIN` and sends
the first rule of each skeleton through the full parser, noting which
option consumed each token (`roles`). `analyse` then accepts the skeleton
only if every placeholder was consumed by a parser for which any value of
its kind gives the same outcome: the core -s/-d options, the port options
of tcp/udp/udplite/sctp/dccp, comment's --comment, recent's --name, the
address of DNAT/SNAT, or the chain name of a -j/-g without target options.
Later rules with an accepted skeleton therefore parse without error and to
the same structure; only the chain each is appended to (checked per rule),
and the chain it jumps to, depend on their values. Any other skeleton maps
to None and its rules are all parsed in full, as before."""

from __future__ import annotations

import os
import re
import struct
import sys
from array import array
from collections.abc import Iterator

from kpa import ext
from kpa.ext import comment, nat, recent, tcp
from kpa.forked import ChildJob
from kpa.netfilter.model import Family, Rule, RuleShape, VerdictKind

PLACEHOLDER = "\x01"

# Which option consumed a value token: ("core", "-s"), ("match", module, option),
# ("target", target, option) or ("jump", "-j").
Role = tuple[str, ...]

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}"
_CIDR4 = rf"{_IPV4}(?:/(?:3[0-2]|[12]?[0-9]))?"
_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}|0)"
# kube-proxy's per-Service and per-endpoint chains: KUBE-SVC-, KUBE-SEP-, KUBE-EXT-,
# KUBE-FW-, KUBE-SVL-, KUBE-XLB- followed by 16 characters of a base32 hash.
_HASHED_CHAIN = r"KUBE-[A-Z]{2,3}-[A-Z0-9]{16}"
# No quote, backslash or anything str.splitlines() breaks on.
_COMMENT = r'"[^"\\\'\x00-\x1f\x7f\x85\u2028\u2029]*"'
_END = r"(?=[ \r\n]|\Z)"
_HASHED_CHAIN_RE = re.compile(_HASHED_CHAIN)


def _passes(option: str, value: str) -> tuple[str, re.Pattern[str], str]:
    return f" {option} ", re.compile(f" {re.escape(option)} {value}{_END}"), f" {option} {PLACEHOLDER}"


_H = "[0-9a-fA-F]{1,4}"
# Every spelling of an IPv6 address with at most one "::" and no embedded dotted quad or zone.
_IPV6 = ("(?:" + "|".join([
    rf"(?:{_H}:){{7}}{_H}",
    rf"(?:{_H}:){{1,7}}:",
    *(rf"(?:{_H}:){{1,{6 - k}}}(?::{_H}){{1,{k + 1}}}" for k in range(6)),
    rf":(?::{_H}){{1,7}}",
    "::",
]) + ")")
_CIDR6 = rf"{_IPV6}(?:/(?:12[0-8]|1[01][0-9]|[1-9]?[0-9]))?"


def _family_passes(cidr: str, nat_address: str) -> list[tuple[str, re.Pattern[str], str]]:
    # Comments first, so that no later pass looks inside one.
    return [
        _passes("--comment", _COMMENT),
        _passes("-s", cidr),
        _passes("-d", cidr),
        _passes("--dport", _PORT),
        _passes("--sport", _PORT),
        _passes("-j", _HASHED_CHAIN),
        _passes("-g", _HASHED_CHAIN),
        _passes("--name", _HASHED_CHAIN),
        _passes("--to-destination", nat_address),
        _passes("--to-source", nat_address),
    ]


_VALUES = {Family.IPV4: (_CIDR4, f"{_IPV4}:{_PORT}"), Family.IPV6: (_CIDR6, rf"\[{_IPV6}\]:{_PORT}")}
# Compiled on first use: the IPv6 patterns take a while to compile.
_PASSES: dict[Family, list[tuple[str, re.Pattern[str], str]]] = {}


def skeletonise(text: str, family: Family) -> str | None:
    """`text` with valid values replaced by PLACEHOLDER, line for line; None if the fast path does not apply."""
    passes = _PASSES.get(family)
    if passes is None:
        if family not in _VALUES:
            return None
        passes = _PASSES[family] = _family_passes(*_VALUES[family])
    if PLACEHOLDER in text:
        return None
    for literal, pattern, repl in passes:
        if literal in text:
            text = pattern.sub(repl, text)
    return text


class Skeletons:
    """A dump's rule skeletons: for each line, an index into `keys` (0: not a rule line `-A NAME ...`).

    A key is the skeleton of what follows `-A NAME`, from the space after
    NAME on. Passes never change `-A NAME ` (every replacement keeps the
    option before the value), so NAME ends at the same place in a line and
    in its skeleton.
    """

    __slots__ = ("ids", "keys")

    def __init__(self, keys: list[str], ids: array[int]) -> None:
        self.keys = keys
        self.ids = ids

    @classmethod
    def of(cls, skel: str) -> Skeletons:
        index: dict[str, int] = {}
        ids = array("i")
        append = ids.append
        for line in skel.splitlines():
            if line.startswith("-A "):
                end = line.find(" ", 3)
                if end > 0:
                    key = line[end:]
                    kid = index.get(key)
                    if kid is None:
                        kid = index[key] = len(index) + 1
                    append(kid)
                    continue
            append(0)
        return cls(["", *index], ids)

    def extend(self, other: Skeletons) -> None:
        """Append the lines of `other`, numbering its keys as this one's."""
        index = {key: kid for kid, key in enumerate(self.keys)}
        renumber = [0]
        for key in other.keys[1:]:
            kid = index.get(key)
            if kid is None:
                kid = index[key] = len(self.keys)
                self.keys.append(key)
            renumber.append(kid)
        self.ids.extend(array("i", map(renumber.__getitem__, other.ids)))

    def to_bytes(self) -> bytes:
        keys = "\n".join(self.keys[1:]).encode("utf-8", "surrogatepass")
        return struct.pack("<Q", len(keys)) + keys + self.ids.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Skeletons:
        (n,) = struct.unpack_from("<Q", data)
        keys = data[8 : 8 + n].decode("utf-8", "surrogatepass")
        ids = array("i")
        ids.frombytes(data[8 + n :])
        return cls(["", *keys.split("\n")] if n else [""], ids)


# Line breaks of str.splitlines() other than \n: a text without them has the same lines split at \n.
_OTHER_BREAKS = ("\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")


def plain_lines(text: str) -> bool:
    """Whether `text` breaks lines only at \n and holds no PLACEHOLDER.

    In such a text a line's skeleton depends on that line alone: every pass
    matches within one line and ends before \n or at the end of the text.
    """
    return PLACEHOLDER not in text and not any(c in text for c in _OTHER_BREAKS)


class LineKeys:
    """The skeleton key of every line of a dump already read, to skeletonise another dump of the same
    family by its new lines only.

    Two dumps of one node a rollout apart share most of their lines; a line's skeleton
    depends on the line alone (see plain_lines), so a line seen before has the key it
    had then. `skeletons` gives what `Skeletons.of(skeletonise(text, family))` gives,
    up to the numbering of the keys.
    """

    __slots__ = ("by_line", "family", "keys")

    def __init__(self, family: Family, keys: list[str], by_line: dict[str, int]) -> None:
        self.family = family
        self.keys = keys
        self.by_line = by_line

    @classmethod
    def of(cls, lines: list[str], family: Family, skeletons: Skeletons) -> LineKeys | None:
        """The keys of a dump's `lines` (of a plain text), given its skeletons."""
        if len(lines) != len(skeletons.ids):
            return None
        return cls(family, skeletons.keys, dict(zip(lines, skeletons.ids, strict=True)))

    def skeletons(self, lines: list[str], family: Family) -> Skeletons | None:
        """The skeletons of a plain text of this family split into `lines`; None if it has no fast path."""
        if family is not self.family or family not in _VALUES:
            return None
        get = self.by_line.get
        got = [get(line, -1) for line in lines]
        # Lines not seen before; only rule lines `-A ...` have a key (lines of other kinds keep
        # their start through every pass).
        missing = []
        for i, kid in enumerate(got):
            if kid < 0:
                if lines[i].startswith("-A "):
                    missing.append(i)
                else:
                    got[i] = 0
        keys = list(self.keys)
        if missing:
            skel = skeletonise("\n".join([lines[i] for i in missing]), family)
            if skel is None:
                return None
            part = Skeletons.of(skel)
            if len(part.ids) != len(missing):
                return None  # cannot happen: the lines hold no line break
            index = {key: kid for kid, key in enumerate(keys)}
            renumber = [0]
            for key in part.keys[1:]:
                found = index.get(key)
                if found is None:
                    found = index[key] = len(keys)
                    keys.append(key)
                renumber.append(found)
            for i, kid in zip(missing, part.ids, strict=True):
                got[i] = renumber[kid]
        return Skeletons(keys, array("i", got))


# Below this many characters a dump is skeletonised in-process: forking would cost more than it saves.
FORK_THRESHOLD = 4_000_000
# The text is cut into this many pieces, handed out one at a time to whichever process asks first.
PIECES = 32
_PIECE = struct.Struct("<IQ")  # a piece's number and the length of its skeletons' bytes


class SkeletonJob:
    """`Skeletons.of(skeletonise(text, family))`, worked out by two processes for large dumps.

    kpa check spends about as long on the regex passes as on reading the
    dump's tables and chains, and they do not depend on each other, so on
    Linux a child process works out skeletons while the parent reads. The
    text is cut after line breaks (no value, and so no pass, spans one) into
    PIECES pieces; a pipe holds one byte per piece and each process reads one
    byte to take the next (reading one byte from a pipe is atomic). The child
    starts at once; the parent joins in when it has read the structure, so
    the two finish together however busy the second core is (another child
    may be reading cluster objects on it). The pieces' skeletons are put
    together in text order. Any failure of the child (or no fork, or threads
    that make forking unsafe) leaves its pieces to the parent: same result,
    only slower.
    """

    def __init__(self, text: str, family: Family) -> None:
        self.text = text
        self.family = family
        self.bounds = [0, len(text)]  # piece k is text[bounds[k]:bounds[k + 1]]
        self._claims = -1  # the read end of the pipe of pieces not yet taken
        self._job: ChildJob | None = None
        self._done = False
        self._result: Skeletons | None = None
        if len(text) >= FORK_THRESHOLD and family in _VALUES and _can_fork() and PLACEHOLDER not in text:
            bounds = [0]
            for k in range(1, PIECES):
                cut = text.find("\n", len(text) * k // PIECES) + 1 or len(text)
                if cut > bounds[-1]:
                    bounds.append(cut)
            if bounds[-1] < len(text):
                bounds.append(len(text))
            try:
                r, w = os.pipe()
            except OSError:
                return
            try:
                os.write(w, bytes(range(len(bounds) - 1)))
            finally:
                os.close(w)
            self.bounds, self._claims = bounds, r
            self._job = ChildJob(self._child)

    def _of(self, text: str) -> Skeletons | None:
        skel = skeletonise(text, self.family)
        return None if skel is None else Skeletons.of(skel)

    def _piece(self, k: int) -> Skeletons | None:
        return self._of(self.text[self.bounds[k] : self.bounds[k + 1]])

    def _take(self) -> Iterator[int]:
        """The pieces this process takes, until none is left."""
        while got := os.read(self._claims, 1):
            yield got[0]

    def _child(self) -> Iterator[bytes]:
        for k in self._take():
            part = self._piece(k)
            if part is None:
                return
            data = part.to_bytes()
            yield _PIECE.pack(k, len(data))
            yield data

    def _collect(self) -> dict[int, Skeletons]:
        """The pieces the child worked out; none if it failed."""
        data = self._job.collect() if self._job is not None else None
        out: dict[int, Skeletons] = {}
        if data is None:
            return out
        try:
            pos = 0
            while pos < len(data):
                k, n = _PIECE.unpack_from(data, pos)
                pos += _PIECE.size
                if pos + n > len(data) or k >= len(self.bounds) - 1:
                    return {}
                out[k] = Skeletons.from_bytes(data[pos : pos + n])
                pos += n
        except (ValueError, struct.error, UnicodeDecodeError):
            return {}
        return out

    def result(self) -> Skeletons | None:
        """The skeletons, or None if the text has no fast path."""
        if not self._done:
            self._done = True
            mine: dict[int, Skeletons | None] = {}
            if self._claims >= 0:
                try:
                    for k in self._take():
                        mine[k] = self._piece(k)
                finally:
                    os.close(self._claims)
                    self._claims = -1
            self._result = self.merge(mine, self._collect())
        return self._result

    def merge(self, mine: dict[int, Skeletons | None], theirs: dict[int, Skeletons]) -> Skeletons | None:
        """The pieces' skeletons in text order, working out here those neither process did."""
        out: Skeletons | None = None
        for k in range(len(self.bounds) - 1):
            part = mine[k] if k in mine else theirs[k] if k in theirs else self._piece(k)
            if part is None:
                return None
            if out is None:
                out = part
            else:
                out.extend(part)
        return out

    def close(self) -> None:
        """Stop the child if its result was never needed (the parse failed first)."""
        if self._claims >= 0:
            os.close(self._claims)
            self._claims = -1
        if self._job is not None:
            self._job.stop()


def _can_fork() -> bool:
    """Linux, a second CPU to run on, and no other threads (forking with threads is unsafe)."""
    threading = sys.modules.get("threading")
    return (sys.platform == "linux" and hasattr(os, "fork") and len(os.sched_getaffinity(0)) > 1
            and (threading is None or threading.active_count() == 1))


class Shape(RuleShape):
    """An accepted skeleton: the facts its rules share."""

    __slots__ = ("refs", "target_kind")

    def __init__(self, rule: Rule, target_kind: VerdictKind | None) -> None:
        super().__init__(not rule.known, rule.counters)
        # Where a placeholder -j/-g goes (the value then names the chain), or None.
        self.target_kind = target_kind
        # Otherwise the chains every rule of this shape jumps or goes to.
        self.refs: tuple[tuple[VerdictKind, str], ...] = () if target_kind else tuple(rule.chain_refs())


# What a skeleton not seen yet in a table maps to (beside its shape, or None once seen).
MISSING: Shape = Shape.__new__(Shape)

_PORT_PARSERS = {tcp.parse_tcp, tcp.parse_udp, tcp.parse_sctp, tcp.parse_dccp}


def _accepts(role: Role | None, option: str) -> bool:
    """Whether every value the skeleton pass for `option` replaces parses the same way for `role`."""
    if role is None:
        return False
    kind = role[0]
    if kind == "core":
        return role[1] == option and option in ("-s", "-d")
    if kind == "match":
        _, module, opt = role
        if opt != option:
            return False
        parser = ext.MATCHES.get(module)
        if option in ("--dport", "--sport"):
            return parser in _PORT_PARSERS
        if option == "--comment":
            return parser is comment.parse_comment
        if option == "--name":
            return parser is recent.parse_recent
        return False
    if kind == "target":
        _, target, opt = role
        if opt != option:
            return False
        parser = ext.TARGETS.get(target)
        return ((option, parser) == ("--to-destination", nat.parse_dnat)
                or (option, parser) == ("--to-source", nat.parse_snat))
    return False


def analyse(skel: str, rule: Rule, roles: dict[int, Role], tokens: list[str]) -> Shape | None:
    """The shape of the skeleton `skel` if its placeholders cannot change how its rules parse, else None.

    `skel` is the skeleton of what follows `-A CHAIN` in `rule`, the
    skeleton's first rule, parsed in full: `tokens` are its tokens after
    `-A CHAIN` and `roles` records which option consumed each of them.
    """
    if '"' in skel or "'" in skel or "\\" in skel:
        # Then tokenising could depend on the values; only comments may be quoted.
        return None
    parts = skel.split()
    if len(parts) != len(tokens):
        return None
    target_kind: VerdictKind | None = None
    last = len(parts) - 1
    for k, part in enumerate(parts):
        if part != PLACEHOLDER:
            if part != tokens[k]:
                return None
            continue
        if k == 0:
            return None
        prev = parts[k - 1]
        role = roles.get(k)
        if role is not None and role[0] == "jump" and prev in ("-j", "-g") and role[1] == prev and k == last:
            target_kind = VerdictKind.GOTO if prev == "-g" else VerdictKind.JUMP
            if tuple(rule.chain_refs()) != ((target_kind, tokens[k]),):
                return None
            # A -j to a name that is not a chain is a jump to a missing chain, unless the
            # name is a target: no hashed name may be one, whatever its value.
            if any(_HASHED_CHAIN_RE.fullmatch(name) for name in ext.TARGETS):
                return None
            continue
        if not _accepts(role, prev):
            return None
    return Shape(rule, target_kind)
