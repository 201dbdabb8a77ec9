"""Training step time of ``dvae sop train`` per model and m, side by side in one run.

The 392V-240H-240H-392V network (``double_linear``) of each ``--model`` from the same seed, one training
step as ``dvae sop train`` takes it (the m-sample objective over a batch of 100 binary images of 784
pixels, backward, AdamW; denormal floats flushed), interleaved in rounds so that machine noise hits all
alike. With one thread (``--threads 1``) the time is the thread's CPU time, which other processes on a
shared machine inflate less than the wall clock; with more, the wall clock. Reported: the median ms per
step, steps/s, and the ratio to the first model at the same m.

    python bench/sop_speed.py --threads 1 --models gs,igr-i,igr-planar --k 1,50
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from discrete_vae.denormals import flush_denormals
from discrete_vae.sop import SOPConfig, build_net, multisample_objective, split_halves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gs,igr-i,igr-planar", help="the first is the ratios' base")
    parser.add_argument("--k", default="1,50", help="m, relaxed samples per example")
    parser.add_argument("--arch", default="double_linear")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="about how long each timed block runs")
    args = parser.parse_args()
    models = args.models.split(",")
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    print(f"$ python bench/sop_speed.py --threads {args.threads} --models {args.models} --k {args.k} "
          f"--arch {args.arch} --rounds {args.rounds} --seconds {args.seconds}")
    head = ["m", *(f"{m} ms/step" for m in models), *(f"{m} steps/s" for m in models),
            *(f"{m} / {models[0]}" for m in models[1:])]
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    x = (torch.rand(100, 784, generator=torch.Generator().manual_seed(0)) < 0.15).float()
    upper, lower = split_halves(x, (28, 28))
    with flush_denormals():
        for k in (int(v) for v in args.k.split(",")):
            runs = {}
            for model in models:
                torch.manual_seed(0)
                net = build_net(SOPConfig.of(model=model, arch=args.arch, k=k), (28, 28)).train()
                runs[model] = (net, torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-3))

            def step(model: str, k: int = k, runs: dict = runs) -> None:
                net, optimizer = runs[model]
                loss = -multisample_objective(net.log_likelihood(upper, lower, k, 1.0, hard=False)).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            steps = {}
            for model in models:  # warm up, and size each timed block to about --seconds
                step(model)
                start = clock()
                step(model)
                steps[model] = max(1, round(args.seconds / max(clock() - start, 1e-6)))
            times: dict[str, list[float]] = {m: [] for m in models}
            for r in range(args.rounds):
                for model in models[r % len(models):] + models[:r % len(models)]:
                    start = clock()
                    for _ in range(steps[model]):
                        step(model)
                    times[model].append((clock() - start) / steps[model] * 1e3)
            ms = {m: statistics.median(times[m]) for m in models}
            cells = ([f"{ms[m]:.2f}" for m in models] + [f"{1e3 / ms[m]:.1f}" for m in models]
                     + [f"{ms[m] / ms[models[0]]:.2f}×" for m in models[1:]])
            print(f"| {k} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
