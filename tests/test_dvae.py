"""The DVAE family wired into the toolkit: prior terms, hierarchical posteriors, objectives and the CLI.

References are independent: exact enumeration of small RBMs, torch's MultivariateNormal for the Gaussian
integral trick, Gauss-Legendre quadrature over a one-unit smoothing for DVAE++'s hierarchical estimator.
Statistical checks use fixed seeds; each tolerance is stated with its false-failure rate.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal

from cli_helpers import dvae, last_json
from discrete_vae.config import TrainConfig
from discrete_vae.distributions import get_smoothing
from discrete_vae.networks import MLPConfig, build_mlp
from discrete_vae.posteriors import HierarchicalBernoulli, LatentSpec, build_posterior
from discrete_vae.posteriors.dvae import MODELS
from discrete_vae.priors import RBMPrior
from discrete_vae.recipe import kl_weight, learning_rate
from test_rbm import make_rbm


def all_states(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=torch.float64)


# --- prior terms -------------------------------------------------------------------------------------------
def test_factorial_cross_entropy_and_its_gradient_match_enumeration():
    rbm = make_rbm(3, 2, 0.8, seed=0)
    logits = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    probs = torch.sigmoid(logits)
    z = all_states(5)  # (32, 5)
    log_q = (z[:, None] * probs.log() + (1 - z[:, None]) * (1 - probs).log()).sum(-1)  # (32, 4)
    exact = (log_q.exp() * rbm.energy(z)[:, None]).sum(0)  # (4,)
    ours = rbm.cross_entropy(probs)
    torch.testing.assert_close(ours, exact)
    params = [logits, rbm.b_a, rbm.b_b, rbm.w]
    g_ours = torch.autograd.grad(ours.sum(), params, retain_graph=True)
    g_exact = torch.autograd.grad(exact.sum(), params)
    for a, b in zip(g_ours, g_exact, strict=True):
        torch.testing.assert_close(a, b)


def test_hierarchical_cross_entropy_estimator_is_unbiased_with_exact_gradients():
    """Two groups of one unit: ``q(z_1) = σ(l)``, ``q(z_2 | ζ_1) = σ(c + d ζ_1)``, exponential smoothing.

    Exact ``E_q[E(z)] = ∫ q(ζ_1) [-(b_a ν + b_b σ_2 + w ν σ_2)] dζ_1`` by 200-node Gauss-Legendre quadrature
    (ν = q(z_1 = 1 | ζ_1)); the estimator's mean and gradient over 20 batches of 20,000 draws must lie within
    5 standard errors of it (per coordinate, false-failure rate < 6e-7 each under normality).
    """
    rbm = make_rbm(1, 1, 1.5, seed=3)
    smoothing = get_smoothing("exp", 4.0)
    theta = torch.tensor([0.4, -0.3, 1.2], dtype=torch.float64, requires_grad=True)  # l, c, d
    params = [theta, rbm.b_a, rbm.b_b, rbm.w]

    def inner(zeta1: torch.Tensor, nu: torch.Tensor) -> torch.Tensor:
        q2 = torch.sigmoid(theta[1] + theta[2] * zeta1)
        probs = torch.stack([torch.sigmoid(theta[0]).expand_as(zeta1), q2], -1)
        return rbm.cross_entropy(probs, nu[..., None])

    x, w = np.polynomial.legendre.leggauss(200)
    zeta = torch.tensor((x + 1) / 2, dtype=torch.float64)
    weights = torch.tensor(w / 2, dtype=torch.float64)
    logit = theta[0].expand_as(zeta)
    density = smoothing.log_prob(zeta, logit).exp()
    nu_exact = torch.sigmoid(logit + smoothing.log_r1(zeta) - smoothing.log_r0(zeta))
    exact = (weights * density * inner(zeta, nu_exact)).sum()
    g_exact = torch.cat([g.reshape(-1) for g in torch.autograd.grad(exact, params)])

    torch.manual_seed(0)
    values, grads = [], []
    for _ in range(20):
        z1 = smoothing.rsample(theta[0].expand(20_000), implicit=False)
        nu = torch.sigmoid(theta[0] + smoothing.log_r1(z1) - smoothing.log_r0(z1))
        est = inner(z1, nu).mean()
        values.append(est.detach())
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(est, params)]))
    values, grads = torch.stack(values), torch.stack(grads)
    se = values.std() / math.sqrt(20)
    assert abs(values.mean() - exact.detach()) < 5 * se + 1e-12
    g_se = grads.std(0) / math.sqrt(20)
    assert bool(((grads.mean(0) - g_exact).abs() < 5 * g_se + 1e-9).all()), (grads.mean(0), g_exact, g_se)


@pytest.mark.parametrize("name", ["exp", "unexp", "power", "gauss"])
def test_mean_field_marginal_is_a_lower_bound_exact_without_couplings(name):
    rbm = make_rbm(3, 3, 0.9, seed=1)
    smoothing = get_smoothing(name, 8.0)
    torch.manual_seed(2)
    zeta = smoothing.rsample(torch.randn(50, 6, dtype=torch.float64)).clamp(1e-6, 1 - 1e-6)
    z = all_states(6)  # (64, 6)
    log_r = smoothing.log_r(zeta[:, None], z[None]).sum(-1)  # (50, 64)
    exact = torch.logsumexp(log_r - rbm.energy(z)[None], 1).detach()
    bound = rbm.marginal_log_prob_mf(zeta, smoothing, iterations=50).detach()
    assert bool((bound <= exact + 1e-9).all())
    assert float((exact - bound).max()) > 1e-4  # the couplings make it a strict bound here
    with torch.no_grad():
        rbm.w.zero_()
        exact0 = torch.logsumexp(log_r - rbm.energy(z)[None], 1)
        torch.testing.assert_close(rbm.marginal_log_prob_mf(zeta, smoothing, iterations=2), exact0)


def test_gaussian_integral_marginal_matches_the_mixture_it_sums():
    """``log p(ζ) + log Z`` against ``log Σ_z exp(-E(z)) N(ζ; z, Λ^{-1})`` with torch's MultivariateNormal."""
    rbm = make_rbm(2, 3, 3.0, seed=4)
    floor = 2.0
    lam = rbm.gaussian_integral_lambda(floor)
    w_sym = torch.zeros(5, 5, dtype=torch.float64)
    w_sym[:2, 2:] = rbm.w.detach()
    w_sym[2:, :2] = rbm.w.detach().t()
    precision = w_sym + lam * torch.eye(5, dtype=torch.float64)
    z = all_states(5)
    zeta = torch.randn(30, 5, dtype=torch.float64) * 0.7 + 0.5
    normal = MultivariateNormal(z, precision_matrix=precision)  # batch of 32 means
    exact = torch.logsumexp(normal.log_prob(zeta[:, None]) - rbm.energy(z).detach()[None], 1)
    torch.testing.assert_close(rbm.gaussian_integral_log_prob(zeta, floor).detach(), exact)
    assert float(lam) > float(torch.linalg.matrix_norm(rbm.w.detach(), ord=2))  # Λ positive definite


def test_negative_phase_has_value_zero_and_the_gradient_of_log_z():
    """PCD with 4000 chains x 200 sweeps on a 3 + 3 RBM: gradient within 5 standard errors of ∇ log Z."""
    rbm = make_rbm(3, 3, 0.8, seed=5, chains=4000, sweeps=200)
    torch.manual_seed(0)
    surrogate = rbm.negative_phase()
    assert float(surrogate.detach()) == 0.0
    params = [rbm.b_a, rbm.b_b, rbm.w]
    ours = torch.cat([g.reshape(-1) for g in torch.autograd.grad(surrogate, params)])
    exact = torch.cat([g.reshape(-1) for g in torch.autograd.grad(rbm.log_partition_exact(), params)])
    se = 0.5 / math.sqrt(4000)  # a Bernoulli mean's largest standard deviation over the chains
    assert bool(((ours - exact).abs() < 5 * se).all()), (ours, exact)


# --- the hierarchical posterior ----------------------------------------------------------------------------
def _hierarchy(seed: int = 0) -> HierarchicalBernoulli:
    torch.manual_seed(seed)
    nets = torch.nn.ModuleList([build_mlp(3 + 2, 2, MLPConfig((4,), "tanh"))]).double()
    context = torch.randn(3, dtype=torch.float64)
    return HierarchicalBernoulli(torch.randn(2, dtype=torch.float64), context, nets, [2, 2])


def test_hierarchical_posterior_normalises_and_its_samples_follow_log_prob():
    """Chi-square of 40,000 ancestral draws over the 16 states against exp(log_prob) (α = 1e-3)."""
    from scipy import stats

    q = _hierarchy()
    z = all_states(4)
    probs = q.log_prob(z).exp().detach()
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.manual_seed(1)
    draws = q.sample((40_000,))
    assert draws.shape == (40_000, 4)
    cached = q.log_prob(draws)
    fresh = q.log_prob(draws.clone())  # not the cached tensor: recomputed
    torch.testing.assert_close(cached, fresh)
    index = (draws * torch.tensor([8.0, 4.0, 2.0, 1.0], dtype=torch.float64)).sum(-1).long()
    counts = torch.bincount(index, minlength=16).numpy()
    assert stats.chisquare(counts, probs.numpy() * 40_000).pvalue > 1e-3
    assert q.mode.shape == (4,)


# --- families -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("levels", [1, 2])
def test_every_model_gives_finite_terms_and_gradients(model, levels):
    torch.manual_seed(0)
    spec = LatentSpec.parse("8x2")
    family = build_posterior(model, spec, levels=levels, context_dim=5, level_mlp=MLPConfig((6,), "tanh"))
    prior = RBMPrior(8, chains=16, sweeps=2)
    family.check_prior(prior)
    params = torch.randn(3, family.param_dim, requires_grad=True)
    context = torch.randn(3, 5)
    q = family.relaxation(params, prior, torch.tensor(1.0), context=context)
    zeta = q.rsample((4,))
    assert zeta.shape == (4, 3, 8)
    log_px = -(zeta - 0.5).square().sum(-1)  # (S, B)
    log_ratio = q.log_ratio(zeta)
    if log_ratio is None:  # an analytic KL: the relaxed ELBO
        objective = log_px.mean(0) - q.kl
    else:  # densities: the relaxed IW bound
        objective = torch.logsumexp(log_px - log_ratio, 0) - math.log(4)
    assert bool(torch.isfinite(objective).all())
    (-objective.mean()).backward()
    grads = [params.grad, prior.w.grad, *(p.grad for p in family.parameters())]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert float(params.grad.abs().sum()) > 0 and float(prior.w.grad.abs().sum()) > 0
    q = family.discrete_posterior(params.detach(), context=context)
    z = q.sample((5,))
    assert z.shape == (5, 3, 8) and set(z.unique().tolist()) <= {0.0, 1.0}
    assert bool(torch.isfinite(q.log_prob(z)).all())


def test_piecewise_learning_rate_and_kl_warmup_follow_the_original():
    config = TrainConfig.of(lr=3e-3, lr_schedule="piecewise", kl_warmup=0.3)
    total = 1000
    expected = {0: 3e-4, 19: 3e-4, 20: 3e-3, 599: 3e-3, 600: 1e-3, 750: 3e-4, 949: 3e-4, 950: 3e-3 / 33}
    for step, lr in expected.items():
        assert learning_rate(config, step, total) == pytest.approx(lr)
    assert kl_weight(config, 0, total) == 0.0
    assert kl_weight(config, 150, total) == pytest.approx(0.5)
    assert kl_weight(config, 300, total) == kl_weight(config, 900, total) == 1.0


# --- the command line ---------------------------------------------------------------------------------------
CLI_FAST = [
    "--dataset", "digits", "--latent", "8x2", "--hidden", "16", "--val-samples", "5", "--device", "cpu",
    "--chains", "32", "--sweeps", "3", "--log-z-betas", "20", "--log-z-samples", "32",
    "--checkpoint-every", "20", "--eval-every", "20", "--log-every", "10", "--lr", "3e-3",
]


@pytest.mark.parametrize(
    "options",
    [
        ["--model", "dvae-spike-exp"],
        ["--model", "dvaepp-exp", "--levels", "2", "--k", "2"],
        ["--model", "dvaepp-power", "--sampler", "pa"],
        ["--model", "dvaes-gi", "--k", "3"],
        ["--model", "dvaes-gauss", "--levels", "2", "--batch-norm", "--activation", "tanh"],
        ["--model", "dvaes-exp", "--k", "2", "--sampler", "pa"],
        ["--model", "dvaes-unexp", "--center-input", "--l2", "1e-4", "--kl-warmup", "0.3"],
        ["--model", "dvaes-power", "--struct", "4-layer-nonlin", "--hidden", "8,8", "--k", "2"],
    ],
    ids=lambda o: " ".join(o[1:]),
)
def test_each_dvae_model_trains_evaluates_and_resumes_bitwise(options, tmp_path, capsys, monkeypatch):
    import discrete_vae.run_state as run_state
    from discrete_vae.checkpoint import load_checkpoint

    full, split = tmp_path / "full", tmp_path / "split"
    rc, out, err = dvae(capsys, "train", *CLI_FAST, *options, "--steps", 40, "--out", full)
    assert rc == 0, err
    assert last_json(out)["log_z_method"] == "exact"  # 4 + 4 units: enumerated
    save = run_state.save_checkpoint

    def save_then_interrupt(path, state):  # Ctrl-C right after the checkpoint of step 20
        save(path, state)
        if path.name == "last.safetensors" and state["step"] == 20:
            raise KeyboardInterrupt

    monkeypatch.setattr(run_state, "save_checkpoint", save_then_interrupt)
    rc, _, err = dvae(capsys, "train", *CLI_FAST, *options, "--steps", 40, "--out", split)
    assert rc == 130, err
    monkeypatch.setattr(run_state, "save_checkpoint", save)
    rc, _, err = dvae(capsys, "train", "--resume", split)
    assert rc == 0, err
    a, b = load_checkpoint(full / "last.safetensors"), load_checkpoint(split / "last.safetensors")
    assert set(a["model"]) == set(b["model"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), "resume diverged"

    rc, out, err = dvae(capsys, "eval", full, "--samples", 20, "--log-z", "ais", "--log-z-betas", 100)
    assert rc == 0, err
    scores = last_json(out)
    assert {"nll", "log_z", "log_z_stderr"} <= set(scores) and scores["log_z_method"] == "ais"
    assert math.isfinite(scores["nll"]) and scores["nll"] <= scores["neg_elbo"] + 1e-9
    rc, out, _ = dvae(capsys, "eval", full, "--samples", 20, "--log-z", "exact")
    assert abs(last_json(out)["log_z"] - scores["log_z"]) < 5 * scores["log_z_stderr"] + 1e-3
    rc, _, err = dvae(capsys, "sample", full, "--out", tmp_path / "s.png", "--n", 40)
    assert rc == 0 and (tmp_path / "s.png").is_file(), err
    rc, _, err = dvae(capsys, "reconstruct", full, "--out", tmp_path / "r.png", "--n", 8)
    assert rc == 0 and (tmp_path / "r.png").is_file(), err


def test_pcd_chains_are_part_of_the_checkpoint(tmp_path, capsys):
    from discrete_vae.checkpoint import load_checkpoint

    rc, _, err = dvae(capsys, "train", *CLI_FAST, "--model", "dvaes-exp", "--steps", 20,
                      "--out", tmp_path / "r")
    assert rc == 0, err
    state = load_checkpoint(tmp_path / "r" / "last.safetensors")["model"]
    chains = state["prior.sampler.chains"]
    assert chains.shape == (32, 8) and set(chains.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize(
    "argv",
    [
        ["--model", "dvaes-exp", "--latent", "8x4"],
        ["--model", "dvaes-exp", "--prior", "uniform"],
        ["--model", "dvaes-exp", "--levels", "3", "--latent", "9x2"],
        ["--model", "dvaes-exp", "--sampler", "gibbs"],
        ["--model", "dvae-spike-exp", "--kl", "relaxed"],
        ["--model", "dvaes-gi", "--kl", "analytic"],
        ["--model", "dvaepp-exp", "--objective", "iw", "--k", "2"],
        ["--model", "dvaes-exp", "--struct", "3-layer"],
        ["--model", "dvaes-exp", "--beta", "0"],
        ["--model", "gs", "--levels", "2"],
        ["--model", "gs", "--prior", "rbm"],
    ],
    ids=" ".join,
)
def test_bad_dvae_options_exit_2_with_one_line(argv, tmp_path, capsys):
    rc, _, err = dvae(capsys, "train", *CLI_FAST, *argv, "--steps", 5, "--out", tmp_path / "r")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err


def test_struct_fills_what_flags_leave_unset():
    from discrete_vae.presets import with_struct

    values = with_struct({"model": "dvaes-power", "struct": "2-layer-nonlin", "lr": 1e-3, "epochs": 3})
    config = TrainConfig.from_dict(values)
    model, optim = config.model, config.optim
    assert (model.latent, config.to_dict()["model"]["posterior_options"], model.hidden, model.batch_norm) == (
        "400x2", {"levels": 2}, (200, 200), True)
    assert (optim.lr, optim.epochs, optim.steps, optim.lr_schedule) == (1e-3, 3, None, "piecewise")
    assert model.center_input and config.schedule.kl_warmup == 0.3 and optim.l2 == 1e-4


def test_one_layer_structs_set_levels_only_for_posteriors_that_have_them():
    """A struct's one group of latents is every other posterior's only form; deeper ones need levels."""
    from discrete_vae.errors import ConfigError
    from discrete_vae.presets import fresh_config

    assert fresh_config({"model": "dvaes-power", "struct": "1-layer-lin"}).model.posterior_options.levels == 1
    for model in ("gs", "igr-i"):
        config = fresh_config({"model": model, "struct": "1-layer-nonlin"})
        stored = config.to_dict()["model"]["posterior_options"]
        assert (config.model.latent, config.model.hidden, stored) == ("200x2", (200, 200), {})
    with pytest.raises(ConfigError, match="--levels is not an option of posterior categorical"):
        fresh_config({"model": "gs", "struct": "2-layer-nonlin"})
