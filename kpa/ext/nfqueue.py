"""NFQUEUE and QUEUE (xt_NFQUEUE), and nft's `queue`: the packet goes to a userspace program.

The verdict is terminal for kpa: whatever the program listening on the queue
decides happens to the packet. What the kernel does without a listener is known:
the packet is dropped, unless the rule says `--queue-bypass` (nft: `bypass`),
in which case it goes on as if the rule had accepted it. `fail-open` is not a
rule option: a listener sets it on its queue, and then packets that find the
queue full are accepted instead of dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kpa.ext.base import Option, OptionError, ParseCtx, VerdictExpr, parse_int, target
from kpa.netfilter.model import Expr, Verdict, VerdictKind


def queue_detail(queues: str, bypass: bool) -> str:
    """The Verdict detail of a queue verdict, e.g. "queue 3" or "queues 1-4, bypass"."""
    return queues + (", bypass" if bypass else "")


def describe_queue(detail: str | None) -> str:
    """The outcome's reason for a queue verdict."""
    text = detail or "queue 0"
    queues, _, flags = text.partition(", ")
    if "bypass" in flags:
        after = "with no program listening on it, the packet is accepted by this rule (bypass)"
    else:
        after = "with no program listening on it, the packet is dropped"
    return f"decided by a userspace program ({queues}); {after}"


@dataclass(eq=False)
class QueueTarget(VerdictExpr):
    """`-j NFQUEUE` (or `QUEUE`): hands the packet to a userspace program, whose verdict is final."""

    name: str = "NFQUEUE"
    options: list[Option] = field(default_factory=list)

    def render(self) -> list[str]:
        return ["-j", self.name] + [t for o in self.options for t in o.render()]


@target("NFQUEUE")
def parse_nfqueue(opts: list[Option], ctx: ParseCtx) -> Expr:
    queues = "queue 0"
    bypass = False
    for o in opts:
        if o.name == "--queue-num":
            queues = f"queue {parse_int(o.arg(), 'a queue number')}"
        elif o.name == "--queue-balance":
            lo_s, _, hi_s = o.arg().partition(":")
            lo, hi = parse_int(lo_s, "a queue number"), parse_int(hi_s or lo_s, "a queue number")
            if lo > hi:
                raise OptionError(f"expected --queue-balance LOW:HIGH, found {o.arg()!r}")
            queues = f"queues {lo}-{hi}"
        elif o.name == "--queue-bypass":
            bypass = True
        elif o.name != "--queue-cpu-fanout":
            raise OptionError(f"NFQUEUE expects --queue-num, --queue-balance, --queue-bypass or --queue-cpu-fanout, "
                              f"found {o.name}")
    expr = QueueTarget(verdict=Verdict(VerdictKind.QUEUE, detail=queue_detail(queues, bypass)), options=opts)
    expr.name = "NFQUEUE"
    return expr


@target("QUEUE")
def parse_queue(opts: list[Option], ctx: ParseCtx) -> Expr:
    if opts:
        raise OptionError(f"expected nothing after -j QUEUE, found {opts[0].name}")
    expr = QueueTarget(verdict=Verdict(VerdictKind.QUEUE, detail=queue_detail("queue 0", False)))
    expr.name = "QUEUE"
    return expr
