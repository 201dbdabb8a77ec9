"""Cost of one training step of every registered estimator, relative to ``gs`` on the same model.

A step is what ``dvae train`` does per batch, through the same code (``dvae train``'s task and the training
loop's ``step_once``): forward through the model and its estimator, the RBM's negative phase (none here), the
estimator's own gradients, ``loss.backward()`` and the fused AdamW step. Models are built from one seed, so
every estimator sees the same weights; each trains its own copy. Two settings: binary latents
(``--latent 200 --binary``) and categorical (``--latent 20x10``), 784-512-256 MLPs, batch 100. Samples per
example are each estimator's minimum (2 for ARM, DisARM, RLOO and VIMCO, else 1); Gumbel-Rao averages
``--mc`` conditional Jacobians.

Timing is side by side: every repeat runs ``--steps`` steps of each estimator in turn (the order rotates
between repeats), so machine noise hits all alike. On the CPU with one thread (``OMP_NUM_THREADS=1``) the time
is the thread's CPU time, which other processes on a shared machine inflate far less than the wall clock (also
reported); with more threads, and on CUDA, it is the wall clock. Reported per estimator: the median over
repeats of ms per step, and the median over repeats of its time divided by ``gs``'s in the same repeat,
checked against the targets of the estimator-cost issue. Estimators that do not support a latent kind are
listed as skipped. With ``--compile``, each estimator also runs its step through ``torch.compile`` (as
``dvae train --compile on`` does; the first call, which compiles, is part of the warm-up) in the same
rotation, and the table adds its ms per step and the median of compiled / eager per repeat; an estimator
whose step cannot be compiled says so (it ran eagerly).
Data: binarized MNIST from ``--data-dir`` when it is there, else random binary data of the same shape.

    OMP_NUM_THREADS=1 python bench/estimator_cost.py --data-dir ../shared/data --json cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from discrete_vae.compiling import Step
from discrete_vae.config import TrainConfig
from discrete_vae.data import DataSplits, load_dataset
from discrete_vae.distributed import Distributed
from discrete_vae.errors import ConfigError, DataError
from discrete_vae.estimators import ESTIMATORS
from discrete_vae.loop import step_once
from discrete_vae.train import VAETask

SETTINGS = {"binary": ("200", True), "categorical": ("20x10", False)}  # name -> (--latent, --binary)
# the issues' targets: step time relative to gs at the samples per example above (indecater: none, it
# evaluates f N (C - 1) + 1 times per draw)
TARGETS = {"arm": 2.2, "disarm": 2.2, "rloo": 2.2, "rebar": 3.5, "relax": 3.5, "st": 1.1, "reinmax": 1.1,
           "gumbel-rao": 1.2, "gst": 1.1, "arms": 2.2, "carms": 2.2, "double-cv": 2.5, "rodeo": 2.5,
           "unordered": 2.5, "sum-and-sample": 2.5}
REFERENCE = "gs"


@dataclass
class Runner:
    """One estimator's task of ``dvae train`` (:class:`~discrete_vae.train.VAETask`) and its step, stepped by
    the training loop's own :func:`~discrete_vae.loop.step_once`, less logging and checkpoints."""

    name: str
    task: VAETask
    forward: Step
    step: int = 0

    def train_step(self, x: torch.Tensor, total: int) -> None:
        try:
            step_once(self.task, self.forward, x, self.step, total)
        except FloatingPointError as e:
            raise FloatingPointError(f"{self.name}: non-finite loss ({e}) at step {self.step}") from None
        self.step += 1


SEARCH = {"seconds": 0.0}  # in the joint-configuration search (unordered, sum-and-sample), the step's measure


def time_joint_search() -> None:
    """Count the time the estimators spend in the joint-configuration search (:mod:`.joint`: most_probable,
    draw_without_replacement and Outside's methods, outermost calls only) into ``SEARCH``."""
    import functools

    import discrete_vae.estimators as package
    from discrete_vae.estimators import joint

    depth = [0]

    def timed(search):
        @functools.wraps(search)
        def wrapper(*args, **kwargs):
            if torch.compiler.is_compiling() or depth[0]:
                return search(*args, **kwargs)
            depth[0] += 1
            start = time.thread_time() if torch.get_num_threads() == 1 else time.perf_counter()
            try:
                return search(*args, **kwargs)
            finally:
                stop = time.thread_time() if torch.get_num_threads() == 1 else time.perf_counter()
                SEARCH["seconds"] += stop - start
                depth[0] -= 1
        return wrapper

    for method in ("__init__", "add", "index", "next", "log_mass"):
        setattr(joint.Outside, method, timed(getattr(joint.Outside, method)))
    for name in ("most_probable", "draw_without_replacement"):
        search = getattr(joint, name)
        wrapped = timed(search)
        for module in [joint, *vars(package).values()]:
            if getattr(module, name, None) is search:
                setattr(module, name, wrapped)


def samples_for(name: str) -> int:
    return max(1, ESTIMATORS.get(name).min_samples)


def estimator_options(name: str, mc: int) -> dict:
    option_names = {f.name for f in fields(ESTIMATORS.get(name).Options)}
    return {"mc": mc} if "mc" in option_names else {}


def make_runner(name: str, setting: str, args: argparse.Namespace, data: torch.Tensor,
                device: torch.device, compiled: bool = False) -> Runner:
    """``name``'s runner on ``setting``'s model (weights from ``args.seed``); ConfigError if unsupported."""
    latent, binary = SETTINGS[setting]
    config = TrainConfig.of(latent=latent, binary=binary, estimator=name, hidden=args.hidden,
                         batch_size=args.batch_size, estimator_options=estimator_options(name, args.mc),
                         k=samples_for(name), device=str(device), seed=args.seed)
    torch.manual_seed(args.seed)
    shape = (28, 28) if data.shape[1] == 784 else (1, data.shape[1])
    splits = DataSplits("bench", data, data[:100], data[:100], shape, dynamic_binarization=False)
    task = VAETask(config, splits, device, Distributed(), Path("."))
    task.model.train()
    task.compiled(compiled)  # one backward pass where it can, as dvae train's compiled step
    step = Step(task.losses, compiled, device, f"estimator_cost {name}", tensors=task.scalars)
    return Runner(name, task, step)


def load_data(data_dir: str | None, seed: int) -> tuple[torch.Tensor, str]:
    """Binarized MNIST's training split, or 10,000 random binary images of 784 pixels."""
    if data_dir is not None:
        try:
            return load_dataset("binarized_mnist", data_dir, download=False).train, "binarized_mnist"
        except DataError as e:
            print(f"note: {e}; using random binary data", file=sys.stderr)
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((10_000, 784), 0.13), generator=generator), "random binary (p=0.13)"


def cpu_measure(device: torch.device) -> bool:
    """Whether this thread's CPU time measures a step: on the CPU with one torch thread (it then holds the
    step's whole work, whatever else the machine runs); else the wall clock does."""
    return device.type == "cpu" and torch.get_num_threads() == 1


def time_steps(runner: Runner, batches: list[torch.Tensor], steps: int,
               device: torch.device) -> tuple[float, float]:
    """Milliseconds per step over ``steps`` steps: (the measure, see :func:`cpu_measure`; wall-clock; of the
    measure, ms in the beam search)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    SEARCH["seconds"] = 0.0
    wall, cpu = time.perf_counter(), time.thread_time()
    for i in range(steps):
        runner.train_step(batches[(runner.step + i) % len(batches)], total=10**6)
    if cuda:
        torch.cuda.synchronize(device)
    wall, cpu = (time.perf_counter() - wall) / steps * 1e3, (time.thread_time() - cpu) / steps * 1e3
    return (cpu if cpu_measure(device) else wall), wall, SEARCH["seconds"] / steps * 1e3


def summary(ms: list[float], reference: list[float]) -> dict:
    """Median ms per step, and the median and quartiles of the per-repeat ratios to the reference."""
    ratios = [t / g for t, g in zip(ms, reference, strict=True)]
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return {"ms": statistics.median(ms), "ratio": statistics.median(ratios), "ratio_q1": q1, "ratio_q3": q3}


def bench_setting(setting: str, names: list[str], args: argparse.Namespace, data: torch.Tensor,
                  device: torch.device) -> dict:
    """Per estimator: ms per step and its ratio to gs (medians over repeats), or why it was skipped."""
    runners, skipped = {}, {}
    for name in names:
        try:
            runners[name] = make_runner(name, setting, args, data, device)
        except ConfigError as e:
            skipped[name] = str(e)
            continue
        if args.compile:
            runners[f"{name} compiled"] = make_runner(name, setting, args, data, device, compiled=True)
    if REFERENCE not in runners:
        raise SystemExit(f"{REFERENCE} must be among the estimators (it is the reference)")
    batches = [data[i * args.batch_size:(i + 1) * args.batch_size].to(device) for i in range(50)]
    for runner in runners.values():
        time_steps(runner, batches, args.warmup, device)
    ms: dict[str, list[float]] = {name: [] for name in runners}
    wall: dict[str, list[float]] = {name: [] for name in runners}
    search: dict[str, list[float]] = {name: [] for name in runners}
    order = list(runners)
    for r in range(args.repeats):
        shift = r % len(order)  # rotate, so that no estimator always follows the same one
        for name in order[shift:] + order[:shift]:
            measure, wall_ms, search_ms = time_steps(runners[name], batches, args.steps, device)
            ms[name].append(measure)
            wall[name].append(wall_ms)
            search[name].append(search_ms)
        print(f"{setting} repeat {r + 1}/{args.repeats}: "
              + ", ".join(f"{n} {v[-1]:.1f}" for n, v in ms.items()) + " ms", file=sys.stderr)
    rows = {}
    for name in names:
        if name in skipped:
            rows[name] = {"skipped": skipped[name]}
            continue
        target = TARGETS.get(name)
        config = runners[name].task.config
        row = {"samples": config.model.k, "options": config.to_dict()["model"]["estimator_options"],
               **summary(ms[name], ms[REFERENCE]), "target": target,
               "wall_ratio": summary(wall[name], wall[REFERENCE])["ratio"],
               "ms_all": ms[name], "wall_ms_all": wall[name]}
        row["status"] = None if target is None else ("PASS" if row["ratio"] <= target else "MISS")
        if any(search[name]):
            row["search_ms"] = statistics.median(search[name])
            row["search_share"] = statistics.median(
                t / m for t, m in zip(search[name], ms[name], strict=True))
        compiled = runners.get(f"{name} compiled")
        if compiled is not None:
            row.update(compiled_ms=statistics.median(ms[compiled_name := f"{name} compiled"]),
                       compiled_vs_eager=statistics.median(
                           [c / e for c, e in zip(ms[compiled_name], ms[name], strict=True)]),
                       compiled=compiled.forward.compiled)
        rows[name] = row
    return rows


def markdown(setting: str, rows: dict) -> str:
    latent, binary = SETTINGS[setting]
    compiled = any("compiled_ms" in row for row in rows.values())
    extra = (" compiled ms/step | compiled ms / eager ms |", "---:|---:|") if compiled else ("", "")
    lines = [f"### {setting}: --latent {latent}{' --binary' if binary else ''}", "",
             "| estimator | samples/example | ms/step | ratio to gs | ratio IQR | wall-clock ratio | target "
             "| |" + extra[0],
             "|---|---:|---:|---:|---:|---:|---:|---|" + extra[1]]
    for name, row in rows.items():
        if "skipped" in row:
            lines.append(f"| {name} | | | | | | | skipped: {row['skipped']} |" + " |" * (2 * compiled))
            continue
        options = "".join(f" ({k}={v})" for k, v in row["options"].items())
        target = "" if row["target"] is None else f"≤ {row['target']:.1f}×"
        line = (f"| {name} | {row['samples']}{options} | {row['ms']:.2f} | {row['ratio']:.2f}× | "
                f"{row['ratio_q1']:.2f}–{row['ratio_q3']:.2f} | {row['wall_ratio']:.2f}× | {target} | "
                f"{row['status'] or ''} |")
        if compiled:
            eager = "" if row["compiled"] else " (not compiled: ran eagerly)"
            line += f" {row['compiled_ms']:.2f}{eager} | {row['compiled_vs_eager']:.2f}× |"
        lines.append(line)
    searched = [f"{name} {row['search_ms']:.2f} ms ({row['search_share']:.0%} of its step)"
                for name, row in rows.items() if "search_ms" in row]
    if searched:
        lines += ["", "Search over the joint configurations (eager): " + ", ".join(searched) + "."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="binary,categorical",
                        help="comma-separated: binary, categorical")
    parser.add_argument("--estimators", default=None, help="comma-separated names (default: every registered "
                        "estimator); gs is always included")
    parser.add_argument("--hidden", default="512,256", help="encoder widths; the decoder mirrors them")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--mc", type=int, default=10, help="Gumbel-Rao's K (conditional draws per Jacobian)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per estimator and repeat")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per estimator first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, which "
                        "follows OMP_NUM_THREADS)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", default=None,
                        help="binarized MNIST from here (else random binary data)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--compile", action="store_true", help="also time each estimator's compiled step")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS",) if k in os.environ)
    command = f"{env} python {shlex.join(sys.argv)}".strip()
    names = ESTIMATORS.names() if args.estimators is None else args.estimators.split(",")
    names = [REFERENCE] + [n for n in names if n != REFERENCE]
    for name in names:
        ESTIMATORS.get(name)
    device = torch.device(args.device)
    data, data_name = load_data(args.data_dir, args.seed)
    time_joint_search()
    print(f"$ {command}\n")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s) "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), device {device}, "
          f"data {data_name}, "
          f"hidden {args.hidden}, batch {args.batch_size}, {args.repeats} repeats x {args.steps} steps "
          f"(+{args.warmup} warm-up); ms/step: median over repeats of "
          f"{'the thread' + chr(39) + 's CPU' if cpu_measure(device) else 'wall-clock'} time; "
          "ratio: median over repeats of ms / gs's ms in the same repeat (IQR: its quartiles)\n",
          flush=True)
    results = {}
    for setting in args.settings.split(","):
        if setting not in SETTINGS:
            raise SystemExit(f"unknown setting {setting!r}; choose from {', '.join(SETTINGS)}")
        results[setting] = bench_setting(setting, names, args, data, device)
        print(markdown(setting, results[setting]) + "\n", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "estimator-cost", "command": command, "threads": torch.get_num_threads(),
                       "data": data_name, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
