"""One model chunk's costs per micro-batch on one rank (``Chunk``), summed in O(1) from a
``planner.sim.blocks.RowsBundle``'s prefix sums; the per-block details the data-parallel hooks
read are built on first use.
"""
from __future__ import annotations

from planner.sim.blocks import RowsBundle


class Chunk:
    """One model chunk's costs per micro-batch on one rank: sums over its blocks in O(1) from
    the bundle's prefix sums; the per-block details only the data-parallel hooks read are built
    on first use."""
    __slots__ = ("blocks", "rows", "split_backward", "param_bytes_each", "grad_bytes_each",
                 "send_s", "send_bytes", "f_comp", "f_tp", "b_comp", "b_rec", "b_tp", "w_s",
                 "i_comp", "params", "act_bytes", "f_s", "b_s", "i_s", "_detail", "cp_s",
                 "ep_s", "expert_params")

    def __init__(self, blocks: range, bundle: RowsBundle, split_backward: bool,
                 param_bytes_each: float, grad_bytes_each: float):
        i, j = blocks.start, blocks.stop
        rows = bundle.rows
        self.blocks, self.rows, self.split_backward = blocks, rows, split_backward
        self.param_bytes_each, self.grad_bytes_each = param_bytes_each, grad_bytes_each
        self.send_s = 0.0                 # boundary transfer after this chunk (each way)
        self.send_bytes = rows[j - 1].send_bytes
        # sums over blocks i..j-1 from the prefix sums (inlined: thousands of chunks a search)
        f, f_tp, b, rec, b_tp, w, params, act, xp = bundle.prefixes()
        self.f_comp = f[j] - f[i]
        self.f_tp = f_tp[j] - f_tp[i]
        self.b_comp = b[j] - b[i]
        self.b_rec = rec[j] - rec[i]
        self.b_tp = b_tp[j] - b_tp[i]
        self.w_s = w[j] - w[i]
        self.i_comp = self.b_comp - self.w_s
        self.params = params[j] - params[i]
        self.act_bytes = act[j] - act[i]
        if xp is None:
            self.cp_s = self.ep_s = self.expert_params = 0.0
        else:
            self.cp_s, self.ep_s = xp[0][j] - xp[0][i], xp[1][j] - xp[1][i]
            self.expert_params = xp[2][j] - xp[2][i]
        self.f_s = self.f_comp + self.f_tp
        self.b_s = self.b_rec + self.b_comp + self.b_tp
        self.i_s = self.b_rec + self.i_comp + self.b_tp
        self._detail = None

    def _build(self) -> dict:
        b_off, w_off, grads, bblk, pbytes, egrads, epbytes = [], [], [], [], [], [], []
        tb = tw = 0.0
        for x in reversed(self.blocks):
            r = self.rows[x]
            step = r.recompute_s + r.backward_tp_s + (
                r.backward_s * (1.0 - r.weight_share) if self.split_backward else r.backward_s)
            tb += step
            tw += r.backward_s * r.weight_share
            b_off.append(tb)
            w_off.append(tw)
            bblk.append(step)
            grads.append((r.params - r.expert_params) * self.grad_bytes_each)
            pbytes.append((r.params - r.expert_params) * self.param_bytes_each)
            egrads.append(r.expert_params * self.grad_bytes_each)
            epbytes.append(r.expert_params * self.param_bytes_each)
        self._detail = {
            "b_offsets": tuple(b_off), "w_offsets": tuple(w_off), "grad_bytes_rev": tuple(grads),
            "f_block_s": tuple(self.rows[x].forward_s + self.rows[x].forward_tp_s
                               for x in self.blocks),
            "b_block_s": tuple(bblk), "param_bytes_blocks": tuple(reversed(pbytes)),
            "expert_grad_bytes_rev": tuple(egrads),
            "expert_param_bytes_blocks": tuple(reversed(epbytes))}
        return self._detail

    def detail(self, name: str):
        """Per block, built on first use: ``b_offsets``/``w_offsets`` (end offsets inside B (or
        I) and W, backward order), ``grad_bytes_rev`` (backward order), ``f_block_s`` (forward
        durations, forward order), ``b_block_s`` (backward or I durations, backward order),
        ``param_bytes_blocks`` (forward order); gradient and parameter bytes exclude the
        expert shards (ep > 1), which are ``expert_grad_bytes_rev`` and
        ``expert_param_bytes_blocks`` (reduced over edp, not with the rest)."""
        return (self._detail or self._build())[name]

