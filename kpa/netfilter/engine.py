"""The symbolic trace engine: hooks, chains, rules, in the kernel's order.

Knows netfilter, not Kubernetes. A packet state enters a hook; every base
chain registered there runs in priority order (iptables tables and nftables
base chains alike); rules split the state where they depend on open fields
or on chance; verdicts end chains, hooks or the packet's life.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from kpa.ext.nfqueue import describe_queue
from kpa.netfilter.domain import IntSet, NameSet, describe_addresses, describe_ints, fraction_text
from kpa.netfilter.index import candidate_rules
from kpa.netfilter.memo import memo_for
from kpa.netfilter.model import Chain, Flow, Rule, Ruleset, Table, Verdict, VerdictKind
from kpa.netfilter.packet import (
    PROTOCOL_NAMES,
    Hop,
    Miss,
    PacketSpec,
    State,
    TraceContext,
    format_mac,
    full_domain,
)

MAX_DEPTH = 64
# Rule evaluations allowed per --max-outcomes: bounds the work of a trace whatever the rules do.
STEPS_PER_OUTCOME = 2_000


class _OutOfBudget(Exception):
    """The trace did the work its --max-outcomes allows; what was found so far is reported, truncated."""
_ACCEPT = Verdict(VerdictKind.ACCEPT)
# How many of the rules just before a hit --explain shows.
EXPLAIN_MISSES = 3


@dataclass
class Outcome:
    verdict: str  # ACCEPT, DROP, REJECT
    delivery: str | None  # local, forward, output; None when the packet dies
    state: State
    probability: Fraction
    conditions: list[str]
    ended_in: str | None = None  # the hook where a DROP/REJECT happened
    reason: str = ""
    detail: str | None = None
    # Names layers above the engine attach, e.g. which pod a DNAT target is.
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> tuple[Hop, ...]:
        return self.state.path

    def dnat_text(self) -> str | None:
        return _endpoint(self.state.dnat, self.state.version)

    def snat_text(self) -> str | None:
        return _endpoint(self.state.snat, self.state.version)

    def to_json(self) -> dict[str, Any]:
        st = self.state
        return {
            "probability": float(self.probability),
            "probability_exact": fraction_text(self.probability),
            "verdict": self.verdict,
            "reject_with": self.detail if self.verdict == "REJECT" else None,
            "queue": self.detail if self.verdict == "QUEUE" else None,
            "delivery": self.delivery,
            "ended_in": self.ended_in,
            "dnat": self.dnat_text(),
            "endpoint": self.labels.get("endpoint"),
            "service": self.labels.get("service"),
            "share": self.labels.get("share"),
            "sources": self.labels.get("sources"),
            "masquerade": st.masquerade,
            "snat": self.snat_text(),
            "mark": hex(st.mark),
            "conditions": self.conditions,
            "unknown": [a.describe() for a in st.assumptions],
            "notes": list(dict.fromkeys(st.notes)),
            "reason": self.reason,
            "netfilter_reason": self.labels.get("netfilter_reason", self.reason),
            "path": [h.to_json() for h in st.path],
        }


def _endpoint(value: tuple[int, int | None] | None, version: int) -> str | None:
    if value is None:
        return None
    ip, port = value
    addr = str(ipaddress.ip_address(ip))
    if port is None:
        return addr
    return f"[{addr}]:{port}" if version == 6 else f"{addr}:{port}"


@dataclass
class TraceResult:
    packet: PacketSpec
    outcomes: list[Outcome]
    warnings: list[str] = field(default_factory=list)
    truncated: bool = False
    # What layers above the engine found, e.g. the Service the packet hit.
    labels: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        p = self.packet
        return {
            "packet": {
                "family": "ipv6" if p.family.version == 6 else "ipv4", "src": p.src, "dst": p.dst,
                "protocol": p.proto, "sport": p.sport, "dport": p.dport, "in_iface": p.iif,
                "out_iface": p.oif, "origin": p.origin, "ctstate": p.ctstate, "mark": hex(p.mark),
                "uid": p.uid, "gid": p.gid, "src_mac": p.src_mac,
                "src_exclude": list(p.src_exclude),
            },
            "service": (self.labels.get("services") or [None])[0],
            "services": self.labels.get("services", []),
            "service_port_miss": self.labels.get("service_port_miss"),
            "outcomes": [o.to_json() for o in self.outcomes],
            "warnings": self.warnings,
            "truncated": self.truncated,
        }


class Engine:
    def __init__(self, ruleset: Ruleset, ctx: TraceContext) -> None:
        self.ruleset = ruleset
        self.ctx = ctx
        ctx.ipsets = ruleset.ipsets
        self.truncated = False
        self.memo = memo_for(ruleset, ctx)
        self.steps = 0
        self.budget = max(200_000, ctx.max_outcomes * STEPS_PER_OUTCOME)

    # -- public ----------------------------------------------------------
    def trace(self, spec: PacketSpec) -> TraceResult:
        start = spec.initial_state()
        finals: list[tuple[State, str, str | None, str | None, str]] = []
        try:
            if spec.origin == "output":
                self._trace_output(start, finals)
            else:
                self._trace_prerouting(start, finals)
        except _OutOfBudget:
            self.truncated = True
            self.ctx.warnings.append(f"the trace stopped after {self.budget} rule evaluations (the bound for "
                                     f"--max-outcomes {self.ctx.max_outcomes}); outcomes are incomplete")
        if len(finals) > self.ctx.max_outcomes:
            finals.sort(key=lambda f: f[0].probability, reverse=True)
            del finals[self.ctx.max_outcomes:]
            self.truncated = True
        outcomes = self._outcomes(start, finals)
        return TraceResult(spec, outcomes, list(dict.fromkeys(self.ctx.warnings)), self.truncated)

    # -- packet journeys -------------------------------------------------
    def _trace_prerouting(self, st: State, finals: list[Any]) -> None:
        for s in self._hook("PREROUTING", [st], finals):
            local, remote = self._split_local(s)
            if local is not None:
                for s2 in self._hook("INPUT", [local.set(hook="INPUT")], finals):
                    finals.append((s2, "ACCEPT", "local", None, "delivered to a local socket"))
            if remote is not None:
                fwd = self._hook("FORWARD", [remote], finals)
                for s2 in self._hook("POSTROUTING", fwd, finals):
                    finals.append((s2, "ACCEPT", "forward", None, "forwarded out of the node"))

    def _trace_output(self, st: State, finals: list[Any]) -> None:
        routed = self._route_output(st, st.domains["oif"])
        for s in self._hook("OUTPUT", routed, finals):
            # DNAT in OUTPUT changes the destination: the kernel routes again.
            rerouted = self._route_output(s, st.domains["oif"]) if "dst" in s.rewrites else [s]
            for s2 in self._hook("POSTROUTING", rerouted, finals):
                local, remote = self._split_local(s2)
                if remote is not None:
                    finals.append((remote, "ACCEPT", "output", None, "sent out of the node"))
                if local is not None:
                    # Looped back over lo: conntrack already confirmed the
                    # connection at POSTROUTING, so nat does not run again.
                    back = local.with_domain("iif", NameSet("lo")).set(derived=local.derived | {"iif"})
                    pre = self._hook("PREROUTING", [back], finals, nat=False)
                    for s3 in self._hook("INPUT", pre, finals, nat=False):
                        finals.append((s3, "ACCEPT", "local", None, "delivered to a local socket over loopback"))

    def _route_output(self, st: State, user_oif: NameSet) -> list[State]:
        local, remote = self._split_local(st)
        out: list[State] = []
        if local is not None:
            if user_oif.is_unconstrained():
                local = local.with_domain("oif", NameSet("lo")).set(derived=local.derived | {"oif"})
            out.append(local)
        if remote is not None:
            out.append(remote)
        return out

    def _split_local(self, st: State) -> tuple[State | None, State | None]:
        return st.restrict("dst", self.ctx.is_local(st.version))

    # -- hooks and chains ------------------------------------------------
    def _hook(self, hook: str, states: list[State], finals: list[Any], nat: bool = True) -> list[State]:
        if not states:
            return []
        states = [s.set(hook=hook) for s in states]
        for table, chain in self.ruleset.hook_chains(states[0].family, hook):
            next_states: list[State] = []
            for st in states:
                for s2, v in self._run_base_chain(table, chain, st, nat):
                    if v.kind is VerdictKind.ACCEPT:
                        next_states.append(s2)
                    elif v.kind is VerdictKind.REJECT:
                        finals.append((s2, "REJECT", v.detail, hook, self._death_reason(v, chain, hook)))
                    elif v.kind is VerdictKind.QUEUE:
                        detail = v.detail or "queue 0"
                        decider = self.ctx.queue_decider
                        decided = decider(s2, detail) if decider is not None else None
                        if decided is None:
                            finals.append((s2, "QUEUE", detail, hook, describe_queue(v.detail)))
                        elif decided.verdict == "QUEUE":
                            finals.append((self._decided(s2, decided.reason, False), "QUEUE", detail, hook,
                                           f"{decided.reason}; {describe_queue(v.detail)}"))
                        elif decided.verdict == "ACCEPT":
                            # The listener's accept resumes the packet after this base chain.
                            next_states.append(self._decided(s2, decided.reason))
                        else:
                            finals.append((self._decided(s2, decided.reason, False), "DROP", None, hook,
                                           decided.reason))
                    else:
                        finals.append((s2, "DROP", None, hook, self._death_reason(v, chain, hook)))
            states = self._bounded(next_states)
            if len(finals) > 4 * self.ctx.max_outcomes:
                finals.sort(key=lambda f: f[0].probability, reverse=True)
                del finals[self.ctx.max_outcomes:]
                self.truncated = True
            if not states:
                break
        return states

    @staticmethod
    def _decided(st: State, reason: str, note: bool = True) -> State:
        """The queue rule's hop says what the listener decided; an accepted packet's outcome keeps it as a note."""
        last = st.path[-1]
        hop = Hop(last.hook, last.table, last.chain, last.rule, last.location, last.text, last.comment, reason,
                  last.family, last.misses, last.target)
        st = st.set(path=(*st.path[:-1], hop))
        return st.note(reason) if note else st

    def _bounded(self, states: list[State]) -> list[State]:
        """At most --max-outcomes states, the likeliest; the rest are dropped and the trace marked truncated."""
        if len(states) > self.ctx.max_outcomes:
            states.sort(key=lambda s: s.probability, reverse=True)
            del states[self.ctx.max_outcomes:]
            self.truncated = True
        return states

    @staticmethod
    def _death_reason(v: Verdict, chain: Chain, hook: str) -> str:
        if v.detail and v.kind is VerdictKind.DROP and v.detail.startswith("policy"):
            return f"{chain.table}/{chain.name} policy DROP"
        if v.kind is VerdictKind.REJECT:
            return f"rejected ({v.detail}) in {hook}"
        return f"dropped in {hook}" + (f" ({v.detail})" if v.detail else "")

    def _run_base_chain(self, table: Table, chain: Chain, st: State, nat: bool) -> list[tuple[State, Verdict]]:
        if not chain.rules and chain.kind != "nat" and (chain.policy or "ACCEPT") == "ACCEPT":
            return [(st, _ACCEPT)]  # an empty accepting chain (mangle on most nodes) changes nothing
        if self.memo is None or not chain.rules:
            return self._base_chain(table, chain, st, nat)
        return self.memo.run(self.memo.key(id(chain), nat, st), st, self.ctx,
                             lambda s: self._base_chain(table, chain, s, nat), lambda: self.truncated)

    def _base_chain(self, table: Table, chain: Chain, st: State, nat: bool) -> list[tuple[State, Verdict]]:
        is_nat = chain.kind == "nat"
        out: list[tuple[State, Verdict]] = []
        if is_nat:
            if not nat:
                return [(st, Verdict(VerdictKind.ACCEPT))]
            new, other = st.restrict_ctstate(frozenset({"NEW"}))
            if other is not None:
                out.extend(self._nat_by_conntrack(table, chain, other))
            if new is None:
                return out
            st = new
        for s, v in self._chain(table, chain, st, 0, (chain.name,)):
            if v.kind is VerdictKind.RETURN:
                policy = chain.policy or "ACCEPT"
                # An empty chain's ACCEPT policy tells the reader nothing.
                if chain.rules or policy != "ACCEPT":
                    s = s.hop(Hop(s.hook, table.name, chain.name, None, chain.location, f"policy {policy}",
                                  family=table.family.value))
                v = Verdict(VerdictKind.ACCEPT) if policy == "ACCEPT" else Verdict(VerdictKind.DROP, detail="policy")
            out.append((s, v))
        return out

    def _nat_by_conntrack(self, table: Table, chain: Chain, st: State) -> list[tuple[State, Verdict]]:
        """Later packets of a connection follow the NAT its first packet got.

        kpa finds that mapping by walking the nat chain as the connection's
        first packet did, then restores this packet's own state and marks the
        hops as coming from the conntrack entry rather than from rules.
        """
        out: list[tuple[State, Verdict]] = []
        if chain.kind != "nat" or not chain.rules:
            return [(st, Verdict(VerdictKind.ACCEPT))]
        first = st.set(ctstate=frozenset({"NEW"}))
        for s, v in self._chain(table, chain, first, 0, (chain.name,)):
            extra = s.path[len(st.path):]
            hops = tuple(Hop(h.hook, h.table, h.chain, h.rule, h.location, h.text, h.comment,
                             "via the conntrack entry of the connection's first packet", h.family) for h in extra)
            s2 = s.set(ctstate=st.ctstate, mark=st.mark, path=st.path + hops)
            out.append((s2, Verdict(VerdictKind.ACCEPT) if v.kind in (VerdictKind.RETURN, VerdictKind.ACCEPT) else v))
        return out

    def _chain(self, table: Table, chain: Chain, st: State, depth: int,
               stack: tuple[str, ...] = ()) -> list[tuple[State, Verdict]]:
        """Run a chain; RETURN in the results means the chain fell through or returned.

        `stack` holds the chains this call runs inside (and those a goto left).
        """
        if depth > MAX_DEPTH:
            self.ctx.warnings.append(f"jumps nest deeper than {MAX_DEPTH} at {table.name}/{chain.name}; a loop?")
            return [(st, Verdict(VerdictKind.DROP, detail="jump loop"))]
        results: list[tuple[State, Verdict]] = []
        active = [st]
        for rule in candidate_rules(chain, active):
            if not active:
                break
            active = self._bounded(active)
            if len(results) > self.ctx.max_outcomes:
                results.sort(key=lambda r: r[0].probability, reverse=True)
                del results[self.ctx.max_outcomes:]
                self.truncated = True
            next_active: list[State] = []
            for s in active:
                for s2, flow in self._rule(rule, s):
                    if flow is Flow.NO_MATCH:
                        next_active.append(s2)
                        continue
                    s2 = s2.hop(self._hop(table, rule, s2, flow))
                    if s2.misses:
                        s2 = s2.set(misses=())
                    if flow is Flow.CONTINUE:
                        next_active.append(s2)
                        continue
                    assert isinstance(flow, Verdict)
                    self._verdict(table, flow, s2, depth, next_active, results, stack)
            active = next_active
        if self.ctx.explain:
            active = [self._fell_through(table, chain, s) for s in active]
        results.extend((s, Verdict(VerdictKind.RETURN)) for s in active)
        return results

    @staticmethod
    def _fell_through(table: Table, chain: Chain, st: State) -> State:
        """With --explain, a chain no rule of which matched says which rules just missed."""
        misses = tuple(m for m in st.misses if m.chain == chain.name)
        if not misses:
            return st
        hop = Hop(st.hook, table.name, chain.name, None, chain.location, "no rule matched: back to the caller",
                  family=table.family.value, misses=misses)
        return st.hop(hop).set(misses=tuple(m for m in st.misses if m.chain != chain.name))

    def _verdict(self, table: Table, v: Verdict, st: State, depth: int,
                 next_active: list[State], results: list[tuple[State, Verdict]], stack: tuple[str, ...] = ()) -> None:
        if v.kind in (VerdictKind.JUMP, VerdictKind.GOTO):
            target = table.chains.get(v.chain or "")
            if target is None:
                self.ctx.warnings.append(f"jump to undefined chain {v.chain} in table {table.name}")
                results.append((st, Verdict(VerdictKind.DROP, detail=f"undefined chain {v.chain}")))
                return
            if target.name in stack:
                # The kernel refuses to load a ruleset with a loop (iptables and nft alike): no real packet
                # ever walks one, so the walk stops here instead of going round.
                loop = " -> ".join((*stack[stack.index(target.name):], target.name))
                self.ctx.warnings.append(f"jump loop in table {table.name}: {loop} (the kernel would refuse "
                                         "these rules)")
                results.append((st, Verdict(VerdictKind.DROP, detail="jump loop")))
                return
            for s3, v3 in self._chain(table, target, st, depth + 1, (*stack, target.name)):
                if v3.kind is VerdictKind.RETURN and v.kind is VerdictKind.JUMP:
                    next_active.append(s3)
                else:
                    results.append((s3, v3))
            return
        results.append((st, v))

    def _rule(self, rule: Rule, st: State) -> Iterable[tuple[State, Flow | Verdict]]:
        self.steps += 1
        if self.steps > self.budget:
            raise _OutOfBudget()
        self.ctx.rule = rule
        states = [st]
        for expr in rule.exprs:
            nxt: list[State] = []
            for s in states:
                for s2, flow in expr.step(s, self.ctx):
                    if flow is Flow.CONTINUE:
                        nxt.append(s2)
                    elif flow is Flow.NO_MATCH and self.ctx.explain:
                        yield self._missed(rule, expr, s2), flow
                    else:
                        yield s2, flow
            states = nxt
            if not states:
                return
        for s in states:
            yield s, Flow.CONTINUE

    def _missed(self, rule: Rule, expr: Any, st: State) -> State:
        """Remember why a rule did not match, for --explain (the last few per chain)."""
        miss = Miss(rule.chain, rule.index, rule.location, rule.text, expr.describe())
        kept = tuple(m for m in st.misses if m.chain == rule.chain)[-(EXPLAIN_MISSES - 1):]
        return st.set(misses=(*kept, miss))

    def _hop(self, table: Table, rule: Rule, st: State, flow: Flow | Verdict) -> Hop:
        note = None
        if isinstance(flow, Verdict) and flow.detail in ("DNAT", "REDIRECT") and st.dnat:
            note = f"DNAT to {_endpoint(st.dnat, st.version)}"
        elif isinstance(flow, Verdict) and flow.detail == "SNAT" and st.snat:
            note = f"SNAT to {_endpoint(st.snat, st.version)}"
        elif isinstance(flow, Verdict) and flow.detail == "MASQUERADE":
            note = "masquerade to the outgoing interface's address"
        target = flow.chain if isinstance(flow, Verdict) and flow.kind in (VerdictKind.JUMP, VerdictKind.GOTO) else None
        return Hop(st.hook, table.name, rule.chain, rule.index, rule.location, rule.text, rule.comment, note,
                   table.family.value, tuple(m for m in st.misses if m.chain == rule.chain), target)

    # -- results ---------------------------------------------------------
    def _outcomes(self, start: State, finals: list[Any]) -> list[Outcome]:
        merged: dict[Any, list[Outcome]] = {}
        ordered: list[Outcome] = []
        for st, verdict, extra, where, reason in finals:
            conditions = describe_conditions(start, st)
            delivery = extra if verdict == "ACCEPT" else None
            detail = extra if verdict in ("REJECT", "QUEUE") else None
            # The path is compared only when everything else agrees: hashing every hop is slow.
            key = (verdict, delivery, detail, where, st.dnat, st.snat, st.masquerade, st.mark, tuple(conditions),
                   st.assumptions, len(st.path))
            same = merged.setdefault(key, [])
            for o in same:
                if o.state.path == st.path:
                    o.probability += st.probability
                    break
            else:
                outcome = Outcome(verdict, delivery, st, st.probability, conditions,
                                  ended_in=where, reason=reason, detail=detail)
                same.append(outcome)
                ordered.append(outcome)
        return sorted(ordered, key=lambda o: (-o.probability, o.verdict))


# What one numeric field's narrowing reads as, by (field, IP version, before, after): a sweep
# describes the same few narrowings (the pod CIDR's hole for an endpoint, ...) thousands of times.
_FIELD_TEXTS: dict[tuple[str, int, IntSet, IntSet], str] = {}


def _field_text(name: str, v: int, before: IntSet, after: IntSet) -> str:
    removed = before - after
    if name == "mac":
        shown = [format_mac(a) if a == b else f"{format_mac(a)}-{format_mac(b)}" for a, b in after.spans]
        return (f"src-mac in {', '.join(shown[:4])}{', ...' if len(shown) > 4 else ''}" if after.size()
                < removed.size() else f"src-mac not in {', '.join(format_mac(a) for a, _ in removed.spans[:4])}")
    render = (lambda s: describe_addresses(s, v)) if name in ("src", "dst") else (
        (lambda s: [PROTOCOL_NAMES.get(a, str(a)) if a == b else f"{a}-{b}" for a, b in s]) if name == "proto"
        else describe_ints)
    label = {"proto": "protocol", "icmp_type": "icmp-type"}.get(name, name)
    candidates = [f"{label} in {', '.join(render(after))}"]
    if before == full_domain(name, v) and removed.size() < after.size():
        candidates.append(f"{label} not in {', '.join(render(removed))}")
    if name in ("src", "dst") and len(after.spans) > 1:
        # "in 10.244.0.0/16 except 10.244.0.10" reads better than the CIDRs around a hole.
        lo, hi = after.spans[0][0], after.spans[-1][1]
        host_bits = (lo ^ hi).bit_length()
        hull = IntSet.range(lo >> host_bits << host_bits, ((hi >> host_bits) + 1 << host_bits) - 1)
        if hull & before == hull:
            holes = hull - after
            candidates.append(f"{label} in {', '.join(render(hull))} except {', '.join(render(holes))}")
    return min(candidates, key=len)


def describe_conditions(start: State, end: State) -> list[str]:
    """What must hold of the open fields for this outcome, in the user's terms."""
    out: list[str] = []
    v = start.version
    for name, before in start.domains.items():
        after = end.domains[name]
        if after == before or name in end.derived:
            continue
        if isinstance(after, NameSet):
            label = {"iif": "in-iface", "oif": "out-iface"}[name]
            out.extend(f"{label} {d}" if d.startswith("not ") else f"{label} = {d}" for d in after.describe())
            continue
        assert isinstance(after, IntSet) and isinstance(before, IntSet)
        key = (name, v, before, after)
        text = _FIELD_TEXTS.get(key)
        if text is None:
            text = _field_text(name, v, before, after)
            if len(_FIELD_TEXTS) >= 65536:
                _FIELD_TEXTS.clear()
            _FIELD_TEXTS[key] = text
        out.append(text)
    if end.ctstate != start.ctstate:
        out.append(f"ctstate in {','.join(sorted(end.ctstate))}")
    out.extend(end.facts)
    return out


def trace(ruleset: Ruleset, spec: PacketSpec, ctx: TraceContext) -> TraceResult:
    return Engine(ruleset, ctx).trace(spec)
