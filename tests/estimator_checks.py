"""Shared checks for gradient estimators: many independent estimates in one call, and a z-test against the
exact gradient by enumeration.

Each example row carries its own copy of the problem (logits and the parameters inside ``f``), so one call
with ``R`` replicated rows gives ``R`` independent gradient estimates (``surrogate[b]`` depends only on row
``b``). The z-test compares each coordinate's mean with the exact value, Bonferroni-corrected over the
coordinates, at a stated false-failure rate per test.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from scipy.stats import norm
from torch import Tensor
from torch.distributions import Bernoulli, Distribution, OneHotCategorical

from discrete_vae.estimators import exact_expectation

FALSE_FAILURE = 1e-4  # per z-test, over all its coordinates


class Problem:
    """``E_q[f]`` with ``q`` from ``logits`` (one example) and ``f(z) = sum(w * g(z))`` with per-row ``w``."""

    def __init__(self, kind: str, shape: tuple[int, ...], seed: int = 0, nonlinear: bool = True):
        gen = torch.Generator().manual_seed(seed)
        self.kind = kind
        self.logits = torch.randn(shape, generator=gen, dtype=torch.float64)
        self.w = torch.randn(shape, generator=gen, dtype=torch.float64)
        self.nonlinear = nonlinear

    def dist(self, logits: Tensor) -> Distribution:
        return Bernoulli(logits=logits) if self.kind == "binary" else OneHotCategorical(logits=logits)

    def f(self, w: Tensor) -> Callable[[Tensor], Tensor]:
        def f(z: Tensor) -> Tensor:  # (S, B, ...) -> (S, B)
            dims = tuple(range(2, z.dim()))
            linear = (z * w).sum(dims)
            return (linear - 0.5 * linear.square()) if self.nonlinear else linear

        return f

    def leaves(self, rows: int) -> tuple[Tensor, Tensor]:
        """Per-row copies of the logits and of ``w`` (leaves that collect each row's gradient)."""
        rep = (rows,) + (1,) * self.logits.dim()
        return (self.logits.unsqueeze(0).repeat(rep).requires_grad_(),
                self.w.unsqueeze(0).repeat(rep).requires_grad_())

    def exact(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(E_q[f], d/dlogits, d/dw)`` by enumeration."""
        logits, w = self.leaves(1)
        value = exact_expectation(self.dist(logits), self.f(w))
        value.sum().backward()
        return value.detach()[0], logits.grad[0], w.grad[0]

    def estimates(self, estimator, rows: int, n_samples: int, **kwargs) -> tuple[Tensor, Tensor, Tensor]:
        """``rows`` independent ``(value, d/dlogits, d/dw)`` estimates, flattened per row."""
        logits, w = self.leaves(rows)
        out = estimator(self.dist(logits), self.f(w), n_samples, **kwargs)
        out.surrogate.sum().backward()
        return out.value.detach(), logits.grad.reshape(rows, -1), w.grad.reshape(rows, -1)


def z_scores(draws: Tensor, exact: Tensor) -> Tensor:
    """``(mean - exact) / stderr`` per coordinate of ``draws`` (R, P)."""
    mean = draws.mean(0)
    se = draws.std(0) / draws.shape[0] ** 0.5
    return (mean - exact.reshape(-1)) / se.clamp_min(1e-12)


def assert_unbiased(draws: Tensor, exact: Tensor, what: str = "gradient",
                    rate: float = FALSE_FAILURE) -> None:
    """Every coordinate's mean agrees with ``exact`` at family-wise false-failure rate ``rate``."""
    z = z_scores(draws, exact)
    limit = norm.ppf(1 - rate / (2 * z.numel()))
    worst = int(z.abs().argmax())
    mean, want = float(draws.mean(0)[worst]), float(exact.reshape(-1)[worst])
    assert z.abs().max() < limit, (f"{what}: coordinate {worst} has z = {float(z[worst]):.2f} "
                                   f"(limit {limit:.2f}); mean {mean:.5f} vs exact {want:.5f}")


def assert_same_mean(a: Tensor, b: Tensor, what: str = "gradient", rate: float = FALSE_FAILURE) -> None:
    """Independent draws ``a`` (R, P) and ``b`` (R', P) have the same mean in every coordinate (two-sample
    z-test, Bonferroni over the coordinates) at family-wise false-failure rate ``rate``."""
    se = (a.var(0) / a.shape[0] + b.var(0) / b.shape[0]).sqrt()
    z = (a.mean(0) - b.mean(0)) / se.clamp_min(1e-12)
    limit = norm.ppf(1 - rate / (2 * z.numel()))
    worst = int(z.abs().argmax())
    assert z.abs().max() < limit, (f"{what}: coordinate {worst} has z = {float(z[worst]):.2f} "
                                   f"(limit {limit:.2f}); means {float(a.mean(0)[worst]):.5f} "
                                   f"vs {float(b.mean(0)[worst]):.5f}")


def check_unbiased(estimator, kind: str, shape: tuple[int, ...], n_samples: int, rows: int = 20000) -> None:
    """The mean of ``rows`` independent estimates of d/dlogits, d/dw (the parameters inside f) and E_q[f]
    from ``estimator`` agrees with exact enumeration on :class:`Problem` ``(kind, shape, seed=3)``: three
    z-tests, each at family-wise false-failure rate ``FALSE_FAILURE`` (3e-4 per call); draws seeded by 0."""
    problem = Problem(kind, shape, seed=3)
    value, g_logits, g_w = problem.exact()
    torch.manual_seed(0)
    est_value, est_logits, est_w = problem.estimates(estimator, rows, n_samples)
    assert_unbiased(est_logits, g_logits, "d/dlogits")
    assert_unbiased(est_w, g_w, "d/dw")
    assert_unbiased(est_value.unsqueeze(1), value.reshape(1), "value")


def check_one_call(estimator, kind: str, shape: tuple[int, ...], n_samples: int, seed: int = 5) -> None:
    """``f`` is called once, on all ``n_samples`` draws of 4 example rows stacked; ``surrogate[b]`` has no
    gradient with respect to another row's logits or parameters; the surrogate's value is the value
    estimate (deterministic checks)."""
    problem = Problem(kind, shape, seed=seed)
    logits, w = problem.leaves(4)
    calls = []

    def f(z: Tensor) -> Tensor:
        calls.append(tuple(z.shape))
        return problem.f(w)(z)

    out = estimator(problem.dist(logits), f, n_samples)
    assert calls == [(n_samples, 4, *logits.shape[1:])]
    assert out.surrogate.shape == out.value.shape == (4,) and not out.value.requires_grad
    torch.testing.assert_close(out.surrogate.detach(), out.value)
    grad_logits, grad_w = torch.autograd.grad(out.surrogate[1], (logits, w))
    for grad in (grad_logits, grad_w):
        assert grad[[0, 2, 3]].abs().max() == 0
