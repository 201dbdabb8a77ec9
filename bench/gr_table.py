"""Markdown table of the runs of ``bench/gumbel_rao_table.sh`` beside Paulus et al. (2021), Table 2.

Cells: our test NLL bound (IW, S and the number of test images scored in the header), ± its standard
error over those images, then the paper's cell. A run still training shows its step and last validation
bound (S = 10, a looser bound on another split: not comparable). Below the table: steps/s of each run's
first 500 steps (the probe).

    python bench/gr_table.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = {"bin": "binary, B = 200", "cat8": "8-ary, B = 200"}
ROWS = ["gs", "st", "st-gs", "gumbel-rao", "reinmax", "rloo", "vimco", "disarm", "relax"]
# Paulus, Maddison & Krause (2021), Table 2, batch size B = 200: best test bound (S = 5000) of 20
# random-search runs per estimator, selected on validation.
PUBLISHED = {
    "gs": {"bin": "96.4", "cat8": "92.3"},
    "st": {"bin": "103.1", "cat8": "105.1"},
    "st-gs": {"bin": "97.1", "cat8": "92.8"},
    "gumbel-rao": {"bin": "MC10 97.4, MC100 96.8, MC1000 97.0", "cat8": "MC10 93.1, MC100 92.2, MC1000 92.5"},
}


def last_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text().strip().splitlines()[-1])
    except (OSError, IndexError, ValueError):
        return None


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except OSError:
        return []


def progress(run: Path) -> str:
    """``step N/50000, valid S=10: X`` from a run folder's metrics, or '—' when there is none."""
    step, valid = None, None
    try:
        for line in (run / "metrics.jsonl").read_text().splitlines():
            m = json.loads(line)
            step = m.get("step", step)
            if m.get("split") == "valid":
                valid = m
    except (OSError, ValueError):
        return "—"
    shown = f"training: step {step:,}/50,000" if step is not None else "—"
    return shown + (f" (valid S=10 at {valid['step']:,}: {valid['nll']:.1f})" if valid else "")


def cell(out: Path, col: str, est: str) -> tuple[str, str]:
    run = out / f"{col}-{est}"
    evals = sorted(out.glob(f"{col}-{est}.eval-S*-L*.json"))
    ev = last_json(evals[-1]) if evals else None
    if ev is not None:
        ours = f"**{ev['nll']:.2f}** ± {ev['nll_stderr']:.2f} (S={ev['samples']}, {ev['examples']} imgs)"
    elif (out / f"{col}-{est}.train.json").exists():
        ours = "trained, not scored"
    else:
        ours = progress(run)
    mc = [line.split()[-1] for line in _lines(run / "config.yaml") if line.strip().startswith("mc:")]
    if mc:
        ours += f" [K={mc[0]}]"
    probe = last_json(out / f"{col}-{est}.probe.json")
    return ours, f"{probe['steps_per_s']:.1f}" if probe else "—"


def main(out: Path) -> None:
    cols = list(COLUMNS)
    print("| estimator | " + " | ".join(f"{COLUMNS[c]}: ours | paper" for c in cols) + " |")
    print("|---|" + "---|---|" * len(cols))
    speeds = []
    for est in ROWS:
        cells = []
        for col in cols:
            ours, speed = cell(out, col, est)
            cells += [ours, PUBLISHED.get(est, {}).get(col, "")]
            speeds.append(f"{col}-{est} {speed}")
        print(f"| {est} | " + " | ".join(cells) + " |")
    print("\nsteps/s over the first 500 steps: " + ", ".join(speeds))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
