"""xt (nft_compat): an iptables extension run inside nftables by iptables-nft.

`nft list ruleset` prints only `xt match "recent"` or `xt target "MARK"`,
not the options, so kpa cannot evaluate it: the rule is kept and the
expression is unknown (both ways explored). The iptables-save view of the
same table has the options; kpa.parse.mixed prefers it.
"""

from __future__ import annotations

from kpa.ext.base import UnknownExpr


def xt_expr(kind: str, name: str) -> UnknownExpr:
    target = kind == "target"
    return UnknownExpr(name=name, tokens=["xt", kind, name], is_target=target,
                       reason=f"iptables {'target' if target else 'match'} {name!r} inside nftables (xt compat) "
                              "is printed without its options; use the iptables-save dump of this table")
