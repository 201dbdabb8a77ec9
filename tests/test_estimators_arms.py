"""The copula multi-sample estimators (arms, carms): unbiased against exact enumeration for K = 2, 3, 4 draws,
their copulas and pair probabilities against their draws (and the Gaussian one against scipy), ARMS at K = 2
against DisARM on the same uniforms, and the n_samples / latent-kind contract.

False failures: 18 unbiasedness cases at 3e-4 each and 5 copula and pair-probability tests at 1e-4 each; the
rest are deterministic. Family-wise, under 6e-3 for the file."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal, norm
from torch.distributions import Bernoulli, OneHotCategorical

from discrete_vae.errors import ConfigError
from discrete_vae.estimators import ESTIMATORS, build_estimator
from discrete_vae.estimators.arms import dirichlet_bits, dirichlet_cdf, dirichlet_uniforms, gaussian_bits
from discrete_vae.estimators.carms import class_orders, coupled_draws
from estimator_checks import FALSE_FAILURE, Problem, check_one_call, check_unbiased

ROWS = 20000  # independent estimates per z-test
GAUSSIAN = {"copula": "gaussian"}

CASES = [  # (estimator, options, kind, shape, n_samples)
    *[("arms", {}, "binary", shape, k) for shape in [(5,), (2, 3)] for k in (2, 3, 4)],
    ("arms", GAUSSIAN, "binary", (5,), 3),
    ("arms", GAUSSIAN, "binary", (2, 3), 4),
    *[("carms", {}, "categorical", shape, k) for shape in [(2, 3), (1, 4)] for k in (2, 3, 4)],
    ("carms", {}, "binary", (5,), 2),
    ("carms", {}, "binary", (2, 3), 3),
    ("carms", {}, "binary", (5,), 4),
    ("carms", {}, "categorical", (3, 2), 3),
]


@pytest.mark.parametrize("name,options,kind,shape,n_samples", CASES)
def test_gradient_and_value_are_unbiased(name, options, kind, shape, n_samples):
    """The mean of 20000 estimates of d/dlogits, d/dw (the parameters inside f) and E_q[f] agrees with exact
    enumeration: three z-tests, each at family-wise false-failure rate 1e-4 (3e-4 per case). Dropping
    either estimator's debiasing weights puts |z| at 25 to 35; CARMS weighted by the pair probability of the
    drawn class order instead of the average over orders, at 60 to 85 for K = 2."""
    check_unbiased(build_estimator(name, **options), kind, shape, n_samples, ROWS)


@pytest.mark.parametrize("shape", [(5,), (2, 3)])
def test_arms_with_two_draws_is_disarm_on_the_same_uniforms(shape):
    """At K = 2 the Dirichlet copula is the antithetic pair (u, 1 - u) and ARMS draws DisARM's pair (b~, b)
    from DisARM's uniform (the same seed): values, d/dw and d/dlogits agree row by row to float64 rounding.
    Deterministic."""
    problem = Problem("binary", shape, seed=1)
    out = {}
    for name in ("arms", "disarm"):
        torch.manual_seed(11)
        out[name] = problem.estimates(build_estimator(name), 1000, 2)
    for a, b in zip(out["arms"], out["disarm"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def binomial_z(hits: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
    """``(frequency - prob) / its standard error`` per entry of ``hits`` (R, ...) against ``prob`` (...)."""
    n = hits.shape[0]
    return (hits.to(prob.dtype).mean(0) - prob) / (prob * (1 - prob) / n).sqrt().clamp_min(1e-12)


def limit(count: int) -> float:
    """The |z| bound of ``count`` two-sided z-tests at family-wise false-failure rate 1e-4 (Bonferroni)."""
    return norm.ppf(1 - FALSE_FAILURE / (2 * count))


def test_dirichlet_copula_has_uniform_margins_and_its_pair_cdf():
    """For K = 3 and 5: P(u_k <= x) = x for every k and P(u_0 <= x, u_1 <= y) = (x^s + y^s - 1)_+^(K-1),
    s = 1 / (K - 1), over 20000 draws at 3 points: 30 z-tests, Bonferroni at family-wise false-failure rate
    1e-4. At K = 2 the pair is (u, 1 - u) (deterministic)."""
    torch.manual_seed(2)
    points = torch.tensor([[0.3, 0.5], [0.6, 0.6], [0.8, 0.4]], dtype=torch.float64)
    z = []
    for k in (3, 5):
        u = dirichlet_uniforms(k, torch.zeros(ROWS, dtype=torch.float64))  # (K, R)
        z.append(binomial_z(u.T.unsqueeze(-1) <= points[:, 0], points[:, 0].expand(k, 3)).flatten())
        pair = (u[0].unsqueeze(-1) <= points[:, 0]) & (u[1].unsqueeze(-1) <= points[:, 1])  # (R, 3)
        z.append(binomial_z(pair, dirichlet_cdf(points[:, 0], points[:, 1], k)))
    z = torch.cat(z)
    assert z.abs().max() < limit(z.numel()), z.tolist()
    u = dirichlet_uniforms(2, torch.zeros(100, dtype=torch.float64))
    torch.testing.assert_close(u.sum(0), torch.ones(100, dtype=torch.float64))


@pytest.mark.parametrize("draw", [dirichlet_bits, gaussian_bits])
def test_arms_factor_is_the_pair_probability_of_its_draws(draw):
    """For K = 2, 3 and 4 draws and logits on both sides of 0: each draw is 1 with probability p, and two
    draws are (1, 0) with probability p (1 - p) / factor; over 20000 rows, (K + 1) x 5 z-tests per K,
    Bonferroni at family-wise false-failure rate 1e-4."""
    torch.manual_seed(3)
    logits = torch.tensor([-2.0, -0.6, 0.0, 0.4, 1.5], dtype=torch.float64)
    p = torch.sigmoid(logits)
    z = []
    for k in (2, 3, 4):
        b, factor = draw(logits.expand(ROWS, 5), k)  # (K, R, 5), (R, 5)
        torch.testing.assert_close(factor, factor[:1].expand_as(factor))
        z.append(binomial_z(b.movedim(0, 1), p.expand(k, 5)).flatten())
        z.append(binomial_z((b[0] == 1) & (b[-1] == 0), p * (1 - p) / factor[0]))
    z = torch.cat(z)
    assert z.abs().max() < limit(z.numel()), z.tolist()


@pytest.mark.parametrize("k", [3, 4, 7])
def test_gaussian_factor_matches_scipy_bivariate_normal(k):
    """p (1 - p) / (p - P(x_k < h, x_j < h)), h = Phi^-1(p), correlation -1/(K-1), from scipy's bivariate
    normal CDF (a different formula from the Owen's T quadrature), to 1e-10. Deterministic."""
    logits = torch.tensor([-8.0, -2.0, -0.5, 0.0, 0.3, 1.5, 4.0], dtype=torch.float64)
    _, factor = gaussian_bits(logits, k)
    p = torch.sigmoid(logits).numpy()
    h = norm.ppf(p)
    rho = -1 / (k - 1)
    mvn = multivariate_normal(mean=[0, 0], cov=[[1, rho], [rho, 1]], abseps=1e-13, releps=1e-13)
    both = mvn.cdf(np.stack([h, h], -1))
    torch.testing.assert_close(factor, torch.tensor(p * (1 - p) / (p - both)), rtol=1e-10, atol=0)


@pytest.mark.parametrize("k", [2, 3])
def test_carms_weights_are_the_pair_probabilities_of_its_draws(k):
    """CARMS's weight of a pair of draws is p_a p_b / J(a, b), J averaged over the class orders: over 20000
    draws of one 4-class variable, the frequency of (z_0, z_1) = (a, b) agrees with the J its weights imply,
    for the 12 pairs a != b, and each draw's class with p (z-tests, Bonferroni at family-wise false-failure
    rate 1e-4). The class orders are the reference code's set."""
    torch.manual_seed(4)
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    cls, weight = coupled_draws(probs.expand(ROWS, 4), k)  # (K, R), (M, R); pair (0, 1) is the first
    a, b = cls[0], cls[1]
    joint = probs[a] * probs[b] / weight[0]  # (R,)
    index = a * 4 + b
    implied = torch.zeros(16, dtype=torch.float64).scatter_(0, index, joint)  # J of each pair that occurred
    hits = torch.nn.functional.one_hot(index, 16)  # (R, 16)
    off = torch.ones(4, 4, dtype=torch.bool).fill_diagonal_(False).flatten()
    z = torch.cat([binomial_z(hits[:, off], implied[off]),
                   binomial_z(torch.nn.functional.one_hot(cls.flatten(), 4), probs)])
    assert z.abs().max() < limit(z.numel()), z.tolist()
    assert sorted(map(tuple, class_orders(3))) == [(0, 1, 2), (0, 2, 1), (1, 0, 2)]


@pytest.mark.parametrize("name,options,kind,shape", [
    ("arms", {}, "binary", (3,)), ("arms", GAUSSIAN, "binary", (3,)), ("carms", {}, "categorical", (2, 3)),
    ("carms", {}, "binary", (3,))])
def test_one_call_of_f_rows_stay_separate_and_the_surrogate_is_the_value(name, options, kind, shape):
    """f is called once on all K = 5 draws; surrogate[b] depends on row b only; the surrogate's value is the
    value estimate."""
    check_one_call(build_estimator(name, **options), kind, shape, 5)


@pytest.mark.parametrize("name,options", [("arms", {}), ("arms", GAUSSIAN), ("carms", {})])
def test_extreme_float32_logits_give_finite_estimates(name, options):
    """Logits of +-30 (and 0) in float32, K = 2, 3, 5: finite values and gradients."""
    logits = torch.tensor([[-30.0, 30.0, 0.0, -29.0], [30.0, -30.0, 1e-3, 15.0]], requires_grad=True)
    dists = [lambda: Bernoulli(logits=logits)]
    if name == "carms":
        dists.append(lambda: OneHotCategorical(logits=logits.view(2, 2, 2)))
    for dist in dists:
        for k in (2, 3, 5):
            out = build_estimator(name, **options)(dist(), lambda z: z.flatten(2).cumsum(-1).sin().sum(-1), k)
            (grad,) = torch.autograd.grad(out.surrogate.sum(), logits)
            assert torch.isfinite(grad).all() and torch.isfinite(out.value).all()


@pytest.mark.parametrize("name", ["arms", "carms"])
@pytest.mark.parametrize("n_samples", [0, 1])
def test_too_few_samples_is_one_error(name, n_samples):
    q = Bernoulli(logits=torch.zeros(2, 3))
    with pytest.raises(ConfigError, match="at least 2 samples"):
        build_estimator(name)(q, lambda z: z.sum(-1), n_samples)



def test_registry_and_options():
    assert ESTIMATORS.get("arms").supports == ("binary",)
    assert ESTIMATORS.get("carms").supports == ("binary", "categorical")
    for name in ("arms", "carms"):
        cls = ESTIMATORS.get(name)
        assert cls.unbiased and cls.min_samples == 2 and not cls.relaxed and cls.cost == ""
        assert build_estimator(name).evaluations(3, "binary", (4,)) == 3
    assert build_estimator("arms").options.copula == "dirichlet"
    with pytest.raises(ConfigError, match="--copula must be one of dirichlet, gaussian"):
        build_estimator("arms", copula="clayton")
    with pytest.raises(ConfigError, match="no option"):
        build_estimator("carms", copula="gaussian")
    assert math.comb(5, 2) == len(class_orders(5))
