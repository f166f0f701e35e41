"""The connectivity matrix for one port, computed over equivalence classes of subjects.

Policies cannot tell apart two pods with the same namespace, labels, container ports
and hostNetwork setting whose addresses fall in the same ipBlocks, so each such class
is judged once. Selectors, peers and isolation are evaluated as bitsets over classes
(Python integers), through an index from labels to classes, so the cost grows with the
number of classes and rules rather than with pods squared.

Every cell equals `PolicyEngine.decide(src, dst, port, protocol).allowed`; the tests
check that for every cell of every truth table.
"""

from __future__ import annotations

import gc
import ipaddress
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from kpa.k8s.netpol import IPBlock, LabelSelector, NetworkPolicy, Peer, PolicyRule
from kpa.policy.engine import PolicyEngine, Subject


def _bits(indices: Sequence[int] | set[int]) -> int:
    value = 0
    for i in indices:
        value |= 1 << i
    return value


def _ip_range(block: IPBlock) -> tuple[int, int, int, tuple[tuple[int, int], ...]]:
    net = block.network
    excepts = tuple((int(e.network_address), int(e.broadcast_address)) for e in block.excepts)
    return net.version, int(net.network_address), int(net.broadcast_address), excepts


@dataclass(frozen=True)
class _Class:
    namespace: str | None  # None: outside the cluster
    labels: tuple[tuple[str, str], ...]
    ports: tuple[tuple[str, int, str], ...]
    host_network: bool
    ip_signature: frozenset[int]


class Matrix:
    """Allowed/denied for every (source, target) pair, for one port and protocol."""

    def __init__(
        self,
        sources: Sequence[Subject],
        targets: Sequence[Subject],
        port: int,
        protocol: str,
        src_class: list[int],
        dst_class: list[int],
        egress_ok: list[int],
        ingress_ok: list[int],
        class_count: int,
    ) -> None:
        self.sources, self.targets = list(sources), list(targets)
        self.port, self.protocol = port, protocol
        self._src_class, self._dst_class = src_class, dst_class
        self._egress_ok, self._ingress_ok = egress_ok, ingress_ok
        self.class_count = class_count
        #: Pairs policy cannot restrict (a pod and itself, a pod and its own node).
        self.exempt: set[tuple[int, int]] = set()
        self._exempt_by_source: dict[int, list[int]] | None = None
        self._class_rows: dict[int, list[bool]] = {}

    def _by_policy(self, i: int, j: int) -> bool:
        s, d = self._src_class[i], self._dst_class[j]
        return bool((self._egress_ok[s] >> d) & 1 and (self._ingress_ok[d] >> s) & 1)

    def allowed(self, i: int, j: int) -> bool:
        """Whether sources[i] may connect to targets[j]."""
        return (i, j) in self.exempt or self._by_policy(i, j)

    def directions(self, i: int, j: int) -> tuple[bool, bool]:
        """(egress allows, ingress allows) for sources[i] -> targets[j]; an exempt pair allows both."""
        if (i, j) in self.exempt:
            return True, True
        s, d = self._src_class[i], self._dst_class[j]
        return bool((self._egress_ok[s] >> d) & 1), bool((self._ingress_ok[d] >> s) & 1)

    def rows(self) -> Iterator[list[bool]]:
        for i in range(len(self.sources)):
            yield self.row(i)

    def row(self, i: int) -> list[bool]:
        """[allowed(i, j) for every target j], from the source's class: one bit test per target class."""
        if self._exempt_by_source is None:
            self._exempt_by_source = {}
            for a, b in self.exempt:
                self._exempt_by_source.setdefault(a, []).append(b)
        s = self._src_class[i]
        cached = self._class_rows.get(s)
        if cached is None:
            egress, ingress = self._egress_ok[s], self._ingress_ok
            by_class = [bool((egress >> d) & 1 and (ingress[d] >> s) & 1) for d in range(self.class_count)]
            cached = self._class_rows[s] = [by_class[d] for d in self._dst_class]
        out = list(cached)
        exempt = self._exempt_by_source.get(i)
        if exempt:
            for j in exempt:
                out[j] = True
        return out

    def allowed_count(self) -> int:
        """How many cells are allowed, counted over classes without visiting every cell.

        Destination classes with the same ingress bitset form one group; for each group,
        each source class it admits adds the (size-weighted) number of the group's
        classes its egress bitset allows.
        """
        src_sizes: dict[int, int] = {}
        for c in self._src_class:
            src_sizes[c] = src_sizes.get(c, 0) + 1
        dst_sizes: dict[int, int] = {}
        for c in self._dst_class:
            dst_sizes[c] = dst_sizes.get(c, 0) + 1
        groups: dict[int, int] = {}
        buckets: dict[int, int] = {}  # class size -> destination classes of that size
        for d, size in dst_sizes.items():
            groups[self._ingress_ok[d]] = groups.get(self._ingress_ok[d], 0) | (1 << d)
            buckets[size] = buckets.get(size, 0) | (1 << d)
        sources = 0
        for s in src_sizes:
            sources |= 1 << s
        total = 0
        for admitted, members in groups.items():
            bits = admitted & sources
            while bits:
                low = bits & -bits
                s = low.bit_length() - 1
                bits ^= low
                reach = self._egress_ok[s] & members
                if reach:
                    weighted = sum(size * (reach & mask).bit_count()
                                   for size, mask in buckets.items())
                    total += src_sizes[s] * weighted
        return total + sum(1 for i, j in self.exempt if not self._by_policy(i, j))


class _Index:
    """Classes of subjects and the bitsets selectors and peers select."""

    def __init__(self, engine: PolicyEngine, subjects: Sequence[Subject]) -> None:
        self.engine = engine
        blocks: dict[IPBlock, int] = {}
        for policy in engine.policies:
            for rule in (*policy.ingress, *policy.egress):
                for peer in rule.peers:
                    if peer.ip_block is not None:
                        blocks.setdefault(peer.ip_block, len(blocks))
        self.block_ids = blocks
        ranges = [(_ip_range(b), i) for b, i in blocks.items()]
        self.classes: list[_Class] = []
        ids: dict[_Class, int] = {}
        self.subject_class: list[int] = []
        for subject in subjects:
            sig = self._signature(subject.ip, ranges)
            pod = subject.pod
            if pod is None:
                key = _Class(None, (), (), False, sig)
            else:
                ports = tuple(sorted({(c.name, c.port, c.protocol) for c in pod.container_ports}))
                key = _Class(pod.namespace, pod.labels, ports, pod.host_network, sig)
            index = ids.get(key)
            if index is None:
                index = ids[key] = len(self.classes)
                self.classes.append(key)
            self.subject_class.append(index)
        n = len(self.classes)
        self.all = (1 << n) - 1
        self.by_ns: dict[str, int] = {}
        self.kv: dict[tuple[str, str], int] = {}
        self.keys: dict[str, int] = {}
        self.block_bits: dict[int, int] = {}
        selectable = []
        for i, c in enumerate(self.classes):
            for b in c.ip_signature:
                self.block_bits[b] = self.block_bits.get(b, 0) | (1 << i)
            if c.namespace is None or c.host_network:
                continue
            selectable.append(i)
            bit = 1 << i
            self.by_ns[c.namespace] = self.by_ns.get(c.namespace, 0) | bit
            for k, v in c.labels:
                self.kv[(k, v)] = self.kv.get((k, v), 0) | bit
                self.keys[k] = self.keys.get(k, 0) | bit
        self.selectable = _bits(selectable)
        #: Classes of pods (hostNetwork ones included), as opposed to outside addresses.
        self.pods = _bits([i for i, c in enumerate(self.classes) if c.namespace is not None])
        self._selector_cache: dict[LabelSelector, int] = {}
        self._ns_selector_cache: dict[LabelSelector, int] = {}
        self._peer_cache: dict[tuple[str, Peer], int] = {}

    @staticmethod
    def _signature(
        ip: str | None, ranges: list[tuple[tuple[int, int, int, tuple[tuple[int, int], ...]], int]]
    ) -> frozenset[int]:
        if ip is None or not ranges:
            return frozenset()
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return frozenset()
        version, value = addr.version, int(addr)
        found = []
        for (v, low, high, excepts), block_id in ranges:
            inside = v == version and low <= value <= high
            if inside and not any(el <= value <= eh for el, eh in excepts):
                found.append(block_id)
        return frozenset(found)

    def selector(self, selector: LabelSelector) -> int:
        """Selectable classes whose labels the selector matches."""
        cached = self._selector_cache.get(selector)
        if cached is not None:
            return cached
        bits = self.selectable
        for key, value in selector.match_labels:
            bits &= self.kv.get((key, value), 0)
        for req in selector.match_expressions:
            if req.operator in ("In", "NotIn"):
                any_of = 0
                for value in req.values:
                    any_of |= self.kv.get((req.key, value), 0)
                bits &= any_of if req.operator == "In" else ~any_of
            elif req.operator == "Exists":
                bits &= self.keys.get(req.key, 0)
            else:
                bits &= ~self.keys.get(req.key, 0)
        bits &= self.selectable
        self._selector_cache[selector] = bits
        return bits

    def namespaces(self, selector: LabelSelector) -> int:
        cached = self._ns_selector_cache.get(selector)
        if cached is not None:
            return cached
        bits = 0
        for ns, ns_bits in self.by_ns.items():
            if selector.matches(self.engine.namespace_labels(ns)):
                bits |= ns_bits
        self._ns_selector_cache[selector] = bits
        return bits

    def peer(self, namespace: str, peer: Peer) -> int:
        key = (namespace, peer)
        cached = self._peer_cache.get(key)
        if cached is not None:
            return cached
        if peer.ip_block is not None:
            bits = self.block_bits.get(self.block_ids[peer.ip_block], 0)
        else:
            if peer.namespace_selector is None:
                bits = self.by_ns.get(namespace, 0)
            else:
                bits = self.namespaces(peer.namespace_selector)
            if peer.pod_selector is not None:
                bits &= self.selector(peer.pod_selector)
        self._peer_cache[key] = bits
        return bits

    def rule_peers(self, policy: NetworkPolicy, rule: PolicyRule) -> int:
        if not rule.peers:
            return self.all
        bits = 0
        for peer in rule.peers:
            bits |= self.peer(policy.namespace, peer)
        return bits


def _port_ok(rule: PolicyRule, cls: _Class, port: int, protocol: str) -> bool:
    if not rule.ports:
        return True
    for pp in rule.ports:
        if pp.protocol != protocol:
            continue
        if pp.port is None:
            return True
        if isinstance(pp.port, int):
            if pp.port <= port <= (pp.end_port if pp.end_port is not None else pp.port):
                return True
        elif cls.namespace is not None and (pp.port, port, protocol) in cls.ports:
            return True
    return False


def matrix(
    engine: PolicyEngine,
    sources: Sequence[Subject],
    targets: Sequence[Subject],
    port: int,
    protocol: str = "TCP",
) -> Matrix:
    """Judge every (source, target) pair for one port; see `Matrix.allowed`."""
    # The work allocates many small objects and no cycles: without the cyclic collector
    # it does not rescan the (large) heap of cluster objects again and again.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _matrix(engine, sources, targets, port, protocol)
    finally:
        if enabled:
            gc.enable()


def _matrix(
    engine: PolicyEngine,
    sources: Sequence[Subject],
    targets: Sequence[Subject],
    port: int,
    protocol: str,
) -> Matrix:
    protocol = protocol.upper()
    subjects = [*sources, *targets]
    index = _Index(engine, subjects)
    classes = index.classes
    n = len(classes)
    # Which policies isolate each class, per direction.
    isolating: dict[str, list[list[NetworkPolicy]]] = {
        "ingress": [[] for _ in range(n)],
        "egress": [[] for _ in range(n)],
    }
    for policy in engine.policies:
        selected = index.selector(policy.pod_selector) & index.by_ns.get(policy.namespace, 0)
        if not selected:
            continue
        for direction in ("ingress", "egress"):
            if not policy.isolates(direction):
                continue
            bucket = isolating[direction]
            bits = selected
            while bits:
                low = bits & -bits
                bucket[low.bit_length() - 1].append(policy)
                bits ^= low
    ingress_ok = []
    egress_ok = []
    for i, cls in enumerate(classes):
        policies = isolating["ingress"][i]
        if not policies:
            ingress_ok.append(index.all)
        else:
            bits = 0
            for policy in policies:
                for rule in policy.ingress:
                    if _port_ok(rule, cls, port, protocol):
                        bits |= index.rule_peers(policy, rule)
            ingress_ok.append(bits)
        policies = isolating["egress"][i]
        if not policies:
            egress_ok.append(index.all)
        else:
            bits = 0
            for policy in policies:
                for rule in policy.egress:
                    peers = index.rule_peers(policy, rule)
                    if not peers:
                        continue
                    if rule.ports and any(isinstance(pp.port, str) for pp in rule.ports):
                        ok = 0
                        for j, other in enumerate(classes):
                            if (peers >> j) & 1 and _port_ok(rule, other, port, protocol):
                                ok |= 1 << j
                        bits |= ok
                    elif _port_ok(rule, classes[0], port, protocol):
                        bits |= peers
            egress_ok.append(bits)
    count = len(sources)
    result = Matrix(
        sources,
        targets,
        port,
        protocol,
        index.subject_class[:count],
        index.subject_class[count:],
        egress_ok,
        ingress_ok,
        n,
    )
    result.exempt = _exemptions(engine, sources, targets)
    return result


def _exemptions(
    engine: PolicyEngine, sources: Sequence[Subject], targets: Sequence[Subject]
) -> set[tuple[int, int]]:
    """(source, target) pairs policy cannot restrict: a pod and itself, and a pod and the
    node it runs on. Found through the few node addresses, not by visiting every pair."""
    out: set[tuple[int, int]] = set()
    target_at: dict[tuple[str, str], list[int]] = {}
    on_node_targets: dict[str, list[int]] = {}
    for j, t in enumerate(targets):
        if t.pod is not None:
            target_at.setdefault((t.pod.namespace, t.pod.name), []).append(j)
            if t.pod.node_name and not t.pod.host_network:
                on_node_targets.setdefault(t.pod.node_name, []).append(j)
    on_node_sources: dict[str, list[int]] = {}
    for i, src in enumerate(sources):
        if src.pod is not None:
            for j in target_at.get((src.pod.namespace, src.pod.name), ()):
                out.add((i, j))
            if src.pod.node_name and not src.pod.host_network:
                on_node_sources.setdefault(src.pod.node_name, []).append(i)
        node = engine.node_of_address(src.ip, canonical=True)
        if node is not None:  # the node (or a hostNetwork pod) to the pods on it
            out.update((i, j) for j in on_node_targets.get(node, ()))
    for j, t in enumerate(targets):
        node = engine.node_of_address(t.ip, canonical=True)
        if node is not None:  # pods on the node to their node
            out.update((i, j) for i in on_node_sources.get(node, ()))
    return out


__all__ = ["Matrix", "matrix"]
