"""Training speed, side by side in one run: the seeds' loop as published vs ``dvae train``.

Both train the same model (784-512-256-(30x10) encoder, mirrored decoder, batch 100, Adam 1e-3)
on the same in-memory binarized MNIST, in the same process, alternating rounds so that machine
noise hits both alike. The seed loop is timed with its published per-example data path (``pil``,
what ``datasets.MNIST(transform=ToTensor())`` does) and with the cheapest one (``tensor``).
Reported: steps/s of each round, medians, and the ratios.

    python bench/speed.py --data-dir ../shared/data --steps 1000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from discrete_vae.config import TrainConfig  # noqa: E402
from discrete_vae.data import load_dataset  # noqa: E402
from discrete_vae.train import train  # noqa: E402
from seed_loop import run_seed_loop  # noqa: E402


def run_dvae(steps: int, data_dir: str | None, extra: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(
            latent="30x10", steps=steps, batch_size=100, lr=1e-3, data_dir=data_dir,
            out=str(Path(tmp) / "run"), eval_every=10**9, checkpoint_every=10**9,
            log_every=100, device="cpu", **extra,
        )
        result = train(config, progress=False)
    return {"steps": steps, "steps_per_s": result["steps_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    train_x = load_dataset("binarized_mnist", args.data_dir).train
    rates: dict[str, list[float]] = {"seed_pil": [], "seed_tensor": [], "dvae": []}
    for _ in range(args.rounds):
        for path in ("pil", "tensor"):
            rate = run_seed_loop(train_x, steps=args.steps, data_path=path)["steps_per_s"]
            rates[f"seed_{path}"].append(rate)
        rates["dvae"].append(run_dvae(args.steps, args.data_dir, {})["steps_per_s"])
        print("round: " + ", ".join(f"{k} {v[-1]:.1f} steps/s" for k, v in rates.items()),
              file=sys.stderr)
    median = {k: statistics.median(v) for k, v in rates.items()}
    result = {
        "benchmark": "train-speed", "threads": torch.get_num_threads(), "steps": args.steps,
        "steps_per_s": rates, "median": median,
        "ratio_vs_seed_pil": median["dvae"] / median["seed_pil"],
        "ratio_vs_seed_tensor": median["dvae"] / median["seed_tensor"],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
