"""Compare two rule dumps of one cluster by what they do to packets, not by their text.

Every entry point of every Service port (ClusterIP, NodePort on the node's
addresses and on localhost, load-balancer IPs, external IPs) is traced in
both rulesets with the source address left open; the outcomes' source sets
are cut into "atoms" (address ranges every outcome treats alike) and, for
each atom inside a source class (pods on this node, pods elsewhere, outside
clients, the node itself), the two distributions over (verdict, DNAT
endpoint, masquerade) are compared. Probabilities are exact, but iptables
mode quantises them to 2^-31 and nftables numgen to 2^-32, so shares within
2^-30 of each other count as equal.
"""

from __future__ import annotations

import ipaddress
import os
import pickle
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from kpa.forked import ChildJob
from kpa.k8s.kubeproxy import service_ports
from kpa.k8s.naming import service_port_name
from kpa.k8s.objects import ClusterObjects, Node
from kpa.netfilter.domain import IntSet, describe_addresses, fraction_text, network_set
from kpa.netfilter.engine import Outcome, trace
from kpa.netfilter.index import address_value
from kpa.netfilter.model import Family, Ruleset, Verdict
from kpa.netfilter.packet import PacketSpec, TraceContext, node_local_addresses
from kpa.netfilter.reach import Comparison, Signatures, iptables_text, usable_rules

TOLERANCE = Fraction(1, 2**30)
PROTO_NUMBERS = {6: "tcp", 17: "udp", 132: "sctp"}
_FAMILIES = {4: Family.IPV4, 6: Family.IPV6}
_LOOPBACK = {4: ipaddress.ip_network("127.0.0.0/8"), 6: ipaddress.ip_network("::1/128")}
# kube-proxy nftables chain names: prefix-HASH8-ns/name/proto/port
_NFT_CHAIN_RE = re.compile(r"^(service|external|firewall)-[A-Z2-7]{8}-([^/]+)/([^/]+)/([a-z]+)/(.*)$")

Progress = Callable[[int, int], None]


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class EntryPoint:
    """One address:port a Service port is reachable on from this node's point of view."""

    service: str  # "ns/name:port" (kube-proxy's ServicePortName) or a probe label
    kind: str  # clusterIP, nodePort, localhostNodePort, loadBalancerIP, externalIP, or a probe kind
    address: str
    port: int
    protocol: str  # tcp, udp, sctp
    version: int  # 4 or 6

    @property
    def family(self) -> str:
        return f"ipv{self.version}"

    @property
    def label(self) -> str:
        host = f"[{self.address}]" if self.version == 6 else self.address
        return f"{self.kind} {host}:{self.port}/{self.protocol}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "address": self.address, "port": self.port,
                "protocol": self.protocol, "family": self.family}


@dataclass(frozen=True, order=True)
class OutcomeKey:
    """What a packet's fate is reduced to for comparison."""

    verdict: str
    delivery: str
    dnat: str
    masquerade: bool
    snat: str
    # Conditions on fields other than the source address (e.g. "out-iface = lo").
    conditions: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.verdict != "ACCEPT":
            text = self.verdict
        elif self.dnat:
            text = f"ACCEPT, DNAT to {self.dnat}"
        else:
            text = f"ACCEPT ({self.delivery}), no DNAT"
        if self.masquerade:
            text += ", masquerade"
        if self.snat:
            text += f", SNAT to {self.snat}"
        if self.conditions:
            text += f" [{'; '.join(self.conditions)}]"
        return text


Dist = dict[OutcomeKey, Fraction]


@dataclass
class SourceDiff:
    """One group of sources for which the two rulesets disagree."""

    source: str  # source class, e.g. "pods on this node"
    addresses: list[str] | None  # the part of the class concerned; None: all of it
    reasons: list[str]
    a: Dist
    b: Dist

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "addresses": self.addresses,
            "reasons": self.reasons,
            "a": _dist_json(self.a),
            "b": _dist_json(self.b),
        }


@dataclass
class EntryDiff:
    entry: EntryPoint
    sources: list[SourceDiff]

    def to_json(self) -> dict[str, Any]:
        return {"entry": self.entry.to_json(), "sources": [s.to_json() for s in self.sources]}


@dataclass
class ServicePortDiff:
    service: str
    protocol: str
    family: str
    entries: list[EntryPoint] = field(default_factory=list)
    differences: list[EntryDiff] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return not self.differences

    def to_json(self) -> dict[str, Any]:
        return {
            "service_port": self.service,
            "protocol": self.protocol,
            "family": self.family,
            "same": self.same,
            "entry_points": [e.to_json() for e in self.entries],
            "differences": [d.to_json() for d in self.differences],
        }


@dataclass
class DiffReport:
    ports: list[ServicePortDiff]
    source_classes: list[str]
    warnings: list[str] = field(default_factory=list)
    # Outcomes that rest on rules kpa could not evaluate, per side.
    uncertain: list[str] = field(default_factory=list)
    # What A and B are, as the user named them.
    a_name: str = "A"
    b_name: str = "B"

    @property
    def identical(self) -> bool:
        return all(p.same for p in self.ports)

    @property
    def exit_code(self) -> int:
        return 0 if self.identical else 1

    @property
    def differing(self) -> list[ServicePortDiff]:
        return [p for p in self.ports if not p.same]

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a_name,
            "b": self.b_name,
            "identical": self.identical,
            "tolerance": f"1/{TOLERANCE.denominator}",
            "compared": {
                "service_ports": len(self.ports),
                "entry_points": sum(len(p.entries) for p in self.ports),
                "source_classes": self.source_classes,
            },
            "differences": [p.to_json() for p in self.differing],
            "same": [f"{p.service} ({p.protocol}, {p.family})" for p in self.ports if p.same],
            "warnings": self.warnings,
            "uncertain": self.uncertain,
        }


def _dist_json(d: Dist) -> list[dict[str, Any]]:
    return [
        {"verdict": k.verdict, "delivery": k.delivery or None, "dnat": k.dnat or None,
         "masquerade": k.masquerade, "snat": k.snat or None, "conditions": list(k.conditions),
         "probability": float(p), "probability_exact": fraction_text(p)}
        for k, p in sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))
    ]


# ---------------------------------------------------------------- source classes


@dataclass(frozen=True)
class SourceClass:
    name: str
    origin: str  # prerouting or output
    addresses: IntSet


def _net(text: str) -> tuple[int, IntSet] | None:
    try:
        n = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    return n.version, network_set(n)


def _this_node(objects: ClusterObjects | None, node_ips: list[str]) -> Node | None:
    if objects is None:
        return None
    for ip in node_ips:
        node = objects.node_by_ip(ip)
        if node is not None:
            return node
    return None


def source_classes(
    objects: ClusterObjects | None, node_ips: list[str], version: int, loopback_dst: bool
) -> list[SourceClass]:
    """The disjoint source classes a packet to one entry point is compared for.

    Sources that are this node's own addresses only reach the node from
    itself, so they form the "node itself" class (origin output) and are cut
    out of the remote classes (the kernel drops such packets as martians).
    """
    local = node_local_addresses(node_ips).get(version, IntSet())
    if loopback_dst:
        # Only the node itself can talk to its loopback address.
        return [SourceClass("the node itself", "output", network_set(_LOOPBACK[version]))]
    everything = IntSet.range(0, (1 << (32 if version == 4 else 128)) - 1)
    own = IntSet()
    for ip in node_ips:
        a = ipaddress.ip_address(ip)
        if a.version == version:
            own = own | IntSet.single(int(a))
    classes: list[SourceClass] = []
    remaining = everything - local
    node = _this_node(objects, node_ips)
    if objects is not None and node is not None:
        mine, others = IntSet(), IntSet()
        for n in objects.nodes:
            for cidr in n.pod_cidrs:
                parsed = _net(cidr)
                if parsed and parsed[0] == version:
                    if n.name == node.name:
                        mine = mine | parsed[1]
                    else:
                        others = others | parsed[1]
        mine = mine & remaining
        others = (others - mine) & remaining
        if mine:
            classes.append(SourceClass("pods on this node", "prerouting", mine))
        if others:
            classes.append(SourceClass("pods on other nodes", "prerouting", others))
        remaining = remaining - mine - others
        classes.append(SourceClass("clients outside the pod network", "prerouting", remaining))
    else:
        classes.append(SourceClass("remote sources", "prerouting", remaining))
    if own:
        classes.append(SourceClass("the node itself", "output", own))
    return classes


# ---------------------------------------------------------------- entry points


def _addr(value: int, version: int) -> str:
    return str(ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value))


def _node_ips_of(node_ips: list[str], version: int) -> list[str]:
    return [ip for ip in node_ips if ipaddress.ip_address(ip).version == version]


def _nodeport_entries(name: str, proto: str, port: int, version: int, node_ips: list[str]) -> list[EntryPoint]:
    out = [EntryPoint(name, "nodePort", ip, port, proto, version) for ip in _node_ips_of(node_ips, version)]
    if version == 4:
        out.append(EntryPoint(name, "localhostNodePort", "127.0.0.1", port, proto, version))
    return out


def entry_points_from_objects(objects: ClusterObjects, node_ips: list[str], versions: set[int]) -> list[EntryPoint]:
    out: list[EntryPoint] = []
    # Addresses repeat (load balancers share them, every NodePort lists the node's): each is read once.
    parsed: dict[str, tuple[int, str]] = {}

    def addr(text: str) -> tuple[int, str]:
        got = parsed.get(text)
        if got is None:
            a = ipaddress.ip_address(text)
            got = parsed[text] = (a.version, str(a))
        return got

    by_version = {v: [ip for ip in node_ips if addr(ip)[0] == v] for v in (4, 6)}
    for svc in objects.services:
        if svc.headless or svc.type == "ExternalName" or not svc.cluster_ips:
            continue
        for sp in svc.ports:
            name = service_port_name(svc.namespace, svc.name, sp.name)
            proto = sp.protocol.lower()
            for cip in svc.cluster_ips:
                v, text = addr(cip)
                if v not in versions:
                    continue
                out.append(EntryPoint(name, "clusterIP", text, sp.port, proto, v))
                if sp.node_port and svc.type in ("NodePort", "LoadBalancer"):
                    out.extend(EntryPoint(name, "nodePort", ip, sp.node_port, proto, v) for ip in by_version[v])
                    if v == 4:
                        out.append(EntryPoint(name, "localhostNodePort", "127.0.0.1", sp.node_port, proto, v))
                for kind, ips in (("loadBalancerIP", svc.load_balancer_ips), ("externalIP", svc.external_ips)):
                    for ip in ips:
                        av, at = addr(ip)
                        if av == v:
                            out.append(EntryPoint(name, kind, at, sp.port, proto, v))
    return out


def _views_entries(rs: Ruleset, node_ips: list[str]) -> list[EntryPoint]:
    """Entry points of iptables-mode rules, read from KUBE-SERVICES/KUBE-NODEPORTS."""
    out: list[EntryPoint] = []
    for view in service_ports(rs):
        version = 6 if view.family == "ipv6" else 4
        proto = (view.protocol or "tcp").lower()
        for e in view.entries:
            if e.port is None:
                continue
            name = view.name or ""
            if e.address is None:
                out.extend(_nodeport_entries(name, proto, e.port, version, node_ips))
            else:
                out.append(EntryPoint(name, e.kind, e.address, e.port, proto, version))
    return out


def _nft_name(chain: str | None) -> str:
    m = _NFT_CHAIN_RE.match(chain or "")
    return service_port_name(m.group(2), m.group(3), m.group(5)) if m else ""


def _nft_entries(rs: Ruleset, node_ips: list[str]) -> list[EntryPoint]:
    """Entry points of nftables-mode rules, read from kube-proxy's verdict maps."""
    out: list[EntryPoint] = []
    for t in rs.tables:
        if t.name != "kube-proxy" or t.family not in (Family.IPV4, Family.IPV6):
            continue
        version = t.family.version
        cluster_ips = IntSet()
        for (key,) in (t.sets["cluster-ips"].elements if "cluster-ips" in t.sets else []):
            cluster_ips = cluster_ips | key
        firewalled = IntSet()
        for elem in (t.sets["firewall-ips"].elements if "firewall-ips" in t.sets else []):
            firewalled = firewalled | elem[0]
        for set_name in ("service-ips", "no-endpoint-services", "firewall-ips"):
            s = t.sets.get(set_name)
            if s is None:
                continue
            for elem, value in zip(s.elements, s.values or [None] * len(s.elements), strict=False):
                addr, proto, port = (x.single_value() if isinstance(x, IntSet) else None for x in elem[:3])
                if addr is None or proto not in PROTO_NUMBERS or port is None:
                    continue
                chain = value.chain if isinstance(value, Verdict) else None
                kind = ("clusterIP" if addr in cluster_ips else
                        "loadBalancerIP" if addr in firewalled else "externalIP")
                out.append(EntryPoint(_nft_name(chain), kind, _addr(addr, version), port,
                                      PROTO_NUMBERS[proto], version))
        for set_name in ("service-nodeports", "no-endpoint-nodeports"):
            s = t.sets.get(set_name)
            if s is None:
                continue
            for elem, value in zip(s.elements, s.values or [None] * len(s.elements), strict=False):
                proto, port = (x.single_value() if isinstance(x, IntSet) else None for x in elem[:2])
                if proto not in PROTO_NUMBERS or port is None:
                    continue
                chain = value.chain if isinstance(value, Verdict) else None
                out.extend(_nodeport_entries(_nft_name(chain), PROTO_NUMBERS[proto], port, version, node_ips))
    return out


def entry_points_from_rules(rulesets: Iterable[Ruleset], node_ips: list[str]) -> list[EntryPoint]:
    """The union of entry points kube-proxy programmed in any of `rulesets`.

    The same address:port found on both sides is one entry point; its name
    and kind come from whichever side knows them (nftables maps keep no
    comments, so a port without endpoints has no name there).
    """
    merged: dict[tuple[int, str, str, int], EntryPoint] = {}
    for rs in rulesets:
        for e in (*_views_entries(rs, node_ips), *_nft_entries(rs, node_ips)):
            key = (e.version, e.protocol, e.address, e.port)
            old = merged.get(key)
            if old is None or (not old.service and e.service):
                merged[key] = e
    return [
        e if e.service else EntryPoint(f"({e.label})", e.kind, e.address, e.port, e.protocol, e.version)
        for e in merged.values()
    ]


def probe_entry_points(entries: list[EntryPoint], service_cidrs: list[str] | None) -> list[EntryPoint]:
    """Traffic to ClusterIP space no Service port owns: a free port on a ClusterIP, and a free ClusterIP.

    kube-proxy's nftables mode rejects the first and drops the second (when it
    knows the service CIDR); iptables mode has no rule for either.
    """
    out: list[EntryPoint] = []
    for version in (4, 6):
        cips = [e for e in entries if e.kind == "clusterIP" and e.version == version]
        if not cips:
            continue
        used = {int(ipaddress.ip_address(e.address)) for e in cips}
        first = min(cips, key=lambda e: (int(ipaddress.ip_address(e.address)), e.port))
        ports = {e.port for e in cips if e.address == first.address}
        free_port = next(p for p in range(1, 65536) if p not in ports)
        out.append(EntryPoint(f"(unused port of ClusterIP {first.address})", "clusterIPUnusedPort",
                              first.address, free_port, "tcp", version))
        candidate: int | None = None
        for cidr in service_cidrs or []:
            parsed = _net(cidr)
            if parsed and parsed[0] == version:
                lo, hi = parsed[1].min(), max(h for _, h in parsed[1])
                candidate = next((a for a in range(max(used) + 1, hi) if a not in used), None)
                if candidate is None:
                    candidate = next((a for a in range(lo + 1, hi) if a not in used), None)
        if candidate is None and not service_cidrs:
            # Without the service CIDR, the address after the highest ClusterIP is the best
            # guess at one inside it.
            candidate = max(used) + 1
        if candidate is not None:
            out.append(EntryPoint("(unallocated ClusterIP)", "unallocatedClusterIP",
                                  _addr(candidate, version), 80, "tcp", version))
    return out


# ---------------------------------------------------------------- tracing and comparing


def _key(o: Outcome) -> OutcomeKey:
    return OutcomeKey(
        o.verdict, o.delivery or "", o.dnat_text() or "", o.state.masquerade, o.snat_text() or "",
        tuple(c for c in o.conditions if not c.startswith("src ")),
    )


def _atoms(universe: IntSet, cuts: Iterable[IntSet]) -> list[IntSet]:
    atoms = [universe] if universe else []
    for cut in cuts:
        nxt: list[IntSet] = []
        for a in atoms:
            inside, outside = a & cut, a - cut
            nxt.extend(x for x in (inside, outside) if x)
        atoms = nxt
    return atoms


Keyed = list[tuple[IntSet, OutcomeKey, Fraction]]


def _keyed(outcomes: list[Outcome]) -> Keyed:
    """Each outcome's sources, key and probability, worked out once for every atom."""
    return [(o.state.domains["src"], _key(o), o.probability) for o in outcomes]


def _dist(outcomes: Keyed, atom: IntSet) -> Dist:
    """The distribution over outcome keys of the sources in `atom`, an atom of these outcomes' sources.

    The atom lies wholly inside or wholly outside each outcome's sources (it was cut by
    them, see _atoms), so whether one of its addresses is a source tells which.
    """
    d: Dist = {}
    probe = atom.min()
    for src, k, p in outcomes:
        if probe in src:
            d[k] = d[k] + p if k in d else p
    return d


def close(a: Fraction, b: Fraction) -> bool:
    return a == b or abs(a - b) <= TOLERANCE


def same_dist(a: Dist, b: Dist) -> bool:
    return all(close(a.get(k, Fraction(0)), b.get(k, Fraction(0))) for k in a.keys() | b.keys())


_SHARES: dict[Fraction, str] = {}


def fmt_share(p: Fraction) -> str:
    """A probability as a short fraction when it is one within the tolerance, else a decimal."""
    got = _SHARES.get(p)
    if got is None:
        simple = p.limit_denominator(1000)
        if close(simple, p):
            got = "all" if simple == 1 else "none" if simple == 0 else f"{simple.numerator}/{simple.denominator}"
        else:
            got = f"{float(p):.6f}"
        if len(_SHARES) < 65536:
            _SHARES[p] = got
    return got


def _fate(d: Dist) -> str:
    """One phrase for what a ruleset does with the packets of a distribution."""
    parts: list[str] = []
    groups: dict[str, Fraction] = {}
    endpoints = sorted({k.dnat for k in d if k.verdict == "ACCEPT" and k.dnat})
    for k, p in d.items():
        if k.verdict == "DROP":
            g = "drops"
        elif k.verdict == "REJECT":
            g = "rejects"
        elif k.dnat:
            g = (f"sends to endpoint {endpoints[0]}" if len(endpoints) == 1
                 else f"load-balances over {len(endpoints)} endpoints")
        else:
            g = {"local": "delivers to the node itself without DNAT",
                 "forward": "forwards without DNAT", "output": "sends out without DNAT"}.get(
                k.delivery, "accepts without DNAT")
        groups[g] = groups.get(g, Fraction(0)) + p
    for g, p in sorted(groups.items(), key=lambda kv: -kv[1]):
        parts.append(g if close(p, Fraction(1)) else f"{g} ({fmt_share(p)})")
    return " and ".join(parts) if parts else "has no outcome"


def _masq_share(d: Dist) -> Fraction:
    return sum((p for k, p in d.items() if k.verdict == "ACCEPT" and k.masquerade), Fraction(0))


_REASONS: dict[tuple[Any, ...], list[str]] = {}


def explain(a: Dist, b: Dist, source: str) -> list[str]:
    """Human reasons for the difference between two distributions.

    The same pair of distributions (in the same order) recurs across atoms and
    entry points; its reasons are worked out once (`_explain` does the work).
    """
    key = (tuple(a.items()), tuple(b.items()), source)
    got = _REASONS.get(key)
    if got is None:
        got = _explain(a, b, source)
        if len(_REASONS) < 65536:
            _REASONS[key] = got
    return list(got)


def _explain(a: Dist, b: Dist, source: str) -> list[str]:
    out: list[str] = []
    ea: dict[str, Fraction] = {}
    eb: dict[str, Fraction] = {}
    for d, e in ((a, ea), (b, eb)):
        for k, p in d.items():
            if k.verdict == "ACCEPT" and k.dnat:
                e[k.dnat] = e.get(k.dnat, Fraction(0)) + p
    fate_a, fate_b = _fate(a), _fate(b)
    if ea and eb:
        for ep in sorted(ea.keys() - eb.keys()):
            out.append(f"endpoint {ep} only in A")
        for ep in sorted(eb.keys() - ea.keys()):
            out.append(f"endpoint {ep} only in B")
        for ep in sorted(ea.keys() & eb.keys()):
            if not close(ea[ep], eb[ep]):
                out.append(f"endpoint {ep} gets {fmt_share(ea[ep])} in A, {fmt_share(eb[ep])} in B")
        rest_a = {k: p for k, p in a.items() if not (k.verdict == "ACCEPT" and k.dnat)}
        rest_b = {k: p for k, p in b.items() if not (k.verdict == "ACCEPT" and k.dnat)}
        if not same_dist(rest_a, rest_b):
            out.append(f"A {fate_a}, B {fate_b}")
    elif fate_a != fate_b:
        out.append(f"A {fate_a}, B {fate_b}")
    ma, mb = _masq_share(a), _masq_share(b)
    if not close(ma, mb):
        if ma == 0:
            out.append(f"B masquerades traffic from {source}, A does not")
        elif mb == 0:
            out.append(f"A masquerades traffic from {source}, B does not")
        else:
            out.append(f"A masquerades {fmt_share(ma)} of the traffic from {source}, B {fmt_share(mb)}")
    if not out:
        # Same fate in words, different in detail (e.g. delivery, reject type, conditions).
        only_a = sorted(k.describe() for k in a.keys() - b.keys())
        only_b = sorted(k.describe() for k in b.keys() - a.keys())
        if only_a or only_b:
            out.append(f"A: {'; '.join(only_a) or '-'} / B: {'; '.join(only_b) or '-'}")
        else:
            out.append("outcome shares differ")
    return out


def _versions(rs: Ruleset) -> set[int]:
    out: set[int] = set()
    for fam in rs.families():
        if fam in (Family.IPV4, Family.INET):
            out.add(4)
        if fam in (Family.IPV6, Family.INET):
            out.add(6)
    return out


class _Tracer:
    def __init__(self, rs: Ruleset, node_ips: list[str], side: str) -> None:
        self.rs = rs
        self.node_ips = node_ips
        self.side = side
        self.uncertain: list[str] = []
        self.warnings: list[str] = []

    def run(self, e: EntryPoint, origin: str) -> list[Outcome]:
        spec = PacketSpec(family=_FAMILIES[e.version], src=None, dst=e.address, proto=e.protocol,
                          dport=e.port, origin=origin)
        ctx = TraceContext(local=node_local_addresses(self.node_ips))
        result = trace(self.rs, spec, ctx)
        if result.truncated:
            self.warnings.append(f"{self.side}: trace of {e.label} ({origin}) was truncated")
        self.warnings.extend(f"{self.side}: {w}" for w in result.warnings)
        for o in result.outcomes:
            for a in o.state.assumptions:
                self.uncertain.append(f"{self.side}: {e.label}: {a.describe()}")
        return result.outcomes


def compare_entry(
    e: EntryPoint,
    ta: _Tracer,
    tb: _Tracer,
    objects: ClusterObjects | None,
    node_ips: list[str],
    classes: dict[tuple[int, bool], list[SourceClass]] | None = None,
) -> list[SourceDiff]:
    """Where A and B differ for one entry point; `classes` caches source classes across calls."""
    loopback = ipaddress.ip_address(e.address) in _LOOPBACK[e.version]
    diffs: list[SourceDiff] = []
    traced: dict[str, tuple[Keyed, Keyed]] = {}
    if classes is None:
        classes = {}
    key = (e.version, loopback)
    if key not in classes:
        classes[key] = source_classes(objects, node_ips, e.version, loopback)
    for sc in classes[key]:
        if sc.origin not in traced:
            traced[sc.origin] = (_keyed(ta.run(e, sc.origin)), _keyed(tb.run(e, sc.origin)))
        oa, ob = traced[sc.origin]
        cuts = list(dict.fromkeys(src for src, _, _ in (*oa, *ob)))
        # Atoms that differ for the same reasons are one group; its distributions shown
        # are those of its largest atom.
        groups: dict[tuple[str, ...], tuple[IntSet, Dist, Dist, int]] = {}
        for atom in _atoms(sc.addresses, cuts):
            da, db = _dist(oa, atom), _dist(ob, atom)
            if same_dist(da, db):
                continue
            gk = tuple(explain(da, db, sc.name))
            prev = groups.get(gk)
            if prev is None:
                groups[gk] = (atom, da, db, atom.size())
            elif atom.size() > prev[3]:
                groups[gk] = (prev[0] | atom, da, db, atom.size())
            else:
                groups[gk] = (prev[0] | atom, prev[1], prev[2], prev[3])
        for where, da, db, _ in groups.values():
            addresses = None if where == sc.addresses else describe_addresses(where, e.version)
            diffs.append(SourceDiff(sc.name, addresses, [], da, db))
    return _merge_classes(diffs)


def _merge_classes(diffs: list[SourceDiff]) -> list[SourceDiff]:
    """Whole source classes that differ in the same way are reported once, together."""
    merged: dict[tuple[Any, ...], SourceDiff] = {}
    out: list[SourceDiff] = []
    for d in diffs:
        if d.addresses is not None:
            out.append(d)
            continue
        gk = (tuple(sorted(d.a.items())), tuple(sorted(d.b.items())))
        prev = merged.get(gk)
        if prev is None:
            merged[gk] = d
            out.append(d)
        else:
            prev.source = f"{prev.source}, {d.source}"
    for d in out:
        d.reasons = explain(d.a, d.b, d.source)
    return out


def has_kube_proxy_rules(rs: Ruleset) -> bool:
    """Whether a dump holds kube-proxy's chains (iptables mode) or its nftables table."""
    return any((t.name == "nat" and "KUBE-SERVICES" in t.chains) or t.name == "kube-proxy" for t in rs.tables)


def has_session_affinity(rs: Ruleset) -> bool:
    """Whether kube-proxy wrote session-affinity rules (recent lists, or nftables affinity sets)."""
    for t in rs.tables:
        if t.name == "kube-proxy" and any(n.startswith("affinity-") for n in t.sets):
            return True
        if t.name == "nat":
            for c in t.chains.values():
                if c.name.startswith(("KUBE-SVC-", "KUBE-SVL-")) and any("--rcheck" in r.text for r in c.rules):
                    return True
    return False


def side_warnings(a: Ruleset, b: Ruleset, a_name: str, b_name: str) -> list[str]:
    """What the comparison cannot see: a side without kube-proxy rules, paths not traced."""
    out: list[str] = []
    for side, name, rs in (("A", a_name, a), ("B", b_name, b)):
        if not has_kube_proxy_rules(rs):
            out.append(f"{side} ({name}) has no kube-proxy rules (no nat KUBE-SERVICES chain, no kube-proxy table)")
    if has_session_affinity(a) or has_session_affinity(b):
        out.append("session affinity was not compared: only clients not yet in an affinity list were traced")
    return out


def _same_traces(a: Ruleset, b: Ruleset, walk: bool = False,
                 usable: tuple[bool | None, bool | None] = (None, None)) -> Callable[[EntryPoint], bool] | None:
    """A test telling entry points whose traces read the same rules in `a` and `b`, or None.

    kpa.netfilter.reach.Comparison decides; `walk=True` walks A's rules for
    each entry point instead (Signatures.same, slower, never more often "same").
    `usable`: what reach.usable_rules says of A, and whether B is iptables text,
    where already known or assumed (the answer then holds only if the assumption does).

    Only A is checked for loops and deep nesting: an entry point is "same" only if
    every chain its trace can read in B has A's rules (and so A's jumps), so the part
    of B a skipped trace would read is loop-free and shallow when all of A is.
    """
    sa = Signatures(a, usable[0])
    sb = Signatures(b, iptables_text(b) if usable[1] is None else usable[1])
    if not (sa.usable and sb.usable) or sa.context() != sb.context():
        return None
    addresses: dict[str, int] = {}

    def dst_of(e: EntryPoint) -> int:
        value = addresses.get(e.address)
        if value is None:
            value = address_value(e.address, "32" if e.version == 4 else "128")
            if value is None:
                value = int(ipaddress.ip_address(e.address))
            addresses[e.address] = value
        return value

    if not walk:
        comparison = Comparison(sa, sb)
        return lambda e: comparison.same(_FAMILIES[e.version], dst_of(e), e.port)

    bases: dict[Family, bool] = {}

    def same(e: EntryPoint) -> bool:
        family, dst = _FAMILIES[e.version], dst_of(e)
        if family not in bases:
            ba, bb = sa.base(family), sb.base(family)
            bases[family] = ba is not None and bb is not None and ba.seen == bb.seen
        if not bases[family]:
            return False
        return sa.same(sb, family, dst, e.port)

    return same


class _Part:
    """What comparing some Service ports found: differences and, per entry point, notes of each side."""

    def __init__(self) -> None:
        # (position of the Service port, of the entry point in it, how the sources differ)
        self.differences: list[tuple[int, int, list[SourceDiff]]] = []
        # (the same positions) -> A's and B's warnings, A's and B's uncertain outcomes
        self.notes: dict[tuple[int, int], tuple[list[str], list[str], list[str], list[str]]] = {}
        self.ports: list[int] = []  # the positions of the Service ports compared
        self.traced = 0  # entry points traced rather than skipped
        self.skipped = False  # in a child: whether it skipped entry points it took to read the same rules


# Below this many entry points, a second process costs more than it saves.
SPLIT_ENTRIES = 2000


def _split(fork: bool | None, entries: int) -> bool:
    """Whether to compare some of the Service ports in a second process."""
    if fork is not None:
        return fork and _can_fork()
    if entries < SPLIT_ENTRIES or not _can_fork():
        return False
    from kpa.k8s.background import spare_core

    return spare_core()


class _Claims:
    """Runs of Service ports handed out one at a time to whichever process asks first.

    A pipe holds one byte per run. Reading one byte from a pipe is atomic, so
    each run goes to exactly one of the processes that read it; the faster one
    takes more runs. A Service port's entry points stay together in a run (they
    reach the same chains, which each process reads once), and so do
    neighbouring ports (often one Service's).
    """

    RUNS = 64

    def __init__(self, ports: int) -> None:
        n = max(1, min(ports, self.RUNS))
        self.bounds = [ports * c // n for c in range(n + 1)]
        r, w = os.pipe()
        try:
            os.write(w, bytes(range(n)))
        finally:
            os.close(w)
        self.fd = r

    def ports(self) -> Iterator[int]:
        """The ports of each run this process claims, until none is left."""
        while got := os.read(self.fd, 1):
            yield from range(self.bounds[got[0]], self.bounds[got[0] + 1])

    def close(self) -> None:
        os.close(self.fd)


def _received(data: bytes | None, theirs: list[int]) -> _Part | None:
    """What the child sent, if it compared exactly the ports this process did not.

    None otherwise (whatever went wrong in the child): those ports are then compared here,
    with the same answer.
    """
    got = pickle.loads(data) if data is not None else None
    return got if isinstance(got, _Part) and sorted(got.ports) == theirs else None


def _merge(order: list[ServicePortDiff], parts: list[_Part]) -> list[list[str]]:
    """Put the parts' differences in their Service ports; A's and B's warnings, A's and B's uncertain
    outcomes, each in entry order, as one process comparing every entry point in turn finds them."""
    notes: dict[tuple[int, int], tuple[list[str], list[str], list[str], list[str]]] = {}
    for part in parts:
        for k, j, sources in part.differences:
            order[k].differences.append(EntryDiff(order[k].entries[j], sources))
        notes.update(part.notes)
    in_order = [notes[key] for key in sorted(notes)]
    return [[x for n in in_order for x in n[i]] for i in range(4)]


def _can_fork() -> bool:
    """Linux, a second CPU, and no other threads (forking with threads is unsafe)."""
    threading = sys.modules.get("threading")
    return (sys.platform == "linux" and hasattr(os, "fork") and len(os.sched_getaffinity(0)) > 1
            and (threading is None or threading.active_count() == 1))


def diff_rulesets(
    a: Ruleset,
    b: Ruleset,
    objects: ClusterObjects | None,
    node_ips: list[str],
    progress: Progress | None = None,
    service_cidrs: list[str] | None = None,
    probes: bool = True,
    scope: Callable[[str], bool] | None = None,
    shortcut: bool = True,
    fork: bool | None = False,
) -> DiffReport:
    """Compare what `a` and `b` do to traffic for every Service port entry point.

    `node_ips` are the addresses of the node both dumps come from (NodePorts
    are traced on them; they are the node's own source addresses).
    `service_cidrs`, when known, place the unallocated-ClusterIP probe.
    `probes=False` compares Service ports only. `scope`, given a Service port name
    (``ns/name:port``), says whether to compare it; with a scope there are no probes.

    With `shortcut` (the default), an entry point whose traces would read the
    same rules in A and B (see kpa.netfilter.reach) is not traced: its
    outcomes are the same on both sides, so it has no difference.
    `shortcut=False` traces every entry point; the report is the same.

    `fork=True` compares every other Service port in a forked child process
    (on Linux), `None` does so when a core is idle and there are many entry
    points; the report is the same.
    """
    versions = _versions(a) | _versions(b)
    warnings: list[str] = []
    if objects is not None:
        entries = entry_points_from_objects(objects, node_ips, versions)
    else:
        entries = entry_points_from_rules((a, b), node_ips)
        entries = [e for e in entries if e.version in versions]
    if not node_ips:
        warnings.append("no node IPs given: NodePorts on the node's addresses were not compared")
    if scope is not None:
        entries = [e for e in entries if scope(e.service)]
    elif probes:
        entries.extend(probe_entry_points(entries, service_cidrs))
    ports: dict[tuple[str, str, str], ServicePortDiff] = {}
    for e in entries:
        key = (e.service, e.protocol, e.family)
        if key not in ports:
            ports[key] = ServicePortDiff(e.service, e.protocol, e.family)
        ports[key].entries.append(e)
    ta, tb = _Tracer(a, node_ips, "A"), _Tracer(b, node_ips, "B")
    classes: dict[tuple[int, bool], list[SourceClass]] = {}
    order = list(ports.values())
    total = len(entries)

    def compare(part: Iterable[int], same: Callable[[EntryPoint], bool] | None, progress: Progress | None) -> _Part:
        """Every entry point of the Service ports at these positions of `order`, compared."""
        out = _Part()
        done = 0
        for k in part:
            out.ports.append(k)
            for j, e in enumerate(order[k].entries):
                marks = (len(ta.warnings), len(tb.warnings), len(ta.uncertain), len(tb.uncertain))
                if same is not None and same(e):
                    sources = []
                else:
                    sources = compare_entry(e, ta, tb, objects, node_ips, classes)
                    out.traced += 1
                if sources:
                    out.differences.append((k, j, sources))
                if marks != (len(ta.warnings), len(tb.warnings), len(ta.uncertain), len(tb.uncertain)):
                    out.notes[(k, j)] = (ta.warnings[marks[0]:], tb.warnings[marks[1]:],
                                         ta.uncertain[marks[2]:], tb.uncertain[marks[3]:])
                done += 1
                if progress is not None:
                    # With a child comparing the other ports, this process's progress stands for both.
                    progress(min(total, done * scale), total)
        return out

    every = range(len(order))
    scale = 1
    job: ChildJob | None = None
    claims: _Claims | None = None
    if _split(fork, total):
        # The child takes A to pass the check for loops and deep nesting (reach.usable_rules), which this
        # process makes meanwhile; ports compared on an assumption that proves false are compared again.
        text_a, text_b = iptables_text(a), iptables_text(b)
        try:
            claims = _Claims(len(order))
        except OSError:
            claims = None
        run = claims

        def child() -> list[bytes] | None:
            if run is None:
                return None
            same = _same_traces(a, b, usable=(text_a, text_b)) if shortcut else None
            part = compare(run.ports(), same, None)
            part.skipped = same is not None
            return [pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL)]

        if claims is not None:
            job = ChildJob(child)
            if not job.started:
                job = None
    if job is None or claims is None:
        if claims is not None:
            claims.close()
        parts = [compare(every, _same_traces(a, b) if shortcut else None, progress)]
    else:
        scale = 2
        ua = usable_rules(a) if shortcut else False
        same = _same_traces(a, b, usable=(ua, text_b)) if shortcut else None
        try:
            parts = [compare(claims.ports(), same, progress)]
        finally:
            claims.close()
        mine = parts[0].ports
        theirs = sorted(set(every) - set(mine))
        got = _received(job.collect(), theirs)
        if got is not None and got.skipped and not ua:
            got = None  # the child skipped entry points, but A has a loop or nests too deep
        parts.append(got if got is not None else compare(theirs, same, None))
        if progress is not None:
            progress(total, total)
    side_notes = _merge(order, parts)
    example = source_classes(objects, node_ips, 4 if 4 in versions or not versions else 6, False)
    return DiffReport(
        ports=sorted(ports.values(), key=lambda p: (p.service.startswith("("), p.service, p.protocol, p.family)),
        source_classes=[c.name for c in example],
        warnings=[*warnings, *dict.fromkeys(side_notes[0] + side_notes[1])],
        uncertain=list(dict.fromkeys(side_notes[2] + side_notes[3])),
    )


# ---------------------------------------------------------------- rendering


def render_text(report: DiffReport) -> str:
    lines: list[str] = [f"A: {report.a_name}", f"B: {report.b_name}"]
    differing = report.differing
    n_entries = sum(len(p.entries) for p in report.ports)
    lines.append(
        f"compared {len(report.ports)} Service ports ({n_entries} entry points) "
        f"from: {', '.join(report.source_classes)}"
    )
    if not differing:
        lines.append("A and B behave the same.")
    for p in differing:
        lines.append("")
        lines.append(f"{p.service} ({p.protocol}, {p.family})")
        for d in p.differences:
            lines.append(f"  {d.entry.label}")
            for s in d.sources:
                where = f" {', '.join(s.addresses)}" if s.addresses else ""
                lines.append(f"    from {s.source}{where}:")
                lines.extend(f"      - {r}" for r in s.reasons)
                for side, dist in (("A", s.a), ("B", s.b)):
                    shown = "; ".join(f"{k.describe()} ({fmt_share(v)})"
                                      for k, v in sorted(dist.items(), key=lambda kv: (-kv[1], kv[0])))
                    lines.append(f"        {side}: {shown}")
    same = [p for p in report.ports if p.same]
    if differing and same:
        lines.append("")
        lines.append(f"same in A and B: {', '.join(f'{p.service} ({p.protocol}, {p.family})' for p in same)}")
    for w in report.warnings:
        lines.append(f"warning: {w}")
    if report.uncertain:
        lines.append(f"note: {len(report.uncertain)} outcomes rest on rules kpa could not evaluate (see JSON)")
    return "\n".join(lines) + "\n"


__all__ = [
    "TOLERANCE",
    "DiffReport",
    "EntryDiff",
    "EntryPoint",
    "OutcomeKey",
    "ServicePortDiff",
    "SourceClass",
    "SourceDiff",
    "diff_rulesets",
    "entry_points_from_objects",
    "entry_points_from_rules",
    "explain",
    "probe_entry_points",
    "render_text",
    "source_classes",
]
