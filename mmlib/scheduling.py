"""Where the study's units of work run: in this process, in local worker processes, or as tasks of a Ray cluster.

A unit of work (a model variant and seed: every fold, the test predictions and the refit) is a pure function of
the shared study state (parameters, cohort, splits, cached encoder features) and of its own variant and seed; it
returns its files instead of writing them (:func:`mmlib.experiment.compute_unit`). An executor runs units and
hands back each result as it finishes, and the caller stores it at once, so a stopped run keeps what finished.
A failed unit is run once more, then named in the error. Every fit is seeded and single-threaded, so the results
are the same whichever executor and however many workers.

Shared state travels once: local workers read the feature cache from its file; Ray workers get it from the
object store (``ray.put`` once) and rebuild the study once per worker process, not per unit.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from .progress import clock as _clock


class UnitFailed(RuntimeError):
    """One or more units of work failed twice; the message names each and its last error."""


@dataclass(frozen=True)
class Unit:
    """One unit of work: its position in the study, the model variant (a :class:`mmlib.experiment.Config`)
    and the training seed."""

    index: int
    config: Any
    seed: int

    @property
    def name(self) -> str:
        return f"{self.config.id} seed {self.seed}"


# ----------------------------------------------------------------------------------------------- how many workers
def visible_gpus() -> int:
    """CUDA devices this process may use (``CUDA_VISIBLE_DEVICES`` respected by torch)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def n_workers(params: dict, device: str | None = None) -> int:
    """Worker processes for training.

    ``auto``: on a GPU one per visible GPU; on the frozen CPU path one per core (at most 4), where every fit runs
    on one thread; one for end-to-end training on a CPU (one fit uses every core).
    """
    from .experiment import _device

    w = params.get("workers", "auto")
    if w != "auto":
        return int(w)
    device = device or _device(params)
    if device.startswith("cuda"):
        return max(1, visible_gpus())
    if params["train_mode"] != "frozen":
        return 1
    return max(1, min(4, available_cores()))


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def gpu_slots(workers: int, gpus: int) -> list[int | None]:
    """The GPU each local worker process uses: worker ``i`` -> GPU ``i % gpus`` (None: no GPU)."""
    return [i % gpus if gpus else None for i in range(workers)]


# ----------------------------------------------------------------------------------------------- progress
class StudyProgress:
    """One line per finished unit on stderr: stage, units done of total, elapsed and estimated time left."""

    def __init__(self, stage: str, total: int, done: int = 0, stream=None):
        self.stage, self.total, self.done, self.start_done = stage, total, done, done
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()

    def line(self, text: str) -> None:
        print(f"[mmlib] {text}", file=self.stream, flush=True)

    def update(self, unit: Unit, seconds: float, note: str = "") -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.t0
        ran = self.done - self.start_done
        left = elapsed / ran * (self.total - self.done) if ran else float("nan")
        self.line(f"{self.stage} {self.done}/{self.total} units | {unit.name} {seconds:.1f} s{note} | "
                  f"elapsed {_clock(elapsed)} | left ~{_clock(left)}")


# ----------------------------------------------------------------------------------------------- executors
class InProcessExecutor:
    """Units one after another in this process (one worker, or a GPU run on one device)."""

    name = "local"

    def __init__(self, study, compute: Callable):
        self.study, self.compute = study, compute
        self.queue: list[Unit] = []
        self.workers = 1

    def submit(self, unit: Unit) -> None:
        self.queue.append(unit)

    def next_done(self) -> tuple[Unit, Any, BaseException | None]:
        unit = self.queue.pop(0)
        try:
            return unit, self.compute(self.study, unit.config, unit.seed), None
        except Exception as err:  # reported with the unit's name, retried once by run_units
            return unit, None, err

    def close(self) -> None:
        pass


class LocalProcessExecutor:
    """Units in ``workers`` spawned processes; each rebuilds the study once from the payload (the feature cache
    from its file) and, on a GPU run, owns one GPU (``CUDA_VISIBLE_DEVICES``)."""

    name = "local"

    def __init__(self, payload: dict, workers: int, gpus: int = 0):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("spawn")
        slots = ctx.Queue()
        for slot in gpu_slots(workers, gpus):
            slots.put(slot)
        self.workers = workers
        self.pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_local_worker_init,
                                        initargs=(payload, slots))
        self.futures: dict = {}

    def submit(self, unit: Unit) -> None:
        self.futures[self.pool.submit(_local_worker_unit, unit.config, unit.seed)] = unit

    def next_done(self):
        from concurrent.futures import FIRST_COMPLETED, wait

        done, _ = wait(list(self.futures), return_when=FIRST_COMPLETED)
        fut = next(iter(done))
        unit = self.futures.pop(fut)
        err = fut.exception()
        return unit, None if err else fut.result(), err

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


class RayExecutor:
    """Units as Ray tasks (``ray_num_cpus`` CPUs and ``ray_num_gpus`` GPUs each; a GPU fraction lets several
    small fits share one GPU). Joins ``ray_address`` or ``RAY_ADDRESS``, else starts a local cluster of
    ``workers`` CPUs. The shared study goes to the object store once."""

    name = "ray"

    def __init__(self, payload: dict, params: dict, workers: int):
        import ray

        address = params.get("ray_address") or os.environ.get("RAY_ADDRESS")
        self.started = False
        if not ray.is_initialized():
            if address:
                start_ray(address=address, log_to_driver=False)
            else:
                start_ray(num_cpus=workers, num_gpus=visible_gpus() or None, include_dashboard=False,
                          log_to_driver=False)
                self.started = True
        self.ray = ray
        # units that can run at once on the cluster (its CPUs over the CPUs a unit reserves)
        self.workers = max(1, int(ray.cluster_resources().get("CPU", workers) // float(params["ray_num_cpus"])))
        self.token = f"{os.getpid()}-{id(payload)}-{time.time_ns()}"
        self.payload = [ray.put(_ray_payload(payload))]  # in a list: resolved by the worker only when needed
        self.task = ray.remote(num_cpus=float(params["ray_num_cpus"]), num_gpus=float(params["ray_num_gpus"]),
                               max_retries=0)(_ray_unit)
        self.refs: dict = {}

    def submit(self, unit: Unit) -> None:
        self.refs[self.task.remote(self.payload, self.token, unit.config, unit.seed)] = unit

    def next_done(self):
        [ref], _ = self.ray.wait(list(self.refs), num_returns=1)
        unit = self.refs.pop(ref)
        try:
            return unit, self.ray.get(ref), None
        except Exception as err:  # a RayTaskError wraps the unit's own exception
            return unit, None, getattr(err, "cause", None) or err

    def close(self) -> None:
        for ref in self.refs:
            self.ray.cancel(ref, force=True)
        if self.started:
            self.ray.shutdown()


def start_ray(attempts: int = 2, **init_kwargs) -> None:
    """``ray.init(**init_kwargs)``, tried again once: on a loaded machine a local raylet can miss Ray's fixed
    30-second start-up wait."""
    import ray

    for attempt in range(attempts):
        try:
            ray.init(**init_kwargs)
            return
        except Exception as err:  # ray raises a bare Exception for a raylet that did not start in time
            if "timed out during startup" not in str(err) or attempt == attempts - 1:
                raise
            ray.shutdown()


def make_executor(study, payload: Callable[[], dict], compute: Callable, pending: int):
    """The executor the parameters ask for; ``payload()`` builds the shared state only when workers need it."""
    p = study.params
    from .experiment import _device

    device = _device(p)
    workers = max(1, min(n_workers(p, device), pending))
    if p["executor"] == "ray":
        return RayExecutor(payload(), p, workers)
    if workers == 1:
        return InProcessExecutor(study, compute)
    return LocalProcessExecutor(payload(), workers, gpus=visible_gpus() if device.startswith("cuda") else 0)


def run_units(executor, units: list[Unit], on_done: Callable[[Unit, Any], None], *, retries: int = 1,
              progress: StudyProgress | None = None) -> None:
    """Run ``units`` on ``executor``; ``on_done(unit, result)`` stores each result as it finishes.

    A failed unit is submitted again (``retries`` times); a unit that still fails is named, with its error, in
    the :class:`UnitFailed` raised after every other unit finished (their results are stored).
    """
    tries: dict[int, int] = {}
    failed: list[tuple[Unit, BaseException]] = []
    for unit in units:
        executor.submit(unit)
    left = len(units)
    try:
        while left:
            unit, result, err = executor.next_done()
            if err is not None:
                tries[unit.index] = tries.get(unit.index, 0) + 1
                if tries[unit.index] <= retries:
                    if progress:
                        progress.line(f"{unit.name} failed ({type(err).__name__}: {err}); running it again")
                    executor.submit(unit)
                    continue
                failed.append((unit, err))
                left -= 1
                continue
            on_done(unit, result)
            left -= 1
    finally:
        executor.close()
    if failed:
        names = "\n".join(f"  {u.name}: {type(e).__name__}: {e}" for u, e in failed)
        raise UnitFailed(f"{len(failed)} unit(s) of work failed twice (finished units are kept; a rerun redoes "
                         f"only these):\n{names}") from failed[0][1]


# ----------------------------------------------------------------------------------------------- worker side
_WORKER: dict = {}


def _local_worker_init(payload: dict, slots) -> None:
    slot = slots.get()
    if slot is not None:  # before torch touches CUDA: this process sees its one GPU as cuda:0
        os.environ["CUDA_VISIBLE_DEVICES"] = str(slot)
    from .experiment import study_from_payload

    _WORKER["study"] = study_from_payload(payload)


def _local_worker_unit(config, seed):
    from .experiment import compute_unit

    return compute_unit(_WORKER["study"], config, seed)


def _ray_payload(payload: dict) -> dict:
    """The feature maps as numpy arrays: the object store shares them with every worker on a node."""
    out = dict(payload)
    maps = out.pop("cache_maps", None)
    if maps is not None:
        out["cache_arrays"] = {k: v.numpy() for k, v in maps.items()}
    return out


def _ray_unit(payload_ref: list, token: str, config, seed):
    from .experiment import compute_unit, study_from_payload

    if _WORKER.get("token") != token:  # the first unit of this study on this worker process
        import ray
        import torch

        payload = dict(ray.get(payload_ref[0]))
        arrays = payload.pop("cache_arrays", None)
        if arrays is not None:  # copied once per worker: the object store's buffers are read-only
            payload["cache_maps"] = {k: torch.from_numpy(a.copy()) for k, a in arrays.items()}
        _WORKER.clear()
        _WORKER.update(token=token, study=study_from_payload(payload))
    result = compute_unit(_WORKER["study"], config, seed)
    import ray

    result["node"] = ray.get_runtime_context().get_node_id()
    return result
