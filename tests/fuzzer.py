"""A fuzzer for kpa's readers and commands: mutated real dumps and cluster objects.

Each case takes a real fixture (iptables-save, `nft list ruleset` text and
JSON, cluster objects as YAML and JSON), mutates it (bytes, lines, tokens;
JSON and YAML with wrong types, deep nesting and alias bombs) and runs one kpa
command on it in this process, the way the `kpa` entry point does. A case
fails when the command raises anything but kpa's own clean errors (a
traceback), takes longer than the time bound (a hang), or prints an error
that names no line of a file it read or runs longer than a screen.

    python3 tests/fuzzer.py [--seconds 60] [--seed N] [--per-case 10]

prints a reproducer for every failure: the command line and the input file.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import yaml

FIX = Path(__file__).parent / "fixtures"
RULES = [
    FIX / "iptables" / "session-affinity.nft.v4.save",
    FIX / "iptables" / "dual-stack.legacy.v6.save",
    FIX / "nft" / "kube-proxy" / "session-affinity.v4.nft",
    FIX / "nft" / "kube-proxy" / "clusterip.v4.json",
    FIX / "tools" / "constructs.txt",
    FIX / "tools" / "constructs.json",
    FIX / "nft" / "mixed.txt",
]
CLUSTERS = [FIX / "clusters" / "session-affinity.yaml"]
# Messages kpa prints for a file as a whole, where no line applies.
WHOLE_FILE = ("cannot read", "gzip", "larger than", "is a directory", "expected text, found binary data",
              "no rules", "holds no", "no chain named", "is empty", "empty:", "no tables found", "found a directory")
MAX_MESSAGE = 600
INTERESTING = ["{", "}", "[", "]", "(", ")", ";", ",", ":", "=", "*", "@x", "!", "-", "--", "-j", "-g", "-m",
               "jump", "goto", "vmap", "map", "set", "chain", "table", "COMMIT", "*nat", "\"", "'", "\\", "0",
               "-1", "+80", "8_0", "\u0668\u0660", "65536", "4294967296", "0x100000000", "99999999999999999999999",
               "1e999", "nan", "::1", "fd00::/8", "10.0.0.0/33", "300.1.1.1", "tcp", "ipencap", "255", "256",
               "KUBE-SERVICES", "accept", "drop", "reject", "dnat", "to", "numgen", "random", "mod", "0",
               "\x00", "\t", "A" * 300, "ct", "state", "established", "|", "&", "/", "#", "handle", "type"]


@dataclass
class Case:
    command: list[str]
    inputs: dict[str, bytes]  # file name -> content
    origin: str


@dataclass
class Failure:
    case: Case
    kind: str  # traceback | hang | message
    detail: str


@dataclass
class Report:
    cases: int = 0
    failures: list[Failure] = field(default_factory=list)
    by_outcome: dict[str, int] = field(default_factory=dict)


# -- mutations -------------------------------------------------------------------

def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return bytes([rng.randrange(256)])
    i = rng.randrange(len(data))
    op = rng.randrange(5)
    if op == 0:
        return data[:i] + bytes([rng.randrange(256)]) + data[i + 1:]
    if op == 1:
        return data[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))) + data[i:]
    if op == 2:
        return data[:i] + data[i + rng.randint(1, 200):]
    if op == 3:
        j = min(len(data), i + rng.randint(1, 400))
        return data[:j] + data[i:j] * rng.randint(1, 50) + data[j:]
    return data[:i]


def mutate_lines(data: bytes, rng: random.Random) -> bytes:
    lines = data.split(b"\n")
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    op = rng.randrange(5)
    if op == 0:
        del lines[i]
    elif op == 1:
        lines.insert(i, lines[j])
    elif op == 2:
        lines[i], lines[j] = lines[j], lines[i]
    elif op == 3:
        lines[i:i] = lines[j:j + rng.randint(1, 30)] * rng.randint(1, 20)
    else:
        lines[i] = lines[i].replace(b"}", b"") if rng.random() < 0.5 else lines[i] + b" {"
    return b"\n".join(lines)


def mutate_tokens(data: bytes, rng: random.Random) -> bytes:
    text = data.decode("utf-8", "replace")
    tokens = text.split(" ")
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(tokens))
        op = rng.randrange(4)
        if op == 0:
            tokens[i] = rng.choice(INTERESTING)
        elif op == 1:
            del tokens[i]
            if not tokens:
                tokens = [""]
        elif op == 2:
            tokens.insert(i, tokens[rng.randrange(len(tokens))])
        else:
            tokens[i] = tokens[i] + rng.choice(INTERESTING)
    return " ".join(tokens).encode()


def _walk(doc: Any, rng: random.Random, depth: int = 0) -> tuple[Any, Any] | None:
    """A random (container, key) inside a JSON document."""
    if isinstance(doc, dict) and doc and (depth == 0 or rng.random() < 0.8):
        k = rng.choice(list(doc))
        return _walk(doc[k], rng, depth + 1) or (doc, k)
    if isinstance(doc, list) and doc and (depth == 0 or rng.random() < 0.8):
        k = rng.randrange(len(doc))
        return _walk(doc[k], rng, depth + 1) or (doc, k)
    return None


def wrong_value(rng: random.Random) -> Any:
    deep: Any = 0
    for _ in range(rng.choice((3, 2000, 100000))):
        deep = [deep] if rng.random() < 0.5 else {"a": deep}
    return rng.choice([None, True, -1, 2**70, 1.5, "", "x" * 10000, [], {}, [1, 2], {"x": 1}, "*", deep,
                       "10.0.0.1", {"jump": 1}, {"set": "x"}, {"prefix": {"addr": 1, "len": "x"}},
                       {"range": [1]}, {"concat": 3}, {"map": {}}, {"elem": 5}])


def mutate_json(data: bytes, rng: random.Random) -> bytes:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return mutate_bytes(data, rng)
    for _ in range(rng.randint(1, 3)):
        spot = _walk(doc, rng)
        if spot is None:
            doc = wrong_value(rng)
            break
        container, key = spot
        if isinstance(container, dict) and rng.random() < 0.3:
            del container[key]
        else:
            container[key] = wrong_value(rng)
    try:
        return json.dumps(doc).encode()
    except (RecursionError, ValueError):
        return b'{"nftables": ' + b"[" * 200000 + b"]" * 200000 + b"}"


def yaml_bomb(rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:  # billion laughs
        lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
        for n in range(1, 12):
            prev = chr(ord("a") + n - 1)
            cur = chr(ord("a") + n)
            lines.append(f"{cur}: &{cur} [{', '.join(['*' + prev] * 9)}]")
        lines.append("kind: List\nitems: [*l]")
        return "\n".join(lines).encode()
    if kind == 1:  # deep nesting
        return ("items: " + "[" * 50000 + "]" * 50000 + "\nkind: List\n").encode()
    if kind == 2:  # recursive alias
        return b"&a [*a]\n"
    return b"kind: Service\nmetadata: {name: x, namespace: y}\nspec: " + b"{a: " * 20000 + b"1" + b"}" * 20000


def _bounded(doc: Any, limit: int = 200_000) -> bool:
    """Whether `doc` has at most `limit` values once its aliases are expanded (as json.dumps would)."""
    todo, seen = [doc], 0
    while todo:
        seen += 1
        if seen > limit:
            return False
        x = todo.pop()
        if isinstance(x, dict):
            todo.extend(x.values())
        elif isinstance(x, list):
            todo.extend(x)
    return True


def mutate_yaml(data: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.25:
        return yaml_bomb(rng)
    try:
        docs = list(yaml.safe_load_all(data))
        # A bomb from an earlier mutation loads cheaply (aliases share their values), but
        # json.dumps would expand it without end, outside any case's time bound.
        if not _bounded(docs):
            return mutate_bytes(data, rng)
        as_json = json.dumps({"kind": "List", "apiVersion": "v1", "items": docs}).encode()
    except (yaml.YAMLError, RecursionError, ValueError, TypeError):
        return mutate_bytes(data, rng)
    return mutate_json(as_json, rng)


# -- running ---------------------------------------------------------------------

class Hang(BaseException):
    """Raised by the alarm when a case runs past its time bound."""


@contextlib.contextmanager
def time_bound(seconds: float) -> Iterator[None]:
    def alarm(signum: int, frame: Any) -> None:
        raise Hang()

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_cli(args: list[str], seconds: float) -> tuple[str, str]:
    """Run `kpa ARGS` in this process: (outcome, detail); outcome is ok, clean, traceback or hang."""
    from kpa.cli import cli
    from kpa.errors import KpaError

    out, err = io.StringIO(), io.StringIO()
    try:
        with time_bound(seconds), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.main(args=args, prog_name="kpa", standalone_mode=False)
    except Hang:
        return "hang", f"no answer within {seconds:g} s"
    except (click.exceptions.Exit, click.Abort):
        return "ok", ""
    except click.ClickException as exc:
        return "clean", exc.format_message()
    except KpaError as exc:
        return "clean", str(exc)
    except Exception:
        return "traceback", traceback.format_exc(limit=-8)
    return "ok", ""


def check_message(message: str, inputs: dict[str, str]) -> str | None:
    """Why an error message is not good enough, or None."""
    if len(message) > MAX_MESSAGE:
        return f"message of {len(message)} characters: {message[:200]!r}..."
    for path in inputs.values():
        if message.startswith(path + ": ") and not any(w in message for w in WHOLE_FILE):
            return f"error names no line: {message[:300]!r}"
    return None


def commands(rules: str, cluster: str, original_rules: str, original_cluster: str,
             rng: random.Random) -> list[str]:
    dst = rng.choice(["10.96.0.20", "10.96.0.10", "192.168.0.2", "fd00:10:96::1"])
    options = [
        ["check", "-r", rules],
        ["graph", "-r", rules, "-o", "json"],
        ["trace", "-r", rules, "--dst", dst, "-p", "tcp", "--dport", "80", "--node-ip", "192.168.0.2",
         "--max-outcomes", "64"],
        ["trace", "-r", rules, "--node-ip", "192.168.0.2", "--max-outcomes", "64", "-o", "json"],
        ["show", "-r", rules, "-c", cluster],
        ["lint", "-r", rules, "-c", cluster, "--node", "node-a"],
        ["diff", rules, original_rules, "-c", cluster, "--node-ip", "192.168.0.2"],
    ]
    return rng.choice(options)


def make_case(rng: random.Random, tmp: str) -> tuple[Case, dict[str, str]]:
    rules_src = rng.choice(RULES)
    cluster_src = rng.choice(CLUSTERS)
    rules_data = rules_src.read_bytes()
    cluster_data = cluster_src.read_bytes()
    target = rng.random()
    mutators: list[Callable[[bytes, random.Random], bytes]]
    if target < 0.75:
        mutators = [mutate_bytes, mutate_lines, mutate_tokens] + ([mutate_json] * 3 if rules_src.suffix == ".json" else [])
        for _ in range(rng.choice((1, 1, 2, 4))):
            rules_data = rng.choice(mutators)(rules_data, rng)
        origin = f"{rules_src.name} mutated"
    else:
        for _ in range(rng.choice((1, 2))):
            cluster_data = rng.choice([mutate_yaml, mutate_yaml, mutate_bytes, mutate_lines, mutate_tokens])(cluster_data, rng)
        origin = f"{cluster_src.name} mutated"
    paths = {"rules": os.path.join(tmp, "rules" + rules_src.suffix), "cluster": os.path.join(tmp, "cluster.yaml")}
    inputs = {"rules": rules_data, "cluster": cluster_data}
    for k, data in inputs.items():
        with open(paths[k], "wb") as fh:
            fh.write(data)
    cmd = commands(paths["rules"], paths["cluster"], str(rules_src), str(cluster_src), rng)
    return Case(cmd, {paths[k]: inputs[k] for k in inputs}, origin), paths


def fuzz(seconds: float, seed: int, per_case: float = 10.0, max_cases: int | None = None,
         on_failure: Callable[[Failure], None] | None = None) -> Report:
    report = Report()
    deadline = time.monotonic() + seconds
    rng = random.Random(seed)
    limit = sys.getrecursionlimit()
    with tempfile.TemporaryDirectory(prefix="kpa-fuzz-") as tmp:
        while time.monotonic() < deadline and (max_cases is None or report.cases < max_cases):
            case, paths = make_case(rng, tmp)
            outcome, detail = run_cli(case.command, per_case)
            sys.setrecursionlimit(limit)
            report.cases += 1
            report.by_outcome[outcome] = report.by_outcome.get(outcome, 0) + 1
            failure = None
            if outcome in ("traceback", "hang"):
                failure = Failure(case, outcome, detail)
            elif outcome == "clean":
                why = check_message(detail, paths)
                if why:
                    failure = Failure(case, "message", why)
            if failure is not None:
                report.failures.append(failure)
                if on_failure:
                    on_failure(failure)
    return report


def reproducer(f: Failure, directory: str) -> str:
    """Save a failure's inputs under `directory` and return the command that replays it."""
    os.makedirs(directory, exist_ok=True)
    cmd = list(f.case.command)
    for path, data in f.case.inputs.items():
        keep = os.path.join(directory, os.path.basename(path))
        with open(keep, "wb") as fh:
            fh.write(data)
        cmd = [keep if a == path else a for a in cmd]
    return "kpa " + " ".join(cmd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--per-case", type=float, default=10)
    ap.add_argument("--keep", default="kpa-fuzz-failures", help="Directory for reproducers.")
    args = ap.parse_args()
    seen: set[tuple[str, str]] = set()

    def show(f: Failure) -> None:
        key = (f.kind, f.detail.strip().splitlines()[-1] if f.detail.strip() else "")
        if key in seen:
            return
        seen.add(key)
        d = os.path.join(args.keep, f"case{len(seen)}")
        print(f"FAIL ({f.kind}) {f.case.origin}: {reproducer(f, d)}\n{f.detail}\n", flush=True)

    report = fuzz(args.seconds, args.seed, args.per_case, on_failure=show)
    print(f"seed {args.seed}: {report.cases} cases, {len(report.failures)} failures, outcomes {report.by_outcome}")
    sys.exit(1 if report.failures else 0)


if __name__ == "__main__":
    main()
