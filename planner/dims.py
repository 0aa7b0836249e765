"""The parallel dimensions of a layout, by name: one object, one validation.

``ParallelDims`` holds the degree of every dimension (torchtitan's ``ParallelDims``, picotron's
process-group manager). Everything that needs degrees takes this object, never positional
``dp, pp, tp`` arguments, so adding a dimension means adding a field here and an axis in
``GRID_ORDER``, not editing every signature.

``GRID_ORDER`` is the order of the one rank grid (``planner.grid``), slowest first: tensor
parallel fastest so that its peers are adjacent ranks on one node (Megatron-LM, Narayanan et al.
SC'21 sec. 3.3), then pipeline, then context parallel, then data parallel. The world size is
``dp * cp * pp * tp``. The executor's ``DeviceMesh`` uses the same names in the same order.

Context parallelism (``cp``) sits next to data parallelism because both split the data (dp the
batch's rows, cp each row's positions) and their ranks hold the same parameters: gradients are
reduced over ``dp * cp`` ranks (torchtitan's "fsdp"/"loss" mesh, ``dp_shard * cp``), and with dp
and cp adjacent that group is one strided run of ranks (``REDUCE_DIM``, "dp_cp"). The price:
with pp > 1, cp peers sit pp*tp ranks apart (Llama 3 orders [TP, CP, PP, DP], cp inside pp);
the planner prices the links they cross.

Expert parallelism (``ep``) is not a factor of the world size: it borrows ranks from ``dp * cp``
(torchtitan: ep divides ``dp_shard * cp``). Those ranks split into ``edp = dp * cp / ep`` groups
of ``ep`` consecutive ones (the fastest part of the dp-cp run), and each ep group shards the
experts; the ``edp`` ranks holding the same experts reduce their gradients. Expert weights are
also split over tp as every other MLP (expert-tensor parallel = tp). Torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from planner.errors import PlannerError

GRID_ORDER = ("dp", "cp", "pp", "tp")
# Groups that are runs of the grid rather than one axis: each is (size, stride) in rank space
# (``planner.grid.RankGrid``): "dp_cp" the dp*cp ranks sharing parameters (gradient
# reduction when cp > 1), "ep" and "edp" its split into expert-parallel groups and the
# replicas of each expert shard.
DERIVED = ("dp_cp", "ep", "edp")
REDUCE_DIM = "dp_cp"


@dataclass(frozen=True)
class ParallelDims:
    """Degrees of the parallel dimensions; ``dp * cp * pp * tp`` is the world size and ``ep``
    divides ``dp * cp`` (module docstring)."""
    dp: int = 1
    tp: int = 1
    pp: int = 1
    cp: int = 1
    ep: int = 1

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PlannerError(f"{f.name} must be an integer >= 1, got {value!r}")
        if (self.dp * self.cp) % self.ep:
            raise PlannerError(
                f"ep({self.ep}) must divide dp({self.dp}) * cp({self.cp}) = {self.dp * self.cp}: "
                f"expert parallelism borrows its ranks from data and context parallelism "
                f"(dp * cp = edp * ep; world = dp * cp * pp * tp)")
        # read in the search's inner loops: plain attributes, not fields (serde, eq and hash
        # see only the degrees)
        object.__setattr__(self, "replicas", self.dp * self.cp)
        object.__setattr__(self, "edp", self.dp * self.cp // self.ep)
        object.__setattr__(self, "reduce_dim", self.canonical(REDUCE_DIM))

    @property
    def names(self) -> tuple[str, ...]:
        return GRID_ORDER

    def degree(self, name: str) -> int:
        if name in GRID_ORDER or name == "ep":
            return getattr(self, name)
        if name == "dp_cp":
            return self.dp * self.cp
        if name == "edp":
            return self.edp
        raise PlannerError(f"unknown parallel dimension {name!r}; valid: "
                           f"{', '.join(GRID_ORDER + DERIVED)}")

    def degrees(self) -> dict[str, int]:
        """Every grid axis's degree in grid order (slowest first)."""
        return {name: getattr(self, name) for name in GRID_ORDER}

    @property
    def world_size(self) -> int:
        return self.dp * self.cp * self.pp * self.tp

    # Set in __post_init__: ``replicas`` = dp * cp, the ranks that hold the same (non-expert)
    # parameters and reduce their gradients; ``reduce_dim``, the name of that group
    # (``canonical("dp_cp")``: "dp" without context parallelism, as always); ``edp`` = dp * cp
    # / ep, the replicas of each expert shard.

    def canonical(self, name: str) -> str:
        """The name a group goes by: groups of the same ranks are one group (torch's device
        mesh reuses its process group), named by the first of dp, cp, pp, tp, dp_cp, ep, edp
        that has those ranks. In rank space dp_cp is the cp group when dp is 1 and the dp
        group when cp is 1; ep (the first ep ranks of the dp-cp run) is the cp group when
        ep == cp and the whole run when ep == dp * cp; edp (every ep-th of the run) is then
        the dp group, or the run when ep is 1."""
        dp, cp, ep = self.dp, self.cp, self.ep
        if name == REDUCE_DIM:
            return "dp" if cp == 1 else "cp" if dp == 1 else REDUCE_DIM
        if name == "ep":
            return "cp" if ep == cp else self.canonical(REDUCE_DIM) if ep == dp * cp else "ep"
        if name == "edp":
            return "dp" if ep == cp else self.canonical(REDUCE_DIM) if ep == 1 else "edp"
        return name

    @property
    def dp_enabled(self) -> bool:
        return self.dp > 1

    @property
    def tp_enabled(self) -> bool:
        return self.tp > 1

    @property
    def pp_enabled(self) -> bool:
        return self.pp > 1

    def arithmetic(self) -> str:
        """``dp(2) * tp(4) * pp(2) = 16``: the product, shown, for error messages (cp when it
        is used)."""
        names = ("dp", "tp", "pp") + (("cp",) if self.cp > 1 else ())
        terms = " * ".join(f"{n}({getattr(self, n)})" for n in names)
        return f"{terms} = {self.world_size}"

    def check_world(self, world_size: int, what: str = "world_size") -> None:
        """One-line error unless the degrees multiply to ``world_size``."""
        if self.world_size != world_size:
            raise PlannerError(f"{self.arithmetic()} != {what}({world_size})")

    def describe(self) -> str:
        out = " ".join(f"{n}={getattr(self, n)}" for n in ("dp", "tp", "pp"))
        for n in ("cp", "ep"):
            if getattr(self, n) > 1:
                out += f" {n}={getattr(self, n)}"
        return out
