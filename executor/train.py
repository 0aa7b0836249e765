"""The executor's run: build, parallelize, train, measure, report.

Step time is the wall time of ``step.train_step`` (forward, backward, gradient combination,
optimizer update; CUDA synchronised), not of producing the batch or checkpointing; each step's
time is the maximum over ranks, since the slowest rank sets the pace. Besides, each rank notes
when it finished each step, counted from a barrier before the first: ``step_end_s`` is the
latest rank's, the wall-clock time at which the step was done everywhere (what loss against
time is drawn on; with asynchronous updates ranks finish a step at different times). Losses and
times are gathered once at the end so that measuring adds no collective to the steps themselves.
"""
from __future__ import annotations

import contextlib
import datetime
import statistics
import time

import torch
import torch.distributed as dist

from executor import checkpoint, failures, faults, preflight, runtime, trace
from executor.collectives import CollectiveCounter, group_names
from executor.data import check_data, dp_rows, make_data
from executor.memory import PeakMemory
from executor.parallel import check_layout, parallelize
from executor.parallel.cp import shard_batch
from executor.step import train_step
from planner import families, grid
from planner.errors import PlannerError
from planner.models.custom import check_trusted
from planner.noise import machine_load
from planner.specs import Metrics


def check_plan(plan, path: str, world_size: int, args, elastic=None):
    """Refuse what this launch cannot run as planned, before any process group exists: the
    layout, custom code the command line did not name, outputs that cannot be written, and
    what --resume would load. Returns the run's ``checkpoint.Checkpoints`` (or None) and the
    number of warm-up steps."""
    try:
        plan.layout.check_world(world_size, "WORLD_SIZE")
    except PlannerError as err:
        raise PlannerError(f"{path}: field 'layout': {err} (launch with --nproc-per-node x "
                           f"--nnodes = {plan.layout.world_size})") from None
    if plan.implementation != "executor":
        raise PlannerError(f"{path}: field 'implementation': this plan was costed for "
                           f"{plan.implementation!r}, not for this executor; plan again with "
                           "--implementation executor to run it here")
    _check_model_flag(plan, path, args.model)
    preflight.check_outputs(args, runtime.env_rank())
    resuming = args.resume or args.auto_resume
    if resuming and not args.checkpoint_dir:
        flag = "--resume" if args.resume else "--auto-resume"
        raise PlannerError(f"{flag} needs --checkpoint-dir (where to resume from)")
    if elastic is not None and not resuming:
        raise PlannerError(f"{path}: an elastic plan set continues its training after a change "
                           "of world size only from a checkpoint: add --checkpoint-dir DIR "
                           "--checkpoint-every K --auto-resume")
    ckpt = None
    if args.checkpoint_dir:
        checkpoint.check_supported(plan.layout, "--checkpoint-dir")
        ckpt = checkpoint.prepare(args.checkpoint_dir, args.checkpoint_key, args.resume, plan,
                                  elastic, auto=args.auto_resume)
    first = ckpt.resume_step if ckpt else 0
    warmup = _warmup(args, first)
    if families.of(plan.model).builtin:   # a custom model's blocks are known once it is built
        check_layout(plan.model, plan.layout, path)
    if args.data:
        check_data(args.data, plan.model)
    return ckpt, warmup


def _warmup(args, first: int) -> int | None:
    """Warm-up steps: --warmup, fewer after --auto-resume when a restart leaves fewer steps
    (at least one is timed); None when --auto-resume finds every step done."""
    counted = 1 if args.count_collectives else 0
    left = args.steps - first
    if left > args.warmup + counted:
        return args.warmup
    if args.auto_resume and left > counted:
        return left - counted - 1
    if args.auto_resume and left <= 0:
        return None
    raise PlannerError(f"--steps {args.steps} leaves {left} step(s) after step {first}, which "
                       f"must exceed --warmup {args.warmup}"
                       + (" + 1 counted step" if counted else ""))


def _check_model_flag(plan, path: str, model_flag: str) -> None:
    if not families.of(plan.model).builtin:
        check_trusted(plan.model.callable_path, model_flag, path)
    elif model_flag:
        raise PlannerError(f"--model {model_flag}: the plan's model {plan.model.name!r} is not "
                           "custom code (nothing to import); drop --model")


class Job:
    """Everything one rank holds for the run."""

    def __init__(self, plan, path: str, args, ckpt):
        self.plan, self.args, self.layout = plan, args, plan.layout
        self.device = runtime.pick_device(args.device)
        dtype = runtime.param_dtype(plan.dtype, self.device, path)
        self.rt = runtime.init(self.device, args.timeout_s)
        self.mesh = mesh = runtime.build_mesh(self.layout, self.device)
        self.memory = PeakMemory(self.device)
        self.memory.start()
        from planner.models.build import build_model
        self.model = build_model(plan.model, seed=plan.seed, dtype=dtype,
                                 trusted_callable=args.model, where=path).to(self.device)
        self.data = make_data(self.model, plan, args.data)
        self.par = parallelize(self.model, self.layout, mesh, self.device, path, plan.seed)
        self.optimizer = self.par.dp.build_optimizer(plan.optimizer, plan.learning_rate)
        dp_i = grid.RankGrid(self.layout.dims).coord(self.rt.rank, "dp")
        self.rows = dp_rows(dp_i, self.layout)
        self.amp = runtime.autocast_dtype(plan.dtype)
        self.ckpt = ckpt
        self.losses: list[float] = []     # mean loss of each step run so far, reduced over ranks

    def reduce_losses(self, loss_sums) -> list[float]:
        """The global mean loss of every step run so far: this rank's sums of the steps not yet
        reduced, summed over ranks (each micro-batch is counted on one rank)."""
        new = loss_sums[len(self.losses):]
        if new:
            total = torch.stack(new)
            dist.all_reduce(total)
            # each cp rank's loss is the mean over its share of the positions: their mean is
            # the row's
            self.losses += (total / (self.layout.total_microbatches * self.layout.cp)).tolist()
        return self.losses

    def history(self, loss_sums) -> dict:
        """What a checkpoint records: every step's loss and world size, from step 0."""
        ckpt = self.ckpt
        return {"losses": ckpt.losses + self.reduce_losses(loss_sums),
                "world_sizes": ckpt.world_sizes + [self.rt.world_size] * len(self.losses)}

    def batch(self, step: int):
        inputs, targets = shard_batch(*self.data.rows(step, *self.rows), self.par.cp)
        return (inputs.to(self.device),
                targets.to(self.device) if targets is not None else None)

    def step(self, step: int, counter=None):
        inputs, targets = self.batch(step)
        faults.maybe_fail(self.rt.rank, step)
        start = time.perf_counter()
        with trace.step_range(step), counter or contextlib.nullcontext():
            loss = train_step(self.par, self.optimizer, inputs, targets, self.layout,
                              self.model.loss, self.device, self.amp, step)
        trace.cuda_sync(self.device)
        return loss, time.perf_counter() - start


def run(plan, path: str, args, elastic=None) -> Metrics | None:
    """Train ``plan`` (the plan of this world size when ``elastic``, its set, is given);
    returns the Metrics on rank 0 (None elsewhere)."""
    ckpt, warmup = check_plan(plan, path, runtime.env_world_size(), args, elastic)
    if warmup is None:
        if runtime.env_rank() == 0:
            print(f"--checkpoint-dir {args.checkpoint_dir} already holds step {ckpt.resume_step} "
                  f"of --steps {args.steps}: nothing left to train", flush=True)
        return None
    job = Job(plan, path, args, ckpt)
    first = 0
    if ckpt and ckpt.resume_step:
        first = checkpoint.load(ckpt, job.par.named_parts, job.optimizer, job.device)
    counter = (CollectiveCounter(group_names(job.mesh, job.layout))
               if args.count_collectives else None)
    loss_sums, times, ends = [], [], []
    dist.barrier()                       # a common start for step_end_s
    t0 = time.perf_counter()
    with trace.tracer(args.trace_dir, job.rt.rank, warmup, args.steps - first,
                      job.device) as prof:
        for step in range(first, args.steps):
            failures.at_step(step)
            loss, seconds = job.step(step, counter if step == args.steps - 1 else None)
            loss_sums.append(loss)
            times.append(seconds)
            ends.append(time.perf_counter() - t0)
            prof.step()
            if job.rt.rank == 0 and args.verbose:
                print(f"step {step + 1}/{args.steps} time {seconds:.4f} s", flush=True)
            done = step + 1
            if ckpt and (done == args.steps or (
                    args.checkpoint_every and done % args.checkpoint_every == 0)):
                checkpoint.save(ckpt, done, job.par.named_parts, job.optimizer, plan,
                                job.history(loss_sums))
    failures.at_step(None)
    job.par.dp.finish(args.steps)
    if args.save_params:
        from executor.params import save_params
        save_params(job.par.named_parts, args.save_params, job.rt.rank)
    return _metrics(job, loss_sums, times, ends, first, counter, warmup)


def _metrics(job, loss_sums, times, ends, first, counter, warmup) -> Metrics | None:
    plan, rt, device, layout = job.plan, job.rt, job.device, job.layout
    losses = job.reduce_losses(loss_sums)
    step_times = torch.tensor(times, dtype=torch.float64, device=device)
    dist.all_reduce(step_times, op=dist.ReduceOp.MAX)
    step_ends = torch.tensor(ends, dtype=torch.float64, device=device)
    dist.all_reduce(step_ends, op=dist.ReduceOp.MAX)
    peaks = [torch.zeros((), dtype=torch.int64, device=device) for _ in range(rt.world_size)]
    dist.all_gather(peaks, torch.tensor(job.memory.peak_bytes(), dtype=torch.int64,
                                        device=device))
    if rt.rank != 0:
        return None
    measured = step_times.tolist()[warmup:]
    if counter is not None:          # the counted last step ran under dispatch interception
        measured = measured[:-1]
    step_time = statistics.median(measured)
    tokens = plan.global_batch_size * plan.model.seq_len
    load, cores = machine_load()
    return Metrics(
        plan_fingerprint=plan.fingerprint(), model_fingerprint=plan.model_fingerprint,
        world_size=rt.world_size, layout=layout, backend=rt.backend,
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        steps=len(losses), warmup_steps=warmup, losses=tuple(losses),
        step_times_s=tuple(measured), step_time_s=step_time,
        peak_memory_bytes=tuple(int(p) for p in peaks), memory_measure=job.memory.measure,
        tokens_per_s=tokens / step_time, torch_version=torch.__version__,
        created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        first_step=first, collectives=dict(counter.counts) if counter else {},
        earlier_losses=tuple(job.ckpt.losses) if job.ckpt else (),
        earlier_world_sizes=tuple(job.ckpt.world_sizes) if job.ckpt else (),
        load_average=load, cpu_count=cores,
        collective_bytes=dict(counter.bytes) if counter else {},
        step_end_s=tuple(step_ends.tolist()))
