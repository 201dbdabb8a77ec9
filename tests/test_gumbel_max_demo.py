"""The Gumbel-max demonstration: figures are written, and the numbers they show are right."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from discrete_vae.viz.gumbel_max import FREQUENCY_PROBS, gumbel_max_figures, sample_gumbel


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], dict]:
    paths = gumbel_max_figures(tmp_path_factory.mktemp("demo"), seed=0, n_samples=50_000)
    return paths, json.loads(paths["gumbel_max_summary"].read_text())


def test_figures_are_png_images(demo) -> None:
    paths, _ = demo
    pngs = [p for p in paths.values() if p.suffix == ".png"]
    assert len(pngs) >= 2
    for path in pngs:
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 100


def test_gumbel_max_frequencies_match_the_probabilities(demo) -> None:
    _, summary = demo
    assert summary["probabilities"] == pytest.approx(list(FREQUENCY_PROBS))
    assert sum(summary["frequencies"]) == pytest.approx(1.0)
    # fixed seed; a correct sampler fails this chi-square test with probability 1e-3
    assert summary["chi_square_p_value"] > 1e-3


def test_concrete_samples_move_to_the_vertices_as_tau_falls(demo) -> None:
    _, summary = demo
    fractions = {float(t): f for t, f in summary["vertex_fraction"].items()}
    by_tau = [fractions[t] for t in sorted(fractions, reverse=True)]
    assert by_tau == sorted(by_tau)  # non-decreasing as the temperature decreases
    assert fractions[min(fractions)] > 0.5 > fractions[max(fractions)]


def test_same_seed_same_summary(tmp_path: Path, demo) -> None:
    _, summary = demo
    again = gumbel_max_figures(tmp_path, seed=0, n_samples=50_000)
    assert json.loads(again["gumbel_max_summary"].read_text()) == summary


def test_gumbel_noise_is_finite_and_standard() -> None:
    g = sample_gumbel((100_000,), torch.Generator().manual_seed(0), dtype=torch.float32)
    assert torch.isfinite(g).all()
    # mean of a standard Gumbel: Euler's constant, sd pi / sqrt(6); a 5-sigma band
    # (false-failure rate about 6e-7; the seed is fixed)
    se = math.pi / math.sqrt(6 * g.numel())
    assert abs(g.double().mean().item() - 0.5772156649) < 5 * se


@pytest.mark.parametrize("kwargs", [{"n_samples": 0}, {"temperatures": (1.0, 0.0)}])
def test_invalid_arguments_raise(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        gumbel_max_figures(tmp_path, **kwargs)
