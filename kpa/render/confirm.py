"""Commands that confirm a trace on the node itself, and the commands that undo them.

kpa prints these and never runs them. They mark the packet for the
kernel's own tracing, matched to the backend the dump came from:

- iptables-nft: a TRACE rule in the raw table; `xtables-monitor --trace`
  prints every rule the packet meets.
- iptables-legacy: the same TRACE rule through iptables-legacy; the kernel
  logs the trace (nf_log must be bound for the family), read with dmesg.
- nftables: a table of kpa's own with a chain ahead of everything else
  (priority -350, before raw) that sets `meta nftrace`; `nft monitor trace`
  prints the trace.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from kpa.netfilter.model import Ruleset
from kpa.netfilter.packet import PacketSpec

TABLE = "kpa_trace"


@dataclass
class Confirm:
    backend: str
    setup: list[str]
    watch: list[str]
    cleanup: list[str]

    def to_json(self) -> dict[str, object]:
        return {"backend": self.backend, "setup": self.setup, "watch": self.watch, "cleanup": self.cleanup}


def backend_of(rs: Ruleset) -> str:
    """Which backend holds kube-proxy's rules (else any rules): nftables, iptables-nft or iptables-legacy."""
    sources = [t.source for t in rs.tables if t.name == "kube-proxy" or "KUBE-SERVICES" in t.chains] or \
        [t.source for t in rs.tables]
    if any(s == "nft" for s in sources):
        return "nftables"
    if any(s == "iptables-nft" for s in sources):
        return "iptables-nft"
    return "iptables-legacy"


def _ipt_match(spec: PacketSpec) -> list[str]:
    args: list[str] = []
    if spec.iif and spec.origin != "output":
        args += ["-i", spec.iif]
    if spec.src:
        args += ["-s", spec.src]
    if spec.dst:
        args += ["-d", spec.dst]
    if spec.proto:
        args += ["-p", spec.proto]
        if spec.proto in ("tcp", "udp", "sctp"):
            if spec.sport is not None:
                args += ["--sport", str(spec.sport)]
            if spec.dport is not None:
                args += ["--dport", str(spec.dport)]
    if spec.uid is not None and spec.origin == "output":
        args += ["-m", "owner", "--uid-owner", str(spec.uid)]
    return args


def _nft_match(spec: PacketSpec) -> list[str]:
    fam = "ip6" if spec.family.version == 6 else "ip"
    words: list[str] = [f"meta nfproto {'ipv6' if fam == 'ip6' else 'ipv4'}"]
    if spec.iif and spec.origin != "output":
        words.append(f'iifname "{spec.iif}"')
    if spec.src:
        words.append(f"{fam} saddr {spec.src}")
    if spec.dst:
        words.append(f"{fam} daddr {spec.dst}")
    if spec.proto:
        words.append(f"meta l4proto {spec.proto}")
        if spec.proto in ("tcp", "udp", "sctp"):
            if spec.sport is not None:
                words.append(f"{spec.proto} sport {spec.sport}")
            if spec.dport is not None:
                words.append(f"{spec.proto} dport {spec.dport}")
    return words


def confirm_commands(spec: PacketSpec, backend: str) -> Confirm:
    chain = "OUTPUT" if spec.origin == "output" else "PREROUTING"
    if backend == "nftables":
        hook = "output" if spec.origin == "output" else "prerouting"
        rule = " ".join(_nft_match(spec))
        return Confirm(
            backend,
            [f"nft add table inet {TABLE}",
             f"nft add chain inet {TABLE} {hook} '{{ type filter hook {hook} priority -350; }}'",
             f"nft add rule inet {TABLE} {hook} {rule} meta nftrace set 1"],
            ["nft monitor trace"],
            [f"nft delete table inet {TABLE}"])
    tool = "ip6tables" if spec.family.version == 6 else "iptables"
    match = " ".join(shlex.quote(a) for a in _ipt_match(spec))
    rule = f"{chain} {match} -j TRACE".replace("  ", " ")
    if backend == "iptables-nft":
        return Confirm(backend, [f"{tool}-nft -t raw -I {rule}"], ["xtables-monitor --trace"],
                       [f"{tool}-nft -t raw -D {rule}"])
    nf_family = 10 if spec.family.version == 6 else 2
    logger = "nf_log_ipv6" if spec.family.version == 6 else "nf_log_ipv4"
    return Confirm(
        backend,
        [f"modprobe {logger}",
         f"sysctl -w net.netfilter.nf_log.{nf_family}={logger}",
         f"{tool}-legacy -t raw -I {rule}"],
        ["dmesg --follow | grep 'TRACE:'"],
        [f"{tool}-legacy -t raw -D {rule}",
         f"sysctl -w net.netfilter.nf_log.{nf_family}=NONE"])


def render_confirm(c: Confirm) -> str:
    lines = [f"To confirm this on the node ({c.backend} rules), as root — kpa does not run these:",
             "  # 1. mark the packet for tracing"]
    lines += [f"  {cmd}" for cmd in c.setup]
    lines += ["  # 2. watch the trace, then send the packet"]
    lines += [f"  {cmd}" for cmd in c.watch]
    lines += ["  # 3. remove the tracing again"]
    lines += [f"  {cmd}" for cmd in c.cleanup]
    return "\n".join(lines) + "\n"


__all__ = ["Confirm", "backend_of", "confirm_commands", "render_confirm"]
