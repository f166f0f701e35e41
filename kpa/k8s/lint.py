"""Find drift between a node's kube-proxy rules and the cluster objects: `kpa lint`.

Every check reads a `kpa.k8s.correlate.Correlation` (expected vs actual per
Service port) or the ruleset itself, and reports `Finding`s (`kpa.findings`)
that name the Service port, the chain and the FILE:LINE of the rule involved.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from operator import attrgetter

from kpa.findings import (
    SEVERITY_RANK,
    CodeInfo,
    Finding,
    ObjectRef,
    Severity,
    exit_status,
    register,
    sort_findings,
)
from kpa.graph import dangling_jumps
from kpa.k8s.correlate import (
    Actual,
    Correlation,
    EndpointRef,
    Expected,
    LeanExpected,
    PortCorrelation,
    RulesSide,
    UnmappedChain,
    correlate,
    rule_names,
    rules_side,
)
from kpa.k8s.objects import ClusterObjects
from kpa.netfilter.model import Ruleset

# The statistic match keeps probabilities as integers over 2^31, so each step
# of the cascade is off by at most half of 2^-31; n steps add up to n of those.
QUANTUM = Fraction(1, 1 << 31)

_INFOS = (
    CodeInfo("service-without-rules", "error",
             "a Service port has usable endpoints but no rules send traffic to them",
             "The objects say the port has endpoints, but the ruleset has no entry rule or "
             "Service chain for it, or still rejects it as having no endpoints: connections "
             "to it fail on this node."),
    CodeInfo("stale-service-rules", "error",
             "rules remain for a Service or Service port that no longer exists",
             "Rules for a Service port the objects do not have: the Service was deleted, lost "
             "the port, or became headless. Its old addresses may be reused by another Service."),
    CodeInfo("stale-endpoint", "error",
             "rules send traffic to an endpoint the EndpointSlices no longer offer",
             "A Service chain sends a share of new connections to an endpoint the "
             "EndpointSlices no longer list, or list as not usable: those connections fail."),
    CodeInfo("missing-endpoint", "warning",
             "an endpoint the EndpointSlices offer gets no traffic from the rules",
             "A usable endpoint gets no traffic from this node. Connections still succeed, so "
             "it only costs capacity."),
    CodeInfo("orphan-endpoint-chain", "warning",
             "an endpoint chain that nothing jumps to; kube-proxy deletes these",
             "A KUBE-SEP- chain no Service chain jumps to. Harmless to traffic, but kube-proxy "
             "deletes such chains in the same restore, so one left behind means a partial "
             "update."),
    CodeInfo("traffic-policy-mismatch", "error",
             "rules follow a different traffic policy than the Service asks for",
             "The rules follow Local where the Service asks for Cluster or the other way "
             "round: traffic is dropped or reaches endpoints it should not."),
    CodeInfo("uneven-probabilities", "warning",
             "the statistic cascade does not give each endpoint an equal share",
             "kube-proxy gives each endpoint 1/n of new connections; other shares mean "
             "hand-edited or half-updated rules. Traffic still flows."),
    CodeInfo("local-policy-no-local-endpoints", "warning",
             "traffic policy Local with no endpoint on this node: that traffic is dropped",
             "A Local traffic policy and no endpoint on this node, so kube-proxy drops that "
             "traffic here. Info behind a load balancer whose health check "
             "(healthCheckNodePort) steers traffic away from this node; a warning otherwise "
             "(NodePorts and external IPs, which clients reach directly, and "
             "internalTrafficPolicy Local, which drops this node's own pods' traffic)."),
    CodeInfo("no-endpoints", "info",
             "a Service port has no usable endpoint: its traffic is rejected",
             "No ready and no serving-terminating endpoint: kube-proxy rejects the port's "
             "traffic. That is the correct programming for an empty Service."),
    CodeInfo("unknown-rules", "warning", "a rule uses a match or target kpa cannot model",
             "Traces through the rule explore both ways and mark the outcome as an assumption."),
    CodeInfo("dangling-jump", "error", "a rule jumps to a chain that does not exist",
             "The kernel would never load this, so the dump is incomplete or was edited."),
    CodeInfo("no-kube-proxy-rules", "warning",
             "the ruleset holds none of kube-proxy's Service rules to compare with",
             "Nothing could be checked: the rules hold no KUBE-SERVICES chain and no "
             "kube-proxy nftables table."),
    CodeInfo("node-unknown", "info",
             "the node is unknown, so Local traffic-policy checks were skipped",
             "Give --node NAME; kpa could not infer the node from the Local-policy chains."),
)
register(*_INFOS)

#: Every code the kube-proxy checks report, with its default severity and a one-line meaning.
CODES: dict[str, tuple[Severity, str]] = {i.code: (i.severity, i.summary) for i in _INFOS}


def _service_object(service: str | None) -> ObjectRef | None:
    """The Service of a Service port name ``namespace/name[:port]``."""
    if not service or "/" not in service:
        return None
    namespace, rest = service.split("/", 1)
    return ObjectRef("Service", namespace, rest.split(":", 1)[0])


def _finding(code: str, service: str | None, message: str, location: str | None,
             severity: Severity | None = None) -> Finding:
    return Finding(code, severity or CODES[code][0], service, message, location,
                   _service_object(service))


def _at(location: str | None) -> str:
    return f" at {location}" if location else ""


def _is_local_chain(name: str | None) -> bool:
    return bool(name) and str(name).startswith(("KUBE-SVL-", "local-"))


@dataclass
class RulesAhead:
    """What `lint` reads of the ruleset alone, worked out while the objects are still being read."""

    ruleset: Ruleset
    side: RulesSide
    # (chain whose owner the finding names, code, message, location), in `_rule_problems` order.
    problems: list[tuple[str, str, str, str | None]]
    # The endpoint lists of the rules' half whose statistic shares are even, by id.
    even: dict[int, list[EndpointRef]]

    def meanwhile(self) -> None:
        """Work for a wait for the objects: the endpoint chain names the rules show (`rule_names`)."""
        rule_names(self.side)

    def take_names(self, names: object) -> None:
        """Endpoint chain names worked out from the objects elsewhere (`naming.endpoint_chain_names`),
        for the comparison to look up instead of hashing; kept only where `meanwhile` found none."""
        if isinstance(names, dict) and not self.side.names:
            self.side.names = names


def rules_ahead(ruleset: Ruleset) -> RulesAhead:
    """The ruleset's part of `lint`: pass it to `lint` with the objects.

    The endpoint chain names are left out: the objects' reader works them out from the objects
    (`take_names`), or this process does from the rules while it waits for the objects
    (`meanwhile`), or the comparison as it goes.
    """
    side = rules_side(ruleset, names=False)
    return RulesAhead(ruleset, side, list(_rule_problems(ruleset)), _even_lists(side))


_probability = attrgetter("probability")


def _even_lists(side: RulesSide) -> dict[int, list[EndpointRef]]:
    """The endpoint lists of the rules' half whose shares `_shares` finds even, by id."""
    even: dict[int, list[EndpointRef]] = {}
    # Whether shares are even, by the identity of the share objects: the cascades of Service ports
    # with as many endpoints hold the very same Fractions (see `kubeproxy._dyadic`). Each entry
    # keeps its shares, so no id is reused while the cache lives.
    seen: dict[tuple[int, ...], tuple[list[Fraction | None], bool]] = {}
    for pc in side.collected.ports.values() if side.collected is not None else ():
        for refs in (pc.actual.cluster, pc.actual.local) if pc.actual is not None else ():
            if not refs:
                continue
            probs: list[Fraction | None] = list(map(_probability, refs))
            key = tuple(map(id, probs))
            known = seen.get(key)
            if known is None:
                # By identity: `None in probs` would ask each Fraction whether it equals None.
                ok = all(p is not None for p in probs) and bool(_even_enough(probs, len(refs)))  # type: ignore[arg-type]
                seen[key] = known = (probs, ok)
            if known[1]:
                even[id(refs)] = refs
    return even


def lint(ruleset: Ruleset, objects: ClusterObjects, node_name: str | None,
         ahead: RulesAhead | None = None) -> list[Finding]:
    """All findings for one node's ruleset against the cluster objects, most severe first.

    ``ahead``: `rules_ahead(ruleset)`, worked out before the objects were at hand.
    """
    if ahead is not None and ahead.ruleset is not ruleset:
        ahead = None
    problems = ahead.problems if ahead is not None else list(_rule_problems(ruleset))
    # Lean where no rule-level finding needs every expected chain's owner (`_chain_owners`).
    corr = correlate(ruleset, objects, node_name, ahead.side if ahead is not None else None,
                     lean=ahead is not None and not problems)
    findings = list(lint_correlation(corr, objects, ahead.even if ahead is not None else None))
    if problems:
        owners = _chain_owners(corr)
        findings.extend(_finding(code, owners.get(chain), message, where)
                        for chain, code, message, where in problems)
    return sort_findings(_with_object_locations(findings, objects))


def _with_object_locations(findings: list[Finding], objects: ClusterObjects) -> list[Finding]:
    """Each finding about a Service with the Service's FILE:LINE in the objects file."""
    out = []
    for f in findings:
        if f.object is not None and f.object.kind == "Service":
            svc = objects.service(f.object.namespace, f.object.name)
            if svc is not None and svc.location:
                f = replace(f, object_location=svc.location)
        out.append(f)
    return out


def ignore_annotations(objects: ClusterObjects) -> dict[ObjectRef, frozenset[str]]:
    """The codes each Service and NetworkPolicy silences with its `kpa.io/ignore` annotation."""
    out = {ObjectRef("Service", s.namespace, s.name): s.ignore_codes
           for s in objects.services if s.ignore_codes}
    for p in objects.network_policies:
        if p.ignore_codes:
            out[ObjectRef("NetworkPolicy", p.namespace, p.name)] = p.ignore_codes
    return out


def lint_correlation(corr: Correlation, objects: ClusterObjects,
                     even: dict[int, list[EndpointRef]] | None = None) -> Iterator[Finding]:
    """The drift checks that need only the correlation.

    ``even``: endpoint lists of the correlation already known to have even shares, by id.
    """
    if not corr.layouts:
        if objects.services:
            yield _finding(
                "no-kube-proxy-rules", None,
                f"the ruleset has no nat KUBE-SERVICES chain and no {'kube-proxy'} nftables "
                f"table, so none of the {len(objects.services)} Services can be checked",
                None)
        return
    if corr.node_name is None and any(
        p.expected and (p.expected.internal_policy_local or p.expected.external_policy_local)
        for p in corr.ports
    ):
        yield _finding(
            "node-unknown", None,
            "no node given and none could be inferred from Local-policy chains: "
            "checks of Local traffic policies were skipped (give the node name)", None)
    for pc in corr.ports:
        yield from _port_checks(pc, even or {})
    # One finding per lost Service port: its chains share the hash in their names.
    groups: dict[tuple[str, str, str], list[UnmappedChain]] = {}
    for u in corr.unmapped:
        suffix = u.chain.rsplit("-", 1)[-1] if u.mode == "iptables" else u.chain.split("-", 1)[-1]
        groups.setdefault((u.mode, u.family, suffix), []).append(u)
    for (mode, family, _), chains in groups.items():
        where = chains[0].location
        names = ", ".join(f"{u.chain}{_at(u.location)}" for u in chains)
        yield _finding(
            "stale-service-rules", None,
            f"chain(s) {names} ({family}, {mode}) match no Service port in the cluster "
            "objects by comment or by recomputed name: their Service is gone",
            where)
    for o in corr.orphans:
        if o.mode != "iptables":
            continue  # nftables-mode kube-proxy deletes flushed chains a sync later
        yield _finding(
            "orphan-endpoint-chain", o.service,
            f"{o.service or 'unknown Service port'}: endpoint chain {o.chain}"
            f" (DNAT to {o.endpoint or '?'}){_at(o.location)} is not referenced by any "
            "Service chain", o.location)


def _port_checks(pc: PortCorrelation, even: dict[int, list[EndpointRef]]) -> Iterator[Finding]:
    a = pc.actual
    # A lean port's endpoint chains are the rules' own, in order (so no endpoint drift), or
    # the rules do not program it and it has no usable endpoint (see `LeanExpected`).
    e: Expected | LeanExpected | None = pc.lean if pc.lean is not None else pc.expected
    if e is None:
        if a is not None:
            yield _stale_service(pc, a)
        return
    reject = a.rejects[0] if a and a.rejects else None
    if not e.has_endpoints:
        by = f" by filter {reject.name} rule{_at(reject.location)}" if reject else ""
        yield _finding(
            "no-endpoints", pc.name,
            f"{pc.label} has no ready or serving-terminating endpoint: its traffic is "
            f"rejected{by}", reject.location if reject else None)
    if a is None or not a.programmed:
        if e.has_endpoints and isinstance(e, Expected) and e.chains:  # (a lean port has none here)
            why = "the ruleset has no entry rule or chain for it"
            if reject is not None:
                why = (f"filter {reject.name} rule{_at(reject.location)} rejects it as having "
                       "no endpoints")
            yield _finding(
                "service-without-rules", pc.name,
                f"{pc.label} has {len(e.endpoints)} endpoint(s) but {why}; expected chain(s) "
                f"{', '.join(e.chains.values())}",
                reject.location if reject else None)
    else:
        if isinstance(e, Expected):
            yield from _endpoint_drift(pc, e, a, local=False)
            if e.local_known:
                yield from _endpoint_drift(pc, e, a, local=True)
        yield from _policy_drift(pc, e, a)
        yield from _shares(pc, a.cluster, even)
        yield from _shares(pc, a.local, even)
    yield from _local_drops(pc, e, a)


def _stale_service(pc: PortCorrelation, a: Actual) -> Finding:
    chains = ", ".join(c.name for c in a.chains.values()) or "its entry rules"
    if not pc.service_exists:
        why = "whose Service no longer exists"
    else:
        why = "which the Service no longer offers (port removed, or now headless)"
    where = a.location
    return _finding(
        "stale-service-rules", pc.name,
        f"rules remain for Service port {pc.label}, {why}: {chains}{_at(where)}", where)


def _endpoint_drift(pc: PortCorrelation, e: Expected, a: Actual, local: bool) -> Iterator[Finding]:
    expected = e.local if local else e.cluster
    actual = a.local if local else a.cluster
    if len(expected) == len(actual) and all(x.chain == y.chain for x, y in zip(expected, actual, strict=True)):
        return  # the same chains in the same order: nothing missing, nothing stale
    which = "Local-policy" if local else "Cluster-policy"
    chain = _policy_chain(a, local)
    exp_chains = {r.chain: r for r in expected}
    act_chains = {r.chain: r for r in actual}
    offered = {r.chain: r for r in e.endpoints}
    for name, ref in act_chains.items():
        if name in exp_chains:
            continue
        if name in offered:
            why = "is listed but not usable (not ready, or not on this node)"
        else:
            why = "is not in the EndpointSlices"
        yield _finding(
            "stale-endpoint", pc.name,
            f"{pc.label}: {which} chain {chain} sends traffic to {ref.endpoint or '?'} "
            f"via {name}{_at(ref.location)}, which {why}", ref.location)
    for name, ref in exp_chains.items():
        if name in act_chains:
            continue
        node = f" on node {ref.node_name}" if ref.node_name else ""
        where = _chain_location(a, local)
        yield _finding(
            "missing-endpoint", pc.name,
            f"{pc.label}: endpoint {ref.endpoint}{node} is usable but {which} chain "
            f"{chain or '(none)'}{_at(where)} does not send traffic to it (expected {name})",
            where)


def _policy_chain(a: Actual, local: bool) -> str | None:
    for kind in (("svl", "local") if local else ("svc", "service")):
        if kind in a.chains:
            return a.chains[kind].name
    return None


def _chain_location(a: Actual, local: bool) -> str | None:
    for kind in (("svl", "local") if local else ("svc", "service")):
        if kind in a.chains:
            return a.chains[kind].location
    return a.location


def _policy_drift(pc: PortCorrelation, e: Expected | LeanExpected, a: Actual) -> Iterator[Finding]:
    if a.internal_target is not None and e.has_endpoints:
        actual_local = _is_local_chain(a.internal_target)
        if actual_local != e.internal_policy_local:
            loc = next((x.location for x in a.entries if x.kind == "clusterIP"), a.location)
            yield _finding(
                "traffic-policy-mismatch", pc.name,
                f"{pc.label}: internalTrafficPolicy is "
                f"{'Local' if e.internal_policy_local else 'Cluster'} but the cluster IP rule"
                f"{_at(loc)} jumps to {a.internal_target}", loc)
    ext = a.chains.get("ext") or a.chains.get("external")
    if ext is not None and e.externally_accessible and e.has_endpoints:
        # An EXT chain without a final handover belongs to eTP Local with no local endpoint.
        actual_local = a.external_target is None or _is_local_chain(a.external_target)
        if actual_local != e.external_policy_local:
            yield _finding(
                "traffic-policy-mismatch", pc.name,
                f"{pc.label}: externalTrafficPolicy is "
                f"{'Local' if e.external_policy_local else 'Cluster'} but chain {ext.name}"
                f"{_at(ext.location)} hands external traffic to "
                f"{a.external_target or 'no endpoint chain (Local policy, no local endpoint)'}",
                ext.location)


def _even_enough(probs: Sequence[Fraction], n: int) -> bool | None:
    """Whether every share is within n*QUANTUM of 1/n and they add up to 1 within it.

    In integers, for shares a / 2**e (what kube-proxy's statistic cascade gives):
    |a/2**e - 1/n| <= n/2**31 is |a*n - 2**e| * 2**31 <= n*n * 2**e. None when some
    share is not of that form.
    """
    top = 0
    for p in probs:
        den = p.denominator
        if den & (den - 1):
            return None
        top = max(top, den.bit_length() - 1)
    total = 0
    nn = n * n
    for p in probs:
        e = p.denominator.bit_length() - 1
        a = p.numerator
        if abs(a * n - (1 << e)) << 31 > nn << e:
            return False
        total += a << (top - e)
    # |1 - total/2**top| <= n/2**31
    return abs((1 << top) - total) << 31 <= n << top


def _shares(pc: PortCorrelation, refs: Sequence[EndpointRef],
            even: dict[int, list[EndpointRef]]) -> Iterator[Finding]:
    if even.get(id(refs)) is refs:
        return  # found even before the objects were read
    probs = [r.probability for r in refs]
    if not refs or any(p is None for p in probs):
        return
    n = len(refs)
    if _even_enough(probs, n):  # type: ignore[arg-type]
        return
    fair = Fraction(1, n)
    tolerance = n * QUANTUM
    total = sum((p for p in probs if p is not None), Fraction(0))
    worst = max(refs, key=lambda r: abs((r.probability or Fraction(0)) - fair))
    off = abs((worst.probability or Fraction(0)) - fair)
    if off <= tolerance and abs(1 - total) <= tolerance:
        return
    shares = ", ".join(f"{r.endpoint or r.chain} {float(r.probability or 0):.4f}" for r in refs)
    yield _finding(
        "uneven-probabilities", pc.name,
        f"{pc.label}: the statistic cascade gives {shares} (sum {float(total):.4f}) instead "
        f"of 1/{n} each; worst is {worst.chain}{_at(worst.location)}", worst.location)


def _local_drops(pc: PortCorrelation, e: Expected | LeanExpected, a: Actual | None) -> Iterator[Finding]:
    drop = a.local_drops[0] if a and a.local_drops else None
    drop_loc = drop.location if drop else None
    by = f" by filter {drop.name} rule{_at(drop_loc)}" if drop else ""
    node = "this node"
    kinds: list[str] = []
    if e.local_known:
        if e.internal_dropped:
            kinds.append("internalTrafficPolicy")
        if e.external_dropped:
            kinds.append("externalTrafficPolicy")
    elif drop_loc is not None:
        kinds.append("internal or external traffic policy")
    for kind in kinds:
        severity: Severity = "warning"
        steered = ""
        if kind == "externalTrafficPolicy" and e.health_check_node_port:
            # The load balancer's health check on this port fails on this node, so the
            # load balancer sends it nothing: the usual state of most nodes, not a fault.
            severity = "info"
            steered = (f"; the load balancer's health check (node port "
                       f"{e.health_check_node_port}) steers traffic away from this node")
        yield _finding(
            "local-policy-no-local-endpoints", pc.name,
            f"{pc.label}: {kind} is Local but {node} has none of its "
            f"{e.endpoint_count} endpoint(s), so that traffic is dropped{by}{steered}",
            drop_loc or (a.location if a else None), severity)


def _chain_owners(corr: Correlation) -> dict[str, str]:
    """Chain name -> Service port, for naming the owner of a rule-level finding."""
    owners: dict[str, str] = {}
    for pc in corr.ports:
        if pc.expected:
            for name in pc.expected.chains.values():
                owners[name] = pc.name
            for r in pc.expected.endpoints:
                owners[r.chain] = pc.name
        if pc.actual:
            for c in pc.actual.chains.values():
                owners[c.name] = pc.name
            for r in (*pc.actual.cluster, *pc.actual.local):
                owners[r.chain] = pc.name
    return owners


def _rule_problems(rs: Ruleset) -> Iterator[tuple[str, str, str, str | None]]:
    """Unknown rules and dangling jumps: (chain naming the owner, code, message, location)."""
    for t in rs.tables:
        for c in t.chains.values():
            for r in c.rules:
                if r.known:
                    continue
                what = ", ".join(sorted({x.name or "?" for x in r.unknown_exprs()}))
                yield (c.name, "unknown-rules",
                       f"{t.family.value} {t.name}/{c.name} rule {r.index}{_at(str(r.location))}: "
                       f"kpa cannot model {what}, so traces through it are approximate",
                       str(r.location))
    # Only the dangling jumps of `chain_problems`: lint reports neither unused chains nor loops.
    for node, refs in dangling_jumps(rs):
        family, table, chain = node
        loc = refs[0] if refs else None
        more = f" (and {len(refs) - 1} more)" if len(refs) > 1 else ""
        yield (chain, "dangling-jump",
               f"{family} {table}: rule{_at(loc)}{more} jumps to chain {chain}, which does "
               "not exist", loc)


def format_text(findings: Sequence[Finding]) -> str:
    """One line per finding, then a count per severity (see `kpa.render.findings` for more)."""
    lines = [f"{f.severity}: [{f.code}] {f.message}" for f in findings]
    counts = {s: sum(1 for f in findings if f.severity == s) for s in SEVERITY_RANK}
    lines.append(
        "no findings" if not findings
        else ", ".join(f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts.items() if n)
    )
    return "\n".join(lines) + "\n"


__all__ = [
    "CODES",
    "SEVERITY_RANK",
    "Finding",
    "RulesAhead",
    "Severity",
    "exit_status",
    "format_text",
    "ignore_annotations",
    "lint",
    "lint_correlation",
    "rules_ahead",
    "sort_findings",
]
