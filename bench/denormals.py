"""Training speed with denormal floats flushed to zero (the default) against IEEE denormals, side by side.

Denormals appear as a model trains (gradients through saturated sigmoids and softmaxes), so a fresh
model shows nothing: this resumes trained run folders. Each run folder (``dvae train`` or ``dvae sop
train``) is copied, and the copy resumed for ``--steps`` more steps (no validation until the end, no
checkpoint in between) in a fresh process with ``DVAE_FLUSH_DENORMALS=1`` and ``=0``, alternating in
rounds so that machine noise hits both alike; the run folders themselves are not touched. Reported:
the median steps/s of each (the runs' own ``steps_per_s``, which leaves out validation and
checkpoints) and their ratio.

    python bench/denormals.py RUN_DIR [RUN_DIR ...] --steps 300 --rounds 3 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from discrete_vae.checkpoint import load_checkpoint


def resume(run: Path, steps: int, flush: bool, threads: int) -> float:
    """``steps_per_s`` of a copy of ``run`` resumed for ``steps`` more steps."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    sop = "arch" in config  # an SOP run's config names its network
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "run"
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("tb", "images", "*.json"))
        state_step = int(load_checkpoint(copy / "last.safetensors")["step"])
        never = str(10**9)
        command = [sys.executable, "-m", "discrete_vae.cli", *(["sop"] if sop else []), "train", "--resume",
                   str(copy), "--steps", str(state_step + steps), "--eval-every", never,
                   "--checkpoint-every", never]
        env = {**os.environ, "DVAE_FLUSH_DENORMALS": "1" if flush else "0", "OMP_NUM_THREADS": str(threads)}
        out = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
        return float(json.loads(out.strip().splitlines()[-1])["steps_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="trained run folders (with last.safetensors)")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per resume")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    for run in args.runs:
        if not (run / "last.safetensors").is_file():
            raise SystemExit(f"{run} has no last.safetensors")
    print(f"$ python bench/denormals.py {' '.join(map(str, args.runs))} --steps {args.steps} "
          f"--rounds {args.rounds} --threads {args.threads}")
    print("\n| run | flushed steps/s | IEEE steps/s | flushed / IEEE |\n|---|---|---|---|")
    for run in args.runs:
        speeds: dict[bool, list[float]] = {True: [], False: []}
        for r in range(args.rounds):
            for flush in (True, False) if r % 2 == 0 else (False, True):
                speeds[flush].append(resume(run, args.steps, flush, args.threads))
        on, off = statistics.median(speeds[True]), statistics.median(speeds[False])
        print(f"| {run} | {on:.1f} | {off:.1f} | {on / off:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
