"""A sweep's plots: the validation bound against the step (mean and band over seeds, per setting) and the
final value of each table's first metric with error bars over seeds."""

from __future__ import annotations

import io
import json
import statistics
from pathlib import Path
from typing import Any

from .spec import SEED, Spec

CURVES_PNG, FINAL_PNG = "validation.png", "final.png"


def validation_curves(spec: Spec, out: Path, names: set[str]) -> dict[str, dict[int, list[float]]]:
    """Per setting (every axis label but the seed), the validation bound at each step over its seeds, of
    the points ``names``."""
    curves: dict[str, dict[int, list[float]]] = {}
    for point in (p for p in spec.points() if p.name in names):
        setting = ", ".join(f"{a}={label}" for a, label in point.labels if a != SEED) or spec.name
        path = out / point.name / "run" / "metrics.jsonl"
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("split") == "valid" and isinstance(entry.get("nll"), int | float):
                curves.setdefault(setting, {}).setdefault(int(entry["step"]), []).append(float(entry["nll"]))
    return curves


def write_plots(spec: Spec, out: Path, records: list[dict[str, Any]]) -> dict[str, Path]:
    """``validation.png`` and ``final.png`` from the points' metrics.jsonl and records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..checkpoint import atomic_write_bytes
    from .report import in_table, value_of  # (report writes the plots through this function)

    def save(fig: Any, name: str) -> Path:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        atomic_write_bytes(out / name, buffer.getvalue())
        return out / name

    written = {}
    curves = validation_curves(spec, out, {r["point"] for r in records})
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for setting, by_step in curves.items():
            steps = sorted(by_step)
            means = [statistics.mean(by_step[s]) for s in steps]
            spread = [statistics.stdev(by_step[s]) if len(by_step[s]) > 1 else 0.0 for s in steps]
            ax.plot(steps, means, label=setting, lw=1.2)
            ax.fill_between(steps, [m - d for m, d in zip(means, spread, strict=True)],
                            [m + d for m, d in zip(means, spread, strict=True)], alpha=0.2)
        ax.set_xlabel("step")
        ax.set_ylabel("validation NLL bound (nats)")
        ax.set_title(f"{spec.name}: mean and ±1 std over seeds")
        ax.legend(fontsize=7)
        written["curves"] = save(fig, CURVES_PNG)
    finals = []
    for table in spec.tables:
        metric = table.metrics[0]
        groups: dict[str, list[float]] = {}
        for record in records:
            found = value_of(record, metric, spec) if in_table(spec, table, record) else None
            if found is not None:
                label = ", ".join(str(record[a]) for a in table.rows + table.columns)
                groups.setdefault(label, []).append(found)
        if groups:
            finals.append((table, metric, groups))
    if finals:
        fig, axes = plt.subplots(len(finals), 1, figsize=(7, 0.3 * sum(len(g) for *_, g in finals) + 2.0),
                                 squeeze=False)
        for ax, (table, metric, groups) in zip(axes[:, 0], finals, strict=True):
            names = list(groups)
            means = [statistics.mean(groups[n]) for n in names]
            errors = [statistics.stdev(groups[n]) if len(groups[n]) > 1 else 0.0 for n in names]
            ax.errorbar(means, range(len(names)), xerr=errors, fmt="o", capsize=3)
            ax.set_yticks(range(len(names)), names, fontsize=7)
            ax.invert_yaxis()
            ax.set_xlabel(metric)
            ax.set_title(f"{spec.name}: {table.name} (error bars: std over seeds)", fontsize=9)
        written["final"] = save(fig, FINAL_PNG)
    return written
