"""Reusing a base chain's evaluation for packet states it cannot tell apart.

After a Service's DNAT, each endpoint's packet state walks FORWARD and
POSTROUTING separately, and those chains mostly ask the same questions of
every one of them: is the destination one of the addresses the index pins?
is the mark set? is the connection new? A sweep over every Service asks
them tens of thousands of times.

While a base chain runs, every field read is recorded (kpa.netfilter.packet).
The result is kept together with those reads. A later state with the same
connection-level facts (hook, ctstate, marks, flags, affinity lists, NAT so
far) and whose fields give the same answer to every recorded read takes the
same path through the chain, so kpa replays the recorded outcome on it: the
same hops, verdicts, rewrites and probability factors, applied to the new
state. Anything that could make a replay inexact (truncation, --explain)
is not memoised.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from kpa.netfilter.model import Ruleset, Verdict
from kpa.netfilter.packet import (
    ABSENT,
    READ_DOM,
    READ_GROUP,
    READ_IN,
    READ_NAME,
    READ_ORIG,
    READ_RECENT,
    READ_VAL,
    State,
    TraceContext,
    note_reads,
    record_reads,
)

# Later packets of a sweep rarely need more variants of one chain than this.
ENTRIES_PER_KEY = 4
# Evaluations of a key before kpa judges whether memoising it pays.
MIN_TRIES = 32
# Scalar state the chain may have changed; copied over when it did.
_SCALARS = ("ctstate", "mark", "ctmark", "tcp_flags", "dnat", "snat", "masquerade", "derived", "hook",
            "local_origin")
_SEQUENCES = ("path", "assumptions", "notes", "facts")
_MISSING = object()

Results = list[tuple[State, Verdict]]


def _matches(read: tuple[Any, ...], st: State) -> bool:
    kind, name = read[0], read[1]
    if kind == READ_IN:
        value = st.peek(name)
        return value is not None and (value in read[2]) == read[3]
    if kind == READ_GROUP:
        value = st.peek(name)
        if value is None:
            return False
        return bool(value == read[3]) if read[3] is not None else value not in read[2]
    if kind == READ_VAL:
        return bool(st.peek(name) == read[2])
    if kind == READ_DOM:
        return name not in st.rewrites and bool(st.domains[name] == read[2])
    if kind == READ_RECENT:
        return st.recent.get(name, ABSENT) is read[2] if read[2] is ABSENT else st.recent.get(name, ABSENT) == read[2]
    if kind in (READ_ORIG, READ_NAME):
        return bool(st.domains[name] == read[2])
    return False


@dataclass
class _Delta:
    """What one result of the chain changed relative to the state that entered it."""

    verdict: Verdict
    scalars: dict[str, Any]
    suffixes: dict[str, tuple[Any, ...]]
    domains: dict[str, Any]
    rewrites: dict[str, int]
    recent: dict[str, bool | None]
    factor: Fraction

    def __post_init__(self) -> None:
        self.scales = self.factor != 1

    def apply(self, st: State) -> State:
        changes: dict[str, Any] = dict(self.scalars)
        for name, suffix in self.suffixes.items():
            changes[name] = getattr(st, name) + suffix
        if self.domains:
            changes["domains"] = {**st.domains, **self.domains}
        if self.rewrites:
            changes["rewrites"] = {**st.rewrites, **self.rewrites}
        if self.recent:
            changes["recent"] = {**st.recent, **self.recent}
        if self.scales:
            changes["probability"] = st.probability * self.factor
        return st.set(**changes)


def _delta(before: State, after: State, verdict: Verdict) -> _Delta | None:
    scalars = {n: getattr(after, n) for n in _SCALARS if getattr(after, n) != getattr(before, n)}
    suffixes: dict[str, tuple[Any, ...]] = {}
    for name in _SEQUENCES:
        old, new = getattr(before, name), getattr(after, name)
        if new[:len(old)] != old:
            return None  # the chain did not only append: do not replay it
        if len(new) > len(old):
            suffixes[name] = new[len(old):]
    if after.misses or before.misses:
        return None
    domains = {n: v for n, v in after.domains.items() if v is not before.domains[n] and v != before.domains[n]}
    rewrites = {n: v for n, v in after.rewrites.items() if before.rewrites.get(n, _MISSING) != v}
    recent = {n: v for n, v in after.recent.items() if before.recent.get(n, _MISSING) != v}
    if any(n not in after.recent for n in before.recent):
        return None
    return _Delta(verdict, scalars, suffixes, domains, rewrites, recent, after.probability / before.probability)


@dataclass
class _Entry:
    reads: list[tuple[Any, ...]]
    deltas: list[_Delta]
    warnings: list[str]
    hits: int = 0


@dataclass
class _Bucket:
    """The recorded evaluations for one key, most used first."""

    entries: list[_Entry]
    hits: int = 0
    misses: int = 0

    def worth_it(self) -> bool:
        # A chain that sees a new destination every time (nat PREROUTING in a
        # sweep) never repeats; recording it would only cost time.
        return self.misses < MIN_TRIES or self.hits * 4 >= self.misses


class ChainMemo:
    """Recorded base-chain evaluations of one ruleset under one set of node facts."""

    def __init__(self) -> None:
        self.buckets: dict[tuple[Any, ...], _Bucket] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(chain_id: int, nat: bool, st: State) -> tuple[Any, ...]:
        # Everything a rule may read directly, other than packet fields (those are recorded).
        return (chain_id, nat, st.hook, st.family, st.ctstate, st.mark, st.ctmark, st.tcp_flags,
                st.dnat is not None, st.snat is not None, st.masquerade, st.local_origin)

    def run(self, key: tuple[Any, ...], st: State, ctx: TraceContext,
            evaluate: Callable[[State], Results], truncated: Callable[[], bool]) -> Results:
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = _Bucket([])
        for i, entry in enumerate(bucket.entries):
            if all(_matches(r, st) for r in entry.reads):
                self.hits += 1
                bucket.hits += 1
                entry.hits += 1
                if i and entry.hits > bucket.entries[i - 1].hits:
                    bucket.entries[i - 1], bucket.entries[i] = entry, bucket.entries[i - 1]
                ctx.warnings.extend(entry.warnings)
                # A recorder around this walk (an outer memo, a caller sharing whole traces) learns
                # what the replayed result depends on, as if the chain had run.
                note_reads(entry.reads)
                return [(d.apply(st), d.verdict) for d in entry.deltas]
        self.misses += 1
        bucket.misses += 1
        if not bucket.worth_it():
            return evaluate(st)
        reads: list[tuple[Any, ...]] = []
        warned = len(ctx.warnings)
        previous = record_reads(reads)
        try:
            results = evaluate(st)
        finally:
            record_reads(previous)
        if previous is not None:
            previous.extend(reads)
        if truncated():
            return results  # cut to --max-outcomes: depends on probabilities, not reusable
        deltas = [_delta(st, s, v) for s, v in results]
        if any(d is None for d in deltas):
            return results
        entry = _Entry(reads, [d for d in deltas if d is not None], ctx.warnings[warned:])
        if len(bucket.entries) >= ENTRIES_PER_KEY:
            # Keep the variants that keep being reused; replace the least used (latest on a tie).
            least = min(range(len(bucket.entries)), key=lambda i: (bucket.entries[i].hits, -i))
            bucket.entries[least] = entry
        else:
            bucket.entries.append(entry)
        return results


_MEMOS: weakref.WeakKeyDictionary[Ruleset, dict[tuple[Any, ...], ChainMemo]] = weakref.WeakKeyDictionary()


def memo_for(ruleset: Ruleset, ctx: TraceContext) -> ChainMemo | None:
    """The memo shared by every trace of this ruleset under these node facts (None: do not memoise)."""
    if ctx.explain or not ctx.memo:
        return None
    # The ipsets belong to the ruleset, which already keys the memo.
    facts = (tuple(sorted(ctx.local.items())), tuple(sorted(ctx.affinity.items())), ctx.affinity_default,
             ctx.max_outcomes, ctx.facts_key())
    per_ruleset = _MEMOS.setdefault(ruleset, {})
    memo = per_ruleset.get(facts)
    if memo is None:
        memo = per_ruleset[facts] = ChainMemo()
    return memo
