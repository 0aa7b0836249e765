"""The mixture-of-experts family: a Llama-style decoder (``planner.families.llama``) whose MLP is,
in its MoE layers, ``num_experts`` SwiGLU experts of ``moe_ffn_hidden_size`` with top-k routing
(``experts_per_token``; Shazeer et al. 2017; Mixtral: Jiang et al. 2024, arXiv 2401.04088),
optionally one always-on shared expert (``shared_expert_ffn_hidden_size``, with a sigmoid gate:
Qwen2-MoE), a capacity factor or dropless routing, and the router's load-balancing loss
(``moe_aux_loss_coeff``). The first ``moe_first_dense_layers`` layers, and after them every
layer i with (i + 1) % ``moe_layer_step`` != 0 (Qwen2-MoE's ``decoder_sparse_step``), have a
dense SwiGLU MLP of ``ffn_hidden_size``.

Routing, per sequence (so that a sequence trains the same whatever micro-batch, data-parallel
shard or pipeline stage it lands in, which makes every layout exact against one process):
softmax over the experts' logits, the top-k probabilities as gate weights (renormalised to sum
to one with ``moe_renormalize``, Mixtral; not, Qwen2-MoE's default). With a capacity factor
cf > 0 an expert takes at most ceil(cf * s * k / E) of a sequence's tokens, first choices before
second ones and earlier tokens first (GShard, Lepikhin et al. 2020, sec. 2.2); the rest are
dropped (that expert adds nothing for them). The load-balancing loss is Switch Transformer's
(Fedus et al. 2021, eq. 4) generalised to top-k as Megatron-core's
``switch_load_balancing_loss_func`` -- E * sum_i f_i * P_i, f_i the share of the sequence's k*s
assignments that chose expert i, P_i the mean router probability of i -- computed per sequence
(DeepSeek-V3's sequence-wise balance loss, arXiv 2412.19437 eq. 17-20) and averaged.

Tensor parallelism: attention as Llama; every routed expert (and the shared expert) is split
like a dense SwiGLU MLP (gate/up by columns, down by rows: ``moe_ffn_hidden_size`` / tp columns
of every expert on every rank), the router replicated, so a MoE layer issues Megatron's two
collectives per pass like a dense one. The router's gradient is then a partial sum on each tp
rank (each rank's expert columns contribute to the gate weights' gradient): it is summed over
tp with the other partial gradients (``partial_grad_params``). Expert parallelism (experts
sharded over ranks, tokens moved by all-to-all) is not here; ``routed_elements`` and
``expert_params`` are what it will need.

Parameter counts: total (all experts, for memory) and active per token (k experts + shared, for
the FLOPs MFU counts). FLOPs of a MoE layer: attention + router 2*T*h*E + k * 6*T*h*f_e + shared
6*T*h*f_s (+ its gate 2*T*h), T tokens, no credit for dropped tokens. Activation memory (elements
per token, what the torch model saves; module docstring of ``planner.families.llama`` for the
attention half): whole on every tp rank -- the MoE input h, router probabilities E, the k routed
copies of the token (k*h) and the k expert outputs kept for the gate's gradient (k*h), the shared
expert's output kept for its gate (h); split by tp -- each routed copy's SwiGLU intermediates
(4*k*f_e) and the shared expert's (4*f_s); split by sp -- the two norm inputs. Routing is taken as
balanced (E equal groups of T*k/E tokens), the best case; imbalance is expert parallelism's
concern.
"""
from __future__ import annotations

import math

from planner.errors import PlannerError
from planner.families.llama import (FIELDS as LLAMA_FIELDS, LlamaFamily, attention_activation,
                                    attention_forward_flops, attention_params, swiglu_params)

FIELDS = LLAMA_FIELDS + ("num_experts", "experts_per_token", "moe_ffn_hidden_size",
                         "shared_expert_ffn_hidden_size", "shared_expert_gate",
                         "moe_capacity_factor", "moe_aux_loss_coeff", "moe_renormalize",
                         "moe_first_dense_layers", "moe_layer_step")


def expert_ffn(spec) -> int:
    return spec.moe_ffn_hidden_size or spec.ffn_hidden_size


def is_moe_layer(spec, layer: int) -> bool:
    return layer >= spec.moe_first_dense_layers and (layer + 1) % spec.moe_layer_step == 0


def moe_layers(spec) -> list[int]:
    return [i for i in range(spec.num_layers) if is_moe_layer(spec, i)]


def capacity(spec) -> int:
    """Tokens one expert takes from one sequence (0: dropless)."""
    cf = spec.moe_capacity_factor
    if not cf:
        return 0
    return math.ceil(cf * spec.seq_len * spec.experts_per_token / spec.num_experts)


def expert_params(spec) -> int:
    """Parameters of one routed expert (what expert parallelism places on a rank)."""
    return swiglu_params(spec.hidden_size, expert_ffn(spec))


def routed_elements(spec, tokens: int) -> int:
    """Activation elements a MoE layer sends to its experts per pass (each of the tokens' k
    copies of h values): the volume of expert parallelism's dispatch, and again of its combine."""
    return tokens * spec.experts_per_token * spec.hidden_size


class MoeFamily(LlamaFamily):
    name = "moe"
    has_experts = True
    fields = FIELDS

    # -- the spec ------------------------------------------------------------------------------
    def validate(self, spec) -> None:
        super().validate(spec)
        e, k = spec.num_experts, spec.experts_per_token
        if e < 1:
            raise PlannerError(f"num_experts must be >= 1 for family 'moe', got {e}")
        if not 1 <= k <= e:
            raise PlannerError(f"experts_per_token must be in 1..num_experts({e}), got {k}")
        for name in ("moe_ffn_hidden_size", "shared_expert_ffn_hidden_size",
                     "moe_first_dense_layers"):
            if getattr(spec, name) < 0:
                raise PlannerError(f"{name} must be >= 0, got {getattr(spec, name)}")
        if spec.moe_layer_step < 1:
            raise PlannerError(f"moe_layer_step must be >= 1, got {spec.moe_layer_step}")
        for name in ("moe_capacity_factor", "moe_aux_loss_coeff"):
            value = getattr(spec, name)
            if not math.isfinite(value) or value < 0:
                raise PlannerError(f"{name} must be a finite number >= 0, got {value}")
        if spec.shared_expert_gate and not spec.shared_expert_ffn_hidden_size:
            raise PlannerError("shared_expert_gate needs a shared expert: set "
                               "shared_expert_ffn_hidden_size > 0")
        if not moe_layers(spec):
            raise PlannerError(f"no MoE layer: moe_first_dense_layers "
                               f"({spec.moe_first_dense_layers}) and moe_layer_step "
                               f"({spec.moe_layer_step}) leave all {spec.num_layers} layers "
                               "dense (use family 'llama')")

    def layer_variant(self, spec, layer: int) -> str:
        return "moe" if is_moe_layer(spec, layer) else "dense"

    def _moe_mlp_params(self, spec, experts: int) -> int:
        h, fs = spec.hidden_size, spec.shared_expert_ffn_hidden_size
        n = spec.num_experts * h + experts * expert_params(spec)        # router + experts
        if fs:
            n += swiglu_params(h, fs) + (h if spec.shared_expert_gate else 0)
        return n

    def layer_params(self, spec, layer: int) -> tuple[int, int]:
        if not is_moe_layer(spec, layer):
            return super().layer_params(spec, layer)
        base = attention_params(spec) + 2 * spec.hidden_size
        return (base + self._moe_mlp_params(spec, spec.num_experts),
                base + self._moe_mlp_params(spec, spec.experts_per_token))

    def layer_forward_flops(self, spec, layer: int, b: int) -> float:
        if not is_moe_layer(spec, layer):
            return super().layer_forward_flops(spec, layer, b)
        t, h = b * spec.seq_len, spec.hidden_size
        fs = spec.shared_expert_ffn_hidden_size
        mlp = 2.0 * t * h * spec.num_experts + 6.0 * t * h * expert_ffn(spec) * \
            spec.experts_per_token + 6.0 * t * h * fs
        if spec.shared_expert_gate:
            mlp += 2.0 * t * h
        return attention_forward_flops(spec, b) + mlp

    def layer_activation(self, spec, layer: int) -> tuple[float, float, float]:
        if not is_moe_layer(spec, layer):
            return super().layer_activation(spec, layer)
        h, k, fs = spec.hidden_size, spec.experts_per_token, spec.shared_expert_ffn_hidden_size
        sp_part, whole, split = attention_activation(spec)
        whole += h + spec.num_experts + 2 * k * h + k + (h + 1 if spec.shared_expert_gate else 0)
        split += 4 * k * expert_ffn(spec) + 4 * fs
        return sp_part + h, whole, split

    # -- expert and context parallelism ---------------------------------------------------------
    def ep_problem(self, spec, ep: int) -> str:
        if ep > 1 and spec.num_experts % ep:
            return (f"ep({ep}) must divide num_experts({spec.num_experts}): "
                    f"{spec.num_experts} % {ep} = {spec.num_experts % ep}")
        return ""

    def expert_params(self, spec, layer: int) -> int:
        return spec.num_experts * expert_params(spec) if is_moe_layer(spec, layer) else 0

    def ep_messages(self, spec, layer, tokens, element_bytes, load=1.0):
        """Per MoE layer and micro-batch (``model.Experts._dispatched``): forward the exchange
        of per-expert counts (int64), the dispatch and the combine of the tokens' k routed
        copies; backward the reverse of the two data exchanges."""
        if not is_moe_layer(spec, layer):
            return ()
        data = routed_elements(spec, 1) * tokens * element_bytes * load
        return (("forward", "all_to_all", 8.0 * spec.num_experts),
                ("forward", "all_to_all", data), ("forward", "all_to_all", data),
                ("backward", "all_to_all", data), ("backward", "all_to_all", data))

    def cp_messages(self, spec, layer, tokens):
        """A MoE layer that drops by capacity or adds the balance loss gathers the whole
        sequence's expert choices (int64) over cp in its forward (``model.MoE._whole``);
        ``tokens``: the micro-batch's, all cp ranks' (an all-gather's bytes are its output)."""
        if is_moe_layer(spec, layer) and (spec.moe_capacity_factor or spec.moe_aux_loss_coeff):
            return (("forward", "all_gather", 8.0 * tokens * spec.experts_per_token),)
        return ()

    # -- tensor parallelism ----------------------------------------------------------------------
    def tp_divisors(self, spec):
        out = [("num_kv_heads", spec.num_kv_heads or spec.num_heads)]
        if len(moe_layers(spec)) < spec.num_layers:
            out.append(("ffn_hidden_size", spec.ffn_hidden_size))
        out.append(("moe_ffn_hidden_size", expert_ffn(spec)))
        if spec.shared_expert_ffn_hidden_size:
            out.append(("shared_expert_ffn_hidden_size", spec.shared_expert_ffn_hidden_size))
        return tuple(out)

    def partial_grad_params(self, spec, layer, sequence_parallel):
        out = super().partial_grad_params(spec, layer, sequence_parallel)
        if is_moe_layer(spec, layer):
            out += (spec.num_experts * spec.hidden_size,)
            if spec.shared_expert_gate:
                out += (spec.hidden_size,)
        return out

    # -- compute -------------------------------------------------------------------------------
    def mlp_matrices(self, spec, layer: int, tp: int):
        if not is_moe_layer(spec, layer):
            return super().mlp_matrices(spec, layer, tp)
        h, f = spec.hidden_size, expert_ffn(spec) // tp
        out = [(spec.num_experts, h)] + [(f, h), (f, h), (h, f)] * spec.num_experts
        fs = spec.shared_expert_ffn_hidden_size // tp
        if fs:
            out += [(fs, h), (fs, h), (h, fs)] + ([(1, h)] if spec.shared_expert_gate else [])
        return out

    def mlp_ops(self, spec, sh, layer: int):
        if not is_moe_layer(spec, layer):
            return super().mlp_ops(spec, sh, layer)
        from planner.families.moe.costs import moe_mlp_ops
        return moe_mlp_ops(spec, sh)
