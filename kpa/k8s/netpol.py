"""NetworkPolicy (networking.k8s.io/v1) objects, read and validated as the API server does.

Only the object's content lives here; what a policy allows is `kpa.policy`'s business.
Every validation error names the file, the line, the object and the field path, and says
that the API server would reject the object, so a bad manifest never gets a guessed meaning.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from kpa.k8s.objects import _Fields, _metadata, _SchemaError, ignore_codes

PROTOCOLS = ("TCP", "UDP", "SCTP")
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
POLICY_TYPES = ("Ingress", "Egress")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# An IANA service name, as the API validates named ports: at most 15 characters of
# lower-case letters, digits and '-', at least one letter, no '-' at either end or twice.
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")


def valid_port_name(name: str) -> bool:
    return bool(_PORT_NAME.match(name)) and "--" not in name and re.search("[a-z]", name) is not None


@dataclass(frozen=True)
class Requirement:
    """One matchExpressions entry."""

    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: tuple[str, ...]

    def text(self) -> str:
        if self.operator in ("Exists", "DoesNotExist"):
            return f"{'!' if self.operator == 'DoesNotExist' else ''}{self.key}"
        return f"{self.key} {self.operator.lower()} ({','.join(self.values)})"


@dataclass(frozen=True)
class LabelSelector:
    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    @property
    def empty(self) -> bool:
        """An empty selector selects everything."""
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: dict[str, str]) -> bool:
        for key, value in self.match_labels:
            if labels.get(key) != value:
                return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "In":
                if not present or labels[req.key] not in req.values:
                    return False
            elif req.operator == "NotIn":
                if present and labels[req.key] in req.values:
                    return False
            elif req.operator == "Exists":
                if not present:
                    return False
            elif present:  # DoesNotExist
                return False
        return True

    def text(self) -> str:
        """The selector in `kubectl get -l` syntax; `{}` (everything) when empty."""
        parts = [f"{k}={v}" for k, v in self.match_labels]
        parts += [r.text() for r in self.match_expressions]
        return ",".join(parts) if parts else "{}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.match_labels:
            out["matchLabels"] = dict(self.match_labels)
        if self.match_expressions:
            out["matchExpressions"] = [
                {"key": r.key, "operator": r.operator, **({"values": list(r.values)} if r.values else {})}
                for r in self.match_expressions
            ]
        return out


@dataclass(frozen=True)
class IPBlock:
    cidr: str  # as written (host bits allowed)
    network: IPNetwork  # host bits cleared
    excepts: tuple[IPNetwork, ...] = ()

    def contains(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if ip.version != self.network.version or ip not in self.network:
            return False
        return not any(ip in e for e in self.excepts)

    def text(self) -> str:
        if not self.excepts:
            return f"ipBlock {self.cidr}"
        return f"ipBlock {self.cidr} except {', '.join(str(e) for e in self.excepts)}"


@dataclass(frozen=True)
class Peer:
    """One from/to entry. Exactly one of ip_block or the selectors is set."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None
    line: int | None = field(default=None, compare=False)

    def text(self) -> str:
        if self.ip_block is not None:
            return self.ip_block.text()
        parts = []
        if self.namespace_selector is not None:
            parts.append(f"namespaceSelector {self.namespace_selector.text()}")
        if self.pod_selector is not None:
            parts.append(f"podSelector {self.pod_selector.text()}")
        return " and ".join(parts)


@dataclass(frozen=True)
class PolicyPort:
    protocol: str  # TCP, UDP, SCTP (defaulted)
    port: int | str | None = None  # None: every port of the protocol
    end_port: int | None = None
    line: int | None = field(default=None, compare=False)

    def text(self) -> str:
        if self.port is None:
            return f"any/{self.protocol}"
        if self.end_port is not None:
            return f"{self.port}-{self.end_port}/{self.protocol}"
        return f"{self.port}/{self.protocol}"


@dataclass(frozen=True)
class PolicyRule:
    """An ingress or egress rule. Empty peers: everyone; empty ports: every port."""

    peers: tuple[Peer, ...]
    ports: tuple[PolicyPort, ...]
    line: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector
    ingress: tuple[PolicyRule, ...]
    egress: tuple[PolicyRule, ...]
    policy_types: tuple[str, ...]  # after defaulting
    source: str | None = None
    line: int | None = None
    #: Finding codes its `kpa.io/ignore` annotation silences.
    ignore_codes: frozenset[str] = frozenset()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def location(self) -> str | None:
        if self.source is None:
            return None
        return f"{self.source}:{self.line}" if self.line is not None else self.source

    def isolates(self, direction: str) -> bool:
        return ("Ingress" if direction == "ingress" else "Egress") in self.policy_types

    def rules(self, direction: str) -> tuple[PolicyRule, ...]:
        return self.ingress if direction == "ingress" else self.egress


# ---------------------------------------------------------------------------------- parsing


class _Invalid:
    """Builds errors that name the object and say the API server would reject it."""

    def __init__(self, namespace: str, name: str) -> None:
        self.what = f"NetworkPolicy {namespace}/{name}"

    def __call__(self, fields: _Fields, key: str, expected: str, value: Any) -> _SchemaError:
        error = fields.fail(key, expected, value)
        return _SchemaError(
            error.line, f"{self.what}: {error.message} (the API server would reject it)"
        )


def _selector(fields: _Fields, invalid: _Invalid) -> LabelSelector:
    labels = fields.mapping("matchLabels")
    match_labels = []
    for key, value in labels.data.items():
        if not isinstance(value, str):
            raise invalid(labels, str(key), "a string label value", value)
        match_labels.append((str(key), value))
    reqs = []
    for expr in fields.mappings("matchExpressions"):
        req_key = expr.text("key")
        if not req_key:
            raise invalid(expr, "key", "a label key", expr.data.get("key"))
        op = expr.text("operator")
        if op not in OPERATORS:
            raise invalid(expr, "operator", "one of In, NotIn, Exists, DoesNotExist", op)
        values = expr.texts("values")
        if op in ("In", "NotIn") and not values:
            raise invalid(expr, "values", f"at least one value for operator {op}", None)
        if op in ("Exists", "DoesNotExist") and values:
            raise invalid(expr, "values", f"no values for operator {op}", list(values))
        reqs.append(Requirement(req_key, op, tuple(sorted(set(values)))))
    return LabelSelector(tuple(sorted(match_labels)), tuple(reqs))


def _network(fields: _Fields, key: str, text: str | None, invalid: _Invalid) -> IPNetwork:
    if not text or "/" not in text:
        raise invalid(fields, key, "a CIDR such as 10.0.0.0/8", text)
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise invalid(fields, key, "a CIDR such as 10.0.0.0/8", text) from None


def _ip_block(fields: _Fields, invalid: _Invalid) -> IPBlock:
    cidr = fields.text("cidr")
    network = _network(fields, "cidr", cidr, invalid)
    excepts = []
    for index, text in enumerate(fields.texts("except")):
        key = f"except[{index}]"
        exc = _network(fields, key, text, invalid)
        if (
            exc.version != network.version
            or not exc.subnet_of(network)  # type: ignore[arg-type]
            or exc.prefixlen <= network.prefixlen
        ):
            raise invalid(fields, key, f"a CIDR strictly inside {cidr}", text)
        excepts.append(exc)
    return IPBlock(cidr or "", network, tuple(excepts))


def _peer(fields: _Fields, invalid: _Invalid) -> Peer:
    has = {k: fields.data.get(k) is not None for k in ("podSelector", "namespaceSelector", "ipBlock")}
    if has["ipBlock"]:
        if has["podSelector"] or has["namespaceSelector"]:
            raise invalid(
                fields, "ipBlock", "ipBlock alone (not with a pod or namespace selector)", "both"
            )
        return Peer(ip_block=_ip_block(fields.mapping("ipBlock"), invalid), line=fields.line)
    if not has["podSelector"] and not has["namespaceSelector"]:
        raise invalid(fields, "podSelector", "a podSelector, namespaceSelector or ipBlock", None)
    return Peer(
        pod_selector=_selector(fields.mapping("podSelector"), invalid)
        if has["podSelector"] else None,
        namespace_selector=_selector(fields.mapping("namespaceSelector"), invalid)
        if has["namespaceSelector"] else None,
        line=fields.line,
    )


def _port(fields: _Fields, invalid: _Invalid) -> PolicyPort:
    protocol = fields.text("protocol", "TCP") or "TCP"
    if protocol not in PROTOCOLS:
        raise invalid(fields, "protocol", "TCP, UDP or SCTP", protocol)
    port = fields.int_or_text("port")
    end_port = fields.integer("endPort")
    if isinstance(port, int) and not 1 <= port <= 65535:
        raise invalid(fields, "port", "a port number 1-65535", port)
    if isinstance(port, str) and not valid_port_name(port):
        raise invalid(fields, "port", "a port number or an IANA port name", port)
    if end_port is not None:
        if port is None:
            raise invalid(fields, "endPort", "endPort only together with a numeric port", end_port)
        if isinstance(port, str):
            raise invalid(fields, "endPort", "no endPort with the named port " + port, end_port)
        if not 1 <= end_port <= 65535:
            raise invalid(fields, "endPort", "a port number 1-65535", end_port)
        if end_port < port:
            raise invalid(fields, "endPort", f"endPort >= port ({port})", end_port)
    return PolicyPort(protocol, port, end_port, fields.line)


def _rules(spec: _Fields, key: str, peers_key: str, invalid: _Invalid) -> tuple[PolicyRule, ...]:
    rules = []
    for rule in spec.mappings(key):
        rules.append(
            PolicyRule(
                peers=tuple(_peer(p, invalid) for p in rule.mappings(peers_key)),
                ports=tuple(_port(p, invalid) for p in rule.mappings("ports")),
                line=rule.line,
            )
        )
    return tuple(rules)


def parse_network_policy(obj: _Fields) -> NetworkPolicy:
    namespace, name = _metadata(obj, namespaced=True)
    invalid = _Invalid(namespace, name)
    spec = obj.mapping("spec")
    # An absent podSelector decodes to the empty selector, as in the API server: every pod.
    pod_selector = _selector(spec.mapping("podSelector"), invalid)
    ingress = _rules(spec, "ingress", "from", invalid)
    egress = _rules(spec, "egress", "to", invalid)
    types = spec.texts("policyTypes")
    for index, value in enumerate(types):
        if value not in POLICY_TYPES:
            raise invalid(spec, f"policyTypes[{index}]", "Ingress or Egress", value)
    if len(types) > 2 or len(set(types)) != len(types):
        raise invalid(spec, "policyTypes", "at most Ingress and Egress, once each", list(types))
    if not types:
        # The documented default: Ingress always, Egress when there are egress rules.
        types = ("Ingress", "Egress") if egress else ("Ingress",)
    return NetworkPolicy(
        namespace=namespace,
        name=name,
        pod_selector=pod_selector,
        ingress=ingress,
        egress=egress,
        policy_types=tuple(t for t in POLICY_TYPES if t in types),
        source=obj.source,
        line=obj.line,
        ignore_codes=ignore_codes(obj),
    )


__all__ = [
    "OPERATORS",
    "PROTOCOLS",
    "IPBlock",
    "LabelSelector",
    "NetworkPolicy",
    "Peer",
    "PolicyPort",
    "PolicyRule",
    "Requirement",
    "parse_network_policy",
    "valid_port_name",
]
