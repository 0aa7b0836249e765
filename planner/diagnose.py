"""Why a search found nothing: which rule removed every layout, and how many each removed.

When ``planner.search`` enumerates no layout, ``planner plan`` must say what stood in the way,
as ``planner simulate`` does for one layout (``tp(8) must divide num_heads(12)``). This walks
the same space in the same order as the search (``planner.search.space``): the tensor-parallel
degrees, the pipeline depths, the data-parallel size against the batch, the micro-batch sizes
and schedules, and the combinations the executor refuses. Every rule it reports is asked of
the module that owns it (the family's ``tp_problem``, the schedule's ``check``,
``planner.rules.model_refuses``); nothing here decides what may run. Run only after a search
came back empty, so it costs nothing on the normal path.
"""
from __future__ import annotations

from collections import Counter

from planner import families, rules, schedules
from planner.search.space import Space, divisors, dims_of
from planner.specs import Layout, Pipeline, TensorParallel


class _Tally:
    """Removed layouts (or layout groups) per rule, with the first message of each."""

    def __init__(self):
        self.count: Counter = Counter()
        self.example: dict[tuple[str, str], str] = {}

    def drop(self, rule: str, message: str, unit: str = "layout") -> None:
        """``unit``: what one removal takes out (a tp degree, a (tp, pp) split, a layout)."""
        self.count[(rule, unit)] += 1
        self.example.setdefault((rule, unit), message)

    def text(self) -> str:
        return "; ".join(f"{rule} removed {n} {unit}{'s' if n > 1 else ''} (e.g. "
                         f"{self.example[(rule, unit)]})"
                         for (rule, unit), n in self.count.most_common())


def _schedules(pp: int, m: int, nblocks: int, space: Space, tally: _Tally) -> list:
    """(schedule, v) pairs of ``schedule_options``, tallying why the others are left out."""
    out = []
    if pp == 1:
        kind = schedules.get(space.schedule or "1f1b")
        pairs = [(kind, space.virtual_stages or kind.min_virtual_stages)]
    else:
        pairs = [(kind, v) for kind in schedules.SCHEDULES.values()
                 if (space.schedule is None and kind.searched) or kind.name == space.schedule
                 for v in kind.search_virtual_stages(space.max_virtual_stages)
                 if space.virtual_stages is None or v == space.virtual_stages]
    for kind, v in pairs:
        if pp * v > nblocks:
            tally.drop("chunks must not outnumber the model's blocks",
                       f"pp({pp}) x virtual_stages({v}) = {pp * v} chunks > {nblocks} blocks",
                       "schedule choice")
            continue
        problem = kind.check(pp, v, m)
        if problem:
            tally.drop(f"the {kind.name} schedule's rule", problem, "schedule choice")
            continue
        out.append((kind.name, v))
    return out


def _leaves(spec, dp: int, tp: int, pp: int, m: int, name: str, v: int, space: Space,
            tally: _Tally) -> int:
    """Layouts of one shape that the executor runs; tally those it refuses."""
    zeros = [space.zero] if space.zero is not None else ([0, 1, 2, 3] if dp > 1 else [0])
    sp = bool(space.sequence_parallel)     # searched: False stands for both
    found = 0
    for zero in zeros:
        probe = Layout(dims=dims_of(dp, tp, pp), num_microbatches=m, data=space.data(dp, zero),
                       pipeline=Pipeline(schedule=name, virtual_stages=v),
                       tensor=TensorParallel(sequence_parallel=sp))
        problem = rules.model_refuses(spec, probe)
        if problem:
            tally.drop("the executor's rules (planner/rules.py)", problem)
        else:
            found += 1
    return found


def why_nothing(spec, space: Space, num_devices: int, global_batch: int,
                devices_per_node: int) -> str:
    """One sentence: the rules that removed every layout of the space, with counts."""
    family, nblocks, tally = families.of(spec), spec.num_blocks, _Tally()
    found = 0
    for tp in divisors(num_devices):
        splits = [(pp, num_devices // (tp * pp)) for pp in divisors(num_devices // tp)
                  if (space.pp is None or pp == space.pp)
                  and (space.dp is None or num_devices // (tp * pp) == space.dp)]
        if (space.tp is not None and tp != space.tp) or not splits:
            continue                    # excluded by the flags that fix dimensions
        problem = family.tp_problem(spec, tp, False) if tp > 1 else ""
        if problem:
            tally.drop("tensor-parallel divisibility", problem, "tp degree")
            continue
        if space.sequence_parallel:
            problem = ("sequence parallelism splits activations over tp ranks: tp(1) has none"
                       if tp == 1 else family.tp_problem(spec, tp, True))
            if problem:
                tally.drop("--sequence-parallel's divisibility", problem, "tp degree")
                continue
        if tp > devices_per_node and not space.tp_across_nodes and space.tp is None:
            tally.drop("tp within one node", f"tp({tp}) > {devices_per_node} devices per node "
                                              "(--tp-across-nodes allows it)", "tp degree")
            continue
        for pp, dp in splits:
            if pp > nblocks:
                tally.drop("pp at most the model's blocks", f"pp({pp}) > {nblocks} blocks",
                           "(tp, pp) split")
                continue
            if global_batch % dp:
                tally.drop("dp must divide the global batch", f"global batch {global_batch} % "
                           f"dp({dp}) = {global_batch % dp}", "(tp, pp) split")
                continue
            for b in divisors(global_batch // dp):
                if space.microbatch_size is not None and b != space.microbatch_size:
                    continue
                m = global_batch // (dp * b)
                for name, v in _schedules(pp, m, nblocks, space, tally):
                    found += _leaves(spec, dp, tp, pp, m, name, v, space, tally)
            if space.microbatch_size is not None and (global_batch // dp) % space.microbatch_size:
                tally.drop("the micro-batch must divide the per-replica batch",
                           f"--microbatch-size {space.microbatch_size} does not divide "
                           f"{global_batch} / dp({dp}) = {global_batch // dp}",
                           "(tp, pp) split")
    head = f"no layout of {num_devices} devices for global batch {global_batch}"
    if found:
        return head + " was left by the search"  # not expected: the search enumerates these
    if not tally.count:
        return (f"{head}: the fixed dimensions (--dp/--tp/--pp) leave no split of "
                f"{num_devices} devices")
    return f"{head}: {tally.text()}"
