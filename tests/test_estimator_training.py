"""Every estimator trains a VAE through the CLI, evaluates, and resumes exactly (its own parameters and
state are in the checkpoint); posteriors x estimators x priors combine or are refused with one line."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from cli_helpers import dvae, last_json, read_metrics
from discrete_vae.checkpoint import load_checkpoint, save_checkpoint
from discrete_vae.config import TrainConfig
from discrete_vae.errors import ConfigError
from discrete_vae.estimators import ESTIMATORS, build_estimator
from discrete_vae.models import DiscreteVAE
from discrete_vae.networks import MLPConfig
from discrete_vae.posteriors import LatentSpec, build_posterior
from discrete_vae.posteriors.kl import analytic_kl
from discrete_vae.priors import build_prior
from discrete_vae.recipe import build_model
from discrete_vae.upgrade import upgrade_config

TINY = ["--dataset", "digits", "--hidden", "16", "--batch-size", "20", "--val-samples", "2",
        "--device", "cpu", "--lr-schedule", "constant", "--eval-every", "10", "--checkpoint-every", "10",
        "--log-every", "5"]
TRAINED = sorted(set(ESTIMATORS.names()) - {"relaxed"})  # relaxed: the IGR and DVAE posteriors' own
STATEFUL = {"reinforce", "nvil", "rebar", "relax",  # moving averages, learned baselines, control variates
            "double-cv", "rodeo"}


def _latent(name: str) -> list[str]:
    binary_only = "categorical" not in ESTIMATORS.get(name).supports
    return ["--latent", "6", "--binary"] if binary_only else ["--latent", "3x3"]


def _k(name: str) -> list[str]:
    return ["--k", str(max(2, ESTIMATORS.get(name).min_samples))]


@pytest.mark.parametrize("name", TRAINED)
def test_each_estimator_trains_evaluates_and_resumes_exactly(name, tmp_path, capsys, one_thread):
    """20 steps in one go, and 10 steps then --resume to 20: metrics and weights byte-identical."""
    args = [*TINY, "--estimator", name, *_latent(name), *_k(name)]
    rc, out, err = dvae(capsys, "train", *args, "--steps", 20, "--out", tmp_path / "full")
    assert rc == 0, err
    assert last_json(out)["nll"] > 0
    assert dvae(capsys, "train", *args, "--steps", 10, "--out", tmp_path / "part").rc == 0
    rc, _, err = dvae(capsys, "train", "--resume", tmp_path / "part", "--steps", 20)
    assert rc == 0, err
    assert read_metrics(tmp_path / "part") == read_metrics(tmp_path / "full")
    full = load_file(tmp_path / "full" / "last.safetensors")
    part = load_file(tmp_path / "part" / "last.safetensors")
    weights = [k for k in full if k.startswith("s.model.")]  # the checkpoint's flattened state
    own = [k for k in weights if k.startswith("s.model.estimator.")]
    assert bool(own) == (name in STATEFUL), own  # the estimator's parameters and state are checkpointed
    for key in weights:
        assert torch.equal(full[key], part[key]), key
    rc, out, err = dvae(capsys, "eval", tmp_path / "full", "--samples", 3, "--split", "valid", "--limit", 20)
    assert rc == 0 and last_json(out)["nll"] > 0, err


def test_score_function_with_the_rbm_prior_trains_with_the_negative_phase(tmp_path, capsys, one_thread):
    """rloo on the DVAE++ posterior (one group: a factorial Bernoulli) under the RBM prior, with the
    registered analytic cross-entropy, and with the Monte Carlo KL inside f (--kl sampled)."""
    base = [*TINY, "--model", "dvaepp-exp", "--estimator", "rloo", "--latent", "6x2", "--chains", "20",
            "--sweeps", "2", "--k", "2", "--steps", "10", "--log-z-betas", "10", "--log-z-samples", "8"]
    for kl in ("analytic", "sampled"):
        rc, out, err = dvae(capsys, "train", *base, "--kl", kl, "--out", tmp_path / kl)
        assert rc == 0, err
        assert "log_z" in last_json(out)


@pytest.mark.parametrize("argv, match", [
    (["--model", "igr-i", "--estimator", "rloo"], "does not apply"),
    (["--model", "dvaes-power", "--latent", "8x2", "--levels", "2", "--estimator", "disarm"],
     "does not apply"),
    (["--estimator", "relaxed"], "does not apply"),
    (["--estimator", "arm"], "supports binary"),
    (["--estimator", "rloo", "--objective", "iw"], "objective iw"),
    (["--estimator", "vimco", "--objective", "elbo"], "importance-weighted"),
    (["--estimator", "nope"], "unknown estimator"),
    (["--estimator", "gs", "--mc", "3"], "belongs to gumbel-rao"),
])
def test_pairings_that_cannot_work_are_one_line(argv, match, tmp_path, capsys):
    rc, _, err = dvae(capsys, "train", *TINY, "--steps", 2, *argv, "--out", tmp_path / "r")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and match in err, err


@pytest.mark.parametrize("name", ["rloo", "vimco", "arm", "disarm"])
def test_without_k_an_estimator_trains_at_its_minimum_and_says_so(name, tmp_path, capsys, one_thread):
    rc, out, err = dvae(capsys, "train", *TINY, "--steps", 4, "--eval-every", 4, "--estimator", name,
                        *_latent(name), "--out", tmp_path / "r")
    assert rc == 0, err
    config = __import__("yaml").safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert config["model"]["k"] == 2 and TrainConfig.from_dict(config).model.k == 2
    pair = " (one antithetic pair)" if name in ("arm", "disarm") else ""
    assert (f"--k not given; estimator {name} needs at least 2 samples per example{pair}, so k = 2 "
            f"(recorded in {tmp_path / 'r' / 'config.yaml'})") in err
    assert TrainConfig.of(estimator=name).model.k == 2 and TrainConfig.of().model.k == 1
    assert TrainConfig.of(k=3).model.k == 3


@pytest.mark.parametrize("argv, match", [
    (["--estimator", "rloo", "--k", "1"], "estimator rloo needs at least 2 samples per example, got 1"),
    (["--estimator", "vimco", "--k", "1"], "estimator vimco needs at least 2 samples"),
    (["--estimator", "disarm", "--latent", "6", "--binary", "--k", "3"], "must be even, got 3"),
])
def test_a_k_given_too_small_stays_an_error_and_leaves_no_folder(argv, match, tmp_path, capsys):
    rc, _, err = dvae(capsys, "train", *TINY, "--steps", 2, *argv, "--out", tmp_path / "a" / "r")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and match in err, err
    assert list(tmp_path.iterdir()) == []  # neither r/.lock nor the folders the failed start made


def test_estimator_options_reach_the_estimator_and_the_stored_config(tmp_path, capsys, one_thread):
    rc, _, err = dvae(capsys, "train", *TINY, "--steps", 5, "--estimator", "gumbel-rao", "--mc", "3",
                      "--out", tmp_path / "r")
    assert rc == 0, err
    config = TrainConfig.from_dict(__import__("yaml").safe_load((tmp_path / "r" / "config.yaml").read_text()))
    assert config.to_dict()["model"]["estimator_options"] == {"mc": 3}
    assert build_model(config, 64).estimator.options.mc == 3


def test_a_training_run_has_one_temperature_the_schedules():
    """The relaxed estimators' ``temperature`` option is the Python API's; in a training config the schedule
    sets tau, so the option given there is refused, not silently overridden. REBAR and RELAX learn theirs:
    the option is where learning starts."""
    assert TrainConfig.from_dict({"estimator": "gs", "temperature": 0.7}).schedule.temperature == 0.7
    with pytest.raises(ConfigError, match="temperature is the schedule's"):
        TrainConfig.from_dict({"estimator": "gs", "estimator_options": {"temperature": 0.7}})
    relax = TrainConfig.from_dict({"estimator": "relax", "estimator_options": {"temperature": 0.1}})
    assert build_model(relax, 64).estimator.options.temperature == 0.1


def test_model_presets_are_posterior_plus_estimator():
    """--model names keep training what they trained: gs and st-gs differ only in the estimator."""
    for model, posterior, estimator in [("gs", "ConcreteCategorical", "gs"),
                                        ("st-gs", "ConcreteCategorical", "st-gs"),
                                        ("igr-sb", "IGRSBCategorical", "relaxed")]:
        built = build_model(TrainConfig.of(model=model, latent="3x4", hidden=(8,)), 16)
        assert (type(built.posterior).__name__, built.estimator.name) == (posterior, estimator)
    mixed = build_model(TrainConfig.of(model="gs", estimator="rloo", latent="3x4", hidden=(8,)), 16)
    assert (type(mixed.posterior).__name__, mixed.estimator.name) == ("ConcreteCategorical", "rloo")


def test_kl_pairs_come_from_the_registry():
    """The categorical pair matches torch's KL; an unregistered pair (a Bernoulli posterior under a
    categorical prior) has none, so the objective takes the Monte Carlo KL."""
    torch.manual_seed(0)
    posterior = build_posterior("categorical", LatentSpec(3, 4))
    prior = build_prior("learnable", 3, 4, False)
    params = torch.randn(5, 12)
    want = torch.distributions.kl_divergence(posterior.discrete_posterior(params), prior.distribution())
    torch.testing.assert_close(analytic_kl(posterior, params, prior), want)
    binary = build_posterior("categorical", LatentSpec(4, 2, binary=True))
    assert analytic_kl(binary, torch.randn(5, 4), prior) is None
    bernoulli = build_prior("learnable", 4, 2, True)
    with torch.no_grad():
        bernoulli.logits.copy_(torch.tensor([-30.0, -2.0, 0.5, 30.0]))
    params = torch.linspace(-40, 40, 5 * 4).view(5, 4)  # saturated logits too, where torch's KL gives inf
    log_q = torch.stack([F.logsigmoid(-params.double()), F.logsigmoid(params.double())])  # z = 0, 1
    log_p = torch.stack([F.logsigmoid(-bernoulli.logits.double()), F.logsigmoid(bernoulli.logits.double())])
    want = (log_q.exp() * (log_q - log_p[:, None])).sum((0, 2)).float()  # the sum over z in {0, 1}
    torch.testing.assert_close(analytic_kl(binary, params, bernoulli), want)


class ConvEncoder(nn.Module):
    """8x8 images -> logits through one convolution."""

    def __init__(self, out: int):
        super().__init__()
        self.net = nn.Sequential(nn.Unflatten(-1, (1, 8, 8)), nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                                 nn.Flatten(), nn.Linear(8 * 64, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_any_encoder_and_decoder_module(one_thread):
    """A conv encoder and a plain decoder module: training steps lower the loss, and the bound is
    evaluated on the discrete model with the same networks."""
    from discrete_vae.data import load_dataset
    from discrete_vae.evaluate import evaluate

    torch.manual_seed(0)
    data = load_dataset("digits")
    posterior = build_posterior("categorical", LatentSpec(6, 4))
    decoder = nn.Sequential(nn.Linear(posterior.decoder_dim, 32), nn.Tanh(), nn.Linear(32, data.dim))
    model = DiscreteVAE(data.dim, posterior, build_prior("uniform", 6, 4, False),
                        ConvEncoder(posterior.param_dim), decoder, estimator=build_estimator("rloo"))
    model.init_decoder_bias(data.train_mean)
    assert torch.allclose(decoder[-1].bias, torch.logit(data.train_mean.clamp(1e-3, 1 - 1e-3)))
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    losses = []
    for _ in range(150):
        x = data.train[torch.randint(len(data.train), (50,))]
        terms = model(x, 1.0, 2)
        optimizer.zero_grad()
        terms.loss.backward()
        optimizer.step()
        losses.append(-float(terms.objective.mean()))
    assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20 - 1.0
    assert evaluate(model, data.valid[:50], samples=10, tau=1.0, seed=0)["nll"] > 0


def test_default_estimator_is_the_posteriors_own_relaxation():
    model = DiscreteVAE(16, build_posterior("igr-i", LatentSpec(2, 3)), build_prior("uniform", 2, 3, False),
                        MLPConfig((8,)), MLPConfig((8,)))
    assert model.estimator.name == "relaxed"
    with pytest.raises(ConfigError, match="does not apply"):
        DiscreteVAE(16, build_posterior("igr-i", LatentSpec(2, 3)), build_prior("uniform", 2, 3, False),
                    MLPConfig((8,)), MLPConfig((8,)), estimator=build_estimator("disarm"))


def test_run_folders_from_before_posteriors_and_estimators_still_load(tmp_path):
    """Checkpoints named the posterior ``family`` and configs had no posterior or estimator keys: a
    checkpoint of that time loads (:func:`load_checkpoint` reads it in today's form)."""
    old_config = {"model": "igr-planar", "latent": "3x4", "hidden": [8], "samples": 1}
    config = TrainConfig.from_dict(upgrade_config(old_config))
    stored = config.to_dict()["model"]["estimator_options"]
    assert (config.model.posterior, config.model.estimator, stored) == ("igr-planar", "relaxed", {})
    torch.manual_seed(0)
    model = build_model(config, 16)
    old_state = {k.replace("posterior.", "family.", 1): v for k, v in model.state_dict().items()}
    assert any(k.startswith("family.flow.") for k in old_state)
    save_checkpoint(tmp_path / "old.safetensors", {"model": old_state, "config": old_config})
    state = load_checkpoint(tmp_path / "old.safetensors")
    assert list(state["model"]) == list(model.state_dict())
    fresh = build_model(TrainConfig.from_dict(state["config"]), 16)
    fresh.load_state_dict(state["model"])
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_dvae_list_describes_posteriors_and_estimators(capsys):
    rc, out, _ = dvae(capsys, "list", "estimators", "--json")
    listed = last_json(out)
    assert rc == 0 and set(listed) == set(ESTIMATORS.names())
    assert listed["arm"]["supports"] == ["binary"] and listed["rloo"]["unbiased"] is True
    assert listed["gumbel-rao"]["mc"] == 10
    rc, out, _ = dvae(capsys, "list", "posteriors", "--json")
    posteriors = last_json(out)
    assert posteriors["igr-sb"]["sb_threshold"] == 0.99 and posteriors["dvaes-power"]["levels"] == 1
    rc, out, _ = dvae(capsys, "list", "estimators")
    assert rc == 0 and "binary, categorical; unbiased" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "N·(C-1)+1 evaluations of f per draw" in rows["indecater"]  # what one estimate costs
    for name in ESTIMATORS.names():  # an estimator of one latent kind says why not the other
        kinds = set(ESTIMATORS.get(name).supports)
        if kinds < {"binary", "categorical"}:
            assert listed[name]["unsupported"] and listed[name]["unsupported"] in rows[name], name


def test_normal_kl_matches_torch():
    """IGR's analytic KL (a closed form torch.compile traces) against torch's Normal KL, over locations
    and scales from 1e-3 to 1e3."""
    from discrete_vae.posteriors.igr import normal_kl

    loc_q, loc_p = torch.linspace(-50, 50, 40).double(), torch.linspace(30, -30, 40).double()
    scale_q, scale_p = torch.logspace(-3, 3, 40).double(), torch.logspace(3, -3, 40).double().roll(7)
    want = torch.distributions.kl_divergence(torch.distributions.Normal(loc_q, scale_q),
                                             torch.distributions.Normal(loc_p, scale_p))
    torch.testing.assert_close(normal_kl(loc_q, scale_q, loc_p, scale_p), want, rtol=1e-12, atol=1e-12)
