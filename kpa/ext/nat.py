"""DNAT, SNAT, MASQUERADE and REDIRECT (xt_nat, xt_MASQUERADE, xt_REDIRECT).

A NAT target rewrites the connection and ends the nat table's walk for this
hook, like ACCEPT. kpa records the rewrite on the state; later hooks see the
new destination, and the outcome reports it.

Ranges follow the kernel's choice (net/netfilter/nf_nat_core.c), assuming
no other connection already holds the resulting tuple:

* An address range `a-b` is resolved by `find_best_ips_proto`: a Jenkins
  hash (jhash2, fixed seed) of the source address, seeded with the
  destination unless `--persistent`, scaled onto the range. That is
  deterministic, so kpa computes it when source and destination are known;
  otherwise it follows every address of a small range as an unknown choice.
  SNAT keeps a source that is already inside the range.
* A port range `p-q`: a port already inside it is kept. Otherwise DNAT and
  REDIRECT take the first port of the range (offset 0), and SNAT and
  MASQUERADE a random one (noted, not split). `--random`/`--random-fully`
  always pick at random.
* A port shift `p-q/base` maps port x to p + ((x - base) mod 65536) mod (q-p+1).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from kpa.ext.base import Option, OptionError, ParseCtx, Unsupported, parse_port, target
from kpa.netfilter.domain import IntSet
from kpa.netfilter.model import Expr, Step, Verdict, VerdictKind
from kpa.netfilter.packet import Assumption, State, TraceContext

M32 = 0xFFFFFFFF
# Follow each address of an unresolved address range up to this size; larger ones are one unknown.
MAX_ADDRESS_CHOICES = 16


@dataclass(frozen=True)
class NatRange:
    """A NAT target's address range and optional port range (and port shift base), as integers."""

    ip_lo: int
    ip_hi: int
    port_lo: int | None = None
    port_hi: int | None = None
    base: int | None = None  # the port shift's base (`/base`)


def _rol(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & M32


def _final(a: int, b: int, c: int) -> int:
    c ^= b
    c = (c - _rol(b, 14)) & M32
    a ^= c
    a = (a - _rol(c, 11)) & M32
    b ^= a
    b = (b - _rol(a, 25)) & M32
    c ^= b
    c = (c - _rol(b, 16)) & M32
    a ^= c
    a = (a - _rol(c, 4)) & M32
    b ^= a
    b = (b - _rol(a, 14)) & M32
    c ^= b
    c = (c - _rol(b, 24)) & M32
    return c


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = (a - c) & M32
    a ^= _rol(c, 4)
    c = (c + b) & M32
    b = (b - a) & M32
    b ^= _rol(a, 6)
    a = (a + c) & M32
    c = (c - b) & M32
    c ^= _rol(b, 8)
    b = (b + a) & M32
    a = (a - c) & M32
    a ^= _rol(c, 16)
    c = (c + b) & M32
    b = (b - a) & M32
    b ^= _rol(a, 19)
    a = (a + c) & M32
    c = (c - b) & M32
    c ^= _rol(b, 4)
    b = (b + a) & M32
    return a, b, c


def jhash2(words: list[int], initval: int) -> int:
    """The kernel's jhash2 over 32-bit words (include/linux/jhash.h)."""
    a = b = c = (0xDEADBEEF + (len(words) << 2) + initval) & M32
    k = list(words)
    while len(k) > 3:
        a, b, c = (a + k[0]) & M32, (b + k[1]) & M32, (c + k[2]) & M32
        a, b, c = _mix(a, b, c)
        k = k[3:]
    if not k:
        return c
    if len(k) == 3:
        c = (c + k[2]) & M32
    if len(k) >= 2:
        b = (b + k[1]) & M32
    a = (a + k[0]) & M32
    return _final(a, b, c)


def _words(addr: int, version: int) -> list[int]:
    """The address as the kernel's u32 words: network-order bytes read on a little-endian CPU."""
    raw = addr.to_bytes(4 if version == 4 else 16, "big")
    return [int.from_bytes(raw[i:i + 4], "little") for i in range(0, len(raw), 4)]


def best_ip(src: int, dst: int, lo: int, hi: int, version: int, persistent: bool) -> int:
    """find_best_ips_proto: the address the kernel picks from lo-hi for this source and destination."""
    sw, dw, low, high = _words(src, version), _words(dst, version), _words(lo, version), _words(hi, version)
    n = len(sw) - 1
    # The hash covers the whole address union (four words, an IPv4 address padded with zeros).
    j = jhash2(sw + [0] * (4 - len(sw)), 0 if persistent else dw[n])
    out: list[int] = []
    full = False
    for i in range(n + 1):
        if not full:
            mn = int.from_bytes(low[i].to_bytes(4, "little"), "big")
            mx = int.from_bytes(high[i].to_bytes(4, "little"), "big")
            dist = (mx - mn + 1) & M32
        else:
            mn, dist = 0, M32
        word = (mn + ((j * dist) >> 32)) & M32
        raw = int.from_bytes(word.to_bytes(4, "big"), "little")
        out.append(word)
        if raw != high[i]:
            full = True
        if not persistent:
            j ^= dw[i]
    value = 0
    for w in out:
        value = (value << 32) | w
    return value


def parse_nat_address(text: str, family_v6: bool) -> NatRange:
    """`ip[-ip][:port[-port][/base]]` (IPv6 as `[ip]-[ip]:port`)."""
    host, port_s = text, ""
    if text.startswith("["):
        end = text.rfind("]")
        host, rest = text[:end + 1], text[end + 1:]
        port_s = rest[1:] if rest.startswith(":") else ""
        host = host.replace("[", "").replace("]", "")
    elif not family_v6 and ":" in text:
        host, port_s = text.split(":", 1)
    try:
        if host:
            first, _, last = host.partition("-")
            lo = int(ipaddress.ip_address(first))
            hi = int(ipaddress.ip_address(last)) if last else lo
        else:
            lo = hi = -1  # ports only (REDIRECT-style `:port`)
    except ValueError as exc:
        raise OptionError(f"expected an address[:port] to translate to, found {text!r}") from exc
    if hi < lo:
        raise OptionError(f"expected an address range low-high, found {host!r}")
    if not port_s:
        return NatRange(lo, hi)
    ports, _, base_s = port_s.partition("/")
    p_lo_s, _, p_hi_s = ports.partition("-")
    p_lo = parse_port(p_lo_s)
    p_hi = parse_port(p_hi_s) if p_hi_s else p_lo
    if p_hi < p_lo:
        raise OptionError(f"expected a port range low-high, found {ports!r}")
    return NatRange(lo, hi, p_lo, p_hi, parse_port(base_s) if base_s else None)


def _unknown(st: State, ctx: TraceContext, why: str, matched: bool = True) -> State:
    rule = ctx.rule
    return st.assume(Assumption(rule.location if rule else None, rule.text if rule else "", why, matched))


@dataclass(eq=False)
class NatTarget(Expr):
    """DNAT, SNAT, MASQUERADE or REDIRECT: the rewrite a NAT rule makes."""

    name: str = ""
    options: list[Option] = field(default_factory=list)
    ip: int | None = None
    port: int | None = None
    # A range (or port shift) instead of the single ip/port above.
    range: NatRange | None = None
    random: bool = False
    persistent: bool = False

    def step(self, st: State, ctx: TraceContext) -> Iterable[Step]:
        if self.range is not None:
            yield from self._ranged(st, ctx)
            return
        if self.name in ("DNAT", "REDIRECT"):
            ip = self.ip
            if ip is None:
                ip = self._redirect_ip(st, ctx)
                if self.name == "REDIRECT" and st.hook != "OUTPUT":
                    # nf_nat_redirect: the input interface's first address; none (a bare veth) drops.
                    yield (_unknown(st, ctx, "REDIRECT goes to the input interface's first address, and drops "
                                             "when it has none; kpa does not know interface addresses", False),
                           Verdict(VerdictKind.DROP, detail="REDIRECT on an interface without an address"))
                    st = _unknown(st, ctx, "REDIRECT goes to the input interface's first address, taken as the "
                                           "node's first local address")
            port = self.port if self.port is not None else st.concrete("dport")
            rw = {"dst": ip} if port is None else {"dst": ip, "dport": port}
            yield st.rewrite(**rw).set(dnat=(ip, port)), Verdict(VerdictKind.ACCEPT, detail=self.name)
        elif self.name == "SNAT":
            assert self.ip is not None
            port = self.port
            rw = {"src": self.ip} if port is None else {"src": self.ip, "sport": port}
            yield st.rewrite(**rw).set(snat=(self.ip, port)), Verdict(VerdictKind.ACCEPT, detail="SNAT")
        else:
            yield st.set(masquerade=True), Verdict(VerdictKind.ACCEPT, detail="MASQUERADE")

    @staticmethod
    def _redirect_ip(st: State, ctx: TraceContext) -> int:
        # REDIRECT goes to the primary address of the incoming interface, or loopback.
        if st.hook == "OUTPUT":
            return int(ipaddress.ip_address("127.0.0.1" if st.version == 4 else "::1"))
        local = ctx.is_local(st.version)
        return local.min() if local else 0

    # -- ranges ------------------------------------------------------------
    def _ranged(self, st: State, ctx: TraceContext) -> Iterable[Step]:
        r = self.range
        assert r is not None
        if self.name == "REDIRECT" and st.hook != "OUTPUT":
            why = "REDIRECT goes to the input interface's first address, and drops when it has none"
            yield _unknown(st, ctx, why, False), Verdict(VerdictKind.DROP, detail="REDIRECT without an address")
            st = _unknown(st, ctx, why + "; taken as the node's first local address")
        dst_side = self.name in ("DNAT", "REDIRECT")
        addr_field, port_field = ("dst", "dport") if dst_side else ("src", "sport")
        verdict = Verdict(VerdictKind.ACCEPT, detail=self.name)
        for s, ip in self._addresses(st, ctx, r, dst_side):
            for s2, port in self._ports(s, ctx, r, port_field, dst_side):
                rw: dict[str, int] = {}
                if ip is not None:
                    rw[addr_field] = ip
                if port is not None:
                    rw[port_field] = port
                s3 = s2.rewrite(**rw) if rw else s2
                if port is None and dst_side:
                    port = s2.concrete(port_field)  # kept as it was
                if self.name == "MASQUERADE":
                    s3 = s3.set(masquerade=True)
                elif dst_side:
                    s3 = s3.set(dnat=(ip if ip is not None else (s2.concrete("dst") or 0), port))
                elif ip is not None or port is not None:
                    s3 = s3.set(snat=(ip if ip is not None else (s2.concrete("src") or 0), port))
                yield s3, verdict

    def _addresses(self, st: State, ctx: TraceContext, r: NatRange,
                   dst_side: bool) -> list[tuple[State, int | None]]:
        if self.name == "MASQUERADE":
            return [(st, None)]
        if r.ip_lo < 0:
            return [(st, self._redirect_ip(st, ctx))]
        if r.ip_lo == r.ip_hi:
            return [(st, r.ip_lo)]
        out: list[tuple[State, int | None]] = []
        rest = st
        if not dst_side:
            # SNAT keeps a source already inside the range (the original tuple is tried first).
            inside, outside = st.restrict("src", IntSet.range(r.ip_lo, r.ip_hi))
            if inside is not None:
                out.append((inside.note("SNAT: the source is already in the range and is kept"), None))
            if outside is None:
                return out
            rest = outside
        src, dst = rest.concrete("src"), rest.concrete("dst")
        if src is not None and dst is not None:
            ip = best_ip(src, dst, r.ip_lo, r.ip_hi, rest.version, self.persistent)
            return [*out, (rest.note(f"{self.name}: address chosen by the kernel's hash of source and "
                                     "destination"), ip)]
        why = (f"{self.name} picks one address of the range by a hash of the source and destination "
               "addresses; give both to compute it")
        if r.ip_hi - r.ip_lo + 1 > MAX_ADDRESS_CHOICES:
            return [*out, (_unknown(rest, ctx, why + " (address not known)"), None)]
        for ip in range(r.ip_lo, r.ip_hi + 1):
            out.append((_unknown(rest, ctx, f"{why}; assumed {ipaddress.ip_address(ip)}"), ip))
        return out

    def _ports(self, st: State, ctx: TraceContext, r: NatRange, port_field: str,
               dst_side: bool) -> list[tuple[State, int | None]]:
        if r.port_lo is None or r.port_hi is None:
            return [(st, None)]
        lo, hi = r.port_lo, r.port_hi
        size = hi - lo + 1
        if r.base is not None:
            cur = st.concrete(port_field)
            if cur is None:
                return [(_unknown(st, ctx, f"the port shift depends on the {port_field}, which is open"), None)]
            return [(st, lo + ((cur - r.base) & 0xFFFF) % size)]
        out: list[tuple[State, int | None]] = []
        if self.random:
            return [(st.note(f"{self.name}: port chosen at random in {lo}-{hi}"), None)]
        inside, outside = st.restrict(port_field, IntSet.range(lo, hi))
        if inside is not None:
            out.append((inside, None))
        if outside is not None:
            if dst_side:
                out.append((outside, lo))
            else:
                out.append((outside.note(f"{self.name}: source port chosen at random in {lo}-{hi}"), None))
        return out

    def render(self) -> list[str]:
        return ["-j", self.name] + [t for o in self.options for t in o.render()]


FLAGS = {"--random", "--random-fully", "--persistent"}


def _nat(name: str, addr_opt: str | None, opts: list[Option], ctx: ParseCtx) -> NatTarget:
    t = NatTarget(name=name, options=opts)
    found = False
    for o in opts:
        if addr_opt and o.name == addr_opt:
            if found:
                raise Unsupported(f"{name} with several {addr_opt} ranges is not modelled")
            found = True
            r = parse_nat_address(o.arg(), ctx.family.version == 6)
            if r.ip_lo == r.ip_hi and r.base is None and r.port_lo == r.port_hi:
                t.ip, t.port = r.ip_lo, r.port_lo
            else:
                t.range = r
        elif o.name == "--to-ports" and name in ("MASQUERADE", "REDIRECT"):
            spec = o.arg()
            r = parse_nat_address(":" + spec if ctx.family.version == 4 else "[]:" + spec, ctx.family.version == 6)
            if r.port_lo == r.port_hi and r.base is None:
                t.port = r.port_lo
            else:
                t.range = NatRange(-1, -1, r.port_lo, r.port_hi, r.base)
        elif o.name in ("--random", "--random-fully"):
            t.random = True
        elif o.name == "--persistent":
            t.persistent = True
        else:
            raise Unsupported(f"{name} option {o.name} is not modelled")
    if addr_opt and not found:
        raise OptionError(f"{name} expects {addr_opt} ADDRESS[:PORT]")
    if name == "MASQUERADE" and t.port is not None:
        t.range, t.port = NatRange(-1, -1, t.port, t.port), None
    return t


@target("DNAT")
def parse_dnat(opts: list[Option], ctx: ParseCtx) -> Expr:
    return _nat("DNAT", "--to-destination", opts, ctx)


@target("SNAT")
def parse_snat(opts: list[Option], ctx: ParseCtx) -> Expr:
    return _nat("SNAT", "--to-source", opts, ctx)


@target("MASQUERADE")
def parse_masquerade(opts: list[Option], ctx: ParseCtx) -> Expr:
    return _nat("MASQUERADE", None, opts, ctx)


@target("REDIRECT")
def parse_redirect(opts: list[Option], ctx: ParseCtx) -> Expr:
    return _nat("REDIRECT", None, opts, ctx)
