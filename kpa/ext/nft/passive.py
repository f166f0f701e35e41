"""Statements that do not change a packet's path: counter, log, quota, notrack...

quota is stateful: a traced packet is taken as within its quota, and the
outcome says so in a note. `limit` is kpa.ext.limit's rate limit: unknown
unless `kpa trace --rate-limits` states it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kpa.ext.limit import RateLimit
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


def passive(name: str, text: str, over: bool = False) -> Expr:
    note = None
    if name == "limit":
        return RateLimit(name="limit", over=over, text=text)
    if name == "meter" and " limit " in f" {text} ":
        # A meter's limit counts per key: it matches (or, with `over`, stops matching) like a limit.
        return RateLimit(name="meter", over=text.endswith(" inv true") or " over " in text, text=text)
    if name == "quota":
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
