"""Score-function estimators (reinforce, rloo, nvil, vimco): value and gradients against exact enumeration,
the variance their baselines remove, their state through a checkpoint, and their errors.

Every z-test has a family-wise false-failure rate of 1e-4 over its coordinates (``assert_unbiased``); a test
that makes three of them (value, d/dlogits, d/dw) fails falsely at most 3e-4 of the time, and with the fixed
seeds here it either always passes or always fails.
"""

from __future__ import annotations

import dataclasses
import math
import sys

import pytest
import torch
from torch.distributions import Bernoulli, Independent

from discrete_vae.checkpoint import load_checkpoint, save_checkpoint
from discrete_vae.errors import ConfigError, NonFiniteError
from discrete_vae.estimators import ESTIMATORS, build_estimator, exact_iw_expectation
from estimator_checks import Problem, assert_unbiased, z_scores

pytestmark = pytest.mark.usefixtures("one_thread")

SCORE = ("reinforce", "rloo", "nvil", "vimco")
PROBLEMS = [("binary", (5,)), ("categorical", (2, 3))]
ROWS = 20000  # independent estimates per z-test


def warm_up(estimator, problem: Problem, n_samples: int, calls: int = 10) -> None:
    """Training-mode calls that move the shared buffers away from their initial values and, where the
    estimator has an ``aux_loss``, train its parameters a little (Adam, built after the first call has
    materialised nvil's lazy network)."""
    optimizer = None
    for _ in range(calls):
        logits, w = problem.leaves(64)
        out = estimator(problem.dist(logits), problem.f(w), n_samples)
        if out.aux_loss is not None:
            optimizer = optimizer or torch.optim.Adam(estimator.parameters(), lr=0.05)
            optimizer.zero_grad()
            out.aux_loss.backward()
            optimizer.step()


def check_unbiased(draws, exact, what: str) -> None:
    """z-tests of ``(value, d/dlogits, d/dw)`` draws against their exact values."""
    (value, g_logits, g_w), (value0, g_logits0, g_w0) = draws, exact
    assert_unbiased(value[:, None], value0, f"{what}: value")
    assert_unbiased(g_logits, g_logits0, f"{what}: d/dlogits")
    assert_unbiased(g_w, g_w0, f"{what}: d/dw")


@pytest.mark.parametrize("kind,shape", PROBLEMS)
@pytest.mark.parametrize("name,n_samples", [("reinforce", 1), ("reinforce", 3), ("rloo", 2), ("rloo", 4),
                                            ("nvil", 1), ("nvil", 2)])
def test_value_and_gradients_are_unbiased(name, n_samples, kind, shape):
    """Mean value, d/dlogits and d/dw of 20000 rows agree with exact enumeration on a nonlinear f.

    reinforce's and nvil's running averages are shared across the batch: here they come from the warm-up
    calls (nvil's network is trained a little too) and stay fixed during the test call, because they are
    used before they are updated, so the rows are independent given them and each one is unbiased."""
    problem = Problem(kind, shape, seed=3)
    torch.manual_seed(0)
    estimator = build_estimator(name)
    warm_up(estimator, problem, n_samples)
    check_unbiased(problem.estimates(estimator, ROWS, n_samples), problem.exact(), f"{name} S={n_samples}")


def exact_iw(problem: Problem, n_samples: int):
    """``(E[log mean_s exp f], d/dlogits, d/dw)`` of the S-sample IW objective by enumeration."""
    logits, w = problem.leaves(1)
    bound = exact_iw_expectation(problem.dist(logits), problem.f(w), n_samples)
    bound.sum().backward()
    return bound.detach()[0], logits.grad[0], w.grad[0]


@pytest.mark.parametrize("kind,shape,n_samples", [("binary", (2,), 3), ("categorical", (2, 3), 2)])
def test_vimco_is_unbiased_for_the_iw_objective(kind, shape, n_samples):
    """vimco's value and gradients match the IW objective's by enumeration of the M^S joint draws, and the
    same draws reject the single-sample objective's gradient (so the test tells the two apart)."""
    problem = Problem(kind, shape, seed=4)
    torch.manual_seed(0)
    draws = problem.estimates(build_estimator("vimco"), ROWS, n_samples)
    check_unbiased(draws, exact_iw(problem, n_samples), f"vimco S={n_samples}")
    _, _, elbo_w = problem.exact()
    assert z_scores(draws[2], elbo_w).abs().max() > 8


def logit_gradients(estimator, logits: torch.Tensor, f, n_samples: int = 1, **kwargs) -> torch.Tensor:
    """d/dlogits of the surrogate, one row per example (B, -1), for fresh leaves ``logits``."""
    logits = logits.detach().requires_grad_()
    q = Bernoulli(logits=logits)
    estimator(q, f, n_samples, **kwargs).surrogate.sum().backward()
    return logits.grad.reshape(logits.shape[0], -1)


def test_reinforce_baseline_removes_the_variance_of_a_large_offset():
    """With f + 50, plain REINFORCE (a fresh estimator in eval mode: b = 0, frozen) carries 50 grad log q;
    after 20 training calls the moving average sits near E[f] + 50 and the summed variance of d/dlogits is
    under a hundredth of it (measured: about 1/800). Eval mode leaves the baseline as it is."""
    problem = Problem("binary", (5,), seed=5)
    logits, f = problem.leaves(4000)[0], problem.f(problem.w)  # one w, broadcast over the rows

    def offset(z):
        return f(z) + 50.0

    estimator = build_estimator("reinforce").eval()
    torch.manual_seed(0)
    before = logit_gradients(estimator, logits, offset).var(0).sum()
    assert float(estimator.baseline) == 0.0
    estimator.train()
    for _ in range(20):
        logit_gradients(estimator, logits[:100], offset)
    estimator.eval()
    baseline = float(estimator.baseline)
    torch.manual_seed(0)
    after = logit_gradients(estimator, logits, offset).var(0).sum()
    assert abs(baseline - (50.0 + float(problem.exact()[0]))) < 1.0
    assert float(estimator.baseline) == baseline
    assert after < 0.01 * before


def test_nvil_aux_loss_trains_a_baseline_that_cuts_the_gradient_variance():
    """f = 5 x_0 + z.w with a per-example offset 5 x_0 that the running mean cannot remove: 200 Adam steps
    on aux_loss (estimator.parameters() only) teach C(x) the offset, and the mean squared error of
    d/dlogits (the estimator is unbiased: that is its variance) falls under a fifth (measured: about 1/18)."""
    gen = torch.Generator().manual_seed(6)
    rows = 256
    x = torch.randn(rows, 3, generator=gen)  # the context: an encoder's input
    w = torch.randn(5, generator=gen)
    logits = torch.zeros(rows, 5)
    exact = 0.25 * w  # d/dl E[z.w] at l = 0: w sigmoid'(0)

    def f(z):  # (S, B, 5) -> (S, B)
        return 5.0 * x[:, 0] + (z * w).sum(-1)

    def mse(estimator) -> float:
        estimator.eval()
        torch.manual_seed(1)
        error = float((logit_gradients(estimator, logits, f, context=x) - exact).square().sum(1).mean())
        estimator.train()
        return error

    estimator = build_estimator("nvil")
    torch.manual_seed(0)
    logit_gradients(estimator, logits, f, context=x)  # materialises the network, sets the running mean
    before = mse(estimator)
    optimizer = torch.optim.Adam(estimator.parameters(), lr=1e-2)
    for _ in range(200):
        out = estimator(Bernoulli(logits=logits), f, 1, context=x)
        optimizer.zero_grad()
        out.aux_loss.backward()
        optimizer.step()
    assert mse(estimator) < 0.2 * before


def test_nvil_aux_loss_reaches_only_the_baseline_network():
    """aux_loss has no gradient path to the logits, to parameters inside f or to the context."""
    problem = Problem("categorical", (2, 3), seed=7)
    for context in (None, torch.randn(8, 4, requires_grad=True)):
        estimator = build_estimator("nvil")
        logits, w = problem.leaves(8)
        out = estimator(problem.dist(logits), problem.f(w), 2, context=context)
        out.aux_loss.backward()
        assert logits.grad is None and w.grad is None
        assert context is None or context.grad is None
        assert all(p.grad is not None for p in estimator.parameters())
    with pytest.raises(ConfigError, match="contexts of 4 features per example .*, got 6"):
        estimator(problem.dist(logits), problem.f(w), 2)  # the logits, not the 4-wide context


def test_nvil_variance_normalisation_divides_the_logit_gradient_by_the_running_scale():
    """With normalize_variance the score term is divided by max(1, sqrt v) (v: the running variance before
    the call, here about 330 for 10 f): E[d/dlogits] is the exact gradient over that scale; d/dw stays
    exact."""
    problem = Problem("binary", (5,), seed=8)
    _, g_logits0, g_w0 = problem.exact()
    estimator = build_estimator("nvil", normalize_variance=True)
    torch.manual_seed(0)
    for _ in range(10):
        logits, w = problem.leaves(200)
        estimator(problem.dist(logits), lambda z, w=w: 10.0 * problem.f(w)(z), 1)
    estimator.eval()
    scale = float(estimator.signal_var.sqrt().clamp_min(1.0))
    assert scale > 3.0
    logits, w = problem.leaves(ROWS)
    out = estimator(problem.dist(logits), lambda z: 10.0 * problem.f(w)(z), 1)
    out.surrogate.sum().backward()
    assert_unbiased(logits.grad, 10.0 * g_logits0 / scale, "normalised d/dlogits")
    assert_unbiased(w.grad, 10.0 * g_w0, "d/dw")


@pytest.mark.parametrize("name", SCORE)
def test_state_round_trips_through_a_checkpoint(name, tmp_path):
    """Buffers and parameters saved with save_checkpoint and loaded into a fresh estimator give the same
    estimate from the same draws (nvil's lazy network is materialised by the load)."""
    problem = Problem("binary", (5,), seed=9)
    estimator = build_estimator(name)
    torch.manual_seed(0)
    warm_up(estimator, problem, 2)
    save_checkpoint(tmp_path / "estimator.safetensors", {"estimator": estimator.state_dict()})
    copy = build_estimator(name)
    copy.load_state_dict(load_checkpoint(tmp_path / "estimator.safetensors")["estimator"])
    torch.testing.assert_close(copy.state_dict(), estimator.state_dict(), rtol=0, atol=0)
    results = []
    for est in (estimator, copy):
        torch.manual_seed(1)
        logits, w = problem.leaves(16)
        out = est(problem.dist(logits), problem.f(w), 2)
        out.surrogate.sum().backward()
        results.append((out.value, out.aux_loss, logits.grad, w.grad, est.stats()))
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


@pytest.mark.parametrize("name", SCORE)
@pytest.mark.parametrize("kind,shape", PROBLEMS)
def test_f_is_called_once_and_rows_stay_separate(name, kind, shape):
    """One f call on all S samples stacked (through an Independent q), and surrogate[b] has no gradient
    with respect to any other row's logits or parameters."""
    problem = Problem(kind, shape, seed=10)
    logits, w = problem.leaves(4)
    calls = []

    def f(z):
        calls.append(tuple(z.shape))
        return problem.f(w)(z)

    out = build_estimator(name)(Independent(problem.dist(logits), 1), f, 3)
    assert calls == [(3, 4, *shape)]
    assert out.surrogate.shape == out.value.shape == (4,) and not out.value.requires_grad
    g_logits, g_w = torch.autograd.grad(out.surrogate[1], [logits, w])
    others = [0, 2, 3]
    assert g_logits[others].abs().max() == 0 and g_w[others].abs().max() == 0
    assert g_w[1].abs().max() > 0


@pytest.mark.parametrize("name", ["rloo", "vimco"])
def test_one_sample_is_one_clear_error(name):
    message = f"estimator {name} needs at least 2 samples per example, got 1"
    with pytest.raises(ConfigError, match=message) as err:
        build_estimator(name)(Bernoulli(logits=torch.zeros(3, 2)), lambda z: z.sum(-1), 1)
    assert "\n" not in str(err.value)


def test_registry_attributes_and_options():
    for name in SCORE:
        cls = ESTIMATORS.get(name)
        assert cls.unbiased and not cls.relaxed and set(cls.supports) == {"binary", "categorical"}
        assert cls.min_samples == (2 if name in ("rloo", "vimco") else 1)
        assert cls.__module__.endswith(f".{name}") and "https://" in sys.modules[cls.__module__].__doc__
        assert all(field.metadata.get("help") for field in dataclasses.fields(cls.Options))
    nvil = build_estimator("nvil", baseline_hidden="64,32", decay="0.5", normalize_variance=True)
    assert nvil.options.baseline_hidden == (64, 32) and nvil.options.decay == 0.5
    assert build_estimator("nvil", baseline_hidden="").options.baseline_hidden == ()
    with pytest.raises(ConfigError, match="--decay must be in"):
        build_estimator("reinforce", decay=1.0)
    with pytest.raises(ConfigError, match="--decay must be in"):
        build_estimator("nvil", decay=-0.1)
    with pytest.raises(ConfigError, match="at least 1"):
        build_estimator("nvil", baseline_hidden=[0])
    with pytest.raises(ConfigError, match="no option 'decay'"):
        build_estimator("rloo", decay=0.9)


# ------------------------------------------------------------ what f must return, and where a NaN came from
BINARY = [n for n in ESTIMATORS.names() if "binary" in ESTIMATORS.get(n).supports]


def first_call(estimator) -> int:
    """The draws of f's first call from 2 samples of 5 binary latents: every evaluation in one call, but
    rebar's and relax's, which call f on the draws first, then on the relaxed points."""
    return 2 if estimator.relaxed and estimator.unbiased else estimator.evaluations(2, "binary", (5,))


@pytest.mark.parametrize("name", BINARY)
def test_f_returning_a_float_says_what_f_must_return(name):
    estimator = build_estimator(name)
    q = Bernoulli(logits=torch.zeros(4, 5, requires_grad=True))
    rows = first_call(estimator)
    message = (rf"f must return a tensor of shape \(samples, batch\) = \({rows}, 4\) for z \({rows}, 4, 5\), "
               r"one value per draw and example; got float 0.5")
    with pytest.raises(ConfigError, match=message):
        estimator(q, lambda z: 0.5, 2)


def nan_at(sample: int, example: int):
    def f(z):  # (S, B, 5) -> (S, B), NaN at one draw of one example
        out = z.sum(-1).clone()
        out[sample, example] = math.nan
        return out

    return f


@pytest.mark.parametrize("name", BINARY)
def test_check_names_the_draw_and_example_where_f_returned_nan(name):
    estimator = build_estimator(name)
    q = Bernoulli(logits=torch.zeros(4, 5, requires_grad=True))
    assert torch.isnan(estimator(q, nan_at(1, 2), 2).value[2])  # unchecked: silently NaN
    estimator = build_estimator(name)
    rows = first_call(estimator)
    message = (rf"^f returned nan at sample 1, example 2 \(1 of {4 * rows} values\) for z of shape "
               rf"\({rows}, 4, 5\)( \(a relaxed z\))?$")
    with pytest.raises(NonFiniteError, match=message):
        estimator(q, nan_at(1, 2), 2, check=True)
    assert torch.isfinite(estimator(q, lambda z: z.sum(-1), 2, check=True).surrogate).all()


def test_check_names_non_finite_logits_and_the_estimators_own_state():
    logits = torch.zeros(3, 5)
    logits[2, 4] = math.inf
    with pytest.raises(NonFiniteError, match=r"q's logits are inf at example 2 \(4,\) \(1 of 15 values\)"):
        q = Bernoulli(logits=logits, validate_args=False)
        build_estimator("rloo")(q, lambda z: z.sum(-1), 2, check=True)
    reinforce = build_estimator("reinforce")  # a NaN from an unchecked call poisons the moving average
    q = Bernoulli(logits=torch.zeros(4, 5, requires_grad=True))
    reinforce(q, nan_at(0, 1), 1)
    with pytest.raises(NonFiniteError, match="estimator reinforce: its surrogate is nan at example 0 .* "
                       "although f and q's logits were finite"):
        reinforce(q, lambda z: z.sum(-1), 1, check=True)
