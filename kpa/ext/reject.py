"""REJECT (ipt_REJECT, ip6t_REJECT): drop and answer with an error."""

from __future__ import annotations

from kpa.ext.base import Option, OptionError, ParseCtx, VerdictExpr, target
from kpa.netfilter.model import Expr, Verdict, VerdictKind

REPLIES_V4 = {"icmp-net-unreachable", "icmp-host-unreachable", "icmp-port-unreachable", "icmp-proto-unreachable",
              "icmp-net-prohibited", "icmp-host-prohibited", "icmp-admin-prohibited", "tcp-reset"}
REPLIES_V6 = {"icmp6-no-route", "no-route", "icmp6-adm-prohibited", "adm-prohibited", "icmp6-addr-unreachable",
              "addr-unreach", "icmp6-port-unreachable", "port-unreach", "tcp-reset",
              "icmp6-policy-fail", "policy-fail", "icmp6-reject-route", "reject-route"}


class RejectExpr(VerdictExpr):
    options: list[Option]

    def render(self) -> list[str]:
        return ["-j", "REJECT"] + [t for o in self.options for t in o.render()]


@target("REJECT")
def parse_reject(opts: list[Option], ctx: ParseCtx) -> Expr:
    v6 = ctx.family.version == 6
    reply = "icmp6-port-unreachable" if v6 else "icmp-port-unreachable"
    for o in opts:
        if o.name != "--reject-with":
            raise OptionError(f"REJECT expects --reject-with TYPE, found {o.name}")
        reply = o.arg()
        if reply not in (REPLIES_V6 if v6 else REPLIES_V4):
            raise OptionError(f"expected a REJECT reply type, found {reply!r}")
    e = RejectExpr(verdict=Verdict(VerdictKind.REJECT, detail=reply))
    e.options = opts
    return e
