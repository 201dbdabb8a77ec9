"""KL terms of the Concrete latent families and the priors they use, against independent references.

- Analytic KL (``kl="analytic"``): exact enumeration of every latent state for tiny ``N, K``, a
  Monte Carlo average over hard posterior samples, non-negativity and zero at ``q = p``.
- Relaxed KL (``kl="relaxed"``): the family's per-sample ``log_q - log_p`` averages to the KL
  between the two relaxed densities, estimated independently (torch's ``ExpRelaxedCategorical``;
  for the binary case, 1-D quadrature with scipy's logistic density).
- Priors: ``log_prob`` against ``torch.distributions``, ``sample`` shapes and law, ``relaxed()``.

Statistical checks use fixed seeds (deterministic runs); each states its false-failure rate, the
probability that a correct implementation fails for a seed drawn at random. A two-sided 4 SE check
has a false-failure rate of 6.3e-5 per component (normal tail).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch.distributions import Bernoulli, Categorical
from torch.distributions.relaxed_bernoulli import LogitRelaxedBernoulli
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical

from discrete_vae.posteriors import ConcreteBinary, ConcreteCategorical, LatentSpec, build_posterior
from discrete_vae.priors import BernoulliPrior, CategoricalPrior, build_prior

F64 = torch.float64
BATCH = 3

# (N variables, K classes, prior kind)
CATEGORICAL_CASES = [(1, 4, "uniform"), (2, 3, "uniform"), (2, 3, "learnable"), (3, 2, "learnable")]
# (N variables, prior kind)
BINARY_CASES = [(1, "uniform"), (3, "uniform"), (4, "learnable")]


def case_id(case) -> str:
    return "-".join(map(str, case)) if isinstance(case, tuple) else str(case)


def make_logits(shape: tuple[int, ...], seed: int, scale: float = 1.5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(shape, generator=gen, dtype=F64)


def make_prior(kind: str, n: int, k: int, binary: bool, seed: int = 0):
    """The registered prior in float64; a learnable one gets random (non-uniform) logits."""
    prior = build_prior(kind, n, k, binary).double()
    if kind == "learnable":
        with torch.no_grad():
            prior.logits.copy_(make_logits(tuple(prior.logits.shape), seed=seed))
    return prior


def one_hot_states(n: int, k: int) -> torch.Tensor:
    """Every joint state of ``n`` one-hot ``k``-class variables: (k^n, n, k)."""
    eye = torch.eye(k, dtype=F64)
    return torch.stack([eye[list(idx)] for idx in itertools.product(range(k), repeat=n)])


def binary_states(n: int) -> torch.Tensor:
    """Every joint state of ``n`` binary variables: (2^n, n)."""
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=F64)


def enumerated_categorical_kl(params: torch.Tensor, prior: CategoricalPrior) -> torch.Tensor:
    """``sum_z q(z) [log q(z) - log p(z)]`` over all ``K^N`` states: params (B, N, K) -> (B,)."""
    n, k = params.shape[-2:]
    states = one_hot_states(n, k)  # (M, N, K)
    log_q = (states[:, None] * torch.log_softmax(params, -1)).sum((-2, -1))  # (M, B)
    log_p = (states * torch.log_softmax(prior.logits, -1)).sum((-2, -1))  # (M,)
    return (log_q.exp() * (log_q - log_p[:, None])).sum(0)


def enumerated_bernoulli_kl(params: torch.Tensor, prior: BernoulliPrior) -> torch.Tensor:
    """The same over all ``2^N`` binary states: params (B, N) -> (B,)."""
    states = binary_states(params.shape[-1])[:, None]  # (M, 1, N)
    log_q = (states * params - torch.nn.functional.softplus(params)).sum(-1)  # (M, B)
    log_p = (states * prior.logits - torch.nn.functional.softplus(prior.logits)).sum(-1)
    return (log_q.exp() * (log_q - log_p)).sum(0)


def assert_within_4_se(samples: torch.Tensor, expected: torch.Tensor, extra_se=0.0) -> None:
    """Mean of ``samples`` (S, ...) within 4 SE (combined with ``extra_se``) of ``expected``."""
    mean = samples.mean(0)
    se = torch.sqrt(samples.var(0) / samples.shape[0] + torch.as_tensor(extra_se) ** 2)
    assert ((mean - expected).abs() <= 4 * se).all(), (mean, expected, se)


# ------------------------------------------------------------------------------ analytic KL


@pytest.mark.parametrize("case", CATEGORICAL_CASES, ids=case_id)
def test_categorical_analytic_kl_matches_enumeration_with_gradients(case):
    n, k, kind = case
    prior = make_prior(kind, n, k, binary=False, seed=n * k)
    family = build_posterior("categorical", LatentSpec(n, k))
    assert isinstance(family, ConcreteCategorical) and family.kl == "analytic"
    params = make_logits((BATCH, n * k), seed=1).requires_grad_()
    latent = family.relaxed(params, prior, torch.tensor(0.5, dtype=F64), n_samples=2)
    assert latent.log_q is None and latent.kl.shape == (BATCH,)

    expected = enumerated_categorical_kl(params.view(BATCH, n, k), prior)
    torch.testing.assert_close(latent.kl, expected, rtol=1e-10, atol=1e-12)
    assert_same_gradients(latent.kl, expected, [params] + ([prior.logits] if kind == "learnable" else []))


def assert_same_gradients(got: torch.Tensor, want: torch.Tensor, leaves: list) -> None:
    """The gradients of ``got.sum()`` and ``want.sum()`` with respect to ``leaves`` agree."""
    grads = zip(torch.autograd.grad(got.sum(), leaves), torch.autograd.grad(want.sum(), leaves), strict=True)
    for g, w in grads:
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", BINARY_CASES, ids=case_id)
def test_bernoulli_analytic_kl_matches_enumeration_with_gradients(case):
    n, kind = case
    prior = make_prior(kind, n, 2, binary=True, seed=n)
    family = build_posterior("categorical", LatentSpec(n, 2, binary=True))
    assert isinstance(family, ConcreteBinary) and family.kl == "analytic"
    params = make_logits((BATCH, n), seed=2).requires_grad_()
    latent = family.relaxed(params, prior, torch.tensor(0.5, dtype=F64), n_samples=2)

    expected = enumerated_bernoulli_kl(params, prior)
    torch.testing.assert_close(latent.kl, expected, rtol=1e-10, atol=1e-12)
    assert_same_gradients(latent.kl, expected, [params] + ([prior.logits] if kind == "learnable" else []))


@pytest.mark.parametrize("binary", [False, True], ids=["categorical", "bernoulli"])
def test_analytic_kl_matches_monte_carlo_over_hard_samples(binary):
    # BATCH = 3 components at 4 SE: false-failure rate 1.9e-4 per case.
    n, k = (3, 2) if binary else (2, 4)
    prior = make_prior("learnable", n, k, binary=binary, seed=3)
    family = build_posterior("categorical", LatentSpec(n, k, binary=binary))
    params = make_logits((BATCH, n if binary else n * k), seed=4)
    kl = family.relaxed(params, prior, torch.tensor(1.0, dtype=F64), n_samples=1).kl

    torch.manual_seed(5)
    q = family.discrete_posterior(params)
    z = q.sample((20_000,))  # (S, B, *event)
    log_ratio = q.log_prob(z) - prior.log_prob(z)  # (S, B)
    assert_within_4_se(log_ratio, kl)


@pytest.mark.parametrize("binary", [False, True], ids=["categorical", "bernoulli"])
def test_analytic_kl_is_nonnegative_and_zero_iff_posterior_is_prior(binary):
    n, k = (5, 2) if binary else (4, 3)
    spec = LatentSpec(n, k, binary=binary)
    family = build_posterior("categorical", spec)
    tau = torch.tensor(1.0, dtype=F64)
    for kind in ("uniform", "learnable"):
        prior = make_prior(kind, n, k, binary=binary, seed=6)
        params = make_logits((64, family.param_dim), seed=7, scale=3.0)
        kl = family.relaxed(params, prior, tau, n_samples=1).kl
        assert (kl > 0).all()  # random posteriors differ from the prior
        # posterior = prior (categorical logits are defined up to a shift per variable)
        same = prior.logits.detach().expand(2, *prior.logits.shape).clone()
        if not binary:
            same = same + torch.tensor([[[0.0]], [[2.5]]], dtype=F64)
        kl_same = family.relaxed(same.flatten(1), prior, tau, n_samples=1).kl
        torch.testing.assert_close(kl_same, torch.zeros(2, dtype=F64), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------- relaxed KL


@pytest.mark.parametrize(
    "n, k, tau, prior_tau", [(2, 3, 0.5, None), (1, 4, 1.0, 0.5), (3, 2, 2.0, None)]
)
def test_relaxed_categorical_kl_matches_independent_monte_carlo(n, k, tau, prior_tau):
    # Two independent means per example, BATCH = 3 at 4 combined SE: false-failure rate 1.9e-4.
    prior = make_prior("learnable", n, k, binary=False, seed=8)
    family = build_posterior("categorical", LatentSpec(n, k), kl="relaxed", prior_temperature=prior_tau)
    params = make_logits((BATCH, n * k), seed=9)
    torch.manual_seed(10)
    latent = family.relaxed(params, prior, torch.tensor(tau, dtype=F64), n_samples=20_000)
    assert latent.kl is None and latent.log_q.shape == latent.log_p.shape == (20_000, BATCH)
    family_ratio = latent.log_q - latent.log_p  # (S, B)

    # independent estimate: torch's ExpRelaxedCategorical, another seed
    torch.manual_seed(11)
    q = ExpRelaxedCategorical(torch.tensor(tau, dtype=F64), logits=params.view(BATCH, n, k))
    p_tau = torch.tensor(tau if prior_tau is None else prior_tau, dtype=F64)
    p = ExpRelaxedCategorical(p_tau, logits=prior.logits.detach())
    y = q.rsample((20_000,))  # (S, B, N, K)
    ref_ratio = (q.log_prob(y) - p.log_prob(y)).sum(-1)  # (S, B)
    ref_se = ref_ratio.std(0) / math.sqrt(ref_ratio.shape[0])
    assert_within_4_se(family_ratio, ref_ratio.mean(0), extra_se=ref_se)


def logistic_kl(q_logit: float, q_tau: float, p_logit: float, p_tau: float) -> float:
    """KL between two LogitBinaryConcrete densities, ``int q log(q / p) dy``, by quadrature."""
    q = stats.logistic(loc=q_logit / q_tau, scale=1 / q_tau)
    p = stats.logistic(loc=p_logit / p_tau, scale=1 / p_tau)

    def integrand(y: float) -> float:
        log_q, log_p = q.logpdf(y), p.logpdf(y)
        return math.exp(log_q) * (log_q - log_p)

    centre = q_logit / q_tau
    return (
        integrate.quad(integrand, -np.inf, centre)[0] + integrate.quad(integrand, centre, np.inf)[0]
    )


@pytest.mark.parametrize("n, tau, prior_tau", [(1, 0.5, None), (3, 1.0, 0.5), (2, 2.0, 1.0)])
def test_relaxed_binary_kl_matches_quadrature(n, tau, prior_tau):
    # BATCH = 3 components at 4 SE: false-failure rate 1.9e-4 per case.
    prior = make_prior("learnable", n, 2, binary=True, seed=12)
    family = build_posterior(
        "categorical", LatentSpec(n, 2, binary=True), kl="relaxed", prior_temperature=prior_tau
    )
    params = make_logits((BATCH, n), seed=13)
    torch.manual_seed(14)
    latent = family.relaxed(params, prior, torch.tensor(tau, dtype=F64), n_samples=20_000)
    p_tau = tau if prior_tau is None else prior_tau
    prior_logits = prior.logits.detach()
    exact = torch.tensor(
        [
            sum(
                logistic_kl(float(params[b, i]), tau, float(prior_logits[i]), p_tau)
                for i in range(n)
            )
            for b in range(BATCH)
        ],
        dtype=F64,
    )
    assert (exact > 0).all()
    assert_within_4_se(latent.log_q - latent.log_p, exact)


@pytest.mark.parametrize("binary", [False, True], ids=["categorical", "bernoulli"])
def test_relaxed_kl_is_zero_sample_by_sample_when_posterior_is_prior(binary):
    n, k = (3, 2) if binary else (2, 3)
    prior = make_prior("learnable", n, k, binary=binary, seed=15)
    family = build_posterior("categorical", LatentSpec(n, k, binary=binary), kl="relaxed")
    params = prior.logits.detach().flatten().expand(BATCH, -1)  # q = p at the same temperature
    torch.manual_seed(16)
    latent = family.relaxed(params, prior, torch.tensor(0.7, dtype=F64), n_samples=50)
    torch.testing.assert_close(latent.log_q, latent.log_p, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------ priors


@pytest.mark.parametrize("case", CATEGORICAL_CASES, ids=case_id)
def test_categorical_prior_log_prob_matches_torch_and_normalises(case):
    n, k, kind = case
    prior = make_prior(kind, n, k, binary=False, seed=17)
    states = one_hot_states(n, k)  # (M, N, K)
    expected = Categorical(logits=prior.logits).log_prob(states.argmax(-1)).sum(-1)
    torch.testing.assert_close(prior.log_prob(states), expected, rtol=1e-12, atol=1e-12)
    assert float(prior.log_prob(states).detach().logsumexp(0)) == pytest.approx(0.0, abs=1e-12)
    batched = states.view(-1, 1, n, k).expand(-1, 2, n, k)  # (M, 2, N, K)
    assert prior.log_prob(batched).shape == (states.shape[0], 2)


@pytest.mark.parametrize("case", BINARY_CASES, ids=case_id)
def test_bernoulli_prior_log_prob_matches_torch_and_normalises(case):
    n, kind = case
    prior = make_prior(kind, n, 2, binary=True, seed=18)
    states = binary_states(n)  # (M, N)
    expected = Bernoulli(logits=prior.logits).log_prob(states).sum(-1)
    torch.testing.assert_close(prior.log_prob(states), expected, rtol=1e-12, atol=1e-12)
    assert float(prior.log_prob(states).detach().logsumexp(0)) == pytest.approx(0.0, abs=1e-12)


def test_registered_priors_have_the_declared_kind():
    assert isinstance(build_prior("uniform", 2, 3, False), CategoricalPrior)
    assert isinstance(build_prior("uniform", 4, 2, True), BernoulliPrior)
    for binary in (False, True):
        assert list(build_prior("uniform", 2, 3, binary).parameters()) == []
        learnable = list(build_prior("learnable", 2, 3, binary).parameters())
        assert len(learnable) == 1 and learnable[0].requires_grad
        assert torch.all(build_prior("uniform", 2, 3, binary).logits == 0)


def test_prior_samples_have_event_shapes_and_the_prior_law():
    # Chi-square over N = 2 independent variables, alpha = 1e-3 each: false-failure rate 2e-3.
    prior = make_prior("learnable", 2, 3, binary=False, seed=19)
    torch.manual_seed(20)
    z = prior.sample(100_000)
    assert z.shape == (100_000, 2, 3)
    assert torch.all(z.sum(-1) == 1) and set(z.unique().tolist()) == {0.0, 1.0}
    probs = torch.softmax(prior.logits.detach(), -1)
    for i in range(2):
        counts = z[:, i].sum(0).numpy()
        assert stats.chisquare(counts, 100_000 * probs[i].numpy()).pvalue > 1e-3

    binary = make_prior("learnable", 4, 2, binary=True, seed=21)
    b = binary.sample(7)
    assert b.shape == (7, 4) and set(b.unique().tolist()) <= {0.0, 1.0}


def test_categorical_prior_relaxed_matches_torch_per_variable():
    prior = make_prior("learnable", 3, 4, binary=False, seed=22)
    relaxed = prior.relaxed(0.6)
    assert relaxed.batch_shape == () and relaxed.event_shape == (3, 4)
    torch.manual_seed(23)
    y = relaxed.rsample((5, 2))  # (5, 2, N, K)
    assert y.shape == (5, 2, 3, 4)
    expected = sum(
        ExpRelaxedCategorical(torch.tensor(0.6, dtype=F64), logits=prior.logits[i]).log_prob(
            y[..., i, :]
        )
        for i in range(3)
    )
    torch.testing.assert_close(relaxed.log_prob(y), expected, rtol=1e-10, atol=1e-10)


def test_bernoulli_prior_relaxed_matches_torch():
    prior = make_prior("learnable", 4, 2, binary=True, seed=24)
    relaxed = prior.relaxed(torch.tensor(0.3, dtype=F64))
    assert relaxed.batch_shape == () and relaxed.event_shape == (4,)
    torch.manual_seed(25)
    y = relaxed.rsample((6,))
    assert y.shape == (6, 4)
    reference = LogitRelaxedBernoulli(torch.tensor(0.3, dtype=F64), logits=prior.logits)
    expected = reference.log_prob(y).sum(-1)
    torch.testing.assert_close(relaxed.log_prob(y), expected, rtol=1e-10, atol=1e-10)
