"""The model zoo: presets and ``--model`` resolution (no torch here; building is in ``build``).

``--model`` accepts a preset name, a path to a JSON architecture file, or an import path
``package.module:callable`` returning an ``nn.Module`` (``CONTRACT``; checked in
``planner.models.custom``).
"""
from __future__ import annotations

import os

from planner import serde
from planner.errors import PlannerError
from planner.specs import ModelSpec

# GPT-2 sizes from Radford et al. 2019 (Table 2) and the released configs; GPT-3 sizes from
# Brown et al. 2020, Table 2.1. gpt-tiny and mlp-tiny are ours, sized to run in seconds on a CPU.
PRESETS: dict[str, ModelSpec] = {p.name: p for p in (
    ModelSpec("gpt-tiny", "gpt", num_layers=4, hidden_size=128, num_heads=4, seq_len=64,
              vocab_size=512),
    ModelSpec("gpt2-small", "gpt", num_layers=12, hidden_size=768, num_heads=12, seq_len=1024,
              vocab_size=50257),
    ModelSpec("gpt2-medium", "gpt", num_layers=24, hidden_size=1024, num_heads=16, seq_len=1024,
              vocab_size=50257),
    ModelSpec("gpt2-large", "gpt", num_layers=36, hidden_size=1280, num_heads=20, seq_len=1024,
              vocab_size=50257),
    ModelSpec("gpt3-1.3b", "gpt", num_layers=24, hidden_size=2048, num_heads=16, seq_len=2048,
              vocab_size=51200),
    ModelSpec("gpt3-6.7b", "gpt", num_layers=32, hidden_size=4096, num_heads=32, seq_len=2048,
              vocab_size=51200),
    ModelSpec("gpt3-13b", "gpt", num_layers=40, hidden_size=5120, num_heads=40, seq_len=2048,
              vocab_size=51200),
    ModelSpec("gpt3-175b", "gpt", num_layers=96, hidden_size=12288, num_heads=96, seq_len=2048,
              vocab_size=51200),
    # 1T: the 128-layer, h=25600 configuration of Narayanan et al. SC'21, Table 1.
    ModelSpec("gpt-1t", "gpt", num_layers=128, hidden_size=25600, num_heads=160, seq_len=2048,
              vocab_size=51200),
    ModelSpec("mlp-tiny", "mlp", num_layers=4, hidden_size=64, vocab_size=10),
)}

# What a custom model must provide (README and --help of --model; planner.models.custom checks it).
CONTRACT = ("package.module:callable: a no-argument callable returning an nn.Module that is an "
            "nn.Sequential or has 'blocks' (an nn.ModuleList applied in order; every parameter "
            "inside them; each block one tensor in, one tensor out), optionally with "
            "synthetic_batch(batch_size, generator) -> (inputs, targets) and loss(outputs, "
            "targets) -> scalar (without them: randn inputs for a first nn.Linear block, "
            "mean-square loss). The module must be importable (installed or on PYTHONPATH; the "
            "current directory is not searched); the executor imports it only when its own "
            "--model names the same callable")
MODEL_HELP = ("preset (" + ", ".join(PRESETS) + "), architecture .json, or " + CONTRACT)

ARCH_FIELDS = ("family", "num_layers", "hidden_size", "num_heads", "seq_len", "vocab_size",
               "ffn_hidden_size")


def resolve_model(arg: str) -> ModelSpec:
    """Turn a ``--model`` argument into a ModelSpec, or raise a one-line PlannerError."""
    if arg in PRESETS:
        return PRESETS[arg]
    if arg.endswith(".json") or os.path.sep in arg:
        return load_architecture(arg)
    if ":" in arg:
        module, _, attr = arg.partition(":")
        if not module or not attr.isidentifier():
            raise PlannerError(f"--model {arg!r}: an import path must look like "
                               "'package.module:callable'")
        # The architecture of a custom model is read from the built module at profile time.
        return ModelSpec(name=arg, family="custom", num_layers=1, hidden_size=1,
                         callable_path=arg)
    raise PlannerError(f"--model {arg!r} is not a preset ({', '.join(PRESETS)}), a .json "
                       "architecture file, or a 'package.module:callable' import path")


def load_architecture(path: str) -> ModelSpec:
    """Read a JSON architecture file: family, num_layers, hidden_size, num_heads, seq_len,
    vocab_size and optional ffn_hidden_size (default 4 x hidden) and name."""
    data = serde.read_json(path)
    if not isinstance(data, dict):
        raise PlannerError(f"{path}: expected a JSON object with fields {', '.join(ARCH_FIELDS)}")
    if data.get("family") not in ("gpt", "mlp"):
        raise PlannerError(f"{path}: field 'family': expected \"gpt\" or \"mlp\", got "
                           f"{data.get('family')!r}")
    required = ARCH_FIELDS[:-1] if data["family"] == "gpt" else ("family", "num_layers",
                                                                 "hidden_size", "vocab_size")
    for key in required:
        if key not in data:
            raise PlannerError(f"{path}: missing required field '{key}'")
    data = dict(data)
    data.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    return ModelSpec.from_dict(data, ctx=path)
