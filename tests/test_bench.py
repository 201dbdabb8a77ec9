"""Every benchmark script under ``bench/`` runs to its table at a tiny size, on a small binarized MNIST the
test writes (the scripts' figures are measured by hand; this only keeps the scripts from rotting)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import subprocess_env
from test_data import amat_bytes

BENCH = Path(__file__).resolve().parents[1] / "bench"
TIMEOUT_S = 300


# binarized_mnist loads only at its real split sizes; the test's files are small, so each script runs under
# a prelude that lowers the sizes the loader expects to theirs (and puts bench/ on the path, as a script has)
SIZES = {"train": 1100, "valid": 100, "test": 100}  # gpu_speed.py trains at batch 1000
PRELUDE = ("import runpy, sys; from discrete_vae.data import binarized_mnist; "
           f"binarized_mnist.SIZES.update({SIZES!r}); sys.argv = sys.argv[1:]; "
           "sys.path.insert(0, sys.argv[0].rsplit('/', 1)[0]); "
           "runpy.run_path(sys.argv[0], run_name='__main__')")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """binarized_mnist with 1100 / 100 / 100 random images (784 pixels each)."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split, n in SIZES.items():
        bits = (rng.random((n, 784)) < 0.2).astype(int)
        (root / f"binarized_mnist_{split}.amat").write_bytes(amat_bytes(bits))
    return root


# script, its arguments ({data} and {run} are filled in), a piece of the output it must print
CASES = [
    ("compile_parity.py", "--data-dir {data} --steps 4 --perturbations 1 --blocks 2 --set latent=4x4 "
     "--set hidden=[16]", "mean |difference| over steps 3–4"),
    ("compile_speed.py", "--data-dir {data} --steps 3 --warmup 2 --rounds 1 --set latent=4x4 "
     "--set hidden=[16]", '"compiled_vs_eager"'),
    ("denormals.py", "{run} --steps 3 --rounds 1", "flushed / IEEE"),
    ("dvae_speed.py", "--data-dir {data} --model dvaes-power --settings pcd:10x2 --steps 3 --rounds 1 "
     "--threads 1", '"steps_per_s"'),
    ("estimator_cost.py", "--settings binary --estimators gs,disarm --hidden 16 --batch-size 10 "
     "--steps 2 --repeats 1 --warmup 1 --threads 1 --compile", "compiled ms / eager ms"),
    ("estimator_variance.py", "--settings binary --stages 5 --dataset digits --draws 3 --adapt 1 --batch 3 "
     "--reference-samples 100 --out {tmp}/variance", "| binary: variance |"),
    ("eval_speed.py", "{run} --samples 5 --limit 10", '"flop_per_s"'),
    ("gibbs_speed.py", "--threads 1 --chains 20 --n-a 5 --n-b 5 --sweeps 2 --rounds 1 --pa-betas 5 "
     "--pa-population 10 --pa-runs 1", '"ours_sweeps_per_s"'),
    ("gpu_speed.py", "--data-dir {data} --device cpu --steps 3 --dvae-steps 2 --precisions fp32 --seeds 2 "
     "--bound-samples 10 --eval-limit 5 --no-compiled", "| fp32 | 3"),
    ("matmul_flops.py", "", "flop"),
    ("peer_storchastic.py", "--settings binary --ks 2 --rows 50 --batch 5 --repeats 1", "| unordered:2 |"),
    ("precision_speed.py", "--batch-sizes 10 --rounds 1 --steps 1 --precisions fp32,bf16,fp16",
     "fp32 / fp16"),
    ("seed_loop.py", "--data-dir {data} --steps 3", "steps"),
    ("sharpness.py", "--data-dir {data} --out {tmp}/sharp --classes 3 --draws 50 --reps 2 --batch 5 "
     "--models gs igr-i --taus 0.5", "gs"),
    ("sop_speed.py", "--threads 1 --k 1,2 --rounds 1 --seconds 0.01", "igr-planar / gs"),
    ("speed.py", "--data-dir {data} --steps 3 --warmup 2 --rounds 1 --compile off", "steps"),
    ("step_breakdown.py", "--data-dir {data} --steps 3", "ms"),
    ("sweep_throughput.py", "--settings 1x1 --points 1 --steps 3 --rounds 1", "runs per hour"),
]


def test_every_script_has_a_case():
    assert {p.name for p in BENCH.glob("*.py")} == {c[0] for c in CASES}


@pytest.mark.parametrize("script,args,expect", CASES, ids=[c[0] for c in CASES])
def test_bench_script_runs(script, args, expect, data_dir, run, tmp_path):
    argv = args.format(data=data_dir, run=run, tmp=tmp_path).split()
    result = subprocess.run([sys.executable, "-c", PRELUDE, str(BENCH / script), *argv], capture_output=True,
                            text=True, timeout=TIMEOUT_S, env=subprocess_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert expect in result.stdout, result.stdout[-3000:]


def test_estimator_variance_measures_a_reused_run_at_its_step_and_refuses_another_training(tmp_path):
    """``--reuse binary=RUN``: the stage at RUN's step is measured on RUN's last checkpoint (nothing is
    trained for it); a RUN whose config.yaml trains otherwise is one line naming the difference."""
    import json

    import yaml

    from discrete_vae.checkpoint import load_checkpoint

    def variance(out: str, *extra: str) -> subprocess.CompletedProcess:
        argv = ["--settings", "binary", "--stages", "5", "--dataset", "digits", "--draws", "3", "--adapt",
                "1", "--batch", "3", "--reference-samples", "100", "--out", str(tmp_path / out), *extra]
        return subprocess.run([sys.executable, "-c", PRELUDE, str(BENCH / "estimator_variance.py"), *argv],
                              capture_output=True, text=True, timeout=TIMEOUT_S, env=subprocess_env(tmp_path),
                              cwd=tmp_path)

    assert variance("first").returncode == 0
    run = tmp_path / "first" / "binary" / "run"
    page = tmp_path / "page.md"
    page.write_text("# Variance\n\n<!-- bench/estimator_variance.py: binary -->\nold\n"
                    "<!-- end bench/estimator_variance.py: binary -->\n\nWhat it shows.\n")
    result = variance("second", "--reuse", f"binary={run}", "--page", str(page))
    assert result.returncode == 0, result.stderr[-3000:]
    text = page.read_text()
    assert "old" not in text and text.endswith("-->\n\nWhat it shows.\n")
    assert "| binary: variance |" in text and "Command: `python " in text and "--reuse binary=" in text
    assert (tmp_path / "page.png").read_bytes().startswith(b"\x89PNG")
    assert not (tmp_path / "second" / "binary" / "run").exists()
    kept = tmp_path / "second" / "binary" / "step-5" / "model"  # for estimators added later
    assert {p.name for p in kept.iterdir()} == {"config.yaml", "last.safetensors"}
    assert load_checkpoint(kept / "last.safetensors")["step"] == 5
    measured = json.loads((tmp_path / "second" / "binary" / "step-5" / "gradients.json").read_text())
    assert (measured["run_dir"], measured["step"]) == (str(run), 5)
    made = measured["provenance"]
    assert set(made) == {"date", "commit", "cpu", "gpu"} and made["commit"]
    assert f"- 5 steps: {run} (last checkpoint, step 5); date " in result.stdout
    summary = json.loads((tmp_path / "second" / "variance.json").read_text())["binary"]["5"]
    assert summary["made"]["run_dir"] == str(run) and "rloo:2" in summary["estimators"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["optim"]["lr"] = 3e-4
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    result = variance("third", "--reuse", f"binary={run}")
    assert result.returncode == 1 and "trains otherwise: lr 0.0003 (the setting's 0.001)" in result.stderr
    assert variance("first", "--stages", "6").returncode == 0  # a later stage: the summary keeps the earlier
    assert set(json.loads((tmp_path / "first" / "variance.json").read_text())["binary"]) == {"5", "6"}
