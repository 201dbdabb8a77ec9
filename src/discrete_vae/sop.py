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
in :mod:`discrete_vae.models.sop_net`; this module holds the run: its config, its task for the training
loop (:mod:`discrete_vae.loop`), evaluation.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import yaml
from torch import Tensor

from .checkpoint import (
    STEP_MAX,
    atomic_write_bytes,
    check_entries,
    check_range,
    invalid,
    load_checkpoint,
    load_module_state,
    run_checkpoint,
)
from .compiling import COMPILE_MODES, should_compile
from .data import BatchIterator, load_dataset
from .denormals import flush_denormals
from .errors import ConfigError, UserError
from .loop import Task, fit
from .models.sop_net import (  # noqa: F401  (the SOP network's names, re-exported)
    ARCHS,
    EVAL_ROWS,
    MODELS,
    UNITS,
    BernoulliUnits,
    IGRUnits,
    SOPNet,
    StochasticBinaryLayer,
    binary_layer,
    deterministic_map,
    evaluate,
    multisample_objective,
    sop_bound,
    split_halves,
    unit_family,
)
from .options import Sectioned, check_counts, check_finite, check_seed
from .run_state import RunState
from .runs import (
    CONFIG,
    METRICS,
    check_resumable,
    open_new_run,
    open_resumed_run,
    read_metrics,
    record_overrides,
)
from .upgrade import upgrade_config

DATASETS = ("binarized_mnist", "digits")


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class SOPModelConfig:
    """The network of stochastic binary layers and its training objective."""

    model: str = _opt("gs", f"posterior of the binary units: {', '.join(MODELS)}")
    estimator: str = _opt("auto", "per-unit estimator of the gs units: "
                          f"{', '.join(BernoulliUnits.estimators())}; the IGR units take their own "
                          f"relaxation ({', '.join(IGRUnits.estimators())}); auto = "
                          f"{BernoulliUnits.default_estimator} or {IGRUnits.default_estimator}")
    arch: str = _opt("double_linear", f"network: {', '.join(ARCHS)}")
    units: int = _opt(240, "stochastic binary units per layer (and hidden width of nonlinear maps)")
    k: int = _opt(1, "m, relaxed samples per example in the training objective L^m")
    temperature: float = _opt(1.0, "tau, temperature of the relaxation (training and relaxed_nll)")

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"unknown --model {self.model!r}; choose one of: {', '.join(MODELS)}")
        takes = unit_family(self.model).estimators()
        if self.estimator not in ("auto", *takes):
            raise ConfigError(f"--model {self.model} trains with --estimator {', '.join(takes)} (per-unit "
                              f"draws through the network), not {self.estimator}")
        if self.arch not in ARCHS:
            raise ConfigError(f"unknown --arch {self.arch!r}; choose one of: {', '.join(ARCHS)}")
        check_counts(self)
        if not self.temperature > 0 or not math.isfinite(self.temperature):
            raise ConfigError(f"--temperature must be positive, got {self.temperature}")


@dataclass
class SOPOptimConfig:
    """AdamW and the length of the run."""

    lr: float = _opt(1e-3, "AdamW learning rate")
    weight_decay: float = _opt(1e-3, "AdamW decoupled weight decay")
    batch_size: int = _opt(100, "examples per training step")
    steps: int = _opt(50_000, "total training steps (with --resume: the new total)")

    def __post_init__(self) -> None:
        check_finite(self)
        check_counts(self)
        if not self.lr > 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"--weight-decay must be non-negative, got {self.weight_decay}")


@dataclass
class SOPRunConfig:
    """Data, seed and device, the run folder and what is reported when."""

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
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown --dataset {self.dataset!r}; choose one of: {', '.join(DATASETS)}")
        check_seed("--seed", self.seed)
        check_counts(self)
        if self.compile not in COMPILE_MODES:
            raise ConfigError(f"--compile must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}")


@dataclass
class SOPConfig(Sectioned):
    """Every option of one SOP run (the ``dvae sop train`` flags); stored in sections in ``config.yaml``."""

    SECTIONS: ClassVar[dict[str, type]] = {"model": SOPModelConfig, "optim": SOPOptimConfig,
                                           "run": SOPRunConfig}

    model: SOPModelConfig = field(default_factory=SOPModelConfig)
    optim: SOPOptimConfig = field(default_factory=SOPOptimConfig)
    run: SOPRunConfig = field(default_factory=SOPRunConfig)

    def settings(self) -> dict[str, Any]:
        """Every option by name (what a sweep table's titles name)."""
        return self.flat()

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SOPConfig:
        """From option names, flat or in sections, type-checked like flags (a stored config of an earlier
        version goes through :func:`~discrete_vae.upgrade.upgrade_config` first)."""
        return cls.from_flat(cls.flat_values(values), "SOP option")


def build_net(config: SOPConfig, image_shape: tuple[int, int]) -> SOPNet:
    """The net of ``config`` for images of ``image_shape``; one estimator module, where the unit family
    takes one, draws the units of every layer."""
    cut = (image_shape[0] // 2) * image_shape[1]
    m = config.model
    estimator = unit_family(m.model).build_estimator(m.estimator)
    return SOPNet(cut, image_shape[0] * image_shape[1] - cut, m.arch, m.model, m.units, estimator)


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


def check_sop_state(path: Path, state: dict[str, Any]) -> None:
    """The types and ranges of what evaluation and training read from an SOP checkpoint: one
    :class:`UserError` line naming the file and the entry."""
    check_entries(path, state, {"model": dict, "config": dict, "step": int, "image_shape": list})
    check_range(path, "step", state["step"], 0, STEP_MAX)
    shape = state["image_shape"]
    if len(shape) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
        raise invalid(path, f"image_shape {shape!r:.40} is not two positive integers")


def _run_dir(config: SOPConfig) -> Path:
    if config.run.out:
        return Path(config.run.out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    m = config.model
    return Path("runs") / f"sop-{m.model}-{m.arch}-m{m.k}-{stamp}"


# what `dvae sop train --resume RUN` may change; each change is recorded in RUN/overrides.jsonl
RESUME_OVERRIDES = ("steps", "lr", "device", "data_dir", "compile", "eval_every", "checkpoint_every",
                    "log_every")

def resume_config(run_dir: Path, overrides: dict[str, Any]) -> SOPConfig:
    """The config of the SOP run in ``run_dir`` (its ``config.yaml``, of any version, in today's form) with
    ``overrides`` (only :data:`RESUME_OVERRIDES`)."""
    from .config import load_config_file

    run_dir = Path(run_dir)
    changed = sorted(set(overrides) - set(RESUME_OVERRIDES))
    if changed:
        raise UserError(f"cannot change {', '.join('--' + c.replace('_', '-') for c in changed)} when "
                        f"resuming; only {', '.join('--' + c.replace('_', '-') for c in RESUME_OVERRIDES)}")
    check_resumable(run_dir, "SOP run")
    values = SOPConfig.flat_values(upgrade_config(load_config_file(run_dir / CONFIG)))
    try:
        return SOPConfig.from_dict({**values, **overrides})
    except (TypeError, ValueError) as e:
        raise UserError(f"{run_dir / CONFIG} is damaged ({e})") from None


def train(config: SOPConfig, resume: Path | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Train (or resume) one SOP model through the training loop (:mod:`discrete_vae.loop`, with its exact
    resume: :mod:`discrete_vae.run_state`); keep the best-validation and the final net; score the best on
    test (a ``test`` line at the best step, after the last step's lines). The run folder is locked while
    the run trains, and denormal floats are flushed to zero (:mod:`discrete_vae.denormals`)."""
    from .recipe import resolve_device

    run = config.run
    device = resolve_device(run.device)
    run_dir = Path(resume) if resume is not None else _run_dir(config)
    torch.manual_seed(run.seed)
    data = load_dataset(run.dataset, run.data_dir, seed=run.seed).to(device)
    if resume is not None:
        lock = open_resumed_run(run_dir, "SOP run")
    else:
        lock = open_new_run(run_dir, "dvae sop train")
    with lock, flush_denormals():  # a failed start leaves no folder holding only .lock
        return _train(config, run_dir, resume is not None, data, device, progress)


def _train(config: SOPConfig, run_dir: Path, resume: bool, data: Any, device: torch.device,
           progress: bool | None) -> dict[str, Any]:
    """:func:`train` in a run folder this process holds: the task, its state (resumed), the loop."""
    task, steps = SOPTask(config, data, device, run_dir), config.optim.steps
    state = RunState(task, run_dir, task.ddp)
    if resume:
        state.resume(steps)
        if state.finished:  # nothing to do: write nothing
            return task.finished(state)
        record_overrides(run_dir, state.step, SOPConfig.flat_values(state.config_then), config.flat(),
                         RESUME_OVERRIDES, "dvae sop train")
    else:
        state.start()
    atomic_write_bytes(run_dir / CONFIG, yaml.safe_dump(config.to_dict(), sort_keys=False).encode())
    compiled = should_compile(config.run.compile, device, steps - state.step, 1, "dvae sop train")
    return fit(task, state, steps, compiled, progress)


class SOPTask(Task):
    """Structured output prediction as a :class:`~discrete_vae.loop.Task`: the net of stochastic binary
    layers, the multi-sample objective ``-L^m`` and the ``L^SP`` evaluator."""

    command = "dvae sop train"
    columns = ("loss",)

    def __init__(self, config: SOPConfig, data: Any, device: torch.device, run_dir: Path):
        self.config, self.data, self.device, self.run_dir = config, data, device, run_dir
        self.model = build_net(config, data.image_shape).to(device)
        self.model.init_output_bias(split_halves(data.train, data.image_shape)[1].mean(0))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.optim.lr,
                                           weight_decay=config.optim.weight_decay)
        self.batches = BatchIterator(data.train, config.optim.batch_size, config.run.seed,
                                     dynamic_binarization=data.dynamic_binarization)
        self.scaler = torch.amp.GradScaler(device.type, enabled=False)
        self.identity = {"image_shape": list(data.image_shape)}

    def check_state(self, path: Path, state: Any) -> None:
        check_entries(path, state, {"config": dict})
        check_sop_state(path, state)
        now, then = self.config.flat(), SOPConfig.flat_values(state["config"])
        if any(then.get(k) != value for k, value in now.items() if k not in RESUME_OVERRIDES):
            raise UserError(f"{self.run_dir / CONFIG} does not match {path}; the run folder is damaged")

    def losses(self, x: Tensor) -> tuple[Tensor, None, Tensor]:  # -L^m, the batch mean
        upper, lower = split_halves(x, self.data.image_shape)
        m = self.config.model
        log_px = self.model.log_likelihood(upper, lower, m.k, m.temperature, hard=False)
        loss = -multisample_objective(log_px).mean()
        return loss, None, loss

    def logged(self, terms: Tensor) -> Tensor:
        return terms.detach().reshape(1)

    def line(self, means: dict[str, float], schedule: tuple[float, ...]) -> dict[str, Any]:
        return {"loss": means["loss"], "k": self.config.model.k}

    def validate(self, state: RunState) -> dict[str, Any]:
        config = self.config
        return evaluate(self.model, self.data.valid, self.data.image_shape, config.run.val_samples,
                        config.model.temperature, config.run.seed)

    def finish(self, state: RunState, result: dict[str, Any]) -> dict[str, Any]:
        config = self.config
        test = evaluate(state.best_net(), self.data.test, self.data.image_shape, config.run.test_samples,
                        config.model.temperature, config.run.seed)
        state.log.write(state.best["step"], "test", test)
        return {"run_dir": str(self.run_dir), "nll": test["nll"], "relaxed_nll": test["relaxed_nll"],
                "steps": config.optim.steps, "best_step": state.best["step"], "valid_nll": state.best["nll"],
                "k": config.model.k, **result}

    def finished(self, state: RunState) -> dict[str, Any]:
        test = [json.loads(line) for line in read_metrics(self.run_dir / METRICS)]
        test = [r for r in test if r.get("split") == "test"][-1]
        return {"run_dir": str(self.run_dir), "nll": test["nll"], "relaxed_nll": test["relaxed_nll"],
                "steps": self.config.optim.steps, "best_step": state.best["step"],
                "valid_nll": state.best["nll"], "k": self.config.model.k, "finished": True}


def evaluate_run(run_dir: Path, samples: int, split: str, limit: int | None, seed: int,
                 data_dir: str | None = None, which: str = "best", device: str = "cpu") -> dict[str, Any]:
    """``nll = -L^SP_samples`` of a run's discrete model on (``limit`` examples spread over) ``split``."""
    if samples < 1:
        raise ConfigError(f"--samples must be positive, got {samples}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be positive, got {limit}")
    from .recipe import run_dataset

    net, config, state = load_run(run_dir, which, device)
    data = run_dataset(config.run, data_dir)
    x = data.subset(split, limit).to(device)
    with flush_denormals():
        metrics = evaluate(net, x, data.image_shape, samples, config.model.temperature, seed)
    return {**metrics, "split": split, "seed": seed, "step": int(state["step"]), "checkpoint": which}
