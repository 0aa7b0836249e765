"""A user's own model, ``--model package.module:callable``: import it only when asked, check it.

Trust: the code is imported only when the command line names it (``trusted``): a plan or profile
that names a callable is not enough, and the current directory is not searched (a module must be
installed or on ``PYTHONPATH``), so no file handed to us can make us run code.

The contract (``planner.models.CONTRACT``, shown in ``--help``), checked when the model is
built, each failure one line naming what is missing:

- the callable takes no arguments and returns an ``nn.Module`` that is an ``nn.Sequential`` or
  has ``blocks`` (an ``nn.ModuleList``/``nn.Sequential`` applied in order: the unit the profiler
  times and a pipeline cuts at). Every parameter must be inside the blocks and ``forward()``, if
  the module defines one, must equal applying the blocks in order: the planner runs only the
  blocks, so anything else would be silently dropped;
- each block takes one tensor and returns one tensor (what crosses a pipeline stage boundary);
- optional ``synthetic_batch(batch_size, generator)`` returning ``(inputs, targets)``, two
  tensors whose first dimension is ``batch_size``, and ``loss(outputs, targets)`` returning a
  scalar. Without them the input is ``randn(batch, in_features)`` of the first block, which must
  then be an ``nn.Linear``, and the loss is the mean square of the output (targets are zeros that
  the loss ignores, so pipeline schedules can split them like real ones). A ``loss`` without a
  ``synthetic_batch`` is refused: it would be given targets nobody made.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import sys

import torch
from torch import nn

from planner.errors import PlannerError

CHECK_BATCH = 2     # rows of the batch the contract check runs (>1: a batch dimension shows)


def check_trusted(path: str, trusted: str, where: str = "plan") -> None:
    """Refuse to import ``path`` unless the command line named exactly it (``trusted``)."""
    if trusted == path:
        return
    if not trusted:
        raise PlannerError(f"{where}: field 'model.callable_path': the plan runs custom code "
                           f"{path!r}; code is imported only when the command line names it: "
                           f"add --model {path} if you trust that module")
    raise PlannerError(f"--model {trusted} does not match the plan's model.callable_path "
                       f"{path!r} ({where})")


@contextlib.contextmanager
def _without_cwd():
    """Hide the current directory from imports (``python -m`` puts it first on sys.path)
    unless the user put it on PYTHONPATH."""
    def real(p):
        return os.path.realpath(p or os.curdir)
    cwd = real(os.getcwd())
    allowed = {real(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    saved = sys.path[:]
    sys.path[:] = [p for p in saved if real(p) != cwd or cwd in allowed]
    try:
        yield
    finally:
        sys.path[:] = saved


def call_factory(path: str) -> nn.Module:
    """Import ``package.module:callable`` and call it; one-line errors for everything."""
    module_name, _, attr = path.partition(":")
    with _without_cwd():
        try:
            module = importlib.import_module(module_name)
        except Exception as err:  # noqa: BLE001 - any import failure is the user's module's
            raise PlannerError(f"--model {path}: cannot import {module_name!r} "
                               f"({type(err).__name__}: {_first_line(err)}); the current "
                               "directory is not searched: install the module or put its "
                               "directory on PYTHONPATH") from None
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise PlannerError(f"--model {path}: {module_name!r} has no callable {attr!r}")
        if inspect.isbuiltin(factory):
            raise PlannerError(f"--model {path}: {attr} is a built-in function, not a model "
                               "factory (a Python function or class returning an nn.Module)")
        try:
            inspect.signature(factory).bind()
        except TypeError as err:
            raise PlannerError(f"--model {path}: {attr} must be callable without arguments "
                               f"({err})") from None
        except ValueError:
            pass                        # no signature to inspect: calling it will tell
        try:
            model = factory()
        except (Exception, SystemExit) as err:  # noqa: BLE001 - the user's code failed
            raise PlannerError(f"--model {path}: calling {attr}() raised "
                               f"{type(err).__name__}: {_first_line(err)}") from None
    if not isinstance(model, nn.Module):
        raise PlannerError(f"--model {path}: {attr}() returned {type(model).__name__}, not an "
                           "nn.Module")
    return model


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else repr(err)


def _blocks_of(path: str, inner: nn.Module) -> list[nn.Module]:
    if isinstance(inner, nn.Sequential):
        blocks = list(inner)
    elif isinstance(getattr(inner, "blocks", None), (nn.ModuleList, nn.Sequential)):
        blocks = list(inner.blocks)
    else:
        raise PlannerError(f"--model {path}: returned {type(inner).__name__}, which is neither "
                           "an nn.Sequential nor has 'blocks' (an nn.ModuleList applied in order)")
    if not blocks:
        raise PlannerError(f"--model {path}: has no blocks")
    inside = {id(p) for b in blocks for p in b.parameters()}
    outside = [n for n, p in inner.named_parameters() if id(p) not in inside]
    if outside:
        shown = ", ".join(outside[:3]) + (f" and {len(outside) - 3} more" if len(outside) > 3
                                          else "")
        raise PlannerError(f"--model {path}: parameters outside 'blocks' ({shown}) would be "
                           "dropped: the planner runs only the blocks; make those modules "
                           "blocks (e.g. an embedding as blocks[0], a classifier as the last)")
    return blocks


def first_linear(block: nn.Module):
    """The nn.Linear a default input feeds: the block itself or the head of nested Sequentials."""
    while isinstance(block, nn.Sequential) and len(block):
        block = block[0]
    return block if isinstance(block, nn.Linear) else None


def _check_methods(path: str, inner: nn.Module, blocks) -> None:
    has_batch = callable(getattr(inner, "synthetic_batch", None))
    has_loss = callable(getattr(inner, "loss", None))
    if has_loss and not has_batch:
        raise PlannerError(f"--model {path}: defines loss(outputs, targets) but not "
                           "synthetic_batch(batch_size, generator): define both (the loss needs "
                           "targets), or neither (randn inputs, mean-square loss)")
    if not has_batch and first_linear(blocks[0]) is None:
        raise PlannerError(f"--model {path}: has no synthetic_batch(batch_size, generator) and "
                           f"its first block is {type(blocks[0]).__name__}, not an nn.Linear "
                           "whose in_features would size a default randn input: define "
                           "synthetic_batch returning (inputs, targets)")


class CustomModel(nn.Module):
    """A user's module as the zoo's shape: ``blocks``, ``synthetic_batch``, ``loss``."""

    def __init__(self, spec, inner: nn.Module, blocks):
        super().__init__()
        self.spec = spec
        self.blocks = nn.ModuleList(blocks)
        for b in blocks:
            if not hasattr(b, "kind"):
                b.kind = "block"
        self._inner_batch = getattr(inner, "synthetic_batch", None)
        self._inner_loss = getattr(inner, "loss", None)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x

    def synthetic_batch(self, batch_size, generator):
        if self._inner_batch is not None:
            return self._inner_batch(batch_size, generator)
        features = first_linear(self.blocks[0]).in_features
        return (torch.randn(batch_size, features, generator=generator),
                torch.zeros(batch_size))

    def loss(self, outputs, targets):
        if self._inner_loss is not None:
            return self._inner_loss(outputs, targets)
        if outputs.dtype not in (torch.float32, torch.float64):
            outputs = outputs.float()       # half precision: a stable mean; float64 stays exact
        return outputs.pow(2).mean()


def build_custom(spec, trusted: str, where: str = "plan") -> CustomModel:
    """Import (if ``trusted``), build and check a custom model: see the module docstring."""
    check_trusted(spec.callable_path, trusted, where)
    inner = call_factory(spec.callable_path)
    blocks = _blocks_of(spec.callable_path, inner)
    _check_methods(spec.callable_path, inner, blocks)
    model = CustomModel(spec, inner, blocks)
    check_runs(spec.callable_path, model, inner)
    return model


def _fail(path: str, what: str, err: BaseException) -> PlannerError:
    return PlannerError(f"--model {path}: {what} raised {type(err).__name__}: {_first_line(err)}")


def _check_batch(path: str, model: CustomModel):
    try:
        batch = model.synthetic_batch(CHECK_BATCH, torch.Generator().manual_seed(0))
    except Exception as err:  # noqa: BLE001 - the user's code failed
        raise _fail(path, f"synthetic_batch({CHECK_BATCH}, generator)", err) from None
    ok = (isinstance(batch, (tuple, list)) and len(batch) == 2
          and all(isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[0] == CHECK_BATCH
                  for t in batch))
    if not ok:
        raise PlannerError(f"--model {path}: synthetic_batch({CHECK_BATCH}, generator) must "
                           f"return (inputs, targets), two tensors of {CHECK_BATCH} rows")
    inputs, targets = batch
    params = list(model.parameters())
    if inputs.is_floating_point() and params:
        inputs = inputs.to(params[0].dtype)       # as executor.data does
    return inputs, targets


def _run_blocks(path: str, model: CustomModel, x):
    for i, block in enumerate(model.blocks):
        source = "the input" if i == 0 else f"the output of block {i - 1}"
        try:
            y = block(x)
        except Exception as err:  # noqa: BLE001
            raise _fail(path, f"block {i} ({type(block).__name__}) on {source} of shape "
                        f"{tuple(x.shape)}", err) from None
        if not isinstance(y, torch.Tensor):
            raise PlannerError(f"--model {path}: block {i} ({type(block).__name__}) returned "
                               f"{type(y).__name__}; each block must return one tensor")
        x = y
    return x


def check_runs(path: str, model: CustomModel, inner: nn.Module) -> None:
    """Run a batch of ``CHECK_BATCH`` rows through the blocks and the loss (eval mode, no
    grad) and, when the module defines its own forward(), compare it with the blocks."""
    inputs, targets = _check_batch(path, model)
    training = inner.training
    inner.eval()
    try:
        with torch.no_grad():
            out = _run_blocks(path, model, inputs)
            try:
                loss = model.loss(out, targets)
            except Exception as err:  # noqa: BLE001
                raise _fail(path, "loss(outputs, targets)", err) from None
            if not (isinstance(loss, torch.Tensor) and loss.numel() == 1
                    and loss.is_floating_point()):
                raise PlannerError(f"--model {path}: loss(outputs, targets) must return a "
                                   f"floating-point scalar tensor, got {_describe(loss)}")
            if _own_forward(inner):
                _compare_forward(path, inner, inputs, out)
    finally:
        inner.train(training)


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def _own_forward(inner: nn.Module) -> bool:
    return (not isinstance(inner, nn.Sequential)
            and getattr(type(inner), "forward", None) is not nn.Module.forward)


def _compare_forward(path: str, inner: nn.Module, inputs, blocks_out) -> None:
    try:
        ref = inner(inputs)
    except Exception as err:  # noqa: BLE001
        raise _fail(path, "forward()", err) from None
    same = (isinstance(ref, torch.Tensor) and ref.shape == blocks_out.shape
            and torch.allclose(ref, blocks_out, rtol=1e-5, atol=1e-6))
    if not same:
        raise PlannerError(f"--model {path}: forward() returns {_describe(ref)} that differs "
                           f"from applying its blocks in order ({_describe(blocks_out)}); the "
                           "planner runs only the blocks: move what forward() adds into them")
