"""comment (xt_comment): always matches; kpa keeps the text for reports."""

from __future__ import annotations

from kpa.ext.base import Match, Option, OptionError, ParseCtx, match


class CommentMatch(Match):
    @property
    def text(self) -> str:
        return self.options[0].args[0]


@match("comment")
def parse_comment(opts: list[Option], ctx: ParseCtx) -> Match:
    if len(opts) != 1 or opts[0].name != "--comment" or len(opts[0].args) != 1:
        raise OptionError('comment expects --comment "text"')
    return CommentMatch(name="comment", options=opts, conds=[])
