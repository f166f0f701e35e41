"""nfacct (xt_nfacct): counts into an accounting object; always matches."""

from __future__ import annotations

from kpa.ext.base import Match, Option, OptionError, ParseCtx, match


@match("nfacct")
def parse_nfacct(opts: list[Option], ctx: ParseCtx) -> Match:
    if not opts or opts[0].name != "--nfacct-name":
        raise OptionError("nfacct expects --nfacct-name NAME")
    return Match(name="nfacct", options=opts, conds=[])
