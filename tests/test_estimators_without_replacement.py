"""The estimators over distinct joint configurations (unordered, sum-and-sample): unbiased against exact
enumeration, the unordered set estimator exact in expectation over every set, its set probabilities against
the sum over orders; the joint searches (:mod:`discrete_vae.estimators.joint`): draws without replacement
distributed as the Gumbel-top-k of the joint (first draw, unordered set, ordered tuple), the top-k against
enumeration, ties, the mass outside a set against enumeration, peaked logits in float32 and float64; a joint
space smaller than k, saturated logits, and the n_samples / options contract."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy.stats import chisquare

from discrete_vae.errors import ConfigError
from discrete_vae.estimators import ESTIMATORS, Latents, build_estimator
from discrete_vae.estimators.exact import states
from discrete_vae.estimators.joint import (
    Outside,
    configurations,
    draw_without_replacement,
    most_probable,
    variable_log_probs,
)
from discrete_vae.estimators.unordered import set_probabilities, unordered_estimate
from estimator_checks import Problem, check_unbiased

ROWS = 20000  # independent estimates or draws per statistical test
RATE = 1e-4  # false-failure rate of each chi-square test

CASES = [  # (estimator, options, kind, shape, n_samples)
    ("unordered", {}, "binary", (3,), 2),
    ("unordered", {}, "categorical", (2, 3), 3),
    ("unordered", {}, "binary", (4,), 4),
    ("unordered", {}, "categorical", (2, 3), 4),
    ("sum-and-sample", {}, "binary", (3,), 2),
    ("sum-and-sample", {"baseline": "none"}, "binary", (3,), 3),
    ("sum-and-sample", {"baseline": "none"}, "categorical", (2, 3), 3),
    ("sum-and-sample", {}, "categorical", (2, 3), 4),
    ("sum-and-sample", {}, "binary", (4,), 4),
]


@pytest.mark.parametrize("name,options,kind,shape,n_samples", CASES)
def test_gradient_and_value_are_unbiased(name, options, kind, shape, n_samples):
    """The mean of 20000 estimates of d/dlogits, d/dw (the parameters inside f) and E_q[f] agrees with exact
    enumeration: three z-tests, each at family-wise false-failure rate 1e-4 (3e-4 per case)."""
    check_unbiased(build_estimator(name, **options), kind, shape, n_samples, ROWS)


def joint_index(latents: Latents, index: torch.Tensor) -> torch.Tensor:
    """Class indices (..., N) as the joint state's number in :func:`exact.states`' order."""
    c = 2 if latents.kind == "binary" else latents.logits.shape[-1]
    return (index * c ** torch.arange(index.shape[-1])).sum(-1)


def order_probability(p: list[float], removed: float = 0.0) -> float:
    """Probability that draws without replacement (of a domain whose removed mass is ``removed``) start with
    the elements of probabilities ``p`` in any order: the sum over the orders, by brute force."""
    total = 0.0
    for order in itertools.permutations(p):
        prob, used = 1.0, removed
        for x in order:
            prob, used = prob * x / (1 - used), used + x
        total += prob
    return total


def test_set_probabilities_are_the_sums_over_orders():
    """log p^{D \\ V}(S \\ V) for all 32 subsets V of 5 draws, against the sum over the orders of S \\ V."""
    p = torch.rand(3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    p = p / p.sum(-1, keepdim=True)
    log_f = set_probabilities(p[:, :5].log())
    for b in range(3):
        for v in range(32):
            inside = [float(p[b, i]) for i in range(5) if v >> i & 1]
            rest = [float(p[b, i]) for i in range(5) if not v >> i & 1]
            want = math.log(order_probability(rest, sum(inside)))
            assert want == pytest.approx(float(log_f[b, v]), abs=1e-12)


@pytest.mark.parametrize("kind,shape,k", [("binary", (3,), 2), ("binary", (3,), 3),
                                          ("categorical", (2, 3), 3), ("categorical", (1, 4), 4)])
def test_unordered_estimate_is_exact_in_expectation_over_every_set(kind, shape, k):
    """Deterministic: every k-set S of the joint space as one row, weighted by its probability p(S) (the sum
    over orders), gives E_q[f], d/dlogits and d/dw exactly (1e-10)."""
    problem = Problem(kind, shape, seed=4)
    value, g_logits, g_w = problem.exact()
    latents = Latents.of(problem.dist(problem.logits.unsqueeze(0)))
    configs = states(latents)  # (M, ...)
    probs = latents.log_prob(configs.unsqueeze(1)).exp()[:, 0]  # (M,)
    sets = list(itertools.combinations(range(len(configs)), k))
    weight = torch.tensor([order_probability([float(probs[i]) for i in s]) for s in sets],
                          dtype=torch.float64)
    assert float(weight.sum()) == pytest.approx(1.0, abs=1e-12)
    logits, w = problem.leaves(len(sets))
    z = configs[torch.tensor(sets).T]  # (k, rows, ...)
    out = unordered_estimate(Latents.of(problem.dist(logits)), problem.f(w), z)
    (out.surrogate * weight).sum().backward()
    torch.testing.assert_close((out.value * weight).sum(), value, rtol=0, atol=1e-10)
    torch.testing.assert_close(logits.grad.sum(0), g_logits, rtol=0, atol=1e-10)
    torch.testing.assert_close(w.grad.sum(0), g_w, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind,shape", [("binary", (3,)), ("categorical", (2, 3)), ("categorical", (3, 4))])
def test_unordered_estimate_of_every_pair_is_the_papers_closed_form(kind, shape):
    """k = 2, deterministic: for the set {a, b} the estimator with its built-in baseline is
    w_a (1 - q_a)(f_a - f_b) grad log q_a + w_b (1 - q_b)(f_b - f_a) grad log q_b, with
    w_a = q_a q_b / ((1 - q_a) p(S)) and p(S) the sum of the two orders (b_a = q_a f_a + (1 - q_a) f_b). Every
    pair's gradient with respect to the logits is that (1e-10): the estimate of each set is the paper's, so
    its variance is too, not only its mean."""
    problem = Problem(kind, shape, seed=4)
    latents = Latents.of(problem.dist(problem.logits.unsqueeze(0)))
    configs = states(latents)  # (M, ...)
    q = latents.log_prob(configs.unsqueeze(1)).exp()[:, 0]  # (M,)
    f = problem.f(problem.w.unsqueeze(0))(configs.unsqueeze(1))[:, 0].detach()  # (M,)
    mean = torch.sigmoid(problem.logits) if kind == "binary" else problem.logits.softmax(-1)
    score = configs - mean  # (M, ...): grad of log q with respect to the logits
    a, b = torch.tensor(list(itertools.combinations(range(len(configs)), 2))).T  # (rows,) each
    logits, w = problem.leaves(len(a))
    unordered_estimate(Latents.of(problem.dist(logits)), problem.f(w), configs[torch.stack([a, b])]) \
        .surrogate.sum().backward()
    first_a, first_b = q[a] * q[b] / (1 - q[a]), q[a] * q[b] / (1 - q[b])  # (rows,): a first, b first
    w_a, w_b = first_a / (first_a + first_b), first_b / (first_a + first_b)
    pad = (-1,) + (1,) * len(shape)
    want = ((w_a * (1 - q[a]) * (f[a] - f[b])).view(pad) * score[a]
            + (w_b * (1 - q[b]) * (f[b] - f[a])).view(pad) * score[b])
    torch.testing.assert_close(logits.grad, want, rtol=0, atol=1e-10)


def pooled_chisquare(observed: torch.Tensor, expected: torch.Tensor) -> float:
    """The chi-square test's p-value, bins expecting fewer than 5 counts pooled into one."""
    small = expected < 5
    obs = torch.cat([observed[~small], observed[small].sum().view(1)]) if small.any() else observed
    exp = torch.cat([expected[~small], expected[small].sum().view(1)]) if small.any() else expected
    obs, exp = obs.double().numpy(), exp.double().numpy()
    return float(chisquare(obs, exp * obs.sum() / exp.sum()).pvalue)


def joint_probs(problem: Problem) -> torch.Tensor:
    """q of every joint state of ``problem``'s one example, in :func:`exact.states`' order: (M,)."""
    one = Latents.of(problem.dist(problem.logits.unsqueeze(0)))
    return one.log_prob(states(one).unsqueeze(1)).exp()[:, 0]


def draws(problem: Problem, k: int) -> torch.Tensor:
    """``ROWS`` independent runs of :func:`draw_without_replacement` on ``problem``'s example, as joint state
    numbers (ROWS, k), checked distinct in every row."""
    latents = Latents.of(problem.dist(problem.logits.unsqueeze(0).expand(ROWS, *problem.logits.shape)))
    torch.manual_seed(0)
    drawn = joint_index(latents, draw_without_replacement(variable_log_probs(latents), k))  # (R, k)
    assert (drawn.sort(-1).values.diff(dim=-1) > 0).all()  # distinct
    return drawn


@pytest.mark.parametrize("kind,shape,k", [("binary", (3,), 2), ("binary", (3,), 3),
                                          ("categorical", (2, 3), 2)])
def test_draws_without_replacement_are_the_gumbel_top_k_of_the_joint(kind, shape, k):
    """20000 draws of k configurations: all distinct; the first is distributed as q (chi-square over the
    joint states), and the unordered set as p(S), the sum over orders (chi-square over the k-sets, bins
    expecting under 5 pooled); each test at false-failure rate 1e-4."""
    problem = Problem(kind, shape, seed=1)
    drawn = draws(problem, k)
    probs = joint_probs(problem)  # (M,)
    first = torch.bincount(drawn[:, 0], minlength=len(probs)).double()
    assert pooled_chisquare(first, probs * ROWS) > RATE
    sets = list(itertools.combinations(range(len(probs)), k))
    number = {s: i for i, s in enumerate(sets)}
    observed = torch.bincount(torch.tensor([number[tuple(r)] for r in drawn.sort(-1).values.tolist()]),
                              minlength=len(sets)).double()
    expected = torch.tensor([order_probability([float(probs[i]) for i in s]) for s in sets],
                            dtype=torch.float64) * ROWS
    assert pooled_chisquare(observed, expected) > RATE


@pytest.mark.parametrize("kind,shape,k", [("binary", (3,), 2), ("binary", (3,), 3),
                                          ("categorical", (2, 3), 2), ("categorical", (2, 3), 3)])
def test_draws_follow_sequential_sampling_without_replacement(kind, shape, k):
    """20000 draws of k configurations: the ordered tuple of draws (for k = 2 the pair (a, b)) follows the
    sequential law q(a) q(b) / (1 - q(a)) [q(c) / (1 - q(a) - q(b))] (chi-square over the ordered tuples of
    distinct states, bins expecting under 5 pooled, false-failure rate 1e-4)."""
    problem = Problem(kind, shape, seed=2)
    drawn = draws(problem, k)
    probs = joint_probs(problem).tolist()  # (M,)
    tuples = list(itertools.permutations(range(len(probs)), k))
    number = {t: i for i, t in enumerate(tuples)}
    observed = torch.bincount(torch.tensor([number[tuple(r)] for r in drawn.tolist()]),
                              minlength=len(tuples)).double()
    expected = []
    for t in tuples:
        prob, used = 1.0, 0.0
        for i in t:
            prob, used = prob * probs[i] / (1 - used), used + probs[i]
        expected.append(prob * ROWS)
    assert pooled_chisquare(observed, torch.tensor(expected, dtype=torch.float64)) > RATE


@pytest.mark.parametrize("kind,shape", [("binary", (5,)), ("categorical", (3, 4)),
                                        ("categorical", (2, 2, 3))])
def test_most_probable_finds_the_top_k_of_the_joint(kind, shape):
    """most_probable's k configurations are the k most probable by enumeration, in order, for k = 1 to 8
    and 5 examples of random logits."""
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(5, *shape, dtype=torch.float64, generator=gen)
    latents = Latents.of(Problem(kind, shape).dist(logits))
    log_q = latents.log_prob(states(latents).unsqueeze(1))  # (M, B)
    for k in range(1, 9):
        found = joint_index(latents, most_probable(variable_log_probs(latents), k))  # (B, k)
        assert torch.equal(found, log_q.T.topk(k, -1).indices)


@pytest.mark.parametrize("kind,shape", [("binary", (4,)), ("categorical", (2, 3))])
def test_ties_give_distinct_most_probable_configurations(kind, shape):
    """Equal logits (every state tied; and a row where half the variables are tied, the rest not):
    most_probable's k configurations are distinct and their log q are the enumeration's k largest (1e-12),
    for every k up to the whole joint space."""
    logits = torch.zeros(2, *shape, dtype=torch.float64)
    logits[1, ..., ::2] = torch.linspace(-1, 2, logits[1, ..., ::2].numel()).view_as(logits[1, ..., ::2])
    latents = Latents.of(Problem(kind, shape).dist(logits))
    log_q = latents.log_prob(states(latents).unsqueeze(1)).T  # (B, M)
    for k in range(1, log_q.shape[1] + 1):
        found = joint_index(latents, most_probable(variable_log_probs(latents), k))  # (B, k)
        assert (found.sort(-1).values.diff(dim=-1) > 0).all()
        torch.testing.assert_close(log_q.gather(1, found), log_q.topk(k, -1).values, rtol=0, atol=1e-12)


def peaked_logits(kind: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Six examples: moderate random logits; all at +30; all at -30; class 0 at +30; +30, -30 and moderate
    in turn; ties at 0."""
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(6, *shape, generator=gen, dtype=torch.float64) * 3).to(dtype)
    logits[1] = 30.0
    logits[2] = -30.0
    logits[3, ..., 0] = 30.0
    logits[4].view(-1)[::3] = 30.0
    logits[4].view(-1)[1::3] = -30.0
    logits[5] = 0.0
    return logits


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind,shape", [("binary", (6,)), ("categorical", (3, 4))])
def test_peaked_logits_give_distinct_configurations_and_finite_log_probabilities(kind, shape, dtype):
    """Logits at +-30 (see peaked_logits): the 5 most probable and 5 draws without replacement (20 runs) are
    distinct with finite log q, the most probable in descending order; and the mass outside them,
    Outside.log_mass, is log(1 - q(S)) by enumeration (the complement's logsumexp in float64) to 1e-5
    relative in float32 (1e-12 in float64), masses of e^-29 included (1 - q(S) rounds them to 0 in fp32)."""
    logits = peaked_logits(kind, shape, dtype)
    latents = Latents.of(Problem(kind, shape).dist(logits))
    exact = Latents.of(Problem(kind, shape).dist(logits.double()))
    log_q = exact.log_prob(states(exact).unsqueeze(1)).T  # (B, M), float64
    log_probs = variable_log_probs(latents)
    torch.manual_seed(0)
    for found in [most_probable(log_probs, 5)] + [draw_without_replacement(log_probs, 5) for _ in range(20)]:
        index = joint_index(latents, found)  # (B, 5)
        assert (index.sort(-1).values.diff(dim=-1) > 0).all()
        assert torch.isfinite(latents.log_prob(configurations(latents, found))).all()
        outside = torch.ones_like(log_q, dtype=torch.bool).scatter(1, index, False)
        want = log_q.masked_fill(~outside, -math.inf).logsumexp(-1)  # (B,)
        got = Outside(log_probs, found, sample=True).log_mass()
        assert got.dtype == dtype and torch.isfinite(got).all()
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    top = log_q.gather(1, joint_index(latents, most_probable(log_probs, 5)))
    assert (top.diff(dim=-1) <= 1e-9).all()


@pytest.mark.parametrize("name,options,kind,shape,n_samples,evaluated", [
    ("unordered", {}, "binary", (1,), 3, 2),
    ("unordered", {}, "categorical", (1, 3), 5, 3),
    ("sum-and-sample", {}, "binary", (2,), 4, 5),  # 3 summed, the 4th state drawn, the baseline's draw
    ("sum-and-sample", {}, "binary", (2,), 6, 4),  # all 4 summed, nothing drawn
    ("sum-and-sample", {"baseline": "none"}, "categorical", (1, 3), 3, 3),
])
def test_a_joint_space_smaller_than_k_gives_the_exact_gradient(name, options, kind, shape, n_samples,
                                                               evaluated):
    """Where k reaches the joint space, every row's estimate is the exact value and gradient (1e-10), and f
    is evaluated on what is needed only (the count evaluations() reports)."""
    problem = Problem(kind, shape, seed=6)
    value, g_logits, g_w = problem.exact()
    logits, w = problem.leaves(7)
    calls = []

    def f(z):
        calls.append(z.shape[0])
        return problem.f(w)(z)

    estimator = build_estimator(name, **options)
    out = estimator(problem.dist(logits), f, n_samples)
    out.surrogate.sum().backward()
    assert calls == [evaluated]
    assert estimator.evaluations(n_samples, kind, shape) == evaluated
    torch.testing.assert_close(out.value, value.expand(7), rtol=0, atol=1e-10)
    torch.testing.assert_close(logits.grad, g_logits.expand_as(logits.grad), rtol=0, atol=1e-10)
    torch.testing.assert_close(w.grad, g_w.expand_as(w.grad), rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind,shape,k", [("binary", (3,), 3), ("categorical", (2, 3), 4)])
def test_sum_and_sample_draws_from_outside_the_summed_set(kind, shape, k):
    """The k - 1 most probable states are summed (2 of 8 binary states, 3 of 9 categorical), and the draw,
    over 20000 rows, lies outside them and follows q restricted to the others (chi-square at false-failure
    rate 1e-4)."""
    problem = Problem(kind, shape, seed=1)
    logits = problem.logits.unsqueeze(0).repeat(ROWS, *[1] * len(shape))
    seen = []

    def f(z):
        seen.append(z)
        return z.flatten(2).sum(-1)

    torch.manual_seed(0)
    build_estimator("sum-and-sample", baseline="none")(problem.dist(logits), f, k)
    latents = Latents.of(problem.dist(logits[:1]))
    log_q = latents.log_prob(states(latents).unsqueeze(1))[:, 0]  # (M,)
    top = log_q.topk(k - 1).indices
    z = seen[0]  # (k, R, ...)
    index = z.long() if kind == "binary" else z.argmax(-1)
    number = joint_index(latents, index.flatten(2))  # (k, R)
    assert (number[: k - 1] == top.unsqueeze(1)).all()
    counts = torch.bincount(number[k - 1], minlength=len(log_q)).double()
    assert counts[top].sum() == 0
    outside = torch.ones(len(log_q), dtype=torch.bool)
    outside[top] = False
    expected = log_q.exp()[outside] / log_q.exp()[outside].sum() * ROWS
    assert pooled_chisquare(counts[outside], expected) > RATE


@pytest.mark.parametrize("name", ["unordered", "sum-and-sample"])
@pytest.mark.parametrize("kind,shape", [("binary", (6,)), ("categorical", (3, 4))])
def test_saturated_float32_logits_give_finite_estimates(name, kind, shape):
    """Logits at +-30 (one configuration holding all but ~1e-12 of the mass, and ties) mixed with moderate
    ones, in float32: value, surrogate and both gradients finite, the value within the range of f."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, *shape, generator=gen) * 3
    logits[0] = 30.0
    logits[1] = -30.0
    logits[2, ..., 0] = 30.0
    logits.requires_grad_()
    w = torch.randn(shape, generator=gen).requires_grad_()
    dist = Problem(kind, shape).dist(logits)
    torch.manual_seed(0)
    out = build_estimator(name)(dist, lambda z: (z * w).flatten(2).sum(-1), 4, check=True)
    out.surrogate.sum().backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(w.grad).all()
    assert (out.value.abs() <= w.abs().sum() + 1e-4).all()


@pytest.mark.parametrize("name", ["unordered", "sum-and-sample"])
def test_one_call_of_f_and_rows_stay_separate(name):
    """f is called once on all configurations (distinct per row); surrogate[b] depends on row b only; the
    surrogate's value is the value estimate."""
    problem = Problem("categorical", (2, 3), seed=5)
    logits, w = problem.leaves(4)
    calls = []

    def f(z):
        calls.append(z)
        return problem.f(w)(z)

    out = build_estimator(name)(problem.dist(logits), f, 4)
    assert [z.shape for z in calls] == [(4 if name == "unordered" else 5, 4, 2, 3)]
    distinct = calls[0][:4].flatten(2).transpose(0, 1)  # (rows, 4, 6): the unordered draws, or C and z_o
    assert all(len({tuple(c) for c in row.tolist()}) == 4 for row in distinct)
    torch.testing.assert_close(out.surrogate.detach(), out.value)
    for grad in torch.autograd.grad(out.surrogate[1], (logits, w)):
        assert grad[[0, 2, 3]].abs().max() == 0


def test_contract_options_and_evaluations():
    for name in ("unordered", "sum-and-sample"):
        cls = ESTIMATORS.get(name)
        assert cls.unbiased and cls.min_samples == 2 and cls.supports == ("binary", "categorical")
        with pytest.raises(ConfigError, match="at least 2 samples"):
            build_estimator(name)(Problem("binary", (3,)).dist(torch.zeros(2, 3)), lambda z: z.sum(-1), 1)
    with pytest.raises(ConfigError, match="--baseline must be one of sample, none"):
        build_estimator("sum-and-sample", baseline="mean")
    with pytest.raises(ConfigError, match="no option"):
        build_estimator("unordered", baseline="none")
    assert build_estimator("unordered").evaluations(4, "categorical", (20, 10)) == 4
    assert build_estimator("sum-and-sample").evaluations(4, "categorical", (20, 10)) == 5
    assert build_estimator("sum-and-sample", baseline="none").evaluations(4, "categorical", (20, 10)) == 4
    assert "n_samples + 1" in ESTIMATORS.get("sum-and-sample").cost
