"""Collect a node's netfilter rules through a short-lived privileged pod.

This is the only place kpa writes to a cluster, and only when asked to collect from a
node (`kubectl kpa trace --node`, `kpa collect --node`). The pod resembles what
`kubectl debug node/NODE` creates: pinned to the node, host network and PID namespaces,
privileged, the node's root filesystem at /host, tolerating every taint. It prints the
rule dumps between markers, exits, and is deleted whatever happens.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kpa import __version__
from kpa.errors import KpaError
from kpa.k8s.live import api_error_message, unreachable

# kpa's own image (the Dockerfile at the top of the repository): sh, grep, chroot, iptables
# (legacy and nft), ip6tables and nft. The node's own tools are preferred.
DEFAULT_IMAGE = f"ghcr.io/kpa-dev/kpa:v{__version__}"
POD_LABELS = {"app.kubernetes.io/name": "kpa", "app.kubernetes.io/component": "rule-collector"}
RBAC_HINT = (
    "collecting rules from a node needs create, get and delete on pods and get on pods/log "
    "in the target namespace; see docs/kubernetes.md"
)

# Section names, also the keys of collect_node_rules' result.
IPTABLES_SAVE = "iptables-save"
IP6TABLES_SAVE = "ip6tables-save"
NFT_RULESET_JSON = "nft-ruleset-json"
IPSET_SAVE = "ipset-save"
IPTABLES_BACKEND = "iptables-backend"
ERRORS = "errors"
DONE_MARKER = "==== kpa-done ===="

# Runs in the collector container. Each dump prefers the node's binary (chroot /host) so the
# rules are read with the same iptables flavour kube-proxy uses; it falls back to the image's.
COLLECT_SCRIPT = r"""
on_node() {
  if chroot /host sh -c "command -v $1" >/dev/null 2>&1; then chroot /host "$@"; else "$@"; fi
}
count_rules() {
  { on_node "$1-save" 2>/dev/null; on_node "ip6$1-save" 2>/dev/null; } | grep -c '^-'
}
has_hint() {
  on_node "$1-save" -t mangle 2>/dev/null | grep -qE '^:(KUBE-IPTABLES-HINT|KUBE-KUBELET-CANARY)'
}
# Same choice as kube-proxy's iptables wrapper: a kubelet hint chain, else more rules wins.
detect_backend() {
  if has_hint iptables-nft; then echo nft; return; fi
  if has_hint iptables-legacy; then echo legacy; return; fi
  legacy=$(count_rules iptables-legacy)
  nft=$(count_rules iptables-nft)
  if [ "${legacy:-0}" -gt "${nft:-0}" ]; then echo legacy; else echo nft; fi
}
# The first of the given commands that exists on the node or in the image.
pick() {
  for c in "$@"; do
    if chroot /host sh -c "command -v $c" >/dev/null 2>&1 || command -v "$c" >/dev/null 2>&1; then
      echo "$c"; return
    fi
  done
  echo "$1"
}
section() {
  name=$1; shift
  echo "==== kpa-begin $name ===="
  "$@" 2>/tmp/kpa-stderr
  rc=$?
  printf '\n==== kpa-end %s rc=%s ====\n' "$name" "$rc"
  if [ "$rc" -ne 0 ]; then
    echo "==== kpa-begin $name.stderr ===="
    cat /tmp/kpa-stderr
    printf '\n==== kpa-end %s.stderr rc=0 ====\n' "$name"
  fi
}
backend=$(detect_backend)
section iptables-backend echo "$backend"
section iptables-save on_node "$(pick "iptables-$backend-save" iptables-save)"
section ip6tables-save on_node "$(pick "ip6tables-$backend-save" ip6tables-save)"
section nft-ruleset-json on_node nft -j list ruleset
# kube-router and Calico keep pods and CIDRs in ipsets; a node without the tool has none.
section ipset-save on_node sh -c 'command -v ipset >/dev/null 2>&1 || exit 0; ipset save'
echo "==== kpa-done ===="
"""

_SECTION = re.compile(
    r"^==== kpa-begin (?P<name>\S+) ====\n(?P<body>.*?)\n==== kpa-end (?P=name) rc=(?P<rc>\d+) ====$",
    re.MULTILINE | re.DOTALL,
)

log = logging.getLogger(__name__)


def parse_collector_output(output: str) -> dict[str, str]:
    """Split the collector's log into sections.

    Sections whose command failed are left out; their exit status and stderr are listed
    under the "errors" key instead. Raises KpaError when the output is truncated.
    """
    if DONE_MARKER not in output:
        raise KpaError("the rule collector's output is incomplete (no end marker)")
    sections: dict[str, str] = {}
    failed: list[str] = []
    bodies = {m.group("name"): m for m in _SECTION.finditer(output)}
    for name, match in bodies.items():
        if name.endswith(".stderr"):
            continue
        if match.group("rc") == "0":
            sections[name] = match.group("body")
            continue
        stderr = bodies.get(f"{name}.stderr")
        detail = stderr.group("body").strip() if stderr else ""
        failed.append(
            f"{name}: exit status {match.group('rc')}" + (f": {detail}" if detail else "")
        )
    if IPTABLES_BACKEND in sections:
        sections[IPTABLES_BACKEND] = sections[IPTABLES_BACKEND].strip()
    if failed:
        sections[ERRORS] = "\n".join(failed)
    return sections


def collector_pod(name: str, node: str, image: str, deadline_seconds: int) -> dict[str, Any]:
    """The manifest of the collector pod."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": dict(POD_LABELS)},
        "spec": {
            "nodeName": node,  # bypasses the scheduler, like kubectl debug node/...
            "hostNetwork": True,
            "hostPID": True,
            "restartPolicy": "Never",
            "tolerations": [{"operator": "Exists"}],
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 0,
            # If kpa dies before deleting it, the kubelet still stops the pod.
            "activeDeadlineSeconds": deadline_seconds,
            "containers": [
                {
                    "name": "collect",
                    "image": image,
                    "command": ["sh", "-c", COLLECT_SCRIPT],
                    "securityContext": {"privileged": True},
                    "volumeMounts": [{"name": "host-root", "mountPath": "/host"}],
                }
            ],
            "volumes": [{"name": "host-root", "hostPath": {"path": "/"}}],
        },
    }


def _pod_name(node: str) -> str:
    # Pod names are DNS labels of at most 63 characters.
    stem = re.sub(r"[^a-z0-9-]", "-", node.lower())[:40].strip("-") or "node"
    return f"kpa-collect-{stem}-{secrets.token_hex(3)}"


def _forbidden(error: ApiException, action: str, namespace: str) -> KpaError:
    detail = api_error_message(error)
    if "PodSecurity" in detail:
        return KpaError(
            f"cannot {action} in namespace {namespace}: its Pod Security level forbids "
            f"privileged pods ({detail}); use --namespace with a namespace whose "
            "pod-security.kubernetes.io/enforce label is 'privileged'"
        )
    return KpaError(f"forbidden: cannot {action} in namespace {namespace} ({detail}). {RBAC_HINT}")


def _waiting_problem(pod: dict[str, Any]) -> str | None:
    """A reason the pod will never start on its own, e.g. an image that cannot be pulled."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for status in statuses:
        waiting = (status.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
            return f"{waiting['reason']}: {waiting.get('message', '')}".strip(": ")
    return None


def _termination_detail(pod: dict[str, Any]) -> str:
    status = pod.get("status") or {}
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or {}
        if terminated:
            return (
                f"exit code {terminated.get('exitCode')}, {terminated.get('reason', '')}"
            ).strip(", ")
    return str(status.get("reason") or status.get("message") or "unknown reason")


def collect_node_rules(
    api: client.ApiClient,
    node: str,
    image: str = DEFAULT_IMAGE,
    namespace: str = "default",
    timeout: float = 120,
    poll_interval: float = 1.0,
) -> dict[str, str]:
    """Dump `node`'s netfilter rules via a temporary privileged pod, then delete the pod.

    Returns "iptables-save", "ip6tables-save", "nft-ruleset-json" (output of `nft -j list
    ruleset`), "ipset-save" (empty when the node has no ipset tool) and "iptables-backend" ("legacy" or "nft") for each dump that succeeded, and
    "errors" describing the ones that did not (e.g. no nft on a legacy-only node).
    """
    # Typed as Any: with _preload_content=False the client returns raw HTTP responses, not
    # the models its signatures promise.
    core: Any = client.CoreV1Api(api)
    name = _pod_name(node)
    manifest = collector_pod(name, node, image, deadline_seconds=int(timeout) + 60)
    try:
        core.create_namespaced_pod(namespace, manifest, _preload_content=False)
    except ApiException as error:
        if error.status in (401, 403):
            raise _forbidden(error, "create pods", namespace) from None
        raise KpaError(
            f"cannot create the rule collector pod on node {node}: HTTP {error.status}: "
            f"{api_error_message(error)}"
        ) from None
    except (urllib3.exceptions.HTTPError, OSError) as error:
        raise unreachable(api, error) from None
    try:
        return _wait_and_read(core, api, name, node, namespace, timeout, poll_interval)
    finally:
        _delete(core, name, namespace)


def _wait_and_read(
    core: Any,
    api: client.ApiClient,
    name: str,
    node: str,
    namespace: str,
    timeout: float,
    poll_interval: float,
) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    phase = "Pending"
    try:
        while True:
            response = core.read_namespaced_pod(name, namespace, _preload_content=False)
            pod = json.loads(response.data)
            phase = (pod.get("status") or {}).get("phase") or "Pending"
            if phase in ("Succeeded", "Failed"):
                break
            problem = _waiting_problem(pod)
            if problem:
                raise KpaError(f"the rule collector pod on node {node} cannot start: {problem}")
            if time.monotonic() >= deadline:
                raise KpaError(
                    f"the rule collector pod {namespace}/{name} on node {node} did not finish "
                    f"within {timeout:g}s (last phase {phase})"
                )
            time.sleep(poll_interval)
        logs = core.read_namespaced_pod_log(
            name, namespace, container="collect", _preload_content=False
        ).data.decode("utf-8", "replace")
    except ApiException as error:
        if error.status in (401, 403):
            raise _forbidden(error, "read the collector pod or its log", namespace) from None
        raise KpaError(
            f"cannot follow the rule collector pod {namespace}/{name}: HTTP {error.status}: "
            f"{api_error_message(error)}"
        ) from None
    except (urllib3.exceptions.HTTPError, OSError) as error:
        raise unreachable(api, error) from None
    if phase == "Failed":
        last_line = logs.strip().splitlines()[-1:] or [""]
        raise KpaError(
            f"the rule collector pod on node {node} failed ({_termination_detail(pod)})"
            + (f": {last_line[0]}" if last_line[0] else "")
        )
    return parse_collector_output(logs)


def _delete(core: Any, name: str, namespace: str) -> None:
    try:
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=0, _preload_content=False)
    except ApiException as error:
        if error.status != 404:
            log.warning(
                "could not delete the rule collector pod %s/%s (%s); delete it with: "
                "kubectl delete pod -n %s %s",
                namespace,
                name,
                api_error_message(error),
                namespace,
                name,
            )
    except (urllib3.exceptions.HTTPError, OSError) as error:
        log.warning(
            "could not delete the rule collector pod %s/%s (%s); delete it with: "
            "kubectl delete pod -n %s %s",
            namespace,
            name,
            error,
            namespace,
            name,
        )


__all__ = [
    "DEFAULT_IMAGE",
    "ERRORS",
    "IP6TABLES_SAVE",
    "IPTABLES_BACKEND",
    "IPTABLES_SAVE",
    "NFT_RULESET_JSON",
    "collect_node_rules",
    "collector_pod",
    "parse_collector_output",
]
