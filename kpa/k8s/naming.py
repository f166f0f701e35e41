"""Chain names kube-proxy derives from Service ports and endpoints.

kube-proxy never stores a mapping from its hashed chain names back to the
Service they serve; the names are pure functions of the Service port identity.
kpa recomputes them here so a dump can be correlated with cluster objects.

iptables mode (pkg/proxy/iptables): ``PREFIX + base32(sha256(spn + proto))[:16]``
where ``spn`` is the ServicePortName string (``ns/name`` or ``ns/name:port``)
and ``proto`` is the lower-case protocol. Endpoint chains add the endpoint
string (``ip:port``, IPv6 bracketed) to the hashed input.

nftables mode (pkg/proxy/nftables): ``prefix + HASH8 + "-" + readable`` where
readable is ``ns/name/proto/port`` (plus ``__ip/port`` for endpoints, with the
colons of IPv6 addresses turned into dots) and HASH8 is the first 8 base32
characters of sha256(readable).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress
import re
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from kpa.k8s.objects import ClusterObjects

IPTABLES_PREFIXES: Final[dict[str, str]] = {
    "svc": "KUBE-SVC-",
    "svl": "KUBE-SVL-",
    "ext": "KUBE-EXT-",
    "fw": "KUBE-FW-",
    "sep": "KUBE-SEP-",
}

NFT_PREFIXES: Final[dict[str, str]] = {
    "service": "service-",
    "local": "local-",
    "external": "external-",
    "firewall": "firewall-",
    "endpoint": "endpoint-",
    "affinity": "affinity-",
}

# knftables.NameLengthMax is 256; kube-proxy reserves 16 for the prefix.
_NFT_NAME_LENGTH_MAX: Final = 256
_NFT_BASE_LENGTH_MAX: Final = _NFT_NAME_LENGTH_MAX - 16

IptablesChainKind = Literal["svc", "svl", "ext", "fw", "sep"]

_IPTABLES_SERVICE_CHAIN_RE: Final = re.compile(r"^KUBE-(SVC|SVL|EXT|FW|SEP)-([A-Z2-7]{16})$")


def _b32_sha256(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return base64.b32encode(digest).decode("ascii")


_B32_PAIRS: Final = tuple(a + b for a in "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567" for b in "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")


def _b32_sha256_16(text: str) -> str:
    """The first 16 characters of `_b32_sha256(text)`: base32 of the digest's first 10 bytes."""
    digest = hashlib.sha256(text.encode()).digest()
    # Two 40-bit halves, eight characters each: small ints shift and mask faster than one of 80 bits.
    a = int.from_bytes(digest[:5], "big")
    b = int.from_bytes(digest[5:10], "big")
    t = _B32_PAIRS
    return (t[a >> 30] + t[(a >> 20) & 1023] + t[(a >> 10) & 1023] + t[a & 1023]
            + t[b >> 30] + t[(b >> 20) & 1023] + t[(b >> 10) & 1023] + t[b & 1023])


def service_port_name(namespace: str, name: str, port_name: str = "") -> str:
    """kube-proxy's ServicePortName.String(): ``ns/name`` plus ``:port`` if named."""
    if port_name:
        return f"{namespace}/{name}:{port_name}"
    return f"{namespace}/{name}"


def split_service_port_name(svc_port_name: str) -> tuple[str, str, str]:
    """Inverse of :func:`service_port_name`: ``(namespace, name, port_name)``."""
    namespaced, _, port_name = svc_port_name.partition(":")
    namespace, sep, name = namespaced.partition("/")
    if not sep:
        raise ValueError(f"not a ServicePortName: {svc_port_name!r}")
    return namespace, name, port_name


def endpoint_string(ip: str, port: int) -> str:
    """The endpoint form kube-proxy hashes and DNATs to (net.JoinHostPort)."""
    if ":" in ip:
        return f"[{ip}]:{port}"
    return f"{ip}:{port}"


@functools.lru_cache(maxsize=65536)
def port_proto_hash(svc_port_name: str, protocol: str) -> str:
    """kube-proxy's portProtoHash: 16 base32 characters of sha256(spn + proto)."""
    return _b32_sha256_16(svc_port_name + protocol.lower())


def svc_chain(svc_port_name: str, protocol: str) -> str:
    """``KUBE-SVC-…``: the Cluster-traffic-policy chain of a Service port."""
    return "KUBE-SVC-" + port_proto_hash(svc_port_name, protocol)


def svl_chain(svc_port_name: str, protocol: str) -> str:
    """``KUBE-SVL-…``: the Local-traffic-policy chain of a Service port."""
    return "KUBE-SVL-" + port_proto_hash(svc_port_name, protocol)


def ext_chain(svc_port_name: str, protocol: str) -> str:
    """``KUBE-EXT-…``: the external-destinations chain of a Service port."""
    return "KUBE-EXT-" + port_proto_hash(svc_port_name, protocol)


def fw_chain(svc_port_name: str, protocol: str) -> str:
    """``KUBE-FW-…``: the loadBalancerSourceRanges chain of a Service port."""
    return "KUBE-FW-" + port_proto_hash(svc_port_name, protocol)


def sep_chain(svc_port_name: str, protocol: str, endpoint: str) -> str:
    """``KUBE-SEP-…``: the per-endpoint DNAT chain; endpoint is ``ip:port``."""
    return "KUBE-SEP-" + _b32_sha256_16(svc_port_name + protocol.lower() + endpoint)


def endpoint_chain_names(objects: ClusterObjects) -> dict[tuple[str, str, str], str]:
    """`sep_chain` of every endpoint of every Service port in ``objects`` that kube-proxy gives chains,
    by (Service port name, lower-case protocol, endpoint string): the names a comparison of the objects
    with an iptables-mode dump asks for. A memo of `sep_chain`, so right for any objects."""
    out: dict[tuple[str, str, str], str] = {}
    for svc in objects.services:
        if svc.headless or svc.type == "ExternalName":
            continue
        for sp in svc.ports:
            spn = service_port_name(svc.namespace, svc.name, sp.name)
            proto = sp.protocol.lower()
            for address, port in objects.endpoint_states(svc.namespace, svc.name, sp.name, sp.protocol):
                endpoint = endpoint_string(address, port)
                out[(spn, proto, endpoint)] = sep_chain(spn, proto, endpoint)
    return out


def iptables_chain_kind(chain: str) -> IptablesChainKind | None:
    """Which per-service chain family a name belongs to, or None."""
    match = _IPTABLES_SERVICE_CHAIN_RE.match(chain)
    if match is None:
        return None
    kind = match.group(1).lower()
    assert kind in IPTABLES_PREFIXES
    return kind  # type: ignore[return-value]


def iptables_service_chains(svc_port_name: str, protocol: str) -> dict[str, str]:
    """All per-Service-port chain names, keyed by kind (svc, svl, ext, fw)."""
    suffix = port_proto_hash(svc_port_name, protocol)
    return {kind: IPTABLES_PREFIXES[kind] + suffix for kind in ("svc", "svl", "ext", "fw")}


def _nft_hash_and_truncate(readable: str) -> str:
    name = _b32_sha256_16(readable)[:8] + "-" + readable
    if len(name) > _NFT_BASE_LENGTH_MAX:
        name = name[: _NFT_BASE_LENGTH_MAX - 3] + "..."
    return name


def _nft_readable(svc_port_name: str, protocol: str) -> str:
    namespace, name, port_name = split_service_port_name(svc_port_name)
    return f"{namespace}/{name}/{protocol.lower()}/{port_name}"


def nft_service_base(svc_port_name: str, protocol: str) -> str:
    """nftables servicePortChainNameBase, e.g. ``ULMVA6XW-ns1/svc1/tcp/p80``."""
    return _nft_hash_and_truncate(_nft_readable(svc_port_name, protocol))


def nft_endpoint_base(svc_port_name: str, protocol: str, endpoint: str) -> str:
    """nftables servicePortEndpointChainNameBase (``…__ip/port``)."""
    host, port = _split_host_port(endpoint)
    # Chain names may not contain ':', so IPv6 colons become dots.
    host = host.replace(":", ".")
    return _nft_hash_and_truncate(f"{_nft_readable(svc_port_name, protocol)}__{host}/{port}")


def nft_service_chain(svc_port_name: str, protocol: str) -> str:
    return "service-" + nft_service_base(svc_port_name, protocol)


def nft_local_chain(svc_port_name: str, protocol: str) -> str:
    return "local-" + nft_service_base(svc_port_name, protocol)


def nft_external_chain(svc_port_name: str, protocol: str) -> str:
    return "external-" + nft_service_base(svc_port_name, protocol)


def nft_firewall_chain(svc_port_name: str, protocol: str) -> str:
    return "firewall-" + nft_service_base(svc_port_name, protocol)


def nft_endpoint_chain(svc_port_name: str, protocol: str, endpoint: str) -> str:
    return "endpoint-" + nft_endpoint_base(svc_port_name, protocol, endpoint)


def nft_affinity_set(svc_port_name: str, protocol: str, endpoint: str) -> str:
    """Name of the per-endpoint sessionAffinity set in nftables mode."""
    return "affinity-" + nft_endpoint_base(svc_port_name, protocol, endpoint)


def _split_host_port(endpoint: str) -> tuple[str, str]:
    if endpoint.startswith("["):
        host, sep, port = endpoint[1:].partition("]:")
        if not sep:
            raise ValueError(f"bad endpoint {endpoint!r}")
        return host, port
    host, sep, port = endpoint.rpartition(":")
    if not sep:
        raise ValueError(f"bad endpoint {endpoint!r}")
    ipaddress.ip_address(host)
    return host, port
