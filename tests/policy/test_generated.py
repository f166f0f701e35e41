"""Generated clusters: the class-based matrix agrees with `decide` on every cell."""

from __future__ import annotations

from pathlib import Path

from kpa.gen.policies import policy_cluster
from kpa.k8s.objects import load_objects, objects_from_documents
from kpa.policy.engine import PolicyEngine
from kpa.policy.matrix import matrix


def test_matrix_equals_decide_on_a_generated_cluster() -> None:
    docs = policy_cluster(pods=60, namespaces=4, policies=24, seed=3)
    objects = objects_from_documents(docs, "generated")
    assert len(objects.pods) == 61 and len(objects.network_policies) == 24
    engine = PolicyEngine.from_objects(objects)
    subjects = [engine.subject(p) for p in objects.pods]
    for port, protocol in ((8080, "TCP"), (53, "UDP"), (9090, "TCP")):
        m = matrix(engine, subjects, subjects, port, protocol)
        rows = list(m.rows())
        allowed = 0
        for i, src in enumerate(subjects):
            for j, dst in enumerate(subjects):
                assert rows[i][j] == engine.decide(src, dst, port, protocol).allowed, (
                    src.name, dst.name, port, protocol)
                allowed += rows[i][j]
        assert m.allowed_count() == allowed
        # Neither everything nor nothing: the policies do something at this port.
        assert 0 < allowed < len(subjects) ** 2
        assert m.class_count < len(subjects)


def test_the_generator_command_writes_a_loadable_list(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from kpa.gen.__main__ import main

    out = tmp_path / "cluster.json"
    result = CliRunner().invoke(main, ["policies", "--pods", "30", "--namespaces", "3",
                                       "--policies", "9", "--out", str(out)])
    assert result.exit_code == 0, result.output
    objects = load_objects([str(out)])
    assert (len(objects.pods), len(objects.namespaces), len(objects.network_policies)) == (
        31, 4, 9)
