"""Executors: local processes and Ray give the same results; failed units are retried once, then named; the GPU
path gives each local worker its own GPU."""

import os
import shutil

import pandas as pd
import pytest

from mmlib import experiment as ex
from mmlib import scheduling
from mmlib.scheduling import Unit, UnitFailed, run_units

# the smoke profile, cut to a few units so that three studies (local, one Ray node, two Ray nodes) fit in a minute
SMOKE = dict(models=["amw_cnn", "cuf_mt"], baselines=["age_only"], ablations=False, n_boot=100)


class _Fake:
    """An executor whose units fail as often as ``fails`` says, in this process."""

    name, workers = "fake", 1

    def __init__(self, fails: dict):
        self.fails, self.queue, self.closed = dict(fails), [], False

    def submit(self, unit):
        self.queue.append(unit)

    def next_done(self):
        unit = self.queue.pop(0)
        if self.fails.get(unit.index, 0) > 0:
            self.fails[unit.index] -= 1
            return unit, None, RuntimeError(f"boom {unit.index}")
        return unit, {"value": unit.index}, None

    def close(self):
        self.closed = True


def _units(n):
    return [Unit(i, ex.Config("amw_cnn", f"v{i}"), 0) for i in range(n)]


def test_a_failed_unit_is_retried_once_then_named_and_finished_units_are_kept():
    stored = []
    fake = _Fake({1: 1})  # fails once, then succeeds
    run_units(fake, _units(3), lambda u, r: stored.append(r["value"]))
    assert sorted(stored) == [0, 1, 2] and fake.closed

    stored.clear()
    fake = _Fake({1: 2, 2: 5})  # fail twice: named in the error, after the others are stored
    with pytest.raises(UnitFailed, match=r"(?s)2 unit\(s\).*amw_cnn__v1 seed 0: RuntimeError: boom 1.*amw_cnn__v2 seed 0"):
        run_units(fake, _units(4), lambda u, r: stored.append(r["value"]))
    assert sorted(stored) == [0, 3] and fake.closed


def test_gpu_runs_get_one_worker_per_visible_gpu(monkeypatch):
    p = ex.load_params("gpu")
    monkeypatch.setattr(scheduling, "visible_gpus", lambda: 4)
    assert scheduling.n_workers(p, "cuda") == 4
    assert scheduling.n_workers(dict(p, workers=2), "cuda") == 2
    assert scheduling.gpu_slots(4, 4) == [0, 1, 2, 3]
    assert scheduling.gpu_slots(6, 4) == [0, 1, 2, 3, 0, 1]
    assert scheduling.gpu_slots(2, 0) == [None, None]
    assert scheduling.n_workers(dict(p, train_mode="finetune"), "cpu") == 1


def test_a_local_worker_takes_its_gpu_before_torch_starts(monkeypatch):
    import queue

    slots = queue.Queue()
    slots.put(3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    monkeypatch.setattr(ex, "study_from_payload", lambda payload: ("study", payload))
    scheduling._local_worker_init({"x": 1}, slots)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert scheduling._WORKER["study"] == ("study", {"x": 1})
    scheduling._WORKER.clear()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sched")
    old = ex.COHORTS
    ex.COHORTS = tmp / "cohorts"
    try:
        out = ex.run_experiment(ex.load_params("smoke", **SMOKE, workers=2, results_dir=str(tmp / "local")))
        yield tmp, out
    finally:
        ex.COHORTS = old


def _ray_run(tmp, local, name, **kw):
    """The same study on Ray, its feature cache copied from the local run (the units are what is compared)."""
    shutil.copytree(local / "cache", tmp / name / "cache")
    old = ex.COHORTS
    ex.COHORTS = tmp / "cohorts"
    try:
        return ex.run_experiment(ex.load_params("smoke", **SMOKE, executor="ray", results_dir=str(tmp / name), **kw))
    finally:
        ex.COHORTS = old


def _retry_startup(start):
    """A Ray node started again once when it misses Ray's 30-second start-up wait (a loaded machine)."""
    try:
        return start()
    except Exception as err:
        if "timed out during startup" not in str(err):
            raise
        return start()


def _same_tables(a, b):
    for name in ("predictions.csv", "metrics.csv", "fold_metrics.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.slow
def test_ray_on_one_node_gives_the_local_results(local_run):
    ray = pytest.importorskip("ray")
    tmp, local = local_run
    scheduling.start_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = _ray_run(tmp, local, "ray")
    finally:
        ray.shutdown()
    _same_tables(local, out)
    run = ex.load_results(out).run
    assert run["executor"] == "ray" and run["units"]["trained"] == 3


@pytest.mark.slow
def test_ray_cluster_of_two_nodes_gives_the_local_results_and_names_a_failing_unit(local_run, monkeypatch):
    pytest.importorskip("ray")
    import ray
    from ray.cluster_utils import Cluster

    tmp, local = local_run
    cluster = _retry_startup(lambda: Cluster(initialize_head=True,
                                             head_node_args={"num_cpus": 1, "include_dashboard": False}))
    _retry_startup(lambda: cluster.add_node(num_cpus=1))
    try:
        out = _ray_run(tmp, local, "cluster", ray_address=cluster.address, ray_num_cpus=1.0)
        run = ex.load_results(out).run
        assert run["executor"] == "ray" and run["workers"] >= 1
        assert run["units"]["trained"] == 3
        _same_tables(local, out)

        # a unit that raises in its Ray worker: retried once, then named; the other units are stored
        bad = ex.Config("amw_cnn", "broken", (("fusion", "no_such_fusion"),))
        monkeypatch.setattr(ex, "experiment_configs", lambda p: [ex.Config("age_only"), bad])
        with pytest.raises(UnitFailed, match="amw_cnn__broken seed 0"):
            _ray_run(tmp, local, "failing", ray_address=cluster.address)
        assert (tmp / "failing" / "work" / "age_only__none__s0" / "done.json").is_file()
        assert not (tmp / "failing" / "work" / "amw_cnn__broken__s0").exists()
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_progress_in_a_log_file_is_a_line_per_quarter_not_one_growing_line():
    """Where stdout is not a terminal (a log file, CI), long loops print whole lines at each quarter of the way, with
    no carriage returns, and every item still comes through once, in order."""
    import io

    from mmlib.progress import progress_bar

    log = io.StringIO()
    assert list(progress_bar(range(10), "encoding 10 images", stream=log)) == list(range(10))
    lines = log.getvalue().splitlines()
    assert [ln.split(": ")[1].split(" ")[0] for ln in lines] == ["3/10", "5/10", "8/10", "10/10"]
    assert all(ln.startswith("[mmlib] encoding 10 images: ") for ln in lines) and "\r" not in log.getvalue()
    short = io.StringIO()
    assert list(progress_bar([1, 2], "x", stream=short)) == [1, 2] and len(short.getvalue().splitlines()) == 2
    assert list(progress_bar([], "nothing", stream=short)) == []
