"""Bitmask comparisons of `ct state` and `tcp flags` (nft_cmp over nft_bitwise).

nft compiles a flag comparison by its operator, as `nft --debug=netlink` shows:

- no operator, a list (`ct state established,related`, `tcp flags syn`): any of
  the bits is set, `KEY & BITS != 0` (JSON: "in");
- `!` (`ct state ! established,related`): none is, `KEY & BITS == 0`;
- `==` / `!=` with a combination (`tcp flags == syn`, `ct state != established | related`):
  the whole value equals (or not) that combination, under a mask when one is given
  (`tcp flags syn / syn,ack` is `tcp flags & (syn | ack) == syn`);
- a set (`tcp flags { syn, syn | ack }`): the value is exactly one of the elements.

A packet's conntrack state is exactly one of the states (one bit), so kpa splits
the open state set on the test; the TCP flags follow the state (kpa.ext.tcp).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kpa.ext.base import FnCond, Split, parts
from kpa.ext.nft.base import GuardExpr, Key, NftMatch, ValueError_
from kpa.ext.tcp import flags_split
from kpa.netfilter.domain import IntSet
from kpa.netfilter.model import Expr
from kpa.netfilter.packet import State, TraceContext
from kpa.netfilter.protocols import BadNumber, c_uint

CT_STATE_BITS = {"invalid": 1, "established": 2, "related": 4, "new": 8, "untracked": 64}
TCP_FLAG_BITS = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10, "urg": 0x20, "ecn": 0x40,
                 "cwr": 0x80}


class FlagKey(Key):
    """A key whose value is a bitmask of named flags."""

    bits: dict[str, int] = {}
    width: int = 8

    def flag_split(self, st: State, pred: Callable[[int], bool]) -> Split:
        raise NotImplementedError

    def flag_value(self, raw: Any) -> int:
        """`syn`, `syn,ack`, `["syn", "ack"]`, `{"|": [...]}`, `0x12`: the bits they name, OR-ed."""
        if isinstance(raw, bool):
            raise ValueError_(f"expected {self.text} flags, found {raw!r}")
        if isinstance(raw, int):
            value = raw
        elif isinstance(raw, list):
            value = 0
            for part in raw:
                value |= self.flag_value(part)
        elif isinstance(raw, dict) and len(raw) == 1 and isinstance(next(iter(raw.values())), list):
            (op, operands), = raw.items()
            if op not in ("|", "or") or len(operands) != 2:
                raise ValueError_(f"expected {self.text} flags combined with |, found {op!r}")
            value = self.flag_value(operands[0]) | self.flag_value(operands[1])
        elif isinstance(raw, str):
            value = 0
            for word in raw.replace("|", ",").split(","):
                word = word.strip()
                if word in self.bits:
                    value |= self.bits[word]
                    continue
                try:
                    value |= c_uint(word, (1 << self.width) - 1)
                except BadNumber:
                    raise ValueError_(f"expected {self.text} flags ({', '.join(self.bits)}), found {word!r}") from None
        else:
            raise ValueError_(f"expected {self.text} flags, found {raw!r}")
        if not 0 <= value < 1 << self.width:
            raise ValueError_(f"expected {self.text} flags of at most {self.width} bits, found {value}")
        return value


@dataclass(eq=False)
class TcpFlagsKey(FlagKey):
    """`tcp flags`: only TCP packets have them (nft's `meta l4proto tcp` dependency)."""

    def __post_init__(self) -> None:
        self.dtype, self.text = "tcp_flag", "tcp flags"
        self.bits, self.width = TCP_FLAG_BITS, 8

    def needs_guard(self) -> bool:
        return True

    def guard(self, st: State, ctx: TraceContext) -> Split:
        return parts(*st.restrict("proto", IntSet.single(6)))

    def flag_split(self, st: State, pred: Callable[[int], bool]) -> Split:
        return flags_split(st, pred)


@dataclass(eq=False)
class CtStateFlagsKey(FlagKey):
    """`ct state` as a bitmask: the packet's state is one bit of it."""

    def __post_init__(self) -> None:
        self.dtype, self.text = "ct_state", "ct state"
        self.bits, self.width = CT_STATE_BITS, 32

    def flag_split(self, st: State, pred: Callable[[int], bool]) -> Split:
        allowed = frozenset(s for s in st.ctstate if pred(CT_STATE_BITS.get(s.lower(), 0)))
        return parts(*st.restrict_ctstate(allowed))


def flag_key(raw: Any) -> FlagKey | None:
    """The flag key for `tcp flags` or `ct state` (no direction); None for any other key."""
    if not isinstance(raw, dict) or len(raw) != 1:
        return None
    (k, v), = raw.items()
    if k == "payload" and isinstance(v, dict) and v.get("protocol") == "tcp" and v.get("field") == "flags":
        return TcpFlagsKey()
    if k == "ct" and isinstance(v, dict) and v.get("key") == "state" and not v.get("dir"):
        return CtStateFlagsKey()
    return None


def flag_match(key: FlagKey, mask_raw: Any, op: str, right: Any, text: str) -> list[Expr]:
    """The expressions for one flag comparison (see the module docstring for nft's meaning)."""
    full = (1 << key.width) - 1
    mask = key.flag_value(mask_raw) if mask_raw is not None else full
    pred: Callable[[int], bool]
    if isinstance(right, dict) and "set" in right:
        items = right["set"]
        if not isinstance(items, list) or op not in ("==", "!=", "in"):
            raise ValueError_(f"expected a set of {key.text} values, found {right!r}")
        wanted = frozenset(key.flag_value(x["elem"]["val"] if isinstance(x, dict) and isinstance(x.get("elem"), dict)
                                          else x) for x in items)
        hit = op != "!="
        pred = lambda f: ((f & mask) in wanted) == hit  # noqa: E731
    else:
        value = key.flag_value(right)
        if op == "in":
            pred = lambda f: (f & mask & value) != 0  # noqa: E731
        elif op == "!":
            pred = lambda f: (f & mask & value) == 0  # noqa: E731
        elif op == "==":
            pred = lambda f: (f & mask) == value  # noqa: E731
        elif op == "!=":
            pred = lambda f: (f & mask) != value  # noqa: E731
        else:
            raise ValueError_(f"expected ==, !=, ! or a flag list after {key.text}, found {op!r}")
    out: list[Expr] = []
    if key.needs_guard():
        out.append(GuardExpr(key=key))
    out.append(NftMatch(name=key.text, conds=[FnCond(lambda st, ctx: key.flag_split(st, pred))], key=key, text=text))
    return out
