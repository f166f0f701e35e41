"""What kube-proxy built, per Service port, read back from the ruleset.

kube-proxy names its chains by hash and explains them in `-m comment`
text. kpa reads the comments first; where they are missing (kube-proxy drops
them on large clusters) and cluster objects are given, it recomputes the
chain-name hashes to recover which Service port a chain belongs to.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Generic, Protocol, TypeVar

from kpa.ext.base import IntCond, Match
from kpa.ext.nat import NatTarget
from kpa.ext.recent import RecentMatch
from kpa.ext.statistic import StatisticMatch, kernel_probability
from kpa.k8s import naming
from kpa.k8s.objects import _CANONICAL_V4
from kpa.netfilter.domain import IntSet, fraction_text
from kpa.netfilter.model import Chain, LazyRule, Rule, Ruleset, Table, VerdictKind

ENTRY_KINDS = {
    "cluster IP": "clusterIP",
    "external IP": "externalIP",
    "loadbalancer IP": "loadBalancerIP",
}
SERVICE_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-")


@dataclass
class Entry:
    """A way into a Service port's chains: a KUBE-SERVICES or KUBE-NODEPORTS rule, or an nftables map element."""

    kind: str  # clusterIP, nodePort, externalIP, loadBalancerIP
    address: str | None  # None for NodePorts (any local address)
    port: int | None
    chain: str
    location: str

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "address": self.address,
            "port": self.port,
            "chain": self.chain,
            "location": self.location,
        }


# id(share) -> (share, float(share), fraction_text(share)). The shares of a ruleset's Service
# ports repeat (`endpoint_split` gives the same Fraction object for the same dyadic share), and
# each text costs microseconds; the memo holds each Fraction, so its id is not reused meanwhile.
ShareTexts = dict[int, tuple[Fraction, float, str]]


def share_texts(p: Fraction, memo: ShareTexts) -> tuple[Fraction, float, str]:
    """``(p, float(p), fraction_text(p))``, from ``memo`` when ``p`` itself is in it."""
    known = memo.get(id(p))
    if known is None or known[0] is not p:
        known = memo[id(p)] = (p, float(p), fraction_text(p))
    return known


@dataclass
class EndpointView:
    """One endpoint of a Service port as the rules show it: its chain, address and share of traffic."""

    chain: str
    address: str | None
    probability: Fraction
    location: str
    local_only: bool = False

    def to_json(self, memo: ShareTexts | None = None) -> dict[str, Any]:
        """`memo`: the texts of the shares already written, for a caller that writes many."""
        p = self.probability
        if memo is None:
            number, exact = float(p), fraction_text(p)
        else:
            _, number, exact = share_texts(p, memo)
        return {
            "chain": self.chain,
            "endpoint": self.address,
            "probability": number,
            "probability_exact": exact,
            "location": self.location,
        }


@dataclass
class ServicePortView:
    """One Service port as the rules show it: its entries, chains and endpoints."""

    name: str | None  # "ns/name:port" as kube-proxy prints it, when known
    protocol: str | None
    family: str
    entries: list[Entry] = field(default_factory=list)
    chains: dict[str, str] = field(default_factory=dict)  # SVC/SVL/EXT/FW -> chain name
    endpoints: list[EndpointView] = field(default_factory=list)
    local_endpoints: list[EndpointView] = field(default_factory=list)
    no_endpoints: bool = False
    name_source: str = "comment"

    def to_json(self, memo: ShareTexts | None = None) -> dict[str, Any]:
        """`memo`: as for `EndpointView.to_json`."""
        return {
            "service_port": self.name,
            "protocol": self.protocol,
            "family": self.family,
            "name_from": self.name_source,
            "entries": [e.to_json() for e in self.entries],
            "chains": self.chains,
            "endpoints": [e.to_json(memo) for e in self.endpoints],
            "local_endpoints": [e.to_json(memo) for e in self.local_endpoints],
            "no_endpoints": self.no_endpoints,
        }


def _dst(rule: Rule) -> str | None:
    for e in rule.exprs:
        if isinstance(e, Match) and e.name == "dst":
            c = e.conds[0]
            if isinstance(c, IntCond):
                v = c.values.single_value()
                if v is not None:
                    return str(ipaddress.ip_address(v))
    return None


def _dport(rule: Rule) -> int | None:
    for e in rule.exprs:
        if isinstance(e, Match):
            for c in e.conds:
                if isinstance(c, IntCond) and c.field == "dport" and not c.negated:
                    return c.values.single_value()
    return None


def rule_protocol(rule: Rule) -> str | None:
    if isinstance(rule, LazyRule):
        plain = outside_comment(rule)
        if plain is not None:
            head = plain.split(" -j ", 1)[0]
            found = _PROTO_RE.findall(head)
            if "--protocol" not in head and len(found) <= 1:
                return found[0].upper() if found else None
    for e in rule.exprs:
        if isinstance(e, Match) and e.name == "proto":
            return e.options[0].args[0].upper()
    return None


def _jump(rule: Rule) -> str | None:
    for kind, target in rule.chain_refs():
        if kind in (VerdictKind.JUMP, VerdictKind.GOTO):
            return target
    return None


def _comment_name(comment: str | None) -> str | None:
    if not comment:
        return None
    head = comment.split(" ", 1)[0]
    return head if "/" in head else None


_PROTO_RE = re.compile(r" -p (\S+)")
_COMMENT_ONLY = re.compile(r' -m comment --comment "[^"]*"(?= |$)')
_AFFINITY_RE = re.compile(r"-A \S+ -m recent --rcheck --seconds \d+ --reap --name \S+ --mask \S+ --rsource -j \S+")
_HANDOVER_RE = re.compile(r"-A \S+ -j \S+")


def outside_comment(rule: LazyRule) -> str | None:
    """A not-yet-built rule's text without its one plainly quoted comment; None if the parser must read it.

    Without escapes or other quotes, every word left is a token as the parser sees it.
    """
    text = rule.text
    if "\\" in text or "'" in text:
        return None
    quotes = text.count('"')
    if quotes == 0:
        return text
    if quotes != 2 or text.count("--comment") != 1:
        return None
    m = _COMMENT_ONLY.search(text)
    return None if m is None else text[: m.start()] + text[m.end() :]


def is_affinity_check(rule: LazyRule) -> bool | None:
    """True for kube-proxy's session-affinity rule (`-m recent --rcheck ...`), read from its text.

    None when the text is in another spelling: then the built rule's expressions tell.
    """
    plain = outside_comment(rule)
    if plain is None:
        return None
    if "recent" not in plain:
        return False
    return True if _AFFINITY_RE.fullmatch(plain) else None


def is_bare_jump(rule: LazyRule) -> bool | None:
    """Whether a not-yet-built rule has nothing but comments and its verdict; None: build it to tell."""
    plain = outside_comment(rule)
    if plain is None:
        return None
    if _HANDOVER_RE.fullmatch(plain):
        return True
    cut = plain.find(" -j ")
    # Before the target, an unquoted `-m` always starts a match module other than the comment.
    if cut > 0 and " -m " in plain[:cut]:
        return False
    return None


_STAT_RE = re.compile(r" -m statistic --mode random --probability (\S+)(?= |$)")
_COMMENT_RE = re.compile(r' -m comment --comment (?:"([^"]*)"|([^\s"]+))(?= |$)')


def _text_share(rule: Rule) -> Fraction | None:
    """The statistic share of a not-yet-built rule read from its text; None: the parser must tell."""
    text = rule.text
    if "recent" in text or "!" in text:
        return None
    if "statistic" not in text:
        return Fraction(1)
    found = _STAT_RE.findall(text)
    if len(found) != 1 or text.count("statistic") != 1:
        return None
    return _probability(found[0])


@functools.lru_cache(maxsize=4096)
def _probability(text: str) -> Fraction | None:
    """`kernel_probability`, or None where it refuses; a cascade repeats a few texts many times."""
    try:
        return kernel_probability(text)
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def _dyadic(n: int, exp: int) -> Fraction:
    """Fraction(n, 2**exp); the cascades of Service ports with as many endpoints repeat them."""
    return Fraction(n, 1 << exp)


def rule_comment(rule: Rule) -> str | None:
    """A rule's comment; a not-yet-built rule's from its text when that is unambiguous."""
    if isinstance(rule, LazyRule):
        text = rule.text
        if "comment" not in text:
            return None
        if "\\" not in text and "'" not in text and text.count('"') in (0, 2) \
                and text.count("--comment") == 1:
            m = _COMMENT_RE.search(text)
            if m is not None:
                return m.group(1) if m.group(1) is not None else m.group(2)
    return rule.comment


# kube-proxy's entry rules in KUBE-SERVICES and KUBE-NODEPORTS, in the one spelling
# iptables-save prints them whose meaning needs no parser: an optional single IPv4
# destination, a protocol with its own match module, one quoted comment without escapes,
# one destination port, and the jump.
_ENTRY_RE = re.compile(
    r"-A \S+(?: -d ((?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d))/32)?"
    r" -p (tcp|udp|sctp) -m comment --comment \"([^\"\\\\]+)\" -m \2 --dport (\d{1,5}) -j (\S+)")


def _text_entry(rule: LazyRule, target: str, version: int) -> tuple[str | None, str, str | None, int] | None:
    """(comment, PROTOCOL, destination, port) of a not-yet-built entry rule, read from its text.

    None when the text is in any other spelling: then the rule is built. What it
    returns is what `rule.comment`, `rule_protocol`, `_dst` and `_dport` give.
    """
    if version != 4:
        return None
    m = _ENTRY_RE.fullmatch(rule.text)
    if m is None or m.group(5) != target:
        return None
    port = int(m.group(4))
    if port > 65535:
        return None
    return m.group(3) or None, m.group(2).upper(), m.group(1), port


# kube-proxy's jump from a Service chain to an endpoint chain, in the spellings iptables-save
# prints whose meaning needs no parser: an optional quoted comment without escapes, an optional
# random statistic match, and the jump (a word of the text, so the very target the parser reads).
_SEP_JUMP_RE = re.compile(
    r'-A [^\s"\'\\]+(?: -m comment --comment "[^"\\]*")?'
    r"(?: -m statistic --mode random --probability ([0-9.]+))? -j (KUBE-SEP-[^\s\"'\\]+)")
_ONE = Fraction(1)


def endpoint_split(chain: Chain) -> list[tuple[Rule, str, Fraction]]:
    """The jumps to endpoint chains with the exact share of traffic each gets."""
    out: list[tuple[Rule, str, Fraction]] = []
    # What is left for the later rules: rem_n / 2**rem_e while every share is dyadic (the
    # kernel's are k / 2**31), which needs only integer arithmetic; a Fraction otherwise.
    rem_n, rem_e = 1, 0
    remaining: Fraction | None = None
    for r in chain.rules:
        p: Fraction | None = None
        if type(r) is LazyRule and "\\" not in r.text:
            text = r.text
            if "KUBE-SEP-" not in text:
                continue  # its targets are words of its text: it jumps to no endpoint chain
            m = _SEP_JUMP_RE.fullmatch(text)
            if m is not None:
                shown, target = m.groups()
                if remaining is None:
                    step = _cascade_step(rem_n, rem_e, shown)
                    if step is not None:
                        share, rem_n, rem_e = step
                        out.append((r, target, share))
                        continue
                p = _probability(shown) if shown is not None else _ONE
        if p is None:
            target = _jump(r)  # type: ignore[assignment]
            if target is None or not target.startswith("KUBE-SEP-"):
                continue
        if p is None and isinstance(r, LazyRule):
            if is_affinity_check(r):
                continue  # session-affinity shortcuts apply only to returning clients
            p = _text_share(r)
        if p is None:
            if any(isinstance(e, RecentMatch) for e in r.exprs):
                continue  # session-affinity shortcuts apply only to returning clients
            p = Fraction(1)
            for e in r.exprs:
                if isinstance(e, StatisticMatch):
                    p = 1 - e.probability if e.negated else e.probability
        den = p.denominator
        if remaining is None and not den & (den - 1):
            exp = rem_e + den.bit_length() - 1
            n = rem_n * p.numerator
            out.append((r, target, _dyadic(n, exp)))
            rem_n, rem_e = (rem_n << (exp - rem_e)) - n, exp
            continue
        if remaining is None:
            remaining = Fraction(rem_n, 1 << rem_e)
        out.append((r, target, remaining * p))
        remaining -= remaining * p
    return out


@functools.lru_cache(maxsize=4096)
def _cascade_step(rem_n: int, rem_e: int, shown: str | None) -> tuple[Fraction, int, int] | None:
    """`endpoint_split`'s dyadic step for a rule whose probability is written ``shown`` (None: no
    statistic match) when rem_n / 2**rem_e is left: (its share, rem_n, rem_e after it).

    None where the probability is refused or not dyadic (the caller then takes the long way).
    The cascades of Service ports with as many endpoints go through the same few steps.
    """
    p = _probability(shown) if shown is not None else _ONE
    if p is None:
        return None
    den = p.denominator
    if den & (den - 1):
        return None
    exp = rem_e + den.bit_length() - 1
    n = rem_n * p.numerator
    return _dyadic(n, exp), (rem_n << (exp - rem_e)) - n, exp


# The tail of kube-proxy's endpoint rule, `-j DNAT --to-destination IP:PORT`, in the forms
# whose meaning needs no parser: one IPv4 address, or one bracketed IPv6 address, and a port.
_DNAT_TAIL = {
    4: re.compile(r"DNAT --to-destination (\d{1,3}(?:\.\d{1,3}){3})(?::(\d{1,5}))?"),
    6: re.compile(r"DNAT --to-destination \[([0-9A-Fa-f:.]+)\](?::(\d{1,5}))?"),
}
_NO_DNAT: tuple[int | str, int | None] = (-1, None)


def _text_dnat(rule: Rule, version: int) -> tuple[int | str, int | None] | None:
    """The DNAT address and port of a not-yet-built rule, read from its text.

    ``_NO_DNAT`` when the rule has no DNAT target, None when the text needs the
    parser to tell. What it returns is what the rule's NatTarget would hold.
    """
    text = rule.text
    if "DNAT" not in text:
        return _NO_DNAT  # a DNAT target is written `-j DNAT`
    cut = text.rfind(" -j ")
    m = _DNAT_TAIL[version].fullmatch(text, cut + 4) if cut >= 0 else None
    if m is None:
        return None
    port = int(m.group(2)) if m.group(2) is not None else None
    if port is not None and port > 65535:
        return None
    if version == 4 and _CANONICAL_V4.fullmatch(m.group(1)):
        return m.group(1), port
    try:
        return int(ipaddress.ip_address(m.group(1))), port
    except ValueError:
        return None


# The same target as `_DNAT_TAIL[4]` where the text is already what `dnat_target` prints: a
# canonical IPv4 address and a port in 0-65535 without leading zeros.
_V4_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_DNAT_V4_PRINTED = re.compile(
    rf" -j DNAT --to-destination ((?:{_V4_OCTET}\.){{3}}{_V4_OCTET}"
    r":(?:[1-9]\d{0,3}|[1-5]\d{4}|6[0-4]\d{3}|65[0-4]\d\d|655[0-2]\d|6553[0-5]|0))")


def dnat_target(chain: Chain | None, version: int) -> str | None:
    if chain is None:
        return None
    for r in chain.rules:
        if version == 4 and type(r) is LazyRule:
            text = r.text
            if "DNAT" not in text:
                continue  # a DNAT target is written `-j DNAT`
            m = _DNAT_V4_PRINTED.fullmatch(text, text.rfind(" -j "))
            if m is not None:
                return m.group(1)
        found = _text_dnat(r, version) if isinstance(r, LazyRule) else None
        if found is _NO_DNAT:
            continue
        if found is not None:
            ip, port = found
            # Canonical IPv4 text is what printing its parsed address gives.
            addr = ip if isinstance(ip, str) else str(ipaddress.ip_address(ip))
            if port is None:
                return addr
            return f"[{addr}]:{port}" if version == 6 else f"{addr}:{port}"
        for e in r.exprs:
            if isinstance(e, NatTarget) and e.name == "DNAT" and e.ip is not None:
                addr = str(ipaddress.ip_address(e.ip))
                if e.port is None:
                    return addr
                return f"[{addr}]:{e.port}" if version == 6 else f"{addr}:{e.port}"
    return None


def _printed_dnats(t: Table) -> dict[str, str]:
    """`dnat_target(t.chains[name], 4)` for each endpoint chain whose answer is its first DNAT rule
    in the form `_DNAT_V4_PRINTED` reads; other chains are left out (ask `dnat_target`).

    Read in the table's order: the endpoint chains, their rules and texts were made one after
    the other, so this reads memory in sequence, where the Service chains' order jumps about.
    """
    out: dict[str, str] = {}
    for name, c in t.chains.items():
        if not name.startswith("KUBE-SEP-"):
            continue
        for r in c.rules:
            if type(r) is not LazyRule:
                break
            text = r.text
            if "DNAT" not in text:
                continue  # as `dnat_target`: a DNAT target is written `-j DNAT`
            m = _DNAT_V4_PRINTED.fullmatch(text, text.rfind(" -j "))
            if m is not None:
                out[name] = m.group(1)
            break
    return out


def hash_names(services: list[tuple[str, str]]) -> dict[str, str]:
    """Map kube-proxy chain names back to Service port names, by recomputing hashes."""
    out: dict[str, str] = {}
    for spn, proto in services:
        for chain in naming.iptables_service_chains(spn, proto).values():
            out[chain] = spn
    return out


class NeedsObjects(Exception):
    """Raised by `UNREAD` when work done before the objects are read turns out to need them."""


class _Unread(Mapping[str, Any]):
    """Stands for an input made from the cluster objects while they are still being read.

    Work run with it either never looks at that input, and so gives what it gives with
    any objects, or raises `NeedsObjects` at the first look.
    """

    def __getitem__(self, key: str) -> Any:
        raise NeedsObjects(key)

    def __contains__(self, key: object) -> bool:
        raise NeedsObjects(key)

    def __iter__(self) -> Iterator[str]:
        raise NeedsObjects()

    def __len__(self) -> int:
        raise NeedsObjects()


UNREAD: Mapping[str, Any] = _Unread()


def service_ports_ahead(rs: Ruleset) -> list[ServicePortView] | None:
    """`service_ports(rs, known)` for every ``known``, worked out before the objects are read.

    None when some chain's Service port is named by no comment: then its name depends
    on ``known`` (the recomputed hashes), so the views wait for the objects.
    """
    try:
        return service_ports(rs, UNREAD)
    except NeedsObjects:
        return None


def service_ports(rs: Ruleset, known: Mapping[str, str] | None = None) -> list[ServicePortView]:
    """One view per (family, Service port) found in the nat tables or nftables mode's kube-proxy table.

    ``known`` (chain name -> Service port name, from recomputed hashes) is read only for
    a chain whose Service port no comment names.
    """
    views: list[ServicePortView] = []
    for t in rs.tables:
        if t.name == "nat":
            views.extend(_table_views(t, rs, known if known is not None else {}))
        elif t.name == "kube-proxy":
            views.extend(_nft_views(t))
    return views


_NFT_SVC = re.compile(r"^(service|local|external|firewall)-[A-Z0-9]{8}-([^/]+)/([^/]+)/([a-z]+)/(.*)$")
_PROTO_NAMES = {6: "TCP", 17: "UDP", 132: "SCTP"}


def _nft_spn(chain: str) -> tuple[str, str, str] | None:
    """(kind, "ns/name:port", PROTOCOL) from an nftables-mode chain name."""
    m = _NFT_SVC.match(chain)
    if m is None:
        return None
    kind, ns, name, proto, port = m.groups()
    return kind, f"{ns}/{name}" + (f":{port}" if port else ""), proto.upper()


def _single(part: Any) -> int | None:
    return part.single_value() if isinstance(part, IntSet) else None


def _nft_views(t: Table) -> list[ServicePortView]:
    """Service ports of nftables mode: the service-ips / service-nodeports maps and the per-port chains."""
    by_name: dict[str, ServicePortView] = {}
    version = t.family.version if t.family.version in (4, 6) else 4
    fam = "ipv6" if version == 6 else "ipv4"
    fw = t.sets.get("firewall-ips")
    fw_keys = {tuple(_single(p) for p in el) for el in fw.elements} if fw is not None else set()

    def view(spn: str, proto: str) -> ServicePortView:
        v = by_name.get(spn)
        if v is None:
            v = by_name[spn] = ServicePortView(spn, proto, fam, name_source="chain name")
        return v

    for map_name in ("service-ips", "service-nodeports"):
        m = t.sets.get(map_name)
        if m is None:
            continue
        loc = str(m.location) if m.location else t.name
        for el, verdict in zip(m.elements, m.values or [], strict=False):
            target = getattr(verdict, "chain", None)
            parsed = _nft_spn(target or "")
            if parsed is None:
                continue
            kind, spn, proto = parsed
            values = [_single(p) for p in el]
            if map_name == "service-nodeports":
                entry = Entry("nodePort", None, values[-1], target or "", loc)
            else:
                addr = str(ipaddress.ip_address(values[0])) if values[0] is not None else None
                k = "clusterIP" if kind in ("service", "local") else (
                    "loadBalancerIP" if kind == "firewall" or tuple(values) in fw_keys else "externalIP")
                entry = Entry(k, addr, values[-1], target or "", loc)
            view(spn, proto).entries.append(entry)
    for c in t.chains.values():
        parsed = _nft_spn(c.name)
        if parsed is None:
            continue
        kind, spn, proto = parsed
        v = view(spn, proto)
        v.chains[kind] = c.name
        if kind in ("service", "local"):
            dest = v.endpoints if kind == "service" else v.local_endpoints
            for r, ep_chain, p in _nft_endpoint_split(c):
                dest.append(EndpointView(ep_chain, dnat_target(t.chains.get(ep_chain), version), p,
                                         r.where()))
    cluster_ips = t.sets.get("cluster-ips")
    cips = {_single(el[0]) for el in cluster_ips.elements} if cluster_ips is not None else set()
    for map_name in ("no-endpoint-services", "no-endpoint-nodeports"):
        # Ports without endpoints have no chains; kube-proxy names them in the elements' comments.
        m = t.sets.get(map_name)
        if m is None or not m.comments:
            continue
        loc = str(m.location) if m.location else t.name
        for el, verdict, said in zip(m.elements, m.values or [], m.comments, strict=False):
            if not said or getattr(verdict, "chain", None) != "reject-chain":
                continue  # `drop`: no local endpoints, which the Service's own view shows
            values = [_single(p) for p in el]
            proto = _PROTO_NAMES.get(values[-2] or 0, "TCP")
            v = view(said, proto)
            v.no_endpoints = True
            if map_name == "no-endpoint-nodeports":
                v.entries.append(Entry("nodePort", None, values[-1], "REJECT", loc))
            else:
                addr = str(ipaddress.ip_address(values[0])) if values[0] is not None else None
                v.entries.append(Entry("clusterIP" if values[0] in cips else "externalIP", addr, values[-1],
                                       "REJECT", loc))
    return sorted(by_name.values(), key=lambda v: natural_key(v.name or "~"))


def _nft_endpoint_split(chain: Chain) -> list[tuple[Rule, str, Fraction]]:
    from kpa.ext.nft.lookup import VerdictMap
    from kpa.ext.nft.numgen import NumgenKey

    out: list[tuple[Rule, str, Fraction]] = []
    for r in chain.rules:
        for e in r.exprs:
            if isinstance(e, VerdictMap) and isinstance(e.key, NumgenKey):
                elements, verdicts = e._pairs()
                for el, verdict in zip(elements, verdicts, strict=False):
                    target = getattr(verdict, "chain", None)
                    if target and isinstance(el[0], IntSet):
                        out.append((r, target, e.key.probability(el[0])))
        if not out:
            target = _jump(r)
            if target and target.startswith("endpoint-") and not any(
                    type(e).__name__ == "SetLookup" for e in r.exprs):
                out.append((r, target, Fraction(1)))
    return out


_DIGIT_RUNS = re.compile(r"(\d+)")


def natural_key(text: str) -> list[Any]:
    """Sort key that puts svc-2 before svc-1000."""
    # (Compiled once: `re.split` looks its pattern up in re's cache on every call.) The captured
    # digit runs are every second part; a text part may still pass `isdigit` ("²") and not `int`.
    parts: list[Any] = _DIGIT_RUNS.split(text)
    parts[1::2] = map(int, parts[1::2])
    return parts


def _table_views(t: Table, rs: Ruleset, known: Mapping[str, str]) -> list[ServicePortView]:
    by_key: dict[str, ServicePortView] = {}
    version = t.family.version
    fam = "ipv6" if version == 6 else "ipv4"

    def view_for(chain_name: str, comment: str | None, proto: str | None) -> ServicePortView:
        key = chain_name[chain_name.rfind("-") + 1 :]
        v = by_key.get(key)
        if v is None:
            name = _comment_name(comment)
            source = "comment"
            if name is None and chain_name in known:
                name, source = known[chain_name], "hash"
            elif name is None:
                source = "unknown"
            v = by_key[key] = ServicePortView(name, proto, fam, name_source=source)
        if v.name is None and _comment_name(comment):
            v.name, v.name_source = _comment_name(comment), "comment"
        if v.protocol is None:
            v.protocol = proto
        return v

    def add_entry(chain: Chain, kind_default: str) -> None:
        for r in chain.rules:
            target = _jump(r)
            if target is None or not target.startswith(SERVICE_CHAIN_PREFIXES):
                continue
            fields = _text_entry(r, target, version) if isinstance(r, LazyRule) else None
            if fields is None:
                comment, proto, dst, dport = r.comment, rule_protocol(r), _dst(r), _dport(r)
            else:
                comment, proto, dst, dport = fields
            kind = kind_default
            if comment:
                for suffix, k in ENTRY_KINDS.items():
                    if comment.endswith(suffix):
                        kind = k
            elif target.startswith("KUBE-FW-"):
                kind = "loadBalancerIP"
            elif target.startswith("KUBE-EXT-") and kind_default == "clusterIP":
                kind = "externalIP"
            v = view_for(target, comment, proto)
            v.entries.append(Entry(kind, dst, dport, target, r.where()))

    for name, kind in (("KUBE-SERVICES", "clusterIP"), ("KUBE-NODEPORTS", "nodePort")):
        c = t.chains.get(name)
        if c is not None:
            add_entry(c, kind)
    get_chain = t.chains.get
    dnats = _printed_dnats(t) if version == 4 else {}
    for c in t.chains.values():
        name = c.name
        if name.startswith(SERVICE_CHAIN_PREFIXES):
            v = by_key.get(name[name.rfind("-") + 1 :])  # (the key `view_for` reads)
            if v is None or v.name is None:
                # Only here does `view_for` read the chain's comment: where no entry rule named the port.
                v = view_for(name, next((m for r in c.rules if (m := rule_comment(r))), None), None)
            v.chains[name.split("-")[1]] = name
            if name.startswith(("KUBE-SVC-", "KUBE-SVL-")):
                dest = v.endpoints if name.startswith("KUBE-SVC-") else v.local_endpoints
                for r, sep, p in endpoint_split(c):
                    address = dnats.get(sep)
                    if address is None:
                        address = dnat_target(get_chain(sep), version)
                    dest.append(EndpointView(sep, address, p, r.where()))
    _mark_no_endpoints(rs, t, by_key)
    return sorted(by_key.values(), key=lambda v: (natural_key(v.name or "~"), v.family))


# kube-proxy's "has no endpoints" REJECT rules in the filter table, in the one spelling
# iptables-save prints them whose meaning needs no parser: as _ENTRY_RE, and for node ports
# `-m addrtype --dst-type LOCAL` (which is not a destination address) before the port.
_REJECT_RE = re.compile(
    r"-A \S+(?: -d ((?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d))/32)?"
    r" -p (tcp|udp|sctp) -m comment --comment \"([^\"\\\\]+)\"(?: -m addrtype --dst-type LOCAL)?"
    r" -m \2 --dport (\d{1,5}) -j REJECT(?: --reject-with icmp-port-unreachable)?")


def _text_reject(rule: Rule, version: int) -> tuple[str, str, str | None, int] | None:
    """(comment, PROTOCOL, destination, port) of a not-yet-built REJECT rule, read from its text.

    None when the text is in any other spelling: then the rule is built. What it
    returns is what `rule_comment`, `rule_protocol`, `_dst` and `_dport` give.
    """
    if version != 4 or not isinstance(rule, LazyRule):
        return None
    m = _REJECT_RE.fullmatch(rule.text)
    if m is None:
        return None
    port = int(m.group(4))
    if port > 65535:
        return None
    return m.group(3), m.group(2).upper(), m.group(1), port


def _mark_no_endpoints(rs: Ruleset, nat: Table, views: dict[str, ServicePortView]) -> None:
    """Services without endpoints get a filter-table REJECT instead of nat chains."""
    filt = rs.table(nat.family, "filter")
    if filt is None:
        return
    names = {v.name: v for v in views.values() if v.name}
    for chain_name in ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES"):
        c = filt.chains.get(chain_name)
        if c is None:
            continue
        for r in c.rules:
            fields = _text_reject(r, nat.family.version)
            said = fields[0] if fields is not None else rule_comment(r)
            if not (said and said.endswith("has no endpoints")):
                continue
            proto: str | None
            dport: int | None
            if fields is not None:
                _, proto, dst, dport = fields
            else:
                proto, dst, dport = rule_protocol(r), _dst(r), _dport(r)
            spn = said.split(" ", 1)[0]
            v = names.get(spn)
            if v is None:
                v = names[spn] = views[f"noep:{spn}"] = ServicePortView(
                    spn, proto, "ipv6" if nat.family.version == 6 else "ipv4"
                )
            v.no_endpoints = True
            kind = "clusterIP" if chain_name == "KUBE-SERVICES" else "externalIP"
            if dst is None:
                kind = "nodePort"
            v.entries.append(Entry(kind, dst, dport, "REJECT", r.where()))


# ------------------------------------------------------------- endpoint selection
#
# kube-proxy's choice of endpoints for a Service port, in terms of Kubernetes objects.
# The correlation with a ruleset (kpa.k8s.correlate), the policy engine (kpa.policy) and
# the rule generator all use it, so they agree by construction.


@dataclass(frozen=True)
class EndpointInfo:
    """One entry of kube-proxy's endpointsMap for a Service port."""

    endpoint: str  # "ip:port" / "[ip]:port"
    ip: str
    is_local: bool
    ready: bool
    serving: bool
    terminating: bool
    chain: str


@dataclass(frozen=True)
class TrafficPolicy:
    """The parts of a Service port that kube-proxy's endpoint selection reads."""

    externally_accessible: bool
    external_policy_local: bool
    internal_policy_local: bool

    @property
    def uses_cluster_endpoints(self) -> bool:
        # Externally reachable ports always need the Cluster chain, because
        # the EXT chain's short-circuit rules jump to it.
        return not self.internal_policy_local or self.externally_accessible

    @property
    def uses_local_endpoints(self) -> bool:
        return self.internal_policy_local or (
            self.externally_accessible and self.external_policy_local
        )


def traffic_policy(
    service_type: str,
    node_port: int,
    external_ips: Sequence[str],
    lb_vips: Sequence[str],
    external_traffic_policy: str,
    internal_traffic_policy: str,
) -> TrafficPolicy:
    """kube-proxy's view of one Service port's traffic policies (one family's addresses)."""
    exposed = service_type in ("NodePort", "LoadBalancer") or bool(external_ips)
    return TrafficPolicy(
        externally_accessible=node_port != 0 or bool(lb_vips) or bool(external_ips),
        external_policy_local=exposed and external_traffic_policy == "Local",
        internal_policy_local=internal_traffic_policy == "Local",
    )


class Selectable(Protocol):
    """What kube-proxy's endpoint selection reads of an endpoint (`EndpointInfo` has it all)."""

    @property
    def endpoint(self) -> str: ...
    @property
    def is_local(self) -> bool: ...
    @property
    def ready(self) -> bool: ...
    @property
    def serving(self) -> bool: ...
    @property
    def terminating(self) -> bool: ...


E = TypeVar("E", bound=Selectable)


@dataclass(frozen=True)
class Categorized(Generic[E]):
    """kube-proxy's choice of endpoints for a Service port: for cluster traffic, for local, and all reachable."""

    cluster: tuple[E, ...]
    local: tuple[E, ...]
    reachable: tuple[E, ...]
    has_any: bool


def categorize_endpoints(endpoints: Sequence[E], policy: TrafficPolicy) -> Categorized[E]:
    """kube-proxy's CategorizeEndpoints (topology hints are not modelled).

    ``endpoints`` must be sorted by their ``ip:port`` string, as kube-proxy keeps them.
    The answer holds the very objects given.
    """
    cluster: tuple[E, ...] = ()
    local: tuple[E, ...] = ()
    has_any = False
    if policy.uses_cluster_endpoints:
        cluster = tuple(ep for ep in endpoints if ep.ready)
        if not cluster:
            # No ready endpoint anywhere: fall back to serving-terminating ones.
            cluster = tuple(ep for ep in endpoints if ep.serving and ep.terminating)
        has_any = bool(cluster)
    if not policy.uses_local_endpoints:
        return Categorized(cluster, local, cluster, has_any)

    local_ready = local_serving_terminating = False
    for ep in endpoints:
        if ep.ready:
            has_any = True
            local_ready = local_ready or ep.is_local
        elif ep.serving and ep.terminating:
            has_any = True
            local_serving_terminating = local_serving_terminating or ep.is_local
    use_serving_terminating = False
    if local_ready:
        local = tuple(ep for ep in endpoints if ep.is_local and ep.ready)
    elif local_serving_terminating:
        use_serving_terminating = True
        local = tuple(ep for ep in endpoints if ep.is_local and ep.serving and ep.terminating)

    if not policy.uses_cluster_endpoints:
        return Categorized(cluster, local, local, has_any)
    if not use_serving_terminating:
        return Categorized(cluster, local, cluster, has_any)
    merged = {ep.endpoint: ep for ep in cluster}
    merged.update({ep.endpoint: ep for ep in local})
    return Categorized(cluster, local, tuple(merged[k] for k in sorted(merged)), has_any)


__all__ = [
    "UNREAD",
    "Categorized",
    "EndpointInfo",
    "EndpointView",
    "Entry",
    "NeedsObjects",
    "Selectable",
    "ServicePortView",
    "ShareTexts",
    "TrafficPolicy",
    "categorize_endpoints",
    "dnat_target",
    "endpoint_split",
    "hash_names",
    "is_affinity_check",
    "is_bare_jump",
    "natural_key",
    "outside_comment",
    "rule_comment",
    "rule_protocol",
    "service_ports",
    "service_ports_ahead",
    "share_texts",
    "traffic_policy",
]
