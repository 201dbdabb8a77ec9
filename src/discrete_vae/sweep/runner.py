"""A sweep's points: each grid point is one job (train, or resume, then every evaluation) whose state is
on disk; :mod:`.executors` runs the jobs.

A point's folder ``OUT/NAME/`` holds ``run/`` (the ``dvae train`` run folder), ``train.json`` (training's
result, written when training finished), ``eval-EVAL.json`` per evaluation and, after a failure,
``error.json``. A job holds an ``flock`` on ``OUT/NAME/.lock`` while it runs, so a point is never trained
twice at once and ``--status`` can tell a running point from an interrupted one. Rerunning a sweep skips
what is done, resumes an interrupted run from its checkpoint (``dvae train --resume``) and retries a
failed point.

A result is only ever shown with the settings it was made with. The run folder's ``config.yaml`` is the
resolved config a point trained with; an evaluation's JSON holds its settings. A point whose spec config now
differs is ``changed`` (the sweep refuses to run it unless told to retrain it; its old results are not
shown), except that a larger ``steps`` extends a run whose schedules ignore its length; an evaluation whose
settings differ is scored again.
"""

from __future__ import annotations

import json
import shutil
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, UserError
from ..progress import clock
from .commands import command
from .spec import Evaluation

TRAIN, ERROR, LOCK, JOBS, SWEEP = "train.json", "error.json", ".lock", "jobs.json", "sweep.json"
STATES = ("done", "running", "failed", "interrupted", "changed", "submitted", "pending", "waiting",
          "unselected")
RUNNABLE = ("failed", "interrupted", "changed", "submitted", "pending")  # waiting: on a select: choice;
# unselected: not the chosen label, so never run; changed: run only when told to retrain


def eval_file(evaluation: Evaluation) -> str:
    return f"eval-{evaluation.name}.json"


def write_json(path: Path, value: Any) -> None:
    from ..checkpoint import atomic_write_bytes
    from ..runs import dumps

    atomic_write_bytes(path, (dumps(value) + "\n").encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def config_changes(runs: Any, folder: Path, config: Any) -> dict[str, tuple[Any, Any]]:
    """``{option: (trained with, the spec's now)}`` for the point in ``folder`` (nothing when it has no run
    yet, or when only ``steps`` grew and the run's schedules ignore its length: the run is extended)."""
    from .commands import NEUTRAL, recorded

    old = recorded(runs, folder / "run")
    if old is None:
        return {}
    new = config.flat()
    changed = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
               if k not in NEUTRAL and old.get(k) != new.get(k)}
    steps = changed.get("steps")
    if set(changed) == {"steps"} and runs.length_free(config) and None not in steps and steps[0] < steps[1]:
        return {}
    return changed


def changes_text(changed: dict[str, Any]) -> str:
    """``{option: (old, new)}`` (pairs as tuples or lists) as ``option old -> new, ...``."""
    return ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())


def current_eval(folder: Path, evaluation: Evaluation) -> dict[str, Any] | None:
    """The point's result of ``evaluation`` if one was made with its settings as they are now."""
    result = read_json(folder / eval_file(evaluation))
    if isinstance(result, dict) and result.get("settings") == evaluation.options():
        return result
    return None


class PointLock:
    """A non-blocking exclusive ``flock`` on ``folder/.lock``; ``held`` is False when another process has
    it. The kernel drops it with the process, so a killed job leaves no stale lock."""

    def __init__(self, folder: Path):
        import fcntl

        folder.mkdir(parents=True, exist_ok=True)
        self.file = (folder / LOCK).open("a")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.held = True
        except BlockingIOError:
            self.held = False
            self.file.close()

    def release(self) -> None:
        if self.held:
            self.file.close()
            self.held = False


@dataclass
class PointJob:
    """What a worker runs for one grid point (picklable: submitit sends it to the worker)."""

    folder: Path
    values: dict[str, Any]
    evals: tuple[Evaluation, ...]
    threads: int
    command: str = "train"
    retrain: bool = False  # the spec's config changed since the point trained: train it again from scratch
    sweep: str | None = None  # the sweep's command line, recorded with the point's results

    def __call__(self) -> dict[str, Any]:
        return run_point(self)


def run_point(job: PointJob) -> dict[str, Any]:
    """Train (or resume) the point's run, then score it with every evaluation not yet done. Returns
    ``{"state": ...}``: done, interrupted (a signal stopped training after a checkpoint), running (another
    job holds the point) or failed (``error`` is one line; ``error.json`` keeps the traceback)."""
    import torch

    from ..denormals import flush_denormals

    with flush_denormals():  # before the job's intra-op threads start, so that every one inherits it
        torch.set_num_threads(job.threads)
        lock = PointLock(job.folder)
        if not lock.held:
            return {"state": "running"}
        return _run_point(job, lock)


def _run_point(job: PointJob, lock: PointLock) -> dict[str, Any]:
    from ..progress import Stopped
    from ..provenance import commit
    from ..recipe import resolve_device
    from ..runs import LAST

    commit()  # the code this job loaded (kept for its results), though the checkout may move on meanwhile
    runs = command(job.command)
    try:
        (job.folder / ERROR).unlink(missing_ok=True)
        run = job.folder / "run"
        config = runs.config(job.values)
        changed = config_changes(runs, job.folder, config)
        if changed and not job.retrain:
            raise ConfigError(f"trained with other settings ({changes_text(changed)}); rerun the sweep with "
                              "--retrain-changed to train it again")
        if changed:  # from scratch: the old run, its results and its evaluations go
            shutil.rmtree(run, ignore_errors=True)
            for old in (job.folder / TRAIN, *job.folder.glob("eval-*.json")):
                old.unlink(missing_ok=True)
        if short_of(job.folder, runs.steps(config)):
            for name in (TRAIN, *(eval_file(e) for e in job.evals)):  # the spec asks for more steps now
                (job.folder / name).unlink(missing_ok=True)
        if not (job.folder / TRAIN).is_file():
            # interrupted or extended: resume, with the spec's length (and data folder)
            result = runs.resume(config, run) if (run / LAST).is_file() else runs.fresh(config, run)
            made = made_by(job, resolve_device(config.run.device))
            write_json(job.folder / TRAIN, {**result, "provenance": made})
        for evaluation in job.evals:
            if current_eval(job.folder, evaluation) is None:  # not scored yet, or with other settings
                result = runs.evaluate(run, evaluation, job.values.get("data_dir"))
                write_json(job.folder / eval_file(evaluation),
                           {**result, "settings": evaluation.options(),
                            "provenance": made_by(job, resolve_device("auto"))})
        return {"state": "done"}
    except Stopped as e:
        return {"state": "interrupted", "error": str(e)}
    except Exception as e:  # one point's failure is recorded; the sweep goes on
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        if not isinstance(e, UserError):
            message = f"{type(e).__name__}: {message}"
        write_json(job.folder / ERROR, {"error": message, "traceback": traceback.format_exc()})
        return {"state": "failed", "error": message}
    finally:
        lock.release()


def made_by(job: PointJob, device: Any) -> dict[str, Any]:
    """Where a result of ``job`` is made (:func:`~discrete_vae.provenance.provenance`) and, where the sweep
    gave it, by which command line."""
    from ..provenance import provenance

    return {**provenance(device), **({"command": job.sweep} if job.sweep else {})}


def short_of(folder: Path, steps: int | None) -> bool:
    """Whether the point's finished training stopped before ``steps`` (the spec's length, raised since)."""
    trained = read_json(folder / TRAIN) if steps else None
    return bool(trained) and isinstance(trained.get("step"), int) and trained["step"] < steps


def point_state(folder: Path, evals: tuple[Evaluation, ...], submitted: bool = False,
                steps: int | None = None, changed: bool = False) -> str:
    """What the files (and the lock) say about a point: one of :data:`STATES`; a point trained for fewer
    than ``steps``, or with an evaluation made with other settings, is interrupted; ``changed``: its run was
    trained with another config than the spec's now."""
    from ..runs import LAST

    done = (folder / TRAIN).is_file() and all(current_eval(folder, e) is not None for e in evals)
    if done and not changed and not short_of(folder, steps):
        return "done"
    if folder.is_dir():
        lock = PointLock(folder)
        busy = not lock.held
        lock.release()
        if busy:
            return "running"
    if changed:
        return "changed"
    if (folder / ERROR).is_file():
        return "failed"
    if (folder / TRAIN).is_file() or (folder / "run" / LAST).is_file():
        return "interrupted"
    return "submitted" if submitted else "pending"


def status_lines(states: dict[str, str], errors: dict[str, str],
                 progress: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """A count of the points in each state, then a line per point: its state, and its error, or how far a
    running or interrupted point's training has logged and how fast it has gone
    (``step 612,000 of 1,000,000 (61%), 38.5 steps/s, ETA 2:47:57``)."""
    counts = {s: sum(1 for v in states.values() if v == s) for s in STATES}
    lines = [", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no points"]
    width = max((len(n) for n in states), default=0)
    for name, state in states.items():
        if state == "unselected":
            continue
        detail = errors.get(name) or progress_text((progress or {}).get(name))
        lines.append(f"  {name:<{width}}  {state}{': ' + detail if detail else ''}")
    return lines


def progress_text(progress: dict[str, Any] | None) -> str:
    """``step S of N (P%)``, then the rate its checkpoint timed and the time the rest takes at that rate
    (``, R steps/s, ETA h:mm:ss``) where it has one; ``step S`` for a run without a length in steps;
    empty before a logged step."""
    progress = progress or {}
    step, steps, rate = progress.get("step"), progress.get("steps"), progress.get("steps_per_s")
    if step is None:
        return ""
    text = f"step {step:,}" + (f" of {steps:,} ({100 * step // steps}%)" if steps else "")
    if rate:
        text += f", {rate:.3g} steps/s"
        text += f", ETA {clock(max(steps - step, 0) / rate)}" if steps else ""
    return text

