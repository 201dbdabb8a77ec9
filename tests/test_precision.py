"""``--precision bf16``: the encoder's and decoder's forward pass under autocast while training, float32
everywhere else (distributions, samplers, estimators, every bound); runs resume exactly as fp32 ones do.
``--precision fp16`` (CUDA only) adds dynamic loss scaling; its loop is exercised here on the CPU."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch
import yaml

from cli_helpers import FAST, dvae, last_json
from discrete_vae.checkpoint import load_checkpoint
from discrete_vae.config import TrainConfig
from discrete_vae.recipe import build_model

pytestmark = pytest.mark.usefixtures("one_thread")
CPUINFO = Path("/proc/cpuinfo")


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


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_bfloat16_kernels_says_so_once_and_trains(tmp_path, capsys, monkeypatch,
                                                                        native):
    from discrete_vae import train as train_module

    monkeypatch.setattr(train_module, "cpu_has_fast_bf16", lambda: native)
    run = dvae(capsys, "train", *FAST, "--steps", 5, "--precision", "bf16", "--out", tmp_path / "r")
    warned = [line for line in run.err.splitlines() if "has no oneDNN bfloat16 kernels" in line]
    assert len(warned) == (0 if native else 1)
    assert last_json(run.out)["nll"] > 0  # a warning, not a refusal: the run trains


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or not CPUINFO.is_file(),
                    reason="the flags checked are x86's, as Linux lists them")
def test_cpu_has_fast_bf16_agrees_with_the_cpu_flags():
    """PyTorch's answer against the x86 flags Linux lists (AVX-512 BW, VL and DQ all present)."""
    from discrete_vae.train import cpu_has_fast_bf16

    flags = CPUINFO.read_text().split()
    assert cpu_has_fast_bf16() == all(f in flags for f in ("avx512bw", "avx512vl", "avx512dq"))


def test_an_unknown_precision_is_one_line(tmp_path, capsys):
    from discrete_vae.cli import main

    assert main(["train", *map(str, FAST), "--precision", "fp8", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dvae train: error: --precision must be one of fp32, bf16, fp16, got 'fp8'"]


def test_fp16_on_the_cpu_is_one_line_and_leaves_no_run(tmp_path, capsys):
    from discrete_vae.cli import main

    run = tmp_path / "r"
    assert main(["train", *map(str, FAST), "--precision", "fp16", "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--precision fp16 runs on CUDA, not cpu" in err[0] and "bf16" in err[0]
    assert not run.exists()


def test_fp16_scales_the_loss_skips_overflowing_steps_and_resumes_exactly(tmp_path, capsys, monkeypatch):
    """The fp16 loop (run here on the CPU): the loss scale starts at 2^16 and halves on each step whose
    scaled gradients overflow (the first few here); it is checkpointed, so a split run ends bitwise where
    an unbroken one does; REBAR's own parameters (η, from the scaled aux loss) train."""
    from discrete_vae import train as train_module

    monkeypatch.setattr(train_module, "FP16_DEVICES", ("cuda", "cpu"))
    args = [*FAST, "--steps", 40, "--eval-every", 20, "--checkpoint-every", 20, "--lr-schedule", "constant",
            "--precision", "fp16", "--estimator", "rebar"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert last_json(dvae(capsys, "train", *args, "--out", whole).out)["nll"] > 0
    dvae(capsys, "train", *args, "--steps", 20, "--out", split)
    dvae(capsys, "train", "--resume", split, "--steps", 40)
    a, b = (load_checkpoint(p / "last.safetensors") for p in (whole, split))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["scaler"] == b["scaler"]
    skipped = 40 - a["scaler"]["_growth_tracker"]  # steps since the last overflow are counted
    assert skipped >= 1 and a["scaler"]["scale"] == 2.0**16 / 2**skipped  # halved once per overflow
    eta = [k for k in a["model"] if k.startswith("estimator.")]
    assert eta, "rebar has its own parameters"
    config = TrainConfig.from_dict(yaml.safe_load((whole / "config.yaml").read_text()))
    torch.manual_seed(config.run.seed)
    fresh = build_model(config, 64).state_dict()
    assert any(not torch.equal(a["model"][k], fresh[k]) for k in eta)
