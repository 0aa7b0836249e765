"""Measure what one training step of a model costs, block by block, on the local device.

For each block of ``build_model(spec)`` we measure, on the block's own input captured from one
full forward pass (timing a block in isolation is steadier than module hooks: see
../shared/notes/torch-on-cpu.md):

- forward time: ``block(input)`` with autograd recording, as in training;
- backward time: ``torch.autograd.backward(output, grad_output)`` with a fixed random
  ``grad_output``; the input requires grad (except for the first block, whose input is data), so
  the input-gradient work a pipeline stage does is counted. The LAST block is timed with the
  model's loss attached (forward includes the loss, backward starts from it), because the last
  pipeline stage computes the loss; the blocks then sum to a whole step minus the optimizer;
- forward FLOPs: ``FlopCounterMode`` (2 FLOPs per multiply-add), plus the attention core
  counted analytically (FlopCounterMode counts 0 for CPU ``scaled_dot_product_attention``):
  2*b*a*s_q*s_k*d for QK^T plus 2*b*a*s_q*s_k*d_v for AV, i.e. 4*b*s^2*h for self-attention,
  WITHOUT halving for the causal mask. That is the Megatron convention (Narayanan et al. SC'21,
  eq. 2: per layer forward 24*b*s*h^2 + 4*b*s^2*h), so measured and analytic FLOPs agree;
- bytes saved for backward: ``saved_tensors_hooks``, de-duplicated by storage, excluding the
  block's parameters and buffers (not activations); the block input counts when it is saved.
  Under autocast the low-precision weight copies that backward keeps are counted too: they are
  real memory while the activations live, but do not grow with the batch;
- output bytes: the block output, what crosses a pipeline boundary after it.

Times are the median of ``repeats`` runs after ``warmup`` runs; spreads are the inter-quartile
range. Runs go in rounds that visit every block once, so a slow spell of a shared machine is
spread over all blocks. A whole training step (forward, loss, backward, optimizer step,
zero_grad) is timed the same way, and its optimizer step + zero_grad on their own. On CPU we
use one intra-op thread by default: with two cores shared by other work, more threads make
medians noisier, not faster. On CUDA, timing uses CUDA events and the allocator peak over the
whole steps goes to ``step_peak_memory_bytes``. "bf16-mixed"/"fp16-mixed" keep float32
parameters and run forward under ``torch.autocast`` (no loss scaling: its cost is negligible).
"""
from __future__ import annotations

import contextlib
import gc
import os
import platform
import statistics
import time
from datetime import datetime, timezone

import torch

from planner import families
from planner.errors import PlannerError
from planner.models.build import build_model, custom_spec_from_module
from planner.specs import DTYPES, OPTIMIZERS, BlockProfile, ModelProfile, ModelSpec

_PARAM_DTYPE = {"float32": torch.float32, "float64": torch.float64,
                "bfloat16": torch.bfloat16, "float16": torch.float16,
                "bf16-mixed": torch.float32, "fp16-mixed": torch.float32}
_AUTOCAST_DTYPE = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}
_LEARNING_RATE = 1e-4   # any small value: step time does not depend on it


def profile_model(spec: ModelSpec, microbatch_size: int, dtype: str = "float32",
                  optimizer: str = "adam", repeats: int = 10, warmup: int = 3,
                  num_threads: int | None = None, device: str = "cpu",
                  progress=None, timer: str = "wall",
                  trusted_callable: str = "") -> ModelProfile:
    """Profile ``spec`` at ``microbatch_size`` (see the module docstring for what is measured).

    ``timer="cpu"`` (CPU, one thread) times with the process's CPU time instead of the wall
    clock: on an idle core the two agree, on a shared machine CPU time ignores the time other
    processes hold the core. The profile's ``source`` then says so. A custom model is imported
    only when ``trusted_callable`` (the command line's ``--model``) names it."""
    _check_args(microbatch_size, dtype, optimizer, repeats, warmup, num_threads, device)
    if timer not in ("wall", "cpu") or (timer == "cpu" and (device != "cpu"
                                                            or (num_threads or 1) != 1)):
        raise PlannerError(f"timer {timer!r}: use 'wall', or 'cpu' on device cpu with 1 thread")
    say = progress or (lambda line: None)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(num_threads or 1)
    try:
        model = build_model(spec, seed=0, dtype=_PARAM_DTYPE[dtype],
                            trusted_callable=trusted_callable, where="--model").to(device)
        if not families.of(spec).builtin:     # its sizes are known once it is built
            spec = custom_spec_from_module(spec, model)
        clock = _Clock(device, timer)
        autocast = _autocast(device, dtype)
        inputs, targets = _batch(model, microbatch_size, dtype, device)
        blocks = measure_blocks(model.blocks, _capture_inputs(model, inputs, autocast), repeats,
                                warmup, device, dtype, lambda out: model.loss(out, targets), say,
                                timer=timer)
        step = _measure_step(model, inputs, targets, optimizer, clock, autocast, repeats, warmup)
        say(f"whole step {step['step'][0] * 1e3:.3f} ms "
            f"(optimizer {step['optimizer'][0] * 1e3:.3f} ms)")
        return ModelProfile(
            model=spec, model_fingerprint=spec.fingerprint(), device=device,
            device_name=_device_name(device), dtype=dtype,
            num_threads=torch.get_num_threads(), microbatch_size=microbatch_size,
            seq_len=spec.seq_len, optimizer=optimizer, blocks=blocks,
            step_time_s=step["step"][0], step_time_spread_s=step["step"][1],
            optimizer_step_time_s=step["optimizer"][0], repeats=repeats, warmup=warmup,
            torch_version=torch.__version__,
            created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            step_peak_memory_bytes=step["peak_bytes"],
            source="measured" if timer == "wall" else "measured (process CPU time)")
    finally:
        torch.set_num_threads(previous_threads)


def measure_blocks(blocks, block_inputs, repeats: int = 10, warmup: int = 3,
                   device: str = "cpu", dtype: str = "float32", loss=None,
                   progress=None, data_input: bool = True,
                   timer: str = "wall") -> tuple[BlockProfile, ...]:
    """Profile ``blocks[i]`` on ``block_inputs[i]`` (``loss(output)`` attached to the last one,
    if given; ``data_input``: the first block's input is data, so it gets no gradient).
    ``profile_model`` uses it on a whole model; benchmarks on single blocks or TP shards."""
    say = progress or (lambda line: None)
    clock, autocast = _Clock(device, timer), _autocast(device, dtype)
    last = len(blocks) - 1
    runs = [_BlockRun(i, block, block_inputs[i], autocast, loss if i == last else None,
                      needs_grad=i > 0 or not data_input)
            for i, block in enumerate(blocks)]
    profiles = []
    for run, (fwd, bwd) in zip(runs, _time_blocks(runs, clock, repeats, warmup, say)):
        bp = run.profile(fwd, bwd)
        say(f"block {bp.index:3d} {bp.name:<20} fwd {bp.forward_time_s * 1e3:9.3f} ms  "
            f"bwd {bp.backward_time_s * 1e3:9.3f} ms")
        profiles.append(bp)
    return tuple(profiles)


def _check_args(microbatch_size, dtype, optimizer, repeats, warmup, num_threads, device):
    if microbatch_size < 1:
        raise PlannerError(f"--microbatch-size must be >= 1, got {microbatch_size}")
    if dtype not in DTYPES or dtype == "fp8":
        valid = [d for d in DTYPES if d != "fp8"]
        raise PlannerError(f"--dtype {dtype!r} is not one of: {', '.join(valid)} (fp8 is "
                           "planning only)")
    if optimizer not in OPTIMIZERS:
        raise PlannerError(f"--optimizer {optimizer!r} is not one of: {', '.join(OPTIMIZERS)}")
    if repeats < 1 or warmup < 0:
        raise PlannerError(f"--repeats must be >= 1 and --warmup >= 0, got {repeats}, {warmup}")
    if num_threads is not None and num_threads < 1:
        raise PlannerError(f"--threads must be >= 1, got {num_threads}")
    if device not in ("cpu", "cuda"):
        raise PlannerError(f"--device {device!r} is not one of: cpu, cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise PlannerError("--device cuda: torch.cuda.is_available() is False on this machine")


class _Clock:
    """Wall clock (or process CPU time) on CPU, where ops are synchronous; CUDA events on the
    current stream on CUDA."""

    def __init__(self, device: str, timer: str = "wall"):
        self.cuda = device == "cuda"
        self.now = time.process_time if timer == "cpu" else time.perf_counter

    def mark(self):
        if not self.cuda:
            return self.now()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, start, end) -> float:
        if not self.cuda:
            return end - start
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()


def _autocast(device, dtype):
    if dtype in _AUTOCAST_DTYPE:
        return lambda: torch.autocast(device_type=device, dtype=_AUTOCAST_DTYPE[dtype])
    return contextlib.nullcontext


def _batch(model, microbatch_size, dtype, device):
    inputs, targets = model.synthetic_batch(microbatch_size, torch.Generator().manual_seed(0))
    if inputs.is_floating_point():
        inputs = inputs.to(_PARAM_DTYPE[dtype])
    return inputs.to(device), None if targets is None else targets.to(device)


def _capture_inputs(model, inputs, autocast):
    """Input of every block, from one full forward pass without autograd."""
    captured, x = [], inputs
    with torch.no_grad(), autocast():
        for i, block in enumerate(model.blocks):
            captured.append(x)
            x = block(x)
            if not isinstance(x, torch.Tensor):
                raise PlannerError(f"block {i} ({type(block).__name__}) returned "
                                   f"{type(x).__name__}; planner profiles blocks that pass one "
                                   "tensor to the next")
    return captured


def _stats(samples):
    """(median, inter-quartile range) of a list of seconds."""
    if len(samples) < 2:
        return samples[0], 0.0
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return statistics.median(samples), q3 - q1


class _BlockRun:
    """One block on its captured input: inspected once (FLOPs, bytes), then timed repeatedly."""

    def __init__(self, index, block, inp, autocast, loss, needs_grad):
        if needs_grad and inp.is_floating_point():
            inp = inp.detach().requires_grad_(True)   # count input-gradient work, as in a stage
        self.index, self.block, self.inp, self.autocast, self.loss = (
            index, block, inp, autocast, loss)
        self.flops, self.saved_bytes, out = _inspect(block, self.forward)
        self.output_bytes = out.numel() * out.element_size()
        gen = torch.Generator(device=out.device).manual_seed(index)
        self.grad_out = None if loss else torch.randn(out.shape, generator=gen, dtype=out.dtype,
                                                      device=out.device)

    def forward(self):
        """(block output, what backward starts from: the output, or the loss on the last)."""
        with self.autocast():
            out = self.block(self.inp)
            return out, (self.loss(out) if self.loss else out)

    def sample(self, clock):
        """One forward and one backward: (forward seconds, backward seconds)."""
        self.block.zero_grad(set_to_none=True)   # a step's first backward allocates gradients
        self.inp.grad = None
        clock.sync()
        t0 = clock.mark()
        _, root = self.forward()
        t1 = clock.mark()
        if root.requires_grad:   # e.g. a parameter-free first block has no backward
            torch.autograd.backward(root, self.grad_out)
        t2 = clock.mark()
        return clock.seconds(t0, t1), clock.seconds(t1, t2)

    def profile(self, fwd, bwd) -> BlockProfile:
        params = list(self.block.parameters())
        return BlockProfile(
            index=self.index, name=type(self.block).__name__,
            kind=getattr(self.block, "kind", "block"),
            forward_time_s=fwd[0], backward_time_s=bwd[0], forward_time_spread_s=fwd[1],
            backward_time_spread_s=bwd[1], forward_flops=float(self.flops),
            param_count=sum(p.numel() for p in params),
            param_bytes=sum(p.numel() * p.element_size() for p in params),
            saved_activation_bytes=self.saved_bytes, output_bytes=self.output_bytes)


def _time_blocks(runs, clock, repeats, warmup, say):
    """Per block ((fwd median, IQR), (bwd median, IQR)). Rounds visit every block once, so a
    slow spell of a shared machine spreads over all blocks instead of skewing one."""
    samples = [([], []) for _ in runs]
    start = time.perf_counter()
    gc.collect()
    gc.disable()   # a collection inside a sub-millisecond sample would dominate it
    try:
        for r in range(warmup + repeats):
            for run, (fwd, bwd) in zip(runs, samples):
                f, b = run.sample(clock)
                if r >= warmup:
                    fwd.append(f)
                    bwd.append(b)
            say(f"round {r + 1}/{warmup + repeats} ({'warm-up' if r < warmup else 'timed'}) "
                f"done after {time.perf_counter() - start:.1f} s")
    finally:
        gc.enable()
    return [(_stats(f), _stats(b)) for f, b in samples]


def _inspect(block, forward):
    """One forward under a FLOP counter and saved-tensor hooks: (FLOPs, saved bytes, output)."""
    from torch.utils.flop_counter import FlopCounterMode
    state = {t.untyped_storage().data_ptr()
             for t in list(block.parameters()) + list(block.buffers())}
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in state:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with FlopCounterMode(display=False, custom_mapping=_attention_flop_mapping()) as counter, \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, _ = forward()
    return counter.get_total_flops(), sum(saved.values()), out.detach()


def attention_core_flops(q_shape, k_shape, v_shape) -> int:
    """FLOPs of softmax(QK^T)V for q (b, a, s_q, d), k (b, a_kv, s_k, d), v (b, a_kv, s_k, d_v):
    2*b*a*s_q*s_k*d (QK^T) + 2*b*a*s_q*s_k*d_v (AV); no causal halving (Megatron convention,
    Narayanan et al. SC'21 eq. 2: 4*b*s^2*h per layer forward). Softmax is not counted."""
    b, a, s_q, d = q_shape[-4:]
    s_k, d_v = k_shape[-2], v_shape[-1]
    return 2 * b * a * s_q * s_k * d + 2 * b * a * s_q * s_k * d_v


def _attention_flop_mapping():
    """FlopCounterMode formulas for the CPU attention kernel, which torch does not count."""
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None:
        return {}
    return {op: lambda q, k, v, *args, out_shape=None, **kwargs: attention_core_flops(q, k, v)}


def make_optimizer(name: str, params):
    """The optimizers of ``specs.OPTIMIZERS`` (momentum 0.9 for sgd-momentum)."""
    if name == "adam":
        return torch.optim.Adam(params, lr=_LEARNING_RATE)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=_LEARNING_RATE)
    if name == "sgd":
        return torch.optim.SGD(params, lr=_LEARNING_RATE)
    if name == "sgd-momentum":
        return torch.optim.SGD(params, lr=_LEARNING_RATE, momentum=0.9)
    raise PlannerError(f"--optimizer {name!r} is not one of: {', '.join(OPTIMIZERS)}")


def _measure_step(model, inputs, targets, optimizer, clock, autocast, repeats, warmup):
    """Whole training steps: {'step': (median, IQR), 'optimizer': (median, IQR), 'peak_bytes'}.

    At least one warm-up step always runs: Adam allocates its state on the first step."""
    opt = make_optimizer(optimizer, model.parameters())
    steps, opt_steps = [], []
    if clock.cuda:
        torch.cuda.reset_peak_memory_stats()
    for i in range(max(warmup, 1) + repeats):
        clock.sync()
        t0 = clock.mark()
        with autocast():
            loss = model.loss(model(inputs), targets)
        loss.backward()
        t1 = clock.mark()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t2 = clock.mark()
        if i >= max(warmup, 1):
            steps.append(clock.seconds(t0, t2))
            opt_steps.append(clock.seconds(t1, t2))
    peak = torch.cuda.max_memory_allocated() if clock.cuda else 0
    return {"step": _stats(steps), "optimizer": _stats(opt_steps), "peak_bytes": int(peak)}


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    name = ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            name = next((line.split(":", 1)[1].strip() for line in fh
                         if line.startswith("model name")), "")
    name = name or platform.processor() or platform.machine()
    return f"{name} ({os.cpu_count()} logical CPUs)"

