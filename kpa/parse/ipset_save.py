"""Reader for `ipset save` output: `create` lines and the `add` lines of each set.

Every element is checked against its set's type here, so a bad dump fails with
FILE:LINE and what was expected. The parts of an element are stored as values
the `set` match (kpa.ext.ipset) can index without parsing text again:

* address (ip and net dimensions): ``(value, prefix_length)``;
* port: ``(protocol number, port)``; for ICMP the port is ``type << 8 | code``,
  as the kernel keys it; bitmap:port elements are a bare port;
* interface: ``(name, physdev)``;
* list:set member: the member set's name.

Types kpa does not model keep their elements as text; a lookup in them is unknown.
"""

from __future__ import annotations

import ipaddress
import socket

from kpa.errors import InputError
from kpa.netfilter.model import IpSet, IpSetMember, Location, Ruleset
from kpa.netfilter.protocols import iptables_protocol

# The dimensions of each modelled type, in the order ipset writes them.
DIMENSIONS: dict[str, tuple[str, ...]] = {
    "hash:ip": ("ip",),
    "hash:net": ("net",),
    "hash:ip,port": ("ip", "port"),
    "hash:net,port": ("net", "port"),
    "hash:ip,port,ip": ("ip", "port", "ip"),
    "hash:ip,port,net": ("ip", "port", "net"),
    "hash:net,iface": ("net", "iface"),
    "list:set": ("set",),
    "bitmap:port": ("bare_port",),
}
# Types that exist in the kernel, read but not modelled (their lookups are unknown).
UNMODELLED_TYPES = {"hash:net,net", "hash:net,port,net", "hash:mac", "hash:ip,mac", "hash:ip,mark",
                    "bitmap:ip", "bitmap:ip,mac"}
# Types that take `nomatch` elements (the kernel's IPSET_TYPE_NOMATCH feature).
NOMATCH_TYPES = {"hash:net", "hash:net,port", "hash:ip,port,net", "hash:net,iface", "hash:net,net",
                 "hash:net,port,net"}
# `create` options that take a value; the rest are flags (counters, comment, skbinfo, forceadd).
CREATE_VALUE_OPTIONS = {"family", "hashsize", "maxelem", "timeout", "netmask", "bitmask", "range", "size",
                        "bucketsize", "initval", "markmask"}
CREATE_FLAGS = {"counters", "comment", "skbinfo", "forceadd"}
ADD_VALUE_OPTIONS = {"timeout", "packets", "bytes", "comment", "skbmark", "skbprio", "skbqueue"}
ADD_FLAGS = {"nomatch"}

# ICMP type names as ipset prints them, as (type, code).
ICMP_NAMES = {
    "echo-reply": (0, 0), "network-unreachable": (3, 0), "host-unreachable": (3, 1),
    "protocol-unreachable": (3, 2), "port-unreachable": (3, 3), "fragmentation-needed": (3, 4),
    "source-route-failed": (3, 5), "network-unknown": (3, 6), "host-unknown": (3, 7),
    "network-prohibited": (3, 9), "host-prohibited": (3, 10), "TOS-network-unreachable": (3, 11),
    "TOS-host-unreachable": (3, 12), "communication-prohibited": (3, 13),
    "host-precedence-violation": (3, 14), "precedence-cutoff": (3, 15), "source-quench": (4, 0),
    "network-redirect": (5, 0), "host-redirect": (5, 1), "TOS-network-redirect": (5, 2),
    "TOS-host-redirect": (5, 3), "echo-request": (8, 0), "router-advertisement": (9, 0),
    "router-solicitation": (10, 0), "ttl-zero-during-transit": (11, 0),
    "ttl-zero-during-reassembly": (11, 1), "ip-header-bad": (12, 0), "required-option-missing": (12, 1),
    "timestamp-request": (13, 0), "timestamp-reply": (14, 0), "address-mask-request": (17, 0),
    "address-mask-reply": (18, 0),
}
ICMPV6_NAMES = {
    "no-route": (1, 0), "communication-prohibited": (1, 1), "address-unreachable": (1, 3),
    "port-unreachable": (1, 4), "packet-too-big": (2, 0), "ttl-zero-during-transit": (3, 0),
    "ttl-zero-during-reassembly": (3, 1), "bad-header": (4, 0), "unknown-header-type": (4, 1),
    "unknown-option": (4, 2), "echo-request": (128, 0), "echo-reply": (129, 0),
    "router-solicitation": (133, 0), "router-advertisement": (134, 0),
    "neighbour-solicitation": (135, 0), "neighbour-advertisement": (136, 0), "redirect": (137, 0),
}


class _Error(ValueError):
    pass


def looks_like_ipset(line: str) -> bool:
    """Whether a dump's first meaningful line is an `ipset save` line."""
    words = line.split(None, 3)
    return len(words) >= 3 and words[0] in ("create", "add") and (words[0] == "add" or ":" in words[2])


def _tokens(line: str) -> list[str]:
    """Split on blanks; a double-quoted comment stays one token (without its quotes)."""
    if '"' not in line:
        return line.split()
    out: list[str] = []
    i, n = 0, len(line)
    while i < n:
        if line[i].isspace():
            i += 1
            continue
        if line[i] == '"':
            end = line.find('"', i + 1)
            if end < 0:
                raise _Error("expected a closing '\"' for the quoted text")
            out.append(line[i + 1:end])
            i = end + 1
            continue
        end = i
        while end < n and not line[end].isspace():
            end += 1
        out.append(line[i:end])
        i = end
    return out


def _options(words: list[str], values: set[str], flags: set[str], what: str) -> dict[str, str]:
    opts: dict[str, str] = {}
    i = 0
    while i < len(words):
        w = words[i]
        if w in flags:
            opts[w] = ""
            i += 1
        elif w in values:
            if i + 1 >= len(words):
                raise _Error(f"expected a value after {what} option {w!r}")
            opts[w] = words[i + 1]
            i += 2
        else:
            raise _Error(f"expected a {what} option ({', '.join(sorted(values | flags))}), found {w!r}")
    return opts


def _address(text: str, version: int, net: bool) -> tuple[int, int]:
    if version == 4:
        fast = _fast_ipv4(text, net)
        if fast is not None:
            return fast
    bits = 32 if version == 4 else 128
    addr, slash, plen_s = text.partition("/")
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise _Error(f"expected an IPv{version} address{'[/CIDR]' if net else ''}, found {text!r}") from None
    if ip.version != version:
        raise _Error(f"expected an IPv{version} address (the set's family), found {text!r}")
    plen = bits
    if slash:
        if not net or not plen_s.isdigit() or int(plen_s) > bits:
            raise _Error(f"expected an IPv{version} {'network ADDR/0-' + str(bits) if net else 'address'}, "
                         f"found {text!r}")
        plen = int(plen_s)
    value = int(ip) & (((1 << plen) - 1) << (bits - plen))
    return value, plen


def _fast_ipv4(text: str, net: bool) -> tuple[int, int] | None:
    """A plain dotted quad with an optional prefix, without ipaddress (dumps hold many)."""
    addr, slash, plen_s = text.partition("/")
    try:
        value = int.from_bytes(socket.inet_pton(socket.AF_INET, addr), "big")
    except OSError:
        return None
    if not slash:
        return value, 32
    if not net or not plen_s.isdigit() or int(plen_s) > 32:
        return None
    plen = int(plen_s)
    return value & ((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF), plen


def _protocol(name: str, version: int) -> int:
    key = name.lower()
    if key in ("icmp", "icmpv6", "ipv6-icmp"):
        return 58 if (version == 6 or key != "icmp") else 1
    # ipset names protocols through the protocol database, as iptables does (kpa.netfilter.protocols).
    try:
        return iptables_protocol(key)
    except ValueError:
        raise _Error(f"expected a protocol name or number, found {name[:40]!r}") from None


def _port(text: str, version: int) -> tuple[int, int]:
    proto_s, colon, port_s = text.rpartition(":")
    if not colon:
        proto_s, port_s = "tcp", text
    proto = _protocol(proto_s, version)
    if proto in (1, 58):
        names = ICMP_NAMES if proto == 1 else ICMPV6_NAMES
        if port_s in names:
            t, c = names[port_s]
            return proto, t << 8 | c
        t_s, slash, c_s = port_s.partition("/")
        if slash and t_s.isdigit() and c_s.isdigit() and int(t_s) < 256 and int(c_s) < 256:
            return proto, int(t_s) << 8 | int(c_s)
        raise _Error(f"expected an ICMP type name or TYPE/CODE, found {port_s!r}")
    return proto, _bare_port(port_s)


def _bare_port(text: str) -> int:
    if text.isdigit() and int(text) <= 65535:
        return int(text)
    try:
        return socket.getservbyname(text)
    except OSError:
        raise _Error(f"expected a port number 0-65535, found {text!r}") from None


def _element(ipset: IpSet, text: str) -> tuple[object, ...]:
    dims = DIMENSIONS.get(ipset.type)
    if dims is None:
        return (text,)
    version = 6 if ipset.family == "inet6" else 4
    raw = text.split(",") if len(dims) > 1 else [text]
    if len(raw) != len(dims):
        raise _Error(f"expected a {ipset.type} element ({len(dims)} parts separated by ','), found {text!r}")
    parts: list[object] = []
    for dim, part in zip(dims, raw, strict=True):
        if dim == "ip":
            parts.append(_address(part, version, net=False))
        elif dim == "net":
            parts.append(_address(part, version, net=True))
        elif dim == "port":
            parts.append(_port(part, version))
        elif dim == "bare_port":
            parts.append(_bare_port(part))
        elif dim == "iface":
            physdev = part.startswith("physdev:")
            name = part[len("physdev:"):] if physdev else part
            if not name or len(name) > 15:
                raise _Error(f"expected an interface name of 1-15 characters, found {part!r}")
            parts.append((name, physdev))
        else:
            parts.append(part)
    return tuple(parts)


def parse_ipset(text: str, file: str = "<stdin>") -> Ruleset:
    """Parse `ipset save` output into a ruleset that holds only ipsets."""
    out = Ruleset()
    sets = out.ipsets
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        try:
            words = _tokens(s)
            cmd = words[0]
            if cmd == "create":
                if len(words) < 3:
                    raise _Error("expected `create NAME TYPE [options]`")
                name, typ = words[1], words[2]
                if name in sets:
                    raise _Error(f"set {name} is created twice (first at {sets[name].location})")
                if typ not in DIMENSIONS and typ not in UNMODELLED_TYPES:
                    raise _Error(f"expected an ipset type ({', '.join(sorted(DIMENSIONS) + sorted(UNMODELLED_TYPES))}), "
                                 f"found {typ!r}")
                opts = _options(words[3:], CREATE_VALUE_OPTIONS, CREATE_FLAGS, "create")
                family = opts.get("family")
                if family not in (None, "inet", "inet6"):
                    raise _Error(f"expected family inet or inet6, found {family!r}")
                if family is None and typ.startswith("hash:"):
                    family = "inet"
                if "netmask" in opts and not opts["netmask"].isdigit():
                    raise _Error(f"expected a prefix length after netmask, found {opts['netmask']!r}")
                sets[name] = IpSet(name, typ, family, opts, location=Location(file, lineno))
            elif cmd == "add":
                if len(words) < 3:
                    raise _Error("expected `add NAME ELEMENT [options]`")
                target = sets.get(words[1])
                if target is None:
                    raise _Error(f"expected a `create {words[1]} ...` line before elements are added to it")
                opts = _options(words[3:], ADD_VALUE_OPTIONS, ADD_FLAGS, "element")
                nomatch = "nomatch" in opts
                if nomatch and target.type not in NOMATCH_TYPES:
                    raise _Error(f"nomatch is not valid for a {target.type} set")
                member = IpSetMember(_element(target, words[2]), nomatch, opts, Location(file, lineno))
                target.members.append(member)
            else:
                raise _Error(f"expected `create` or `add` (the lines `ipset save` prints), found {cmd!r}")
        except _Error as exc:
            raise InputError(file, lineno, str(exc)) from None
    return out
