"""Training steps/s of a DVAE# model for each RBM-sampler setting, side by side.

On a CPU the RBM sampler, not the network, bounds DVAE/DVAE++/DVAE# training speed: each step draws
``--chains`` negative samples after ``--sweeps`` block-Gibbs sweeps (PCD) or through ``--sweeps`` annealing
temperatures (PA). This trains the same model (``--model``, ``--struct``, binarized MNIST) for ``--steps``
steps per setting, in interleaved rounds, and reports the median steps/s of each (validation and checkpoints
excluded: ``steps_per_s`` of :func:`discrete_vae.train.train`), with one line of JSON per setting.

    OMP_NUM_THREADS=1 python bench/dvae_speed.py --data-dir ../shared/data --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

import torch

from discrete_vae.config import TrainConfig, with_struct
from discrete_vae.train import train

SETTINGS = [("pcd", 1000, 40), ("pa", 1000, 40), ("pcd", 1000, 10), ("pcd", 100, 40), ("pcd", 100, 10),
            ("pa", 100, 10)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--dataset", default="binarized_mnist")
    parser.add_argument("--model", default="dvaes-power")
    parser.add_argument("--struct", default="1-layer-lin")
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: leave torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    rates: dict[tuple[str, int, int], list[float]] = {s: [] for s in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for sampler, chains, sweeps in SETTINGS:
                values = with_struct({
                    "model": args.model, "struct": args.struct, "dataset": args.dataset,
                    "data_dir": args.data_dir, "samples": args.k, "sampler": sampler, "chains": chains,
                    "sweeps": sweeps, "steps": args.steps, "eval_every": 10**9, "checkpoint_every": 10**9,
                    "val_samples": 1, "log_z_betas": 2, "log_z_samples": 1, "device": "cpu",
                    "out": os.path.join(tmp, f"{sampler}-{chains}-{sweeps}-{r}"),
                })
                result = train(TrainConfig.from_dict(values), progress=False)
                rates[(sampler, chains, sweeps)].append(result["steps_per_s"])
    for (sampler, chains, sweeps), v in rates.items():
        print(json.dumps({"model": args.model, "struct": args.struct, "k": args.k, "sampler": sampler,
                          "chains": chains, "sweeps": sweeps, "steps_per_s": round(statistics.median(v), 2),
                          "rounds": v, "threads": torch.get_num_threads(),
                          "load": round(os.getloadavg()[0], 2)}), flush=True)


if __name__ == "__main__":
    main()
