"""``--cluster localhost-cpu`` for several ranks: measured on first use and cached, or the
preset with a loud warning under --no-measure (``planner.localhost``)."""
from __future__ import annotations

import argparse
from dataclasses import replace

import pytest

from planner import inputs, localhost
from planner.clusters import localhost_cpu
from planner.errors import PlannerError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(localhost.CACHE_ENV, str(tmp_path))
    calls = []

    def fake_measure(path, ranks):      # what `planner profile --network` writes, in brief
        calls.append(ranks)
        replace(localhost_cpu(), devices_per_node=ranks, comm_overlap=0.0,
                compute_slowdown=1.3).save(path)
    monkeypatch.setattr(localhost, "measure", fake_measure)
    return tmp_path, calls


def test_measured_once_then_read_from_the_cache(cache):
    directory, calls = cache
    lines = []
    first = localhost.resolve(2, False, lines.append)
    assert calls == [2] and "measuring" in lines[0] and str(directory) in lines[0]
    again = localhost.resolve(2, False, lines.append)
    assert calls == [2]                               # the cached file, not a new measurement
    assert first == again and again.comm_overlap == 0.0 and again.compute_slowdown == 1.3
    assert localhost.cache_path(2).startswith(str(directory)) and "-r2" in localhost.cache_path(2)
    localhost.resolve(3, False, lines.append)         # another rank count: its own measurement
    assert calls == [2, 3]


def test_one_rank_needs_no_measurement_and_no_measure_warns(cache):
    _, calls = cache
    lines = []
    assert localhost.resolve(1, False, lines.append) == localhost_cpu() and not lines
    assert localhost.resolve(2, True, lines.append) == localhost_cpu()
    assert calls == [] and "ASSUMED" in lines[0] and "--no-measure" in lines[0]


def test_a_cached_file_for_fewer_ranks_is_refused(cache):
    replace(localhost_cpu(), devices_per_node=2).save(localhost.cache_path(4))
    with pytest.raises(PlannerError, match="delete the file"):
        localhost.resolve(4, False, lambda line: None)


def test_planning_commands_resolve_the_preset_through_it(cache, monkeypatch):
    seen = []

    def fake(ranks, no_measure, say=None):
        seen.append((ranks, no_measure))
        return localhost_cpu()
    monkeypatch.setattr(localhost, "resolve", fake)
    parser = argparse.ArgumentParser()
    inputs.add_arguments(parser)
    args = parser.parse_args(["--model", "mlp-tiny", "--global-batch", "4", "--gpus", "2"])
    with pytest.raises(PlannerError, match="no profile"):
        inputs.resolve(args)              # bad input fails before any measurement
    assert seen == []
    for flags in ([], ["--no-measure"]):
        args = parser.parse_args(["--model", "mlp-tiny", "--global-batch", "4", "--gpus", "2",
                                  "--dtype", "float32", *flags])
        monkeypatch.setattr(inputs, "find_profiles", lambda *a: [("p.json", _profile())])
        inp = inputs.resolve(args)
        assert inp.cluster.name == "localhost-cpu" and inp.num_devices == 2
    assert seen == [(2, False), (2, True)]


def _profile():
    """A stand-in for a ModelProfile: what ``inputs.resolve`` reads of one."""
    from planner.models import resolve_model

    class Profile:
        model = resolve_model("mlp-tiny")
        microbatch_size = 1
    return Profile()
