"""Training data: the global batch of step k, and the rows of it one data-parallel rank reads.

Every rank derives step k's global batch from ``(plan.seed, k)`` alone, so the single-process
reference (``executor.reference``) sees exactly the rows the parallel run splits; DP rank i
reads the contiguous rows ``Layout.replica_rows(i)``: ``[i*B/dp, (i+1)*B/dp)`` when the replicas'
shares are even, else its ``replica_microbatches[i]`` micro-batches after those of replicas
0..i-1 (the order micro-batches and pipeline schedules then consume them in does not change
the mean loss or its gradient).
"""
from __future__ import annotations

import os

import numpy as np
import torch

from planner import families
from planner.errors import PlannerError

# A large prime keeps (seed, step) pairs from colliding for any realistic number of steps.
_STEP_STRIDE = 1_000_003


def batch_seed(seed: int, step: int) -> int:
    """The generator seed of step ``step``'s global batch."""
    return seed * _STEP_STRIDE + step


def dp_rows(dp_rank: int, layout) -> tuple[int, int]:
    """The contiguous rows of the global batch that data-parallel rank ``dp_rank`` trains on."""
    return layout.replica_rows(dp_rank)


class SyntheticData:
    """``model.synthetic_batch`` of the whole global batch, from a generator seeded per step."""

    def __init__(self, model, global_batch: int, seed: int):
        self.model, self.global_batch, self.seed = model, global_batch, seed
        self.dtype = next(model.parameters()).dtype

    def rows(self, step: int, start: int, stop: int):
        gen = torch.Generator().manual_seed(batch_seed(self.seed, step))
        inputs, targets = self.model.synthetic_batch(self.global_batch, gen)
        if inputs.is_floating_point():      # features (mlp) come in the model's dtype
            inputs = inputs.to(self.dtype)
        return inputs[start:stop], None if targets is None else targets[start:stop]


class TokenFileData:
    """Windows of ``seq_len + 1`` tokens from a 1-D NumPy array of token ids (``.npy``).

    Sample j is tokens ``[j*seq_len, (j+1)*seq_len + 1)`` (inputs, and targets shifted by one).
    Global batch position p of step k (p = k*B + row) reads sample ``perm_e[p mod N]`` where
    ``perm_e`` is a permutation of the N samples seeded by ``(seed, epoch e = p // N)``: every
    sample is seen once per epoch, and a rank reads only its own rows (the file is memory-mapped).
    """

    def __init__(self, path: str, spec, global_batch: int, seed: int):
        if not families.of(spec).has_sequence:
            raise PlannerError(f"--data {path}: a token file needs a model that reads token "
                               f"sequences; the plan's model {spec.name!r} is family "
                               f"{spec.family!r}")
        self.tokens = load_tokens(path, spec.vocab_size)
        self.seq, self.global_batch, self.seed = spec.seq_len, global_batch, seed
        self.num_samples = (len(self.tokens) - 1) // self.seq
        if self.num_samples < 1:
            raise PlannerError(f"--data {path}: {len(self.tokens)} tokens, need at least "
                               f"seq_len + 1 = {self.seq + 1}")
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(batch_seed(self.seed, epoch) + 7)
            self._perms[epoch] = torch.randperm(self.num_samples, generator=gen).numpy()
        return self._perms[epoch]

    def rows(self, step: int, start: int, stop: int):
        windows = []
        for row in range(start, stop):
            pos = step * self.global_batch + row
            j = int(self._perm(pos // self.num_samples)[pos % self.num_samples])
            windows.append(np.asarray(self.tokens[j * self.seq:(j + 1) * self.seq + 1]))
        tokens = torch.from_numpy(np.stack(windows).astype(np.int64))
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def load_tokens(path: str, vocab_size: int) -> np.ndarray:
    """Memory-map a ``.npy`` array of token ids; one-line errors for anything else."""
    if not os.path.isfile(path):
        raise PlannerError(f"--data {path}: no such file")
    try:
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError, OSError) as err:   # pickles, truncated or other files
        raise PlannerError(f"--data {path}: not a NumPy .npy array of token ids "
                           f"({str(err).splitlines()[0] if str(err) else type(err).__name__})"
                           ) from None
    if not isinstance(tokens, np.ndarray):          # an .npz archive loads as NpzFile
        if hasattr(tokens, "close"):
            tokens.close()
        raise PlannerError(f"--data {path}: a NumPy archive (.npz) of several arrays; give one "
                           "1-D .npy array of token ids (numpy.save)")
    if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
        raise PlannerError(f"--data {path}: expected a 1-D integer array of token ids, got "
                           f"{tokens.ndim}-D {tokens.dtype}")
    if len(tokens) and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise PlannerError(f"--data {path}: token ids must be in [0, vocab_size({vocab_size})), "
                           f"got [{int(tokens.min())}, {int(tokens.max())}]")
    return tokens


def check_data(path: str, spec) -> None:
    """What ``TokenFileData`` refuses, checked before the process group starts."""
    TokenFileData(path, spec, 1, 0)


def make_data(model, plan, path: str = ""):
    """The data source of a run: a token file when ``path`` is given, synthetic otherwise."""
    if path:
        return TokenFileData(path, plan.model, plan.global_batch_size, plan.seed)
    return SyntheticData(model, plan.global_batch_size, plan.seed)
