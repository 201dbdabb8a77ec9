"""Compiled against eager training steps of any ``dvae train`` or ``dvae sop train`` configuration, side by
side in one process.

Each round trains the configuration eagerly (``--compile off``) and compiled (``--compile on``), each for
``warmup`` and for ``warmup + steps`` steps; the difference of the two runs' training seconds (less each
run's first compiled call) is the time of ``steps`` steps after warm-up, with start-up, compiling and
validation excluded. The first compiled run compiles into an empty Inductor cache (cold), the later ones
read it (warm). Reported: steps/s per round, medians, compiled / eager (the median of the rounds' ratios:
each round's pair ran side by side), the cold and warm compile seconds, and the break-even run length
(compile seconds over the seconds a compiled step saves).

    python bench/compile_speed.py --data-dir ../shared/data --set latent=20x10
    python bench/compile_speed.py --data-dir ../shared/data --command sop --set k=50 --steps 200 --warmup 50
    python bench/compile_speed.py --data-dir ../shared/data --set preset=dong2020-nonlinear \\
        --set prior=uniform --set kl=sampled --set estimator=rloo --set k=2 --set batch_size=100
    python bench/compile_speed.py --data-dir ../shared/data --set model=dvaes-power \\
        --set struct=1-layer-lin --set chains=100 --set sweeps=10
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

CACHE = tempfile.mkdtemp(prefix="dvae-bench-inductor-")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = CACHE  # before torch: the first compiled run starts cold

import torch  # noqa: E402
import yaml  # noqa: E402

from discrete_vae import sop  # noqa: E402
from discrete_vae.presets import fresh_config  # noqa: E402
from discrete_vae.train import train  # noqa: E402


def run(command: str, options: dict, steps: int, compile_mode: str, data_dir: str | None) -> dict:
    """One run of ``steps`` steps in a temporary folder: its result (train_seconds, compile_seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        values = {**options, "steps": steps, "eval_every": 10**9, "checkpoint_every": 10**9,
                  "compile": compile_mode, "out": str(Path(tmp) / "run"), "device": "cpu",
                  "data_dir": data_dir}
        torch._dynamo.reset()  # a fresh compile per run (from the on-disk cache after the first)
        if command == "sop":
            return sop.train(sop.SOPConfig.from_dict({"test_samples": 1, "val_samples": 1, **values}))
        preset = values.pop("preset", None)  # --set preset=NAME, as dvae train --preset NAME
        return train(fresh_config({"val_samples": 1, **values}, preset=preset), progress=False)


def rate(command: str, options: dict, steps: int, warmup: int, mode: str,
         data_dir: str | None) -> tuple[float, float]:
    """(steps/s after ``warmup`` steps, the compile seconds of the first of the two runs)."""
    short, long = (run(command, options, n, mode, data_dir) for n in (warmup, warmup + steps))
    seconds = ((long["train_seconds"] - long["compile_seconds"])
               - (short["train_seconds"] - short["compile_seconds"]))
    return steps / seconds, short["compile_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--command", choices=("train", "sop"), default="train")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the run (YAML value), e.g. latent=20x10")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps", type=int, default=1000, help="timed steps per run and round")
    parser.add_argument("--warmup", type=int, default=300, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    options = {}
    for item in args.set:
        key, _, value = item.partition("=")
        options[key.replace("-", "_")] = yaml.safe_load(value)
    rates: dict[str, list[float]] = {"off": [], "on": []}
    compile_s: list[float] = []
    compiled = True
    try:
        for _ in range(args.rounds):
            for mode in rates:
                steps_per_s, seconds = rate(args.command, options, args.steps, args.warmup, mode,
                                            args.data_dir)
                rates[mode].append(steps_per_s)
                if mode == "on":
                    compile_s.append(seconds)
                    compiled = compiled and seconds > 0
            print(f"round: eager {rates['off'][-1]:.1f} steps/s, compiled {rates['on'][-1]:.1f} steps/s, "
                  f"compile {compile_s[-1]:.1f} s", file=sys.stderr)
    finally:
        shutil.rmtree(CACHE, ignore_errors=True)
    eager, fast = statistics.median(rates["off"]), statistics.median(rates["on"])
    paired = statistics.median(on / off for on, off in zip(rates["on"], rates["off"], strict=True))
    saved = (1 - 1 / paired) / eager  # seconds a compiled step saves
    cold, warm = compile_s[0], statistics.median(compile_s[1:]) if len(compile_s) > 1 else None
    print(json.dumps({
        "benchmark": "compile-speed", "command": args.command, "options": options,
        "threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "steps": args.steps, "warmup": args.warmup, "steps_per_s": rates,
        "median": {"eager": eager, "compiled": fast}, "compiled_vs_eager": paired,
        "compiled": compiled, "compile_seconds": {"cold": cold, "warm": warm},
        "break_even_steps": {k: (s / saved if saved > 0 and s is not None else None)
                             for k, s in (("cold", cold), ("warm", warm))},
    }))


if __name__ == "__main__":
    main()
