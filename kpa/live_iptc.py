"""Read this host's legacy iptables tables through python-iptables (libiptc).

An optional alternative to running `iptables-legacy-save`: the tables are read
in-process with `iptc` and rendered as iptables-save text, so the usual parser
turns them into the IR. Every match and target is printed by its own libxtables
`save` function, the one iptables-legacy-save calls, so the text is the same.

Two hazards shape this module (both demonstrated in
tests/kernel/test_live_readonly.py):

* Opening a table with libiptc asks the kernel for it, and the kernel creates an
  empty one (registering its hooks) in a namespace that had none. So a table is
  opened only if `/proc/net/ip{,6}_tables_names` already lists it.
* python-iptables decides whether a rule's target (one outside its short list
  of well-known targets, e.g. CONNMARK) is a chain by opening every table it
  knows (`filter`, `mangle`, `raw`, `nat`, `security`) unless its availability
  cache says otherwise. The cache is set, table by table, so that only the
  table being read counts as available.

`iptc` is imported inside the functions: kpa works without libiptc, and
importing python-iptables loads the `ip_tables` kernel module.
"""

from __future__ import annotations

import ipaddress
import sys
from typing import Any, Literal

from kpa.netfilter.model import Family

FamilyName = Literal["ipv4", "ipv6"]

PROC_TABLE_NAMES = {"ipv4": "/proc/net/ip_tables_names", "ipv6": "/proc/net/ip6_tables_names"}

# Tables kpa's parser knows; any other name in the proc file means a fallback.
_KNOWN_TABLES = ("raw", "mangle", "nat", "filter", "security")

# Protocol names as iptables-save prints them (libxtables' xtables_chain_protos,
# consulted before /etc/protocols).
_CHAIN_PROTOS = {6: "tcp", 132: "sctp", 17: "udp", 136: "udplite", 1: "icmp",
                 58: "ipv6-icmp", 50: "esp", 51: "ah", 135: "mh"}

# libiptc prints a saved match or target through a 1024-byte pipe read; output
# that fills the buffer may have been cut short.
_SAVE_BUF = 1024


def _family_name(family: FamilyName | Family | str) -> FamilyName:
    if family in ("ipv4", Family.IPV4, "ip", 4):
        return "ipv4"
    if family in ("ipv6", Family.IPV6, "ip6", 6):
        return "ipv6"
    raise ValueError(f"expected family ipv4 or ipv6, found {family!r}")


def legacy_table_names(family: FamilyName | Family | str = "ipv4") -> list[str]:
    """The legacy tables the kernel holds for `family`, in the proc file's order."""
    path = PROC_TABLE_NAMES[_family_name(family)]
    try:
        with open(path) as fh:
            return [line.strip() for line in fh if line.strip()]
    except OSError:
        # No file means the ip(6)_tables module is not loaded: no legacy tables.
        return []


def legacy_tables_present(family: FamilyName | Family | str = "ipv4") -> bool:
    """True only if the kernel already holds at least one legacy table for `family`."""
    return bool(legacy_table_names(family))


def read_legacy_iptc(family: FamilyName | Family | str = "ipv4") -> str | None:
    """The existing legacy tables as iptables-save text (with counters), or None.

    None means "use iptables-legacy-save instead": there are no legacy tables,
    python-iptables or libiptc is missing, or some rule cannot be rendered
    faithfully (an unknown extension, a revision this libxtables would misread,
    output that may be truncated). Only tables the kernel already lists are
    opened, and nothing is ever committed.
    """
    fam = _family_name(family)
    names = legacy_table_names(fam)
    if not names or any(n not in _KNOWN_TABLES for n in names):
        return None
    try:
        import iptc  # noqa: F401  (loads libiptc/libxtables; may fail without them)
        from iptc import ip4tc, ip6tc
    except Exception:
        return None
    table_cls: Any = ip6tc.Table6 if fam == "ipv6" else ip4tc.Table
    try:
        text = _render(table_cls, fam, names)
    except Exception:
        # IPTCError, XTablesError, decoding errors: iptables-legacy-save will do.
        return None
    if legacy_table_names(fam) != names:
        # Should never happen with the guards above; if it does, do not trust the read.
        return None
    return text


def _render(table_cls: Any, fam: FamilyName, names: list[str]) -> str | None:
    out: list[str] = []
    for name in names:
        # python-iptables asks every table it believes available whether a target
        # name is a chain, opening any it has not seen. Only the table being read
        # is declared available: it exists, and a jump can only name its own chains.
        for other in table_cls.ALL:
            table_cls.existing_table_names[other] = other == name
        table_cls._cache.pop(name, None)  # a cached instance may hold an old snapshot or autocommit
        table = table_cls(name, autocommit=False)
        try:
            body = _render_table(table, fam)
        finally:
            table.close()  # frees the snapshot; autocommit is off, so nothing is committed
            table_cls._cache.pop(name, None)
        if body is None:
            return None
        out.extend(body)
    from iptc.version import __version__ as iptc_version

    tool = "ip6tables" if fam == "ipv6" else "iptables"
    # The first line is the header the parser reads family and backend from; its
    # version is python-iptables', as the save tool did not run.
    head = [f"# Generated by {tool}-legacy-save v{iptc_version} (legacy)",
            f"# rendered by kpa through python-iptables {iptc_version} (libiptc), not by {tool}-legacy-save"]
    return "\n".join(head + out) + "\n"


def _render_table(table: Any, fam: FamilyName) -> list[str] | None:
    lines = [f"*{table.name}"]
    rules: list[str] = []
    for chain in table.chains:
        if table.builtin_chain(chain.name):
            policy, (pkts, byts) = table.get_policy(chain.name)
            lines.append(f":{chain.name} {policy.name} [{pkts}:{byts}]")
        else:
            lines.append(f":{chain.name} - [0:0]")
        for rule in chain.rules:
            rendered = _render_rule(chain.name, rule, fam)
            if rendered is None:
                return None
            rules.append(rendered)
    return [*lines, *rules, "COMMIT"]


def _render_rule(chain: str, rule: Any, fam: FamilyName) -> str | None:
    pkts, byts = rule.get_counters()
    parts = [f"[{pkts}:{byts}] -A {chain}"]
    ip = rule.entry.ipv6 if fam == "ipv6" else rule.entry.ip
    header = _render_header(ip, fam, rule)
    if header is None:
        return None
    parts.append(header)
    for match in rule.matches:
        saved = _saved(match, rule, "match")
        if saved is None:
            return None
        parts.append(f" -m {match.name}{saved}")
    target = rule.target
    if _is_standard(target):
        verdict = target.standard_target
        if verdict:
            parts.append(f" -{'g' if target.goto else 'j'} {verdict}")
    else:
        saved = _saved(target, rule, "target")
        if saved is None:
            return None
        parts.append(f" -j {target.name}{saved}")
    return "".join(parts)


def _render_header(ip: Any, fam: FamilyName, rule: Any) -> str | None:
    # Field order and spelling follow iptables-save's print_rule.
    from iptc.ip4tc import ipt_ip
    from iptc.ip6tc import ip6t_ip6

    out: list[str] = []
    if fam == "ipv6":
        inv_src, inv_dst = ip6t_ip6.IP6T_INV_SRCIP, ip6t_ip6.IP6T_INV_DSTIP
        inv_in, inv_out = ip6t_ip6.IP6T_INV_VIA_IN, ip6t_ip6.IP6T_INV_VIA_OUT
        inv_proto = ip6t_ip6.IP6T_INV_PROTO
        if ip.flags & ip6t_ip6.IP6T_F_TOS:
            return None  # ip6tables has no option for it; the rule was not written by iptables
        src = (bytes(ip.src.s6_addr), bytes(ip.smsk.s6_addr))
        dst = (bytes(ip.dst.s6_addr), bytes(ip.dmsk.s6_addr))
    else:
        inv_src, inv_dst = ipt_ip.IPT_INV_SRCIP, ipt_ip.IPT_INV_DSTIP
        inv_in, inv_out = ipt_ip.IPT_INV_VIA_IN, ipt_ip.IPT_INV_VIA_OUT
        inv_proto = ipt_ip.IPT_INV_PROTO
        src = (_u32(ip.src.s_addr), _u32(ip.smsk.s_addr))
        dst = (_u32(ip.dst.s_addr), _u32(ip.dmsk.s_addr))
    for flag, (addr, mask), inv in (("-s", src, inv_src), ("-d", dst, inv_dst)):
        text = _address(addr, mask, bool(ip.invflags & inv))
        if text is None:
            return None
        if text:
            out.append(f"{' !' if ip.invflags & inv else ''} {flag} {text}")
    for flag, value in (("-i", rule.in_interface), ("-o", rule.out_interface)):
        inv = inv_in if flag == "-i" else inv_out
        if value:
            name = value.lstrip("!")
            out.append(f"{' !' if ip.invflags & inv else ''} {flag} {name}")
    if ip.proto:
        name = _proto_name(ip.proto)
        out.append(f"{' !' if ip.invflags & inv_proto else ''} -p {name}")
    if fam == "ipv4" and ip.flags & ipt_ip.IPT_F_FRAG:
        out.append(f"{' !' if ip.invflags & ipt_ip.IPT_INV_FRAG else ''} -f")
    return "".join(out)


def _u32(value: int) -> bytes:
    # s_addr holds network byte order; ctypes hands it over as a host integer.
    return int(value).to_bytes(4, sys.byteorder)


def _address(addr: bytes, mask: bytes, inverted: bool) -> str | None:
    """`addr/prefix` as iptables-save prints it, "" for "any", None if unrenderable."""
    if not any(addr) and not any(mask) and not inverted:
        return ""
    if len(addr) == 4:
        a: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(addr)
        m: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(mask)
    else:
        a, m = ipaddress.IPv6Address(addr), ipaddress.IPv6Address(mask)
    bits = int(m)
    width = 8 * len(mask)
    ones = bin(bits).count("1")
    if bits == ((1 << ones) - 1) << (width - ones):
        return f"{a}/{ones}"
    # iptables-save prints a non-contiguous mask in full.
    return f"{a}/{m}"


def _proto_name(number: int) -> str:
    if number in _CHAIN_PROTOS:
        return _CHAIN_PROTOS[number]
    try:
        with open("/etc/protocols") as fh:
            for line in fh:
                fields = line.split("#", 1)[0].split()
                if len(fields) >= 2 and fields[1] == str(number):
                    return fields[0]
    except OSError:
        pass
    return str(number)


def _is_standard(target: Any) -> bool:
    # Verdicts and jumps use libxtables' "standard" target; the verdict or chain
    # name comes from libiptc.
    module_name = target._module.name
    return bool(module_name in (b"standard", b""))


def _saved(ext: Any, rule: Any, kind: str) -> str | None:
    """An extension's options as its own save function prints them, or None."""
    entry = ext._ptr[0]
    module = ext._module
    # python-iptables decodes with the newest revision it found; an entry
    # written with another revision has another layout and would print garbage.
    if entry.u.user.revision != module.revision:
        return None
    size = entry.u.match_size if kind == "match" else entry.u.target_size
    if size != ext.size:
        return None
    if not module.save:
        return ""
    buf = ext._get_saved_buf(rule.get_ip())
    if buf is None:
        return ""
    if len(buf) >= _SAVE_BUF:
        return None
    text: str = buf.decode().rstrip("\n")
    return text


__all__ = ["PROC_TABLE_NAMES", "legacy_table_names", "legacy_tables_present", "read_legacy_iptc"]
