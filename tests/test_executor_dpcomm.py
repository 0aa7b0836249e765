"""Compressed exchanges, the stale parameter server and local SGD train as their definitions say.

Where a scheme reduces to synchronous training (top-k and random-k with k = n, 32-bit QSGD,
local SGD with H = 1 under SGD) the run must equal ``executor.reference`` (one process, float64,
rtol 1e-10). Otherwise it must equal a reference written here that runs the p replicas in one
process by the scheme's definition (the QSGD and sign quantizers of ``test_dpcomm``, written
from the papers, with the seeds of ``planner.cost.gradcomp.stream_seed``). Every run also
checks that the bytes rank 0 put into dp collectives in its last step equal the planner's count.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from executor.data import dp_rows, make_data
from executor.optim import make_optimizer
from executor.parallel.localsgd import OUTER_LR, OUTER_MOMENTUM
from executor_helpers import (ATOL, GPT, RTOL, assert_matches, check_exact, load_params,
                              make_plan, run_plan)
from planner.cost import gradcomp as fmt
from planner.models.build import build_model
from test_dpcomm import gpt_blocks, predicted_dp_bytes, qsgd_reference, sign_reference  # noqa: F401

pytestmark = pytest.mark.slow

MB = dict(microbatch_size=2, num_microbatches=2)
STEPS = 5


def check_bytes(plan, metrics, blocks) -> None:
    counts, total = predicted_dp_bytes(plan, blocks)
    measured = {k: v for k, v in metrics.collective_bytes.items() if k.endswith("@dp")}
    assert sum(measured.values()) == total, (measured, counts, total)


# -- schemes that reduce to synchronous training ---------------------------------------------
EXACT = {
    "topk k=n": (dict(dp=2, compression="topk", compression_ratio=1.0, **MB), "adam",
                 {"all_gather@dp": 1}),
    "randk k=n": (dict(dp=2, compression="randk", compression_ratio=1.0, **MB), "adam",
                  {"all_reduce@dp": 1}),
    "qsgd 32 bits": (dict(dp=2, compression="qsgd", bits=32, **MB), "adam",
                     {"all_gather@dp": 1}),
    "local sgd H=1 (sgd)": (dict(dp=2, local_sgd_period=1, **MB), "sgd-momentum",
                            {"all_reduce@dp": 1}),
}


@pytest.mark.parametrize("name", EXACT)
def test_reduces_to_synchronous(name, tmp_path, gpt_blocks):
    layout, optimizer, collectives = EXACT[name]
    plan = make_plan(optimizer=optimizer, lr=0.05 if optimizer.startswith("sgd") else 1e-2,
                     **layout)
    metrics = check_exact(plan, tmp_path, steps=STEPS, collectives=collectives)
    check_bytes(plan, metrics, gpt_blocks)


WORLD4 = {
    "topk k=n x pp-zbv": dict(dp=2, pp=2, schedule="zbv", virtual_stages=2,
                              compression="topk", compression_ratio=1.0, **MB),
    "local sgd H=1 x pp": dict(dp=2, pp=2, schedule="1f1b", local_sgd_period=1, **MB),
}


@pytest.mark.parametrize("name", WORLD4)
def test_composes_with_pipelining(name, tmp_path):
    check_exact(make_plan(optimizer="sgd", lr=0.05, **WORLD4[name]), tmp_path, steps=STEPS)


# -- references by definition -----------------------------------------------------------------
class Replicas:
    """p data-parallel ranks in one process: each one's gradient of its own rows."""

    def __init__(self, plan):
        self.plan, self.p = plan, plan.layout.dp
        self.model = build_model(plan.model, seed=plan.seed, dtype=torch.float64)
        self.data = make_data(self.model, plan)

    def grad(self, model, step: int, rank: int) -> tuple[torch.Tensor, float]:
        """(flat gradient, loss) of ``model`` on rank ``rank``'s rows of step ``step``."""
        x, y = self.data.rows(step, *dp_rows(rank, self.plan.layout))
        model.zero_grad(set_to_none=True)
        loss = model.loss(model(x), y)
        loss.backward()
        return torch.cat([q.grad.reshape(-1) for q in model.parameters()]), float(loss.detach())


def set_flat(params, flat: torch.Tensor, grad: bool) -> None:
    i = 0
    for q in params:
        chunk = flat[i:i + q.numel()].view_as(q).clone()
        if grad:
            q.grad = chunk
        else:
            q.data.copy_(chunk)
        i += q.numel()


def compressed_reference(plan, steps: int):
    """Synchronous training whose gradient is the mean over ranks of each rank's decoded
    message (``planner.cost.gradcomp``): top-k and sign with error feedback, QSGD without."""
    reps, d = Replicas(plan), plan.layout.data
    model = reps.model
    opt = make_optimizer(plan.optimizer, model.parameters(), plan.learning_rate)
    residual = [None] * reps.p
    losses = []
    for t in range(steps):
        sent, step_losses = [], []
        for i in range(reps.p):
            g, loss = reps.grad(model, t, i)
            step_losses.append(loss)
            a = g.numpy() + (residual[i] if residual[i] is not None else 0.0)
            if d.compression == "topk":
                keep = np.argsort(-np.abs(a), kind="stable")[:fmt.sparse_k(len(a),
                                                                            d.compression_ratio)]
                msg = np.zeros_like(a)
                msg[keep] = a[keep]
            elif d.compression == "sign":
                msg = sign_reference(a)
            else:
                gen = torch.Generator().manual_seed(fmt.stream_seed(plan.seed, t, 0, i))
                u = torch.rand(len(a), generator=gen, dtype=torch.float64).numpy()
                msg = qsgd_reference(a, d.bits, u)
            if d.compression in ("topk", "sign"):
                residual[i] = a - msg
            sent.append(msg)
        set_flat(list(model.parameters()), torch.from_numpy(sum(sent) / reps.p), grad=True)
        opt.step()
        losses.append(sum(step_losses) / reps.p)
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


def stale_reference(plan, steps: int):
    """theta_{t+1} = opt(theta_t, mean_i grad_i(theta_{max(0, t-s)}))."""
    reps, s = Replicas(plan), plan.layout.data.staleness
    master = reps.model
    worker = copy.deepcopy(master)
    opt = make_optimizer(plan.optimizer, master.parameters(), plan.learning_rate)
    history = [copy.deepcopy(master.state_dict())]
    losses = []
    for t in range(steps):
        worker.load_state_dict(history[max(0, t - s)])
        grads, step_losses = zip(*(reps.grad(worker, t, i) for i in range(reps.p)))
        set_flat(list(master.parameters()), sum(grads) / reps.p, grad=True)
        opt.step()
        history.append(copy.deepcopy(master.state_dict()))
        losses.append(sum(step_losses) / reps.p)
    return losses, history[steps]


def diloco_reference(plan, steps: int):
    """Each replica its own optimizer on its own rows; after every H-th step and after the last,
    the outer Nesterov step on the anchor with the mean of the replicas, all restart there."""
    reps, h = Replicas(plan), plan.layout.data.local_sgd_period
    models = [copy.deepcopy(reps.model) for _ in range(reps.p)]
    opts = [make_optimizer(plan.optimizer, m.parameters(), plan.learning_rate) for m in models]
    anchor = torch.nn.Parameter(torch.cat([q.detach().reshape(-1)
                                           for q in reps.model.parameters()]))
    outer = torch.optim.SGD([anchor], lr=OUTER_LR, momentum=OUTER_MOMENTUM, nesterov=True)
    losses = []
    for t in range(steps):
        step_losses = []
        for i, (m, o) in enumerate(zip(models, opts)):
            _, loss = reps.grad(m, t, i)
            o.step()
            step_losses.append(loss)
        losses.append(sum(step_losses) / reps.p)
        if (t + 1) % h == 0 or t == steps - 1:
            mean = sum(torch.cat([q.detach().reshape(-1) for q in m.parameters()])
                       for m in models) / reps.p
            anchor.grad = anchor.detach() - mean
            outer.step()
            for m in models:
                set_flat(list(m.parameters()), anchor.detach(), grad=False)
    return losses, {k: v.detach().clone() for k, v in models[0].state_dict().items()}


BY_DEFINITION = {
    "qsgd 4 bits": (dict(dp=2, compression="qsgd", bits=4, **MB), compressed_reference,
                    {"all_gather@dp": 1}),
    "sign + error feedback": (dict(dp=2, compression="sign", bits=1, **MB),
                              compressed_reference, {"all_gather@dp": 1}),
    "topk 5% + error feedback": (dict(dp=2, compression="topk", compression_ratio=0.05, **MB),
                                 compressed_reference, {"all_gather@dp": 1}),
    "stale server s=2": (dict(dp=2, dp_comm="parameter_server", ps_shards=1, staleness=2, **MB),
                         stale_reference, {"send@dp": 1, "recv@dp": 1}),
    # both ranks serve half: each pushes to the other server and pulls from it
    "stale servers k=2 s=1": (dict(dp=2, dp_comm="parameter_server", ps_shards=2, staleness=1,
                                   **MB), stale_reference, {"send@dp": 2, "recv@dp": 2}),
    # 5 steps, H = 3: synchronised after step 3 and after the last
    "diloco H=3": (dict(dp=2, local_sgd_period=3, outer_optimizer="nesterov", **MB),
                   diloco_reference, {}),
}


@pytest.mark.parametrize("name", BY_DEFINITION)
def test_trains_as_defined(name, tmp_path, gpt_blocks):
    layout, reference, collectives = BY_DEFINITION[name]
    plan = make_plan(**layout)
    proc, metrics, params_dir = run_plan(plan, tmp_path, steps=STEPS,
                                         extra=["--count-collectives"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref_losses, ref_state = reference(plan, STEPS)
    assert_matches(metrics.losses, load_params(params_dir), ref_losses, ref_state,
                   RTOL["float64"], ATOL["float64"])
    assert metrics.collectives == collectives
    # the last step of H = 3 does not synchronise: nothing to count. At p = 2 rank 0 takes
    # part in every transfer of the group (as server of its shard, as worker of the other's)
    if collectives:
        check_bytes(plan, metrics, gpt_blocks)
