"""Helpers for kernel-differential tests: kpa's prediction against what the kernel did.

A differential test loads a real kube-proxy ruleset into the harness's node namespace,
sends probe flows, turns what the kernel did to each flow into a :class:`Fate`
(verdict, delivery, DNAT target, masquerade), asks kpa about the same packet, and
checks that every fate the kernel produced is one kpa predicted with a probability
above zero, and that fates split by chance occur about as often as kpa says.

Nothing here hard-codes what a Service should do: the probes are derived from the
cluster objects, and the kernel is the reference.

Kernel evidence per flow (see :func:`kernel_fate`):

* the socket's result (``timeout`` / ``refused`` / ``unreachable:ERRNO``);
* the node's conntrack entry: a forwarded or node-originated flow that survived every
  hook is confirmed, and its reply tuple shows DNAT and masquerade;
* an observer table (:data:`OBSERVER`) at the end of the input hook that records every
  TCP/UDP packet delivered to a local socket, keyed by its conntrack original tuple.
  Local delivery cannot be read from conntrack alone: the node has no listeners, its
  TCP stack answers with a RST, and a RST answering a SYN deletes the entry at once,
  which would make a delivered flow look exactly like a REJECT.
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
import json
import math
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from kpa.netfilter.engine import Outcome, trace
from kpa.netfilter.model import Family as KpaFamily
from kpa.netfilter.model import Ruleset
from kpa.netfilter.packet import PacketSpec, TraceContext, node_local_addresses

from .harness import (
    CtEntry,
    Family,
    Flow,
    Observation,
    Origin,
    Proto,
    Topology,
    TopologySpec,
    created_namespaces,
    list_namespaces,
)

Obj = dict[str, Any]
Endpoint = tuple[str, int | None]

# Candidate external clients outside every source range (shared address space and an
# unused documentation prefix); the first one outside all ranges of the cluster is used.
_OUTSIDE_CANDIDATES: dict[Family, list[str]] = {
    "ipv4": ["100.64.0.7", "100.64.1.7", "100.127.0.7"],
    "ipv6": ["2001:db8:ffff::7", "2001:db8:fffe::7", "2001:db8:fffd::7"],
}
# Offsets tried, in order, when picking an address inside a source range.
_IN_RANGE_OFFSETS = (7, 77, 99, 111, 123, 201, 33, 55)


def canon(ip: str) -> str:
    return str(ipaddress.ip_address(ip))


def _fam(ip: str) -> Family:
    return "ipv6" if ":" in ip else "ipv4"


# ------------------------------------------------------------------------------ cluster
@dataclass(frozen=True)
class PortView:
    name: str
    proto: str  # tcp / udp / sctp
    port: int
    node_port: int


@dataclass
class ServiceView:
    """One Service as seen for one address family."""

    key: str  # namespace/name
    cluster_ip: str | None
    ports: list[PortView]
    external_ips: list[str]
    lb_ips: list[str]
    source_ranges: list[str]
    affinity: bool
    endpoints: list[tuple[str, str | None]]  # (ip, nodeName), any readiness


@dataclass
class ClusterView:
    """What a differential test needs to know about a cluster, for one family."""

    family: Family
    node_name: str
    node_ip: str
    all_node_ips: list[str]  # this node, every family: kpa's local addresses
    pod_cidr: str
    service_cidr: str
    services: list[ServiceView]
    local_pod_ips: list[str] = field(default_factory=list)
    remote_endpoint_ips: list[str] = field(default_factory=list)
    client_pod_ip: str = ""
    outside_client: str = ""
    range_clients: dict[str, str] = field(default_factory=dict)  # range -> client inside it

    @property
    def external_client_ips(self) -> list[str]:
        return list(dict.fromkeys([self.outside_client, *self.range_clients.values()]))

    def spec(self) -> TopologySpec:
        return TopologySpec(family=self.family, node_ips=[self.node_ip],
                            local_pod_ips=self.local_pod_ips,
                            remote_endpoint_ips=self.remote_endpoint_ips,
                            external_client_ips=self.external_client_ips,
                            client_pod_ip=self.client_pod_ip)


def _service(obj: Obj, family: Family, slices: list[Obj]) -> ServiceView:
    spec = obj.get("spec", {})
    meta = obj["metadata"]
    cips = [ip for ip in spec.get("clusterIPs") or [spec.get("clusterIP")]
            if ip and ip != "None" and _fam(ip) == family]
    ports = [PortView(p.get("name", ""), p.get("protocol", "TCP").lower(), int(p["port"]),
                      int(p.get("nodePort") or 0)) for p in spec.get("ports", [])]
    ingress = obj.get("status", {}).get("loadBalancer", {}).get("ingress") or []
    endpoints: list[tuple[str, str | None]] = []
    addr_type = "IPv6" if family == "ipv6" else "IPv4"
    for sl in slices:
        if sl.get("addressType") != addr_type:
            continue
        for ep in sl.get("endpoints") or []:
            if ep.get("addresses"):
                endpoints.append((canon(ep["addresses"][0]), ep.get("nodeName")))
    return ServiceView(
        key=f"{meta.get('namespace', 'default')}/{meta['name']}",
        cluster_ip=canon(cips[0]) if cips else None,
        ports=ports,
        external_ips=[canon(ip) for ip in spec.get("externalIPs") or [] if _fam(ip) == family],
        lb_ips=[canon(i["ip"]) for i in ingress if i.get("ip") and _fam(i["ip"]) == family],
        source_ranges=[str(ipaddress.ip_network(r, strict=False))
                       for r in spec.get("loadBalancerSourceRanges") or [] if _fam(r) == family],
        affinity=spec.get("sessionAffinity") == "ClientIP",
        endpoints=endpoints,
    )


def cluster_view(meta: Obj, objects: Sequence[Obj], family: Family) -> ClusterView:
    """Read a scenario's meta.json and objects into the addresses a topology needs.

    Endpoints on this node become pod namespaces (unless the address is the node's own),
    every other endpoint a remote address; the client pod gets a free address in the
    node's pod CIDR; external clients are picked inside each LoadBalancer source range
    and outside all of them.
    """
    node_name = meta["node_name"]
    node_ip = meta["node_ips"][family]
    if not node_ip:
        raise ValueError(f"{node_name} has no {family} address")
    slices: dict[str, list[Obj]] = collections.defaultdict(list)
    for obj in objects:
        if obj.get("kind") == "EndpointSlice":
            m = obj["metadata"]
            svc = m.get("labels", {}).get("kubernetes.io/service-name")
            slices[f"{m.get('namespace', 'default')}/{svc}"].append(obj)
    services = []
    for obj in objects:
        if obj.get("kind") != "Service":
            continue
        m = obj["metadata"]
        sv = _service(obj, family, slices[f"{m.get('namespace', 'default')}/{m['name']}"])
        if sv.cluster_ip:
            services.append(sv)
    node_ips = {canon(a["address"]) for o in objects if o.get("kind") == "Node"
                for a in o.get("status", {}).get("addresses", [])
                if a.get("type") in ("InternalIP", "ExternalIP")}
    all_node_ips = [canon(ip) for ip in meta["node_ips"].values() if ip]
    pod_cidr = next(c for c in meta["pod_cidrs"] if _fam(c) == family)
    view = ClusterView(family=family, node_name=node_name, node_ip=canon(node_ip),
                       all_node_ips=all_node_ips, pod_cidr=pod_cidr,
                       service_cidr=meta["service_cidrs"][family], services=services)
    local: list[str] = []
    remote: list[str] = []
    for svc in services:
        for ip, node in svc.endpoints:
            if ip in all_node_ips:
                continue  # the node itself (e.g. the apiserver): a local address already
            (local if node == node_name else remote).append(ip)
    view.local_pod_ips = sorted(set(local), key=ipaddress.ip_address)
    view.remote_endpoint_ips = sorted(set(remote), key=ipaddress.ip_address)

    used = {view.node_ip, *node_ips, *local, *remote}
    for svc in services:
        used.update([svc.cluster_ip or "", *svc.external_ips, *svc.lb_ips])
    pod_net = ipaddress.ip_network(pod_cidr)
    view.client_pod_ip = next(str(pod_net.network_address + k) for k in range(250, 1, -1)
                              if str(pod_net.network_address + k) not in used)
    used.add(view.client_pod_ip)

    # Clients must not sit inside a range the node routes itself (pods, Services).
    avoid = [ipaddress.ip_network(c) for c in (pod_cidr, view.service_cidr,
                                               meta.get("cluster_cidrs", {}).get(family))
             if c]
    ranges = sorted({r for svc in services for r in svc.source_ranges})
    nets = [ipaddress.ip_network(r) for r in ranges]
    view.outside_client = next(c for c in _OUTSIDE_CANDIDATES[family]
                               if not any(ipaddress.ip_address(c) in n for n in nets))
    for r, net in zip(ranges, nets, strict=True):
        for k in _IN_RANGE_OFFSETS:
            if k >= net.num_addresses:
                continue
            cand = net.network_address + k
            if str(cand) not in used and not any(cand in a for a in avoid):
                view.range_clients[r] = str(cand)
                used.add(str(cand))
                break
    return view


# ------------------------------------------------------------------------------ probes
@dataclass(frozen=True)
class Probe:
    """One question asked of both kpa and the kernel."""

    label: str
    origin: Origin  # harness origin: external, client_pod, node, pod:<ip>
    src: str  # source address (also what kpa is told)
    dst: str
    proto: Proto
    dport: int
    service: str | None = None  # namespace/name, for affinity bookkeeping
    affinity: bool = False
    endpoints: int = 0  # endpoints of the targeted Service (any readiness)

    @property
    def kpa_origin(self) -> str:
        return "output" if self.origin == "node" else "prerouting"

    @property
    def send_src(self) -> str | None:
        # Node-originated packets keep the kernel's own choice; the test checks it.
        return None if self.origin == "node" and self.src != "127.0.0.1" else self.src


def probes(view: ClusterView, protocols: Iterable[str] = ("tcp", "udp")) -> list[Probe]:
    """The flows a differential test sends, derived from the objects alone."""
    allowed = set(protocols)
    out: list[Probe] = []
    pod, node = view.client_pod_ip, view.node_ip
    local_pods = set(view.local_pod_ips)
    def add(svc: ServiceView, p: PortView, label: str, origin: Origin, src: str, dst: str,
            dport: int) -> None:
        out.append(Probe(f"{svc.key}:{p.name or p.port}/{p.proto} {label}", origin, src, dst,
                         p.proto, dport, svc.key, svc.affinity,  # type: ignore[arg-type]
                         len(svc.endpoints)))

    for svc in view.services:
        assert svc.cluster_ip
        hairpin = next((ip for ip, _ in svc.endpoints if ip in local_pods), None)
        for p in svc.ports:
            if p.proto not in allowed:
                continue
            cip = svc.cluster_ip
            add(svc, p, "pod->clusterIP", "client_pod", pod, cip, p.port)
            add(svc, p, "node->clusterIP", "node", node, cip, p.port)
            if hairpin:
                add(svc, p, "hairpin", f"pod:{hairpin}", hairpin, cip, p.port)
            if p.node_port:
                add(svc, p, "external->nodePort", "external", view.outside_client, node,
                    p.node_port)
                add(svc, p, "pod->nodePort", "client_pod", pod, node, p.node_port)
                if view.family == "ipv4":
                    add(svc, p, "node->localhost nodePort", "node", "127.0.0.1", "127.0.0.1",
                        p.node_port)
            for lb in svc.lb_ips:
                clients = [view.outside_client] + [view.range_clients[r]
                                                   for r in svc.source_ranges
                                                   if r in view.range_clients]
                for c in dict.fromkeys(clients):
                    add(svc, p, f"external {c}->LB", "external", c, lb, p.port)
                add(svc, p, "pod->LB", "client_pod", pod, lb, p.port)
                add(svc, p, "node->LB", "node", node, lb, p.port)
            for eip in svc.external_ips:
                add(svc, p, "external->externalIP", "external", view.outside_client, eip,
                    p.port)
                add(svc, p, "pod->externalIP", "client_pod", pod, eip, p.port)
    if view.services:
        # A port nothing listens on at an allocated ClusterIP.
        svc = view.services[0]
        taken = {p.port for s in view.services if s.cluster_ip == svc.cluster_ip
                 for p in s.ports}
        port = next(x for x in range(81, 65535) if x not in taken)
        assert svc.cluster_ip
        out.append(Probe(f"{svc.key} wrong port {port}", "client_pod", pod, svc.cluster_ip,
                         "tcp", port))
    net = ipaddress.ip_network(view.service_cidr)
    cips = {s.cluster_ip for s in view.services}
    free = next(str(net.network_address + k) for k in range(4000, 1, -1)
                if str(net.network_address + k) not in cips)
    out.append(Probe("unallocated service IP (pod)", "client_pod", pod, free, "tcp", 80))
    out.append(Probe("unallocated service IP (node)", "node", node, free, "tcp", 80))
    return out


# ------------------------------------------------------------------------------ fates
# A flow from a silent endpoint pod that died on the node: the pod drops the ICMP error
# or RST a REJECT sends back, so the sender cannot tell the two apart.
DEAD = "DROP|REJECT"


@dataclass(frozen=True)
class Fate:
    """What happened to a flow, in terms both kpa and the kernel can state.

    ``result`` is only set for REJECT: the socket result the rejection must produce
    (``refused``, ``unreachable:EHOSTUNREACH``…; ``unreachable:*`` if any will do).
    """

    verdict: str
    delivery: str | None = None
    dnat: Endpoint | None = None
    # None: the kernel's evidence cannot tell (see kernel_fate).
    masquerade: bool | None = False
    result: str | None = None

    def __str__(self) -> str:
        if self.verdict != "ACCEPT":
            return f"{self.verdict}({self.result})" if self.result else self.verdict
        parts = [f"ACCEPT {self.delivery}"]
        if self.dnat:
            ip, port = self.dnat
            parts.append(f"dnat {ip}" + (f":{port}" if port is not None else ""))
        if self.masquerade:
            parts.append("masq")
        elif self.masquerade is None:
            parts.append("masq?")
        return " ".join(parts)

    def accepts(self, kernel: Fate) -> bool:
        """Does this predicted fate describe the kernel's fate?"""
        if kernel.verdict == DEAD:
            return self.verdict in ("DROP", "REJECT")
        if self.result == "unreachable:*" and kernel.result:
            return (self.verdict == kernel.verdict
                    and kernel.result.startswith("unreachable:"))
        if kernel.masquerade is None:
            return dataclasses.replace(self, masquerade=None) == kernel
        return self == kernel


# What a REJECT's reply makes of the sender's socket (connect()/recv() errno).
_REJECT_RESULT = {
    None: "refused", "icmp-port-unreachable": "refused", "icmp6-port-unreachable": "refused",
    "port-unreach": "refused", "port-unreachable": "refused", "tcp-reset": "refused",
    "icmp-host-unreachable": "unreachable:EHOSTUNREACH",
    "icmp6-addr-unreachable": "unreachable:EHOSTUNREACH",
    "icmp-admin-prohibited": "unreachable:EHOSTUNREACH",
    "icmp-host-prohibited": "unreachable:EHOSTUNREACH",
    "icmp6-adm-prohibited": "unreachable:EACCES",
    "icmp-net-unreachable": "unreachable:ENETUNREACH",
    "icmp6-no-route": "unreachable:ENETUNREACH",
    "icmp-net-prohibited": "unreachable:ENETUNREACH",
}


@dataclass(frozen=True)
class Prediction:
    fate: Fate
    probability: Fraction
    conditions: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()


def _kpa_fate(verdict: str, delivery: str | None, dnat: Endpoint | None, masq: bool,
              reject_with: str | None) -> Fate:
    if verdict == "ACCEPT":
        return Fate("ACCEPT", delivery, dnat, masq)
    if verdict == "REJECT":
        return Fate("REJECT", result=_REJECT_RESULT.get(reject_with, "unreachable:*"))
    return Fate(verdict)


def from_outcomes(outcomes: Iterable[Outcome]) -> list[Prediction]:
    out = []
    for o in outcomes:
        st = o.state
        dnat = None
        if st.dnat is not None:
            dnat = (str(ipaddress.ip_address(st.dnat[0])), st.dnat[1])
        fate = _kpa_fate(o.verdict, o.delivery, dnat, st.masquerade or st.snat is not None,
                         o.detail)
        out.append(Prediction(fate, o.probability, tuple(o.conditions),
                              tuple(a.describe() for a in st.assumptions)))
    return out


def _split_endpoint(text: str) -> Endpoint:
    m = re.fullmatch(r"\[(.+)\]:(\d+)|([^:]+):(\d+)|(.+)", text)
    assert m
    if m.group(1):
        return canon(m.group(1)), int(m.group(2))
    if m.group(3):
        return canon(m.group(3)), int(m.group(4))
    return canon(m.group(5)), None


def from_json(doc: Obj) -> list[Prediction]:
    """Predictions from ``kpa trace -o json`` output."""
    out = []
    for o in doc["outcomes"]:
        num, den = o["probability_exact"].split("/")
        dnat = _split_endpoint(o["dnat"]) if o.get("dnat") else None
        fate = _kpa_fate(o["verdict"], o.get("delivery"), dnat,
                         bool(o.get("masquerade")) or bool(o.get("snat")), o.get("reject_with"))
        out.append(Prediction(fate, Fraction(int(num), int(den)), tuple(o["conditions"]),
                              tuple(o.get("unknown") or ())))
    return out


def packet_spec(probe: Probe, family: Family) -> PacketSpec:
    return PacketSpec(family=KpaFamily.IPV6 if family == "ipv6" else KpaFamily.IPV4,
                      src=probe.src, dst=probe.dst, proto=probe.proto, dport=probe.dport,
                      origin=probe.kpa_origin, ctstate="NEW")


def predict(ruleset: Ruleset, probe: Probe, view: ClusterView,
            affinity: Iterable[str] = ()) -> list[Prediction]:
    """kpa's outcomes for ``probe``; ``affinity`` lists the recent lists the client is in."""
    ctx = TraceContext(local=node_local_addresses(view.all_node_ips),
                       affinity={name: True for name in affinity}, affinity_default=False)
    return from_outcomes(trace(ruleset, packet_spec(probe, view.family), ctx).outcomes)


def predict_cli(rules: Path, probe: Probe, view: ClusterView,
                affinity: Iterable[str] = ()) -> list[Prediction]:
    """The same through the real command line: ``kpa trace … -o json``."""
    argv = [sys.executable, "-m", "kpa", "trace", "-r", str(rules), "--src", probe.src,
            "--dst", probe.dst, "-p", probe.proto, "--dport", str(probe.dport),
            "--origin", probe.kpa_origin, "-o", "json"]
    for ip in view.all_node_ips:
        argv += ["--node-ip", ip]
    for name in affinity:
        argv += ["--affinity", name]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return from_json(json.loads(proc.stdout))


# ------------------------------------------------------------------------------ kernel
_PROTOS = ("tcp", "udp")
_NFPROTO = {"ipv4": ("ip", "ipv4_addr"), "ipv6": ("ip6", "ipv6_addr")}


# One set per post-NAT field: a whole IPv6 key plus two addresses would not fit nft's
# registers in one concatenation.
_FIELDS = ("daddr", "dport", "saddr", "sport")


def _observer() -> str:
    sets, rules = [], []
    for fam, (kw, addr) in _NFPROTO.items():
        orig = (f"ct original {kw} saddr . ct original proto-src . "
                f"ct original {kw} daddr . ct original proto-dst")
        key_type = f"{addr} . inet_service . {addr} . inet_service"
        now = {"daddr": (f"{kw} daddr", addr), "dport": ("th dport", "inet_service"),
               "saddr": (f"{kw} saddr", addr), "sport": ("th sport", "inet_service")}
        for proto in _PROTOS:
            for what in _FIELDS:
                expr, typ = now[what]
                name = f"{what}_{proto}_{fam}"
                sets.append(f"  set {name} {{ type {key_type} . {typ}; "
                            "size 65535; flags dynamic; }")
                # Replies delivered locally (a RST to a node socket) share the key.
                rules.append(f"    meta nfproto {fam} meta l4proto {proto} ct direction original "
                             f"add @{name} {{ {orig} . {expr} }}")
    return ("table inet kpat_obs {\n" + "\n".join(sets) + "\n  chain input {\n"
            # After every iptables table (filter 0, security 50, nat 100) has run.
            "    type filter hook input priority 300; policy accept;\n"
            + "\n".join(rules) + "\n  }\n}\n")


OBSERVER = _observer()

FlowKey = tuple[str, str, int, str, int]  # proto, orig src, sport, orig dst, dport


@dataclass(frozen=True)
class Delivered:
    """A flow's packet as it reached a local socket (after NAT)."""

    src: str
    sport: int
    dst: str
    dport: int


def install_observer(topo: Topology) -> None:
    topo.load_nft(OBSERVER)


def _delivered(topo: Topology) -> dict[FlowKey, Delivered]:
    doc = json.loads(topo.run_in("node", ["nft", "-j", "list", "table", "inet", "kpat_obs"]))
    parts: dict[FlowKey, dict[str, str]] = collections.defaultdict(dict)
    for item in doc["nftables"]:
        s = item.get("set")
        if not s:
            continue
        what, proto, _fam = s["name"].split("_")
        for elem in s.get("elem", []):
            val = elem["elem"]["val"] if isinstance(elem, dict) and "elem" in elem else elem
            osrc, osport, odst, odport, now = val["concat"]
            key = (proto, canon(osrc), int(osport), canon(odst), int(odport))
            parts[key][what] = str(now)
    return {key: Delivered(canon(p.get("saddr", key[1])), int(p.get("sport", key[2])),
                           canon(p.get("daddr", key[3])), int(p.get("dport", key[4])))
            for key, p in parts.items()}


def reset_evidence(topo: Topology) -> None:
    """Forget earlier flows: conntrack entries and the observer's records."""
    topo.conntrack_flush()
    for fam in _NFPROTO:
        for proto in _PROTOS:
            for what in _FIELDS:
                topo.run_in("node", ["nft", "flush", "set", "inet", "kpat_obs",
                                     f"{what}_{proto}_{fam}"])


@dataclass
class Evidence:
    conntrack: dict[FlowKey, CtEntry]
    delivered: dict[FlowKey, Delivered]


def collect(topo: Topology) -> Evidence:
    ct: dict[FlowKey, CtEntry] = {}
    for e in topo.conntrack():
        if e.orig.sport is not None and e.orig.dport is not None:
            ct[(e.proto, canon(e.orig.src), e.orig.sport, canon(e.orig.dst),
                e.orig.dport)] = e
    return Evidence(ct, _delivered(topo))


def flow_key(obs: Observation) -> FlowKey:
    """The flow an observation was of, as the evidence is keyed."""
    return (obs.proto, canon(obs.src), obs.sport, canon(obs.dst), obs.dport)


def kernel_fate(obs: Observation, ev: Evidence, local: set[str]) -> Fate:
    """Turn one observation and the node's evidence into a fate.

    ``local`` holds the node's addresses (with loopback) for telling a node-originated
    flow that was dropped in INPUT (its entry is confirmed before INPUT) from one
    that left the node.
    """
    key = flow_key(obs)
    node_origin = obs.origin == "node"
    if obs.result in ("connected", "reply"):
        raise AssertionError(f"something answered {obs}: the topology should be silent")
    dnat: Endpoint | None = None
    got = ev.delivered.get(key)
    if got is not None:
        dnat = None if (got.dst, got.dport) == key[3:] else (got.dst, got.dport)
        return Fate("ACCEPT", "local", dnat, (got.src, got.sport) != key[1:3])
    entry = ev.conntrack.get(key)
    dead = "DROP" if obs.result in ("timeout", "unreachable:EPERM") else "REJECT"
    if dead == "DROP" and obs.origin.startswith("pod:"):
        dead = DEAD
    if entry is not None:
        to_local = canon(entry.reply.src) in local or entry.reply.src.startswith("127.")
        if not (node_origin and to_local):
            masq: bool | None = (canon(entry.reply.dst), entry.reply.dport) != (key[1], key[2])
            if not masq and node_origin and key[1] in local:
                # Masquerading a flow that already has the node's address changes only the
                # port, and --random-fully may draw the very port it had: unobservable.
                masq = None
            if entry.dnat is not None:
                dnat = (canon(entry.dnat[0]), entry.dnat[1])
            return Fate("ACCEPT", "output" if node_origin else "forward", dnat, masq)
        # Confirmed at POSTROUTING, then dropped or rejected after looping back.
    return Fate(dead, result=obs.result if dead == "REJECT" else None)


# ------------------------------------------------------------------------------ compare
def binomial_ok(observed: int, n: int, p: Fraction) -> tuple[bool, float]:
    """Is ``observed`` within 4.5 standard deviations (+1) of n·p? Returns (ok, limit)."""
    pf = float(p)
    tol = 4.5 * math.sqrt(n * pf * (1 - pf)) + 1
    return abs(observed - n * pf) <= tol, tol


@dataclass
class Verdict:
    probe: Probe
    predictions: list[Prediction]
    kernel: collections.Counter[Fate]
    problems: list[str]

    def describe(self) -> str:
        p = self.probe
        lines = [f"{p.label}: {p.origin} {p.src} -> {p.dst} {p.proto}/{p.dport}"]
        lines += [f"    kpa    {float(x.probability):.4f} {x.fate}"
                  + (f" if {'; '.join(x.conditions)}" if x.conditions else "")
                  + (f" unknown: {'; '.join(x.unknown)}" if x.unknown else "")
                  for x in self.predictions]
        lines += [f"    kernel {n:4d}x  {f}" for f, n in self.kernel.most_common()]
        lines += [f"    !! {msg}" for msg in self.problems]
        return "\n".join(lines)


def compare(probe: Probe, predictions: list[Prediction], fates: Sequence[Fate]) -> Verdict:
    """Every kernel fate must be predicted with p > 0; chance splits must match kpa's
    probabilities within binomial tolerance."""
    problems: list[str] = []
    kernel = collections.Counter(fates)
    # Outcomes that differ only in path or mark are one fate here.
    by_fate: dict[Fate, Fraction] = collections.defaultdict(Fraction)
    for pred in predictions:
        by_fate[pred.fate] += pred.probability
    counted: collections.Counter[Fate] = collections.Counter()
    for fate, n in kernel.items():
        match = next((f for f, p in by_fate.items() if p > 0 and f.accepts(fate)), None)
        if match is None:
            problems.append(f"kernel fate {fate} ({n}x) is not among kpa's outcomes")
        else:
            counted[match] += n
    total = sum(by_fate.values(), Fraction(0))
    conditional = any(pred.conditions for pred in predictions)
    n = len(fates)
    if n > 1 and not problems:
        if total != 1 and not conditional:
            problems.append(f"kpa's probabilities sum to {total}, not 1")
        elif total == 1:
            for fate, p in by_fate.items():
                ok, tol = binomial_ok(counted[fate], n, p)
                if not ok:
                    problems.append(f"{fate}: kernel {counted[fate]}/{n}, kpa expects "
                                    f"{float(n * p):.1f} ± {tol:.1f}")
    return Verdict(probe, predictions, kernel, problems)


# ------------------------------------------------------------------------------ affinity
def recent_lists(topo: Topology) -> dict[str, set[str]]:
    """xt_recent list name -> source addresses in it, in the node namespace."""
    out = topo.run_in("node", ["sh", "-c", "cd /proc/net/xt_recent 2>/dev/null && "
                               "grep -H . -- * 2>/dev/null; true"])
    lists: dict[str, set[str]] = collections.defaultdict(set)
    for line in out.splitlines():
        name, _, rest = line.partition(":")
        m = re.match(r"src=(\S+)", rest)
        if m:
            lists[name].add(canon(m.group(1)))
    return lists


def affinity_rounds(items: Sequence[Probe]) -> list[list[Probe]]:
    """Split affinity probes so that no round has two probes from one source to one
    Service: their connections would share the Service's recent lists."""
    rounds: list[list[Probe]] = []
    seen: list[set[tuple[str | None, str]]] = []
    for p in items:
        key = (p.service, p.src)
        for i, used in enumerate(seen):
            if key not in used:
                used.add(key)
                rounds[i].append(p)
                break
        else:
            seen.append({key})
            rounds.append([p])
    return rounds


# ------------------------------------------------------------------------------ batches
# Flows per probe when one outcome is expected: enough to notice a split kpa missed.
DETERMINISTIC_FLOWS = 3
# IPv6 TCP REJECTs surface only on the retransmitted SYN: the ICMPv6 error arrives while
# connect() still holds the socket and is kept as a soft error.
TIMEOUT: dict[Family, float] = {"ipv4": 0.6, "ipv6": 1.5}


def flow(p: Probe) -> Flow:
    return (p.origin, p.send_src, p.dst, p.proto, p.dport)


def flow_count(p: Probe, preds: Sequence[Prediction], split: int) -> int:
    # The object count guards against kpa wrongly predicting a single outcome.
    random = len({x.fate for x in preds}) > 1 or p.endpoints > 1
    return split if random else DETERMINISTIC_FLOWS


def run_batch(topo: Topology, view: ClusterView, items: Sequence[Probe],
              preds: dict[Probe, list[Prediction]], counts: dict[Probe, int],
              tally: collections.Counter[str]) -> list[Verdict]:
    """Send every probe's flows in one batch and compare each probe with kpa."""
    reset_evidence(topo)
    flows = [flow(p) for p in items for _ in range(counts[p])]
    lost_before = conntrack_losses(topo)
    observations = topo.send_many(flows, timeout=TIMEOUT[view.family])
    evidence = collect(topo)
    lost = conntrack_losses(topo) - lost_before
    if lost:
        observations, evidence = _resend_lost(topo, flows, observations, evidence, lost, tally,
                                              TIMEOUT[view.family])
    local = {view.node_ip, "::1"}
    fates: dict[Probe, list[Fate]] = collections.defaultdict(list)
    i = 0
    for p in items:
        for obs in observations[i:i + counts[p]]:
            # kpa was told the source the kernel was expected to pick.
            assert obs.src == p.src, f"{p.label}: sent from {obs.src}, kpa asked about {p.src}"
            fates[p].append(kernel_fate(obs, evidence, local))
        i += counts[p]
    tally["probes"] += len(items)
    tally["flows"] += len(flows)
    tally["split"] += sum(len({x.fate for x in preds[p]}) > 1 for p in items)
    return [compare(p, preds[p], fates[p]) for p in items]


def conntrack_losses(topo: Topology) -> int:
    """Packets the node's conntrack itself lost, over all CPUs: a new flow whose entry could not be
    inserted (two CPUs confirming clashing tuples at once, e.g. masquerade picking the same port),
    packets it dropped, entries it evicted. No rule has a say in these."""
    out = topo.run_in("node", ["conntrack", "-S"], check=False)
    return sum(int(v) for _, v in re.findall(r"\b(insert_failed|drop|early_drop)=(\d+)", out))


def _resend_lost(topo: Topology, flows: Sequence[Flow], observations: list[Observation], evidence: Evidence,
                 lost: int, tally: collections.Counter[str], timeout: float) -> tuple[list[Observation], Evidence]:
    """Send again, once each, up to `lost` flows that left no trace (a timeout, no conntrack entry, nothing
    delivered) in a batch in which conntrack counted `lost` packets of its own losses: such a flow may be one
    of them. A flow a rule drops leaves no trace the second time either, and fails as it would have."""
    traceless = [i for i, obs in enumerate(observations)
                 if obs.result == "timeout"
                 and (key := flow_key(obs)) not in evidence.conntrack
                 and key not in evidence.delivered][:lost]
    if not traceless:
        return observations, evidence
    again = topo.send_many([flows[i] for i in traceless], timeout=timeout)
    out = list(observations)
    for i, obs in zip(traceless, again, strict=True):
        out[i] = obs
    tally["resent"] += len(traceless)
    return out, collect(topo)


def report(verdicts: Sequence[Verdict]) -> str:
    bad = [v for v in verdicts if v.problems]
    return f"{len(bad)} of {len(verdicts)} probes disagree:\n" + "\n".join(
        v.describe() for v in bad)


def finish_module(request: Any, tally: collections.Counter[str], label: str) -> None:
    """Prove no namespace outlived its topology, and report how much a differential module compared."""
    leaked = sorted(set(created_namespaces()) & set(list_namespaces()))
    assert leaked == [], f"namespaces leaked: {leaked}"
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and tally:
        # Teardown output is captured; the figures belong in the session log.
        with capture.global_and_fixture_disabled():
            reporter.write_line(
                f"\n{label}: {tally['probes']} probes, {tally['flows']} flows, "
                f"{tally['split']} of the probes checked against kpa's probabilities"
                + (f"; {tally['resent']} flow(s) sent again after conntrack counted losses of its own"
                   if tally["resent"] else ""))
