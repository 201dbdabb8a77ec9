"""Training step time of ``--precision bf16`` (and fp16) against fp32, side by side in one run.

The default gs model (20x10 latents, 784-512-256 MLPs, Adam) in each precision from the same seed, one
training step (forward, backward, fused Adam; fp16 with its loss scaler) at each batch size, interleaved in
rounds so that machine noise hits all alike. With one thread (``--threads 1``) the time is the thread's
CPU time, which other processes on a shared machine inflate less than the wall clock; with more, the wall
clock. Reported: the median ms per step of each and the ratio fp32 / other (above 1: faster than fp32).
fp16 runs here on the CPU only to show why ``dvae train`` keeps it for CUDA.

    python bench/precision_speed.py --threads 1 --batch-sizes 100,1000 --precisions fp32,bf16,fp16
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from discrete_vae.config import TrainConfig
from discrete_vae.recipe import build_model
from discrete_vae.train import cpu_has_fast_bf16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="100,1000")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per precision and round")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="fp32,bf16", help="fp32 first: the ratios are against it")
    args = parser.parse_args()
    names = args.precisions.split(",")
    if names[0] != "fp32":
        raise SystemExit("--precisions must start with fp32")
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 and args.device == "cpu" else time.perf_counter
    print(f"$ python bench/precision_speed.py --threads {args.threads} --batch-sizes {args.batch_sizes} "
          f"--rounds {args.rounds} --device {args.device} --precisions {args.precisions}")
    if args.device == "cpu":  # bf16 is fast only where oneDNN has kernels for it (AVX-512, ARM BF16)
        print(f"CPU: {torch.backends.cpu.get_cpu_capability()}, oneDNN bfloat16 kernels: "
              f"{'yes' if cpu_has_fast_bf16() else 'no (a slow path)'}")
    head = ["batch", *(f"{p} ms/step" for p in names), *(f"fp32 / {p}" for p in names[1:])]
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        runs = {}
        for precision in names:
            torch.manual_seed(0)
            model = build_model(TrainConfig.from_dict({"latent": "20x10", "precision": precision}), 784)
            model.to(args.device).train()
            scaler = torch.amp.GradScaler(args.device, enabled=precision == "fp16")
            runs[precision] = (model, torch.optim.Adam(model.parameters(), lr=1e-3, fused=True), scaler)
        x = (torch.rand(batch, 784) < 0.15).float().to(args.device)

        def step(precision: str, runs: dict = runs, x: torch.Tensor = x) -> None:
            model, optimizer, scaler = runs[precision]
            loss = model(x, 1.0).loss
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

        for precision in runs:
            for _ in range(3):
                step(precision)
        times: dict[str, list[float]] = {p: [] for p in runs}
        for r in range(args.rounds):
            for precision in names[r % len(names):] + names[:r % len(names)]:
                if args.device != "cpu":
                    torch.cuda.synchronize()
                start = clock()
                for _ in range(args.steps):
                    step(precision)
                if args.device != "cpu":
                    torch.cuda.synchronize()
                times[precision].append((clock() - start) / args.steps * 1e3)
        ms = {p: statistics.median(times[p]) for p in names}
        cells = [f"{ms[p]:.2f}" for p in names] + [f"{ms['fp32'] / ms[p]:.2f}×" for p in names[1:]]
        print(f"| {batch} | " + " | ".join(cells) + " |")

if __name__ == "__main__":
    main()
