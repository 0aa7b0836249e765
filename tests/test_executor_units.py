"""In-process checks of the executor's pieces (no process group needed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from executor.data import SyntheticData, TokenFileData, dp_rows
from executor.parallel import check_layout
from executor.parallel.pp import local_chunk_ids
from executor.parallel.ps import assign_owners
from executor.parallel.recompute import apply_recompute
from executor_helpers import GPT
from planner.errors import PlannerError
from planner.models.build import build_model
from planner.rules import chunk_starts
from planner.specs import Layout


def test_ps_owners_balance_bytes():
    # 100 -> 0; 60 -> 1; 50 -> 1 (60 < 100); 10 -> 0 (100 < 110)
    assert assign_owners([100, 10, 60, 50], 2) == [0, 0, 1, 1]
    assert assign_owners([5, 5, 5], 1) == [0, 0, 0]


def test_chunk_starts_even_and_explicit():
    assert chunk_starts(Layout.make(pp=2), 6) == [0, 3]
    assert chunk_starts(Layout.make(pp=2, schedule="zbv", virtual_stages=2), 6) == [0, 2, 4, 5]
    assert chunk_starts(Layout.make(pp=2, stage_boundaries=(0, 1)), 6) == [0, 1]
    with pytest.raises(PlannerError, match="block 6"):
        chunk_starts(Layout.make(pp=2, stage_boundaries=(0, 6)), 6)
    with pytest.raises(PlannerError, match="8 chunks > 6 blocks"):
        chunk_starts(Layout.make(pp=4, schedule="zbv", virtual_stages=2, num_microbatches=4), 6)


def test_looped_and_v_placement():
    inter = Layout.make(pp=2, schedule="interleaved-1f1b", virtual_stages=2, num_microbatches=2)
    assert [local_chunk_ids(inter, r) for r in range(2)] == [[0, 2], [1, 3]]
    zbv = Layout.make(pp=2, schedule="zbv", virtual_stages=2)
    assert [local_chunk_ids(zbv, r) for r in range(2)] == [[0, 3], [1, 2]]


@pytest.mark.parametrize("layout,words", [
    (Layout.make(dp=2, zero=2, compression="fp16"), "FSDP"),
    (Layout.make(dp=2, tp=2, compression="bf16"), "DTensor"),
    (Layout.make(dp=2, tp=2, zero=1, compression="powersgd", powersgd_rank=1), "powersgd"),
    (Layout.make(dp=2, dp_comm="parameter_server", ps_shards=1, zero=1), "zero 0"),
    (Layout.make(dp=2, pp=2, zero=3, schedule="zbv", virtual_stages=2), "zbv"),
    (Layout.make(dp=2, pp=2, schedule="zbv", virtual_stages=2, compression="fp16"), "zbv"),
])
def test_unsupported_combinations_are_refused(layout, words):
    with pytest.raises(PlannerError, match=words) as err:
        check_layout(GPT, layout, "plan.json")
    assert str(err.value).startswith("plan.json: field 'layout'")


def _count_attention_calls(mode):
    model = build_model(GPT, seed=0, dtype=torch.float64)
    apply_recompute(model.blocks, mode)
    calls = {"block": 0, "core": 0}
    attn = model.blocks[1].attn
    attn.register_forward_hook(lambda *a: calls.__setitem__("block", calls["block"] + 1))
    core = attn._core
    attn._core = lambda *a: (calls.__setitem__("core", calls["core"] + 1), core(*a))[1]
    x, y = model.synthetic_batch(2, torch.Generator().manual_seed(0))
    model.loss(model(x), y).backward()
    return calls


def test_recompute_reruns_what_it_says():
    assert _count_attention_calls("none") == {"block": 1, "core": 1}
    assert _count_attention_calls("selective") == {"block": 1, "core": 2}
    assert _count_attention_calls("full") == {"block": 2, "core": 2}


def test_dp_rows_partition_the_global_batch():
    even = Layout.make(dp=4, microbatch_size=1, num_microbatches=2)
    assert [dp_rows(i, even) for i in range(4)] == [(0, 2), (2, 4), (4, 6), (6, 8)]
    uneven = Layout.make(dp=3, microbatch_size=2, num_microbatches=3,
                         replica_microbatches=(3, 1, 2))
    assert [dp_rows(i, uneven) for i in range(3)] == [(0, 6), (6, 8), (8, 12)]
    # weights: m_i * dp / M, so that sum_i w_i * (mean gradient of replica i) / dp is the
    # mean over the global batch
    assert [uneven.replica_weight(i) for i in range(3)] == [1.5, 0.5, 1.0]
    assert even.replica_weight(2) == 1.0


def test_synthetic_rows_are_slices_of_one_global_batch():
    model = build_model(GPT, seed=0)
    data = SyntheticData(model, 8, seed=3)
    full_x, full_y = data.rows(2, 0, 8)
    x, y = data.rows(2, 4, 8)
    assert torch.equal(x, full_x[4:]) and torch.equal(y, full_y[4:])
    assert not torch.equal(data.rows(3, 0, 8)[0], full_x)


def test_token_file_windows_cover_each_sample_once_per_epoch(tmp_path):
    path = tmp_path / "tokens.npy"
    tokens = np.arange(16 * 8 + 1) % GPT.vocab_size
    np.save(path, tokens.astype(np.int32))
    data = TokenFileData(str(path), GPT, global_batch=4, seed=0)
    assert data.num_samples == 8
    firsts = []
    for step in range(2):                                   # 2 steps x 4 rows = one epoch
        x, y = data.rows(step, 0, 4)
        assert torch.equal(x[:, 1:], y[:, :-1])
        firsts += [int(r) for r in x[:, 0]]
    assert sorted(firsts) == sorted(int(t) for t in tokens[:-1:16])


@pytest.mark.parametrize("array,words", [
    (np.zeros((2, 20), dtype=np.int64), "1-D integer"),
    (np.zeros(40, dtype=np.float32), "1-D integer"),
    (np.full(40, 64, dtype=np.int64), "vocab_size"),
    (np.zeros(10, dtype=np.int64), "need at least"),
])
def test_bad_token_files_are_refused(array, words, tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, array)
    with pytest.raises(PlannerError, match=words):
        TokenFileData(str(path), GPT, global_batch=2, seed=0)


def test_pickled_token_file_is_refused(tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(PlannerError, match="not a NumPy"):
        TokenFileData(str(path), GPT, global_batch=2, seed=0)


def test_checkpointing_zero1_is_refused():
    from executor.checkpoint import check_supported
    with pytest.raises(PlannerError, match="zero 1"):
        check_supported(Layout.make(dp=2, zero=1), "--checkpoint-dir")
    check_supported(Layout.make(dp=2, zero=3), "--checkpoint-dir")
