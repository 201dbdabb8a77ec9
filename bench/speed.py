"""Training speed, side by side in one run: the seeds' loop as published vs ``dvae train``.

Both train the same model (784-512-256-(30x10) encoder, mirrored decoder, batch 100, Adam 1e-3)
on the same in-memory binarized MNIST, in the same process, alternating rounds so that machine
noise hits both alike. Reported: steps/s of each round, medians, and their ratio.

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
from seed_loop import run_seed_loop  # noqa: E402

from discrete_vae.config import TrainConfig  # noqa: E402
from discrete_vae.data import load_dataset  # noqa: E402
from discrete_vae.train import train  # noqa: E402


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
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="override dvae's --compile default")
    args = parser.parse_args()
    extra = {} if args.compile is None else {"compile": args.compile}
    train_x = load_dataset("binarized_mnist", args.data_dir).train
    seed, ours = [], []
    for _ in range(args.rounds):
        seed.append(run_seed_loop(train_x, steps=args.steps)["steps_per_s"])
        ours.append(run_dvae(args.steps, args.data_dir, extra)["steps_per_s"])
        print(f"round: seed loop {seed[-1]:.1f} steps/s, dvae train {ours[-1]:.1f} steps/s",
              file=sys.stderr)
    result = {
        "benchmark": "train-speed", "threads": torch.get_num_threads(), "steps": args.steps,
        "seed_loop_steps_per_s": seed, "dvae_steps_per_s": ours,
        "seed_median": statistics.median(seed), "dvae_median": statistics.median(ours),
        "ratio": statistics.median(ours) / statistics.median(seed),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
