"""owner (xt_owner): the local socket's user, group or existence.

A dump says nothing about which process sends a packet, so owner tests are
always unknown to kpa.
"""

from __future__ import annotations

from kpa.ext.base import Option, ParseCtx, Unsupported, match
from kpa.netfilter.model import Expr


@match("owner")
def parse_owner(opts: list[Option], ctx: ParseCtx) -> Expr:
    raise Unsupported("owner depends on the sending socket, which a ruleset does not show")
