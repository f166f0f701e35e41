"""The `kpa` command line (also `kubectl kpa` through the kubectl-kpa entry point)."""

from __future__ import annotations

import gc
import ipaddress
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import click

from kpa import __version__
from kpa.errors import KpaError

OUTPUT_TEXT = click.Choice(["text", "json", "yaml"])
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def example_dir() -> str:
    return str(resources.files("kpa") / "data" / "example")


@dataclass
class Inputs:
    """Everything a command reads: rules, cluster objects, and node facts."""

    rules: list[str] = field(default_factory=list)
    cluster: list[str] = field(default_factory=list)
    node_ips: list[str] = field(default_factory=list)
    node: str | None = None
    live: bool = False
    example: bool = False
    kube: bool = False
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    image: str | None = None
    iptc: bool = False

    def resolve_example(self) -> None:
        if not self.example:
            return
        d = example_dir()
        rel = os.path.relpath(d)
        if not rel.startswith(".."):
            d = rel  # inside a checkout: the short path, as a person would type it
        self.rules = self.rules or [os.path.join(d, "rules.v4.save")]
        self.cluster = self.cluster or [os.path.join(d, "cluster.yaml")]
        with open(os.path.join(d, "meta.json")) as fh:
            meta = json.load(fh)
        if not self.node_ips:
            self.node_ips = [ip for ip in meta.get("node_ips", {}).values() if ip]
        self.node = self.node or meta.get("node_name")


def rules_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--example", is_flag=True, help="Use the example cluster bundled with kpa.")(fn)
    fn = click.option("--iptc", is_flag=True, help="With --live, read existing legacy tables through python-iptables.")(fn)
    fn = click.option("--live", is_flag=True, help="Read this host's rules (iptables-save, ip6tables-save, nft; read-only, needs root).")(fn)
    fn = click.option("--rules", "-r", "rules", multiple=True, metavar="FILE", type=click.Path(allow_dash=True),
                      help="iptables-save, ip6tables-save, `nft list ruleset` or `nft -j list ruleset` output; "
                           "gzip is fine; `-` reads stdin. Repeatable.")(fn)
    return fn


def kube_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--image", metavar="IMAGE",
                      help="Image for the debug pod that reads a node's rules (with --kube --node and no --rules).")(fn)
    fn = click.option("-n", "--namespace", metavar="NS", help="Only read objects in this namespace (and run the debug pod there).")(fn)
    fn = click.option("--context", metavar="NAME", help="kubeconfig context to use.")(fn)
    fn = click.option("--kubeconfig", metavar="FILE", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster).")(fn)
    fn = click.option("--kube/--no-kube", default=False,
                      help="Read cluster objects from the Kubernetes API (read-only); with --node and no --rules, "
                           "also read that node's rules through a short-lived debug pod. On by default as "
                           "`kubectl kpa`.")(fn)
    return fn


def cluster_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--node", metavar="NAME", shell_complete=complete_node,
                      help="This node's name, to find its Node object and local endpoints.")(fn)
    fn = click.option("--node-ip", "node_ips", multiple=True, metavar="IP",
                      help="An address of this node (repeatable). Defaults to the Node object's addresses.")(fn)
    fn = click.option("--cluster", "-c", "cluster", multiple=True, metavar="PATH", type=click.Path(allow_dash=True),
                      help="Services, EndpointSlices, Nodes, Pods as `kubectl get -o yaml|json` prints them; "
                           "files, directories or `-`. Repeatable.")(fn)
    return fn


def load_ruleset(inp: Inputs) -> Any:
    from kpa.sources import live_rules, load_rules

    inp.resolve_example()
    if inp.live:
        rs, _ = live_rules(use_iptc=inp.iptc)
        if inp.rules:
            rs.merge(load_rules(inp.rules))
        return rs
    if not inp.rules and inp.kube and inp.node:
        return node_rules_from_cluster(inp)
    if not inp.rules:
        raise click.UsageError("give --rules FILE (or --live, --example, or --kube --node NAME)")
    return load_rules(inp.rules)


def collect_dumps(inp: Inputs) -> dict[str, str]:
    from kpa.k8s.debugpod import DEFAULT_IMAGE, collect_node_rules
    from kpa.k8s.live import close, connect

    assert inp.node is not None
    api = connect(inp.kubeconfig, inp.context)  # a bad kubeconfig fails before any talk of debug pods
    click.echo(f"reading {inp.node}'s rules through a temporary debug pod ...", err=True)
    try:
        return collect_node_rules(api, inp.node, image=inp.image or DEFAULT_IMAGE, namespace=inp.namespace or "default")
    finally:
        close(api)


def node_rules_from_cluster(inp: Inputs) -> Any:
    from kpa.sources import combine, parse_text

    dumps = collect_dumps(inp)
    ipt = [parse_text(dumps[k], f"<{inp.node}: {k}>", "iptables") for k in ("iptables-save", "ip6tables-save")
           if dumps.get(k, "").strip()]
    nft = [parse_text(dumps["nft-ruleset-json"], f"<{inp.node}: nft -j list ruleset>", "nft-json")] \
        if dumps.get("nft-ruleset-json", "").strip() else []
    if not ipt and not nft:
        raise KpaError(f"no rules could be read from node {inp.node}: {dumps.get('errors', 'no output')}")
    sets = [parse_text(dumps["ipset-save"], f"<{inp.node}: ipset save>", "ipset")] \
        if dumps.get("ipset-save", "").strip() else []
    return combine(ipt, nft, sets)


def start_objects(inp: Inputs, kinds: frozenset[str] | None = None, early: bool = True,
                  extra: Callable[[Any], object] | None = None) -> Any:
    """Start reading the object files in a child process, on the second core, now.

    The commands that read both rules and objects call this first thing, before they import
    what they need for the rules and the comparison: those imports then run here while the
    child already reads (it imports only what reading the objects needs). The child is
    stopped when the command ends if its result was not taken (for example when an option,
    the baseline or the rules were found bad first). Returns the entered
    `kpa.k8s.background.BackgroundObjects`; `rules_and_cluster` or the command takes its result.
    `extra`: work on the objects the child may do for the command (`BackgroundObjects`).
    """
    from kpa.k8s.background import BackgroundObjects

    inp.resolve_example()
    pending = BackgroundObjects(list(inp.cluster), kinds=kinds, early=early, extra=extra)
    return click.get_current_context().with_resource(pending)


def _endpoint_chain_names(objects: Any) -> object:
    """In the objects' child: the objects' endpoint chain names (imported there: the child needs only this)."""
    from kpa.k8s.naming import endpoint_chain_names

    return endpoint_chain_names(objects)


def rules_and_cluster(inp: Inputs, policy_optional: bool = False,
                      ahead: Callable[[Any], Any] | None = None, pending: Any = None,
                      meanwhile: Callable[[Any], None] | None = None) -> tuple[Any, Any, Any]:
    """The ruleset, the cluster objects, and what ``ahead`` made of the ruleset alone.

    Object files are read on a second core meanwhile (by ``pending``, from `start_objects`,
    or started here), and ``ahead`` runs on the ruleset while they are. Its answer is None
    when the objects are read here (nothing to overlap: the caller's full computation does
    the same work after them, and the rules' half would only live through the objects'
    decoding), or when it failed: the full computation meets the failure again after the
    objects are read and reports it there, as it always did. ``meanwhile(answer)`` runs if the
    objects are still being read when ``ahead`` is done (see `BackgroundObjects.result`).
    """
    inp.resolve_example()
    files = list(inp.cluster)  # files: read in a child process while this one reads the rules
    early = None
    # The objects may be handed over before they are all checked: the caller settles them
    # (kpa.k8s.background.settled) before it reports anything.
    if pending is None:
        pending = start_objects(inp)
    with progress_status("reading the rules"):
        rs = load_ruleset(inp)
        if ahead is not None and pending.child is not None:
            try:
                early = ahead(rs)
            except Exception:  # reported by the full computation, see above
                early = None
    with progress_status("reading the cluster objects"):
        waiting = (lambda: meanwhile(early)) if meanwhile is not None and early is not None else None
        objects = pending.result(waiting) if files else load_cluster(inp, policy_optional)
    return rs, objects, early


def load_cluster(inp: Inputs, policy_optional: bool = False) -> Any:
    if inp.cluster:
        from kpa.k8s.objects import load_objects

        return load_objects(list(inp.cluster))
    if inp.kube and not inp.example:
        from kpa.k8s.live import load_live

        return load_live(inp.kubeconfig, inp.context, inp.namespace, policy_optional=policy_optional)
    return None


def local_addresses(inp: Inputs, objects: Any) -> dict[int, Any]:
    from kpa.netfilter.packet import node_local_addresses

    ips = list(inp.node_ips)
    if not ips and objects is not None:
        node = objects.node(inp.node) if inp.node else (objects.nodes[0] if len(objects.nodes) == 1 else None)
        if node is not None:
            ips = list(node.internal_ips) + list(node.external_ips)
    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise click.BadParameter(f"expected an IP address, found {ip!r}", param_hint="--node-ip") from None
    return node_local_addresses(ips)


def node_addresses(inp: Inputs, objects: Any) -> list[str]:
    if objects is None:
        return []
    node = objects.node(inp.node) if inp.node else (objects.nodes[0] if len(objects.nodes) == 1 else None)
    return [] if node is None else [*node.internal_ips, *node.external_ips]


def near(name: str, names: Sequence[str]) -> str:
    """`; did you mean a, b?` or the first few names there are."""
    import difflib

    close = difflib.get_close_matches(name, list(dict.fromkeys(names)), n=3, cutoff=0.5)
    if close:
        return f"; did you mean {', '.join(close)}?"
    listed = sorted(set(names))
    if not listed:
        return ""
    return f"; there are {', '.join(listed[:5])}" + (f" and {len(listed) - 5} more" if len(listed) > 5 else "")


def check_node(inp: Inputs, objects: Any) -> None:
    """An unknown --node is an error when the objects list Nodes: it would silently change the answer."""
    if not inp.node or objects is None or not objects.nodes or inp.example:
        return
    if objects.node(inp.node) is None:
        raise KpaError(f"no Node {inp.node!r} in the cluster objects{near(inp.node, [n.name for n in objects.nodes])}")


def remote_pod_warning(objects: Any, ref: str, this_node: str | None) -> list[str]:
    parts = ref[4:].split("/")
    pod = next((p for p in objects.pods if [p.namespace, p.name] == parts), None)
    if pod is None or not pod.node_name or not this_node or pod.node_name == this_node:
        return []
    return [f"pod {parts[0]}/{parts[1]} runs on node {pod.node_name}, not {this_node}: its Service NAT happens on "
            f"{pod.node_name}; this traces the packet as it arrives at {this_node}"]


def _check_service_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and (value.count("/") != 1 or not all(value.split("/"))):
        raise click.BadParameter(f"expected NAMESPACE/NAME, found {value!r}")
    return value


def service_scope(namespace: str | None, service: str | None) -> Callable[[str], bool] | None:
    """For -n NS and --service NS/NAME: does a Service port name ``ns/name[:port]`` belong?"""
    if namespace is None and service is None:
        return None

    def ok(name: str) -> bool:
        svc = name.split(":", 1)[0]
        if namespace is not None and svc.split("/", 1)[0] != namespace:
            return False
        return service is None or svc == service
    return ok


@contextmanager
def progress_status(what: str) -> Iterator[None]:
    """A spinner on stderr while ``what`` runs, on a terminal only and after about a second."""
    from kpa.render.progress import status

    with status(what):
        yield


def color_enabled(ctx: click.Context) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    return sys.stdout.isatty()


# -- completion of names from the given objects -------------------------------------

def _objects_for_completion(ctx: click.Context) -> Any:
    """The cluster objects named on the command line so far, or None; never fails."""
    params = ctx.params
    paths = list(params.get("cluster") or ())
    if not paths and params.get("example"):
        paths = [os.path.join(example_dir(), "cluster.yaml")]
    if not paths:
        return None
    try:
        from kpa.k8s.objects import load_objects

        return load_objects(paths)
    except Exception:  # completion must never print a traceback into the shell
        return None


def complete_service(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    from click.shell_completion import CompletionItem

    objects = _objects_for_completion(ctx)
    if objects is None:
        return []
    with_port = param.name == "to"
    names: list[str] = []
    for svc in objects.services:
        if with_port:
            names.extend(f"svc/{svc.namespace}/{svc.name}:{p.name or p.port}" for p in svc.ports)
        else:
            names.append(f"svc/{svc.namespace}/{svc.name}")
    if param.name == "service_filter":
        names = [n[4:] for n in names]
    return [CompletionItem(n) for n in sorted(dict.fromkeys(names)) if n.startswith(incomplete)]


def complete_source(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    from click.shell_completion import CompletionItem

    names = ["external"]
    objects = _objects_for_completion(ctx)
    if objects is not None:
        names.extend(f"pod/{p.namespace}/{p.name}" for p in objects.pods)
        names.extend(f"node/{n.name}" for n in objects.nodes)
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]


def complete_node(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    from click.shell_completion import CompletionItem

    objects = _objects_for_completion(ctx)
    names = [n.name for n in objects.nodes] if objects is not None else []
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]


def qualify(ref: str | None, kind: str, inp: Inputs) -> str | None:
    """kubectl style: `svc/NAME` and `pod/NAME` take their namespace from -n or the kubeconfig context."""
    if not ref or not ref.startswith(f"{kind}/"):
        return ref
    body = ref[len(kind) + 1:]
    if "/" in body.split(":")[0]:
        return ref
    return f"{kind}/{default_namespace(inp)}/{body}"


def default_namespace(inp: Inputs) -> str:
    """-n, else the kubeconfig context's namespace (when talking to a cluster), else `default`."""
    if inp.namespace:
        return inp.namespace
    if inp.kube:
        from kpa.k8s.live import context_namespace

        return context_namespace(inp.kubeconfig, inp.context) or "default"
    return "default"


# -- the command group ---------------------------------------------------------

def _max_input(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    from kpa.limits import parse_size, set_max_input_bytes

    if value is None:
        return
    try:
        set_max_input_bytes(parse_size(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _no_progress(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        from kpa.render.progress import disable

        disable()


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="kpa")
@click.option("--max-input-size", metavar="SIZE", callback=_max_input, expose_value=False, is_eager=True,
              help="Refuse any input file (or stdin, or gzip data once decompressed) larger than this.  "
                   "[default: 256M]")
@click.option("--no-progress", is_flag=True, callback=_no_progress, expose_value=False, is_eager=True,
              help="Never show progress on stderr (shown by default on a terminal only, for steps "
                   "longer than about a second; also KPA_NO_PROGRESS=1).")
def cli() -> None:
    """kpa: what does this node's netfilter do to this packet, and why?

    kpa reads a node's rules (iptables-save, ip6tables-save, nft list ruleset,
    or the live host) and the cluster's Services, EndpointSlices, Nodes and
    Pods, rebuilds the chains kube-proxy wrote, and traces packets through
    them, reporting every possible outcome with its exact probability.

    \b
    Examples:
      kpa trace --example --dst 10.96.0.11 -p tcp --dport 80
      kpa trace -r node.save --node-ip 192.168.0.2 --dst 10.96.0.10 -p udp --dport 53
      kpa check -r node.save
      kpa show -r node.save -c cluster.yaml
      kpa graph -r node.save --from-chain KUBE-SERVICES -o mermaid
      kpa --max-input-size 2G check -r huge-node.save.gz
      kpa --no-progress lint -r node.save -c cluster/

    On a terminal, steps that take longer than about a second show progress on
    stderr (never on stdout, never when stderr is a pipe or a file).
    """


# -- check -----------------------------------------------------------------------

@cli.command(context_settings=CONTEXT)
@rules_options
@click.option("-o", "--output", "fmt", type=OUTPUT_TEXT, default="text", show_default=True)
def check(rules: Sequence[str], live: bool, iptc: bool, example: bool, fmt: str) -> None:
    """Parse and validate rules, like `iptables-restore --test` or `nft -c`.

    Prints one line per table: chains, rules, unknown matches and targets,
    and dangling jumps. Exit status: 0 clean, 1 problems found, 2 input
    unreadable.

    \b
    Examples:
      kpa check -r node.save
      iptables-save | kpa check -r -
      kpa check -r node.save.gz -o json
    """
    from kpa.graph import chain_problems

    # A check builds a large ruleset that lives until exit and no garbage cycles worth collecting:
    # without the cyclic collector, nothing rescans the ruleset after it is loaded.
    gc.disable()
    with progress_status("reading the rules"):
        rs = load_ruleset(Inputs(list(rules), live=live, example=example, iptc=iptc))
    # What was read lives until exit: frozen, it is left alone by the collection the interpreter runs at
    # exit, which would walk it all (and free an nftables ruleset, whose lazy rules refer to their table:
    # a cycle) just before the process ends anyway.
    gc.freeze()
    with progress_status("checking the chains"):
        problems = chain_problems(rs)
        tables, findings, cycles = _check_tables(rs, problems)
    _print_check(rs, tables, findings, cycles, fmt)


def _check_tables(rs: Any, problems: Any) -> tuple[list[dict[str, Any]], int, list[str]]:
    """`kpa check`'s document: per table counts, unknown parts, dangling jumps; loops."""
    dangling_by_table: dict[tuple[str, str], list[str]] = {}
    for node, refs in problems.dangling:
        dangling_by_table.setdefault((node[0], node[1]), []).append(f"{node[2]} (from {', '.join(refs)})")
    tables = []
    findings = 0
    for t in rs.tables:
        rules_ = list(t.rules())
        unknown = [(r, e) for r in rules_ for e in r.unknown_exprs()]
        dangling = dangling_by_table.get((t.family.value, t.name), [])
        unused = [n[2] for n in problems.unreferenced if n[:2] == (t.family.value, t.name)
                  and t.chains[n[2]].rules]
        findings += len(unknown) + len(dangling)
        tables.append({
            "family": t.family.value, "table": t.name, "source": t.source, "chains": len(t.chains),
            "rules": len(rules_),
            "unknown": [{"location": str(r.location), "what": e.describe(), "why": getattr(e, "reason", "")}
                        for r, e in unknown],
            "dangling_jumps": dangling, "unreferenced_chains": unused,
        })
    cycles = [" -> ".join(f"{n[1]}/{n[2]}" for n in c) for c in problems.cycles]
    findings += len(cycles)
    return tables, findings, cycles


def _print_check(rs: Any, tables: list[dict[str, Any]], findings: int, cycles: list[str], fmt: str) -> None:
    if fmt != "text":
        from kpa.render.output import dump

        click.echo(dump({"tables": tables, "cycles": cycles, "warnings": rs.warnings, "ok": findings == 0}, fmt), nl=False)
    else:
        for tb in tables:
            click.echo(f"{tb['family']:<4} {tb['table']:<9} {tb['chains']:>6} chains {tb['rules']:>8} rules "
                       f"{len(tb['unknown']):>4} unknown {len(tb['dangling_jumps']):>3} dangling jumps  [{tb['source']}]")
            for u in tb["unknown"][:20]:
                click.echo(f"  unknown: {u['location']}: {u['what']} ({u['why']})")
            for d in tb["dangling_jumps"]:
                click.echo(f"  dangling jump to {d}")
            for c in tb["unreferenced_chains"]:
                click.echo(f"  note: chain {c} has rules but nothing jumps to it")
        for c in cycles:
            click.echo(f"loop: {c}")
        for w in rs.warnings:
            click.echo(f"warning: {w}")
    if findings:
        raise click.exceptions.Exit(1)


# -- graph -----------------------------------------------------------------------

@cli.command(context_settings=CONTEXT)
@rules_options
@click.option("--cluster", "-c", "cluster", multiple=True, metavar="PATH", type=click.Path(allow_dash=True),
              help="Cluster objects, to name endpoint pods and nodes in --service graphs.")
@click.option("-n", "--namespace", metavar="NS", help="Namespace for --service svc/NAME.")
@click.option("--service", "service", metavar="NS/NAME", shell_complete=complete_service,
              help="Draw one Service: entry points, chains and endpoint pods, with shares and conditions.")
@click.option("-o", "--output", "fmt", type=click.Choice(["dot", "mermaid", "json", "html"]), default="dot",
              show_default=True, help="html is a self-contained page to open in a browser.")
@click.option("--from-chain", metavar="CHAIN", help="Only what this chain reaches (CHAIN or TABLE/CHAIN).")
def graph(rules: Sequence[str], live: bool, iptc: bool, example: bool, cluster: Sequence[str], namespace: str | None,
          service: str | None, fmt: str, from_chain: str | None) -> None:
    """Print the chain graph, or one Service's, as DOT, Mermaid, JSON or an HTML page.

    With --service the picture shows that Service's entry points, its
    chains, and its endpoint pods with their addresses and nodes; edges carry
    each rule's match conditions and each endpoint's share of traffic.

    \b
    Examples:
      kpa graph -r node.save | dot -Tsvg > chains.svg
      kpa graph -r node.save --from-chain KUBE-SVC-ERIFXISQEP7F7OF4 -o mermaid
      kpa graph --example --service shop/web | dot -Tsvg > web.svg
      kpa graph --example --service shop/frontend -o html > frontend.html
    """
    from kpa import graph as G

    inp = Inputs(list(rules), list(cluster), live=live, example=example, iptc=iptc, namespace=namespace)
    with progress_status("reading the rules"):
        rs = load_ruleset(inp)
    if service:
        from kpa.k8s import servicegraph as SG
        from kpa.k8s.kubeproxy import hash_names, service_ports
        from kpa.render import servicegraph as SR

        with progress_status("reading the cluster objects"):
            objects = load_cluster(inp)
        known: dict[str, str] = {}
        if objects is not None:
            from kpa.k8s.naming import service_port_name

            known = hash_names([(service_port_name(s.namespace, s.name, p.name), p.protocol)
                                for s in objects.services for p in s.ports])
        wanted = service_ref(service, inp)
        views = service_ports(rs, known)
        names = [v.name.split(":")[0] for v in views if v.name]
        views = [v for v in views if v.name and (v.name == wanted or v.name.split(":")[0] == wanted)]
        if not views:
            raise KpaError(f"no Service {wanted} in the rules{near(wanted, names)}")
        with progress_status(f"drawing Service {wanted}"):
            sg = SG.build(rs, views, objects, f"Service {wanted}")
        if fmt == "html":
            from kpa.render.html import graph_html

            click.echo(graph_html(sg), nl=False)
        elif fmt == "json":
            click.echo(json.dumps(sg.to_json(), indent=2))
        else:
            click.echo({"dot": SR.to_dot, "mermaid": SR.to_mermaid}[fmt](sg), nl=False)
        return
    with progress_status("building the chain graph"):
        g = G.build_graph(rs)
    if from_chain:
        starts = G.find_chain(g, from_chain)
        if not starts:
            raise KpaError(f"no chain named {from_chain!r} in the rules")
        sub = G.reachable(g, starts[0])
        for s in starts[1:]:
            sub = type(sub)(sub)
            sub.update(G.reachable(g, s))
        g = sub
    if fmt == "html":
        from kpa.k8s.servicegraph import GEdge, GNode, ServiceGraph
        from kpa.render.html import graph_html

        sg = ServiceGraph(from_chain or "all chains")
        for n, d in g.nodes(data=True):
            kind = "entry" if d.get("base") else ("chain" if d.get("defined") else "action")
            sg.add(GNode("/".join(n), G.node_label(n), kind, [f"{d.get('rules', 0)} rules"]))
        for a, b, d in g.edges(data=True):
            sg.edges.append(GEdge("/".join(a), "/".join(b), d.get("kind", ""), None, ", ".join(d["rules"][:3])))
        click.echo(graph_html(sg), nl=False)
        return
    click.echo({"dot": G.to_dot, "mermaid": G.to_mermaid, "json": G.dumps_json}[fmt](g), nl=False)


# -- show ------------------------------------------------------------------------

def service_ref(ref: str, inp: Inputs) -> str:
    """svc/NS/NAME, svc/NAME (namespace from -n or the context), NS/NAME or NAME: NS/NAME[:PORT]."""
    body = ref.split("/", 1)[1] if ref.split("/", 1)[0] in ("svc", "service", "services") else ref
    if "/" not in body.split(":")[0]:
        body = f"{default_namespace(inp)}/{body}"
    return body


@cli.command(context_settings=CONTEXT)
@click.argument("target", required=False, metavar="[svc/NS/NAME]", shell_complete=complete_service)
@rules_options
@cluster_options
@kube_options
@click.option("--service", "service_filter", metavar="NS/NAME", shell_complete=complete_service,
              callback=_check_service_name,
              help="Only this Service (same as the argument); -n NS alone: only that namespace's Services.")
@click.option("-o", "--output", "fmt", type=click.Choice(["text", "wide", "name", "json", "yaml"]), default="text",
              show_default=True, help="wide adds chains and rule locations; name prints svc/NS/NAME:PORT only.")
@click.option("--no-headers", is_flag=True, help="Leave out table headers.")
def show(target: str | None, rules: Sequence[str], live: bool, iptc: bool, example: bool, cluster: Sequence[str],
         node_ips: Sequence[str], node: str | None, kube: bool, kubeconfig: str | None, context: str | None,
         namespace: str | None, image: str | None, service_filter: str | None, fmt: str, no_headers: bool) -> None:
    """List what kube-proxy built for each Service port (iptables and nftables modes).

    For each port: its entry points (ClusterIP, NodePort, external IP, load
    balancer), traffic policies, session affinity, source ranges, and its
    endpoints with their share of traffic, pod, node and ready / serving /
    terminating conditions. Names come from kube-proxy's comments or
    nftables chain names, or, where those are missing, from recomputing its
    chain-name hashes with --cluster. Services sort naturally.

    \b
    Examples:
      kpa show --example
      kpa show --example svc/shop/web
      kpa show -r node.save -c objects/ -n shop svc/frontend -o wide
      kpa show -r nft-ruleset.txt -c objects/ -o name
      kubectl kpa show --node worker-1 svc/web
      kpa show -r node.save -c objects/ -n shop
    """
    # The ruleset and the objects live until exit: without the cyclic collector nothing rescans them.
    gc.disable()
    inp = Inputs(list(rules), list(cluster), list(node_ips), node, live, example, kube, kubeconfig, context,
                 namespace, image, iptc)
    pending = start_objects(inp)  # before the imports below, which only this process needs
    from kpa.k8s.kubeproxy import hash_names, service_ports
    from kpa.k8s.showview import describe, describe_ahead, describe_objects

    rs, objects, early = rules_and_cluster(inp, ahead=describe_ahead, pending=pending)
    from kpa.k8s.background import settled_run

    def compare(objects: Any, handed: bool) -> Any:
        check_node(inp, objects)
        described = None
        if early is not None and handed:  # (else the whole computation again)
            views, described = early  # named by comments alone, so the same for any objects
        else:
            known: dict[str, str] = {}
            if objects is not None:
                from kpa.k8s.naming import service_port_name

                known = hash_names([(service_port_name(s.namespace, s.name, p.name), p.protocol)
                                    for s in objects.services for p in s.ports])
            views = service_ports(rs, known)
        wanted = service_ref(target, inp) if target else service_filter
        if wanted:
            names = [v.name.split(":")[0] for v in views if v.name]
            views = [v for v in views if v.name and (v.name == wanted or v.name.split(":")[0] == wanted)]
            if not views:
                raise KpaError(f"no Service {wanted} in the rules{near(wanted, names)}")
        elif namespace:
            scope = service_scope(namespace, None)
            assert scope is not None
            spaces = [v.name.split("/")[0] for v in views if v.name]
            views = [v for v in views if v.name and scope(v.name)]
            if not views:
                raise KpaError(f"no Service in namespace {namespace} in the rules{near(namespace, spaces)}")
        if described is not None:
            kept = {id(v) for v in views}  # what describe_rules gave for the views kept, in its order
            docs = describe_objects([d for d in described if id(d.view) in kept], objects)
        else:
            docs = describe(views, rs, objects)
        # Written here, before the objects are settled: the objects' child may still be checking
        # them meanwhile, and if they were not what the files hold, this output is made again.
        return show_output(docs)

    def show_output(docs: list[dict[str, Any]]) -> str | bytes:
        if fmt == "name":
            return "".join(f"svc/{d['service_port'] or '(unnamed)'}\n" for d in docs)
        if fmt == "json":
            from kpa.render.output import json_output

            return json_output({"service_ports": docs})
        if fmt == "yaml":
            from kpa.render.output import dump

            return dump({"service_ports": docs}, fmt)
        from kpa.render.show import render_text
        from kpa.render.trace import fit, terminal_width

        text = render_text(docs, fmt == "wide", not no_headers, color_enabled(click.get_current_context()))
        width = terminal_width()
        if width and fmt != "wide":  # -o wide is for wide screens and grep, as with kubectl
            text = "\n".join(fit(text.rstrip("\n").split("\n"), width, set())) + "\n"
        return text

    # The objects are known whole before anything is said; if they were not what the files hold, the
    # comparison is made again with what they hold.
    click.echo(settled_run(objects, compare), nl=False)
    _leave(0)


# -- trace -----------------------------------------------------------------------

def parse_routes(specs: Sequence[str]) -> dict[int, list[tuple[Any, str | None]]]:
    """`--route CIDR[=IFACE]` values, per IP version."""
    from kpa.netfilter.domain import network_set

    out: dict[int, list[tuple[Any, str | None]]] = {}
    for spec in specs:
        cidr, _, iface = spec.partition("=")
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise click.BadParameter(f"expected CIDR[=IFACE], found {spec!r}", param_hint="--route") from None
        out.setdefault(net.version, []).append((network_set(net), iface or None))
    return out


def trace_routes(specs: Sequence[str], objects: Any) -> dict[int, list[tuple[Any, str | None]]]:
    """The routes -m rpfilter checks against: `--route` values, then those the cluster objects imply."""
    stated = parse_routes(specs)
    if objects is None:
        return stated
    from kpa.k8s.routes import cluster_routes, merged

    return merged(stated, cluster_routes(objects))


@cli.command(context_settings=CONTEXT)
@rules_options
@cluster_options
@kube_options
@click.option("--src", "-s", metavar="IP[/LEN]", help="Source address (or CIDR); open if omitted.")
@click.option("--dst", "-d", metavar="IP[/LEN]", help="Destination address (or CIDR); open if omitted.")
@click.option("-p", "--protocol", "proto", type=click.Choice(["tcp", "udp", "sctp", "icmp"]), help="Open if omitted.")
@click.option("--sport", type=click.IntRange(0, 65535), help="Source port; open if omitted.")
@click.option("--dport", type=click.IntRange(0, 65535), help="Destination port; open if omitted.")
@click.option("--origin", type=click.Choice(["prerouting", "output"]),
              help="Where the packet enters: from a network interface, or from a local process.  [default: prerouting]")
@click.option("--in-iface", "-i", metavar="NAME", help="Input interface; open if omitted.")
@click.option("--out-iface", metavar="NAME", help="Output interface; open if omitted.")
@click.option("--ctstate", type=click.Choice(["NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED", "any"],
              case_sensitive=False), default="NEW", show_default=True, help="Connection-tracking state; `any` leaves it open.")
@click.option("--mark", default="0", show_default=True, help="The packet's mark as it enters.")
@click.option("--affinity", multiple=True, metavar="LIST", help="Treat the client as already in this `recent` list (session affinity).")
@click.option("--affinity-open", is_flag=True, help="Explore both cases for every session-affinity list.")
@click.option("--to", "to", metavar="svc/NS/NAME[:PORT]", shell_complete=complete_service,
              help="Target a Service by name (needs --cluster); svc/NAME takes -n or the context's namespace.")
@click.option("--via", type=click.Choice(["cluster-ip", "nodeport", "lb", "external-ip"]), default="cluster-ip",
              show_default=True, help="Which entry point of --to to use.")
@click.option("--from", "from_", metavar="pod/NS/NAME|node/NAME|external|IP", shell_complete=complete_source,
              help="Who sends the packet: a pod (pod/NAME takes -n), a node, `external` (outside the pod CIDRs "
                   "and the nodes), or an address.")
@click.option("--family", type=click.Choice(["ipv4", "ipv6"]), help="Packet family; guessed from the addresses.")
@click.option("--max-outcomes", type=click.IntRange(1), default=512, show_default=True)
@click.option("--explain", is_flag=True, help="For each rule hit, and each chain that fell through, show which rules "
                                               "just before did not match, and why (implies --details).")
@click.option("--confirm", is_flag=True, help="Also print the commands that confirm this on the node with the "
                                               "kernel's own packet tracing, and the commands that remove them "
                                               "(matched to the dump's backend; kpa never runs them).")
@click.option("--no-headers", is_flag=True, help="Leave out the summary table's header.")
@click.option("--details", is_flag=True, help="After the summary, list each outcome's rules (same as -v).")
@click.option("-v", "--verbose", count=True, help="-v: each outcome's rules, without hops that change nothing; "
                                                  "-vv: every hop.")
@click.option("--uid", type=click.IntRange(0, 0xFFFFFFFF), help="User id of the sending process (owner, meta skuid); open if omitted.")
@click.option("--gid", type=click.IntRange(0, 0xFFFFFFFF), help="Group id of the sending process (owner, meta skgid); open if omitted.")
@click.option("--src-mac", metavar="MAC", help="Ethernet source address of a received packet (-m mac); open if omitted.")
@click.option("--ipsec", is_flag=True, help="Packets are IPsec-protected (-m policy); by default the node has no IPsec policy.")
@click.option("--rate-limits", type=click.Choice(["within", "exceeded"]),
              help="State of limit/hashlimit/nft limit rules; unknown (both ways) if omitted.")
@click.option("--connections", type=click.IntRange(0), metavar="N",
              help="Connections the client already has (connlimit); unknown if omitted.")
@click.option("--recent-hits", type=click.IntRange(0), metavar="N",
              help="Packets the client sent before, per recent list (recent --hitcount); unknown if omitted.")
@click.option("--socket", "socket_state", type=click.Choice(["found", "none"]),
              help="Whether -m socket and TPROXY find a socket for the packet; unknown if omitted.")
@click.option("--route", "routes", multiple=True, metavar="CIDR[=IFACE]",
              help="A route the node has, for -m rpfilter (repeatable), e.g. 0.0.0.0/0=eth0. With cluster "
                   "objects, routes to every Node's pod CIDRs and addresses and every Pod are known too "
                   "(without their interface).")
@click.option("-o", "--output", "fmt", type=click.Choice(["text", "json", "yaml", "html"]), default="text",
              show_default=True, help="html is a self-contained page: outcomes, their rules, the rules' lines.")
def trace(rules: Sequence[str], live: bool, iptc: bool, example: bool, cluster: Sequence[str], node_ips: Sequence[str],
          node: str | None, kube: bool, kubeconfig: str | None, context: str | None, namespace: str | None,
          image: str | None, src: str | None, dst: str | None, proto: str | None, sport: int | None,
          dport: int | None, origin: str | None, in_iface: str | None, out_iface: str | None, ctstate: str,
          mark: str, affinity: Sequence[str], affinity_open: bool, to: str | None, via: str,
          from_: str | None, family: str | None, max_outcomes: int, explain: bool, confirm: bool, no_headers: bool,
          details: bool,
          verbose: int, uid: int | None, gid: int | None, src_mac: str | None, ipsec: bool,
          rate_limits: str | None, connections: int | None, recent_hits: int | None, socket_state: str | None,
          routes: Sequence[str], fmt: str) -> None:
    """Trace a packet through the node's netfilter and list every outcome.

    Fields left out stay open: kpa splits on the rules that test them and
    gives, for each outcome, the condition on the open fields. The summary
    has one line per outcome: the verdict, the endpoint pod and node, its
    share of traffic, masquerade, and which sources it applies to; the
    Service port hit is on the Packet line. With -v (or --details) each
    outcome lists its rule hits (table/chain #n and FILE:LINE) and NAT
    rewrites; -o json has everything, including exact probabilities.

    \b
    Examples:
      kpa trace --example --dst 10.96.0.11 -p tcp --dport 80
      kpa trace --example --src 198.51.100.7 --dst 203.0.113.10 -p tcp --dport 443
      kpa trace --example --dst 192.168.0.2 -p tcp --dport 30080 --origin prerouting -o json
      kpa trace --example --dst 10.96.0.13 -p tcp --dport 9090 --explain
      kpa trace -r istio.save --origin output --uid 1337 --dst 10.96.0.11 -p tcp --dport 80
      kpa trace -r node.save -c cluster/ --to svc/shop/web:http --from external
      kubectl kpa trace --kube --node worker-1 --to svc/shop/web:http --from pod/shop/client-0
    """
    from kpa.netfilter.engine import trace as run_trace
    from kpa.netfilter.model import Family
    from kpa.netfilter.packet import PacketSpec, TraceContext

    inp = Inputs(list(rules), list(cluster), list(node_ips), node, live, example, kube, kubeconfig, context,
                 namespace, image, iptc)
    with progress_status("reading the rules"):
        rs = load_ruleset(inp)
    with progress_status("reading the cluster objects"):
        objects = load_cluster(inp)
    check_node(inp, objects)
    local = local_addresses(inp, objects)
    spec_origin = origin
    to, from_ = qualify(to, "svc", inp), qualify(from_, "pod", inp)
    if dport is not None and proto is None and not to:
        click.echo("hint: --dport without -p matches no packet of a protocol without ports; "
                   "add -p tcp (or udp, sctp)", err=True)
    exclude: tuple[str, ...] = ()
    if from_ == "external" and not src:
        from kpa.k8s.story import external_exclusions

        exclude = tuple(external_exclusions(rs, objects, [*inp.node_ips, *node_addresses(inp, objects)]))
    if to or from_:
        from kpa.k8s.resolve import resolve_endpoints

        r = resolve_endpoints(objects, inp, to, via, from_, proto)
        dst = dst or r.dst
        dport = dport if dport is not None else r.dport
        proto = proto or r.proto
        src = src or r.src
        spec_origin = spec_origin or r.origin
    try:
        mark_value = int(mark, 0)
    except ValueError:
        raise click.BadParameter(f"expected a number like 0x4000, found {mark!r}", param_hint="--mark") from None
    fam = Family.IPV6 if family == "ipv6" else Family.IPV4
    if family is None:
        for a in (dst, src):
            if a:
                try:
                    fam = Family.IPV6 if ipaddress.ip_network(a, strict=False).version == 6 else Family.IPV4
                except ValueError:
                    raise click.BadParameter(f"expected an IP address or CIDR, found {a!r}") from None
                break
    spec = PacketSpec(family=fam, src=src, dst=dst, proto=proto, sport=sport, dport=dport, iif=in_iface,
                      oif=out_iface, origin=spec_origin or "prerouting",
                      ctstate=None if ctstate.lower() == "any" else ctstate.upper(), mark=mark_value,
                      src_exclude=exclude, uid=uid, gid=gid, src_mac=src_mac)
    try:
        spec.initial_state()
    except ValueError as exc:
        raise KpaError(f"bad packet: {exc}") from None
    if fam not in rs.families() and Family.INET not in rs.families():
        raise KpaError(f"the rules hold no {'IPv6' if fam is Family.IPV6 else 'IPv4'} tables for this packet")
    ctx = TraceContext(local=local, affinity={n: True for n in affinity},
                       affinity_default=None if affinity_open else False, max_outcomes=max_outcomes,
                       explain=explain, ipsec=ipsec, rate_limits=rate_limits, connections=connections,
                       recent_hits=recent_hits, socket=socket_state, routes=trace_routes(routes, objects))
    from kpa.k8s.kubenetpol import queue_decider

    ctx.queue_decider = queue_decider(rs, objects)
    with progress_status("tracing the packet"):
        result = run_trace(rs, spec, ctx)
        result.warnings = list(rs.warnings) + result.warnings
        from kpa.k8s.story import annotate

        annotate(result, rs, objects, local)
    if from_ and from_.startswith("pod/") and objects is not None:
        result.warnings.extend(remote_pod_warning(objects, from_, inp.node))
    confirmation = None
    if confirm:
        from kpa.render.confirm import backend_of, confirm_commands

        confirmation = confirm_commands(spec, backend_of(rs))
    if fmt == "html":
        from kpa.render.trace import trace_page

        click.echo(trace_page(result), nl=False)
        return
    if fmt != "text":
        from kpa.render.output import dump

        doc = result.to_json()
        if confirmation is not None:
            doc["confirm"] = confirmation.to_json()
        click.echo(dump(doc, fmt), nl=False)
        return
    from kpa.render.trace import render_trace, terminal_width

    level = max(verbose, 1 if details or explain else 0)
    click.echo(render_trace(result, color_enabled(click.get_current_context()), level, terminal_width(),
                            headers=not no_headers), nl=False)
    if confirmation is not None:
        from kpa.render.confirm import render_confirm

        click.echo("")
        click.echo(render_confirm(confirmation), nl=False)


# -- lint ------------------------------------------------------------------------

@cli.command(context_settings=CONTEXT)
@rules_options
@cluster_options
@kube_options
@click.option("--service", "service_filter", metavar="NS/NAME", callback=_check_service_name,
              help="Only findings about this Service (with -n: only that namespace's).")
@click.option("--only", "only", multiple=True, metavar="CODE",
              help="Report only these finding codes (repeatable, or comma-separated).")
@click.option("--ignore", "ignore", multiple=True, metavar="CODE",
              help="Leave out these finding codes (repeatable, or comma-separated).")
@click.option("--baseline", metavar="FILE",
              help="Known findings (from --write-baseline): only findings not in it count for the exit status.")
@click.option("--write-baseline", metavar="FILE",
              help="Write the findings to FILE as a baseline for later runs, and exit 0.")
@click.option("--fail-on", type=click.Choice(["error", "warning", "info"]), default="error", show_default=True,
              help="Lowest severity that makes the exit status 1.")
@click.option("-o", "--output", "fmt", type=click.Choice(["text", "json", "yaml", "sarif", "junit", "github"]),
              default="text", show_default=True,
              help="sarif: SARIF 2.1.0 for code scanning; junit: JUnit XML; github: workflow commands.")
def lint(rules: Sequence[str], live: bool, iptc: bool, example: bool, cluster: Sequence[str], node_ips: Sequence[str],
         node: str | None, kube: bool, kubeconfig: str | None, context: str | None, namespace: str | None,
         image: str | None, service_filter: str | None, only: Sequence[str], ignore: Sequence[str],
         baseline: str | None, write_baseline: str | None, fail_on: str, fmt: str) -> None:
    """Check that kube-proxy's rules match the cluster's Services and endpoints.

    Finds Service ports without rules, rules for Services or endpoints that no
    longer exist, endpoint sets that differ from the EndpointSlices, uneven
    load-balancing probabilities, Local traffic policies with no local
    endpoints, rules kpa cannot model, and dangling jumps. A Service annotated
    `kpa.io/ignore: CODE[,CODE]` silences those codes for itself. Exit status:
    0 clean, 1 new findings at or above --fail-on, 2 bad input. See docs/lint.md.

    \b
    Examples:
      kpa lint --example
      kpa lint -r node.save -c cluster/ --node worker-1 -o json
      kpa lint -r node.save -c cluster.json --node worker-1 -o sarif > kpa.sarif
      kpa lint -r node.save -c cluster.json --write-baseline kpa-baseline.json
      kpa lint -r node.save -c cluster.json --baseline kpa-baseline.json -o github
      kpa lint -r node.save -c cluster/ -n shop --ignore uneven-probabilities
      iptables-save | kpa lint -r - --kube --node "$(hostname)" --fail-on warning
    """
    # The ruleset and the objects live until exit and leave no garbage cycles worth collecting:
    # without the cyclic collector, nothing rescans them while lint compares them.
    gc.disable()
    inp = Inputs(list(rules), list(cluster), list(node_ips), node, live, example, kube, kubeconfig, context,
                 namespace, image, iptc)
    # Before the imports below, which only this process needs; the child also names the objects'
    # endpoint chains, which the comparison with iptables-mode rules looks up.
    pending = start_objects(inp, extra=_endpoint_chain_names)
    from kpa.findings import check_codes, in_scope, load_baseline, make_report
    from kpa.findings import write_baseline as save_baseline
    from kpa.k8s.lint import CODES, RulesAhead, ignore_annotations, rules_ahead
    from kpa.k8s.lint import lint as run_lint
    from kpa.render.findings import render

    if only or ignore:
        import kpa.k8s.kuberouter
        import kpa.policy.lint  # noqa: F401  (registers the NetworkPolicy codes)
    only_codes = check_codes(only, "--only")
    ignore_codes = check_codes(ignore, "--ignore")
    known = load_baseline(baseline) if baseline else None
    # NetworkPolicies too, where allowed; the rules' part of the comparison while the objects are read.
    rs, objects, ahead = rules_and_cluster(inp, policy_optional=True, ahead=rules_ahead, pending=pending,
                                           meanwhile=RulesAhead.meanwhile)
    if ahead is not None:
        ahead.take_names(pending.extra)
    if objects is None:
        raise click.UsageError("lint compares rules with cluster objects: give --cluster PATH (or --kube)")
    if objects.unlisted:
        click.echo(f"warning: cannot list {' and '.join(objects.unlisted)}; NetworkPolicy checks skipped", err=True)
    from kpa.k8s.background import settled_run

    def compare(objects: Any, handed: bool) -> tuple[Any, Any]:
        check_node(inp, objects)
        with progress_status("comparing the rules with the objects"):
            findings = run_lint(rs, objects, inp.node, ahead if handed else None)  # the whole computation again
            if objects.network_policies:  # policy mistakes too, so CI has one entry point
                from kpa.policy.lint import as_lint_findings

                findings = [*findings, *as_lint_findings(objects)]
                from kpa.k8s.kuberouter import enforcement_findings

                # Where the node enforces the policies (kube-router's chains, kube-network-policies' queue),
                # compare that with the intent.
                ips = [str(ip) for ip in inp.node_ips]
                findings = [*findings, *enforcement_findings(rs, objects, ips, inp.node)]
        report = make_report(findings, only=only_codes, ignore=ignore_codes, annotations=ignore_annotations(objects),
                             baseline=known, scope=in_scope(namespace, service_filter))
        return objects, report

    # The objects are known whole before anything is said; if they were not what the files hold, the
    # comparison is made again with what they hold.
    objects, report = settled_run(objects, compare)
    if write_baseline:
        save_baseline(write_baseline, report.findings)
        click.echo(f"wrote {len(report.findings)} finding(s) to the baseline {write_baseline}", err=True)
        _leave(0)
        return
    checks = [c for c in CODES if (not only_codes or c in only_codes) and c not in ignore_codes]
    if objects.network_policies:
        from kpa.policy.lint import CODES as POLICY_CODES

        checks += [c for c in POLICY_CODES if (not only_codes or c in only_codes) and c not in ignore_codes]
    text = render(report, fmt, __version__, checks)
    if fmt == "text" and color_enabled(click.get_current_context()):
        from kpa.render.output import colour_severities

        text = colour_severities(text)
    click.echo(text, nl=False)
    _leave(report.exit_status(fail_on))  # type: ignore[arg-type]


# -- diff ------------------------------------------------------------------------

# What diff reads of the objects: Services give the entry points, Nodes the node's addresses and
# the pod CIDRs of the source classes. Pods and endpoints are not read: the rules say where
# traffic goes.
DIFF_KINDS = frozenset({"Service", "Node"})


@cli.command(context_settings=CONTEXT)
@click.argument("a", metavar="A")
@click.argument("b", metavar="B")
@click.option("--cluster", "-c", "cluster", multiple=True, metavar="PATH",
              help="Cluster objects; without them the entry points come from the rules themselves.")
@click.option("--node-ip", "node_ips", multiple=True, metavar="IP", help="The node's addresses (for NodePorts).")
@click.option("--node", metavar="NAME", help="This node's name, to take its addresses from the Node object.")
@click.option("--service-cidr", "service_cidrs", multiple=True, metavar="CIDR",
              help="Service CIDR, for probing an unallocated ClusterIP.")
@click.option("--service", "service_filter", metavar="NS/NAME", callback=_check_service_name,
              help="Only compare this Service's ports.")
@click.option("-n", "--namespace", metavar="NS", help="Only compare the Services of this namespace.")
@click.option("-o", "--output", "fmt", type=OUTPUT_TEXT, default="text", show_default=True)
def diff(a: str, b: str, cluster: Sequence[str], node_ips: Sequence[str], node: str | None,
         service_cidrs: Sequence[str], service_filter: str | None, namespace: str | None, fmt: str) -> None:
    """Compare two dumps of the same cluster by behaviour, not by text.

    For every Service port entry point and every class of source, checks that
    A and B send packets to the same endpoints with the same probabilities,
    the same masquerade and the same verdict, and reports differences per
    Service port. Typical pairs: before/after a kube-proxy upgrade, or the
    iptables-mode dump against the nftables-mode dump after a migration.
    Exit status: 0 same behaviour, 1 differences, 2 bad input. See docs/diff.md.

    \b
    Examples:
      kpa diff before.save after.save -c cluster/ --node-ip 192.168.0.2
      kpa diff iptables-mode.save nft-ruleset.json -c cluster/ --node node-a -o json
      kpa diff before.save after.save -c cluster/ --node node-a --service shop/frontend
    """
    # Both rulesets and the objects live until exit: without the cyclic collector nothing
    # rescans them while the entry points are compared.
    gc.disable()
    inp = Inputs(cluster=list(cluster), node_ips=list(node_ips), node=node)
    files = list(cluster)  # read in a child process while this one reads the rules, when a core is idle
    pending = start_objects(inp, kinds=DIFF_KINDS, early=False)  # before the imports below
    from kpa.diff import diff_rulesets, render_text
    from kpa.parse.iptables_save import share_skeletons
    from kpa.sources import load_rules

    with progress_status("reading the rules"), share_skeletons():
        rules_a, rules_b = load_rules([a]), load_rules([b])  # B's lines that A holds are not skeletonised again
    with progress_status("reading the cluster objects"):
        objects = pending.result() if files else load_cluster(inp)
    ips = list(node_ips)
    if not ips and objects is not None and node:
        found = objects.node(node)
        ips = list(found.internal_ips) if found else []
    from kpa.diff import side_warnings
    from kpa.render.progress import bar

    check_node(inp, objects)
    with bar("comparing entry points") as advance:
        report = diff_rulesets(rules_a, rules_b, objects, ips, advance,
                               service_cidrs=list(service_cidrs) or None,
                               scope=service_scope(namespace, service_filter), fork=None)
    report.a_name, report.b_name = a, b
    report.warnings[:0] = side_warnings(rules_a, rules_b, a, b)
    if fmt == "text":
        from kpa.render.output import colour_severities

        diff_text = render_text(report)
        click.echo(colour_severities(diff_text) if color_enabled(click.get_current_context()) else diff_text,
                   nl=False)
    else:
        from kpa.render.output import dump

        click.echo(dump(report.to_json(), fmt), nl=False)
    _leave(report.exit_code)


# Set by main() and kubectl_main(): this process is a kpa command and nothing runs after it.
_WHOLE_PROCESS = False


@contextmanager
def _whole_process() -> Iterator[None]:
    """While a console entry point runs its command (it may also be called from Python, e.g. by a test)."""
    global _WHOLE_PROCESS
    _WHOLE_PROCESS = True
    try:
        yield
    finally:
        _WHOLE_PROCESS = False


def _flush_streams() -> None:
    sys.stdout.flush()
    sys.stderr.flush()


def _leave(code: int) -> None:
    """End a command whose process holds rulesets and cluster objects until the end (diff, lint, show).

    Freeing millions of objects one by one at interpreter exit takes a few tenths of a
    second and changes nothing, so when this process is the kpa command the output is
    flushed and the process ends at once (a closed pipe still ends as it always does:
    the flush raises). Otherwise (tests, kpa used from Python), as any command does.
    """
    if _WHOLE_PROCESS:
        _flush_streams()
        os._exit(code)
    if code:
        raise click.exceptions.Exit(code)


# -- collect ---------------------------------------------------------------------

@cli.command(context_settings=CONTEXT)
@click.option("--node", required=True, metavar="NAME", help="The node whose rules to read.")
@click.option("--dir", "-D", "out_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Directory to write the rules and objects to.")
@click.option("-o", "--output-dir", "old_dir", type=click.Path(file_okay=False), hidden=True,
              help="Deprecated spelling of --dir.")
@click.option("--kubeconfig", metavar="FILE")
@click.option("--context", metavar="NAME")
@click.option("-n", "--namespace", metavar="NS", help="Namespace for the debug pod (objects are read cluster-wide).")
@click.option("--image", metavar="IMAGE", help="Image for the debug pod.")
def collect(node: str, out_dir: str | None, old_dir: str | None, kubeconfig: str | None, context: str | None,
            namespace: str | None, image: str | None) -> None:
    """Save a node's rules and the cluster's objects for offline use and bug reports.

    Reads the rules through a short-lived privileged debug pod on the node
    (deleted afterwards, whatever happens) and lists Services,
    EndpointSlices, Endpoints, Nodes and Pods read-only. The directory can
    then be used with `kpa trace -r DIR/… -c DIR/cluster.json`.

    \b
    Examples:
      kpa collect --node worker-1 --dir ./worker-1
      kubectl kpa collect --context prod --node worker-1 --dir /tmp/kpa-bug
    """
    if old_dir:
        click.echo("note: -o/--output-dir is deprecated for collect (elsewhere -o is an output format); "
                   "use --dir", err=True)
    out_dir = out_dir or old_dir
    if not out_dir:
        raise click.UsageError("give the directory to write to with --dir DIR")
    from kpa.k8s.live import close, connect, list_documents

    inp = Inputs(node=node, kube=True, kubeconfig=kubeconfig, context=context, namespace=namespace, image=image)
    dumps = collect_dumps(inp)
    os.makedirs(out_dir, exist_ok=True)
    names = {"iptables-save": "iptables.save", "ip6tables-save": "ip6tables.save",
             "nft-ruleset-json": "nft-ruleset.json", "ipset-save": "ipset.save"}
    written = []
    for key, filename in names.items():
        if dumps.get(key, "").strip():
            with open(os.path.join(out_dir, filename), "w") as fh:
                fh.write(dumps[key])
            written.append(filename)
    api = connect(kubeconfig, context)
    try:
        docs = list_documents(api, None)
    finally:
        close(api)
    items = [item for d in docs for item in d.get("items", [])]
    with open(os.path.join(out_dir, "cluster.json"), "w") as fh:
        json.dump({"apiVersion": "v1", "kind": "List", "items": items}, fh)
    with open(os.path.join(out_dir, "meta.json"), "w") as fh:
        json.dump({"node_name": node, "iptables_backend": dumps.get("iptables-backend"),
                   "errors": dumps.get("errors")}, fh, indent=2)
    click.echo(f"wrote {', '.join([*written, 'cluster.json', 'meta.json'])} to {out_dir}")


# -- completion ------------------------------------------------------------------

@cli.command(context_settings=CONTEXT)
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print a shell completion script.

    \b
    Examples:
      eval "$(kpa completion bash)"
      kpa completion fish > ~/.config/fish/completions/kpa.fish
    """
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    if cls is None:
        raise KpaError(f"no completion support for {shell}")
    comp = cls(cli, {}, "kpa", "_KPA_COMPLETE")
    click.echo(comp.source())


from kpa.cli_policy import policy as _policy  # noqa: E402  (kpa policy: docs/policy.md)

cli.add_command(_policy)


# -- entry points ------------------------------------------------------------------

def _run(prog_name: str, args: list[str] | None = None, defaults: dict[str, Any] | None = None) -> None:
    try:
        # Without standalone mode click returns an Exit's code instead of raising it.
        code = cli.main(args=args, prog_name=prog_name, standalone_mode=False, default_map=defaults)
        if isinstance(code, int) and code:
            sys.exit(code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except KpaError as exc:
        click.echo(f"{prog_name}: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        sys.stderr.close()
        sys.exit(0)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0)


def main() -> None:
    with _whole_process():
        _run("kpa")


def kubectl_help() -> None:
    """As `kubectl kpa`, help and examples say `kubectl kpa`."""
    import re

    def fix(text: str | None) -> str | None:
        return re.sub(r"(?m)(^\s+|\| )kpa ", r"\1kubectl kpa ", text) if text else text

    cli.help = fix(cli.help)
    for cmd in cli.commands.values():
        cmd.help = fix(cmd.help)
        if isinstance(cmd, click.Group):
            for sub in cmd.commands.values():
                sub.help = fix(sub.help)


def kubectl_complete_main() -> None:
    """`kubectl_complete-kpa ARGS… INCOMPLETE`: kubectl's plugin completion protocol (Cobra's __complete).

    kubectl runs this for `kubectl kpa <TAB>` with the words typed so far; it
    prints one candidate per line (value, tab, help) and a final `:DIRECTIVE`
    line (4: no file completion; 0: let the shell complete file names).
    """
    from click.shell_completion import ShellComplete

    args = sys.argv[1:]
    incomplete = args.pop() if args else ""
    kubectl_help()
    comp = ShellComplete(cli, {}, "kubectl kpa", "_KPA_COMPLETE")
    try:
        items = comp.get_completions(args, incomplete)
    except Exception:
        items = []
    files = any(i.type in ("file", "dir", "path") for i in items)
    for item in items:
        if item.type != "plain":
            continue
        help_text = (item.help or "").splitlines()[0] if item.help else ""
        print(f"{item.value}\t{help_text}" if help_text else item.value)
    print(":0" if files or (not items and incomplete.startswith((".", "/", "~"))) else ":4")


def kubectl_main() -> None:
    """`kubectl kpa ...`: kubectl finds `kubectl-kpa` on PATH and runs it.

    As a kubectl plugin kpa talks to the cluster of the current kubeconfig
    context by default, like kubectl itself (`--no-kube` turns that off).
    """
    kubectl_help()
    defaults: dict[str, Any] = {cmd: {"kube": True} for cmd in ("trace", "show", "lint")}
    defaults["policy"] = {cmd: {"kube": True} for cmd in ("check", "matrix", "lint")}
    with _whole_process():
        _run("kubectl kpa", defaults=defaults)
