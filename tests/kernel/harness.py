"""Kernel oracle for differential tests: real namespaces, real rules, real packets.

This module deliberately knows nothing about kpa. It builds a small, throw-away network
of namespaces around a "node" namespace, loads a ruleset there with the real userspace
tools, sends real packets and reports what the kernel did (socket outcome, conntrack
entries, rule counters). Tests compare those observations with kpa's predictions.

Topology (every namespace is named ``kpat-<6 hex>-<role>``)::

    client pod ns ──┐ eth0 ↔ caliXXXXXXXXXXX
    pod ns (each) ──┤ eth0 ↔ caliXXXXXXXXXXX       (Calico-style point-to-point veths)
                    node ns ── eth0 ↔ eth0 ── outside ns ── eth1 ↔ eth0 ── remote ns
                  (ruleset under test)   (external clients)           (remote endpoints)

* Pods get their address as a /32 (/128) on ``eth0`` with a default route to the
  link-local gateway 169.254.1.1 (fe80::1), exactly like Calico; the node has a /32
  (/128) route per pod via its ``cali`` interface. All neighbour entries are static, so
  no ARP/ND traffic is needed and silent namespaces may drop literally everything.
* The node owns ``node_ips`` (first one primary, so it is what MASQUERADE picks for the
  uplink) and ``extra_local_ips`` on ``eth0``; its default route points to the outside
  namespace.
* The outside namespace owns the external client addresses, routes remote endpoints to
  the remote namespace and everything else back to the node. Packets that come from the
  node and match nothing there are answered with host-unreachable instead of bouncing
  between the two namespaces until their TTL runs out.
* Endpoint pods and remote endpoints drop everything they receive (an nftables chain in
  their *own* namespace): a RST answering a SYN would delete the fresh conntrack entry
  on the node, which is the very evidence the tests need.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

NS_PREFIX = "kpat-"
SENDER = Path(__file__).with_name("sender.py")

Family = Literal["ipv4", "ipv6"]
Backend = Literal["nft", "legacy"]
# "external" (outside namespace), "client_pod", "node" (locally generated, OUTPUT), or
# "pod:<ip>" for one of local_pod_ips (e.g. a pod reaching its own service: hairpin).
# Endpoint pods drop what they receive, so such flows only ever end in a timeout.
Origin = str
Proto = Literal["tcp", "udp", "icmp", "sctp"]
# (origin, source address or None for the kernel's choice, destination, protocol, dport)
Flow = tuple[Origin, str | None, str, Proto, int]

# Every namespace this process created, so tests can prove none were leaked.
_CREATED: list[str] = []

# Link-local next hops; nobody owns them, static neighbour entries resolve them.
_GW4 = {"pod": "169.254.1.1", "uplink": "169.254.100.1", "outside": "169.254.100.2",
        "remote": "169.254.200.1"}
_GW6 = {"pod": "fe80::1", "uplink": "fe80::100:1", "outside": "fe80::100:2",
        "remote": "fe80::200:1"}

# Applied in every namespace before any interface exists, so new devices inherit them.
_BASE_SYSCTLS = {
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
    "net.ipv6.conf.all.accept_dad": "0",
    "net.ipv6.conf.default.accept_dad": "0",
    "net.ipv6.conf.default.router_solicitations": "0",
    "net.ipv4.ping_group_range": "0 2147483647",
    # The default per-destination and global ICMP limits turn most REJECTs into
    # apparent DROPs once a test sends more than a handful of flows.
    "net.ipv4.icmp_ratelimit": "0",
    "net.ipv4.icmp_msgs_per_sec": "1000000",
    "net.ipv4.icmp_msgs_burst": "1000000",
    "net.ipv6.icmp.ratelimit": "0",
}
_ROUTER_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.forwarding": "1",
}
# kube-proxy sets route_localnet so that DNAT of 127.0.0.1:NodePort can leave the host.
_NODE_SYSCTLS = {**_ROUTER_SYSCTLS, "net.ipv4.conf.all.route_localnet": "1"}

_SILENT_RULESET = """
table inet kpat_silent {
    chain input {
        type filter hook input priority filter; policy drop;
    }
}
"""


_EMPTY_LEGACY = "".join(
    f"*{table}\n" + "".join(f":{c} ACCEPT [0:0]\n" for c in chains) + "COMMIT\n"
    for table, chains in {
        "raw": ("PREROUTING", "OUTPUT"),
        "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
        "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
        "filter": ("INPUT", "FORWARD", "OUTPUT"),
    }.items())


class HarnessError(RuntimeError):
    """A setup command failed; the message carries the command and its stderr."""


def _run(argv: Sequence[str], stdin: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                          check=False)
    if check and proc.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} failed ({proc.returncode}): "
                           f"{proc.stderr.strip()}")
    return proc.stdout


def list_namespaces() -> list[str]:
    """Names of all network namespaces known to ``ip netns``."""
    out = _run(["ip", "netns", "list"])
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def created_namespaces() -> list[str]:
    """Every namespace name this process has created (alive or already deleted)."""
    return list(_CREATED)


@dataclass
class TopologySpec:
    """What the node and its surroundings look like.

    All addresses must belong to ``family``. The default values form a usable IPv4
    topology; :func:`default_spec` gives one for either family.
    """

    family: Family = "ipv4"
    node_ips: list[str] = field(default_factory=lambda: ["192.168.10.2"])
    local_pod_ips: list[str] = field(default_factory=lambda: ["10.244.0.10", "10.244.0.11"])
    remote_endpoint_ips: list[str] = field(default_factory=lambda: ["10.244.1.10"])
    external_client_ips: list[str] = field(
        default_factory=lambda: ["203.0.113.10", "203.0.113.11", "198.51.100.7"])
    client_pod_ip: str | None = "10.244.0.5"
    extra_local_ips: list[str] = field(default_factory=list)
    # False lets endpoints answer like a normal host without listeners (RST / ICMP
    # port unreachable); only useful to demonstrate why the default is True.
    silent_endpoints: bool = True


def default_spec(family: Family = "ipv4") -> TopologySpec:
    if family == "ipv4":
        return TopologySpec()
    return TopologySpec(
        family="ipv6",
        node_ips=["fd00:10::2"],
        local_pod_ips=["fd00:10:244::10", "fd00:10:244::11"],
        remote_endpoint_ips=["fd00:10:244:1::10"],
        external_client_ips=["2001:db8::10", "2001:db8::11", "2001:db8:1::7"],
        client_pod_ip="fd00:10:244::5",
    )


@dataclass(frozen=True)
class Observation:
    """What happened to one probe flow, as seen by the sending socket.

    ``result`` is ``timeout`` (nothing came back: DROP or a silent endpoint),
    ``refused`` (ECONNREFUSED: TCP RST or ICMP port unreachable, i.e. REJECT),
    ``unreachable:<ERRNO>`` (any other error, e.g. ``unreachable:EHOSTUNREACH`` for
    icmp-host-unreachable / admin-prohibited, ``unreachable:EPERM`` for a local OUTPUT
    DROP), or ``connected`` / ``reply`` if something actually answered.
    For ICMP, ``sport`` is the echo identifier and ``dport`` is 0.
    """

    origin: Origin
    proto: Proto
    src: str
    sport: int
    dst: str
    dport: int
    result: str


@dataclass(frozen=True)
class CtTuple:
    src: str
    dst: str
    sport: int | None = None  # ICMP: the echo id (conntrack tracks it as the "port")
    dport: int | None = None


@dataclass(frozen=True)
class CtEntry:
    """One line of ``conntrack -L``.

    Reading NAT from an entry: the DNAT target is ``reply.src``/``reply.sport``
    (differs from ``orig.dst``/``orig.dport`` when DNAT happened); SNAT/MASQUERADE
    happened when ``reply.dst`` differs from ``orig.src``, and ``reply.dst`` is then
    the translated source address.
    """

    family: Family
    proto: str
    state: str | None
    orig: CtTuple
    reply: CtTuple
    flags: frozenset[str]  # e.g. {"UNREPLIED"}, {"ASSURED"}
    mark: int = 0

    @property
    def dnat(self) -> tuple[str, int | None] | None:
        # ICMP has no destination port; its reply "sport" is the echo id, not a target.
        port = self.reply.sport if self.orig.dport is not None else None
        if (self.reply.src, port) == (self.orig.dst, self.orig.dport):
            return None
        return self.reply.src, port

    @property
    def snat(self) -> str | None:
        return None if self.reply.dst == self.orig.src else self.reply.dst


def parse_conntrack(text: str) -> list[CtEntry]:
    """Parse ``conntrack -L -o extended`` output (IPv4 and IPv6)."""
    entries: list[CtEntry] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 6 or words[0] not in ("ipv4", "ipv6"):
            continue
        family: Family = "ipv4" if words[0] == "ipv4" else "ipv6"
        proto = words[2]
        state: str | None = None
        tuples: list[dict[str, str]] = []
        flags: set[str] = set()
        mark = 0
        for word in words[5:]:
            if word.startswith("[") and word.endswith("]"):
                flags.add(word[1:-1])
            elif "=" in word:
                key, value = word.split("=", 1)
                if key == "src":
                    tuples.append({})
                if key == "mark":
                    mark = int(value)
                elif tuples and key in ("src", "dst", "sport", "dport", "id"):
                    tuples[-1].setdefault(key, value)
            elif state is None and word.isupper():
                state = word
        if len(tuples) < 2:
            continue

        def mk(t: dict[str, str]) -> CtTuple:
            port_s = t.get("sport", t.get("id"))
            port_d = t.get("dport", t.get("id") if "id" in t else None)
            if "id" in t:  # ICMP: only the id identifies the flow; no destination port
                port_d = None
            return CtTuple(t["src"], t["dst"],
                           int(port_s) if port_s is not None else None,
                           int(port_d) if port_d is not None else None)

        entries.append(CtEntry(family, proto, state, mk(tuples[0]), mk(tuples[1]),
                               frozenset(flags), mark))
    return entries


_COUNTER_RULE = re.compile(r"^\[(\d+):(\d+)\]\s+-A\s+(\S+)")
_COUNTER_POLICY = re.compile(r"^:(\S+)\s+(\S+)\s+\[(\d+):(\d+)\]")
_RESTORE_COUNTERS = re.compile(r"^\[\d+:\d+\]\s+", re.MULTILINE)


def parse_save_counters(text: str, table: str) -> tuple[dict[tuple[str, int], int],
                                                          dict[str, int]]:
    """Rule packet counters keyed by (chain, 1-based index), and policy counters."""
    rules: dict[tuple[str, int], int] = {}
    policies: dict[str, int] = {}
    seen: dict[str, int] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("*"):
            current = line[1:].strip()
            continue
        if current != table:
            continue
        if m := _COUNTER_POLICY.match(line):
            if m.group(2) != "-":
                policies[m.group(1)] = int(m.group(3))
        elif m := _COUNTER_RULE.match(line):
            chain = m.group(3)
            seen[chain] = seen.get(chain, 0) + 1
            rules[(chain, seen[chain])] = int(m.group(1))
    return rules, policies


def _mac(n: int) -> str:
    return "02:6b:70:" + ":".join(f"{b:02x}" for b in n.to_bytes(3, "big"))


def _cali_name(ip: str) -> str:
    # Calico names host-side veths "cali" + 11 hex digits of a hash of the workload.
    return "cali" + hashlib.sha1(ip.encode()).hexdigest()[:11]


class Topology:
    """Build the namespaces on ``__enter__``, delete them all on ``__exit__``.

    >>> with Topology(default_spec("ipv4")) as topo:
    ...     topo.load_iptables(RULES, backend="nft")
    ...     obs = topo.send("external", "203.0.113.10", "192.168.10.2", "tcp", 30080)
    ...     entries = topo.conntrack()
    """

    def __init__(self, spec: TopologySpec | None = None) -> None:
        self.spec = spec or TopologySpec()
        self.tag = NS_PREFIX + secrets.token_hex(3)
        self.ns: dict[str, str] = {}  # role -> namespace name
        self.pod_ns: dict[str, str] = {}  # pod ip -> namespace name
        self.loaded_backend: Backend | None = None
        self._legacy_families: set[Family] = set()
        self._macs = 0
        self._v6 = self.spec.family == "ipv6"
        self._plen = 128 if self._v6 else 32
        self._gw = _GW6 if self._v6 else _GW4
        self.dual: TopologySpec | None = None  # the IPv6 half of a dual-stack topology (add_ipv6)
        self._check_spec()

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> Topology:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Delete every namespace of this topology (idempotent)."""
        for name in list(self.ns.values()):
            _run(["ip", "netns", "del", name], check=False)
        self.ns.clear()
        self.pod_ns.clear()

    # ----------------------------------------------------------------- building
    def _check_spec(self) -> None:
        version = 6 if self._v6 else 4
        s = self.spec
        addrs = [*s.node_ips, *s.local_pod_ips, *s.remote_endpoint_ips,
                 *s.external_client_ips, *s.extra_local_ips]
        if s.client_pod_ip:
            addrs.append(s.client_pod_ip)
        for a in addrs:
            if ipaddress.ip_address(a).version != version:
                raise ValueError(f"{a} is not an {s.family} address")
        if not s.node_ips:
            raise ValueError("node_ips must not be empty")

    def _new_ns(self, role: str) -> str:
        name = f"{self.tag}-{role}"
        _run(["ip", "netns", "add", name])
        _CREATED.append(name)
        self.ns[role] = name
        self.sysctl(role, {**_BASE_SYSCTLS})
        self._ip(name, ["link set lo up"])
        return name

    def _veth(self, ns_a: str, if_a: str, ns_b: str, if_b: str) -> tuple[str, str]:
        self._macs += 2
        mac_a, mac_b = _mac(self._macs - 1), _mac(self._macs)
        _run(["ip", "link", "add", if_a, "netns", ns_a, "address", mac_a, "type", "veth",
              "peer", "name", if_b, "netns", ns_b, "address", mac_b])
        return mac_a, mac_b

    def _ip(self, ns: str, commands: Iterable[str]) -> None:
        batch = "\n".join(commands) + "\n"
        _run(["ip", "-n", ns, "-batch", "-"], stdin=batch)

    def _addr(self, ip: str) -> str:
        # nodad: the address is usable at once instead of staying tentative.
        return f"{ip}/{self._plen}" + (" nodad" if self._v6 else "")

    def _build(self) -> None:
        s = self.spec
        gw = self._gw
        node = self._new_ns("node")
        outside = self._new_ns("outside")
        remote = self._new_ns("remote")
        self.sysctl("node", _NODE_SYSCTLS)
        self.sysctl("outside", _ROUTER_SYSCTLS)

        # Uplink: node eth0 <-> outside eth0.
        node_mac, out_mac = self._veth(node, "eth0", outside, "eth0")
        cmds = ["link set eth0 up"]
        cmds += [f"addr add {self._addr(ip)} dev eth0" for ip in [*s.node_ips,
                                                                   *s.extra_local_ips]]
        cmds += [f"neigh replace {gw['uplink']} lladdr {out_mac} dev eth0 nud permanent",
                 f"route add default via {gw['uplink']} dev eth0 onlink"]
        node_cmds = cmds

        out_cmds = ["link set eth0 up"]
        out_cmds += [f"addr add {self._addr(ip)} dev eth0" for ip in s.external_client_ips]
        out_cmds += [f"neigh replace {gw['outside']} lladdr {node_mac} dev eth0 nud permanent",
                     f"route add default via {gw['outside']} dev eth0 onlink"]

        # outside eth1 <-> remote eth0
        out1_mac, rem_mac = self._veth(outside, "eth1", remote, "eth0")
        out_cmds.append("link set eth1 up")
        for ip in s.remote_endpoint_ips:
            out_cmds += [f"neigh replace {ip} lladdr {rem_mac} dev eth1 nud permanent",
                         f"route add {ip}/{self._plen} dev eth1",
                         f"route add {ip}/{self._plen} dev eth1 table 100"]
        # From the node, only remote endpoints are forwarded; the rest is unreachable.
        any_dst = "::/0" if self._v6 else "0.0.0.0/0"
        out_cmds.append(f"route add unreachable {any_dst} table 100")
        rem_cmds = ["link set eth0 up"]
        rem_cmds += [f"addr add {self._addr(ip)} dev eth0" for ip in s.remote_endpoint_ips]
        rem_cmds += [f"neigh replace {gw['remote']} lladdr {out1_mac} dev eth0 nud permanent",
                     f"route add default via {gw['remote']} dev eth0 onlink"]

        # Pods: one namespace each, Calico-style veth.
        pods: list[tuple[str, str, bool]] = [(ip, f"pod{i}", s.silent_endpoints)
                                             for i, ip in enumerate(s.local_pod_ips)]
        if s.client_pod_ip:
            pods.append((s.client_pod_ip, "client", False))
        for ip, role, silent in pods:
            pod = self._new_ns(role)
            self.pod_ns[ip] = pod
            cali = _cali_name(ip)
            cali_mac, pod_mac = self._veth(node, cali, pod, "eth0")
            node_cmds += [f"link set {cali} up",
                          f"neigh replace {ip} lladdr {pod_mac} dev {cali} nud permanent",
                          f"route add {ip}/{self._plen} dev {cali} scope link"]
            self._ip(pod, ["link set eth0 up", f"addr add {self._addr(ip)} dev eth0",
                           f"neigh replace {gw['pod']} lladdr {cali_mac} dev eth0 "
                           "nud permanent",
                           f"route add default via {gw['pod']} dev eth0 onlink"])
            if silent:
                self.run_in(role, ["nft", "-f", "-"], stdin=_SILENT_RULESET)
        if s.silent_endpoints:
            self.run_in("remote", ["nft", "-f", "-"], stdin=_SILENT_RULESET)

        self._ip(node, node_cmds)
        self._ip(outside, out_cmds)
        _run(["ip", "-n", outside, "-6" if self._v6 else "-4", "rule", "add", "iif", "eth0",
              "table", "100", "pref", "100"])
        self._ip(remote, rem_cmds)

    def add_ipv6(self, spec6: TopologySpec) -> None:
        """Make an IPv4 topology dual-stack: give every namespace the addresses of ``spec6``.

        ``spec6`` is an IPv6 spec whose lists pair up, position by position, with this
        topology's (node, local pods, client pod, remote endpoints, external clients):
        each IPv6 address goes on the same interface as its IPv4 partner, with the same
        static neighbours and routes, so both families reach the same namespaces.
        """
        s = self.spec
        if self._v6 or spec6.family != "ipv6":
            raise ValueError("add_ipv6 extends an IPv4 topology with an IPv6 spec")
        pairs = [(s.node_ips, spec6.node_ips), (s.local_pod_ips, spec6.local_pod_ips),
                 (s.remote_endpoint_ips, spec6.remote_endpoint_ips),
                 (s.external_client_ips, spec6.external_client_ips)]
        if any(len(a) != len(b) for a, b in pairs) or bool(s.client_pod_ip) != bool(spec6.client_pod_ip):
            raise ValueError("the IPv6 spec must pair up with the IPv4 one")
        gw = _GW6

        def mac(role: str, dev: str) -> str:
            doc = json.loads(self.run_in(role, ["ip", "-j", "link", "show", "dev", dev]))
            return str(doc[0]["address"])

        def addr(ip: str) -> str:
            return f"{ip}/128 nodad"

        node, outside, remote = self.ns["node"], self.ns["outside"], self.ns["remote"]
        node_mac, out_mac = mac("node", "eth0"), mac("outside", "eth0")
        out1_mac, rem_mac = mac("outside", "eth1"), mac("remote", "eth0")
        node_cmds = [f"addr add {addr(ip)} dev eth0" for ip in spec6.node_ips]
        node_cmds += [f"neigh replace {gw['uplink']} lladdr {out_mac} dev eth0 nud permanent",
                      f"route add ::/0 via {gw['uplink']} dev eth0 onlink"]
        out_cmds = [f"addr add {addr(ip)} dev eth0" for ip in spec6.external_client_ips]
        out_cmds += [f"neigh replace {gw['outside']} lladdr {node_mac} dev eth0 nud permanent",
                     f"route add ::/0 via {gw['outside']} dev eth0 onlink"]
        for ip in spec6.remote_endpoint_ips:
            out_cmds += [f"neigh replace {ip} lladdr {rem_mac} dev eth1 nud permanent",
                         f"route add {ip}/128 dev eth1", f"route add {ip}/128 dev eth1 table 100"]
        out_cmds.append("route add unreachable ::/0 table 100")
        rem_cmds = [f"addr add {addr(ip)} dev eth0" for ip in spec6.remote_endpoint_ips]
        rem_cmds += [f"neigh replace {gw['remote']} lladdr {out1_mac} dev eth0 nud permanent",
                     f"route add ::/0 via {gw['remote']} dev eth0 onlink"]
        pods = list(zip(s.local_pod_ips, spec6.local_pod_ips, strict=True))
        if s.client_pod_ip and spec6.client_pod_ip:
            pods.append((s.client_pod_ip, spec6.client_pod_ip))
        for ip4, ip6 in pods:
            pod = self.pod_ns[ip4]
            self.pod_ns[ip6] = pod
            cali = _cali_name(ip4)
            role = next(r for r, n in self.ns.items() if n == pod)
            cali_mac, pod_mac = mac("node", cali), mac(role, "eth0")
            node_cmds += [f"neigh replace {ip6} lladdr {pod_mac} dev {cali} nud permanent",
                          f"route add {ip6}/128 dev {cali}"]
            self._ip(pod, [f"addr add {addr(ip6)} dev eth0",
                           f"neigh replace {gw['pod']} lladdr {cali_mac} dev eth0 nud permanent",
                           f"route add ::/0 via {gw['pod']} dev eth0 onlink"])
        self._ip(node, node_cmds)
        self._ip(outside, out_cmds)
        _run(["ip", "-n", outside, "-6", "rule", "add", "iif", "eth0", "table", "100", "pref", "100"])
        self._ip(remote, rem_cmds)
        self.dual = spec6

    # ----------------------------------------------------------------- generic access
    def name(self, role: str) -> str:
        """Namespace name for a role: node, outside, remote, client, pod0, pod1, ..."""
        return self.ns[role]

    def run_in(self, role: str, argv: Sequence[str], stdin: str | None = None,
               check: bool = True) -> str:
        """Run a command inside the namespace of ``role`` and return its stdout."""
        return _run(["ip", "netns", "exec", self.ns[role], *argv], stdin=stdin, check=check)

    def sysctl(self, role: str, values: dict[str, str]) -> None:
        args = [f"{k}={v}" for k, v in values.items()]
        self.run_in(role, ["sysctl", "-q", "-w", *args])

    # ----------------------------------------------------------------- rulesets
    def _tool(self, backend: Backend, family: Family | None, suffix: str) -> str:
        fam = family or self.spec.family
        prefix = "ip6tables" if fam == "ipv6" else "iptables"
        if backend not in ("nft", "legacy"):
            raise ValueError(f"unknown backend {backend!r}")
        return f"{prefix}-{backend}-{suffix}"

    def load_iptables(self, text: str, backend: Backend = "nft",
                      family: Family | None = None) -> None:
        """Load an iptables-restore payload or an ``iptables-save [-c]`` dump.

        Tables present in ``text`` are replaced; absent tables are left untouched.
        Rule counters in a ``-c`` dump are dropped so every load starts at zero.
        """
        payload = _RESTORE_COUNTERS.sub("", text)
        if not payload.endswith("\n"):
            payload += "\n"
        # -w: the xtables lock file is shared with every other namespace on the host.
        self.run_in("node", [self._tool(backend, family, "restore"), "-w", "10"],
                    stdin=payload)
        self.loaded_backend = backend
        if backend == "legacy":
            self._legacy_families.add(family or self.spec.family)

    def load_nft(self, text: str, flush: bool = False) -> None:
        """Load an nftables ruleset with ``nft -f``; ``flush`` empties the ruleset first
        (that also removes tables created by iptables-nft)."""
        if flush:
            self.run_in("node", ["nft", "flush", "ruleset"])
        self.run_in("node", ["nft", "-f", "-"], stdin=text)

    def load_ipset(self, text: str) -> None:
        """Create sets in the node with ``ipset restore`` (an ``ipset save`` dump or a restore payload)."""
        self.run_in("node", ["ipset", "restore"], stdin=text if text.endswith("\n") else text + "\n")

    def save_ipset(self) -> str:
        """``ipset save`` output of the node."""
        return self.run_in("node", ["ipset", "save"])

    def destroy_ipsets(self) -> None:
        """Destroy every set in the node (rules that reference them must be gone first).

        Deleted nftables rules release their references to sets a moment later, so a
        set still "in use" right after a flush is retried for up to two seconds. Sets are
        flushed first, so list:set members are no longer referenced by their list.
        """
        for _ in range(40):
            try:
                self.run_in("node", ["ipset", "flush"])
                self.run_in("node", ["ipset", "destroy"])
                return
            except HarnessError as exc:
                if "in use" not in str(exc):
                    raise
                time.sleep(0.05)
        self.run_in("node", ["ipset", "destroy"])

    def reset(self) -> None:
        """Remove all rules (both backends, both families), conntrack and recent state."""
        self.run_in("node", ["nft", "flush", "ruleset"])
        # Legacy tables cannot be unregistered from userspace; restoring them empty with
        # ACCEPT policies is the closest thing (their hooks stay attached, harmlessly).
        for family in sorted(self._legacy_families):
            self.run_in("node", [self._tool("legacy", family, "restore"), "-w", "10"],
                        stdin=_EMPTY_LEGACY)
        self.conntrack_flush()
        self.clear_recent()
        self.loaded_backend = None

    def save(self, backend: Backend | None = None, family: Family | None = None,
             counters: bool = True) -> str:
        """``iptables-save`` output of the node for ``backend`` (default: last loaded)."""
        backend = backend or self.loaded_backend or "nft"
        argv = [self._tool(backend, family, "save")]
        if counters:
            argv.append("-c")
        return self.run_in("node", argv)

    def counters(self, table: str, backend: Backend | None = None,
                 family: Family | None = None) -> dict[tuple[str, int], int]:
        """Packet counters per rule, keyed by (chain, 1-based rule index within chain)."""
        return parse_save_counters(self.save(backend, family), table)[0]

    def policy_counters(self, table: str, backend: Backend | None = None,
                        family: Family | None = None) -> dict[str, int]:
        """Packet counters of built-in chain policies, keyed by chain."""
        return parse_save_counters(self.save(backend, family), table)[1]

    # ----------------------------------------------------------------- state
    def conntrack(self, family: Family | None = None) -> list[CtEntry]:
        """Conntrack entries in the node namespace (default: the topology's family)."""
        fam = family or self.spec.family
        out = self.run_in("node", ["conntrack", "-L", "-f", fam, "-o", "extended"],
                          check=False)
        return parse_conntrack(out)

    def conntrack_for(self, obs: Observation) -> list[CtEntry]:
        """Entries whose original tuple is the flow of ``obs`` (as sent)."""
        return [e for e in self.conntrack()
                if e.proto == obs.proto.replace("icmp", "icmpv6" if self._v6 else "icmp")
                and e.orig.src == obs.src and e.orig.sport == obs.sport
                and e.orig.dst == obs.dst]

    def conntrack_flush(self) -> None:
        self.run_in("node", ["conntrack", "-F"], check=False)

    def clear_recent(self) -> None:
        """Empty every xt_recent list in the node; they otherwise persist across packets."""
        self.run_in("node", ["sh", "-c", "for f in /proc/net/xt_recent/*; do "
                             "[ -e \"$f\" ] && echo / > \"$f\"; done; true"])

    # ----------------------------------------------------------------- traffic
    def _origin_ns(self, origin: Origin) -> str:
        if origin.startswith("pod:"):
            return self.pod_ns[origin[4:]]
        roles = {"external": "outside", "client_pod": "client", "node": "node"}
        if origin not in roles:
            raise ValueError(f"unknown origin {origin!r}")
        return self.ns[roles[origin]]

    def send(self, from_: Origin, src_ip: str | None, dst_ip: str, proto: Proto,
             dport: int = 0, count: int = 1, timeout: float = 1.0,
             sport: int | None = None) -> list[Observation]:
        """Send ``count`` flows (distinct source ports) and report each outcome.

        ``src_ip=None`` lets the kernel pick the source address. ``sport`` pins the
        source port (only sensible with ``count=1``).
        """
        return self.send_many([(from_, src_ip, dst_ip, proto, dport)] * count,
                              timeout=timeout, sport=sport)

    def send_many(self, flows: Sequence[Flow],
                  timeout: float = 1.0, sport: int | None = None) -> list[Observation]:
        """Send many (origin, src, dst, proto, dport) flows at once; one helper process
        per origin namespace, all running concurrently. Results keep the input order."""
        by_ns: dict[str, list[int]] = {}
        for i, flow in enumerate(flows):
            by_ns.setdefault(self._origin_ns(flow[0]), []).append(i)
        procs = []
        for ns, idxs in by_ns.items():
            req = {"timeout": timeout, "flows": [
                {"family": 6 if ":" in flows[i][2] else 4, "proto": flows[i][3], "src": flows[i][1],
                 "sport": sport or 0, "dst": flows[i][2], "dport": flows[i][4]}
                for i in idxs]}
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, str(SENDER)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True)
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(req))
            proc.stdin.close()
            procs.append((idxs, proc))
        results: list[Observation | None] = [None] * len(flows)
        for idxs, proc in procs:
            assert proc.stdout is not None and proc.stderr is not None
            out, err = proc.stdout.read(), proc.stderr.read()
            if proc.wait() != 0:
                raise HarnessError(f"sender failed: {err.strip()}")
            for i, res in zip(idxs, json.loads(out), strict=True):
                origin, _src, dst, proto, dport = flows[i]
                results[i] = Observation(origin, proto, res["src"], res["sport"], dst,
                                         0 if proto == "icmp" else dport, res["result"])
        return [r for r in results if r is not None]

    # ----------------------------------------------------------------- nft tracing
    def nft_trace(self, action: Callable[[], object], match: str = "") -> list[TraceLine]:
        """Run ``action`` while ``nft monitor trace`` listens in the node namespace.

        A separate table with a prerouting and an output chain at the lowest priority
        sets ``meta nftrace`` on packets matching ``match`` (an nft expression, empty =
        all). Returns the parsed rule/verdict lines.
        """
        hooks = [("prerouting", "-400"), ("output", "-400")]
        chains = "\n".join(
            f"  chain trace_{h} {{ type filter hook {h} priority {p}; {match} meta nftrace "
            f"set 1; }}" for h, p in hooks)
        self.load_nft(f"table inet kpat_trace {{\n{chains}\n}}\n")
        monitor = subprocess.Popen(
            ["ip", "netns", "exec", self.ns["node"], "nft", "-a", "monitor", "trace"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_until_tracing(monitor)
            action()
            wait_until_traced(monitor)
        finally:
            monitor.terminate()
            out, _ = monitor.communicate(timeout=5)
            self.run_in("node", ["nft", "delete", "table", "inet", "kpat_trace"],
                        check=False)
        return parse_nft_trace(out)


# A trace listener (`nft monitor trace`, `xtables-monitor --trace`) is a netfilter netlink
# socket subscribed to NFNLGRP_NFTRACE. /proc/PID/net/netlink lists the sockets of PID's
# namespace with their groups (the first 32 as a hex mask) and the bytes waiting in each
# one's receive queue, so a test can wait for the subscription and for the queue to drain
# instead of guessing with sleeps, which fail on a loaded machine.
_NETLINK_NETFILTER = 12
_NFTRACE_BIT = 1 << (9 - 1)  # NFNLGRP_NFTRACE is group 9


def _trace_queues(pid: int) -> list[int]:
    """The receive-queue bytes of each trace listener in the namespace of process ``pid``."""
    try:
        lines = Path(f"/proc/{pid}/net/netlink").read_text().splitlines()[1:]
    except OSError:
        return []
    queues = []
    for line in lines:
        fields = line.split()
        if int(fields[1]) == _NETLINK_NETFILTER and int(fields[3], 16) & _NFTRACE_BIT:
            queues.append(int(fields[4]))
    return queues


def wait_until_tracing(monitor: subprocess.Popen[str], timeout: float = 10.0) -> None:
    """Return once ``monitor`` (started in a test's namespace) listens for trace events."""
    deadline = time.monotonic() + timeout
    while not _trace_queues(monitor.pid):
        if monitor.poll() is not None:
            _, err = monitor.communicate()
            raise HarnessError(f"trace monitor exited with {monitor.returncode}: {err.strip()}")
        if time.monotonic() > deadline:
            raise HarnessError(f"trace monitor not listening after {timeout:.0f}s")
        time.sleep(0.01)


def wait_until_traced(monitor: subprocess.Popen[str], timeout: float = 10.0) -> None:
    """Return once ``monitor`` has read every trace event the kernel queued for it.

    The events of packets already handled are queued by then; a short pause first
    lets softirq work still in flight (replies, timers) queue its own.
    """
    time.sleep(0.1)
    deadline = time.monotonic() + timeout
    while any(_trace_queues(monitor.pid)) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # from its last read to its printed line


@dataclass(frozen=True)
class TraceLine:
    trace_id: str
    family: str
    table: str
    chain: str
    handle: int | None
    verdict: str | None  # e.g. "accept", "drop", "jump KUBE-SVC-..." or None
    text: str


_TRACE = re.compile(r"^trace id (\S+) (\S+) (\S+) (\S+) (.*)$")


def parse_nft_trace(text: str) -> list[TraceLine]:
    """Parse ``nft monitor trace`` rule / policy lines (packet dump lines are skipped)."""
    lines: list[TraceLine] = []
    for raw in text.splitlines():
        m = _TRACE.match(raw.strip())
        if not m:
            continue
        trace_id, family, table, chain, rest = m.groups()
        handle = None
        verdict = None
        if rest.startswith("rule "):
            hm = re.search(r"\(verdict ([^)]*)\)", rest)
            verdict = hm.group(1) if hm else None
            h = re.search(r"# handle (\d+)", rest)
            handle = int(h.group(1)) if h else None
        elif rest.startswith("verdict ") or rest.startswith("policy "):
            verdict = rest.split(None, 1)[1].strip()
        else:
            continue
        lines.append(TraceLine(trace_id, family, table, chain, handle, verdict, raw))
    return lines


@contextlib.contextmanager
def topology(spec: TopologySpec | None = None) -> Iterator[Topology]:
    """Functional spelling of ``with Topology(spec) as topo``."""
    with Topology(spec) as topo:
        yield topo
