"""Speed on a CUDA device, one table: training steps/s of the default gs model (batch 100 and 1000, fp32,
bf16 and fp16), DVAE# (dvaes-power, 1-layer-lin) with the original's PCD 1000 chains x 40 sweeps, and the
seconds of ``dvae eval`` with S = 5000 on the whole test set. Every run is a real ``dvae train`` /
``dvae eval`` on binarized MNIST (``--data-dir``); sized to finish in about two minutes on a current GPU.

    python bench/gpu_speed.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from discrete_vae.config import TrainConfig
from discrete_vae.evaluate import evaluate_run
from discrete_vae.train import train


def steps_per_s(out: Path, steps: int, **options) -> tuple[float, Path]:
    config = TrainConfig.from_dict({"dataset": "binarized_mnist", "steps": steps, "eval_every": steps,
                                    "checkpoint_every": steps, "log_every": steps, "device": "cuda",
                                    "out": str(out), **options})
    result = train(config, progress=False)
    return float(result["steps_per_s"]), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps", type=int, default=3000, help="steps of each gs run")
    parser.add_argument("--dvae-steps", type=int, default=300, help="steps of the DVAE# run")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu_speed.py: no CUDA device")
    data = {"data_dir": args.data_dir} if args.data_dir else {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        gs_run = None
        for batch in (100, 1000):
            for precision in ("fp32", "bf16", "fp16"):
                rate, run = steps_per_s(root / f"gs-{batch}-{precision}", args.steps, batch_size=batch,
                                        precision=precision, **data)
                rows.append((f"gs 20x10, batch {batch}, {precision}", f"{rate:.1f} steps/s"))
                gs_run = gs_run or run
        rate, _ = steps_per_s(root / "dvae", args.dvae_steps, model="dvaes-power", struct="1-layer-lin",
                              chains=1000, sweeps=40, **data)
        rows.append(("dvaes-power 1-layer-lin, PCD 1000 x 40, batch 100", f"{rate:.1f} steps/s"))
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = evaluate_run(gs_run, samples=5000, split="test", device="cuda", progress=False, **data)
        seconds = time.perf_counter() - start
        rows.append((f"dvae eval, S = 5000, {result['examples']} test images", f"{seconds:.1f} s"))
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("\n| what | speed |\n|---|---|")
    for what, speed in rows:
        print(f"| {what} | {speed} |")
    print(json.dumps(dict(rows)))


if __name__ == "__main__":
    main()
