"""Targets that leave the packet's path alone: logging, accounting, tuning.

LOG, NFLOG and friends do not decide anything, so the rule simply goes on to
the next one, as the kernel's XT_CONTINUE does.
"""

from __future__ import annotations

from kpa.ext.base import Option, ParseCtx, Statement, target
from kpa.netfilter.model import Expr

PASSIVE = ("LOG", "NFLOG", "ULOG", "TRACE", "CHECKSUM", "TCPMSS", "CLASSIFY", "DSCP", "TOS", "TTL",
           "HL", "AUDIT", "CONNSECMARK", "SECMARK", "IDLETIMER", "LED", "RATEEST", "TEE", "SYNPROXY")


@target(*PASSIVE)
def parse_passive(opts: list[Option], ctx: ParseCtx) -> Expr:
    # The name is filled in by the parser, which knows which target it saw.
    return Statement(name="", options=opts)
