"""Markdown tables, one per model, of the runs of ``bench/disarm_setting.sh`` (the DisARM paper's setting).

Columns, all positive nats to minimise, for the last checkpoint at STEPS:
- ``train −ELBO (log)``: minus the mean of the last ``N`` training lines' ``-loss`` in ``metrics.jsonl`` (one
  line per 1,000 steps, so the last N·1000 steps' minibatches; for ``gs`` the relaxed objective, no bound);
- ``train −ELBO (S=1)``: the training set's one-sample bound (``dvae eval --split train --samples 1``), the
  paper's training metric;
- ``test S=100`` (the paper's test bound) and ``test S=1000`` (IW bounds, ``dvae eval --split test``), each
  ± its standard error over the test images scored.

    python bench/summarize_disarm.py OUT_DIR STEPS [N]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MODELS = ("linear", "nonlinear")
ESTIMATORS = ("disarm", "arm", "rloo", "reinforce", "relax", "gs", "st-gs", "reinmax")
SAMPLES = {"disarm": 2, "arm": 2, "rloo": 2}  # evaluations of f per example per step; 1 for the rest
PAPER: dict[tuple[str, str], str] = {}  # (model, estimator) -> the paper's figure, where one is at hand


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``; None while it is missing or still being written."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return json.loads(text) if text else None


def logged_neg_elbo(run: Path, n: int) -> float | None:
    """Minus the mean over the last ``n`` training lines' objective (their ``loss``, positive nats)."""
    try:
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    except OSError:
        return None
    losses = [m["loss"] for m in lines if m.get("split") == "train"][-n:]
    return sum(losses) / len(losses) if losses else None


def bound(ev: dict | None) -> str:
    if ev is None:
        return "—"
    examples = "" if ev["examples"] == 10000 or ev["split"] == "train" else f" ({ev['examples']} images)"
    return f"{ev['nll']:.2f} ± {ev['nll_stderr']:.2f}{examples}"


def table(out: Path, model: str, steps: int, n: int) -> list[str]:
    rows = [
        f"**{model}** (dong2020-{model}, {steps:,} steps, last checkpoint; train −ELBO (log) over the last "
        f"{n} logged lines)",
        "",
        "| estimator | f evals | steps | steps/s | train −ELBO (log) | train −ELBO (S=1) | test S=100 "
        "| test S=1000 | paper |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for est in ESTIMATORS:
        run = out / f"{model}-{est}"
        if not run.is_dir():
            continue
        trained = read_json(out / f"{model}-{est}.train-{steps}.json")
        logged = logged_neg_elbo(run, n)
        evals = {key: read_json(out / f"{model}-{est}.eval-{key}-{steps}.json")
                 for key in ("test-S100", "test-S1000", "train-S1")}
        train_s1 = evals["train-S1"]
        rows.append(
            "| " + " | ".join([
                est,
                str(SAMPLES.get(est, 1)),
                f"{trained['step']:,}" if trained else "unfinished",
                f"{trained['steps_per_s']:.0f}" if trained and "steps_per_s" in trained else "—",
                "—" if logged is None else f"{logged:.2f}" + (" (relaxed)" if est == "gs" else ""),
                "—" if train_s1 is None else f"{train_s1['nll']:.2f}",
                bound(evals["test-S100"]),
                bound(evals["test-S1000"]),
                PAPER.get((model, est), "—"),
            ]) + " |"
        )
    return rows


def main(out: Path, steps: int, n: int = 3) -> None:
    for model in MODELS:
        print("\n".join(table(out, model, steps, n)), end="\n\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), *(int(a) for a in sys.argv[3:4]))
