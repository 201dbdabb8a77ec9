"""IGR relaxations (IGR-I, IGR-SB, IGR-Planar), their latent families, priors and the mixed model.

Statistical tests use fixed seeds; each states its false-failure rate under a correct
implementation (for a chi-square test, its significance level).
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from cli_helpers import dvae
from discrete_vae.distributions import (
    ExpIGR,
    ExpIGRPlanar,
    ExpIGRSB,
    PlanarFlow,
    truncate_sticks,
)
from discrete_vae.models import DiscreteVAE
from discrete_vae.networks import MLPConfig
from discrete_vae.objectives import iw_bound
from discrete_vae.posteriors import LatentSpec, build_posterior
from discrete_vae.posteriors.mixed import Mixed
from discrete_vae.priors import CategoricalPrior, GaussianPrior, ProductPrior
from discrete_vae.priors.igr import prior_fit_report, uniform_preimage_prior

KINDS = ["i", "sb", "planar"]


def _dist(kind: str, tau, loc, scale, layers: int = 2, seed: int = 0):
    if kind == "i":
        return ExpIGR(tau, loc, scale)
    if kind == "sb":
        return ExpIGRSB(tau, loc, scale)
    torch.manual_seed(seed)
    flow = PlanarFlow(loc.shape[-2], loc.shape[-1], layers, init_scale=0.8).to(loc.dtype)
    return ExpIGRPlanar(tau, loc, scale, flow)


def _params(shape=(3, 4), seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    loc = 1.5 * torch.randn(*shape, generator=gen, dtype=dtype)
    scale = 0.3 + torch.rand(*shape, generator=gen, dtype=dtype)
    return loc, scale


def _numerical_jacobian(f, x: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """Central differences of ``f: R^d -> R^m`` at ``x`` (d,), float64: (m, d)."""
    cols = []
    for i in range(x.numel()):
        e = torch.zeros_like(x)
        e[i] = h
        cols.append((f(x + e) - f(x - e)) / (2 * h))
    return torch.stack(cols, -1)


# ------------------------------------------------------------------ invertible maps
@pytest.mark.parametrize("kind", KINDS)
def test_maps_round_trip(kind):
    loc, scale = _params()
    q = _dist(kind, 0.3, loc, scale)
    kappa = q.rsample_preimage((50,))
    log_psi = q.to_log_simplex(kappa)
    torch.testing.assert_close(q.from_log_simplex(log_psi), kappa, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(log_psi.logsumexp(-1), torch.zeros(50, 3, dtype=torch.float64))


@pytest.mark.parametrize("dim", [1, 4])  # one dimension: the binary units of dvae sop
def test_planar_flow_inverts_and_its_log_det_matches_a_numerical_jacobian(dim: int):
    torch.manual_seed(1)
    flow = PlanarFlow(3, dim, layers=3, init_scale=1.0).double()
    x = torch.randn(20, 3, dim, dtype=torch.float64)
    y, log_det = flow(x)
    torch.testing.assert_close(flow.inverse(y), x, rtol=1e-9, atol=1e-9)
    y_only, nothing = flow(x, log_det=False)
    assert nothing is None
    torch.testing.assert_close(y_only, y, rtol=0, atol=0)
    for v in range(3):  # per-variable flows: one dim x dim Jacobian per variable
        jac = _numerical_jacobian(lambda t, v=v: flow(_put(x[0], v, t))[0][v], x[0, v].clone())
        assert torch.linalg.slogdet(jac)[1].item() == pytest.approx(log_det[0, v].item(), abs=1e-6)
    wu = torch.stack([flow._u_hat(i)[1] for i in range(3)])
    assert (wu > -1).all()  # the invertibility condition holds by construction


def _put(x: torch.Tensor, v: int, row: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    out[v] = row
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_log_prob_is_the_change_of_variables_with_a_numerical_jacobian(kind):
    loc, scale = _params()
    q = _dist(kind, 0.7, loc, scale)
    log_psi = q.rsample((5,))  # (5, 3, K)
    got = q.log_prob(log_psi)
    for s in range(5):
        for v in range(3):
            lam_all = q.from_log_simplex(log_psi[s])  # pre-images of every variable's sample
            lam = lam_all[v]

            def forward(t, v=v):
                return q.to_log_simplex(_put(q.loc * 0, v, t))[v, :-1]

            jac = _numerical_jacobian(forward, lam)  # d log psi_{1:K-1} / d lambda
            density = q.preimage_log_prob(lam_all)[v]
            expected = density - torch.linalg.slogdet(jac)[1]
            assert got[s, v].item() == pytest.approx(expected.item(), abs=1e-6)


def test_igr_i_matches_a_transformed_gaussian_on_the_simplex():
    """Independent check of the IGR-I density: psi's density from torch's change of variables."""
    loc, scale = _params((4,))
    tau = 0.6
    q = ExpIGR(tau, loc, scale)
    log_psi = q.rsample((10,))
    psi = log_psi.exp()
    # density of psi_{1:K-1} = N(kappa(psi)) |d kappa / d psi| with d kappa / d psi from autograd
    for i in range(10):
        def inv(p):
            full = torch.cat([p, 1 - p.sum(-1, keepdim=True)])
            return tau * (full[:-1].log() - full[-1].log())

        jac = torch.autograd.functional.jacobian(inv, psi[i, :-1])
        density_psi = q.preimage().log_prob(inv(psi[i, :-1])) + torch.linalg.slogdet(jac)[1]
        # log-space density = simplex density + sum_{k<K} log psi_k (d psi_k = psi_k d log psi_k)
        expected = density_psi + log_psi[i, :-1].sum()
        assert q.log_prob(log_psi[i]).item() == pytest.approx(expected.item(), abs=1e-8)


# ------------------------------------------------------------------ stick breaking
def test_stick_breaking_sums_to_one_and_support_grows_with_the_threshold():
    torch.manual_seed(0)
    k = 30
    loc, scale = uniform_preimage_prior("sb", k)
    q = ExpIGRSB(0.5, loc.expand(2000, k - 1), scale.expand(2000, k - 1))
    log_psi = q.rsample()
    torch.testing.assert_close(log_psi.exp().sum(-1), torch.ones(2000))
    kept = []
    for threshold in (0.5, 0.9, 0.99, 0.999):
        cut = truncate_sticks(log_psi, threshold, percentile=70)
        torch.testing.assert_close(cut.psi.sum(-1), torch.ones(2000))
        assert (cut.psi[..., cut.n_required :] == 0).all()
        # the rule: n_required is the 70th percentile of the classes each sample needs
        needed = (log_psi.exp().cumsum(-1) < threshold).sum(-1) + 1
        assert (needed <= cut.n_required).float().mean() >= 0.7
        kept.append(cut.n_required)
    assert kept == sorted(kept) and kept[0] < kept[-1], kept


# ------------------------------------------------------------------ implied discrete probabilities
@pytest.mark.parametrize("kind", KINDS)
def test_implied_probabilities_match_hard_sample_frequencies(kind):
    """Chi-square goodness of fit, 100k draws per variable; false-failure rate 1e-3 per variable."""
    loc, scale = _params((3, 4), seed=5)
    q = _dist(kind, 1.0, loc, scale)
    if kind == "planar":
        q.mc_samples = 200_000  # the Monte Carlo estimate itself; its own noise is 1/sqrt(2) of the test's
    torch.manual_seed(11)
    probs = q.discrete_log_probs().exp()
    hard = q.hard_sample(q.rsample_preimage((100_000,)))
    for v in range(3):
        counts = torch.bincount(hard[:, v], minlength=5).double()
        expected = probs[v] * counts.sum()
        keep = expected > 5  # pool tiny classes into one cell
        observed = torch.cat([counts[keep], counts[~keep].sum(0, keepdim=True)])
        expect = torch.cat([expected[keep], expected[~keep].sum(0, keepdim=True)])
        if expect[-1] < 5:
            observed, expect = observed[:-1], expect[:-1]
            expect = expect / expect.sum() * observed.sum()
        chi2 = ((observed - expect) ** 2 / expect).sum().item()
        dof = len(observed) - 1
        if kind == "planar":
            chi2 /= 2.0  # both sides are Monte Carlo estimates of equal size: twice the variance
        assert stats.chi2.sf(chi2, dof) > 1e-3, (v, observed, expect)


@pytest.mark.parametrize("kind", ["i", "sb"])
def test_the_prior_fit_implies_a_uniform_categorical(kind):
    report = prior_fit_report(kind, 10, scale=0.7, draws=200_000, seed=0)
    assert report["max_abs_error_computed"] < 1e-6
    # 10 classes, each within 4 standard errors: false-failure rate < 10 * 6.3e-5
    assert report["max_abs_error_sampled"] < 4 * report["sampling_stderr"]


# ------------------------------------------------------------------ low temperature, float32
@pytest.mark.parametrize("kind", KINDS)
def test_samples_densities_and_gradients_are_finite_at_tau_001_in_float32(kind):
    loc, scale = _params((64, 9), seed=2, dtype=torch.float32)
    loc = (3 * loc).requires_grad_()
    scale = scale.requires_grad_()
    q = _dist(kind, 0.01, loc, scale)
    torch.manual_seed(0)
    log_psi = q.rsample((16,))
    log_q = q.log_prob(log_psi)
    assert torch.isfinite(log_psi).all() and torch.isfinite(log_q).all()
    (log_psi.exp()[..., 0].sum() + log_q.sum()).backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(scale.grad).all()
    assert loc.grad.abs().sum() > 0
    assert (log_psi.exp().amax(-1) > 0.99).float().mean() > 0.9  # nearly one-hot at tau = 0.01


# ------------------------------------------------------------------ latent families
def _family(model: str, k: int = 4, n: int = 3, **options):
    return build_posterior(model, LatentSpec(n, k), **options)


def test_each_igr_name_builds_its_variant_with_its_kl_and_state():
    """One class per registered name; its default KL, and the state_dict keys run folders store."""
    from discrete_vae.posteriors.igr import (
        IGRCategorical,
        IGRICategorical,
        IGRPlanarCategorical,
        IGRSBCategorical,
        IGRSBFiniteCategorical,
    )

    expected = {"igr-i": (IGRICategorical, "analytic"), "igr-sb": (IGRSBCategorical, "analytic"),
                "igr-sb-finite": (IGRSBFiniteCategorical, "analytic"),
                "igr-planar": (IGRPlanarCategorical, "relaxed")}
    flow = ["flow.u", "flow.w", "flow.b"]
    for model, (cls, kl) in expected.items():
        family = _family(model)
        assert type(family) is cls and isinstance(family, IGRCategorical) and family.kl == kl
        extra = flow if model == "igr-planar" else []
        assert sorted(family.state_dict()) == sorted(["prior_loc", "prior_scale", *extra])
        assert family.stats() == ({"n_required": 4} if model == "igr-sb" else {})


@pytest.mark.parametrize("model", ["igr-i", "igr-sb-finite"])
def test_closed_form_kl_matches_the_monte_carlo_kl(model):
    torch.manual_seed(0)
    analytic = _family(model, kl="analytic")
    sampled = _family(model, kl="relaxed")
    params = torch.randn(2, analytic.param_dim) * 0.5
    prior = CategoricalPrior(3, 4)
    tau = torch.tensor(0.5)
    kl = analytic.relaxed(params, prior, tau, 1).kl
    mc = sampled.relaxed(params, prior, tau, 200_000)
    diff = mc.log_q - mc.log_p  # (S, B)
    stderr = diff.std(0) / math.sqrt(diff.shape[0])
    # within 4 standard errors: false-failure rate 6e-5 per example
    assert ((diff.mean(0) - kl).abs() < 4 * stderr).all(), (diff.mean(0), kl, stderr)


def test_igr_sb_truncates_the_kl_to_the_sticks_in_use():
    torch.manual_seed(0)
    family = _family("igr-sb", k=8, sb_threshold=0.9, sb_percentile=50)
    params = torch.zeros(16, family.param_dim)
    params.view(16, 3, 2, 7)[:, :, 0, 0] = 4.0  # the first stick nearly always breaks: class 1
    out = family.relaxed(params, CategoricalPrior(3, 8), torch.tensor(0.3), 2)
    assert family.n_required < 8
    z = out.z.view(2, 16, 3, 8)
    assert (z[..., family.n_required :] == 0).all()
    torch.testing.assert_close(z.sum(-1), torch.ones(2, 16, 3))


@pytest.mark.parametrize("model", ["igr-i", "igr-sb", "igr-planar", "categorical"])
def test_discrete_posterior_scores_its_own_hard_samples(model):
    torch.manual_seed(0)
    family = _family(model)
    params = torch.randn(5, family.param_dim)
    q = family.discrete_posterior(params)
    z = q.sample((7,))
    assert z.shape == (7, 5, 3, 4) and (z.sum(-1) == 1).all()
    assert torch.isfinite(q.log_prob(z)).all()
    torch.testing.assert_close(q.log_prob(z).exp().new_ones(5), q.base_dist.probs.sum(-1).prod(-1))


def test_mixed_model_bound_and_objective():
    torch.manual_seed(0)
    discrete = _family("igr-i")
    mixed = Mixed(2, discrete, kl="analytic")
    prior = ProductPrior([GaussianPrior(2), CategoricalPrior(3, 4)])
    model = DiscreteVAE(10, mixed, prior, MLPConfig((16,)), MLPConfig((16,)))
    x = torch.bernoulli(torch.full((6, 10), 0.3))
    params, context = model.encode(x)
    latent = mixed.relaxed(params, prior, torch.tensor(0.5), 3, context=context)
    assert latent.z.shape == (3, 6, 2 + 12)
    terms = model(x, 0.5, 3)
    assert torch.isfinite(terms.loss) and terms.objective.shape == (6,)
    terms.loss.backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    log_w, _ = model.discrete_log_weights(x, 500)
    assert torch.isfinite(log_w).all()
    assert (iw_bound(log_w) >= log_w.mean(0) - 1e-6).all()
    # the joint posterior's log_prob is the sum of the parts' log_probs
    q = mixed.discrete_posterior(model.encoder(x))
    z = q.sample((4,))
    c, d = z[..., :2], z[..., 2:].reshape(4, 6, 3, 4)
    torch.testing.assert_close(q.log_prob(z), q.parts[0].log_prob(c) + q.parts[1].log_prob(d))
    sampled = Mixed(2, discrete, kl="relaxed")
    out = sampled.relaxed(params.detach(), prior, torch.tensor(0.5), 2, context=context)
    assert out.log_q.shape == (2, 6) and out.kl is not None  # Gaussian MC, IGR closed form


# ------------------------------------------------------------------ command line
CLI_FAST = [
    "--dataset", "digits", "--latent", "6x4", "--hidden", "32", "--val-samples", "5",
    "--device", "cpu", "--lr-schedule", "constant", "--lr", "3e-3", "--checkpoint-every", "40",
    "--eval-every", "40", "--log-every", "20",
]


@pytest.mark.parametrize(
    "options",
    [
        ["--model", "igr-i"],
        ["--model", "igr-i", "--kl", "relaxed", "--continuous", "3"],
        ["--model", "igr-sb", "--temperature", "0.15", "--anneal-rate", "0"],
        ["--model", "igr-sb-finite"],
        ["--model", "igr-planar", "--mc-samples", "200"],
        ["--model", "expgs"],
        ["--model", "gs", "--continuous", "2"],
    ],
    ids=" ".join,
)
def test_each_model_trains_evaluates_samples_and_resumes(options, tmp_path, capsys):
    import json

    from discrete_vae.checkpoint import load_checkpoint

    full, split = tmp_path / "full", tmp_path / "split"
    rc, out, err = dvae(capsys, "train", *CLI_FAST, *options, "--steps", 80, "--out", full)
    assert rc == 0, err
    rc, _, err = dvae(capsys, "train", *CLI_FAST, *options, "--steps", 40, "--out", split)
    assert rc == 0, err
    rc, _, err = dvae(capsys, "train", "--resume", split, "--steps", 80)
    assert rc == 0, err
    a, b = load_checkpoint(full / "last.safetensors"), load_checkpoint(split / "last.safetensors")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), "resume diverged"

    rc, out, err = dvae(capsys, "eval", full, "--samples", 20, "--device", "cpu")
    assert rc == 0, err
    scores = json.loads(out.strip().splitlines()[-1])
    assert math.isfinite(scores["nll"]) and scores["nll"] <= scores["neg_elbo"] + 1e-9
    rc, _, err = dvae(capsys, "sample", full, "--out", tmp_path / "s.png", "--n", 16)
    assert rc == 0 and (tmp_path / "s.png").is_file(), err
    rc, _, err = dvae(capsys, "reconstruct", full, "--out", tmp_path / "r.png", "--n", 8)
    assert rc == 0 and (tmp_path / "r.png").is_file(), err


@pytest.mark.parametrize(
    "argv",
    [
        ["--model", "igr-planar", "--kl", "analytic"],
        ["--model", "igr-i", "--prior", "learnable"],
        ["--model", "igr-sb", "--sb-threshold", "1.5"],
        ["--model", "expgs", "--kl", "analytic"],
        ["--model", "igr-i", "--continuous", "-1"],
    ],
    ids=" ".join,
)
def test_bad_igr_options_exit_2_with_one_line(argv, tmp_path, capsys):
    rc, _, err = dvae(capsys, "train", *CLI_FAST, *argv, "--steps", 5, "--out", tmp_path / "r")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err


def test_igr_prior_command_reports_the_fit(capsys):
    import json

    rc, out, err = dvae(capsys, "igr-prior", "--model", "igr-sb", "--classes", 6, "--draws", 20000)
    assert rc == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["max_abs_error_computed"] < 1e-6 and len(report["loc"]) == 5


def test_igr_metric_is_the_igr_codes_test_loss_by_enumeration():
    """``igr_metric`` (the IGR code's test loss: the training KL minus log mean_s p(x|z_s) over hard draws)
    against its exact value, KL - log sum_z q(z|x) p(x|z) by enumerating the 3^2 states, to 0.02 nats
    (the Monte Carlo error at S = 20,000 is about 0.003); the IW bound of the same call stays above the
    exact -log p(x)."""
    from discrete_vae.estimators.base import Latents
    from discrete_vae.estimators.exact import states
    from discrete_vae.evaluate import evaluate

    torch.manual_seed(0)
    posterior = build_posterior("categorical", LatentSpec(2, 3))
    model = DiscreteVAE(10, posterior, CategoricalPrior(2, 3), MLPConfig((16,)), MLPConfig((16,)))
    x = torch.bernoulli(torch.full((5, 10), 0.3))
    metrics = evaluate(model, x, samples=20_000, tau=0.5)
    model.eval()
    with torch.no_grad():
        kl = model(x, 0.5, 1).kl  # the analytic categorical KL: no noise
        params, _ = model.encode(x)
        q = posterior.discrete_posterior(params)
        z = states(Latents.of(q)).unsqueeze(1).expand(9, 5, 2, 3)
        log_px = model.log_likelihood(x, z)  # (9, B)
        exact = float((kl - (q.log_prob(z) + log_px).logsumexp(0)).mean())
        nll = float(-(model.prior.log_prob(z) + log_px).logsumexp(0).mean())
    assert abs(metrics["igr_metric"] - exact) < 0.02, (metrics["igr_metric"], exact)
    assert metrics["nll"] > nll - 0.01
