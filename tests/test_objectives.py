"""Objectives: the importance-weighted bound, the relaxed ELBO and IW bound a model trains, and an
end-to-end check of the discrete evaluation on a model small enough to enumerate (N = 2 latents of
K = 3 classes: 9 states).

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
import torch.nn.functional as F
from scipy.special import logsumexp

from discrete_vae.errors import ConfigError
from discrete_vae.estimators import build_estimator
from discrete_vae.evaluate import evaluate, iw_log_likelihood
from discrete_vae.models import DiscreteVAE
from discrete_vae.networks import MLPConfig
from discrete_vae.objectives import iw_bound
from discrete_vae.posteriors import LatentSample, LatentSpec, Posterior, build_posterior
from discrete_vae.priors import build_prior

F64 = torch.float64

# (S, B, scale, offset) of random log weights: moderate, wide, and far from zero in both directions
WEIGHT_CASES = [(1, 3, 1.0, 0.0), (5, 4, 3.0, -100.0), (64, 2, 50.0, -1e4), (1000, 3, 5.0, 700.0)]


def case_id(case) -> str:
    return "-".join(map(str, case))


def log_weights(s: int, b: int, scale: float, offset: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return offset + scale * torch.randn(s, b, generator=gen, dtype=F64)


# ------------------------------------------------------------------------------------ iw_bound


@pytest.mark.parametrize("case", WEIGHT_CASES, ids=case_id)
def test_iw_bound_is_log_mean_exp(case):
    log_w = log_weights(*case)
    expected = logsumexp(log_w.numpy(), axis=0) - np.log(log_w.shape[0])  # float64 reference
    got = iw_bound(log_w)
    assert got.shape == (log_w.shape[1],) and torch.isfinite(got).all()
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-13, atol=1e-12)


def test_iw_bound_with_one_sample_is_the_log_weight():
    log_w = torch.tensor([[-3.25, 0.0, 812.5, -1e4]], dtype=F64)
    assert torch.equal(iw_bound(log_w), log_w[0])


@pytest.mark.parametrize("case", WEIGHT_CASES, ids=case_id)
def test_iw_bound_is_at_least_the_mean_log_weight(case):
    # Jensen: log mean exp >= mean log, with equality iff all weights are equal
    log_w = log_weights(*case, seed=1)
    bound, mean = iw_bound(log_w), log_w.mean(0)
    tol = 1e-12 * (1 + mean.abs())
    assert (bound >= mean - tol).all()
    if log_w.shape[0] > 1:
        assert (bound > mean).all()
    equal = torch.full_like(log_w, -7.5)
    torch.testing.assert_close(iw_bound(equal), equal[0], rtol=1e-14, atol=1e-12)


@pytest.mark.parametrize("s, m", [(2, 1), (4, 2), (6, 3), (6, 5)])
def test_iw_bound_is_at_least_the_average_bound_of_its_subsets(s, m):
    # The deterministic step of Burda et al. (2016), Theorem 1: log of the mean of S weights is at
    # least the average, over all size-m subsets, of log of the subset mean (Jensen). In
    # expectation it gives E[L_S] >= E[L_m].
    log_w = log_weights(s, 5, 2.0, -3.0, seed=2)
    subsets = [iw_bound(log_w[list(idx)]) for idx in itertools.combinations(range(s), m)]
    assert (iw_bound(log_w) >= torch.stack(subsets).mean(0) - 1e-12).all()


def test_expected_iw_bound_increases_with_s_towards_log_mean_weight():
    # Exact expectations over every S-tuple of a 4-state weight distribution.
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=F64)
    log_w = torch.tensor([-2.0, 0.5, -1.0, 3.0], dtype=F64)
    log_mean_w = float((probs.log() + log_w).logsumexp(0))

    def expected_bound(s: int) -> float:
        tuples = torch.tensor(list(itertools.product(range(4), repeat=s)))  # (4^s, s)
        weight = probs[tuples].prod(-1)  # (4^s,)
        return float((weight * iw_bound(log_w[tuples].T)).sum())

    bounds = [expected_bound(s) for s in range(1, 6)]
    assert bounds[0] == pytest.approx(float((probs * log_w).sum()), abs=1e-12)  # S = 1: E[log w]
    assert all(a < b for a, b in zip(bounds, bounds[1:], strict=False))
    assert bounds[-1] < log_mean_w


# ------------------------------------------------------------------- the relaxed objective, end to end
class FixedDraw(Posterior):
    """A posterior whose relaxation always draws the same :class:`LatentSample` (one latent, decoder input of
    width 1): the model's relaxed objective is then a known function of ``log_q``, ``log_p`` and ``kl``."""

    relaxations = {"relaxed": False}

    def __init__(self, latent: LatentSample):
        super().__init__()
        self.latent, self.param_dim, self.decoder_dim = latent, 1, 1

    def relaxed(self, params, prior, tau, n_samples, context=None, straight_through=False):
        assert n_samples == self.latent.z.shape[0]
        return self.latent

    def check_prior(self, prior) -> None:
        pass

    def check_relaxation(self, prior) -> None:  # its draw brings its own KL terms
        pass


class Logits(torch.nn.Module):
    """A decoder of Bernoulli logits ``l`` (S, B, 1) with ``log p(x = 1 | z) = log_px``, ignoring ``z``."""

    def __init__(self, log_px: torch.Tensor):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.logit(log_px.exp()).unsqueeze(-1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.logits


def relaxed_terms(log_px, latent, kl_weight=1.0, objective="elbo"):
    """The model's training terms with the draw ``latent`` and decoder log-likelihoods ``log_px`` (S, B)."""
    s, b = log_px.shape
    model = DiscreteVAE(1, FixedDraw(latent), build_prior("uniform", 1, 2, True),
                        encoder=torch.nn.Linear(1, 1), decoder=Logits(log_px),
                        estimator=build_estimator("relaxed")).double()
    return model, model(torch.ones(b, 1, dtype=F64), 1.0, s, kl_weight, objective)


def test_relaxed_elbo_with_analytic_kl():
    log_px = torch.tensor([[-1.0, -2.0], [-3.0, -4.0], [-2.0, -6.0]], dtype=F64)  # (S=3, B=2)
    kl = torch.tensor([0.5, 1.0], dtype=F64)
    _, terms = relaxed_terms(log_px, LatentSample(z=torch.zeros(3, 2, 1, dtype=F64), kl=kl))
    # rec = mean_s log_px = (-2, -4); objective = rec - kl = (-2.5, -5); loss = 3.75
    torch.testing.assert_close(terms.log_px, torch.tensor([-2.0, -4.0], dtype=F64))
    torch.testing.assert_close(terms.kl, kl)
    torch.testing.assert_close(terms.objective, torch.tensor([-2.5, -5.0], dtype=F64))
    assert float(terms.loss.detach()) == pytest.approx(3.75, abs=1e-12)


def test_relaxed_elbo_with_monte_carlo_kl():
    log_px = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]], dtype=F64)  # (S=2, B=2)
    log_q = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=F64)
    log_p = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=F64)
    latent = LatentSample(z=torch.zeros(2, 2, 1, dtype=F64), log_q=log_q, log_p=log_p)
    _, terms = relaxed_terms(log_px, latent)
    # kl = mean_s (log_q - log_p) = (1.5, 2.5); objective = (-2, -3) - kl = (-3.5, -5.5)
    torch.testing.assert_close(terms.kl, torch.tensor([1.5, 2.5], dtype=F64))
    torch.testing.assert_close(terms.objective, torch.tensor([-3.5, -5.5], dtype=F64))
    assert float(terms.loss.detach()) == pytest.approx(4.5, abs=1e-12)
    # the documented form: mean_s [log p(x|z_s) + log p(z_s) - log q(z_s|x)]
    torch.testing.assert_close(terms.objective, (log_px + log_p - log_q).mean(0))


def test_relaxed_elbo_gradients_reach_every_term():
    log_px = -torch.rand(4, 3, dtype=F64) - 0.1
    log_q = torch.randn(4, 3, dtype=F64, requires_grad=True)
    log_p = torch.randn(4, 3, dtype=F64, requires_grad=True)
    latent = LatentSample(torch.zeros(4, 3, 1, dtype=F64), log_q=log_q, log_p=log_p)
    model, terms = relaxed_terms(log_px, latent)
    terms.loss.backward()
    # loss = -mean_b mean_s (log_px + log_p - log_q): each entry has weight 1 / (S B) = 1 / 12
    for tensor, sign in ((log_p, -1), (log_q, 1)):
        torch.testing.assert_close(tensor.grad, torch.full((4, 3), sign / 12, dtype=F64))
    logits = model.decoder.logits.detach().squeeze(-1)  # d log p(x=1|l) / dl = sigmoid(-l)
    torch.testing.assert_close(model.decoder.logits.grad.squeeze(-1), -torch.sigmoid(-logits) / 12)


def test_relaxed_iw_is_the_logmeanexp_and_warmup_weights_the_prior_terms():
    torch.manual_seed(0)
    log_px, log_q, log_p = torch.randn(3, 5, 4, dtype=F64).unbind(0)
    log_px = -log_px.abs() - 0.1  # a log-likelihood of one pixel
    latent = LatentSample(torch.zeros(5, 4, 1, dtype=F64), log_q=log_q, log_p=log_p)
    _, terms = relaxed_terms(log_px, latent, kl_weight=0.3, objective="iw")
    torch.testing.assert_close(
        terms.objective, torch.logsumexp(log_px + 0.3 * (log_p - log_q), 0) - math.log(5)
    )
    _, elbo = relaxed_terms(log_px, latent, kl_weight=0.3)
    torch.testing.assert_close(elbo.objective, (log_px - 0.3 * (log_q - log_p)).mean(0))
    with pytest.raises(ConfigError, match="objective iw"):
        relaxed_terms(log_px, LatentSample(latent.z, kl=torch.zeros(4, dtype=F64)), objective="iw")


# ---------------------------------------------------------- end to end on an enumerable model

DATA = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=F64)  # all 16 x, D = 4
STATES = torch.stack(
    [torch.eye(3, dtype=F64)[[i, j]] for i, j in itertools.product(range(3), repeat=2)]
)  # (9, 2, 3): every latent state


def tiny_model() -> DiscreteVAE:
    """Gumbel-Softmax family, uniform prior, 8-unit MLPs; sharpened so q(z|x) is not p(z|x)."""
    torch.manual_seed(0)
    family = build_posterior("categorical", LatentSpec(2, 3))
    prior = build_prior("uniform", 2, 3, False)
    model = DiscreteVAE(4, family, prior, MLPConfig(hidden=(8,)), MLPConfig(hidden=(8,))).double()
    with torch.no_grad():  # a sharper likelihood: ELBO gaps up to 0.16 nats, chi2 <= 0.35
        model.decoder[-1].weight.mul_(3.0)
    return model.eval()


@torch.no_grad()
def exact_terms(model: DiscreteVAE) -> dict[str, torch.Tensor]:
    """Exact quantities by enumerating the 9 latent states, for every x in DATA: each (16,)."""
    logits = model.encoder(DATA).view(-1, 2, 3)  # (B, 2, 3)
    log_q = (STATES[:, None] * torch.log_softmax(logits, -1)).sum((-2, -1))  # (9, B)
    x_logits = model.decoder(STATES.flatten(1))  # (9, D)
    log_px_z = (DATA * x_logits[:, None] - F.softplus(x_logits[:, None])).sum(-1)  # (9, B)
    log_joint = log_px_z + math.log(1 / 9)  # uniform prior
    log_px = log_joint.logsumexp(0)  # (B,)
    log_w = log_joint - log_q  # (9, B)
    q = log_q.exp()
    elbo = (q * log_w).sum(0)
    log_posterior = log_joint - log_px
    return {
        "log_px": log_px,
        "elbo": elbo,
        "log_w_var": (q * (log_w - elbo) ** 2).sum(0),
        "chi2": (2 * log_posterior - log_q).exp().sum(0) - 1,  # chi^2(p(z|x) || q(z|x))
        "log_q": log_q,
        "log_w": log_w,
    }


def test_enumeration_is_consistent_with_the_model():
    model = tiny_model()
    exact = exact_terms(model)
    assert torch.allclose(exact["log_q"].logsumexp(0), torch.zeros(16, dtype=F64), atol=1e-12)
    assert (exact["log_px"] > exact["elbo"]).all()
    # the model's hard-sample log weights of given states are the enumerated ones
    torch.manual_seed(1)
    log_w, _ = model.discrete_log_weights(DATA, 50)  # (50, B) for z ~ q
    assert log_w.shape == (50, 16)
    on_support = (log_w[..., None] - exact["log_w"].T[None]).abs().min(-1).values  # (50, B)
    assert on_support.max() < 1e-10


def test_iw_bound_converges_to_the_exact_log_likelihood():
    # For large S the bound is ~ log p(x) + N(-chi2 / 2S, chi2 / S) (delta method), chi2 the
    # chi-square divergence of q(z|x) from p(z|x). 16 examples at 4 SD: false-failure rate 1e-3.
    s = 20_000
    model = tiny_model()
    exact = exact_terms(model)
    gap = exact["log_px"] - exact["elbo"]
    assert gap.max() > 0.1  # the bound has something to close: q is far from the posterior
    sd = (exact["chi2"] / s).sqrt()
    assert (4 * sd).max() < 0.02  # the tolerance below is the statistical one

    torch.manual_seed(2)
    bound, elbo, _ = iw_log_likelihood(model, DATA, samples=s)
    assert bound.shape == elbo.shape == (16,) and bound.dtype == F64
    assert ((bound - exact["log_px"]).abs() < 0.02).all(), (bound - exact["log_px"]).abs().max()
    assert (bound <= exact["log_px"] + 4 * sd).all()
    # the returned ELBO estimate is the mean log weight: 16 examples at 4 SE
    se = (exact["log_w_var"] / s).sqrt()
    assert ((elbo - exact["elbo"]).abs() <= 4 * se).all()
    assert (bound > elbo).all()


def test_small_s_iw_bound_is_below_log_likelihood_and_increases_with_s():
    # Exact E[L_S] for S = 1, 2, 3 by enumerating all 9^S sample tuples per example, then the mean
    # of 4000 independent L_3 estimates from iw_log_likelihood against it: 16 examples at 4 SE,
    # false-failure rate 1e-3.
    model = tiny_model()
    exact = exact_terms(model)
    expected = []
    for s in (1, 2, 3):
        tuples = torch.tensor(list(itertools.product(range(9), repeat=s)))  # (9^s, s)
        weight = exact["log_q"][tuples].sum(1).exp()  # (9^s, B)
        bounds = torch.stack([iw_bound(exact["log_w"][t]) for t in tuples])  # (9^s, B)
        expected.append((weight * bounds).sum(0))
    torch.testing.assert_close(expected[0], exact["elbo"])
    assert (expected[0] < expected[1]).all() and (expected[1] < expected[2]).all()
    assert (expected[2] < exact["log_px"]).all()

    repeats = 4000
    torch.manual_seed(3)
    bound, _, _ = iw_log_likelihood(model, DATA.repeat(repeats, 1), samples=3)
    bound = bound.view(repeats, 16)
    mean, se = bound.mean(0), bound.std(0) / math.sqrt(repeats)
    assert ((mean - expected[2]).abs() <= 4 * se).all()


def test_evaluate_reports_the_mean_bound_and_its_standard_error_over_examples():
    model = tiny_model()
    torch.manual_seed(0)
    bound, _, _ = iw_log_likelihood(model, DATA, samples=7)  # evaluate(seed=0) makes the same draws
    metrics = evaluate(model, DATA, samples=7, tau=0.5, seed=0, log_partition=2.5)
    assert metrics["examples"] == 16 and metrics["samples"] == 7
    assert math.isclose(metrics["nll"], 2.5 - float(bound.mean()), rel_tol=1e-12)
    assert math.isclose(metrics["nll_stderr"], float(bound.std()) / 4.0, rel_tol=1e-9)
    assert "nll_stderr" not in evaluate(model, DATA[:1], samples=7, tau=0.5)
