"""The estimators whose control variates use grad_z f at the draws (double-cv, rodeo): unbiased against exact
enumeration (by z-tests, and exactly over every joint draw), rloo when their learned weights are zero, the
Taylor control variate exact for a linear f, aux_loss training only the estimator's own parameters, and the
n_samples / latent-kind contract."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.distributions import Bernoulli

from discrete_vae.errors import ConfigError
from discrete_vae.estimators import ESTIMATORS, Latents, build_estimator, rodeo
from discrete_vae.estimators.exact import states
from estimator_checks import Problem, check_one_call, check_unbiased

ROWS = 20000  # independent estimates per z-test
NAMES = ("double-cv", "rodeo")


def randomized(name: str, seed: int = 1, hidden: tuple[int, ...] = (8,)):
    """``name`` in float64 with every parameter random (rodeo's h, its output layer included, and the control
    variates' weights alpha, beta), so that the control variates are on and arbitrary."""
    options = {"cv_hidden": hidden} if name == "rodeo" else {}
    estimator = build_estimator(name, **options).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in estimator.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return estimator


CASES = [(name, kind, shape, k) for name in NAMES for kind, shape, k in [
    ("binary", (5,), 2), ("binary", (2, 3), 3), ("binary", (4,), 4),
    ("categorical", (2, 3), 2), ("categorical", (1, 4), 3)]]


@pytest.mark.parametrize("name,kind,shape,n_samples", CASES)
def test_gradient_and_value_are_unbiased(name, kind, shape, n_samples):
    """With random control-variate weights and a random h, the mean of 20000 estimates of d/dlogits, d/dw
    (the parameters inside f) and E_q[f] agrees with exact enumeration: three z-tests, each at family-wise
    false-failure rate 1e-4 (3e-4 per case)."""
    check_unbiased(randomized(name), kind, shape, n_samples, ROWS)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind,shape,n_samples", [("binary", (3,), 2), ("binary", (2,), 3),
                                                  ("categorical", (2, 3), 2)])
def test_the_mean_over_every_joint_draw_is_the_exact_gradient(name, kind, shape, n_samples, monkeypatch):
    """The estimator fed each of the M^K joint draws of its K samples once (one row each), weighted by their
    probability: d/dlogits, d/dw and the value equal the exact ones to rounding (no sampling noise)."""
    problem = Problem(kind, shape, seed=4)
    value, g_logits, g_w = problem.exact()
    logits, w = problem.leaves(1)
    latents = Latents.of(problem.dist(logits))
    z = states(latents)  # (M, ...)
    combos = torch.tensor(list(itertools.product(range(z.shape[0]), repeat=n_samples)))  # (C, K)
    draws = z[combos].movedim(1, 0)  # (K, C, ...)
    rows = combos.shape[0]
    logits, w = problem.leaves(rows)
    weight = Latents.of(problem.dist(logits.detach())).log_prob(draws).sum(0).exp()  # (C,)
    monkeypatch.setattr(Latents, "sample", lambda self, n: draws)
    out = randomized(name, seed=2)(problem.dist(logits), problem.f(w), n_samples)
    (out.surrogate * weight).sum().backward()
    torch.testing.assert_close((weight * out.value).sum(), value, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logits.grad.sum(0), g_logits, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(w.grad.sum(0), g_w, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("kind,shape", [("binary", (5,)), ("categorical", (2, 3))])
def test_double_cv_at_alpha_minus_one_is_exact_for_a_linear_f(kind, shape):
    """For f(z) = <w, z> the Taylor expansion is f itself: with alpha = -1 each F_k is the constant <w, mu>,
    the score term vanishes and every estimate for the logits is the exact gradient."""
    problem = Problem(kind, shape, seed=5, nonlinear=False)
    _, g_logits, _ = problem.exact()
    _, est_logits, _ = problem.estimates(build_estimator("double-cv", alpha=-1.0).double(), 50, 3)
    torch.testing.assert_close(est_logits, g_logits.reshape(1, -1).expand_as(est_logits))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind,shape", [("binary", (2, 3)), ("categorical", (2, 3))])
def test_with_zero_control_variate_weights_it_is_rloo_on_the_same_draws(name, kind, shape):
    """alpha = beta = 0 (where training starts; rodeo's h random): the estimates are rloo's on the same
    draws, for the logits, for w and for the value."""
    problem = Problem(kind, shape, seed=6)
    estimator = randomized(name)
    with torch.no_grad():
        estimator.alpha.zero_()
        if name == "rodeo":
            estimator.beta.zero_()
    out = {}
    for key, est in (("rloo", build_estimator("rloo")), (name, estimator)):
        torch.manual_seed(7)
        out[key] = problem.estimates(est, 200, 3)
    for a, b in zip(out["rloo"], out[name], strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_aux_loss_steps_only_the_estimators_parameters_and_the_surrogate_none_of_them(name):
    """The surrogate's gradient reaches none of the estimator's parameters; one SGD step on aux_loss over
    every leaf (logits, w, the estimator's parameters) changes each of the estimator's and nothing else."""
    problem = Problem("binary", (2, 3), seed=8)
    estimator = randomized(name)
    logits, w = problem.leaves(16)
    out = estimator(problem.dist(logits), problem.f(w), 3)
    own = list(estimator.parameters())
    assert all(g is None for g in torch.autograd.grad(out.surrogate.sum(), own, retain_graph=True,
                                                      allow_unused=True))
    before = [p.detach().clone() for p in (logits, w, *own)]
    optimizer = torch.optim.SGD([logits, w, *own], lr=0.1)
    out.aux_loss.backward()
    optimizer.step()
    after = [logits, w, *own]
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])
    assert all(not torch.equal(a, b) for a, b in zip(after[2:], before[2:], strict=True))


@pytest.mark.parametrize("name", NAMES)
def test_training_the_control_variates_lowers_the_variance(name):
    """60 Adam steps on aux_loss (linear f, binary (6,), K = 2, 100 rows a step, from alpha = beta = 0, i.e.
    rloo; rodeo with its default h) bring the variance of the logits' estimate on fresh draws below 1/20 of
    rloo's. Measured over 4 training seeds: double-cv 3e-4 to 6e-4 of rloo's (alpha within 0.03 of its
    optimum -1), rodeo 0.008 to 0.009; the ratio's own noise over 2000 estimates a side is ~5%."""
    torch.manual_seed(0)
    problem = Problem("binary", (6,), seed=9, nonlinear=False)
    estimator = build_estimator(name).double()
    optimizer = torch.optim.Adam(estimator.parameters(), lr=0.05)
    for _ in range(60):
        logits, w = problem.leaves(100)
        optimizer.zero_grad()
        estimator(problem.dist(logits), problem.f(w), 2).aux_loss.backward()
        optimizer.step()
    torch.manual_seed(1)
    _, trained, _ = problem.estimates(estimator, 2000, 2)
    torch.manual_seed(1)
    _, rloo, _ = problem.estimates(build_estimator("rloo"), 2000, 2)
    assert trained.var(0).sum() < 0.05 * rloo.var(0).sum(), (trained.var(0).sum(), rloo.var(0).sum())


def test_rodeos_h_along_its_first_input_is_the_network_in_value_and_gradient():
    """rodeo reads its one-hidden-layer h at the neighbours off prefix sums over sorted breakpoints
    (along_first_input), not point by point: on random float64 inputs (a hidden unit with first weight 0,
    offsets 0 and repeated offsets included) the values, and the gradient of a random linear function of
    them in every parameter of h, equal those of the nn.Sequential applied to each point, to 1e-12."""
    gen = torch.Generator().manual_seed(11)
    net = randomized("rodeo", seed=3, hidden=(100,)).net
    with torch.no_grad():
        net[0].weight[7, 0] = 0.0
    base = torch.randn(30, 2, generator=gen, dtype=torch.float64) * 2  # (G, 2)
    moves = torch.randn(30, 40, generator=gen, dtype=torch.float64) * 3  # (G, Q)
    moves[:, 0], moves[:, 1] = 0.0, moves[:, 2]
    points = torch.stack([base[:, :1] + moves, base[:, 1:].expand_as(moves)], -1)  # (G, Q, 2)
    expected, fast = net(points).movedim(-1, 0), rodeo.along_first_input(net, base, moves)  # (2, G, Q)
    torch.testing.assert_close(fast, expected, rtol=1e-12, atol=1e-12)
    weights = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
    params = list(net.parameters())
    for got, want in zip(torch.autograd.grad((fast * weights).sum(), params),
                         torch.autograd.grad((expected * weights).sum(), params), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind,shape", [("binary", (7,)), ("categorical", (3, 4))])
def test_rodeos_estimate_and_aux_loss_gradient_are_those_of_h_point_by_point(kind, shape, monkeypatch):
    """On the same draws (K = 3, random h of 100 hidden units, alpha and beta), the estimate for the logits,
    aux_loss and its gradient in every estimator parameter equal those with h evaluated point by point by
    the nn.Sequential, to 1e-12."""
    problem = Problem(kind, shape, seed=12)
    logits, w = problem.leaves(6)
    estimator = randomized("rodeo", seed=4, hidden=(100,))
    out = []
    for fast in (True, False):
        monkeypatch.setattr(rodeo, "piecewise_linear", lambda net, fast=fast: fast)
        torch.manual_seed(5)
        estimate = estimator(problem.dist(logits), problem.f(w), 3)
        grad = torch.autograd.grad(estimate.surrogate.sum(), logits, retain_graph=True)
        own = torch.autograd.grad(estimate.aux_loss, list(estimator.parameters()))
        out.append([*grad, estimate.aux_loss, *own])
    for got, want in zip(*out, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_one_call_of_f_rows_stay_separate_and_the_surrogate_is_the_value(name):
    """f is called once on all n_samples draws; surrogate[b] depends on row b only; the surrogate's value is
    the value estimate."""
    check_one_call(randomized(name), "categorical", (2, 3), 3)


@pytest.mark.parametrize("name", NAMES)
def test_without_a_gradient_for_the_logits_f_is_only_evaluated(name):
    """Under no_grad, or with logits that need no gradient, the estimate is mean f (its parameters' gradient
    mean grad f) and there is no aux_loss."""
    problem = Problem("binary", (3,), seed=2)
    logits, w = problem.leaves(5)
    estimator = randomized(name)
    with torch.no_grad():
        out = estimator(problem.dist(logits), problem.f(w), 2)
    assert out.aux_loss is None and out.value.shape == (5,)
    torch.manual_seed(0)
    out = estimator(problem.dist(logits.detach()), problem.f(w), 2)
    torch.manual_seed(0)
    z = Latents.of(problem.dist(logits)).sample(2)
    torch.testing.assert_close(out.surrogate, problem.f(w)(z).mean(0))
    assert out.aux_loss is None and out.surrogate.requires_grad


@pytest.mark.parametrize("name", NAMES)
def test_too_few_samples_is_one_error(name):
    q = Bernoulli(logits=torch.zeros(2, 3))
    with pytest.raises(ConfigError, match="at least 2 samples"):
        build_estimator(name)(q, lambda z: z.sum(-1), 1)


def test_registry_and_options():
    for name in NAMES:
        cls = ESTIMATORS.get(name)
        assert cls.supports == ("binary", "categorical") and cls.unbiased and cls.min_samples == 2
        assert cls.separable_aux and cls.cost
        assert build_estimator(name).evaluations(4, "binary", (3,)) == 4
    assert build_estimator("rodeo", cv_hidden="16,8").options.cv_hidden == (16, 8)
    state = build_estimator("rodeo").state_dict()
    assert {"alpha", "beta", "net.0.weight", "net.2.weight"} <= set(state)
    assert state["net.0.weight"].shape == (100, 2)  # the reference code's h: 2 inputs, 100 hidden units
    assert set(build_estimator("double-cv", alpha=0.5).state_dict()) == {"alpha"}
    with pytest.raises(ConfigError, match="--alpha must be a finite number"):
        build_estimator("double-cv", alpha=float("nan"))
    with pytest.raises(ConfigError, match="no option|unknown"):
        build_estimator("rodeo", alpha=1.0)
