"""kube-network-policies' nftables table (sigs.k8s.io/kube-network-policies, v1.x): `nft -f` payloads.

The layout follows the agent's dataplane controller (pkg/dataplane): one table
`inet kube-network-policies`, rebuilt whole on every sync, with

- sets `podips-v4` (ipv4_addr) and `podips-v6` (ipv6_addr): the addresses of the
  node's own pods (not hostNetwork) that some NetworkPolicy selects. Without them
  (`divert_all`, when admin network policies are in use) every packet is queued;
- chain `postrouting`, filter, hook postrouting, priority srcnat - 5: `udp dport 53
  accept` unless DNS is handled in prerouting; accepts for the ICMPv6 neighbour
  discovery types 133-137; `meta skuid 0 counter accept` (root's own traffic);
  `ct label L ct state established,related counter accept` (connections the
  program accepted carry label L, 100 by default); the queue rules (`ip saddr`,
  `ip daddr`, `ip6 saddr`, `ip6 daddr` in the pod sets, each `queue` to queue N,
  100 by default, `bypass` when fail-open, the default); `ct label set L`;
- chain `input`, filter, hook input, priority srcnat + 1: `iifname "lo" accept`
  and `ct state new` queue rules for packets from the pod sets;
- chain `prerouting`, filter, hook prerouting, priority dstnat + 5, when the
  program works around the UDP DNS conntrack race (`--netfilter-bug-1766-fix`,
  on by default): `meta l4proto != udp accept`, `udp dport != 53 accept`, then
  the four queue rules.

`render_text` writes the `nft -f` payload and `render_json` the same ruleset in
nft's JSON (`nft -j -f`). With `queue=False` every queue statement is written as
`counter` instead, the only change: kernels without nft queue support can then
load the table, and the counters show which packets reach those rules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kpa.k8s.objects import ClusterObjects, Pod

TABLE = "kube-network-policies"
ND_TYPES = (("nd-router-solicit", 133), ("nd-router-advert", 134), ("nd-neighbor-solicit", 135),
            ("nd-neighbor-advert", 136), ("nd-redirect", 137))


@dataclass
class KnpOptions:
    node: str
    queue_id: int = 100
    fail_open: bool = True  # --fail-open (default true): the queue rules say `bypass`
    dns_workaround: bool = True  # --netfilter-bug-1766-fix (default true): DNS judged in prerouting
    divert_all: bool = False  # admin network policies in use: no pod sets, everything queued
    ct_label: int = 100
    queue: bool = True  # False: each queue statement written as `counter` (kernels without nft queue)


def _local(pod: Pod, node: str) -> bool:
    return (pod.node_name == node and not pod.host_network and bool(pod.pod_ips)
            and pod.phase not in ("Failed", "Succeeded", "Completed"))


def managed_ips(objects: ClusterObjects, node: str) -> tuple[list[str], list[str]]:
    """The IPv4 and IPv6 addresses of the node's pods that some NetworkPolicy selects."""
    v4: list[str] = []
    v6: list[str] = []
    for pod in objects.pods:
        if not _local(pod, node):
            continue
        if not any(p.namespace == pod.namespace and p.pod_selector.matches(pod.label_map)
                   for p in objects.network_policies):
            continue
        for ip in pod.pod_ips:
            (v6 if ":" in ip else v4).append(ip)
    return v4, v6


# -- the rules, as (text, JSON expressions) pairs ---------------------------------------

def _match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _payload(proto: str, fld: str) -> dict[str, Any]:
    return {"payload": {"protocol": proto, "field": fld}}


_ACCEPT: tuple[str, list[dict[str, Any]]] = ("accept", [{"accept": None}])
_COUNTER: tuple[str, list[dict[str, Any]]] = ("counter", [{"counter": {"packets": 0, "bytes": 0}}])


class _Rules:
    def __init__(self, opts: KnpOptions) -> None:
        self.opts = opts

    def queue(self) -> tuple[str, list[dict[str, Any]]]:
        o = self.opts
        if not o.queue:
            return _COUNTER
        stmt: dict[str, Any] = {"num": o.queue_id}
        if o.fail_open:
            stmt["flags"] = "bypass"
            return f"queue flags bypass to {o.queue_id}", [{"queue": stmt}]
        return f"queue to {o.queue_id}", [{"queue": stmt}]

    def pod_queues(self, directions: tuple[str, ...], new_only: bool = False) -> list[tuple[str, list[Any]]]:
        """`ip saddr @podips-v4 … queue` for each family and direction; one bare queue with divert_all."""
        state = ("ct state new ", [_match({"ct": {"key": "state"}}, "new", "in")]) if new_only else ("", [])
        q_text, q_json = self.queue()
        if self.opts.divert_all:
            return [(state[0] + q_text, [*state[1], *q_json])]
        out = []
        for proto, fam, sset in (("ip", "ipv4", "podips-v4"), ("ip6", "ipv6", "podips-v6")):
            for d in directions:
                text = f"meta nfproto {fam} {proto} {d} @{sset} {state[0]}{q_text}"
                out.append((text, [_match(_meta("nfproto"), fam), _match(_payload(proto, d), f"@{sset}"),
                                   *state[1], *q_json]))
        return out

    def postrouting(self) -> list[tuple[str, list[Any]]]:
        o = self.opts
        rules: list[tuple[str, list[Any]]] = []
        if not o.dns_workaround:
            rules.append(("meta l4proto udp udp dport 53 accept",
                          [_match(_meta("l4proto"), "udp"), _match(_payload("udp", "dport"), 53), *_ACCEPT[1]]))
        for name, _number in ND_TYPES:
            rules.append((f"meta nfproto ipv6 meta l4proto ipv6-icmp icmpv6 type {name} accept",
                          [_match(_meta("nfproto"), "ipv6"), _match(_meta("l4proto"), "ipv6-icmp"),
                           _match(_payload("icmpv6", "type"), name), *_ACCEPT[1]]))
        rules.append(("meta skuid 0 counter accept", [_match(_meta("skuid"), 0), *_COUNTER[1], *_ACCEPT[1]]))
        rules.append((f"ct label {o.ct_label} ct state established,related counter accept",
                      [_match({"ct": {"key": "label"}}, o.ct_label, "in"),
                       _match({"ct": {"key": "state"}}, ["established", "related"], "in"), *_COUNTER[1],
                       *_ACCEPT[1]]))
        rules += self.pod_queues(("saddr", "daddr"))
        rules.append((f"ct label set {o.ct_label}", [{"mangle": {"key": {"ct": {"key": "label"}}, "value": o.ct_label}}]))
        return rules

    def input(self) -> list[tuple[str, list[Any]]]:
        return [('iifname "lo" accept', [_match(_meta("iifname"), "lo"), *_ACCEPT[1]]),
                *self.pod_queues(("saddr",), new_only=True)]

    def prerouting(self) -> list[tuple[str, list[Any]]]:
        return [("meta l4proto != udp accept", [_match(_meta("l4proto"), "udp", "!="), *_ACCEPT[1]]),
                ("meta l4proto udp udp dport != 53 accept",
                 [_match(_meta("l4proto"), "udp"), _match(_payload("udp", "dport"), 53, "!="), *_ACCEPT[1]]),
                *self.pod_queues(("saddr", "daddr"))]


# Chains in the order the controller creates them: (name, hook, priority text, number).
def _chains(opts: KnpOptions) -> list[tuple[str, str, str, int]]:
    out = [("postrouting", "postrouting", "srcnat - 5", 95), ("input", "input", "101", 101)]
    if opts.dns_workaround:
        out.append(("prerouting", "prerouting", "dstnat + 5", -95))
    return out


def render_text(objects: ClusterObjects, opts: KnpOptions) -> str:
    """The `nft -f` payload, in the form `nft list ruleset` prints (the agent replaces the table whole)."""
    v4, v6 = managed_ips(objects, opts.node)
    rules = _Rules(opts)
    lines = [f"table inet {TABLE} {{"]
    if not opts.divert_all:
        for name, kind, members in (("podips-v4", "ipv4_addr", v4), ("podips-v6", "ipv6_addr", v6)):
            lines.append(f"\tset {name} {{")
            lines.append(f"\t\ttype {kind}")
            if members:
                lines.append(f"\t\telements = {{ {', '.join(members)} }}")
            lines.append("\t}")
    for name, hook, prio, _ in _chains(opts):
        lines.append(f"\tchain {name} {{")
        lines.append(f"\t\ttype filter hook {hook} priority {prio}; policy accept;")
        lines += [f"\t\t{text}" for text, _ in getattr(rules, name)()]
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_json(objects: ClusterObjects, opts: KnpOptions) -> str:
    """The same ruleset in nft's JSON, as `nft -j -f` takes it and `nft -j list ruleset` prints it."""
    v4, v6 = managed_ips(objects, opts.node)
    rules = _Rules(opts)
    items: list[dict[str, Any]] = [{"metainfo": {"json_schema_version": 1}},
                                   {"table": {"family": "inet", "name": TABLE}}]
    if not opts.divert_all:
        for name, kind, members in (("podips-v4", "ipv4_addr", v4), ("podips-v6", "ipv6_addr", v6)):
            body: dict[str, Any] = {"family": "inet", "name": name, "table": TABLE, "type": kind}
            if members:
                body["elem"] = list(members)
            items.append({"set": body})
    for name, hook, _, prio in _chains(opts):
        items.append({"chain": {"family": "inet", "table": TABLE, "name": name, "type": "filter", "hook": hook,
                                "prio": prio, "policy": "accept"}})
    for name, *_ in _chains(opts):
        for _, exprs in getattr(rules, name)():
            items.append({"rule": {"family": "inet", "table": TABLE, "chain": name, "expr": exprs}})
    return json.dumps({"nftables": items}, indent=1) + "\n"


def capture(payload: str, json_input: bool = False) -> tuple[str, str]:
    """Load a payload into a scratch namespace; what `nft list ruleset` and `nft -j list ruleset` print."""
    import subprocess

    from kpa.gen.capture import CaptureError, scratch_netns

    with scratch_netns() as netns:
        def run(args: list[str], stdin: str | None = None) -> str:
            res = subprocess.run(["ip", "netns", "exec", netns, *args], input=stdin, capture_output=True, text=True,
                                 check=False)
            if res.returncode != 0:
                raise CaptureError(f"{' '.join(args)} failed: {res.stderr.strip()}")
            return res.stdout

        run(["nft", *(["-j"] if json_input else []), "-f", "-"], payload)
        return run(["nft", "list", "ruleset"]), run(["nft", "-j", "list", "ruleset"])


def nft_queue_missing() -> str | None:
    """Why this kernel cannot load an nft `queue` statement (a sentence), or None when it can."""
    import subprocess

    from kpa.gen.capture import CaptureError, scratch_netns

    probe = "table inet kpa-probe {\n\tchain c {\n\t\ttype filter hook postrouting priority 0;\n" \
            "\t\tmeta l4proto tcp queue flags bypass to 100\n\t}\n}\n"
    try:
        with scratch_netns("kpaq") as netns:
            res = subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=probe, capture_output=True,
                                 text=True, check=False)
    except CaptureError as exc:
        return str(exc)
    if res.returncode != 0:
        errors = [line.strip() for line in res.stderr.splitlines() if "Error" in line]
        return ("this kernel cannot load an nft queue statement (no nft_queue support): "
                + (errors[0] if errors else res.stderr.strip()))
    return None


def main(argv: list[str] | None = None) -> int:
    """`python -m kpa.gen.kubenetpol payloads CLUSTER.yaml DIR`: write the nft text and JSON payloads."""
    import argparse
    from pathlib import Path

    from kpa.k8s.objects import load_objects

    ap = argparse.ArgumentParser(prog="python -m kpa.gen.kubenetpol")
    ap.add_argument("command", choices=["payloads"])
    ap.add_argument("cluster")
    ap.add_argument("dir")
    ap.add_argument("--node", default="node-1")
    ap.add_argument("--no-queue", action="store_true", help="write each queue statement as counter")
    args = ap.parse_args(argv)
    objects = load_objects([args.cluster])
    opts = KnpOptions(node=args.node, queue=not args.no_queue)
    out = Path(args.dir)
    (out / "kube-network-policies.nft").write_text(render_text(objects, opts))
    (out / "kube-network-policies.json").write_text(render_json(objects, opts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
