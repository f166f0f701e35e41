"""dynset (nft_dynset): `update @set { ip saddr }` / `add @set { ... }` from a rule.

kube-proxy records a client in an affinity set when it picks an endpoint;
later lookups in that set see it. kpa tracks that membership per trace, like
the `recent` match's lists.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from kpa.ext.nft.base import Key
from kpa.netfilter.model import Expr, Flow, Step
from kpa.netfilter.packet import State, TraceContext


@dataclass(eq=False)
class SetUpdate(Expr):
    op: str = "update"  # add | update | delete
    set_name: str = ""
    key: Key = field(default_factory=Key)
    text: str = ""

    def __post_init__(self) -> None:
        self.name = f"{self.op} @set"

    def step(self, st: State, ctx: TraceContext) -> Iterable[Step]:
        yes, no = self.key.guard(st, ctx)
        for s in yes:
            yield s.set(recent={**s.recent, self.set_name: self.op != "delete"}), Flow.CONTINUE
        # Without the key's header the kernel cannot build the element: the rule stops.
        for s in no:
            yield s, Flow.NO_MATCH

    def render(self) -> list[str]:
        return self.text.split()
