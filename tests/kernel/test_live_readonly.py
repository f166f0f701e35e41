"""Live mode only reads: proofs against a real kernel, one fresh namespace per test.

Covers kpa.live_iptc (the python-iptables reader of legacy tables) and kpa's
`--live` commands run as real subprocesses inside the namespace. Every test
snapshots the kernel state kpa could disturb, runs kpa, and compares.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kpa.errors import InputError
from kpa.netfilter.model import Ruleset
from kpa.parse.iptables_save import parse_iptables
from kpa.render.iptables import render_ruleset

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
IPT_FIXTURES = REPO / "tests" / "fixtures" / "iptables"
NFT_FIXTURES = REPO / "tests" / "fixtures" / "nft" / "kube-proxy"
PROC_NAMES = {"ipv4": "/proc/net/ip_tables_names", "ipv6": "/proc/net/ip6_tables_names"}

# Not "kpat-": the kernel harness's tests look for leaked namespaces with that prefix.
NS_PREFIX = "kparo-"

# Rules the kube-proxy fixtures do not exercise but the renderer must handle:
# fragments, inversions, wildcard interfaces, a protocol
# by number, goto, a rule without a target, quoting, and CONNMARK (a target
# python-iptables does not know as standard, which makes it probe every table).
EDGE_V4 = r"""*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
[4:240] -A PREROUTING -j CT --notrack
COMMIT
*nat
:PREROUTING ACCEPT [11:660]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [3:180]
-A PREROUTING -p tcp -j DNAT --to-destination 10.0.0.1:80
-A OUTPUT -p tcp -j REDIRECT --to-ports 15001
[2:120] -A POSTROUTING -j MASQUERADE --random-fully
-A POSTROUTING -o eth0 -j SNAT --to-source 192.0.2.1
COMMIT
*filter
:INPUT DROP [9:540]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-A - [0:0]
:KUBE-B - [0:0]
[1:60] -A INPUT -f -j DROP
-A INPUT -p 47 ! -f -j ACCEPT
-A INPUT ! -p tcp -j KUBE-B
-A INPUT -p tcp -m multiport --dports 80,443,1000:2000 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p udp -m udp ! --dport 53 -j REJECT --reject-with icmp-port-unreachable
-A INPUT -m comment --comment "quote \"x\" and back\\slash" -j ACCEPT
-A INPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j ACCEPT
-A INPUT -p icmp -m icmp --icmp-type 8 -j ACCEPT
-A INPUT -m mark ! --mark 0x8000/0x8000 -j DROP
-A FORWARD ! -s 10.0.0.0/8 -d 192.0.2.0/24 -i cali+ ! -o eth0 -j KUBE-A
-A FORWARD -g KUBE-A
-A FORWARD -s 10.1.1.1/32
-A FORWARD -m limit --limit 5/sec -j LOG --log-prefix "kpa: "
-A FORWARD -j CONNMARK --set-xmark 0x1/0xffffffff
-A KUBE-A -m addrtype --src-type LOCAL --dst-type LOCAL -j RETURN
-A KUBE-B -m statistic --mode nth --every 3 --packet 1 -j RETURN
-A KUBE-B -m recent --rcheck --seconds 10800 --reap --name X --mask 255.255.255.255 --rsource -j RETURN
COMMIT
"""

# iptables-save prints a non-contiguous mask in full; kpa's parser rejects it, and
# must do so for the iptc text exactly as for the save tool's.
EDGE_MASK_V4 = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -d 1.0.0.0/255.0.255.0 -j DROP
COMMIT
"""

# An nft table beside kube-proxy's, with a counter that is not zero.
COUNTER_TABLE = """table inet kparo_counters {
    chain pre {
        type filter hook prerouting priority -150; policy accept;
        ip daddr 10.96.0.0/16 counter packets 5 bytes 300 accept
    }
}
"""


@contextmanager
def netns() -> Iterator[str]:
    name = f"{NS_PREFIX}{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def run_in(ns: str, argv: list[str], stdin: str | None = None,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True,
                          text=True, check=False, env=env, cwd=REPO, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def py_in(ns: str, code: str) -> str:
    return run_in(ns, [sys.executable, "-c", code]).stdout


def tables_in(ns: str, family: str = "ipv4") -> list[str]:
    out = run_in(ns, ["cat", PROC_NAMES[family]], check=False).stdout
    return [line for line in out.splitlines() if line.strip()]


def read_iptc_in(ns: str, family: str) -> str | None:
    out = py_in(ns, "import json, sys\nfrom kpa.live_iptc import read_legacy_iptc\n"
                    f"json.dump(read_legacy_iptc({family!r}), sys.stdout)")
    result: str | None = json.loads(out)
    return result


def with_counters(save_text: str) -> str:
    """Give every rule and policy distinct non-zero counters, so a reset would show."""
    out: list[str] = []
    for n, line in enumerate(save_text.splitlines(), 1):
        if line.startswith("-A "):
            line = f"[{n}:{n * 60}] {line}"
        elif line.startswith(":") and line.endswith("[0:0]") and " - " not in line:
            line = line[: -len("[0:0]")] + f"[{n}:{n * 60}]"
        out.append(line)
    return "\n".join(out) + "\n"


def parse_or_error(text: str) -> tuple[Ruleset | None, str | None]:
    try:
        return parse_iptables(text, "<dump>"), None
    except InputError as exc:
        # Line numbers differ by kpa's extra header comment; the complaint must not.
        return None, exc.message


def comparable(save_text: str) -> str:
    # The save tools stamp each dump with the time ("# Generated by ... on <date>");
    # that comment is the only part that is not state.
    return "".join(line + "\n" for line in save_text.splitlines() if not line.startswith("#"))


# -- (a) nothing legacy present: kpa must not create it --------------------------

def test_no_legacy_tables_reads_nothing_and_creates_nothing() -> None:
    with netns() as ns:
        assert tables_in(ns, "ipv4") == [] and tables_in(ns, "ipv6") == []
        out = py_in(ns, "import json, sys\n"
                        "from kpa.live_iptc import legacy_tables_present, read_legacy_iptc\n"
                        "json.dump([legacy_tables_present('ipv4'), read_legacy_iptc('ipv4'),"
                        " legacy_tables_present('ipv6'), read_legacy_iptc('ipv6')], sys.stdout)")
        assert json.loads(out) == [False, None, False, None]
        assert tables_in(ns, "ipv4") == [] and tables_in(ns, "ipv6") == []

        # Control: the hazard being guarded. Merely opening the table with libiptc,
        # without reading or committing anything, makes the kernel create it.
        py_in(ns, "import iptc\niptc.Table('filter', autocommit=False)\n"
                  "iptc.Table6('filter', autocommit=False)")
        assert tables_in(ns, "ipv4") == ["filter"]
        assert tables_in(ns, "ipv6") == ["filter"]


def test_python_iptables_probes_every_table_but_kpa_does_not() -> None:
    """python-iptables opens all tables to decide whether CONNMARK is a chain."""
    rule = ["-t", "filter", "-A", "FORWARD", "-j", "CONNMARK", "--set-xmark", "0x1/0xffffffff"]
    with netns() as naive, netns() as guarded:
        for ns in (naive, guarded):
            run_in(ns, ["iptables-legacy", "-w", "10", *rule])
            assert tables_in(ns) == ["filter"]

        py_in(naive, "import iptc\nt = iptc.Table('filter', autocommit=False)\n"
                     "[r.target.name for c in t.chains for r in c.rules]")
        assert sorted(tables_in(naive)) == ["filter", "mangle", "nat", "raw", "security"]

        text = read_iptc_in(guarded, "ipv4")
        assert tables_in(guarded) == ["filter"]
        assert text is not None
        saved = run_in(guarded, ["iptables-legacy-save", "-c"]).stdout
        assert comparable(text) == comparable(saved)


# -- (b) legacy tables present: the same rules as iptables-legacy-save ------------

@pytest.mark.parametrize(("source", "family"), [
    ("kitchen-sink.legacy.v4.save", "ipv4"),
    ("dual-stack.legacy.v6.save", "ipv6"),
    ("session-affinity.legacy.v4.save", "ipv4"),
    ("edge", "ipv4"),
    ("edge-mask", "ipv4"),
])
def test_iptc_text_parses_like_legacy_save(source: str, family: str) -> None:
    inline = {"edge": EDGE_V4, "edge-mask": EDGE_MASK_V4}
    text = inline.get(source) or with_counters((IPT_FIXTURES / source).read_text())
    restore = "ip6tables-legacy-restore" if family == "ipv6" else "iptables-legacy-restore"
    save = "ip6tables-legacy-save" if family == "ipv6" else "iptables-legacy-save"
    with netns() as ns:
        run_in(ns, [restore, "-w", "10", "--counters"], stdin=text)
        before = tables_in(ns, family)
        assert before

        got = read_iptc_in(ns, family)
        saved = run_in(ns, [save, "-c"]).stdout
        assert tables_in(ns, family) == before

        assert got is not None, "kpa could not render rules iptables-legacy-save prints"
        # Every match and target is printed by its own libxtables save function,
        # so the text itself agrees, counters included.
        assert comparable(got) == comparable(saved)

        mine, mine_err = parse_or_error(got)
        ref, ref_err = parse_or_error(saved)
        assert mine_err == ref_err
        if mine is None or ref is None:
            return
        assert [t.family for t in mine.tables] == [t.family for t in ref.tables]
        assert render_ruleset(mine) == render_ruleset(ref)
        for a, b in zip(mine.tables, ref.tables, strict=True):
            assert a.name == b.name
            assert list(a.chains) == list(b.chains)
            for name, chain in a.chains.items():
                other = b.chains[name]
                assert (chain.policy, chain.counters) == (other.policy, other.counters)
                assert [r.counters for r in chain.rules] == [r.counters for r in other.rules]
                assert all(r.known for r in chain.rules) == all(r.known for r in other.rules)
        n_rules = sum(len(c.rules) for t in mine.tables for c in t.chains.values())
        assert n_rules == len(re.findall(r"^\[\d+:\d+\] -A ", saved, re.M))


# -- (c) kpa's live mode as a whole leaves the kernel as it found it -------------

def snapshot(ns: str) -> dict[str, str]:
    """Everything `kpa ... --live` could disturb, as text."""
    snap: dict[str, str] = {}
    for tool in ("iptables-nft-save", "ip6tables-nft-save",
                 "iptables-legacy-save", "ip6tables-legacy-save"):
        snap[tool] = comparable(run_in(ns, [tool, "-c"]).stdout)
    # JSON carries every handle and counter.
    snap["nft -j list ruleset"] = run_in(ns, ["nft", "-j", "list", "ruleset"]).stdout
    for path in PROC_NAMES.values():
        snap[path] = run_in(ns, ["cat", path], check=False).stdout
    for family in ("ipv4", "ipv6"):
        ct = run_in(ns, ["conntrack", "-L", "-f", family], check=False).stdout
        # The kernel counts each entry's remaining seconds down by itself.
        snap[f"conntrack -L -f {family}"] = re.sub(r"^(\S+\s+\d+\s+)\d+ ", r"\1<t> ", ct, flags=re.M)
    listing = run_in(ns, ["sh", "-c", "cd /proc/net/xt_recent 2>/dev/null && "
                                      "for f in $(ls | sort); do echo \"== $f\"; cat \"$f\"; done"],
                     check=False).stdout
    snap["/proc/net/xt_recent"] = listing
    return snap


def assert_same(before: dict[str, str], after: dict[str, str], what: str) -> None:
    changed = [k for k in before if before[k] != after[k]]
    assert not changed, f"{what} changed: {changed}"


def load_kube_proxy_everything(ns: str) -> None:
    kitchen_nft = with_counters((IPT_FIXTURES / "kitchen-sink.nft.v4.save").read_text())
    kitchen_legacy = with_counters((IPT_FIXTURES / "kitchen-sink.legacy.v4.save").read_text())
    run_in(ns, ["iptables-nft-restore", "--counters"], stdin=kitchen_nft)
    run_in(ns, ["iptables-legacy-restore", "-w", "10", "--counters"], stdin=kitchen_legacy)
    run_in(ns, ["ip6tables-legacy-restore", "-w", "10", "--counters"],
           stdin=with_counters((IPT_FIXTURES / "dual-stack.legacy.v6.save").read_text()))
    run_in(ns, ["nft", "-f", str(NFT_FIXTURES / "kitchen-sink.v4.nft")])
    run_in(ns, ["nft", "-f", "-"], stdin=COUNTER_TABLE)
    # State that lives outside the rules: a conntrack entry and a session-affinity entry.
    run_in(ns, ["conntrack", "-I", "-p", "tcp", "-s", "10.244.0.5", "-d", "10.96.0.26",
                "--sport", "40000", "--dport", "9187", "--state", "ESTABLISHED",
                "-u", "ASSURED", "-t", "3600"])
    recent = sorted(run_in(ns, ["ls", "/proc/net/xt_recent"]).stdout.split())
    assert recent, "the kitchen-sink rules use session affinity (-m recent)"
    run_in(ns, ["sh", "-c", f"echo +10.244.0.5 > /proc/net/xt_recent/{recent[0]}"])


def kpa_in(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_in(ns, [sys.executable, "-m", "kpa", *args], check=False)


def test_live_commands_leave_every_table_counter_and_state_untouched() -> None:
    with netns() as ns:
        load_kube_proxy_everything(ns)
        first = snapshot(ns)
        # The snapshot tools themselves must not change anything, or the
        # comparison below would prove nothing.
        control = snapshot(ns)
        assert_same(first, control, "taking a snapshot")
        # Counters that a reset or a re-load would visibly change.
        nonzero = re.compile(r"^\[[1-9]\d*:\d+\] -A ", re.M)
        for tool in ("iptables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"):
            assert nonzero.search(first[tool]), tool
        assert '"packets": 5' in first["nft -j list ruleset"]
        assert "10.244.0.5" in first["/proc/net/xt_recent"]
        assert "10.96.0.26" in first["conntrack -L -f ipv4"]

        runs = {
            "check": kpa_in(ns, "check", "--live"),
            "trace": kpa_in(ns, "trace", "--live", "--dst", "10.96.0.26", "-p", "tcp",
                            "--dport", "9187", "-v"),
            "show": kpa_in(ns, "show", "--live", "-o", "wide"),
        }
        for name, proc in runs.items():
            assert "Traceback" not in proc.stderr, f"kpa {name} crashed:\n{proc.stderr}"
            # check exits 1 when it has findings; anything else is an error.
            assert proc.returncode in (0, 1), f"kpa {name}: {proc.returncode} {proc.stderr}"
        # -v and -o wide name the chains, so kpa must have read kube-proxy's rules live.
        assert "KUBE-SVC" in runs["trace"].stdout
        assert "KUBE-SVC" in runs["show"].stdout

        for family in ("ipv4", "ipv6"):
            assert read_iptc_in(ns, family) is not None

        assert_same(first, snapshot(ns), "kpa --live and read_legacy_iptc")


def test_live_trace_on_an_empty_namespace_reports_and_creates_nothing() -> None:
    with netns() as ns:
        before = snapshot(ns)
        assert before["/proc/net/ip_tables_names"] == ""
        proc = kpa_in(ns, "trace", "--live", "--dst", "10.96.0.10", "-p", "tcp", "--dport", "80")
        assert "Traceback" not in proc.stderr
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.startswith("kpa: error:")
        after = snapshot(ns)
        assert_same(before, after, "kpa trace --live on an empty namespace")
        assert after["/proc/net/ip_tables_names"] == after["/proc/net/ip6_tables_names"] == ""
        assert json.loads(after["nft -j list ruleset"])["nftables"][1:] == []
