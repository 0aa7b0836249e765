"""Expert parallelism in the simulator: a MoE layer's all-to-alls as rows of the layer (they
block it: exposed), and the routing imbalance its compute is scaled by.

Formulas and the imbalance assumption are ``planner.cost.ep``'s; which exchanges a layer makes
is its family's (``Family.ep_messages``); the ep groups' links are ``planner.topology``'s.
"""
from __future__ import annotations

from planner.cost import ep as ep_cost
from planner.cost.precision import ELEMENT_BYTES


def load(run, ep: int) -> float:
    """The busiest ep rank's tokens over the mean (1 without expert parallelism)."""
    if ep == 1:
        return 1.0
    return ep_cost.load_factor(run.model, run.moe_load_factor)


def layer_collectives(run, family, split, comm, layer: int, load_factor: float):
    """(forward s, backward s, ((phase, name, group, bytes, count), ...) per micro-batch) of
    decoder layer ``layer`` under ``split.ep`` > 1."""
    spec = run.model
    tokens = split.microbatch_size * spec.seq_len / split.cp
    f = b = 0.0
    out: tuple = ()
    for phase, name, size in family.ep_messages(spec, layer, tokens, ELEMENT_BYTES[run.dtype],
                                                load_factor):
        t = comm(name, size, "ep")
        if phase == "forward":
            f += t
        else:
            b += t
        out += ((phase, name, "ep", size, 1),)
    return f, b, out
