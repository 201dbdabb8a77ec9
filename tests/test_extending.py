"""The worked examples of extending the package (docs/examples/, shown in docs/architecture.md): a new
estimator (``muprop``), a new prior (``sparse``) and a new posterior (``probit``), each one file that
registers itself.

Loaded from their files, they are available by name through the registries, the command line's entry point
and :class:`~discrete_vae.config.TrainConfig`; ``muprop`` is unbiased against the exact gradient by
enumeration and exact for a linear ``f``; ``sparse``'s log density, KL and draws agree with
``torch.distributions``; and the example script trains and evaluates a model with both on ``digits``.

False failures: ``muprop``'s three unbiasedness cases make three z-tests each at family-wise rate 1e-4
(:func:`estimator_checks.check_unbiased`), the prior's draws one z-test at 1e-4: at most 1e-3 for the file.
Every seed is fixed, so a run is repeatable.
"""

from __future__ import annotations

import importlib.util
import json
import math
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch.distributions import Bernoulli, Independent, kl_divergence

from discrete_vae.cli import main
from discrete_vae.config import TrainConfig
from discrete_vae.errors import ConfigError
from discrete_vae.estimators import ESTIMATORS, build_estimator
from discrete_vae.estimators.base import Latents
from discrete_vae.estimators.exact import states
from discrete_vae.posteriors import POSTERIORS, LatentSpec, build_posterior
from discrete_vae.posteriors import kl as kl_module
from discrete_vae.posteriors.kl import analytic_kl
from discrete_vae.priors import PRIORS, build_prior
from discrete_vae.recipe import model_from_run
from estimator_checks import FALSE_FAILURE, Problem, assert_unbiased, check_unbiased

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


@pytest.fixture(scope="module")
def examples():
    """The example modules, loaded from their files under their own names (as ``import muprop`` finds them
    in a script beside them). What they register goes into copies of the registries, put back afterwards,
    so that the package's other tests see only its own methods."""
    with pytest.MonkeyPatch.context() as patch:
        for registry in (ESTIMATORS, PRIORS, POSTERIORS):
            patch.setattr(registry, "_items", dict(registry._items))
        patch.setattr(kl_module, "_PAIRS", dict(kl_module._PAIRS))
        modules = {}
        for name in ("muprop", "sparse_prior", "probit_posterior"):
            spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            patch.setitem(sys.modules, name, module)
            spec.loader.exec_module(module)
            modules[name] = module
        yield SimpleNamespace(**modules)


# ------------------------------------------------------------------------------- available by name


def test_registration_makes_them_available_by_name(examples, capsys):
    assert ESTIMATORS.get("muprop") is examples.muprop.MuProp
    assert PRIORS.get("sparse").build is examples.sparse_prior.sparse
    assert isinstance(build_estimator("muprop"), examples.muprop.MuProp)
    prior = build_prior("sparse", 6, 2, True, p=0.2)
    assert isinstance(prior, examples.sparse_prior.SparseBernoulliPrior) and prior.p == 0.2
    config = TrainConfig.of(dataset="digits", latent="6", binary=True, estimator="muprop", prior="sparse")
    assert (config.model.estimator, config.model.prior, config.model.k) == ("muprop", "sparse", 1)
    flagged = TrainConfig.from_dict({"latent": "6", "binary": True, "prior": "sparse", "p": 0.3})
    assert flagged.model.prior_options.p == 0.3  # a flag's or a file's value reaches the prior's options

    assert main(["list", "estimators"]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("muprop"))
    assert line.split(None, 1)[1] == ("binary, categorical; unbiased; n_samples + 1 evaluations of f and one "
                                      "of grad_z f (at the mean)")
    assert main(["list", "priors"]) == 0
    assert "sparse" in capsys.readouterr().out.split()


# -------------------------------------------------------------------------------------- the estimator


@pytest.mark.parametrize("kind,shape,n_samples", [("binary", (5,), 1), ("binary", (5,), 3),
                                                  ("categorical", (2, 3), 2)])
def test_muprop_is_unbiased(examples, kind, shape, n_samples):
    """Value, d/dlogits and d/dw (parameters inside a nonlinear f) of 20000 independent estimates agree with
    exact enumeration."""
    check_unbiased(build_estimator("muprop"), kind, shape, n_samples)


@pytest.mark.parametrize("kind,shape", [("binary", (5,)), ("categorical", (2, 3))])
def test_muprop_is_exact_for_a_linear_f(examples, kind, shape):
    """For a linear f the Taylor baseline is f itself: every single estimate of d/dlogits is the exact
    gradient."""
    problem = Problem(kind, shape, seed=3, nonlinear=False)
    _, g_logits, _ = problem.exact()
    torch.manual_seed(0)
    _, est_logits, _ = problem.estimates(build_estimator("muprop"), 50, 1)
    torch.testing.assert_close(est_logits, g_logits.reshape(1, -1).expand_as(est_logits))


def test_muprop_calls_f_at_the_draws_and_at_the_mean(examples):
    problem = Problem("categorical", (2, 3), seed=5)
    logits, w = problem.leaves(4)
    seen = []

    def f(z):
        seen.append(z.detach())
        return problem.f(w)(z)

    out = build_estimator("muprop")(problem.dist(logits), f, 3)
    assert [tuple(z.shape) for z in seen] == [(3, 4, 2, 3), (1, 4, 2, 3)]
    torch.testing.assert_close(seen[1][0], logits.detach().softmax(-1))
    torch.testing.assert_close(out.surrogate.detach(), out.value)
    seen.clear()
    with torch.no_grad():  # nothing to differentiate: the draws only
        build_estimator("muprop")(problem.dist(logits), f, 3)
    assert [tuple(z.shape) for z in seen] == [(3, 4, 2, 3)]
    assert build_estimator("muprop").evaluations(3, "categorical", (2, 3)) == 4


# ------------------------------------------------------------------------------------------ the prior


def test_sparse_prior_log_prob_kl_and_draws_match_torch_distributions(examples):
    p, n = 0.15, 6
    prior = build_prior("sparse", n, 2, True, p=p)
    reference = Independent(Bernoulli(probs=torch.full((n,), p, dtype=torch.float64)), 1)
    z = states(Latents("binary", torch.zeros(1, n))).double()  # (64, 6): every state
    torch.testing.assert_close(prior.log_prob(z).double(), reference.log_prob(z), rtol=1e-6, atol=1e-6)
    assert abs(float(prior.log_prob(z).double().logsumexp(0))) < 1e-6  # normalised

    posterior = build_posterior("categorical", LatentSpec(n, 2, True))  # factorial Bernoulli q(z|x)
    params = torch.randn(5, n, generator=torch.Generator().manual_seed(0))
    want = kl_divergence(Bernoulli(logits=params.double()), Bernoulli(probs=torch.tensor(p).double())).sum(-1)
    torch.testing.assert_close(analytic_kl(posterior, params, prior).double(), want, rtol=1e-5, atol=1e-6)

    torch.manual_seed(0)
    draws = prior.sample(20000)  # (20000, 6)
    assert draws.shape == (20000, n) and set(draws.unique().tolist()) <= {0.0, 1.0}
    assert_unbiased(draws.double(), torch.full((n,), p, dtype=torch.float64), "frequency of 1", FALSE_FAILURE)


def test_sparse_prior_refuses_categorical_latents_and_p_outside_0_1(examples):
    with pytest.raises(ConfigError, match="binary latents"):
        build_prior("sparse", 4, 3, False)
    for p in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError, match="between 0 and 1"):
            build_prior("sparse", 4, 2, True, p=p)


# ------------------------------------------------------------------------------- the example script


def test_the_example_script_trains_and_evaluates_with_both(examples, tmp_path, monkeypatch, capsys):
    """docs/examples/train_extended.py as it is, in an empty folder: 300 steps on digits through the Python
    API, then ``dvae eval`` through the entry point; the run folder names both and rebuilds them."""
    monkeypatch.chdir(tmp_path)
    namespace = runpy.run_path(str(EXAMPLES / "train_extended.py"), run_name="__main__")
    assert math.isfinite(namespace["result"]["nll"]) and namespace["result"]["nll"] > 0
    run = tmp_path / "runs" / "muprop-sparse"
    config = yaml.safe_load((run / "config.yaml").read_text())
    model = config["model"]
    assert (model["estimator"], model["prior"], config["optim"]["steps"]) == ("muprop", "sparse", 300)
    assert model["prior_options"] == {"p": 0.05}
    evaluation = json.loads((run / "eval_valid_S100_seed0_best.json").read_text())
    assert evaluation["step"] == 300 and evaluation["nll"] > 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["nll"] == evaluation["nll"]
    model, _, _ = model_from_run(run)
    assert isinstance(model.estimator, examples.muprop.MuProp)
    assert isinstance(model.prior, examples.sparse_prior.SparseBernoulliPrior)
    torch.testing.assert_close(model.prior.logits, torch.full((16,), math.log(0.05 / 0.95)))


# -------------------------------------------------------------------------------------- the posterior


def test_probit_posterior_is_the_bernoulli_of_phi_mu_and_trains(examples, tmp_path):
    """``probit``: registered by name; its discrete posterior is Bernoulli(Phi(mu)) (log_prob over every
    state against torch.distributions, finite logits at |mu| = 40, hard draws' frequencies), its relaxation
    at tau = 0.01 falls on the same side as the hard draw it relaxes (frequencies of zeta > 1/2 against
    Phi(mu)), its registered KL is torch's Bernoulli KL; it trains through its relaxation and through a
    hard-sample estimator (rloo) on digits."""
    from discrete_vae.train import train

    probit = examples.probit_posterior
    assert POSTERIORS.get("probit").build is probit.ProbitBinary
    n = 5
    posterior = build_posterior("probit", LatentSpec(n, 2, True))
    mu = torch.tensor([[-1.5, -0.3, 0.0, 0.4, 2.0]], dtype=torch.float64)
    phi = torch.distributions.Normal(0.0, 1.0).cdf(mu)  # (1, N)
    reference = Independent(Bernoulli(probs=phi), 1)
    z = states(Latents("binary", torch.zeros(1, n))).double()  # (32, 5): every state
    q = posterior.discrete_posterior(mu)
    torch.testing.assert_close(q.log_prob(z), reference.log_prob(z))
    assert torch.isfinite(probit.probit_logits(torch.tensor([-40.0, 40.0], dtype=torch.float64))).all()

    torch.manual_seed(0)
    draws = q.sample((20000,))[:, 0]  # (20000, N)
    assert_unbiased(draws, phi[0], "frequency of 1", FALSE_FAILURE)
    prior = build_prior("uniform", n, 2, True).double()
    latent = posterior.relaxed(mu, prior, torch.tensor(0.01, dtype=torch.float64), 20000)
    assert_unbiased((latent.z[:, 0] > 0.5).double(), phi[0], "relaxed frequency", FALSE_FAILURE)
    want = kl_divergence(Bernoulli(probs=phi), Bernoulli(probs=torch.tensor(0.5).double())).sum(-1)
    torch.testing.assert_close(latent.kl, want)

    for estimator, k in (("auto", 1), ("rloo", 2)):
        config = TrainConfig.of(dataset="digits", latent="8", binary=True, posterior="probit",
                             estimator=estimator, k=k, hidden=(32,), steps=60, eval_every=30,
                             out=str(tmp_path / estimator))
        assert config.model.methods()["estimator"] == ("relaxed" if estimator == "auto" else "rloo")
        result = train(config, progress=False)
        assert math.isfinite(result["nll"]) and result["nll"] > 0
