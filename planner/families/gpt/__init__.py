"""The GPT family: token + position embedding, pre-norm decoder blocks (multi-head attention,
GELU MLP), final norm and an untied LM head (nanoGPT/GPT-2; Megatron-LM's layer for costing).

Everything GPT-specific the planner needs is here: validation, tensor-parallel rules and
collectives (Megatron, Shoeybi et al. 2019), activation memory (Korthikanti et al. 2022), the
attention core's share for selective recompute, PowerSGD's matrices. Analytic (roofline) costs
are in ``costs``, the torch model and its tensor-parallel plan in ``model``.
"""
from __future__ import annotations

from planner.errors import PlannerError
from planner.families import megatron
from planner.families.base import Family

# Per decoder layer, in units of s*b*h bytes at 16 bits (Korthikanti et al. 2022, arXiv
# 2205.05198, sec. 4 and Table 2): 10 units stay whole on every tensor-parallel rank (layer-norm
# inputs 4, q/k/v input 2, MLP input 2, two dropout masks 2), 24 are split over t (q, k 4; v 2;
# attention output 2; GeLU input and output 16), and the attention core keeps 5*a*s/h more
# (scores, softmax, its dropout mask), also split over t. Sequence parallelism splits the 10 as
# well; selective recompute drops the 5*a*s/h; full recompute keeps only the layer input (2
# units = the block's output bytes).
WHOLE_UNITS, SPLIT_UNITS = 10.0, 24.0


def vocab_shard(vocab_size: int, tp: int) -> int:
    """Vocabulary rows of the largest tp shard: DTensor's Shard(0) splits like torch.chunk,
    ceil(V/tp) rows on the first ranks."""
    return -(-vocab_size // tp)


def attention_core_units(spec) -> float:
    """5*a*s/h: the attention core's share of a layer's activations (Korthikanti Table 2)."""
    return 5.0 * spec.num_heads * spec.seq_len / spec.hidden_size


def block_forward_flops(b: int, s: int, h: int, f: int) -> float:
    """Forward FLOPs of one decoder block: 8bsh^2 (q,k,v,o) + 4bshf (MLP) + 2bs^2h (QK^T, AV
    under the causal mask).

    Narayanan et al. SC'21 (arXiv 2104.04473) eq. (2) counts 4bs^2h for QK^T and AV (with
    f = 4h: 24bsh^2 + 4bs^2h per layer forward), as does PaLM's MFU (appendix B); causal
    attention kernels compute only the unmasked half (FlashAttention-2, Dao 2023, arXiv
    2307.08691, counts causal FLOPs so), and at long context the full count puts "model" FLOP/s
    above the device's peak. So the masked half is not counted: MFU here is lower than in that
    convention by 2bs^2h per layer forward (s/(12h + s) of it with f = 4h: 1.4% at GPT-3 175B's
    2,048 tokens, 25% at 128k tokens on a 16,384-wide model).
    """
    return 8 * b * s * h * h + 4 * b * s * h * f + 2 * b * s * s * h


def layer_params(h: int, f: int) -> int:
    """q, k, v, o with biases + MLP with biases + two LayerNorms."""
    return 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h


class GptFamily(Family):
    name = "gpt"
    context_parallel = True
    has_sequence = True
    selective_recompute = True

    def param_counts(self, spec):
        """Token and position embeddings, the layers, final LayerNorm and the untied head."""
        h, v = spec.hidden_size, spec.vocab_size
        total = (v + spec.seq_len) * h + spec.num_layers * layer_params(h, spec.ffn_hidden_size) \
            + 2 * h + v * h
        return total, total

    def validate(self, spec) -> None:
        if spec.hidden_size % spec.num_heads:
            raise PlannerError(f"hidden_size({spec.hidden_size}) % num_heads({spec.num_heads}) "
                               f"= {spec.hidden_size % spec.num_heads}, must be 0")

    def tp_problem(self, spec, tp: int, sequence_parallel: bool) -> str:
        """Column splits need whole heads and whole FFN columns per rank (hidden_size follows
        from the heads: hidden = heads * head_dim)."""
        return megatron.tp_divisibility_problem(
            spec, tp, sequence_parallel,
            (("num_heads", spec.num_heads), ("ffn_hidden_size", spec.ffn_hidden_size)))

    def tp_collectives(self, kind: str, sequence_parallel: bool):
        if kind == "block":
            return megatron.block_collectives(kind, sequence_parallel)
        return megatron.vocab_parallel_collectives(kind, sequence_parallel)

    def tp_splits(self, kind: str) -> bool:
        """Blocks and the head's GEMM and loss split over tp; the embedding's lookup of b*s
        rows is the same work on every rank (only its table is split: ``tp_params``)."""
        return kind in ("block", "head")

    def tp_params(self, kind, spec, param_count, tp):
        """Decoder blocks: 1/tp (Megatron's split; the replicated norms and row-parallel
        biases are left out). Embedding and head: the vocabulary rows split (the largest shard,
        ceil(V/tp) rows), positions and the final norm whole."""
        if kind in ("embedding", "head"):
            v, h = spec.vocab_size, spec.hidden_size
            return param_count - (v - vocab_shard(v, tp)) * h
        return param_count / tp if kind == "block" else param_count

    def partial_grad_params(self, spec, layer, sequence_parallel):
        """Under sequence parallelism each rank holds a partial sum over its sequence shard of
        the replicated norms' gradients (Korthikanti sec. 4.2.2): two LayerNorms, weight and
        bias of h each."""
        return (spec.hidden_size,) * 4 if sequence_parallel else ()

    def edge_partial_grad_params(self, spec, kind, sequence_parallel):
        """The head's final LayerNorm runs on the sequence slice too (``model.vocab_plans``)."""
        return (spec.hidden_size,) * 2 if sequence_parallel and kind == "head" else ()

    def activation_bytes(self, saved, output, kind, spec, tp, sequence_parallel, recompute,
                         block=None):
        """``saved`` (measured, or Korthikanti's s*b*h*(34 + 5as/h)) divided among Korthikanti's
        parts in the proportions above, each scaled as his Table 2 says. The head keeps its
        input (h per token) and its rank's share of the logits (V/tp per token); the embedding
        is not split or recomputed."""
        if kind == "head" and tp > 1:
            v, h = spec.vocab_size, spec.hidden_size
            return saved * (h + vocab_shard(v, tp)) / (h + v)
        if kind != "block":
            return saved
        rest = tp if sequence_parallel else 1
        if recompute == "full":
            return output / rest
        core = attention_core_units(spec)
        unit = saved / (WHOLE_UNITS + SPLIT_UNITS + core)
        kept_core = 0.0 if recompute == "selective" else core
        return unit * (WHOLE_UNITS / rest + (SPLIT_UNITS + kept_core) / tp)

    def recompute_working_bytes(self, saved, output, kind, spec, tp, sequence_parallel,
                                recompute, block=None):
        """Full recompute brings a block's activations back for its backward; selective the
        attention core's."""
        if kind != "block" or recompute == "none":
            return 0.0
        if recompute == "full":
            return self.activation_bytes(saved, output, kind, spec, tp, sequence_parallel, "none")
        core = attention_core_units(spec)
        return saved / (WHOLE_UNITS + SPLIT_UNITS + core) * core / tp

    def selective_share(self, forward_flops, spec, microbatch_size):
        """Attention core's share of a block's forward: 4*b*s^2*h of its FLOPs (QK^T and AV,
        Narayanan et al. SC'21 eq. 2), the best split available without a per-op profile."""
        if forward_flops <= 0:
            return 0.0
        core = 4.0 * microbatch_size * spec.seq_len ** 2 * spec.hidden_size
        return min(1.0, core / forward_flops)

    def block_matrices(self, kind, spec, tp, block=None):
        """q, k, v and attention output h x h, MLP fc ffn x h and proj h x ffn (the split
        dimension divided by t); embedding: vocab/t x h and positions seq x h; head: vocab/t x
        h."""
        h, f, t = spec.hidden_size, spec.ffn_hidden_size, tp
        if kind == "block":
            return [(h // t, h)] * 3 + [(h, h // t), (f // t, h), (h, f // t)]
        if kind == "embedding":
            return [(vocab_shard(spec.vocab_size, t), h), (spec.seq_len, h)]
        return [(vocab_shard(spec.vocab_size, t), h)]

    def analytic_costs(self, spec, microbatch_size, device, dtype, element_bytes,
                       device_model=None, implementation="executor"):
        from planner.families.gpt.costs import analytic_costs
        return analytic_costs(spec, microbatch_size, device, dtype, element_bytes,
                              device_model, implementation)
