"""The training loop, top to bottom: one function, :func:`train`.

data (index slices of one in-memory tensor) -> model (encoder, relaxation, prior, decoder) ->
relaxed objective -> Adam. Every ``checkpoint_every`` steps the whole state (model, optimizer, RNG,
data order, step; the temperature schedule is a function of the step) is written atomically to
``last.safetensors``, so ``dvae train --resume RUN_DIR`` continues bitwise where it stopped.
Every ``eval_every`` steps the discrete model is validated with the importance-weighted bound and
the best model is kept in ``best.safetensors``. Under ``torchrun`` the same loop runs with
DistributedDataParallel (gloo on CPU, nccl on CUDA); rank 0 writes the run folder.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import __version__
from .checkpoint import (
    load_checkpoint,
    remove_partial_writes,
    restore_training,
    rng_state,
    run_checkpoint,
    save_checkpoint,
)
from .config import TrainConfig
from .data import BatchIterator, DataSplits, load_dataset
from .errors import ConfigError, NonFiniteLossError, UserError
from .evaluate import estimate_log_partition, evaluate
from .latents import build_family
from .latents.mixed import GaussianPrior, Mixed, ProductPrior
from .models import DiscreteVAE, MLPConfig
from .objectives import OBJECTIVE_FUNCTIONS
from .priors import build_prior
from .schedules import Schedule, constant, exponential_decay
from .viz.grids import reconstruction_grid, save_png, tile

DEFAULT_STEPS = 200_000
LAST, BEST, CONFIG, METRICS = "last.safetensors", "best.safetensors", "config.yaml", "metrics.jsonl"


def build_model(config: TrainConfig, data_dim: int) -> DiscreteVAE:
    """The model a config describes (weights drawn from the current RNG state)."""
    spec = config.latent_spec()
    encoder = MLPConfig(tuple(config.hidden), config.activation, config.batch_norm)
    family = build_family(
        config.model,
        spec,
        kl=config.kl,
        beta=config.beta,
        dataset=config.dataset,
        struct=config.struct,
        levels=config.levels,
        context_dim=data_dim,
        level_mlp=encoder,
        prior_temperature=config.prior_temperature,
        delta=config.delta,
        prior_scale=config.prior_scale,
        sb_threshold=config.sb_threshold,
        sb_percentile=config.sb_percentile,
        flow_layers=config.flow_layers,
        mc_samples=config.mc_samples,
    )
    if family.levels != config.levels:
        raise ConfigError(f"--levels applies to the DVAE models, not to {config.model}")
    prior_name = family.default_prior if config.prior == "auto" else config.prior
    prior = build_prior(prior_name, spec.n, spec.k, not family.one_hot, sampler=config.sampler,
                        chains=config.chains, sweeps=config.sweeps)
    family.check_prior(prior)
    if config.continuous:
        if not prior.normalized:
            raise ConfigError(f"--continuous needs a normalised discrete prior, not {prior_name}")
        family = Mixed(config.continuous, family, config.kl)
        prior = ProductPrior([GaussianPrior(config.continuous), prior])
    return DiscreteVAE(
        data_dim,
        family,
        prior,
        encoder,
        encoder.mirrored(),
        learnable_temperature=config.temperature if config.learn_temperature else None,
        center_input=config.center_input,
    )


def temperature_schedule(config: TrainConfig) -> Schedule:
    if config.learn_temperature or config.anneal_rate == 0:
        return constant(config.temperature)
    return exponential_decay(
        config.temperature, config.anneal_rate, config.min_temperature, config.anneal_every
    )


PIECEWISE = ((0.02, 0.1), (0.6, 1.0), (0.75, 1 / 3), (0.95, 0.1), (math.inf, 1 / 33))


def learning_rate(config: TrainConfig, step: int, total: int) -> float:
    """Constant; piecewise (the DVAE code's: ``lr`` times 1/10, 1, 1/3, 1/10, 1/33 before 2, 60, 75, 95,
    100 % of the steps); or cosine from ``lr`` at step 0 to ``lr_final`` at the last step."""
    if config.lr_schedule == "constant":
        return config.lr
    if config.lr_schedule == "piecewise":
        return config.lr * next(f for end, f in PIECEWISE if end == math.inf or step < int(end * total))
    progress = min(1.0, step / max(1, total))
    return config.lr_final + 0.5 * (config.lr - config.lr_final) * (
        1 + math.cos(math.pi * progress)
    )


def kl_weight(config: TrainConfig, step: int, total: int) -> float:
    """KL warm-up: ``min(1, step / (kl_warmup * total))``; 1 without warm-up."""
    if config.kl_warmup == 0:
        return 1.0
    return min(1.0, step / (config.kl_warmup * total))


def resolve_objective(config: TrainConfig, family) -> str:
    """``elbo`` or ``iw``; ``auto``: iw for families that train with it (DVAE#) when k > 1."""
    if config.objective != "auto":
        return config.objective
    return "iw" if family.iw_default and config.samples > 1 else "elbo"


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but CUDA is not available")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown --device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported --device {name!r}; use cpu, cuda, cuda:N or auto")
    return device


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this run created the process group and destroys it when done

    @classmethod
    def from_env(cls, device_name: str) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        owns = not dist.is_initialized()
        if owns:
            backend = "nccl" if device_name.startswith("cuda") else "gloo"
            dist.init_process_group(backend)
        return cls(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")), owns)

    def close(self) -> None:
        """Wait for every rank, then tear down the process group this run created (an exit with
        live gloo threads can abort a rank: "terminate called without an active exception")."""
        if self.world > 1:
            dist.barrier()
            if self.owns_group:
                dist.destroy_process_group()

    @property
    def main(self) -> bool:
        return self.rank == 0


def fits_on(device: torch.device, data: DataSplits) -> bool:
    """Whether the dataset fits in half of the device's free memory (always true on the CPU)."""
    if device.type != "cuda":
        return True
    size = sum(t.numel() * t.element_size() for t in (data.train, data.valid, data.test))
    return size < 0.5 * torch.cuda.mem_get_info(device)[0]


def default_run_dir(config: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.model}-{config.latent}-{stamp}"


def model_from_run(
    run_dir: Path, which: str = "best", device: str = "cpu"
) -> tuple[DiscreteVAE, TrainConfig, dict]:
    """Load the model of a run folder (``best`` or ``last`` checkpoint) for eval/sample/reconstruct."""
    state = load_checkpoint(run_checkpoint(run_dir, which))
    config = TrainConfig.from_dict(state["config"])
    model = build_model(config, int(state["data_dim"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config, state


class RunLog:
    """metrics.jsonl and TensorBoard, written by rank 0 only."""

    def __init__(self, run_dir: Path, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        self.path = run_dir / METRICS
        if resume_step is not None and self.path.exists():  # drop lines after the checkpoint
            lines = self.path.read_text().splitlines()
            kept = [ln for ln in lines if ln.strip() and json.loads(ln)["step"] <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        self.file = self.path.open("a")
        self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step)

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        self.file.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")
        self.file.flush()
        for name, value in metrics.items():
            if isinstance(value, float | int):
                self.writer.add_scalar(f"{split}/{name}", value, step)

    def image(self, tag: str, grid: torch.Tensor, step: int) -> None:
        self.writer.add_image(tag, grid.unsqueeze(0), step)

    def close(self) -> None:
        self.file.close()
        self.writer.close()


def save_images(
    model: DiscreteVAE, data: DataSplits, run_dir: Path, log: RunLog, step: int, seed: int
) -> None:
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        x = data.valid[:32].to(device)
        recon = reconstruction_grid(x, model.reconstruct(x), data.image_shape)
        samples = tile(model.sample_images(64), data.image_shape, 8)
    save_png(recon, run_dir / "images" / f"reconstructions_{step:07d}.png")
    save_png(samples, run_dir / "images" / f"samples_{step:07d}.png")
    log.image("reconstructions", recon, step)
    log.image("samples", samples, step)


def train(
    config: TrainConfig, resume: Path | None = None, progress: bool | None = None
) -> dict[str, Any]:
    """Train (or resume) a run; returns the final validation metrics."""
    ddp = Distributed.from_env(config.device)
    device = resolve_device(config.device, ddp.local_rank)
    run_dir = (
        Path(resume) if resume else Path(config.out) if config.out else default_run_dir(config)
    )
    torch.manual_seed(config.seed)
    data = load_dataset(config.dataset, config.data_dir, seed=config.seed)
    data = data.to(device) if fits_on(device, data) else data
    model = build_model(config, data.dim).to(device)
    model.init_decoder_bias(data.train_mean.to(device))
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
    objective = OBJECTIVE_FUNCTIONS[resolve_objective(config, model.family)]
    penalized = [p for p in model.parameters() if p.dim() == 2]  # weight matrices, RBM couplings
    torch.manual_seed(config.seed * 7919 + ddp.rank)  # per-rank noise; weights came from `seed`
    step, best = 0, {"step": -1, "nll": math.inf}

    if resume:
        remove_partial_writes(run_dir)
        state = load_checkpoint(run_dir / LAST, device)
        modules = {"model": model, "optimizer": optimizer, "data": batches}
        restore_training(run_dir / LAST, state, modules, device, rank=ddp.rank)
        step, best = int(state["step"]), state["best"]
        if step > total:
            raise UserError(f"--steps {total} lies before the checkpoint's step {step}")
        if ddp.main:  # the new --steps, --eval-every, ... of this resume
            (run_dir / CONFIG).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    elif ddp.main:
        if (run_dir / LAST).exists():
            raise UserError(
                f"{run_dir} already holds a run; use --resume {run_dir} or another --out"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CONFIG).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))

    net = DistributedDataParallel(model) if ddp.world > 1 else model
    log = RunLog(run_dir, step if resume else None) if ddp.main else None

    def checkpoint() -> None:
        rng = rng_state(device)
        if ddp.world > 1:
            gathered: list[Any] = [None] * ddp.world
            dist.all_gather_object(gathered, rng)
            rng = {k: [g[k] for g in gathered] for k in rng}
        else:
            rng = {k: [v] for k, v in rng.items()}
        if ddp.main:
            save_checkpoint(
                run_dir / LAST,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "rng": rng,
                    "data": batches.state_dict(),
                    "step": step,
                    "best": best,
                    "sums": sums,  # partial sums of the next metrics line
                    "config": config.to_dict(),
                    "data_dim": data.dim,
                    "version": __version__,
                },
            )

    def validate() -> dict[str, float]:
        log_z = estimate_log_partition(
            model.prior, config.log_z_betas, config.log_z_samples, seed=config.seed + step
        )
        metrics = evaluate(
            model,
            data.valid,
            samples=config.val_samples,
            tau=schedule(step),
            seed=config.seed + step,
            log_partition=log_z.get("log_z", 0.0),
        )
        metrics.update(log_z)
        if metrics["nll"] < best["nll"]:
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
        log.write(step, "valid", metrics)
        save_images(model, data, run_dir, log, step, config.seed)
        return metrics

    quiet = True if not ddp.main else (None if progress is None else not progress)  # None: tty only
    bar = tqdm(total=total, initial=step, disable=quiet, dynamic_ncols=True, unit="step",
               desc="train; loss = relaxed objective, not a bound")
    metrics: dict[str, float] = {}
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    if resume and "sums" in state:
        sums.copy_(state["sums"])
    first_step, busy = step, 0.0  # seconds spent outside optimizer steps (validation, checkpoints)
    started = time.perf_counter()
    model.train()
    try:
        while step < total:
            x = batches.next().to(device, non_blocking=True)  # (B, D)
            tau = schedule(step)
            lr = learning_rate(config, step, total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            out = net(x, tau, config.samples)
            terms = objective(out.log_px, out.latent, kl_weight(config, step, total))
            loss = terms.loss
            if config.l2:
                loss = loss + 0.5 * config.l2 * sum(p.square().sum() for p in penalized)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if not torch.isfinite(terms.loss):
                raise NonFiniteLossError(step + 1, float(terms.loss.detach()))
            optimizer.step()
            step += 1
            sums += torch.stack(
                [terms.loss.detach(), terms.log_px.mean().detach(), terms.kl.mean().detach()]
            )
            if step % config.log_every == 0 or step == total:
                n = config.log_every if step % config.log_every == 0 else step % config.log_every
                loss, rec, kl = (sums / n).tolist()
                sums.zero_()
                tau_now = float(model.tau(tau).detach())
                if ddp.main:
                    line = {"loss": loss, "log_px": rec, "kl": kl, "tau": tau_now, "lr": lr}
                    log.write(step, "train", {**line, **model.family.stats()})
                    bar.set_postfix(loss=f"{loss:.2f}", tau=f"{tau_now:.3f}", refresh=False)
            if step % config.eval_every == 0 or step % config.checkpoint_every == 0 or step == total:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                if ddp.main and (step % config.eval_every == 0 or step == total):
                    metrics = validate()
                if step % config.checkpoint_every == 0 or step == total:
                    checkpoint()
                busy += time.perf_counter() - t0
            bar.update(1)
    except BaseException:  # a bad option found by the first step, a non-finite loss, Ctrl-C
        if log:
            log.close()
        bar.close()
        raise
    bar.close()
    train_seconds = time.perf_counter() - started - busy
    if ddp.main:
        if not metrics:
            metrics = validate()
        log.close()
    ddp.close()
    return {
        "step": step, "run_dir": str(run_dir), "best_step": best["step"], **metrics,
        "train_seconds": round(train_seconds, 3),
        "steps_per_s": round((step - first_step) / max(train_seconds, 1e-9), 2),
    }
