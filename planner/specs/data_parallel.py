"""How data-parallel replicas combine gradients (``DataParallel``, one part of a
``planner.specs.layout.Layout``): ZeRO stage, all-reduce or parameter server, compression
(DDP hooks or exchanges after backward), staleness, local SGD, offload.
"""
from __future__ import annotations

from dataclasses import dataclass

from planner.errors import PlannerError
from planner.specs.common import Serde, choice

DP_COMM = ("all_reduce", "parameter_server")
# DDP communication hooks (fp16, bf16, powersgd) and the exchanges after backward that
# ``planner.cost.gradcomp`` defines (topk, randk, qsgd, sign).
HOOK_COMPRESSION = ("fp16", "bf16", "powersgd")
EXCHANGE_COMPRESSION = ("topk", "randk", "qsgd", "sign")
COMPRESSION = ("none", *HOOK_COMPRESSION, *EXCHANGE_COMPRESSION)
QSGD_BITS = (2, 4, 8, 32)       # 32: no quantization (the gradient's own values)
OUTER_OPTIMIZERS = ("none", "nesterov")

@dataclass(frozen=True)
class DataParallel(Serde):
    """How the dp replicas combine gradients: ZeRO stage, all-reduce or parameter server
    (``ps_shards`` servers), gradient compression (``powersgd_rank`` for PowerSGD,
    ``compression_ratio`` k/n for topk/randk, ``bits`` for qsgd/sign), and the updates that are
    not synchronous every step: a parameter server's ``staleness`` bound s (0: synchronous) and
    local SGD's period H (``local_sgd_period``, 0: off) with an optional ``outer_optimizer``
    (DiLoCo's Nesterov step). ``offload``: FSDP2's ``CPUOffloadPolicy`` -- the sharded
    parameters, their gradients and the optimizer state live in host memory and the optimizer
    steps on the host (ZeRO-3: with ZeRO-2's parameters kept gathered between forward and
    backward it would save little). Fields after ``powersgd_rank`` were added after layout
    version 1 and stay out of fingerprints at their defaults (``Layout.identity``)."""
    zero: int = 0
    comm: str = "all_reduce"
    ps_shards: int = 0
    compression: str = "none"
    powersgd_rank: int = 0
    compression_ratio: float = 0.0
    bits: int = 0
    staleness: int = 0
    local_sgd_period: int = 0
    outer_optimizer: str = "none"
    offload: bool = False

    def __post_init__(self):
        if self.zero not in (0, 1, 2, 3):
            raise PlannerError(f"zero must be 0, 1, 2 or 3, got {self.zero}")
        choice("dp_comm", self.comm, DP_COMM)
        choice("compression", self.compression, COMPRESSION)
        if self.compression == "powersgd" and self.powersgd_rank < 1:
            raise PlannerError(f"compression powersgd needs powersgd_rank >= 1, "
                               f"got {self.powersgd_rank}")
        if self.ps_shards < 0:
            raise PlannerError(f"ps_shards must be >= 0, got {self.ps_shards}")
        self._check_compression()
        self._check_schedule_of_updates()
        if self.offload and self.zero != 3:
            raise PlannerError(f"offload is FSDP2's CPUOffloadPolicy: needs zero 3, got "
                               f"zero {self.zero}")

    def _check_compression(self) -> None:
        kind, ratio, bits = self.compression, self.compression_ratio, self.bits
        sparse = kind in ("topk", "randk")
        if sparse and not (0.0 < ratio <= 1.0):     # also refuses NaN
            raise PlannerError(f"compression {kind} needs 0 < compression_ratio <= 1 (the "
                               f"share k/n of gradient values sent), got {ratio}")
        if not sparse and ratio != 0.0:
            raise PlannerError(f"compression_ratio applies to topk and randk only; got "
                               f"{ratio} with compression {kind}")
        if kind == "qsgd" and bits not in QSGD_BITS:
            raise PlannerError(f"compression qsgd needs bits in {', '.join(map(str, QSGD_BITS))}"
                               f" (32: unquantized), got {bits}")
        if kind == "sign" and bits != 1:
            raise PlannerError(f"compression sign sends 1 bit per value: needs bits 1, "
                               f"got {bits}")
        if kind not in ("qsgd", "sign") and bits != 0:
            raise PlannerError(f"bits applies to qsgd and sign only; got {bits} with "
                               f"compression {kind}")

    def _check_schedule_of_updates(self) -> None:
        if self.staleness < 0:
            raise PlannerError(f"staleness must be >= 0, got {self.staleness}")
        if self.staleness and not self.parameter_server:
            raise PlannerError(f"staleness {self.staleness} bounds a parameter server's "
                               f"workers: needs dp_comm parameter_server, got {self.comm}")
        if self.local_sgd_period < 0:
            raise PlannerError(f"local_sgd_period must be >= 0 (0: off), got "
                               f"{self.local_sgd_period}")
        choice("outer_optimizer", self.outer_optimizer, OUTER_OPTIMIZERS)
        if self.outer_optimizer != "none" and self.local_sgd_period < 1:
            raise PlannerError(f"outer_optimizer {self.outer_optimizer} is local SGD's outer "
                               f"step: needs local_sgd_period >= 1, got {self.local_sgd_period}")

    @property
    def parameter_server(self) -> bool:
        return self.comm == "parameter_server"

    @property
    def exchange(self) -> bool:
        """Gradients go out compressed after the backward pass (``EXCHANGE_COMPRESSION``)."""
        return self.compression in EXCHANGE_COMPRESSION

    @property
    def local_sgd(self) -> bool:
        return self.local_sgd_period >= 1

    def describe_comm(self) -> list[str]:
        """The words ``Layout.describe`` uses for this strategy's communication."""
        parts = []
        if self.parameter_server:
            parts.append(f"ps{self.ps_shards}" + (f"(s={self.staleness})" if self.staleness
                                                  else ""))
        kind = self.compression
        if kind == "powersgd":
            parts.append(f"powersgd(r={self.powersgd_rank})")
        elif kind in ("topk", "randk"):
            parts.append(f"{kind}({self.compression_ratio:g})")
        elif kind == "qsgd":
            parts.append(f"qsgd({self.bits}b)")
        elif kind != "none":
            parts.append(kind)
        if self.local_sgd:
            parts.append(f"local(H={self.local_sgd_period}"
                         + (f",{self.outer_optimizer})" if self.outer_optimizer != "none"
                            else ")"))
        return parts
