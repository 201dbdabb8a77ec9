"""``dvae train`` under ``torchrun`` with two CPU processes (gloo): DistributedDataParallel.

Rank 0 alone writes the run folder; the ranks' models stay identical step after step.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from discrete_vae.checkpoint import load_checkpoint
from discrete_vae.cli import main

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)

TIMEOUT_S = 120
TRAIN = [
    "train", "--preset", "digits-quick", "--hidden", "32", "--val-samples", "5",
    "--device", "cpu", "--steps", "100", "--log-every", "10", "--eval-every", "50",
    "--checkpoint-every", "50",
]  # fmt: skip

# Runs `dvae` like `-m discrete_vae.cli`, then saves each rank's model as rank<R>.safetensors.
RECORD_RANKS = """
import sys

import torch.distributed as dist
from safetensors.torch import save_file

import discrete_vae.train as train_mod
from discrete_vae.cli import main

wrapped = []


class Recording(train_mod.DistributedDataParallel):
    def __init__(self, module, *args, **kwargs):
        super().__init__(module, *args, **kwargs)
        wrapped.append((module, dist.get_rank()))  # the run destroys the group when it ends


train_mod.DistributedDataParallel = Recording
status = main(sys.argv[2:])
module, rank = wrapped[0]
state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
save_file(state, f"{sys.argv[1]}/rank{rank}.safetensors")
sys.exit(status)
"""


def torchrun(tmp_path: Path, *argv: object) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", DVAE_DATA_DIR=str(tmp_path / "data"))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        *(str(a) for a in argv),
    ]  # fmt: skip
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def test_torchrun_two_ranks_rank_0_writes_one_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    torchrun(tmp_path, "-m", "discrete_vae.cli", *TRAIN, "--out", run)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing beside the run
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines))
    records = [json.loads(line) for line in lines]
    assert [m["step"] for m in records if m["split"] == "train"] == list(range(10, 101, 10))
    assert [m["step"] for m in records if m["split"] == "valid"] == [50, 100]
    assert sorted(p.name for p in (run / "images").iterdir()) == [
        f"{kind}_{step:07d}.png" for kind in ("reconstructions", "samples") for step in (50, 100)
    ]
    assert not list(run.glob(".*.tmp"))
    assert int(load_checkpoint(run / "last.safetensors")["step"]) == 100

    capsys.readouterr()
    assert main(["eval", str(run), "--samples", "20", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert math.isfinite(result["nll"]) and -result["nll"] >= result["elbo"] - 1e-9


def test_torchrun_ranks_hold_identical_models(tmp_path):
    script = tmp_path / "record_ranks.py"
    script.write_text(RECORD_RANKS)
    run = tmp_path / "run"
    torchrun(tmp_path, script, tmp_path, *TRAIN, "--learn-temperature", "--out", run)

    rank0 = load_file(tmp_path / "rank0.safetensors")
    rank1 = load_file(tmp_path / "rank1.safetensors")
    saved = load_checkpoint(run / "last.safetensors")["model"]
    assert rank0.keys() == rank1.keys() == saved.keys()
    assert any("temperature" in name for name in saved)
    for name in saved:
        assert torch.equal(rank0[name], rank1[name]), name
        assert torch.equal(rank0[name], saved[name]), name
