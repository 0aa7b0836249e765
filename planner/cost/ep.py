"""Expert parallelism: routing imbalance and the all-to-all exchanges of a MoE layer.

The executor (``planner.families.moe.model.Experts._dispatched``) moves each routed copy of a
token to the rank holding its expert and back: per MoE layer and micro-batch, forward an
all-to-all of the per-expert counts, the dispatch and the combine, backward the reverse of the
two data exchanges (``Family.ep_messages``). Each rank sends its tokens' k routed copies of h
values (``planner.families.moe.routed_elements``) and keeps the 1/ep bound for its own experts:
an all-to-all of that total (pairwise exchange, Thakur et al. 2005 sec. 4.6; the two-level form
where the ep group spans nodes, ``planner.cost.comm``). The exchanges block the layer (nothing
to overlap them with in the executor), so their time is exposed.

Routing imbalance. Expert parallelism makes every rank wait for the busiest one: the rank whose
experts received the most tokens computes longest and receives the most in the all-to-all. The
planner takes the busiest rank's tokens as ``load_factor`` times the mean (applied to the
experts' GEMMs, ``planner.cost.roofline.Shape.load``, and to the exchanged bytes):

- with a capacity factor cf >= 1, an expert takes at most cf times its mean share, so the
  busiest rank holds at most cf times the mean (GShard's capacity, Lepikhin et al. 2020, sec.
  2.2): load = cf, the worst case the cap allows (no credit for cf < 1, whose dropped tokens
  the compute model does not discount either);
- dropless routing has no cap: an ASSUMED 1.2, the imbalance a router trained with a
  load-balancing loss typically leaves between ep ranks of several experts each (the loss
  drives the mean of f_i * P_i, not the maximum). Not measured here; ``--moe-load-factor``
  replaces it with a measured max-over-mean.
Without expert parallelism every rank runs all experts on its own tokens, so imbalance does not
stall any rank (load 1).
"""
from __future__ import annotations

DROPLESS_LOAD_FACTOR = 1.2


def load_factor(spec, measured: float = 0.0) -> float:
    """Busiest ep rank's tokens / the mean (module docstring); ``measured`` > 0 wins."""
    if measured > 0:
        return measured
    cf = spec.moe_capacity_factor
    return max(1.0, cf) if cf else DROPLESS_LOAD_FACTOR
