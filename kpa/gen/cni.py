"""What CNIs, Docker and Istio's sidecar add next to kube-proxy: iptables-restore payloads.

Each layout follows the project's own rule rendering (chain names, rule order,
comments, marks and sets), for one IPv4 node:

* ``istio``: istio-iptables (tools/istio-iptables) in REDIRECT mode: nat
  ISTIO_INBOUND (ports 15008/15090/15021/15020 excluded) to ISTIO_IN_REDIRECT
  (REDIRECT to 15006), ISTIO_OUTPUT with the envoy owner exceptions for uid and
  gid 1337 and the 127.0.0.6 passthrough, and ISTIO_REDIRECT (REDIRECT to 15001).
* ``docker``: moby's libnetwork iptables for the default bridge docker0: filter
  DOCKER-USER, DOCKER-ISOLATION-STAGE-1/2 and DOCKER with FORWARD's policy DROP,
  nat DOCKER reached through `-m addrtype --dst-type LOCAL`, masquerade of the
  bridge subnet, and one published port.
* ``flannel``: flanneld's FLANNEL-FWD (accept the cluster CIDR) and
  FLANNEL-POSTRTG (no masquerade inside the cluster or for kube-proxy's mark,
  masquerade --random-fully leaving it), with its comments.
* ``calico``: felix in VXLAN mode: raw cali-PREROUTING (workload mark, strict
  `rpfilter --validmark`), filter cali-INPUT/FORWARD/OUTPUT with the workload
  dispatch chains, a per-endpoint cali-fw-/cali-tw- pair and a profile, the
  VXLAN accept from cali40all-vxlan-net, nat cali-nat-outgoing over the
  cali40masq-ipam-pools/cali40all-ipam-pools sets; rule comments are felix-style
  `cali:<hash>` ids, written before the matches (then the description, if any),
  so iptables-save prints them first, right after `-p`.
* ``calico-ipip``: the same felix node in IPIP mode: protocol 4 (printed
  `ipencap`) from the Calico hosts in cali40all-hosts-net accepted in cali-INPUT
  and dropped from any other host, IPIP to other Calico hosts accepted in
  cali-OUTPUT, IPIP from workloads dropped in each cali-fw- chain, and masquerade
  of host-sourced traffic leaving tunl0.
* ``cilium``: Cilium's iptables manager next to kube-proxy: the cilium-feeder
  jumps, CILIUM_PRE_raw/CILIUM_OUTPUT_raw NOTRACK for proxy traffic,
  CILIUM_PRE_mangle with `-m socket --transparent` and a TPROXY to the DNS
  proxy, CILIUM_FORWARD/INPUT/OUTPUT accepts and host marks, CILIUM_POST_nat
  masquerade of non-cluster traffic.

`render(name, NodeLayout(...))` gives the restore payload (and, for Calico, the
`ipset restore` payload); `python -m kpa.gen.cni fixtures DIR` loads kube-proxy's
rules for a small cluster and then each layout (`--noflush`) into a scratch
namespace and keeps what iptables-save (nft and legacy) and ipset save printed.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

LAYOUTS = ("istio", "docker", "flannel", "calico", "calico-ipip", "cilium")


@dataclass(frozen=True)
class NodeLayout:
    node_ip: str = "192.168.10.2"
    pod_cidr: str = "10.244.0.0/24"  # this node's
    cluster_cidr: str = "10.244.0.0/16"
    # Local workload interfaces (Calico's cali+<11 hex>) and their pod addresses.
    workloads: tuple[tuple[str, str], ...] = ()
    vxlan_peers: tuple[str, ...] = ("192.168.10.3",)
    # Calico's other hosts (IPIP peers); cali40all-hosts-net holds them and this node.
    calico_hosts: tuple[str, ...] = ("192.168.10.3",)
    docker_subnet: str = "172.17.0.0/16"
    docker_container: str = "172.17.0.2"
    docker_published: tuple[int, int] = (8080, 80)  # host port -> container port


def _table(name: str, chains: list[str], rules: list[str]) -> str:
    builtin = {"raw": ("PREROUTING", "OUTPUT"), "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
               "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"), "filter": ("INPUT", "FORWARD", "OUTPUT")}
    # Built-in chains keep their policy (`-`), so a --noflush load does not reset kube-proxy's.
    head = [f"*{name}"] + [f":{c} - [0:0]" for c in chains if c not in builtin[name]]
    return "\n".join(head + rules + ["COMMIT"]) + "\n"


def istio(lay: NodeLayout) -> str:
    proxy_uid = proxy_gid = "1337"
    nat = [
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15020 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
        f"-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner {proxy_uid} "
        "-j ISTIO_IN_REDIRECT",
        f"-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner {proxy_uid} -j RETURN",
        f"-A ISTIO_OUTPUT -m owner --uid-owner {proxy_uid} -j RETURN",
        f"-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --gid-owner {proxy_gid} -j ISTIO_IN_REDIRECT",
        f"-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner {proxy_gid} -j RETURN",
        f"-A ISTIO_OUTPUT -m owner --gid-owner {proxy_gid} -j RETURN",
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
    ]
    return _table("nat", ["ISTIO_INBOUND", "ISTIO_IN_REDIRECT", "ISTIO_OUTPUT", "ISTIO_REDIRECT"], nat)


def docker(lay: NodeLayout) -> str:
    host_port, ctr_port = lay.docker_published
    ctr = lay.docker_container
    filt = [
        "-P FORWARD DROP",
        "-A FORWARD -j DOCKER-USER",
        "-A FORWARD -j DOCKER-ISOLATION-STAGE-1",
        "-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-A FORWARD -o docker0 -j DOCKER",
        "-A FORWARD -i docker0 ! -o docker0 -j ACCEPT",
        "-A FORWARD -i docker0 -o docker0 -j ACCEPT",
        f"-A DOCKER -d {ctr}/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport {ctr_port} -j ACCEPT",
        "-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2",
        "-A DOCKER-ISOLATION-STAGE-1 -j RETURN",
        "-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP",
        "-A DOCKER-ISOLATION-STAGE-2 -j RETURN",
        "-A DOCKER-USER -j RETURN",
    ]
    nat = [
        "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
        "-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER",
        f"-A POSTROUTING -s {lay.docker_subnet} ! -o docker0 -j MASQUERADE",
        f"-A POSTROUTING -s {ctr}/32 -d {ctr}/32 -p tcp -m tcp --dport {ctr_port} -j MASQUERADE",
        "-A DOCKER -i docker0 -j RETURN",
        f"-A DOCKER ! -i docker0 -p tcp -m tcp --dport {host_port} -j DNAT --to-destination {ctr}:{ctr_port}",
    ]
    # The filter policy line is not a rule: move it to the chain header.
    policy = [r for r in filt if r.startswith("-P")]
    body = [r for r in filt if not r.startswith("-P")]
    filter_text = _table("filter", ["DOCKER", "DOCKER-ISOLATION-STAGE-1", "DOCKER-ISOLATION-STAGE-2", "DOCKER-USER"],
                         body).replace("*filter\n", "*filter\n:FORWARD DROP [0:0]\n" if policy else "*filter\n")
    return _table("nat", ["DOCKER"], nat) + filter_text


def flannel(lay: NodeLayout) -> str:
    fwd = '-m comment --comment "flanneld forward"'
    masq = '-m comment --comment "flanneld masq"'
    net, sub = lay.cluster_cidr, lay.pod_cidr
    filt = [f"-A FORWARD {fwd} -j FLANNEL-FWD",
            f"-A FLANNEL-FWD -s {net} {fwd} -j ACCEPT",
            f"-A FLANNEL-FWD -d {net} {fwd} -j ACCEPT"]
    nat = [f"-A POSTROUTING {masq} -j FLANNEL-POSTRTG",
           f"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {masq} -j RETURN",
           f"-A FLANNEL-POSTRTG -s {sub} -d {net} {masq} -j RETURN",
           f"-A FLANNEL-POSTRTG -s {net} -d {sub} {masq} -j RETURN",
           f"-A FLANNEL-POSTRTG ! -s {net} -d {sub} {masq} -j RETURN",
           f"-A FLANNEL-POSTRTG -s {net} ! -d 224.0.0.0/4 {masq} -j MASQUERADE --random-fully",
           f"-A FLANNEL-POSTRTG ! -s {net} -d {net} {masq} -j MASQUERADE --random-fully"]
    return _table("nat", ["FLANNEL-POSTRTG"], nat) + _table("filter", ["FLANNEL-FWD"], filt)


def _cali_id(chain: str, index: int, rule: str) -> str:
    """A felix-style rule id: hash of chain, position and rule, 16 base64url characters."""
    digest = hashlib.sha224(f"{chain}\x00{index}\x00{rule}".encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()[:16]


def _cali_chain(chain: str, rules: list[str]) -> list[str]:
    """felix's rules with their `cali:` id comment, then a description given as
    `RULE # DESCRIPTION`, both before the matches, as felix writes them."""
    out = []
    for i, r in enumerate(rules):
        r, _, said = r.partition(" # ")
        verb = " -g " if " -g " in f" {r}" and " -j " not in f" {r}" else " -j "
        match, _, action = f" {r}".rpartition(verb)
        comment = f'-m comment --comment "cali:{_cali_id(chain, i, r)}"'
        if said:
            comment += f' -m comment --comment "{said}"'
        out.append(" ".join(p for p in (f"-A {chain}", comment, match.strip(), verb.strip(), action) if p))
    return out


def calico(lay: NodeLayout, encap: str = "vxlan") -> tuple[str, str]:
    """felix's VXLAN-mode (or IPIP-mode) rules, and the ipsets they use."""
    pools, masq, vxlan = "cali40all-ipam-pools", "cali40masq-ipam-pools", "cali40all-vxlan-net"
    hosts = "cali40all-hosts-net"
    ipip = encap == "ipip"

    def felix(name: str, rules: list[str]) -> list[str]:
        return _cali_chain(name, rules)
    accept, scratch0, endpoint = "0x10000/0x10000", "0x20000/0x20000", "0x40000/0x40000"
    raw: list[str] = []
    raw += ['-A PREROUTING -m comment --comment "cali:6gwbT8clXdHdC1b1" -j cali-PREROUTING',
            '-A OUTPUT -m comment --comment "cali:tVnHkvAo15HuiPy0" -j cali-OUTPUT']
    raw += felix("cali-PREROUTING", [
        "-j MARK --set-xmark 0x0/0xf0000",
        f"-i cali+ -j MARK --set-xmark {endpoint}",
        f"-m mark --mark {endpoint} -j cali-rpf-skip",
        f"-m mark --mark {endpoint} -m rpfilter --validmark --invert -j DROP",
        "-m mark --mark 0x0/0x40000 -j cali-from-host-endpoint",
        f"-m mark --mark {accept} -j ACCEPT",
    ])
    raw += felix("cali-OUTPUT", [
        "-j MARK --set-xmark 0x0/0xf0000",
        "-j cali-to-host-endpoint",
        f"-m mark --mark {accept} -j ACCEPT",
    ])
    filt: list[str] = []
    filt += ['-A INPUT -m comment --comment "cali:Cz_u1IQiXIMmKD4c" -j cali-INPUT',
             '-A FORWARD -m comment --comment "cali:wUHhoiAYhphO9Mso" -j cali-FORWARD',
             '-A OUTPUT -m comment --comment "cali:tVnHkvAo15HuiPy0" -j cali-OUTPUT']
    encap_in = [
        f"-p ipencap -m set --match-set {hosts} src -m addrtype --dst-type LOCAL -j ACCEPT "
        "# Allow IPIP packets from Calico hosts",
        "-p ipencap -j DROP # Drop IPIP packets from non-Calico hosts",
    ] if ipip else [
        f"-p udp -m udp --dport 4789 -m set --match-set {vxlan} src -m addrtype --dst-type LOCAL -j ACCEPT",
        "-p udp -m udp --dport 4789 -m addrtype --dst-type LOCAL -j DROP",
    ]
    filt += felix("cali-INPUT", [
        *encap_in,
        "-i cali+ -g cali-wl-to-host",
        f"-m mark --mark {accept} -j ACCEPT",
        "-j MARK --set-xmark 0x0/0xf0000",
        "-j cali-from-host-endpoint",
        f"-m mark --mark {accept} -j ACCEPT",
    ])
    filt += felix("cali-wl-to-host", [
        "-j cali-from-wl-dispatch",
        "-j ACCEPT",
    ])
    filt += felix("cali-FORWARD", [
        "-j MARK --set-xmark 0x0/0xe0000",
        "-m mark --mark 0x0/0x10000 -j cali-from-hep-forward",
        "-i cali+ -j cali-from-wl-dispatch",
        "-o cali+ -j cali-to-wl-dispatch",
        "-j cali-to-hep-forward",
        "-j cali-cidr-block",
    ])
    filt.append(f'-A FORWARD -m comment --comment "cali:S93hcgKJrXEqnTfs" -m mark --mark {accept} -j ACCEPT')
    filt += felix("cali-OUTPUT", [
        f"-m mark --mark {accept} -j ACCEPT",
        "-o cali+ -j RETURN",
        (f"-p ipencap -m set --match-set {hosts} dst -m addrtype --src-type LOCAL -j ACCEPT "
         "# Allow IPIP packets to other Calico hosts") if ipip else
        "-p udp -m udp --dport 4789 -m addrtype --src-type LOCAL -j ACCEPT",
        "-j MARK --set-xmark 0x0/0xf0000",
        "-m conntrack ! --ctstate DNAT -j cali-to-host-endpoint",
        f"-m mark --mark {accept} -j ACCEPT",
    ])
    from_dispatch: list[str] = []
    to_dispatch: list[str] = []
    endpoint_chains: list[str] = []
    for iface, _ip in lay.workloads:
        suffix = iface[4:]
        from_dispatch.append(f"-i {iface} -g cali-fw-{iface}")
        to_dispatch.append(f"-o {iface} -g cali-tw-{iface}")
        for kind in ("fw", "tw"):
            chain = f"cali-{kind}-{iface}"
            endpoint_chains.append(chain)
            rules = [
                "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                "-m conntrack --ctstate INVALID -j DROP",
                "-j MARK --set-xmark 0x0/0x10000",
            ]
            if kind == "fw":
                rules.append("-p ipencap -j DROP # Drop IPinIP encapped packets originating in workloads" if ipip
                             else "-p udp -m udp --dport 4789 -j DROP")
            rules += [f"-j cali-p{'ro' if kind == 'fw' else 'ri'}-kns.default",
                      f"-m mark --mark {accept} -j RETURN",
                      f"-j cali-p{'ro' if kind == 'fw' else 'ri'}-_{suffix[:8]}",
                      f"-m mark --mark {accept} -j RETURN",
                      "-j DROP"]
            filt += felix(chain, rules)
        del suffix
    from_dispatch.append("-j DROP")
    to_dispatch.append("-j DROP")
    filt += felix("cali-from-wl-dispatch", from_dispatch)
    filt += felix("cali-to-wl-dispatch", to_dispatch)
    profiles = ["cali-pro-kns.default", "cali-pri-kns.default"]
    filt += felix("cali-pro-kns.default", [f"-j MARK --set-xmark {accept}", f"-m mark --mark {accept} -j RETURN"])
    filt += felix("cali-pri-kns.default", [f"-j MARK --set-xmark {accept}", f"-m mark --mark {accept} -j RETURN"])
    extra_profiles = sorted({f"cali-p{d}-_{iface[4:12]}" for iface, _ in lay.workloads for d in ("ro", "ri")})
    for p in extra_profiles:
        filt += felix(p, [f"-m mark --mark {scratch0} -j RETURN"])
    nat: list[str] = []
    nat += ['-A PREROUTING -m comment --comment "cali:6gwbT8clXdHdC1b1" -j cali-PREROUTING',
            '-A OUTPUT -m comment --comment "cali:tVnHkvAo15HuiPy0" -j cali-OUTPUT',
            '-A POSTROUTING -m comment --comment "cali:O3lYWMrLQYEMJtB5" -j cali-POSTROUTING']
    nat += felix("cali-PREROUTING", ["-j cali-fip-dnat"])
    nat += felix("cali-OUTPUT", ["-j cali-fip-dnat"])
    nat += felix("cali-POSTROUTING", [
        "-j cali-fip-snat",
        "-j cali-nat-outgoing",
        f"-o {'tunl0' if ipip else 'vxlan.calico'} -m addrtype ! --src-type LOCAL --limit-iface-out "
        "-m addrtype --src-type LOCAL -j MASQUERADE --random-fully",
    ])
    nat += felix("cali-nat-outgoing", [
        f"-m set --match-set {masq} src -m set ! --match-set {pools} dst -j MASQUERADE --random-fully",
    ])
    empty_raw = ["cali-rpf-skip", "cali-from-host-endpoint", "cali-to-host-endpoint"]
    empty_filter = ["cali-from-hep-forward", "cali-to-hep-forward", "cali-cidr-block", "cali-from-host-endpoint",
                    "cali-to-host-endpoint"]
    filter_chains = ["cali-INPUT", "cali-FORWARD", "cali-OUTPUT", "cali-wl-to-host", "cali-from-wl-dispatch",
                     "cali-to-wl-dispatch", *endpoint_chains, *profiles, *extra_profiles, *empty_filter]
    payload = (_table("raw", ["cali-PREROUTING", "cali-OUTPUT", *empty_raw], raw)
               + _table("filter", filter_chains, filt)
               + _table("nat", ["cali-PREROUTING", "cali-OUTPUT", "cali-POSTROUTING", "cali-fip-dnat",
                                "cali-fip-snat", "cali-nat-outgoing"], nat))
    sets = [f"create {pools} hash:net family inet hashsize 1024 maxelem 1048576",
            f"add {pools} {lay.cluster_cidr}",
            f"create {masq} hash:net family inet hashsize 1024 maxelem 1048576",
            f"add {masq} {lay.cluster_cidr}",
            *([f"create {hosts} hash:net family inet hashsize 1024 maxelem 1048576",
               *(f"add {hosts} {h}" for h in (lay.node_ip, *lay.calico_hosts))] if ipip else
              [f"create {vxlan} hash:net family inet hashsize 1024 maxelem 1048576",
               *(f"add {vxlan} {p}" for p in lay.vxlan_peers)])]
    return payload, "\n".join(sets) + "\n"


def cilium(lay: NodeLayout) -> str:
    def feeder(hook: str, chain: str) -> str:
        return f'-A {hook} -m comment --comment "cilium-feeder: {chain}" -j {chain}'

    raw = [feeder("PREROUTING", "CILIUM_PRE_raw"), feeder("OUTPUT", "CILIUM_OUTPUT_raw"),
           '-A CILIUM_OUTPUT_raw -o lxc+ -m mark --mark 0xa00/0xfffffeff -m comment --comment '
           '"cilium: NOTRACK for proxy return traffic" -j CT --notrack',
           '-A CILIUM_OUTPUT_raw -o cilium_host -m mark --mark 0xa00/0xfffffeff -m comment --comment '
           '"cilium: NOTRACK for proxy return traffic" -j CT --notrack',
           '-A CILIUM_OUTPUT_raw -o lxc+ -m mark --mark 0x800/0xe00 -m comment --comment '
           '"cilium: NOTRACK for L7 proxy upstream traffic" -j CT --notrack',
           '-A CILIUM_PRE_raw -m mark --mark 0x200/0xf00 -m comment --comment '
           '"cilium: NOTRACK for proxy traffic" -j CT --notrack']
    mangle = [feeder("PREROUTING", "CILIUM_PRE_mangle"), feeder("POSTROUTING", "CILIUM_POST_mangle"),
              '-A CILIUM_PRE_mangle ! -o lo -m socket --transparent -m comment --comment '
              '"cilium: any->pod redirect proxied traffic to host proxy" -j MARK --set-xmark 0x200/0xffffffff',
              '-A CILIUM_PRE_mangle -p tcp -m mark --mark 0x3e8d0200 -m comment --comment '
              '"cilium: TPROXY to host cilium-dns-egress proxy" -j TPROXY --on-port 36413 --on-ip 127.0.0.1 '
              '--tproxy-mark 0x200/0xffffffff',
              '-A CILIUM_PRE_mangle -p udp -m mark --mark 0x3e8d0200 -m comment --comment '
              '"cilium: TPROXY to host cilium-dns-egress proxy" -j TPROXY --on-port 36413 --on-ip 127.0.0.1 '
              '--tproxy-mark 0x200/0xffffffff']
    filt = [feeder("INPUT", "CILIUM_INPUT"), feeder("FORWARD", "CILIUM_FORWARD"), feeder("OUTPUT", "CILIUM_OUTPUT"),
            '-A CILIUM_FORWARD -o cilium_host -m comment --comment "cilium: any->cluster on cilium_host forward '
            'accept" -j ACCEPT',
            '-A CILIUM_FORWARD -i cilium_host -m comment --comment "cilium: cluster->any on cilium_host forward '
            'accept (nodeport)" -j ACCEPT',
            '-A CILIUM_FORWARD -i lxc+ -m comment --comment "cilium: cluster->any on lxc+ forward accept" -j ACCEPT',
            '-A CILIUM_FORWARD -i cilium_net -m comment --comment "cilium: cluster->any on cilium_net forward accept '
            '(nodeport)" -j ACCEPT',
            '-A CILIUM_INPUT -m mark --mark 0x200/0xf00 -m comment --comment "cilium: ACCEPT for proxy traffic" '
            '-j ACCEPT',
            '-A CILIUM_OUTPUT -m mark --mark 0xa00/0xfffffeff -m comment --comment "cilium: ACCEPT for proxy return '
            'traffic" -j ACCEPT',
            '-A CILIUM_OUTPUT -m mark --mark 0x800/0xe00 -m comment --comment "cilium: ACCEPT for l7 proxy upstream '
            'traffic" -j ACCEPT',
            '-A CILIUM_OUTPUT -m mark ! --mark 0xe00/0xf00 -m mark ! --mark 0xd00/0xf00 -m mark ! --mark 0xa00/0xe00 '
            '-m mark ! --mark 0x800/0xe00 -m mark ! --mark 0xf00/0xf00 -m comment --comment "cilium: host->any mark '
            'as from host" -j MARK --set-xmark 0xc00/0xf00']
    nat = [feeder("PREROUTING", "CILIUM_PRE_nat"), feeder("OUTPUT", "CILIUM_OUTPUT_nat"),
           feeder("POSTROUTING", "CILIUM_POST_nat"),
           f'-A CILIUM_POST_nat -s {lay.pod_cidr} ! -d {lay.cluster_cidr} ! -o cilium_+ -m comment --comment '
           '"cilium masquerade non-cluster" -j MASQUERADE',
           '-A CILIUM_POST_nat -m mark --mark 0xa00/0xe00 -m comment --comment "exclude proxy return traffic from '
           'masquerade" -j ACCEPT',
           f'-A CILIUM_POST_nat -s 127.0.0.1/32 -o cilium_host -m comment --comment "cilium host->cluster from '
           f'127.0.0.1 masquerade" -j SNAT --to-source {lay.node_ip}']
    return (_table("raw", ["CILIUM_OUTPUT_raw", "CILIUM_PRE_raw"], raw)
            + _table("mangle", ["CILIUM_POST_mangle", "CILIUM_PRE_mangle"], mangle)
            + _table("filter", ["CILIUM_FORWARD", "CILIUM_INPUT", "CILIUM_OUTPUT"], filt)
            + _table("nat", ["CILIUM_OUTPUT_nat", "CILIUM_POST_nat", "CILIUM_PRE_nat"], nat))


def render(name: str, lay: NodeLayout) -> tuple[str, str | None]:
    """(iptables-restore payload, ipset restore payload or None) for a layout."""
    if name in ("calico", "calico-ipip"):
        return calico(lay, "ipip" if name == "calico-ipip" else "vxlan")
    return {"istio": istio, "docker": docker, "flannel": flannel, "cilium": cilium}[name](lay), None


# The small cluster the fixtures combine each layout with: one NodePort Service whose
# endpoint is a pod on this node (the kernel tests' topology).
NODE_IP, CLUSTER_IP, NODE_PORT, WEB = "192.168.10.2", "10.96.0.20", 30080, "10.244.0.10"
CLIENT = "10.244.0.5"


def cali_iface(ip: str) -> str:
    """Calico's host-side veth name for a workload: cali + 11 hex characters."""
    return "cali" + hashlib.sha1(ip.encode()).hexdigest()[:11]


def layout() -> NodeLayout:
    return NodeLayout(node_ip=NODE_IP, workloads=tuple((cali_iface(ip), ip) for ip in (WEB, "10.244.0.11", CLIENT)))


def kube_proxy_payload() -> str:
    from kpa.gen.cluster import Cluster, Endpoint, Node, Service, ServicePort
    from kpa.gen.iptables import render_restore
    from kpa.gen.options import ProxierOptions

    cluster = Cluster(
        nodes=[Node("node-1", ipv4=NODE_IP, pod_cidrs=["10.244.0.0/24"]), Node("node-2", ipv4="192.168.10.3")],
        services=[Service("shop", "web", [ServicePort(80, 8080, "http", "TCP", NODE_PORT)], [CLUSTER_IP], "NodePort",
                          endpoints=[Endpoint(WEB, "node-1", "web")])])
    return render_restore(cluster, ProxierOptions(node_name="node-1"))


def _run(argv: list[str], stdin: str | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def capture(kube_proxy: str, name: str, lay: NodeLayout, backend: str) -> tuple[str, str | None]:
    """Load kube-proxy's payload, then the layout's (--noflush), into a scratch namespace; return what
    iptables-save (and ipset save) printed."""
    from kpa.gen.capture import scratch_netns

    payload, sets = render(name, lay)
    with scratch_netns("kpacni") as ns:
        ex = ["ip", "netns", "exec", ns]
        if sets:
            _run([*ex, "ipset", "restore"], sets)
        _run([*ex, f"iptables-{backend}-restore", "-w", "10"], kube_proxy)
        _run([*ex, f"iptables-{backend}-restore", "-w", "10", "--noflush"], payload)
        saved = _run([*ex, f"iptables-{backend}-save"])
        ipsets = _run([*ex, "ipset", "save"]) if sets else None
        if sets:
            _run([*ex, f"iptables-{backend}-restore", "-w", "10"],
                 "".join(f"*{t}\nCOMMIT\n" for t in ("raw", "mangle", "nat", "filter")))
            _run([*ex, "ipset", "destroy"])
    return saved, ipsets


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "fixtures":
        print("usage: python -m kpa.gen.cni fixtures DIR", file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    lay = layout()
    for name in LAYOUTS:
        for backend in ("nft", "legacy"):
            saved, sets = capture(kube_proxy_payload(), name, lay, backend)
            (out / f"{name}.{backend}.v4.save").write_text(saved)
            if sets:
                (out / f"{name}.ipset.save").write_text(sets)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
