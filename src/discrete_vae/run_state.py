"""What a run folder holds between two steps, and how a resumed run finds it again.

The training loop (:mod:`discrete_vae.loop`) keeps its progress in a :class:`RunState`: the step, the best
validation so far and a copy of that model, the partial sums of the next loss line, the seconds and steps
of training so far (so that a resumed run's ``steps_per_s`` covers all of its stretches), and the run's log.
Every ``checkpoint_every`` steps (and at the last) the whole state goes atomically into ``last.safetensors``
right after the optimizer step and *before* that step's loss line and validation, with the length of
``metrics.jsonl`` at that moment (``log_bytes``). A resume therefore

- cuts ``metrics.jsonl`` back to ``log_bytes`` and TensorBoard back to the checkpoint's step,
- rewrites ``best.safetensors`` from the checkpoint's best model (a validation after the checkpoint may
  have replaced it),
- replays the step's line and validation on their grids (``pending``), and continues,

and ends with the weights, ``metrics.jsonl`` and ``best.safetensors`` of a run that was never interrupted,
also when a finished run is resumed with a larger ``--steps`` (the last step's extras — a partial loss
line, a validation off the grid — are undone). A checkpoint written on a signal follows its step's lines
(``logged``); the last step's is written again as ``finished`` once the run is complete.
Checkpoints of earlier versions (written after their step's lines, or without ``finished``) are read through
:func:`~discrete_vae.upgrade.upgrade_run_state`.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import __version__
from .checkpoint import (
    STEP_MAX,
    check_entries,
    check_range,
    finite_state,
    invalid,
    load_checkpoint,
    remove_partial_writes,
    restore_training,
    rng_state,
    save_checkpoint,
)
from .distributed import Distributed, load_local_state, local_state
from .errors import NonFiniteLossError, UserError
from .runs import BEST, LAST, METRICS, RunLog, note
from .upgrade import upgrade_run_state

if TYPE_CHECKING:
    from .loop import Task


def check_run_state(path: Path, state: dict[str, Any], columns: int) -> None:
    """The types and ranges of what :meth:`RunState.resume` reads: one :class:`UserError` line naming the
    file and the entry."""
    check_entries(path, state, {"optimizer": dict, "rng": dict, "data": dict, "best": dict,
                                "sums": torch.Tensor, "count": int, "log_bytes": int})
    check_entries(path, state["best"], {"step": int, "nll": float}, "best")
    check_range(path, "best.step", state["best"]["step"], -1, state["step"])
    check_range(path, "count", state["count"], 0, STEP_MAX)
    check_range(path, "log_bytes", state["log_bytes"], 0, STEP_MAX)
    if state["sums"].shape != (columns,):
        raise invalid(path, f"sums is not a tensor of {columns} partial sums")
    if state.get("best_model") is not None and not isinstance(state["best_model"], dict):
        raise invalid(path, "best_model is neither a mapping of tensors nor null")
    if state.get("timed") is not None:  # absent from checkpoints of earlier versions
        check_entries(path, state["timed"], {"seconds": float, "steps": int}, "timed")
        check_range(path, "timed.steps", state["timed"]["steps"], 0, state["step"])
        if not 0 <= state["timed"]["seconds"] < math.inf:
            raise invalid(path, f"timed.seconds {state['timed']['seconds']} is not a finite duration")


class RunState:
    """The progress of one run through :func:`~discrete_vae.loop.fit`, and its writes to the run folder."""

    def __init__(self, task: Task, run_dir: Path, ddp: Distributed):
        self.task, self.run_dir, self.ddp = task, Path(run_dir), ddp
        self.step, self.saved = 0, None  # saved: the step of last.safetensors
        self.best: dict[str, Any] = {"step": -1, "nll": math.inf, "metrics": {}}
        self.best_model: dict[str, torch.Tensor] | None = None
        self.sums = torch.zeros(len(task.columns), dtype=torch.float64, device=task.device)
        self.count = 0  # steps summed in `sums`
        self.schedule: tuple[float, ...] = ()  # the learning rate and the scalars of the last step
        self.pending = False  # resumed from a checkpoint written before its step's lines
        self.finished = False
        self.last_valid: dict[str, Any] = {}  # the metrics of the last validation
        self.timed: dict[str, Any] | None = None  # training seconds and steps up to the checkpoint resumed
        self.log: RunLog | None = None
        self.resume_command = f"{task.command} --resume {run_dir}"

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        """A fresh run: open its log (rank 0)."""
        if self.ddp.main:
            self.log = RunLog(self.run_dir, None)

    def resume(self, total: int) -> None:
        """Restore the task's modules, the RNG and this state from ``last.safetensors``; cut the logs back to
        it and put its best model back (a finished run is left as it is)."""
        path, task = self.run_dir / LAST, self.task
        state = load_checkpoint(path, task.device)
        task.check_state(path, state)
        state = upgrade_run_state(state, self.run_dir, task.total_of)
        check_run_state(path, state, len(task.columns))
        log = self.run_dir / METRICS
        if not log.is_file() or log.stat().st_size < state["log_bytes"]:
            raise UserError(f"{log} is missing or shorter than {path} expects; the run folder is damaged")
        restore_training(path, state, task.modules(), task.device, rank=self.ddp.rank, expect=task.identity)
        if "rank_local" in state:
            load_local_state(task.model, state["rank_local"], self.ddp.rank)
        self.step = self.saved = int(state["step"])
        self.config_then = state["config"]  # the options the checkpoint was trained with
        if self.step > total:
            raise UserError(f"--steps {total} lies before the checkpoint's step {self.step}")
        self.finished = bool(state.get("finished")) and self.step == total
        at = "checkpoint_" if "checkpoint_best" in state and not self.finished else ""  # extended: as then
        self.best, self.best_model = {"metrics": {}, **state[f"{at}best"]}, state.get(f"{at}best_model")
        self.sums.copy_(state["sums"])
        self.count, self.pending = int(state["count"]), not state.get("logged", False)
        self.schedule = tuple(state.get("schedule", ()))
        self.timed = state.get("timed")
        if self.finished and self.ddp.main:
            note(f"{task.command}: {self.run_dir} is already at its final step {self.step}; nothing to do "
                 "(give --steps N to train further)")
        if self.finished or not self.ddp.main:
            return
        remove_partial_writes(self.run_dir)
        self.log = RunLog(self.run_dir, self.step, int(state["log_bytes"]), replay=self.pending)
        if self.best_model is not None:
            self._save_best(self.best_model)
        elif self.best["step"] < 0:
            (self.run_dir / BEST).unlink(missing_ok=True)

    # ------------------------------------------------------------------ during the run
    def add(self, values: torch.Tensor) -> None:
        """One step's values of the task's columns, into the sums of the next loss line."""
        self.sums += values
        self.count += 1

    def means(self) -> dict[str, float] | None:
        """The mean of each column over the steps since the last line (then reset), or None if none."""
        if self.count == 0:
            return None
        means = dict(zip(self.task.columns, (self.sums / self.count).tolist(), strict=True))
        self.sums.zero_()
        self.count = 0
        return means

    def offer(self, metrics: dict[str, Any]) -> None:
        """A validation's metrics: the last validation, and the new best (kept in memory and in
        ``best.safetensors``) if it wins."""
        task = self.task
        self.last_valid = metrics
        if metrics["nll"] < self.best["nll"] and finite_state(task.model, task.optimizer):
            self.best = {"step": self.step, "nll": metrics["nll"], "metrics": metrics}
            self.best_model = {k: v.detach().clone() for k, v in task.model.state_dict().items()}
            self._save_best(self.best_model)

    def _save_best(self, model: dict[str, torch.Tensor]) -> None:
        save_checkpoint(self.run_dir / BEST, {"model": model, "config": self.task.config.to_dict(),
                                              "step": self.best["step"], "metrics": self.best["metrics"],
                                              "version": __version__, **self.task.identity})

    def checkpoint(self, timed: dict[str, Any], logged: bool = False) -> None:
        """The whole state into ``last.safetensors`` (rank 0 writes; every rank gives its RNG and chains);
        ``timed``: the seconds and steps of training so far (:meth:`~discrete_vae.loop.Timer.so_far`);
        ``logged``: written after the step's lines (a signal's stop)."""
        task = self.task
        if not finite_state(task.model, task.optimizer):
            raise NonFiniteLossError("non-finite parameters", self.step, self.saved, self.resume_command)
        rng = self.ddp.gather(rng_state(task.device))
        local = self.ddp.gather(local_state(task.model))
        if self.ddp.main:
            state = {
                **{name: module.state_dict() for name, module in task.modules().items()},
                "rng": {k: [r[k] for r in rng] for k in rng[0]},
                "rank_local": {k: [r[k] for r in local] for k in local[0]},
                "step": self.step, "best": self.best, "best_model": self.best_model,
                "sums": self.sums, "count": self.count, "log_bytes": self.log.tell(), "logged": logged,
                "finished": False, "schedule": list(self.schedule), "timed": timed,
                "config": task.config.to_dict(), "version": __version__, **task.identity,
            }
            save_checkpoint(self.run_dir / LAST, state)
        self.saved = self.step

    def mark_finished(self) -> None:
        """After the last step's lines and the task's end: ``last.safetensors`` says the run is complete, and
        its best is the run's (``best.safetensors``'), which the last step's validation may have changed. The
        best as of the checkpoint stays beside it for a longer run resumed from there, which replays that
        step's lines (or drops a validation off its grid)."""
        if self.ddp.main:
            path = self.run_dir / LAST
            state = load_checkpoint(path, self.task.device)
            if state["best"]["step"] != self.best["step"]:
                state.update(checkpoint_best=state["best"], checkpoint_best_model=state["best_model"],
                             best=self.best, best_model=self.best_model)
            save_checkpoint(path, {**state, "finished": True})

    def best_net(self) -> torch.nn.Module:
        """The model at its best validation (the model itself when it never validated)."""
        if self.best_model is None:
            return self.task.model
        net = copy.deepcopy(self.task.model)
        net.load_state_dict(self.best_model)
        return net

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
