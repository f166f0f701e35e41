"""Shortcuts in `kpa lint` give exactly the answers of the full computation.

Reading an endpoint's DNAT address from a not-yet-built rule's text must
give what building the rule gives; the whole lint of a ruleset parsed with
rule skeletons (lazy rules) must equal the lint of the same text parsed in
full (`shapes=False`), finding for finding.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kpa.gen.cluster import random_cluster
from kpa.gen.iptables import render_restore
from kpa.gen.objects import to_objects
from kpa.gen.options import ProxierOptions
from kpa.k8s.kubeproxy import dnat_target, service_ports
from kpa.k8s.lint import lint
from kpa.k8s.objects import load_objects, objects_from_documents
from kpa.netfilter.model import Family, LazyRule, Ruleset
from kpa.parse.iptables_save import parse_iptables

FIXTURES = Path(__file__).parent / "fixtures"
SAVES = sorted((FIXTURES / "iptables").glob("*.save"))


def _both(text: str, name: str, family: Family | None = None) -> tuple[Ruleset, Ruleset]:
    return parse_iptables(text, name, family), parse_iptables(text, name, family, shapes=False)


def _dnats(rs: Ruleset) -> dict[str, str | None]:
    return {f"{t.name}/{c.name}": dnat_target(c, t.family.version)
            for t in rs.tables for c in t.chains.values()}


def _lint_json(rs: Ruleset, objects: object, node: str | None) -> list[str]:
    return [json.dumps(f.to_json(), sort_keys=True) for f in lint(rs, objects, node)]  # type: ignore[arg-type]


@pytest.mark.parametrize("save", SAVES, ids=lambda p: p.name)
def test_fixture_lint_is_the_same_with_lazy_rules(save: Path) -> None:
    scenario = save.name.split(".")[0]
    meta = json.loads((FIXTURES / "clusters" / f"{scenario}.meta.json").read_text())
    objects = load_objects([str(FIXTURES / "clusters" / f"{scenario}.yaml")])
    lazy, full = _both(save.read_text(), str(save))
    assert _dnats(lazy) == _dnats(full)
    assert _lint_json(lazy, objects, meta["node_name"]) == _lint_json(full, objects, meta["node_name"])


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_random_cluster_lint_is_the_same_with_lazy_rules(family: str) -> None:
    cluster = random_cluster(seed=11, services=400, endpoints_per_service=4, families=(family,))  # type: ignore[arg-type]
    text = render_restore(cluster, ProxierOptions(node_name="node-0"), family)  # type: ignore[arg-type]
    lazy, full = _both(text, "random.save")
    assert any(isinstance(r, LazyRule) for t in lazy.tables for c in t.chains.values() for r in c.rules)
    objects = objects_from_documents(to_objects(cluster))
    assert _dnats(lazy) == _dnats(full)
    assert [v.to_json() for v in service_ports(lazy)] == [v.to_json() for v in service_ports(full)]
    assert _lint_json(lazy, objects, "node-0") == _lint_json(full, objects, "node-0")


def test_dnat_text_that_needs_the_parser_is_parsed() -> None:
    """Comments that look like targets, ranges, flags and odd ports fall back to the parser."""
    sep = "KUBE-SEP-AAAAAAAAAAAAAAAA"
    rules = [
        f'-A {sep} -m comment --comment "x -j DNAT --to-destination 10.0.0.9:1" -j KUBE-MARK-MASQ',
        f'-A {sep} -p tcp -m comment --comment "-j DNAT --to-destination 10.0.0.8:1" -m tcp -j DNAT --to-destination 10.0.0.1-10.0.0.3:80',
        f"-A {sep} -p tcp -m tcp -j DNAT --to-destination 10.0.0.4:8080 --random",
        f"-A {sep} -p tcp -m tcp -j DNAT --to-destination 10.0.0.5:80",
    ]
    for i in range(len(rules)):
        # Many copies of each chain make every rule shape repeat, so later copies are lazy.
        body = "".join(f":{sep[:-2]}{n:02d}{i} - [0:0]\n" for n in range(30))
        body += "".join(r.replace(sep, f"{sep[:-2]}{n:02d}{i}") + "\n"
                        for n in range(30) for r in rules[i:])
        text = f"*nat\n:PREROUTING ACCEPT [0:0]\n{body}COMMIT\n"
        lazy, full = _both(text, "odd.save")
        assert _dnats(lazy) == _dnats(full)
    v6 = "".join(f":KUBE-SEP-BBBBBBBBBBBBBB{n:02d} - [0:0]\n" for n in range(30))
    v6 += "".join(f"-A KUBE-SEP-BBBBBBBBBBBBBB{n:02d} -p tcp -m tcp -j DNAT --to-destination [fd00::{n:x}]:80\n"
                  for n in range(30))
    lazy, full = _both(f"*nat\n:PREROUTING ACCEPT [0:0]\n{v6}COMMIT\n", "v6.save", Family.IPV6)
    assert _dnats(lazy) == _dnats(full)
    assert _dnats(lazy)["nat/KUBE-SEP-BBBBBBBBBBBBBB10"] == "[fd00::a]:80"


def test_shares_and_comments_that_need_the_parser_are_parsed() -> None:
    """Negated and repeated statistic matches, affinity, escaped and repeated comments."""
    svc = "KUBE-SVC-CCCCCCCCCCCCCC"
    seps = [f"KUBE-SEP-DDDDDDDDDDDDDD{i:02d}" for i in range(5)]
    variants = [
        '-m comment --comment "ns/a:p -> x" -m statistic --mode random --probability 0.25000000000',
        "-m comment --comment plain/unquoted:p -m statistic --mode random ! --probability 0.5",
        '-m comment --comment "first" -m comment --comment "second" -m statistic --mode random --probability 0.1',
        '-m comment --comment "say \\"hi\\"" -m statistic --mode random --probability 0.3333333333',
        "-m recent --rcheck --seconds 10800 --reap --name {sep} --mask 255.255.255.255 --rsource",
        "-m statistic --mode random --probability 0.5 -m statistic --mode random --probability 0.5",
    ]
    body = "".join(f":{svc}{n:02d} - [0:0]\n" for n in range(30)) + "".join(f":{s} - [0:0]\n" for s in seps)
    for n in range(30):
        for i, v in enumerate(variants):
            sep = seps[i % len(seps)]
            body += f"-A {svc}{n:02d} {v.format(sep=sep)} -j {sep}\n"
        body += f"-A {svc}{n:02d} -j {seps[0]}\n"
    lazy, full = _both(f"*nat\n:PREROUTING ACCEPT [0:0]\n{body}COMMIT\n", "odd.save")
    from kpa.k8s.kubeproxy import endpoint_split, rule_comment

    lazy_nat, full_nat = lazy.tables[0], full.tables[0]
    assert any(isinstance(r, LazyRule) for r in lazy_nat.chains[f"{svc}29"].rules)
    for name, chain in full_nat.chains.items():
        other = lazy_nat.chains[name]
        assert [rule_comment(r) for r in other.rules] == [r.comment for r in chain.rules]
        assert [(t, p) for _, t, p in endpoint_split(other)] == [(t, p) for _, t, p in endpoint_split(chain)]


def test_canonical_ipv4_shortcut_matches_ipaddress() -> None:
    """Text already in canonical IPv4 form is returned as is; everything else is parsed as before."""
    import ipaddress
    import random

    from kpa.k8s.objects import canonical_ip

    rng = random.Random(1)
    octets = ["0", "1", "9", "10", "99", "100", "199", "200", "249", "250", "255", "256", "300", "00", "01", "010"]
    texts = [".".join(rng.choice(octets) for _ in range(4)) for _ in range(20000)]
    texts += ["10.0.0.1 ", "1.2.3", "1.2.3.4.5", "fd00::01", "::ffff:1.2.3.4", "a.b.c.d", ""]
    for t in texts:
        try:
            expected = str(ipaddress.ip_address(t.strip()))
        except ValueError:
            expected = t
        assert canonical_ip(t) == expected, t
