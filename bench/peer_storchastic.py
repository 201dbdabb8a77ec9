"""Our estimators against storchastic's implementations of the same estimators, on one problem with an exact
gradient: bias, variance and time side by side.

storchastic (van Krieken, Tomczak & ten Teije, NeurIPS 2021) is the one other library that ships the
without-replacement estimators; it is a peer to check against, never a dependency (AGPL; install it apart,
``pip install --no-deps storchastic==0.3.7 entmax pyro-ppl opt_einsum``). The problem is ``E_q[f]`` for a
factorial ``q`` of one example's latents, the ``logits`` drawn once from ``--seed``, and
``f(z) = l - l^2 / 2`` with ``l = <w, z>`` (nonlinear, so no estimator is exact by accident). The exact
gradient with respect to the logits comes from enumerating the joint configurations.

Pairs (ours | storchastic), each at the same number of evaluations of ``f``:

- ``rloo:K`` | ``ScoreFunction(n_samples=K, baseline_factory="batch_average")``: REINFORCE leave-one-out;
- ``unordered:k`` | ``UnorderedSetEstimator(k)``: the unordered set estimator with its built-in baseline over
  the joint configuration (storchastic runs a stochastic beam search over the variables and integrates the
  leave-one-out ratios numerically, with 1000 points; ours draws without replacement exactly and sums the
  set probabilities exactly);
- ``sum-and-sample:k`` with ``--baseline none`` | ``RaoBlackwellSF(n_samples=k)``: ``k - 1`` most probable
  joint configurations summed, one draw from the rest (storchastic has no baseline; ours by default adds
  one, at one more evaluation, so the default is listed too, unpaired);
- binary only: ``arm`` | ``ARM`` and ``disarm`` | ``DisARM`` (one antithetic pair: two evaluations).

Each row of a batch of ``--rows`` is an independent copy of the problem, so one call gives that many
independent estimates. Per estimator: the largest |z| of the mean over the rows against the exact gradient
(Bonferroni: at a false-alarm rate of 1e-4 an unbiased estimator stays under the ``limit`` printed), the
variance (trace of the covariance over the coordinates), and for a pair the ratio of the variances with a
Welch z of the difference of the per-row squared errors (both unbiased, so each row's squared error has
the variance's trace as its mean): |z| below 3.9 is no evidence that the two variances differ, at a
false-alarm rate of 1e-4. Time: the median of ``--repeats`` calls on a batch of ``--batch`` rows, forward
and backward, the two libraries interleaved after a round of warm-up; with one thread (``OMP_NUM_THREADS=1``)
it is the thread's CPU time, else the wall clock. Last, per setting, the exact variances of ``unordered`` and
of ``sum-and-sample`` without a baseline at ``k = 2`` (by enumeration: :func:`exact_unordered_variance`,
:func:`exact_sum_and_sample_variance`) beside both libraries' mean squared errors, with their z.

    OMP_NUM_THREADS=1 python bench/peer_storchastic.py --json peer.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Distribution, OneHotCategorical

from discrete_vae.estimators import Latents, build_estimator, exact_expectation
from discrete_vae.estimators.exact import states

SETTINGS = {"categorical": (3, 4), "binary": (6, 2)}  # name -> (variables, classes): 64 joint states each


class Problem:
    """``E_q[f]``: one example's logits and weights, and their exact gradient by enumeration."""

    def __init__(self, kind: str, seed: int):
        n, c = SETTINGS[kind]
        shape = (n,) if kind == "binary" else (n, c)
        gen = torch.Generator().manual_seed(seed)
        self.kind = kind
        self.logits = torch.randn(shape, generator=gen, dtype=torch.float64)
        self.w = torch.randn(shape, generator=gen, dtype=torch.float64)
        leaf = self.logits.unsqueeze(0).clone().requires_grad_()
        exact_expectation(self.dist(leaf), self.f).sum().backward()
        self.exact = leaf.grad[0].reshape(-1)

    def dist(self, logits: Tensor) -> Distribution:
        return Bernoulli(logits=logits) if self.kind == "binary" else OneHotCategorical(logits=logits)

    def f(self, z: Tensor) -> Tensor:
        """(..., B, *shape) -> (..., B)."""
        linear = (z * self.w).flatten(-len(self.w.shape)).sum(-1)
        return linear - 0.5 * linear.square()

    def rows(self, n: int) -> Tensor:
        return self.logits.unsqueeze(0).repeat((n,) + (1,) * self.logits.dim()).requires_grad_()


def ours(name: str, k: int, **options) -> Callable[[Problem, int], Tensor]:
    """Our estimator ``name`` at ``k`` samples: ``rows`` independent gradients (rows, P)."""
    estimator = build_estimator(name, **options)

    def run(problem: Problem, rows: int) -> Tensor:
        logits = problem.rows(rows)
        estimator(problem.dist(logits), problem.f, k).surrogate.sum().backward()
        return logits.grad.reshape(rows, -1)

    return run


Spec = tuple[str, dict]  # a storchastic method: its class in storch.method and its keyword arguments


def theirs(spec: Spec) -> Callable[[Problem, int], Tensor]:
    """storchastic's method ``spec``: ``rows`` independent gradients (rows, P). storchastic minimises the
    mean cost over the independent ``data`` plate, so the gradient of ``E[f]`` per row is ``-rows`` times the
    logits' gradient of ``-f``. Only in :class:`Storchastic`'s process: importing storchastic patches torch
    (``torch.is_tensor``, ``Tensor.to``, ``Tensor.le``, ``Tensor.gt``, argument validation off), which would
    slow and change the code it is compared with."""
    import storch
    import storch.method

    name, kwargs = spec

    def run(problem: Problem, rows: int) -> Tensor:
        logits = problem.rows(rows)
        method = getattr(storch.method, name)("z", **kwargs)
        z = method(problem.dist(storch.denote_independent(logits, 0, "data")))
        storch.add_cost(-problem.f(z), "f")
        storch.backward()
        grad = torch.zeros_like(logits) if logits.grad is None else logits.grad  # None: no path to the logits
        return -rows * grad.reshape(rows, -1)

    return run


def gradients(run: Callable[[Problem, int], Tensor], problem: Problem, sizes: list[int], seed: int) -> Tensor:
    """``run``'s gradients in calls of ``sizes`` rows, from ``seed``: (sum(sizes), P)."""
    torch.manual_seed(seed)
    return torch.cat([run(problem, size) for size in sizes])


def serve(conn) -> None:
    """:class:`Storchastic`'s process: answers ``(what, kind, problem seed, spec, argument, seed)``."""
    try:
        import storch  # noqa: F401
    except ImportError as e:
        conn.send(e)
        return
    conn.send(None)
    while (request := conn.recv()) is not None:
        what, kind, problem_seed, spec, arg, seed = request
        problem, run = Problem(kind, problem_seed), theirs(spec)
        conn.send(gradients(run, problem, arg, seed) if what == "gradients" else timed(run, problem, arg))


class NotInstalled(Exception):
    """storchastic cannot be imported."""


class Storchastic:
    """storchastic in a process of its own (spawned, so that this one's torch stays unpatched)."""

    def __enter__(self) -> Storchastic:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=serve, args=(child,), daemon=True)
        self.process.start()
        error = self.conn.recv()
        if error is not None:
            self.process.join(60)
            raise NotInstalled(str(error))
        return self

    def __exit__(self, *exc) -> None:
        self.conn.send(None)
        self.process.join(60)

    def ask(self, *request):
        self.conn.send(request)
        return self.conn.recv()


def pairs(kind: str, ks: list[int]) -> list[tuple[str, Callable, str | None, Spec | None]]:
    """``(our label, ours, their label, their spec)`` for ``kind``; an unpaired row has no storchastic
    side."""
    out = []
    for k in ks:
        out.append((f"rloo:{k}", ours("rloo", k), f"ScoreFunction(n_samples={k}, batch_average)",
                    ("ScoreFunction", {"n_samples": k, "baseline_factory": "batch_average"})))
        out.append((f"unordered:{k}", ours("unordered", k), f"UnorderedSetEstimator(k={k})",
                    ("UnorderedSetEstimator", {"k": k})))
        out.append((f"sum-and-sample:{k} (baseline none)", ours("sum-and-sample", k, baseline="none"),
                    f"RaoBlackwellSF(n_samples={k})", ("RaoBlackwellSF", {"n_samples": k})))
        out.append((f"sum-and-sample:{k} (baseline sample)", ours("sum-and-sample", k), None, None))
    if kind == "binary":
        out.append(("arm:2", ours("arm", 2), "ARM(n_samples=1)", ("ARM", {"n_samples": 1})))
        out.append(("disarm:2", ours("disarm", 2), "DisARM(n_samples=1)", ("DisARM", {"n_samples": 1})))
    return out


def summary(grads: Tensor, exact: Tensor) -> dict[str, float]:
    """Bias z, variance (trace) and the per-row squared errors' mean and standard error."""
    rows = grads.shape[0]
    mean = grads.mean(0)
    se = grads.std(0) / math.sqrt(rows)
    sq = (grads - exact).square().sum(1)  # (rows,): mean is the variance's trace for an unbiased estimator
    return {"max_abs_z": float(((mean - exact) / se.clamp_min(1e-300)).abs().max()),
            "mean_norm": float(mean.norm() / exact.norm()),
            "error_norm": float((mean - exact).norm() / exact.norm()),
            "variance": float(grads.var(0).sum()), "sq_mean": float(sq.mean()),
            "sq_se": float(sq.std() / math.sqrt(rows))}


def welch_z(a: dict[str, float], b: dict[str, float]) -> float:
    """Welch z of two :func:`summary` results' mean squared errors (each unbiased estimator's variance)."""
    return (a["sq_mean"] - b["sq_mean"]) / math.hypot(a["sq_se"], b["sq_se"])


def enumerated(problem: Problem) -> tuple[Tensor, Tensor, Tensor]:
    """``(q, f, score)`` at every joint configuration: (M,), (M,) and (M, P), the score being the gradient of
    ``log q`` with respect to the logits."""
    logits = problem.logits.unsqueeze(0)
    z = states(Latents.of(problem.dist(logits)))  # (M, *shape)
    log_q = problem.dist(logits).log_prob(z.unsqueeze(1)).squeeze(1)
    q = (log_q.flatten(1).sum(1) if problem.kind == "binary" else log_q.sum(-1)).exp()  # (M,)
    mean = torch.sigmoid(problem.logits) if problem.kind == "binary" else problem.logits.softmax(-1)
    return q, problem.f(z), (z - mean).flatten(1)


def trace_variance(problem: Problem, prob: Tensor, estimates: Tensor) -> float:
    """The variance (trace) of an estimator that gives ``estimates`` (..., P) with probabilities ``prob``
    (...), checked to be unbiased."""
    expected = (prob.unsqueeze(-1) * estimates).flatten(0, -2).sum(0)
    assert torch.allclose(expected, problem.exact, atol=1e-12), "the enumeration's mean is not the gradient"
    return float((prob * estimates.square().sum(-1)).sum() - expected.square().sum())


def exact_unordered_variance(problem: Problem) -> float:
    r"""The variance of ``unordered`` at ``k = 2``, by enumerating every ordered pair of distinct joint
    configurations ``(a, b)``, drawn in that order with probability :math:`q_a q_b / (1 - q_a)`. For the
    set :math:`\{a, b\}`, :math:`p(S)` sums the two orders, :math:`w_a = q_a q_b / ((1 - q_a) p(S))` and
    the built-in baseline is :math:`b_a = q_a f_a + (1 - q_a) f_b`, so the estimate is
    :math:`w_a (1 - q_a)(f_a - f_b) \nabla\log q_a + w_b (1 - q_b)(f_b - f_a) \nabla\log q_b`."""
    q, f, score = enumerated(problem)
    first = q[:, None] * q[None, :] / (1 - q[:, None])  # (M, M): a, then b
    first.fill_diagonal_(0)
    set_prob = first + first.T
    w = first / set_prob.masked_fill(set_prob == 0, 1)  # w_a of {a, b}, a's row
    coef = w * (1 - q[:, None]) * (f[:, None] - f[None, :])  # (M, M): the factor of grad log q_a
    return trace_variance(problem, first, coef[..., None] * score[:, None, :] + coef.T[..., None] * score)


def exact_sum_and_sample_variance(problem: Problem) -> float:
    r"""The variance of ``sum-and-sample`` at ``k = 2`` without a baseline: the most probable configuration
    ``t`` summed, one draw ``z`` from the rest (probability :math:`q_z / (1 - q_t)`), the estimate
    :math:`q_t f_t \nabla\log q_t + (1 - q_t) f_z \nabla\log q_z`."""
    q, f, score = enumerated(problem)
    t = int(q.argmax())
    rest = torch.arange(len(q)) != t
    estimates = q[t] * f[t] * score[t] + (1 - q[t]) * f[rest, None] * score[rest]
    return trace_variance(problem, q[rest] / (1 - q[t]), estimates)


EXACT = {"unordered:2": exact_unordered_variance,
         "sum-and-sample:2 (baseline none)": exact_sum_and_sample_variance}


def timed(run: Callable[[Problem, int], Tensor], problem: Problem, batch: int) -> float:
    """Seconds of one call: the thread's CPU time with one thread (other processes on a shared machine
    inflate it far less than the wall clock), else the wall clock."""
    clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
    start = clock()
    run(problem, batch)
    return clock() - start


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", default="categorical,binary", help="comma list of: " + ", ".join(SETTINGS))
    p.add_argument("--ks", default="2,3", help="samples per estimate, comma list")
    p.add_argument("--rows", type=int, default=4000, help="independent estimates per estimator")
    p.add_argument("--chunk", type=int, default=25000,
                   help="rows per call when measuring (storchastic's unordered set estimator holds about "
                        "0.1 MB a row)")
    p.add_argument("--batch", type=int, default=100, help="rows per timed call")
    p.add_argument("--repeats", type=int, default=7, help="timed calls per estimator")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args(argv)
    command = " ".join(["python bench/peer_storchastic.py", *(argv or sys.argv[1:])])
    try:
        with Storchastic() as peer:
            return measure(args, peer, command)
    except NotInstalled:
        sys.exit("peer_storchastic.py: storchastic is not installed "
                 "(pip install --no-deps storchastic==0.3.7 entmax pyro-ppl opt_einsum)")


def measure(args: argparse.Namespace, peer: Storchastic, command: str) -> dict:
    ks = [int(k) for k in args.ks.split(",")]
    results: dict = {"command": command,
                     "rows": args.rows, "batch": args.batch, "settings": {}}
    for kind in args.settings.split(","):
        problem = Problem(kind, args.seed)
        n, c = SETTINGS[kind]
        print(f"\n{kind}: {n} variables x {c} classes ({c ** n} joint states), {args.rows} rows; an unbiased "
              f"estimator's max abs z stays under {bias_limit(problem.exact.numel()):.2f} at a false-alarm "
              f"rate of 1e-4 ({problem.exact.numel()} coordinates)")
        print("| ours | max abs z | variance | storchastic | max abs z | variance | ours / theirs | Welch z "
              "| ours ms | theirs ms | theirs / ours |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        rows = []
        sizes = [min(args.chunk, args.rows - i) for i in range(0, args.rows, args.chunk)]
        for label, mine, their_label, spec in pairs(kind, ks):
            # each from the same seed: where both draw alike, they see the same draws
            stats = [summary(gradients(mine, problem, sizes, args.seed), problem.exact)]
            if spec is not None:
                grads = peer.ask("gradients", kind, args.seed, spec, sizes, args.seed)
                stats.append(summary(grads, problem.exact))
            times: list[list[float]] = [[] for _ in stats]
            for r in range(args.repeats + 1):  # interleaved; the first round warms up
                spent = [timed(mine, problem, args.batch)]
                if spec is not None:
                    spent.append(peer.ask("time", kind, args.seed, spec, args.batch, 0))
                for mine_or_theirs, seconds in zip(times, spent, strict=True):
                    mine_or_theirs.extend([seconds] if r else [])
            ms = [1e3 * statistics.median(spent) for spent in times]
            a = stats[0]
            row = {"ours": label, "ours_stats": a, "ours_ms": ms[0]}
            cells = [label, f"{a['max_abs_z']:.2f}", f"{a['variance']:.4g}"]
            if spec is None:
                cells += [""] * 5 + [f"{ms[0]:.2f}", "", ""]
            else:
                b = stats[1]
                welch = welch_z(a, b)
                row.update(theirs=their_label, theirs_stats=b, ratio=a["variance"] / b["variance"],
                           welch_z=welch, theirs_ms=ms[1])
                cells += [their_label, f"{b['max_abs_z']:.2f}", f"{b['variance']:.4g}", f"{row['ratio']:.3f}",
                          f"{welch:+.2f}", f"{ms[0]:.2f}", f"{ms[1]:.2f}", f"{ms[1] / ms[0]:.1f}x"]
            print("| " + " | ".join(cells) + " |")
            rows.append(row)
        for row in rows:  # the biased ones, in words
            for side, name in (("ours", row["ours"]), ("theirs", row.get("theirs"))):
                st = row.get(f"{side}_stats")
                if st is not None and st["max_abs_z"] > bias_limit(problem.exact.numel()):
                    print(f"{name}: biased; the norm of its mean gradient is {st['mean_norm']:.3g} of the "
                          f"exact gradient's, of its error {st['error_norm']:.3g}")
        for row in rows:
            if row["ours"] not in EXACT:
                continue
            row["exact_variance"] = exact = EXACT[row["ours"]](problem)
            line = [f"{row['ours']}'s exact variance, by enumeration: {exact:.4g}"]
            for side, name in (("ours", "ours"), ("theirs", "storchastic's")):
                st = row[f"{side}_stats"]
                z = (st["sq_mean"] - exact) / st["sq_se"]
                line.append(f"{name} measures {st['sq_mean']:.4g} +- {st['sq_se']:.2g} (z {z:+.2f})")
            print("; ".join(line))
        results["settings"][kind] = rows
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return results


def bias_limit(coordinates: int) -> float:
    """Two-sided normal quantile at 1e-4 split over ``coordinates`` (the bias check's limit)."""
    from scipy.stats import norm

    return float(norm.ppf(1 - 1e-4 / (2 * coordinates)))


if __name__ == "__main__":
    main()
