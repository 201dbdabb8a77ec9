"""``dvae sweep SPEC.yaml``: a grid of training runs (settings × seeds), their evaluations, and the tables
and plots made from them, run through submitit here or on a SLURM cluster; idempotent and resumable.

:mod:`.spec` is what a spec holds, :mod:`.load` reads and checks one, :mod:`.commands` says what a point
runs (``dvae train`` or ``dvae sop``), :mod:`.runner` runs one point and tracks the points' state,
:mod:`.executors` runs the jobs (here or on SLURM), :mod:`.report` writes the results, :mod:`.cli` is the
command.
"""

from __future__ import annotations

import stat
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..runs import note
from .executors import (
    Slurm,
    default_jobs,
    jobs_for,
    make_executor,
    queued_on_slurm,
    run_jobs,
    sigterm_interrupts,
    threads_per_job,
)
from .load import load_spec
from .report import collect, write_report
from .runner import JOBS, RUNNABLE, STATES, SWEEP, changes_text, read_json, status_lines, write_json
from .spec import Spec, labels_by_axis

REPORT_EVERY_S = 30.0  # a long sweep's tables are at most this old while it runs

__all__ = ["Slurm", "Spec", "load_spec", "run_sweep", "sweep_status", "write_tables"]


def default_out(spec: Spec, quick: bool) -> Path:
    return Path("sweeps") / (f"{spec.name}-quick" if quick else spec.name)


def sweep_status(spec: Spec, out: Path, records: bool = False,
                 only: dict[str, set[str]] | None = None) -> dict[str, Any]:
    """States of every point (:data:`~.runner.STATES`) and their errors; with ``records``, the points'
    records too; with ``only`` ({axis: labels}, as :func:`run_sweep` takes it), of those points alone."""
    submitted = set(read_json(out / JOBS) or {})
    found = [r for r in collect(spec, out, submitted) if picked(r, only or {})]
    states = {r["point"]: r["state"] for r in found}
    errors = {r["point"]: r["error"] for r in found if r["state"] == "failed" and r["error"]}
    errors.update({r["point"]: "trained with other settings: " + changes_text(r["changed"])
                   for r in found if r["state"] == "changed"})
    summary = {"spec": spec.name, "out": str(out), "points": len(found),
               "states": {s: sum(v == s for v in states.values()) for s in STATES},
               "point_states": states, "errors": errors,
               "progress": {r["point"]: r["progress"] for r in found if "progress" in r}}
    return {**summary, "records": found} if records else summary


def _announce(spec: Spec, out: Path, status: dict[str, Any], todo: list, executor: str, jobs: int,
              threads: int) -> None:
    states = status["states"]
    later = f", {states['waiting']} waiting on the selection" if states["waiting"] else ""
    note(f"dvae sweep: {spec.name}: {status['points']} points, {states['done'] + states['running']} done or "
         f"running elsewhere{later}, {len(todo)} to run ({executor}, "
         f"{jobs if executor != 'slurm' else 'array'} at once, {threads} thread{'s' * (threads > 1)} each) "
         f"-> {out}")


def run_sweep(spec: Spec, out: Path, *, executor: str = "local", jobs: int | None = None,
              threads: int | None = None, data_dir: str | None = None, slurm: Slurm | None = None,
              wait: bool = True, timeout_min: int = 7 * 24 * 60,
              only: dict[str, set[str]] | None = None, retrain_changed: bool = False,
              command: str | None = None) -> dict[str, Any]:
    """Run every point that is not done (nor running elsewhere), then write the results; returns the
    status summary with the paths written. Nothing done is redone: a rerun of a finished sweep trains and
    evaluates nothing. ``only`` ({axis: labels}) runs just the points with one of those labels on each
    axis named; the tables still show every finished point. A point trained with a config other than the
    spec's now is retrained with ``retrain_changed``, else the sweep refuses before running anything; an
    evaluation made with other settings is scored again. ``command`` (the command line) is recorded in
    ``OUT/sweep.json`` for the tables' provenance."""
    only = check_only(spec, only or {})
    if jobs is not None and jobs < 1:
        raise ConfigError("--jobs must be at least 1")
    if threads is not None and threads < 1:
        raise ConfigError("--threads must be at least 1")
    jobs = jobs or (default_jobs() if executor == "local" else 1)
    threads = threads or (threads_per_job(jobs) if executor != "slurm" else 1)
    check_trusted(out)
    check_changed(sweep_status(spec, out, records=True, only=only), retrain_changed)
    out.mkdir(parents=True, exist_ok=True)
    if command:
        record_command(out, command)
    outcomes: dict[str, dict[str, Any]] = {}
    attempted: set[tuple[str, bool]] = set()  # a point runs once per pass of its kind (tuning, chosen)
    written = [time.monotonic()]

    def report() -> None:  # as points finish, at most every REPORT_EVERY_S (the plots take a moment)
        if time.monotonic() - written[0] >= REPORT_EVERY_S:
            write_tables(spec, out)
            written[0] = time.monotonic()

    try:
        # a pass runs what can run now; a select: choice made by one pass lets the next run the chosen
        # points' other seeds (and the evaluations kept for chosen points)
        while True:
            status = sweep_status(spec, out, records=True)
            chosen = {r["point"] for r in status["records"] if r["chosen"] is True}
            todo = [p for p in spec.run_order(spec.points()) if status["point_states"][p.name] in RUNNABLE
                    and (p.name, p.name in chosen) not in attempted
                    and picked(dict(p.labels), only)]
            if executor == "slurm":  # a point whose job is still queued or running is not submitted again
                queued = queued_on_slurm(out, [p.name for p in todo])
                todo = [p for p in todo if p.name not in queued]
            runner = make_executor(executor, out / ".submitit", threads, slurm, timeout_min) if todo else None
            if not attempted or todo:
                _announce(spec, out, status, todo, executor, jobs, threads)
            if not todo:
                break
            attempted |= {(p.name, p.name in chosen) for p in todo}
            work = jobs_for(spec, out, todo, threads, data_dir, chosen, retrain_changed, command)
            with sigterm_interrupts():
                outcomes.update(run_jobs(runner, executor, work, jobs, out, wait, on_done=report))
            if not wait:
                break
    finally:  # the tables hold what is finished, also after Ctrl-C
        write_tables(spec, out)
    summary = sweep_status(spec, out)
    summary["ran"] = len(outcomes)
    summary["written"] = {k: str(v) for k, v in _written(out).items()}
    return summary


def check_changed(status: dict[str, Any], retrain: bool) -> None:
    """Refuse, in one line naming them and what changed, to run points trained with another config than
    the spec's now, unless ``retrain``; say which points are scored again (an evaluation's settings
    changed)."""
    changed = [r for r in status["records"] if r["state"] == "changed"]
    if changed and not retrain:
        shown = "; ".join(f"{r['point']}: {changes_text(r['changed'])}" for r in changed[:3])
        more = f"; and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise ConfigError(f"{len(changed)} point{'s' * (len(changed) > 1)} trained with settings the spec no "
                          f"longer gives ({shown}{more}): rerun with --retrain-changed to train "
                          f"{'them' if len(changed) > 1 else 'it'} again, or restore the spec")
    for r in changed:
        note(f"dvae sweep: {r['point']} trains again ({changes_text(r['changed'])})")
    for r in status["records"]:
        if r.get("rescore"):
            note(f"dvae sweep: {r['point']}: {', '.join(r['rescore'])} scored again (its settings changed)")


def check_trusted(out: Path) -> None:
    """A sweep folder is trusted like code (``OUT/.submitit`` holds the pickles its jobs load): refuse one
    that anyone may write to."""
    for folder in (out, out / ".submitit"):
        if folder.is_dir() and folder.stat().st_mode & stat.S_IWOTH:
            raise ConfigError(f"{folder} may be written by any user, and a sweep folder is trusted like code "
                              f"(its jobs load pickles from it): chmod o-w {folder}")


def record_command(out: Path, command: str) -> None:
    """Record ``command`` as the one that ran this sweep last (``OUT/sweep.json``)."""
    write_json(out / SWEEP, {**(read_json(out / SWEEP) or {}), "command": command})


def picked(labels: dict[str, Any], only: dict[str, set[str]]) -> bool:
    """Whether a point with these labels ({axis: label}, or its record) is one ``only`` names."""
    return all(labels[axis] in names for axis, names in only.items())


def check_only(spec: Spec, only: dict[str, set[str]]) -> dict[str, set[str]]:
    """``--only``'s axes and labels, each checked against the grid (a typo would silently run nothing)."""
    axes = labels_by_axis(spec.axes)
    for axis, labels in only.items():
        if axis not in axes:
            raise ConfigError(f"--only {axis}=...: {axis!r} is not an axis of the grid ({', '.join(axes)})")
        unknown = sorted(labels - set(axes[axis]))
        if unknown:
            raise ConfigError(f"--only {axis}={unknown[0]}: not a label of {axis} ({', '.join(axes[axis])})")
    return only


def parse_only(items: list[str]) -> dict[str, set[str]]:
    """``["struct=1-layer-nonlin,4-layer-nonlin", "k=1"]`` -> {axis: labels}."""
    only: dict[str, set[str]] = {}
    for item in items:
        axis, sep, labels = item.partition("=")
        if not sep or not axis or not labels:
            raise ConfigError(f"--only takes AXIS=LABEL[,LABEL...], not {item!r}")
        only.setdefault(axis.replace("-", "_"), set()).update(labels.split(","))
    return only


def write_tables(spec: Spec, out: Path, page: bool = False, only: dict[str, set[str]] | None = None) -> None:
    """table.md, results.csv/json and the plots from what ``out`` holds now; with ``page``, the tables
    into the spec's results page too (``page:``; never for ``--quick``); with ``only`` ({axis: labels}), of
    those points alone."""
    if not out.is_dir():
        raise ConfigError(f"{out} holds no sweep yet")
    records = [r for r in collect(spec, out, set(read_json(out / JOBS) or {})) if picked(r, only or {})]
    written = write_report(spec, out, records, page)
    if page and spec.page is not None:
        note(f"dvae sweep: wrote the tables into {written['page']}" if "page" in written else
             f"dvae sweep: --quick: its numbers are not written into {spec.page}")


def _written(out: Path) -> dict[str, Path]:
    from .plots import CURVES_PNG, FINAL_PNG
    from .report import RESULTS_CSV, RESULTS_JSON, TABLE_MD

    names = {"table": TABLE_MD, "csv": RESULTS_CSV, "json": RESULTS_JSON, "curves": CURVES_PNG,
             "final": FINAL_PNG}
    return {k: out / v for k, v in names.items() if (out / v).is_file()}


def print_status(summary: dict[str, Any]) -> None:
    for line in status_lines(summary["point_states"], summary["errors"], summary["progress"]):
        note(line)
