"""Every path on ``--device cuda``: training with each estimator, evaluation, the RBM prior's sampler and
log Z, bf16, fp16, gradient diagnostics and a sweep; plus the hard samplers' frequencies on the GPU. Marked
``cuda`` and skipped without a GPU; ``bash bench/gpu_check.sh`` runs them (``python -m pytest -m cuda``)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from scipy.stats import norm

from cli_helpers import dvae, last_json
from discrete_vae.estimators import ESTIMATORS, Latents

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

GPU = ["--preset", "digits-quick", "--hidden", "32", "--val-samples", "5", "--device", "cuda",
       "--steps", "20", "--eval-every", "10", "--checkpoint-every", "10"]


@pytest.mark.parametrize("name", sorted(set(ESTIMATORS.names()) - {"relaxed"}))
def test_each_estimator_trains_and_evaluates_on_cuda(name, tmp_path, capsys):
    cls = ESTIMATORS.get(name)
    latent = [] if "categorical" in cls.supports else ["--latent", "16", "--binary"]
    run = tmp_path / name
    k = cls.min_samples
    result = dvae(capsys, "train", *GPU, *latent, "--estimator", name, "--k", k, "--out", run)
    assert result.rc == 0, result.err
    scored = dvae(capsys, "eval", run, "--samples", 20, "--device", "cuda", "--limit", 100)
    assert scored.rc == 0, scored.err
    assert 0 < last_json(scored.out)["nll"] < 1e4
    resumed = dvae(capsys, "train", "--resume", run, "--steps", 30)
    assert resumed.rc == 0, resumed.err


def test_rbm_prior_trains_samples_and_scores_on_cuda(tmp_path, capsys):
    run = tmp_path / "dvaes"
    result = dvae(capsys, "train", *GPU, "--model", "dvaes-power", "--latent", "20x2", "--chains", "50",
                  "--sweeps", "5", "--out", run)
    assert result.rc == 0, result.err
    for method in ("exact", "ais"):
        scored = dvae(capsys, "eval", run, "--samples", 20, "--device", "cuda", "--limit", 100, "--log-z",
                      method, "--log-z-betas", 50, "--log-z-samples", 64)
        assert scored.rc == 0, scored.err
        assert 0 < last_json(scored.out)["nll"] < 1e4
    assert dvae(capsys, "sample", run, "--out", tmp_path / "s.png").rc == 0


def test_bf16_and_gradients_on_cuda(tmp_path, capsys):
    run = tmp_path / "bf16"
    assert dvae(capsys, "train", *GPU, "--precision", "bf16", "--out", run).rc == 0
    result = dvae(capsys, "gradients", run, "--estimators", "gs,rloo", "--draws", 20, "--device", "cuda",
                  "--out", tmp_path / "g")
    assert result.rc == 0, result.err


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_stopped_run_resumes_exactly_on_cuda(precision, tmp_path, capsys):
    """20 steps in one go against 10 steps, then a resume to 20: the same weights bit for bit (and, in
    fp16, the same loss scale). A constant learning rate, so that stopping at 10 changes no schedule."""
    from discrete_vae.checkpoint import load_checkpoint

    args = [*GPU, "--precision", precision, "--lr-schedule", "constant"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert dvae(capsys, "train", *args, "--out", whole).rc == 0
    assert dvae(capsys, "train", *args, "--steps", 10, "--out", split).rc == 0
    assert dvae(capsys, "train", "--resume", split, "--steps", 20).rc == 0
    a, b = (load_checkpoint(p / "last.safetensors") for p in (whole, split))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    if precision == "fp16":
        assert a["scaler"]["scale"] == b["scaler"]["scale"] > 0


def test_a_sweep_runs_on_cuda(tmp_path, capsys):
    base = {"preset": "digits-quick", "device": "cuda", "steps": 20, "eval_every": 10}
    spec = {"name": "gpu", "base": base,
            "grid": {"model": ["gs", "st-gs"], "seed": [0]}, "eval": {"samples": 5, "limit": 50},
            "tables": [{"rows": "model", "metric": "test.nll"}]}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = dvae(capsys, "sweep", path, "--out", tmp_path / "out", "--executor", "debug")
    assert result.rc == 0, result.err
    assert json.loads(result.out.strip().splitlines()[-1])["states"]["done"] == 2


@pytest.mark.parametrize("kind", ["binary", "categorical"])
def test_hard_draws_on_cuda_have_the_probabilities_of_q(kind):
    """The GPU's samplers (1[u < p]; the inverse CDF): frequencies over 200,000 draws against the
    probabilities, z-tests at family-wise rate 1e-4."""
    gen = torch.Generator().manual_seed(5)
    logits = 2 * torch.randn((3, 4) if kind == "binary" else (3, 2, 5), generator=gen).cuda()
    latents = Latents(kind, logits)
    z = latents.sample(200_000)
    probs = latents.probs()
    stderr = (probs * (1 - probs) / z.shape[0]).sqrt()
    bound = norm.isf(1e-4 / 2 / probs.numel())
    assert torch.all((z.mean(0) - probs).abs() <= bound * stderr + 1e-6)
