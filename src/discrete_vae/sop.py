"""Structured output prediction (SOP): the lower half of a binary image from its upper half.

The benchmark of Raiko et al. (2014), https://arxiv.org/abs/1406.2989, as used by Maddison, Mnih and
Teh (2017, "The Concrete Distribution", https://arxiv.org/abs/1611.00712, sec. 5 and Appendix D) and
by Potapczynski, Loaiza-Ganem and Cunningham (2020, "Invertible Gaussian Reparameterization",
https://arxiv.org/abs/1912.09588, sec. 5): ``x_upper -> z_1 -> ... -> z_L -> p(x_lower)`` with
layers of stochastic binary units ``z in {-1, +1}`` (``2b - 1``, as Maddison et al. do).

- Training maximises the multi-sample objective
  :math:`\\mathcal{L}^m = \\log \\frac{1}{m}\\sum_{i=1}^m p(x_{lower} \\mid z_i)` with relaxed ``z_i``
  drawn ancestrally given ``x_upper`` (all ``m`` samples in one batched pass).
- Evaluation scores the discrete model: :math:`\\mathcal{L}^{SP}_{100}`, the same quantity with 100
  hard binary samples; ``nll = -L^SP`` in nats (Maddison et al. report 58.5 at m = 1 and 53.4 at
  m = 50 for 392V-240H-240H-392V with the binary Concrete).

The network and its relaxations of one binary unit (``gs``, ``igr-i`` / ``igr-sb``, ``igr-planar``) are
in :mod:`discrete_vae.models.sop_net`; this module holds the run: config, training loop, evaluation.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from . import __version__
from .checkpoint import (
    STEP_MAX,
    atomic_write_bytes,
    check_entries,
    check_range,
    finite_state,
    invalid,
    load_checkpoint,
    load_module_state,
    remove_partial_writes,
    restore_training,
    rng_state,
    run_checkpoint,
    save_checkpoint,
)
from .compiling import COMPILE_MODES, Step, should_compile
from .data import BatchIterator, load_dataset
from .denormals import flush_denormals
from .errors import ConfigError, NonFiniteLossError, UserError
from .estimators import ESTIMATORS, Pathwise, build_estimator
from .models.sop_net import (  # noqa: F401  (the SOP network's names, re-exported)
    ARCHS,
    EVAL_ROWS,
    MODELS,
    SOPNet,
    StochasticBinaryLayer,
    deterministic_map,
    evaluate,
    multisample_objective,
    sop_bound,
    split_halves,
)
from .options import check_finite, check_seed, coerce_options
from .progress import GracefulStop, Stopped
from .runs import (
    BEST,
    CONFIG,
    LAST,
    METRICS,
    check_resumable,
    dumps,
    note,
    open_new_run,
    open_resumed_run,
    record_overrides,
)

DATASETS = ("binarized_mnist", "digits")


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


def per_unit() -> list[str]:
    """The estimators that draw each unit of the network on its own (the pathwise ones), from the registry."""
    return [n for n in ESTIMATORS.names() if issubclass(ESTIMATORS.get(n), Pathwise)]


@dataclass
class SOPConfig:
    """Every option of one SOP run (the ``dvae sop train`` flags); stored in ``config.yaml``."""

    model: str = _opt("gs", f"posterior of the binary units: {', '.join(MODELS)}")
    estimator: str = _opt("auto", f"per-unit estimator of the gs units: {', '.join(per_unit())}; the IGR "
                          "units take their own relaxation (relaxed); auto = gs or relaxed")
    arch: str = _opt("double_linear", f"network: {', '.join(ARCHS)}")
    units: int = _opt(240, "stochastic binary units per layer (and hidden width of nonlinear maps)")
    k: int = _opt(1, "m, relaxed samples per example in the training objective L^m (--samples is a "
                  "deprecated alias)")
    temperature: float = _opt(1.0, "tau, temperature of the relaxation (training and relaxed_nll)")
    lr: float = _opt(1e-3, "AdamW learning rate")
    weight_decay: float = _opt(1e-3, "AdamW decoupled weight decay")
    batch_size: int = _opt(100, "examples per training step")
    steps: int = _opt(50_000, "total training steps (with --resume: the new total)")
    seed: int = _opt(0, "seed of the weights, the data order, the noise and the evaluations")
    dataset: str = _opt("binarized_mnist", f"dataset: {', '.join(DATASETS)}")
    data_dir: str | None = _opt(None, "folder of the dataset files (default: the dataset's own)")
    out: str | None = _opt(None, "run folder (default: runs/sop-MODEL-ARCH-mK-TIMESTAMP)")
    eval_every: int = _opt(5_000, "validate (hard samples, L^SP) every N steps and at the end")
    checkpoint_every: int = _opt(1_000, "write the resumable state to last.safetensors every N steps")
    log_every: int = _opt(100, "write the mean training loss to metrics.jsonl every N steps")
    val_samples: int = _opt(100, "hard samples per example in validation")
    test_samples: int = _opt(100, "hard samples per example in the final test evaluation")
    device: str = _opt("auto", "cpu, cuda, cuda:N or auto")
    compile: str = _opt("auto", "the training step through torch.compile: on, off, or auto (on a GPU, and on "
                        "CPUs with AVX-512 or bfloat16 matrix units, for runs of 20,000 steps or more)")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise a one-line :class:`ConfigError` for an unknown name or an out-of-range value."""
        if self.model not in MODELS:
            raise ConfigError(f"unknown --model {self.model!r}; choose one of: {', '.join(MODELS)}")
        if self.estimator not in ("auto", "relaxed") or self.model == "gs":
            if self.model != "gs" or self.estimator not in ("auto", *per_unit()):
                raise ConfigError(f"--model {self.model} trains with --estimator "
                                  f"{', '.join(per_unit()) if self.model == 'gs' else 'relaxed'} (per-unit "
                                  f"draws through the network), not {self.estimator}")
        if self.arch not in ARCHS:
            raise ConfigError(f"unknown --arch {self.arch!r}; choose one of: {', '.join(ARCHS)}")
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown --dataset {self.dataset!r}; choose one of: {', '.join(DATASETS)}")
        check_finite(self)
        check_seed("--seed", self.seed)
        for name in ("units", "k", "batch_size", "steps", "eval_every", "checkpoint_every",
                     "log_every", "val_samples", "test_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not self.temperature > 0 or not math.isfinite(self.temperature):
            raise ConfigError(f"--temperature must be positive, got {self.temperature}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"--weight-decay must be non-negative, got {self.weight_decay}")
        if self.compile not in COMPILE_MODES:
            raise ConfigError(f"--compile must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SOPConfig:
        """Type-checked like flags; ``samples``, the old name of ``k``, is read as ``k``."""
        values = dict(values)
        if "samples" in values and "k" not in values:
            values["k"] = values.pop("samples")
        return cls(**coerce_options(cls, values, "SOP option"))


def build_net(config: SOPConfig, image_shape: tuple[int, int]) -> SOPNet:
    cut = (image_shape[0] // 2) * image_shape[1]
    estimator = None
    if config.model == "gs":
        estimator = build_estimator("gs" if config.estimator == "auto" else config.estimator)
    return SOPNet(cut, image_shape[0] * image_shape[1] - cut, config.arch, config.model, config.units,
                  estimator)


def _state(model: dict[str, Tensor], config: SOPConfig, image_shape: tuple[int, int], step: int,
           **extra: Any) -> dict[str, Any]:
    return {"model": model, "config": config.to_dict(), "image_shape": list(image_shape),
            "step": step, "version": __version__, **extra}


def load_run(run_dir: Path, which: str = "best", device: str = "cpu") -> tuple[SOPNet, SOPConfig, dict]:
    """The net of an SOP run folder from its ``best`` (else ``last``) safetensors checkpoint."""
    path = run_checkpoint(run_dir, which, what="SOP run folder")
    state = load_checkpoint(path)
    if not isinstance(state, dict) or "image_shape" not in state or "config" not in state:
        raise UserError(f"{path} is not an SOP checkpoint")
    check_sop_state(path, state)
    config = SOPConfig.from_dict(state["config"])
    net = build_net(config, tuple(state["image_shape"]))
    load_module_state(path, net, state["model"], "the net its config builds")
    return net.to(device).eval(), config, state


def check_sop_state(path: Path, state: dict[str, Any], resumable: bool = False) -> None:
    """The types and ranges of what evaluation (and, ``resumable``, training) reads from an SOP checkpoint:
    one :class:`UserError` line naming the file and the entry."""
    check_entries(path, state, {"model": dict, "config": dict, "step": int, "image_shape": list})
    check_range(path, "step", state["step"], 0, STEP_MAX)
    shape = state["image_shape"]
    if len(shape) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
        raise invalid(path, f"image_shape {shape!r:.40} is not two positive integers")
    if resumable:
        check_entries(path, state, {"optimizer": dict, "rng": dict, "data": dict, "best": dict,
                                    "log_bytes": int, "sums": torch.Tensor})
        check_entries(path, state["best"], {"step": int, "nll": float, "metrics": dict}, "best")
        check_range(path, "best.step", state["best"]["step"], -1, state["step"])
        check_range(path, "log_bytes", state["log_bytes"], 0, STEP_MAX)
        if state["best_model"] is not None and not isinstance(state["best_model"], dict):
            raise invalid(path, "best_model is neither a mapping of tensors nor null")


def _run_dir(config: SOPConfig) -> Path:
    if config.out:
        return Path(config.out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"sop-{config.model}-{config.arch}-m{config.k}-{stamp}"


# what `dvae sop train --resume RUN` may change; each change is recorded in RUN/overrides.jsonl
RESUME_OVERRIDES = ("steps", "lr", "device", "compile", "eval_every", "checkpoint_every", "log_every")
RESUMABLE = ("model", "optimizer", "rng", "data", "step", "best", "best_model", "sums", "log_bytes",
             "config", "image_shape")


def resume_config(run_dir: Path, overrides: dict[str, Any]) -> SOPConfig:
    """The config of the SOP run in ``run_dir`` with ``overrides`` (only :data:`RESUME_OVERRIDES`)."""
    from .config import load_config_file

    run_dir = Path(run_dir)
    changed = sorted(set(overrides) - set(RESUME_OVERRIDES))
    if changed:
        raise UserError(f"cannot change {', '.join('--' + c.replace('_', '-') for c in changed)} when "
                        f"resuming; only {', '.join('--' + c.replace('_', '-') for c in RESUME_OVERRIDES)}")
    check_resumable(run_dir, "SOP run")
    values = load_config_file(run_dir / CONFIG)
    try:
        return SOPConfig.from_dict({**values, **overrides})
    except (TypeError, ValueError) as e:
        raise UserError(f"{run_dir / CONFIG} is damaged ({e})") from None


def _load_resumable(run_dir: Path, config: SOPConfig) -> dict[str, Any]:
    """The state in ``run_dir/last.safetensors``, checked against ``config`` and ``metrics.jsonl``."""
    path = run_dir / LAST
    state = load_checkpoint(path)
    missing = [k for k in RESUMABLE if not isinstance(state, dict) or k not in state]
    if missing:
        raise UserError(f"{path} holds no resumable SOP state (lacks {', '.join(missing)})")
    check_sop_state(path, state, resumable=True)
    fixed = [k for k in config.to_dict() if k not in RESUME_OVERRIDES]
    if not isinstance(state["config"], dict) or any(state["config"].get(k) != getattr(config, k)
                                                    for k in fixed):
        raise UserError(f"{run_dir / CONFIG} does not match {path}; the run folder is damaged")
    if int(state["step"]) > config.steps:
        raise UserError(f"--steps {config.steps} lies before the checkpoint's step {int(state['step'])}")
    log = run_dir / METRICS
    if not log.is_file() or log.stat().st_size < int(state["log_bytes"]):
        raise UserError(f"{log} is missing or shorter than {path} expects; the run folder is damaged")
    return state


def _finished(run_dir: Path, state: dict[str, Any], config: SOPConfig) -> dict[str, Any] | None:
    """The test line of a run that is complete at ``config.steps`` (written after its last checkpoint)."""
    if int(state["step"]) != config.steps:
        return None
    with (run_dir / METRICS).open("rb") as f:
        f.seek(int(state["log_bytes"]))
        tail = f.read().decode(errors="replace").splitlines()
    for line in tail:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("split") == "test":
            return record
    return None


def train(config: SOPConfig, resume: Path | None = None) -> dict[str, Any]:
    """Train (or resume) one SOP model; keep the best-validation and the final net; score the best on test.

    Every ``checkpoint_every`` steps and at the end, ``last.safetensors`` receives the whole state
    (model, optimizer, RNG, data order, step, best-so-far, partial loss sum, the length of
    ``metrics.jsonl``), atomically, right after the optimizer step and before that step's loss line
    and validation. ``resume=RUN_DIR`` cuts off the lines written after the checkpoint, rewrites
    ``best.safetensors`` from the checkpoint's best, replays the step's line and validation on their
    grids and continues: it ends with the weights and ``metrics.jsonl`` of a run that was never
    interrupted. The last step's extras (a partial loss line, a validation off the ``eval_every``
    grid, the test line) are not replayed when a finished run is resumed with a larger ``--steps``; a
    run already complete at ``--steps`` is left as it is. SIGTERM or SIGINT writes a checkpoint after
    the current step's line and validation (``logged``: nothing to replay) and stops. The run folder
    is locked while the run trains, and denormal floats are flushed to zero (:mod:`discrete_vae.denormals`).
    """
    from .recipe import resolve_device

    device = resolve_device(config.device)
    run_dir = Path(resume) if resume is not None else _run_dir(config)
    state = _load_resumable(run_dir, config) if resume is not None else None
    torch.manual_seed(config.seed)
    data = load_dataset(config.dataset, config.data_dir, seed=config.seed).to(device)
    if state is not None:
        lock = open_resumed_run(run_dir, "SOP run")
    else:
        lock = open_new_run(run_dir, "dvae sop train")
    with lock, flush_denormals():  # a failed start leaves no folder holding only .lock
        return _train(config, run_dir, state, data, device)


def _train(config: SOPConfig, run_dir: Path, state: dict[str, Any] | None, data: Any,
           device: torch.device) -> dict[str, Any]:
    """The loop of :func:`train`, in a run folder this process holds."""
    net = build_net(config, data.image_shape).to(device)
    net.init_output_bias(split_halves(data.train, data.image_shape)[1].mean(0))
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    batches = BatchIterator(data.train, config.batch_size, config.seed,
                            dynamic_binarization=data.dynamic_binarization)
    step, best, best_model, saved = 0, {"step": -1, "nll": math.inf, "metrics": {}}, None, None
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum and steps since the last line
    resume_command = f"dvae sop train --resume {run_dir}"

    def losses(upper: Tensor, lower: Tensor) -> Tensor:  # -L^m, the batch mean
        return -multisample_objective(net.log_likelihood(upper, lower, config.k, config.temperature,
                                                         hard=False)).mean()

    train_step = Step(losses, should_compile(config.compile, device, config.steps - int((state or {}).get(
        "step", 0)), 1, "dvae sop train"), device, "dvae sop train")
    config_yaml = yaml.safe_dump(config.to_dict(), sort_keys=False).encode()
    if state is None:
        atomic_write_bytes(run_dir / CONFIG, config_yaml)
        log = (run_dir / METRICS).open("wb")
    else:
        restore_training(run_dir / LAST, state, {"model": net, "optimizer": optimizer, "data": batches},
                         device, expect={"image_shape": list(data.image_shape)})
        done = _finished(run_dir, state, config)
        if done is not None:  # nothing to do: write nothing
            note(f"dvae sop train: {run_dir} is already complete at step {config.steps}; nothing to do "
                 "(give --steps N to train further)")
            return {"run_dir": str(run_dir), "nll": done["nll"], "relaxed_nll": done["relaxed_nll"],
                    "steps": config.steps, "best_step": state["best"]["step"],
                    "valid_nll": state["best"]["nll"], "k": config.k, "finished": True}
        for group in optimizer.param_groups:  # a resume may give a new --lr
            group["lr"] = config.lr
        step, best, best_model = int(state["step"]), dict(state["best"]), state["best_model"]
        saved = step
        sums.copy_(state["sums"])
        remove_partial_writes(run_dir)
        if best_model is None:  # a validation after the checkpoint may have written one
            (run_dir / BEST).unlink(missing_ok=True)
        else:
            save_checkpoint(run_dir / BEST, _state(best_model, config, data.image_shape, best["step"],
                                                   metrics=best["metrics"]))
        record_overrides(run_dir, step, state["config"], config.to_dict(), RESUME_OVERRIDES, "dvae sop train")
        atomic_write_bytes(run_dir / CONFIG, config_yaml)
        log = (run_dir / METRICS).open("r+b")
        log.truncate(int(state["log_bytes"]))  # drop the lines written after the checkpoint
        log.seek(0, 2)
    started, first_step, busy = time.perf_counter(), step, 0.0  # busy: seconds validating, checkpointing

    def write(split: str, metrics: dict[str, Any], at: int | None = None) -> None:
        line = {"step": step if at is None else at, "split": split, **metrics}
        log.write((dumps(line) + "\n").encode())
        log.flush()

    def validate() -> None:
        nonlocal best, best_model, busy
        t0 = time.perf_counter()
        metrics = evaluate(net, data.valid, data.image_shape, config.val_samples, config.temperature,
                           config.seed)
        write("valid", metrics)
        if metrics["nll"] < best["nll"]:
            best = {"step": step, "nll": metrics["nll"], "metrics": metrics}
            best_model = {k: v.detach().clone() for k, v in net.state_dict().items()}
            save_checkpoint(run_dir / BEST, _state(best_model, config, data.image_shape, step,
                                                   metrics=metrics))
        busy += time.perf_counter() - t0

    def checkpoint(logged: bool = False) -> None:
        nonlocal saved, busy
        t0 = time.perf_counter()
        if not finite_state(net, optimizer):
            raise NonFiniteLossError("non-finite parameters", step, saved, resume_command)
        save_checkpoint(run_dir / LAST, _state(
            net.state_dict(), config, data.image_shape, step, optimizer=optimizer.state_dict(),
            rng=rng_state(device), data=batches.state_dict(), best=best, best_model=best_model, sums=sums,
            log_bytes=log.tell(), logged=logged))
        saved = step
        busy += time.perf_counter() - t0

    def after_step() -> None:
        """The step's loss line and validation: on their grids, and both at the last step."""
        final = step == config.steps
        if sums[1] > 0 and (step % config.log_every == 0 or final):
            write("train", {"loss": float(sums[0]) / float(sums[1]), "k": config.k})
            sums.zero_()
        if step % config.eval_every == 0 or final:
            validate()

    with log, GracefulStop() as stop:
        net.train()
        if step > 0 and not (state or {}).get("logged"):  # resumed: the checkpoint precedes its step's lines
            after_step()
        while step < config.steps:
            loss = train_step(*split_halves(batches.next().to(device), data.image_shape))
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"non-finite loss ({float(loss.detach())})", step + 1, saved,
                                         resume_command)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            sums += torch.stack([loss.detach().double(), sums.new_ones(())])
            if step % config.checkpoint_every == 0 or step == config.steps:
                checkpoint()
            after_step()
            if stop.signum and step < config.steps:  # preemption or Ctrl-C: write the state, then stop
                checkpoint(logged=True)
                raise Stopped(stop.signum, step, resume_command)
        seconds = time.perf_counter() - started - busy
        best_net = net
        if best_model is not None:
            best_net = copy.deepcopy(net)
            best_net.load_state_dict(best_model)
        test = evaluate(best_net, data.test, data.image_shape, config.test_samples, config.temperature,
                        config.seed)
        write("test", test, at=best["step"])
    return {"run_dir": str(run_dir), "nll": test["nll"], "relaxed_nll": test["relaxed_nll"],
            "steps": config.steps, "best_step": best["step"], "valid_nll": best["nll"],
            "k": config.k, "train_seconds": round(seconds, 3),
            "steps_per_s": round((step - first_step) / max(seconds, 1e-9), 2),
            "compiled": train_step.compiled, "compile_seconds": round(train_step.compile_seconds, 3)}


def evaluate_run(run_dir: Path, samples: int, split: str, limit: int | None, seed: int,
                 data_dir: str | None = None, which: str = "best", device: str = "cpu") -> dict[str, Any]:
    """``nll = -L^SP_samples`` of a run's discrete model on (``limit`` examples spread over) ``split``."""
    if samples < 1:
        raise ConfigError(f"--samples must be positive, got {samples}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be positive, got {limit}")
    from .recipe import run_dataset

    net, config, state = load_run(run_dir, which, device)
    data = run_dataset(config, data_dir)
    x = data.subset(split, limit).to(device)
    with flush_denormals():
        metrics = evaluate(net, x, data.image_shape, samples, config.temperature, seed)
    return {**metrics, "split": split, "seed": seed, "step": int(state["step"]), "checkpoint": which}
