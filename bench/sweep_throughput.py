"""Runs per hour of ``dvae sweep`` on this machine for each split of its cores into jobs x threads.

The same grid (``--points`` seeds of the default gs model, 20x10 latents, 784-512-256, batch 100, ``--steps``
steps, then a small test bound) runs once per setting, each into a fresh folder, through the local executor;
the rounds alternate the settings so that drift on a shared machine hits all alike. Reported: wall seconds
per round and runs per hour (median over rounds), and the ratio to the best setting. This is what the
default of ``--jobs`` (one job per core, one thread each) rests on.

    python bench/sweep_throughput.py --data-dir ../shared/data --settings 1x2,2x1 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from discrete_vae.sweep import load_spec, run_sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="binarized MNIST folder (else digits, 8x8)")
    parser.add_argument("--settings", default="1x2,2x1", help="comma-separated JOBSxTHREADS")
    parser.add_argument("--points", type=int, default=4, help="grid points (seeds) per sweep")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    settings = [tuple(int(v) for v in s.split("x")) for s in args.settings.split(",")]
    base = {"latent": "20x10", "steps": args.steps, "eval_every": args.steps, "val_samples": 10}
    base.update({"dataset": "binarized_mnist", "data_dir": args.data_dir} if args.data_dir else
                {"dataset": "digits", "hidden": [512, 256]})
    spec_dict = {"name": "throughput", "base": base, "grid": {"seed": list(range(args.points))},
                 "eval": {"name": "test", "samples": 10, "limit": 500},
                 "tables": [{"rows": "seed", "metric": "test.nll"}]}
    seconds: dict[tuple[int, int], list[float]] = {s: [] for s in settings}
    cores = len(os.sched_getaffinity(0))
    data = f" --data-dir {args.data_dir}" if args.data_dir else ""
    print(f"$ python bench/sweep_throughput.py --settings {args.settings} --points {args.points} "
          f"--steps {args.steps} --rounds {args.rounds}{data}  ({cores} cores)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(yaml.safe_dump(spec_dict))
        spec = load_spec(path)
        for r in range(args.rounds):
            order = settings if r % 2 == 0 else settings[::-1]
            for jobs, threads in order:
                start = time.perf_counter()
                summary = run_sweep(spec, Path(tmp) / f"r{r}-{jobs}x{threads}", executor="local", jobs=jobs,
                                    threads=threads)
                assert summary["states"]["done"] == args.points, summary
                seconds[(jobs, threads)].append(time.perf_counter() - start)
    rates = {s: 3600 * args.points / statistics.median(v) for s, v in seconds.items()}
    best = max(rates.values())
    print("\n| jobs x threads | seconds per sweep (rounds) | runs per hour | vs best |")
    print("|---|---|---|---|")
    for (jobs, threads), rate in rates.items():
        rounds = ", ".join(f"{t:.1f}" for t in seconds[(jobs, threads)])
        print(f"| {jobs} x {threads} | {rounds} | {rate:.0f} | {rate / best:.2f}× |")


if __name__ == "__main__":
    main()
