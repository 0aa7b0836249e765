"""Model architecture and measured per-block profiles."""
from __future__ import annotations

from dataclasses import dataclass, fields

from planner import families
from planner.errors import PlannerError
from planner.specs.common import Serde, choice, finite, fingerprint, positive

SCHEMA_VERSION = 1
FAMILIES = families.NAMES
# The fields of version 1; ModelSpec.fingerprint keeps their hash stable as fields are added.
_V1_FIELDS = ("name", "family", "num_layers", "hidden_size", "num_heads", "seq_len", "vocab_size",
              "ffn_hidden_size", "callable_path", "schema_version")


@dataclass(frozen=True)
class ModelSpec(Serde):
    """An architecture: enough to build the model here or to cost it analytically.

    ``family`` "gpt": token+position embedding, ``num_layers`` pre-norm decoder blocks, final
    norm and LM head. "llama": token embedding, decoder layers with grouped-query attention,
    rotary positions, RMSNorm and a SwiGLU MLP, final norm and a (tied or untied) head. "moe": a
    llama whose MLPs are routed experts (``planner.families.moe``). "mlp": ``num_layers``
    residual MLP blocks on ``hidden_size`` features with a classifier head of ``vocab_size``
    classes (``seq_len`` 1). "custom": built by importing ``callable_path``
    (``package.module:callable``); the other fields then describe the input.
    """
    name: str
    family: str
    num_layers: int
    hidden_size: int
    num_heads: int = 1
    seq_len: int = 1
    vocab_size: int = 2
    ffn_hidden_size: int = 0
    callable_path: str = ""
    schema_version: int = SCHEMA_VERSION
    # Added after version 1 (left out of the fingerprint at their defaults). Each family says
    # which of them it understands (``Family.fields``); any other one set to a non-default
    # value is refused. Llama-style decoders ("llama", "moe"):
    num_kv_heads: int = 0            # key/value heads (grouped-query attention); 0: num_heads
    head_dim: int = 0                # per head; 0: hidden_size / num_heads
    tie_embeddings: bool = False     # the LM head reuses the token embedding's weight
    rope_theta: float = 10000.0      # rotary position embedding base (Su et al. 2021)
    qkv_bias: bool = False           # biases on q, k, v (Qwen2)
    qk_norm: bool = False            # RMSNorm of each query and key head (Qwen3)
    # Mixture of experts ("moe"):
    num_experts: int = 0             # routed experts per MoE layer
    experts_per_token: int = 0       # top-k
    moe_ffn_hidden_size: int = 0     # each routed expert's SwiGLU width; 0: ffn_hidden_size
    shared_expert_ffn_hidden_size: int = 0   # one always-on SwiGLU expert (0: none)
    shared_expert_gate: bool = False  # sigmoid gate on the shared expert's output (Qwen2-MoE)
    moe_capacity_factor: float = 0.0  # tokens per expert per sequence = cf*s*k/E; 0: dropless
    moe_aux_loss_coeff: float = 0.0  # load-balancing loss weight in the training loss
    moe_renormalize: bool = True     # top-k gate weights renormalised to sum to 1
    moe_first_dense_layers: int = 0  # the first k layers have a dense MLP
    moe_layer_step: int = 1          # after them, layer i is MoE iff (i + 1) % step == 0

    def __post_init__(self):
        choice("family", self.family, FAMILIES)
        for name in ("num_layers", "hidden_size", "num_heads", "seq_len", "vocab_size"):
            positive(name, getattr(self, name))
        if self.ffn_hidden_size == 0:
            object.__setattr__(self, "ffn_hidden_size", 4 * self.hidden_size)
        positive("ffn_hidden_size", self.ffn_hidden_size)
        family = families.get(self.family)
        for f in fields(self):
            if f.name in _V1_FIELDS or f.name in family.fields:
                continue
            value = getattr(self, f.name)
            if value != f.default:
                raise PlannerError(f"field '{f.name}' ({value!r}) is not part of family "
                                   f"{self.family!r}, which understands: "
                                   f"{', '.join(family.fields) or 'none of the newer fields'}")
        family.validate(self)

    @property
    def num_blocks(self) -> int:
        """Blocks in the pipeline-cuttable sequence (``Family.num_blocks``)."""
        return families.get(self.family).num_blocks(self)

    def fingerprint(self) -> str:
        """Hash of the architecture (not the display name): ties profiles, plans and metrics.
        Fields added after version 1 count only when not at their default, so an architecture
        version 1 could describe keeps its fingerprint."""
        data = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _V1_FIELDS or value != f.default:
                data[f.name] = list(value) if isinstance(value, tuple) else value
        data.pop("name")
        return fingerprint(data)


@dataclass(frozen=True)
class BlockProfile(Serde):
    """One block as measured by ``planner profile`` at the profile's micro-batch size.

    Times are medians after warm-up; spreads are the inter-quartile range of the repeats.
    ``forward_flops`` counts multiply-adds as 2 FLOPs; backward is ~2x forward.
    """
    index: int
    name: str
    kind: str                      # "embedding" | "block" | "head"
    forward_time_s: float
    backward_time_s: float
    forward_time_spread_s: float
    backward_time_spread_s: float
    forward_flops: float
    param_count: int
    param_bytes: int
    saved_activation_bytes: int    # kept for backward, de-duplicated by storage
    output_bytes: int              # what would cross a pipeline boundary after this block

    def __post_init__(self):
        # A NaN or infinite time would turn every prediction made from it into NaN.
        where = f"blocks[{self.index}] ({self.name})"
        for name in ("forward_time_s", "backward_time_s", "forward_time_spread_s",
                     "backward_time_spread_s", "forward_flops"):
            finite(f"{where}: {name}", getattr(self, name), 0)
        for name in ("param_count", "param_bytes", "saved_activation_bytes", "output_bytes"):
            if getattr(self, name) < 0:
                raise PlannerError(f"{where}: {name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class ModelProfile(Serde):
    model: ModelSpec
    model_fingerprint: str
    device: str                    # "cpu" or "cuda"
    device_name: str
    dtype: str
    num_threads: int
    microbatch_size: int
    seq_len: int
    optimizer: str
    blocks: tuple[BlockProfile, ...]
    step_time_s: float             # a whole measured training step (fwd+bwd+optimizer)
    step_time_spread_s: float
    optimizer_step_time_s: float
    repeats: int
    warmup: int
    torch_version: str
    created_utc: str
    step_peak_memory_bytes: int = 0  # CUDA allocator peak over a step; 0 = not measured (CPU)
    source: str = "measured"       # or how it was derived, e.g. "extrapolated from b=1,2"
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        if self.model_fingerprint != self.model.fingerprint():
            raise PlannerError(f"model_fingerprint {self.model_fingerprint} does not match the "
                               f"model described ({self.model.fingerprint()})")
        if not self.blocks:
            raise PlannerError("blocks is empty: a profile needs at least one block")
        positive("microbatch_size", self.microbatch_size)
        for name in ("step_time_s", "step_time_spread_s", "optimizer_step_time_s"):
            finite(name, getattr(self, name), 0)

    @property
    def param_count(self) -> int:
        return sum(b.param_count for b in self.blocks)
