"""``dvae sweep SPEC.yaml``: a grid of training runs (settings × seeds), their evaluations, and the tables
and plots made from them, run through submitit here or on a SLURM cluster; idempotent and resumable.

:mod:`.spec` reads a spec, :mod:`.commands` says what a point runs (``dvae train`` or ``dvae sop``),
:mod:`.runner` runs and tracks the points, :mod:`.report` writes the results, :mod:`.cli` is the command.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..runs import note
from .report import collect, write_report
from .runner import (
    JOBS,
    STATES,
    Slurm,
    default_jobs,
    jobs_for,
    make_executor,
    read_json,
    run_jobs,
    sigterm_interrupts,
    status_lines,
    threads_per_job,
)
from .spec import Spec, load_spec

REPORT_EVERY_S = 30.0  # a long sweep's tables are at most this old while it runs

__all__ = ["Slurm", "Spec", "load_spec", "run_sweep", "sweep_status", "write_tables"]


def default_out(spec: Spec, quick: bool) -> Path:
    return Path("sweeps") / (f"{spec.name}-quick" if quick else spec.name)


def sweep_status(spec: Spec, out: Path) -> dict[str, Any]:
    """States of every point (done, running, failed, interrupted, submitted, pending) and their errors."""
    submitted = set(read_json(out / JOBS) or {})
    records = collect(spec, out, submitted)
    states = {r["point"]: r["state"] for r in records}
    errors = {r["point"]: r["error"] for r in records if r["state"] == "failed" and r["error"]}
    return {"spec": spec.name, "out": str(out), "points": len(records),
            "states": {s: sum(v == s for v in states.values()) for s in STATES},
            "point_states": states, "errors": errors}


def run_sweep(spec: Spec, out: Path, *, executor: str = "local", jobs: int | None = None,
              threads: int | None = None, data_dir: str | None = None, slurm: Slurm | None = None,
              wait: bool = True, timeout_min: int = 7 * 24 * 60) -> dict[str, Any]:
    """Run every point that is not done (nor running elsewhere), then write the results; returns the
    status summary with the paths written. Nothing done is redone: a rerun of a finished sweep trains and
    evaluates nothing."""
    if jobs is not None and jobs < 1:
        raise ConfigError("--jobs must be at least 1")
    if threads is not None and threads < 1:
        raise ConfigError("--threads must be at least 1")
    jobs = jobs or (default_jobs() if executor == "local" else 1)
    threads = threads or (threads_per_job(jobs) if executor != "slurm" else 1)
    out.mkdir(parents=True, exist_ok=True)
    before = sweep_status(spec, out)
    todo = [p for p in spec.points() if before["point_states"][p.name] not in ("done", "running")]
    skipped = before["points"] - len(todo)
    runner = make_executor(executor, out / ".submitit", threads, slurm, timeout_min) if todo else None
    note(f"dvae sweep: {spec.name}: {before['points']} points, {skipped} done or running elsewhere, "
         f"{len(todo)} to run ({executor}, {jobs if executor != 'slurm' else 'array'} at once, "
         f"{threads} thread{'s' * (threads > 1)} each) -> {out}")
    outcomes: dict[str, dict[str, Any]] = {}
    written = [time.monotonic()]

    def report() -> None:  # as points finish, at most every REPORT_EVERY_S (the plots take a moment)
        if time.monotonic() - written[0] >= REPORT_EVERY_S:
            write_tables(spec, out)
            written[0] = time.monotonic()

    try:
        if todo:
            work = jobs_for(spec, out, todo, threads, data_dir)
            with sigterm_interrupts():
                outcomes = run_jobs(runner, executor, work, jobs, out, wait, on_done=report)
    finally:  # the tables hold what is finished, also after Ctrl-C
        write_tables(spec, out)
    summary = sweep_status(spec, out)
    summary["ran"] = len(outcomes)
    summary["written"] = {k: str(v) for k, v in _written(out).items()}
    return summary


def write_tables(spec: Spec, out: Path) -> None:
    """table.md, results.csv/json and the plots from what ``out`` holds now."""
    if not out.is_dir():
        raise ConfigError(f"{out} holds no sweep yet")
    write_report(spec, out, collect(spec, out, set(read_json(out / JOBS) or {})))


def _written(out: Path) -> dict[str, Path]:
    from .report import CURVES_PNG, FINAL_PNG, RESULTS_CSV, RESULTS_JSON, TABLE_MD

    names = {"table": TABLE_MD, "csv": RESULTS_CSV, "json": RESULTS_JSON, "curves": CURVES_PNG,
             "final": FINAL_PNG}
    return {k: out / v for k, v in names.items() if (out / v).is_file()}


def print_status(summary: dict[str, Any]) -> None:
    for line in status_lines(summary["point_states"], summary["errors"]):
        note(line)
