"""Speed on a CUDA device, and what mixed precision does to the bound there.

Speed table: training steps/s of the default gs model (batch 100 and 1000, fp32, bf16 and fp16; at
batch 100 in fp32 also compiled, ``--compile on``, which on CUDA replays the step as CUDA graphs), DVAE#
(dvaes-power, 1-layer-lin) with the original's PCD 1000 chains x 40 sweeps, eager and compiled, and the
seconds of ``dvae eval`` with S = 5000 on the whole test set. The compiled rows exclude the first call
(compiling) and give its seconds beside them; every other row runs ``--compile off``.
Precision table: the default model at batch 1000 for ``--steps`` steps in each precision, three seeds,
its test bound (S = 1000 on 2,000 test images, best checkpoint) and steps/s as mean ± std over the
seeds, so that a precision is kept only where its bound is within the seeds' spread of fp32's and it
trains at least 1.3x faster. Every run is a real
``dvae train`` / ``dvae eval`` on binarized MNIST (``--data-dir``). The batch-1000 speed rows are the
precision table's seed-0 runs, so no configuration trains twice: about 4.5 minutes on one H200 by the
rows' timings there (each row is also printed to stderr as it is measured, so a run cut short keeps what
it got).

    python bench/gpu_speed.py --data-dir ../shared/data
    python bench/gpu_speed.py --data-dir ../shared/data --device cpu --steps 20 --dvae-steps 5 \
        --precisions fp32 --seeds 2 --bound-samples 10 --eval-limit 20   # a smoke run, on the CPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from discrete_vae.evaluate import evaluate_run
from discrete_vae.presets import fresh_config
from discrete_vae.train import train


def train_run(out: Path, steps: int, device: str, **options) -> tuple[float, Path, float]:
    """Train one run (eagerly unless ``compile`` is given); its steps/s (validation, checkpoints and the
    first compiled call excluded), folder and compile seconds."""
    config = fresh_config({"dataset": "binarized_mnist", "steps": steps, "eval_every": steps,
                           "checkpoint_every": steps, "log_every": steps, "device": device, "out": str(out),
                           "compile": "off", **options})
    result = train(config, progress=False)
    seconds = result["compile_seconds"]
    return steps / (result["train_seconds"] - seconds), out, seconds


def measured(row: tuple) -> tuple:
    """Print a row as soon as it is measured (to stderr), so that a run cut short keeps what it got."""
    print(" | ".join(row), file=sys.stderr, flush=True)
    return row


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gs_rows(root: Path, args: argparse.Namespace, precisions: list[str],
            data: dict) -> tuple[list, list, Path]:
    """The gs speed rows and the precision table. The batch-1000 speed rows are the precision table's
    seed-0 runs (the same configuration), so each configuration trains once."""
    def spread(values: list[float]) -> str:
        return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"

    speed, bound, gs_run = [], [], None
    for precision in precisions:
        rate, run, _ = train_run(root / f"gs-100-{precision}", args.steps, args.device, batch_size=100,
                              precision=precision, **data)
        speed.append(measured((f"gs 20x10, batch 100, {precision}", f"{rate:.1f} steps/s")))
        gs_run = gs_run or run
        if not args.compiled or precision != "fp32":
            continue
        rate, _, seconds = train_run(root / f"gs-100-{precision}-compiled", args.steps, args.device,
                                     batch_size=100, precision=precision, compile="on", **data)
        speed.append(measured((f"gs 20x10, batch 100, {precision}, compiled",
                               f"{rate:.1f} steps/s (compiling {seconds:.0f} s)")))
    batch_1000 = []
    for precision in precisions:
        bounds, rates = [], []
        for seed in range(args.seeds):
            rate, run, _ = train_run(root / f"gs-1000-{precision}-{seed}", args.steps, args.device,
                                  batch_size=1000, precision=precision, seed=seed, **data)
            if seed == 0:
                batch_1000.append(measured((f"gs 20x10, batch 1000, {precision}", f"{rate:.1f} steps/s")))
            result = evaluate_run(run, samples=args.bound_samples, split="test", limit=2000,
                                  device=args.device, progress=False, **data)
            bounds.append(result["nll"])
            rates.append(rate)
        bound.append(measured((precision, spread(bounds), spread(rates))))
    return speed + batch_1000, bound, gs_run


def other_rows(root: Path, args: argparse.Namespace, gs_run: Path, data: dict) -> list[tuple]:
    """DVAE# steps/s with PCD 1000 x 40, and the seconds of an S = 5000 eval of the batch-100 fp32 run."""
    rows = []
    for mode in ("off", "on") if args.compiled else ("off",):
        rate, _, seconds = train_run(root / f"dvae-{mode}", args.dvae_steps, args.device, model="dvaes-power",
                                     struct="1-layer-lin", chains=1000, sweeps=40, compile=mode, **data)
        what = "dvaes-power 1-layer-lin, PCD 1000 x 40, batch 100" + (", compiled" if mode == "on" else "")
        compiled = f" (compiling {seconds:.0f} s)" if mode == "on" else ""
        rows.append(measured((what, f"{rate:.1f} steps/s{compiled}")))
    sync(args.device)
    start = time.perf_counter()
    result = evaluate_run(gs_run, samples=5000, split="test", limit=args.eval_limit, device=args.device,
                          progress=False, **data)
    sync(args.device)
    rows.append(measured((f"dvae eval, S = 5000, {result['examples']} test images",
                          f"{time.perf_counter() - start:.1f} s")))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=3000, help="steps of each gs run (speed and bound)")
    parser.add_argument("--dvae-steps", type=int, default=300, help="steps of the DVAE# run")
    parser.add_argument("--precisions", default="fp32,bf16,fp16")
    parser.add_argument("--no-compiled", dest="compiled", action="store_false",
                        help="leave out the compiled rows (gs fp32 at batch 100, DVAE#)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of each precision's bound (at least 2)")
    parser.add_argument("--bound-samples", type=int, default=1000,
                        help="S of the precision table's test bound")
    parser.add_argument("--eval-limit", type=int, default=None, help="test images of the S = 5000 eval "
                        "(default: all)")
    args = parser.parse_args()
    if args.seeds < 2:
        parser.error("--seeds must be at least 2 (the table gives their spread)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("bench/gpu_speed.py: no CUDA device")
    data = {"data_dir": args.data_dir} if args.data_dir else {}
    precisions = args.precisions.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        speed, bound, gs_run = gs_rows(Path(tmp), args, precisions, data)
        speed += other_rows(Path(tmp), args, gs_run, data)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    print(f"device: {name}, torch {torch.__version__}")
    print("\n| what | speed |\n|---|---|")
    for what, value in speed:
        print(f"| {what} | {value} |")
    print(f"\n| precision | test NLL (S = {args.bound_samples}, 2,000 images; {args.seeds} seeds, "
          f"{args.steps} steps at batch 1000) | steps/s |\n|---|---|---|")
    for precision, nll, rate in bound:
        print(f"| {precision} | {nll} | {rate} |")
    by_precision = {p: {"nll": n, "steps_per_s": r} for p, n, r in bound}
    print(json.dumps({"speed": dict(speed), "precision": by_precision}))


if __name__ == "__main__":
    main()
