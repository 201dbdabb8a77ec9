"""Smoothing transformations of DVAE / DVAE++ / DVAE# (``distributions/smoothing.py``).

Densities and CDFs are checked against scipy.stats and quadrature, samples by Kolmogorov–Smirnov tests
with fixed seeds (each states its false-failure rate under a correct implementation), gradients against
central finite differences in float64 and between the closed-form and the implicit paths.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from discrete_vae.distributions import SMOOTHINGS, SmoothedBernoulli, get_smoothing
from discrete_vae.distributions.dvae_pp import Power
from discrete_vae.distributions.dvae_sharp import GaussianIntegral
from discrete_vae.distributions.smoothing import Smoothing
from discrete_vae.errors import ConfigError

NAMES = ["exp", "gauss", "gi", "power", "spike-exp", "unexp"]
CASES = {  # name -> a smoothing; gi with a non-trivial scale and shift
    **{n: get_smoothing(n) for n in NAMES},
    "gi-shifted": GaussianIntegral(40.0, sigma=0.25, shift=0.1),
    "exp-soft": get_smoothing("exp", beta=2.0),
    "power-soft": get_smoothing("power", beta=3.0),
}
LOGITS = [-2.0, -0.5, 0.3, 1.5]
RHOS = [0.05, 0.3, 0.55, 0.8, 0.97]


def _t(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


class _Mirror:
    """The law of ``1 - X`` for a scipy frozen distribution of ``X``."""

    def __init__(self, ref):
        self.ref = ref

    def logpdf(self, x):
        return self.ref.logpdf(1 - x)

    def cdf(self, x):
        return self.ref.sf(1 - x)


class _Mixture:
    """``(1 - eps) * first + eps * second`` for two scipy frozen distributions."""

    def __init__(self, first, second, eps: float):
        self.first, self.second, self.eps = first, second, eps

    def logpdf(self, x):
        first = np.log1p(-self.eps) + self.first.logpdf(x)
        return np.logaddexp(first, np.log(self.eps) + self.second.logpdf(x))

    def cdf(self, x):
        return (1 - self.eps) * self.first.cdf(x) + self.eps * self.second.cdf(x)

    def sf(self, x):
        return 1 - self.cdf(x)


def _truncexp(s: Smoothing):  # density β e^{-βζ} / (1 - e^{-β}) on [0, 1]
    return stats.truncexpon(b=float(s.beta), scale=1 / float(s.beta))


def _powerlaw(s: Smoothing):  # density λ ζ^{λ-1} on [0, 1], λ = 1/β
    return stats.powerlaw(a=1 / float(s.beta))


def _normals(s: Smoothing):
    sigma, shift = float(s._scale()), float(s._loc(0))
    return stats.norm(shift, sigma), stats.norm(1 + shift, sigma)


def _uniform_exp(s: Smoothing):  # (1 - eps) truncated exponential + eps uniform on [0, 1]
    mix = _Mixture(_truncexp(s), stats.uniform(0, 1), s.eps)
    return mix, _Mirror(mix)


SCIPY_COMPONENTS = {  # name -> independent references (r(.|0), r(.|1)); None for the spike's point mass
    "exp": lambda s: (_truncexp(s), _Mirror(_truncexp(s))),
    "power": lambda s: (_powerlaw(s), _Mirror(_powerlaw(s))),
    "spike-exp": lambda s: (None, _Mirror(_truncexp(s))),  # density β e^{-β(1-ζ)} / (1 - e^{-β})
    "gauss": _normals,
    "gi": _normals,
    "unexp": _uniform_exp,
}


def _scipy_components(s: Smoothing):
    """Independent references (r(.|0), r(.|1)) from scipy.stats; None for the spike's point mass."""
    return SCIPY_COMPONENTS[s.name](s)


def _pdf(s: Smoothing, z: int):
    log_r = s.log_r0 if z == 0 else s.log_r1
    return lambda x: math.exp(float(log_r(_t(x))))


def _integrate(s: Smoothing, f, upper: float = math.inf) -> float:
    """∫ f over the support up to ``upper``; the power law's integrable poles at 0 and 1 are taken out
    as quad's algebraic weights (x^a on [0, 1/2], (1 - x)^a on [1/2, 1])."""
    if s.support is torch.distributions.constraints.real:
        return integrate.quad(f, -math.inf, upper)[0]
    upper = min(upper, 1.0)
    if not isinstance(s, Power):
        return integrate.quad(f, 0, upper, points=[0.5] if upper > 0.5 else None)[0]
    a, tiny = 1 / float(s.beta) - 1, 1e-300
    total = integrate.quad(lambda x: f(max(x, tiny)) / max(x, tiny) ** a, 0, min(upper, 0.5),
                           weight="alg", wvar=(a, 0))[0]
    if 0.5 < upper < 1:  # no pole inside: qawse's weight would be (upper - x)^a, not (1 - x)^a
        total += integrate.quad(f, 0.5, upper)[0]
    elif upper == 1:
        total += integrate.quad(lambda x: f(1 - max(1 - x, 2**-53)) / max(1 - x, 2**-53) ** a, 0.5, upper,
                                weight="alg", wvar=(0, a))[0]
    return total


def test_registry_lists_all_names():
    assert SMOOTHINGS.names() == NAMES
    with pytest.raises(ConfigError, match="unknown smoothing"):
        SMOOTHINGS.get("spike")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("beta", [0.0, -1.0, math.nan])
def test_bad_beta_raises(name, beta):
    with pytest.raises(ValueError, match="beta .* must be finite and > 0"):
        SMOOTHINGS.get(name)(beta)


def test_bad_eps_and_sigma_raise():
    with pytest.raises(ValueError, match="eps"):
        SMOOTHINGS.get("unexp")(40.0, eps=1.0)
    with pytest.raises(ValueError, match="sigma"):
        GaussianIntegral(40.0, sigma=0.0)


def test_default_beta_table():
    # REFERENCE.md, MNIST 1-layer-lin: spike 5, ++exp 12, ++power 40, gi 40, gauss 40, #exp 12, unexp 40,
    # #power 40
    expect = {"dvae_spike_exp": 5, "dvaepp_exp": 12, "dvaepp_power": 40, "dvaes_gi": 40, "dvaes_gauss": 40,
              "dvaes_exp": 12, "dvaes_unexp": 40, "dvaes_power": 40}
    for baseline, beta in expect.items():
        assert float(get_smoothing(baseline).beta) == beta
    assert SMOOTHINGS.get("power").default_beta("omniglot", "4-layer-nonlin", "dvaes_power") == 20.0
    assert SMOOTHINGS.get("power").default_beta("binarized_mnist", "1-layer-nonlin") == 30.0  # DVAE++
    with pytest.raises(ConfigError, match="no default beta"):
        SMOOTHINGS.get("exp").default_beta("cifar10", "1-layer-lin")
    with pytest.raises(ConfigError, match="not by 'dvaes_gauss'"):
        SMOOTHINGS.get("exp").default_beta(baseline="dvaes_gauss")


@pytest.mark.parametrize("key", list(CASES))
def test_densities_and_cdfs_match_scipy(key):
    s = CASES[key]
    ref0, ref1 = _scipy_components(s)
    real = s.support is torch.distributions.constraints.real
    x = np.linspace(-0.3, 1.3, 33) if real else np.linspace(0.01, 0.99, 33)
    np.testing.assert_allclose(s.log_r1(_t(x)).numpy(), ref1.logpdf(x), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(s.cdf1(_t(x)).numpy(), ref1.cdf(x), rtol=1e-9, atol=1e-12)
    if ref0 is not None:
        np.testing.assert_allclose(s.log_r0(_t(x)).numpy(), ref0.logpdf(x), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(s.cdf0(_t(x)).numpy(), ref0.cdf(x), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("key", list(CASES))
def test_densities_integrate_to_one_and_match_cdf_and_mean(key):
    s = CASES[key]
    logit = 0.3
    q = 1 / (1 + math.exp(-logit))
    mix = lambda x: math.exp(float(s.log_prob(_t(x), _t(logit))))  # noqa: E731
    if s.point_mass:  # r(.|0) is the unit mass at 0: the mixture is (1-q) δ_0 + q r(.|1)
        assert float(s.log_r0(_t(0.0))) == 0.0 and float(s.log_r0(_t(0.3))) == -math.inf
        assert float(s.log_prob(_t(0.0), _t(logit))) == pytest.approx(math.log(1 - q))
        assert (1 - q) + _integrate(s, mix) == pytest.approx(1, abs=1e-7)
    else:
        assert _integrate(s, _pdf(s, 0)) == pytest.approx(1, abs=1e-7)
        assert _integrate(s, mix) == pytest.approx(1, abs=1e-7)
        assert float(s.mean0()) == pytest.approx(_integrate(s, lambda x: x * _pdf(s, 0)(x)), abs=1e-7)
        assert float(s.cdf0(_t(0.4))) == pytest.approx(_integrate(s, _pdf(s, 0), 0.4), abs=1e-7)
    assert _integrate(s, _pdf(s, 1)) == pytest.approx(1, abs=1e-7)
    assert float(s.cdf1(_t(0.7))) == pytest.approx(_integrate(s, _pdf(s, 1), 0.7), abs=1e-7)
    m1 = _integrate(s, lambda x: x * _pdf(s, 1)(x))
    assert float(s.mean1()) == pytest.approx(m1, abs=1e-7)
    assert float(s.mean(_t(logit))) == pytest.approx((1 - q) * float(s.mean0()) + q * m1, abs=1e-7)


@pytest.mark.parametrize("key", [k for k in CASES if k not in ("spike-exp", "gi-shifted")])
def test_symmetry(key):
    s = CASES[key]
    x = _t(np.linspace(-0.5, 1.5, 41) if s.support is torch.distributions.constraints.real
           else np.linspace(0.001, 0.999, 41))
    torch.testing.assert_close(s.log_r1(x), s.log_r0(1 - x))
    torch.testing.assert_close(s.cdf1(x), 1 - s.cdf0(1 - x))
    torch.testing.assert_close(s.log_r(x, torch.ones_like(x)), s.log_r(1 - x, torch.zeros_like(x)))


@pytest.mark.parametrize("key", list(CASES))
def test_samples_follow_the_mixture_cdf(key):
    """KS test of 4000 samples against the mixture CDF: false-failure rate 1e-3 (the test's level)."""
    s = CASES[key]
    torch.manual_seed(1)
    logit = torch.tensor(0.4, dtype=torch.float64)
    zeta = s.rsample(logit, (4000,)).numpy()
    cdf = lambda x: s.cdf(_t(x), logit).numpy()  # noqa: E731
    if s.point_mass:  # atom: binomial test on its mass (rate 1e-3), KS on the continuous part
        q = float(torch.sigmoid(logit))
        assert stats.binomtest(int((zeta == 0).sum()), len(zeta), 1 - q).pvalue > 1e-3
        zeta, cdf = zeta[zeta > 0], lambda x: s.cdf1(_t(x)).numpy()  # noqa: E731
    if isinstance(s, Power):  # no double lies in (1 - 2^-53, 1): the roots there are returned as 1 - 2^-53
        top = 1 - 2**-53
        f_top = float(s.cdf(_t(1 - 2**-52), logit))
        assert stats.binomtest(int((zeta >= top).sum()), len(zeta), 1 - f_top).pvalue > 1e-3  # rate 1e-3
        zeta, cdf = zeta[zeta < top], lambda x: s.cdf(_t(x), logit).numpy() / f_top  # noqa: E731
    assert stats.kstest(zeta, cdf).pvalue > 1e-3


def _fd(f, logits: torch.Tensor, h: float = 1e-5) -> torch.Tensor:
    return (f(logits + h) - f(logits - h)) / (2 * h)


@pytest.mark.parametrize("key", list(CASES))
def test_implicit_gradient_matches_finite_differences(key):
    s = CASES[key]
    rho, logits = torch.meshgrid(_t(RHOS), _t(LOGITS), indexing="ij")
    logits = logits.clone().requires_grad_()
    zeta = s.icdf(rho, logits, implicit=True)  # (5, 4)
    (grad,) = torch.autograd.grad(zeta.sum(), logits)
    with torch.no_grad():
        fd = _fd(lambda l: s.icdf(rho, l), logits.detach())  # closed form where it exists, else bisection
    torch.testing.assert_close(grad, fd, rtol=1e-5, atol=1e-8)
    # ζ is the float64 root: F jumps over ρ between its neighbours (this also holds on the spike's atom)
    zeta = zeta.detach()
    lower, upper = (s.cdf(torch.nextafter(zeta, _t(x)), logits.detach()) for x in (-math.inf, math.inf))
    assert (lower <= rho + 1e-12).all() and (upper >= rho - 1e-12).all()


@pytest.mark.parametrize("key", list(CASES))
def test_ancestral_draw_gradient_is_the_inverse_cdf_derivative(key):
    """rsample's implicit draw is ancestral; its gradient at ζ is ``∂F^{-1}(ρ)/∂logit`` at ``ρ = F(ζ)``."""
    s = CASES[key]
    torch.manual_seed(4)
    logits = _t(LOGITS).repeat(20).requires_grad_()  # (80,)
    zeta = s.rsample(logits, implicit=True)
    (grad,) = torch.autograd.grad(zeta.sum(), logits)
    with torch.no_grad():
        zeta, rho = zeta.detach(), s.cdf(zeta.detach(), logits.detach())
        inner = ~s._on_atom(zeta) & (zeta < 1 - 2**-53)  # the spike's atom and the top double: no slope
        fd = _fd(lambda l: s.icdf(rho, l, implicit=True), logits.detach())
    assert inner.sum() >= 40  # power at β = 40 puts about 40% of r(ζ|1) on the top double
    torch.testing.assert_close(grad[inner], fd[inner], rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("key", list(CASES))
def test_ancestral_implicit_gradient_is_unbiased(key):
    """``E[∂ζ²/∂logit]`` over 100k ancestral draws against the exact ``q(1-q)(E_1[ζ²] - E_0[ζ²])``
    (component moments by quadrature).

    Each of the three comparisons allows 5 standard errors (a false failure below 1e-6 under the CLT).
    """
    s = CASES[key]
    second = [0.0 if (s.point_mass and z == 0)  # the unit mass at 0
              else _integrate(s, lambda x, z=z: x * x * _pdf(s, z)(x)) for z in (0, 1)]
    torch.manual_seed(5)
    logits = _t([-1.5, 0.4, 2.0]).expand(100_000, 3).clone().requires_grad_()  # a leaf per draw
    zeta = s.rsample(logits, implicit=True)
    (slope,) = torch.autograd.grad(zeta.sum(), logits)  # ∂ζ/∂logit of each draw
    grads = 2 * zeta.detach() * slope
    q = torch.sigmoid(logits[0].detach())
    exact = q * (1 - q) * (second[1] - second[0])
    se = grads.std(0) / math.sqrt(len(grads))
    assert ((grads.mean(0) - exact).abs() <= 5 * se).all(), (grads.mean(0), exact, se)


@pytest.mark.parametrize("key", ["exp", "exp-soft", "spike-exp"])
def test_closed_form_and_implicit_agree(key):
    s = CASES[key]
    torch.manual_seed(2)
    rho = torch.rand(200, dtype=torch.float64)
    logits = (6 * torch.randn(200, dtype=torch.float64)).requires_grad_()
    a, b = s.icdf(rho, logits), s.icdf(rho, logits, implicit=True)
    ga, gb = (torch.autograd.grad(v.sum(), logits)[0] for v in (a, b))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    torch.testing.assert_close(ga, gb, rtol=1e-7, atol=1e-10)
    with torch.no_grad():
        torch.testing.assert_close(ga, _fd(lambda l: s.icdf(rho, l), logits.detach()), rtol=1e-4, atol=1e-8)


def test_gi_gradient_reaches_scale_and_shift():
    rho = _t([[0.1, 0.5, 0.9]])
    logits = _t([[-1.0, 0.2, 2.0]]).requires_grad_()
    sigma, shift = _t([0.3, 0.2, 0.25]).requires_grad_(), _t([0.0, -0.1, 0.2]).requires_grad_()

    def f(l, sg, sh):
        return GaussianIntegral(40.0, sigma=sg, shift=sh).icdf(rho, l, implicit=True)

    assert torch.autograd.gradcheck(f, (logits, sigma, shift), eps=1e-6, atol=1e-7)
    (dshift,) = torch.autograd.grad(f(logits, sigma, shift).sum(), shift)
    torch.testing.assert_close(dshift, torch.ones(3, dtype=torch.float64))  # ∂ζ/∂δ = 1


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("implicit", [None, True])
def test_float32_samples_finite_in_support(name, implicit):
    s = get_smoothing(name)
    torch.manual_seed(3)
    logits = torch.linspace(-20, 20, 41).requires_grad_()
    zeta = s.rsample(logits, (50,), implicit=implicit)  # (50, 41)
    assert zeta.dtype == torch.float32 and torch.isfinite(zeta).all() and s.support.check(zeta).all()
    (grad,) = torch.autograd.grad(zeta.sum(), logits)
    assert torch.isfinite(grad).all()
    log_q = s.log_prob(zeta, logits.detach())
    # the power law's density is infinite at 0 and 1, where float32 samples can land
    keep = (zeta > 0) & (zeta < 1) if isinstance(s, Power) else torch.ones_like(zeta, dtype=torch.bool)
    assert torch.isfinite(log_q[keep]).all()


def test_distribution_wrapper():
    logits = torch.randn(3, 4)
    d = SmoothedBernoulli(logits, get_smoothing("exp"))
    assert d.rsample((5,)).shape == (5, 3, 4) and d.log_prob(d.rsample()).shape == (3, 4)
    e = d.expand((2, 3, 4))
    assert e.batch_shape == (2, 3, 4) and e.sample().shape == (2, 3, 4)
    torch.testing.assert_close(d.mean, get_smoothing("exp").mean(logits))
    torch.testing.assert_close(d.cdf(d.icdf(torch.full((3, 4), 0.3))), torch.full((3, 4), 0.3))
    with pytest.raises(ValueError, match="no closed-form inverse CDF"):
        SmoothedBernoulli(logits, get_smoothing("power"), implicit=False).rsample()
