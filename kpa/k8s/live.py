"""Read Services, EndpointSlices, Endpoints, Nodes and Pods from a live API server.

Strictly read-only: every request here is a paginated list. Responses are kept as raw
JSON and converted by the same code that reads `kubectl get -o json` dumps, so a live
cluster and a saved dump of it give identical results.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from kpa.errors import KpaError
from kpa.k8s.objects import ClusterObjects, objects_from_documents

# The client's config loaders carry no annotations.
_kube_config: Any = config

RBAC_HINT = (
    "kpa needs get/list on services, endpoints, nodes, pods, namespaces, "
    "endpointslices.discovery.k8s.io and networkpolicies.networking.k8s.io; see the kpa-reader ClusterRole in docs/kubernetes.md"
)
# (connect, read) seconds; a list of a large cluster's pods can take a while to stream.
REQUEST_TIMEOUT = (10.0, 120.0)
# Completed pods keep their IPs in status although those IPs may already belong to others.
LIVE_POD_FIELD_SELECTOR = "status.phase!=Succeeded,status.phase!=Failed"
DEFAULT_KUBECONFIG = "~/.kube/config"


def context_namespace(kubeconfig: str | None = None, context: str | None = None) -> str | None:
    """The namespace the kubeconfig's (current or given) context names, like kubectl's default."""
    config_file = kubeconfig or os.environ.get("KUBECONFIG") or None
    if config_file is None and Path(DEFAULT_KUBECONFIG).expanduser().exists():
        config_file = str(Path(DEFAULT_KUBECONFIG).expanduser())
    if config_file is None:
        return None
    try:
        contexts, current = _kube_config.list_kube_config_contexts(config_file=config_file.split(os.pathsep)[0])
    except Exception:  # an unreadable kubeconfig is reported when kpa connects
        return None
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else current
    ns = (chosen or {}).get("context", {}).get("namespace")
    return str(ns) if ns else None


def connect(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """An API client from --kubeconfig, else $KUBECONFIG, else ~/.kube/config, else in-cluster.

    `kubeconfig` and $KUBECONFIG may list several files separated by the OS path separator;
    they are merged like kubectl does.
    """
    quiet_urllib3()
    configuration = client.Configuration()
    # Fail fast on an unreachable server instead of urllib3's default of three retries.
    configuration.retries = 1
    # KUBECONFIG is read here rather than relying on the client, which captures it at import.
    config_file = kubeconfig or os.environ.get("KUBECONFIG") or None
    if config_file is None and Path(DEFAULT_KUBECONFIG).expanduser().exists():
        config_file = str(Path(DEFAULT_KUBECONFIG).expanduser())
    if config_file is None:
        if context:
            raise KpaError(f"--context {context} given but no kubeconfig was found")
        try:
            _kube_config.load_incluster_config(client_configuration=configuration)
        except ConfigException:
            raise KpaError(
                "no kubeconfig found (--kubeconfig, $KUBECONFIG, ~/.kube/config) and not "
                "running inside a pod"
            ) from None
        return client.ApiClient(configuration)
    try:
        api_client: client.ApiClient = _kube_config.new_client_from_config(
            config_file=config_file,
            context=context,
            persist_config=False,
            client_configuration=configuration,
        )
    except ConfigException as error:
        raise KpaError(f"cannot use kubeconfig {config_file}: {error}") from None
    except (OSError, ValueError) as error:
        raise KpaError(f"cannot read kubeconfig {config_file}: {error}") from None
    api_client.configuration.retries = 1
    if not api_client.configuration.verify_ssl:
        import sys

        print(f"warning: the kubeconfig turns off TLS certificate checks for {api_client.configuration.host}",
              file=sys.stderr)
    return api_client


def quiet_urllib3() -> None:
    """urllib3's own warnings and retry logs are not for kpa's users: kpa reports what matters itself."""
    import logging
    import warnings

    logging.getLogger("urllib3").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"urllib3(\..*)?$")
    try:
        import urllib3

        urllib3.disable_warnings()
    except ImportError:  # pragma: no cover - the kubernetes client depends on it
        pass


@dataclass(frozen=True)
class _Resource:
    plural: str  # as RBAC names it
    list_kind: str
    namespaced: bool
    field_selector: str | None = None


_SERVICES = _Resource("services", "ServiceList", True)
_SLICES = _Resource("endpointslices.discovery.k8s.io", "EndpointSliceList", True)
_ENDPOINTS = _Resource("endpoints", "EndpointsList", True)
_NODES = _Resource("nodes", "NodeList", False)
_PODS = _Resource("pods", "PodList", True, LIVE_POD_FIELD_SELECTOR)
_NAMESPACES = _Resource("namespaces", "NamespaceList", False)
_POLICIES = _Resource("networkpolicies.networking.k8s.io", "NetworkPolicyList", True)


def api_error_message(error: ApiException) -> str:
    """The human part of a Kubernetes Status body, or the HTTP reason."""
    body = error.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str) and body:
        try:
            status = json.loads(body)
        except ValueError:
            return body.strip()[:200]
        if isinstance(status, dict) and isinstance(status.get("message"), str):
            return str(status["message"])
    return str(error.reason or "")


def close(api_client: client.ApiClient) -> None:
    """Release the client's connection pool."""
    closable: Any = api_client
    closable.close()


def server_of(api_client: client.ApiClient) -> str:
    return str(api_client.configuration.host)


def unreachable(api_client: client.ApiClient, error: BaseException) -> KpaError:
    reason = getattr(error, "reason", None) or error
    return KpaError(f"cannot reach the Kubernetes API server at {server_of(api_client)}: {reason}")


def _list_pages(
    api_client: client.ApiClient,
    resource: _Resource,
    call: Callable[..., Any],
    scope: str,
    page_size: int,
    optional: bool = False,
) -> dict[str, Any] | None:
    """All items of one list, following `continue` tokens; returns one merged list object.

    An `optional` list the server refuses (403) or does not know (404) gives None.
    """
    items: list[Any] = []
    token: str | None = None
    restarted = False
    while True:
        kwargs: dict[str, Any] = {"limit": page_size, "_preload_content": False}
        if token:
            kwargs["_continue"] = token
        if resource.field_selector:
            kwargs["field_selector"] = resource.field_selector
        try:
            response = call(_request_timeout=REQUEST_TIMEOUT, **kwargs)
            page = json.loads(response.data)
        except ApiException as error:
            if error.status == 410 and token and not restarted:
                # The continue token expired mid-list; a consistent answer needs a fresh list.
                items, token, restarted = [], None, True
                continue
            if optional and error.status in (403, 404):
                return None
            raise _api_failure(api_client, error, "list", resource, scope) from None
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise unreachable(api_client, error) from None
        except ValueError as error:
            raise KpaError(
                f"the API server sent a malformed {resource.list_kind}: {error}"
            ) from None
        if not isinstance(page, dict):
            raise KpaError(f"the API server sent a malformed {resource.list_kind}")
        items.extend(page.get("items") or [])
        token = (page.get("metadata") or {}).get("continue") or None
        if not token:
            return {"kind": page.get("kind") or resource.list_kind, "items": items}


def _api_failure(
    api_client: client.ApiClient, error: ApiException, verb: str, resource: _Resource, scope: str
) -> KpaError:
    detail = api_error_message(error)
    if error.status == 403:
        return KpaError(
            f"forbidden: cannot {verb} {resource.plural} {scope} ({detail}). {RBAC_HINT}"
        )
    if error.status == 401:
        return KpaError(
            f"unauthorized: the API server at {server_of(api_client)} rejected the credentials "
            f"while trying to {verb} {resource.plural}; log in again or check the kubeconfig user"
        )
    return KpaError(
        f"cannot {verb} {resource.plural} {scope}: HTTP {error.status} {error.reason}: {detail}"
    )


def load_live(
    kubeconfig: str | None,
    context: str | None,
    namespace: str | None,
    page_size: int = 500,
    legacy_endpoints: bool = True,
    policy: bool = False,
    policy_optional: bool = False,
) -> ClusterObjects:
    """List the objects kpa needs from the cluster (read-only).

    With `namespace`, namespaced kinds are listed only there (for users whose RBAC is
    namespace-scoped); nodes are always listed cluster-wide. `legacy_endpoints=False`
    skips v1 Endpoints, which kube-proxy itself no longer reads. `policy=True` also lists
    Namespaces and NetworkPolicies (for `kpa policy`); `policy_optional=True` lists them
    where the server allows it (for `kpa lint`) and warns about the rest.
    """
    api_client = connect(kubeconfig, context)
    try:
        return list_objects(api_client, namespace, page_size, legacy_endpoints, policy,
                            policy_optional)
    finally:
        close(api_client)


def list_objects(
    api_client: client.ApiClient,
    namespace: str | None,
    page_size: int = 500,
    legacy_endpoints: bool = True,
    policy: bool = False,
    policy_optional: bool = False,
) -> ClusterObjects:
    """Like load_live, with an already-configured client."""
    skipped: list[str] = []
    documents = list_documents(api_client, namespace, page_size, legacy_endpoints, policy,
                               policy_optional, skipped)
    objects = objects_from_documents(documents, source=server_of(api_client))
    objects.unlisted = skipped
    if skipped:
        objects.warnings.append(
            f"could not list {' and '.join(skipped)} (forbidden or unknown); "
            "NetworkPolicy checks were skipped"
        )
    return objects


def list_documents(
    api_client: client.ApiClient,
    namespace: str | None,
    page_size: int = 500,
    legacy_endpoints: bool = True,
    policy: bool = False,
    policy_optional: bool = False,
    skipped: list[str] | None = None,
) -> list[dict[str, Any]]:
    """The raw list objects, as the API server sent them (for saving with `kpa collect`).

    `policy` adds Namespaces and NetworkPolicies; `policy_optional` adds them only where
    the server lets kpa list them, noting the others in `skipped`.
    """
    core = client.CoreV1Api(api_client)
    discovery = client.DiscoveryV1Api(api_client)
    plan: list[tuple[_Resource, Callable[..., Any], Callable[..., Any]]] = [
        (_SERVICES, core.list_service_for_all_namespaces, core.list_namespaced_service),
        (
            _SLICES,
            discovery.list_endpoint_slice_for_all_namespaces,
            discovery.list_namespaced_endpoint_slice,
        ),
        (_NODES, core.list_node, core.list_node),
        (_PODS, core.list_pod_for_all_namespaces, core.list_namespaced_pod),
    ]
    if policy or policy_optional:
        networking = client.NetworkingV1Api(api_client)
        plan += [
            (_NAMESPACES, core.list_namespace, core.list_namespace),
            (
                _POLICIES,
                networking.list_network_policy_for_all_namespaces,
                networking.list_namespaced_network_policy,
            ),
        ]
    if legacy_endpoints:
        plan.insert(
            2,
            (_ENDPOINTS, core.list_endpoints_for_all_namespaces, core.list_namespaced_endpoints),
        )
    documents = []
    for resource, list_all, list_namespaced in plan:
        optional = policy_optional and not policy and resource in (_NAMESPACES, _POLICIES)
        if namespace and resource.namespaced:
            scope = f"in namespace {namespace}"

            def call(_fn: Callable[..., Any] = list_namespaced, **kwargs: Any) -> Any:
                return _fn(namespace, **kwargs)

            found = _list_pages(api_client, resource, call, scope, page_size, optional)
        else:
            scope = "at cluster scope"
            found = _list_pages(api_client, resource, list_all, scope, page_size, optional)
        if found is None:
            if skipped is not None:
                skipped.append(resource.plural)
            continue
        documents.append(found)
    return documents


__all__ = [
    "RBAC_HINT",
    "api_error_message",
    "close",
    "connect",
    "list_documents",
    "list_objects",
    "load_live",
]
