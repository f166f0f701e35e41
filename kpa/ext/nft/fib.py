"""fib (nft_fib): routing lookups; kpa models `fib saddr|daddr type`.

`fib daddr type local` is how kube-proxy recognises traffic to the node
itself (the nft form of `-m addrtype --dst-type LOCAL`). The node's local
addresses come from the trace context, as for addrtype. Lookups that return
an output interface, or mix in iif/oif/mark, depend on the routing table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kpa.ext.addrtype import MODELLED, type_set
from kpa.ext.base import Split, parts
from kpa.ext.nft.base import Key, UnmodelledKey, Value, names
from kpa.netfilter.packet import State, TraceContext


@dataclass(eq=False)
class FibTypeKey(Key):
    field: str = "dst"

    def validate(self, values: Sequence[Value]) -> None:
        types = frozenset(n.upper() for n in names(values))
        if types - MODELLED:
            raise UnmodelledKey(f"fib type {','.join(sorted(types - MODELLED)).lower()} depends on the routing table")

    def test(self, st: State, ctx: TraceContext, values: Sequence[Value]) -> Split:
        types = frozenset(n.upper() for n in names(values))
        return parts(*st.restrict(self.field, type_set(types, st.version, ctx.is_local(st.version))))


def fib_key(result: str, flags: Sequence[str]) -> Key:
    addr = [f for f in flags if f in ("saddr", "daddr")]
    extra = [f for f in flags if f not in ("saddr", "daddr")]
    if result != "type" or len(addr) != 1 or extra:
        raise UnmodelledKey(f"fib {' . '.join(flags)} {result} depends on the routing table")
    return FibTypeKey(dtype="fib_addrtype", text=f"fib {addr[0]} type", field="src" if addr[0] == "saddr" else "dst")
