"""limit and hashlimit (xt_limit, xt_hashlimit): token-bucket rate limits.

A bucket starts full, so a single traced packet is within its limit; kpa
says so in a note on the outcome rather than assuming it silently.
"""

from __future__ import annotations

from kpa.ext.base import FnCond, Match, Option, ParseCtx, match

NOTE = "rate limit assumed not exceeded (its token bucket starts full)"


def _within_limit(opts: list[Option], name: str) -> Match:
    cond = FnCond(lambda s, c: ([s.note(f"{name}: {NOTE}")], []))
    return Match(name=name, options=opts, conds=[cond])


@match("limit")
def parse_limit(opts: list[Option], ctx: ParseCtx) -> Match:
    return _within_limit(opts, "limit")


@match("hashlimit")
def parse_hashlimit(opts: list[Option], ctx: ParseCtx) -> Match:
    return _within_limit(opts, "hashlimit")
