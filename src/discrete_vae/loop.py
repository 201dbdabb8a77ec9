"""The training loop, the one every ``dvae`` training command runs: :func:`fit`.

Top to bottom, each step is: a batch, the schedule (learning rate and the step's scalars: temperature, KL
weight), the step (the task's losses, compiled or eager, :class:`~discrete_vae.compiling.Step`), the
negative phase of an unnormalised prior, the backward pass and the optimizer, then on their grids the
checkpoint (:mod:`discrete_vae.run_state`: before the step's lines, so that a resume replays them), the loss
line, the validation, and a stop on SIGTERM or SIGINT with a checkpoint. What is trained, and how it is
scored, is a :class:`Task`: the VAE of ``dvae train`` (:mod:`discrete_vae.train`) or the stochastic binary
network of structured output prediction (:mod:`discrete_vae.sop`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .compiling import Step
from .distributed import Distributed
from .errors import NonFiniteLossError
from .progress import GracefulStop, Progress, Stopped
from .run_state import RunState


class Task:
    """What :func:`fit` trains: built by a command from its config, in a run folder it holds.

    Attributes: ``command`` (``"dvae train"``), ``config`` (a :class:`~discrete_vae.options.Sectioned`
    config whose ``run`` section has ``log_every``, ``eval_every`` and ``checkpoint_every``, and whose
    ``optim`` section has ``lr``), ``device``, ``model`` (the module checkpointed), ``optimizer``,
    ``batches`` (a :class:`~discrete_vae.data.BatchIterator`), ``scaler`` (a GradScaler, disabled unless
    fp16), ``columns`` (the per-step values averaged into each loss line, the first the reported loss),
    ``identity`` (entries every checkpoint carries, such as the data size), ``ddp`` (its processes),
    ``own`` (parameters stepped on the losses' ``aux_loss`` only) and ``joint`` (whether ``aux_loss`` is
    folded into the loss instead).
    """

    command: str
    config: Any
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: Any
    scaler: torch.amp.GradScaler
    columns: tuple[str, ...]
    identity: dict[str, Any]
    ddp = Distributed()  # the processes the task runs in (one, unless under torchrun)
    own: list[nn.Parameter] = []
    joint = False
    scalars: tuple[int, ...] = ()  # which arguments of `losses` after the batch change during a run

    def modules(self) -> dict[str, Any]:
        """What a checkpoint holds a state of, by its key."""
        extra = {"scaler": self.scaler} if self.scaler.is_enabled() else {}
        return {"model": self.model, "optimizer": self.optimizer, "data": self.batches, **extra}

    def total_of(self, config: dict[str, Any]) -> int:
        """The total steps of a run with this config (as ``config.yaml`` holds it, flat or in sections)."""
        return int(type(self.config).flat_values(config)["steps"])

    def check_state(self, path: Path, state: Any) -> None:
        """One :class:`~discrete_vae.errors.UserError` line if ``state`` is not a checkpoint of this task."""

    def schedule(self, step: int, total: int) -> tuple[float, tuple[float, ...]]:
        """The learning rate of step ``step`` (from 0) and the scalars its losses take."""
        return self.config.optim.lr, ()

    def losses(self, x: Tensor, *scalars: float) -> tuple[Tensor, Tensor | None, Any]:
        """``(loss, aux_loss, terms)`` of one batch: the loss to minimise, the estimator's own loss (or None)
        and what :meth:`logged` reads."""
        raise NotImplementedError

    def logged(self, terms: Any) -> Tensor:
        """The step's values of :attr:`columns` (detached)."""
        raise NotImplementedError

    def negative_phase(self, scalars: tuple[float, ...]) -> Tensor | None:
        """A loss term of value 0 whose gradient is an unnormalised prior's ``∇ log Z`` (its sampler steps
        here), or None."""
        return None

    def line(self, means: dict[str, float], schedule: tuple[float, ...]) -> dict[str, Any]:
        """The loss line of ``metrics.jsonl`` from the column means since the last line and the learning rate
        and scalars of the step it follows."""
        return means

    def validate(self, state: RunState) -> dict[str, Any]:
        """The validation metrics at ``state.step`` (``nll`` is what the best model minimises)."""
        raise NotImplementedError

    def finish(self, state: RunState, result: dict[str, Any]) -> dict[str, Any]:
        """After the last step's lines: the run's result (a test evaluation may add a line)."""
        return result

    def finished(self, state: RunState) -> dict[str, Any]:
        """The result of a run found complete at its final step (nothing is written)."""
        return {"step": state.step, "best_step": state.best["step"]}


def fit(task: Task, state: RunState, total: int, compiled: bool, progress: bool | None) -> dict[str, Any]:
    """Train ``task`` from ``state`` to step ``total``; returns the result of :meth:`Task.finish`."""
    config, model, ddp = task.config, task.model, state.ddp
    step_fn = Step(task.losses, compiled, task.device, task.command, tensors=task.scalars)
    bar = Progress(total, state.step, Progress.mode_for(progress) if ddp.main else "off", desc="train")
    timer = Timer(task.device, state.step, state.timed)
    model.train()
    try:
        with GracefulStop() as stop:
            if state.pending:  # the checkpoint precedes its step's lines and validation
                with timer:
                    after_step(task, state, total, bar)
            while state.step < total:
                x = task.batches.next().to(task.device, non_blocking=True)
                try:
                    values, state.schedule = step_once(task, step_fn, x, state.step, total)
                except FloatingPointError as e:
                    raise NonFiniteLossError(f"non-finite loss ({e})", state.step + 1, state.saved,
                                             state.resume_command) from None
                state.step += 1
                state.add(values)
                with timer:
                    if state.step % config.run.checkpoint_every == 0 or state.step == total:
                        state.checkpoint(timer.so_far(state.step))
                    after_step(task, state, total, bar)
                signum = ddp.any(stop.signum)
                if signum and state.step < total:  # preemption or Ctrl-C: a checkpoint, then stop
                    state.checkpoint(timer.so_far(state.step), logged=True)
                    raise Stopped(signum, state.step, state.resume_command)
        result = task.finish(state, {**timer.result(state.step), "compiled": step_fn.compiled,
                                     "compile_seconds": round(step_fn.compile_seconds, 3)})
        state.mark_finished()
        return result
    finally:
        state.close()
        bar.close()


def step_once(task: Task, step_fn: Step, x: Tensor, step: int,
              total: int) -> tuple[Tensor, tuple[float, ...]]:
    """One optimizer step of ``task`` on the batch ``x`` as step ``step`` (from 0) of ``total``: the schedule,
    the losses (``step_fn``, :meth:`Task.losses` compiled or eager), the negative phase, the estimator's own
    gradients, the backward pass and the optimizer. Returns the step's values of :attr:`Task.columns` and its
    ``(lr, *scalars)``; a non-finite loss raises :class:`FloatingPointError` with its value, before any
    update."""
    optimizer, scaler = task.optimizer, task.scaler
    lr, scalars = task.schedule(step, total)
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss, aux_loss, terms = step_fn(x, *scalars)
    phase = task.negative_phase(scalars)
    if phase is not None:
        loss = loss + phase
    values = task.logged(terms)
    if not (torch.isfinite(values[0]) and torch.isfinite(loss)):
        raise FloatingPointError(float(values[0] if not torch.isfinite(values[0]) else loss.detach()))
    optimizer.zero_grad(set_to_none=True)
    aux = estimator_gradients(task.own, None if aux_loss is None else scaler.scale(aux_loss))
    scaler.scale(loss).backward()
    if not task.joint:  # else the backward pass gave them
        for p, g in zip(task.own, task.ddp.average(aux), strict=True):
            p.grad = g
    scaler.step(optimizer)
    scaler.update()
    return values, (lr, *scalars)


def after_step(task: Task, state: RunState, total: int, bar: Progress) -> None:
    """The step's loss line and validation, on their grids and both at the last step (rank 0 writes)."""
    step, run, final = state.step, task.config.run, state.step == total
    if step % run.log_every == 0 or final:
        means = state.means()
        if means is not None and state.log is not None:
            line = task.line(means, state.schedule)
            state.log.write(step, "train", line)
            bar.update(step, loss=line["loss"], tau=line.get("tau"))
    if state.ddp.main and (step % run.eval_every == 0 or final):
        metrics = task.validate(state)
        state.offer(metrics)
        state.log.write(step, "valid", metrics)
        bar.update(step, valid_nll=metrics["nll"])
    bar.update(step)


def estimator_gradients(own: list[Tensor], aux_loss: Tensor | None) -> list[Tensor]:
    """The gradient of the estimator's ``aux_loss`` with respect to its own parameters only (zeros where
    it has none), taken before the model's backward pass, whose graph it shares."""
    if aux_loss is None or not own:
        return [torch.zeros_like(p) for p in own]
    grads = torch.autograd.grad(aux_loss, own, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(own, grads, strict=True)]


class Timer:
    """Seconds of training: the time since the start less what ``with timer:`` blocks took (checkpoints,
    lines, validations; on CUDA after a synchronisation, so that they are not charged the steps' kernels),
    added to ``before``, the seconds and steps timed up to the checkpoint a run resumed from (a checkpoint
    carries them, :meth:`so_far`). A checkpoint of an earlier version has none: the timing starts at it."""

    def __init__(self, device: torch.device, first_step: int, before: dict[str, Any] | None = None):
        self.device, self.first_step, self.busy, self.t0 = device, first_step, 0.0, None
        self.before = before or {"seconds": 0.0, "steps": 0}
        self.started = time.perf_counter()

    def __enter__(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.busy += time.perf_counter() - self.t0
        self.t0 = None

    def so_far(self, step: int) -> dict[str, Any]:
        """The seconds and steps timed up to ``step`` over every stretch of the run (inside a ``with timer:``
        block, up to its start): what a checkpoint at ``step`` carries."""
        now = time.perf_counter() if self.t0 is None else self.t0
        return {"seconds": float(self.before["seconds"]) + max(now - self.started - self.busy, 0.0),
                "steps": int(self.before["steps"]) + step - self.first_step}

    def result(self, step: int) -> dict[str, float]:
        """``train_seconds``, ``steps_per_s`` and ``timed_steps`` (the steps they cover: all of them unless
        the run resumed from a checkpoint of an earlier version)."""
        timed = self.so_far(step)
        return {"train_seconds": round(timed["seconds"], 3),
                "steps_per_s": round(timed["steps"] / max(timed["seconds"], 1e-9), 2),
                "timed_steps": timed["steps"]}
