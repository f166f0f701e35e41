"""DNAT, SNAT, MASQUERADE and REDIRECT (xt_nat, xt_MASQUERADE, xt_REDIRECT).

A NAT target rewrites the connection and ends the nat table's walk for this
hook, like ACCEPT. kpa records the rewrite on the state; later hooks see the
new destination, and the outcome reports it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from kpa.ext.base import Option, OptionError, ParseCtx, Unsupported, parse_port_range, target
from kpa.netfilter.model import Expr, Step, Verdict, VerdictKind
from kpa.netfilter.packet import State, TraceContext


def parse_nat_address(text: str, family_v6: bool) -> tuple[int, int | None, bool]:
    """`ip[-ip][:port[-port]]` (IPv6 as `[ip]:port`). Returns ip, port, is_range."""
    host, port_s = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_s = rest[1:] if rest.startswith(":") else ""
    elif not family_v6 and ":" in text:
        host, port_s = text.split(":", 1)
    is_range = "-" in host
    first = host.split("-", 1)[0]
    try:
        ip = int(ipaddress.ip_address(first))
    except ValueError as exc:
        raise OptionError(f"expected an address[:port] to translate to, found {text!r}") from exc
    port: int | None = None
    if port_s:
        ports = parse_port_range(port_s.replace("-", ":"))
        port = ports.min()
        is_range = is_range or ports.size() > 1
    return ip, port, is_range


@dataclass(eq=False)
class NatTarget(Expr):
    name: str = ""
    options: list[Option] = field(default_factory=list)
    ip: int | None = None
    port: int | None = None

    def step(self, st: State, ctx: TraceContext) -> Iterable[Step]:
        if self.name in ("DNAT", "REDIRECT"):
            ip = self.ip
            if ip is None:
                # REDIRECT goes to the primary address of the incoming interface, or loopback.
                if st.hook == "OUTPUT":
                    ip = int(ipaddress.ip_address("127.0.0.1" if st.version == 4 else "::1"))
                else:
                    local = ctx.is_local(st.version)
                    ip = local.min() if local else 0
                    st = st.note("REDIRECT: destination taken as the node's first local address")
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

    def render(self) -> list[str]:
        return ["-j", self.name] + [t for o in self.options for t in o.render()]


FLAGS = {"--random", "--random-fully", "--persistent"}


def _nat(name: str, addr_opt: str | None, opts: list[Option], ctx: ParseCtx) -> NatTarget:
    t = NatTarget(name=name, options=opts)
    for o in opts:
        if addr_opt and o.name == addr_opt:
            ip, port, is_range = parse_nat_address(o.arg(), ctx.family.version == 6)
            if is_range:
                raise Unsupported(f"{name} to an address or port range is not modelled")
            t.ip, t.port = ip, port
        elif o.name == "--to-ports" and name in ("MASQUERADE", "REDIRECT"):
            ports = parse_port_range(o.arg().replace("-", ":"))
            if name == "REDIRECT":
                t.port = ports.min()
        elif o.name not in FLAGS:
            raise Unsupported(f"{name} option {o.name} is not modelled")
    if addr_opt and t.ip is None:
        raise OptionError(f"{name} expects {addr_opt} ADDRESS[:PORT]")
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
