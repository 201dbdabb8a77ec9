"""Training step time of ``--precision bf16`` against fp32, side by side in one run.

The default gs model (20x10 latents, 784-512-256 MLPs, Adam) in both precisions from the same seed, one
training step (forward, backward, fused Adam) at each batch size, interleaved in rounds so that machine
noise hits both alike. With one thread (``--threads 1``) the time is the thread's CPU time, which other
processes on a shared machine inflate less than the wall clock; with more, the wall clock. Reported: the
median ms per step of each and the ratio fp32 / bf16 (above 1: bf16 is faster).

    python bench/precision_speed.py --threads 1 --batch-sizes 100,1000
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from discrete_vae.config import TrainConfig
from discrete_vae.recipe import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="100,1000")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per precision and round")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 and args.device == "cpu" else time.perf_counter
    print(f"$ python bench/precision_speed.py --threads {args.threads} --batch-sizes {args.batch_sizes} "
          f"--rounds {args.rounds} --device {args.device}")
    print("\n| batch | fp32 ms/step | bf16 ms/step | fp32 / bf16 |\n|---|---|---|---|")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        runs = {}
        for precision in ("fp32", "bf16"):
            torch.manual_seed(0)
            model = build_model(TrainConfig.from_dict({"latent": "20x10", "precision": precision}), 784)
            model.to(args.device).train()
            runs[precision] = (model, torch.optim.Adam(model.parameters(), lr=1e-3, fused=True))
        x = (torch.rand(batch, 784) < 0.15).float().to(args.device)

        def step(precision: str, runs: dict = runs, x: torch.Tensor = x) -> None:
            model, optimizer = runs[precision]
            loss = model(x, 1.0).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        for precision in runs:
            for _ in range(3):
                step(precision)
        times: dict[str, list[float]] = {p: [] for p in runs}
        for r in range(args.rounds):
            for precision in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
                if args.device != "cpu":
                    torch.cuda.synchronize()
                start = clock()
                for _ in range(args.steps):
                    step(precision)
                if args.device != "cpu":
                    torch.cuda.synchronize()
                times[precision].append((clock() - start) / args.steps * 1e3)
        fp32, bf16 = (statistics.median(times[p]) for p in ("fp32", "bf16"))
        print(f"| {batch} | {fp32:.2f} | {bf16:.2f} | {fp32 / bf16:.2f}× |")


if __name__ == "__main__":
    main()
