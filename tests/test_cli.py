"""End-to-end tests of the ``dvae`` command line on the offline 8x8 ``digits`` dataset.

The CLI runs in-process through :func:`discrete_vae.cli.main` where that is enough, and as a
subprocess where a real process is the point (``kill -9``, exit status, no traceback). Every run
writes under ``tmp_path``; nothing touches the network (downloads are monkeypatched to fail).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open

import discrete_vae.train as train_mod
from cli_helpers import (  # noqa: F401
    FAST,
    RUN_ARGS,
    TIMEOUT_S,
    Result,
    cli_command,
    dvae,
    kill_when,
    last_json,
    png_size,
    read_metrics,
    subprocess_env,
)
from discrete_vae.checkpoint import load_checkpoint, save_checkpoint
from discrete_vae.config import ModelConfig, TrainConfig, load_config_file
from discrete_vae.data import binarized_mnist as bm_mod
from discrete_vae.data import download as download_mod
from discrete_vae.errors import ConfigError
from discrete_vae.models import DiscreteVAE
from discrete_vae.presets import PRESETS
from discrete_vae.recipe import model_from_run
from discrete_vae.upgrade import upgrade_config


def assert_readable_grid(path: Path, rows: int, ncol: int = 8, side: int = 8) -> None:
    """A PNG of ``rows`` x ``ncol`` tiles of ``side``-pixel images, each enlarged to >= 40 px, with a
    label margin on the left and a caption above."""
    width, height = png_size(path)
    assert width >= ncol * 40 + 20 and height >= rows * 40 + 10, (width, height)
    with Image.open(path) as image:
        pixels = image.load()
        tile_left = next(x for x in range(width) if pixels[x, height - 10] != 255)  # the first tile's edge
        label = [pixels[x, y] for x in range(tile_left) for y in range(20, height)]
        caption = [pixels[x, y] for x in range(width // 2) for y in range(14)]
    assert min(label) < 128 and min(caption) < 128  # dark text: row labels on the left, a caption above


pytestmark = pytest.mark.usefixtures("one_thread")


def copy_run(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


# ------------------------------------------------------------------ train: the run folder
def test_train_writes_the_run_folder(run):
    config = TrainConfig.from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    assert (config.run.dataset, config.model.hidden, config.optim.steps) == ("digits", (32,), 300)
    assert TrainConfig.from_dict(config.to_dict()) == config

    lines = read_metrics(run)
    train = [m for m in lines if m["split"] == "train"]
    valid = [m for m in lines if m["split"] == "valid"]
    assert len(train) + len(valid) == len(lines)
    assert [m["step"] for m in train] == list(range(50, 301, 50))
    assert [m["step"] for m in valid] == [100, 200, 300]
    assert all({"loss", "neg_log_px", "kl", "tau", "lr"} <= set(m) for m in train)
    assert all({"nll", "neg_elbo", "neg_relaxed_objective"} <= set(m) for m in valid)
    # positive nats to minimise, everywhere: -ELBO >= NLL bound, reconstruction and KL terms >= 0
    assert all(m["neg_elbo"] >= m["nll"] - 1e-9 and m["nll"] > 0 for m in valid)
    assert all(m["neg_log_px"] > 0 and m["kl"] >= 0 and m["loss"] > 0 for m in train)
    assert all(math.isfinite(v) for m in lines for v in m.values() if isinstance(v, float))

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (run / "tb").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    assert {"train/loss", "train/tau", "valid/nll", "valid/neg_elbo"} <= set(acc.Tags()["scalars"])
    assert {"samples", "reconstructions"} <= set(acc.Tags()["images"])

    for step in (100, 200, 300):
        # 32 data rows over their reconstructions = 64 images; 64 prior samples; 8 x 8 tiles
        assert_readable_grid(run / "images" / f"reconstructions_{step:07d}.png", rows=8)
        assert_readable_grid(run / "images" / f"samples_{step:07d}.png", rows=8)

    last = load_checkpoint(run / "last.safetensors")
    best = load_checkpoint(run / "best.safetensors")
    assert int(last["step"]) == 300
    assert int(best["step"]) == int(last["best"]["step"]) in (100, 200, 300)
    assert best["metrics"]["nll"] == min(m["nll"] for m in valid)


# ------------------------------------------------------------------ eval / sample / reconstruct
def test_eval_prints_the_bound_as_the_last_json_line(run, capsys):
    first = dvae(capsys, "eval", run, "--samples", 50, "--split", "test", "--device", "cpu")
    assert first.rc == 0, first.err
    result = last_json(first.out)
    assert {"nll", "neg_elbo", "samples", "split", "checkpoint"} <= set(result)
    assert (result["samples"], result["split"], result["examples"]) == (50, "test", 180)
    # log-mean-exp >= mean over the same weights: the IW bound is never below the ELBO
    assert math.isfinite(result["nll"]) and result["nll"] <= result["neg_elbo"] + 1e-9
    assert json.loads((run / "eval_test_S50_seed0_best.json").read_text()) == result
    assert result["checkpoint"] == "best" and "best.safetensors" in first.err
    assert "test: NLL <= " in first.err and " nats on 180 examples (importance-weighted bound" in first.err
    limited = dvae(capsys, "eval", run, "--samples", 5, "--limit", 10, "--device", "cpu")
    assert limited.rc == 0 and " nats on 10 of the 180 examples (--limit) (" in limited.err, limited.err

    again = last_json(dvae(capsys, "eval", run, "--samples", 50, "--seed", 0).out)
    other = last_json(dvae(capsys, "eval", run, "--samples", 50, "--seed", 1).out)
    result.pop("seconds"), again.pop("seconds"), other.pop("seconds")
    assert again == result
    assert other["nll"] != result["nll"] and other["neg_elbo"] != result["neg_elbo"]
    assert abs(other["nll"] - result["nll"]) < 1.0  # the same bound, other Monte Carlo noise

    valid = dvae(capsys, "eval", run, "--samples", 20, "--split", "valid", "--device", "cpu")
    assert valid.rc == 0, valid.err
    assert last_json(valid.out)["split"] == "valid"
    assert last_json(valid.out)["nll"] <= last_json(valid.out)["neg_elbo"] + 1e-9


def test_sample_and_reconstruct_write_readable_pngs(run, tmp_path, capsys):
    assert dvae(capsys, "sample", run, "--n", 16, "--out", tmp_path / "f.png").rc == 0
    assert_readable_grid(tmp_path / "f.png", rows=2)
    assert dvae(capsys, "reconstruct", run, "--out", tmp_path / "g.png").rc == 0
    assert_readable_grid(tmp_path / "g.png", rows=8)  # 4 data rows, each above its recons
    assert dvae(capsys, "reconstruct", run, "--n", 5, "--out", tmp_path / "h.png").rc == 0
    assert_readable_grid(tmp_path / "h.png", rows=2)  # one data row, one recon row
    with Image.open(tmp_path / "f.png") as image:
        assert image.mode == "L" and image.getpixel((0, 0)) == 255  # the white border


def test_reconstruct_takes_examples_spread_over_the_split(run, tmp_path, capsys, monkeypatch):
    from discrete_vae.data import load_dataset

    seen, reconstruct = [], DiscreteVAE.reconstruct
    monkeypatch.setattr(DiscreteVAE, "reconstruct", lambda self, x: seen.append(x) or reconstruct(self, x))
    assert dvae(capsys, "reconstruct", run, "--n", 16, "--out", tmp_path / "r.png").rc == 0
    (x,) = seen
    test = load_dataset("digits").test
    assert torch.equal(x, load_dataset("digits").subset("test", 16)) and not torch.equal(x, test[:16])


def test_list_prints_the_registries(capsys):
    result = dvae(capsys, "list", "--json")
    assert result.rc == 0
    listed = json.loads(result.out)
    assert {"gs", "st-gs"} <= set(listed["models"])
    assert {"uniform", "learnable"} <= set(listed["priors"])
    assert {"digits", "binarized_mnist"} <= set(listed["datasets"])
    assert listed["presets"] == PRESETS.names()

    table = dvae(capsys, "list")  # a table for people: one row per registry, no JSON
    assert table.rc == 0 and not table.out.lstrip().startswith("{")
    rows = {line.split()[0]: line for line in table.out.splitlines() if line.strip()}
    assert {"models", "priors", "datasets", "presets", "structs"} <= set(rows)
    assert all(name in rows["presets"] for name in PRESETS.names())


def test_list_priors_shows_each_priors_options(capsys):
    lines = {line.split()[0]: line for line in dvae(capsys, "list", "priors").out.splitlines()}
    assert {"uniform", "learnable", "rbm"} <= set(lines)
    assert "--chains 1000" in lines["rbm"] and "--log-z-betas 1000" in lines["rbm"]
    as_json = json.loads(dvae(capsys, "list", "priors", "--json").out)
    assert as_json["rbm"]["sampler"] == "pcd" and as_json["uniform"] == {}


def test_list_presets_shows_what_each_sets(capsys):
    result = dvae(capsys, "list", "presets")
    assert result.rc == 0
    lines = {line.split()[0]: line for line in result.out.splitlines()}
    assert set(lines) == set(PRESETS.names())
    assert "--dataset digits" in lines["digits-quick"] and "--hidden 64,32" in lines["digits-quick"]
    assert "--hidden none" in lines["igr2020-dense"]  # a linear network
    as_json = json.loads(dvae(capsys, "list", "presets", "--json").out)
    assert as_json["digits-quick"]["steps"] == PRESETS.get("digits-quick")["steps"]
    structs = dvae(capsys, "list", "structs").out
    assert "2-layer-nonlin" in structs and "--levels 2" in structs


def test_demo_gumbel_max_writes_its_figures(tmp_path, capsys):
    result = dvae(capsys, "demo", "gumbel-max", "--out", tmp_path / "demo")
    assert result.rc == 0, result.err
    printed = json.loads(result.out)
    assert printed["chi_square_p_value"] > 1e-3  # fixed seed; false-failure rate 1e-3
    paths = [Path(p) for p in printed["figures"].values()]
    pngs = [p for p in paths if p.suffix == ".png"]
    assert len(pngs) >= 2 and all(p.parent == tmp_path / "demo" for p in paths)
    assert all(min(png_size(p)) > 50 for p in pngs)


# ------------------------------------------------------------------ kill -9 and resume
def _progressed(run: Path, checkpoint_every: int) -> bool:
    """last.safetensors exists and a metrics line lies past the first checkpoint."""
    if not (run / "last.safetensors").is_file() or not (run / "metrics.jsonl").is_file():
        return False
    text = (run / "metrics.jsonl").read_text()
    steps = [json.loads(ln)["step"] for ln in text.split("\n")[:-1] if ln.startswith("{")]
    return any(s > checkpoint_every for s in steps)


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path, capsys):
    every = 130  # not a multiple of --log-every: partial metric sums must survive the restart
    args = [*FAST, "--steps", 1000, "--checkpoint-every", every, "--log-every", 50]
    full, killed = tmp_path / "full", tmp_path / "killed"
    env = subprocess_env(tmp_path)
    quiet = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "text": True}
    reference = subprocess.Popen(cli_command("train", *args, "--out", full), **quiet)
    victim = subprocess.Popen(cli_command("train", *args, "--out", killed), **quiet)
    kill_when(victim, lambda: _progressed(killed, every), TIMEOUT_S)
    stopped_at = int(load_checkpoint(killed / "last.safetensors")["step"])
    assert stopped_at % every == 0 and 0 < stopped_at < 1000

    resumed = subprocess.run(
        cli_command("train", "--resume", killed), env=env, capture_output=True, text=True,
        timeout=TIMEOUT_S,
    )
    assert resumed.returncode == 0, resumed.stderr
    _, err = reference.communicate(timeout=TIMEOUT_S)
    assert reference.returncode == 0, err

    assert (killed / "metrics.jsonl").read_bytes() == (full / "metrics.jsonl").read_bytes()
    a, b = load_checkpoint(killed / "last.safetensors"), load_checkpoint(full / "last.safetensors")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    results = []
    for run in (killed, full):
        result = last_json(dvae(capsys, "eval", run, "--samples", 50, "--device", "cpu").out)
        result.pop("seconds")
        results.append(result)
    assert results[0] == results[1]


# ------------------------------------------------------------------ non-finite loss
def test_non_finite_loss_exits_1_and_the_run_resumes(run, tmp_path, capsys, monkeypatch):
    forward, calls = DiscreteVAE.forward, []

    def nan_at_step_130(*args, **kwargs):
        terms = forward(*args, **kwargs)
        if torch.is_grad_enabled():  # training steps, not validation's relaxed objective
            calls.append(1)
        return terms._replace(loss=terms.loss * math.nan) if len(calls) == 130 else terms

    out = tmp_path / "run"
    monkeypatch.setattr(DiscreteVAE, "forward", nan_at_step_130)
    result = dvae(capsys, "train", *RUN_ARGS, "--out", out)
    assert result.rc == 1
    assert len(result.err.strip().splitlines()) == 1 and "step 130" in result.err, result.err
    assert "checkpoint (step 125) is kept" in result.err and f"--resume {out} --lr" in result.err
    assert max(m["step"] for m in read_metrics(out)) < 130

    model, _, state = model_from_run(out, "last")  # the checkpoint of step 125
    assert int(state["step"]) == 125
    assert all(torch.isfinite(p).all() for p in model.parameters())

    monkeypatch.setattr(DiscreteVAE, "forward", forward)
    resumed = dvae(capsys, "train", "--resume", out)
    assert resumed.rc == 0, resumed.err
    assert (out / "metrics.jsonl").read_bytes() == (run / "metrics.jsonl").read_bytes()
    a, b = load_checkpoint(out / "best.safetensors"), load_checkpoint(run / "best.safetensors")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])


# ------------------------------------------------------------------ configuration
@pytest.fixture
def resolve(monkeypatch, capsys):
    """``resolve(*argv)``: the TrainConfig ``dvae train ARGV`` would train, without training."""
    seen: list[TrainConfig] = []

    def fake_train(config, resume=None, progress=None):
        seen.append(config)
        return {}

    monkeypatch.setattr(train_mod, "train", fake_train)

    def run(*argv: object) -> TrainConfig:
        result = dvae(capsys, "train", *argv)
        assert result.rc == 0, result.err
        return seen.pop()

    return run


YAML = """\
dataset: digits
model: st-gs
latent: 8x4
hidden: [32, 16]
steps: 200
lr: 1e-3          # YAML 1.1 reads this as a string
batch_size: 50
learn-temperature: true
"""
TOML = """\
dataset = "digits"
model = "st-gs"
latent = "8x4"
hidden = [32, 16]
steps = 200
lr = 1e-3
batch-size = 50
learn_temperature = true
"""
FLAGS = [
    "--dataset", "digits", "--model", "st-gs", "--latent", "8x4", "--hidden", "32,16",
    "--steps", "200", "--lr", "1e-3", "--batch-size", "50", "--learn-temperature",
]  # fmt: skip


def test_yaml_toml_and_flags_resolve_to_the_same_config(resolve, tmp_path):
    (tmp_path / "c.yaml").write_text(YAML)
    (tmp_path / "c.toml").write_text(TOML)
    from_flags = resolve(*FLAGS)
    assert from_flags.optim.lr == 1e-3 and from_flags.model.hidden == (32, 16)
    assert from_flags.schedule.learn_temperature
    assert resolve("--config", tmp_path / "c.yaml") == from_flags
    assert resolve("--config", tmp_path / "c.toml") == from_flags


def test_precedence_preset_then_file_then_flags(resolve, tmp_path):
    (tmp_path / "c.yaml").write_text(YAML)
    config = resolve(
        "--preset", "digits-quick", "--config", tmp_path / "c.yaml",
        "--steps", "7", "--no-learn-temperature",
    )  # fmt: skip
    assert (config.optim.steps, config.schedule.learn_temperature) == (7, False)  # flags
    assert (config.model.method, config.model.hidden) == ("st-gs", (32, 16))  # the file over the preset
    assert (config.run.eval_every, config.run.checkpoint_every) == (500, 250)  # the preset over defaults


def test_config_has_sections_resolved_once_and_reads_flat_or_sectioned_names(tmp_path):
    """A config is four typed sections; every option has one flat name across them (``--model`` is
    ``model.method``); it is stored in sections and read back the same from sections or flat names, with the
    methods in force, their defaults and ``k`` resolved when it is made."""
    config = TrainConfig.of(model="expgs", latent="4x3", lr=3e-4, anneal_rate=0, seed=5)
    assert (config.model.method, config.optim.lr, config.schedule.anneal_rate, config.run.seed) == (
        "expgs", 3e-4, 0.0, 5)
    assert config.model.methods() == {"posterior": "categorical", "estimator": "gs", "prior": "uniform"}
    assert (config.model.kl, config.model.posterior_options.prior_temperature, config.model.k) == (
        "relaxed", 0.5, 1)  # expgs's defaults, and the estimator's minimum
    stored = config.to_dict()
    assert list(stored) == ["model", "optim", "schedule", "run"] and stored["optim"]["lr"] == 3e-4
    assert stored["model"]["posterior_options"] == {"prior_temperature": 0.5}  # those off their defaults
    assert TrainConfig.from_dict(stored) == config == TrainConfig.from_dict(config.flat())
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(stored))
    assert TrainConfig.from_dict(load_config_file(tmp_path / "c.yaml")) == config
    with pytest.raises(ConfigError, match="lr is given twice"):
        TrainConfig.from_dict({**stored, "lr": 1e-3})
    with pytest.raises(ConfigError, match="unknown config keys: learning_rate"):
        TrainConfig.from_dict({"optim": {"learning_rate": 1e-3}})
    with pytest.raises(ConfigError, match="--lr must be positive"):
        TrainConfig.from_dict({"optim": {"lr": -1}})
    with pytest.raises(ConfigError, match="lr must be a number"):
        TrainConfig.from_dict({"optim": {"lr": "fast"}})


def test_config_files_are_typed_like_flags(resolve, tmp_path):
    for text, hidden in (("hidden: 64", (64,)), ("hidden: [64, 32]", (64, 32)),
                         ("hidden: '64,32'", (64, 32)), ("hidden: none", ()), ("hidden: []", ())):
        assert resolve("--config", _cfg(tmp_path, "c.yaml", text + "\n")).model.hidden == hidden
    text = "steps: 1e5\nlr: 3e-4\nbinary: true\nlatent: 8x2\n"
    config = resolve("--config", _cfg(tmp_path, "c.yaml", text))
    assert (config.optim.steps, config.optim.lr, config.model.binary) == (100_000, 3e-4, True)


@pytest.mark.parametrize(("text", "key", "expected"), [
    ("steps: 100.5", "steps", "an integer"), ("binary: 'no'", "binary", "true or false"),
    ("latent: 20", "latent", "a string"), ("hidden: [32, x]", "hidden", "integer widths"),
    ("lr: fast", "lr", "a number"), ("seed: [1]", "seed", "an integer"),
])
def test_config_type_errors_name_the_key_and_the_type(text, key, expected, tmp_path, capsys):
    result = dvae(capsys, "train", "--config", _cfg(tmp_path, "c.yaml", text + "\n"))
    assert result.rc == 2 and len(result.err.strip().splitlines()) == 1
    assert key in result.err and expected in result.err, result.err


def test_k_has_one_spelling(resolve, capsys):
    """``--samples``, the old spelling of ``--k`` in the training commands, is refused like any unknown flag
    (one line, status 2); a stored config's ``samples`` is read as ``k`` by :mod:`discrete_vae.upgrade`."""
    assert resolve("--k", "3").model.k == 3
    for command in (["train"], ["sop", "train"], ["gradients"]):
        result = dvae(capsys, *command, "--samples", 2, "--device", "cpu")
        assert result.rc == 2 and len(result.err.strip().splitlines()) == 1, result.err
        assert "unrecognized arguments: --samples" in result.err, result.err
    with pytest.raises(TypeError):  # the field is k
        ModelConfig(samples=3)
    with pytest.raises(ConfigError, match="unknown config keys: samples"):
        TrainConfig.from_dict({"samples": 4})
    assert TrainConfig.from_dict(upgrade_config({"samples": 4})).model.k == 4


def test_every_eval_option_has_help_with_its_default():
    from discrete_vae.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("eval", "sample", "reconstruct"):
        for action in sub.choices[command]._actions:
            if action.option_strings and action.dest != "help" and not action.required:
                assert action.help and "default" in action.help, (command, action.option_strings)


@pytest.mark.parametrize("name", PRESETS.names())
def test_every_preset_parses(resolve, name):
    config = resolve("--preset", name)
    assert config == TrainConfig.from_dict(PRESETS.get(name))
    preset = {k: list(v) if k == "hidden" else v for k, v in PRESETS.get(name).items()}
    assert config.settings().items() >= preset.items()


@pytest.mark.parametrize("name", PRESETS.names())
def test_every_preset_builds(name):
    """Every preset makes a model, with its own networks, prior and latents (on its dataset's dimension)."""
    from discrete_vae.recipe import build_model

    config = TrainConfig.from_dict(PRESETS.get(name))
    model = build_model(config, 64 if config.run.dataset == "digits" else 784)
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize(("name", "widths", "leaky"), [
    ("dong2020-linear", [(784, 200), (200, 784)], 0),
    ("dong2020-nonlinear", [(784, 200), (200, 200), (200, 200), (200, 200), (200, 200), (200, 784)], 4),
])
def test_dong2020_presets_are_the_disarm_code_models(resolve, name, widths, leaky):
    """The DisARM code's single-layer models: 200 binary latents, learned Bernoulli prior, Adam 1e-4 at batch
    50 for 1e6 steps; linear, or two LeakyReLU(0.3) layers of 200 each way."""
    from discrete_vae.recipe import build_model

    config = resolve("--preset", name, "--estimator", "disarm", "--k", "2")
    optim = config.optim
    assert (optim.batch_size, optim.lr, optim.lr_schedule, optim.steps) == (50, 1e-4, "constant", 10**6)
    model = build_model(config, 784)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == widths
    slopes = [m.negative_slope for m in model.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert slopes == [0.3] * leaky
    learned = dict(model.prior.named_parameters())
    assert [tuple(p.shape) for p in learned.values()] == [(200,)]
    x = torch.bernoulli(torch.full((3, 784), 0.3))
    terms = model(x, 1.0, config.model.k)
    assert terms.loss.isfinite() and terms.objective.shape == (3,)


def test_activation_check_follows_the_registry():
    from discrete_vae.errors import ConfigError
    from discrete_vae.networks import ACTIVATIONS

    assert {"relu", "tanh", "leaky_relu"} <= set(ACTIVATIONS)
    for name in ACTIVATIONS:
        assert TrainConfig.of(activation=name).model.activation == name
    with pytest.raises(ConfigError, match="leaky_relu"):
        TrainConfig.of(activation="gelu")


# ------------------------------------------------------------------ bad input: status 2, one line
def _cfg(tmp_path: Path, name: str, text: str) -> Path:
    (tmp_path / name).write_text(text)
    return tmp_path / name


def _locked(run: Path) -> Path:
    """``run``, with its lock held by another process (closed when the test process ends)."""
    import fcntl

    code = (f"import fcntl, time; f = open({str(run / '.lock')!r}, 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print(1, flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "1\n"
    _HOLDERS.append(holder)
    with open(run / ".lock", "a") as f:  # the lock really is held
        with pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return run


_HOLDERS: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _release_holders():
    yield
    while _HOLDERS:
        holder = _HOLDERS.pop()
        holder.kill()
        holder.wait()
        holder.stdout.close()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


BAD_INPUT = {
    "unknown dataset": lambda t, r: ["train", *FAST, "--dataset", "cifar", "--out", t / "o"],
    "unknown model": lambda t, r: ["train", *FAST, "--model", "vq", "--out", t / "o"],
    "latent 0x10": lambda t, r: ["train", *FAST, "--latent", "0x10"],
    "latent 20 without --binary": lambda t, r: ["train", *FAST, "--latent", "20"],
    "latent 20x1": lambda t, r: ["train", *FAST, "--latent", "20x1"],
    "latent abc": lambda t, r: ["train", *FAST, "--latent", "abc"],
    "latent 20x": lambda t, r: ["train", *FAST, "--latent", "20x"],
    "batch size 0": lambda t, r: ["train", *FAST, "--batch-size", "0"],
    "steps and epochs": lambda t, r: ["train", *FAST, "--steps", "5", "--epochs", "1"],
    "hidden not a list": lambda t, r: ["train", *FAST, "--hidden", "3,x"],
    "hidden width 0": lambda t, r: ["train", *FAST, "--hidden", "32,0"],
    "cv-hidden width -3": lambda t, r: ["train", *FAST, "--estimator", "rodeo", "--cv-hidden", "-3"],
    "lr not a number": lambda t, r: ["train", *FAST, "--lr", "abc"],
    "unknown device": lambda t, r: ["train", *FAST, "--device", "tpu7"],
    "unknown flag": lambda t, r: ["train", *FAST, "--frobnicate", "3"],
    "missing config": lambda t, r: ["train", "--config", t / "missing.yaml"],
    "malformed yaml": lambda t, r: ["train", "--config", _cfg(t, "c.yaml", "steps: [1, 2\nlr: 1")],
    "malformed toml": lambda t, r: ["train", "--config", _cfg(t, "c.toml", "steps = = 3\n")],
    "yaml not a mapping": lambda t, r: ["train", "--config", _cfg(t, "c.yaml", "- 1\n- 2\n")],
    "unknown config key": lambda t, r: ["train", "--config", _cfg(t, "c.yaml", "stepz: 3\n")],
    "config value not a number": lambda t, r: ["train", "--config", _cfg(t, "c.yaml", "lr: x\n")],
    "eval a folder that is not a run": lambda t, r: ["eval", t],
    "eval samples 0": lambda t, r: ["eval", r, "--samples", "0"],
    "eval limit 0": lambda t, r: ["eval", r, "--limit", "0"],
    "eval limit -5": lambda t, r: ["eval", r, "--limit", "-5"],
    "eval unknown device": lambda t, r: ["eval", r, "--device", "tpu7"],
    "eval unknown split": lambda t, r: ["eval", r, "--split", "dev"],
    "sample n 0": lambda t, r: ["sample", r, "--n", "0", "--out", t / "x.png"],
    "sample out not png": lambda t, r: ["sample", r, "--out", t],
    "reconstruct out not png": lambda t, r: ["reconstruct", r, "--out", t / "x"],
    "train into an existing run": lambda t, r: ["train", *FAST, "--steps", "5", "--out", r],
    "resume without a checkpoint": lambda t, r: ["train", "--resume", t],
    "resume with --config": lambda t, r: ["train", "--resume", r, "--config", t / "c.yaml"],
    "lr inf": lambda t, r: ["train", *FAST, "--lr", "inf", "--out", t / "o"],
    "lr-final nan": lambda t, r: ["train", *FAST, "--lr-final", "nan", "--out", t / "o"],
    "anneal-rate nan": lambda t, r: ["train", *FAST, "--anneal-rate", "nan", "--out", t / "o"],
    "config lr .inf": lambda t, r: ["train", "--config", _cfg(t, "c.yaml", "lr: .inf\n")],
    "config integer 100.5": lambda t, r: ["train", "--config", _cfg(t, "c.yaml", "steps: 100.5\n")],
    "config integer true": lambda t, r: ["train", "--config", _cfg(t, "c.yaml", "steps: true\n")],
    "config boolean 'no'": lambda t, r: ["train", "--config", _cfg(t, "c.yaml", "binary: 'no'\n")],
    "config toml boolean 1": lambda t, r: ["train", "--config", _cfg(t, "c.toml", "binary = 1\n")],
    "config string 20": lambda t, r: ["train", "--config", _cfg(t, "c.yaml", "latent: 20\n")],
    "config list [32, x]": lambda t, r: ["train", "--config", _cfg(t, "c.yaml", "hidden: [32, x]\n")],
    "config list 1.5": lambda t, r: ["train", "--config", _cfg(t, "c.yaml", "hidden: 1.5\n")],
    "out is a file": lambda t, r: ["train", *FAST, "--steps", "5", "--out", _cfg(t, "f", "x")],
    "out under a file": lambda t, r: ["train", *FAST, "--steps", "5", "--out", _cfg(t, "f", "x") / "run"],
    "out under /proc": lambda t, r: ["train", *FAST, "--steps", "5", "--out", "/proc/dvae-test/run"],
    "sample out unwritable": lambda t, r: ["sample", r, "--out", "/proc/dvae-test/x.png"],
    "reconstruct out under a file": lambda t, r: ["reconstruct", r, "--out", _cfg(t, "f", "x") / "x.png"],
    "resume a run in use": lambda t, r: ["train", "--resume", _locked(r)],
    "seed 1e20": lambda t, r: ["train", *FAST, "--seed", "99999999999999999999", "--out", t / "o"],
    "seed -1": lambda t, r: ["train", *FAST, "--seed=-1", "--out", t / "o"],
    "config seed 2^32": lambda t, r: ["train", "--config", _cfg(t, "c.yaml", "seed: 4294967296\n")],
    "eval seed 1e20": lambda t, r: ["eval", r, "--seed", "99999999999999999999"],
    "sample seed 1e20": lambda t, r: ["sample", r, "--seed", "99999999999999999999", "--out", t / "x.png"],
    "sop seed 1e20": lambda t, r: ["sop", "train", "--dataset", "digits", "--seed", "99999999999999999999"],
}
if not torch.cuda.is_available():
    BAD_INPUT["cuda without CUDA"] = lambda t, r: ["train", *FAST[:-1], "cuda", "--out", t / "o"]


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_exits_2_with_one_line(case, run, tmp_path, capsys):
    config_yaml = (run / "config.yaml").read_bytes()
    result = dvae(capsys, *BAD_INPUT[case](tmp_path, run))
    assert result.rc == 2, result
    assert len(result.err.strip().splitlines()) == 1 and result.err.startswith("dvae"), result.err
    assert "Traceback" not in result.err and result.out == ""
    assert (run / "config.yaml").read_bytes() == config_yaml  # a failed command changes no run


@pytest.mark.parametrize("flag", ["--hidden", "--cv-hidden"])
def test_a_bad_width_names_its_own_flag(flag, capsys):
    result = dvae(capsys, "train", *FAST, "--estimator", "rodeo", flag, "32,-3")
    assert result.rc == 2
    assert f"argument {flag}: widths must be at least 1, got '32,-3'" in result.err, result.err


@pytest.mark.parametrize(
    ("damage", "argv"),
    [
        ("best", ["eval", "{run}"]),
        ("last", ["eval", "{run}", "--checkpoint", "last"]),
        ("last", ["train", "--resume", "{run}"]),
        ("config", ["train", "--resume", "{run}"]),
        ("none", ["train", "--resume", "{run}", "--model", "st-gs"]),
        ("none", ["train", "--resume", "{run}", "--latent", "4x4"]),
        ("none", ["train", "--resume", "{run}", "--steps", "100"]),  # before the checkpoint's 300
        ("hidden", ["train", "--resume", "{run}"]),  # a config.yaml that the checkpoint does not fit
        ("rng", ["train", "--resume", "{run}"]),  # a checkpoint without its RNG state
    ],
)
def test_damaged_or_changed_run_exits_2_with_one_line(damage, argv, run, tmp_path, capsys):
    copy = copy_run(run, tmp_path)
    if damage in ("best", "last"):
        _truncate(copy / f"{damage}.safetensors")
    elif damage == "config":
        (copy / "config.yaml").write_text("model: [gs\n")
    elif damage == "hidden":
        config = yaml.safe_load((copy / "config.yaml").read_text())
        config["model"]["hidden"] = [16]
        (copy / "config.yaml").write_text(yaml.safe_dump(config))
    elif damage == "rng":
        state = load_checkpoint(copy / "last.safetensors")
        save_checkpoint(copy / "last.safetensors", {k: v for k, v in state.items() if k != "rng"})
    before = (copy / "config.yaml").read_bytes()
    result = dvae(capsys, *(a.format(run=copy) for a in argv))
    assert result.rc == 2, result
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert (copy / "config.yaml").read_bytes() == before


def test_missing_dataset_files_exit_2_without_the_network(tmp_path, monkeypatch, capsys):
    fetched: list[str] = []

    def offline(url, dest, timeout=None):
        fetched.append(url)
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(download_mod, "fetch_url", offline)
    monkeypatch.setenv("DVAE_DATA_DIR", str(tmp_path / "env"))
    (tmp_path / "empty").mkdir()
    args = ["--dataset", "binarized_mnist", "--data-dir", tmp_path / "empty", "--steps", "5"]
    result = dvae(capsys, "train", *args, "--device", "cpu", "--out", tmp_path / "o")
    assert result.rc == 2, result
    assert len(result.err.strip().splitlines()) == 1
    assert str(tmp_path / "empty") in result.err and "network disabled" in result.err
    sources = [s.url for s in bm_mod.remote("train").sources]
    assert fetched == sources and not (tmp_path / "o").exists()  # first file's sources, then stop


@pytest.mark.parametrize("case", ["unknown flag", "latent 0x10", "eval a folder that is not a run"])
def test_bad_input_in_a_real_process(case, run, tmp_path):
    done = subprocess.run(
        cli_command(*BAD_INPUT[case](tmp_path, run)),
        env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stdout == ""


# ------------------------------------------------------------------ checkpoints
def test_checkpoints_are_plain_safetensors(run):
    for name in ("last.safetensors", "best.safetensors"):
        raw = (run / name).read_bytes()
        header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])  # no pickle anywhere
        with safe_open(str(run / name), framework="pt") as f:
            assert set(f.keys()) == set(header) - {"__metadata__"} and f.keys()
            assert isinstance(json.loads(f.metadata()["state"]), dict)


def _assert_same(a, b):
    if isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(b, dict):
        assert a.keys() == b.keys()
        for k in b:
            _assert_same(a[k], b[k])
    elif isinstance(b, list):
        assert isinstance(a, list) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert type(a) is type(b) and a == b


def test_checkpoint_round_trips_nested_state_without_temp_files(tmp_path):
    weight = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    state = {
        "weight": weight,
        "transposed": weight.t(),  # not contiguous, shares memory with "weight"
        "rng": torch.get_rng_state(),  # uint8
        "ints": torch.arange(5),
        "flags": torch.tensor([True, False]),
        "double": torch.tensor(0.1, dtype=torch.float64),
        "step": 7,
        "nll": 0.1,
        "best": math.inf,
        "none": None,
        "name": "run",
        "on": True,
        "list": [1, 2.5, None, [weight[0], {"deep": torch.zeros(0)}]],
        "dict": {"a": {"b": -3}, "empty": {}, "nothing": []},
    }
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, state)
    _assert_same(load_checkpoint(path), state)
    save_checkpoint(path, {"step": 8})  # overwrite in place
    assert load_checkpoint(path) == {"step": 8}
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


def test_failed_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, {"step": 1, "w": torch.ones(2)})
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(2)})
    monkeypatch.undo()
    assert path.read_bytes() == before and int(load_checkpoint(path)["step"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]


# ------------------------------------------------------------------ methods and options
def test_learned_temperature_moves_and_stays_positive(tmp_path, capsys):
    args = [*FAST, "--steps", 200, "--log-every", 20, "--learn-temperature", "--lr", "1e-2"]
    result = dvae(capsys, "train", *args, "--out", tmp_path / "run")
    assert result.rc == 0, result.err
    taus = [m["tau"] for m in read_metrics(tmp_path / "run") if m["split"] == "train"]
    assert len(taus) == 10 and min(taus) > 0
    assert max(taus) - min(taus) > 1e-3, taus


@pytest.mark.parametrize(
    "options",
    [
        ["--kl", "relaxed"],
        ["--model", "st-gs"],
        ["--binary", "--latent", "16x2"],
        ["--binary", "--latent", "16x2", "--kl", "relaxed", "--prior", "learnable"],
        ["--prior", "learnable", "--k", "2"],
    ],
    ids=" ".join,
)
def test_method_options_train_and_evaluate_to_finite_numbers(options, tmp_path, capsys):
    out = tmp_path / "run"
    result = dvae(capsys, "train", *FAST, "--steps", 100, *options, "--out", out)
    assert result.rc == 0, result.err
    assert all(math.isfinite(m["loss"]) for m in read_metrics(out) if m["split"] == "train")
    evaluated = dvae(capsys, "eval", out, "--samples", 10, "--split", "valid", "--device", "cpu")
    assert evaluated.rc == 0, evaluated.err
    scores = last_json(evaluated.out)
    assert math.isfinite(scores["nll"]) and math.isfinite(scores["neg_elbo"])
    assert scores["nll"] <= scores["neg_elbo"] + 1e-9



# ------------------------------------------------------------------ progress without a terminal
def test_progress_lines_when_stderr_is_not_a_terminal(tmp_path, capsys, monkeypatch):
    import discrete_vae.progress as progress_mod

    monkeypatch.setattr(progress_mod, "EVERY_S", 0.0)  # a line at every update, not every 30 s
    out = tmp_path / "run"
    result = dvae(capsys, "train", *FAST, "--steps", 100, "--eval-every", 50, "--log-every", 25, "--out", out)
    assert result.rc == 0, result.err
    lines = [line for line in result.err.splitlines() if line.startswith("train: step ")]
    assert lines and lines[-1].startswith("train: step 100/100 (100%)")
    assert all("steps/s" in line and "ETA" in line for line in lines)
    assert "loss" in lines[-1] and "tau" in lines[-1] and "valid nll" in lines[-1]
    assert not any("valid nll" in line for line in lines if int(line.split()[2].split("/")[0]) < 50)

    evaluated = dvae(capsys, "eval", out, "--samples", 5)
    assert any(line.startswith("eval: example 180/180 (100%)") for line in evaluated.err.splitlines())
    quiet = dvae(capsys, "eval", out, "--samples", 5, "--no-progress")
    assert not any(line.startswith("eval: example") for line in quiet.err.splitlines())
