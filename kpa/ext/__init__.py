"""Netfilter extensions: one module per match or target, parsing and semantics side by side."""

from kpa.ext import (  # noqa: F401  (importing a module registers its parsers)
    addrtype,
    comment,
    connlimit,
    connmark,
    conntrack,
    ct,
    icmp,
    iprange,
    ipset,
    limit,
    mac,
    mark,
    multiport,
    nat,
    nfacct,
    nfqueue,
    owner,
    passive,
    physdev,
    policy,
    recent,
    reject,
    rpfilter,
    socket,
    statistic,
    tcp,
)
from kpa.ext.base import MATCHES, TARGETS

__all__ = ["MATCHES", "TARGETS"]
