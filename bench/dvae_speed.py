"""Training steps/s of DVAE# models for each RBM-sampler setting, side by side.

On a CPU the RBM sampler, not the network, bounds DVAE/DVAE++/DVAE# training speed: each step draws
``chains`` negative samples after ``sweeps`` block-Gibbs sweeps (PCD) or through ``sweeps`` annealing
temperatures (PA). This trains each model (``--model``, comma-separated), with each ``--k`` and each sampler
setting (``--settings``, by default six), for ``--steps`` steps, in interleaved rounds, and reports the median
steps/s of each combination (validation and checkpoints excluded: ``steps_per_s`` of
:func:`discrete_vae.train.train`), with one line of JSON per combination.

    OMP_NUM_THREADS=1 python bench/dvae_speed.py --data-dir ../shared/data --threads 1
    OMP_NUM_THREADS=1 python bench/dvae_speed.py --data-dir ../shared/data --threads 1 \
        --model dvaes-exp,dvaes-power --k 1,5 --settings pcd:100x10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

import torch

from discrete_vae.presets import fresh_config
from discrete_vae.train import train

SETTINGS = "pcd:1000x40,pa:1000x40,pcd:1000x10,pcd:100x40,pcd:100x10,pa:100x10"


def parse_settings(text: str) -> list[tuple[str, int, int]]:
    """``"pcd:100x10,pa:1000x40"`` -> ``[("pcd", 100, 10), ("pa", 1000, 40)]``."""
    out = []
    for item in text.split(","):
        sampler, _, size = item.partition(":")
        chains, _, sweeps = size.partition("x")
        out.append((sampler, int(chains), int(sweeps)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--dataset", default="binarized_mnist")
    parser.add_argument("--model", default="dvaes-power", help="one model or several, comma-separated")
    parser.add_argument("--struct", default="1-layer-lin")
    parser.add_argument("--k", default="1", help="one k or several, comma-separated")
    parser.add_argument("--settings", default=SETTINGS, help="SAMPLER:CHAINSxSWEEPS, comma-separated")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: leave torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    combos = [(model, int(k), *setting) for model in args.model.split(",") for k in args.k.split(",")
              for setting in parse_settings(args.settings)]
    rates: dict[tuple[str, int, str, int, int], list[float]] = {c: [] for c in combos}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for model, k, sampler, chains, sweeps in combos:
                config = fresh_config({
                    "model": model, "struct": args.struct, "dataset": args.dataset,
                    "data_dir": args.data_dir, "k": k, "sampler": sampler, "chains": chains,
                    "sweeps": sweeps, "steps": args.steps, "eval_every": 10**9, "checkpoint_every": 10**9,
                    "val_samples": 1, "log_z_betas": 2, "log_z_samples": 1, "device": "cpu",
                    "out": os.path.join(tmp, f"{model}-k{k}-{sampler}-{chains}-{sweeps}-{r}"),
                })
                result = train(config, progress=False)
                rates[(model, k, sampler, chains, sweeps)].append(result["steps_per_s"])
    for (model, k, sampler, chains, sweeps), v in rates.items():
        print(json.dumps({"model": model, "struct": args.struct, "k": k, "sampler": sampler,
                          "chains": chains, "sweeps": sweeps, "steps_per_s": round(statistics.median(v), 2),
                          "rounds": v, "threads": torch.get_num_threads(),
                          "load": round(os.getloadavg()[0], 2)}), flush=True)


if __name__ == "__main__":
    main()
