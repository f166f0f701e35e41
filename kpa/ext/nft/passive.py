"""Statements that do not change a packet's path: counter, log, limit, quota, notrack...

limit and quota are stateful: a traced packet is taken as within its rate
or quota (buckets start full), and the outcome says so in a note, as kpa
does for iptables' limit match.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kpa.ext.limit import NOTE as LIMIT_NOTE
from kpa.netfilter.model import Expr, Flow, Step
from kpa.netfilter.packet import State, TraceContext


@dataclass(eq=False)
class PassiveStmt(Expr):
    name: str = ""
    text: str = ""
    note: str | None = None
    # `limit rate over` / `quota over` match once exceeded: never, for one packet.
    never: bool = False

    def step(self, st: State, ctx: TraceContext) -> Iterable[Step]:
        s = st.note(f"{self.name}: {self.note}") if self.note else st
        yield s, (Flow.NO_MATCH if self.never else Flow.CONTINUE)

    def render(self) -> list[str]:
        return self.text.split()


def passive(name: str, text: str, over: bool = False) -> PassiveStmt:
    note = None
    if name == "limit":
        note = LIMIT_NOTE
    elif name == "quota":
        note = "quota assumed not used up"
    return PassiveStmt(name=name, text=text, note=note, never=over)


@dataclass(eq=False)
class NotrackStmt(Expr):
    def __post_init__(self) -> None:
        self.name = "notrack"

    def step(self, st: State, ctx: TraceContext) -> Iterable[Step]:
        yield st.set(ctstate=frozenset({"UNTRACKED"})), Flow.CONTINUE

    def render(self) -> list[str]:
        return ["notrack"]
