"""Training speed, side by side in one run: the seeds' loop as published vs ``dvae train``, eager and
compiled.

All train the same model (784-512-256-(30x10) encoder, mirrored decoder, batch 100, Adam 1e-3) on the
same in-memory binarized MNIST, in the same process, alternating rounds so that machine noise hits all
alike. The seed loop is timed with its published per-example data path (``pil``, what
``datasets.MNIST(transform=ToTensor())`` does) and with the cheapest one (``tensor``). Steps are counted
after ``--warmup`` steps: the seed loop starts its clock there; ``dvae train`` runs ``warmup`` and
``warmup + steps`` steps and the difference of their training seconds (less each run's first compiled
call) is the time of ``steps`` steps, so start-up, compiling and warm-up are all excluded. The compile
times are reported beside it: the first compiled round compiles into an empty Inductor cache (cold),
later rounds read it (warm).
Reported: steps/s of each round, medians, the ratios, compile seconds, and the break-even run length
(compile seconds over the seconds a compiled step saves).

    python bench/speed.py --data-dir ../shared/data --steps 1000 --warmup 300 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402

from compile_speed import CACHE, rate  # noqa: E402  (before discrete_vae: Inductor gets an empty cache)
from discrete_vae.data import load_dataset  # noqa: E402
from seed_loop import run_seed_loop  # noqa: E402

MODEL = {"latent": "30x10", "batch_size": 100, "lr": 1e-3}  # the seed loop's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps", type=int, default=1000, help="timed steps per loop and round")
    parser.add_argument("--warmup", type=int, default=300, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", default="off,on", help="dvae train's --compile modes to time")
    args = parser.parse_args()
    modes = args.compile.split(",")
    train_x = load_dataset("binarized_mnist", args.data_dir).train
    rates: dict[str, list[float]] = {"seed_pil": [], "seed_tensor": [], **{f"dvae_{m}": [] for m in modes}}
    compile_s: dict[str, list[float]] = {m: [] for m in modes if m != "off"}
    try:
        for _ in range(args.rounds):
            for path in ("pil", "tensor"):
                seed = run_seed_loop(train_x, steps=args.steps, data_path=path, warmup=args.warmup)
                rates[f"seed_{path}"].append(seed["steps_per_s"])
            for mode in modes:
                steps_per_s, seconds = rate("train", MODEL, args.steps, args.warmup, mode, args.data_dir)
                rates[f"dvae_{mode}"].append(steps_per_s)
                if mode != "off":
                    compile_s[mode].append(seconds)
            print("round: " + ", ".join(f"{k} {v[-1]:.1f} steps/s" for k, v in rates.items())
                  + "".join(f", compile ({m}) {v[-1]:.1f} s" for m, v in compile_s.items()), file=sys.stderr)
    finally:
        shutil.rmtree(CACHE, ignore_errors=True)
    median = {k: statistics.median(v) for k, v in rates.items()}
    result = {
        "benchmark": "train-speed", "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "steps": args.steps,
        "warmup": args.warmup, "steps_per_s": rates, "median": median,
        **{f"ratio_{m}_vs_seed_pil": median[f"dvae_{m}"] / median["seed_pil"] for m in modes},
        **{f"ratio_{m}_vs_seed_tensor": median[f"dvae_{m}"] / median["seed_tensor"] for m in modes},
        "compile_seconds": {m: {"cold": v[0], "warm": statistics.median(v[1:]) if len(v) > 1 else None}
                            for m, v in compile_s.items()},
    }
    if "off" in modes and "on" in modes:
        pairs = zip(rates["dvae_on"], rates["dvae_off"], strict=True)
        paired = statistics.median(on / off for on, off in pairs)
        saved = (1 - 1 / paired) / median["dvae_off"]  # seconds a compiled step saves
        result["compiled_vs_eager"] = paired  # the median of the rounds' ratios
        result["break_even_steps"] = {k: (s / saved if saved > 0 and s is not None else None)
                                      for k, s in result["compile_seconds"]["on"].items()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
