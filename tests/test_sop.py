"""Structured output prediction (``dvae sop``): relaxations, the L^m objective, the CLI.

The relaxations' hard samples are checked against their claimed Bernoulli probabilities, the batched
multi-sample objective against a per-sample loop, and ``dvae sop train|eval`` end to end on the
offline 8x8 ``digits`` dataset (upper 4 rows -> lower 4 rows), including ``--resume`` (after a longer
``--steps``, a non-finite loss and a ``kill -9``: bitwise the weights and bytes of metrics.jsonl of
an uninterrupted run) and damaged run folders. Fixed seeds throughout.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from torch.distributions.utils import clamp_probs

from cli_helpers import Result, dvae, kill_when, last_json  # noqa: F401
from discrete_vae import sop
from discrete_vae.checkpoint import load_checkpoint, save_checkpoint
from discrete_vae.cli import main
from discrete_vae.data import load_dataset
from discrete_vae.distributions import ExpIGRSB
from discrete_vae.errors import ConfigError, UserError
from discrete_vae.estimators import ESTIMATORS, Pathwise

FAST = ["--dataset", "digits", "--units", "16", "--device", "cpu", "--val-samples", "5",
        "--test-samples", "10", "--log-every", "5"]


@pytest.mark.parametrize("model", ["gs", "igr-i", "igr-sb", "igr-planar"])
def test_hard_samples_have_the_claimed_probabilities(model: str) -> None:
    """Frequency of z = +1 over 40,000 draws against sigmoid(a), Phi(a) or Phi(a - f^{-1}(0)).

    Each of the 6 units is within 4.5 standard errors (false-failure rate about 7e-6 per unit; the
    variance p(1 - p) is floored at 1/n so that a unit with p within float32 of 0 or 1 is allowed
    one odd draw).
    For igr-planar the probability comes from the flow's bisection inverse, the samples from its
    forward pass, so the two paths check each other.
    """
    torch.manual_seed(0)
    a = torch.tensor([-1.5, -0.8, 0.0, 0.3, 1.1, 1.5])
    layer = sop.binary_layer(model, units=a.numel())
    if model == "igr-planar":  # a flow far from the identity, so that f^{-1}(0) != 0
        with torch.no_grad():
            layer.flow.w.normal_(0, 0.7)
            layer.flow.u.normal_(0, 0.7)
            layer.flow.b.normal_(0, 0.3)
    n = 40_000
    z = layer.hard(a.expand(n, -1))
    assert set(z.unique().tolist()) <= {-1.0, 1.0}
    freq = (z > 0).double().mean(0)
    p = layer.prob_one(a).double()
    if model == "gs":
        torch.testing.assert_close(p, torch.sigmoid(a).double())
    elif model != "igr-planar":
        torch.testing.assert_close(p, torch.special.ndtr(a).double())
    else:
        assert (p - torch.special.ndtr(a)).abs().max() > 0.1  # the flow moves the threshold
    stderr = ((p * (1 - p)).clamp_min(1 / n) / n).sqrt()
    assert ((freq - p).abs() / stderr).max() < 4.5


@pytest.mark.parametrize("model", ["gs", "igr-i"])
def test_relaxed_samples_approach_the_hard_ones_as_tau_falls(model: str) -> None:
    torch.manual_seed(1)
    layer = sop.binary_layer(model, units=4)
    z = layer.relaxed(torch.randn(1000, 4), tau=0.01)
    assert ((z.abs() > 0.99).double().mean()) > 0.95
    assert z.abs().max() <= 1


@pytest.mark.parametrize("model", ["igr-i", "igr-planar"])
@pytest.mark.parametrize("tau", [0.01, 0.1, 1.0, 5.0])
def test_igr_relaxed_sample_is_the_two_class_stick_breaking_map(model: str, tau: float) -> None:
    """The relaxed unit is ``2 pi_1 - 1`` with ``pi`` from ExpIGRSB's stick-breaking map of the same
    pre-image draw, for layer outputs from -30 to 30 (sticks from within float32 of 0 to within it of 1)."""
    torch.manual_seed(2)
    layer = sop.binary_layer(model, units=7)
    a = torch.linspace(-30, 30, 7).expand(500, -1)
    with torch.random.fork_rng():
        z = layer.relaxed(a, tau)
    kappa = layer.preimage(a)  # the same noise: the RNG was restored
    pi = ExpIGRSB(torch.tensor(tau), a.unsqueeze(-1), torch.ones_like(a).unsqueeze(-1)).to_log_simplex(kappa)
    torch.testing.assert_close(z, 2 * pi[..., 0].exp() - 1)
    torch.testing.assert_close(z, 1 - 2 * pi[..., 1].exp())


@pytest.mark.parametrize("model", ["gs", "igr-i", "igr-sb", "igr-planar"])
def test_each_model_builds_its_unit_family_with_the_state_dict_keys_of_existing_runs(model: str) -> None:
    """The net's layers are the units of the model's family; the state_dict keys are those that run folders
    hold (the maps, and for igr-planar each layer's planar flow), and the family names the estimators that
    --estimator may take."""
    config = sop.SOPConfig.of(model=model, dataset="digits", units=3, device="cpu")
    net = sop.build_net(config, (8, 8))
    family = sop.BernoulliUnits if model == "gs" else sop.IGRUnits
    assert sop.unit_family(model) is family and all(type(layer) is family for layer in net.layers)
    keys = [f"maps.{i}.{p}" for i in range(3) for p in ("weight", "bias")]
    if model == "igr-planar":
        keys += [f"layers.{i}.flow.{p}" for i in range(2) for p in ("w", "u", "b")]
    assert list(net.state_dict()) == keys
    per_unit = tuple(n for n in ESTIMATORS.names() if issubclass(ESTIMATORS.get(n), Pathwise))
    takes = per_unit if model == "gs" else ("relaxed",)
    assert family.estimators() == takes
    for estimator in ("auto", *takes):
        assert sop.SOPConfig.of(model=model, estimator=estimator).model.estimator == estimator
    with pytest.raises(ConfigError, match=f"--model {model} trains with --estimator {', '.join(takes)} "):
        sop.SOPConfig.of(model=model, estimator="rloo")


def _brute_force_objective(net: sop.SOPNet, up: torch.Tensor, low: torch.Tensor, m: int, tau: float,
                           noise: list[torch.Tensor], model: str) -> list[float]:
    """``log (1/m) sum_i p(x_lower | z_i)`` example by example, sample by sample, with given noise."""
    result = []
    for b in range(up.shape[0]):
        terms = []
        for i in range(m):
            h = net.maps[0].weight @ up[b] + net.maps[0].bias
            for layer_noise, lin in zip(noise, net.maps[1:], strict=True):
                eps = layer_noise[i, b]
                y = (h + eps.log() - (1 - eps).log()) / tau if model == "gs" else (h + eps) / tau
                h = lin.weight @ (2 * torch.sigmoid(y) - 1) + lin.bias
            log_p = sum(
                float(low[b, d]) * math.log(1 / (1 + math.exp(-float(h[d]))))
                + (1 - float(low[b, d])) * math.log(1 / (1 + math.exp(float(h[d]))))
                for d in range(h.numel())
            )
            terms.append(log_p)
        result.append(math.log(sum(math.exp(t) for t in terms) / m))
    return result


@pytest.mark.parametrize("model", ["gs", "igr-i"])
def test_multisample_objective_equals_a_loop_over_samples(model: str) -> None:
    """The batched L^m (one pass for all m) equals a per-example, per-sample loop with the same noise."""
    torch.manual_seed(2)
    net = sop.SOPNet(4, 5, "double_linear", model, units=3).double()
    up = torch.bernoulli(torch.full((3, 4), 0.5, dtype=torch.float64))
    low = torch.bernoulli(torch.full((3, 5), 0.5, dtype=torch.float64))
    m, tau = 6, 0.7
    torch.manual_seed(3)
    batched = sop.multisample_objective(net.log_likelihood(up, low, m, tau, hard=False))
    torch.manual_seed(3)  # the same draws, in the order the batched pass makes them (layer by layer)
    shape = (m, 3, 3)
    if model == "gs":
        noise = [clamp_probs(torch.rand(shape, dtype=torch.float64)) for _ in range(2)]
    else:
        noise = [torch.randn(shape, dtype=torch.float64) for _ in range(2)]
    with torch.no_grad():
        loop = _brute_force_objective(net, up, low, m, tau, noise, model)
    expected = torch.tensor(loop, dtype=torch.float64)
    torch.testing.assert_close(batched.detach(), expected, rtol=1e-9, atol=1e-9)
    assert batched.shape == (3,)


def test_chunked_bound_equals_one_pass() -> None:
    """Chunking over examples and samples changes nothing but memory (same seed, same draws order)."""
    torch.manual_seed(4)
    net = sop.SOPNet(4, 5, "double_linear", "igr-i", units=3).double()
    up = torch.bernoulli(torch.full((7, 4), 0.5, dtype=torch.float64))
    low = torch.bernoulli(torch.full((7, 5), 0.5, dtype=torch.float64))
    torch.manual_seed(5)
    whole = sop.sop_bound(net, up, low, samples=10, tau=1.0, hard=True, rows=10_000)
    torch.manual_seed(5)
    lp = net.log_likelihood(up, low, 10, 1.0, hard=True)
    torch.testing.assert_close(whole, sop.multisample_objective(lp))
    chunked = sop.sop_bound(net, up, low, samples=10, tau=1.0, hard=True, rows=4)
    assert chunked.shape == (7,) and torch.isfinite(chunked).all()


@pytest.mark.parametrize("arch", ["double_linear", "triple_linear", "nonlinear"])
@pytest.mark.parametrize("model", ["gs", "igr-i", "igr-sb", "igr-planar"])
def test_cli_train_and_eval_on_digits(capsys, tmp_path: Path, model: str, arch: str) -> None:
    run = tmp_path / "run"
    rc, out, err = dvae(capsys, "sop", "train", *FAST, "--model", model, "--arch", arch, "--steps", 10,
                        "--eval-every", 5, "--k", 3, "--out", run)
    assert rc == 0, err
    result = last_json(out)
    assert result["run_dir"] == str(run) and result["steps"] == 10 and math.isfinite(result["nll"])
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["model"] == model and config["model"]["arch"] == arch and config["model"]["k"] == 3
    assert set(sop.SOPConfig.flat_values(config)) == set(sop.SOPConfig.flat_names())
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(ln["step"], ln["split"]) for ln in lines if ln["split"] != "test"] == [
        (5, "train"), (5, "valid"), (10, "train"), (10, "valid")]
    for name in ("best.safetensors", "last.safetensors"):
        with safe_open(run / name, "pt") as f:  # plain tensors, no pickled code
            assert any(k.startswith("s.model.") for k in f.keys())
    rc, out, err = dvae(capsys, "sop", "eval", run, "--samples", 100, "--split", "valid", "--limit", 20)
    assert rc == 0, err
    result = last_json(out)
    assert math.isfinite(result["nll"]) and result["nll"] > 0
    assert (result["samples"], result["examples"], result["split"]) == (100, 20, "valid")


def test_eval_is_deterministic_under_seed(capsys, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert dvae(capsys, "sop", "train", *FAST, "--steps", 5, "--out", run)[0] == 0
    a = last_json(dvae(capsys, "sop", "eval", run, "--samples", 50, "--seed", 7)[1])
    b = last_json(dvae(capsys, "sop", "eval", run, "--samples", 50, "--seed", 7)[1])
    c = last_json(dvae(capsys, "sop", "eval", run, "--samples", 50, "--seed", 8)[1])
    assert a["nll"] == b["nll"] != c["nll"]
    assert a["split"] == "test" and a["examples"] == 180


def test_evaluate_reports_the_standard_error_over_examples() -> None:
    """``nll_stderr`` is the sample standard deviation of the per-example bound over sqrt(n)."""
    data = load_dataset("digits")
    torch.manual_seed(0)
    net = sop.build_net(sop.SOPConfig.of(dataset="digits", units=16, device="cpu"), data.image_shape)
    x = data.test[:9]
    metrics = sop.evaluate(net, x, data.image_shape, 5, 1.0, seed=3)
    torch.manual_seed(3)  # evaluate(seed=3) draws the hard samples first, from this seed
    upper, lower = sop.split_halves(x, data.image_shape)
    bound = sop.sop_bound(net.eval(), upper, lower, 5, 1.0, hard=True)
    assert math.isclose(metrics["nll"], -float(bound.mean()), rel_tol=1e-6)
    assert math.isclose(metrics["nll_stderr"], float(bound.double().std()) / 3.0, rel_tol=1e-6)
    assert "nll_stderr" not in sop.evaluate(net, x[:1], data.image_shape, 5, 1.0, seed=3)


def test_training_lowers_the_nll(capsys, tmp_path: Path) -> None:
    """800 steps of gs, m = 5, beat the untrained net (same seed and output-bias init) on test."""
    run = tmp_path / "run"
    rc, out, err = dvae(capsys, "sop", "train", *FAST, "--units", 32, "--k", 5, "--lr", 3e-3,
                        "--steps", 800, "--eval-every", 400, "--test-samples", 100, "--out", run)
    assert rc == 0, err
    trained = last_json(out)["nll"]
    config = sop.SOPConfig.of(dataset="digits", units=32, k=5, device="cpu")
    data = load_dataset("digits")
    torch.manual_seed(config.run.seed)
    net = sop.build_net(config, data.image_shape)
    net.init_output_bias(sop.split_halves(data.train, data.image_shape)[1].mean(0))
    untrained = sop.evaluate(net, data.test, data.image_shape, 100, 1.0, seed=0)["nll"]
    assert trained < untrained - 1.0, (trained, untrained)


@pytest.mark.parametrize("estimator", ["st-gs", "st", "reinmax", "gumbel-rao", "zgr"])
def test_per_unit_estimators_train_the_binary_units(capsys, tmp_path: Path, estimator: str) -> None:
    """The gs units take any per-unit (pathwise) estimator of the toolkit; the hard forward pass of the
    straight-through family gives a finite relaxed objective and a bound."""
    rc, out, err = dvae(capsys, "sop", "train", *FAST, "--estimator", estimator, "--steps", 6,
                        "--out", tmp_path / estimator)
    assert rc == 0, err
    result = last_json(out)
    assert math.isfinite(result["nll"]) and result["nll"] > 0


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--model", "concrete"],
        ["train", "--arch", "deep"],
        ["train", "--steps", "0"],
        ["train", "--k", "0"],
        ["train", "--temperature", "0"],
        ["train", "--temperature", "-1"],
        ["train", "--units", "-3"],
        ["train", "--estimator", "rloo"],
        ["train", "--model", "igr-i", "--estimator", "st"],
        ["eval", "MISSING"],
        ["eval", "MISSING", "--samples", "0"],
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, tmp_path: Path, argv: list[str]) -> None:
    argv = [str(tmp_path / "no-run") if a == "MISSING" else a for a in argv]
    if argv[0] == "train":
        argv += ["--dataset", "digits", "--device", "cpu", "--out", str(tmp_path / "run")]
    rc, out, err = dvae(capsys, "sop", *argv)
    assert rc == 2
    assert out == "" and len(err.strip().splitlines()) == 1 and "error" in err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ checkpoints and resume
RESUME = [*FAST, "--log-every", 25, "--eval-every", 40, "--checkpoint-every", 60, "--k", 2]


def _same_weights(a: Path, b: Path, name: str = "last.safetensors") -> bool:
    x, y = load_checkpoint(a / name), load_checkpoint(b / name)
    return x["model"].keys() == y["model"].keys() and all(torch.equal(x["model"][k], y["model"][k])
                                                          for k in x["model"])


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 steps without interruption (lines at 25, 50, 75, 100, 120; validations at 40, 80, 120)."""
    run = tmp_path_factory.mktemp("sop") / "straight"
    assert main([str(a) for a in ("sop", "train", *RESUME, "--steps", 120, "--out", run)]) == 0
    return run


def test_resume_with_more_steps_equals_a_straight_run(capsys, tmp_path: Path, straight: Path) -> None:
    """60 steps, then --resume --steps 120: the same weights and metrics.jsonl bytes as 120 at once.

    The 60-step run ends with extras the longer run lacks (a loss line over steps 51-60, a
    validation at 60 that may become best.safetensors, a test line); the resume must undo them, and
    restore the partial loss sum of steps 51-60 (25 does not divide 60).
    """
    run = tmp_path / "split"
    rc, _, err = dvae(capsys, "sop", "train", *RESUME, "--steps", 60, "--out", run)
    assert rc == 0, err
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(ln["step"], ln["split"]) for ln in lines[:-1]] == [
        (25, "train"), (40, "valid"), (50, "train"), (60, "train"), (60, "valid")]
    assert int(load_checkpoint(run / "last.safetensors")["step"]) == 60
    rc, out, err = dvae(capsys, "sop", "train", "--resume", run, "--steps", 120)
    assert rc == 0, err
    assert last_json(out)["steps"] == 120
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["steps"] == 120
    assert (run / "metrics.jsonl").read_bytes() == (straight / "metrics.jsonl").read_bytes()
    assert _same_weights(run, straight) and _same_weights(run, straight, "best.safetensors")
    a, b = load_checkpoint(run / "last.safetensors"), load_checkpoint(straight / "last.safetensors")
    assert torch.equal(a["rng"]["cpu"][0], b["rng"]["cpu"][0]) and a["data"] == b["data"]
    assert not list(run.glob(".*.tmp"))


def test_non_finite_loss_keeps_the_last_checkpoint_and_the_run_resumes(capsys, monkeypatch, tmp_path: Path,
                                                                      straight: Path) -> None:
    """A NaN at step 110 stops with exit 1 naming the step; lines after the step-60 checkpoint (75,
    80, 100) and the best.safetensors of the validation at 80 are dropped on resume, which then
    ends like the straight run."""
    objective, calls = sop.multisample_objective, []

    def nan_at_step_110(log_px: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return objective(log_px) * (math.nan if len(calls) == 110 else 1.0)

    run = tmp_path / "run"
    monkeypatch.setattr(sop, "multisample_objective", nan_at_step_110)
    rc, out, err = dvae(capsys, "sop", "train", *RESUME, "--steps", 120, "--out", run)
    assert rc == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and "step 110" in err, err
    assert int(load_checkpoint(run / "last.safetensors")["step"]) == 60
    assert max(json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()) == 100
    monkeypatch.setattr(sop, "multisample_objective", objective)
    assert int(load_checkpoint(run / "best.safetensors")["step"]) == 80  # written after the checkpoint

    # resumed at the checkpoint's step with validations that never win, best.safetensors is step 40's
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    evaluate = sop.evaluate
    monkeypatch.setattr(sop, "evaluate", lambda *a, **k: {**evaluate(*a, **k), "nll": math.inf})
    assert dvae(capsys, "sop", "train", "--resume", copy, "--steps", 60)[0] == 0
    best = load_checkpoint(copy / "best.safetensors")
    line = json.loads((straight / "metrics.jsonl").read_text().splitlines()[1])
    assert int(best["step"]) == 40 and {"step": 40, "split": "valid", **best["metrics"]} == line
    monkeypatch.setattr(sop, "evaluate", evaluate)

    rc, _, err = dvae(capsys, "sop", "train", "--resume", run)
    assert rc == 0, err
    assert (run / "metrics.jsonl").read_bytes() == (straight / "metrics.jsonl").read_bytes()
    assert _same_weights(run, straight) and _same_weights(run, straight, "best.safetensors")


def _progressed(run: Path) -> bool:
    """A checkpoint exists and metrics.jsonl has a line past it (a kill then loses work to redo)."""
    try:
        step = int(load_checkpoint(run / "last.safetensors")["step"])
        lines = (run / "metrics.jsonl").read_text().split("\n")[:-1]
    except (UserError, OSError):
        return False
    return any(json.loads(ln)["step"] > step for ln in lines if ln.startswith("{"))


def test_kill_9_then_resume_equals_a_straight_run(tmp_path: Path) -> None:
    """SIGKILL of a subprocess while it trains, after a checkpoint; the resume ends bitwise equal."""
    args = [*FAST, "--log-every", 7, "--eval-every", 50, "--checkpoint-every", 20, "--steps", 4000]
    full, killed = tmp_path / "full", tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "discrete_vae.cli", "sop", "train", *map(str, args)]
    victim = subprocess.Popen([*command, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    kill_when(victim, lambda: _progressed(killed), 60)
    stopped_at = int(load_checkpoint(killed / "last.safetensors")["step"])
    assert stopped_at % 20 == 0 and 0 < stopped_at < 4000
    small = ["--steps", str(stopped_at + 40)]  # the rest of the test need not train 4000 steps
    commands = [[*command, *small, "--out", str(full)], [*command[:5], "--resume", str(killed), *small]]
    runs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for cmd in commands]
    for done in runs:  # side by side: the reference and the resume
        _, err = done.communicate(timeout=60)
        assert done.returncode == 0, err
    assert (killed / "metrics.jsonl").read_bytes() == (full / "metrics.jsonl").read_bytes()
    assert _same_weights(killed, full)


def files(run: Path) -> dict[Path, bytes]:
    """Every file under ``run`` and its bytes."""
    return {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}


def _damage(run: Path, what: str) -> list[object]:
    """Damage a copy of a finished run; return the extra arguments of the resume."""
    if what == "no folder":
        shutil.rmtree(run)
    elif what == "no config":
        (run / "config.yaml").unlink()
    elif what == "no last":
        (run / "last.safetensors").unlink()
    elif what == "truncated last":
        data = (run / "last.safetensors").read_bytes()
        (run / "last.safetensors").write_bytes(data[: len(data) // 2])
    elif what == "garbage config":
        (run / "config.yaml").write_text("model: [unclosed\n")
    elif what == "config of another run":
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["model"]["units"] = 17
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    elif what == "model-only last":
        state = load_checkpoint(run / "last.safetensors")
        save_checkpoint(run / "last.safetensors", {k: state[k] for k in ("model", "config", "step",
                                                                          "image_shape")})
    elif what == "other image shape":  # the same 64 pixels cut into other halves: no tensor shape differs
        state = load_checkpoint(run / "last.safetensors")
        save_checkpoint(run / "last.safetensors", {**state, "image_shape": [4, 16]})
    elif what == "short metrics":
        (run / "metrics.jsonl").write_text("")
    elif what == "changed option":
        return ["--units", 32]
    elif what == "changed out":
        return ["--out", run.parent / "elsewhere"]
    elif what == "fewer steps":
        return ["--steps", 5]
    return []


@pytest.mark.parametrize("what", ["no folder", "no config", "no last", "truncated last", "garbage config",
                                  "config of another run", "model-only last", "other image shape",
                                  "short metrics",
                                  "changed option", "changed out", "fewer steps"])
def test_bad_resume_exits_2_with_one_line(capsys, tmp_path: Path, straight: Path, what: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    extra = _damage(run, what)
    before = files(run) if run.exists() else {}
    rc, out, err = dvae(capsys, "sop", "train", "--resume", run, *extra)
    assert rc == 2, err
    assert out == "" and len(err.strip().splitlines()) == 1 and "error" in err, err
    if what == "other image shape":
        assert "image_shape [4, 16] != [8, 8]" in err, err
    after = files(run) if run.exists() else {}
    assert after == before  # nothing touched


# ------------------------------------------------------------------ run-folder guarantees
def test_resuming_a_complete_run_does_nothing_but_say_so(capsys, tmp_path: Path, straight: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    before = files(run)
    rc, out, err = dvae(capsys, "sop", "train", "--resume", run)
    assert rc == 0 and "already at its final step 120" in err, err
    assert last_json(out)["finished"] is True
    assert files(run) == before


def test_resume_with_a_new_learning_rate_is_recorded(capsys, tmp_path: Path, straight: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    rc, _, err = dvae(capsys, "sop", "train", "--resume", run, "--steps", 140, "--lr", "1e-4")
    assert rc == 0, err
    records = [json.loads(line) for line in (run / "overrides.jsonl").read_text().splitlines()]
    assert records == [{"step": 120, "option": "steps", "from": 120, "to": 140},
                       {"step": 120, "option": "lr", "from": 0.001, "to": 0.0001}]
    state = load_checkpoint(run / "last.safetensors")
    assert state["optimizer"]["param_groups"][0]["lr"] == 1e-4  # in force, not the checkpoint's


def test_sop_train_refuses_a_run_folder_in_use(capsys, tmp_path: Path, straight: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    code = (f"import fcntl, time; f = open({str(run / '.lock')!r}, 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print(1, flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "1\n"
        rc, out, err = dvae(capsys, "sop", "train", "--resume", run, "--steps", 140)
        assert rc == 2 and "in use by another dvae process" in err and len(err.strip().splitlines()) == 1
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_sigterm_writes_a_checkpoint_and_the_resume_equals_a_straight_run(tmp_path: Path) -> None:
    args = [*FAST, "--log-every", 7, "--eval-every", 50, "--checkpoint-every", 20, "--steps", 4000]
    stopped = tmp_path / "stopped"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "discrete_vae.cli", "sop", "train", *map(str, args)]
    victim = subprocess.Popen([*command, "--out", str(stopped)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not _progressed(stopped):
        assert victim.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    victim.send_signal(signal.SIGTERM)
    _, err = victim.communicate(timeout=60)
    assert victim.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in err, err
    assert f"continue with: dvae sop train --resume {stopped}" in err
    at = int(load_checkpoint(stopped / "last.safetensors")["step"])
    assert f"at step {at};" in err and 0 < at < 4000
    small = ["--steps", str(at + 40)]
    full = subprocess.run([*command, *small, "--out", str(tmp_path / "full")], env=env, capture_output=True,
                          text=True, timeout=60)
    resumed = subprocess.run([*command[:5], "--resume", str(stopped), *small], env=env, capture_output=True,
                             text=True, timeout=60)
    assert full.returncode == 0 and resumed.returncode == 0, resumed.stderr
    assert (stopped / "metrics.jsonl").read_bytes() == (tmp_path / "full" / "metrics.jsonl").read_bytes()
    assert _same_weights(stopped, tmp_path / "full")
