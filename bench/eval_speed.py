"""Speed of ``dvae eval``: time and FLOP/s of the importance-weighted bound vs the machine's matmul.

The decoder pass over S hard samples per example dominates; its FLOPs are counted exactly from the
decoder's Linear layers (2 * in * out per row) plus the encoder once per example. The machine's
ceiling is a square fp32 matmul measured in the same run.

    python bench/eval_speed.py RUN_DIR --samples 5000 --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from discrete_vae.data import load_dataset  # noqa: E402
from discrete_vae.evaluate import evaluate  # noqa: E402
from discrete_vae.recipe import model_from_run, temperature_schedule  # noqa: E402
from matmul_flops import measure_matmul_flops  # noqa: E402


def linear_flops(net: nn.Module) -> int:
    """FLOPs of one row through every Linear layer of ``net`` (multiply-adds count as 2)."""
    return sum(2 * m.in_features * m.out_features for m in net.modules() if isinstance(m, nn.Linear))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="first N examples only")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    peak = measure_matmul_flops()
    model, config, state = model_from_run(args.run_dir)
    x = load_dataset(config.run.dataset, args.data_dir or config.run.data_dir).split(args.split)
    x = x[: args.limit]
    tau = temperature_schedule(config)(int(state["step"]))
    start = time.perf_counter()
    metrics = evaluate(model, x, samples=args.samples, tau=tau, seed=0)
    seconds = time.perf_counter() - start
    n = x.shape[0]
    flops = n * args.samples * linear_flops(model.decoder) + 2 * n * linear_flops(model.encoder)
    flops += n * linear_flops(model.decoder)  # the relaxed objective's pass
    result = {
        "benchmark": "eval-speed", "examples": n, "samples": args.samples, "seconds": seconds,
        "nll": metrics["nll"], "neg_elbo": metrics["neg_elbo"],
        "neg_relaxed_objective": metrics["neg_relaxed_objective"],
        "flops": flops, "flop_per_s": flops / seconds,
        "matmul_flop_per_s": peak, "fraction_of_matmul": flops / seconds / peak,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
