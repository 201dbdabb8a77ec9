"""The table and the figure of ``dvae gradients`` (:mod:`discrete_vae.gradients`), from its result dict."""

from __future__ import annotations

import io
from typing import Any

COLUMNS = (  # header, key, format
    ("estimator", None, "{}"), ("k", "k", "{}"), ("evals", "evaluations", "{}"),
    ("unbiased", "unbiased", "{}"), ("bias", "bias", "{:.3g}"),
    ("bias/|g|", "relative_bias", "{:.3f}"), ("bias/se", "bias_z", "{:.1f}"),
    ("variance", "variance", "{:.3g}"), ("mse", "mse", "{:.3g}"), ("cos", "cosine", "{:.3f}"),
    ("cos(mean)", "cosine_of_mean", "{:.3f}"), ("ms", "seconds", "{:.2f}"), ("var*ms", None, "{:.3g}"),
)


def _cell(key: str | None, fmt: str, name: str, row: dict[str, Any]) -> str:
    if key is None:  # the name, or the work-normalised variance
        return name if fmt == "{}" else fmt.format(row["variance"] * row["seconds"] * 1e3)
    value = row[key]
    if key == "unbiased":
        return "yes" if value else "no"
    return fmt.format(value * 1e3 if key == "seconds" else value)


def gradient_table(result: dict[str, Any]) -> str:
    """Aligned text: a header line per reference, one row per estimator, then warnings and notes."""
    lines = []
    for name, ref in result["references"].items():
        se = "" if ref["se"] is None else f", its standard error {ref['se']:.3g}"
        lines.append(f"reference {name}: {ref['kind']}, {ref['detail']}; |g| = {ref['norm']:.4g}{se}; "
                     f"objective {ref['value']:.4g}")
    estimators = result["estimators"]
    rows = [[h for h, _, _ in COLUMNS]]
    rows += [[_cell(key, fmt, name, row) for _, key, fmt in COLUMNS] for name, row in estimators.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    for r in rows:
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells))
    raised = [n for n, row in estimators.items() if row["k"] > result["k"] and ":" not in n]
    if raised:
        lines.append(f"note: {', '.join(raised)} took their minimum samples per estimate (k above)")
    fresh = [n for n, row in estimators.items() if row["state"] == "fresh"]
    if fresh:
        lines.append(f"note: {', '.join(fresh)} start fresh (untrained state, e.g. a baseline of 0, as at "
                     "step 0; --adapt trains it first); the model's own estimator keeps its trained state")
    adapted = [n for n, row in estimators.items() if row["state"] == "adapted"]
    if adapted:
        lines.append(f"note: {', '.join(adapted)} trained their learned parts for {result['adapt']} steps "
                     "on this model first (--adapt)")
    lines += [f"warning: {n}: {row['warning']}" for n, row in estimators.items() if "warning" in row]
    return "\n".join(lines)


def gradient_figure(result: dict[str, Any], caption: str) -> bytes:
    """PNG bytes: variance and bias (its standard error as a dash) against seconds per estimate, log scales,
    one labelled point per estimator (filled: declared unbiased)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    rows = result["estimators"]
    labels = {"variance": "variance: tr Cov(g_hat)", "bias": "bias: |mean g_hat - g|"}
    for ax, (key, label) in zip(fig.subplots(1, 2), labels.items(), strict=True):
        for name, row in rows.items():
            x, y = row["seconds"], max(row[key], 1e-30)
            ax.scatter([x], [y], marker="o", facecolors="C0" if row["unbiased"] else "none", edgecolors="C0")
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
            if key == "bias":
                ax.scatter([x], [max(row["bias_se"], 1e-30)], marker="_", color="C3", s=120)
        ax.set(xscale="log", yscale="log", xlabel="seconds per estimate (median)", ylabel=label)
        ax.grid(True, which="major", alpha=0.3)
    fig.suptitle(caption + "  (filled: declared unbiased; red dash: standard error of the bias)", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
