"""Verdict statements: accept, drop, reject, queue, continue, return, jump, goto."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kpa.ext.base import VerdictExpr
from kpa.netfilter.model import Expr, Flow, Step, Verdict, VerdictKind
from kpa.netfilter.packet import State, TraceContext

KINDS = {"accept": VerdictKind.ACCEPT, "drop": VerdictKind.DROP, "return": VerdictKind.RETURN,
         "jump": VerdictKind.JUMP, "goto": VerdictKind.GOTO, "queue": VerdictKind.QUEUE}


@dataclass(eq=False)
class NftVerdict(VerdictExpr):
    def render(self) -> list[str]:
        v = self.verdict
        if v.kind is VerdictKind.REJECT:
            return ["reject"] + (["with", *v.detail.split()] if v.detail else [])
        word = v.kind.value.lower()
        return [word, v.chain] if v.chain else [word]


@dataclass(eq=False)
class ContinueExpr(Expr):
    """`continue`: the rule ends here and the next rule runs."""

    def __post_init__(self) -> None:
        self.name = "continue"

    def step(self, st: State, ctx: TraceContext) -> Iterable[Step]:
        yield st, Flow.CONTINUE

    def render(self) -> list[str]:
        return ["continue"]


def verdict_value(kind: str, target: str | None = None) -> Verdict | Flow:
    """A verdict as a map value; `continue` is Flow.CONTINUE."""
    if kind == "continue":
        return Flow.CONTINUE
    return Verdict(KINDS[kind], chain=target)


def verdict_expr(kind: str, target: str | None = None) -> Expr:
    v = verdict_value(kind, target)
    if isinstance(v, Flow):
        return ContinueExpr()
    return NftVerdict(verdict=v)


def reject_expr(detail: str | None) -> Expr:
    return NftVerdict(verdict=Verdict(VerdictKind.REJECT, detail=detail or "icmp port-unreachable"))
