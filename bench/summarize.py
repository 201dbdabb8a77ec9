"""Mean and standard deviation over seeds of the ``MODEL-sSEED.{train,eval}.json`` files in a folder.

``nll_std`` is the spread over seeds; ``nll_stderr_over_examples`` each run's standard error over
the test examples scored (how far another subset could move it).

    python bench/summarize.py OUT_DIR
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def neg(ev: dict, name: str) -> float:
    """``neg_NAME`` of an eval file (positive nats), or ``-NAME`` from files written before the rename."""
    return ev[f"neg_{name}"] if f"neg_{name}" in ev else -ev[name]


def main(out: Path) -> None:
    rows: dict[str, list[tuple]] = {}
    for f in sorted(out.glob("*.eval.json")):
        if not f.read_text().strip():  # still being evaluated
            continue
        model = f.name.rsplit("-s", 1)[0]
        train = json.loads(Path(str(f).replace(".eval.", ".train.")).read_text())
        ev = json.loads(f.read_text())
        rows.setdefault(model, []).append(
            (ev["nll"], neg(ev, "elbo"), neg(ev, "relaxed_objective"), train.get("train_seconds"),
             ev.get("examples"), ev.get("nll_stderr"))
        )
    for model, r in rows.items():
        nll = [x[0] for x in r]
        print(
            json.dumps(
                {
                    "model": model,
                    "nll": [round(v, 2) for v in nll],
                    "nll_mean": round(statistics.mean(nll), 2),
                    "nll_std": round(statistics.stdev(nll), 2) if len(nll) > 1 else 0.0,
                    "nll_stderr_over_examples": [x[5] and round(x[5], 2) for x in r],
                    "neg_elbo": [round(x[1], 2) for x in r],
                    "neg_relaxed_objective": [round(x[2], 2) for x in r],
                    "train_seconds": [x[3] for x in r],
                    "examples": r[0][4],
                }
            )
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
