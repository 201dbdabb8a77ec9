"""The training loop, top to bottom: one function, :func:`train`.

data (index slices of one in-memory tensor) -> model (encoder, relaxation, prior, decoder) ->
relaxed objective -> Adam. Every ``checkpoint_every`` steps the whole state (model, optimizer, RNG,
data order, step; the temperature schedule is a function of the step) is written atomically to
``last.safetensors``, so ``dvae train --resume RUN_DIR`` continues bitwise where it stopped.
Every ``eval_every`` steps the discrete model is validated with the importance-weighted bound and
the best model is kept in ``best.safetensors``; a checkpoint is written only when every parameter and
optimizer moment is finite. SIGTERM or SIGINT writes a checkpoint at the current step and stops. Under
``torchrun`` the same loop runs with DistributedDataParallel (gloo on CPU, nccl on CUDA); rank 0 writes
the run folder (:mod:`discrete_vae.runs`), each rank keeps its own RNG and PCD chains.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from . import __version__
from .checkpoint import (
    atomic_write_bytes,
    check_model_state,
    finite_state,
    load_checkpoint,
    remove_partial_writes,
    restore_training,
    rng_state,
    save_checkpoint,
)
from .compiling import Step, should_compile
from .config import RESUME_OVERRIDES, TrainConfig
from .data import BatchIterator, DataSplits, load_dataset
from .denormals import flush_denormals
from .distributed import Distributed, load_local_state, local_state, wrap
from .errors import ConfigError, NonFiniteLossError, UserError
from .evaluate import estimate_log_partition, evaluate, trivial_nll
from .models import DiscreteVAE
from .progress import GracefulStop, Progress, Stopped
from .recipe import (
    build_model,
    kl_weight,
    learning_rate,
    resolve_device,
    resolve_objective,
    temperature_schedule,
)
from .runs import (
    BEST,
    CONFIG,
    LAST,
    RunLog,
    last_validation,
    note,
    open_new_run,
    open_resumed_run,
    record_overrides,
)
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


def estimator_gradients(own: list[torch.Tensor], aux_loss: torch.Tensor | None) -> list[torch.Tensor]:
    """The gradient of the estimator's ``aux_loss`` with respect to its own parameters only (zeros where
    it has none), taken before the model's backward pass, whose graph it shares."""
    if aux_loss is None or not own:
        return [torch.zeros_like(p) for p in own]
    grads = torch.autograd.grad(aux_loss, own, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(own, grads, strict=True)]


def fits_on(device: torch.device, data: DataSplits) -> bool:
    """Whether the dataset fits in half of the device's free memory (always true on the CPU)."""
    if device.type != "cuda":
        return True
    size = sum(t.numel() * t.element_size() for t in (data.train, data.valid, data.test))
    return size < 0.5 * torch.cuda.mem_get_info(device)[0]


def default_run_dir(config: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.model}-{config.latent}-{stamp}"


def save_images(model: DiscreteVAE, data: DataSplits, run_dir: Path, log: RunLog, step: int, tau: float,
                seed: int) -> None:
    """Labelled PNG grids (32 validation images spread over the split above their reconstructions; 64
    draws from the prior) under ``images/`` and in TensorBoard."""
    device = next(model.parameters()).device
    caption = f"{run_dir.name}, step {step}, tau {tau:.3f}"
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
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
    ddp = Distributed.from_env(config.device)
    device = resolve_device(config.device, ddp.local_rank)
    if config.precision == "fp16" and device.type not in FP16_DEVICES:
        raise ConfigError(f"--precision fp16 runs on CUDA, not {device.type} (where float16 matmuls are "
                          "slower than float32); use --precision bf16")
    if config.precision == "bf16" and device.type == "cpu" and ddp.main and not cpu_has_fast_bf16():
        note("dvae train: this CPU has no oneDNN bfloat16 kernels (they need AVX-512, or BF16 on ARM); "
             "--precision bf16 is about 12x slower than fp32 here (python bench/precision_speed.py)")
    run_dir = (
        Path(resume) if resume else Path(config.out) if config.out else default_run_dir(config)
    )
    torch.manual_seed(config.seed)
    data = load_dataset(config.dataset, config.data_dir, seed=config.seed)
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
    """The loop of :func:`train`, in a run folder this process holds."""
    model = build_model(config, data.dim).to(device)
    model.check_estimator(config.k)  # a --k the estimator cannot take: before anything is written
    model.init_decoder_bias(data.train_mean.to(device))
    model.prepare(data.train[: config.batch_size].to(device))
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.lr,
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
        fused=device.type in ("cpu", "cuda"),
    )
    batches = BatchIterator(
        data.train,
        config.batch_size,
        config.seed,
        dynamic_binarization=data.dynamic_binarization,
        rank=ddp.rank,
        world_size=ddp.world,
    )
    total = config.steps or (
        config.epochs * batches.steps_per_epoch if config.epochs else DEFAULT_STEPS
    )
    schedule = temperature_schedule(config)
    objective = resolve_objective(config, model)
    # weight matrices and the RBM's couplings (the estimator's own networks are not the model's)
    penalized = [p for n, p in model.named_parameters() if p.dim() == 2 and not n.startswith("estimator.")]
    own = list(model.estimator.parameters())  # stepped on the estimator's aux_loss only
    # fp16: both losses scaled before their backward passes (float16 gradients would underflow); the
    # step unscales, and skips a step whose gradients overflowed while the scale adapts
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
    torch.manual_seed(config.seed * 7919 + ddp.rank)  # per-rank noise; weights came from `seed`
    net = wrap(model, ddp)  # DDP with more than one rank; the PCD chains stay each rank's own
    step, best, saved = 0, {"step": -1, "nll": math.inf}, None  # saved: the step of last.safetensors
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    resume_command = f"dvae train --resume {run_dir}"

    if resume:
        if ddp.main:
            remove_partial_writes(run_dir)
        state = load_checkpoint(run_dir / LAST, device)
        check_model_state(run_dir / LAST, state, resumable=True)
        modules = {"model": model, "optimizer": optimizer, "data": batches,
                   **({"scaler": scaler} if scaler.is_enabled() else {})}
        restore_training(run_dir / LAST, state, modules, device, rank=ddp.rank)
        if "rank_local" in state:
            load_local_state(model, state["rank_local"], ddp.rank)
        step, best, saved = int(state["step"]), state["best"], int(state["step"])
        if step > total:
            raise UserError(f"--steps {total} lies before the checkpoint's step {step}")
        if "sums" in state:
            sums.copy_(state["sums"])
        if step == total:  # nothing to do: write nothing
            if ddp.main:
                note(f"dvae train: {run_dir} is already at its final step {step}; nothing to do "
                     "(give --steps N to train further)")
            ddp.close()
            return {"step": step, "run_dir": str(run_dir), "best_step": best["step"], "finished": True,
                    **last_validation(run_dir)}
    compiled = ddp.main and should_compile(config.compile, device, total - step, ddp.world, "dvae train")
    # compiled, a second backward pass (the estimator's own gradients) would run the whole step's again
    joint = compiled and model.estimator.separable_aux

    def losses(x: torch.Tensor, tau: float, weight: float) -> tuple[torch.Tensor, Any]:
        terms = net(x, tau, config.k, weight, objective)
        loss = terms.loss
        if config.l2:
            loss = loss + 0.5 * config.l2 * sum(p.square().sum() for p in penalized)
        if joint and terms.aux_loss is not None:
            return loss + terms.aux_loss, terms._replace(aux_loss=None)
        return loss, terms

    train_step = Step(losses, compiled, device, "dvae train", tensors=(1, 2))
    log = RunLog(run_dir, step if resume else None) if ddp.main else None  # checks metrics.jsonl first
    if resume and ddp.main:
        record_overrides(run_dir, step, state["config"], config.to_dict(), RESUME_OVERRIDES, "dvae train")
    if ddp.main and config.k_defaulted and config.k > 1:
        estimator = model.estimator.name
        note(f"dvae train: --k not given; estimator {estimator} needs at least {config.k} samples per example"
             + (" (one antithetic pair)" if estimator in ("arm", "disarm") else "")
             + f", so k = {config.k} (recorded in {run_dir / CONFIG})")
    if ddp.main:  # the options in force (a resume's new --steps, --lr, ...)
        atomic_write_bytes(run_dir / CONFIG, yaml.safe_dump(config.to_dict(), sort_keys=False).encode())
    trivial = trivial_nll(data.train_mean, data.valid) if ddp.main else math.nan

    def checkpoint() -> None:
        nonlocal saved
        if not finite_state(model, optimizer):
            raise NonFiniteLossError("non-finite parameters", step, saved, resume_command)
        rng = ddp.gather(rng_state(device))
        local = ddp.gather(local_state(model))
        if ddp.main:
            save_checkpoint(
                run_dir / LAST,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "rng": {k: [r[k] for r in rng] for k in rng[0]},
                    "rank_local": {k: [r[k] for r in local] for k in local[0]},
                    "data": batches.state_dict(),
                    "step": step,
                    "best": best,
                    "sums": sums,  # partial sums of the next metrics line
                    **({"scaler": scaler.state_dict()} if scaler.is_enabled() else {}),
                    "config": config.to_dict(),
                    "data_dim": data.dim,
                    "version": __version__,
                },
            )
        saved = step

    def validate() -> dict[str, Any]:
        log_z = estimate_log_partition(
            model.prior, config.log_z_betas, config.log_z_samples, seed=config.seed + step
        )
        metrics: dict[str, Any] = evaluate(
            model,
            data.valid,
            samples=config.val_samples,
            tau=schedule(step),
            seed=config.seed + step,
            log_partition=log_z.get("log_z", 0.0),
        )
        metrics.update(log_z)
        if metrics["nll"] < best["nll"] and finite_state(model, optimizer):
            best.update(step=step, nll=metrics["nll"])
            save_checkpoint(
                run_dir / BEST,
                {
                    "model": model.state_dict(),
                    "config": config.to_dict(),
                    "data_dim": data.dim,
                    "step": step,
                    "metrics": metrics,
                },
            )
        margin = 2 * metrics.get("nll_stderr", 0.0)  # beyond the noise of the examples scored
        if not metrics["nll"] <= trivial + margin:  # diverged while staying finite, or NaN
            metrics["warning"] = (f"the validation bound {metrics['nll']:.2f} is worse than the trivial "
                                  f"model's {trivial:.2f} (independent pixels at the training marginals) "
                                  "by more than twice its standard error: training has diverged")
            note(f"dvae train: step {step}: {metrics['warning']}")
        log.write(step, "valid", metrics)
        save_images(model, data, run_dir, log, step, float(model.tau(schedule(step)).detach()), config.seed)
        return metrics

    bar = Progress(total, step, Progress.mode_for(progress) if ddp.main else "off", desc="train")
    metrics: dict[str, Any] = {}
    first_step, busy = step, 0.0  # seconds spent outside optimizer steps (validation, checkpoints)
    started = time.perf_counter()
    model.train()
    try:
        with GracefulStop() as stop:
            while step < total:
                x = batches.next().to(device, non_blocking=True)  # (B, D)
                tau = schedule(step)
                lr = learning_rate(config, step, total)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                weight = kl_weight(config, step, total)
                loss, terms = train_step(x, tau, weight)
                phase = model.prior.negative_phase()  # the RBM's ∇ log Z from its sampler; None if normalised
                if phase is not None:
                    loss = loss + weight * phase
                optimizer.zero_grad(set_to_none=True)
                aux_loss = terms.aux_loss if terms.aux_loss is None else scaler.scale(terms.aux_loss)
                aux = estimator_gradients(own, aux_loss)
                scaler.scale(loss).backward()
                reported = -terms.objective.mean()
                if not (torch.isfinite(reported) and torch.isfinite(loss)):
                    value = float(reported if not torch.isfinite(reported) else loss.detach())
                    raise NonFiniteLossError(f"non-finite loss ({value})", step + 1, saved, resume_command)
                if not joint:  # else the backward pass gave them
                    for p, g in zip(own, ddp.average(aux), strict=True):
                        p.grad = g
                scaler.step(optimizer)
                scaler.update()
                step += 1
                sums += torch.stack([reported, -terms.log_px.mean(), terms.kl.mean()])
                if step % config.log_every == 0 or step == total:
                    n = config.log_every if step % config.log_every == 0 else step % config.log_every
                    loss_now, rec, kl = (sums / n).tolist()
                    sums.zero_()
                    tau_now = float(model.tau(tau).detach())
                    if ddp.main:
                        line = {"loss": loss_now, "neg_log_px": rec, "kl": kl, "tau": tau_now, "lr": lr}
                        stats = {**model.posterior.stats(), **model.estimator.stats()}
                        log.write(step, "train", {**line, **stats})
                        bar.update(step, loss=loss_now, tau=tau_now)
                if step % config.eval_every == 0 or step % config.checkpoint_every == 0 or step == total:
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    t0 = time.perf_counter()
                    if ddp.main and (step % config.eval_every == 0 or step == total):
                        metrics = validate()
                        bar.update(step, valid_nll=metrics["nll"])
                    if step % config.checkpoint_every == 0 or step == total:
                        checkpoint()
                    busy += time.perf_counter() - t0
                bar.update(step)
                signum = ddp.any(stop.signum)
                if signum and step < total:  # preemption or Ctrl-C: write the state, then stop
                    if saved != step:
                        checkpoint()
                    raise Stopped(signum, step, resume_command)
    finally:
        if log:
            log.close()
        bar.close()
    train_seconds = time.perf_counter() - started - busy
    ddp.close()
    result = {
        "step": step, "run_dir": str(run_dir), "best_step": best["step"], **metrics,
        "train_seconds": round(train_seconds, 3),
        "steps_per_s": round((step - first_step) / max(train_seconds, 1e-9), 2),
        "compiled": train_step.compiled, "compile_seconds": round(train_step.compile_seconds, 3),
    }
    if "warning" in metrics:
        note(f"dvae train: {metrics['warning']}")
    return result
