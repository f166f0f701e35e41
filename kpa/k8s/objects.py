"""The parts of Kubernetes API objects that decide what kube-proxy programs on a node.

Objects come from `kubectl get -o json|yaml` dumps (see `load_objects`) or from a live API
server (`kpa.k8s.live`); both paths convert raw JSON-shaped mappings with the same
functions here, so defaulting and validation behave identically.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import itertools
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from kpa.errors import InputError
from kpa.findings import IGNORE_ANNOTATION
from kpa.limits import check_nesting, check_yaml_node, gunzip_bounded, read_bounded

if TYPE_CHECKING:
    import yaml

    from kpa.k8s import blockyaml
    from kpa.k8s.netpol import NetworkPolicy

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ZONE_LABEL = "topology.kubernetes.io/zone"
# Default ClientIP affinity timeout the API server fills in (3 hours).
DEFAULT_AFFINITY_TIMEOUT = 10800
OBJECT_FILE_SUFFIXES = (".yaml", ".yml", ".json")


# An IPv4 address already in the form ipaddress prints: four decimal octets 0-255 without
# leading zeros. Such text is its own canonical form, with no need to parse it.
_CANONICAL_V4 = re.compile(r"(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)")


def canonical_ip(text: str) -> str:
    """Return `text` in canonical IP notation, so IPv6 spellings compare equal."""
    if _CANONICAL_V4.fullmatch(text):
        return text
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return text


def ip_family(address: str) -> int | None:
    """4 or 6 for an IP address, None for anything else (e.g. an FQDN)."""
    try:
        return ipaddress.ip_address(address).version
    except ValueError:
        return None


@dataclass(frozen=True)
class ObjectRef:
    """A Kubernetes object by kind, namespace (None for cluster-scoped kinds) and name."""

    kind: str
    namespace: str | None
    name: str


@dataclass(frozen=True)
class ServicePort:
    """One port of a Service, as its spec gives it."""

    name: str
    protocol: str
    port: int
    # A number, or the name of a container port resolved per endpoint by the slice controller.
    target_port: int | str
    node_port: int | None


@dataclass(frozen=True)
class LoadBalancerIngress:
    """One load-balancer ingress point from a Service's status."""

    ip: str | None
    hostname: str | None
    # "VIP" (the default) or "Proxy"; kube-proxy skips programming Proxy-mode IPs.
    ip_mode: str | None


@dataclass(frozen=True)
class Service:
    """A Service: what kube-proxy reads of its spec and status, and where it was read."""

    namespace: str
    name: str
    type: str
    cluster_ips: tuple[str, ...]
    headless: bool
    ports: tuple[ServicePort, ...]
    external_ips: tuple[str, ...] = ()
    load_balancer_ingress: tuple[LoadBalancerIngress, ...] = ()
    load_balancer_source_ranges: tuple[str, ...] = ()
    external_traffic_policy: str = "Cluster"
    internal_traffic_policy: str = "Cluster"
    session_affinity: str = "None"
    session_affinity_timeout: int | None = None
    ip_families: tuple[str, ...] = ()
    health_check_node_port: int | None = None
    has_selector: bool = True
    external_name: str | None = None
    #: Finding codes its `kpa.io/ignore` annotation silences.
    ignore_codes: frozenset[str] = frozenset()
    #: FILE:LINE of the object in the file it was read from, if known.
    location: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def load_balancer_ips(self) -> tuple[str, ...]:
        return tuple(i.ip for i in self.load_balancer_ingress if i.ip)

    def port(self, name: str, protocol: str | None = None) -> ServicePort | None:
        for service_port in self.ports:
            if service_port.name == name and protocol in (None, service_port.protocol):
                return service_port
        return None


@dataclass(frozen=True)
class EndpointConditions:
    """An endpoint's conditions, with the API's defaults for missing ones applied."""

    ready: bool
    serving: bool
    terminating: bool


@dataclass(frozen=True)
class Endpoint:
    """One endpoint of an EndpointSlice: its addresses, conditions, node, zone and target."""

    addresses: tuple[str, ...]
    conditions: EndpointConditions
    node_name: str | None = None
    zone: str | None = None
    hint_zones: tuple[str, ...] = ()
    target_ref: ObjectRef | None = None


@dataclass(frozen=True)
class EndpointPort:
    """One port of an EndpointSlice, named as the Service port it serves."""

    name: str
    protocol: str
    port: int | None


@dataclass(frozen=True)
class EndpointSlice:
    """An EndpointSlice (or legacy Endpoints converted to one): a Service's endpoints and ports."""

    namespace: str
    name: str
    service_name: str | None
    address_type: str
    endpoints: tuple[Endpoint, ...]
    ports: tuple[EndpointPort, ...]
    # True when converted from a legacy v1 Endpoints object rather than read as a slice.
    from_endpoints: bool = False


@dataclass(frozen=True)
class ServiceEndpoint:
    """One backend of one service port, merged across the service's slices."""

    address: str
    port: int
    protocol: str
    ready: bool
    serving: bool
    terminating: bool
    node_name: str | None
    zone: str | None
    hint_zones: tuple[str, ...]
    target_ref: ObjectRef | None


@dataclass(frozen=True)
class Node:
    """A Node: its addresses, Pod CIDRs and zone."""

    name: str
    internal_ips: tuple[str, ...]
    external_ips: tuple[str, ...]
    pod_cidrs: tuple[str, ...]
    zone: str | None = None


@dataclass(frozen=True)
class ContainerPort:
    """A port a Pod's container declares; NetworkPolicy resolves named ports against these."""

    name: str
    port: int
    protocol: str


@dataclass(frozen=True)
class Pod:
    """A Pod: where it runs, its addresses, and what NetworkPolicy reads of it."""

    namespace: str
    name: str
    node_name: str | None
    pod_ips: tuple[str, ...]
    host_network: bool
    phase: str | None = None
    # Sorted (key, value) pairs, so pods stay hashable.
    labels: tuple[tuple[str, str], ...] = ()
    container_ports: tuple[ContainerPort, ...] = ()
    source: str | None = None
    line: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


#: The label the API server puts on every Namespace (immutable, equal to its name).
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class Namespace:
    """A Namespace and its labels (NetworkPolicy's namespace selectors read them)."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()
    source: str | None = None
    line: int | None = None

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


class ClusterObjects:
    """The cluster objects kpa knows about, with the lookups tracing needs."""

    def __init__(
        self,
        services: Iterable[Service] = (),
        endpoint_slices: Iterable[EndpointSlice] = (),
        nodes: Iterable[Node] = (),
        pods: Iterable[Pod] = (),
        warnings: Iterable[str] = (),
        ignored_kinds: Mapping[str, int] | None = None,
        namespaces: Iterable[Namespace] = (),
        network_policies: Iterable[NetworkPolicy] = (),
        *,
        packed_slices: Sequence[_PackedSlice] = (),
    ) -> None:
        """`packed_slices`: the slices as tuples (as the file readers make them) instead of `endpoint_slices`."""
        # Later duplicates replace earlier ones, as if the later file were applied last.
        self._services = {s.key: s for s in services}
        self._slices = {(s.namespace, s.name, s.from_endpoints): s for s in endpoint_slices}
        # The slices as plain tuples, while they are (they are built when first asked for as
        # such; endpoint questions are answered from the tuples); then _slices is empty.
        self._packed: _PackedSlices | None = None
        if packed_slices:
            if self._slices:
                raise ValueError("give the slices either built or packed")
            self._packed = _packed_from_records(packed_slices)
        self._nodes = {n.name: n for n in nodes}
        self._pods = {(p.namespace, p.name): p for p in pods}
        self._pod_loader: Callable[[], dict[tuple[str, str], Pod]] | None = None
        self._settler: Callable[[], None] | None = None
        self._namespaces = {n.name: n for n in namespaces}
        self._policies = {(p.namespace, p.name): p for p in network_policies}
        self.warnings: list[str] = list(warnings)
        #: Optional resources the API server would not list for kpa (RBAC), e.g. for lint.
        self.unlisted: list[str] = []
        self.ignored_kinds: Counter[str] = Counter(ignored_kinds or {})
        self._index()

    def _index(self) -> None:
        self._by_cluster_ip: dict[str, Service] = {}
        self._by_external_ip: dict[str, list[Service]] = {}
        self._by_lb_ip: dict[str, list[Service]] = {}
        for service in self._services.values():
            for ip in service.cluster_ips:
                self._by_cluster_ip[canonical_ip(ip)] = service
            for ip in service.external_ips:
                self._by_external_ip.setdefault(canonical_ip(ip), []).append(service)
            for ip in service.load_balancer_ips:
                self._by_lb_ip.setdefault(canonical_ip(ip), []).append(service)

        slices: dict[tuple[str, str], list[EndpointSlice]] = {}
        for endpoint_slice in self._slices.values():  # (none while packed)
            if endpoint_slice.service_name is not None:
                key = (endpoint_slice.namespace, endpoint_slice.service_name)
                slices.setdefault(key, []).append(endpoint_slice)
        # kube-proxy reads only EndpointSlices; converted legacy Endpoints stand in only for
        # services that have no slices at all (e.g. a dump taken with an old kubectl).
        self._slices_by_service: dict[tuple[str, str], tuple[EndpointSlice, ...]] = {}
        for key, found in slices.items():
            real = [s for s in found if not s.from_endpoints]
            chosen = real or found
            self._slices_by_service[key] = tuple(sorted(chosen, key=lambda s: s.name))

        # Pods by address: worked out when first asked for (lint with a node name never asks).
        self._pod_by_ip: dict[str, Pod] | None = None
        self._node_by_ip: dict[str, Node] = {}
        for node in self._nodes.values():
            for ip in (*node.external_ips, *node.internal_ips):
                self._node_by_ip[canonical_ip(ip)] = node

    def _index_pods(self) -> dict[str, Pod]:
        by_ip: dict[str, Pod] = {}
        # Host-network pods share their node's IP; a pod with its own IP is the better answer.
        for pod in sorted(self._pods_now().values(), key=lambda p: not p.host_network):
            for ip in pod.pod_ips:
                by_ip[canonical_ip(ip)] = pod
        self._pod_by_ip = by_ip
        return by_ip

    def detach_pods(self) -> dict[tuple[str, str], Pod]:
        """Take the Pods out (to hand them over apart from the rest); see `attach_pods`."""
        pods, self._pods, self._pod_by_ip = self._pods_now(), {}, None
        return pods

    def attach_pods(self, load: Callable[[], dict[tuple[str, str], Pod]],
                    settle: Callable[[], None] | None = None) -> None:
        """Put back Pods that `detach_pods` took, read by `load` when first asked for.

        `settle`, if given, is what `settle()` runs: it raises if these objects turn out not
        to be what reading their files gives (see kpa.k8s.background).
        """
        self._pod_loader = load
        self._settler = settle

    def settle(self) -> None:
        """Make sure these objects are whole: raises the input error of their files, if there is one.

        Only objects handed over early by a second process (kpa.k8s.background) can still
        raise here; a command calls this before it reports anything.
        """
        if self._settler is not None:
            settle, self._settler = self._settler, None
            settle()

    def _pods_now(self) -> dict[tuple[str, str], Pod]:
        if self._pod_loader is not None:
            load, self._pod_loader = self._pod_loader, None
            self._pods, self._pod_by_ip = load(), None
        return self._pods

    @property
    def services(self) -> tuple[Service, ...]:
        return tuple(self._services.values())

    def __getstate__(self) -> dict[str, Any]:
        """Pickled with the slices as plain tuples, which pickle and unpickle several times faster
        than the dataclasses (and apart, see `_pickled_plainly`); they become EndpointSlices again
        when first asked for as such."""
        state = self.__dict__.copy()
        packed = self._packed
        if packed is None:
            packed = _pack_slices(self._slices, self._slices_by_service)
            state["_slices"], state["_slices_by_service"] = {}, {}
        state["_packed"] = _pickled_plainly(packed)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        import pickle

        state["_packed"] = pickle.loads(state["_packed"])  # always bytes: see __getstate__
        self.__dict__.update(state)

    def _unpack(self) -> None:
        packed, self._packed = self._packed, None
        if packed is not None:
            self._slices, self._slices_by_service = _unpack_slices(packed)

    @property
    def endpoint_slices(self) -> tuple[EndpointSlice, ...]:
        self._unpack()
        return tuple(self._slices.values())

    @property
    def nodes(self) -> tuple[Node, ...]:
        return tuple(self._nodes.values())

    @property
    def pods(self) -> tuple[Pod, ...]:
        return tuple(self._pods_now().values())

    @property
    def namespaces(self) -> tuple[Namespace, ...]:
        return tuple(self._namespaces.values())

    @property
    def network_policies(self) -> tuple[NetworkPolicy, ...]:
        return tuple(self._policies.values())

    def namespace(self, name: str) -> Namespace | None:
        return self._namespaces.get(name)

    def pod(self, namespace: str, name: str) -> Pod | None:
        return self._pods_now().get((namespace, name))

    def network_policy(self, namespace: str, name: str) -> NetworkPolicy | None:
        return self._policies.get((namespace, name))

    def merged(self, other: ClusterObjects) -> ClusterObjects:
        """A new container with `other`'s objects layered over this one's."""
        return ClusterObjects(
            (*self.services, *other.services),
            (*self.endpoint_slices, *other.endpoint_slices),
            (*self.nodes, *other.nodes),
            (*self.pods, *other.pods),
            (*self.warnings, *other.warnings),
            self.ignored_kinds + other.ignored_kinds,
            (*self.namespaces, *other.namespaces),
            (*self.network_policies, *other.network_policies),
        )

    def service(self, namespace: str, name: str) -> Service | None:
        return self._services.get((namespace, name))

    def service_by_cluster_ip(self, ip: str) -> Service | None:
        return self._by_cluster_ip.get(canonical_ip(ip))

    def services_by_external_ip(self, ip: str) -> tuple[Service, ...]:
        """Several services may share an external IP on different ports."""
        return tuple(self._by_external_ip.get(canonical_ip(ip), ()))

    def services_by_load_balancer_ip(self, ip: str) -> tuple[Service, ...]:
        return tuple(self._by_lb_ip.get(canonical_ip(ip), ()))

    def slices_for_service(self, namespace: str, name: str) -> tuple[EndpointSlice, ...]:
        self._unpack()
        return self._slices_by_service.get((namespace, name), ())

    def endpoints_for(
        self,
        namespace: str,
        name: str,
        port_name: str = "",
        protocol: str | None = None,
        family: int | None = None,
    ) -> tuple[ServiceEndpoint, ...]:
        """Backends of the service port named `port_name`, merged across slices.

        An address listed by several slices appears once; like kube-proxy, a ready copy
        wins over a not-ready one. Sorted by address then port for stable output.
        """
        merged = self.endpoints_by_address(namespace, name, port_name, protocol, family)
        return tuple(merged[k] for k in sorted(merged, key=_address_sort_key))

    def endpoints_by_address(
        self,
        namespace: str,
        name: str,
        port_name: str = "",
        protocol: str | None = None,
        family: int | None = None,
    ) -> dict[tuple[str, int], ServiceEndpoint]:
        """`endpoints_for`'s backends by (address, port), unsorted."""
        if self._packed is not None:
            return _packed_endpoints(self._packed, namespace, name, port_name, protocol, family)
        merged: dict[tuple[str, int], ServiceEndpoint] = {}
        for endpoint_slice in self.slices_for_service(namespace, name):
            if endpoint_slice.address_type not in ("IPv4", "IPv6"):
                continue  # kube-proxy ignores FQDN slices
            if family is not None and endpoint_slice.address_type != f"IPv{family}":
                continue
            for slice_port in endpoint_slice.ports:
                if slice_port.name != port_name or slice_port.port is None:
                    continue
                if protocol is not None and slice_port.protocol != protocol:
                    continue
                for endpoint in endpoint_slice.endpoints:
                    if not endpoint.addresses:
                        continue
                    # kube-proxy uses only the first address of an endpoint.
                    address = canonical_ip(endpoint.addresses[0])
                    key = (address, slice_port.port)
                    if key in merged and not endpoint.conditions.ready:
                        continue
                    merged[key] = ServiceEndpoint(
                        address=address,
                        port=slice_port.port,
                        protocol=slice_port.protocol,
                        ready=endpoint.conditions.ready,
                        serving=endpoint.conditions.serving,
                        terminating=endpoint.conditions.terminating,
                        node_name=endpoint.node_name,
                        zone=endpoint.zone,
                        hint_zones=endpoint.hint_zones,
                        target_ref=endpoint.target_ref,
                    )
        return merged

    def endpoint_states(
        self,
        namespace: str,
        name: str,
        port_name: str = "",
        protocol: str | None = None,
        family: int | None = None,
    ) -> dict[tuple[str, int], EndpointState]:
        """`endpoints_by_address` as (ready, serving, terminating, node name, target) of each backend.

        The same keys, in the same order, and those fields of the same backends (the target
        as (kind, namespace, name), or None), read without building a `ServiceEndpoint`.
        """
        if self._packed is None:
            return {key: (e.ready, e.serving, e.terminating, e.node_name,
                          None if (r := e.target_ref) is None else (r.kind, r.namespace, r.name))
                    for key, e in self.endpoints_by_address(namespace, name, port_name, protocol, family).items()}
        return _packed_states(self._packed, namespace, name, port_name, protocol, family)

    def pod_by_ip(self, ip: str) -> Pod | None:
        self._pods_now()
        by_ip = self._pod_by_ip if self._pod_by_ip is not None else self._index_pods()
        return by_ip.get(canonical_ip(ip))

    def node(self, name: str) -> Node | None:
        return self._nodes.get(name)

    def node_by_ip(self, ip: str) -> Node | None:
        return self._node_by_ip.get(canonical_ip(ip))


def _address_sort_key(key: tuple[str, int]) -> tuple[int, int, int]:
    address, port = key
    if _CANONICAL_V4.fullmatch(address):
        a, b, c, d = address.split(".")
        return (4, (int(a) << 24) | (int(b) << 16) | (int(c) << 8) | int(d), port)
    try:
        parsed = ipaddress.ip_address(address)
        return (parsed.version, int(parsed), port)
    except ValueError:
        return (0, 0, port)


# What `ClusterObjects.endpoint_states` gives of a backend: ready, serving, terminating, node name,
# and the target as (kind, namespace, name).
EndpointState = tuple[bool, bool, bool, str | None, tuple[str, str | None, str] | None]

# An EndpointSlice as plain tuples: (namespace, name, service_name, address_type, from_endpoints,
# ports as (name, protocol, port), endpoints as (addresses, ready, serving, terminating,
# node_name, zone, hint_zones, target_ref as (kind, namespace, name) or None)).
_PackedSlice = tuple[str, str, str | None, str, bool, tuple[tuple[str, str, int | None], ...],
                     tuple[tuple[tuple[str, ...], bool, bool, bool, str | None, str | None, tuple[str, ...],
                                 tuple[str, str | None, str] | None], ...]]
# Every slice, then each Service's chosen slices as positions in that list.
_PackedSlices = tuple[list[_PackedSlice], dict[tuple[str, str], tuple[int, ...]]]


def _pack_slice(s: EndpointSlice, one: Callable[[Any, Any], Any] = lambda text, _: text) -> _PackedSlice:
    """One slice as tuples; `one(text, text)` may give an equal string seen before (see _pack_slices)."""
    return (one(s.namespace, s.namespace), s.name, one(s.service_name, s.service_name),
            one(s.address_type, s.address_type), s.from_endpoints,
            tuple((one(p.name, p.name), one(p.protocol, p.protocol), p.port) for p in s.ports),
            tuple((e.addresses, e.conditions.ready, e.conditions.serving, e.conditions.terminating,
                   one(e.node_name, e.node_name), one(e.zone, e.zone), e.hint_zones,
                   None if (r := e.target_ref) is None else (one(r.kind, r.kind), one(r.namespace, r.namespace), r.name))
                  for e in s.endpoints))


def _pack_slices(slices: dict[tuple[str, str, bool], EndpointSlice],
                 by_service: dict[tuple[str, str], tuple[EndpointSlice, ...]]) -> _PackedSlices:
    # Equal strings (node names, zones, namespaces, kinds) become one object, which pickle then writes once.
    same: dict[Any, Any] = {None: None}
    records: list[_PackedSlice] = []
    position: dict[int, int] = {}
    for s in slices.values():
        position[id(s)] = len(records)
        records.append(_pack_slice(s, same.setdefault))
    return records, {key: tuple(position[id(s)] for s in chosen) for key, chosen in by_service.items()}


def _pickled_plainly(packed: _PackedSlices) -> bytes:
    """Packed slices pickled without pickle's memo: they are tuples, lists and dicts of strings and
    numbers, with no cycle and no object that needs to stay one object, and recording each of their
    many small objects in the memo takes most of the time pickling them otherwise takes."""
    import io
    import pickle

    out = io.BytesIO()
    pickler = pickle.Pickler(out, protocol=pickle.HIGHEST_PROTOCOL)
    with contextlib.suppress(AttributeError):  # a Python without fast mode pickles with the memo
        pickler.fast = True
    pickler.dump(packed)
    return out.getvalue()


def _packed_from_records(records: Iterable[_PackedSlice]) -> _PackedSlices:
    """What ClusterObjects keeps of packed slices: each (namespace, name, from_endpoints) once, the
    later one winning in the earlier one's place, and each Service's chosen slices, as for built ones."""
    kept = list({(r[0], r[1], r[4]): r for r in records}.values())
    found: dict[tuple[str, str], list[int]] = {}
    for index, r in enumerate(kept):
        if r[2] is not None:
            found.setdefault((r[0], r[2]), []).append(index)
    by_service: dict[tuple[str, str], tuple[int, ...]] = {}
    for key, indices in found.items():
        # kube-proxy reads only EndpointSlices; converted legacy Endpoints stand in only for
        # services that have no slices at all (e.g. a dump taken with an old kubectl).
        real = [i for i in indices if not kept[i][4]]
        by_service[key] = tuple(sorted(real or indices, key=lambda i: kept[i][1]))
    return kept, by_service


def _unpacked_slice(record: _PackedSlice) -> EndpointSlice:
    namespace, name, service_name, address_type, from_endpoints, ports, endpoints = record
    return EndpointSlice(
        namespace, name, service_name, address_type,
        tuple(Endpoint(addresses, EndpointConditions(ready, serving, terminating), node_name, zone, hints,
                       None if ref is None else ObjectRef(*ref))
              for addresses, ready, serving, terminating, node_name, zone, hints, ref in endpoints),
        tuple(EndpointPort(*p) for p in ports),
        from_endpoints,
    )


def _unpack_slices(packed: _PackedSlices) -> tuple[dict[tuple[str, str, bool], EndpointSlice],
                                                   dict[tuple[str, str], tuple[EndpointSlice, ...]]]:
    records, by_service = packed
    built = [_unpacked_slice(r) for r in records]
    return ({(s.namespace, s.name, s.from_endpoints): s for s in built},
            {key: tuple(built[i] for i in chosen) for key, chosen in by_service.items()})


def _packed_endpoints(packed: _PackedSlices, namespace: str, name: str, port_name: str, protocol: str | None,
                      family: int | None) -> dict[tuple[str, int], ServiceEndpoint]:
    """`ClusterObjects.endpoints_by_address` read from packed slices (the same answer, without building them)."""
    records, by_service = packed
    merged: dict[tuple[str, int], ServiceEndpoint] = {}
    refs: dict[tuple[str, str | None, str], ObjectRef] = {}
    for index in by_service.get((namespace, name), ()):
        _, _, _, address_type, _, ports, endpoints = records[index]
        if address_type not in ("IPv4", "IPv6"):
            continue  # kube-proxy ignores FQDN slices
        if family is not None and address_type != f"IPv{family}":
            continue
        for slice_port_name, slice_protocol, slice_port in ports:
            if slice_port_name != port_name or slice_port is None:
                continue
            if protocol is not None and slice_protocol != protocol:
                continue
            for addresses, ready, serving, terminating, node_name, zone, hints, ref in endpoints:
                if not addresses:
                    continue
                # kube-proxy uses only the first address of an endpoint.
                address = canonical_ip(addresses[0])
                key = (address, slice_port)
                if key in merged and not ready:
                    continue
                target = None
                if ref is not None:
                    target = refs.get(ref)
                    if target is None:
                        target = refs[ref] = ObjectRef(*ref)
                merged[key] = ServiceEndpoint(address, slice_port, slice_protocol, ready, serving, terminating,
                                              node_name, zone, hints, target)
    return merged


def _packed_states(packed: _PackedSlices, namespace: str, name: str, port_name: str, protocol: str | None,
                   family: int | None) -> dict[tuple[str, int], EndpointState]:
    """`ClusterObjects.endpoint_states` read from packed slices: `_packed_endpoints`' walk, five fields kept."""
    records, by_service = packed
    # kube-proxy ignores FQDN slices.
    families = ("IPv4", "IPv6") if family is None else (f"IPv{family}",)
    merged: dict[tuple[str, int], EndpointState] = {}
    for index in by_service.get((namespace, name), ()):
        _, _, _, address_type, _, ports, endpoints = records[index]
        if address_type not in families:
            continue
        for slice_port_name, slice_protocol, slice_port in ports:
            if slice_port_name != port_name or slice_port is None:
                continue
            if protocol is not None and slice_protocol != protocol:
                continue
            for addresses, ready, serving, terminating, node_name, _zone, _hints, ref in endpoints:
                if not addresses:
                    continue
                # kube-proxy uses only the first address of an endpoint (canonical_ip, inlined).
                address = addresses[0]
                if not _CANONICAL_V4.fullmatch(address):
                    address = canonical_ip(address)
                key = (address, slice_port)
                if key in merged and not ready:
                    continue
                merged[key] = (ready, serving, terminating, node_name, ref)
    return merged


# --------------------------------------------------------------------------------------
# Converting JSON-shaped mappings into the dataclasses above.


class _LinedDict(dict[str, Any]):
    """A YAML mapping that remembers the (1-based) line it started on."""

    line: int | None = None
    key_lines: dict[str, int] | None = None


class _SchemaError(Exception):
    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line, self.message = line, message


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Fields:
    """Typed, defaulting access to one mapping, with errors that name where they are."""

    def __init__(
        self, data: Mapping[str, Any], where: str, line: int | None, source: str | None = None
    ) -> None:
        self.data, self.where, self.source = data, where, source
        self.line = getattr(data, "line", None) or line

    def line_of(self, key: str) -> int | None:
        key_lines = getattr(self.data, "key_lines", None) or {}
        return key_lines.get(key, self.line)

    def _path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, expected: str, value: Any) -> _SchemaError:
        key_lines = getattr(self.data, "key_lines", None) or {}
        line = key_lines.get(key.split("[", 1)[0], self.line)
        return _SchemaError(
            line, f"expected {expected} at {self._path(key)}, found {_describe(value)}"
        )

    def mapping(self, key: str) -> _Fields:
        value = self.data.get(key)
        if value is None:
            return _Fields({}, self._path(key), self.line, self.source)
        if not isinstance(value, Mapping):
            raise self.fail(key, "a mapping", value)
        return _Fields(value, self._path(key), self.line, self.source)

    def mappings(self, key: str) -> list[_Fields]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(key, "a list", value)
        result = []
        for index, item in enumerate(value):
            if not isinstance(item, Mapping):
                raise self.fail(f"{key}[{index}]", "a mapping", item)
            result.append(_Fields(item, f"{self._path(key)}[{index}]", self.line, self.source))
        return result

    def text(self, key: str, default: str | None = None) -> str | None:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.fail(key, "a string", value)
        return value

    def required_text(self, key: str) -> str:
        value = self.text(key)
        if not value:
            raise self.fail(key, "a non-empty string", self.data.get(key))
        return value

    def integer(self, key: str) -> int | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, "an integer", value)
        return value

    def int_or_text(self, key: str) -> int | str | None:
        value = self.data.get(key)
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        if isinstance(value, str):
            # The API accepts digit strings for IntOrString; normalise them to numbers.
            return int(value) if value.isdigit() else value
        raise self.fail(key, "an integer or a port name", value)

    def boolean(self, key: str) -> bool | None:
        value = self.data.get(key)
        if value is None or isinstance(value, bool):
            return value
        raise self.fail(key, "true or false", value)

    def texts(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.fail(key, "a list of strings", value)
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise self.fail(f"{key}[{index}]", "a string", item)
        return tuple(value)


def _metadata(obj: _Fields, namespaced: bool) -> tuple[str, str]:
    meta = obj.mapping("metadata")
    name = meta.required_text("name")
    namespace = meta.text("namespace", "default") if namespaced else ""
    return namespace or "default", name


def _object_ref(fields: _Fields) -> ObjectRef | None:
    if not fields.data:
        return None
    return ObjectRef(
        kind=fields.text("kind", "") or "",
        namespace=fields.text("namespace"),
        name=fields.text("name", "") or "",
    )


def ignore_codes(obj: _Fields) -> frozenset[str]:
    value = obj.mapping("metadata").mapping("annotations").text(IGNORE_ANNOTATION)
    return frozenset(c.strip() for c in (value or "").split(",") if c.strip())


def _parse_service(obj: _Fields, source: str | None = None) -> Service:
    namespace, name = _metadata(obj, namespaced=True)
    spec, status = obj.mapping("spec"), obj.mapping("status")
    service_type = spec.text("type", "ClusterIP") or "ClusterIP"
    cluster_ips = spec.texts("clusterIPs")
    if not cluster_ips and spec.text("clusterIP"):
        cluster_ips = (spec.text("clusterIP") or "",)
    headless = "None" in cluster_ips
    cluster_ips = tuple(canonical_ip(ip) for ip in cluster_ips if ip and ip != "None")

    ports = []
    for port_fields in spec.mappings("ports"):
        port = port_fields.integer("port")
        if port is None:
            raise port_fields.fail("port", "an integer", None)
        target = port_fields.int_or_text("targetPort")
        ports.append(
            ServicePort(
                name=port_fields.text("name", "") or "",
                protocol=port_fields.text("protocol", "TCP") or "TCP",
                port=port,
                target_port=port if target is None else target,
                node_port=port_fields.integer("nodePort"),
            )
        )

    ingress = tuple(
        LoadBalancerIngress(
            ip=canonical_ip(i.text("ip") or "") or None,
            hostname=i.text("hostname"),
            ip_mode=i.text("ipMode"),
        )
        for i in status.mapping("loadBalancer").mappings("ingress")
    )

    affinity = spec.text("sessionAffinity", "None") or "None"
    timeout = None
    if affinity == "ClientIP":
        config = spec.mapping("sessionAffinityConfig").mapping("clientIP")
        timeout = config.integer("timeoutSeconds") or DEFAULT_AFFINITY_TIMEOUT

    return Service(
        namespace=namespace,
        name=name,
        type=service_type,
        cluster_ips=cluster_ips,
        headless=headless,
        ports=tuple(ports),
        external_ips=tuple(canonical_ip(ip) for ip in spec.texts("externalIPs")),
        load_balancer_ingress=ingress,
        load_balancer_source_ranges=spec.texts("loadBalancerSourceRanges"),
        external_traffic_policy=spec.text("externalTrafficPolicy", "Cluster") or "Cluster",
        internal_traffic_policy=spec.text("internalTrafficPolicy", "Cluster") or "Cluster",
        session_affinity=affinity,
        session_affinity_timeout=timeout,
        ip_families=spec.texts("ipFamilies"),
        health_check_node_port=spec.integer("healthCheckNodePort"),
        has_selector=bool(spec.data.get("selector")),
        external_name=spec.text("externalName"),
        ignore_codes=ignore_codes(obj),
        location=f"{source}:{obj.line}" if source and obj.line else source,
    )


def _conditions(fields: _Fields) -> EndpointConditions:
    # The API's documented defaulting: unset ready means ready, unset serving copies ready,
    # unset terminating means not terminating.
    ready = fields.boolean("ready")
    ready = True if ready is None else ready
    serving = fields.boolean("serving")
    terminating = fields.boolean("terminating")
    return EndpointConditions(
        ready=ready,
        serving=ready if serving is None else serving,
        terminating=bool(terminating),
    )


def _parse_endpoint_slice(obj: _Fields) -> EndpointSlice:
    namespace, name = _metadata(obj, namespaced=True)
    labels = obj.mapping("metadata").mapping("labels")
    endpoints = []
    for endpoint in obj.mappings("endpoints"):
        hints = endpoint.mapping("hints")
        endpoints.append(
            Endpoint(
                addresses=endpoint.texts("addresses"),
                conditions=_conditions(endpoint.mapping("conditions")),
                node_name=endpoint.text("nodeName"),
                zone=endpoint.text("zone"),
                hint_zones=tuple(z.text("name", "") or "" for z in hints.mappings("forZones")),
                target_ref=_object_ref(endpoint.mapping("targetRef")),
            )
        )
    ports = tuple(
        EndpointPort(
            name=p.text("name", "") or "",
            protocol=p.text("protocol", "TCP") or "TCP",
            port=p.integer("port"),
        )
        for p in obj.mappings("ports")
    )
    return EndpointSlice(
        namespace=namespace,
        name=name,
        service_name=labels.text(SERVICE_NAME_LABEL),
        address_type=obj.required_text("addressType"),
        endpoints=tuple(endpoints),
        ports=ports,
    )


def _parse_endpoints(obj: _Fields) -> list[EndpointSlice]:
    """Convert a legacy v1 Endpoints object into one slice per subset and address family."""
    namespace, name = _metadata(obj, namespaced=True)
    slices = []
    for subset_index, subset in enumerate(obj.mappings("subsets")):
        ports = tuple(
            EndpointPort(
                name=p.text("name", "") or "",
                protocol=p.text("protocol", "TCP") or "TCP",
                port=p.integer("port"),
            )
            for p in subset.mappings("ports")
        )
        by_family: dict[str, list[Endpoint]] = {}
        for key, ready in (("addresses", True), ("notReadyAddresses", False)):
            for address in subset.mappings(key):
                ip = address.required_text("ip")
                family = ip_family(ip)
                endpoint = Endpoint(
                    addresses=(canonical_ip(ip),),
                    # Endpoints has no serving/terminating; not-ready addresses serve nothing.
                    conditions=EndpointConditions(ready=ready, serving=ready, terminating=False),
                    node_name=address.text("nodeName"),
                    target_ref=_object_ref(address.mapping("targetRef")),
                )
                by_family.setdefault(f"IPv{family}" if family else "FQDN", []).append(endpoint)
        for address_type, endpoints in sorted(by_family.items()):
            slices.append(
                EndpointSlice(
                    namespace=namespace,
                    name=f"{name}-subset{subset_index}-{address_type.lower()}",
                    service_name=name,
                    address_type=address_type,
                    endpoints=tuple(endpoints),
                    ports=ports,
                    from_endpoints=True,
                )
            )
    return slices


def _parse_node(obj: _Fields) -> Node:
    _, name = _metadata(obj, namespaced=False)
    spec, status = obj.mapping("spec"), obj.mapping("status")
    internal, external = [], []
    for address in status.mappings("addresses"):
        kind, value = address.text("type"), address.text("address")
        if value and kind == "InternalIP":
            internal.append(canonical_ip(value))
        elif value and kind == "ExternalIP":
            external.append(canonical_ip(value))
    cidrs = spec.texts("podCIDRs")
    if not cidrs and spec.text("podCIDR"):
        cidrs = (spec.text("podCIDR") or "",)
    labels = obj.mapping("metadata").mapping("labels")
    return Node(
        name=name,
        internal_ips=tuple(internal),
        external_ips=tuple(external),
        pod_cidrs=cidrs,
        zone=labels.text(ZONE_LABEL),
    )


def _parse_pod(obj: _Fields) -> Pod:
    namespace, name = _metadata(obj, namespaced=True)
    spec, status = obj.mapping("spec"), obj.mapping("status")
    ips = tuple(canonical_ip(p.required_text("ip")) for p in status.mappings("podIPs"))
    if not ips and status.text("podIP"):
        ips = (canonical_ip(status.text("podIP") or ""),)
    ports = []
    for container in spec.mappings("containers"):
        for port_fields in container.mappings("ports"):
            number = port_fields.integer("containerPort")
            if number is None or not 1 <= number <= 65535:
                raise port_fields.fail(
                    "containerPort",
                    "a port number 1-65535 (the API server would reject this Pod)",
                    port_fields.data.get("containerPort"),
                )
            protocol = port_fields.text("protocol", "TCP") or "TCP"
            ports.append(ContainerPort(port_fields.text("name", "") or "", number, protocol))
    return Pod(
        namespace=namespace,
        name=name,
        node_name=spec.text("nodeName"),
        pod_ips=ips,
        host_network=bool(spec.boolean("hostNetwork")),
        phase=status.text("phase"),
        labels=_labels(obj),
        container_ports=tuple(ports),
        source=obj.source,
        line=obj.line,
    )


def _labels(obj: _Fields) -> tuple[tuple[str, str], ...]:
    labels = obj.mapping("metadata").mapping("labels")
    out = []
    for key, value in labels.data.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise labels.fail(str(key), "a string label value", value)
        out.append((key, value))
    return tuple(sorted(out))


def _parse_namespace(obj: _Fields) -> Namespace:
    _, name = _metadata(obj, namespaced=False)
    labels = dict(_labels(obj))
    # The API server sets this label on every Namespace; dumps of old clusters may lack it.
    labels.setdefault(NAMESPACE_NAME_LABEL, name)
    return Namespace(name, tuple(sorted(labels.items())), obj.source, obj.line)


# Fast paths for the two kinds a large cluster holds most of. Each reads plain dicts
# with the same defaults as the _Fields parsers above and gives the same object, or None
# as soon as anything is not as it should be: then the _Fields parser runs and says what
# is wrong, with its line. tests/test_lint_fast.py holds them to the _Fields parsers.


class _Unfit(Exception):
    """The fast path met something only the _Fields parser should judge."""


def _d(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Unfit
    return value


def _ds(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = data.get(key)
    if value is None:
        return []
    if type(value) is not list:
        raise _Unfit
    for item in value:
        if not isinstance(item, dict):
            raise _Unfit
    return value


def _t(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None or type(value) is str:
        return value
    raise _Unfit


def _b(data: dict[str, Any], key: str) -> bool | None:
    value = data.get(key)
    if value is None or value is True or value is False:
        return value
    raise _Unfit


def _i(data: dict[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is None or type(value) is int:
        return value
    raise _Unfit


def _name_and_namespace(data: dict[str, Any]) -> tuple[dict[str, Any], str, str]:
    meta = _d(data, "metadata")
    name = meta.get("name")
    if type(name) is not str or not name:
        raise _Unfit
    return meta, _t(meta, "namespace") or "default", name


def _fast_pod(data: dict[str, Any], source: str | None, line: int | None) -> Pod | None:
    try:
        meta, namespace, name = _name_and_namespace(data)
        spec, status = _d(data, "spec"), _d(data, "status")
        ips = []
        for p in _ds(status, "podIPs"):
            ip = p.get("ip")
            if type(ip) is not str or not ip:
                raise _Unfit
            ips.append(canonical_ip(ip))
        if not ips:
            pod_ip = _t(status, "podIP")
            if pod_ip:
                ips.append(canonical_ip(pod_ip))
        ports = []
        for container in _ds(spec, "containers"):
            for port in _ds(container, "ports"):
                number = port.get("containerPort")
                if type(number) is not int or not 1 <= number <= 65535:
                    raise _Unfit
                ports.append(ContainerPort(_t(port, "name") or "", number, _t(port, "protocol") or "TCP"))
        labels = _d(meta, "labels")
        for key, value in labels.items():
            if type(key) is not str or type(value) is not str:
                raise _Unfit
        return made_frozen(Pod, {
            "namespace": namespace,
            "name": name,
            "node_name": _t(spec, "nodeName"),
            "pod_ips": tuple(ips),
            "host_network": bool(_b(spec, "hostNetwork")),
            "phase": _t(status, "phase"),
            "labels": tuple(sorted(labels.items())),
            "container_ports": tuple(ports),
            "source": source,
            "line": getattr(data, "line", None) or line,
        })
    except _Unfit:
        return None


_new_object = object.__new__
_Frozen = TypeVar("_Frozen")


def made_frozen(cls: type[_Frozen], fields: dict[str, Any]) -> _Frozen:
    """`cls(**fields)` for a frozen dataclass without __post_init__ or slots and `fields` naming every
    field, made without its __init__, which sets each field through object.__setattr__: five times
    the time of this, for the hundreds of thousands of Pods of a large cluster."""
    made: _Frozen = _new_object(cls)
    made.__dict__.update(fields)
    return made


def _ts(data: dict[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key)
    if value is None:
        return ()
    if type(value) is not list or any(type(v) is not str for v in value):
        raise _Unfit
    return tuple(value)


def _fast_service(data: dict[str, Any], source: str | None, line: int | None) -> Service | None:
    try:
        meta, namespace, name = _name_and_namespace(data)
        spec, status = _d(data, "spec"), _d(data, "status")
        cluster_ips = _ts(spec, "clusterIPs")
        if not cluster_ips:
            single = _t(spec, "clusterIP")
            if single:
                cluster_ips = (single,)
        ports = []
        for p in _ds(spec, "ports"):
            port = p.get("port")
            if type(port) is not int:
                raise _Unfit
            target = p.get("targetPort")
            if type(target) is str:
                target = int(target) if target.isdigit() else target
            elif target is not None and type(target) is not int:
                raise _Unfit
            ports.append(made_frozen(ServicePort, {
                "name": _t(p, "name") or "",
                "protocol": _t(p, "protocol") or "TCP",
                "port": port,
                "target_port": port if target is None else target,
                "node_port": _i(p, "nodePort"),
            }))
        ingress = tuple(
            LoadBalancerIngress(ip=canonical_ip(_t(i, "ip") or "") or None, hostname=_t(i, "hostname"),
                                ip_mode=_t(i, "ipMode"))
            for i in _ds(_d(status, "loadBalancer"), "ingress")
        )
        affinity = _t(spec, "sessionAffinity") or "None"
        timeout = None
        if affinity == "ClientIP":
            timeout = _i(_d(_d(spec, "sessionAffinityConfig"), "clientIP"), "timeoutSeconds") \
                or DEFAULT_AFFINITY_TIMEOUT
        ignore = _t(_d(meta, "annotations"), IGNORE_ANNOTATION)
        where = getattr(data, "line", None) or line
        return made_frozen(Service, {
            "namespace": namespace,
            "name": name,
            "type": _t(spec, "type") or "ClusterIP",
            "cluster_ips": tuple(canonical_ip(ip) for ip in cluster_ips if ip and ip != "None"),
            "headless": "None" in cluster_ips,
            "ports": tuple(ports),
            "external_ips": tuple(canonical_ip(ip) for ip in _ts(spec, "externalIPs")),
            "load_balancer_ingress": ingress,
            "load_balancer_source_ranges": _ts(spec, "loadBalancerSourceRanges"),
            "external_traffic_policy": _t(spec, "externalTrafficPolicy") or "Cluster",
            "internal_traffic_policy": _t(spec, "internalTrafficPolicy") or "Cluster",
            "session_affinity": affinity,
            "session_affinity_timeout": timeout,
            "ip_families": _ts(spec, "ipFamilies"),
            "health_check_node_port": _i(spec, "healthCheckNodePort"),
            "has_selector": bool(spec.get("selector")),
            "external_name": _t(spec, "externalName"),
            "ignore_codes": frozenset(c.strip() for c in (ignore or "").split(",") if c.strip()),
            "location": f"{source}:{where}" if source and where else source,
        })
    except _Unfit:
        return None


def _fast_endpoint_slice(data: dict[str, Any]) -> EndpointSlice | None:
    record = _fast_packed_slice(data)
    return None if record is None else _unpacked_slice(record)


def _fast_packed_slice(data: dict[str, Any]) -> _PackedSlice | None:
    """An EndpointSlice as `_pack_slice` gives it, read straight from its mapping (or None: see above)."""
    try:
        meta, namespace, name = _name_and_namespace(data)
        address_type = data.get("addressType")
        if type(address_type) is not str or not address_type:
            raise _Unfit
        endpoints = []
        # What `_b`, `_t` and `_d` check, written out: this loop runs once per endpoint.
        for ep in _ds(data, "endpoints"):
            get = ep.get
            addresses = get("addresses")
            if addresses is None:
                addresses = ()
            elif type(addresses) is not list or any(type(a) is not str for a in addresses):
                raise _Unfit
            cond = get("conditions")
            if cond is None:
                cond = {}
            elif not isinstance(cond, dict):
                raise _Unfit
            ready, serving, terminating = cond.get("ready"), cond.get("serving"), cond.get("terminating")
            if ready is None:
                ready = True
            elif ready is not True and ready is not False:
                raise _Unfit
            if serving is None:
                serving = ready
            elif serving is not True and serving is not False:
                raise _Unfit
            if terminating is None:
                terminating = False
            elif terminating is not True and terminating is not False:
                raise _Unfit
            node, zone = get("nodeName"), get("zone")
            if not (node is None or type(node) is str) or not (zone is None or type(zone) is str):
                raise _Unfit
            hints = get("hints")
            ref = _d(ep, "targetRef")
            endpoints.append((
                tuple(addresses), ready, serving, terminating, node, zone,
                tuple(_t(z, "name") or "" for z in _ds(_d(ep, "hints"), "forZones")) if hints is not None else (),
                (_t(ref, "kind") or "", _t(ref, "namespace"), _t(ref, "name") or "") if ref else None,
            ))
        ports = tuple((_t(p, "name") or "", _t(p, "protocol") or "TCP", _i(p, "port")) for p in _ds(data, "ports"))
        return (namespace, name, _t(_d(meta, "labels"), SERVICE_NAME_LABEL), address_type, False, ports,
                tuple(endpoints))
    except _Unfit:
        return None


# (kind, apiVersion) pairs kpa understands.
_KNOWN_KINDS = {
    "Service": "v1",
    "EndpointSlice": "discovery.k8s.io/v1",
    "Endpoints": "v1",
    "Node": "v1",
    "Pod": "v1",
    "Namespace": "v1",
    "NetworkPolicy": "networking.k8s.io/v1",
}


class _Collector:
    """Accumulates objects from many documents into one ClusterObjects."""

    def __init__(self) -> None:
        self.services: list[Service] = []
        self.slices: list[_PackedSlice] = []  # as tuples (see ClusterObjects)
        self.nodes: list[Node] = []
        self.pods: list[Pod] = []
        self.namespaces: list[Namespace] = []
        self.policies: list[NetworkPolicy] = []
        self.ignored: Counter[str] = Counter()
        self.warnings: list[str] = []
        # The file being read, recorded on objects, and the lines of JSON List items (by id) in it.
        self.source: str | None = None
        self.item_lines: dict[int, int] = {}
        # Only these kinds are built (None: all); a caller that needs no Pods need not read them.
        self.kinds: frozenset[str] | None = None

    def take(self, other: _Collector) -> None:
        """Add what `other` collected after what this one holds."""
        self.services += other.services
        self.slices += other.slices
        self.nodes += other.nodes
        self.pods += other.pods
        self.namespaces += other.namespaces
        self.policies += other.policies
        self.ignored.update(other.ignored)

    def add_document(self, document: Any, line: int | None, implied_kind: str | None,
                     consume: bool = False) -> None:
        """Add the objects of one decoded document.

        With `consume`, the document belongs to the reader: a List's items are dropped
        from it as they are read, so their memory can go while the objects are built.
        """
        if document is None:
            return  # an empty YAML document, e.g. a trailing '---'
        if type(document) is dict:
            # A decoded JSON object that names its kind and version as text: what `_Fields` would
            # read of them, without making one (it is needed only where a fast reader gives up).
            kind, api_version = document.get("kind"), document.get("apiVersion")
            if (type(kind) is str and kind and not kind.endswith("List")
                    and (api_version is None or type(api_version) is str)):
                self._add_object(document, None, line, kind, api_version)
                return
        if isinstance(document, list):
            for item in document:
                self.add_document(item, line, implied_kind)
            return
        if not isinstance(document, Mapping):
            raise _SchemaError(
                line, f"expected a Kubernetes object (a mapping), found {_describe(document)}"
            )
        obj = _Fields(document, "", line, self.source)
        kind = obj.text("kind") or implied_kind
        if not kind:
            raise _SchemaError(obj.line, "expected a Kubernetes object with 'kind', found none")
        if kind.endswith("List") and isinstance(document.get("items"), list):
            # Raw API list responses omit kind on their items; the list's kind implies it.
            item_kind = kind[: -len("List")] or None
            items = document["items"]
            if all(type(i) is dict for i in items):  # JSON: no _Fields wrapper per item
                for n, i in enumerate(items):
                    if consume:
                        items[n] = None
                    self.add_document(i, self.item_lines.get(id(i), obj.line), item_kind)
                    del i
                return
            for item in obj.mappings("items"):
                self.add_document(item.data, self.item_lines.get(id(item.data), item.line),
                                  item_kind)
            return
        self._add_object(document, obj, line, kind, obj.text("apiVersion"))

    def _add_object(self, document: Mapping[str, Any], obj: _Fields | None, line: int | None, kind: str,
                    api_version: str | None) -> None:
        """Add one object of `kind` (not a List); `obj`: its `_Fields`, or None to make it if needed."""
        expected_version = _KNOWN_KINDS.get(kind)
        if expected_version is None:
            self.ignored[kind] += 1
            return
        if api_version is not None and api_version != expected_version:
            self.ignored[f"{kind} ({api_version})"] += 1
            return
        if self.kinds is not None and kind not in self.kinds:
            return
        if isinstance(document, dict):  # the fast readers; None where only `_Fields` should judge
            if kind == "Pod" and (pod := _fast_pod(document, self.source, line)) is not None:
                self.pods.append(pod)
                return
            if kind == "Service" and (svc := _fast_service(document, self.source, line)) is not None:
                self.services.append(svc)
                return
            if kind == "EndpointSlice" and (packed := _fast_packed_slice(document)) is not None:
                self.slices.append(packed)
                return
        if obj is None:
            obj = _Fields(document, "", line, self.source)
        if kind == "Pod":
            self.pods.append(_parse_pod(obj))
        elif kind == "Service":
            self.services.append(_parse_service(obj, self.source))
        elif kind == "EndpointSlice":
            self.slices.append(_pack_slice(_parse_endpoint_slice(obj)))
        elif kind == "Endpoints":
            self.slices.extend(_pack_slice(s) for s in _parse_endpoints(obj))
        elif kind == "Node":
            self.nodes.append(_parse_node(obj))
        elif kind == "Namespace":
            self.namespaces.append(_parse_namespace(obj))
        elif kind == "NetworkPolicy":
            from kpa.k8s.netpol import parse_network_policy

            self.policies.append(parse_network_policy(obj))

    def add_read(self, document: Any) -> None:
        """Add a document of `_yaml_documents`, or the object a template gave in its place
        (see `_direct_objects`): a Service, a Pod, or an EndpointSlice as a tuple."""
        kind = type(document)
        if kind is Service:
            self.services.append(document)
        elif kind is tuple:
            self.slices.append(document)
        elif kind is Pod:
            self.pods.append(document)
        else:
            self.add_document(document, getattr(document, "line", None), None)

    def result(self) -> ClusterObjects:
        warnings = list(self.warnings)
        if self.ignored:
            counts = ", ".join(f"{n} {kind}" for kind, n in sorted(self.ignored.items()))
            warnings.append(
                f"ignored {sum(self.ignored.values())} objects of other kinds: {counts}"
            )
        return ClusterObjects(
            self.services,
            (),
            self.nodes,
            self.pods,
            warnings,
            self.ignored,
            self.namespaces,
            self.policies,
            packed_slices=self.slices,
        )


def objects_from_documents(documents: Iterable[Any], source: str = "<api>") -> ClusterObjects:
    """Build a ClusterObjects from already-decoded JSON-shaped documents (e.g. API lists)."""
    collector = _Collector()
    collector.source = source
    for document in documents:
        try:
            collector.add_document(document, None, None)
        except _SchemaError as error:
            raise InputError(source, error.line, error.message) from None
    return collector.result()


# --------------------------------------------------------------------------------------
# Services, EndpointSlices and Pods built straight from a YAML template's values.
#
# A template (blockyaml) builds every document of one shape from the values in its lines.
# For a template whose own document is a Service, an EndpointSlice or a Pod, the code written
# below builds, from the same values, what `_Collector.add_document` then `_fast_service`,
# `_fast_packed_slice` or `_fast_pod` make of such a document, without the document: each key
# those read is looked up once, in the template's shape, when the template is made, and the
# code keeps, for run time, only what the values decide (their types, whether they are empty,
# the kind and apiVersion). Anything those functions would not build from the values (a value
# of another type, another kind) makes the code raise, and the template then gives the document
# (read as usual). A shape where a key those functions read holds something other than what
# they take as it comes (a mapping where a string goes, a scalar where a mapping goes) gets no
# such code. Each template's code is checked on its own document against `add_document`.


class _NoDirect(Exception):
    """The template's shape is not one the direct code is written for: its documents are read as usual."""


_EMPTY_NODE: blockyaml.Node = ("map", {}, 0)


def _tuple_of(items: list[str]) -> str:
    return f"({', '.join(items)},)" if items else "()"


def _child(node: blockyaml.Node, key: str) -> blockyaml.Node | None:
    """The node of `data.get(key)` of a mapping's node; None for no value (absent or null)."""
    child: blockyaml.Node | None = node[1].get(key)
    return None if child is None or child[0] == "null" else child


def _n_d(node: blockyaml.Node, key: str) -> blockyaml.Node:
    """`_d` in the template: the node of a mapping."""
    child = _child(node, key)
    if child is None:
        return _EMPTY_NODE
    if child[0] != "map":
        raise _NoDirect
    return child


def _n_ds(node: blockyaml.Node, key: str) -> list[blockyaml.Node]:
    """`_ds` in the template: the nodes of a list's mappings."""
    child = _child(node, key)
    if child is None:
        return []
    if child[0] != "seq" or any(item[0] != "map" for item in child[1]):
        raise _NoDirect
    items: list[blockyaml.Node] = child[1]
    return items


def _n_value(node: blockyaml.Node, key: str) -> tuple[str, bool] | None:
    """`data.get(key)` of a scalar: the expression of the value and whether it is a str; None for None."""
    child = _child(node, key)
    if child is None:
        return None
    if child[0] != "value":
        raise _NoDirect
    return child[1], child[2]


def _n_t(node: blockyaml.Node, key: str) -> str:
    """`_t` in the template: an expression."""
    value = _n_value(node, key)
    if value is None:
        return "None"
    return value[0] if value[1] else f"d_t({value[0]})"


def _n_b(node: blockyaml.Node, key: str) -> str:
    """`_b` in the template."""
    value = _n_value(node, key)
    if value is None:
        return "None"
    if value[1]:
        raise _NoDirect  # (a str is never a bool)
    return f"d_b({value[0]})"


def _n_i(node: blockyaml.Node, key: str) -> str:
    """`_i` in the template."""
    value = _n_value(node, key)
    if value is None:
        return "None"
    if value[1]:
        raise _NoDirect
    return f"d_i({value[0]})"


def _n_ts(node: blockyaml.Node, key: str) -> list[str]:
    """`_ts` in the template: the expressions of the strings."""
    child = _child(node, key)
    if child is None:
        return []
    if child[0] != "seq" or any(item[0] != "value" for item in child[1]):
        raise _NoDirect
    return [item[1] if item[2] else f"d_s({item[1]})" for item in child[1]]


def _n_name(root: blockyaml.Node) -> tuple[blockyaml.Node, str, str]:
    """`_name_and_namespace` in the template: the metadata's node, the namespace's and the name's expressions."""
    meta = _n_d(root, "metadata")
    name = _n_value(meta, "name")
    if name is None:
        raise _NoDirect
    return meta, f"({_n_t(meta, 'namespace')} or 'default')", f"d_named({name[0]})"


def _direct_t(value: Any) -> str | None:
    if value is None or type(value) is str:
        return value
    raise _Unfit


def _direct_s(value: Any) -> str:
    if type(value) is str:
        return value
    raise _Unfit


def _direct_named(value: Any) -> str:
    if type(value) is str and value:
        return value
    raise _Unfit


def _direct_b(value: Any) -> bool | None:
    if value is None or value is True or value is False:
        return value
    raise _Unfit


def _direct_i(value: Any) -> int | None:
    if value is None or type(value) is int:
        return value
    raise _Unfit


def _direct_service_port(port: Any, target: Any, name: str | None, protocol: str | None,
                         node_port: int | None) -> ServicePort:
    if type(port) is not int:
        raise _Unfit
    if type(target) is str:
        target = int(target) if target.isdigit() else target
    elif target is not None and type(target) is not int:
        raise _Unfit
    return ServicePort(name=name or "", protocol=protocol or "TCP", port=port,
                       target_port=port if target is None else target, node_port=node_port)


def _direct_container_port(name: str | None, number: Any, protocol: str | None) -> ContainerPort:
    if type(number) is not int or not 1 <= number <= 65535:
        raise _Unfit
    return ContainerPort(name or "", number, protocol or "TCP")


def _direct_codes(ignore: str | None) -> frozenset[str]:
    return frozenset(c.strip() for c in (ignore or "").split(",") if c.strip())


def _direct_service(root: blockyaml.Node, lines: list[str]) -> str:
    """`_fast_service` in the template: statements into `lines`, and the Service's expression."""
    meta, namespace, name = _n_name(root)
    spec, status = _n_d(root, "spec"), _n_d(root, "status")
    lines.append(f"d_ips = {_tuple_of(_n_ts(spec, 'clusterIPs'))}")
    if not _n_ts(spec, "clusterIPs"):
        lines.append(f"d_one = {_n_t(spec, 'clusterIP')}")
        lines.append("if d_one: d_ips = (d_one,)")
    ports = [f"d_port({_value_or_none(p, 'port')}, {_value_or_none(p, 'targetPort')}, {_n_t(p, 'name')}, "
             f"{_n_t(p, 'protocol')}, {_n_i(p, 'nodePort')})" for p in _n_ds(spec, "ports")]
    ingress = [f"d_ingress(ip=d_ip({_n_t(i, 'ip')} or '') or None, hostname={_n_t(i, 'hostname')}, "
               f"ip_mode={_n_t(i, 'ipMode')})" for i in _n_ds(_n_d(status, "loadBalancer"), "ingress")]
    lines.append(f"d_affinity = {_n_t(spec, 'sessionAffinity')} or 'None'")
    timeout = _n_i(_n_d(_n_d(spec, "sessionAffinityConfig"), "clientIP"), "timeoutSeconds")
    lines.append(f"d_timeout = ({timeout} or {DEFAULT_AFFINITY_TIMEOUT}) if d_affinity == 'ClientIP' else None")
    ignore = _n_t(_n_d(meta, "annotations"), IGNORE_ANNOTATION)
    return ("d_service("
            f"namespace={namespace}, name={name}, type={_n_t(spec, 'type')} or 'ClusterIP', "
            "cluster_ips=tuple(d_ip(ip) for ip in d_ips if ip and ip != 'None'), headless='None' in d_ips, "
            f"ports={_tuple_of(ports)}, "
            f"external_ips={_tuple_of([f'd_ip({e})' for e in _n_ts(spec, 'externalIPs')])}, "
            f"load_balancer_ingress={_tuple_of(ingress)}, "
            f"load_balancer_source_ranges={_tuple_of(_n_ts(spec, 'loadBalancerSourceRanges'))}, "
            f"external_traffic_policy={_n_t(spec, 'externalTrafficPolicy')} or 'Cluster', "
            f"internal_traffic_policy={_n_t(spec, 'internalTrafficPolicy')} or 'Cluster', "
            "session_affinity=d_affinity, session_affinity_timeout=d_timeout, "
            f"ip_families={_tuple_of(_n_ts(spec, 'ipFamilies'))}, "
            f"health_check_node_port={_n_i(spec, 'healthCheckNodePort')}, "
            f"has_selector={_n_truth(spec, 'selector')}, "
            f"external_name={_n_t(spec, 'externalName')}, "
            f"ignore_codes=d_codes({ignore}), "
            "location=f'{d_source}:{L}' if d_source and L else d_source)")


def _value_or_none(node: blockyaml.Node, key: str) -> str:
    value = _n_value(node, key)
    return "None" if value is None else value[0]


def _n_truth(node: blockyaml.Node, key: str) -> str:
    """`bool(data.get(key))` in the template."""
    child = _child(node, key)
    if child is None:
        return "False"
    if child[0] == "value":
        return f"bool({child[1]})"
    return "True" if child[1] else "False"


def _direct_slice(root: blockyaml.Node, lines: list[str]) -> str:
    """`_fast_packed_slice` in the template."""
    meta, namespace, name = _n_name(root)
    address_type = _n_value(root, "addressType")
    if address_type is None:
        raise _NoDirect
    endpoints = []
    for ep in _n_ds(root, "endpoints"):
        cond = _n_d(ep, "conditions")
        ready, serving = _n_b(cond, "ready"), _n_b(cond, "serving")
        ready = "True" if ready == "None" else f"d_ready({ready})"
        serving = ready if serving == "None" else f"d_serving({ready}, {serving})"
        ref = _n_d(ep, "targetRef")
        target = (f"({_n_t(ref, 'kind')} or '', {_n_t(ref, 'namespace')}, {_n_t(ref, 'name')} or '')"
                  if ref[1] else "None")
        zones = [f"{_n_t(z, 'name')} or ''" for z in _n_ds(_n_d(ep, "hints"), "forZones")]
        endpoints.append(
            f"({_tuple_of(_n_ts(ep, 'addresses'))}, {ready}, {serving}, bool({_n_b(cond, 'terminating')}), "
            f"{_n_t(ep, 'nodeName')}, {_n_t(ep, 'zone')}, {_tuple_of(zones)}, {target})")
    ports = [f"({_n_t(p, 'name')} or '', {_n_t(p, 'protocol')} or 'TCP', {_n_i(p, 'port')})"
             for p in _n_ds(root, "ports")]
    return (f"({namespace}, {name}, {_n_t(_n_d(meta, 'labels'), SERVICE_NAME_LABEL)}, "
            f"d_named({address_type[0]}), False, {_tuple_of(ports)}, {_tuple_of(endpoints)})")


def _direct_ready(value: Any) -> bool:
    ready = _direct_b(value)
    return True if ready is None else ready


def _direct_serving(ready: bool, value: Any) -> bool:
    serving = _direct_b(value)
    return ready if serving is None else serving


def _direct_pod(root: blockyaml.Node, lines: list[str]) -> str:
    """`_fast_pod` in the template."""
    meta, namespace, name = _n_name(root)
    spec, status = _n_d(root, "spec"), _n_d(root, "status")
    ips = []
    for p in _n_ds(status, "podIPs"):
        ip = _n_value(p, "ip")
        if ip is None:
            raise _NoDirect
        ips.append(f"d_ip(d_named({ip[0]}))")
    if ips:
        lines.append(f"d_ips = {_tuple_of(ips)}")
    else:
        lines.append(f"d_one = {_n_t(status, 'podIP')}")
        lines.append("d_ips = (d_ip(d_one),) if d_one else ()")
    ports = [f"d_container_port({_n_t(port, 'name')}, {_value_or_none(port, 'containerPort')}, "
             f"{_n_t(port, 'protocol')})"
             for container in _n_ds(spec, "containers") for port in _n_ds(container, "ports")]
    labels = []
    for key, value in _n_labels(_n_d(meta, "labels")):
        if value[0] != "value":
            raise _NoDirect
        labels.append(f"({key!r}, {value[1] if value[2] else f'd_s({value[1]})'})")
    return (f"d_pod(namespace={namespace}, name={name}, node_name={_n_t(spec, 'nodeName')}, pod_ips=d_ips, "
            f"host_network=bool({_n_b(spec, 'hostNetwork')}), phase={_n_t(status, 'phase')}, "
            f"labels={_tuple_of(labels)}, container_ports={_tuple_of(ports)}, source=d_source, line=L)")


def _n_labels(node: blockyaml.Node) -> list[tuple[str, blockyaml.Node]]:
    """A mapping's items as `tuple(sorted(labels.items()))` orders them: its keys are distinct, so by key."""
    items: dict[Any, blockyaml.Node] = node[1]
    if any(type(key) is not str for key in items):
        raise _NoDirect
    return sorted(items.items(), key=lambda item: item[0])


_DIRECT_WRITERS: dict[str, Callable[[blockyaml.Node, list[str]], str]] = {
    "Service": _direct_service, "EndpointSlice": _direct_slice, "Pod": _direct_pod,
}


def _same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (dataclasses field by field)."""
    if type(a) is not type(b):
        return False
    if type(a) is tuple or type(a) is list:
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is frozenset:
        return bool(a == b) and all(type(x) is str for x in a | b)
    fields = getattr(type(a), "__dataclass_fields__", None)
    if fields is not None:
        return all(_same(getattr(a, f), getattr(b, f)) for f in fields)
    return bool(a == b)


def _direct_kind(tree: blockyaml.Node, kind: str) -> list[str]:
    """Statements that give way unless the document has this kind and the apiVersion add_document builds it from."""
    kind_value = _n_value(tree, "kind")
    if kind_value is None:
        raise _NoDirect
    lines = [f"if {kind_value[0]} != {kind!r}: raise d_Unfit"]
    version = _n_value(tree, "apiVersion")
    if version is not None:
        lines.append(f"if {version[0]} is not None and {version[0]} != {_KNOWN_KINDS[kind]!r}: raise d_Unfit")
    return lines


def _direct_objects(source: str | None, kinds: frozenset[str] | None) -> blockyaml.Direct:
    """For blockyaml.documents: templates of Services, EndpointSlices and Pods give the object
    (a Service, a Pod, or the slice as `_fast_packed_slice` packs it) in the document's place."""
    names: dict[str, Any] = {
        "d_Unfit": _Unfit, "d_t": _direct_t, "d_s": _direct_s, "d_b": _direct_b, "d_i": _direct_i,
        "d_named": _direct_named, "d_ip": canonical_ip, "d_port": _direct_service_port,
        "d_ingress": LoadBalancerIngress, "d_codes": _direct_codes, "d_service": Service,
        "d_ready": _direct_ready, "d_serving": _direct_serving, "d_container_port": _direct_container_port,
        "d_pod": Pod, "d_source": source,
    }

    def direct(tree: blockyaml.Node, document: Any) -> blockyaml.DirectCode | None:
        kind = document.get("kind") if isinstance(document, dict) else None
        if type(kind) is not str or kind not in _DIRECT_WRITERS or (kinds is not None and kind not in kinds):
            return None
        scratch = _Collector()
        scratch.source, scratch.kinds = source, kinds
        try:
            scratch.add_document(document, getattr(document, "line", None), None)
        except _SchemaError:
            return None
        made = [*scratch.services, *scratch.slices, *scratch.pods]
        if len(made) != 1:
            return None
        expected = made[0]
        try:
            lines = _direct_kind(tree, kind)
            made_expression = _DIRECT_WRITERS[kind](tree, lines)
        except _NoDirect:
            return None
        lines.append(f"return {made_expression}")
        return lines, names, lambda given: _same(given, expected)

    return direct


# --------------------------------------------------------------------------------------
# Reading files.

@functools.cache
def _line_loader() -> Any:
    """The safe YAML loader class whose mappings remember their line numbers (`_LineLoader`).

    Made on first use, so that PyYAML is imported only when YAML is read: JSON objects never need it.
    """
    import yaml

    base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class _LineLoader(base):  # type: ignore[misc,valid-type]
        """A safe YAML loader whose mappings remember their line numbers."""

        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self._resolved: dict[tuple[str, tuple[bool, bool]], str] = {}

        # The safe loader has no path resolvers, so a scalar's tag depends only on its text and
        # how it was written: short texts (ports, protocols, booleans) repeat and are looked up once.
        if not base.yaml_path_resolvers:
            def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
                if kind is yaml.ScalarNode and len(value) <= 32:
                    key = (value, implicit)
                    tag = self._resolved.get(key)
                    if tag is None:
                        tag = self._resolved[key] = super().resolve(kind, value, implicit)
                    return tag
                return super().resolve(kind, value, implicit)

            def descend_resolver(self, current_node: Any, current_index: Any) -> None:
                return None

            def ascend_resolver(self) -> None:
                return None

    def _construct_lined_mapping(loader: Any, node: yaml.MappingNode) -> Iterator[_LinedDict]:
        data = _LinedDict()
        data.line = node.start_mark.line + 1
        data.key_lines = {
            key.value: key.start_mark.line + 1
            for key, _ in node.value
            if isinstance(key, yaml.ScalarNode)
        }
        yield data
        data.update(loader.construct_mapping(node))

    _LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_lined_mapping)
    return _LineLoader

_YAML_MAP, _YAML_STR = "tag:yaml.org,2002:map", "tag:yaml.org,2002:str"
# Scalar tags whose safe constructors are plain functions of the node.
_YAML_SCALARS = frozenset("tag:yaml.org,2002:" + t for t in ("null", "bool", "int", "float", "timestamp", "binary"))
_YAML_SEQ = "tag:yaml.org,2002:seq"


def _fast_yaml_document(loader: Any, root: yaml.Node) -> Any:
    """What `check_yaml_node` then `loader.construct_document` give for a document without aliases.

    Builds the same values, line-remembering mappings included, in one walk that also
    counts the nodes and their depth. Raises _Unfit (nothing is half-built for the
    caller) on anything else: merge keys, other tags, non-scalar keys, a bound
    exceeded, any error, so that the general path runs and answers.
    """
    import yaml

    from kpa.limits import MAX_NESTING, MAX_YAML_NODES

    scalar = yaml.ScalarNode
    constructors = loader.yaml_constructors
    count = 0

    def build(node: Any, depth: int) -> Any:
        nonlocal count
        count += 1
        if depth > MAX_NESTING:
            raise _Unfit
        tag = node.tag
        cls = type(node)
        if cls is scalar:
            if tag == _YAML_STR:
                return node.value
            if tag in _YAML_SCALARS:
                return constructors[tag](loader, node)
            raise _Unfit
        if cls is yaml.MappingNode and tag == _YAML_MAP:
            data = _LinedDict()
            data.line = node.start_mark.line + 1
            key_lines: dict[str, int] = {}
            pairs = []
            for key_node, value_node in node.value:
                if type(key_node) is not scalar:
                    raise _Unfit
                key_lines[key_node.value] = key_node.start_mark.line + 1
                pairs.append((build(key_node, depth + 1), value_node))
            data.key_lines = key_lines
            for key, value_node in pairs:
                data[key] = build(value_node, depth + 1)
            return data
        if cls is yaml.SequenceNode and tag == _YAML_SEQ:
            return [build(item, depth + 1) for item in node.value]
        raise _Unfit

    try:
        data = build(root, 0)
    except Exception:
        raise _Unfit from None
    if count > MAX_YAML_NODES:
        raise _Unfit
    return data


def _looks_like_json(text: str) -> bool:
    stripped = text.lstrip()
    return stripped[:1] in ("{", "[")


def _plain_scalars() -> Callable[[str], Any]:
    """A plain scalar's value as `_LineLoader` constructs it; blockyaml.Unfit for other tags."""
    import yaml

    from kpa.k8s import blockyaml

    loader = _line_loader()("")
    resolve, constructors = loader.resolve, loader.yaml_constructors
    implicit = (True, False)
    node = yaml.ScalarNode
    resolvers = loader.yaml_implicit_resolvers
    # Texts whose first character no implicit resolver looks at are strings.
    special = frozenset(c for c in resolvers if c) if None not in resolvers and "" in resolvers else None

    def plain(text: str) -> Any:
        if special is not None and text[0] not in special:
            return text
        tag = resolve(node, text, implicit)
        if tag == _YAML_STR:
            return text
        if tag in _YAML_SCALARS:
            return constructors[tag](loader, node(tag, text))
        raise blockyaml.Unfit

    return plain


@functools.cache
def _typed_plain_scalars() -> tuple[str, str | None] | None:
    """For blockyaml's templates: an expression that matches a plain scalar's whole text
    whenever one of the implicit resolvers the loader tries for it (those of its first
    character, then the wildcard ones) matches it; a scalar it does not match is a string.
    With it, the first characters that have resolvers (None if there are wildcard ones).

    None if a resolver's expression is not of the form this relies on (anchored at both
    ends and nowhere else, no flags but verbose and Unicode).
    """
    loader = _line_loader()("")
    by_patterns: dict[tuple[str, ...], list[str]] = {}
    wildcard: list[str] = []
    for first, entries in loader.yaml_implicit_resolvers.items():
        expressions = []
        for _, regexp in entries:
            pattern = regexp.pattern
            if (not isinstance(pattern, str) or not pattern.startswith("^") or not pattern.endswith("$")
                    or "$" in pattern[1:-1] or regexp.flags & ~(re.X | re.U)):
                return None
            expressions.append(("(?x:" if regexp.flags & re.X else "(?:") + pattern[1:-1] + ")")
        if first is None:
            wildcard += expressions
        elif first and expressions:
            by_patterns.setdefault(tuple(expressions), []).append(first)
    alternatives = [f"(?=[{''.join(re.escape(c) for c in sorted(firsts))}])(?:{'|'.join(expressions)})"
                    for expressions, firsts in by_patterns.items()] + wildcard
    keyed = "".join(c for firsts in by_patterns.values() for c in firsts)
    return "|".join(alternatives) or "(?!)", None if wildcard else keyed


def _yaml_documents(text: str, source: str, ranges: list[tuple[int, int, int]] | None = None,
                    plain: bool = False, nested: bool = False, direct: blockyaml.Direct | None = None,
                    ) -> Iterator[Any]:
    """The documents of a YAML text (with `ranges`, of those parts: see blockyaml.documents).

    `plain`: the text was found plain (`blockyaml._text_is_plain`); `nested`: its nesting
    was checked (`check_nesting`). Either is then not done again. `direct`: see
    blockyaml.documents (`_direct_objects`: some documents come as the object they hold;
    `_Collector.add_read` takes either).
    """
    if not nested:
        check_nesting(text, source)
    # Block-style YAML as kubectl and yaml.dump write it is read by blockyaml, which gives the
    # same documents; a document it is not sure of is read by the safe loader, alone if the
    # loader reads it alone without an error (so it reads it as in the whole text), else
    # with the rest of the text.
    from kpa.k8s import blockyaml

    budget = len(text)  # blank lines put before the documents read alone, in all (each costs its line number)
    for document in blockyaml.documents(text, _LinedDict, _plain_scalars(), ranges, _typed_plain_scalars(), plain,
                                        direct):
        if type(document) is blockyaml.Rest:
            prefix = "\n" * document.line
            budget -= document.line
            if document.end is not None and budget >= 0:
                try:
                    alone = list(_loaded_yaml_documents(prefix + text[document.offset:document.end], source))
                except InputError:
                    alone = []
                if len(alone) == 1:
                    yield alone[0]
                    continue
            yield from _loaded_yaml_documents(prefix + text[document.offset:], source)
            return
        yield document


def _loaded_yaml_documents(text: str, source: str) -> Iterator[Any]:
    import yaml

    try:
        loader = _line_loader()(text)
        # Without anchors there are no aliases, so every document is a tree the fast walk can build.
        fast = "&" not in text
        try:
            while loader.check_node():
                node = loader.get_node()
                if fast:
                    try:
                        document = _fast_yaml_document(loader, node)
                    except _Unfit:
                        pass
                    else:
                        yield document
                        continue
                # Aliases are shared when loaded, but every walk over the objects expands them.
                check_yaml_node(node, source)
                yield loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else None
        detail = " ".join(part for part in (error.problem, error.context) if part)
        raise InputError(
            source, line, f"expected valid YAML, found a syntax error ({detail or 'unknown'})"
        ) from None
    except yaml.YAMLError as error:
        position = getattr(error, "position", None)
        line = text.count("\n", 0, position) + 1 if isinstance(position, int) else None
        reason = getattr(error, "reason", None) or str(error).splitlines()[0]
        raise InputError(source, line, f"expected valid YAML, found {str(reason)[:200]}") from None


_JSON = json.JSONDecoder()
_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _json_with_item_lines(
    text: str, take: Callable[[Any, int, int], None] | None = None,
    skip: Callable[[str, int], dict[int, int]] | None = None,
) -> tuple[Any, dict[int, int]]:
    """Decode JSON; for a top-level object's "items" list, also each item's first line.

    The items are decoded one at a time by the same C decoder that `json.loads` uses, so
    this costs no more than decoding the whole text at once. Anything unexpected falls back
    to `json.loads`, which gives its usual errors.

    With `take`, each item of a top-level "items" list is handed to it with its line and
    its offset in the text as soon as it is decoded, and not kept (the list holds None in its place); anything
    unexpected, or a second "items" list, raises _Unfit instead of falling back.

    With `take`, `skip(text, start)` (given the first item's offset) may also name items not to
    decode, as {offset: offset of its end}: an item met at such an offset is passed over to that
    end, and handed to `take` as None (with its offset, but line 0: not counted). Nothing here
    checks that the text passed over is one item: the caller must (see `_LaterPods.build`).
    """
    decode = _JSON.raw_decode
    lists = 0

    def fallback() -> tuple[Any, dict[int, int]]:
        if take is not None:
            raise _Unfit
        return json.loads(text), {}

    def space(text: str, i: int) -> int:
        m = _JSON_SPACE.match(text, i)
        return m.end() if m else i

    lines: dict[int, int] = {}
    line, counted = 1, 0
    try:
        i = space(text, 0)
        if text[i : i + 1] != "{":
            return fallback()
        doc: dict[str, Any] = {}
        i = space(text, i + 1)
        if text[i : i + 1] == "}":
            i += 1
        else:
            while True:
                key, i = decode(text, i)
                i = space(text, i)
                if not isinstance(key, str) or text[i : i + 1] != ":":
                    return fallback()
                i = space(text, i + 1)
                if key == "items" and text[i : i + 1] == "[":
                    lists += 1
                    if take is not None and lists > 1:
                        raise _Unfit
                    items: list[Any] = []
                    i = space(text, i + 1)
                    if text[i : i + 1] == "]":
                        i += 1
                    else:
                        passed = skip(text, i) if skip is not None and take is not None else {}
                        while True:
                            start = i
                            end = passed.get(start)
                            if end is not None:
                                assert take is not None
                                i = end
                                take(None, 0, start)
                                items.append(None)
                            else:
                                item, i = decode(text, i)
                                line += text.count("\n", counted, start)
                                counted = start
                                if take is not None:
                                    take(item, line, start)
                                    item = None
                                else:
                                    lines[id(item)] = line
                                items.append(item)
                            i = space(text, i)
                            if text[i : i + 1] == ",":
                                i = space(text, i + 1)
                                continue
                            if text[i : i + 1] != "]":
                                return fallback()
                            i += 1
                            break
                    value: Any = items
                else:
                    value, i = decode(text, i)
                doc[key] = value
                i = space(text, i)
                if text[i : i + 1] == ",":
                    i = space(text, i + 1)
                    continue
                if text[i : i + 1] != "}":
                    return fallback()
                i += 1
                break
        if space(text, i) != len(text):
            return fallback()
        return doc, lines
    except (json.JSONDecodeError, StopIteration):
        return fallback()


_REPORT_LIMIT = 8 << 20  # larger JSON is not decoded again to find where a schema error is


def _load_text(box: list[str], source: str, collector: _Collector) -> None:
    """Read the objects of one file's text, which `box` holds alone, so it can be let go early."""
    text = box.pop()
    collector.source, collector.item_lines = source, {}
    if _looks_like_json(text):
        check_nesting(text, source)
        try:
            # A kubectl List: its items become objects as they are decoded, so their decoded
            # form never all lives at once. Anything else is decoded whole and read as before.
            streamed = _streamed_list(text, collector)
            if streamed:
                return
            document, collector.item_lines = _json_with_item_lines(text)
        except json.JSONDecodeError as error:
            raise InputError(
                source,
                error.lineno,
                f"expected valid JSON, found {error.msg.lower()} at column {error.colno}",
            ) from None
        small = text if len(text) <= _REPORT_LIMIT else None
        del text  # a large text is not needed again: its memory goes back before the objects are built
        try:
            # The decoded document is this reader's own: each List item is let go once read.
            collector.add_document(document, 1, None, consume=True)
        except _SchemaError as error:
            # JSON decoding keeps no positions; JSON is (nearly always) YAML, so decode it
            # again with line tracking to say where the problem is.
            _report_with_lines(small, source, error, collector.kinds)
        return
    for document in _yaml_documents(text, source, direct=_direct_objects(source, collector.kinds)):
        try:
            collector.add_read(document)
        except _SchemaError as error:
            raise InputError(source, error.line, error.message) from None


def _streamed_list(text: str, collector: _Collector, later: _LaterPods | None = None) -> bool:
    """Read a top-level `*List` of objects that all carry their kind, item by item as decoded.

    Gives exactly what decoding the whole text and `add_document` give, or does nothing
    and returns False when it cannot be sure to (no List, an item without a kind, a schema
    error, a second "items" key, a JSON error): then the whole text is read as before,
    which reports any problem as before.

    With `later`, the Pods are not built: `later` records where each one is, and
    `_LaterPods.build` builds them as this would have. With `later.guess` as well, the items
    that look like Pods in kubectl's layout are not even decoded (`_guessed_pods`): then the
    objects read here are only right if `_LaterPods.build` finds each of those to be exactly one
    Pod item; it raises if not.
    """
    scratch = _Collector()
    scratch.source = collector.source
    scratch.kinds = collector.kinds
    defer = later is not None and (collector.kinds is None or "Pod" in collector.kinds)

    def take(item: Any, line: int, start: int) -> None:
        if item is None and line == 0:  # passed over undecoded (see _guessed_pods)
            assert later is not None
            later.items.append((start, guessed[start]))
            return
        if type(item) is not dict:
            raise _Unfit
        kind = item.get("kind")
        if type(kind) is not str or not kind:
            raise _Unfit
        if defer and _built_as_pod(item):
            assert later is not None
            later.items.append((start, -1))
            return
        try:
            scratch.add_document(item, line, None)
        except _SchemaError:
            raise _Unfit from None

    guessed: dict[int, int] = {}

    def skip(text: str, first: int) -> dict[int, int]:
        guessed.update(_guessed_pods(text, first))
        return guessed

    try:
        document, _ = _json_with_item_lines(text, take, skip if later is not None and defer and later.guess else None)
    except (_Unfit, json.JSONDecodeError):
        return False
    kind = document.get("kind") if isinstance(document, dict) else None
    if not (isinstance(kind, str) and kind.endswith("List") and isinstance(document.get("items"), list)):
        return False
    if later is not None and later.items and scratch.pods:
        return False  # Pods in a nested List: built here, they would not keep their place among the others
    collector.take(scratch)
    return True


def _built_as_pod(item: dict[str, Any]) -> bool:
    """Whether add_document builds this item (which has a kind) as a Pod: kind Pod, apiVersion v1 or none."""
    return item["kind"] == "Pod" and item.get("apiVersion", "v1") in (None, "v1")


class _LaterPods:
    """The Pod items of one JSON List that `load_objects_early` leaves to be built later."""

    def __init__(self, text: str, source: str, kinds: frozenset[str] | None, guess: bool = False) -> None:
        self.text, self.source, self.kinds, self.guess = text, source, kinds, guess
        #: (offset, end) of each Pod item, in the order of the file; the end is -1 for an item that was
        #: decoded (so known to be one item), else where the item was taken to end without decoding it.
        self.items: list[tuple[int, int]] = []

    def build(self) -> list[Pod]:
        """The Pods, as `load_objects` builds them; raises on anything `load_objects` would not accept,
        including the nesting check, which `load_objects_early` left out, and raises _Unfit if an item
        passed over undecoded is not exactly one Pod item (then the objects read with it may be wrong)."""
        check_nesting(self.text, self.source)
        scratch = _Collector()
        scratch.source, scratch.kinds = self.source, self.kinds
        decode, text = _JSON.raw_decode, self.text
        line, counted = 1, 0
        for start, end in self.items:
            line += text.count("\n", counted, start)
            counted = start
            item, stop = decode(text, start)
            if end >= 0 and (stop != end or type(item) is not dict or type(item.get("kind")) is not str
                             or not _built_as_pod(item)):
                raise _Unfit  # not what the text's layout said: the objects read around it are not sure
            scratch.add_document(item, line, None)
        if len(scratch.pods) != len(self.items):
            raise _Unfit
        return scratch.pods


def _guessed_pods(text: str, first: int) -> dict[int, int]:
    """Where the Pod items of a List printed as kubectl prints it seem to be, judged by the layout
    alone: {offset: end} of each item that is followed by another and begins with `apiVersion: v1`
    and `kind: Pod` as its first two keys (in either order), items being separated by `},` and `{` on lines of their own
    at the first item's indentation. A guess only: the indentation can lie (an object nested
    deeper printed there; a later duplicate `kind` key), which `_LaterPods.build` finds out.
    A raw line break never occurs inside a JSON string, so the separators are never in one.
    """
    bol = text.rfind("\n", 0, first) + 1
    col = first - bol
    if text[bol:first] != " " * col or text[first : first + 2] != "{\n":
        return {}
    j = first + 2
    inner = 0
    while text[j + inner : j + inner + 1] == " ":
        inner += 1
    if inner <= col:
        return {}
    pad, keys = " " * col, " " * inner
    separator = f"\n{pad}}},\n{pad}{{\n"
    version, kind = f'\n{keys}"apiVersion": "v1",', f'\n{keys}"kind": "Pod",'
    heads = ("{" + version + kind + "\n", "{" + kind + version + "\n")  # keys sorted (kubectl), or kind first
    step = len(separator) - 2  # from a separator to the next item's "{"
    spans: dict[int, int] = {}
    find, starts = text.find, text.startswith
    start, i = first, text.find(separator, first)
    while i >= 0:
        if starts(heads, start):
            spans[start] = i + col + 2  # just after the "}"
        start = i + step
        i = find(separator, start)
    return spans


def _report_with_lines(text: str | None, source: str, original: _SchemaError,
                       kinds: frozenset[str] | None = None) -> None:
    scratch = _Collector()
    scratch.source = source
    scratch.kinds = kinds
    if text is None:
        # Decoding it again with positions would take many times the time and memory: say what is wrong.
        raise InputError(source, original.line, original.message) from None
    import yaml

    try:
        for document in _yaml_documents(text, source):
            scratch.add_document(document, getattr(document, "line", None), None)
    except _SchemaError as error:
        raise InputError(source, error.line, error.message) from None
    except (yaml.YAMLError, InputError):
        pass
    raise InputError(source, original.line, original.message) from None


def _files_under(directory: Path) -> list[Path]:
    """Object files under a directory; one that cannot be listed is an error, never taken as empty."""

    def unreadable(error: OSError) -> None:
        raise InputError(str(error.filename or directory), None, f"cannot read this directory: {error.strerror}")

    found = []
    for root, dirs, files in os.walk(directory, onerror=unreadable, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in files:
            name = f.lower().removesuffix(".gz")
            path = Path(root) / f
            if not f.startswith(".") and name.endswith(OBJECT_FILE_SUFFIXES) and path.is_file():
                found.append(path)
    return sorted(found)


def _decode(data: bytes, source: str) -> str:
    """Bytes of a dump as text, gunzipping it first when it is gzip-compressed."""
    if data[:2] == b"\x1f\x8b":
        data = gunzip_bounded(data, source)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise InputError(source, line, "expected UTF-8 text, found binary data") from None


def _files_of(raw: str, collector: _Collector) -> list[Path]:
    """The object files a path names: itself, or the files under a directory."""
    path = Path(raw)
    if path.is_dir():
        files = _files_under(path)
        if not files:
            collector.warnings.append(f"{raw}: no *.yaml, *.yml or *.json files found")
        return files
    if path.exists():
        return [path]
    raise InputError(raw, None, "expected a file or directory, found nothing there")


def _read_text(file: Path) -> str:
    """A file's text; its bytes are gone when this returns, before its objects are built."""
    try:
        with open(file, "rb") as fh:
            data = read_bounded(fh, str(file))
    except OSError as error:
        raise InputError(str(file), None, f"cannot read: {error.strerror}") from None
    return _decode(data, str(file))


def load_objects(paths: Sequence[str], stdin: TextIO | None = None,
                 kinds: frozenset[str] | None = None) -> ClusterObjects:
    """Read Kubernetes objects from files, directories (recursively) and `-` (stdin).

    Accepts single objects, `List`/`*List` kinds, multi-document YAML and `kubectl -o
    json|yaml` output, optionally gzip-compressed. Kinds kpa does not use are skipped and counted in `warnings`.
    With `kinds`, only objects of those kinds are built (and checked); the others are
    passed over without a warning (the files must still be valid JSON or YAML).
    Raises InputError (FILE:LINE: expected ..., found ...) for malformed input.
    """
    collector = _Collector()
    collector.kinds = kinds
    for raw in paths:
        if raw == "-":
            if stdin is not None:
                _load_text([stdin.read()], "<stdin>", collector)
            else:
                _load_text([_decode(read_bounded(sys.stdin.buffer, "<stdin>"), "<stdin>")], "<stdin>", collector)
            continue
        for file in _files_of(raw, collector):
            box = [_read_text(file)]  # only the list holds the text, so _load_text can let it go
            _load_text(box, str(file), collector)
    return collector.result()


# Multi-document YAML whose Pods can be told apart from the text: no directives, document end
# markers or separators with content; every line in column 0 a comment, a `- ` item, a `---`
# separator or a plain key (letters first) followed by `:` and a space or the line's end.
# (Searched in the text after a line break put in front, so that each starts with a literal.)
_YAML_MARKERS = re.compile(r"\n(?:---[^\n]|\.\.\.|%)")
_YAML_ODD_COLUMN_0 = re.compile(r"\n(?:[^A-Za-z #\n-]|-(?! |--(?:\n|\Z))|[A-Za-z][\w./-]*+(?!:(?: |\n|\Z)))")
_YAML_SEPARATOR = re.compile(r"\n---(?=\n|\Z)")
# Lines in column 0 that set the kind and the apiVersion, and the only ones of a Pod's document.
_YAML_KIND, _YAML_POD = "\nkind:", "\nkind: Pod"
_YAML_API_VERSION, _YAML_V1 = "\napiVersion:", "\napiVersion: v1"
_YAML_MAPPING_FIRST = re.compile(r"(?:---\n)?(?: *(?:#[^\n]*)?\n)*[A-Za-z]")

_Ranges = list[tuple[int, int, int]]


def _yaml_pod_split(text: str) -> tuple[_Ranges, _Ranges, int] | None:
    """A multi-document YAML text's parts (as blockyaml.documents' ranges) without the documents
    that are certainly Pods, the parts with those, and their number; None when that cannot be told.

    A document is certainly a Pod when its root is a block mapping (its first line a plain key
    in column 0) and its only lines that set the kind and apiVersion are `kind: Pod` and at
    most one `apiVersion: v1`: with the whole text as above, those lines are keys of the root
    mapping, with those values.
    """
    from kpa.k8s import blockyaml

    if not blockyaml._text_is_plain(text):
        return None
    t = "\n" + text  # offsets in t are one more than in text
    if _YAML_MARKERS.search(t) or _YAML_ODD_COLUMN_0.search(t):
        return None
    starts = [0, *(m.start() for m in _YAML_SEPARATOR.finditer(t)), len(text)]  # the \n before: the line in text
    find, size, last = t.find, len(t), len(text)
    others: _Ranges = []
    pods: _Ranges = []
    count = 0
    line, counted = 1, 0
    for a, b in itertools.pairwise(starts):
        if a == b:
            continue
        line += text.count("\n", counted, a)
        counted = a
        # Its lines in column 0 that set the kind: one, `kind: Pod`; and apiVersion: none, or one `apiVersion: v1`.
        # (In t, the document is t[a:b], and the last one goes on to t's end.)
        e = b if b < last else size
        k = find(_YAML_KIND, a, e)
        v = find(_YAML_API_VERSION, a, e)
        pod = (k >= 0 and t.startswith(_YAML_POD, k) and (k + len(_YAML_POD) == size or t[k + len(_YAML_POD)] == "\n")
               and find(_YAML_KIND, k + 1, e) < 0
               and (v < 0 or (t.startswith(_YAML_V1, v) and (v + len(_YAML_V1) == size or t[v + len(_YAML_V1)] == "\n")
                              and find(_YAML_API_VERSION, v + 1, e) < 0))
               and _YAML_MAPPING_FIRST.match(text, a) is not None)
        if pod:
            count += 1
        into = pods if pod else others
        if into and into[-1][1] == a:
            into[-1] = (into[-1][0], b, into[-1][2])
        else:
            into.append((a, b, line))
    if not count:
        return None
    return others, pods, count


class _LaterYamlPods(_LaterPods):
    """The Pod documents of a YAML text (see `_yaml_pod_split`), built later."""

    def __init__(self, text: str, ranges: _Ranges, count: int, source: str, kinds: frozenset[str] | None) -> None:
        super().__init__(text, source, kinds)
        self.ranges, self.count = ranges, count

    def build(self) -> list[Pod]:
        scratch = _Collector()
        scratch.source, scratch.kinds = self.source, self.kinds
        # The first step found this text plain and its nesting within bounds.
        direct = _direct_objects(self.source, self.kinds)
        for document in _yaml_documents(self.text, self.source, self.ranges, plain=True, nested=True,
                                        direct=direct):
            if document is None:
                continue
            if type(document) is not Pod and not (
                    isinstance(document, dict) and type(document.get("kind")) is str and _built_as_pod(document)):
                raise _Unfit  # not what the text said: load_objects decides
            scratch.add_read(document)
        if len(scratch.pods) != self.count or len(scratch.services) + len(scratch.slices) + len(scratch.nodes):
            raise _Unfit
        return scratch.pods


def _early_yaml(text: str, source: str, collector: _Collector) -> _LaterYamlPods | None:
    """Read a YAML text's objects but its Pods into `collector`, and say how to build those later;
    None (and nothing read) when the Pods cannot be left for later."""
    if collector.kinds is not None and "Pod" not in collector.kinds:
        return None
    split = _yaml_pod_split(text)
    if split is None:
        return None
    others, pods, count = split
    scratch = _Collector()
    scratch.source, scratch.kinds = source, collector.kinds
    direct = _direct_objects(source, collector.kinds)
    for document in _yaml_documents(text, source, others, plain=True, direct=direct):  # (the split found it plain)
        try:
            scratch.add_read(document)
        except _SchemaError as error:
            raise InputError(source, error.line, error.message) from None
    if scratch.pods:
        return None  # Pods the text did not show (or read past the parts): read the file in one step
    collector.take(scratch)
    return _LaterYamlPods(text, pods, count, source, collector.kinds)


def load_objects_early(paths: Sequence[str], kinds: frozenset[str] | None = None
                       ) -> tuple[ClusterObjects, Callable[[], dict[tuple[str, str], Pod]]]:
    """`load_objects` in two steps: the objects without their Pods, then the rest of the work.

    The first step reads and checks every object except the Pods of a JSON List, and
    leaves out the nesting check of such a List. Pod items that kubectl's layout shows
    (`_guessed_pods`) are passed over without decoding them; other Pod items are decoded
    (their kind must be known, and the items around them read) but not built. The second
    step, `finish()`, does what was left out and gives the Pods by (namespace, name), as
    `load_objects(...).detach_pods()` would; it raises on anything `load_objects` would
    not accept, and also when an item passed over turns out not to be exactly one Pod item:
    then the first step's objects may be wrong (a Service hidden where the layout showed a
    Pod, an object nested in a Pod taken for an item).

    So: when `finish()` returns, the objects and the Pods are exactly what `load_objects`
    gives. When the first step raises, `load_objects` raises too, which is how a caller
    learns the error message. When `finish()` raises, the caller must read the objects with
    `load_objects` (which then raises the error, if there is one) and work out again
    whatever it worked out from the first step's objects. Files are never read from
    standard input here.
    """
    collector = _Collector()
    collector.kinds = kinds
    later: list[tuple[int, _LaterPods]] = []
    for raw in paths:
        if raw == "-":
            raise ValueError("standard input is read by load_objects")
        for file in _files_of(raw, collector):
            text = _read_text(file)
            source = str(file)
            if _looks_like_json(text):
                collector.source, collector.item_lines = source, {}
                pods = _LaterPods(text, source, kinds, guess=True)
                if _streamed_list(text, collector, pods):
                    later.append((len(collector.pods), pods))  # its nesting is checked later, Pods or not
                    continue
            else:
                yaml_pods = _early_yaml(text, source, collector)
                if yaml_pods is not None:
                    later.append((len(collector.pods), yaml_pods))
                    continue
            _load_text([text], source, collector)
            del text
    built, collector.pods = collector.pods, []
    objects = collector.result()

    def finish() -> dict[tuple[str, str], Pod]:
        pods: list[Pod] = []
        done = 0
        for at, deferred in later:
            pods += built[done:at]
            pods += deferred.build()
            done = at
        pods += built[done:]
        return {(p.namespace, p.name): p for p in pods}

    return objects, finish


__all__ = [
    "DEFAULT_AFFINITY_TIMEOUT",
    "NAMESPACE_NAME_LABEL",
    "SERVICE_NAME_LABEL",
    "ClusterObjects",
    "ContainerPort",
    "Endpoint",
    "EndpointConditions",
    "EndpointPort",
    "EndpointSlice",
    "LoadBalancerIngress",
    "Namespace",
    "Node",
    "ObjectRef",
    "Pod",
    "Service",
    "ServiceEndpoint",
    "ServicePort",
    "canonical_ip",
    "ip_family",
    "load_objects",
    "load_objects_early",
    "made_frozen",
    "objects_from_documents",
]
