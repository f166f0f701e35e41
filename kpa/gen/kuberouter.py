"""kube-router's NetworkPolicy layout (iptables mode, v2.x): iptables-restore and ipset restore payloads.

The layout follows kube-router's network policy controller (pkg/controllers/netpol,
v2.11): the filter table's INPUT, FORWARD and OUTPUT jump first to
KUBE-ROUTER-INPUT/-FORWARD/-OUTPUT; those send traffic from and to each local pod
to the pod's KUBE-POD-FW-* chain, which runs KUBE-NWPLCY-COMMON (conntrack and
ICMP), accepts traffic from the node, and jumps to the KUBE-NWPLCY-* chain of
every policy selecting the pod (or KUBE-NWPLCY-DEFAULT for a direction no policy
isolates). A policy chain marks allowed traffic 0x10000; the pod chain rejects
what stays unmarked and marks the rest 0x20000, which KUBE-NWPLCY-TAIL and the
top-level chains accept. Pods and CIDRs live in ipsets KUBE-SRC-*/KUBE-DST-*
(hash:ip, and hash:net with `nomatch` for ipBlock excepts).

With `--netpol-default-deny` (v2.11), KUBE-NWPLCY-TAIL starts, per pod CIDR of the
node, with REJECTs for traffic from or to that CIDR whose address is not in the
`kube-router-local-pods` hash:ip set (the local pods whose chain the sync programmed),
ahead of the 0x20000 ACCEPT, and ends with plain `-s CIDR` / `-d CIDR` REJECTs.

Chain and set names are kube-router's: base32 of sha256 over the same strings,
with the sync version in chain names. The generator computes which pods each
selector picks itself, the way kube-router lists them.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from kpa.k8s.netpol import IPBlock, LabelSelector, NetworkPolicy, PolicyPort
from kpa.k8s.objects import ClusterObjects, Namespace, Pod

INPUT, FORWARD, OUTPUT = "KUBE-ROUTER-INPUT", "KUBE-ROUTER-FORWARD", "KUBE-ROUTER-OUTPUT"
DEFAULT, COMMON, TAIL = "KUBE-NWPLCY-DEFAULT", "KUBE-NWPLCY-COMMON", "KUBE-NWPLCY-TAIL"
LOCAL_PODS = "kube-router-local-pods"
TOP = (("INPUT", INPUT), ("FORWARD", FORWARD), ("OUTPUT", OUTPUT))
FAMILY = {4: "IPv4", 6: "IPv6"}


def _b32(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def set_name(name: str, version: int) -> str:
    return f"inet6:{name}" if version == 6 else name


def pod_chain(namespace: str, name: str, sync: str) -> str:
    return "KUBE-POD-FW-" + _b32(namespace + name + sync)


def policy_chain(namespace: str, name: str, sync: str, version: int) -> str:
    return "KUBE-NWPLCY-" + _b32(namespace + name + sync + FAMILY[version])


def target_set(prefix: str, namespace: str, name: str, version: int) -> str:
    return set_name(prefix + _b32(namespace + name + FAMILY[version]), version)


def indexed_set(prefix: str, namespace: str, name: str, direction: str, idx: int, version: int, kind: str,
                port_idx: int | None = None) -> str:
    middle = f"{direction}rule{idx}" + ("" if port_idx is None else str(port_idx))
    return set_name(prefix + _b32(namespace + name + middle + FAMILY[version] + kind), version)


def _uuid(chain: str, spec: list[str]) -> str:
    return _b32(chain + "".join(spec))


def _q(text: str) -> str:
    return f'"{text}"'


@dataclass
class KubeRouterOptions:
    node: str
    cluster_ip_ranges: tuple[str, ...] = ("10.96.0.0/12",)
    node_port_range: str = "30000:32767"
    sync_version: str = "1700000000000000000"
    families: tuple[int, ...] = (4,)
    # --netpol-default-deny (v2.11): REJECTs in KUBE-NWPLCY-TAIL for the node's pod CIDRs, gated by the
    # kube-router-local-pods ipset (local pods whose firewall chain is programmed).
    default_deny: bool = False
    pod_cidrs: tuple[str, ...] = ()


@dataclass
class _Sets:
    """The ipsets of one family, in creation order, with kube-router's types and entries."""

    types: dict[str, str] = field(default_factory=dict)
    entries: dict[str, list[str]] = field(default_factory=dict)

    def refresh(self, name: str, kind: str, entries: Iterable[str]) -> None:
        self.types.setdefault(name, kind)  # an existing set keeps its type, as RefreshSet does
        self.entries[name] = list(entries)


def _actionable(pod: Pod) -> bool:
    return bool(pod.pod_ips) and not pod.host_network and pod.phase not in ("Failed", "Succeeded", "Completed")


def _ip(pod: Pod, version: int) -> str | None:
    for ip in pod.pod_ips:
        if (":" in ip) == (version == 6):
            return ip
    return None


class _Layout:
    def __init__(self, objects: ClusterObjects, opts: KubeRouterOptions) -> None:
        self.objects = objects
        self.opts = opts
        self.pods = [p for p in objects.pods if _actionable(p)]
        self.namespaces: list[Namespace] = list(objects.namespaces)
        self.policies = sorted(objects.network_policies, key=lambda p: (p.namespace, p.name))
        self.targets = {p.key: {(q.namespace, q.name) for q in self.pods_in(p.namespace, p.pod_selector)}
                        for p in self.policies}

    # -- selectors, as kube-router's listers answer them --------------------------------
    def pods_in(self, namespace: str, selector: LabelSelector | None) -> list[Pod]:
        return [p for p in self.pods if p.namespace == namespace
                and (selector is None or selector.matches(dict(p.labels)))]

    def peer_pods(self, policy: NetworkPolicy, ns_sel: LabelSelector | None, pod_sel: LabelSelector | None) -> list[Pod]:
        if ns_sel is not None:
            out: list[Pod] = []
            for ns in sorted(self.namespaces, key=lambda n: n.name):
                if ns_sel.matches(dict(ns.labels)):
                    out.extend(self.pods_in(ns.name, pod_sel))
            return out
        if pod_sel is not None:
            return self.pods_in(policy.namespace, pod_sel)
        return []

    @staticmethod
    def named_ports(pods: list[Pod]) -> dict[str, dict[str, dict[int, list[Pod]]]]:
        out: dict[str, dict[str, dict[int, list[Pod]]]] = {}
        for pod in pods:
            for cp in pod.container_ports:
                out.setdefault(cp.name, {}).setdefault(cp.protocol, {}).setdefault(cp.port, []).append(pod)
        return out

    @staticmethod
    def ports(pports: tuple[PolicyPort, ...], named: dict[str, dict[str, dict[int, list[Pod]]]]
              ) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, list[Pod]]]]:
        numeric: list[tuple[str, str, str]] = []
        by_name: list[tuple[str, str, list[Pod]]] = []
        for pp in pports:
            if pp.port is None:
                numeric.append((pp.protocol, "", ""))
            elif isinstance(pp.port, int):
                end = str(pp.end_port) if pp.end_port is not None and pp.end_port >= pp.port else ""
                numeric.append((pp.protocol, str(pp.port), end))
            else:
                for port, pods in sorted(named.get(pp.port, {}).get(pp.protocol, {}).items()):
                    by_name.append((pp.protocol, str(port), pods))
        return numeric, by_name

    @staticmethod
    def ipblock_entries(block: IPBlock, version: int) -> list[str]:
        if block.network.version != version:
            return []
        whole = ["0.0.0.0/1", "128.0.0.0/1"] if version == 4 else ["2000::/3", "fd00::/8"]
        out = [f"{c} timeout 0" for c in (whole if block.network.prefixlen == 0 else [block.cidr])]
        for ex in block.excepts:
            out += [f"{c} timeout 0 nomatch" for c in (whole if ex.prefixlen == 0 else [str(ex)])]
        return out

    # -- rules -------------------------------------------------------------------------
    def policy_rule(self, out: list[str], chain: str, comment: str, src: str, dst: str, proto: str, port: str,
                    end: str) -> None:
        args = ["-A", chain, "-m", "comment", "--comment", _q(comment)]
        if src:
            args += ["-m", "set", "--match-set", src, "src"]
        if dst:
            args += ["-m", "set", "--match-set", dst, "dst"]
        if proto:
            args += ["-p", proto]
        if port:
            args += ["--dport", f"{port}:{end}" if end else port]
        out.append(" ".join([*args, "-j", "MARK", "--set-xmark", "0x10000/0x10000"]))
        out.append(" ".join([*args, "-m", "mark", "--mark", "0x10000/0x10000", "-j", "RETURN"]))

    def policy(self, policy: NetworkPolicy, version: int, rules: list[str], sets: _Sets) -> str:
        ns, name = policy.namespace, policy.name
        chain = policy_chain(ns, name, self.opts.sync_version, version)
        targets = self.pods_in(ns, policy.pod_selector)
        target_ips = [ip for p in targets if (ip := _ip(p, version))]
        ptype = self.policy_type(policy)
        cmt = f"{ns}/{name}"
        if ptype in ("both", "ingress"):
            dst_set = target_set("KUBE-DST-", ns, name, version)
            sets.refresh(dst_set, "hash:ip", (f"{ip} timeout 0" for ip in target_ips))
            named = self.named_ports(targets)
            for idx, rule in enumerate(policy.ingress):
                numeric, by_name = self.ports(rule.ports, named)
                all_ports = not rule.ports
                all_src = not rule.peers
                src_pods = [p for peer in rule.peers if peer.ip_block is None
                            for p in self.peer_pods(policy, peer.namespace_selector, peer.pod_selector)]
                if src_pods:
                    src_set = indexed_set("KUBE-SRC-", ns, name, "ingress", idx, version, "pod")
                    sets.refresh(src_set, "hash:ip", (f"{ip} timeout 0" for p in src_pods if (ip := _ip(p, version))))
                    for proto, port, end in numeric:
                        self.policy_rule(rules, chain, f"{cmt} ingress pods", src_set, dst_set, proto, port, end)
                    for ep, (proto, port, pods) in enumerate(by_name):
                        np_set = indexed_set("KUBE-DST-", ns, name, "ingress", idx, version, "namedport", ep)
                        sets.refresh(np_set, "hash:ip", (f"{ip} timeout 0" for p in pods if (ip := _ip(p, version))))
                        self.policy_rule(rules, chain, f"{cmt} ingress pods np", src_set, np_set, proto, port, "")
                    if not numeric and not by_name:
                        # Also when the rule names only ports no target pod declares: then every port.
                        self.policy_rule(rules, chain, f"{cmt} ingress pods", src_set, dst_set, "", "", "")
                if all_src and not all_ports:
                    for proto, port, end in numeric:
                        self.policy_rule(rules, chain, f"{cmt} ingress any", "", dst_set, proto, port, end)
                    for ep, (proto, port, pods) in enumerate(by_name):
                        np_set = indexed_set("KUBE-DST-", ns, name, "ingress", idx, version, "namedport", ep)
                        sets.refresh(np_set, "hash:ip", (f"{ip} timeout 0" for p in pods if (ip := _ip(p, version))))
                        self.policy_rule(rules, chain, f"{cmt} ingress any np", "", np_set, proto, port, "")
                if all_src and all_ports:
                    self.policy_rule(rules, chain, f"{cmt} ingress any", "", dst_set, "", "", "")
                blocks = [e for peer in rule.peers if peer.ip_block is not None
                          for e in self.ipblock_entries(peer.ip_block, version)]
                if blocks:
                    block_set = indexed_set("KUBE-SRC-", ns, name, "ingress", idx, version, "ipblock")
                    sets.refresh(block_set, "hash:net", blocks)
                    if not all_ports:
                        for proto, port, end in numeric:
                            self.policy_rule(rules, chain, f"{cmt} ingress cidr", block_set, dst_set, proto, port, end)
                        for ep, (proto, port, pods) in enumerate(by_name):
                            np_set = indexed_set("KUBE-DST-", ns, name, "ingress", idx, version, "namedport", ep)
                            sets.refresh(np_set, "hash:net",
                                         (f"{ip} timeout 0" for p in pods if (ip := _ip(p, version))))
                            self.policy_rule(rules, chain, f"{cmt} ingress cidr np", block_set, np_set, proto, port, "")
                    else:
                        self.policy_rule(rules, chain, f"{cmt} ingress cidr", block_set, dst_set, "", "", "")
        if ptype in ("both", "egress"):
            src_set = target_set("KUBE-SRC-", ns, name, version)
            sets.refresh(src_set, "hash:ip", (f"{ip} timeout 0" for ip in target_ips))
            for idx, rule in enumerate(policy.egress):
                all_ports = not rule.ports
                all_dst = not rule.peers
                dst_pods = [p for peer in rule.peers if peer.ip_block is None
                            for p in self.peer_pods(policy, peer.namespace_selector, peer.pod_selector)]
                # With no `to`, named ports resolve against the pods of the policy's own namespace.
                named = self.named_ports(self.pods_in(ns, None) if all_dst else dst_pods)
                numeric, by_name = self.ports(rule.ports, named)
                if dst_pods:
                    dst_set = indexed_set("KUBE-DST-", ns, name, "egress", idx, version, "pod")
                    sets.refresh(dst_set, "hash:ip", (f"{ip} timeout 0" for p in dst_pods if (ip := _ip(p, version))))
                    for proto, port, end in numeric:
                        self.policy_rule(rules, chain, f"{cmt} egress pods", src_set, dst_set, proto, port, end)
                    for ep, (proto, port, pods) in enumerate(by_name):
                        np_set = indexed_set("KUBE-DST-", ns, name, "egress", idx, version, "namedport", ep)
                        sets.refresh(np_set, "hash:ip", (f"{ip} timeout 0" for p in pods if (ip := _ip(p, version))))
                        self.policy_rule(rules, chain, f"{cmt} egress pods np", src_set, np_set, proto, port, "")
                    if not numeric and not by_name:
                        self.policy_rule(rules, chain, f"{cmt} egress pods", src_set, dst_set, "", "", "")
                if all_dst and not all_ports:
                    for proto, port, end in numeric:
                        self.policy_rule(rules, chain, f"{cmt} egress any", src_set, "", proto, port, end)
                    for proto, port, _pods in by_name:
                        self.policy_rule(rules, chain, f"{cmt} egress any np", src_set, "", proto, port, "")
                if all_dst and all_ports:
                    self.policy_rule(rules, chain, f"{cmt} egress any", src_set, "", "", "", "")
                blocks = [e for peer in rule.peers if peer.ip_block is not None
                          for e in self.ipblock_entries(peer.ip_block, version)]
                if blocks:
                    block_set = indexed_set("KUBE-DST-", ns, name, "egress", idx, version, "ipblock")
                    sets.refresh(block_set, "hash:net", blocks)
                    if not all_ports:
                        for proto, port, end in numeric:
                            self.policy_rule(rules, chain, f"{cmt} egress cidr", src_set, block_set, proto, port, end)
                    else:
                        self.policy_rule(rules, chain, f"{cmt} egress cidr", src_set, block_set, "", "", "")
        return chain

    @staticmethod
    def policy_type(policy: NetworkPolicy) -> str:
        ingress, egress = "Ingress" in policy.policy_types, "Egress" in policy.policy_types
        return "both" if ingress and egress else "egress" if egress else "ingress"

    def pod_rules(self, pod: Pod, version: int, ip: str, chains: dict[str, str], rules: list[str],
                  jumps: dict[str, list[str]]) -> str:
        sync = self.opts.sync_version
        chain = pod_chain(pod.namespace, pod.name, sync)
        ident = f"{pod.namespace}/{pod.name}"
        inserted: list[str] = []  # each `-I chain 1`, so the last written ends up first
        has_in = has_out = False
        for policy in self.policies:
            if (pod.namespace, pod.name) not in self.targets[policy.key]:
                continue
            pchain = chains[policy.key]
            cmt = _q(f"{policy.namespace}/{policy.name} policy")
            ptype = self.policy_type(policy)
            if ptype == "both":
                has_in = has_out = True
                inserted.append(f"-A {chain} -m comment --comment {cmt} -j {pchain}")
            elif ptype == "ingress":
                has_in = True
                inserted.append(f"-A {chain} -d {ip} -m comment --comment {cmt} -j {pchain}")
            else:
                has_out = True
                inserted.append(f"-A {chain} -s {ip} -m comment --comment {cmt} -j {pchain}")
        if not has_in:
            inserted.append(f'-A {chain} -d {ip} -m comment --comment "default ingress" -j {DEFAULT}')
        if not has_out:
            inserted.append(f'-A {chain} -s {ip} -m comment --comment "default egress" -j {DEFAULT}')
        inserted.append(f'-A {chain} -m comment --comment "from local node" -m addrtype --src-type LOCAL '
                        f"-d {ip} -j ACCEPT")
        inserted.append(f'-A {chain} -m comment --comment "common netpol rules" -j {COMMON}')
        rules.extend(reversed(inserted))
        rules.append(f'-A {chain} -m comment --comment {_q(ident + " log-drop")} -m mark ! --mark 0x10000/0x10000 '
                     "-j NFLOG --nflog-group 100 -m limit --limit 10/minute --limit-burst 10")
        rules.append(f'-A {chain} -m comment --comment {_q(ident + " reject")} -m mark ! --mark 0x10000/0x10000 '
                     "-j REJECT")
        rules.append(f"-A {chain} -j MARK --set-mark 0/0x10000")
        rules.append(f'-A {chain} -m comment --comment "set netpol-ok mark" -j MARK --set-mark 0x20000/0x20000')
        into = _q(f"{ident} in")
        jumps[FORWARD].append(f"-A {FORWARD} -m comment --comment {into} -d {ip} -j {chain}")
        jumps[OUTPUT].append(f"-A {OUTPUT} -m comment --comment {into} -d {ip} -j {chain}")
        jumps[FORWARD].append(f"-A {FORWARD} -m physdev --physdev-is-bridged -m comment --comment {into} "
                              f"-d {ip} -j {chain}")
        outof = _q(f"{ident} out")
        for _builtin, top in TOP:
            jumps[top].append(f"-A {top} -m comment --comment {outof} -s {ip} -j {chain}")
        jumps[FORWARD].append(f"-A {FORWARD} -m physdev --physdev-is-bridged -m comment --comment {outof} "
                              f"-s {ip} -j {chain}")
        return chain

    def filter_table(self, version: int, sets: _Sets) -> str:
        opts = self.opts
        lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
        for _, top in TOP:
            lines.append(f":{top} - [0:0]")
        lines += [f":{DEFAULT} - [0:0]", f":{COMMON} - [0:0]", f":{TAIL} - [0:0]"]
        body: list[str] = []
        for builtin, top in TOP:
            # kube-router inserts these at position 1, ahead of whatever else the chain holds.
            spec = ["-m", "comment", "--comment", "kube-router netpol", "-j", top]
            body.append(f'-I {builtin} 1 -m comment --comment "kube-router netpol - {_uuid(builtin, spec)}" -j {top}')
        for cidr in opts.cluster_ip_ranges:
            if (":" in cidr) != (version == 6):
                continue
            text = "allow traffic to primary/secondary cluster IP range"
            spec = ["-m", "comment", "--comment", text, "-d", cidr, "-j", "RETURN"]
            body.append(f'-A {INPUT} -d {cidr} -m comment --comment "{text} - {_uuid(INPUT, spec)}" -j RETURN')
        for proto in ("tcp", "udp", "sctp"):
            text = f"allow LOCAL {proto.upper()} traffic to node ports"
            spec = ["-p", proto, "-m", "comment", "--comment", text, "-m", "addrtype", "--dst-type", "LOCAL",
                    "-m", "multiport", "--dports", opts.node_port_range, "-j", "RETURN"]
            body.append(f'-A {INPUT} -p {proto} -m comment --comment "{text} - {_uuid(INPUT, spec)}" '
                        f"-m addrtype --dst-type LOCAL -m multiport --dports {opts.node_port_range} -j RETURN")
        body.append(f'-A {DEFAULT} -m comment --comment "rule to mark traffic matching a network policy" '
                    "-j MARK --set-xmark 0x10000/0x10000")
        icmp = ("icmp", "--icmp-type") if version == 4 else ("ipv6-icmp", "--icmpv6-type")
        body += [f'-A {COMMON} -m comment --comment "rule to drop invalid state for pod" -m conntrack --ctstate '
                 "INVALID -j DROP",
                 f'-A {COMMON} -m comment --comment "rule for stateful firewall for pod" -m conntrack --ctstate '
                 "RELATED,ESTABLISHED -j ACCEPT"]
        icmp_rules = [("echo-request", "allow icmp echo requests"),
                      ("destination-unreachable", "allow icmp destination unreachable messages"),
                      ("time-exceeded", "allow icmp time exceeded messages")]
        if version == 6:
            icmp_rules += [("neighbor-solicitation", "allow icmp neighbor solicitation messages"),
                           ("neighbor-advertisement", "allow icmp neighbor advertisement messages"),
                           ("echo-reply", "allow icmp echo reply messages")]
        for kind, text in icmp_rules:
            body.append(f'-A {COMMON} -m comment --comment "{text}" -p {icmp[0]} {icmp[1]} {kind} -j ACCEPT')
        cidrs = [c for c in opts.pod_cidrs if (":" in c) == (version == 6)] if opts.default_deny else []
        local_pods = set_name(LOCAL_PODS, version)
        for cidr in cidrs:
            # Ahead of the ACCEPT: traffic to or from a local pod whose chain is not programmed yet.
            gate = '-m comment --comment "reject unprogrammed local pod (default-deny)" -m set ! --match-set'
            body.append(f"-A {TAIL} -s {cidr} {gate} {local_pods} src -j REJECT")
            body.append(f"-A {TAIL} -d {cidr} {gate} {local_pods} dst -j REJECT")
        body.append(f'-A {TAIL} -m comment --comment "accept netpol-ok" -m mark --mark 0x20000/0x20000 -j ACCEPT')
        for cidr in cidrs:
            body.append(f'-A {TAIL} -s {cidr} -m comment --comment "reject pre-netpol (default-deny)" -j REJECT')
            body.append(f'-A {TAIL} -d {cidr} -m comment --comment "reject pre-netpol (default-deny)" -j REJECT')
        chains: dict[str, str] = {}
        policy_rules: list[str] = []
        for policy in self.policies:
            chains[policy.key] = chain = self.policy(policy, version, policy_rules, sets)
            lines.append(f":{chain} - [0:0]")
        body += policy_rules
        jumps: dict[str, list[str]] = {top: [] for _, top in TOP}
        local = sorted((p for p in self.pods if p.node_name == opts.node), key=lambda p: (p.namespace, p.name))
        programmed: list[str] = []
        for pod in local:
            ip = _ip(pod, version)
            if ip is None:
                continue
            chain = self.pod_rules(pod, version, ip, chains, body, jumps)
            lines.append(f":{chain} - [0:0]")
            programmed.append(ip)
        if opts.default_deny:
            sets.refresh(local_pods, "hash:ip", (f"{ip} timeout 0" for ip in programmed))
        for _, top in TOP:
            body += jumps[top]
            body.append(f'-A {top} -m comment --comment "rule to explicitly handle traffic for network policies '
                        f'ACCEPT/REJECT decision" -j {TAIL}')
            body.append(f'-A {top} -m comment --comment "rule to explicitly ACCEPT traffic that comply to network '
                        'policies" -m mark --mark 0x20000/0x20000 -j ACCEPT')
        return "\n".join([*lines, *body, "COMMIT"]) + "\n"


def ipset_restore(sets: _Sets, version: int) -> str:
    """kube-router's ipset restore payload: each set filled under a temporary name, then swapped in."""
    out: list[str] = []
    tmps: dict[str, str] = {}
    for name in sorted(sets.types):
        options = f"{sets.types[name]} timeout 0" + (" family inet6" if version == 6 else "")
        tmp = tmps.get(options)
        if tmp is None:
            digest = hashlib.sha1(("tmp:" + options).encode()).digest()[:10]
            tmp = tmps[options] = "TMP-" + base64.b32encode(digest).decode()
            out += [f"create {tmp} {options}", f"flush {tmp}"]
        out += [f"add {tmp} {entry}" for entry in sets.entries[name]]
        out += [f"create {name} {options}", f"swap {tmp} {name}", f"flush {tmp}"]
    out += [f"destroy {tmp}" for tmp in sorted(tmps.values())]
    return "\n".join(out) + ("\n" if out else "")


def render(objects: ClusterObjects, opts: KubeRouterOptions) -> dict[str, str]:
    """The payloads for one node: {"iptables-restore.v4": ..., "ipset-restore.v4": ..., ...}."""
    layout = _Layout(objects, opts)
    out: dict[str, str] = {}
    for version in opts.families:
        sets = _Sets()
        out[f"iptables-restore.v{version}"] = layout.filter_table(version, sets)
        out[f"ipset-restore.v{version}"] = ipset_restore(sets, version)
    return out


def capture(payloads: dict[str, str], backend: str) -> tuple[str, str]:
    """Load the v4 payloads into a scratch namespace; what `iptables-save` and `ipset save` print there."""
    import subprocess

    from kpa.gen.capture import CaptureError, scratch_netns

    with scratch_netns() as netns:
        def run(args: list[str], stdin: str | None = None) -> str:
            res = subprocess.run(["ip", "netns", "exec", netns, *args], input=stdin, capture_output=True, text=True,
                                 check=False)
            if res.returncode != 0:
                raise CaptureError(f"{' '.join(args)} failed: {res.stderr.strip()}")
            return res.stdout

        run(["ipset", "-exist", "restore"], payloads["ipset-restore.v4"])
        run([f"iptables-{backend}-restore", "-w", "10"], payloads["iptables-restore.v4"])
        rules, sets = run([f"iptables-{backend}-save"]), run(["ipset", "save"])
        run([f"iptables-{backend}-restore", "-w", "10"], "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n"
            ":OUTPUT ACCEPT [0:0]\nCOMMIT\n")
        run(["ipset", "destroy"])
    return rules, sets


# The fixtures' node's pod CIDR, for the default-deny variant.
DEFAULT_DENY_CIDRS = ("10.244.0.0/24",)


def main(argv: list[str] | None = None) -> int:
    """`python -m kpa.gen.kuberouter fixtures [DIR]`: regenerate the kube-router fixtures from the kernel."""
    import argparse
    from pathlib import Path

    from kpa.k8s.objects import load_objects

    ap = argparse.ArgumentParser(prog="python -m kpa.gen.kuberouter")
    ap.add_argument("command", choices=["fixtures", "payloads"])
    ap.add_argument("dir", nargs="?", default="tests/fixtures/kube-router")
    ap.add_argument("--node", default="node-1")
    args = ap.parse_args(argv)
    out_dir = Path(args.dir)
    objects = load_objects([str(out_dir / "cluster.yaml")])
    variants = {"": KubeRouterOptions(node=args.node),
                "default-deny.": KubeRouterOptions(node=args.node, default_deny=True, pod_cidrs=DEFAULT_DENY_CIDRS)}
    for prefix, opts in variants.items():
        out = render(objects, opts)
        if args.command == "payloads":
            for name, text in out.items():
                (out_dir / f"{prefix}{name}").write_text(text)
            continue
        for backend in ("nft", "legacy"):
            rules, sets = capture(out, backend)
            (out_dir / f"{prefix}{backend}.v4.save").write_text(rules)
            (out_dir / f"{prefix}ipset.v4.save").write_text(sets)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
