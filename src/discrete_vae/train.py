"""``dvae train``: the variational autoencoder as a task of the training loop (:mod:`discrete_vae.loop`).

data (index slices of one in-memory tensor) -> model (encoder, posterior, estimator, prior, decoder) ->
objective -> AdamW. The loop checkpoints the whole state (model, optimizer, RNG, data order, step, best
model; the temperature schedule is a function of the step) atomically to ``last.safetensors``, so
``dvae train --resume RUN_DIR`` continues bitwise where it stopped (:mod:`discrete_vae.run_state`).
Every ``eval_every`` steps the discrete model is validated with the importance-weighted bound and the best
model is kept in ``best.safetensors``; a checkpoint is written only when every parameter and optimizer
moment is finite. SIGTERM or SIGINT writes a checkpoint at the current step and stops. Under ``torchrun``
the same loop runs with DistributedDataParallel (gloo on CPU, nccl on CUDA); rank 0 writes the run folder
(:mod:`discrete_vae.runs`), each rank keeps its own RNG and PCD chains.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from .checkpoint import atomic_write_bytes, check_model_state
from .compiling import should_compile
from .config import RESUME_OVERRIDES, TrainConfig, flat_values
from .data import BatchIterator, DataSplits, load_dataset
from .denormals import flush_denormals
from .distributed import Distributed, wrap
from .errors import ConfigError, UserError
from .evaluate import estimate_log_partition, evaluate, trivial_nll
from .loop import Task, fit
from .models import DiscreteVAE
from .networks import evaluating
from .recipe import (
    build_model,
    kl_weight,
    learning_rate,
    resolve_device,
    temperature_schedule,
)
from .run_state import RunState
from .runs import CONFIG, RunLog, last_validation, note, open_new_run, open_resumed_run, record_overrides
from .viz.grids import as_array, reconstruction_figure, samples_figure, save_png

DEFAULT_STEPS = 200_000
FP16_DEVICES = ("cuda",)  # where --precision fp16 runs (on the CPU float16 matmuls are slower than float32)


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN has bfloat16 kernels for this CPU (x86 with AVX-512 BW/VL/DQ, or ARM with BF16), the
    condition PyTorch checks; without them bfloat16 matmuls are slow. Where torch cannot tell, True."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True


def fits_on(device: torch.device, data: DataSplits) -> bool:
    """Whether the dataset fits in half of the device's free memory (always true on the CPU)."""
    if device.type != "cuda":
        return True
    size = sum(t.numel() * t.element_size() for t in (data.train, data.valid, data.test))
    return size < 0.5 * torch.cuda.mem_get_info(device)[0]


def default_run_dir(config: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.model.method}-{config.model.latent}-{stamp}"


def save_images(model: DiscreteVAE, data: DataSplits, run_dir: Path, log: RunLog, step: int, tau: float,
                seed: int) -> None:
    """Labelled PNG grids (32 validation images spread over the split above their reconstructions; 64
    draws from the prior) under ``images/`` and in TensorBoard."""
    device = next(model.parameters()).device
    caption = f"{run_dir.name}, step {step}, tau {tau:.3f}"
    with evaluating(model, device, seed):  # batch norm's running averages stay the training batches'
        x = data.subset("valid", 32).to(device)
        figures = {
            "reconstructions": reconstruction_figure(x, model.reconstruct(x), data.image_shape, caption),
            "samples": samples_figure(model.sample_images(64), data.image_shape, caption),
        }
    for tag, image in figures.items():
        save_png(image, run_dir / "images" / f"{tag}_{step:07d}.png")
        log.image(tag, as_array(image), step)


def train(
    config: TrainConfig, resume: Path | None = None, progress: bool | None = None
) -> dict[str, Any]:
    """Train (or resume) a run; returns the final validation metrics.

    ``progress``: a bar (True), nothing (False), or a bar on a terminal and otherwise a line every 30 s
    (None). The run folder is locked while it runs (:class:`~discrete_vae.runs.RunLock`). Denormal
    floats are flushed to zero meanwhile (:mod:`discrete_vae.denormals`).
    """
    run = config.run
    ddp = Distributed.from_env(run.device)
    device = resolve_device(run.device, ddp.local_rank)
    if run.precision == "fp16" and device.type not in FP16_DEVICES:
        raise ConfigError(f"--precision fp16 runs on CUDA, not {device.type} (where float16 matmuls are "
                          "slower than float32); use --precision bf16")
    if run.precision == "bf16" and device.type == "cpu" and ddp.main and not cpu_has_fast_bf16():
        note("dvae train: this CPU has no oneDNN bfloat16 kernels (they need AVX-512, or BF16 on ARM); "
             "--precision bf16 is about 12x slower than fp32 here (python bench/precision_speed.py)")
    run_dir = (
        Path(resume) if resume else Path(run.out) if run.out else default_run_dir(config)
    )
    torch.manual_seed(run.seed)
    data = load_dataset(run.dataset, run.data_dir, seed=run.seed)
    data = data.to(device) if fits_on(device, data) else data
    lock, error = None, None
    if ddp.main:
        try:
            lock = open_resumed_run(run_dir) if resume else open_new_run(run_dir)
        except UserError as e:
            error = str(e)
    ddp.agree(error)
    with lock or contextlib.nullcontext(), flush_denormals():  # a failed start leaves no folder behind
        return _train(config, data, device, ddp, run_dir, resume is not None, progress)


def _train(config: TrainConfig, data: DataSplits, device: torch.device, ddp: Distributed, run_dir: Path,
           resume: bool, progress: bool | None) -> dict[str, Any]:
    """:func:`train` in a run folder this process holds: the task, its state (resumed), the loop."""
    task = VAETask(config, data, device, ddp, run_dir)
    total = task.total_of(config.to_dict())
    state = RunState(task, run_dir, ddp)
    if resume:
        state.resume(total)
        if state.finished:  # nothing to do: write nothing
            return task.finished(state)
    else:
        state.start()
    steps = total - state.step
    compiled = ddp.main and should_compile(config.run.compile, device, steps, ddp.world, "dvae train")
    task.compiled(compiled)
    if ddp.main:
        if resume:
            record_overrides(run_dir, state.step, flat_values(state.config_then), config.flat(),
                             RESUME_OVERRIDES, "dvae train")
        task.announce()
    return fit(task, state, total, compiled, progress)


class VAETask(Task):
    """The variational autoencoder of ``dvae train`` as a :class:`~discrete_vae.loop.Task`: data ->
    encoder -> posterior -> estimator -> prior -> decoder -> objective (:mod:`discrete_vae.models`)."""

    command = "dvae train"
    columns = ("loss", "neg_log_px", "kl")
    scalars = (1, 2)  # the temperature and the KL weight

    def __init__(self, config: TrainConfig, data: DataSplits, device: torch.device, ddp: Distributed,
                 run_dir: Path):
        self.config, self.data, self.device, self.ddp, self.run_dir = config, data, device, ddp, run_dir
        optim, seed = config.optim, config.run.seed
        model = build_model(config, data.dim).to(device)
        model.check_estimator(config.model.k)  # a --k the estimator cannot take: before anything is written
        model.init_decoder_bias(data.train_mean.to(device))
        model.prepare(data.train[: optim.batch_size].to(device))
        self.model = model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=optim.lr, eps=optim.adam_eps,
                                           weight_decay=optim.weight_decay,
                                           fused=device.type in ("cpu", "cuda"))
        self.batches = BatchIterator(data.train, optim.batch_size, seed,
                                     dynamic_binarization=data.dynamic_binarization, rank=ddp.rank,
                                     world_size=ddp.world)
        self.tau_schedule = temperature_schedule(config)
        self.objective = model.training_objective(config.model.objective, config.model.k)
        # weight matrices and the RBM's couplings (the estimator's own networks are not the model's)
        self.penalized = [p for n, p in model.named_parameters()
                          if p.dim() == 2 and not n.startswith("estimator.")]
        self.own = list(model.estimator.parameters())  # stepped on the estimator's aux_loss only
        # fp16: both losses scaled before their backward passes (float16 gradients would underflow); the
        # step unscales, and skips a step whose gradients overflowed while the scale adapts
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.run.precision == "fp16")
        self.identity = {"data_dim": data.dim}
        torch.manual_seed(seed * 7919 + ddp.rank)  # per-rank noise; weights came from `seed`
        self.net = wrap(model, ddp)  # DDP with more than one rank; the PCD chains stay each rank's own
        self.trivial = trivial_nll(data.train_mean, data.valid) if ddp.main else math.nan

    def total_of(self, config: dict[str, Any]) -> int:
        config = flat_values(config)
        steps, epochs = config.get("steps"), config.get("epochs")
        return steps or (epochs * self.batches.steps_per_epoch if epochs else DEFAULT_STEPS)

    def check_state(self, path: Path, state: Any) -> None:
        check_model_state(path, state, resumable=True)

    def compiled(self, compiled: bool) -> None:
        """Set whether the step is compiled: then the estimator's ``aux_loss`` joins the loss where it can
        (a second backward pass for the estimator's own gradients would run the whole step's again)."""
        self.joint = compiled and self.model.estimator.separable_aux

    def announce(self) -> None:
        """The options in force into ``config.yaml`` (a resume's new --steps, --lr, ...), and a --k the
        estimator chose."""
        config, k = self.config, self.config.model.k
        if config.model.k_defaulted and k > 1:
            estimator = self.model.estimator
            unit = f" ({estimator.min_samples_are})" if estimator.min_samples_are else ""
            note(f"dvae train: --k not given; estimator {estimator.name} needs at least {k} samples "
                 f"per example{unit}, so k = {k} (recorded in {self.run_dir / CONFIG})")
        atomic_write_bytes(self.run_dir / CONFIG, yaml.safe_dump(config.to_dict(), sort_keys=False).encode())

    def schedule(self, step: int, total: int) -> tuple[float, tuple[float, ...]]:
        config = self.config
        return learning_rate(config, step, total), (self.tau_schedule(step), kl_weight(config, step, total))

    def losses(self, x: Tensor, tau: float, weight: float) -> tuple[Tensor, Tensor | None, Any]:
        l2 = self.config.optim.l2
        terms = self.net(x, tau, self.config.model.k, weight, self.objective)
        loss = terms.loss
        if l2:
            loss = loss + 0.5 * l2 * sum(p.square().sum() for p in self.penalized)
        if self.joint and terms.aux_loss is not None:
            return loss + terms.aux_loss, None, terms
        return loss, terms.aux_loss, terms

    def logged(self, terms: Any) -> Tensor:
        return torch.stack([-terms.objective.mean(), -terms.log_px.mean(), terms.kl.mean()]).detach()

    def negative_phase(self, scalars: tuple[float, ...]) -> Tensor | None:
        phase = self.model.prior.negative_phase()  # the RBM's ∇ log Z from its sampler; None if normalised
        return None if phase is None else scalars[1] * phase

    def line(self, means: dict[str, float], schedule: tuple[float, ...]) -> dict[str, Any]:
        lr, tau, _ = schedule
        model = self.model
        return {**means, "tau": float(model.tau(tau).detach()), "lr": lr, **model.posterior.stats(),
                **model.estimator.stats()}

    def validate(self, state: RunState) -> dict[str, Any]:
        run, model, step = self.config.run, self.model, state.step
        prior, log_z = model.prior, {}
        if not prior.normalized:  # an RBM: log Z by its own AIS settings
            log_z = estimate_log_partition(prior, prior.log_z_betas, prior.log_z_samples,
                                           seed=run.seed + step)
        metrics: dict[str, Any] = evaluate(model, self.data.valid, samples=run.val_samples,
                                           tau=self.tau_schedule(step), seed=run.seed + step,
                                           log_partition=log_z.get("log_z", 0.0))
        metrics.update(log_z)
        margin = 2 * metrics.get("nll_stderr", 0.0)  # beyond the noise of the examples scored
        if not metrics["nll"] <= self.trivial + margin:  # diverged while staying finite, or NaN
            metrics["warning"] = (f"the validation bound {metrics['nll']:.2f} is worse than the trivial "
                                  f"model's {self.trivial:.2f} (independent pixels at the training "
                                  "marginals) by more than twice its standard error: training has diverged")
            note(f"dvae train: step {step}: {metrics['warning']}")
        tau = float(model.tau(self.tau_schedule(step)).detach())
        save_images(model, self.data, self.run_dir, state.log, step, tau, run.seed)
        return metrics

    def finish(self, state: RunState, result: dict[str, Any]) -> dict[str, Any]:
        self.ddp.close()
        metrics = state.last_valid
        if "warning" in metrics:
            note(f"dvae train: {metrics['warning']}")
        return {"step": state.step, "run_dir": str(self.run_dir), "best_step": state.best["step"], **metrics,
                **result}

    def finished(self, state: RunState) -> dict[str, Any]:
        self.ddp.close()
        return {"step": state.step, "run_dir": str(self.run_dir), "best_step": state.best["step"],
                "finished": True, **last_validation(self.run_dir)}
