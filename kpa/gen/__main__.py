"""``python -m kpa.gen``: regenerate fixtures, the bundled example, and large random clusters."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import get_args

import click

from kpa.gen.capture import Backend, CaptureError, capture_iptables, missing_prerequisites
from kpa.gen.cluster import Cluster, Family, random_cluster
from kpa.gen.iptables import render_restore
from kpa.gen.objects import dump_yaml, to_objects
from kpa.gen.options import ProxierOptions, dump_meta
from kpa.gen.scenarios import SCENARIOS, example

BACKENDS: tuple[Backend, ...] = get_args(Backend)
_SUFFIX = {"ipv4": "v4", "ipv6": "v6"}


def _require_capture(backend: Backend, family: Family) -> None:
    reason = missing_prerequisites(backend, family)
    if reason is not None:
        raise click.ClickException(f"cannot capture real rules: {reason}")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    click.echo(f"wrote {path}")


def _write_cluster(
    cluster: Cluster, options: ProxierOptions, yaml_path: Path, meta_path: Path
) -> None:
    _write(yaml_path, dump_yaml(to_objects(cluster)))
    _write(meta_path, dump_meta(cluster, options))


@click.group()
def main() -> None:
    """Generate kube-proxy clusters and capture the rules a real kernel holds for them."""


@main.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("tests/fixtures"),
    show_default=True,
)
@click.option("--only", multiple=True, help="Regenerate just these scenarios (repeatable).")
def fixtures(out_dir: Path, only: tuple[str, ...]) -> None:
    """Write iptables/<scenario>.<backend>.v4.save (and .v6.save) plus clusters/<scenario>.yaml/.meta.json."""
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        raise click.UsageError(f"unknown scenarios: {', '.join(sorted(unknown))}")
    for name, build in SCENARIOS.items():
        if only and name not in only:
            continue
        cluster, options = build()
        for family in cluster.families:
            payload = render_restore(cluster, options, family)
            for backend in BACKENDS:
                _require_capture(backend, family)
                saved = capture_iptables(payload, backend, family)
                _write(out_dir / "iptables" / f"{name}.{backend}.{_SUFFIX[family]}.save", saved)
        clusters = out_dir / "clusters"
        _write_cluster(cluster, options, clusters / f"{name}.yaml", clusters / f"{name}.meta.json")


@main.command("example")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("kpa/data/example"),
    show_default=True,
)
def example_cmd(out_dir: Path) -> None:
    """Write the bundled example: rules.v4.save (real iptables-nft-save), cluster.yaml, meta.json."""
    cluster, options = example()
    _require_capture("nft", "ipv4")
    saved = capture_iptables(render_restore(cluster, options, "ipv4"), "nft", "ipv4")
    _write(out_dir / "rules.v4.save", saved)
    _write_cluster(cluster, options, out_dir / "cluster.yaml", out_dir / "meta.json")


@main.command("random")
@click.option("--seed", type=int, required=True)
@click.option("--services", type=int, required=True)
@click.option("--endpoints", type=int, required=True, help="Mean endpoints per Service.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option(
    "--family",
    "families",
    multiple=True,
    type=click.Choice(["ipv4", "ipv6"]),
    help="Repeat for dual-stack; default ipv4.",
)
@click.option(
    "--load/--no-load",
    default=False,
    show_default=True,
    help="Also load into a netns and save what the kernel holds.",
)
@click.option("--backend", type=click.Choice(BACKENDS), default="nft", show_default=True)
def random_cmd(
    seed: int,
    services: int,
    endpoints: int,
    out_dir: Path,
    families: tuple[str, ...],
    load: bool,
    backend: str,
) -> None:
    """A benchmark-size random cluster: rules.<v4|v6>.restore, cluster.yaml, meta.json (+ .save with --load)."""
    fams: tuple[Family, ...] = tuple(f for f in ("ipv4", "ipv6") if f in (families or ("ipv4",)))
    cluster = random_cluster(seed, services, endpoints, fams)
    options = ProxierOptions(node_name="node-0")
    for family in fams:
        payload = render_restore(cluster, options, family)
        _write(out_dir / f"rules.{_SUFFIX[family]}.restore", payload)
        if load:
            be: Backend = "legacy" if backend == "legacy" else "nft"
            _require_capture(be, family)
            _write(
                out_dir / f"rules.{_SUFFIX[family]}.{be}.save",
                capture_iptables(payload, be, family),
            )
    _write_cluster(cluster, options, out_dir / "cluster.yaml", out_dir / "meta.json")


@main.command("policies")
@click.option("--pods", type=int, default=5000, show_default=True)
@click.option("--namespaces", type=int, default=100, show_default=True)
@click.option("--policies", type=int, default=1000, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the objects (one JSON List).")
def policies_cmd(pods: int, namespaces: int, policies: int, seed: int, out: Path) -> None:
    """Namespaces, Pods and NetworkPolicies of any size, for `kpa policy`."""
    import json

    from kpa.gen.policies import policy_cluster

    docs = policy_cluster(pods=pods, namespaces=namespaces, policies=policies, seed=seed)
    _write(out, json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}) + "\n")


if __name__ == "__main__":
    try:
        main()
    except CaptureError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
