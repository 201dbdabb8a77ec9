"""``--precision bf16``: the encoder's and decoder's forward pass under autocast while training, float32
everywhere else (distributions, samplers, estimators, every bound); runs resume exactly as fp32 ones do."""

from __future__ import annotations

import pytest
import torch

from cli_helpers import FAST, dvae, last_json
from discrete_vae.checkpoint import load_checkpoint
from discrete_vae.config import TrainConfig
from discrete_vae.recipe import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bf16_runs_the_nets_in_bfloat16_while_training_and_float32_in_eval():
    torch.manual_seed(0)
    model = build_model(TrainConfig.from_dict({"latent": "8x4", "hidden": [64], "precision": "bf16"}), 64)
    assert model.train_dtype == torch.bfloat16
    x = (torch.rand(32, 64) < 0.3).float()
    model.train()
    trained, _ = model.encode(x)
    model.eval()
    evaluated, _ = model.encode(x)
    exact = model.encoder(x)  # float32, no autocast
    assert trained.dtype == evaluated.dtype == torch.float32
    assert torch.equal(evaluated, exact)  # eval mode: float32 throughout
    assert not torch.equal(trained, exact)  # training: bfloat16 matmuls ...
    torch.testing.assert_close(trained, exact, rtol=0.05, atol=0.05)  # ... to bfloat16's precision
    model.train()
    terms = model(x, 1.0)
    assert terms.loss.dtype == terms.log_px.dtype == torch.float32


def test_a_bf16_run_trains_differs_from_fp32_and_resumes_exactly(tmp_path, capsys):
    args = [*FAST, "--steps", 60, "--eval-every", 30, "--checkpoint-every", 30, "--lr-schedule", "constant"]
    runs = {}
    for name, extra in (("fp32", []), ("bf16", ["--precision", "bf16"])):
        runs[name] = tmp_path / name
        result = last_json(dvae(capsys, "train", *args, *extra, "--out", runs[name]).out)
        assert result["nll"] > 0
    split = tmp_path / "split"
    dvae(capsys, "train", *args, "--precision", "bf16", "--steps", 30, "--out", split)
    dvae(capsys, "train", "--resume", split, "--steps", 60)
    a, b, c = (load_checkpoint(p / "last.safetensors")["model"] for p in (runs["bf16"], split, runs["fp32"]))
    assert all(torch.equal(a[k], b[k]) for k in a)  # exact resume
    assert any(not torch.equal(a[k], c[k]) for k in a)  # bf16 is not fp32


def test_an_unknown_precision_is_one_line(tmp_path, capsys):
    from discrete_vae.cli import main

    assert main(["train", *map(str, FAST), "--precision", "fp8", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dvae train: error: --precision must be one of fp32, bf16, got 'fp8'"]
