"""Value domains for symbolic packet fields.

A field left open by the user is a set of possible values; each rule that
tests the field splits that set into the part that matches and the rest.
Integers (addresses, ports, protocol numbers) use sorted disjoint inclusive
intervals, so a /16 or a port range costs one interval, not 65,536 values.
Interface names use a small constraint language because iptables matches
them by exact name or by `+` prefix.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction

Interval = tuple[int, int]


@dataclass(frozen=True, slots=True)
class IntSet:
    """A set of integers stored as sorted, disjoint, non-adjacent intervals."""

    spans: tuple[Interval, ...] = ()

    @staticmethod
    def of(*spans: Interval) -> IntSet:
        return IntSet(_normalise(spans))

    @staticmethod
    def single(value: int) -> IntSet:
        return IntSet(((value, value),))

    @staticmethod
    def range(lo: int, hi: int) -> IntSet:
        return IntSet(((lo, hi),)) if lo <= hi else IntSet()

    def is_empty(self) -> bool:
        return not self.spans

    def __bool__(self) -> bool:
        return bool(self.spans)

    def __contains__(self, value: int) -> bool:
        # Binary search: sets built from large CIDR lists can have many spans.
        spans = self.spans
        lo, hi = 0, len(spans)
        while lo < hi:
            mid = (lo + hi) // 2
            a, b = spans[mid]
            if value < a:
                hi = mid
            elif value > b:
                lo = mid + 1
            else:
                return True
        return False

    def size(self) -> int:
        return sum(b - a + 1 for a, b in self.spans)

    def single_value(self) -> int | None:
        if len(self.spans) == 1 and self.spans[0][0] == self.spans[0][1]:
            return self.spans[0][0]
        return None

    def min(self) -> int:
        return self.spans[0][0]

    def __and__(self, other: IntSet) -> IntSet:
        out: list[Interval] = []
        i = j = 0
        a, b = self.spans, other.spans
        while i < len(a) and j < len(b):
            lo = max(a[i][0], b[j][0])
            hi = min(a[i][1], b[j][1])
            if lo <= hi:
                out.append((lo, hi))
            if a[i][1] < b[j][1]:
                i += 1
            else:
                j += 1
        return IntSet(tuple(out))

    def __or__(self, other: IntSet) -> IntSet:
        return IntSet(_normalise(self.spans + other.spans))

    def __sub__(self, other: IntSet) -> IntSet:
        out: list[Interval] = []
        j = 0
        b = other.spans
        for lo, hi in self.spans:
            cur = lo
            while j < len(b) and b[j][1] < cur:
                j += 1
            k = j
            while k < len(b) and b[k][0] <= hi:
                if b[k][0] > cur:
                    out.append((cur, b[k][0] - 1))
                cur = max(cur, b[k][1] + 1)
                if cur > hi:
                    break
                k += 1
            if cur <= hi:
                out.append((cur, hi))
        return IntSet(tuple(out))

    def __iter__(self) -> Iterator[Interval]:
        return iter(self.spans)


def _normalise(spans: Iterable[Interval]) -> tuple[Interval, ...]:
    out: list[list[int]] = []
    for lo, hi in sorted(s for s in spans if s[0] <= s[1]):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((a, b) for a, b in out)


def network_set(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> IntSet:
    return IntSet.range(int(net.network_address), int(net.broadcast_address))


def _address_text(value: int, version: int) -> str:
    if version == 4:
        return f"{value >> 24}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}"
    return str(ipaddress.IPv6Address(value))


def _blocks(lo: int, hi: int, bits: int, most: int) -> list[tuple[int, int]] | None:
    """The CIDR blocks (address, prefix length) that cover lo..hi exactly, as
    ipaddress.summarize_address_range gives them; None if there are more than `most`."""
    out: list[tuple[int, int]] = []
    while lo <= hi:
        if len(out) == most:
            return None
        host_bits = min((lo & -lo).bit_length() - 1 if lo else bits, (hi - lo + 1).bit_length() - 1)
        out.append((lo, bits - host_bits))
        lo += 1 << host_bits
    return out


def describe_addresses(values: IntSet, version: int) -> list[str]:
    """Render an address set as the fewest CIDRs (or ranges when that is shorter)."""
    bits = 32 if version == 4 else 128
    out: list[str] = []
    for lo, hi in values:
        blocks = _blocks(lo, hi, bits, 4)
        if blocks is not None:
            out.extend(_address_text(a, version) if prefix == bits else f"{_address_text(a, version)}/{prefix}"
                       for a, prefix in blocks)
        else:
            out.append(f"{_address_text(lo, version)}-{_address_text(hi, version)}")
    return out


def describe_ints(values: IntSet) -> list[str]:
    return [str(a) if a == b else f"{a}-{b}" for a, b in values]


@dataclass(frozen=True, slots=True)
class NameSet:
    """Constraint on an interface name: exact, or prefix patterns in and out.

    `exact` pins the name. Otherwise the name must start with every prefix in
    `must` and with none in `must_not`, and must differ from every name in
    `not_exact`. That is all iptables (`eth0`, `veth+`) and nft (`"veth*"`)
    can express, so it is closed under the splits the engine makes.
    """

    exact: str | None = None
    must: frozenset[str] = field(default_factory=frozenset)
    must_not: frozenset[str] = field(default_factory=frozenset)
    not_exact: frozenset[str] = field(default_factory=frozenset)

    def is_open(self) -> bool:
        return self.exact is None

    def _admits_exact(self, name: str) -> bool:
        return (
            all(name.startswith(p) for p in self.must)
            and not any(name.startswith(p) for p in self.must_not)
            and name not in self.not_exact
        )

    def split(self, pattern: str, is_prefix: bool) -> tuple[NameSet | None, NameSet | None]:
        """Return (matching part, non-matching part); None where a part is empty."""
        if self.exact is not None:
            hit = self.exact.startswith(pattern) if is_prefix else self.exact == pattern
            return (self, None) if hit else (None, self)
        if is_prefix:
            if any(pattern.startswith(p) for p in self.must_not):
                return None, self
            if any(p.startswith(pattern) for p in self.must):
                return self, None
            # Two required prefixes must be compatible: one extends the other.
            if any(not (p.startswith(pattern) or pattern.startswith(p)) for p in self.must):
                return None, self
            yes = NameSet(None, self.must | {pattern}, self.must_not, self.not_exact)
            no = NameSet(None, self.must, self.must_not | {pattern}, self.not_exact)
            return yes, no
        if not self._admits_exact(pattern):
            return None, self
        return NameSet(pattern), NameSet(None, self.must, self.must_not, self.not_exact | {pattern})

    def describe(self) -> list[str]:
        if self.exact is not None:
            return [self.exact]
        parts = [f"{p}*" for p in sorted(self.must)]
        parts += [f"not {p}*" for p in sorted(self.must_not)]
        parts += [f"not {n}" for n in sorted(self.not_exact)]
        return parts

    def is_unconstrained(self) -> bool:
        return self.exact is None and not (self.must or self.must_not or self.not_exact)


def fraction_text(p: Fraction) -> str:
    """`numerator/denominator`, or a decimal when the exact fraction runs past thousands of digits.

    Shares of a Service with thousands of endpoints are products of thousands
    of 32-bit thresholds; Python refuses to print integers that long.
    """
    if max(p.numerator.bit_length(), p.denominator.bit_length()) > 3000:
        digits = int(p.denominator.bit_length() * 0.30103) + 1
        return f"{float(p):.17g} (exact fraction of about {digits} digits)"
    return f"{p.numerator}/{p.denominator}"
