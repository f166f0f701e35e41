"""Small clusters for the NetworkPolicy truth tables, written as manifests and read back
through kpa's real object loader.

The default world follows the Kubernetes e2e netpol suite's shape: namespaces x, y, z
(label ns=NAME), pods a, b, c in each (label pod=NAME), each declaring the container
ports serve-80-tcp, serve-81-tcp, serve-80-udp, serve-81-udp and serve-80-sctp.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kpa.k8s.objects import ClusterObjects, load_objects
from kpa.policy.engine import PolicyEngine, Subject
from kpa.policy.matrix import matrix
from kpa.render.policy import grid, short_name

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
PORTS = [
    {"name": "serve-80-tcp", "containerPort": 80, "protocol": "TCP"},
    {"name": "serve-81-tcp", "containerPort": 81},
    {"name": "serve-80-udp", "containerPort": 80, "protocol": "UDP"},
    {"name": "serve-81-udp", "containerPort": 81, "protocol": "UDP"},
    {"name": "serve-80-sctp", "containerPort": 80, "protocol": "SCTP"},
]


def namespace(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels if labels is not None else {"ns": name}},
    }


def pod(
    ns: str,
    name: str,
    ips: list[str],
    labels: dict[str, str] | None = None,
    ports: list[dict[str, Any]] | None = None,
    host_network: bool = False,
    node: str = "node-1",
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "nodeName": node,
        "containers": [{"name": "c", "ports": PORTS if ports is None else ports}],
    }
    if host_network:
        spec["hostNetwork"] = True
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "namespace": ns,
            "name": name,
            "labels": labels if labels is not None else {"pod": name},
        },
        "spec": spec,
        "status": {"phase": "Running", "podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips]},
    }


def default_objects() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [namespace(ns) for ns in NAMESPACES]
    for i, ns in enumerate(NAMESPACES, start=1):
        for j, name in enumerate(PODS, start=1):
            out.append(pod(ns, name, [f"10.0.{i}.{j}"]))
    return out


def policy(ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": ns, "name": name},
        "spec": spec,
    }


def load(tmp_path: Path, docs: list[dict[str, Any]], name: str = "objects.yaml") -> ClusterObjects:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return load_objects([str(path)])


def engine_for(tmp_path: Path, docs: list[dict[str, Any]]) -> PolicyEngine:
    return PolicyEngine.from_objects(load(tmp_path, docs))


def pod_subjects(engine: PolicyEngine, family: int | None = None) -> list[Subject]:
    pods = sorted(engine.pods, key=lambda p: (p.namespace, p.name))
    return [engine.subject(p, family=family) for p in pods]


def truth_table(
    engine: PolicyEngine,
    port: int = 80,
    protocol: str = "TCP",
    sources: list[Subject] | None = None,
    targets: list[Subject] | None = None,
) -> str:
    """The matrix as a grid, after checking that every cell equals `decide`."""
    srcs = sources if sources is not None else pod_subjects(engine)
    dsts = targets if targets is not None else pod_subjects(engine)
    m = matrix(engine, srcs, dsts, port, protocol)
    rows = list(m.rows())
    for i, s in enumerate(srcs):
        for j, d in enumerate(dsts):
            decided = engine.decide(s, d, port, protocol)
            assert rows[i][j] == decided.allowed, (s.name, d.name, decided.reason())
    assert m.allowed_count() == sum(sum(r) for r in rows)
    return grid([short_name(s) for s in srcs], [short_name(d) for d in dsts], rows)


def table_text(text: str) -> str:
    """Normalise an expected table written in a test (strip the common indent), then allow
    every pod to reach itself, as the e2e suite's AllowLoopback does: a pod cannot block
    access to itself, whatever the policies say."""
    lines = [line.strip() for line in text.strip().splitlines()]
    out = []
    for line in lines:
        parts = line.split()
        out.append(parts)
    header = out[0]
    for parts in out[1:]:
        if parts[0] in header:
            parts[header.index(parts[0])] = "."
    width = max(len(p) for parts in out for p in parts[1:])
    head = max(len(parts[0]) for parts in out)
    return "\n".join(
        (parts[0].ljust(head) + " " + " ".join(p.ljust(width) for p in parts[1:])).rstrip()
        for parts in out
    ) + "\n"
