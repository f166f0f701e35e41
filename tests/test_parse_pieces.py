"""The skeleton passes of a large dump, shared piece by piece between the parent and a child.

kpa.parse.shapes.SkeletonJob cuts the text into pieces that whichever process
is free takes next. Whatever the split, the pieces put together must give the
skeletons of the whole text (`Skeletons.of(skeletonise(text))`), and reading
the dump must give the same rulesets as reading it without a child; a merge
in any other order than the text's would be caught.
"""

from __future__ import annotations

import os
import random

import pytest

from kpa.gen.cluster import random_cluster
from kpa.gen.iptables import render_restore
from kpa.gen.options import ProxierOptions
from kpa.netfilter.model import Family, LazyRule, Ruleset
from kpa.parse import shapes
from kpa.parse.iptables_save import parse_iptables
from kpa.parse.shapes import SkeletonJob, Skeletons, skeletonise


def per_line(sk: Skeletons | None) -> list[str | None] | None:
    return None if sk is None else [sk.keys[i] if i else None for i in sk.ids]


def dump(seed: int = 4, services: int = 120) -> str:
    cluster = random_cluster(seed=seed, services=services, endpoints_per_service=3)
    return render_restore(cluster, ProxierOptions(node_name="node-0"), "ipv4")


def seen(rs: Ruleset) -> list[tuple[object, ...]]:
    return [(r.table, r.chain, r.index, r.text, str(r.location), isinstance(r, LazyRule), r.known,
             list(r.chain_refs())) for t in rs.tables for r in t.rules()]


@pytest.fixture
def forking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shapes, "FORK_THRESHOLD", 0)
    monkeypatch.setattr(shapes, "_can_fork", lambda: True)  # even with one CPU


def test_pieces_put_together_in_any_split_are_the_whole(forking: None) -> None:
    text = dump() + "-A X\n-A  Y -j Z\n  -A KUBE-SERVICES -d 10.0.0.1/32 -j KUBE-SVC-ABCDEFGHIJKLMNOP"
    whole = per_line(Skeletons.of(skeletonise(text, Family.IPV4) or ""))
    job = SkeletonJob(text, Family.IPV4)
    job.close()  # no child: the pieces are worked out here
    n = len(job.bounds) - 1
    assert n > 20 and job.bounds[0] == 0 and job.bounds[-1] == len(text)
    assert all(text[b - 1] == "\n" for b in job.bounds[1:-1])
    rng = random.Random(1)
    for _ in range(5):
        mine = {k: job._piece(k) for k in range(n) if rng.random() < 0.5}
        theirs = {k: job._piece(k) for k in range(n) if k not in mine and rng.random() < 0.7}
        merged = job.merge(mine, {k: v for k, v in theirs.items() if v is not None})
        assert per_line(merged) == whole
    # The parent's pieces first in the dicts: merge still goes by piece number.
    mine = {k: job._piece(k) for k in range(1, n, 2)}
    theirs = {k: job._piece(k) for k in range(0, n, 2)}
    assert per_line(job.merge(dict(mine), {k: v for k, v in theirs.items() if v is not None})) == whole
    # Put together by who did them, rather than in text order: caught.

    def by_process(self: SkeletonJob, mine: dict[int, Skeletons | None], theirs: dict[int, Skeletons]) -> Skeletons:
        parts = [p for p in (*mine.values(), *theirs.values()) if p is not None]
        out = parts[0]
        for p in parts[1:]:
            out.extend(p)
        return out

    mine = {k: job._piece(k) for k in range(1, n, 2)}
    theirs = {k: job._piece(k) for k in range(0, n, 2)}
    assert per_line(by_process(job, mine, {k: v for k, v in theirs.items() if v is not None})) != whole


@pytest.mark.parametrize("child", ["works", "fails", "dies-after-one", "slow"])
def test_a_dump_read_with_pieces_shared_with_a_child_is_read_as_without(
        forking: None, monkeypatch: pytest.MonkeyPatch, child: str) -> None:
    text = dump(seed=6, services=150)
    monkeypatch.setattr(shapes, "FORK_THRESHOLD", len(text) + 1)
    alone = seen(parse_iptables(text, "t"))  # no child
    monkeypatch.setattr(shapes, "FORK_THRESHOLD", 0)
    parent = os.getpid()
    real = shapes.skeletonise
    taken: list[int] = []

    def skeletonise_piece(piece: str, family: Family) -> str | None:
        if os.getpid() != parent:
            if child == "fails":
                raise RuntimeError("the child fails")
            if child == "dies-after-one":
                os._exit(3)
            if child == "slow":
                import time
                time.sleep(0.01)
        else:
            taken.append(len(piece))
        return real(piece, family)

    monkeypatch.setattr(shapes, "skeletonise", skeletonise_piece)
    rs = parse_iptables(text, "t")
    assert seen(rs) == alone
    lazy = sum(isinstance(r, LazyRule) for t in rs.tables for r in t.rules())
    assert lazy > 1000
    if child != "works":
        assert taken  # the parent took over what the child did not do
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)
