"""The Gumbel-max trick and its Concrete (Gumbel-Softmax) relaxation, as figures.

Gumbel-max (Gumbel, 1954; Maddison, Tarlow & Minka, 2014): if ``G_k`` are i.i.d. standard
Gumbel variables, ``G = -log(-log U)`` with ``U ~ Uniform(0, 1)``, then

    argmax_k (log p_k + G_k) ~ Categorical(p).

The Concrete / Gumbel-Softmax distribution (Maddison, Mnih & Teh, 2017,
https://arxiv.org/abs/1611.00712; Jang, Gu & Poole, 2017, https://arxiv.org/abs/1611.01144)
replaces the argmax by a softmax at temperature ``tau``:

    y = softmax((log p + G) / tau),

a point in the interior of the probability simplex that moves to the vertices, i.e. to the
one-hot Gumbel-max sample, as ``tau -> 0``.

:func:`gumbel_max_figures` draws both and writes the figures as PNG files, together with a
JSON summary of the numbers they show (empirical frequencies against the probabilities with a
chi-square test; fraction of Concrete samples near a vertex per temperature).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.stats import chisquare

__all__ = ["gumbel_max_figures", "sample_gumbel", "sample_concrete"]

#: Category probabilities of the Gumbel-max frequency check (K = 6).
FREQUENCY_PROBS: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.2, 0.3)
#: Category probabilities of the Concrete simplex figures (K = 3).
SIMPLEX_PROBS: tuple[float, ...] = (0.5, 0.3, 0.2)
#: A sample is "at a vertex" when its largest coordinate is at least this.
VERTEX_THRESHOLD = 0.95
#: Points drawn in each simplex panel (the statistics use all samples).
_SCATTER_POINTS = 3000
# Corners of the 2-simplex drawn as an equilateral triangle: e_1, e_2, e_3.
_TRIANGLE = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3.0) / 2.0]])


def sample_gumbel(
    shape: Sequence[int], generator: torch.Generator, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Standard Gumbel noise ``G = -log(-log U)``, ``U ~ Uniform(0, 1)``.

    ``U`` is clamped to ``[tiny, 1 - eps]`` so that both logarithms are finite.
    """
    finfo = torch.finfo(dtype)
    u = torch.rand(tuple(shape), generator=generator, dtype=dtype)
    u = u.clamp(min=finfo.tiny, max=1.0 - finfo.eps)
    return -torch.log(-torch.log(u))


def sample_concrete(
    logits: torch.Tensor, tau: float, n: int, generator: torch.Generator
) -> torch.Tensor:
    """``n`` Concrete samples ``softmax((logits + G) / tau)``; returns shape (n, K)."""
    g = sample_gumbel((n, logits.shape[-1]), generator, logits.dtype)  # (n, K)
    return torch.softmax((logits + g) / tau, dim=-1)  # (n, K)


def _to_triangle(y: np.ndarray) -> np.ndarray:
    """Barycentric coordinates (n, 3) -> points (n, 2) in the triangle ``_TRIANGLE``."""
    return y @ _TRIANGLE


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)
    return path


def _frequency_figure(probs: np.ndarray, freqs: np.ndarray, p_value: float, n: int) -> Figure:
    k = np.arange(len(probs))
    fig = Figure(figsize=(6.5, 4.0), layout="constrained")
    ax = fig.add_subplot()
    width = 0.4
    ax.bar(k - width / 2, probs, width, label="true probability $p_k$")
    ax.bar(k + width / 2, freqs, width, label=r"frequency of $\arg\max_k(\log p_k + G_k)$")
    ax.set_xticks(k)
    ax.set_xlabel("category $k$")
    ax.set_ylabel("probability")
    ax.set_title(f"Gumbel-max, {n:,} draws: chi-square p-value = {p_value:.3f}")
    ax.legend(loc="upper left")
    return fig


def _simplex_figure(samples: dict[float, np.ndarray], fractions: dict[float, float]) -> Figure:
    n_panels = len(samples)
    fig = Figure(figsize=(3.2 * n_panels, 3.4), layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    outline = np.vstack([_TRIANGLE, _TRIANGLE[:1]])
    for ax, (tau, y) in zip(axes, samples.items(), strict=True):
        xy = _to_triangle(y[:_SCATTER_POINTS])
        ax.plot(outline[:, 0], outline[:, 1], color="black", linewidth=0.8)
        ax.scatter(xy[:, 0], xy[:, 1], s=2, alpha=0.3, linewidths=0)
        for label, (cx, cy) in zip(("$e_1$", "$e_2$", "$e_3$"), _TRIANGLE, strict=True):
            ax.annotate(label, (cx, cy), textcoords="offset points", xytext=(0, -12 if cy == 0 else 4),
                        ha="center")
        ax.set_title(rf"$\tau = {tau:g}$")
        ax.text(0.5, -0.2, f"{fractions[tau]:.1%} with max coord. $\\geq$ {VERTEX_THRESHOLD}",
                ha="center", fontsize=9)
        ax.set_xlim(-0.08, 1.08)
        ax.set_ylim(-0.25, 1.0)
        ax.set_aspect("equal")
        ax.set_axis_off()
    fig.suptitle("Concrete samples on the 2-simplex move to the vertices as $\\tau$ falls")
    return fig


def _histogram_figure(samples: dict[float, np.ndarray], p1: float) -> Figure:
    n_panels = len(samples)
    fig = Figure(figsize=(3.2 * n_panels, 3.0), layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False, sharey=False)[0]
    bins = np.linspace(0.0, 1.0, 41)
    for ax, (tau, y) in zip(axes, samples.items(), strict=True):
        ax.hist(y[:, 0], bins=bins, density=True)
        ax.set_title(rf"$\tau = {tau:g}$")
        ax.set_xlabel("$y_1$")
    axes[0].set_ylabel("density")
    fig.suptitle(f"Marginal of the first Concrete coordinate ($p_1 = {p1:g}$)")
    return fig


def gumbel_max_figures(
    out_dir: Path,
    *,
    seed: int = 0,
    n_samples: int = 100_000,
    temperatures: Sequence[float] = (5.0, 1.0, 0.5, 0.1),
) -> dict[str, Path]:
    """Write the Gumbel-max / Concrete figures and their numbers into ``out_dir``.

    Files written (keys of the returned mapping are the file stems):

    - ``gumbel_max_frequencies.png``: frequencies of ``argmax(log p + G)`` over ``n_samples``
      draws next to ``p`` (K = 6), chi-square goodness-of-fit p-value in the title.
    - ``concrete_simplex.png``: K = 3 Concrete samples, one 2-simplex panel per temperature,
      annotated with the fraction of samples whose largest coordinate is >= 0.95.
    - ``concrete_histograms.png``: the marginal of the first Concrete coordinate per temperature.
    - ``gumbel_max_summary.json``: frequencies, probabilities, chi-square statistic and
      p-value, and vertex fractions per temperature.

    All randomness comes from one ``torch.Generator`` seeded with ``seed``: the same arguments
    give the same summary.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be positive, got {n_samples}")
    if not temperatures or any(t <= 0 for t in temperatures):
        raise ValueError(f"temperatures must be positive, got {tuple(temperatures)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)

    # Gumbel-max: argmax(log p + G) ~ Categorical(p).
    probs = torch.tensor(FREQUENCY_PROBS, dtype=torch.float64)  # (K,)
    g = sample_gumbel((n_samples, probs.numel()), gen)  # (n, K)
    draws = torch.argmax(probs.log() + g, dim=-1)  # (n,)
    counts = torch.bincount(draws, minlength=probs.numel()).numpy()  # (K,)
    p = probs.numpy()
    freqs = counts / n_samples
    chi2 = chisquare(counts, f_exp=p * n_samples)

    # Concrete relaxation at each temperature, same logits for every panel.
    logits = torch.tensor(SIMPLEX_PROBS, dtype=torch.float64).log()  # (3,)
    samples: dict[float, np.ndarray] = {}
    fractions: dict[float, float] = {}
    for tau in temperatures:
        y = sample_concrete(logits, float(tau), n_samples, gen)  # (n, 3)
        samples[float(tau)] = y.numpy()
        fractions[float(tau)] = float((y.max(dim=-1).values >= VERTEX_THRESHOLD).double().mean())

    paths = {
        "gumbel_max_frequencies": _save(
            _frequency_figure(p, freqs, float(chi2.pvalue), n_samples),
            out_dir / "gumbel_max_frequencies.png",
        ),
        "concrete_simplex": _save(
            _simplex_figure(samples, fractions), out_dir / "concrete_simplex.png"
        ),
        "concrete_histograms": _save(
            _histogram_figure(samples, SIMPLEX_PROBS[0]), out_dir / "concrete_histograms.png"
        ),
    }
    summary = {
        "seed": seed,
        "n_samples": n_samples,
        "probabilities": p.tolist(),
        "frequencies": freqs.tolist(),
        "chi_square_statistic": float(chi2.statistic),
        "chi_square_p_value": float(chi2.pvalue),
        "simplex_probabilities": list(SIMPLEX_PROBS),
        "vertex_threshold": VERTEX_THRESHOLD,
        "vertex_fraction": {str(tau): frac for tau, frac in fractions.items()},
    }
    summary_path = out_dir / "gumbel_max_summary.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    paths["gumbel_max_summary"] = summary_path
    return paths
