"""Resolve what a planning command needs: model, per-block costs, cluster, batch, precision.

Shared by ``planner plan`` and ``planner simulate`` so both read flags, profiles and cluster
files the same way and fail the same way. No torch here.
"""
from __future__ import annotations

import argparse
import glob
import math
import os
from dataclasses import dataclass, field

from planner import families, limits, localhost
from planner.clusters import resolve_cluster
from planner.cost import compute
from planner.cost.memory import ELEMENT_BYTES
from planner.errors import PlannerError
from planner.models import resolve_model
from planner.specs import (COMPRESSION, DP_COMM, DTYPES, IMPLEMENTATIONS, OPTIMIZERS, PARTITIONS,
                           RECOMPUTE, SCHEDULES, Cluster, ModelProfile, ModelSpec)
from planner.specs.common import finite
from planner.specs.layout import OUTER_OPTIMIZERS

PROFILES_DIR = "profiles"


@dataclass(frozen=True)
class PlanInputs:
    model: ModelSpec
    cluster: Cluster                # already cut to ``num_devices``
    num_devices: int
    global_batch_size: int
    dtype: str
    optimizer: str
    learning_rate: float
    seed: int
    profile: ModelProfile | None    # None: analytic costs from the device model
    profile_path: str
    # Profiles of the same model at other micro-batch sizes: with two or more sizes, costs at a
    # size not measured come from the fitted overhead + work/throughput line
    # (planner.profile.extrapolate) instead of proportional scaling.
    other_profiles: tuple[ModelProfile, ...] = ()
    implementation: str = "executor"    # planner.specs.IMPLEMENTATIONS: what is costed
    partition: str = "balanced"         # planner.specs.PARTITIONS: chunk boundaries searched
    # The device model analytic costs use; None: the one the cluster's device names. The
    # calibration passes the figures it is fitting, and so costs exactly what the CLI costs.
    device_model: object = None
    other_profile_paths: tuple[str, ...] = ()
    straggler_cv: float = 0.0       # planner.sim.stragglers
    moe_load_factor: float = 0.0    # busiest ep rank / mean tokens (planner.cost.ep); 0: assumed
    _on_device: dict = field(default_factory=dict, compare=False, repr=False)

    def costs_on(self, device, microbatch_size: int) -> tuple[compute.BlockCost, ...]:
        """Analytic block costs on one device of a kind (mixed clusters), cached so that the
        simulator's memoisation (by object) holds."""
        key = (device.name, microbatch_size)
        hit = self._on_device.get(key)
        if hit is None:
            hit = self._on_device[key] = compute.analytic_costs(
                self.model, microbatch_size, device, self.dtype, ELEMENT_BYTES[self.dtype],
                implementation=self.implementation)
        return hit

    @property
    def band(self) -> tuple[float, str]:
        """(relative uncertainty of predicted step times, where it comes from)."""
        from planner.noise import prediction_band
        return prediction_band(self.profile, self.cluster)

    def block_costs(self, microbatch_size: int) -> tuple[compute.BlockCost, ...]:
        """Per-block costs at ``microbatch_size``: the profile's (extrapolated to other sizes
        from several), else analytic for ``implementation`` (``planner.cost.compute``)."""
        if self.profile is not None:
            if self.other_profiles and microbatch_size != self.profile.microbatch_size:
                from planner.profile.extrapolate import extrapolate_profile
                prof = extrapolate_profile((self.profile, *self.other_profiles), microbatch_size)
                return compute.from_profile(prof, microbatch_size)
            return compute.from_profile(self.profile, microbatch_size)
        return compute.analytic_costs(self.model, microbatch_size, self.cluster.device,
                                      self.dtype, ELEMENT_BYTES[self.dtype],
                                      device_model=self.device_model,
                                      implementation=self.implementation)


def add_arguments(parser, batch_required: bool = True) -> None:
    from planner.clusters import PRESETS as CLUSTERS
    from planner.models import PRESETS as MODELS
    parser.add_argument("--model", help=f"preset ({', '.join(MODELS)}; `planner models` lists "
                                        "their sizes), architecture .json, hf:PATH/config.json "
                                        "(Hugging Face), or package.module:callable")
    parser.add_argument("--seq-len", type=int,
                        help="sequence length to plan for (default: the model's; a Hugging "
                             "Face config's max_position_embeddings)")
    parser.add_argument("--profile", nargs="+",
                        help="ModelProfile JSON(s) from `planner profile`; several micro-batch "
                             "sizes of one model let costs at other sizes be extrapolated")
    parser.add_argument("--cluster", default="localhost-cpu",
                        help=f"preset ({', '.join(CLUSTERS)}; `planner clusters` lists their "
                             "figures) or a .json/.toml cluster file (default localhost-cpu)")
    parser.add_argument("--gpus", type=int, help="devices to plan for (default: the cluster's)")
    parser.add_argument("--no-measure", action="store_true",
                        help="with --cluster localhost-cpu: plan on the preset's assumed figures "
                             "(a warning says so) instead of measuring this machine's links on "
                             "first use (about a minute, cached)")
    parser.add_argument("--global-batch", type=int, required=batch_required,
                        help="sequences per step")
    parser.add_argument("--dtype", choices=DTYPES,
                        help="default: float32 on gloo/CPU clusters, bf16-mixed on GPUs")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                        help="default adam")
    parser.add_argument("--lr", type=float, default=1e-3,
                        help="learning rate the executor uses (default 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="default 0")
    parser.add_argument("--implementation", choices=IMPLEMENTATIONS, default="executor",
                        help="what runs the plan: this project's executor (default), or "
                             "Megatron-LM (its layer, vocabulary padding and pipeline "
                             "scatter/gather; analytic costs only)")
    parser.add_argument("--partition", choices=PARTITIONS, default="balanced",
                        help="pipeline chunk boundaries: the fastest balanced cut (default) or "
                             "Megatron's even split of the layers (embedding with the first "
                             "chunk, head with the last)")
    parser.add_argument("--straggler-cv", type=float, default=0.0,
                        help="ranks run at different speeds: coefficient of variation of a "
                             "rank's step time, independent per rank and step (default 0)")


def add_layout_arguments(parser, required: bool = False) -> None:
    """The layout flags shared by `planner plan` (fix a dimension) and `planner simulate`
    (``required``: a complete layout, each flag's default said in its help)."""
    def text(what: str, default: str) -> str:
        return f"{what} (default {default})" if required else \
            f"{what} (fixes it; default: searched)"
    parser.add_argument("--dp", type=int, help=text("data-parallel size",
                                                    "the devices left after tp x pp x cp"))
    parser.add_argument("--tp", type=int, help=text("tensor-parallel size", "1"))
    parser.add_argument("--pp", type=int, help=text("pipeline stages", "1"))
    parser.add_argument("--cp", type=int,
                        help=text("context-parallel size: each sequence split over cp ranks, "
                                  "ring attention", "1"))
    parser.add_argument("--ep", type=int,
                        help=text("expert-parallel size (MoE): experts sharded over ep of the "
                                  "dp * cp ranks, tokens moved by all-to-all", "1"))
    parser.add_argument("--offload", action=argparse.BooleanOptionalAction, default=None,
                        help=text("FSDP2 CPU offload of sharded parameters, gradients and "
                                  "optimizer state (zero 3)", "off"))
    parser.add_argument("--microbatch-size", type=int,
                        help=text("sequences per micro-batch",
                                  "the whole per-replica batch in one micro-batch"))
    parser.add_argument("--schedule", choices=SCHEDULES,
                        help=text("pipeline schedule", "1f1b"))
    parser.add_argument("--virtual-stages", type=int,
                        help=text("model chunks per pipeline rank (interleaved-1f1b; zbv: 2)",
                                  "1, 2 for zbv"))
    parser.add_argument("--zero", type=int, choices=(0, 1, 2, 3),
                        help=text("ZeRO stage", "0"))
    parser.add_argument("--recompute", choices=RECOMPUTE,
                        help=text("activation recomputation", "none"))
    parser.add_argument("--sequence-parallel", action=argparse.BooleanOptionalAction,
                        default=None,
                        help=text("Megatron sequence parallelism (needs tp > 1)", "off"))
    parser.add_argument("--dp-comm", choices=DP_COMM, default="all_reduce",
                        help="gradient exchange between replicas (default all_reduce)")
    parser.add_argument("--ps-shards", type=int, default=1,
                        help="parameter-server shards with --dp-comm parameter_server "
                             "(default 1)")
    parser.add_argument("--compression", choices=COMPRESSION, default="none",
                        help="gradient compression: fp16, bf16, powersgd (DDP hooks; ZeRO 0/1); "
                             "topk, randk (sparse, --compression-ratio), qsgd (--bits 2/4/8), "
                             "sign (1 bit, error feedback) exchanged after backward (ZeRO 0)")
    parser.add_argument("--powersgd-rank", type=int, default=2,
                        help="PowerSGD rank with --compression powersgd (default 2)")
    parser.add_argument("--compression-ratio", type=float, default=0.01,
                        help="share k/n of gradient values topk/randk send (default 0.01)")
    parser.add_argument("--bits", type=int,
                        help="bits per value with --compression qsgd (2, 4, 8; 32: "
                             "unquantized; default 8); sign is 1")
    parser.add_argument("--staleness", type=int, default=0,
                        help="with --dp-comm parameter_server: a worker may run this many steps "
                             "ahead of the slowest (0: synchronous)")
    parser.add_argument("--local-sgd-period", type=int, default=0,
                        help="local SGD: replicas average their parameters every H steps "
                             "instead of their gradients every step (0: off)")
    parser.add_argument("--outer-optimizer", choices=OUTER_OPTIMIZERS, default="none",
                        help="with --local-sgd-period: nesterov is DiLoCo's outer step")
    parser.add_argument("--moe-load-factor", type=float, default=0.0,
                        help="MoE under ep: tokens of the busiest ep rank / the mean (default: "
                             "the capacity factor, or an assumed 1.2 when dropless)")


def dp_comm_fields(args) -> dict:
    """The data-parallel communication a user asked for, in ``Layout.make``'s (and
    ``Space``'s) names (never searched: they change the numerics), each option's value only
    where it applies."""
    kind = args.compression
    bits = args.bits if args.bits is not None else (8 if kind == "qsgd" else 1)
    return {"dp_comm": args.dp_comm, "ps_shards": args.ps_shards, "compression": kind,
            "powersgd_rank": args.powersgd_rank if kind == "powersgd" else 0,
            "compression_ratio": args.compression_ratio if kind in ("topk", "randk") else 0.0,
            "bits": bits if kind in ("qsgd", "sign") else 0,
            "staleness": args.staleness, "local_sgd_period": args.local_sgd_period,
            "outer_optimizer": args.outer_optimizer}


def space_from_args(args):
    from planner.search import Space
    return Space(dp=args.dp, tp=args.tp, pp=args.pp, cp=args.cp, ep=args.ep,
                 offload=args.offload, microbatch_size=args.microbatch_size,
                 schedule=args.schedule, virtual_stages=args.virtual_stages, zero=args.zero,
                 recompute=args.recompute, sequence_parallel=args.sequence_parallel,
                 **dp_comm_fields(args),
                 tp_across_nodes=getattr(args, "tp_across_nodes", False),
                 max_virtual_stages=getattr(args, "max_virtual_stages", 8))


def same_model(a: ModelSpec, b: ModelSpec) -> bool:
    """Same architecture; a custom model is known by its import path until it is built."""
    if not families.of(a).builtin or not families.of(b).builtin:
        return a.callable_path == b.callable_path
    return a.fingerprint() == b.fingerprint()


def find_profiles(model: ModelSpec, device: str, dtype: str, directory: str = PROFILES_DIR
                  ) -> list[tuple[str, ModelProfile]]:
    """Profiles in ``directory`` of this architecture on this kind of device and dtype, newest
    first, one per micro-batch size."""
    found = []
    for path in glob.glob(os.path.join(directory, "*.json")):
        try:
            prof = ModelProfile.load(path)
        except PlannerError:
            continue  # device models and other files live here too
        if same_model(prof.model, model) and prof.device == device and prof.dtype == dtype:
            found.append((prof.created_utc, path, prof))
    found.sort(key=lambda f: f[0], reverse=True)
    seen, out = set(), []
    for _, path, prof in found:
        if prof.microbatch_size not in seen:
            seen.add(prof.microbatch_size)
            out.append((path, prof))
    return out


def check_flags(args) -> None:
    """Numbers that make no sense whatever the model: one-line errors before any work."""
    if args.gpus is not None and args.gpus < 1:
        raise PlannerError(f"--gpus must be >= 1, got {args.gpus}")
    if args.global_batch is None:
        raise PlannerError("give --global-batch (sequences per step)")
    if args.global_batch < 1:
        raise PlannerError(f"--global-batch must be >= 1, got {args.global_batch}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise PlannerError(f"--lr must be a finite number > 0 (the executor's learning rate), "
                           f"got {args.lr}")
    for flag in ("dp", "tp", "pp", "cp", "ep", "microbatch_size", "virtual_stages", "ps_shards",
                 "powersgd_rank", "max_virtual_stages"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise PlannerError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")


def resolve(args) -> PlanInputs:
    if not args.model and not args.profile:
        raise PlannerError("give --model (preset, .json or module:callable) or --profile")
    check_flags(args)
    cluster = resolve_cluster(args.cluster)
    n = args.gpus if args.gpus is not None else cluster.num_devices
    cluster = cluster.with_size(n)
    cpu = cluster.backend == "gloo"
    dtype = args.dtype or ("float32" if cpu else "bf16-mixed")
    implementation = getattr(args, "implementation", "executor")
    partition = getattr(args, "partition", "balanced")
    if cluster.mixed and args.profile:
        raise PlannerError(f"--profile: a profile measures one kind of device, and cluster "
                           f"{cluster.name} mixes {', '.join(d.name for d in cluster.kinds)}: "
                           "plans for it come from each kind's device model (drop --profile)")
    if cluster.mixed and partition != "balanced":
        raise PlannerError(f"--partition {partition}: on cluster {cluster.name}, which mixes "
                           "device kinds, stages are cut by each kind's speed; use --partition "
                           "balanced")
    model, found = _model_and_profiles(args, cluster, dtype, implementation)
    limits.check_problem_size(n, args.global_batch, model.num_blocks, model.name)
    cv = getattr(args, "straggler_cv", 0.0)
    finite("--straggler-cv", cv, 0.0)
    load = getattr(args, "moe_load_factor", 0.0) or 0.0
    if not math.isfinite(load) or (load and load < 1.0):
        raise PlannerError(f"--moe-load-factor must be a finite number >= 1 (the busiest ep "
                           f"rank's tokens over the mean), got {load}")
    if args.cluster == localhost.PRESET:    # last: bad input fails before a measurement
        cluster = localhost.resolve(n, getattr(args, "no_measure", False)).with_size(n)
    (path, profile), rest = (found[0], found[1:]) if found else (("", None), [])
    return PlanInputs(model, cluster, n, args.global_batch, dtype, args.optimizer, args.lr,
                      args.seed, profile, path, tuple(p for _, p in rest),
                      implementation=implementation, partition=partition,
                      other_profile_paths=tuple(p for p, _ in rest), straggler_cv=cv,
                      moe_load_factor=load)


def _model_and_profiles(args, cluster, dtype: str, implementation: str):
    """(the model, [(path, profile)] to cost it from, the first the main one; [] for analytic
    costs): --profile files, else profiles found in ``PROFILES_DIR``, else the device model."""
    cpu = cluster.backend == "gloo"
    if implementation != "executor":
        if args.profile:
            raise PlannerError(f"--profile measures this project's model; --implementation "
                               f"{implementation} is costed analytically (drop --profile)")
        model = resolve_model(args.model, args.seq_len)
        if not families.of(model).builtin or cpu:
            raise PlannerError(f"--implementation {implementation} costs a built-in model "
                               f"family on a GPU cluster's device model; got {model.name} on "
                               f"{cluster.name}")
        return model, []
    if args.profile:
        paths = [args.profile] if isinstance(args.profile, str) else list(args.profile)
        loaded = [(p, ModelProfile.load(p)) for p in paths]
        path, profile = loaded[0]
        for other_path, other in loaded[1:]:
            if not same_model(other.model, profile.model) or other.device != profile.device:
                raise PlannerError(f"{other_path}: profiles {other.model.name} on "
                                   f"{other.device}, not {profile.model.name} on "
                                   f"{profile.device} like {path}")
        if args.model and not same_model(resolve_model(args.model, args.seq_len), profile.model):
            raise PlannerError(f"{path}: profiles model {profile.model.name} "
                               f"({profile.model_fingerprint}), not --model {args.model}")
        if args.seq_len is not None and args.seq_len != profile.model.seq_len:
            raise PlannerError(f"{path}: profiles seq_len {profile.model.seq_len}, not "
                               f"--seq-len {args.seq_len}: profile the model at that length")
        return profile.model, loaded
    model = resolve_model(args.model, args.seq_len)
    found = [] if cluster.mixed else find_profiles(model, "cpu" if cpu else "cuda", dtype)
    if found:
        return found[0][1].model, found   # a custom model's sizes are known once it was built
    if cpu or not families.of(model).builtin:
        raise PlannerError(
            f"no profile of {model.name} ({dtype}) in {PROFILES_DIR}/: run `planner profile "
            f"--model {args.model} --dtype {dtype}` first, or pass --profile")
    return model, []
