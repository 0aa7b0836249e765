"""Clusters: devices, link levels, explicit node links, measured collective fits, and node
groups of other device kinds (mixed clusters)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

from planner.errors import PlannerError
from planner.specs.common import Serde, choice, finite, fingerprint, positive

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class DeviceSpec(Serde):
    """One accelerator (or one CPU rank). ``*_source`` says datasheet, measured or fitted."""
    name: str
    memory_bytes: int
    peak_flops_per_s: dict[str, float]          # dtype -> dense peak
    memory_bandwidth_bytes_per_s: float
    compute_efficiency: float                   # achieved / peak on large matmuls
    peak_source: str = "datasheet"
    efficiency_source: str = "assumed"
    model_profile: str = ""                      # path of a device-model profile (issue 7)
    # Memory no tensor of ours can use: runtime context, communication buffers, allocator
    # fragmentation. Plans must fit in memory_bytes - reserved_memory_bytes.
    reserved_memory_bytes: int = 0
    # The host side, for offload (FSDP2's CPUOffloadPolicy): the device-host link per
    # direction (PCIe), and this device's share of the host's DRAM bandwidth (the optimizer
    # step then runs on the host); 0: unknown, offload cannot be planned.
    host_link_bytes_per_s: float = 0.0
    host_memory_bandwidth_bytes_per_s: float = 0.0
    host_memory_bytes: int = 0          # this device's share of host memory (what offload fills)
    host_source: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def usable_memory_bytes(self) -> int:
        return self.memory_bytes - self.reserved_memory_bytes

    @property
    def offload_known(self) -> bool:
        """Whether offload can be planned here: host link, host DRAM bandwidth and capacity."""
        return (self.host_link_bytes_per_s > 0 and self.host_memory_bandwidth_bytes_per_s > 0
                and self.host_memory_bytes > 0)

    def __post_init__(self):
        positive("memory_bytes", self.memory_bytes)
        if not 0 < self.compute_efficiency <= 1:   # NaN fails this comparison too
            raise PlannerError(f"compute_efficiency must be in (0, 1], got {self.compute_efficiency}")
        finite("memory_bandwidth_bytes_per_s", self.memory_bandwidth_bytes_per_s, 0, True)
        for dtype, peak in self.peak_flops_per_s.items():
            finite(f"peak_flops_per_s.{dtype}", peak, 0, True)
        if not 0 <= self.reserved_memory_bytes < self.memory_bytes:
            raise PlannerError(f"reserved_memory_bytes must be in [0, memory_bytes("
                               f"{self.memory_bytes})), got {self.reserved_memory_bytes}")
        for name in ("host_link_bytes_per_s", "host_memory_bandwidth_bytes_per_s",
                     "host_memory_bytes"):
            value = getattr(self, name)
            if not value >= 0 or value == float("inf"):
                raise PlannerError(f"{name} must be a finite number >= 0 (0: unknown), got "
                                   f"{value}")


@dataclass(frozen=True)
class LinkLevel(Serde):
    """Latency (alpha) and bandwidth (1/beta) of one level of the network, per direction.

    ``latency_s`` is paid per message step of an algorithm; ``call_latency_s`` once per
    collective call (launch and synchronisation, NCCL's tuner ``baseLat``).
    """
    name: str                      # "intra_node" | "inter_node"
    latency_s: float
    bandwidth_bytes_per_s: float
    source: str = "datasheet"      # "datasheet" | "measured" | "fitted"
    call_latency_s: float = 0.0

    def __post_init__(self):
        # finite() refuses NaN and infinities, which a plain ``< 0`` lets through.
        finite(f"link {self.name}: latency_s", self.latency_s, 0)
        finite(f"link {self.name}: call_latency_s", self.call_latency_s, 0)
        finite(f"link {self.name}: bandwidth_bytes_per_s", self.bandwidth_bytes_per_s, 0, True)


@dataclass(frozen=True)
class NodeLink(Serde):
    """An explicit node-to-node link that replaces the inter-node level for that pair.

    One link shared by every flow between the two nodes (e.g. two nodes joined by one cable).
    """
    node_a: int
    node_b: int
    latency_s: float
    bandwidth_bytes_per_s: float
    source: str = "datasheet"

    def __post_init__(self):
        if self.node_a == self.node_b or min(self.node_a, self.node_b) < 0:
            raise PlannerError(f"node link {self.node_a}-{self.node_b}: node_a and node_b must "
                               "be two different node indices >= 0")
        where = f"node link {self.node_a}-{self.node_b}"
        finite(f"{where}: latency_s", self.latency_s, 0)
        finite(f"{where}: bandwidth_bytes_per_s", self.bandwidth_bytes_per_s, 0, True)


@dataclass(frozen=True)
class NodeLevels(Serde):
    """A node whose links differ from the cluster's levels; None keeps the cluster's level.

    ``intra_node`` is each device's link to its node switch, ``inter_node`` each of the node's
    network ports (see ``Cluster.nics_per_node``).
    """
    node: int
    intra_node: LinkLevel | None = None
    inter_node: LinkLevel | None = None


@dataclass(frozen=True)
class CollectiveFit(Serde):
    """Measured medians of one collective on one link level, and the fit made of them.

    Costs inside the measured range interpolate the points (log-log); outside, the fitted
    large-message ``latency_s`` + bytes / ``bandwidth_bytes_per_s`` (alpha-beta) applies.
    """
    collective: str
    level: str
    group_size: int
    message_bytes: tuple[int, ...]
    time_s: tuple[float, ...]
    latency_s: float
    bandwidth_bytes_per_s: float
    fit_median_abs_pct_error: float

    def __post_init__(self):
        where = f"collective fit {self.collective}/{self.level}/p={self.group_size}"
        if self.level not in ("intra_node", "inter_node"):
            raise PlannerError(f"{where}: level must be intra_node or inter_node")
        if self.group_size < 2:
            raise PlannerError(f"{where}: group_size must be >= 2")
        if not self.message_bytes or len(self.message_bytes) != len(self.time_s):
            raise PlannerError(f"{where}: message_bytes ({len(self.message_bytes)}) and time_s "
                               f"({len(self.time_s)}) must be equally long and not empty")
        if min(self.message_bytes) <= 0:
            raise PlannerError(f"{where}: message_bytes must all be > 0")
        for i, t in enumerate(self.time_s):
            finite(f"{where}: time_s[{i}]", t, 0, True)
        finite(f"{where}: latency_s", self.latency_s)
        finite(f"{where}: bandwidth_bytes_per_s", self.bandwidth_bytes_per_s, 0, True)


@dataclass(frozen=True)
class NodeGroup(Serde):
    """Consecutive nodes of one device kind in a mixed cluster (``Cluster.node_groups``).

    ``intra_node`` is each device's link to its node switch and ``inter_node`` each network
    port's link to the fabric all nodes share; None keeps the cluster's level. Every node has
    the cluster's ``devices_per_node``.
    """
    num_nodes: int
    device: DeviceSpec
    intra_node: LinkLevel | None = None
    inter_node: LinkLevel | None = None
    name: str = ""                   # default: the device's name

    def __post_init__(self):
        positive("node_groups[].num_nodes", self.num_nodes)

    @property
    def label(self) -> str:
        return self.name or self.device.name


@dataclass(frozen=True)
class Cluster(Serde):
    """Nodes of identical devices; links per level; optional measured collective fits.

    A mixed cluster lists ``node_groups``: its first ``num_nodes - sum(group nodes)`` nodes are
    the default group (``device``, ``intra_node``, ``inter_node``), the groups' nodes follow in
    order. ``num_nodes`` always counts every node, and node i holds ranks
    ``i * devices_per_node ..``: the order of the file is the order of the node ranks.
    """
    name: str
    num_nodes: int
    devices_per_node: int
    device: DeviceSpec
    intra_node: LinkLevel
    inter_node: LinkLevel
    backend: str = "nccl"           # "nccl" | "gloo"
    node_links: tuple[NodeLink, ...] = ()
    collective_fits: tuple[CollectiveFit, ...] = ()
    notes: str = ""
    node_levels: tuple[NodeLevels, ...] = ()
    nics_per_node: int = 0          # network ports per node, shared evenly; 0: one per device
    # Interference of co-located ranks (planner.profile.interference, measured by `planner
    # profile --network`): factor on a rank's profiled compute while the other ranks of its
    # node compute too, and the share of a data-parallel/pipeline transfer's time that runs
    # concurrently with compute. Defaults: no slowdown, full overlap (one GPU per rank, NCCL).
    compute_slowdown: float = 1.0
    comm_overlap: float = 1.0
    fsdp_call_overhead_s: float = 0.0    # FSDP2's own cost per all-gather/reduce-scatter call
    interference_source: str = "assumed: one device per rank, communication on its own engines"
    node_groups: tuple[NodeGroup, ...] = ()
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        positive("num_nodes", self.num_nodes)
        finite("compute_slowdown (a factor on profiled compute)", self.compute_slowdown, 1.0)
        if not 0.0 <= self.comm_overlap <= 1.0:   # NaN fails this comparison too
            raise PlannerError(f"comm_overlap must be in [0, 1], got {self.comm_overlap}")
        finite("fsdp_call_overhead_s", self.fsdp_call_overhead_s, 0)
        positive("devices_per_node", self.devices_per_node)
        choice("backend", self.backend, ("nccl", "gloo"))
        if not 0 <= self.nics_per_node <= self.devices_per_node:
            raise PlannerError(f"nics_per_node must be 0 (one per device) .. devices_per_node("
                               f"{self.devices_per_node}), got {self.nics_per_node}")
        for i, link in enumerate(self.node_links):
            if max(link.node_a, link.node_b) >= self.num_nodes:
                bad = max(link.node_a, link.node_b)
                raise PlannerError(f"node_links[{i}]: node {bad} does not exist (num_nodes "
                                   f"{self.num_nodes}: 0..{self.num_nodes - 1})")
        for i, lv in enumerate(self.node_levels):
            if not 0 <= lv.node < self.num_nodes:
                raise PlannerError(f"node_levels[{i}]: node {lv.node} does not exist (num_nodes "
                                   f"{self.num_nodes}: 0..{self.num_nodes - 1})")
        grouped = sum(g.num_nodes for g in self.node_groups)
        if grouped > self.num_nodes:
            raise PlannerError(f"node_groups hold {grouped} nodes, more than num_nodes "
                               f"{self.num_nodes} (which counts every node, the default "
                               f"group's {self.device.name} nodes included)")
        names = [d.name for d in self.kinds]
        for name in names:
            if names.count(name) > 1:
                raise PlannerError(f"node_groups: two different devices are both named {name!r}"
                                   ": each kind of device needs its own name")

    @property
    def uniform(self) -> bool:
        """Every node's links alike, one network port per device, no explicit node links
        (devices may differ: placement only reads links)."""
        return (not self.node_links and not self.node_levels
                and self.nics_per_node in (0, self.devices_per_node)
                and all(g.intra_node == self.intra_node and g.inter_node == self.inter_node
                        for g in self.groups))

    # -- node groups ---------------------------------------------------------------------------
    @cached_property
    def groups(self) -> tuple[NodeGroup, ...]:
        """Every group with its links filled in, the default group first (if it has nodes)."""
        default = self.num_nodes - sum(g.num_nodes for g in self.node_groups)
        out = [NodeGroup(default, self.device, self.intra_node, self.inter_node)] if default \
            else []
        out += [NodeGroup(g.num_nodes, g.device, g.intra_node or self.intra_node,
                          g.inter_node or self.inter_node, g.name) for g in self.node_groups]
        return tuple(out)

    @cached_property
    def node_group_index(self) -> tuple[int, ...]:
        """Index into ``groups`` of each node."""
        return tuple(i for i, g in enumerate(self.groups) for _ in range(g.num_nodes))

    def node_group(self, node: int) -> NodeGroup:
        return self.groups[self.node_group_index[node]]

    @cached_property
    def kinds(self) -> tuple[DeviceSpec, ...]:
        """The distinct devices, in order of first appearance."""
        out: list = []
        for g in self.groups:
            if g.device not in out:
                out.append(g.device)
        return tuple(out)

    @property
    def mixed(self) -> bool:
        """More than one kind of device."""
        return len(self.kinds) > 1

    def kind_of_node(self, node: int) -> int:
        return self.kinds.index(self.node_group(node).device)

    def device_of_rank(self, rank: int) -> DeviceSpec:
        return self.node_group(rank // self.devices_per_node).device

    def select(self, nodes) -> "Cluster":
        """A cluster of these nodes (indices into this one) in this order: node ``nodes[i]``
        becomes node i. Runs of nodes of one group become one group (links written out); node
        links and levels follow their nodes, those of nodes left out go."""
        nodes = tuple(nodes)
        if not nodes or len(set(nodes)) != len(nodes) or not all(
                0 <= n < self.num_nodes for n in nodes):
            raise PlannerError(f"cluster {self.name}: cannot select nodes {list(nodes)} of "
                               f"0..{self.num_nodes - 1}")
        runs: list[list] = []
        for n in nodes:
            g = self.node_group(n)
            if runs and runs[-1][0] == g:
                runs[-1][1] += 1
            else:
                runs.append([g, 1])
        first = runs[0][0]
        new = {old: i for i, old in enumerate(nodes)}
        return replace(
            self, num_nodes=len(nodes), device=first.device, intra_node=first.intra_node,
            inter_node=first.inter_node,
            node_groups=tuple(replace(g, num_nodes=k) for g, k in runs[1:]),
            node_links=tuple(replace(k, node_a=new[k.node_a], node_b=new[k.node_b])
                             for k in self.node_links if k.node_a in new and k.node_b in new),
            node_levels=tuple(replace(lv, node=new[lv.node]) for lv in self.node_levels
                              if lv.node in new))

    @property
    def num_devices(self) -> int:
        return self.num_nodes * self.devices_per_node

    def with_size(self, num_devices: int) -> "Cluster":
        """This cluster cut (or grown, for uniform presets) to ``num_devices`` devices."""
        positive("--gpus", num_devices)
        per = self.devices_per_node
        if self.node_groups:
            return self._cut(num_devices)
        if num_devices <= per:
            # Links and levels of nodes that are cut away go with them.
            return replace(self, num_nodes=1, devices_per_node=num_devices,
                           nics_per_node=min(self.nics_per_node, num_devices),
                           node_links=(), node_levels=tuple(
                               lv for lv in self.node_levels if lv.node == 0))
        if num_devices % per:
            raise PlannerError(f"--gpus {num_devices} is not a whole number of nodes of {per} "
                               f"devices ({num_devices} % {per} = {num_devices % per})")
        nodes = num_devices // per
        return replace(self, num_nodes=nodes,
                       node_links=tuple(k for k in self.node_links
                                        if max(k.node_a, k.node_b) < nodes),
                       node_levels=tuple(lv for lv in self.node_levels if lv.node < nodes))

    def _cut(self, num_devices: int) -> "Cluster":
        """A cluster with node groups keeps its first nodes; it does not grow (which group
        would the new nodes join?)."""
        per = self.devices_per_node
        if num_devices > self.num_devices:
            raise PlannerError(f"--gpus {num_devices}: cluster {self.name} has "
                               f"{self.num_devices} devices ({self.num_nodes} nodes of {per}) "
                               "and node groups, so it cannot grow")
        if num_devices < per:
            cut = self.select([0])
            return replace(cut, devices_per_node=num_devices,
                           nics_per_node=min(self.nics_per_node, num_devices))
        if num_devices % per:
            raise PlannerError(f"--gpus {num_devices} is not a whole number of nodes of {per} "
                               f"devices ({num_devices} % {per} = {num_devices % per})")
        return self.select(range(num_devices // per))
