"""Context parallelism in the simulator: a decoder layer's ring transfers (and its other cp
collectives) as rows of the layer, on the compute stream's critical path once not hidden.

Formulas are ``planner.cost.cp``'s; the layer's compute already holds 1/cp of its tokens (the
family's roofline at ``Shape.cp``, or a profile's time / cp: ``planner.sim.blocks``).
"""
from __future__ import annotations

from planner.cost import cp as cp_cost
from planner.cost.precision import ELEMENT_BYTES


def layer_collectives(run, family, split, comm, core_s: float, layer: int):
    """(forward exposed s, backward exposed s, ((phase, name, group, bytes, count), ...) per
    micro-batch) of decoder layer ``layer`` under ``split.cp`` > 1; ``core_s``: the rank's
    attention-core forward time (0 if unknown: nothing hidden)."""
    spec, cp, b = run.model, split.cp, split.microbatch_size
    e = ELEMENT_BYTES[run.dtype]
    nbytes = cp_cost.kv_bytes(family, spec, b, split.tp, cp, e)
    t_kv = comm("send_recv", nbytes, "cp")
    f, bw = cp_cost.ring_exposed(t_kv, core_s, cp)
    nf, nb = cp_cost.ring_counts(cp)
    out = (("forward", "send_recv", "cp", nbytes, nf), ("backward", "send_recv", "cp", nbytes, nb))
    for phase, name, size in family.cp_messages(spec, layer, b * spec.seq_len):
        t = comm(name, size, "cp")
        if phase == "forward":
            f += t
        else:
            bw += t
        out += ((phase, name, "cp", size, 1),)
    return f, bw, out
