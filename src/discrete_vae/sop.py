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

Relaxations of one binary unit with layer output ``a``:

- ``gs`` (binary Concrete): relaxed ``sigmoid((a + L) / tau)``, ``L ~ Logistic(0, 1)``; hard
  ``Bernoulli(sigmoid(a))``.
- ``igr-i`` / ``igr-sb`` (identical for one binary unit): ``kappa ~ N(a, 1)``, relaxed
  ``sigmoid(kappa / tau)``; hard ``1[kappa > 0]``, i.e. ``Bernoulli(Phi(a))``.
- ``igr-planar``: ``kappa ~ N(a, 1)`` then a learned one-dimensional planar flow ``f`` per unit;
  relaxed ``sigmoid(f(kappa) / tau)``, hard ``1[f(kappa) > 0]``.
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
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from . import __version__
from .checkpoint import (
    load_checkpoint,
    remove_partial_writes,
    restore_training,
    rng_state,
    run_checkpoint,
    save_checkpoint,
)
from .data import BatchIterator, load_dataset
from .distributions import LogitBinaryConcrete, PlanarFlow
from .errors import ConfigError, NonFiniteLossError, UserError

MODELS = ("gs", "igr-i", "igr-sb", "igr-planar")
# arch -> (stochastic layers, deterministic maps are Linear-tanh-Linear)
ARCHS = {"double_linear": (2, False), "triple_linear": (3, False), "nonlinear": (2, True)}
DATASETS = ("binarized_mnist", "digits")
LAST, BEST, CONFIG, METRICS = "last.safetensors", "best.safetensors", "config.yaml", "metrics.jsonl"
EVAL_ROWS = 8192  # decoder rows per chunk in evaluation: bounded memory for any number of samples


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class SOPConfig:
    """Every option of one SOP run (the ``dvae sop train`` flags); stored in ``config.yaml``."""

    model: str = _opt("gs", f"relaxation of the binary units: {', '.join(MODELS)}")
    arch: str = _opt("double_linear", f"network: {', '.join(ARCHS)}")
    units: int = _opt(240, "stochastic binary units per layer (and hidden width of nonlinear maps)")
    samples: int = _opt(1, "m, relaxed samples per example in the training objective L^m")
    temperature: float = _opt(1.0, "tau, temperature of the relaxation (training and relaxed_nll)")
    lr: float = _opt(1e-3, "AdamW learning rate")
    weight_decay: float = _opt(1e-3, "AdamW decoupled weight decay")
    batch_size: int = _opt(100, "examples per training step")
    steps: int = _opt(50_000, "total training steps (with --resume: the new total)")
    seed: int = _opt(0, "seed of the weights, the data order, the noise and the evaluations")
    dataset: str = _opt("binarized_mnist", f"dataset: {', '.join(DATASETS)}")
    data_dir: str | None = _opt(None, "folder of the dataset files (default: the dataset's own)")
    out: str | None = _opt(None, "run folder (default: runs/sop-MODEL-ARCH-mM-TIMESTAMP)")
    eval_every: int = _opt(5_000, "validate (hard samples, L^SP) every N steps and at the end")
    checkpoint_every: int = _opt(1_000, "write the resumable state to last.safetensors every N steps")
    log_every: int = _opt(100, "write the mean training loss to metrics.jsonl every N steps")
    val_samples: int = _opt(100, "hard samples per example in validation")
    test_samples: int = _opt(100, "hard samples per example in the final test evaluation")
    device: str = _opt("auto", "cpu, cuda, cuda:N or auto")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise a one-line :class:`ConfigError` for an unknown name or an out-of-range value."""
        if self.model not in MODELS:
            raise ConfigError(f"unknown --model {self.model!r}; choose one of: {', '.join(MODELS)}")
        if self.arch not in ARCHS:
            raise ConfigError(f"unknown --arch {self.arch!r}; choose one of: {', '.join(ARCHS)}")
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown --dataset {self.dataset!r}; choose one of: {', '.join(DATASETS)}")
        for name in ("units", "samples", "batch_size", "steps", "eval_every", "checkpoint_every",
                     "log_every", "val_samples", "test_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not self.temperature > 0 or not math.isfinite(self.temperature):
            raise ConfigError(f"--temperature must be positive, got {self.temperature}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"--weight-decay must be non-negative, got {self.weight_decay}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SOPConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown SOP option(s): {', '.join(unknown)}")
        return cls(**values)


def split_halves(x: Tensor, image_shape: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """``(n, H*W)`` images -> upper ``H // 2`` rows and the rest, each flattened (392/392 for MNIST)."""
    cut = (image_shape[0] // 2) * image_shape[1]
    return x[:, :cut], x[:, cut:]


class StochasticBinaryLayer(nn.Module):
    """One layer of ``units`` stochastic binary units in {-1, +1}, relaxed or hard.

    ``model`` picks the relaxation (module docstring); only ``igr-planar`` has parameters (the
    per-unit planar flow of Potapczynski et al. 2020, sec. 3.3, with two layers).
    """

    def __init__(self, model: str, units: int):
        super().__init__()
        self.model = model
        self.flow = PlanarFlow(variables=units, dim=1, layers=2) if model == "igr-planar" else None

    def preimage(self, mu: Tensor) -> Tensor:
        """IGR: ``kappa ~ N(mu, 1)``, pushed through the planar flow for ``igr-planar``."""
        kappa = mu + torch.randn_like(mu)
        if self.flow is None:
            return kappa
        return self.flow(kappa.unsqueeze(-1))[0].squeeze(-1)

    def relaxed(self, a: Tensor, tau: float) -> Tensor:
        """A relaxed sample in (-1, 1) given the layer output ``a`` (reparameterized)."""
        if self.model == "gs":
            y = LogitBinaryConcrete(torch.as_tensor(tau, dtype=a.dtype, device=a.device), a).rsample()
        else:
            y = self.preimage(a) / tau
        return 2 * torch.sigmoid(y) - 1

    @torch.no_grad()
    def hard(self, a: Tensor) -> Tensor:
        """A hard sample in {-1, +1} from the discrete model the relaxation converges to."""
        if self.model == "gs":
            b = torch.bernoulli(torch.sigmoid(a))
        else:
            b = (self.preimage(a) > 0).to(a.dtype)
        return 2 * b - 1

    @torch.no_grad()
    def prob_one(self, a: Tensor) -> Tensor:
        """``P(z = +1)`` of the hard unit: ``sigmoid(a)``, ``Phi(a)``, or ``Phi(a - f^{-1}(0))``."""
        if self.model == "gs":
            return torch.sigmoid(a)
        shift = 0.0
        if self.flow is not None:  # f is increasing, so f(kappa) > 0 iff kappa > f^{-1}(0)
            zero = torch.zeros(self.flow.b.shape[1], 1, dtype=a.dtype, device=a.device)
            shift = self.flow.inverse(zero).squeeze(-1)
        return torch.special.ndtr(a - shift)


def deterministic_map(n_in: int, n_out: int, nonlinear: bool, hidden: int) -> nn.Module:
    """``Linear``, or ``Linear-tanh-Linear`` (Maddison et al. 2017, Appendix D.2 "nonlinear")."""
    if not nonlinear:
        return nn.Linear(n_in, n_out)
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out))


class SOPNet(nn.Module):
    """``x_upper -> [map -> binary layer] x L -> map -> Bernoulli logits of x_lower``."""

    def __init__(self, in_dim: int, out_dim: int, arch: str, model: str, units: int = 240):
        super().__init__()
        depth, nonlinear = ARCHS[arch]
        widths = [in_dim] + [units] * depth + [out_dim]
        self.maps = nn.ModuleList(
            deterministic_map(a, b, nonlinear, units) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.layers = nn.ModuleList(StochasticBinaryLayer(model, units) for _ in range(depth))

    def init_output_bias(self, mean_lower: Tensor) -> None:
        """Start the output logits at the training mean of ``x_lower`` (a common initialisation)."""
        last = self.maps[-1] if isinstance(self.maps[-1], nn.Linear) else self.maps[-1][-1]
        with torch.no_grad():
            last.bias.copy_(torch.logit(mean_lower.clamp(1e-3, 1 - 1e-3)))

    def log_likelihood(self, upper: Tensor, lower: Tensor, samples: int, tau: float, hard: bool) -> Tensor:
        """``log p(x_lower | z_i)`` (samples, B) for ``samples`` ancestral draws per example.

        All draws go through one batched pass: the first layer's output is computed once and
        expanded to ``(samples, B, units)`` before its noise is drawn.
        """
        h = self.maps[0](upper).expand(samples, *upper.shape[:-1], -1)
        for layer, next_map in zip(self.layers, self.maps[1:], strict=True):
            z = layer.hard(h) if hard else layer.relaxed(h, tau)
            h = next_map(z)
        return -F.binary_cross_entropy_with_logits(h, lower.expand_as(h), reduction="none").sum(-1)


def multisample_objective(log_px: Tensor) -> Tensor:
    """``log (1/m) sum_i p(x | z_i)`` per example from ``log_px`` (m, B) (Raiko et al. 2014, eq. 4)."""
    return torch.logsumexp(log_px, 0) - math.log(log_px.shape[0])


@torch.no_grad()
def sop_bound(net: SOPNet, upper: Tensor, lower: Tensor, samples: int, tau: float, hard: bool,
              rows: int = EVAL_ROWS) -> Tensor:
    """``L^SP_S`` per example (n,), chunked over examples and samples so memory stays bounded."""
    per_chunk = max(1, rows // samples)
    sample_chunk = min(samples, rows)
    out = []
    for start in range(0, upper.shape[0], per_chunk):
        up, low = upper[start : start + per_chunk], lower[start : start + per_chunk]
        parts = [
            torch.logsumexp(net.log_likelihood(up, low, min(sample_chunk, samples - s), tau, hard), 0)
            for s in range(0, samples, sample_chunk)
        ]
        out.append(torch.logsumexp(torch.stack(parts), 0) - math.log(samples))
    return torch.cat(out)


def evaluate(net: SOPNet, x: Tensor, image_shape: tuple[int, int], samples: int, tau: float,
             seed: int) -> dict[str, float]:
    """``nll = -L^SP_S`` with hard samples and ``relaxed_nll = -L^S`` at ``tau``, seeded, RNG restored;
    ``nll_stderr`` (more than one example) is the standard error of ``nll`` over the examples."""
    upper, lower = split_halves(x, image_shape)
    was_training = net.training
    net.eval()
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        hard = sop_bound(net, upper, lower, samples, tau, hard=True)
        relaxed = sop_bound(net, upper, lower, samples, tau, hard=False)
    net.train(was_training)
    metrics = {"nll": -float(hard.mean()), "relaxed_nll": -float(relaxed.mean()),
               "samples": samples, "examples": int(x.shape[0])}
    if hard.numel() > 1:
        metrics["nll_stderr"] = float(hard.double().std()) / math.sqrt(hard.numel())
    return metrics


def build_net(config: SOPConfig, image_shape: tuple[int, int]) -> SOPNet:
    cut = (image_shape[0] // 2) * image_shape[1]
    return SOPNet(cut, image_shape[0] * image_shape[1] - cut, config.arch, config.model, config.units)


def _state(model: dict[str, Tensor], config: SOPConfig, image_shape: tuple[int, int], step: int,
           **extra: Any) -> dict[str, Any]:
    return {"model": model, "config": config.to_dict(), "image_shape": list(image_shape),
            "step": step, "version": __version__, **extra}


def load_run(run_dir: Path, which: str = "best", device: str = "cpu") -> tuple[SOPNet, SOPConfig, dict]:
    """The net of an SOP run folder from its ``best`` (else ``last``) safetensors checkpoint."""
    path = run_checkpoint(run_dir, which, what="SOP run folder")
    state = load_checkpoint(path)
    if "image_shape" not in state or "config" not in state:
        raise UserError(f"{path} is not an SOP checkpoint")
    config = SOPConfig.from_dict(state["config"])
    net = build_net(config, tuple(state["image_shape"]))
    net.load_state_dict(state["model"])
    return net.to(device).eval(), config, state


def _run_dir(config: SOPConfig) -> Path:
    if config.out:
        return Path(config.out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"sop-{config.model}-{config.arch}-m{config.samples}-{stamp}"


RESUME_OVERRIDES = ("steps", "device", "eval_every", "checkpoint_every", "log_every")
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
    if not (run_dir / CONFIG).is_file() or not (run_dir / LAST).is_file():
        raise UserError(f"{run_dir} holds no resumable SOP run ({CONFIG} and {LAST})")
    values = load_config_file(run_dir / CONFIG)
    try:
        return SOPConfig.from_dict({**values, **overrides})
    except (TypeError, ValueError) as e:
        raise UserError(f"{run_dir / CONFIG} is damaged ({e})") from None


def _load_resumable(run_dir: Path, config: SOPConfig) -> dict[str, Any]:
    """The state in ``run_dir/last.safetensors``, checked against ``config`` and ``metrics.jsonl``."""
    path = run_dir / LAST
    state = load_checkpoint(path)
    missing = [k for k in RESUMABLE if k not in state]
    if missing:
        raise UserError(f"{path} holds no resumable SOP state (lacks {', '.join(missing)})")
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


def train(config: SOPConfig, resume: Path | None = None) -> dict[str, Any]:
    """Train (or resume) one SOP model; keep the best-validation and the final net; score the best on test.

    Every ``checkpoint_every`` steps and at the end, ``last.safetensors`` receives the whole state
    (model, optimizer, RNG, data order, step, best-so-far, partial loss sum, the length of
    ``metrics.jsonl``), atomically, right after the optimizer step and before that step's loss line
    and validation. ``resume=RUN_DIR`` cuts off the lines written after the checkpoint, rewrites
    ``best.safetensors`` from the checkpoint's best, replays the step's line and validation on their
    grids and continues: it ends with the weights and ``metrics.jsonl`` of a run that was never
    interrupted. The last step's extras (a partial loss line, a validation off the ``eval_every``
    grid, the test line) are not replayed when a finished run is resumed with a larger ``--steps``.
    """
    from .train import resolve_device

    device = resolve_device(config.device)
    run_dir = Path(resume) if resume is not None else _run_dir(config)
    if resume is None and ((run_dir / LAST).exists() or (run_dir / BEST).exists()):
        raise UserError(f"{run_dir} already holds a run; use --resume {run_dir} or another --out")
    state = _load_resumable(run_dir, config) if resume is not None else None
    torch.manual_seed(config.seed)
    data = load_dataset(config.dataset, config.data_dir, seed=config.seed).to(device)
    net = build_net(config, data.image_shape).to(device)
    net.init_output_bias(split_halves(data.train, data.image_shape)[1].mean(0))
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    batches = BatchIterator(data.train, config.batch_size, config.seed,
                            dynamic_binarization=data.dynamic_binarization)
    step, best, best_model = 0, {"step": -1, "nll": math.inf, "metrics": {}}, None
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum and steps since the last line
    if state is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CONFIG).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        log = (run_dir / METRICS).open("wb")
    else:
        restore_training(run_dir / LAST, state, {"model": net, "optimizer": optimizer, "data": batches},
                         device, expect={"image_shape": list(data.image_shape)})
        step, best, best_model = int(state["step"]), dict(state["best"]), state["best_model"]
        sums.copy_(state["sums"])
        remove_partial_writes(run_dir)
        if best_model is None:  # a validation after the checkpoint may have written one
            (run_dir / BEST).unlink(missing_ok=True)
        else:
            save_checkpoint(run_dir / BEST, _state(best_model, config, data.image_shape, best["step"],
                                                   metrics=best["metrics"]))
        (run_dir / CONFIG).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        log = (run_dir / METRICS).open("r+b")
        log.truncate(int(state["log_bytes"]))  # drop the lines written after the checkpoint
        log.seek(0, 2)
    started, first_step = time.perf_counter(), step

    def write(split: str, metrics: dict[str, Any], at: int | None = None) -> None:
        line = {"step": step if at is None else at, "split": split, **metrics}
        log.write((json.dumps(line) + "\n").encode())
        log.flush()

    def validate() -> None:
        nonlocal best, best_model
        metrics = evaluate(net, data.valid, data.image_shape, config.val_samples, config.temperature,
                           config.seed)
        write("valid", metrics)
        if metrics["nll"] < best["nll"]:
            best = {"step": step, "nll": metrics["nll"], "metrics": metrics}
            best_model = {k: v.detach().clone() for k, v in net.state_dict().items()}
            save_checkpoint(run_dir / BEST, _state(best_model, config, data.image_shape, step,
                                                   metrics=metrics))

    def checkpoint() -> None:
        save_checkpoint(run_dir / LAST, _state(
            net.state_dict(), config, data.image_shape, step, optimizer=optimizer.state_dict(),
            rng=rng_state(device),
            data=batches.state_dict(), best=best, best_model=best_model, sums=sums, log_bytes=log.tell()))

    def after_step() -> None:
        """The step's loss line and validation: on their grids, and both at the last step."""
        final = step == config.steps
        if sums[1] > 0 and (step % config.log_every == 0 or final):
            write("train", {"loss": float(sums[0]) / float(sums[1]), "samples": config.samples})
            sums.zero_()
        if step % config.eval_every == 0 or final:
            validate()

    with log:
        net.train()
        if step > 0:  # resumed: the checkpoint precedes its step's line and validation
            after_step()
        while step < config.steps:
            upper, lower = split_halves(batches.next().to(device), data.image_shape)
            log_px = net.log_likelihood(upper, lower, config.samples, config.temperature, hard=False)
            loss = -multisample_objective(log_px).mean()
            if not torch.isfinite(loss):
                raise NonFiniteLossError(step + 1, float(loss.detach()))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            sums += torch.stack([loss.detach().double(), sums.new_ones(())])
            if step % config.checkpoint_every == 0 or step == config.steps:
                checkpoint()
            after_step()
        seconds = time.perf_counter() - started
        best_net = net
        if best_model is not None:
            best_net = copy.deepcopy(net)
            best_net.load_state_dict(best_model)
        test = evaluate(best_net, data.test, data.image_shape, config.test_samples, config.temperature,
                        config.seed)
        write("test", test, at=best["step"])
    return {"run_dir": str(run_dir), "nll": test["nll"], "relaxed_nll": test["relaxed_nll"],
            "steps": config.steps, "best_step": best["step"], "valid_nll": best["nll"],
            "samples": config.samples, "train_seconds": round(seconds, 3),
            "steps_per_s": round((step - first_step) / max(seconds, 1e-9), 2)}


def evaluate_run(run_dir: Path, samples: int, split: str, limit: int | None, seed: int,
                 data_dir: str | None = None, which: str = "best", device: str = "cpu") -> dict[str, Any]:
    """``nll = -L^SP_samples`` of a run's discrete model on (``limit`` examples spread over) ``split``."""
    if samples < 1:
        raise ConfigError(f"--samples must be positive, got {samples}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be positive, got {limit}")
    net, config, state = load_run(run_dir, which, device)
    data = load_dataset(config.dataset, data_dir or config.data_dir, seed=config.seed)
    x = data.subset(split, limit).to(device)
    metrics = evaluate(net, x, data.image_shape, samples, config.temperature, seed)
    return {**metrics, "split": split, "seed": seed, "step": int(state["step"]), "checkpoint": which}
