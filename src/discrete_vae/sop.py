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

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from . import __version__
from .checkpoint import load_checkpoint, save_checkpoint
from .data import BatchIterator, DataSplits, load_dataset
from .distributions import LogitBinaryConcrete, PlanarFlow
from .errors import ConfigError, NonFiniteLossError, UserError

MODELS = ("gs", "igr-i", "igr-sb", "igr-planar")
# arch -> (stochastic layers, deterministic maps are Linear-tanh-Linear)
ARCHS = {"double_linear": (2, False), "triple_linear": (3, False), "nonlinear": (2, True)}
DATASETS = ("binarized_mnist", "digits")
LAST, BEST, CONFIG, METRICS = "last.safetensors", "best.safetensors", "config.yaml", "metrics.jsonl"
EVAL_ROWS = 8192  # decoder rows per chunk in evaluation: bounded memory for any number of samples


@dataclass
class SOPConfig:
    """Every option of one SOP run (the ``dvae sop train`` flags); stored in ``config.yaml``."""

    model: str = "gs"
    arch: str = "double_linear"
    units: int = 240
    samples: int = 1
    temperature: float = 1.0
    lr: float = 1e-3
    weight_decay: float = 1e-3  # decoupled (AdamW)
    batch_size: int = 100
    steps: int = 50_000
    seed: int = 0
    dataset: str = "binarized_mnist"
    data_dir: str | None = None
    out: str | None = None
    eval_every: int = 5_000
    log_every: int = 100
    val_samples: int = 100
    test_samples: int = 100
    device: str = "auto"

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
        for name in ("units", "samples", "batch_size", "steps", "eval_every", "log_every",
                     "val_samples", "test_samples"):
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
    """``nll = -L^SP_S`` with hard samples and ``relaxed_nll = -L^S`` at ``tau``, seeded, RNG restored."""
    upper, lower = split_halves(x, image_shape)
    was_training = net.training
    net.eval()
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        hard = sop_bound(net, upper, lower, samples, tau, hard=True)
        relaxed = sop_bound(net, upper, lower, samples, tau, hard=False)
    net.train(was_training)
    return {"nll": -float(hard.mean()), "relaxed_nll": -float(relaxed.mean()),
            "samples": samples, "examples": int(x.shape[0])}


def build_net(config: SOPConfig, image_shape: tuple[int, int]) -> SOPNet:
    cut = (image_shape[0] // 2) * image_shape[1]
    return SOPNet(cut, image_shape[0] * image_shape[1] - cut, config.arch, config.model, config.units)


def _state(net: SOPNet, config: SOPConfig, data: DataSplits, step: int, **extra: Any) -> dict[str, Any]:
    return {"model": net.state_dict(), "config": config.to_dict(), "image_shape": list(data.image_shape),
            "step": step, "version": __version__, **extra}


def load_run(run_dir: Path, which: str = "best", device: str = "cpu") -> tuple[SOPNet, SOPConfig, dict]:
    """The net of an SOP run folder from its ``best`` (else ``last``) safetensors checkpoint."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise UserError(f"{run_dir} is not an SOP run folder (no {CONFIG})")
    path = run_dir / (BEST if which == "best" else LAST)
    if which == "best" and not path.is_file():
        path = run_dir / LAST
    if not path.is_file():
        raise UserError(f"{run_dir} holds no checkpoint ({BEST} or {LAST})")
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


def train(config: SOPConfig) -> dict[str, Any]:
    """Train one SOP model; keep the best-validation and the final net; score the best on test."""
    from .train import resolve_device

    device = resolve_device(config.device)
    run_dir = _run_dir(config)
    if (run_dir / LAST).exists() or (run_dir / BEST).exists():
        raise UserError(f"{run_dir} already holds a run; choose another --out")
    torch.manual_seed(config.seed)
    data = load_dataset(config.dataset, config.data_dir, seed=config.seed).to(device)
    net = build_net(config, data.image_shape).to(device)
    net.init_output_bias(split_halves(data.train, data.image_shape)[1].mean(0))
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    batches = BatchIterator(data.train, config.batch_size, config.seed,
                            dynamic_binarization=data.dynamic_binarization)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    best = {"step": -1, "nll": math.inf}
    started = time.perf_counter()
    with (run_dir / METRICS).open("w") as log:
        def write(step: int, split: str, metrics: dict[str, Any]) -> None:
            log.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")
            log.flush()

        total = torch.zeros((), dtype=torch.float64, device=device)
        for step in range(1, config.steps + 1):
            upper, lower = split_halves(batches.next().to(device), data.image_shape)
            log_px = net.log_likelihood(upper, lower, config.samples, config.temperature, hard=False)
            loss = -multisample_objective(log_px).mean()
            if not torch.isfinite(loss):
                raise NonFiniteLossError(step, float(loss.detach()))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
            if step % config.log_every == 0 or step == config.steps:
                n = step % config.log_every or config.log_every
                write(step, "train", {"loss": float(total) / n, "samples": config.samples})
                total.zero_()
            if step % config.eval_every == 0 or step == config.steps:
                metrics = evaluate(net, data.valid, data.image_shape, config.val_samples,
                                   config.temperature, config.seed)
                write(step, "valid", metrics)
                if metrics["nll"] < best["nll"]:
                    best = {"step": step, "nll": metrics["nll"]}
                    save_checkpoint(run_dir / BEST, _state(net, config, data, step, metrics=metrics))
        save_checkpoint(run_dir / LAST, _state(net, config, data, config.steps))
        seconds = time.perf_counter() - started
        best_net, _, _ = load_run(run_dir, "best", str(device))
        test = evaluate(best_net, data.test, data.image_shape, config.test_samples, config.temperature,
                        config.seed)
        write(best["step"], "test", test)
    return {"run_dir": str(run_dir), "nll": test["nll"], "relaxed_nll": test["relaxed_nll"],
            "steps": config.steps, "best_step": best["step"], "valid_nll": best["nll"],
            "samples": config.samples, "train_seconds": round(seconds, 3)}


def evaluate_run(run_dir: Path, samples: int, split: str, limit: int | None, seed: int,
                 data_dir: str | None = None, which: str = "best", device: str = "cpu") -> dict[str, Any]:
    """``nll = -L^SP_samples`` of a run's discrete model on (the first ``limit`` examples of) ``split``."""
    if samples < 1:
        raise ConfigError(f"--samples must be positive, got {samples}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be positive, got {limit}")
    net, config, state = load_run(run_dir, which, device)
    data = load_dataset(config.dataset, data_dir or config.data_dir, seed=config.seed)
    x = data.split(split)[:limit].to(device)
    metrics = evaluate(net, x, data.image_shape, samples, config.temperature, seed)
    return {**metrics, "split": split, "seed": seed, "step": int(state["step"]), "checkpoint": which}
