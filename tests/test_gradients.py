"""``dvae gradients`` (:mod:`discrete_vae.gradients`): the true gradient, the statistics, the command.

The exact gradient is checked against autograd through :func:`exact_expectation` and against central finite
differences in float64; the sampled reference against the exact one; the statistics on estimators of known
character (RLOO unbiased, Gumbel-Softmax at tau = 1 biased); the command end to end on ``digits``, fresh
and from a trained run. Every draw is seeded: the assertions are deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import discrete_vae.gradients as gradients
import discrete_vae.models.vae as vae_mod
from cli_helpers import FAST, dvae, last_json, png_size
from discrete_vae.config import TrainConfig
from discrete_vae.data import load_dataset
from discrete_vae.estimators import exact_expectation
from discrete_vae.gradient_report import gradient_report
from discrete_vae.gradients import discrete_terms, exact_gradient, flat_grad, q_parameters, reference_gradient
from discrete_vae.recipe import build_model, model_from_run

pytestmark = pytest.mark.usefixtures("one_thread")
LATENTS = {"categorical": ("3x3", False), "binary": ("6", True)}  # 27 and 64 states per example


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def tiny_model(digits, kind: str, dtype: torch.dtype = torch.float32):
    latent, binary = LATENTS[kind]
    torch.manual_seed(0)
    config = TrainConfig.of(dataset="digits", latent=latent, binary=binary, hidden=(16,))
    model = build_model(config, digits.dim)
    model.init_decoder_bias(digits.train_mean)
    return model.to(dtype), digits.valid[:4].to(dtype)


def exact_objective(model, x) -> torch.Tensor:
    """The discrete ELBO (batch mean) through the project's reference, :func:`exact_expectation`."""
    q, f, kl = discrete_terms(model, x, iw=False)
    return (exact_expectation(q, f) - kl).mean()


@pytest.mark.parametrize("kind", LATENTS)
def test_exact_gradient_matches_autograd_and_finite_differences(kind, digits):
    model, x = tiny_model(digits, kind, torch.float64)
    params = q_parameters(model)
    grad, value = exact_gradient(model, x, params, chunk_rows=4 * 64 * 5)  # chunks of 5 states
    assert value == pytest.approx(float(exact_objective(model, x).detach()), abs=1e-10)
    torch.testing.assert_close(grad, flat_grad(exact_objective(model, x), params), rtol=1e-10, atol=1e-12)
    direction = torch.randn(grad.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    eps, values = 1e-5, []
    with torch.no_grad():
        for sign in (1, -1):
            offset = 0
            for p in params:
                p += sign * eps * direction[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
            values.append(float(exact_objective(model, x).detach()))
            offset = 0
            for p in params:
                p -= sign * eps * direction[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
    assert (values[0] - values[1]) / (2 * eps) == pytest.approx(float(grad @ direction), rel=1e-6)


def test_monte_carlo_kl_inside_f_gives_the_same_exact_gradient(digits, monkeypatch):
    model, x = tiny_model(digits, "categorical", torch.float64)
    analytic = exact_gradient(model, x, q_parameters(model))
    monkeypatch.setattr(vae_mod, "analytic_kl", lambda *_: None)  # log p(z) - log q(z|x) inside f
    inside = exact_gradient(model, x, q_parameters(model))
    torch.testing.assert_close(inside[0], analytic[0], rtol=1e-9, atol=1e-12)
    assert inside[1] == pytest.approx(analytic[1], abs=1e-9)


@pytest.mark.parametrize("iw", [1, 2])
def test_sampled_reference_agrees_with_the_exact_one_within_its_standard_error(iw, digits, monkeypatch):
    model, x = tiny_model(digits, "binary")
    exact = reference_gradient(model, x, iw, 64, 50_000, seed=0)
    monkeypatch.setattr(gradients, "MAX_STATES", 1)  # too many states: RLOO over 50,000 draws per example
    sampled = reference_gradient(model, x, iw, 64, 50_000, seed=0)
    assert exact.kind == "exact" and sampled.kind == "sampled" and "RLOO" in sampled.detail
    se = float(sampled.var_of_mean.sum()) ** 0.5
    assert float((sampled.grad - exact.grad).norm()) < 4 * se < 0.2 * float(exact.grad.norm())


def test_rloo_is_unbiased_and_gumbel_softmax_at_temperature_one_is_not(digits):
    model, x = tiny_model(digits, "categorical")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = gradient_report(model, x, ["rloo", "gs"], k=4, draws=400, tau=1.0, seed=0)
    rloo, gs = report["estimators"]["rloo"], report["estimators"]["gs"]
    assert report["references"]["elbo"]["kind"] == "exact" and report["states"] == 27
    assert rloo["unbiased"] and rloo["bias_z"] < 3 and "warning" not in rloo
    assert rloo["cosine_of_mean"] > 0.99
    assert rloo["mse"] == pytest.approx(rloo["variance"] + rloo["bias"] ** 2, rel=0.02)
    assert not gs["unbiased"] and gs["bias_z"] > 8 and gs["relative_bias"] > 0.1
    assert gs["variance"] < rloo["variance"]  # the relaxation's trade: low variance, a bias
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model


def test_vimco_is_unbiased_for_the_importance_weighted_bound(digits):
    model, x = tiny_model(digits, "categorical")
    report = gradient_report(model, x, ["vimco"], k=2, draws=300, seed=0)
    vimco = report["estimators"]["vimco"]
    assert report["references"]["iw2"]["detail"] == "enumeration of 27^2 joint draws per example"
    assert vimco["reference"] == "iw2" and vimco["bias_z"] < 3 and vimco["cosine_of_mean"] > 0.9


def test_command_writes_table_json_and_png_and_is_deterministic(tmp_path, capsys):
    argv = ["gradients", "--dataset", "digits", "--latent", "6", "--binary", "--hidden", "16",
            "--device", "cpu", "--batch", "5", "--batch-seed", "3", "--draws", "20",
            "--estimators", "gs,disarm,rloo,vimco"]
    first = dvae(capsys, *argv, "--out", tmp_path / "a")
    assert first.rc == 0, first.err
    result = last_json(first.out)
    header = next(line for line in first.out.splitlines() if line.startswith("estimator"))
    assert header.split()[:5] == ["estimator", "k", "evals", "unbiased", "bias"]
    assert "disarm, rloo, vimco took their minimum samples" in first.out
    assert list(result["estimators"]) == ["gs", "disarm", "rloo", "vimco"]
    assert result["references"]["iw2"]["kind"] == "exact"
    assert result["estimators"]["vimco"]["reference"] == "iw2"
    assert len(result["indices"]) == 5 and result["split"] == "valid" and result["fresh"]
    written = json.loads(Path(result["files"]["json"]).read_text())
    assert written == result
    assert png_size(Path(result["files"]["png"]))[0] > 500
    again = last_json(dvae(capsys, *argv, "--out", tmp_path / "b").out)
    for name, row in again["estimators"].items():
        assert {k: v for k, v in row.items() if k != "seconds"} == {
            k: v for k, v in result["estimators"][name].items() if k != "seconds"}


def test_each_estimator_can_take_its_own_k_and_its_evaluations_of_f_are_counted(digits):
    """NAME:K measures one estimator at K samples (the same estimator at two K side by side); the evals column
    counts f's evaluations per estimate (indecater: N (C - 1) + 1 per draw, 7 for 6 binary latents)."""
    model, x = tiny_model(digits, "binary")
    report = gradient_report(model, x, ["rloo:2", "rloo:4", "indecater", "rebar"], draws=50, seed=0)
    rows = report["estimators"]
    assert list(rows) == ["rloo:2", "rloo:4", "indecater", "rebar"]
    assert [rows[n]["k"] for n in rows] == [2, 4, 1, 1]
    assert [rows[n]["evaluations"] for n in rows] == [2, 4, 7, 3]
    assert rows["rloo:4"]["variance"] < rows["rloo:2"]["variance"]


def test_adapt_trains_a_fresh_estimators_learned_parts_on_the_frozen_model(digits):
    """--adapt: double-cv's alpha, from 0 (rloo), trained for 150 steps on this model's aux_loss; its
    variance then drops below the fresh one's (seeded: deterministic). Estimators without learned parts and
    the caller's model are untouched."""
    model, x = tiny_model(digits, "binary")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = gradient_report(model, x, ["double-cv:2", "rloo:2"], draws=200, seed=0)["estimators"]
    adapted = gradient_report(model, x, ["double-cv:2", "rloo:2"], draws=200, seed=0, adapt=150,
                              adapt_data=digits.train)["estimators"]
    assert fresh["double-cv:2"]["state"] == "fresh" and fresh["double-cv:2"]["adapted"] == 0
    assert adapted["double-cv:2"]["state"] == "adapted" and adapted["double-cv:2"]["adapted"] == 150
    assert adapted["rloo:2"]["state"] == "stateless" and adapted["rloo:2"] == {
        **fresh["rloo:2"], "seconds": adapted["rloo:2"]["seconds"]}
    assert adapted["double-cv:2"]["variance"] < fresh["double-cv:2"]["variance"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, one_thread) -> Path:
    """A 40-step digits run (3x3 latents) trained with REINFORCE, whose moving-average baseline it keeps."""
    from discrete_vae.cli import main

    out = tmp_path_factory.mktemp("gradients") / "run"
    cadence = ["--eval-every", "40", "--checkpoint-every", "40", "--log-every", "20"]
    assert main(["train", *FAST, "--latent", "3x3", "--estimator", "reinforce", "--steps", "40", *cadence,
                 "--out", str(out)]) == 0
    return out


def test_a_trained_run_is_measured_with_its_own_estimator_state(small_run, capsys):
    before = (small_run / "last.safetensors").read_bytes()
    result = dvae(capsys, "gradients", small_run, "--estimators", "reinforce,st", "--draws", "20",
                  "--batch", "5", "--device", "cpu")
    assert result.rc == 0, result.err
    out = last_json(result.out)
    assert out["step"] == 40 and out["checkpoint"] in ("best", "last")
    assert Path(out["files"]["json"]).parent == small_run / "gradients"
    assert (small_run / "last.safetensors").read_bytes() == before
    model, _, _ = model_from_run(small_run, "best")
    baseline = float(model.estimator.baseline)
    assert baseline < -10  # the trained moving average of log p(x|z)
    x = load_dataset("digits").valid[:5]
    trained = gradient_report(model, x, ["reinforce"], draws=50)["estimators"]["reinforce"]
    model.estimator = gradients.build_estimator("st")  # reinforce is then a fresh one: b = 0
    fresh = gradient_report(model, x, ["reinforce"], draws=50)["estimators"]["reinforce"]
    assert trained["variance"] < fresh["variance"] / 10


def test_progress_counts_the_estimators_measured(small_run, capsys, monkeypatch, tmp_path):
    import discrete_vae.progress

    monkeypatch.setattr(discrete_vae.progress, "EVERY_S", 0.0)  # a line at every estimator
    argv = ["gradients", small_run, "--estimators", "reinforce,st", "--draws", "5", "--batch", "2",
            "--device", "cpu", "--out", tmp_path / "g"]
    result = dvae(capsys, *argv)
    assert result.rc == 0, result.err
    lines = [line for line in result.err.splitlines() if line.startswith("gradients: ")]
    assert [line.split(", ")[0] for line in lines] == ["gradients: estimator 1/2 (50%)",
                                                        "gradients: estimator 2/2 (100%)"]
    assert lines[-1].endswith("last st")
    assert "gradients: " not in dvae(capsys, *argv, "--no-progress").err


@pytest.mark.parametrize("argv, message", [
    (["--estimators", "nope"], "unknown estimator 'nope'"),
    (["--estimators", "arm"], "supports binary latents"),
    (["--estimators", "relaxed"], "does not apply to this posterior"),
    (["--estimators", "disarm", "--k", "3"], "must be even"),
    (["--estimators", "rloo:0"], "NAME or NAME:K with K a positive number of samples, got 'rloo:0'"),
    (["--estimators", "rloo:two"], "got 'rloo:two'"),
    (["--estimators", "rloo:1"], "rloo needs at least 2 samples per estimate, got 'rloo:1'"),
    (["--adapt", "-1"], "--adapt must be 0 or more steps, got -1"),
    (["--batch", "181"], "between 1 and the 180 examples"),
    (["--draws", "1"], "--draws must be at least 2"),
    (["--tau", "0"], "--tau must be a finite positive temperature, got 0.0"),
    (["--tau", "nan"], "--tau must be a finite positive temperature, got nan"),
    (["--tau", "-1"], "--tau must be a finite positive temperature, got -1.0"),
    (["--tau", "inf"], "--tau must be a finite positive temperature, got inf"),
    (["--batch-seed", "99999999999999999999"], "--batch-seed: must be an integer from 0 to 4294967295"),
    (["--out", "file.txt"], "is a file, not a folder"),
    (["--continuous", "2"], "factorial Bernoulli or categorical"),
])
def test_bad_input_exits_2_with_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file.txt").write_text("")
    result = dvae(capsys, "gradients", "--dataset", "digits", "--latent", "3x3", "--hidden", "16", "--device",
                  "cpu", "--draws", "5", "--out", "out", *argv)
    assert result.rc == 2 and message in result.err
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]  # nothing written


def test_run_folder_with_model_options_exits_2(small_run, capsys):
    result = dvae(capsys, "gradients", small_run, "--latent", "8x4", "--device", "cpu")
    assert result.rc == 2 and "drop --latent" in result.err and len(result.err.strip().splitlines()) == 1
    result = dvae(capsys, "gradients", small_run.parent / "missing")
    assert result.rc == 2 and "not a run folder" in result.err
