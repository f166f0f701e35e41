"""nat statements (nft_nat, nft_masq, nft_redir): dnat, snat, masquerade, redirect.

They end the nat chain's walk like iptables' DNAT/SNAT targets, so kpa reuses
kpa.ext.nat's semantics. `dnat to KEY map { key : addr . port }` picks the
translation per element; a key in no element breaks the rule. An interval
map's value `a-b` (`. p-q`) is a range, translated as `dnat to a-b:p-q` is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from kpa.ext.nat import NatRange, NatTarget
from kpa.ext.nft.base import Element, Key
from kpa.ext.nft.lookup import partition_data
from kpa.netfilter.model import Flow, NamedSet, Step
from kpa.netfilter.packet import State, TraceContext


@dataclass(eq=False)
class NftNat(NatTarget):
    text: str = ""

    def render(self) -> list[str]:
        return self.text.split()


@dataclass(eq=False)
class NftNatMap(NatTarget):
    """A nat statement whose address (and port) come from a map lookup."""

    key: Key = field(default_factory=Key)
    set: NamedSet | None = None
    elements: list[Element] = field(default_factory=list)
    targets: list[tuple[int, int | None] | NatRange] = field(default_factory=list)
    text: str = ""

    def _pairs(self) -> tuple[list[Element], list[tuple[int, int | None] | NatRange]]:
        if self.set is not None:
            return self.set.elements, list(self.set.values or [])
        return self.elements, self.targets

    def step(self, st: State, ctx: TraceContext) -> Iterable[Step]:
        elements, targets = self._pairs()
        yes_g, no_g = self.key.guard(st, ctx)
        for s in no_g:
            yield s, Flow.NO_MATCH
        for s in yes_g:
            for pos, s2 in partition_data(self.key, s, ctx, elements):
                if pos is None:
                    yield s2, Flow.NO_MATCH
                    continue
                target = targets[pos]
                if isinstance(target, NatRange):
                    yield from NatTarget(name=self.name, range=target).step(s2, ctx)
                    continue
                ip, port = target
                yield from NatTarget(name=self.name, ip=ip, port=port).step(s2, ctx)

    def render(self) -> list[str]:
        return self.text.split()
