"""IGR-I's implied class probabilities (:func:`igr_log_probs`) against independent references.

``P(k)``, the probability that coordinate ``k`` of ``kappa ~ N(mu, s^2)`` is the largest and above
the threshold ``c``, is checked (a) against Monte Carlo class frequencies, with fixed seeds and an
exact binomial test per class at level 1e-6 (false-failure rate at most 1e-6 per class), and
(b) against a 20-digit mpmath reference (tanh-sinh quadrature, which checks its own error estimate),
over scale ratios 1 to 1000 within one variable, K = 2 to 10 and thresholds other than 0. The
probabilities are compared as computed (:func:`igr_log_probs` does not renormalise), and their sum
must be one within the same bound, so normalisation cannot hide an error.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch.autograd import gradcheck

from discrete_vae.distributions import igr_log_probs

F64 = torch.float64
TOL = 1e-14  # absolute, per class and for the sum's distance from one
RATIOS = (1, 10, 100, 1000)


def _reference(loc, scale, c: float = 0.0) -> list[float]:
    """``P(1..K)`` by mpmath at 20 digits: ``int_c^inf phi_k(x) prod_{j != k} Phi_j(x) dx`` per class.

    Each integral runs over ``mu_k +- 12 s_k`` (the rest has mass below 1e-32), cut at ``mu_k`` and at
    ``mu_j + s_j (-6, 0, 6)`` for the coordinates narrower than a quarter of ``s_k``.
    """
    with mpmath.workdps(20):
        mu, s, c = [mpmath.mpf(float(v)) for v in loc], [mpmath.mpf(float(v)) for v in scale], mpmath.mpf(c)
        out = []
        for k in range(len(mu)):
            others = [j for j in range(len(mu)) if j != k]

            def f(x, k=k, others=others):
                cdfs = (mpmath.ncdf((x - mu[j]) / s[j]) for j in others)
                return mpmath.npdf(x, mu[k], s[k]) * mpmath.fprod(cdfs)

            lo, hi = max(c, mu[k] - 12 * s[k]), mu[k] + 12 * s[k]
            if hi <= lo:
                out.append(0.0)
                continue
            cuts = {mu[k]} | {mu[j] + a * s[j] for j in others if 4 * s[j] < s[k] for a in (-6, 0, 6)}
            value, error = mpmath.quad(f, [lo, *sorted(p for p in cuts if lo < p < hi), hi], error=True)
            assert error < 1e-18, (k, error)
            out.append(float(value))
        out.append(float(mpmath.fprod(mpmath.ncdf((c - mu[j]) / s[j]) for j in range(len(mu)))))
    return out


def _case(ratio: float, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """K - 1 scales log-uniform over a factor ``ratio`` (both ends taken), locations inside the widest
    coordinate's bulk (where the narrow ones' steps matter), a threshold 0 for even seeds."""
    gen = np.random.default_rng(1000 * k + 10 * seed + int(math.log10(ratio)))
    u = gen.uniform(size=k - 1)
    u[: min(2, k - 1)] = (0.0, 1.0)[: k - 1]
    scale = math.exp(gen.normal(0.0, 0.5)) * float(ratio) ** -u
    loc = 0.7 * scale.max() * gen.normal(size=k - 1)
    c = 0.0 if seed % 2 == 0 else float(0.5 * scale.max() * gen.normal())
    return loc, scale, c


def _probs(loc, scale, c: float = 0.0) -> np.ndarray:
    return igr_log_probs(torch.tensor(loc, dtype=F64), torch.tensor(scale, dtype=F64), c).exp().numpy()


SWEEP = [(r, k, seed) for r in RATIOS for k in (3, 5) for seed in (0, 1)]
SWEEP += [(r, 10, i) for i, r in enumerate(RATIOS)] + [(1, 2, 0), (1, 2, 1)]
# two coordinates, each direction of the scale ratio; then scales to 1e6 and locations far from 0
SINGLE = [((0.0, 1.0), (1.0, 1.0 / r), 0.0) for r in RATIOS]
SINGLE += [((0.0, 1.0), (1.0 / r, 1.0), 0.0) for r in RATIOS]
SINGLE += [
    ((1.0, 0.0), (1e-2, 1.0), 0.5),
    ((0.0, 1.0), (1.0, 1e-4), 0.0),
    ((0.0, 0.5, -0.2), (1.0, 1e-6, 1e-3), 0.1),
    ((20.0, 20.001, 19.99), (1.0, 1e-3, 1e-2), 0.0),
    ((3.0, -2.0, 0.5, 1.0), (1e-3, 1.0, 0.1, 10.0), -1.0),
    ((-30.0, -29.0), (1.0, 1e-2), 0.0),
]


@pytest.mark.parametrize("ratio, k, seed", SWEEP, ids=lambda v: str(v))
def test_igr_probabilities_match_a_20_digit_reference_across_scale_ratios(ratio, k, seed):
    loc, scale, c = _case(ratio, k, seed)
    got, ref = _probs(loc, scale, c), np.array(_reference(loc, scale, c))
    assert np.abs(got - ref).max() < TOL, (got - ref, loc, scale, c)
    assert abs(got.sum() - 1) < TOL


@pytest.mark.parametrize("loc, scale, c", SINGLE, ids=lambda v: str(v))
def test_igr_probabilities_match_a_20_digit_reference_in_single_cases(loc, scale, c):
    got, ref = _probs(loc, scale, c), np.array(_reference(loc, scale, c))
    assert np.abs(got - ref).max() < TOL, (got - ref)
    assert abs(got.sum() - 1) < TOL


def test_the_issue_example_gives_phi_of_one():
    """loc (0, 1), scale (1, 0.01): class 2 wins when kappa_2 > kappa_1 (kappa_2 > 0 but for
    Phi(-100)): P(2) = Phi(1 / sqrt(1 + 0.01^2)), which is Phi(1) to 1.2e-5."""
    got = _probs((0.0, 1.0), (1.0, 0.01))
    exact = stats.norm.cdf(1 / math.sqrt(1 + 1e-4))
    assert got[1] == pytest.approx(exact, abs=TOL) and got[0] == pytest.approx(1 - exact, abs=TOL)
    assert got[1] == pytest.approx(stats.norm.cdf(1.0), abs=1.3e-5)


@pytest.mark.parametrize(
    "loc, scale, c",
    [((0.0, 1.0), (1.0, 0.01), 0.0), (*_case(100, 10, 1),), (*_case(1000, 10, 3),)],
    ids=["issue", "K10-ratio100", "K10-ratio1000"],
)
def test_igr_probabilities_match_monte_carlo_frequencies(loc, scale, c):
    """2,000,000 draws; exact two-sided binomial test per class at level 1e-6 (a class with
    ``n p < 1e-6`` must not be drawn at all: false-failure rate below 1e-6 too)."""
    n = 2_000_000
    gen = torch.Generator().manual_seed(7)
    loc, scale = torch.tensor(loc, dtype=F64), torch.tensor(scale, dtype=F64)
    kappa = loc + scale * torch.randn(n, len(loc), generator=gen, dtype=F64)
    winner = torch.cat([kappa, torch.full((n, 1), c, dtype=F64)], -1).argmax(-1)
    counts = torch.bincount(winner, minlength=len(loc) + 1).tolist()
    probs = igr_log_probs(loc, scale, c).exp().tolist()
    for k, (count, p) in enumerate(zip(counts, probs, strict=True)):
        if n * p < 1e-6:
            assert count == 0, (k, count, p)
        else:
            assert stats.binomtest(count, n, min(p, 1.0)).pvalue > 1e-6, (k, count / n, p)


def test_igr_probabilities_match_scipy_integration():
    """A second, double-precision reference: QUADPACK on each class's integral."""
    gen = torch.Generator().manual_seed(3)
    loc = 1.5 * torch.randn(2, 4, generator=gen, dtype=F64)
    scale = 0.3 + torch.rand(2, 4, generator=gen, dtype=F64)
    got = igr_log_probs(loc, scale).exp()
    for b in range(2):
        mu, s = loc[b].numpy(), scale[b].numpy()
        for k in range(4):
            def integrand(x, k=k, mu=mu, s=s):
                others = [stats.norm.cdf((x - mu[j]) / s[j]) for j in range(4) if j != k]
                return stats.norm.pdf(x, mu[k], s[k]) * math.prod(others)

            ref, _ = integrate.quad(integrand, 0, math.inf, epsabs=1e-12)
            assert got[b, k].item() == pytest.approx(ref, abs=1e-10)
        last = math.prod(stats.norm.cdf(-mu[j] / s[j]) for j in range(4))
        assert got[b, 4].item() == pytest.approx(last, abs=1e-9)


def test_igr_probabilities_batch_row_by_row_and_keep_the_dtype():
    """Rows are integrated in blocks; a batch (several blocks) gives each row's own values."""
    gen = torch.Generator().manual_seed(0)
    loc = 2 * torch.randn(5, 15, 9, generator=gen, dtype=F64)
    scale = (2 * torch.randn(5, 15, 9, generator=gen, dtype=F64)).exp()
    got = igr_log_probs(loc, scale)  # (5, 15, 10)
    assert got.shape == (5, 15, 10)
    rows = torch.stack([igr_log_probs(loc[i, j], scale[i, j]) for i in range(5) for j in range(15)])
    torch.testing.assert_close(got.view(-1, 10), rows, rtol=1e-12, atol=1e-14)
    assert (got.exp().sum(-1) - 1).abs().max() < TOL
    half = igr_log_probs(loc.float(), scale.float(), torch.tensor(0.0))
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, got.float(), rtol=1e-4, atol=1e-5)
    assert igr_log_probs(loc[:0], scale[:0]).shape == (0, 15, 10)


def test_igr_probabilities_gradcheck():
    """float64 gradients (differentiation under the integral sign) against finite differences."""
    gen = torch.Generator().manual_seed(1)
    loc = torch.randn(2, 3, generator=gen, dtype=F64).requires_grad_()
    log_scale = torch.tensor([[0.0, -4.6, 1.0], [-2.3, 0.5, -0.5]], dtype=F64, requires_grad=True)
    assert gradcheck(lambda m, ls: igr_log_probs(m, ls.exp(), 0.3), (loc, log_scale))
