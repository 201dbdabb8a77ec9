"""Running a sweep's jobs (:class:`~.runner.PointJob`): submitit runs them here (``local``: at most
``--jobs`` at once, each with its share of the cores; ``debug``: one after another in this process, where a
debugger works) or on a SLURM cluster (``slurm``: one job array, whose job ids ``OUT/jobs.json`` keeps so
that a rerun does not submit a queued point again). Ctrl-C or SIGTERM stops the local jobs, which
checkpoint first; rerunning the sweep resumes them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .runner import ERROR, JOBS, PointJob, read_json, write_json
from .spec import Point, Spec


def cores() -> int:
    """The cores this process may run on."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def default_jobs() -> int:
    """Jobs at once on this machine: one per core (bench/sweep_throughput.py measures why)."""
    return cores()


def threads_per_job(jobs: int) -> int:
    return max(1, cores() // jobs)


@dataclass
class Slurm:
    """``--executor slurm``'s settings, passed to submitit's SlurmExecutor."""

    partition: str | None = None
    time: int = 1440  # minutes
    gpus: int = 0
    cpus: int | None = None  # per job; default: the threads per job
    mem: str | None = None
    array_parallelism: int = 64
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: tuple[str, ...] = ()  # shell lines before the job (module load, conda activate)


def make_executor(kind: str, folder: Path, threads: int, slurm: Slurm | None, timeout_min: int) -> Any:
    import submitit

    if kind == "debug":
        return None  # run_jobs calls the jobs itself, in this process (a debugger works in them)
    if kind == "local":
        executor = submitit.LocalExecutor(folder)
        executor.update_parameters(timeout_min=timeout_min)
        return executor
    if kind != "slurm":
        raise ConfigError(f"unknown executor {kind!r} (local, slurm or debug)")
    slurm = slurm or Slurm()
    try:
        executor = submitit.SlurmExecutor(folder)
    except RuntimeError as e:  # no srun here
        raise ConfigError(f"--executor slurm needs a SLURM cluster: {e}") from None
    params: dict[str, Any] = {"time": slurm.time, "cpus_per_task": slurm.cpus or threads,
                              "array_parallelism": slurm.array_parallelism, "job_name": "dvae-sweep"}
    for key in ("partition", "mem", "account", "qos", "constraint"):
        if getattr(slurm, key):
            params[key] = getattr(slurm, key)
    if slurm.gpus:
        params["gpus_per_node"] = slurm.gpus
    if slurm.setup:
        params["setup"] = list(slurm.setup)
    executor.update_parameters(**params)
    return executor


def jobs_for(spec: Spec, out: Path, points: list[Point], threads: int, data_dir: str | None,
             chosen: set[str] | None = None, retrain: bool = False,
             sweep: str | None = None) -> list[PointJob]:
    """One job per point; ``chosen`` names the points a ``select:`` chose (their ``selected`` evaluations
    run too; None: every point); ``retrain``: a point trained with another config trains again; ``sweep``:
    the command line, recorded with each result."""
    extra = {"data_dir": data_dir} if data_dir else {}
    return [PointJob(out / p.name, {**p.values, **extra},
                     spec.point_evals(p, chosen is None or p.name in chosen), threads, spec.command, retrain,
                     sweep)
            for p in points]


QUEUED = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED")


def queued_on_slurm(out: Path, names: list[str]) -> set[str]:
    """Which of the points ``names`` have a SLURM job (``jobs.json``) that is still queued or running, by
    one ``sacct`` call, so that a rerun does not submit them again; a job that ended without finishing its
    point (cancelled, out of time) is not, and its point is submitted again."""
    import submitit

    ids = read_json(out / JOBS) or {}
    jobs = {name: submitit.SlurmJob(out / ".submitit", ids[name]) for name in names if name in ids}
    if not jobs:
        return set()
    next(iter(jobs.values())).get_info(mode="force")  # one sacct call for every registered job
    return {name for name, job in jobs.items() if job.watcher.get_state(job.job_id, mode="cache") in QUEUED}


def run_jobs(executor: Any, kind: str, jobs: list[PointJob], max_jobs: int, out: Path,
             wait: bool = True, poll_s: float = 0.5,
             on_done: Callable[[], None] = lambda: None) -> dict[str, dict[str, Any]]:
    """Run ``jobs``: at most ``max_jobs`` at once here (local, debug), or all as one SLURM array (its
    parallelism set on the executor); returns each finished job's outcome by folder name, calling
    ``on_done`` after each (the tables grow as points finish). Ctrl-C or SIGTERM stops the local jobs,
    which checkpoint first; a rerun resumes them."""
    outcomes: dict[str, dict[str, Any]] = {}
    if kind == "debug":
        for job in jobs:
            outcomes[job.folder.name] = job()
            on_done()
            if outcomes[job.folder.name]["state"] == "interrupted":  # a signal stopped it: stop the sweep
                raise KeyboardInterrupt
        return outcomes
    if kind == "slurm":
        with executor.batch():
            submitted = [(job, executor.submit(job)) for job in jobs]
        record = read_json(out / JOBS) or {}
        record.update({job.folder.name: j.job_id for job, j in submitted})
        write_json(out / JOBS, record)
        if wait:
            for job, j in submitted:
                outcomes[job.folder.name] = _outcome(j, job.folder)
        return outcomes
    pending, active = list(jobs), {}
    try:
        while pending or active:
            while pending and len(active) < max_jobs:
                job = pending.pop(0)
                active[job.folder.name] = executor.submit(job)
            for name, j in list(active.items()):
                if j.done():
                    outcomes[name] = _outcome(j, out / name)
                    del active[name]
                    on_done()
            if active:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        for j in active.values():
            stop(j)
        for name, j in active.items():
            while not j.done():
                time.sleep(poll_s)
            outcomes[name] = _outcome(j, out / name)
        raise
    return outcomes


class Interrupted(KeyboardInterrupt):
    """A signal other than SIGINT stopped the sweep (``signum``); it ends as Ctrl-C does."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within, SIGTERM (a cluster's or a user's stop) acts as Ctrl-C (raising :class:`Interrupted`): the
    sweep stops its jobs, which checkpoint, and ends; rerunning it resumes them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop(job: Any) -> None:
    """Ask a local job to checkpoint and end: SIGTERM to submitit's controller, which passes it on to the
    job (submitit's own ``cancel`` sends SIGINT, which a process started in the background ignores)."""
    process = getattr(job, "_process", None)
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
    elif process is None:
        job.cancel()


def _outcome(job: Any, folder: Path) -> dict[str, Any]:
    """A finished job's outcome; a worker that died (killed, out of memory, a SLURM time limit) could not
    record its error, so it is recorded here."""
    try:
        return job.result()
    except Exception as e:
        first = str(e).strip().splitlines()
        message = f"the job ended abnormally: {first[-1] if first else e}"
        if not (folder / ERROR).is_file():
            write_json(folder / ERROR, {"error": message, "traceback": str(e)})
        return {"state": "failed", "error": message}
