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

import discrete_vae.distributed as dist_mod
from discrete_vae.cli import main

wrapped = []


class Recording(dist_mod.DistributedDataParallel):
    def __init__(self, module, *args, **kwargs):
        super().__init__(module, *args, **kwargs)
        wrapped.append((module, dist.get_rank()))  # the run destroys the group when it ends


dist_mod.DistributedDataParallel = Recording
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
    done = torchrun(tmp_path, "-m", "discrete_vae.cli", *TRAIN, "--out", run)
    (printed,) = [line for line in done.stdout.splitlines() if line.startswith("{")]  # rank 0's alone
    assert json.loads(printed)["step"] == 100

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
    assert math.isfinite(result["nll"]) and result["nll"] <= result["neg_elbo"] + 1e-9


@pytest.mark.parametrize("extra, own", [
    (["--learn-temperature"], "temperature"),
    # an estimator's own parameters: outside DDP's reduction, their aux-loss gradients averaged by the loop
    (["--estimator", "relax", "--cv-hidden", "8"], "estimator.net"),  # and create_graph in the forward
    (["--estimator", "nvil", "--baseline-hidden", "8"], "estimator.net"),  # lazily sized
    (["--estimator", "rodeo", "--k", "2", "--cv-hidden", "8"], "estimator.net"),  # and grad of f in z
], ids=["learned-temperature", "relax", "nvil", "rodeo"])
def test_torchrun_ranks_hold_identical_models(tmp_path, extra, own):
    script = tmp_path / "record_ranks.py"
    script.write_text(RECORD_RANKS)
    run = tmp_path / "run"
    torchrun(tmp_path, script, tmp_path, *TRAIN, *extra, "--out", run)

    rank0 = load_file(tmp_path / "rank0.safetensors")
    rank1 = load_file(tmp_path / "rank1.safetensors")
    saved = load_checkpoint(run / "last.safetensors")["model"]
    assert rank0.keys() == rank1.keys() == saved.keys()
    assert any(own in name for name in saved), sorted(saved)
    # an estimator's running statistics (nvil's signal mean and variance) move with each rank's batch in
    # the forward pass; DDP hands every rank rank 0's before the next one, and the checkpoint keeps rank 0's
    running = {"estimator.signal_mean", "estimator.signal_var", "estimator.steps"}
    for name in saved:
        assert torch.equal(rank0[name], saved[name]), name
        if name not in running:
            assert torch.equal(rank0[name], rank1[name]), name


# Runs `dvae` like `-m discrete_vae.cli`, recording the PCD chains at every entry to the sampler in training
# (the negative phase; validation's pictures draw with persist=False) into chains_rank<R>.safetensors; with a
# stop step S > 0 the process ends at the start of step S + 1, as a kill after step S's checkpoint would.
RECORD_CHAINS = """
import os
import sys

from safetensors.torch import save_file

import torch
from discrete_vae.cli import main
from discrete_vae.data import BatchIterator
from discrete_vae.priors import samplers

out, stop, rank = sys.argv[1], int(sys.argv[2]), os.environ["RANK"]
entries, batches = [], []
forward, draw = samplers.PCDSampler.forward, BatchIterator.next


def save():
    save_file({f"{i:04d}": t for i, t in enumerate(entries)}, f"{out}/chains_rank{rank}.safetensors")


def recording(self, rbm, n, persist=True):
    if persist:
        entries.append(self.chains.detach().clone())
    return forward(self, rbm, n, persist)


def counting(self):
    batches.append(1)
    if stop and len(batches) == stop + 1:
        save()
        os._exit(0)
    return draw(self)


samplers.PCDSampler.forward = recording
BatchIterator.next = counting
status = main(sys.argv[3:])
save()
sys.exit(status)
"""
RBM = ["train", "--model", "dvaes-exp", "--dataset", "digits", "--latent", "16x2", "--hidden", "16",
       "--chains", "8", "--sweeps", "2", "--batch-size", "20", "--val-samples", "2", "--log-z-betas", "10",
       "--log-z-samples", "16", "--device", "cpu", "--steps", "30", "--eval-every", "30",
       "--checkpoint-every", "10", "--log-every", "10"]  # fmt: skip


def _entries(folder: Path, rank: int) -> list[torch.Tensor]:
    state = load_file(folder / f"chains_rank{rank}.safetensors")
    return [state[k] for k in sorted(state)]


def test_torchrun_ranks_keep_their_own_pcd_chains_and_resume_restores_them(tmp_path):
    """With the RBM prior, each rank's persistent chains are its own at every entry to the sampler
    (DDP must not broadcast them from rank 0), and a resume puts back each rank's chains."""
    script = tmp_path / "record_chains.py"
    script.write_text(RECORD_CHAINS)
    full, cut = tmp_path / "full", tmp_path / "cut"
    for folder in (full, cut, cut / "resumed"):
        folder.mkdir(parents=True, exist_ok=True)
    torchrun(tmp_path, script, full, 0, *RBM, "--out", full / "run")
    a0, a1 = _entries(full, 0), _entries(full, 1)
    assert len(a0) == len(a1) == 30  # one negative phase per training step
    assert not any(torch.equal(x, y) for x, y in zip(a0, a1, strict=True))

    torchrun(tmp_path, script, cut, 20, *RBM, "--out", cut / "run")  # stopped after step 20's checkpoint
    assert int(load_checkpoint(cut / "run" / "last.safetensors")["step"]) == 20
    torchrun(tmp_path, script, cut / "resumed", 0, "train", "--resume", cut / "run")
    for rank, entries in ((0, a0), (1, a1)):
        resumed = _entries(cut / "resumed", rank)
        assert len(resumed) == 10
        assert all(torch.equal(x, y) for x, y in zip(resumed, entries[20:], strict=True))
    a = load_checkpoint(full / "run" / "last.safetensors")
    b = load_checkpoint(cut / "run" / "last.safetensors")
    (name,) = a["rank_local"]
    assert len(a["rank_local"][name]) == 2 and not torch.equal(*a["rank_local"][name])
    assert all(torch.equal(x, y) for x, y in zip(a["rank_local"][name], b["rank_local"][name], strict=True))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
