"""Shortcuts in `kpa lint` give exactly the answers of the full computation.

Reading an endpoint's DNAT address from a not-yet-built rule's text must
give what building the rule gives; the whole lint of a ruleset parsed with
rule skeletons (lazy rules) must equal the lint of the same text parsed in
full (`shapes=False`), finding for finding.
"""

from __future__ import annotations

import ipaddress
import json
import random
import re
from fractions import Fraction
from pathlib import Path

import pytest
import yaml

from kpa import limits
from kpa.errors import InputError
from kpa.gen.cluster import random_cluster
from kpa.gen.iptables import render_restore
from kpa.gen.objects import to_objects
from kpa.gen.options import ProxierOptions
from kpa.k8s import naming
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


def _scan_accepts(text: str, limit: int) -> bool:
    try:
        limits._nesting_scan(text, "x", limit)
    except InputError:
        return False
    return True


def test_nesting_shortcut_never_accepts_what_the_scan_refuses() -> None:
    """Random texts of quotes, escapes, brackets, newlines and UTF-8 against the character scan."""
    rng = random.Random(5)
    alphabet = ['"', "\\", "[", "]", "{", "}", "a", "\n", "é", '""', "\\\\", '\\"', "[[", "]]"]
    agreed = 0
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 40)))
        for limit in (0, 1, 2, 3):
            accepts = _scan_accepts(text, limit)
            if limits._nesting_within(text, limit):
                assert accepts, (text, limit)
                agreed += 1
            elif accepts:
                # The shortcut may only defer to the scan when a close comes before its open.
                sums = 0
                clamped = False
                for step in re.sub(r'"(?:[^"\\]|\\.)*("|\\?\Z)', "", text, flags=re.S):
                    sums += {"[": 1, "{": 1, "]": -1, "}": -1}.get(step, 0)
                    clamped = clamped or sums < 0
                assert clamped, (text, limit)
    assert agreed > 10000


def test_nesting_pair_removal_equals_the_scan_on_balanced_brackets() -> None:
    """Balanced texts (the ones the pair-removal passes empty), at, below and above the limit."""
    rng = random.Random(11)
    decided = 0
    for _ in range(5000):
        parts: list[str] = []
        depth = 0
        for _ in range(rng.randrange(0, 60)):
            if depth and rng.random() < 0.5:
                parts.append(rng.choice("]}") + rng.choice(["", "a", ' "x]" ', "\n"]))
                depth -= 1
            else:
                parts.append(rng.choice("[{") + rng.choice(["", "1,", ' "[{" ', "é"]))
                depth += 1
        parts.extend(rng.choice("]}") for _ in range(depth))
        text = "".join(parts)
        for limit in range(0, 8):
            assert limits._nesting_within(text, limit) == _scan_accepts(text, limit), (text, limit)
            decided += 1
    assert decided == 40000


def test_nesting_shortcut_on_real_objects() -> None:
    """Every cluster fixture, as YAML and as JSON, and deep texts: the shortcut answers like the scan."""
    for path in sorted((FIXTURES / "clusters").glob("*.yaml")):
        text = path.read_text()
        as_json = json.dumps(list(yaml.safe_load_all(text)), indent=2)
        for t in (text, as_json, as_json.replace("a", '\\"[')):
            assert limits._nesting_within(t, 8) == _scan_accepts(t, 8), path
    deep = '{"a": "x\\\\"' + "[" * 201 + "]" * 201 + "}"
    assert not limits._nesting_within(deep, 200)
    with pytest.raises(InputError, match="levels of nesting"):
        limits.check_nesting(deep, "deep.json")
    assert limits._nesting_within('{"a": "' + "[" * 500 + '"}', 200)


def test_nesting_of_texts_longer_than_a_piece() -> None:
    """Texts the shortcut encodes in several pieces, with strings, escapes and multi-byte characters
    across the cuts, and long enough that brackets are not counted first: answers as the scan, and
    a text too deep is refused at the line the scan names."""
    rng = random.Random(17)
    alphabet = ['"', "\\", "[", "]", "{", "}", "a" * 50, "\n", "é", "😀", '\\"', "\\\\", '"x[{"']
    for _ in range(3):
        text = "".join(rng.choice(alphabet) for _ in range(limits._PIECE // 2))
        assert len(text) > 2 * limits._PIECE > limits._COUNT_BELOW
        for limit in (2, 5, 200):
            if limits._nesting_within(text, limit):
                assert _scan_accepts(text, limit)
    filler = '{"a": "' + "x" * limits._PIECE + '"}\n'
    balanced = "[" + filler * 3 + "]"
    assert limits._nesting_within(balanced, 2) and not limits._nesting_within(balanced, 1)
    limits.check_nesting(balanced, "long.json", 2)
    deep = filler * 3 + "[" * 6 + "\n" + "]" * 6
    with pytest.raises(InputError) as raised:
        limits.check_nesting(deep, "long.json", 5)
    assert raised.value.line == 4


def test_chain_name_hash_shortcut_matches_base64() -> None:
    """kube-proxy's chain-name hashes: 16 base32 characters from 10 digest bytes, as base64 gives them."""
    rng = random.Random(3)
    for i in range(20000):
        text = "".join(rng.choice("abc/:-.[]0123456789é") for _ in range(rng.randrange(0, 60))) + str(i)
        assert naming._b32_sha256_16(text) == naming._b32_sha256(text)[:16]


def test_entry_rules_read_from_text_equal_the_built_rules() -> None:
    """KUBE-SERVICES / KUBE-NODEPORTS entry rules in odd spellings: the views equal a full parse's."""
    variants = [
        '-d 10.0.{n}.1/32 -p tcp -m comment --comment "ns/a{n}:p cluster IP" -m tcp --dport 80',
        '-d 10.0.{n}.2/32 -p udp -m comment --comment "ns/b{n}:p external IP" -m udp --dport 53',
        '-d 10.0.{n}.3/32 -p sctp -m comment --comment "ns/c{n}:p loadbalancer IP" -m sctp --dport 9',
        '-d 10.0.{n}.0/24 -p tcp -m comment --comment "ns/d{n}:p cluster IP" -m tcp --dport 80',
        '! -d 10.0.{n}.5/32 -p tcp -m comment --comment "ns/e{n}:p cluster IP" -m tcp --dport 80',
        '-d 10.0.{n}.6/32 -p tcp -m comment --comment "ns/f{n}:p \\"q\\" cluster IP" -m tcp --dport 80',
        '-d 10.0.{n}.7/32 -p tcp -m comment --comment "ns/g{n}:p" -m comment --comment "x" -m tcp --dport 80',
        '-d 10.0.{n}.8/32 -p tcp -m comment --comment ns/h{n}:p -m tcp --dport 80',
        '-d 10.0.{n}.9/32 -p tcp -m comment --comment "ns/i{n}:p cluster IP" -m tcp ! --dport 80',
        '-d 10.0.{n}.10/32 -p tcp -m comment --comment "ns/j{n}:p cluster IP" -m tcp --dport 80:90',
        '-d 10.0.{n}.11/32 -p tcp -m comment --comment "ns/k{n}:p cluster IP" -m tcp --dport 65535',
        '-p tcp -m comment --comment "ns/l{n}:p" -m tcp --dport 3{n:04d}',
        '-s 10.1.0.0/16 -d 10.0.{n}.12/32 -p tcp -m comment --comment "ns/m{n}:p cluster IP" -m tcp --dport 80',
        '-d 10.0.{n}.13/32 -p tcp -m comment --comment "ns/n{n}:p cluster IP" -m multiport --dports 80,81',
    ]
    chains = {}
    body = ""
    for n in range(30):
        for i, v in enumerate(variants):
            kind = ("SVC", "EXT", "FW", "SVL")[i % 4]
            name = f"KUBE-{kind}-{'ABCDEFGHIJKLMNOP'[i]}{n:02d}AAAAAAAAAAAAA"[:25]
            chains[name] = f"-A {name} -j KUBE-MARK-MASQ\n"
            entry = "KUBE-NODEPORTS" if "-d " not in v else "KUBE-SERVICES"
            body += f"-A {entry} {v.format(n=n)} -j {name}\n"
    head = ":KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n"
    head += "".join(f":{c} - [0:0]\n" for c in chains)
    text = f"*nat\n:PREROUTING ACCEPT [0:0]\n{head}{body}{''.join(chains.values())}COMMIT\n"
    lazy, full = _both(text, "entries.save")
    lazy_rules = lazy.tables[0].chains["KUBE-SERVICES"].rules
    assert sum(isinstance(r, LazyRule) for r in lazy_rules) > 100
    assert [v.to_json() for v in service_ports(lazy)] == [v.to_json() for v in service_ports(full)]
    # The plain spelling is read from the text: those rules stay unbuilt.
    assert sum(isinstance(r, LazyRule) for r in lazy_rules) > 60


def test_reject_rules_read_from_text_equal_the_built_rules() -> None:
    """Filter-table "has no endpoints" REJECT rules in odd spellings: the views equal a full parse's."""
    variants = [
        '-d 10.0.{n}.1/32 -p tcp -m comment --comment "ns/a{n}:p has no endpoints" -m tcp --dport 80',
        '-p tcp -m comment --comment "ns/b{n}:p has no endpoints" -m addrtype --dst-type LOCAL -m tcp --dport 3{n:04d}',
        '-d 10.0.{n}.3/32 -p udp -m comment --comment "ns/c{n}:p has no endpoints" -m udp --dport 53',
        '-d 10.0.{n}.4/32 -p sctp -m comment --comment "ns/d{n}:p has no endpoints" -m sctp --dport 9',
        '-d 10.0.{n}.0/24 -p tcp -m comment --comment "ns/e{n}:p has no endpoints" -m tcp --dport 80',
        '! -d 10.0.{n}.6/32 -p tcp -m comment --comment "ns/f{n}:p has no endpoints" -m tcp --dport 80',
        '-d 10.0.{n}.7/32 -p tcp -m comment --comment "ns/g{n}:p \\"q\\" has no endpoints" -m tcp --dport 80',
        '-d 10.0.{n}.8/32 -p tcp -m comment --comment ns/h{n}:p -m tcp --dport 80',
        '-d 10.0.{n}.9/32 -p tcp -m comment --comment "ns/i{n}:p has no endpoints" -m tcp ! --dport 80',
        '-d 10.0.{n}.10/32 -p tcp -m comment --comment "ns/j{n}:p has no endpoints" -m tcp --dport 80:90',
        '-d 10.0.{n}.11/32 -p tcp -m comment --comment "ns/k{n}:p has no endpoints" -m tcp --dport 65535',
        '-p tcp -m comment --comment "ns/l{n}:p has no endpoints" -m addrtype ! --dst-type LOCAL -m tcp --dport 80',
        '-p tcp -m comment --comment "ns/m{n}:p has no endpoints" -m addrtype --dst-type LOCAL,UNICAST -m tcp --dport 80',
        '-d 10.0.{n}.14/32 -p tcp -m comment --comment "ns/n{n}:p has no endpoints" -m multiport --dports 80,81',
        '-d 10.0.{n}.15/32 -p tcp -m comment --comment "ns/o{n}:p has no local endpoints" -m tcp --dport 80',
        '-d 10.0.{n}.16/32 -p udp -m comment --comment "ns/p{n}:p has no endpoints" -m tcp --dport 80',
    ]
    targets = [" --reject-with icmp-port-unreachable", "", " --reject-with tcp-reset"]
    body = ""
    for n in range(12):
        for i, v in enumerate(variants):
            chain = ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES")[(i + n) % 2]
            body += f"-A {chain} {v.format(n=n)} -j REJECT{targets[(i + n) % 3]}\n"
    nat = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\nCOMMIT\n"
    text = (f"{nat}*filter\n:INPUT ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-EXTERNAL-SERVICES - [0:0]\n"
            f"{body}COMMIT\n")
    lazy, full = _both(text, "rejects.save")
    filt = lazy.table(Family.IPV4, "filter")
    assert filt is not None
    rules = [r for c in filt.chains.values() for r in c.rules]
    assert sum(isinstance(r, LazyRule) for r in rules) > 100
    got, want = [v.to_json() for v in service_ports(lazy)], [v.to_json() for v in service_ports(full)]
    assert got == want
    assert sum(len(v["entries"]) for v in want) > 100
    # The plain spellings are read from the text: those rules stay unbuilt.
    assert sum(isinstance(r, LazyRule) for r in rules) > 40


def _mutations(doc: object, rng: random.Random, n: int) -> list[object]:
    """Copies of `doc` with one value somewhere replaced by a value of another type."""
    odd = [None, 0, 1, 70000, True, False, "", "x", "10.0.0.1", [], [1], ["a"], {}, {"a": 1}, 1.5]
    paths: list[tuple[object, ...]] = []

    def walk(node: object, path: tuple[object, ...]) -> None:
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, (*path, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, (*path, i))

    walk(doc, ())
    out = []
    for _ in range(n):
        copy = json.loads(json.dumps(doc))
        path = rng.choice(paths[1:])
        node = copy
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = rng.choice(odd)
        out.append(copy)
    return out


def test_fast_object_readers_equal_the_field_parsers() -> None:
    """Pods, EndpointSlices, Services: the fast readers give the _Fields parsers' objects, or defer to them."""
    from kpa.k8s import objects as o

    docs = [d for p in sorted((FIXTURES / "clusters").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())
            if isinstance(d, dict)]
    docs += to_objects(random_cluster(seed=4, services=60, endpoints_per_service=3))
    rng = random.Random(9)
    checked = {"Pod": 0, "EndpointSlice": 0, "Service": 0}
    readers = {
        "Pod": (o._fast_pod, lambda f: o._parse_pod(f)),
        "EndpointSlice": (lambda d, *_: o._fast_endpoint_slice(d), o._parse_endpoint_slice),
        "Service": (o._fast_service, lambda f: o._parse_service(f, "f.yaml")),
    }
    for doc in docs:
        kind = doc.get("kind")
        if kind not in checked:
            continue
        fast, slow = readers[kind]
        got, want = fast(doc, "f.yaml", 7), slow(o._Fields(doc, "", 7, "f.yaml"))
        assert got == want, doc
        # A Pod made without its __init__ is the same in every way: fields, repr, hash, frozen.
        assert (vars(got), repr(got), hash(got)) == (vars(want), repr(want), hash(want))
        with pytest.raises(AttributeError):
            got.name = "changed"
        checked[kind] += 1
        for bad in _mutations(doc, rng, 8):
            try:
                expected = slow(o._Fields(bad, "", 7, "f.yaml"))
            except o._SchemaError:
                expected = None
            got = fast(bad, "f.yaml", 7)
            if got is not None:
                assert got == expected, bad
    assert checked["Pod"] > 100 and checked["EndpointSlice"] > 50 and checked["Service"] > 50


def _split_reference(chain: object) -> list[tuple[str, Fraction]]:
    """endpoint_split as plain Fraction arithmetic, on built rules."""
    from kpa.ext.recent import RecentMatch
    from kpa.ext.statistic import StatisticMatch
    from kpa.k8s.kubeproxy import _jump

    out = []
    remaining = Fraction(1)
    for r in chain.rules:  # type: ignore[attr-defined]
        target = _jump(r)
        if target is None or not target.startswith("KUBE-SEP-"):
            continue
        if any(isinstance(e, RecentMatch) for e in r.exprs):
            continue
        p = Fraction(1)
        for e in r.exprs:
            if isinstance(e, StatisticMatch):
                p = 1 - e.probability if e.negated else e.probability
        out.append((target, remaining * p))
        remaining -= remaining * p
    return out


def test_endpoint_shares_equal_fraction_arithmetic() -> None:
    """The integer share cascade equals Fraction arithmetic on every fixture and a generated cluster."""
    from kpa.k8s.kubeproxy import endpoint_split

    cluster = random_cluster(seed=12, services=200, endpoints_per_service=12)
    texts = [(s.read_text(), str(s)) for s in SAVES]
    texts.append((render_restore(cluster, ProxierOptions(node_name="node-0"), "ipv4"), "random.save"))
    seen = 0
    for text, name in texts:
        lazy, full = _both(text, name)
        for t in full.tables:
            for c in t.chains.values():
                if c.name.startswith(("KUBE-SVC-", "KUBE-SVL-")):
                    want = _split_reference(c)
                    assert [(x, p) for _, x, p in endpoint_split(c)] == want
                    assert [(x, p) for _, x, p in endpoint_split(lazy.table(t.family, t.name).chains[c.name])] == want
                    seen += len(want)
    assert seen > 1000


def test_address_sort_key_shortcut_matches_ipaddress() -> None:
    from kpa.k8s.objects import _address_sort_key

    rng = random.Random(8)
    for _ in range(20000):
        ip = ".".join(str(rng.choice([0, 1, 9, 10, 99, 100, 199, 200, 249, 250, 255, rng.randrange(256)]))
                      for _ in range(4))
        port = rng.randrange(65536)
        parsed = ipaddress.ip_address(ip)
        assert _address_sort_key((ip, port)) == (4, int(parsed), port)
    assert _address_sort_key(("fd00::1", 80)) == (6, 0xFD00 << 112 | 1, 80)
    assert _address_sort_key(("010.0.0.1", 80)) == (0, 0, 80)


def test_even_shares_shortcut_equals_fraction_test() -> None:
    """The integer evenness test answers as the Fraction comparison does, on cascades and random shares."""
    from kpa.k8s.lint import QUANTUM, _even_enough

    def reference(probs: list[Fraction]) -> bool:
        n = len(probs)
        fair, tol = Fraction(1, n), n * QUANTUM
        return max(abs(p - fair) for p in probs) <= tol and abs(1 - sum(probs)) <= tol

    rng = random.Random(21)
    answers = set()
    for _ in range(3000):
        n = rng.randrange(1, 14)
        remaining, probs = Fraction(1), []
        for i in range(n):
            k = round((1 << 31) / (n - i)) + rng.choice([0, 0, 0, 1, -1, 3, 1000, -(1 << 20)])
            p = Fraction(min(max(k, 0), 1 << 31), 1 << 31) if i < n - 1 else Fraction(1)
            probs.append(remaining * p)
            remaining -= remaining * p
        if rng.random() < 0.2:
            probs[rng.randrange(n)] = Fraction(rng.randrange(1 << 33), 1 << rng.randrange(40))
        answer = _even_enough(probs, n)
        assert answer == reference(probs), probs
        answers.add(answer)
    assert answers == {True, False}
    assert _even_enough([Fraction(1, 3)] * 3, 3) is None



def test_even_lists_known_by_their_shares_identity_equal_each_list_tested() -> None:
    """`rules_ahead`'s evenness per distinct set of share objects is each endpoint list's own answer."""
    from kpa.k8s.correlate import rules_side
    from kpa.k8s.lint import _even_enough, _even_lists

    cluster = random_cluster(31, 60, 5, ("ipv4",), nodes=3)  # type: ignore[arg-type]
    lines = render_restore(cluster, ProxierOptions(node_name="node-0"), "ipv4").split("\n")  # type: ignore[arg-type]
    # Some cascades made uneven, beside the even ones of as many endpoints, which share their Fractions.
    shares = [i for i, line in enumerate(lines) if "--probability" in line]
    for i in random.Random(5).sample(shares, 8):
        lines[i] = re.sub(r"--probability \S+", "--probability 0.30000000009", lines[i])
    side = rules_side(parse_iptables("\n".join(lines), "gen.save"))
    assert side.collected is not None
    want = {}
    for pc in side.collected.ports.values():
        assert pc.actual is not None
        for refs in (pc.actual.cluster, pc.actual.local):
            probs = [r.probability for r in refs]
            if refs and all(p is not None for p in probs) and _even_enough(probs, len(refs)):  # type: ignore[arg-type]
                want[id(refs)] = refs
    got = _even_lists(side)
    assert got.keys() == want.keys() and all(got[k] is want[k] for k in want)
    lists = sum(1 for pc in side.collected.ports.values() for refs in (pc.actual.cluster, pc.actual.local)  # type: ignore[union-attr]
                if refs)
    assert 20 < len(want) < lists - 4

ODD_RULES = [
    '-A {c} -m comment --comment "ns/a:p" -m recent --rcheck --seconds 10800 --reap --name {c} --mask 255.255.255.255 --rsource -j KUBE-SEP-AAAAAAAAAAAAAAAA',
    '-A {c} -m comment --comment "recent -m recent" -j KUBE-SEP-AAAAAAAAAAAAAAAA',
    "-A {c} -m recent --set --name {c} --mask 255.255.255.255 --rsource -j KUBE-SEP-AAAAAAAAAAAAAAAA",
    "-A {c} -m recent --rcheck --seconds 10 --reap --name {c} --mask 255.255.255.255 --rsource -j KUBE-SEP-AAAAAAAAAAAAAAAA",
    '-A {c} -m comment --comment "a" -m comment --comment "b" -j KUBE-SVC-AAAAAAAAAAAAAAAA',
    '-A {c} -m comment --comment "say \\"hi\\"" -j KUBE-SVC-AAAAAAAAAAAAAAAA',
    '-A {c} -m comment --comment "route LOCAL traffic" -m addrtype --src-type LOCAL -j KUBE-SVC-AAAAAAAAAAAAAAAA',
    "-A {c} -j KUBE-SVL-AAAAAAAAAAAAAAAA",
    '-A {c} -m comment --comment "-j x -m y" -j KUBE-SVL-AAAAAAAAAAAAAAAA',
    "-A {c} ! -p tcp -m comment --comment x -j KUBE-SVL-AAAAAAAAAAAAAAAA",
    '-A {c} ! -p tcp -m comment --comment "ns/b:p has no local endpoints" -j DROP',
    '-A {c} -p 6 -m comment --comment "ns/b:p has no endpoints" -m tcp --dport 80 -j REJECT',
    '-A {c} -p udp -m comment --comment "ns/c:p has no endpoints" -m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable',
    "-A {c} -s 10.0.0.0/8 -j KUBE-MARK-MASQ",
    "-A {c} -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS",
]


def _text_helpers_agree(lazy: Ruleset, full: Ruleset) -> int:
    """Every lazy rule's text answers (affinity, bare jump, protocol, comment) equal its built rule's."""
    from kpa.ext.recent import RecentMatch
    from kpa.k8s.correlate import _unconditional
    from kpa.k8s.kubeproxy import is_affinity_check, is_bare_jump, rule_comment, rule_protocol

    answered = 0
    for t in full.tables:
        other = lazy.table(t.family, t.name)
        assert other is not None
        for c in t.chains.values():
            for built, r in zip(c.rules, other.chains[c.name].rules, strict=True):
                if not isinstance(r, LazyRule):
                    continue
                for mine, truth in ((is_affinity_check(r), any(isinstance(e, RecentMatch) for e in built.exprs)),
                                    (is_bare_jump(r), _unconditional(built))):
                    assert mine in (None, truth), r.text
                    answered += mine is not None
                assert rule_protocol(r) == rule_protocol(built), r.text
                assert rule_comment(r) == built.comment, r.text
    return answered


def test_rule_text_helpers_equal_the_built_rules() -> None:
    """Crafted odd rules, every fixture and a generated cluster with affinity."""
    body = "".join(f":KUBE-SVC-ODD{n:03d}AAAAAAAAA - [0:0]\n" for n in range(30))
    body += ":KUBE-SEP-AAAAAAAAAAAAAAAA - [0:0]\n:KUBE-SVC-AAAAAAAAAAAAAAAA - [0:0]\n"
    body += ":KUBE-SVL-AAAAAAAAAAAAAAAA - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-NODEPORTS - [0:0]\n"
    for n in range(30):
        body += "".join(r.format(c=f"KUBE-SVC-ODD{n:03d}AAAAAAAAA") + "\n" for r in ODD_RULES)
    answered = _text_helpers_agree(*_both(f"*nat\n:PREROUTING ACCEPT [0:0]\n{body}COMMIT\n", "odd.save"))
    assert answered > 100
    for save in SAVES:
        _text_helpers_agree(*_both(save.read_text(), str(save)))
    cluster = random_cluster(seed=13, services=300, endpoints_per_service=3)
    text = render_restore(cluster, ProxierOptions(node_name="node-0"), "ipv4")
    assert _text_helpers_agree(*_both(text, "random.save")) > 500


def _yaml_lines(value: object) -> object:
    """Every mapping's value, line and key lines, in order."""
    if isinstance(value, dict):
        return [(k, _yaml_lines(v)) for k, v in value.items()] + [
            getattr(value, "line", None), getattr(value, "key_lines", None), type(value).__name__]
    if isinstance(value, list):
        return [_yaml_lines(v) for v in value]
    return (type(value).__name__, value)


ODD_YAML = """\
a: 1
b: 0x1f
c: 1_000
d: 0o17
e: 1.5e3
f: .inf
g: yes
h: ~
i: 2024-01-01T00:00:00Z
j: !!binary aGVsbG8=
k: "quoted: 1"
l: 'single'
m: [1, "2", three, {x: y}]
n: {p: q, r: [s]}
o: |
  block text
  over lines
1: int key
2.5: float key
true: bool key
a: duplicate key wins
? complex
: key
---
- plain
- !!str 123
- !custom tag
---
x: !!set {a, b}
---
x: !!omap [a: 1, b: 2]
---
base: {a: 1}
merged:
  <<: {b: 2}
  c: 3
---
deep: [[[[[[[[[[[[]]]]]]]]]]]]
"""


def test_fast_yaml_documents_equal_the_safe_loader() -> None:
    """Documents built by the fast walk equal check + construct_document, values, lines and errors alike.

    (The safe loader's path is called directly: blockyaml reads most of these before it; see test_yaml_block.)
    """
    from kpa.k8s import objects as o

    texts = [p.read_text() for p in sorted((FIXTURES / "clusters").glob("*.yaml"))]
    texts.append(yaml.safe_dump_all(to_objects(random_cluster(seed=5, services=40, endpoints_per_service=3))))
    texts += [ODD_YAML, *ODD_YAML.split("---\n")]
    fast_docs = 0
    for text in texts:
        slow_text = text + "\n# & keeps the fast walk off\n"

        def load(t: str) -> object:
            try:
                return _yaml_lines(list(o._loaded_yaml_documents(t, "f.yaml")))
            except InputError as exc:
                return ("error", str(exc).replace("f.yaml", ""))

        fast, slow = load(text), load(slow_text)
        assert fast == slow, text[:200]
        fast_docs += isinstance(fast, list) and len(fast)
    assert fast_docs > 100
    # Bounds: too deep in block style, too deep in flow style, a document over the node bound.
    deep_block = "".join("  " * i + f"k{i}:\n" for i in range(205)) + "  " * 205 + "v: 1\n"
    for text in (deep_block, "a: " + "[" * 201 + "]" * 201 + "\n"):
        with pytest.raises(InputError, match="nesting"):
            list(o._yaml_documents(text, "f.yaml"))
    loader = o._line_loader()("[1, 2, 3]")
    node = loader.get_single_node()
    original = limits.MAX_YAML_NODES
    limits.MAX_YAML_NODES = 3
    try:
        with pytest.raises(o._Unfit):
            o._fast_yaml_document(loader, node)
    finally:
        limits.MAX_YAML_NODES = original
        loader.dispose()


def test_show_share_from_the_fraction_equals_the_share_from_its_text() -> None:
    """show prints a share from the exact fraction; it used to re-read it from its JSON text."""
    from kpa.k8s.story import fmt_share
    from kpa.netfilter.domain import fraction_text

    def from_text(p: Fraction) -> str:
        text = fraction_text(p)
        value = Fraction(text.split(" ")[0]) if "/" in text else Fraction(float(p))
        return fmt_share(value)

    rng = random.Random(17)
    shares = [Fraction(0), Fraction(1), Fraction(1, 3), Fraction(1, 2000)]
    for _ in range(3000):
        p = Fraction(1)
        for _ in range(rng.choice([1, 2, 10, 120])):
            p *= Fraction(rng.randrange(1, 1 << 31), 1 << 31)
        shares.append(p)
    assert any("exact fraction" in fraction_text(p) for p in shares)
    for p in shares:
        assert fmt_share(p) == from_text(p), p


def _objects_or_error(path: Path) -> object:
    try:
        o = load_objects([str(path)])
    except InputError as exc:
        return ("error", str(exc))
    return (o.services, o.endpoint_slices, o.pods, o.nodes, o.namespaces, o.network_policies, o.warnings,
            sorted(o.ignored_kinds.items()))


def test_json_lists_read_item_by_item_equal_the_whole_document(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A kubectl JSON List read as its items are decoded gives the objects (or the error) of a whole read."""
    from kpa.k8s import objects as o

    docs = [d for p in sorted((FIXTURES / "clusters").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())
            if isinstance(d, dict)]
    docs += to_objects(random_cluster(seed=6, services=30, endpoints_per_service=3))
    svc = next(d for d in docs if d.get("kind") == "Service")
    bad_port = json.loads(json.dumps(svc))
    bad_port["spec"]["ports"][0]["port"] = "eighty"
    no_kind = {k: v for k, v in svc.items() if k != "kind"}
    cases = {
        "list": {"apiVersion": "v1", "kind": "List", "items": docs},
        "kind-last": {"apiVersion": "v1", "items": docs, "kind": "List"},
        "typed-list": {"kind": "ServiceList", "items": [no_kind, svc]},
        "not-a-list": {"kind": "Service", "items": docs, "metadata": {"name": "x"}},
        "no-kind": {"items": docs},
        "two-items": {"kind": "List", "items": docs[:3], "metadata": {}, "items ": 1},
        "schema-error": {"kind": "List", "items": [svc, bad_port]},
        "non-dict-item": {"kind": "List", "items": [svc, 5]},
        "nested-list": {"kind": "List", "items": [{"kind": "List", "items": docs[:4]}, svc]},
        "empty": {"kind": "List", "items": []},
    }
    texts = {name: json.dumps(doc, indent=2) for name, doc in cases.items()}
    texts["duplicate-items"] = texts["list"][:-2] + ',\n  "items": []\n}'
    texts["syntax-error"] = texts["list"][: len(texts["list"]) // 2]
    streamed = 0
    original = o._streamed_list

    def counting(text: str, collector: object) -> bool:
        nonlocal streamed
        done = original(text, collector)  # type: ignore[arg-type]
        streamed += done
        return done

    for name, text in texts.items():
        path = tmp_path / f"{name}.json"
        path.write_text(text)
        monkeypatch.setattr(o, "_streamed_list", counting)
        got = _objects_or_error(path)
        monkeypatch.setattr(o, "_streamed_list", lambda *_: False)
        assert got == _objects_or_error(path), name
    assert streamed >= 4


def test_rule_where_and_ip_version_shortcuts() -> None:
    """A lazy rule's FILE:LINE without a Location, and IPv4 text's version without ipaddress."""
    from kpa.k8s.correlate import _ip_version

    for save in SAVES[:5]:
        lazy, _ = _both(save.read_text(), str(save))
        for t in lazy.tables:
            for c in t.chains.values():
                for r in c.rules:
                    where = r.where()
                    assert where == str(r.location)
    rng = random.Random(4)
    for _ in range(5000):
        ip = ".".join(str(rng.choice([0, 7, 10, 255, 256, rng.randrange(300)])) for _ in range(4))
        for text in (ip, f"{ip}/{rng.randrange(40)}", f"0{ip}"):
            try:
                want: int | None = ipaddress.ip_address(text.split("/")[0]).version
            except ValueError:
                want = None
            assert _ip_version(text) == want, text


def _everything(o: object) -> object:
    """Every attribute a reader of ClusterObjects can see, lookups included."""
    from kpa.k8s.objects import ClusterObjects

    assert isinstance(o, ClusterObjects)
    pods = o.pods
    return (o.services, o.endpoint_slices, pods, o.nodes, o.namespaces, o.network_policies, o.warnings,
            o.unlisted, sorted(o.ignored_kinds.items()),
            [o.pod_by_ip(ip) for p in pods for ip in p.pod_ips],
            [o.pod(p.namespace, p.name) for p in pods],
            [(o.service_by_cluster_ip(ip), o.services_by_external_ip(ip), o.services_by_load_balancer_ip(ip))
             for s in o.services for ip in (*s.cluster_ips, *s.external_ips, *s.load_balancer_ips)],
            [o.endpoints_for(s.namespace, s.name, p.name, p.protocol) for s in o.services for p in s.ports],
            [o.node_by_ip(ip) for n in o.nodes for ip in (*n.internal_ips, *n.external_ips)])


def _background(paths: list[str], fork: bool) -> object:
    from kpa.k8s.background import BackgroundObjects

    try:
        with BackgroundObjects(paths, fork=fork) as pending:
            return _everything(pending.result())
    except InputError as exc:
        return ("error", str(exc))


def test_objects_read_in_a_child_process_equal_objects_read_here(tmp_path: Path) -> None:
    """Fixtures, a generated cluster as JSON and YAML, a directory, and bad input: same objects, same errors."""
    big = to_objects(random_cluster(seed=8, services=40, endpoints_per_service=4))
    (tmp_path / "cluster.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": big}, indent=4))
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump_all(big))
    (tmp_path / "bad.json").write_text(json.dumps({"kind": "List", "items": big[:5]}, indent=2)[:-40])
    svc = next(d for d in big if d["kind"] == "Service")
    broken = json.loads(json.dumps(svc))
    broken["spec"]["ports"][0]["port"] = "eighty"
    (tmp_path / "schema.json").write_text(json.dumps({"kind": "List", "items": [svc, broken]}, indent=2))
    (tmp_path / "dir").mkdir()
    for name in ("kitchen-sink.yaml", "dual-stack.yaml"):
        (tmp_path / "dir" / name).write_text((FIXTURES / "clusters" / name).read_text())
    cases = [[str(p)] for p in sorted((FIXTURES / "clusters").glob("*.yaml"))]
    cases += [[str(tmp_path / "cluster.json")], [str(tmp_path / "cluster.yaml")],
              [str(tmp_path / "dir"), str(tmp_path / "cluster.json")],
              [str(tmp_path / "bad.json")], [str(tmp_path / "schema.json")], [str(tmp_path / "missing.json")]]
    errors = 0
    for paths in cases:
        forked = _background(paths, fork=True)
        assert forked == _background(paths, fork=False), paths
        errors += isinstance(forked, tuple) and forked[0] == "error"
    assert errors == 3


def test_objects_from_a_child_keep_their_pods_apart_until_asked() -> None:
    """The Pods arrive unread; the first question about them reads them, exactly once."""
    from kpa.k8s.background import BackgroundObjects

    path = str(FIXTURES / "clusters" / "kitchen-sink.yaml")
    here = load_objects([path])
    with BackgroundObjects([path], fork=True) as pending:
        objects = pending.result()
    assert objects._pod_loader is not None  # sent, not yet unpickled
    assert objects.services == here.services
    assert objects._pod_loader is not None
    pod = here.pods[0]
    assert objects.pod_by_ip(pod.pod_ips[0]) == here.pod_by_ip(pod.pod_ips[0])
    assert objects._pod_loader is None
    assert objects.pods == here.pods
    merged = objects.merged(here)
    assert merged.pods == here.merged(here).pods


def test_a_child_left_behind_is_stopped_and_stdin_is_never_forked(tmp_path: Path) -> None:
    import os

    from kpa.k8s.background import BackgroundObjects

    path = str(FIXTURES / "clusters" / "kitchen-sink.yaml")
    with pytest.raises(RuntimeError), BackgroundObjects([path], fork=True) as pending:
        pid = pending.child
        assert pid is not None
        raise RuntimeError("reading the rules failed")
    assert pending.child is None
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped: no zombie left
    with BackgroundObjects(["-"], fork=True) as pending:
        assert pending.child is None
    with BackgroundObjects([path], fork=False) as pending:
        assert pending.child is None



def _render_reference(docs: list[dict[str, object]], wide: bool, headers: bool) -> str:
    """`kpa show`'s text as it was written with str.ljust per cell (the endpoint tables only differ)."""

    def _yn(value: object) -> str:
        return "-" if value is None else ("yes" if value else "no")

    out: list[str] = []
    for d in docs:
        title = f"{d['service_port'] or '(unnamed)'}  {d['protocol'] or ''}  {d['family']}"
        if d.get("type"):
            title += f"  {d['type']}"
        out.append(title)
        facts = [f"{k}: {v}" for k, v in d["traffic_policies"].items()]  # type: ignore[attr-defined]
        facts.append(f"sessionAffinity: {d['session_affinity']}")
        if d["source_ranges"]:
            facts.append(f"loadBalancerSourceRanges: {', '.join(d['source_ranges'])}")  # type: ignore[arg-type]
        out.append("  " + "; ".join(facts))
        for e in d["entries"]:  # type: ignore[attr-defined]
            addr = e["address"] or "<node addresses>"
            where = f"[{addr}]:{e['port']}" if ":" in addr else f"{addr}:{e['port']}"
            line = f"  {e['kind']:<15} {where:<26}"
            if wide:
                line += f" -> {e['chain']}  ({e['location']})"
            out.append(line.rstrip())
        if d["no_endpoints"]:
            out.append("  no endpoints: traffic is rejected")
        if wide and d["chains"]:
            out.append("  chains: " + ", ".join(f"{k} {n}" for k, n in sorted(d["chains"].items())))  # type: ignore[attr-defined]
        rows: list[list[str]] = []
        for label, key in (("", "endpoints"), ("local", "local_endpoints")):
            for e in d[key]:  # type: ignore[attr-defined]
                row = [e["endpoint"] or "?", e["share"], e.get("pod") or "-", e.get("node") or "-",
                       _yn(e.get("ready")), _yn(e.get("serving")), _yn(e.get("terminating"))]
                if d["local_endpoints"]:
                    row.insert(0, label or "all")
                if wide:
                    row.append(e["chain"])
                rows.append(row)
        if rows:
            head = ["ENDPOINT", "SHARE", "POD", "NODE", "READY", "SERVING", "TERMINATING"]
            if d["local_endpoints"]:
                head.insert(0, "FOR")
            if wide:
                head.append("CHAIN")
            table = [head, *rows] if headers else rows
            widths = [max(len(r[i]) for r in table) for i in range(len(head))]
            for r in table:
                out.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        out.append("")
    return "\n".join(out) + ("\n" if out else "")


def test_show_text_and_endpoint_lookup_equal_the_plain_computation() -> None:
    """`show`'s text and its unsorted endpoint lookup, on fixtures and a generated cluster."""
    from kpa.k8s.showview import describe
    from kpa.render.show import render_text

    cluster = random_cluster(seed=9, services=25, endpoints_per_service=4)
    generated = parse_iptables(render_restore(cluster, ProxierOptions(node_name="node-0"), "ipv4"), "gen.save")
    cases = [(generated, objects_from_documents(to_objects(cluster)))]
    for save in SAVES:
        scenario = save.name.split(".")[0]
        cases.append((parse_iptables(save.read_text(), str(save)),
                      load_objects([str(FIXTURES / "clusters" / f"{scenario}.yaml")])))
    endpoints = 0
    for rs, objects in cases:
        for s in objects.services:
            for p in s.ports:
                by_address = objects.endpoints_by_address(s.namespace, s.name, p.name)
                assert by_address == {(e.address, e.port): e for e in objects.endpoints_for(s.namespace, s.name, p.name)}
        docs = describe(service_ports(rs), rs, objects)
        endpoints += sum(len(d["endpoints"]) + len(d["local_endpoints"]) for d in docs)
        for wide in (False, True):
            for headers in (False, True):
                assert render_text(docs, wide, headers, False) == _render_reference(docs, wide, headers)
    assert endpoints > 200


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from kpa.cli import _run

    with pytest.raises(SystemExit) as exit_info:
        _run("kpa", args)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def test_lint_and_show_answer_the_same_with_and_without_the_objects_child(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands as a whole, with the second-core reader forced on and off: same output, status, errors."""
    from kpa.k8s import background

    cluster = random_cluster(seed=10, services=30, endpoints_per_service=3)
    save = tmp_path / "gen.save"
    save.write_text(render_restore(cluster, ProxierOptions(node_name="node-0"), "ipv4"))
    objects = tmp_path / "objects.json"
    objects.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": to_objects(cluster)}, indent=4))
    bad = tmp_path / "bad.json"
    bad.write_text(objects.read_text()[:5000])
    kitchen = FIXTURES / "clusters" / "kitchen-sink.yaml"
    runs = [
        ["lint", "-r", str(save), "-c", str(objects), "--node", "node-0", "-o", "json"],
        ["lint", "-r", str(save), "-c", str(objects), "-o", "sarif"],
        ["show", "-r", str(save), "-c", str(objects), "--node", "node-0", "-o", "wide"],
        ["show", "-r", str(save), "-c", str(objects), "-o", "json"],
        ["lint", "-r", str(SAVES[0]), "-c", str(kitchen), "-o", "json"],
        ["lint", "-r", str(save), "-c", str(bad)],
        ["show", "-r", str(save), "-c", str(bad)],
        ["lint", "-r", str(tmp_path / "missing.save"), "-c", str(objects)],
    ]
    import os

    forks = 0
    real_fork = os.fork

    def counting_fork() -> int:
        nonlocal forks
        forks += 1
        return real_fork()

    monkeypatch.setattr(background.os, "fork", counting_fork)
    for args in runs:
        answers = []
        for spare in (True, False):
            monkeypatch.setattr(background, "spare_core", lambda spare=spare: spare)
            answers.append(_cli(args, capsys))
        assert answers[0] == answers[1], args
    assert forks >= len(runs)  # each run had an objects child (stopped when the rules are missing)
    assert _cli(runs[5], capsys)[0] == 2
