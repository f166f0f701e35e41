"""`kpa policy`: what the cluster's NetworkPolicies allow (check, matrix, lint).

Registered on the main `kpa` group by kpa.cli; see docs/policy.md.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import click

from kpa.errors import KpaError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
PROTOCOL = click.Choice(["tcp", "udp", "sctp"], case_sensitive=False)


def _object_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--context", metavar="NAME", help="kubeconfig context to use.")(fn)
    fn = click.option("--kubeconfig", metavar="FILE",
                      help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster).")(fn)
    fn = click.option("--kube/--no-kube", default=False,
                      help="Read the objects from the Kubernetes API (list/get only).")(fn)
    fn = click.option("--cluster", "-c", "cluster", multiple=True, metavar="PATH",
                      help="Namespaces, Pods, NetworkPolicies, Services, EndpointSlices as "
                           "`kubectl get -o yaml|json` prints them; files, directories or `-`. "
                           "Repeatable.")(fn)
    return fn


def _load_objects(cluster: Sequence[str], kube: bool, kubeconfig: str | None,
                  context: str | None) -> Any:
    from kpa.render.progress import status

    with status("reading the cluster objects"):
        return _read_objects(cluster, kube, kubeconfig, context)


def _read_objects(cluster: Sequence[str], kube: bool, kubeconfig: str | None,
                  context: str | None) -> Any:
    if cluster:
        from kpa.k8s.objects import load_objects

        return load_objects(list(cluster))
    if kube:
        from kpa.k8s.live import load_live

        return load_live(kubeconfig, context, None, policy=True)
    raise click.UsageError("give the cluster objects with --cluster PATH (or --kube)")


def _warn(lines: Sequence[str]) -> None:
    for line in lines:
        click.echo(f"warning: {line}", err=True)


def _dump(doc: Any, fmt: str) -> None:
    from kpa.render.output import dump

    click.echo(dump(doc, fmt), nl=False)


@click.group(context_settings=CONTEXT)
def policy() -> None:
    """What the cluster's NetworkPolicies allow: check one connection, print the
    connectivity matrix, or lint the policies.

    kpa judges a Service destination after kube-proxy's DNAT, endpoint by endpoint,
    because that is what NetworkPolicy sees. See docs/policy.md.

    \b
    Examples:
      kpa policy check -c cluster/ --from pod/shop/client --to svc/shop/web:http
      kpa policy matrix -c cluster/ --port 80 -n shop
      kpa policy lint -c cluster/
    """


# ---------------------------------------------------------------------------------- check


def _split_port(text: str) -> tuple[str, str | None]:
    """`IP`, `IP:PORT`, `[IPv6]:PORT` or a bare IPv6 address."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, port
    return text, None


def _ip(text: str, param: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise click.BadParameter(f"expected pod/NS/NAME or an IP address, found {text!r}",
                                 param_hint=param) from None


def _pod(objects: Any, ref: str, param: str) -> Any:
    parts = ref[4:].split("/")
    if len(parts) != 2 or not all(parts):
        raise click.BadParameter(f"expected pod/NAMESPACE/NAME, found {ref!r}", param_hint=param)
    pod = objects.pod(parts[0], parts[1])
    if pod is None:
        raise KpaError(f"no Pod {parts[0]}/{parts[1]} in the cluster objects")
    return pod


def _port_number(text: str, param: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise click.BadParameter(f"expected a port number 1-65535, found {text!r}",
                                 param_hint=param)
    return int(text)


@policy.command(context_settings=CONTEXT)
@_object_options
@click.option("--from", "from_", required=True, metavar="pod/NS/NAME|IP",
              help="Who opens the connection: a pod, or an address (a pod's address is that pod).")
@click.option("--to", "to", required=True, metavar="pod/NS/NAME|svc/NS/NAME[:PORT]|IP[:PORT]",
              help="The destination; a Service is judged per endpoint after DNAT; a pod's "
                   ":PORT may name one of its container ports.")
@click.option("-p", "--protocol", "protocol", type=PROTOCOL, default=None,
              help="Protocol (default TCP, or the Service port's).")
@click.option("--port", type=click.IntRange(1, 65535), metavar="N",
              help="Destination port (for a Service: its port number or use :PORT).")
@click.option("--rules", "-r", "rules", multiple=True, metavar="FILE",
              help="The source node's rules: take a Service's endpoints from tracing them "
                   "instead of from the EndpointSlices. Repeatable.")
@click.option("--node-ip", "node_ips", multiple=True, metavar="IP",
              help="An address of the node whose --rules these are (repeatable).")
@click.option("-o", "--output", "fmt", type=click.Choice(["text", "json", "yaml"]),
              default="text", show_default=True)
def check(cluster: Sequence[str], kube: bool, kubeconfig: str | None, context: str | None,
          from_: str, to: str, protocol: str | None, port: int | None, rules: Sequence[str],
          node_ips: Sequence[str], fmt: str) -> None:
    """Say whether the policies allow one connection, and why.

    The first lines give the verdict and the Kubernetes reason. Then, for the
    source's egress and the destination's ingress: which policies isolate the pod,
    which rule admits the connection (policy, rule index, peer, port), or, when
    none does, the nearest rules that did not and why. For a Service, every
    endpoint is judged (its pod, its resolved targetPort); the connection is
    allowed only if every endpoint allows it. Exit status: 0 allowed, 1 denied,
    2 bad input.

    \b
    Examples:
      kpa policy check -c cluster/ --from pod/shop/client --to pod/shop/web --port 8080
      kpa policy check -c cluster/ --from pod/shop/client --to svc/shop/web:http
      kpa policy check -c cluster/ -r node.save --from pod/shop/client --to svc/shop/web:http
      kpa policy check -c cluster/ --from 203.0.113.9 --to pod/shop/web --port 8080 -o json
    """
    from kpa.policy.engine import PolicyEngine
    from kpa.render.policy import decision_lines

    objects = _load_objects(cluster, kube, kubeconfig, context)
    engine = PolicyEngine.from_objects(objects)
    _warn(engine.warnings())
    if from_.startswith("pod/"):
        src = engine.subject(_pod(objects, from_, "--from"))
        if src.ip is None:
            raise KpaError(f"{src.name} has no IP address yet")
    else:
        src = engine.subject(ip=_ip(from_, "--from"))
    family = ipaddress.ip_address(src.ip or "0.0.0.0").version
    proto = protocol.upper() if protocol else None

    to = _as_service(objects, to, port)
    if to.startswith("svc/"):
        service_decision = _check_service(engine, objects, src, to, proto, port, family,
                                          rules, node_ips)
        if fmt != "text":
            _dump(service_decision.to_json(), fmt)
        else:
            click.echo(_service_text(service_decision), nl=False)
        if not service_decision.allowed:
            raise click.exceptions.Exit(1)
        return

    if to.startswith("pod/"):
        body, _, port_text = to.partition(":")
        dst = engine.subject(_pod(objects, body, "--to"), family=family)
    else:
        host, port_text_opt = _split_port(to)
        port_text = port_text_opt or ""
        dst = engine.subject(ip=_ip(host, "--to"))
    if port_text and not port_text.isdigit() and dst.pod is not None:
        # A container port's name, as a Service's targetPort would name it.
        named = [c for c in dst.pod.container_ports
                 if c.name == port_text and (proto is None or c.protocol == proto)]
        if not named:
            have = ", ".join(f"{c.name}:{c.port}/{c.protocol}" for c in dst.pod.container_ports
                             if c.name) or "none"
            raise KpaError(f"{dst.name} declares no container port named {port_text!r} "
                           f"(named ports: {have})")
        port, proto = named[0].port, proto or named[0].protocol
    elif port_text:
        port = _port_number(port_text, "--to")
    if port is None:
        raise click.UsageError("give the destination port: --port N (or :PORT in --to)")
    decision = engine.decide(src, dst, port, proto or "TCP")
    enforced, scope = _enforced(rules, node_ips, objects, src, dst, port, proto or "TCP") if rules \
        else (None, "both")
    from kpa.k8s.kuberouter import ELSEWHERE, intended_here

    # With the other end on another node, this node enforces one direction only.
    want = intended_here(decision.egress.allowed, decision.ingress.allowed, scope)
    if fmt != "text":
        doc = decision.to_json()
        if enforced is not None:
            doc["enforced"] = enforced.to_json()
            doc["differs"] = _differs(want, enforced.verdict)
            if scope != "both" and enforced.verdict != "unknown":
                doc["note"] = ELSEWHERE[scope]
        _dump(doc, fmt)
    else:
        lines = decision_lines(decision)
        if enforced is not None:
            lines.append(enforced.text())
            if scope != "both" and enforced.verdict != "unknown":
                lines.append("  " + ELSEWHERE[scope])
            if _differs(want, enforced.verdict):
                lines.append("DIFFERS: the node's rules " + ("let it through" if enforced.verdict == "allowed"
                                                             else "block it") + " but the policies "
                             + ("allow" if want else "deny") + " it")
        click.echo("\n".join(lines) + "\n", nl=False)
    if not decision.allowed:
        raise click.exceptions.Exit(1)


def _as_service(objects: Any, to: str, port: int | None) -> str:
    """A ClusterIP destination means its Service: policy sees the endpoint, never the IP."""
    if to.startswith(("svc/", "pod/")):
        return to
    host, port_text = _split_port(to)
    try:
        svc = objects.service_by_cluster_ip(host)
    except ValueError:
        svc = None
    if svc is None:
        return to
    number = port_text or (str(port) if port is not None else "")
    click.echo(f"{host} is the ClusterIP of Service {svc.namespace}/{svc.name}; judging its "
               "endpoints", err=True)
    return f"svc/{svc.namespace}/{svc.name}" + (f":{number}" if number else "")


def _differs(intended: bool, enforced: str) -> bool:
    return enforced != "unknown" and (enforced == "allowed") != intended


def _enforced(rules: Sequence[str], node_ips: Sequence[str], objects: Any, src: Any, dst: Any, port: int,
              proto: str) -> tuple[Any, str]:
    """What the node whose rules these are does to the connection (kpa.k8s.kuberouter, kpa.k8s.kubenetpol),
    and the directions of the policies it enforces (kpa.k8s.kuberouter.compared)."""
    from kpa.k8s import kubenetpol
    from kpa.k8s.kuberouter import NOT_HERE, KubeRouterMap, compared, enforced, on_this_node
    from kpa.sources import load_rules

    if src.ip is None or dst.ip is None:
        raise KpaError("both ends need an address to trace them through --rules")
    from kpa.k8s.kubenetpol import queue_decider
    from kpa.render.progress import status

    with status("reading the rules"):
        ruleset = load_rules(list(rules))
    knp = kubenetpol.recognised(ruleset)
    here = (kubenetpol.on_this_node if knp else on_this_node)(ruleset, objects, list(node_ips))
    src_here, dst_here = here(src.ip), here(dst.ip)
    if not (src_here or dst_here):
        # The matrix's answer for the same pair: this node's rules never see the connection.
        return (kubenetpol.not_here() if knp else NOT_HERE), "both"
    kr = KubeRouterMap.from_ruleset(ruleset, objects.network_policies)
    # On a kube-network-policies node, the queued packet is judged as `kpa trace` judges it.
    with status("tracing the connection through the rules"):
        e = enforced(ruleset, list(node_ips), src.ip, dst.ip, port, proto, kr, src_is_node=src.ip in node_ips,
                     queue_decider=queue_decider(ruleset, objects))
    if knp:
        queued = kubenetpol.queued_end(ruleset)
        if queued(src.ip) or queued(dst.ip):
            return e, "both"  # the program at the queue judges egress and ingress both
    return e, compared(src_here, dst_here)


def _check_service(engine: Any, objects: Any, src: Any, ref: str, proto: str | None,
                   port: int | None, family: int, rules: Sequence[str],
                   node_ips: Sequence[str]) -> Any:
    from kpa.policy.services import decide_service, service_target

    body, _, port_ref = ref[4:].partition(":")
    parts = body.split("/")
    if len(parts) != 2 or not all(parts):
        raise click.BadParameter(f"expected svc/NAMESPACE/NAME[:PORT], found {ref!r}",
                                 param_hint="--to")
    svc = objects.service(parts[0], parts[1])
    if svc is None:
        raise KpaError(f"no Service {parts[0]}/{parts[1]} in the cluster objects")
    ports = list(svc.ports)
    if port_ref:
        ports = [p for p in ports if p.name == port_ref or str(p.port) == port_ref]
    if port is not None:
        ports = [p for p in ports if p.port == port]
    if proto:
        ports = [p for p in ports if p.protocol == proto]
    if len(ports) != 1:
        have = ", ".join(f"{p.name or '-'}:{p.port}/{p.protocol}" for p in svc.ports)
        what = "several ports; pick one with :PORT" if ports else "no such port"
        raise KpaError(f"Service {svc.namespace}/{svc.name} has {what} (it has {have})")
    target = service_target(svc, ports[0], family)
    if target is None:
        raise KpaError(f"Service {svc.namespace}/{svc.name} has no IPv{family} cluster IP "
                       "(headless, or another family)")
    ruleset = None
    local: list[str] = list(node_ips)
    if rules:
        from kpa.render.progress import status
        from kpa.sources import load_rules

        with status("reading the rules"):
            ruleset = load_rules(list(rules))
        if not local and src.pod is not None and src.pod.node_name:
            node = objects.node(src.pod.node_name)
            if node is not None:
                local = list(node.internal_ips) + list(node.external_ips)
    from kpa.render.progress import status

    with status("judging the Service's endpoints"):
        return decide_service(engine, objects, src, target, ruleset, local)


def _shape(v: Any) -> tuple[Any, ...]:
    """What decided one direction, without the names of the pods involved."""
    return (v.note is not None, v.isolating,
            tuple((r.policy, r.rule, r.peer, r.port) for r in v.admitted_by),
            tuple((m.policy, m.rule, m.peer_ok, m.port_ok) for m in v.misses))


def _service_text(d: Any) -> str:
    from kpa.render.policy import decision_lines

    verdict = "ALLOWED" if d.allowed else "DENIED"
    lines = [
        f"{verdict}: {d.src.name} -> {d.target.name} port {d.target.port_text}",
        f"  {d.reason()}",
        "  judged per endpoint after kube-proxy's DNAT; endpoints from "
        + ("the node's rules (traced)" if d.source == "rules" else "the EndpointSlices"),
    ]
    shown: dict[Any, str] = {}
    for e in d.endpoints:
        share = f" p={e.probability}" if e.probability is not None else ""
        # Endpoints the same rules decide the same way are explained once.
        key = (e.decision.allowed, e.notes, *(_shape(v) for v in (e.decision.egress,
                                                                  e.decision.ingress)))
        if key in shown:
            verdict = "ALLOWED" if e.decision.allowed else "DENIED"
            lines.append(f"  endpoint {e.endpoint} ({e.subject.name}){share}: {verdict}, "
                         f"by the same rules as {shown[key]}")
            continue
        shown[key] = e.endpoint
        lines.append(f"  endpoint {e.endpoint} ({e.subject.name}){share}:")
        lines.extend(decision_lines(e.decision, "    "))
        lines.extend(f"    note: {note}" for note in e.notes)
    for other in d.other_outcomes:
        lines.append(f"  other outcome: {other}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------- matrix


@policy.command(context_settings=CONTEXT)
@_object_options
@click.option("--port", type=click.IntRange(1, 65535), default=80, show_default=True,
              metavar="N", help="Destination port (for services: the Service port).")
@click.option("--protocol", type=PROTOCOL, default="tcp", show_default=True)
@click.option("-n", "--namespace", "namespaces", multiple=True, metavar="NS",
              help="Only pods (and Services) of this namespace. Repeatable.")
@click.option("--targets", type=click.Choice(["pods", "services"]), default="pods",
              show_default=True, help="Columns: pods, or Service ports judged per endpoint.")
@click.option("--family", type=click.Choice(["4", "6"]), default=None,
              help="Address family of the connections (default: each source's first address).")
@click.option("--rules", "-r", "rules", multiple=True, metavar="FILE",
              help="One node's rules (iptables-save, ipset save...). With --targets pods: each cell also "
                   "gets the node's enforced answer, and cells where it differs are marked. With --targets "
                   "services: the endpoints come from tracing them for each source. Repeatable.")
@click.option("--node-ip", "node_ips", multiple=True, metavar="IP",
              help="An address of the node whose --rules these are (repeatable).")
@click.option("-o", "--output", "fmt",
              type=click.Choice(["text", "csv", "markdown", "json", "yaml"]),
              default="text", show_default=True)
def matrix(cluster: Sequence[str], kube: bool, kubeconfig: str | None, context: str | None,
           port: int, protocol: str, namespaces: Sequence[str], targets: str,
           family: str | None, rules: Sequence[str], node_ips: Sequence[str], fmt: str) -> None:
    """Print who may connect to whom on one port.

    Sources down, destinations across; the text grid uses `.` for allowed and `X`
    for denied, like the Kubernetes e2e netpol truth tables. With --targets
    services each column is a Service port, allowed only when every endpoint is
    (endpoints from the EndpointSlices, chosen as kube-proxy chooses them).
    With --rules (pods), each cell is also traced through the node's rules
    (e.g. kube-router's chains and ipsets; on a kube-network-policies node the
    queue is judged by the policies, as `kpa trace` judges it) and `!` marks
    cells the node enforces differently from the policies.

    \b
    Examples:
      kpa policy matrix -c cluster/ --port 80
      kpa policy matrix -c cluster/ -n shop --protocol udp --port 53 -o csv
      kpa policy matrix -c cluster/ --targets services -o json
      kpa policy matrix -c cluster/ --targets services -r node-a.save --node-ip 192.168.0.2
      kpa policy matrix -c cluster/ -r node.save -r ipset.save --node-ip 192.168.0.2 --port 8080
    """
    from kpa.policy.engine import PolicyEngine
    from kpa.policy.matrix import matrix as build
    from kpa.render.policy import grid, short_name, table
    from kpa.render.progress import status

    objects = _load_objects(cluster, kube, kubeconfig, context)
    engine = PolicyEngine.from_objects(objects)
    _warn(engine.warnings())
    proto = protocol.upper()
    version = int(family) if family else None
    pods = sorted((p for p in engine.pods if not namespaces or p.namespace in namespaces),
                  key=lambda p: (p.namespace, p.name))
    if version is not None:
        # A pod without an address of the family takes no part in its connections.
        without = [p for p in pods if engine.subject(p, family=version).ip is None]
        if without:
            _warn([f"{len(without)} pod(s) without an IPv{version} address left out "
                   f"(e.g. {without[0].namespace}/{without[0].name})"])
            pods = [p for p in pods if p not in without]
    sources = [engine.subject(p, family=version) for p in pods]
    if targets == "services":
        ruleset = None
        if rules:
            from kpa.sources import load_rules

            with status("reading the rules"):
                ruleset = load_rules(list(rules))
        doc, names, cells = _service_matrix(engine, objects, sources, port, proto,
                                            namespaces, version, ruleset, list(node_ips))
    else:
        with status("judging the policies for every pair of pods"):
            m = build(engine, sources, [engine.subject(p, family=version) for p in pods], port, proto)
        names = [short_name(s) for s in sources]
        enforcement = _enforcement(rules, node_ips, objects, sources, list(m.targets), port, proto, m.row) \
            if rules else None
        if fmt == "json":
            _stream_pod_matrix(m, enforcement, engine.warnings())
            return
        with _row_bar(m, enforcement) as rows:
            if fmt == "yaml":
                doc = {"port": port, "protocol": proto, "cells": list(_pod_cells(m, enforcement, rows))}
                if enforcement is not None:
                    doc["differences"] = sum(1 for c in doc["cells"] if c.get("differs"))
                    doc["traces"] = enforcement.traces
            else:
                cells = list(_pod_rows(m, enforcement, rows))
    row_names = [short_name(s) for s in sources]
    if fmt in ("json", "yaml"):
        doc["warnings"] = engine.warnings()
        from kpa.render.output import dump

        with status(f"writing {fmt.upper()}"):
            text = dump(doc, fmt)
        click.echo(text, nl=False)
    elif fmt == "text":
        legend = ", ! enforced differently on the node" if rules and targets == "pods" else ""
        click.echo(f"{proto} port {port}: . allowed, X denied{legend} (from rows to columns)")
        click.echo(grid(row_names, names, cells), nl=False)
    else:
        click.echo(table(row_names, names, cells, fmt), nl=False)


def _enforcement(rules: Sequence[str], node_ips: Sequence[str], objects: Any, sources: list[Any],
                 targets: list[Any], port: int, proto: str, intent_row: Callable[[int], list[bool]]) -> Any:
    """The node's enforced answer for every cell.

    On a kube-network-policies node (kpa.k8s.kubenetpol.EnforcedQueueMatrix), each cell as
    `kpa trace` decides it: the rules before the queue, the policies at the queue (the
    intent matrix's rows where its ends are what the program sees). Otherwise
    (kpa.k8s.kuberouter.EnforcedMatrix) pods the node's rules cannot tell apart
    (kpa.k8s.kuberouter.enforcement_classes) share one answer per pair of classes; between
    two local pods it comes from two half traces.
    """
    from kpa.k8s.kuberouter import EnforcedMatrix, KubeRouterMap, on_this_node
    from kpa.render.progress import status
    from kpa.sources import load_rules

    with status("reading the rules"):
        ruleset = load_rules(list(rules))
    from kpa.k8s import kubenetpol

    if kubenetpol.recognised(ruleset):
        return kubenetpol.EnforcedQueueMatrix(ruleset, objects, list(node_ips), [s.ip for s in sources],
                                              [d.ip for d in targets], port, proto, intent_row,
                                              [s.pod for s in sources], [d.pod for d in targets])
    kr = KubeRouterMap.from_ruleset(ruleset, objects.network_policies)
    return EnforcedMatrix(ruleset, kr, list(node_ips), [s.ip for s in sources], [d.ip for d in targets], port,
                          proto, here=on_this_node(ruleset, objects, list(node_ips)))


@contextmanager
def _row_bar(m: Any, enforcement: Any, streaming: bool = False) -> Iterator[Callable[[int, int], None]]:
    """A bar over the matrix's source rows while the node's answers are computed (stderr, terminal only).

    While rows are written to stdout as they are computed, a bar is shown only when stdout
    is not that terminal too, so the two never interleave.
    """
    from kpa.render.progress import bar

    if enforcement is None or (streaming and sys.stdout.isatty()):
        yield lambda done, total: None
        return
    with bar(f"tracing {len(m.sources)}x{len(m.targets)} connections through the node's rules") as advance:
        yield advance


def _intended_here(m: Any, enforcement: Any, i: int, row: list[bool]) -> tuple[list[bool], str, list[int]]:
    """Row i of the part of the policies' answer the node enforces, which direction is compared where
    only one is, and those columns (kpa.k8s.kuberouter.compared): with the other end on another
    node, that node enforces the other direction."""
    from kpa.k8s.kuberouter import intended_here

    scope, columns = enforcement.partial(i)
    if not columns:
        return row, scope, columns
    out = list(row)
    for j in columns:
        egress, ingress = m.directions(i, j)
        out[j] = intended_here(egress, ingress, scope)
    return out, scope, columns


def _pod_rows(m: Any, enforcement: Any,
              advance: Callable[[int, int], None] | None = None) -> Iterator[list[Any]]:
    """Grid rows: allowed (bool), or "!" where the node enforces the cell differently."""
    total = len(m.sources)
    for i in range(total):
        if advance is not None:
            advance(i, total)
        row = m.row(i)
        if enforcement is None:
            yield row
            continue
        here, _, _ = _intended_here(m, enforcement, i, row)
        yield ["!" if e is not None and _differs(want, e.verdict) else ok
               for ok, want, e in zip(row, here, enforcement.row(i), strict=True)]


def _pod_cells(m: Any, enforcement: Any,
               advance: Callable[[int, int], None] | None = None) -> Iterator[dict[str, Any]]:
    """The JSON/YAML cells, source by source."""
    from kpa.k8s.kuberouter import ELSEWHERE

    port, proto = m.port, m.protocol
    for i, s in enumerate(m.sources):
        if advance is not None:
            advance(i, len(m.sources))
        row = m.row(i)
        here, scope, columns = _intended_here(m, enforcement, i, row) if enforcement is not None \
            else (row, "both", [])
        partial = set(columns)
        for j, d in enumerate(m.targets):
            ok = row[j]
            cell: dict[str, Any] = {"from": s.name, "to": d.name, "port": port, "protocol": proto, "allowed": ok,
                                    "from_ip": s.ip, "to_ip": d.ip}
            e = enforcement.answer(i, j) if enforcement is not None else None
            if e is not None:
                cell["enforced"] = e.to_json()
                cell["differs"] = _differs(here[j], e.verdict)
                if j in partial and e.verdict != "unknown":
                    cell["note"] = ELSEWHERE[scope]
            yield cell


def _stream_pod_matrix(m: Any, enforcement: Any, warnings: list[str]) -> None:
    """The pod matrix as JSON, written row by row with the C encoder (a million cells in seconds).

    The document is what `json.dumps` of the YAML document gives, except that each
    cell is on one line.
    """
    import json

    from kpa.k8s.kuberouter import ELSEWHERE

    enc = json.JSONEncoder().encode
    notes = {scope: f', "note": {enc(text)}}}' for scope, text in ELSEWHERE.items()}
    out = sys.stdout
    out.write(f'{{\n  "port": {enc(m.port)},\n  "protocol": {enc(m.protocol)},\n  "cells": [')
    froms = [f'{{"from": {enc(s.name)}, "to": ' for s in m.sources]
    from_ips = [f', "from_ip": {enc(s.ip)}, "to_ip": ' for s in m.sources]
    tos = [enc(d.name) + f', "port": {enc(m.port)}, "protocol": {enc(m.protocol)}, "allowed": ' for d in m.targets]
    to_ips = [enc(d.ip) for d in m.targets]
    encoded: dict[int, tuple[str, str]] = {}  # id(answer) -> its JSON with differs false / true
    differences = 0
    first = True
    nothing = [None] * len(m.targets)
    with _row_bar(m, enforcement, streaming=True) as advance:
        for i in range(len(m.sources)):
            advance(i, len(m.sources))
            head, mid = froms[i], from_ips[i]
            parts: list[str] = []
            row = m.row(i)
            here, scope, columns = _intended_here(m, enforcement, i, row) if enforcement is not None \
                else (row, "both", [])
            partial = set(columns)
            for j, (ok, want, e) in enumerate(zip(row, here, enforcement.row(i) if enforcement is not None
                                                  else nothing, strict=True)):
                if e is None:
                    tail = "}"
                else:
                    pair = encoded.get(id(e))
                    if pair is None:
                        text = enc(e.to_json())
                        pair = encoded[id(e)] = (f', "enforced": {text}, "differs": false}}',
                                                 f', "enforced": {text}, "differs": true}}')
                    differs = _differs(want, e.verdict)
                    differences += differs
                    tail = pair[differs]
                    if j in partial and e.verdict != "unknown":
                        tail = tail[:-1] + notes[scope]
                parts.append(head + tos[j] + ("true" if ok else "false") + mid + to_ips[j] + tail)
            if parts:
                out.write(("\n    " if first else ",\n    ") + ",\n    ".join(parts))
                first = False
    out.write("\n  ]" if not first else "]")
    if enforcement is not None:
        out.write(f',\n  "differences": {differences},\n  "traces": {enforcement.traces}')
    out.write(',\n  "warnings": ' + json.dumps(warnings, indent=2).replace("\n", "\n  ") + "\n}\n")
    out.flush()


def _service_matrix(engine: Any, objects: Any, sources: list[Any], port: int, proto: str,
                    namespaces: Sequence[str], version: int | None, ruleset: Any = None,
                    node_ips: list[str] | None = None,
                    ) -> tuple[dict[str, Any], list[str], list[list[bool]]]:
    from kpa.policy.services import service_cells, service_target

    targets = []
    for svc in sorted(objects.services, key=lambda s: (s.namespace, s.name)):
        if namespaces and svc.namespace not in namespaces:
            continue
        for sp in svc.ports:
            if sp.port == port and sp.protocol == proto:
                targets.append((svc, sp))
    names = [f"svc/{svc.namespace}/{svc.name}" for svc, _ in targets]
    cells: list[list[bool]] = [[] for _ in sources]
    out = []
    by_family: dict[int | None, list[int]] = {}
    for i, src in enumerate(sources):
        family = version or (ipaddress.ip_address(src.ip).version if src.ip else None)
        by_family.setdefault(family, []).append(i)
    for svc, sp in targets:
        column: dict[int, Any] = {}
        for family, members in by_family.items():
            target = service_target(svc, sp, family)
            if target is None:
                continue
            found = service_cells(engine, objects, [sources[i] for i in members], target,
                                  ruleset, node_ips)
            for i, cell in zip(members, found, strict=True):
                column[i] = (target, cell)
        for i, src in enumerate(sources):
            if i not in column:
                cells[i].append(False)
                continue
            target, cell = column[i]
            cells[i].append(cell.allowed)
            out.append({
                "from": src.name, "to": target.name, "port": port, "protocol": proto,
                "allowed": cell.allowed, "cluster_ip": target.cluster_ip,
                "endpoints": [{"endpoint": e, "pod": who, "allowed": ok}
                              for e, who, ok in cell.endpoints],
                "reason": cell.reason,
                "endpoints_from": cell.source,
            })
    # Cells in row order (source by source), like the pod matrix.
    order = {name: n for n, name in enumerate(names)}
    position = {s.name: n for n, s in enumerate(sources)}
    out.sort(key=lambda c: (position[c["from"]], order[c["to"]]))
    return {"port": port, "protocol": proto, "cells": out}, names, cells


# ----------------------------------------------------------------------------------- lint


@policy.command(context_settings=CONTEXT)
@_object_options
@click.option("--service-cidr", "service_cidrs", multiple=True, metavar="CIDR",
              help="The cluster's Service CIDR(s), to flag ipBlocks inside them. Repeatable.")
@click.option("--info", "include_info", is_flag=True,
              help="Also report info findings (namespaces whose pods no policy isolates).")
@click.option("--fail-on", type=click.Choice(["error", "warning", "info"]), default="warning",
              show_default=True, help="Lowest severity that makes the exit status 1.")
@click.option("-o", "--output", "fmt", type=click.Choice(["text", "json", "yaml"]),
              default="text", show_default=True)
def lint(cluster: Sequence[str], kube: bool, kubeconfig: str | None, context: str | None,
         service_cidrs: Sequence[str], include_info: bool, fail_on: str, fmt: str) -> None:
    """Find mistakes in the NetworkPolicies.

    Policies that select no pod, peers that select no pod or namespace, named
    ports no pod declares, ipBlocks that hold Service addresses (never matched:
    DNAT comes first), egress isolation that cuts pods off from the cluster DNS,
    redundant rules and duplicate policies. Each finding names its code, the
    object (NS/NAME) and FILE:LINE. `kpa lint` runs the same checks whenever
    NetworkPolicies are among its objects. Exit status: 0 clean, 1 findings at or
    above --fail-on, 2 bad input.

    \b
    Examples:
      kpa policy lint -c cluster/
      kpa policy lint -c cluster/ --service-cidr 10.96.0.0/12 --info -o json
    """
    from kpa.policy.lint import exit_status, format_text, lint_policies

    for cidr in service_cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise click.BadParameter(f"expected a CIDR, found {cidr!r}",
                                     param_hint="--service-cidr") from None
    objects = _load_objects(cluster, kube, kubeconfig, context)
    from kpa.render.progress import status

    with status("checking the policies"):
        findings = lint_policies(objects, service_cidrs=service_cidrs, include_info=include_info)
    if fmt == "text":
        click.echo(format_text(findings), nl=False)
    else:
        _dump({"findings": [f.to_json() for f in findings]}, fmt)
    code = exit_status(findings, fail_on)
    if code:
        sys.stdout.flush()
        raise click.exceptions.Exit(code)


__all__ = ["policy"]
