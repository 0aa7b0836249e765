"""The MLP family: an input projection, ``num_layers`` residual MLP blocks (pre-norm, GELU) on
``hidden_size`` features, and a classifier head of ``vocab_size`` classes; one sample per row
(``seq_len`` 1). Small and fast: the executor's exactness tests use it beside GPT.

Tensor parallel (Megatron's MLP split, Shoeybi et al. 2019 sec. 3): fc by columns, proj by
rows, one all-reduce per block forward and one backward. No attention: selective recompute
saves nothing, and there is no sequence to split.
"""
from __future__ import annotations

from planner.families.base import Family


class MlpFamily(Family):
    name = "mlp"

    def param_counts(self, spec):
        """Input projection h x h + h; per block LayerNorm 2h, fc and proj with biases; head."""
        h, f, v = spec.hidden_size, spec.ffn_hidden_size, spec.vocab_size
        total = h * h + h + spec.num_layers * (2 * h + 2 * h * f + f + h) + h * v + v
        return total, total

    def tp_problem(self, spec, tp: int, sequence_parallel: bool) -> str:
        if tp == 1:
            return ""
        if spec.ffn_hidden_size % tp:
            return (f"tp({tp}) must divide ffn_hidden_size({spec.ffn_hidden_size}): "
                    f"{spec.ffn_hidden_size} % {tp} = {spec.ffn_hidden_size % tp}")
        if sequence_parallel:
            return "sequence_parallel needs a sequence to split; the mlp family has none"
        return ""

    def tp_collectives(self, kind: str, sequence_parallel: bool):
        return (("all_reduce",), ("all_reduce",)) if kind == "block" else ((), ())

    def tp_splits(self, kind: str) -> bool:
        return kind == "block"

    def activation_bytes(self, saved, output, kind, spec, tp, sequence_parallel, recompute,
                         block=None):
        """The layer-norm and fc inputs stay whole (2h per row), the GELU input and output are
        split over tp (2*ffn)."""
        if kind != "block":
            return saved
        if recompute == "full":
            return output
        whole, split = 2.0 * spec.hidden_size, 2.0 * spec.ffn_hidden_size
        return saved / (whole + split) * (whole + split / tp)

    def block_matrices(self, kind, spec, tp, block=None):
        h, f, t = spec.hidden_size, spec.ffn_hidden_size, tp
        if kind == "block":
            return [(f // t, h), (h, f // t)]
        if kind == "embedding":
            return [(h, h)]
        return [(spec.vocab_size, h)]
