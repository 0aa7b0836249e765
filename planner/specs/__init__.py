"""The data that crosses boundaries: model, profile, cluster, layout, prediction, plan, metrics.

Each is a frozen dataclass with ``schema_version``, ``to_dict``/``from_dict`` (strict: see
``planner.serde``; older versions upgraded where a class says how) and validation whose message
shows the arithmetic. Units live in field names. No torch here: planning from a file must start
fast. One module per subject: ``model`` (architecture, profiles), ``cluster``, ``layout``,
``results`` (prediction, plan, metrics, validation), ``elastic`` (a plan per world size).
"""
from planner.dims import ParallelDims
from planner.specs.cluster import (Cluster, CollectiveFit, DeviceSpec, LinkLevel, NodeGroup,
                                   NodeLevels, NodeLink)
from planner.specs.common import Serde
from planner.specs.layout import (COMPRESSION, DP_COMM, RECOMPUTE, SCHEDULES, DataParallel,
                                  Layout, Pipeline, TensorParallel)
from planner.specs.elastic import ElasticPlan
from planner.specs.model import FAMILIES, BlockProfile, ModelProfile, ModelSpec
from planner.specs.results import (DTYPES, IMPLEMENTATIONS, OPTIMIZERS, PARTITIONS, Candidate,
                                   CollectiveCount, Metrics, Plan, Prediction, RankMemory,
                                   TimelineEvent, Trial, TrialSet, Validation,
                                   ValidationRow)

SCHEMA_VERSION = 1

__all__ = [
    "COMPRESSION", "DP_COMM", "DTYPES", "FAMILIES", "IMPLEMENTATIONS", "OPTIMIZERS",
    "PARTITIONS", "RECOMPUTE", "SCHEDULES",
    "SCHEMA_VERSION", "BlockProfile", "Candidate", "Cluster", "CollectiveCount", "CollectiveFit",
    "DataParallel", "DeviceSpec", "ElasticPlan", "Layout", "LinkLevel", "Metrics",
    "ModelProfile", "ModelSpec",
    "NodeGroup", "NodeLevels", "NodeLink", "ParallelDims", "Pipeline", "Plan", "Prediction",
    "RankMemory",
    "Serde", "TensorParallel", "TimelineEvent", "Trial", "TrialSet", "Validation",
    "ValidationRow",
]
