"""The largest problems the planner answers, and the one-line refusals beyond them.

The search enumerates every divisor split of the devices and of the batch and builds per-block
rows for every pipeline cut, so its time grows with the device count, the global batch and the
number of blocks (linearly beyond these sizes: ``divisors`` walks 1..n). Within the limits
below ``planner plan`` answers in seconds (``benchmarks/plan_speed.py``: gpt-1t on 16,384 GPUs,
a 192-layer 175B shape); beyond them it would run for minutes and nobody would have asked for
that, so it refuses at once with the limit in the message.

Measured on this 2-core machine (CPU seconds of the `planner plan ... --cluster dgx-a100-80gb`
process, steadier than wall time on a shared machine): gpt3-175b on 1,024 GPUs, global batch
1,536: 1.7 s (the interactive benchmark); the same with a global batch of 16,384: 1.6 s, of
65,536: 2.9 s, of 1,048,576: about ten minutes of wall time under load (refused); gpt-1t on
131,072 GPUs: 2.4 s; a 175B shape with 192 layers (194 blocks) on 1,024 GPUs: 4.4 s, with 254
layers: 22 s, with 1,022 layers: not finished in 20 minutes (refused). The largest training
runs published use 16-100 thousand GPUs, global batches of a few thousand sequences and at most
a couple of hundred layers (Llama 3 405B: 16,384 H100s, 126 layers, 2,048 sequences of 8K
tokens; GPT-1T in Narayanan et al. 2021: 128 layers), so the limits leave room above real use.
"""
from __future__ import annotations

from planner.errors import PlannerError

MAX_DEVICES = 131_072          # 2**17
MAX_GLOBAL_BATCH = 65_536      # 2**16 sequences (samples for models without a sequence)
MAX_BLOCKS = 200               # pipeline-cuttable blocks: layers + embedding + head


def check_problem_size(num_devices: int, global_batch: int, num_blocks: int,
                       model_name: str = "") -> None:
    """One-line ``PlannerError`` when the problem is larger than the search supports."""
    if num_devices > MAX_DEVICES:
        raise PlannerError(f"--gpus {num_devices:,}: the search supports at most "
                           f"{MAX_DEVICES:,} devices")
    if global_batch > MAX_GLOBAL_BATCH:
        raise PlannerError(f"--global-batch {global_batch:,}: the search supports at most "
                           f"{MAX_GLOBAL_BATCH:,} sequences per step")
    if num_blocks > MAX_BLOCKS:
        name = f" {model_name}" if model_name else ""
        raise PlannerError(f"model{name} has {num_blocks:,} blocks (layers + embedding + head): "
                           f"the search supports at most {MAX_BLOCKS:,}")
