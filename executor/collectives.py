"""``--count-collectives``: the collectives one training step issues, by kind and group.

A ``TorchDispatchMode`` sees every c10d operation dispatched on this thread: the ``c10d.*`` ops
of ``torch.distributed`` calls (including DDP's reducer, FSDP2 and the pipeline's P2P, which
dispatch through the same ops) and the ``_c10d_functional.*`` ops DTensor uses. Each is counted
under ``"<kind>@<group>"`` where kind is the planner's name (all_reduce, all_gather,
reduce_scatter, reduce, broadcast, send, recv, all_to_all, barrier) and group is the mesh
group whose process group it ran on ("dp", "cp", "pp", "tp", "dp_cp", "ep", "edp"; "world" for the
default group when no dimension owns it). Counts are those of global rank 0 in the last step of the run; that step is
left out of ``step_times_s`` because dispatch interception slows every operation.
A point-to-point transfer counts once as send on one rank and once as recv on the other.
Each call's message bytes are summed under the same key (``bytes``), in the planner's
convention (``planner.cost.comm``): an all-gather's whole output, a reduce-scatter's whole
input, the buffer of the rest.
"""
from __future__ import annotations

from collections import Counter

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode


_KINDS = {
    "allreduce_": "all_reduce", "allreduce_coalesced_": "all_reduce", "all_reduce": "all_reduce",
    "all_reduce_coalesced": "all_reduce",
    "allgather_": "all_gather", "_allgather_base_": "all_gather",
    "allgather_into_tensor_coalesced_": "all_gather", "all_gather_into_tensor": "all_gather",
    "all_gather_into_tensor_coalesced": "all_gather",
    "reduce_scatter_": "reduce_scatter", "_reduce_scatter_base_": "reduce_scatter",
    "reduce_scatter_tensor_coalesced_": "reduce_scatter",
    "reduce_scatter_tensor": "reduce_scatter", "reduce_scatter_tensor_coalesced": "reduce_scatter",
    "reduce_": "reduce", "broadcast_": "broadcast", "broadcast": "broadcast",
    "send": "send", "recv_": "recv", "recv_any_source_": "recv",
    "alltoall_": "all_to_all", "alltoall_base_": "all_to_all", "all_to_all_single": "all_to_all",
    "barrier": "barrier",
}


def group_names(mesh, layout) -> dict[str, str]:
    """Process-group name -> group name (only groups of more than one rank;
    ``executor.runtime.Meshes.groups``)."""
    names = mesh.groups(layout)
    names.setdefault(dist.group.WORLD.group_name, "world")
    return names


def _tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(x) for x in obj)
    return 0


def message_bytes(kind: str, namespace: str, args) -> int:
    """One call's bytes as the planner counts them (module docstring)."""
    functional = namespace == "_c10d_functional"
    if kind == "all_gather":
        if functional:                    # (input, group_size, group_name)
            return _tensor_bytes(args[0]) * int(args[1])
        return _tensor_bytes(args[0])     # c10d: the output (tensor or lists of tensors)
    if kind == "reduce_scatter" and not functional:
        return _tensor_bytes(args[1])     # c10d: (outputs, inputs, ...)
    return _tensor_bytes(args[0])


class CollectiveCounter(TorchDispatchMode):
    def __init__(self, names: dict[str, str]):
        super().__init__()
        self.names = names
        self.counts: Counter = Counter()
        self.bytes: Counter = Counter()

    def _group(self, args) -> str:
        for a in args:
            if isinstance(a, str) and a in self.names:        # functional ops: group name
                return self.names[a]
            if type(a).__name__ == "ScriptObject":            # c10d ops: boxed ProcessGroup
                try:
                    return self.names.get(dist.ProcessGroup.unbox(a).group_name, "other")
                except (RuntimeError, TypeError):
                    continue
        return "other"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(issubclass(t, DTensor) for t in types):
            # Let DTensor run first (as CommDebugMode does): the collectives it issues to
            # redistribute operands (e.g. a Partial gradient meeting a Replicate parameter in
            # the optimizer) then come back through this mode on plain tensors and are counted.
            return NotImplemented
        namespace = func.namespace
        if namespace in ("c10d", "_c10d_functional"):
            kind = _KINDS.get(func._opname)
            if kind:
                key = f"{kind}@{self._group(args)}"
                self.counts[key] += 1
                self.bytes[key] += message_bytes(kind, namespace, args)
        return func(*args, **(kwargs or {}))
