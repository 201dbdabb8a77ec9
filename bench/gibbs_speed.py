"""Block-Gibbs speed of the RBM sampler, and population annealing's log Z error against its cost.

Part 1 (one JSON line): sweeps/s for ``--chains`` chains of an ``--n-a`` + ``--n-b`` RBM, for the naive sweep
``z_b = bernoulli(sigmoid(z_a W + b_b)); z_a = bernoulli(sigmoid(z_b W^T + b_a))``, for ours
(:class:`discrete_vae.priors.samplers.GibbsKernel`), and two random-number caps: drawing the float32 uniforms
a sweep needs (``rng_uniform_cap``) and drawing the 64-bit integers ours uses (``rng_ours_cap``). Methods are
timed in interleaved rounds; the medians are reported, with the threads and the load average (a shared machine
is contended when the load exceeds its core count).

Part 2 (a table): population annealing on a 20 + 10 RBM whose exact log Z is known by enumeration: the
estimate, its standard error and the error for an increasing number of temperatures.

    OMP_NUM_THREADS=1 python bench/gibbs_speed.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch

from discrete_vae.priors import RBMPrior
from discrete_vae.priors.samplers import GibbsKernel, PASampler


def naive_sweeps(rbm: RBMPrior, z_a: torch.Tensor, k: int) -> torch.Tensor:
    """The reference: ``k`` sweeps with ``torch.bernoulli(torch.sigmoid(v @ W + b))`` per half."""
    w, b_a, b_b = rbm.w.detach(), rbm.b_a.detach(), rbm.b_b.detach()
    for _ in range(k):
        z_b = torch.bernoulli(torch.sigmoid(z_a @ w + b_b))
        z_a = torch.bernoulli(torch.sigmoid(z_b @ w.t() + b_a))
    return z_a


def rate(fn: Callable[[int], object], k: int) -> float:
    """Calls per second of one step, timing ``fn(k)``."""
    start = time.perf_counter()
    fn(k)
    return k / (time.perf_counter() - start)


def speed(chains: int, n_a: int, n_b: int, sweeps: int, rounds: int) -> dict[str, float]:
    """Median sweeps/s of naive, ours and the two RNG caps over interleaved rounds."""
    torch.manual_seed(0)
    rbm = RBMPrior(n_a + n_b, n_a=n_a, init_scale=0.1)
    z_a = torch.bernoulli(torch.full((chains, n_a), 0.5))
    z_b = torch.bernoulli(torch.full((chains, n_b), 0.5))
    kernel = GibbsKernel(chains, n_a, n_b, like=z_a)
    uniforms = torch.empty(chains, n_a + n_b)
    words = torch.empty(chains * (n_a + n_b) // 2, dtype=torch.int64)
    methods: dict[str, Callable[[int], object]] = {
        "naive": lambda k: naive_sweeps(rbm, z_a.clone(), k),
        "ours": lambda k: kernel.sweeps(z_a, z_b, rbm, k),
        "rng_uniform_cap": lambda k: [uniforms.uniform_() for _ in range(k)],
        "rng_ours_cap": lambda k: [words.random_(-(2**63), None) for _ in range(k)],
    }
    for fn in methods.values():  # warm-up
        fn(5)
    runs: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            runs[name].append(rate(fn, sweeps))
    return {f"{name}_sweeps_per_s": round(statistics.median(v), 1) for name, v in runs.items()}


def pa_table(n_betas_list: list[int], population: int, runs: int) -> list[dict[str, float]]:
    """PA log Z on a 20 + 10 RBM (couplings N(0, 0.3^2), biases N(0, 0.5^2)) against the exact value."""
    torch.manual_seed(1)
    rbm = RBMPrior(30, n_a=20, init_scale=0.3)
    with torch.no_grad():
        rbm.b_a.normal_(0.0, 0.5)
        rbm.b_b.normal_(0.0, 0.5)
    exact = rbm.log_partition_exact().item()
    rows = []
    for n_betas in n_betas_list:
        sampler = PASampler(20, 10, population=population, runs=runs, n_betas=n_betas)
        start = time.perf_counter()
        est = sampler.log_partition(rbm)
        seconds = time.perf_counter() - start
        rows.append({"n_betas": n_betas, "sweeps": n_betas, "log_z": round(est.log_z, 4),
                     "stderr": round(est.stderr, 4), "error": round(est.log_z - exact, 4),
                     "error_in_se": round((est.log_z - exact) / est.stderr, 2), "seconds": round(seconds, 3),
                     "exact": round(exact, 4)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: leave torch's default)")
    parser.add_argument("--chains", type=int, default=1000)
    parser.add_argument("--n-a", type=int, default=100)
    parser.add_argument("--n-b", type=int, default=100)
    parser.add_argument("--sweeps", type=int, default=40, help="sweeps per timed call")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--pa-betas", type=int, nargs="*", default=[10, 30, 100, 300, 1000])
    parser.add_argument("--pa-population", type=int, default=250)
    parser.add_argument("--pa-runs", type=int, default=4)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    result = speed(args.chains, args.n_a, args.n_b, args.sweeps, args.rounds)
    result["ratio_ours_over_naive"] = round(result["ours_sweeps_per_s"] / result["naive_sweeps_per_s"], 2)
    result.update(threads=torch.get_num_threads(), chains=args.chains, n_a=args.n_a, n_b=args.n_b,
                  cores=os.cpu_count(), load_before=round(load_before, 2),
                  load_after=round(os.getloadavg()[0], 2), torch=torch.__version__)
    print(json.dumps(result), flush=True)
    if args.pa_betas:
        print("n_betas  log_z     stderr  error    error/se  seconds   (exact log Z, population x runs = "
              f"{args.pa_population} x {args.pa_runs})")
        for row in pa_table(args.pa_betas, args.pa_population, args.pa_runs):
            print(f"{row['n_betas']:7d}  {row['log_z']:8.4f}  {row['stderr']:.4f}  {row['error']:+.4f}  "
                  f"{row['error_in_se']:+8.2f}  {row['seconds']:7.3f}   ({row['exact']})")


if __name__ == "__main__":
    main()
