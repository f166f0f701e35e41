"""One ruleset from a host's iptables-save and `nft list ruleset` dumps.

On an iptables-nft host the iptables tables are nftables tables too, so
`nft list ruleset` shows them again, but lossily: iptables extensions appear
as opaque `xt match "recent"` without their options. kpa therefore takes
those tables from iptables-save, the native nftables tables (kube-proxy's
nftables mode, firewalld, ...) from the nft dump, and never counts a table
twice. iptables-legacy tables live outside nftables, so an nft table of the
same name beside them is a different table and both are kept.
"""

from __future__ import annotations

from kpa.netfilter.model import Family, Ruleset, Table


def _where(t: Table) -> str:
    return f" ({t.location.file})" if t.location else ""


def combine(iptables: list[Ruleset], nft: list[Ruleset]) -> Ruleset:
    out = Ruleset()
    seen: dict[tuple[Family, str], Table] = {}
    for rs in iptables:
        out.warnings.extend(rs.warnings)
        for t in rs.tables:
            key = (t.family, t.name)
            if key in seen:
                out.warnings.append(f"table {t.family.value} {t.name}{_where(t)} given twice in iptables-save "
                                    f"input; kept the first{_where(seen[key])}")
                continue
            t.source = t.source or "iptables"
            seen[key] = t
            out.tables.append(t)
    nft_seen: dict[tuple[Family, str], Table] = {}
    for rs in nft:
        out.warnings.extend(rs.warnings)
        for t in rs.tables:
            key = (t.family, t.name)
            if key in nft_seen:
                out.warnings.append(f"table {t.family.value} {t.name}{_where(t)} given twice in nft input; "
                                    f"kept the first{_where(nft_seen[key])}")
                continue
            nft_seen[key] = t
            ipt = seen.get(key)
            if ipt is not None and ipt.source != "iptables-legacy":
                # The same kernel table: iptables-save shows it with every option.
                ipt.managed_by_iptables = True
                out.warnings.append(f"table {t.family.value} {t.name} from nft{_where(t)} dropped: it is the "
                                    f"iptables-nft table already read from iptables-save{_where(ipt)}")
                continue
            if t.managed_by_iptables:
                t.source = "iptables-nft (nft list ruleset)"
                out.warnings.append(f"table {t.family.value} {t.name} is managed by iptables-nft but has no "
                                    "iptables-save dump; read from nft, where iptables extensions are opaque")
            else:
                t.source = "nft"
            out.tables.append(t)
    return out


__all__ = ["combine"]
