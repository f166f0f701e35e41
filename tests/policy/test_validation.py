"""Manifests the API server would reject are refused with file, line, object and field path."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.policy.clirun import kpa

GOOD_HEAD = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: bad
  namespace: shop
spec:
  podSelector: {}
"""

CASES = [
    ("unknown selector operator", """\
  ingress:
  - from:
    - podSelector:
        matchExpressions:
        - key: app
          operator: Matches
          values: [web]
""", 13, "spec.ingress[0].from[0].podSelector.matchExpressions[0].operator",
     "expected one of In, NotIn, Exists, DoesNotExist"),
    ("In without values", """\
  ingress:
  - from:
    - podSelector:
        matchExpressions:
        - {key: app, operator: In}
""", 12, "matchExpressions[0].values", "at least one value"),
    ("bad CIDR", """\
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/33
""", 11, "spec.egress[0].to[0].ipBlock.cidr", "expected a CIDR"),
    ("except outside the cidr", """\
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/16
        except: [10.1.0.0/24]
""", 12, "ipBlock.except[0]", "strictly inside 10.0.0.0/16"),
    ("port out of range", """\
  ingress:
  - ports:
    - port: 70000
""", 10, "spec.ingress[0].ports[0].port", "a port number 1-65535"),
    ("endPort below port", """\
  ingress:
  - ports:
    - port: 8080
      endPort: 80
""", 11, "spec.ingress[0].ports[0].endPort", "endPort >= port (8080)"),
    ("endPort with a named port", """\
  ingress:
  - ports:
    - port: http
      endPort: 90
""", 11, "ports[0].endPort", "no endPort with the named port http"),
    ("unknown protocol", """\
  ingress:
  - ports:
    - protocol: ICMP
""", 10, "ports[0].protocol", "TCP, UDP or SCTP"),
    ("ipBlock with a selector", """\
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.0/8}
      podSelector: {}
""", 10, "from[0].ipBlock", "ipBlock alone"),
    ("bad policy type", """\
  policyTypes: [Ingress, Sideways]
""", 8, "spec.policyTypes[1]", "Ingress or Egress"),
]


@pytest.mark.parametrize(("title", "body", "line", "path", "expected"), CASES,
                         ids=[c[0] for c in CASES])
def test_rejected_like_the_api_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], title: str, body: str, line: int,
    path: str, expected: str,
) -> None:
    manifest = tmp_path / "policies.yaml"
    manifest.write_text(GOOD_HEAD + body)
    res = kpa(capsys, "policy", "lint", "-c", str(manifest))
    assert res.code == 2, (title, res.out, res.err)
    assert "Traceback" not in res.err
    message = res.err.strip()
    assert message.startswith(f"kpa: error: {manifest}:{line}: NetworkPolicy shop/bad: "), message
    assert path in message and expected in message
    assert message.endswith("(the API server would reject it)")


def test_a_valid_policy_with_host_bits_in_its_cidr_is_accepted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = tmp_path / "policies.yaml"
    manifest.write_text(GOOD_HEAD + """\
  egress:
  - to:
    - ipBlock: {cidr: 10.0.3.7/16, except: [10.0.3.0/24]}
    ports:
    - {port: 80, endPort: 90}
    - {port: dns-tcp, protocol: TCP}
""")
    res = kpa(capsys, "policy", "lint", "-c", str(manifest))
    assert res.code in (0, 1), res.err
    assert "error:" not in res.err


def test_a_container_port_out_of_range_is_rejected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = tmp_path / "pods.yaml"
    manifest.write_text("""\
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: shop}
spec:
  containers:
  - name: c
    ports:
    - containerPort: 0
""")
    res = kpa(capsys, "policy", "lint", "-c", str(manifest))
    assert res.code == 2
    assert f"{manifest}:8:" in res.err and "spec.containers[0].ports[0].containerPort" in res.err
