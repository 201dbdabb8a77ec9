"""The RBM prior, its samplers and its log-partition estimators, against exact enumeration.

- Energy, free energies and block conditionals against brute-force sums over every state (float64); the
  sampler's block-Gibbs draws of each half against those conditionals.
- Exact log Z (one half summed out, the other enumerated in chunks) against the full sum over states.
- PCD and population-annealing samples against the exact distribution of a 3 + 3 RBM (chi-square, 64 cells).
- AIS and PA estimates of log Z within 3 standard errors of the exact value on an 8 + 8 RBM.
- Persistent chains travel with ``state_dict``; the energy's gradient at positive minus negative samples
  (the contrastive loss) matches the exact log-likelihood gradient when the negative samples are exact, and
  the prior's negative phase is that loss's negative half on one call of the sampler.

Statistical checks use fixed seeds (deterministic runs); each states its false-failure rate, the
probability that a correct implementation fails for a seed drawn at random.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from discrete_vae.errors import ConfigError
from discrete_vae.priors import RBMPrior
from discrete_vae.priors.samplers import SAMPLERS, PASampler, ais_log_partition

F64 = torch.float64


def all_states(n: int) -> torch.Tensor:
    """Every binary vector of length ``n``, (2^n, n) float64; row ``i`` is the binary expansion of ``i``."""
    index = torch.arange(2**n)
    return ((index[:, None] >> torch.arange(n)) & 1).to(F64)


def make_rbm(n_a: int, n_b: int, scale: float, seed: int, **options) -> RBMPrior:
    """A float64 RBM with biases ~ N(0, 0.5^2) and couplings ~ N(0, scale^2)."""
    torch.manual_seed(seed)
    rbm = RBMPrior(n_a + n_b, n_a=n_a, init_scale=scale, **options).double()
    with torch.no_grad():
        rbm.b_a.normal_(0.0, 0.5)
        rbm.b_b.normal_(0.0, 0.5)
    return rbm


def prob_b_given_a(rbm: RBMPrior, z_a: torch.Tensor) -> torch.Tensor:
    """Reference ``p(z_b = 1 | z_a) = sigmoid(b_b + W^T z_a)`` from the energy's definition, (..., n_b)."""
    return torch.sigmoid(z_a @ rbm.w + rbm.b_b)


def prob_a_given_b(rbm: RBMPrior, z_b: torch.Tensor) -> torch.Tensor:
    """Reference ``p(z_a = 1 | z_b) = sigmoid(b_a + W z_b)`` from the energy's definition, (..., n_a)."""
    return torch.sigmoid(z_b @ rbm.w.t() + rbm.b_a)


def contrastive_loss(rbm: RBMPrior, z_pos: torch.Tensor, z_neg: torch.Tensor) -> torch.Tensor:
    """Reference surrogate ``mean E(z_pos) - mean E(z_neg)``, the positive minus the negative phase.

    ``-∇ log p(z_pos) = ∇E(z_pos) - E_{z~p}[∇E(z)]``, so its gradient estimates the negative log-likelihood's
    (unbiased when ``z_neg`` are exact model samples); ``z_neg`` is detached.
    """
    return rbm.energy(z_pos).mean() - rbm.energy(z_neg.detach()).mean()


def exact_probs(rbm: RBMPrior) -> torch.Tensor:
    """``p(z)`` over ``all_states(n)`` by brute force, (2^n,)."""
    return torch.softmax(rbm.log_prob(all_states(rbm.n)), 0).detach()


def state_index(z: torch.Tensor) -> torch.Tensor:
    """Row index in ``all_states`` of each binary vector in ``z`` (S, n)."""
    return (z.long() * (2 ** torch.arange(z.shape[1]))).sum(1)


def chi_square_pvalue(samples: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson chi-square p-value of the samples' state counts against ``probs`` (all cells)."""
    counts = torch.bincount(state_index(samples), minlength=probs.numel()).double()
    expected = probs * counts.sum()
    assert expected.min() >= 5, "too few samples for the chi-square approximation"
    return stats.chisquare(counts.numpy(), expected.numpy()).pvalue


def test_energy_matches_its_definition():
    rbm = make_rbm(4, 3, 0.7, seed=0)
    z = all_states(7)
    z_a, z_b = z[:, :4], z[:, 4:]
    energy = -(z_a @ rbm.b_a + z_b @ rbm.b_b + torch.einsum("si,ij,sj->s", z_a, rbm.w, z_b))
    torch.testing.assert_close(rbm.energy(z), energy)
    torch.testing.assert_close(rbm.log_prob(z), -energy)
    assert not rbm.normalized


def test_free_energies_and_conditionals_match_enumeration():
    rbm = make_rbm(4, 3, 0.7, seed=1)
    z = all_states(7)
    joint = (-rbm.energy(z)).detach().view(8, 16)  # (z_b index, z_a index): z_a are the low bits
    za, zb = all_states(4), all_states(3)
    with torch.no_grad():
        torch.testing.assert_close(-rbm.free_energy_a(za), torch.logsumexp(joint, 0))
        torch.testing.assert_close(-rbm.free_energy_b(zb), torch.logsumexp(joint, 1))
        p_b_given_a = torch.softmax(joint, 0)  # (8, 16): p(z_b | z_a) per column
        p_a_given_b = torch.softmax(joint, 1)  # (8, 16): p(z_a | z_b) per row
        torch.testing.assert_close(prob_b_given_a(rbm, za), p_b_given_a.t() @ zb)  # (16, 3): the reference
        torch.testing.assert_close(prob_a_given_b(rbm, zb), p_a_given_b @ za)  # (8, 4): the reference


def test_a_gibbs_sweep_draws_each_half_from_its_block_conditional():
    """One sweep of the RBM's sampler from every ``z_a`` (5000 chains each): ``z_b ~ p(z_b | z_a)``, then
    ``z_a ~ p(z_a | z_b)`` given the new ``z_b``.

    Per (conditioning state, unit) the frequency of ones must lie within 4.5 binomial standard errors of
    the exact conditional: 48 + 32 cells, false-failure rate <= 80 x 6.8e-6 = 5.4e-4 (normal tail,
    Bonferroni).
    """
    rbm = make_rbm(4, 3, 0.7, seed=1, sampler="pcd", chains=16 * 5000, sweeps=1)
    start = all_states(4).repeat_interleave(5000, 0)  # (80000, 4): every z_a, 5000 times
    with torch.no_grad():
        rbm.sampler.chains[:, :4] = start  # the first half-sweep overwrites z_b
        torch.manual_seed(13)
        z_a, z_b = rbm.split(rbm.sample(16 * 5000))
        z_scores = []
        for given, drawn, states, conditional in (
            (start, z_b, all_states(4), lambda state: prob_b_given_a(rbm, state)),
            (z_b, z_a, all_states(3), lambda state: prob_a_given_b(rbm, state)),
        ):
            index = state_index(given)
            for i, state in enumerate(states):
                rows = index == i
                n = int(rows.sum())
                assert n >= 500  # enough draws of every conditioning state for the normal approximation
                p = conditional(state)
                z_scores.append((drawn[rows].mean(0) - p) / (p * (1 - p) / n).sqrt())
    z = torch.cat(z_scores)
    assert z.numel() == 48 + 32 and bool((z.abs() < 4.5).all()), z


@pytest.mark.parametrize(("n_a", "n_b", "chunk"), [(4, 3, 2), (3, 5, 2**14), (6, 6, 16)])
def test_exact_log_partition_matches_full_enumeration(n_a, n_b, chunk):
    rbm = make_rbm(n_a, n_b, 0.8, seed=2)
    full = torch.logsumexp(rbm.log_prob(all_states(n_a + n_b)), 0)
    torch.testing.assert_close(rbm.log_partition_exact(chunk=chunk), full)


def test_exact_log_partition_refuses_large_halves():
    with pytest.raises(ValueError, match="at most 20 units"):
        RBMPrior(42, chains=2).log_partition_exact()


def test_pcd_samples_match_exact_distribution():
    # 20000 independent chains after 60 sweeps of a 3 + 3 RBM (mixing time a few sweeps); chi-square over
    # all 64 states at level 1e-3: false-failure rate 1e-3 (the bias left after 60 sweeps is negligible).
    rbm = make_rbm(3, 3, 1.0, seed=3, sampler="pcd", chains=20000, sweeps=60)
    torch.manual_seed(30)
    samples = rbm.sample(20000)
    assert samples.shape == (20000, 6) and samples.dtype == F64
    assert chi_square_pvalue(samples, exact_probs(rbm)) > 1e-3


def test_pcd_chains_persist_between_calls():
    rbm = make_rbm(3, 3, 1.0, seed=4, sampler="pcd", chains=64, sweeps=1)
    before = rbm.sampler.chains.clone()
    after = rbm.sample(64)
    torch.testing.assert_close(rbm.sampler.chains, after)
    assert not torch.equal(before, after)
    with pytest.raises(ValueError, match="persistent chains"):
        rbm.sampler(rbm, 65)
    more = rbm.sample(100)  # more than the chains: a second call's sweeps give the rest
    assert more.shape == (100, 6)
    torch.testing.assert_close(more[64:], rbm.sampler.chains[:36])


def test_pa_samples_match_exact_distribution():
    # 8 runs x 2500 chains annealed over 20 temperatures, 3 sweeps each, then equally weighted by the final
    # resampling; chi-square over 64 states at level 1e-3: false-failure rate 1e-3 (duplicates from
    # resampling are decorrelated by the 3 sweeps at beta = 1 and rare when the last weights are even).
    rbm = make_rbm(3, 3, 0.8, seed=5, sampler="pa", population=2500, runs=8, n_betas=20, sweeps_per_beta=3)
    torch.manual_seed(50)
    samples = rbm.sample(20000)
    assert samples.shape == (20000, 6)
    assert chi_square_pvalue(samples, exact_probs(rbm)) > 1e-3


def test_ais_log_partition_within_three_standard_errors():
    # 8 + 8 units, couplings N(0, 0.5^2); 1000 betas x 1024 samples. False-failure rate 0.27% (normal tail
    # at 3 SE; the downward bias of log-mean-exp is far below one SE at this effective sample size).
    rbm = make_rbm(8, 8, 0.5, seed=6)
    exact = rbm.log_partition_exact().item()
    torch.manual_seed(60)
    est = rbm.log_partition_ais()
    assert 0 < est.stderr < 0.05
    assert abs(est.log_z - exact) < 3 * est.stderr
    torch.manual_seed(61)
    uniform = ais_log_partition(rbm, n_betas=1000, n_samples=1024, base="uniform")
    assert abs(uniform.log_z - exact) < 3 * uniform.stderr


@pytest.mark.parametrize(("resampling", "base"), [("systematic", "biases"), ("multinomial", "uniform")])
def test_pa_log_partition_within_three_standard_errors(resampling, base):
    # 8 independent runs of 500 chains, 200 temperatures; the SE is the delta method over the runs'
    # estimates. False-failure rate 0.27% per case (normal tail at 3 SE).
    rbm = make_rbm(8, 8, 0.5, seed=6)
    exact = rbm.log_partition_exact().item()
    torch.manual_seed(70)
    sampler = PASampler(8, 8, population=500, runs=8, n_betas=200, resampling=resampling, base=base)
    result = sampler.run(rbm)
    assert result.resamples >= 8  # at least the final resampling of each run
    assert 0 < result.log_z.stderr < 0.05
    assert abs(result.log_z.log_z - exact) < 3 * result.log_z.stderr


def test_persistent_chains_are_in_state_dict_and_restored():
    torch.manual_seed(8)
    rbm = RBMPrior(10, sampler="pcd", chains=50, sweeps=3)
    rbm.sample(5)
    state = rbm.state_dict()
    assert state["sampler.chains"].shape == (50, 10)
    resumed = RBMPrior(10, sampler="pcd", chains=50, sweeps=3)
    assert not torch.equal(resumed.sampler.chains, rbm.sampler.chains)
    resumed.load_state_dict(state)
    torch.testing.assert_close(resumed.sampler.chains, rbm.sampler.chains)
    torch.manual_seed(9)
    first = rbm.sample(50)
    torch.manual_seed(9)
    torch.testing.assert_close(resumed.sample(50), first)  # resume continues the same chains


def test_contrastive_loss_gradient_matches_exact_log_likelihood_gradient():
    # Negative phase from 200000 exact samples; each of the 11 gradient components must lie within 4 SE of
    # the exact value: false-failure rate <= 11 x 6.3e-5 = 7e-4 (normal tail, Bonferroni).
    rbm = make_rbm(3, 2, 0.8, seed=10)
    states = all_states(5)
    torch.manual_seed(100)
    z_pos = states[torch.randint(0, 32, (7,))]
    z_neg = states[torch.multinomial(exact_probs(rbm), 200000, replacement=True)]
    params = [rbm.b_a, rbm.b_b, rbm.w]
    exact_ll = (rbm.log_prob(z_pos) - rbm.log_partition_exact()).mean()
    exact = torch.cat([g.flatten() for g in torch.autograd.grad(exact_ll, params)])
    loss = contrastive_loss(rbm, z_pos, z_neg)
    estimate = torch.cat([-g.flatten() for g in torch.autograd.grad(loss, params)])
    z_a, z_b = rbm.split(z_neg)
    features = torch.cat([z_a, z_b, (z_a[:, :, None] * z_b[:, None, :]).flatten(1)], 1)  # (S, 11) = -dE/dθ
    se = features.std(0) / math.sqrt(z_neg.shape[0])
    assert torch.all((estimate - exact).abs() < 4 * se), ((estimate - exact) / se)


def test_negative_phase_is_the_contrastive_loss_on_one_call_of_the_sampler():
    """Beside the positive phase ``mean E(z_pos)``, the prior's negative phase gives the contrastive loss's
    gradient with the sampler's own draws (one call, all its chains) as the negatives."""
    torch.manual_seed(11)
    rbm = RBMPrior(6, sampler="pcd", chains=32, sweeps=2)
    z_pos = torch.bernoulli(torch.full((4, 6), 0.5))
    loss = rbm.energy(z_pos).mean() + rbm.negative_phase()
    z_neg = rbm.sampler.chains.clone()  # that call's draws: every chain, where the call left it
    params = [rbm.b_a, rbm.b_b, rbm.w]
    ours = torch.autograd.grad(loss, params)
    reference = torch.autograd.grad(contrastive_loss(rbm, z_pos, z_neg), params)
    assert loss.shape == ()
    for a, b in zip(ours, reference, strict=True):
        assert bool(torch.isfinite(a).all())
        torch.testing.assert_close(a, b)


def test_samplers_registry_and_contract():
    assert {"pcd", "pa"} <= set(SAMPLERS.names())
    with pytest.raises(ConfigError, match="unknown sampler"):
        RBMPrior(6, sampler="nope")
    rbm = RBMPrior(200)
    assert (rbm.n_a, rbm.n_b) == (100, 100)
    with pytest.raises(NotImplementedError):
        rbm.distribution()


def test_ais_accepts_a_custom_schedule_and_checks_it():
    rbm = make_rbm(4, 4, 0.5, seed=12)
    exact = rbm.log_partition_exact().item()
    torch.manual_seed(120)
    betas = torch.linspace(0, 1, 500) ** 2  # a schedule denser near beta = 0
    est = ais_log_partition(rbm, n_samples=512, betas=betas)
    assert abs(est.log_z - exact) < 3 * est.stderr  # false-failure rate 0.27% (normal tail at 3 SE)
    with pytest.raises(ValueError, match="from 0 to 1"):
        ais_log_partition(rbm, betas=torch.linspace(0.1, 1, 10))


def test_a_draw_that_does_not_persist_leaves_the_training_chains_in_place():
    """Pictures and evaluation draw from the persistent chains without moving them: the next training draw
    is the one it would have been."""
    rbm = make_rbm(3, 3, 0.8, seed=5, chains=64, sweeps=3)
    before = rbm.sampler.chains.clone()
    torch.manual_seed(1)
    picture = rbm.sample(10, persist=False)
    assert picture.shape == (10, 6) and torch.equal(rbm.sampler.chains, before)
    torch.manual_seed(2)
    after_picture = rbm.sample(64)
    rbm.sampler.chains.copy_(before)
    torch.manual_seed(2)
    assert torch.equal(rbm.sample(64), after_picture)
