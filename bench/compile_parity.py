"""Whether the compiled training step computes what the eager one does, and how far rounding moves a run.

1. One step from the same weights, batch and noise, eager and compiled: the loss, each parameter's gradient
   and its AdamW update, as relative differences ``|compiled - eager| / |eager|``. From the initial weights,
   or from a checkpoint's (``--checkpoint``, e.g. a trained run's ``best.safetensors``) at ``--tau``.
2. ``--steps`` steps of ``dvae train`` from one start (the same weights, batches and noise): eager; compiled;
   and eager again with one weight of the decoder's first layer scaled by ``1 + --perturb`` (a different
   weight per ``--perturbations``). Training a VAE is chaotic: a change at the level of float rounding grows
   until the runs are as far apart as two draws of the same run. Printed: the training loss of the eager run
   per block of steps and the other runs' differences from it. Where the compiled run's differences are of
   the size of the perturbed runs', they are rounding; where they are larger or one-signed, something else.

    OMP_NUM_THREADS=1 python bench/compile_parity.py --data-dir ../shared/data --steps 4000
    OMP_NUM_THREADS=1 python bench/compile_parity.py --data-dir ../shared/data --steps 0 \\
        --checkpoint RUN/best.safetensors --tau 0.5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import torch
import yaml

from discrete_vae.checkpoint import load_checkpoint
from discrete_vae.compiling import Step
from discrete_vae.data import load_dataset
from discrete_vae.distributed import Distributed
from discrete_vae.loop import step_once
from discrete_vae.presets import fresh_config
from discrete_vae.train import VAETask

DEVICE = torch.device("cpu")


def task_of(config, data, compiled: bool) -> tuple[VAETask, Step]:
    """A fresh task of ``config`` (its weights, batches and noise from the config's seed) and its step."""
    torch.manual_seed(config.run.seed)  # the weights, as dvae train draws them
    task = VAETask(config, data, DEVICE, Distributed.from_env("cpu"), Path(tempfile.gettempdir()))
    task.compiled(compiled)
    return task, Step(task.losses, compiled, DEVICE, "compile_parity", tensors=task.scalars)


def one_step(task: VAETask, step: Step, x: torch.Tensor, tau: float) -> tuple[float, dict, dict]:
    """The loss, gradients and AdamW updates of one step on ``x`` at ``tau`` (noise from seed 123; a
    compiled step is called twice, its first call compiling)."""
    for _ in range(2 if step.compiled else 1):
        torch.manual_seed(123)
        loss, _, _ = step(x, tau, 1.0)
    task.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = dict(task.model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    task.optimizer.step()
    grads = {n: p.grad.clone() for n, p in params.items() if p.grad is not None}
    return float(loss.detach()), grads, {n: params[n].detach() - before[n] for n in grads}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def step_check(config, data, checkpoint: str | None, tau: float) -> None:
    results = []
    for compiled in (False, True):
        task, step = task_of(config, data, compiled)
        if checkpoint:
            task.model.load_state_dict(load_checkpoint(Path(checkpoint))["model"])
        results.append(one_step(task, step, data.train[: config.optim.batch_size], tau))
    (loss_e, grad_e, upd_e), (loss_c, grad_c, upd_c) = results
    weights = f"the weights of {checkpoint}" if checkpoint else "the initial weights"
    print(f"one step ({weights}, tau {tau}): loss {loss_e:.6f} eager, {loss_c:.6f} compiled "
          f"(relative difference {abs(loss_c - loss_e) / abs(loss_e):.1e})")
    print("| parameter | gradient: relative difference | AdamW update: relative difference |\n|---|---|---|")
    for name in grad_e:
        grad, update = relative(grad_c[name], grad_e[name]), relative(upd_c[name], upd_e[name])
        print(f"| {name} | {grad:.1e} | {update:.1e} |")


def trajectory(config, data, steps: int, compiled: bool, perturb: tuple[int, float] | None) -> list[float]:
    """The training loss at each of ``steps`` steps of a fresh run (the loop's own step)."""
    task, step = task_of(config, data, compiled)
    if perturb is not None:
        with torch.no_grad():
            first = next(m for m in task.model.decoder if isinstance(m, torch.nn.Linear))
            first.weight.view(-1)[perturb[0]] *= 1 + perturb[1]
    total = task.total_of(config.to_dict())
    batch = task.batches.next
    return [float(step_once(task, step, batch().to(DEVICE), s, total)[0][0]) for s in range(steps)]


def trajectories(config, data, steps: int, perturbations: int, size: float, blocks: int) -> None:
    eager = trajectory(config, data, steps, False, None)
    others = {"compiled": trajectory(config, data, steps, True, None)}
    for r in range(perturbations):
        others[f"eager, weight {r} × (1 + {size:g})"] = trajectory(config, data, steps, False, (r, size))
    width = max(steps // blocks, 1)
    mean = lambda xs, i: statistics.fmean(xs[i:i + width])  # noqa: E731
    print(f"\n{steps} steps from one start: the training loss, mean per block, and the other runs' "
          "differences from the eager run")
    print("| steps | eager | " + " | ".join(others) + " |\n|---|---|" + "---|" * len(others))
    for i in range(0, steps - width + 1, width):
        diffs = " | ".join(f"{mean(run, i) - mean(eager, i):+.4f}" for run in others.values())
        print(f"| {i + 1}–{i + width} | {mean(eager, i):.3f} | {diffs} |")
    half = steps // 2
    print(f"\nmean |difference| over steps {half + 1}–{steps}: " + ", ".join(
        f"{name} {statistics.fmean(abs(a - b) for a, b in zip(run[half:], eager[half:], strict=True)):.3f}"
        for name, run in others.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("DVAE_DATA_DIR"))
    parser.add_argument("--dataset", default="binarized_mnist")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a dvae train option (YAML value); default: the defaults, latent 20x10")
    parser.add_argument("--steps", type=int, default=4000, help="steps of each run in part 2 (0: skip it)")
    parser.add_argument("--perturbations", type=int, default=3)
    parser.add_argument("--perturb", type=float, default=1e-6, help="the relative change to one weight")
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--checkpoint", help="part 1 from these weights (a run's best.safetensors)")
    parser.add_argument("--tau", type=float, default=1.0, help="part 1's temperature")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    options = {key.replace("-", "_"): yaml.safe_load(value)
               for key, value in (item.split("=", 1) for item in args.set)}
    config = fresh_config({"dataset": args.dataset, "latent": "20x10", "data_dir": args.data_dir, **options})
    data = load_dataset(config.run.dataset, config.run.data_dir, seed=config.run.seed)
    step_check(config, data, args.checkpoint, args.tau)
    if args.steps:
        trajectories(config, data, args.steps, args.perturbations, args.perturb, args.blocks)


if __name__ == "__main__":
    main()
