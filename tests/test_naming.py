"""kube-proxy chain names, checked against names that appear in kube-proxy's own
test expectations and in real clusters (default/kubernetes, kube-dns)."""

from __future__ import annotations

import pytest

from kpa.k8s import naming


@pytest.mark.parametrize(
    ("spn", "protocol", "expected"),
    [
        # pkg/proxy/iptables/proxier_test.go expected dumps
        ("ns1/svc1:p80", "tcp", "KUBE-SVC-XPGD46QRK7WJZT7O"),
        ("ns2/svc2:p8080", "tcp", "KUBE-SVC-2VJB64SDSIJUP5T6"),
        # chains present on every kubeadm cluster
        ("default/kubernetes:https", "tcp", "KUBE-SVC-NPX46M4PTMTKRN6Y"),
        ("kube-system/kube-dns:dns", "udp", "KUBE-SVC-TCOU7JCQXEZGVUNU"),
        ("kube-system/kube-dns:dns-tcp", "tcp", "KUBE-SVC-ERIFXISQEP7F7OF4"),
        ("kube-system/kube-dns:metrics", "tcp", "KUBE-SVC-JD5MR3NA4I4DYORP"),
    ],
)
def test_svc_chain_matches_real_kube_proxy_names(spn: str, protocol: str, expected: str) -> None:
    assert naming.svc_chain(spn, protocol) == expected
    # kube-proxy lower-cases the protocol before hashing; callers may not.
    assert naming.svc_chain(spn, protocol.upper()) == expected


@pytest.mark.parametrize(
    ("spn", "endpoint", "expected"),
    [
        ("ns1/svc1:p80", "10.180.0.1:80", "KUBE-SEP-SXIVWICOYRO3J4NJ"),
        ("ns1/svc1:p80", "10.0.1.1:80", "KUBE-SEP-SNQ3ZNILQDEJNDQO"),
        ("ns2/svc2:p8080", "10.0.2.1:8080", "KUBE-SEP-UHEGFW77JX3KXTOV"),
    ],
)
def test_sep_chain_matches_real_kube_proxy_names(spn: str, endpoint: str, expected: str) -> None:
    assert naming.sep_chain(spn, "tcp", endpoint) == expected


def test_per_service_chains_share_one_hash_but_not_with_other_protocols() -> None:
    chains = naming.iptables_service_chains("ns1/svc1:p80", "tcp")
    assert chains["svc"] == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert chains["svl"] == naming.svl_chain("ns1/svc1:p80", "tcp") == "KUBE-SVL-XPGD46QRK7WJZT7O"
    assert chains["ext"] == naming.ext_chain("ns1/svc1:p80", "tcp") == "KUBE-EXT-XPGD46QRK7WJZT7O"
    assert chains["fw"] == naming.fw_chain("ns1/svc1:p80", "tcp") == "KUBE-FW-XPGD46QRK7WJZT7O"
    assert naming.svc_chain("ns1/svc1:p80", "udp") != chains["svc"]
    # iptables chain names are limited to 28 characters.
    assert all(len(name) <= 28 for name in chains.values())


def test_service_port_name_omits_colon_for_unnamed_port() -> None:
    assert naming.service_port_name("ns", "svc", "") == "ns/svc"
    assert naming.service_port_name("ns", "svc", "http") == "ns/svc:http"
    assert naming.split_service_port_name("ns/svc") == ("ns", "svc", "")
    assert naming.split_service_port_name("ns/svc:http") == ("ns", "svc", "http")
    # An unnamed port hashes differently from a port literally named "".
    assert naming.svc_chain("ns/svc", "tcp") != naming.svc_chain("ns/svc:", "tcp")


def test_endpoint_string_brackets_ipv6() -> None:
    assert naming.endpoint_string("10.0.0.1", 80) == "10.0.0.1:80"
    assert naming.endpoint_string("fd00::1", 80) == "[fd00::1]:80"


def test_chain_kind_recognises_only_service_chains() -> None:
    assert naming.iptables_chain_kind("KUBE-SVC-XPGD46QRK7WJZT7O") == "svc"
    assert naming.iptables_chain_kind("KUBE-SEP-SXIVWICOYRO3J4NJ") == "sep"
    assert naming.iptables_chain_kind("KUBE-FW-XPGD46QRK7WJZT7O") == "fw"
    assert naming.iptables_chain_kind("KUBE-SERVICES") is None
    assert naming.iptables_chain_kind("KUBE-SVC-short") is None


def test_nftables_names_match_kube_proxy_examples() -> None:
    # Examples from the doc comments of pkg/proxy/nftables/proxier.go.
    assert naming.nft_service_base("ns1/svc1:p80", "tcp") == "ULMVA6XW-ns1/svc1/tcp/p80"
    assert (
        naming.nft_endpoint_base("ns1/svc1:p80", "tcp", "10.180.0.1:80")
        == "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    )
    assert naming.nft_service_chain("ns1/svc1:p80", "TCP") == "service-ULMVA6XW-ns1/svc1/tcp/p80"
    assert naming.nft_external_chain("ns1/svc1:p80", "tcp").startswith("external-ULMVA6XW-")
    assert naming.nft_local_chain("ns1/svc1:p80", "tcp").startswith("local-ULMVA6XW-")
    assert naming.nft_firewall_chain("ns1/svc1:p80", "tcp").startswith("firewall-ULMVA6XW-")
    assert naming.nft_endpoint_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80").startswith(
        "endpoint-5OJB2KTY-"
    )
    assert naming.nft_affinity_set("ns1/svc1:p80", "tcp", "10.180.0.1:80").startswith(
        "affinity-5OJB2KTY-"
    )


def test_nftables_endpoint_names_replace_ipv6_colons() -> None:
    base = naming.nft_endpoint_base("ns/svc:http", "tcp", "[fd00:10:244::5]:8080")
    assert base.endswith("-ns/svc/tcp/http__fd00.10.244..5/8080")
    assert ":" not in base


def test_nftables_unnamed_port_leaves_trailing_slash() -> None:
    assert naming.nft_service_base("ns/svc", "udp").endswith("-ns/svc/udp/")
