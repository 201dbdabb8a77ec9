"""REBAR and RELAX (learned control variates): unbiased for any control-variate parameters, against exact
enumeration; the conditional draws z~ | b; the variance they remove as their parameters train; the
protocol a trainer follows for ``aux_loss``; state round trips.

False failures: every z-test below is :func:`assert_unbiased` at family-wise rate 1e-4 (over its
coordinates), the KS tests are Bonferroni-corrected at 1e-4 each; 8 unbiasedness cases x 3 z-tests and
2 KS tests bound the file's false-failure rate by 2.6e-3 (all seeds are fixed, so a run is repeatable).
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import kstest
from torch import nn
from torch.distributions import Bernoulli, OneHotCategorical

from discrete_vae.errors import ConfigError
from discrete_vae.estimators import ESTIMATORS, Latents, build_estimator
from discrete_vae.estimators.rebar import conditional, harden, perturbed
from estimator_checks import FALSE_FAILURE, Problem, assert_unbiased

CASES = [("binary", (5,)), ("categorical", (2, 3))]
SMALL = {"rebar": {}, "relax": {"cv_hidden": (32, 32)}}  # a small r_rho keeps the file fast
pytestmark = pytest.mark.usefixtures("one_thread")


def estimator(name: str, **options):
    return build_estimator(name, **{**SMALL[name], **options})


def perturb(est, problem: Problem, context: torch.Tensor | None = None) -> None:
    """Move every control-variate parameter far from its initial value (eta < 0, lambda = 2, a random
    network): the estimator must stay unbiased."""
    if est.name == "relax":  # materialise the lazy layer first, with the context it will see
        logits, w = problem.leaves(2)
        est(problem.dist(logits), problem.f(w), 1, context=None if context is None else context[:2])
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        est.eta.fill_(-0.7)
        est.log_temperature.fill_(math.log(2.0))
        for p in est.parameters():
            if p.dim():
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("name", ["rebar", "relax"])
@pytest.mark.parametrize("kind,shape", CASES)
@pytest.mark.parametrize("setting", ["initial", "perturbed"])
def test_gradient_and_value_are_unbiased(name, kind, shape, setting):
    """Mean estimate of d/dlogits, d/dw (parameters inside f) and of E_q[f] over 20000 rows agrees with
    exact enumeration, at the initial control variate (one sample) and at perturbed parameters (three
    samples averaged; RELAX also conditions r on a context)."""
    problem = Problem(kind, shape, seed=3)
    exact_value, exact_logits, exact_w = problem.exact()
    est = estimator(name)
    n_samples, kwargs = 1, {}
    if setting == "perturbed":
        n_samples = 3
        if name == "relax":
            kwargs["context"] = torch.linspace(-1, 1, 4, dtype=torch.float64).expand(20000, 4)
        perturb(est, problem, kwargs.get("context"))
    torch.manual_seed(0)
    value, g_logits, g_w = problem.estimates(est, 20000, n_samples, **kwargs)
    assert_unbiased(g_logits, exact_logits, "d/dlogits")
    assert_unbiased(g_w, exact_w, "d/dw")
    assert_unbiased(value.unsqueeze(1), exact_value, "value")


@pytest.mark.parametrize("kind,shape", CASES)
def test_conditional_draws_fall_on_b_and_have_the_marginal_of_z(kind, shape):
    """z~ ~ p(z | b) with b = H(z): H(z~) = b always, and each coordinate of z~ has the distribution of z
    (logistic with location l, or Gumbel with location log pi): a KS test per coordinate."""
    logits = Problem(kind, shape, seed=4).logits.unsqueeze(0)  # (1, ...)
    latents = Latents(kind, logits)
    torch.manual_seed(0)
    b = harden(kind, perturbed(latents, 20000))  # (n, 1, ...)
    z_tilde = conditional(latents, b)
    assert torch.equal(harden(kind, z_tilde), b)
    if kind == "binary":
        loc = logits
        cdf = lambda x, m: torch.sigmoid(torch.as_tensor(x) - m).numpy()  # noqa: E731
    else:
        loc = logits.log_softmax(-1)
        cdf = lambda x, m: torch.exp(-torch.exp(-(torch.as_tensor(x) - m))).numpy()  # noqa: E731
    draws, loc = z_tilde.reshape(z_tilde.shape[0], -1), loc.reshape(-1)
    p_values = [kstest(draws[:, i].numpy(), lambda x, i=i: cdf(x, loc[i])).pvalue for i in range(loc.numel())]
    assert min(p_values) * len(p_values) > FALSE_FAILURE, p_values


def toy(kind: str, shape: tuple[int, ...]) -> Problem:
    """The toy of the RELAX paper (fig. 1), one target per latent: ``f(z) = sum (z - t)**2``, with
    ``t ~ U(0.4, 0.6)``: f(b) barely depends on b, so REINFORCE's variance dwarfs the gradient."""

    class Toy(Problem):
        def f(self, w):
            return lambda z: (z - w).square().flatten(2).sum(-1)  # (S, B, ...) -> (S, B)

    problem = Toy(kind, shape, seed=0)
    problem.w = 0.4 + 0.2 * torch.rand(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return problem


def logit_variance(problem: Problem, est=None, rows: int = 20000) -> torch.Tensor:
    """Per-coordinate variance of the d/dlogits estimate over ``rows`` draws; ``est=None``: plain
    REINFORCE, ``f(b) d log q(b)`` without a baseline."""
    torch.manual_seed(11)
    if est is not None:
        return problem.estimates(est, rows, 1)[1].var(0)
    logits, w = problem.leaves(rows)
    latents = Latents.of(problem.dist(logits))
    b = latents.sample(1)
    (problem.f(w)(b).detach() * latents.log_prob(b)).sum().backward()
    return logits.grad.reshape(rows, -1).var(0)


def train(est, problem: Problem, steps: int = 300, rows: int = 64) -> None:
    """Adam on ``aux_loss`` with respect to the estimator's own parameters only."""
    logits, w = problem.leaves(rows)
    est(problem.dist(logits), problem.f(w), 1)  # materialise RELAX's lazy layer before Adam sees it
    opt = torch.optim.Adam(est.parameters(), lr=0.03)
    torch.manual_seed(5)
    for _ in range(steps):
        logits, w = problem.leaves(rows)
        out = est(problem.dist(logits), problem.f(w), 1)
        opt.zero_grad()
        out.aux_loss.backward(inputs=list(est.parameters()))
        opt.step()


@pytest.mark.parametrize("kind,shape", CASES)
def test_control_variates_reduce_variance_as_their_parameters_train(kind, shape):
    """On the toy, per-coordinate variance of the logit gradient: untrained REBAR / RELAX (identical at
    start: r is zero-initialised) is below plain REINFORCE in every coordinate and by more than half in
    total; 300 Adam steps on aux_loss cut the total by more than 15% (REBAR) and every coordinate by a
    factor of ten (RELAX, whose network can learn f). REBAR's two scalars minimise the summed variance, so
    a coordinate with little variance need not fall (measured: one categorical coordinate, 0.0178 ->
    0.0181). Measured totals, REINFORCE / untrained / REBAR / RELAX: binary 1.49, 0.36, 0.18, 0.006;
    categorical 1.37, 0.47, 0.35, 0.003. The margins are several times the noise of the variance
    estimates (about 3% at 20000 rows)."""
    problem = toy(kind, shape)
    reinforce = logit_variance(problem)
    for name in ("rebar", "relax"):
        torch.manual_seed(2)
        est = estimator(name)
        untrained = logit_variance(problem, est)
        train(est, problem)
        trained = logit_variance(problem, est)
        assert (untrained < reinforce).all() and untrained.sum() < 0.5 * reinforce.sum()
        assert (trained < reinforce).all()
        if name == "rebar":
            assert trained.sum() < 0.85 * untrained.sum(), (name, untrained, trained)
        else:
            assert (trained < 0.1 * untrained).all(), (name, untrained, trained)


class Model(nn.Module):
    """A one-layer VAE-like pair: encoder logits from x, decoder f(z) = -|x - dec(z)|^2."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.enc = nn.Linear(6, 6)
        self.dec = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 6))

    def q(self, x):
        logits = self.enc(x)
        return Bernoulli(logits=logits) if self.kind == "binary" else OneHotCategorical(
            logits=logits.view(-1, 2, 3))

    def f(self, x):
        return lambda z: -(self.dec(z.flatten(2)) - x).square().sum(-1)  # (S, B, ...) -> (S, B)


@pytest.mark.parametrize("name", ["rebar", "relax"])
@pytest.mark.parametrize("kind", ["binary", "categorical"])
@pytest.mark.parametrize("order", ["loss-first", "aux-first"])
def test_trainer_protocol_needs_no_retain_graph(name, kind, order):
    """``loss.backward(inputs=model params)`` and ``aux_loss.backward(inputs=estimator params)`` work in
    either order without retain_graph; each fills only its own parameters' gradients, and the model's
    gradients equal those of the loss alone."""
    torch.manual_seed(0)
    model, est = Model(kind), estimator(name)
    x = torch.randn(4, 6)
    model_params, est_params = list(model.parameters()), list(est.parameters())

    def run(with_aux: bool):
        torch.manual_seed(1)
        out = est(model.q(x), model.f(x), 2, context=x)
        steps = [lambda: (-out.surrogate.mean()).backward(inputs=model_params)]
        if with_aux:
            steps.append(lambda: out.aux_loss.backward(inputs=est_params))
        for step in steps if order == "loss-first" else steps[::-1]:
            step()
        grads = [p.grad.clone() for p in model_params]
        model.zero_grad()
        return grads

    alone, both = run(False), run(True)
    for a, b in zip(alone, both, strict=True):
        torch.testing.assert_close(a, b)
    assert all(p.grad is not None and p.grad.isfinite().all() for p in (est.eta, est.log_temperature))
    assert est.eta.grad.abs() > 0


@pytest.mark.parametrize("name", ["rebar", "relax"])
@pytest.mark.parametrize("kind,shape", CASES)
def test_aux_loss_is_the_sum_of_squares_of_the_logit_gradient(name, kind, shape):
    problem = Problem(kind, shape, seed=5)
    logits, w = problem.leaves(8)
    out = estimator(name)(problem.dist(logits), problem.f(w), 2)
    (g,) = torch.autograd.grad(out.surrogate.sum(), logits)
    torch.testing.assert_close(out.aux_loss, g.square().sum())


def test_no_aux_loss_without_logit_gradients_or_learnable_parameters():
    problem = Problem("binary", (5,), seed=6)
    est = estimator("relax")
    logits, w = problem.leaves(8)
    with torch.no_grad():
        out = est(problem.dist(logits), problem.f(w), 2)
    assert out.aux_loss is None and out.value.shape == (8,)
    out = est(problem.dist(logits.detach()), problem.f(w), 2)  # only f's parameters want a gradient
    assert out.aux_loss is None
    out.surrogate.sum().backward()
    assert w.grad is not None
    assert est(problem.dist(logits), problem.f(w), 2).aux_loss is not None  # also materialises r's layer
    est.requires_grad_(False)  # a lazy layer's parameters exist only after a call that needed them
    out = est(problem.dist(logits), problem.f(w), 2)
    assert out.aux_loss is None and out.surrogate.requires_grad


def test_tau_replaces_the_learned_temperature():
    """A schedule's ``tau`` is the temperature for that call: lambda gets no gradient, eta still does."""
    problem = Problem("categorical", (2, 3), seed=6)
    est = estimator("rebar")
    logits, w = problem.leaves(8)
    est(problem.dist(logits), problem.f(w), 1, tau=0.3).aux_loss.backward(inputs=list(est.parameters()))
    assert est.log_temperature.grad is None or est.log_temperature.grad == 0
    assert est.eta.grad.abs() > 0


@pytest.mark.parametrize("name", ["rebar", "relax"])
def test_state_dict_round_trip(name):
    """The learned parameters (eta, log lambda, and RELAX's network, lazy layer included) load into a fresh
    estimator, which then gives the same estimates."""
    problem = Problem("binary", (5,), seed=8)
    trained, fresh = estimator(name), estimator(name)
    perturb(trained, problem)
    state = trained.state_dict()
    want = {"eta", "log_temperature"} | ({"net.0.weight", "net.0.bias", "net.4.weight"} if name == "relax"
                                         else set())
    assert want <= set(state)
    fresh.load_state_dict(state)
    results = []
    for est in (trained, fresh):
        torch.manual_seed(0)
        logits, w = problem.leaves(16)
        out = est(problem.dist(logits), problem.f(w), 2)
        out.surrogate.sum().backward()
        results.append((out.value, out.aux_loss.detach(), logits.grad))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)
    assert fresh.stats() == pytest.approx({"eta": -0.7, "temperature": 2.0})


def test_f_is_called_on_hard_and_on_stacked_relaxed_points():
    """One call on b (S, B, ...), one on the relaxed pair [sigma(z), sigma(z~)] (2S, B, ...)."""
    problem = Problem("categorical", (2, 3), seed=9)
    shapes = []
    f = problem.f(problem.w)

    def spy(z):
        shapes.append((tuple(z.shape), bool(((z == 0) | (z == 1)).all())))
        return f(z)

    logits = problem.logits.expand(4, 2, 3).clone().requires_grad_()
    estimator("rebar")(problem.dist(logits), spy, 3)
    assert shapes == [((3, 4, 2, 3), True), ((6, 4, 2, 3), False)]


def test_registry_options_and_declarations():
    assert {"rebar", "relax"} <= set(ESTIMATORS.names())
    for name in ("rebar", "relax"):
        cls = ESTIMATORS.get(name)
        assert cls.unbiased and cls.relaxed and cls.min_samples == 1
        assert set(cls.supports) == {"binary", "categorical"}
        with pytest.raises(ConfigError, match="positive"):
            build_estimator(name, temperature=0.0)
        with pytest.raises(ConfigError, match="finite"):
            build_estimator(name, eta=float("nan"))
    assert build_estimator("relax", cv_hidden="16,8").options.cv_hidden == (16, 8)
    assert build_estimator("rebar", temperature=0.25).stats() == pytest.approx({"eta": 1.0,
                                                                                "temperature": 0.25})
    with pytest.raises(ConfigError, match="at least one width"):
        build_estimator("relax", cv_hidden="none")
    with pytest.raises(ConfigError, match="no option 'cv_hidden'"):
        build_estimator("rebar", cv_hidden=(8,))
