"""Spec dataclasses: strict JSON round trips and errors that show the arithmetic."""
import json

import pytest

from planner.errors import PlannerError
from planner.models import PRESETS, load_architecture, resolve_model
from planner.specs import Cluster, Layout, ModelSpec
from planner.clusters import PRESETS as CLUSTERS


def test_layout_round_trip_and_world_arithmetic():
    layout = Layout.make(dp=2, tp=4, pp=2, microbatch_size=2, num_microbatches=4, zero=1)
    assert Layout.from_dict(layout.to_dict()) == layout
    with pytest.raises(PlannerError, match=r"dp\(2\) \* tp\(4\) \* pp\(2\) = 16 != world_size\(8\)"):
        layout.check_world(8)
    with pytest.raises(PlannerError, match=r"= 16 != global_batch\(12\)"):
        layout.check_batch(12)


@pytest.mark.parametrize("bad, message", [
    ({"dims": {"dp": "two"}}, "field 'dims.dp': expected an integer, got \"two\""),
    ({"dims": {"dp": 0}}, "dp must be an integer >= 1, got 0"),
    ({"pipeline": {"schedule": "zigzag"}}, "schedule 'zigzag' is not one of"),
    ({"dpp": 2}, "unknown field 'dpp'"),
    ({"data": {"zero": 4}}, "zero must be 0, 1, 2 or 3"),
    ({"tensor": {"sequence_parallel": True}}, "sequence_parallel needs tp > 1"),
    ({"schema_version": 3}, "schema_version 3 is not supported"),
    # version 1: one flat record, still read
    ({"schema_version": 1, "dp": "two"}, "field 'dims.dp': expected an integer, got \"two\""),
    ({"schema_version": 1, "dpp": 2}, "unknown field 'dpp'"),
    ({"schema_version": 1, "schedule": "1f1b", "virtual_stages": 2},
     "schedule 1f1b places 1 chunk(s) per rank: virtual_stages must be 1, got 2"),
])
def test_layout_rejects_bad_fields(bad, message):
    with pytest.raises(PlannerError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Layout.from_dict(bad, ctx="plan.json")


def test_layout_version_1_is_read_and_keeps_its_identity():
    """A version-1 layout (15 flat fields) reads as the same layout, and fingerprints as the
    version-1 record did, so plans and metrics written before stay comparable."""
    import hashlib
    v1 = {"dp": 2, "tp": 2, "pp": 2, "microbatch_size": 1, "num_microbatches": 4,
          "schedule": "zbv", "virtual_stages": 2, "zero": 1, "recompute": "full",
          "sequence_parallel": True, "dp_comm": "all_reduce", "ps_shards": 0,
          "compression": "none", "powersgd_rank": 0, "stage_boundaries": [0, 2, 3, 5],
          "schema_version": 1}
    layout = Layout.from_dict(v1, ctx="old.json")
    assert layout == Layout.make(dp=2, tp=2, pp=2, num_microbatches=4, schedule="zbv",
                                 virtual_stages=2, zero=1, recompute="full",
                                 sequence_parallel=True, stage_boundaries=(0, 2, 3, 5))
    assert layout.to_dict()["schema_version"] == 2 and layout.identity() == v1
    blob = json.dumps(v1, sort_keys=True, separators=(",", ":")).encode()
    from planner.specs.common import fingerprint
    assert fingerprint(layout.identity()) == hashlib.sha256(blob).hexdigest()[:16]


def test_every_preset_round_trips_and_fingerprint_ignores_name():
    for spec in PRESETS.values():
        assert ModelSpec.from_dict(spec.to_dict()) == spec
    renamed = ModelSpec.from_dict({**PRESETS["gpt-tiny"].to_dict(), "name": "other"})
    assert renamed.fingerprint() == PRESETS["gpt-tiny"].fingerprint()
    assert PRESETS["gpt2-small"].fingerprint() != PRESETS["gpt-tiny"].fingerprint()


def test_cluster_presets_round_trip(tmp_path):
    for make in CLUSTERS.values():
        cluster = make()
        path = tmp_path / f"{cluster.name}.json"
        cluster.save(str(path))
        assert Cluster.load(str(path)) == cluster


def test_architecture_file(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"family": "gpt", "num_layers": 2, "hidden_size": 64,
                                "num_heads": 4, "seq_len": 32, "vocab_size": 100}))
    spec = resolve_model(str(path))
    assert spec.name == "mine" and spec.ffn_hidden_size == 256
    path.write_text(json.dumps({"family": "gpt", "num_layers": 2, "hidden_size": 64}))
    with pytest.raises(PlannerError, match="missing required field 'num_heads'"):
        load_architecture(str(path))
    path.write_text('{"family": "gpt", ')
    with pytest.raises(PlannerError, match=r"mine.json: malformed JSON at line 1"):
        load_architecture(str(path))
    path.write_text(json.dumps({"family": "gpt", "num_layers": 2, "hidden_size": 66,
                                "num_heads": 4, "seq_len": 32, "vocab_size": 100}))
    with pytest.raises(PlannerError, match=r"hidden_size\(66\) % num_heads\(4\) = 2"):
        load_architecture(str(path))


def test_nested_field_path_in_error():
    data = CLUSTERS["dgx-a100-80gb"]().to_dict()
    data["intra_node"]["bandwidth_bytes_per_s"] = "fast"
    with pytest.raises(PlannerError, match=r"c.json: field 'intra_node.bandwidth_bytes_per_s': "
                                           r"expected a number, got \"fast\""):
        Cluster.from_dict(data, ctx="c.json")


def test_plans_without_implementation_read_and_keep_their_fingerprint():
    """Plans written before --implementation/--partition read with the defaults (this
    project's executor, the balanced partition) and fingerprint as before; a plan costed for
    Megatron is another plan."""
    from dataclasses import replace

    from executor_helpers import make_plan
    from planner.specs import Plan
    plan = make_plan(dp=2)
    old = plan.to_dict()
    del old["implementation"], old["partition"]
    read = Plan.from_dict(old, ctx="old-plan.json")
    assert (read.implementation, read.partition) == ("executor", "balanced")
    assert read.fingerprint() == plan.fingerprint()
    assert replace(plan, partition="even").fingerprint() == plan.fingerprint()
    assert replace(plan, implementation="megatron").fingerprint() != plan.fingerprint()
    with pytest.raises(PlannerError, match="implementation 'deepspeed' is not one of"):
        Plan.from_dict({**old, "implementation": "deepspeed"}, ctx="bad.json")
