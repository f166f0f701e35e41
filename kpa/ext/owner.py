"""owner (xt_owner): the user, group or existence of the local socket that sent a packet.

The kernel (net/netfilter/xt_owner.c) looks at the socket attached to the packet:

* Only packets a local process sends have one (kpa: `--origin output`), and the
  match is allowed in OUTPUT and POSTROUTING only. With no socket the match holds
  exactly when every option given is negated (`! --uid-owner 1337` matches a
  forwarded packet; `--uid-owner 1337` does not).
* `--uid-owner A[-B]` compares the socket's file owner (fsuid) with the range,
  `--gid-owner` the fsgid; `--suppl-groups` also accepts a supplementary group,
  which kpa cannot see (unknown unless the primary group already matches).
* `--socket-exists` holds for any local socket.

Which user sends a packet is not in the ruleset: `kpa trace --uid/--gid` states
it (Istio's sidecar runs as uid 1337); left out, it stays open and each outcome
says which users it needs.
"""

from __future__ import annotations

from kpa.ext.base import (
    Cond,
    FnCond,
    Match,
    Option,
    OptionError,
    ParseCtx,
    Split,
    Unsupported,
    both_ways,
    match,
)
from kpa.netfilter.domain import IntSet
from kpa.netfilter.packet import Assumption, State, TraceContext

OWNER_HOOKS = ("OUTPUT", "POSTROUTING")


def id_range(text: str, what: str) -> IntSet:
    lo_s, _, hi_s = text.partition("-")
    try:
        lo = int(lo_s)
        hi = int(hi_s) if hi_s else lo
    except ValueError:
        raise Unsupported(f"owner {what} {text!r} is a name; kpa compares numeric ids") from None
    if not 0 <= lo <= hi <= 0xFFFFFFFF:
        raise OptionError(f"expected a {what} id or range, found {text!r}")
    return IntSet.range(lo, hi)


def has_socket(st: State) -> bool | None:
    """Whether the packet carries its sender's socket at this hook (None: kpa cannot tell)."""
    if st.hook in OWNER_HOOKS:
        return st.local_origin
    return None


def owner_match(uid: tuple[IntSet, bool] | None, gid: tuple[IntSet, bool] | None,
                socket: bool | None, suppl: bool) -> list[Cond]:
    """The kernel's owner_mt as conditions. `socket` is --socket-exists' negation flag, None if absent."""
    negs = [n for n in (uid[1] if uid else None, gid[1] if gid else None, socket) if n is not None]
    all_negated = all(negs)

    def test(st: State, ctx: TraceContext) -> Split:
        sock = has_socket(st)
        if sock is None:
            rule = ctx.rule
            why = f"owner is only meaningful in OUTPUT/POSTROUTING, not {st.hook or 'this hook'}"
            a = (rule.location if rule else None, rule.text if rule else "-m owner")
            return ([st.assume(Assumption(a[0], a[1], why, True))], [st.assume(Assumption(a[0], a[1], why, False))])
        if not sock:
            return ([st], []) if all_negated else ([], [st])
        if socket is True:
            return [], [st]  # a socket exists, but `! --socket-exists` was asked
        yes, no = [st], []
        for spec, field in ((uid, "uid"), (gid, "gid")):
            if spec is None:
                continue
            values, negated = spec
            nxt: list[State] = []
            for s in yes:
                inside, outside = s.restrict(field, values)
                if field == "gid" and suppl and outside is not None:
                    why = "a supplementary group of the sender may be in the range (--suppl-groups)"
                    extra, outside = both_ways(outside, ctx, "-m owner", why)
                    if negated:
                        no.append(extra)
                    else:
                        nxt.append(extra)
                hit, miss = (outside, inside) if negated else (inside, outside)
                if hit is not None:
                    nxt.append(hit)
                if miss is not None:
                    no.append(miss)
            yes = nxt
        return yes, no

    return [FnCond(test)]


@match("owner")
def parse_owner(opts: list[Option], ctx: ParseCtx) -> Match:
    uid = gid = None
    socket: bool | None = None
    suppl = False
    for o in opts:
        if o.name == "--uid-owner":
            uid = (id_range(o.arg(), "user"), o.negated)
        elif o.name == "--gid-owner":
            gid = (id_range(o.arg(), "group"), o.negated)
        elif o.name == "--socket-exists":
            socket = o.negated
        elif o.name == "--suppl-groups":
            suppl = True
        else:
            raise Unsupported(f"owner option {o.name} is not modelled")
    if uid is None and gid is None and socket is None:
        raise OptionError("owner expects --uid-owner, --gid-owner or --socket-exists")
    return Match(name="owner", options=opts, conds=owner_match(uid, gid, socket, suppl))
