"""What the cluster's NetworkPolicies allow, decided from Kubernetes objects alone.

The semantics are those of networking.k8s.io/v1 as the API reference defines them:

* a pod is isolated for a direction when some policy in its namespace selects it and
  lists that direction in its (defaulted) ``policyTypes``; an isolated pod accepts only
  what some rule of those policies admits, and policies add up;
* a connection needs both the source's egress and the destination's ingress to allow it;
* a rule admits a connection when one of its peers matches the other end (or it has no
  peers) and one of its ports matches (or it has none);
* ``podSelector`` alone means pods of the policy's namespace, ``namespaceSelector`` alone
  every pod of the selected namespaces, both together their AND; ``ipBlock`` is its
  cidr minus ``except``; an empty selector selects everything;
* named ports resolve on the destination pod's container ports by name and protocol.

Choices where the API leaves room (documented in docs/policy.md):

* hostNetwork pods are never selected by a pod or namespace selector, so no policy
  isolates them and selector peers never match them; they are seen with their pod IP,
  which is the node's address, and only an ipBlock can match that;
* ipBlock peers match any address, pod addresses included;
* addresses outside the cluster are matched by ipBlock only; a named port never
  matches a destination outside the cluster.

Two exceptions the Kubernetes documentation states hold whatever the policies say: a
pod cannot block access to itself, and traffic to and from the node where a pod runs
(the Node's addresses, and hostNetwork pods on it) is always allowed.

The engine knows nothing of netfilter; Services are judged per endpoint by
`kpa.policy.services`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kpa.k8s.netpol import IPBlock, NetworkPolicy, Peer, PolicyPort, PolicyRule
from kpa.k8s.objects import (
    NAMESPACE_NAME_LABEL,
    ClusterObjects,
    Namespace,
    Node,
    Pod,
    canonical_ip,
)

Direction = Literal["ingress", "egress"]
DIRECTIONS: tuple[Direction, ...] = ("egress", "ingress")
#: How many rules that did not admit a denied connection a decision keeps, nearest first.
MAX_MISSES = 5


@dataclass(frozen=True)
class Subject:
    """One end of a connection: a pod and the address it uses, or an outside address."""

    ip: str | None
    pod: Pod | None = None

    @property
    def name(self) -> str:
        if self.pod is not None:
            return f"pod/{self.pod.namespace}/{self.pod.name}"
        return self.ip or "?"

    @property
    def selectable(self) -> bool:
        """Whether pod and namespace selectors can select it (hostNetwork pods: no)."""
        return self.pod is not None and not self.pod.host_network

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "ip": self.ip}
        if self.pod is not None:
            out["hostNetwork"] = self.pod.host_network
        return out


@dataclass(frozen=True)
class RuleRef:
    """The rule (and the peer and port of it) that admits a connection."""

    policy: str  # NS/NAME
    direction: Direction
    rule: int  # index in spec.ingress / spec.egress
    peer: int | None  # index in from/to; None when the rule has no peers (everyone)
    port: int | None  # index in ports; None when the rule has no ports (every port)
    peer_text: str
    port_text: str
    location: str | None

    def text(self) -> str:
        peer = f"from[{self.peer}]" if self.direction == "ingress" else f"to[{self.peer}]"
        peer = "everyone" if self.peer is None else f"{peer} {self.peer_text}"
        port = "every port" if self.port is None else f"ports[{self.port}] {self.port_text}"
        return f"{self.policy} {self.direction}[{self.rule}]: {peer}, {port}"

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "direction": self.direction,
            "rule": self.rule,
            "peer": self.peer,
            "peer_text": self.peer_text if self.peer is not None else "everyone",
            "port": self.port,
            "port_text": self.port_text if self.port is not None else "every port",
            "location": self.location,
        }


@dataclass(frozen=True)
class Miss:
    """A rule of an isolating policy that did not admit the connection, and why."""

    policy: str
    direction: Direction
    rule: int
    reasons: tuple[str, ...]
    location: str | None
    peer_ok: bool
    port_ok: bool

    def text(self) -> str:
        return f"{self.policy} {self.direction}[{self.rule}]: " + "; ".join(self.reasons)

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "direction": self.direction,
            "rule": self.rule,
            "reasons": list(self.reasons),
            "location": self.location,
        }


@dataclass(frozen=True)
class DirectionVerdict:
    """One direction of a connection: the source's egress or the destination's ingress."""

    direction: Direction
    subject: str  # whose policies these are
    isolating: tuple[str, ...]  # NS/NAME of the policies that isolate the subject
    admitted_by: tuple[RuleRef, ...]
    misses: tuple[Miss, ...]  # nearest first; only when denied
    note: str | None = None  # why policies cannot apply (outside the cluster, hostNetwork)

    @property
    def allowed(self) -> bool:
        return not self.isolating or bool(self.admitted_by)

    def reason(self) -> str:
        if self.note is not None:
            return f"{self.direction} allowed, no policy applies: {self.note}"
        if not self.isolating:
            return f"{self.direction} not isolated: no NetworkPolicy selects {self.subject} for {self.direction.capitalize()}"
        if self.admitted_by:
            return f"{self.direction} allowed by {self.admitted_by[0].text()}"
        names = ", ".join(self.isolating)
        return f"{self.direction} denied: isolated by {names} and no rule admits the connection"

    def to_json(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "allowed": self.allowed,
            "isolated": bool(self.isolating),
            "isolating_policies": list(self.isolating),
            "admitted_by": [r.to_json() for r in self.admitted_by],
            "nearest_misses": [m.to_json() for m in self.misses],
            "note": self.note,
            "reason": self.reason(),
        }


@dataclass(frozen=True)
class Decision:
    src: Subject
    dst: Subject
    port: int
    protocol: str
    egress: DirectionVerdict
    ingress: DirectionVerdict

    @property
    def allowed(self) -> bool:
        return self.egress.allowed and self.ingress.allowed

    def reason(self) -> str:
        """The Kubernetes reason in one line: the first direction that denies, or both admits."""
        for verdict in (self.egress, self.ingress):
            if not verdict.allowed:
                return verdict.reason()
        return f"{self.egress.reason()}; {self.ingress.reason()}"

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.src.name,
            "to": self.dst.name,
            "from_ip": self.src.ip,
            "to_ip": self.dst.ip,
            "port": self.port,
            "protocol": self.protocol,
            "allowed": self.allowed,
            "reason": self.reason(),
            "egress": self.egress.to_json(),
            "ingress": self.ingress.to_json(),
        }


def _parse_ip(ip: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if ip is None:
        return None
    try:
        return ipaddress.ip_address(ip)
    except ValueError:
        return None


def port_matches(pp: PolicyPort, dst: Subject, port: int, protocol: str) -> tuple[bool, str]:
    """Whether one `ports` entry admits port/protocol on `dst`, and if not, why."""
    if pp.protocol != protocol:
        return False, f"protocol {protocol} is not {pp.protocol}"
    if pp.port is None:
        return True, ""
    if isinstance(pp.port, int):
        high = pp.end_port if pp.end_port is not None else pp.port
        if pp.port <= port <= high:
            return True, ""
        return False, f"port {port} is not {pp.text()}"
    if dst.pod is None:
        return False, f"named port {pp.port!r} cannot be resolved on {dst.name}, which is not a pod"
    declared = [c for c in dst.pod.container_ports if c.name == pp.port and c.protocol == protocol]
    if not declared:
        return False, f"{dst.name} declares no {protocol} container port named {pp.port!r}"
    if any(c.port == port for c in declared):
        return True, ""
    numbers = ", ".join(str(c.port) for c in declared)
    return False, f"named port {pp.port!r} is {numbers}/{protocol} on {dst.name}, not {port}"


class PolicyEngine:
    """Decides connections between pods and addresses under the cluster's NetworkPolicies.

    Stable API: `decide(src, dst, port, protocol) -> Decision`, `subject(...)`,
    `isolating(pod, direction)`, `peer_matches(...)`, and `kpa.policy.matrix.matrix`.
    """

    def __init__(
        self,
        pods: Iterable[Pod] = (),
        namespaces: Iterable[Namespace] = (),
        policies: Iterable[NetworkPolicy] = (),
        nodes: Iterable[Node] = (),
    ) -> None:
        self.pods: tuple[Pod, ...] = tuple(pods)
        self.policies: tuple[NetworkPolicy, ...] = tuple(policies)
        self._namespaces = {n.name: n for n in namespaces}
        self._ns_labels: dict[str, dict[str, str]] = {}
        #: Namespaces that pods or policies use but no Namespace object describes.
        self.assumed_namespaces: set[str] = set()
        for ns in {p.namespace for p in self.pods} | {p.namespace for p in self.policies}:
            self.namespace_labels(ns)
        self.by_namespace: dict[str, list[NetworkPolicy]] = {}
        for policy in self.policies:
            self.by_namespace.setdefault(policy.namespace, []).append(policy)
        self._pod_by_ip: dict[str, Pod] = {}
        for pod in sorted(self.pods, key=lambda p: not p.host_network):
            for ip in pod.pod_ips:
                self._pod_by_ip[canonical_ip(ip)] = pod
        # Which node an address belongs to: Node objects' addresses, and the addresses of
        # hostNetwork pods (which are their node's).
        self._node_of_address: dict[str, str] = {}
        for node in nodes:
            for ip in (*node.internal_ips, *node.external_ips):
                self._node_of_address[canonical_ip(ip)] = node.name
        for pod in self.pods:
            if pod.host_network and pod.node_name:
                for ip in pod.pod_ips:
                    self._node_of_address.setdefault(canonical_ip(ip), pod.node_name)

    @classmethod
    def from_objects(cls, objects: ClusterObjects) -> PolicyEngine:
        return cls(objects.pods, objects.namespaces, objects.network_policies, objects.nodes)

    @property
    def namespace_names(self) -> list[str]:
        return sorted(set(self._namespaces) | set(self._ns_labels))

    def namespace_labels(self, name: str) -> dict[str, str]:
        """A namespace's labels; without its Namespace object, only the name label the
        API server always sets (and the namespace is listed in `assumed_namespaces`)."""
        labels = self._ns_labels.get(name)
        if labels is None:
            ns = self._namespaces.get(name)
            if ns is not None:
                labels = ns.label_map
            else:
                labels = {NAMESPACE_NAME_LABEL: name}
                self.assumed_namespaces.add(name)
            self._ns_labels[name] = labels
        return labels

    def warnings(self) -> list[str]:
        if not self.assumed_namespaces:
            return []
        names = ", ".join(sorted(self.assumed_namespaces))
        return [
            f"no Namespace object for {names}: namespace selectors see only the "
            f"{NAMESPACE_NAME_LABEL} label there (give the Namespaces to use their labels)"
        ]

    # ----------------------------------------------------------------- subjects

    def pod_by_ip(self, ip: str) -> Pod | None:
        return self._pod_by_ip.get(canonical_ip(ip))

    def subject(self, pod: Pod | None = None, ip: str | None = None, family: int | None = None) -> Subject:
        """A pod (using its address of `family`, or its first) or an address.

        An address that belongs to a pod is that pod.
        """
        if pod is None and ip is not None:
            pod = self.pod_by_ip(ip)
            return Subject(canonical_ip(ip), pod)
        if pod is None:
            raise ValueError("a subject needs a pod or an address")
        chosen = ip
        if chosen is None:
            for candidate in pod.pod_ips:
                parsed = _parse_ip(candidate)
                if family is None or (parsed is not None and parsed.version == family):
                    chosen = candidate
                    break
        return Subject(chosen, pod)

    # ---------------------------------------------------------------- semantics

    def node_of_address(self, ip: str | None, canonical: bool = False) -> str | None:
        """The node an address belongs to (a Node's address or a hostNetwork pod's).

        `canonical=True` promises `ip` is already in canonical form (as subjects' are)."""
        if not ip or not self._node_of_address:
            return None
        return self._node_of_address.get(ip if canonical else canonical_ip(ip))

    def exemption(self, pod: Pod, other: Subject) -> str | None:
        """Why policy cannot restrict traffic between `pod` and `other`, if it cannot.

        The documented exceptions: a pod cannot block access to itself, and traffic to
        and from the node where a pod runs is always allowed.
        """
        if other.pod is not None and other.pod.key == pod.key:
            return "a pod cannot block access to itself"
        node = self.node_of_address(other.ip)
        if node is not None and node == pod.node_name:
            return f"traffic between a pod and its own node ({node}) is always allowed"
        return None

    def selects(self, policy: NetworkPolicy, pod: Pod) -> bool:
        """Whether the policy's spec.podSelector selects the pod (never a hostNetwork pod)."""
        if pod.host_network or pod.namespace != policy.namespace:
            return False
        return policy.pod_selector.matches(pod.label_map)

    def isolating(self, pod: Pod, direction: Direction) -> list[NetworkPolicy]:
        return [
            p
            for p in self.by_namespace.get(pod.namespace, ())
            if p.isolates(direction) and self.selects(p, pod)
        ]

    def peer_matches(self, policy: NetworkPolicy, peer: Peer, other: Subject) -> tuple[bool, str]:
        """Whether a from/to entry of `policy` matches `other`, and if not, why."""
        if peer.ip_block is not None:
            return self._ip_block_matches(peer.ip_block, other)
        if other.pod is None:
            return False, f"{other.name} is not a pod; only an ipBlock can match it"
        if other.pod.host_network:
            return False, f"{other.name} is a hostNetwork pod; selectors never select it"
        ns = other.pod.namespace
        if peer.namespace_selector is None:
            if ns != policy.namespace:
                return False, (
                    f"podSelector without namespaceSelector means namespace {policy.namespace}, "
                    f"not {ns}"
                )
        elif not peer.namespace_selector.matches(self.namespace_labels(ns)):
            return False, (
                f"namespaceSelector {peer.namespace_selector.text()} does not select "
                f"namespace {ns} ({_labels_text(self.namespace_labels(ns))})"
            )
        if peer.pod_selector is not None and not peer.pod_selector.matches(other.pod.label_map):
            return False, (
                f"podSelector {peer.pod_selector.text()} does not select {other.name} "
                f"({_labels_text(other.pod.label_map)})"
            )
        return True, ""

    @staticmethod
    def _ip_block_matches(block: IPBlock, other: Subject) -> tuple[bool, str]:
        ip = _parse_ip(other.ip)
        if ip is None:
            return False, f"{other.name} has no address for {block.text()}"
        if block.contains(ip):
            return True, ""
        if ip.version == block.network.version and ip in block.network:
            return False, f"{ip} is in an except of {block.text()}"
        return False, f"{ip} is not in {block.text()}"

    def _direction(
        self, direction: Direction, subject: Subject, other: Subject, dst: Subject, port: int, protocol: str
    ) -> DirectionVerdict:
        if subject.pod is None:
            return DirectionVerdict(direction, subject.name, (), (), (), "outside the cluster")
        if subject.pod.host_network:
            return DirectionVerdict(
                direction, subject.name, (), (), (),
                f"{subject.name} is a hostNetwork pod, which no podSelector selects",
            )
        exempt = self.exemption(subject.pod, other)
        if exempt is not None:
            return DirectionVerdict(direction, subject.name, (), (), (), exempt)
        isolating = self.isolating(subject.pod, direction)
        admitted: list[RuleRef] = []
        misses: list[Miss] = []
        for policy in isolating:
            for index, rule in enumerate(policy.rules(direction)):
                ref, miss = self._rule(policy, direction, index, rule, other, dst, port, protocol)
                if ref is not None:
                    admitted.append(ref)
                elif miss is not None:
                    misses.append(miss)
            if not policy.rules(direction):
                misses.append(
                    Miss(policy.key, direction, -1,
                         (f"the policy has no {direction} rules: it only isolates",),
                         policy.location, False, False)
                )
        if admitted:
            misses = []
        # Nearest first: rules that matched the peer or the port, then fewer reasons;
        # policies without rules of this direction (pure isolation) last.
        misses.sort(key=lambda m: (m.rule < 0, not (m.peer_ok or m.port_ok), len(m.reasons),
                                   m.policy, m.rule))
        return DirectionVerdict(
            direction, subject.name, tuple(p.key for p in isolating), tuple(admitted),
            tuple(misses[:MAX_MISSES]),
        )

    def _rule(
        self,
        policy: NetworkPolicy,
        direction: Direction,
        index: int,
        rule: PolicyRule,
        other: Subject,
        dst: Subject,
        port: int,
        protocol: str,
    ) -> tuple[RuleRef | None, Miss | None]:
        peer_index: int | None = None
        peer_text = ""
        peer_reasons: list[str] = []
        if rule.peers:
            for i, peer in enumerate(rule.peers):
                ok, why = self.peer_matches(policy, peer, other)
                if ok:
                    peer_index, peer_text = i, peer.text()
                    break
                side = "from" if direction == "ingress" else "to"
                peer_reasons.append(f"{side}[{i}]: {why}")
        port_index: int | None = None
        port_text = ""
        port_reasons: list[str] = []
        if rule.ports:
            for i, pp in enumerate(rule.ports):
                ok, why = port_matches(pp, dst, port, protocol)
                if ok:
                    port_index, port_text = i, pp.text()
                    break
                port_reasons.append(f"ports[{i}]: {why}")
        peer_ok = not rule.peers or peer_index is not None
        port_ok = not rule.ports or port_index is not None
        location = _location(policy.source, rule.line)
        if peer_ok and port_ok:
            return RuleRef(policy.key, direction, index, peer_index, port_index, peer_text,
                           port_text, location), None
        reasons = ([] if peer_ok else peer_reasons) + ([] if port_ok else port_reasons)
        return None, Miss(policy.key, direction, index, tuple(reasons), location, peer_ok, port_ok)

    def decide(self, src: Subject, dst: Subject, port: int, protocol: str = "TCP") -> Decision:
        """Whether `src` may open a connection to `dst` on port/protocol, and why."""
        protocol = protocol.upper()
        egress = self._direction("egress", src, dst, dst, port, protocol)
        ingress = self._direction("ingress", dst, src, dst, port, protocol)
        return Decision(src, dst, port, protocol, egress, ingress)


def _labels_text(labels: Mapping[str, str]) -> str:
    if not labels:
        return "no labels"
    return "labels " + ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _location(source: str | None, line: int | None) -> str | None:
    if source is None:
        return None
    return f"{source}:{line}" if line is not None else source


__all__ = [
    "DIRECTIONS",
    "Decision",
    "Direction",
    "DirectionVerdict",
    "Miss",
    "PolicyEngine",
    "RuleRef",
    "Subject",
    "port_matches",
]
