"""Property tests of the Concrete / Gumbel-Softmax relaxations against independent references.

References: ``torch.distributions`` (ExpRelaxedCategorical, RelaxedOneHotCategorical,
LogitRelaxedBernoulli, RelaxedBernoulli), ``scipy.stats.logistic`` (the logit of a binary Concrete
sample is a logistic variable with location ``logit / tau`` and scale ``1 / tau``; Maddison et al.
2017, Appendix B), numerical quadrature and exact enumeration of small discrete spaces.

Statistical tests use fixed seeds, so every run is deterministic. The false-failure rate stated with
each is the probability that a *correct* implementation fails the test for a seed drawn at random.
Two-sided ``4 SE`` checks have a per-component false-failure rate of 6.3e-5 (normal tail).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import integrate, special, stats
from torch.autograd import gradcheck
from torch.distributions import (
    Bernoulli,
    Independent,
    OneHotCategorical,
    RelaxedBernoulli,
    RelaxedOneHotCategorical,
)
from torch.distributions.relaxed_bernoulli import LogitRelaxedBernoulli
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical

from discrete_vae.distributions import (
    BinaryConcrete,
    ExpConcrete,
    GumbelSoftmax,
    LogitBinaryConcrete,
    straight_through_binary,
    straight_through_one_hot,
)

F64 = torch.float64
ALPHA = 1e-3  # declared false-failure rate of every chi-square test below

# (K, batch shape, temperature): torch's simplex-space density is finite for all these in float64.
CATEGORICAL_CASES = [
    (2, (), 1.0),
    (3, (4,), 0.1),
    (3, (2, 3), 0.5),
    (5, (3,), 2.0),
    (10, (2,), 0.3),
]
# (batch shape, temperature)
BINARY_CASES = [((), 1.0), ((5,), 0.1), ((2, 3), 0.5), ((4,), 3.0)]


def make_logits(shape: tuple[int, ...], seed: int, scale: float = 1.5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(shape, generator=gen, dtype=F64)


def case_id(case) -> str:
    return "-".join(map(str, case)) if isinstance(case, tuple) else str(case)


def chisquare_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """One Pearson test over independent rows: counts and probs (R, C), each row one multinomial.

    The statistic is the sum of the rows' statistics: chi-square with ``R (C - 1)`` degrees of
    freedom.
    """
    rows = counts.shape[0]
    expected = counts.sum(-1, keepdim=True).to(F64) * probs.to(F64)
    assert expected.min() > 5, "expected counts too small for the chi-square approximation"
    result = stats.chisquare(counts.ravel().numpy(), expected.ravel().numpy(), ddof=rows - 1)
    return float(result.pvalue)


# ----------------------------------------------------------------------------- log_prob references


@pytest.mark.parametrize("case", CATEGORICAL_CASES, ids=case_id)
def test_exp_concrete_log_prob_matches_torch(case):
    k, batch, tau = case
    logits = make_logits((*batch, k), seed=k)
    ours = ExpConcrete(tau, logits)
    ref = ExpRelaxedCategorical(torch.tensor(tau, dtype=F64), logits=logits)
    torch.manual_seed(0)
    # values drawn by the reference and by the code under test
    y = torch.cat([ref.rsample((32,)), ours.rsample((32,))])  # (64, *batch, K)
    expected = ref.log_prob(y)
    assert torch.isfinite(expected).all()
    torch.testing.assert_close(ours.log_prob(y), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("tau, logit", [(0.3, 1.3), (1.0, 0.0), (2.0, -0.7)])
def test_exp_concrete_log_prob_is_a_density_over_the_log_ratio(tau, logit):
    """K = 2: ``y_1 - y_2 = (logit + G_1 - G_2) / tau`` is logistic(logit / tau, 1 / tau), and
    ``log_prob`` is its density; the density of ``y_1`` alone is ``log_prob - y_2``."""
    logits = torch.tensor([logit, 0.0], dtype=F64)
    q = ExpConcrete(tau, logits)
    torch.manual_seed(0)
    y = q.rsample((64,))  # (64, 2)
    ratio = (y[:, 0] - y[:, 1]).numpy()
    expected = stats.logistic.logpdf(ratio, loc=logit / tau, scale=1 / tau)
    torch.testing.assert_close(q.log_prob(y), torch.from_numpy(expected), rtol=1e-10, atol=1e-10)
    # d(y_1 - y_2) / d y_1 = 1 / exp(y_2) with y_2 = log(1 - exp(y_1)): integrates to one over y_1 < 0
    mass, _ = integrate.quad(
        lambda y1: math.exp(q.log_prob(torch.tensor([y1, math.log(-math.expm1(y1))], dtype=F64)).item()
                            - math.log(-math.expm1(y1))),
        -np.inf, 0.0, epsabs=1e-10,
    )
    assert mass == pytest.approx(1.0, abs=1e-7)


@pytest.mark.parametrize("case", CATEGORICAL_CASES, ids=case_id)
def test_gumbel_softmax_log_prob_matches_torch(case):
    k, batch, tau = case
    logits = make_logits((*batch, k), seed=10 + k)
    ours = GumbelSoftmax(tau, logits)
    ref = RelaxedOneHotCategorical(torch.tensor(tau, dtype=F64), logits=logits)
    torch.manual_seed(1)
    x = torch.cat([ref.rsample((32,)), ours.rsample((32,))])  # (64, *batch, K) on the simplex
    expected = ref.log_prob(x)
    assert torch.isfinite(expected).all()
    torch.testing.assert_close(ours.log_prob(x), expected, rtol=1e-9, atol=1e-9)


def test_exp_concrete_batched_temperature_matches_torch_row_by_row():
    logits = make_logits((3, 4), seed=3)
    tau = torch.tensor([0.2, 1.0, 3.0], dtype=F64)
    torch.manual_seed(2)
    y = ExpConcrete(tau, logits).rsample((16,))  # (16, 3, 4)
    got = ExpConcrete(tau, logits).log_prob(y)  # (16, 3)
    for b in range(3):
        ref = ExpRelaxedCategorical(tau[b], logits=logits[b])
        torch.testing.assert_close(got[:, b], ref.log_prob(y[:, b]), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", BINARY_CASES, ids=case_id)
def test_logit_binary_concrete_log_prob_matches_torch_and_scipy(case):
    batch, tau = case
    logits = make_logits(batch, seed=20 + len(batch), scale=2.0)
    ours = LogitBinaryConcrete(tau, logits)
    ref = LogitRelaxedBernoulli(torch.tensor(tau, dtype=F64), logits=logits)
    torch.manual_seed(3)
    y = torch.cat([ref.rsample((32,)), ours.rsample((32,))])  # (64, *batch)
    torch.testing.assert_close(ours.log_prob(y), ref.log_prob(y), rtol=1e-10, atol=1e-10)
    # the logit of a binary Concrete is Logistic(loc = logit / tau, scale = 1 / tau)
    logistic = stats.logistic.logpdf(y.numpy(), loc=(logits / tau).numpy(), scale=1 / tau)
    np.testing.assert_allclose(ours.log_prob(y).numpy(), logistic, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("case", BINARY_CASES, ids=case_id)
def test_binary_concrete_log_prob_matches_torch(case):
    batch, tau = case
    logits = make_logits(batch, seed=30 + len(batch), scale=2.0)
    ours = BinaryConcrete(tau, logits)
    ref = RelaxedBernoulli(torch.tensor(tau, dtype=F64), logits=logits)
    torch.manual_seed(4)
    x = torch.cat([ref.rsample((32,)), ours.rsample((32,))])  # (64, *batch) in [0, 1]
    expected = ref.log_prob(x)
    assert torch.isfinite(expected).all()
    torch.testing.assert_close(ours.log_prob(x), expected, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------ densities integrate to 1


@pytest.mark.parametrize("tau", [0.4, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("logit", [-1.5, 0.3, 2.0])
def test_binary_concrete_integrates_to_one_on_unit_interval(tau, logit):
    # Below tau ~ 0.4 the density's x^(tau - 1) endpoint singularities, resolved in float64 only
    # to 1 - x ~ 1e-16, defeat QUADPACK on (0, 1); the logit-space test covers small temperatures.
    dist = BinaryConcrete(tau, torch.tensor(logit, dtype=F64))
    mass, _ = integrate.quad(
        lambda x: math.exp(dist.log_prob(torch.tensor(x, dtype=F64))), 0, 1, limit=200
    )
    assert mass == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("tau", [0.05, 0.1, 1.0, 3.0])
@pytest.mark.parametrize("logit", [-1.5, 2.0])
def test_logit_binary_concrete_integrates_to_one_on_real_line(tau, logit):
    dist = LogitBinaryConcrete(tau, torch.tensor(logit, dtype=F64))

    def density(y: float) -> float:
        return math.exp(dist.log_prob(torch.tensor(y, dtype=F64)))

    centre = logit / tau  # split at the mode so QUADPACK cannot miss a narrow peak
    mass = integrate.quad(density, -np.inf, centre)[0] + integrate.quad(density, centre, np.inf)[0]
    assert mass == pytest.approx(1.0, abs=1e-6)


def simplex_grid(tau: float, step: float) -> tuple[torch.Tensor, float]:
    """Points ``x = softmax(u1, u2, 0)`` of the 2-simplex for ``u`` on a square grid; cell area.

    ``|det d(x1, x2) / d(u1, u2)| = x1 x2 x3``, and a Concrete density decays like
    ``exp(-tau |u|)``, so ``u`` in ``[-35 / tau, 35 / tau]^2`` holds all but ~1e-15 of the mass.
    """
    half = 35.0 / tau
    u = torch.arange(-half, half + step / 2, step, dtype=F64)
    u1, u2 = torch.meshgrid(u, u, indexing="ij")
    x = torch.softmax(torch.stack([u1, u2, torch.zeros_like(u1)], -1), -1)  # (G, G, 3)
    return x, step * step


@pytest.mark.parametrize("tau, step", [(0.1, 0.5), (0.5, 0.25), (2.0, 0.25)])
def test_gumbel_softmax_integrates_to_one_over_the_simplex(tau, step):
    # The GumbelSoftmax density is w.r.t. Lebesgue measure on (x1, x2); the trapezoid rule on the
    # smooth, exponentially decaying integrand in u-coordinates converges geometrically.
    x, area = simplex_grid(tau, step)
    dist = GumbelSoftmax(tau, torch.tensor([0.5, -1.0, 1.2], dtype=F64))
    log_jacobian = x.log().sum(-1)  # log(x1 x2 x3)
    mass = (dist.log_prob(x) + log_jacobian).exp().sum() * area
    assert float(mass) == pytest.approx(1.0, abs=1e-6)


def test_gumbel_softmax_integrates_to_one_by_dblquad_in_first_two_coordinates():
    dist = GumbelSoftmax(2.0, torch.tensor([0.5, -1.0, 1.2], dtype=F64))

    def density(x2: float, x1: float) -> float:
        return math.exp(dist.log_prob(torch.tensor([x1, x2, 1.0 - x1 - x2], dtype=F64)))

    mass, _ = integrate.dblquad(density, 0, 1, 0, lambda x1: 1 - x1, epsabs=1e-6, epsrel=1e-6)
    assert mass == pytest.approx(1.0, abs=1e-5)


# ------------------------------------------------------------------ Gumbel-max and sample laws

N_DRAWS = 200_000


@pytest.mark.parametrize("k, batch", [(2, ()), (3, (2,)), (10, (3,))], ids=case_id)
def test_gumbel_max_sample_discrete_is_categorical(k, batch):
    logits = make_logits((*batch, k), seed=40 + k, scale=1.0)
    dist = ExpConcrete(1.0, logits)
    torch.manual_seed(5)
    idx = dist.sample_discrete((N_DRAWS,))  # (S, *batch)
    assert idx.shape == (N_DRAWS, *batch)
    counts = F.one_hot(idx, k).sum(0).reshape(-1, k)  # (R, K)
    assert chisquare_pvalue(counts, dist.probs.reshape(-1, k)) > ALPHA


@pytest.mark.parametrize("tau", [0.1, 1.0, 5.0])
def test_argmax_of_concrete_sample_is_categorical(tau):
    # Maddison et al. 2017, Proposition 1a: P(argmax_k X_k = k) = alpha_k / sum(alpha), for any tau.
    logits = make_logits((2, 4), seed=50, scale=1.0)
    dist = ExpConcrete(tau, logits)
    torch.manual_seed(6)
    idx = dist.rsample((N_DRAWS,)).argmax(-1)  # (S, 2)
    counts = F.one_hot(idx, 4).sum(0)  # (2, 4)
    assert chisquare_pvalue(counts, dist.probs) > ALPHA


def bernoulli_counts(draws: torch.Tensor) -> torch.Tensor:
    """(S, *batch) of {0, 1} -> counts of (0, 1) per batch element, (R, 2)."""
    ones = draws.reshape(draws.shape[0], -1).sum(0)
    return torch.stack([draws.shape[0] - ones, ones], -1).long()


@pytest.mark.parametrize("batch", [(), (4,)], ids=str)
def test_binary_sample_discrete_is_bernoulli(batch):
    logits = make_logits(batch, seed=60, scale=1.0)
    dist = LogitBinaryConcrete(0.5, logits)
    torch.manual_seed(7)
    draws = dist.sample_discrete((N_DRAWS,))
    assert draws.shape == (N_DRAWS, *batch)
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    p = dist.probs.reshape(-1, 1)
    assert chisquare_pvalue(bernoulli_counts(draws), torch.cat([1 - p, p], -1)) > ALPHA


@pytest.mark.parametrize("tau", [0.1, 2.0])
def test_sign_of_logit_binary_concrete_sample_is_bernoulli(tau):
    logits = make_logits((3,), seed=61, scale=1.0)
    dist = LogitBinaryConcrete(tau, logits)
    torch.manual_seed(8)
    draws = (dist.rsample((N_DRAWS,)) > 0).to(F64)
    p = dist.probs.reshape(-1, 1)
    assert chisquare_pvalue(bernoulli_counts(draws), torch.cat([1 - p, p], -1)) > ALPHA


# --------------------------------------------------------------------------- straight-through


@pytest.mark.parametrize("case", CATEGORICAL_CASES, ids=case_id)
def test_straight_through_one_hot_forward_is_argmax_and_gradient_is_the_soft_path(case):
    k, batch, tau = case
    logits = make_logits((*batch, k), seed=70 + k).requires_grad_()
    temperature = torch.tensor(tau, dtype=F64, requires_grad=True)
    weights = make_logits((8, *batch, k), seed=71)  # a random downstream linear function

    torch.manual_seed(9)
    y = ExpConcrete(temperature, logits).rsample((8,))
    hard = straight_through_one_hot(y)
    assert torch.equal(hard, F.one_hot(y.argmax(-1), k).to(F64))
    grads_st = torch.autograd.grad((weights * hard).sum(), (logits, temperature))

    torch.manual_seed(9)  # the same noise: the same soft sample
    y_again = ExpConcrete(temperature, logits).rsample((8,))
    assert torch.equal(y_again, y)
    grads_soft = torch.autograd.grad((weights * y_again.exp()).sum(), (logits, temperature))

    for g_st, g_soft in zip(grads_st, grads_soft, strict=True):
        assert torch.allclose(g_st, g_soft, rtol=1e-12, atol=1e-12)
    assert grads_soft[0].abs().max() > 1e-6  # the check has power: the gradient is not zero


@pytest.mark.parametrize("case", BINARY_CASES, ids=case_id)
def test_straight_through_binary_forward_is_threshold_and_gradient_is_the_soft_path(case):
    batch, tau = case
    logits = make_logits(batch, seed=80 + len(batch)).requires_grad_()
    temperature = torch.tensor(tau, dtype=F64, requires_grad=True)
    weights = make_logits((8, *batch), seed=81)

    torch.manual_seed(10)
    y = LogitBinaryConcrete(temperature, logits).rsample((8,))
    hard = straight_through_binary(y)
    assert torch.equal(hard, (y > 0).to(F64))
    grads_st = torch.autograd.grad((weights * hard).sum(), (logits, temperature))

    torch.manual_seed(10)
    y_again = LogitBinaryConcrete(temperature, logits).rsample((8,))
    assert torch.equal(y_again, y)
    soft = torch.sigmoid(y_again)
    grads_soft = torch.autograd.grad((weights * soft).sum(), (logits, temperature))

    for g_st, g_soft in zip(grads_st, grads_soft, strict=True):
        assert torch.allclose(g_st, g_soft, rtol=1e-12, atol=1e-12)
    assert grads_soft[1].abs() > 1e-8


# ------------------------------------------------------------------ low temperature in float32


def large_logits(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Logits of magnitude 20 with random signs, float32."""
    gen = torch.Generator().manual_seed(seed)
    return 20.0 * torch.randn(shape, generator=gen).sign()


@pytest.mark.parametrize("batch", [(), (3,), (2, 4)], ids=str)
def test_exp_concrete_is_finite_at_tau_0_01_in_float32(batch):
    logits = large_logits((*batch, 5), seed=90).requires_grad_()
    tau = torch.tensor(0.01, requires_grad=True)
    dist = ExpConcrete(tau, logits)
    torch.manual_seed(11)
    y = dist.rsample((64,))  # (64, *batch, 5)
    log_q = dist.log_prob(y)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all() and torch.isfinite(log_q).all()
    soft = y.exp()
    weights = torch.randn(soft.shape)
    for objective in (
        log_q.sum(),
        (weights * soft).sum(),
        (weights * straight_through_one_hot(y)).sum(),
    ):
        grads = torch.autograd.grad(objective, (logits, tau), retain_graph=True)
        assert all(torch.isfinite(g).all() for g in grads)

    # On the simplex the same samples underflow to exact zeros and the density is not finite: this
    # is why training scores the log-space sample.
    assert (soft == 0).any()
    simplex = RelaxedOneHotCategorical(tau.detach(), logits=logits.detach(), validate_args=False)
    assert not torch.isfinite(simplex.log_prob(soft.detach())).all()


@pytest.mark.parametrize("batch", [(), (3,), (2, 4)], ids=str)
def test_logit_binary_concrete_is_finite_at_tau_0_01_in_float32(batch):
    logits = large_logits(batch, seed=91).requires_grad_()
    tau = torch.tensor(0.01, requires_grad=True)
    dist = LogitBinaryConcrete(tau, logits)
    torch.manual_seed(12)
    y = dist.rsample((64,))
    log_q = dist.log_prob(y)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all() and torch.isfinite(log_q).all()
    weights = torch.randn(y.shape)
    objectives = (
        log_q.sum(),
        (weights * torch.sigmoid(y)).sum(),
        (weights * straight_through_binary(y)).sum(),
    )
    for objective in objectives:
        grads = torch.autograd.grad(objective, (logits, tau), retain_graph=True)
        assert all(torch.isfinite(g).all() for g in grads)


# ------------------------------------------------------------------------------------- shapes

SHAPE_CASES = [(3, ()), (4, (5,)), (2, (2, 3))]


@pytest.mark.parametrize("k, batch", SHAPE_CASES, ids=case_id)
def test_categorical_shapes_follow_torch(k, batch):
    logits = make_logits((*batch, k), seed=100)
    for ours, ref in [
        (
            ExpConcrete(0.5, logits),
            ExpRelaxedCategorical(torch.tensor(0.5, dtype=F64), logits=logits),
        ),
        (
            GumbelSoftmax(0.5, logits),
            RelaxedOneHotCategorical(torch.tensor(0.5, dtype=F64), logits=logits),
        ),
    ]:
        assert ours.batch_shape == ref.batch_shape == torch.Size(batch)
        assert ours.event_shape == ref.event_shape == torch.Size([k])
        for sample_shape in [(), (7,), (2, 3)]:
            value = ours.rsample(sample_shape)
            assert value.shape == ref.rsample(sample_shape).shape == (*sample_shape, *batch, k)
            assert ours.sample(sample_shape).shape == value.shape
            assert ours.log_prob(value).shape == (*sample_shape, *batch)
        # a single event broadcasts against the batch
        event = ours.rsample()[(0,) * len(batch)]  # (K,)
        broadcast = ours.log_prob(event)
        assert broadcast.shape == batch
        torch.testing.assert_close(broadcast, ours.log_prob(event.expand(*batch, k)))

        expanded = ours.expand((6, *batch))
        assert type(expanded) is type(ours)
        assert expanded.batch_shape == (6, *batch) and expanded.event_shape == (k,)
        value = expanded.rsample((2,))
        assert value.shape == (2, 6, *batch, k)
        torch.testing.assert_close(expanded.log_prob(value), ours.log_prob(value))

    assert ExpConcrete(0.5, logits).sample_discrete((7,)).shape == (7, *batch)
    independent = Independent(ExpConcrete(0.5, logits), len(batch))
    assert independent.batch_shape == () and independent.event_shape == (*batch, k)
    assert independent.log_prob(independent.rsample((3,))).shape == (3,)


@pytest.mark.parametrize("batch", [(), (5,), (2, 3)], ids=str)
def test_binary_shapes_follow_torch(batch):
    logits = make_logits(batch, seed=101)
    tau = torch.tensor(0.5, dtype=F64)
    for ours, ref in [
        (LogitBinaryConcrete(tau, logits), LogitRelaxedBernoulli(tau, logits=logits)),
        (BinaryConcrete(tau, logits), RelaxedBernoulli(tau, logits=logits)),
    ]:
        assert ours.batch_shape == ref.batch_shape == torch.Size(batch)
        assert ours.event_shape == ref.event_shape == torch.Size([])
        for sample_shape in [(), (7,), (2, 3)]:
            value = ours.rsample(sample_shape)
            assert value.shape == ref.rsample(sample_shape).shape == (*sample_shape, *batch)
            assert ours.log_prob(value).shape == (*sample_shape, *batch)
        expanded = ours.expand((6, *batch))
        assert type(expanded) is type(ours)
        assert expanded.batch_shape == (6, *batch)
        value = expanded.rsample((2,))
        assert value.shape == (2, 6, *batch)
        torch.testing.assert_close(expanded.log_prob(value), ours.log_prob(value))
    assert LogitBinaryConcrete(tau, logits).sample_discrete((7,)).shape == (7, *batch)


def test_expand_keeps_a_batched_temperature():
    tau = torch.tensor([0.2, 1.0, 3.0], dtype=F64)
    logits = make_logits((3, 4), seed=102)
    dist = ExpConcrete(tau, logits).expand((2, 3))
    assert dist.temperature.shape == (2, 3)
    y = dist.rsample((5,))
    torch.testing.assert_close(dist.log_prob(y), ExpConcrete(tau, logits).log_prob(y))
    binary = LogitBinaryConcrete(tau, logits[:, 0]).expand((2, 3))
    assert binary.temperature.shape == (2, 3)


def test_invalid_parameters_raise_value_error():
    logits = torch.zeros(3)
    for cls in (ExpConcrete, GumbelSoftmax, LogitBinaryConcrete, BinaryConcrete):
        with pytest.raises(ValueError):
            cls(torch.tensor(-1.0), logits, validate_args=True)
        with pytest.raises(ValueError):
            cls(torch.tensor(0.0), logits, validate_args=True)
    with pytest.raises(ValueError):
        ExpConcrete(1.0, torch.tensor(0.0))


# ---------------------------------------------------------------------------------- gradcheck


def test_exp_concrete_log_prob_gradcheck():
    logits = make_logits((2, 4), seed=110).requires_grad_()
    tau = torch.tensor([0.4, 1.7], dtype=F64, requires_grad=True)
    torch.manual_seed(13)
    value = ExpConcrete(tau, logits).rsample((3,)).detach().requires_grad_()

    def log_prob(logits, tau, value):
        return ExpConcrete(tau, logits).log_prob(value)

    assert gradcheck(log_prob, (logits, tau, value))


def test_logit_binary_concrete_log_prob_gradcheck():
    logits = make_logits((2, 3), seed=111).requires_grad_()
    tau = torch.tensor(0.6, dtype=F64, requires_grad=True)
    torch.manual_seed(14)
    value = LogitBinaryConcrete(tau, logits).rsample((4,)).detach().requires_grad_()

    def log_prob(logits, tau, value):
        return LogitBinaryConcrete(tau, logits).log_prob(value)

    assert gradcheck(log_prob, (logits, tau, value))


@pytest.mark.parametrize("cls", [ExpConcrete, LogitBinaryConcrete])
def test_rsample_gradcheck_with_fixed_noise(cls):
    shape = (2, 3) if cls is ExpConcrete else (3,)
    logits = make_logits(shape, seed=112).requires_grad_()
    tau = torch.tensor(0.7, dtype=F64, requires_grad=True)

    def rsample(logits, tau):
        with torch.random.fork_rng():
            torch.manual_seed(15)
            return cls(tau, logits).rsample((4,))

    assert gradcheck(rsample, (logits, tau))


# -------------------------------------------------- gradient estimators against exact gradients

N_GRAD = 100_000


def per_sample_pathwise_grads(cls, logits, tau: float, f, n: int):
    """Per-sample pathwise gradients of ``f(sample)`` w.r.t. logits and temperature, a leaf a draw.

    Returns (n, *logits.shape) and (n, *batch shape).
    """
    event_dims = 1 if cls is ExpConcrete else 0
    logits_rep = logits.expand(n, *logits.shape).clone().requires_grad_()
    tau_rep = torch.full((n, *logits.shape[: logits.dim() - event_dims]), tau, dtype=F64)
    tau_rep.requires_grad_()
    y = cls(tau_rep, logits_rep).rsample()
    f(y).sum().backward()
    return logits_rep.grad, tau_rep.grad


def assert_within_4_se(samples: torch.Tensor, exact: torch.Tensor) -> None:
    """Monte Carlo mean of per-sample ``samples`` (n, ...) within 4 standard errors of ``exact``."""
    mean = samples.mean(0)
    se = samples.std(0) / math.sqrt(samples.shape[0])
    assert ((mean - exact).abs() <= 4 * se).all(), (mean, exact, se)


def binary_expectation(logit: float, tau: float) -> float:
    """``E[sigmoid(Y)^2]`` for ``Y ~ Logistic(logit / tau, 1 / tau)`` by quadrature."""

    def integrand(y: float) -> float:
        return stats.logistic.pdf(y, loc=logit / tau, scale=1 / tau) * special.expit(y) ** 2

    centre = logit / tau
    return (
        integrate.quad(integrand, -np.inf, centre, epsabs=1e-13, epsrel=1e-13)[0]
        + integrate.quad(integrand, centre, np.inf, epsabs=1e-13, epsrel=1e-13)[0]
    )


@pytest.mark.parametrize("logit, tau", [(0.3, 0.5), (-1.0, 1.0), (1.5, 2.0)])
def test_binary_pathwise_gradient_matches_quadrature(logit, tau):
    # Exact gradient: central differences (h = 1e-4, error ~1e-8) of the quadrature of
    # E[f(sigmoid(Y))], f(x) = x^2, under scipy's logistic density. Two components at 4 SE:
    # false-failure rate 1.3e-4 per case.
    h = 1e-4
    exact_logit = (binary_expectation(logit + h, tau) - binary_expectation(logit - h, tau)) / (
        2 * h
    )
    exact_tau = (binary_expectation(logit, tau + h) - binary_expectation(logit, tau - h)) / (2 * h)
    torch.manual_seed(16)
    g_logit, g_tau = per_sample_pathwise_grads(
        LogitBinaryConcrete,
        torch.tensor(logit, dtype=F64),
        tau,
        lambda y: torch.sigmoid(y) ** 2,
        N_GRAD,
    )
    assert_within_4_se(g_logit, torch.tensor(exact_logit, dtype=F64))
    assert_within_4_se(g_tau, torch.tensor(exact_tau, dtype=F64))
    assert abs(exact_logit) > 10 * float(g_logit.std()) / math.sqrt(N_GRAD)  # the test has power


CATEGORICAL_F_WEIGHTS = torch.tensor([1.0, 2.0, -1.5], dtype=F64)


def categorical_f(y: torch.Tensor) -> torch.Tensor:
    """``f(x) = sum_k c_k x_k^2`` of the simplex point ``x = exp(y)``: (..., 3) -> (...)."""
    return (CATEGORICAL_F_WEIGHTS * y.exp() ** 2).sum(-1)


@pytest.mark.parametrize("tau, step", [(0.5, 0.25), (1.0, 0.25)])
def test_categorical_pathwise_gradient_matches_quadrature(tau, step):
    # Exact gradient of E[f(X)], X ~ Concrete(tau, logits) on the 2-simplex: autograd through a
    # 2-D trapezoid rule in u-coordinates with torch's (independent) ExpRelaxedCategorical density,
    # exp(log p_Y(log x)) = p_X(x) x1 x2 x3. Four components at 4 SE: false-failure rate 2.5e-4.
    base = torch.tensor([0.5, -1.0, 1.2], dtype=F64)
    logits = base.clone().requires_grad_()
    temperature = torch.tensor(tau, dtype=F64, requires_grad=True)
    x, area = simplex_grid(tau, step)
    density = ExpRelaxedCategorical(temperature, logits=logits).log_prob(x.log()).exp()
    assert float(density.detach().sum() * area) == pytest.approx(1.0, abs=1e-9)
    expectation = (density * categorical_f(x.log())).sum() * area
    exact_logits, exact_tau = torch.autograd.grad(expectation, (logits, temperature))

    torch.manual_seed(17)
    g_logits, g_tau = per_sample_pathwise_grads(ExpConcrete, base, tau, categorical_f, N_GRAD)
    assert_within_4_se(g_logits, exact_logits)
    assert_within_4_se(g_tau, exact_tau)
    assert exact_logits.abs().max() > 10 * float(g_logits.std(0).max()) / math.sqrt(N_GRAD)


# A small discrete latent space: N = 2 variables of K = 3 classes, 9 states.
DISCRETE_LOGITS = torch.tensor([[1.0, -0.5, 0.0], [0.3, 0.8, -1.2]], dtype=F64)
INTERACTION = torch.tensor([[2.0, -1.0, 0.5], [-1.5, 1.0, 3.0], [0.0, 2.5, -2.0]], dtype=F64)


def discrete_f(x: torch.Tensor) -> torch.Tensor:
    """A non-linear function of (relaxed) one-hot latents: (..., 2, 3) -> (...)."""
    pair = torch.einsum("...i,ij,...j->...", x[..., 0, :], INTERACTION, x[..., 1, :])
    return pair**2 + (x[..., 0, :] * torch.tensor([1.0, -2.0, 0.5], dtype=F64)).sum(-1)


def exact_discrete_gradient() -> torch.Tensor:
    """``d/d logits sum_z q(z) f(z)`` by enumerating the 9 states: (2, 3)."""
    logits = DISCRETE_LOGITS.clone().requires_grad_()
    log_q = torch.log_softmax(logits, -1)  # (2, 3)
    eye = torch.eye(3, dtype=F64)
    states = torch.stack(
        [torch.stack([eye[i], eye[j]]) for i in range(3) for j in range(3)]
    )  # (9, 2, 3)
    q = (states * log_q).sum((-2, -1)).exp()  # (9,)
    assert float(q.detach().sum()) == pytest.approx(1.0, abs=1e-12)
    (grad,) = torch.autograd.grad((q * discrete_f(states)).sum(), logits)
    return grad


def test_score_function_estimator_is_unbiased_for_the_exact_discrete_gradient():
    # Six components at 4 SE: false-failure rate 3.8e-4.
    exact = exact_discrete_gradient()
    torch.manual_seed(18)
    logits = DISCRETE_LOGITS.expand(N_GRAD, 2, 3).clone().requires_grad_()
    z = OneHotCategorical(logits=logits).sample()  # (n, 2, 3) hard
    log_q = OneHotCategorical(logits=logits).log_prob(z).sum(-1)  # (n,)
    (discrete_f(z) * log_q).sum().backward()  # per-sample f(z) d log q(z)
    assert_within_4_se(logits.grad, exact)


def gumbel_softmax_bias(tau: float, seed: int) -> tuple[float, float]:
    """Estimated ``|E[GS gradient] - exact discrete gradient|`` (L2) and the L2 norm of its SEs."""
    torch.manual_seed(seed)
    g_logits, _ = per_sample_pathwise_grads(
        ExpConcrete, DISCRETE_LOGITS, tau, lambda y: discrete_f(y.exp()), 2 * N_GRAD
    )
    bias = g_logits.mean(0) - exact_discrete_gradient()
    se = g_logits.std(0) / math.sqrt(g_logits.shape[0])
    return float(bias.norm()), float(se.norm())


def test_gumbel_softmax_bias_shrinks_as_temperature_decreases():
    # With every component of both mean estimates within 4 SE of its expectation (false-failure
    # rate 12 x 6.3e-5 = 7.6e-4), |bias(0.1)| <= b_low + 4 se_low and
    # |bias(2)| >= b_high - 4 se_high, so the assertion compares the true biases.
    b_low, se_low = gumbel_softmax_bias(0.1, seed=19)
    b_high, se_high = gumbel_softmax_bias(2.0, seed=20)
    assert b_low + 4 * se_low < b_high - 4 * se_high, (b_low, se_low, b_high, se_high)


# ------------------------------------------------------------------------ the hard samplers
@pytest.mark.parametrize("kind", ["binary", "categorical"])
def test_hard_distributions_draw_with_the_probabilities_of_torch(kind):
    """``HardBernoulli`` and ``HardOneHotCategorical`` (the package's one sampler of each kind, which the
    posteriors' ``sample`` uses in evaluation): samples shaped as torch's, valid, and each entry's frequency
    over 4 x 50,000 draws (``sample_shape`` of two dimensions) against torch.distributions' probability,
    z-tests at family-wise rate 1e-4; a class of probability 0 is never drawn. ``log_prob`` is torch's."""
    from discrete_vae.distributions import HardBernoulli, HardOneHotCategorical

    gen = torch.Generator().manual_seed(12)
    shape = (3, 4) if kind == "binary" else (3, 2, 5)
    logits = 2 * torch.randn(shape, dtype=torch.float64, generator=gen)
    if kind == "categorical":
        logits[0, 0, 2] = -torch.inf
    ours, theirs = ((HardBernoulli(logits=logits), Bernoulli(logits=logits)) if kind == "binary"
                    else (HardOneHotCategorical(logits=logits), OneHotCategorical(logits=logits)))
    torch.manual_seed(0)
    z = ours.sample((4, 50_000))
    assert z.shape == theirs.sample((4, 50_000)).shape and set(z.unique().tolist()) <= {0.0, 1.0}
    probs = theirs.probs
    freq = z.flatten(0, 1).mean(0)
    stderr = (probs * (1 - probs) / 200_000).sqrt()
    bound = stats.norm.isf(1e-4 / 2 / probs.numel())
    assert torch.all((freq - probs).abs() <= bound * stderr + 1e-12), (freq - probs) / stderr
    if kind == "categorical":
        assert torch.all(z.sum(-1) == 1) and z[:, :, 0, 0, 2].sum() == 0
    torch.testing.assert_close(ours.log_prob(z[0, :10]), theirs.log_prob(z[0, :10]))
    assert ours.sample().shape == theirs.sample().shape
