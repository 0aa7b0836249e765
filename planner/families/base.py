"""What a model family tells the planner and the executor (torch-free).

The defaults describe a family with no tensor parallelism, no sequence to split and nothing to
recompute selectively; families override what they support. Every method takes the
``ModelSpec`` so a family object holds no state. The torch side of a family is its ``model``
module, imported only by ``model_module()`` (the executor and the profiler).
"""
from __future__ import annotations

import importlib

from planner.errors import PlannerError


class Family:
    name = ""
    # tokens along a sequence: sequence parallelism, token data files, tokens/s
    has_sequence = False
    # an attention core whose forward selective recompute runs again (Korthikanti et al. 2022)
    selective_recompute = False
    # a torch package of ours builds it (so the executor may shard it by the family's TP plan)
    builtin = True
    # its attention runs as a ring over context-parallel ranks (``executor.parallel.cp``)
    context_parallel = False
    # it has experts that expert parallelism shards (``ep_problem``, ``expert_params``)
    has_experts = False
    # ModelSpec fields added after version 1 that this family reads; any other one set to a
    # non-default value is refused by ModelSpec (a gpt spec with num_experts=8 is an error)
    fields: tuple[str, ...] = ()

    # -- the spec ------------------------------------------------------------------------------
    def validate(self, spec) -> None:
        """Raise a one-line PlannerError when ``spec`` is not a model of this family."""

    def num_blocks(self, spec) -> int:
        """Blocks of the pipeline-cuttable sequence: embedding, layers, head."""
        return spec.num_layers + 2

    def block_kinds(self, spec) -> list[str]:
        """Kind of each block in order: "embedding", "block" (a repeated layer), "head"."""
        return ["embedding"] + ["block"] * spec.num_layers + ["head"]

    def param_counts(self, spec) -> tuple[int, int] | None:
        """(total, active per token) parameters; None when known only once built (custom).
        Active differs from total only where tokens skip parameters (mixture of experts)."""
        return None

    def layout_problem(self, spec, layout) -> str:
        """Why the executor cannot run ``layout`` for this family beyond tensor-parallel
        divisibility ("" if it can); ``planner.rules`` asks, so the search never proposes it."""
        return ""

    # -- context and expert parallelism ---------------------------------------------------------
    def cp_problem(self, spec, cp: int) -> str:
        """Why ``cp`` cannot split this model's sequences ("" if it can): a family with ring
        attention, and 2*cp dividing the sequence (rank i takes chunks i and 2cp-1-i: the
        load-balanced causal split of ``executor.parallel.cp``)."""
        if cp == 1:
            return ""
        if not self.context_parallel:
            return f"cp({cp}) needs a family with ring attention; {self.name} has none"
        if spec.seq_len % (2 * cp):
            return (f"cp({cp}): 2 * cp = {2 * cp} must divide seq_len({spec.seq_len}) (rank i "
                    f"takes chunks i and 2cp-1-i): {spec.seq_len} % {2 * cp} = "
                    f"{spec.seq_len % (2 * cp)}")
        return ""

    def ep_problem(self, spec, ep: int) -> str:
        """Why ``ep`` cannot shard this model's experts ("" if it can)."""
        if ep > 1:
            return f"ep({ep}) needs experts to shard; family {self.name} has none"
        return ""

    def expert_params(self, spec, layer: int) -> int:
        """Parameters of decoder layer ``layer`` (0-based) that expert parallelism shards
        (all routed experts; 0 for families without experts)."""
        return 0

    def ep_messages(self, spec, layer: int, tokens: float, element_bytes: int,
                    load: float = 1.0) -> tuple[tuple[str, str, float], ...]:
        """The collectives decoder layer ``layer`` (0-based) issues over the ep group per
        micro-batch of ``tokens`` tokens on this rank, ep > 1: (phase, collective, bytes each
        rank sends) in order; ``load`` scales the token exchanges (``planner.cost.ep``)."""
        return ()

    def cp_messages(self, spec, layer: int, tokens: float) -> tuple[tuple[str, str, float], ...]:
        """Collectives over the cp group of decoder layer ``layer`` beyond the attention ring
        (its MoE routing), per micro-batch of ``tokens`` tokens (of all cp ranks), cp > 1:
        (phase, collective, bytes as ``planner.cost.comm`` counts them)."""
        return ()

    def kv_elements_per_token(self, spec) -> int:
        """K and V elements per token of one layer (what the cp ring passes): multi-head."""
        return 2 * spec.hidden_size

    # -- tensor parallelism ----------------------------------------------------------------------
    def tp_problem(self, spec, tp: int, sequence_parallel: bool) -> str:
        """Why ``tp`` (with or without sequence parallelism) cannot split this model ("" if it
        can): the divisibility its tensor-parallel plan needs."""
        if tp > 1:
            return f"tp({tp}) needs a family with a tensor-parallel plan; {self.name} has none"
        return ""

    def tp_collectives(self, kind: str, sequence_parallel: bool
                       ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The tp collectives one block of ``kind`` issues per micro-batch (forward, backward),
        tp > 1; each moves the b*s*h activations (``planner.cost.tp``)."""
        return (), ()

    def tp_splits(self, kind: str) -> bool:
        """Whether a block of ``kind`` has its matmuls divided over tp ranks (a measured
        block's time is then divided by tp)."""
        return False

    def partial_grad_params(self, spec, layer: int, sequence_parallel: bool
                            ) -> tuple[int, ...]:
        """Elements of each parameter of decoder layer ``layer`` (0-based) that is replicated
        over tp ranks but whose gradient each rank holds only a partial sum of (layer norms
        under sequence parallelism, a MoE router), tp > 1. The executor sums them over tp:
        in one all-reduce per step (``executor.parallel.tp.reduce_partial_grads``), or, under
        FSDP, one all-reduce per parameter at each reduce-scatter (FSDP2 redistributes the
        Partial gradient to the parameter's Replicate placement)."""
        return ()

    def tp_params(self, kind: str, spec, param_count: float, tp: int) -> float:
        """Parameters of a block of ``kind`` on one tp rank (the largest shard)."""
        return param_count / tp if self.tp_splits(kind) else param_count

    def edge_partial_grad_params(self, spec, kind: str, sequence_parallel: bool
                                 ) -> tuple[int, ...]:
        """``partial_grad_params`` of a block that is not a decoder layer (``kind``
        "embedding" or "head"), tp > 1."""
        return ()

    # -- memory --------------------------------------------------------------------------------
    def activation_bytes(self, saved: float, output: float, kind: str, spec, tp: int,
                         sequence_parallel: bool, recompute: str, block: int | None = None
                         ) -> float:
        """Activation bytes one block keeps per micro-batch on one rank (``block``: its index
        in the model's blocks, for families whose layers differ)."""
        if kind == "block" and recompute == "full":
            return output
        return saved

    def recompute_working_bytes(self, saved: float, output: float, kind: str, spec, tp: int,
                                sequence_parallel: bool, recompute: str,
                                block: int | None = None) -> float:
        """Transient bytes while a recomputed block runs its backward."""
        if kind == "block" and recompute == "full":
            return self.activation_bytes(saved, output, kind, spec, tp, sequence_parallel, "none",
                                         block)
        return 0.0

    def selective_share(self, forward_flops: float, spec, microbatch_size: int) -> float:
        """Share of a block's forward that selective recompute runs again."""
        return 0.0

    # -- compute -------------------------------------------------------------------------------
    def block_matrices(self, kind: str, spec, tp: int, block: int | None = None
                       ) -> list[tuple[int, int]]:
        """(rows, cols) of a block's weight matrices on one tp rank (PowerSGD's compression)."""
        return []

    def analytic_costs(self, spec, microbatch_size: int, device, dtype: str,
                       element_bytes: int, device_model=None, implementation: str = "executor"):
        """Per-block costs without a profile (``planner.cost.compute.BlockCost``)."""
        raise PlannerError(f"model {spec.name!r} (family {self.name}) has no analytic cost "
                           "model: profile it with `planner profile --model ...` first")

    # -- torch ---------------------------------------------------------------------------------
    def model_module(self):
        """The family's torch module (``build``, ``apply_tp``): imports torch."""
        return importlib.import_module(f"planner.families.{self.name}.model")
