"""The run folder's guarantees under restarts, faults and bad input (``discrete_vae.runs``).

Each test reproduces one way a run folder went wrong (a finished run resumed, stale logs, two writers,
TensorBoard's purge step, a torn metrics line, eval files that overwrite each other, non-finite JSON,
checkpoint permissions and silent corruption, non-finite parameters, signals) and checks the fix end to
end through the ``dvae`` command line on ``digits``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

import discrete_vae.recipe as recipe
import discrete_vae.train as train_mod
from cli_helpers import (
    FAST,
    RUN_ARGS,
    TIMEOUT_S,
    cli_command,
    dvae,
    last_json,
    read_metrics,
    subprocess_env,
)
from discrete_vae.checkpoint import load_checkpoint, save_checkpoint
from discrete_vae.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def copy_run(run: Path, tmp_path: Path, name: str = "run") -> Path:
    return Path(shutil.copytree(run, tmp_path / name))


def one_line(err: str) -> bool:
    return len(err.strip().splitlines()) == 1 and "Traceback" not in err


def tb_events(run: Path) -> list[Path]:
    return sorted((run / "tb").glob("events.out.tfevents.*"))


# ------------------------------------------------------------------ 1. a run folder is never corrupted
def test_resuming_a_finished_run_does_nothing_but_say_so(run, tmp_path, capsys):
    copy = copy_run(run, tmp_path)
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    for _ in range(2):
        result = dvae(capsys, "train", "--resume", copy)
        assert result.rc == 0, result.err
        assert "already at its final step 300" in result.err and one_line(result.err)
        assert last_json(result.out)["finished"] is True and last_json(result.out)["step"] == 300
    after = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    assert after == before  # no duplicate validation line, no new TensorBoard event file


def test_fresh_run_into_a_folder_with_stale_logs_moves_them_aside(run, tmp_path, capsys):
    stale = copy_run(run, tmp_path)  # a run killed before its first checkpoint: logs, no checkpoint
    (stale / "last.safetensors").unlink()
    old_metrics = (stale / "metrics.jsonl").read_bytes()
    result = dvae(capsys, "train", *RUN_ARGS, "--out", stale)
    assert result.rc == 0, result.err
    assert "never wrote a checkpoint" in result.err and "moved them to" in result.err
    (aside,) = stale.glob("aborted-*")
    assert (aside / "metrics.jsonl").read_bytes() == old_metrics and (aside / "tb").is_dir()
    assert (stale / "metrics.jsonl").read_bytes() == (run / "metrics.jsonl").read_bytes()  # clean
    assert len(tb_events(stale)) == 1


def _wait_for(condition, process: subprocess.Popen, timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_failed_start_removes_what_it_created(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "empty", tmp_path / "new" / "run"):
        result = dvae(capsys, "train", *FAST, "--estimator", "rloo", "--k", "1", "--out", out)
        assert result.rc == 2 and one_line(result.err), result
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"] and not any((tmp_path / "empty").iterdir())


def test_one_writer_per_run_folder_and_no_stale_lock_after_kill_9(tmp_path, capsys):
    out = tmp_path / "busy"
    env = subprocess_env(tmp_path)
    writer = subprocess.Popen(cli_command("train", *FAST, "--steps", 100000, "--checkpoint-every", 20,
                                          "--out", out), env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (out / "last.safetensors").is_file(), writer)
        for argv in (["train", "--resume", out], ["train", *FAST, "--out", out],
                     ["sop", "train", "--dataset", "digits", "--device", "cpu", "--out", out]):
            result = dvae(capsys, *argv)
            assert result.rc == 2, result
            assert "in use by another dvae process" in result.err and one_line(result.err), result.err
    finally:
        writer.kill()
        writer.wait()
        writer.stderr.close()
    result = dvae(capsys, "train", "--resume", out, "--steps", int(load_checkpoint(
        out / "last.safetensors")["step"]) + 10)
    assert result.rc == 0, result.err  # the kernel dropped the lock with the killed process


def test_tensorboard_keeps_the_points_at_the_resume_step(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    out = tmp_path / "run"
    args = [*FAST, "--eval-every", 100, "--checkpoint-every", 100, "--log-every", 50]
    assert dvae(capsys, "train", *args, "--steps", 200, "--out", out).rc == 0
    assert dvae(capsys, "train", "--resume", out, "--steps", 400).rc == 0
    assert len(tb_events(out)) == 2
    mux = EventMultiplexer().AddRunsFromDirectory(str(out / "tb"))
    mux.Reload()
    (name,) = mux.Runs()  # both event files, read as one run (the resumed file purges after step 200)
    acc = mux.GetAccumulator(name)
    assert [e.step for e in acc.Scalars("valid/nll")] == [100, 200, 300, 400]
    for tag in ("reconstructions", "samples"):
        assert [e.step for e in acc.Images(tag)] == [100, 200, 300, 400]
    assert [e.step for e in acc.Scalars("train/loss")] == [50, 100, 150, 200, 250, 300, 350, 400]


def test_a_torn_last_metrics_line_is_dropped_on_resume(run, tmp_path, capsys):
    copy = copy_run(run, tmp_path)
    with (copy / "metrics.jsonl").open("a") as f:
        f.write('{"step": 310, "split": "tra')  # power loss in the middle of a line
    result = dvae(capsys, "train", "--resume", copy, "--steps", 350)
    assert result.rc == 0, result.err
    assert "dropped the torn last line" in result.err
    lines = read_metrics(copy)  # every line parses
    assert [m["step"] for m in lines if m["split"] == "train"][-2:] == [300, 350]

    damaged = copy_run(run, tmp_path, "damaged")  # a bad line in the middle is damage, not a tear
    text = (damaged / "metrics.jsonl").read_text().splitlines()
    (damaged / "metrics.jsonl").write_text("\n".join([*text[:2], "{oops", *text[2:]]) + "\n")
    result = dvae(capsys, "train", "--resume", damaged, "--steps", 350)
    assert result.rc == 2 and "line 3" in result.err and one_line(result.err), result.err


def test_eval_files_name_their_checkpoint_and_no_best_means_last(run, tmp_path, capsys):
    copy = copy_run(run, tmp_path)
    best = last_json(dvae(capsys, "eval", copy, "--samples", 5).out)
    last = last_json(dvae(capsys, "eval", copy, "--samples", 5, "--checkpoint", "last").out)
    assert (best["checkpoint"], last["checkpoint"]) == ("best", "last")
    assert json.loads((copy / "eval_test_S5_seed0_best.json").read_text()) == best
    assert json.loads((copy / "eval_test_S5_seed0_last.json").read_text()) == last
    (copy / "best.safetensors").unlink()
    (copy / "eval_test_S5_seed0_last.json").unlink()
    result = dvae(capsys, "eval", copy, "--samples", 5)
    assert result.rc == 0 and "scoring last.safetensors" in result.err
    assert last_json(result.out)["checkpoint"] == "last"
    assert json.loads((copy / "eval_test_S5_seed0_best.json").read_text()) == best  # not overwritten
    assert json.loads((copy / "eval_test_S5_seed0_last.json").read_text())["checkpoint"] == "last"


def _no_constants(name: str) -> float:
    raise AssertionError(f"not strict JSON: {name}")


def test_eval_output_is_strict_json_with_null_for_non_finite_numbers(run, tmp_path, capsys):
    copy = copy_run(run, tmp_path)
    state = load_checkpoint(copy / "best.safetensors")
    name = next(k for k in state["model"] if k.startswith("decoder") and k.endswith("weight"))
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    save_checkpoint(copy / "best.safetensors", state)
    result = dvae(capsys, "eval", copy, "--samples", 5)
    assert result.rc == 0, result.err
    printed = json.loads(result.out.strip().splitlines()[-1], parse_constant=_no_constants)
    assert printed["nll"] is None and printed["non_finite"]["nll"] == "nan"
    saved = json.loads((copy / "eval_test_S5_seed0_best.json").read_text(), parse_constant=_no_constants)
    assert saved == printed


def test_checkpoints_get_the_run_folders_permissions(run, tmp_path):
    modes = {p.name: p.stat().st_mode & 0o777 for p in run.iterdir() if p.is_file()}
    assert modes["last.safetensors"] == modes["best.safetensors"] == modes["config.yaml"]
    old = os.umask(0o002)
    try:
        save_checkpoint(tmp_path / "c.safetensors", {"w": torch.zeros(2)})
        assert (tmp_path / "c.safetensors").stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(old)


@pytest.mark.parametrize("where", ["tensor bytes", "metadata"])
def test_a_flipped_byte_in_a_checkpoint_is_one_line_naming_the_file(run, tmp_path, capsys, where):
    copy = copy_run(run, tmp_path)
    path = copy / "last.safetensors"
    raw = bytearray(path.read_bytes())
    header = int.from_bytes(raw[:8], "little")
    if where == "tensor bytes":
        raw[8 + header + (len(raw) - 8 - header) // 2] ^= 0x01
    else:  # a digit of the step in the JSON state: still valid JSON, another number
        key = b'step\\": 300'  # the state is JSON inside the header's JSON: its quotes are escaped
        at = raw.index(key) + len(key) - 2
        raw[at] = ord("1")
    path.write_bytes(bytes(raw))
    result = dvae(capsys, "eval", copy, "--samples", 5, "--checkpoint", "last")
    assert result.rc == 2 and one_line(result.err), result.err
    assert str(path) in result.err and "checksum" in result.err


def test_validation_and_its_image_grids_leave_batch_norm_as_training_left_it(tmp_path, capsys):
    """Batch norm's running averages count training batches only: the validations and the image grids
    drawn beside them (reconstructions, prior draws) run in eval mode, so the best and the last
    checkpoints hold what the training steps made of them."""
    from discrete_vae.recipe import model_from_run

    run = tmp_path / "run"
    args = [*FAST, "--batch-norm", "--activation", "tanh", "--steps", 6, "--eval-every", 2]
    result = dvae(capsys, "train", *args, "--checkpoint-every", 3, "--out", run)
    assert result.rc == 0, result.err
    assert len(list((run / "images").glob("reconstructions_*.png"))) == 3
    for which in ("best", "last"):
        model, _, state = model_from_run(run, which)
        counts = {name: int(count) for name, count in model.named_buffers()
                  if name.endswith("num_batches_tracked")}
        assert len(counts) == 2, counts  # the encoder's hidden layer and the decoder's
        assert set(counts.values()) == {state["step"]}, (which, counts)


# ------------------------------------------------------------------ 2. non-finite values and divergence
def _nan_after_optimizer_step(monkeypatch, at: int) -> None:
    """Make the ``at``-th optimizer step write NaN into a weight (the loss of that step stays finite)."""
    step, calls = torch.optim.AdamW.step, []

    def poisoned(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == at:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned)


def test_non_finite_parameters_are_never_checkpointed(run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    _nan_after_optimizer_step(monkeypatch, at=250)  # right before the checkpoint of step 250
    result = dvae(capsys, "train", *RUN_ARGS, "--out", out)
    assert result.rc == 1 and one_line(result.err), result.err
    assert "non-finite parameters at step 250" in result.err and "(step 125) is kept" in result.err
    state = load_checkpoint(out / "last.safetensors")
    assert int(state["step"]) == 125 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_stop_before_the_first_checkpoint_says_there_is_none(tmp_path, capsys, monkeypatch):
    _nan_after_optimizer_step(monkeypatch, at=40)
    result = dvae(capsys, "train", *RUN_ARGS, "--out", tmp_path / "run")
    assert result.rc == 1 and one_line(result.err), result.err
    assert "no checkpoint was written yet" in result.err and "is kept" not in result.err


def test_resume_with_a_smaller_learning_rate_is_recorded(run, tmp_path, capsys):
    copy = copy_run(run, tmp_path)
    result = dvae(capsys, "train", "--resume", copy, "--steps", 400, "--lr", "2e-4")
    assert result.rc == 0, result.err
    records = [json.loads(line) for line in (copy / "overrides.jsonl").read_text().splitlines()]
    assert records == [{"step": 300, "option": "steps", "from": 300, "to": 400},
                       {"step": 300, "option": "lr", "from": 0.001, "to": 0.0002}]
    config = TrainConfig.from_dict(yaml.safe_load((copy / "config.yaml").read_text()))
    assert (config.optim.lr, config.optim.steps) == (2e-4, 400)
    lrs = {m["step"]: m["lr"] for m in read_metrics(copy) if m["split"] == "train"}
    old = TrainConfig.from_dict(load_checkpoint(run / "last.safetensors")["config"])
    assert lrs[300] == recipe.learning_rate(old, 299, 300)  # the first 300 steps: as they were
    assert lrs[350] == recipe.learning_rate(config, 349, 400) != recipe.learning_rate(old, 349, 400)
    refused = dvae(capsys, "train", "--resume", copy, "--batch-size", 10)
    assert refused.rc == 2 and "--lr" in refused.err and one_line(refused.err)


def test_resume_reads_the_data_from_a_new_folder(run, tmp_path, capsys):
    """A run moved to a machine whose datasets lie elsewhere: ``--data-dir`` on resume, recorded."""
    copy, elsewhere = copy_run(run, tmp_path), tmp_path / "datasets"
    elsewhere.mkdir()
    result = dvae(capsys, "train", "--resume", copy, "--steps", 320, "--data-dir", elsewhere)
    assert result.rc == 0, result.err
    records = [json.loads(line) for line in (copy / "overrides.jsonl").read_text().splitlines()]
    assert {"step": 300, "option": "data_dir", "from": None, "to": str(elsewhere)} in records
    config = TrainConfig.from_dict(yaml.safe_load((copy / "config.yaml").read_text()))
    assert config.run.data_dir == str(elsewhere)


def test_a_resumed_runs_rate_covers_every_stretch(run, tmp_path, capsys):
    """``steps_per_s`` of a run trained in stretches is over all of them: the checkpoint carries the seconds
    and steps timed so far. A checkpoint of an earlier version carries none: the rate covers the steps
    since it (``timed_steps`` says how many)."""
    copy = copy_run(run, tmp_path)
    timed = load_checkpoint(copy / "last.safetensors")["timed"]
    assert timed["steps"] == 300 and timed["seconds"] > 0
    result = dvae(capsys, "train", "--resume", copy, "--steps", 400)
    assert result.rc == 0, result.err
    out = last_json(result.out)
    assert out["timed_steps"] == 400 and out["train_seconds"] > timed["seconds"]
    assert out["steps_per_s"] == pytest.approx(400 / out["train_seconds"], rel=0.01)
    state = load_checkpoint(copy / "last.safetensors")
    assert state["timed"]["steps"] == 400 and state["timed"]["seconds"] == pytest.approx(out["train_seconds"],
                                                                                         abs=0.5)
    del state["timed"]
    save_checkpoint(copy / "last.safetensors", state)
    out = last_json(dvae(capsys, "train", "--resume", copy, "--steps", 450).out)
    assert out["timed_steps"] == 50
    state = load_checkpoint(copy / "last.safetensors")
    bad = {**state, "finished": False, "timed": {"seconds": -1.0, "steps": 3}}
    save_checkpoint(copy / "last.safetensors", bad)
    refused = dvae(capsys, "train", "--resume", copy, "--steps", 500)
    assert refused.rc == 2 and "timed.seconds" in refused.err and one_line(refused.err)


def test_finite_divergence_is_reported(tmp_path, capsys, monkeypatch):
    evaluate = train_mod.evaluate

    def diverged(*args, **kwargs):  # a model whose bound ends far worse than independent pixels
        metrics = evaluate(*args, **kwargs)
        return {**metrics, "nll": metrics["nll"] + 500.0}

    monkeypatch.setattr(train_mod, "evaluate", diverged)
    out = tmp_path / "run"
    result = dvae(capsys, "train", *FAST, "--steps", 100, "--eval-every", 50, "--out", out)
    assert result.rc == 0, result.err
    assert "worse than the trivial model's" in last_json(result.out)["warning"]
    assert all("trivial" in m["warning"] for m in read_metrics(out) if m["split"] == "valid")
    assert result.err.count("worse than the trivial model's") == 3  # steps 50, 100, and the end
    monkeypatch.setattr(train_mod, "evaluate", evaluate)
    healthy = dvae(capsys, "train", *FAST, "--steps", 300, "--out", tmp_path / "ok")
    assert "warning" not in last_json(healthy.out)


# ------------------------------------------------------------------ 3. signals: a checkpoint, then exit
def _past_first_checkpoint(run: Path) -> bool:
    try:
        lines = (run / "metrics.jsonl").read_text().split("\n")[:-1]
    except OSError:
        return False
    return (run / "last.safetensors").is_file() and any(json.loads(ln)["step"] > 130 for ln in lines)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_writes_a_checkpoint_and_the_run_resumes_exactly(tmp_path, sig):
    args = [*FAST, "--steps", 1500, "--checkpoint-every", 130, "--log-every", 50]
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    env = subprocess_env(tmp_path)
    quiet = {"env": env, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    reference = subprocess.Popen(cli_command("train", *args, "--out", full), **quiet)
    victim = subprocess.Popen(cli_command("train", *args, "--out", stopped), **quiet)
    _wait_for(lambda: _past_first_checkpoint(stopped), victim)
    victim.send_signal(sig)
    out, err = victim.communicate(timeout=TIMEOUT_S)
    assert victim.returncode == 128 + sig, err
    assert one_line(err) and f"stopped by {signal.Signals(sig).name} at step" in err and out == ""
    at = int(load_checkpoint(stopped / "last.safetensors")["step"])
    assert f"at step {at};" in err and 130 < at < 1500 and f"dvae train --resume {stopped}" in err
    resumed = subprocess.run(cli_command("train", "--resume", stopped), timeout=TIMEOUT_S,
                             capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    _, err = reference.communicate(timeout=TIMEOUT_S)
    assert reference.returncode == 0, err
    assert (stopped / "metrics.jsonl").read_bytes() == (full / "metrics.jsonl").read_bytes()
    a, b = load_checkpoint(stopped / "last.safetensors"), load_checkpoint(full / "last.safetensors")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])


# ------------------------------------------------------------------ 3. file systems that refuse writes
def in_fresh_fs(tmp_path: Path, script: str, size: str) -> subprocess.CompletedProcess:
    """``sh -c script`` with ``$FS`` a fresh tmpfs of ``size`` and ``$DVAE`` the CLI, in a private mount
    namespace (``unshare --map-root-user --mount``: no privileges needed, nothing visible outside)."""
    fs = tmp_path / "fs"
    fs.mkdir()
    env = {**subprocess_env(tmp_path), "FS": str(fs), "DVAE": " ".join(cli_command())}
    command = f'mount -t tmpfs -o size={size} tmpfs "$FS" && {script}'
    return subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c", command], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)


TINY = " ".join(map(str, [*FAST, "--eval-every", 100, "--checkpoint-every", 100]))


def test_a_read_only_file_system_is_one_line(tmp_path):
    done = in_fresh_fs(tmp_path, f'mount -o remount,ro "$FS" && $DVAE train {TINY} --steps 5 --out "$FS/run"',
                       "1m")
    assert done.returncode == 2 and one_line(done.stderr), done.stderr
    assert "Read-only file system" in done.stderr and done.stdout == ""


def test_a_full_file_system_is_one_line_and_loses_no_work(tmp_path):
    script = (f'$DVAE train {TINY} --steps 300 --out "$FS/run"; echo "rc=$?"; ls -a "$FS/run"; '
              'mount -o remount,size=4m "$FS" && $DVAE train --resume "$FS/run" > "$FS/out" && '
              'tail -n 1 "$FS/out"')
    done = in_fresh_fs(tmp_path, script, "200k")
    first, resumed = done.stdout.split("\n", 1)[0], done.stdout.strip().splitlines()[-1]
    assert first == "rc=2", done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "Traceback" not in done.stderr
    assert ".tmp" not in done.stdout  # no half-written checkpoint left behind
    assert json.loads(resumed)["step"] == 300  # the last checkpoint survived: the run resumed from it


def test_eval_of_a_read_only_run_still_prints_its_result(tmp_path):
    script = (f'$DVAE train {TINY} --steps 100 --out "$FS/run" > /dev/null && mount -o remount,ro "$FS" && '
              '$DVAE eval "$FS/run" --samples 5')
    done = in_fresh_fs(tmp_path, script, "1m")
    assert done.returncode == 0, done.stderr
    assert "is not writable" in done.stderr.splitlines()[0]  # said before the work, not after it
    assert json.loads(done.stdout.strip().splitlines()[-1])["checkpoint"] == "best"


def test_run_folders_of_earlier_versions_still_evaluate_and_resume(run, tmp_path, capsys):
    """Before this version: ``samples`` for ``k``, checkpoints without a checksum or rank-local state."""
    from safetensors.torch import save

    from discrete_vae.checkpoint import atomic_write_bytes, flatten

    old = copy_run(run, tmp_path)
    config = TrainConfig.flat_values(yaml.safe_load((old / "config.yaml").read_text()))  # flat, as then
    config["samples"] = config.pop("k")
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    for name in ("last.safetensors", "best.safetensors"):
        state = load_checkpoint(old / name)
        state.pop("rank_local", None)
        state["config"] = config
        tensors: dict = {}
        skeleton = flatten(state, "s", tensors)
        tensors = {k: v.clone() for k, v in tensors.items()}
        atomic_write_bytes(old / name, save(tensors, metadata={"state": json.dumps(skeleton)}))
    assert dvae(capsys, "eval", old, "--samples", 5).rc == 0
    result = dvae(capsys, "train", "--resume", old, "--steps", 320)
    assert result.rc == 0, result.err
    assert yaml.safe_load((old / "config.yaml").read_text())["model"]["k"] == 1


def test_timed_rate_reads_the_checkpoint_header(tmp_path):
    """``timed_rate`` (a sweep's --status): steps per second from the seconds and steps ``last.safetensors``
    carries; None without a checkpoint, for a file that is not one, and for a checkpoint without them."""
    from discrete_vae.runs import timed_rate

    last = tmp_path / "last.safetensors"
    assert timed_rate(tmp_path) is None
    last.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header....")
    assert timed_rate(tmp_path) is None
    save_checkpoint(last, {"step": 30, "w": torch.zeros(3), "timed": {"seconds": 4.0, "steps": 10}})
    assert timed_rate(tmp_path) == 2.5
    save_checkpoint(last, {"step": 30, "w": torch.zeros(3)})  # a version that did not carry them
    assert timed_rate(tmp_path) is None


def test_logged_step_reads_the_last_whole_record_from_the_end(tmp_path):
    """``logged_step`` (a sweep's --status) reads a long metrics.jsonl from its end: the last whole
    record's step, past a torn last line and a tail that starts mid-record; None before any record."""
    from discrete_vae.runs import logged_step

    assert logged_step(tmp_path) is None  # no metrics.jsonl yet
    path = tmp_path / "metrics.jsonl"
    records = [json.dumps({"step": step, "split": "train", "loss": 100.0 + step % 7, "pad": "x" * 300})
               for step in range(1, 1001)]  # ~340 kB: longer than the tail that is read
    path.write_text("\n".join(records) + "\n")
    assert logged_step(tmp_path) == 1000
    path.write_text("\n".join(records) + '\n{"step": 1001, "split": "tr')  # a line cut short
    assert logged_step(tmp_path) == 1000
    path.write_text('{"step": 3, "spl')
    assert logged_step(tmp_path) is None
