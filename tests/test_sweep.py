"""``dvae sweep``: a grid of runs on ``digits`` builds its tables; reruns redo nothing; a sweep killed
mid-way completes, on rerun, with the table of an uninterrupted one; a failing point is reported while the
others finish; bad specs are one line and exit status 2; the SLURM path submits the script it should."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from discrete_vae.checkpoint import load_checkpoint
from discrete_vae.cli import main
from discrete_vae.sweep.runner import STATES

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = {"dataset": "digits", "latent": "4x4", "hidden": "32", "steps": 40, "batch_size": 50, "lr": 0.01,
        "eval_every": 20, "checkpoint_every": 10, "val_samples": 5}


def write_spec(folder: Path, **parts) -> Path:
    spec = {"name": "tiny", "base": BASE, "grid": {"model": ["gs", "st-gs"], "seed": [0, 1]},
            "eval": {"name": "test", "samples": 5, "limit": 100},
            "tables": [{"name": "bound", "rows": "model", "metric": "test.nll"}], **parts}
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def sweep(spec: Path, out: Path, *extra: str) -> int:
    threads = torch.get_num_threads()
    try:
        return main(["sweep", str(spec), "--out", str(out), "--executor", "debug", "--threads", "1", *extra])
    finally:
        torch.set_num_threads(threads)


def without_provenance(table: str) -> str:
    """A table.md without its provenance lines (the date and code commit of two runs may differ)."""
    return "\n".join(line for line in table.splitlines() if not line.startswith("Command: "))


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_a_sweep_builds_its_table_and_a_rerun_trains_nothing(tmp_path, capsys):
    spec, out = write_spec(tmp_path), tmp_path / "out"
    assert sweep(spec, out) == 0
    summary = last_json(capsys)
    assert summary["ran"] == 4 and summary["states"]["done"] == 4
    table = (out / "table.md").read_text()
    assert "| model | test.nll |" in table and "mean ± std over 2 seeds" in table
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert set(rows) == {"model", "gs", "st-gs"} and "±" in rows["gs"]
    records = json.loads((out / "results.json").read_text())
    assert [r["point"] for r in records] == ["model=gs,seed=0", "model=gs,seed=1", "model=st-gs,seed=0",
                                             "model=st-gs,seed=1"]
    assert all(r["evals"]["test"]["samples"] == 5 and r["evals"]["test"]["examples"] == 100 for r in records)
    assert (out / "results.csv").read_text().count("\n") == 5
    assert (out / "validation.png").stat().st_size > 0 and (out / "final.png").stat().st_size > 0
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*.json")}
    assert sweep(spec, out) == 0
    assert last_json(capsys)["ran"] == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*.json")} == stamps
    assert (out / "table.md").read_text() == table
    assert main(["sweep", str(spec), "--out", str(out), "--status"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.splitlines()[-1])["states"]["done"] == 4
    assert captured.err.splitlines()[0] == "4 done"
    (out / "table.md").unlink()
    assert main(["sweep", str(spec), "--out", str(out), "--report"]) == 0  # the tables, nothing run
    assert (out / "table.md").read_text() == table


@pytest.mark.parametrize("how", ["SIGKILL to every process", "SIGTERM to the driver"])
def test_a_stopped_sweep_completes_with_the_uninterrupted_table(how, tmp_path, capsys):
    """A local sweep stopped at its first checkpoint, by SIGKILL to the whole process group (driver and
    jobs) or by SIGTERM to the driver alone (started, as a background job is, with SIGINT ignored: the
    jobs checkpoint and end, the driver exits 143); the rerun resumes the interrupted runs (exact
    resume) and writes the table an uninterrupted sweep writes."""
    spec = write_spec(tmp_path, base={**BASE, "steps": 300, "hidden": "64"})
    assert sweep(spec, tmp_path / "reference") == 0
    reference = without_provenance((tmp_path / "reference" / "table.md").read_text())
    out = tmp_path / "stopped"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "discrete_vae.cli", "sweep", str(spec), "--out", str(out),
                             "--executor", "local", "--jobs", "2", "--threads", "1"], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.monotonic() + 120
    while (not list(out.glob("*/run/last.safetensors")) and proc.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.02)
    if how.startswith("SIGKILL"):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    else:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143  # 128 + SIGTERM, as dvae train
    deadline = time.monotonic() + 10  # the jobs die a moment after the driver, holding their locks till then
    while time.monotonic() < deadline:  # (a zombie left unreaped still counts: hence the deadline)
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.01)
    capsys.readouterr()
    assert main(["sweep", str(spec), "--out", str(out), "--status"]) == 0
    states = last_json(capsys)["states"]
    assert states["done"] < 4, states  # the stop came before the end
    if how.startswith("SIGTERM"):
        assert states["running"] == 0 and states["interrupted"] >= 1, states
    assert sweep(spec, out) == 0
    summary = last_json(capsys)
    assert summary["states"]["done"] == 4, summary["point_states"]
    assert without_provenance((out / "table.md").read_text()) == reference


def test_a_failing_point_is_reported_while_the_others_finish(tmp_path, capsys):
    spec = write_spec(tmp_path, grid={"lr": [0.01, 1e30], "seed": [0]},
                      tables=[{"rows": "lr", "metric": "test.nll"}])
    out = tmp_path / "out"
    assert sweep(spec, out) == 1
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["point_states"] == {"lr=0.01,seed=0": "done", "lr=1e+30,seed=0": "failed"}
    assert "non-finite" in summary["errors"]["lr=1e+30,seed=0"]
    assert "1 of 2 points failed" in captured.err.splitlines()[-1]
    assert json.loads((out / "lr=1e+30,seed=0" / "error.json").read_text())["traceback"]
    assert "| 1e+30 | — |" in (out / "table.md").read_text()


def test_select_tunes_on_one_seed_and_repeats_the_chosen_label(tmp_path, capsys):
    """``select:`` runs every lr on seed 0, drops the diverging one, chooses per model the lr of the lowest
    validation bound, then runs seed 1 at it only; the test set scores the chosen points alone; the main
    table shows the chosen lr over both seeds, the tuning table seed 0 at every lr."""
    grid = {"lr": [0.0001, 0.01, 1e30], "model": ["gs", "st-gs"], "seed": [0, 1]}  # yaml sorts the keys
    spec = write_spec(tmp_path, grid=grid, select={"axis": "lr", "by": "train.nll", "per": ["model"]},
                      eval={"name": "test", "samples": 5, "limit": 100, "selected": True},
                      tables=[{"name": "tuning", "rows": "model", "columns": "lr", "metric": "train.nll"},
                              {"name": "main", "rows": "model", "metric": "test.nll"}])
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--status"]) == 0
    assert last_json(capsys)["states"] == {**dict.fromkeys(STATES, 0), "pending": 6, "waiting": 6}
    assert sweep(spec, out) == 1  # the lr 1e30 points diverge
    summary = last_json(capsys)
    assert summary["ran"] == 8 and summary["states"]["failed"] == 2 and summary["states"]["unselected"] == 4
    records = {r["point"]: r for r in json.loads((out / "results.json").read_text())}
    for model in grid["model"]:
        tuned = {lr: records[f"lr={lr},model={model},seed=0"]["train"]["nll"] for lr in ("0.0001", "0.01")}
        best = min(tuned, key=tuned.get)
        assert records[f"lr=1e+30,model={model},seed=0"]["state"] == "failed"
        for lr in ("0.0001", "0.01", "1e+30"):
            for seed in (0, 1):
                record = records[f"lr={lr},model={model},seed={seed}"]
                assert record["choice"] == best and record["chosen"] == (lr == best)
                assert (record["evals"]["test"] is not None) == (lr == best), record["point"]
                assert record["state"] == ("done" if lr == best else "unselected" if seed == 1
                                           else "failed" if lr == "1e+30" else "done")
    table = (out / "table.md").read_text()
    assert "| model | lr (chosen) | test.nll |" in table and "mean ± std over 2 seeds" in table
    assert f"| gs | {best} | " in table and "lr chosen per model by the lowest train.nll of seed 0" in table
    assert "| model | 0.0001 | 0.01 | 1e+30 |" in table  # tuning: seed 0 only, one value per cell
    tuning = table.split("## tuning")[1].split("## main")[0]
    assert tuning.count("(1 seed)") == 0 and "1 seed" in tuning
    capsys.readouterr()
    assert main(["sweep", str(spec), "--out", str(out), "--status"]) == 0
    err = capsys.readouterr().err
    assert "4 unselected" in err.splitlines()[0] and f"lr={best},model=gs,seed=1" in err
    assert sum(",seed=1 " in line for line in err.splitlines()) == 2  # the unselected are not listed


def test_only_runs_the_points_named_and_the_table_shows_what_is_done(tmp_path, capsys):
    spec, out = write_spec(tmp_path), tmp_path / "out"
    assert sweep(spec, out, "--only", "model=st-gs", "--only", "seed=1") == 0
    summary = last_json(capsys)
    assert summary["ran"] == 1 and summary["point_states"]["model=st-gs,seed=1"] == "done"
    assert summary["states"] == {**dict.fromkeys(STATES, 0), "done": 1, "pending": 3}
    assert "| gs | — |" in (out / "table.md").read_text()
    assert main(["sweep", str(spec), "--out", str(out), "--status", "--only", "model=st-gs"]) == 0
    assert last_json(capsys)["point_states"] == {"model=st-gs,seed=0": "pending",
                                                 "model=st-gs,seed=1": "done"}
    for bad, message in (("model", "--only takes AXIS=LABEL"), ("modle=gs", "'modle' is not an axis"),
                         ("model=gz", "--only model=gz: not a label of model (gs, st-gs)")):
        assert sweep(spec, out, "--only", bad) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_the_steps_the_rate_covers_are_a_metric_and_a_result_without_it_is_named(tmp_path, capsys):
    """``train.timed_steps``: every step of a run trained in one go. A run of a version that did not record
    it is a finished point whose cell is empty, and the table's notes say so rather than "no finished
    points"."""
    spec = write_spec(tmp_path, grid={"model": ["gs"], "seed": [0]},
                      tables=[{"name": "timed", "rows": "model", "metric": "train.timed_steps", "digits": 0}])
    out = tmp_path / "out"
    assert sweep(spec, out) == 0
    capsys.readouterr()
    assert "| gs | 40 |" in (out / "table.md").read_text()
    train = out / "model=gs,seed=0" / "train.json"
    older = {k: v for k, v in json.loads(train.read_text()).items() if k != "timed_steps"}
    train.write_text(json.dumps(older))
    assert main(["sweep", str(spec), "--out", str(out), "--report"]) == 0
    table = (out / "table.md").read_text()
    assert "| gs | — |" in table and "no finished point recorded it" in table
    assert "none yet (no finished point recorded the metric)" in table
    assert "no point has finished" not in table


def test_each_result_keeps_the_command_that_made_it_and_report_shows_the_only_points(tmp_path, capsys):
    """Two parts of a grid run by two commands: a table of both names both; ``--report --only`` shows that
    part's points alone, under the command that made them (not the sweep's last command)."""
    spec, out = write_spec(tmp_path), tmp_path / "out"
    assert sweep(spec, out, "--only", "seed=1") == 0
    assert sweep(spec, out, "--only", "seed=0") == 0
    both = (out / "table.md").read_text()
    assert f"Command: `dvae sweep {spec} --only seed=0`; `dvae sweep {spec} --only seed=1` · " in both
    assert "mean ± std over 2 seeds" in both
    capsys.readouterr()
    assert main(["sweep", str(spec), "--out", str(out), "--report", "--only", "seed=1"]) == 0
    assert set(last_json(capsys)["point_states"]) == {"model=gs,seed=1", "model=st-gs,seed=1"}
    one = (out / "table.md").read_text()
    assert f"Command: `dvae sweep {spec} --only seed=1` · " in one and "seed=0" not in one
    assert "1 seed." in one
    made = json.loads((out / "model=gs,seed=1" / "train.json").read_text())["provenance"]
    assert made["command"] == f"dvae sweep {spec} --only seed=1"


@pytest.mark.parametrize("parts,message", [
    ({"base": {**BASE, "not_an_option": 1}}, "not_an_option"),
    ({"grid": {"model": []}}, "grid axis 'model' is empty"),
    ({"grid": {}}, "grid must be a non-empty mapping"),
    ({"tables": [{"rows": "model", "metric": "test.mse"}]}, "unknown metric 'test.mse'"),
    ({"tables": [{"rows": "latent", "metric": "test.nll"}]}, "'latent' is not an axis of the grid"),
    ({"grid": {"model": ["gs"], "lr": [0.1, 0.01]}}, "grid axis 'lr' is neither a row"),
    ({"grid": {"modle": ["gs"]}}, "grid axis 'modle' is not a dvae train option"),
    ({"grid": {"model": ["no-such-method"]}}, "grid point model=no-such-method"),
    ({"eval": {"samples": 0}}, "eval 'test': samples must be a whole number of at least 1, not 0"),
    ({"eval": {"selected": True}}, "the spec has no select:"),
    ({"select": {"axis": "seed", "by": "train.nll"}}, "select: axis 'seed' must be an axis of the grid"),
    ({"select": {"axis": "model"}}, "select: needs by:"),
    ({"select": {"axis": "model", "by": "test.nll"}, "eval": {"selected": True}},
     "comes from an eval that only scores the chosen points"),
    ({"select": {"axis": "model", "by": "train.nll", "seeds": [7]}}, "select: seeds must be seeds"),
    ({"grid": {"../../../x/t": {"hot": {"lr": 0.01}}}}, "grid axis '../../../x/t' may hold only letters"),
    ({"eval": {"name": "/../../../x", "samples": 5}}, "eval name '/../../../x' may hold only letters"),
    ({"name": "../../x"}, "spec name '../../x' may hold only letters"),
    ({"description": {"nested": [1, 2]}}, "description must be text"),
    ({"eval": {"samples": "many"}}, "eval 'test': samples must be a whole number of at least 1, not 'many'"),
    ({"eval": {"limit": 2.5}}, "eval 'test': limit must be a whole number"),
    ({"eval": {"split": "nosuchsplit"}}, "eval 'test': split must be one of test, valid, train"),
    ({"eval": {"checkpoint": "middle"}}, "eval 'test': checkpoint must be one of best, last"),
    ({"grid": {"model": {"gs": {"eval": {"checkpoint": "middle"}}}}},
     "grid point model=gs: eval 'test': checkpoint must be one of best, last"),
    ({"grid": {"estimator": ["gs", "arm"]}, "tables": [{"rows": "estimator"}]},
     "grid point estimator=arm: estimator arm supports binary latents, not categorical"),
    ({"grid": {"model": ["gs"], "prior": ["rbm"]}, "tables": [{"rows": ["model", "prior"]}]},
     "grid point model=gs,prior=rbm: the RBM prior is over binary latents"),
    ({"tables": [{"rows": "model", "metrics": {"test (S = {samples}, {nosuch})": "test.nll"}}]},
     "names no setting"),
])
def test_a_bad_spec_is_one_line_and_status_2(tmp_path, capsys, parts, message):
    spec = write_spec(tmp_path, **parts)
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text,message", [
    ("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + chr(ord(c) - 1)] * 10)}]\n" for c in "bcdefgh")
     + "description: *h\n", "expands to more than 1,000,000 values"),
    ("base: {dataset: digits}\nv: &v [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n", "unknown key 'v'"),
    ("base: {dataset: digits}\ngrid:\n  seed: &v [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]\n"
     + "".join(
         f"  ax{i}: {{{', '.join(f'l{j}: {{}}' for j in range(10))}}}\n" for i in range(7)),
     "the grid has more than 10,000 points"),
])
def test_a_spec_too_large_to_expand_is_refused_before_it_is_built(text, message, tmp_path, capsys):
    """A YAML alias bomb, or a grid of 10^8 points, is refused in one line without growing memory."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_spec_or_config_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(bytes(range(128, 256)) * 4)
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not UTF-8 text" in err[0], err
    assert main(["train", "--config", str(spec), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not UTF-8 text" in err[0], err


def test_nothing_a_spec_names_is_written_outside_the_sweep_folder(tmp_path, capsys):
    """Names that would climb out of --out are refused (above); what is accepted stays inside it."""
    spec = write_spec(tmp_path, grid={"a.b_c+d": {"x/../..": {}}, "seed": [0]},
                      eval={"name": "t-1.x", "samples": 2, "limit": 20},
                      tables=[{"rows": "a.b_c+d", "metric": "t-1.x.nll"}])
    out = tmp_path / "deep" / "out"
    assert sweep(spec, out) == 0
    outside = {p for p in tmp_path.rglob("*") if out not in p.parents and p != out}
    assert outside == {spec, tmp_path / "deep"}, outside
    assert (out / "a.b_c+d=x%2F..%2F..,seed=0" / "eval-t-1.x.json").is_file()


def test_progress_says_how_far_how_fast_and_how_long_is_left():
    from discrete_vae.sweep.runner import progress_text

    assert progress_text({"step": 612_000, "steps": 1_000_000, "steps_per_s": 38.5}) == (
        "step 612,000 of 1,000,000 (61%), 38.5 steps/s, ETA 2:47:57")  # 388,000 / 38.5 = 10,077.9 s
    assert progress_text({"step": 20, "steps": 40, "steps_per_s": None}) == "step 20 of 40 (50%)"
    assert progress_text({"step": 5, "steps": None, "steps_per_s": 2.0}) == "step 5, 2 steps/s"
    assert progress_text({"step": None, "steps": 40}) == "" and progress_text(None) == ""


def test_a_world_writable_sweep_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)
    assert sweep(write_spec(tmp_path), out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "may be written by any user" in err[0] and "trusted like code" in err[0], err
    assert not (out / ".submitit").exists() and not list(out.iterdir())


def test_quick_tables_say_the_settings_they_ran_with(tmp_path, capsys):
    """A --quick table fills its titles' {fields} from the quick settings, and shows no published column
    (those numbers are for the full settings)."""
    spec = write_spec(tmp_path, grid=ONE, eval={"name": "test", "samples": 50},
                      quick={"eval": {"samples": 3, "limit": 40}},
                      tables=[{"rows": "model", "metrics": {"test NLL (S = {samples})": "test.nll"},
                               "titles": {"gs": "gs at {steps:,} steps"},
                               "reference": {"title": "Paper (2017)", "values": {"gs": 101.5}}}])
    out = tmp_path / "out"
    assert sweep(spec, out, "--quick") == 0
    table = (out / "table.md").read_text()
    assert "| model | test NLL (S = 3) |" in table and "| gs at 40 steps |" in table
    assert "Paper (2017)" not in table and "101.5" not in table and "S = 3, 40 examples" in table
    from discrete_vae.sweep import load_spec
    from discrete_vae.sweep.report import collect, table_markdown

    full = load_spec(spec)
    text = table_markdown(full, full.tables[0], collect(full, tmp_path / "full"))
    assert "test NLL (S = 50)" in text and "Paper (2017)" in text and "101.5" in text


def test_report_writes_the_tables_into_the_specs_page_between_markers(tmp_path, capsys):
    """``page:``: --report rewrites what lies between a table's markers, with its provenance (command, date,
    commit, machine), keeps the rest of the page, adds a table the page has no markers for at its end,
    and leaves the page alone for --quick."""
    import datetime

    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    intro, after = "# Tiny\n\nWhat is compared.\n\n", "\n\nWhat the table shows.\n"
    page.write_text(intro + "<!-- dvae sweep --report: bound -->\nold numbers\n"
                    "<!-- end dvae sweep --report: bound -->" + after)
    spec = write_spec(tmp_path, grid=ONE, page="docs/page.md", quick={"eval": {"samples": 2}},
                      tables=[{"name": "bound", "rows": "model", "metric": "test.nll"},
                              {"name": "elbo", "rows": "model", "metric": "test.neg_elbo"}])
    out = tmp_path / "out"
    assert sweep(spec, out) == 0
    assert page.read_text().count("old numbers") == 1  # a run writes its folder; --report, the page
    assert main(["sweep", str(spec), "--out", str(out), "--report"]) == 0
    text = page.read_text()
    assert text.startswith(intro) and "old numbers" not in text
    bound = text.split("<!-- dvae sweep --report: bound -->\n")[1].split("<!-- end dvae")[0]
    block = (out / "table.md").read_text().split("## bound\n\n")[1].split("## elbo")[0]
    assert bound == block.rstrip() + "\n"
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    assert f"Command: `dvae sweep {spec}` · Date: {today} · Code commit: " in bound
    assert " · Machine: " in bound
    assert "What the table shows." in text.split("<!-- end dvae sweep --report: bound -->")[1]
    assert "## elbo\n\n<!-- dvae sweep --report: elbo -->\n| model | test.neg_elbo |" in text
    capsys.readouterr()
    assert main(["sweep", str(spec), "--out", str(out), "--report"]) == 0
    assert page.read_text() == text  # a rerun rewrites the same blocks
    assert sweep(spec, tmp_path / "quick", "--quick") == 0
    assert main(["sweep", str(spec), "--out", str(tmp_path / "quick"), "--quick", "--report"]) == 0
    assert page.read_text() == text and "not written into" in capsys.readouterr().err


def test_extends_merges_the_base_and_quick_and_replaces_the_rest(tmp_path):
    from discrete_vae.sweep import load_spec

    parent = write_spec(tmp_path, quick={"base": {"steps": 4, "eval_every": 2}, "eval": {"samples": 2}})
    (tmp_path / "child").mkdir()
    child = tmp_path / "child" / "more.yaml"
    child.write_text(yaml.safe_dump({"extends": "../spec.yaml", "base": {"latent": "8x2", "batch-size": 25},
                                     "grid": {"model": ["gs"], "temperature": [0.5, 1.0]},
                                     "quick": {"base": {"steps": 6}},
                                     "tables": [{"rows": "temperature", "columns": "model",
                                                 "metric": "test.nll"}]}))
    spec, whole = load_spec(child), load_spec(parent)
    assert spec.name == "more" and spec.description == ""  # never inherited
    assert spec.base == {**whole.base, "latent": "8x2", "batch_size": 25}  # merged, the child's keys win
    assert spec.evals == whole.evals  # not given: inherited
    assert [p.values["temperature"] for p in spec.points()] == [0.5, 1.0]  # given: replaced
    assert not any("seed" in p.name for p in spec.points())
    quick = load_spec(child, quick=True)
    assert quick.over == {"steps": 6, "eval_every": 2} and quick.eval_over == {"samples": 2}


@pytest.mark.parametrize("extends,message", [
    ("spec.yaml", "extends itself"),
    ("missing.yaml", "cannot read sweep spec"),
    (3, "must be the path of another spec"),
])
def test_a_bad_extends_is_one_line_and_status_2(tmp_path, capsys, extends, message):
    spec = write_spec(tmp_path, extends=extends)
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_an_extends_cycle_is_one_line(tmp_path, capsys):
    write_spec(tmp_path, extends="other.yaml")
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({"extends": "spec.yaml"}))
    assert main(["sweep", str(tmp_path / "other.yaml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "extends itself" in err, err


def test_slurm_submits_one_array_with_the_settings(tmp_path, capsys, monkeypatch):
    """submitit's SlurmExecutor against a fake ``sbatch`` that keeps the script it is given: one array of
    the four points (seed 0 of both models first), at most two at once, with the partition, time, CPUs,
    GPUs and setup lines asked for; --status then shows them submitted."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("sbatch", f"cp \"$1\" {tmp_path}/submitted.sh\necho 'Submitted batch job 4242'"),
                       ("srun", "exit 0")):
        fake = bin_dir / name
        fake.write_text(f"#!/bin/sh\n{body}\n")
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    spec, out = write_spec(tmp_path), tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--executor", "slurm", "--partition", "debugq",
                 "--time", "30", "--gpus", "1", "--array-parallelism", "2", "--setup", "module load cuda",
                 "--no-wait"]) == 0
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("#SBATCH --array=0-3%2", "#SBATCH --partition=debugq", "#SBATCH --time=30",
                 "#SBATCH --cpus-per-task=1", "#SBATCH --gpus-per-node=1", "module load cuda"):
        assert line in script, line
    assert json.loads((out / "jobs.json").read_text()) == {
        "model=gs,seed=0": "4242_0", "model=st-gs,seed=0": "4242_1", "model=gs,seed=1": "4242_2",
        "model=st-gs,seed=1": "4242_3"}  # every setting's first seed before any second seed
    capsys.readouterr()
    assert main(["sweep", str(spec), "--out", str(out), "--status"]) == 0
    assert last_json(capsys)["states"]["submitted"] == 4
    # a rerun asks sacct: the queued and running tasks are not submitted again, the cancelled one is
    sacct = bin_dir / "sacct"
    sacct.write_text("#!/bin/sh\necho 'JobID|State|NodeList'\necho '4242_0|RUNNING|n1'\n"
                     "echo '4242_[1-2]|PENDING|'\necho '4242_3|CANCELLED by 0|'\n")
    sacct.chmod(sacct.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "submitted.sh").unlink()
    assert main(["sweep", str(spec), "--out", str(out), "--executor", "slurm", "--no-wait"]) == 0
    assert "#SBATCH --array" not in (tmp_path / "submitted.sh").read_text()  # one job: the cancelled point
    assert "1 to run" in capsys.readouterr().err


def test_slurm_without_a_cluster_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, no sbatch
    assert main(["sweep", str(write_spec(tmp_path)), "--out", str(tmp_path / "out"), "--executor",
                 "slurm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dvae sweep: error: --executor slurm needs a SLURM cluster")


def test_more_steps_in_the_spec_extend_a_run_whose_schedules_ignore_its_length(tmp_path, capsys):
    """A spec whose ``steps`` grew resumes each finished run of a constant learning rate to the new length
    and scores it again; until then, the table shows none of the shorter run's numbers."""
    grid, last = {"model": ["gs"], "seed": [0]}, {"name": "test", "samples": 5, "checkpoint": "last"}
    base = {**BASE, "lr_schedule": "constant"}
    spec, out = write_spec(tmp_path, base={**base, "steps": 20}, grid=grid, eval=last), tmp_path / "out"
    assert sweep(spec, out) == 0
    point = out / "model=gs,seed=0"
    assert json.loads((point / "eval-test.json").read_text())["step"] == 20
    assert json.loads((point / "train.json").read_text())["step"] == 20
    write_spec(tmp_path, base={**base, "steps": 40}, grid=grid, eval=last)
    capsys.readouterr()
    assert main(["sweep", str(spec), "--out", str(out), "--report"]) == 0
    assert last_json(capsys)["point_states"] == {"model=gs,seed=0": "interrupted"}
    assert "| gs | — |" in (out / "table.md").read_text()  # the 20-step numbers are not shown as 40's
    assert main(["sweep", str(spec), "--out", str(out), "--status"]) == 0
    shown = capsys.readouterr()
    assert "model=gs,seed=0  interrupted: step 20 of 40 (50%), " in shown.err  # how far it has come
    assert " steps/s, ETA " in shown.err  # and how fast, from the seconds its checkpoint timed
    progress = json.loads(shown.out.splitlines()[-1])["progress"]
    timed = load_checkpoint(point / "run" / "last.safetensors")["timed"]
    assert progress == {"model=gs,seed=0": {"step": 20, "steps": 40, "steps_per_s": pytest.approx(
        timed["steps"] / timed["seconds"])}}
    assert sweep(spec, out) == 0
    assert last_json(capsys)["ran"] == 1
    assert json.loads((point / "train.json").read_text())["step"] == 40
    assert json.loads((point / "eval-test.json").read_text())["step"] == 40
    assert '"steps"' in (point / "run" / "overrides.jsonl").read_text()
    assert "| gs | — |" not in (out / "table.md").read_text()


ONE = {"model": ["gs"], "seed": [0]}


def edit_parent(tmp_path):
    """A child spec whose parent's base is then edited: returns the child's path."""
    write_spec(tmp_path, grid=ONE)
    child = tmp_path / "child.yaml"
    child.write_text(yaml.safe_dump({"extends": "spec.yaml", "name": "child"}))
    return child, lambda: write_spec(tmp_path, grid=ONE, base={**BASE, "lr": 0.02})


@pytest.mark.parametrize("edit,keys", [
    ("train option", "lr 0.01 -> 0.02"),
    ("steps down", "steps 40 -> 20"),
    ("steps up under a cosine schedule", "steps 40 -> 60"),
    ("extends: parent edited", "lr 0.01 -> 0.02"),
])
def test_a_changed_config_is_refused_then_retrained_never_mixed(edit, keys, tmp_path, capsys):
    """Every kind of edit to what a point trains with: the rerun refuses in one line naming the point and
    what changed, before running anything; the tables meanwhile show no number under the new settings;
    --retrain-changed trains it again from scratch, and the table shows the new run."""
    if edit.startswith("extends"):
        spec, apply = edit_parent(tmp_path)
    else:
        spec = write_spec(tmp_path, grid=ONE)
        changed = {"train option": {"lr": 0.02}, "steps down": {"steps": 20}}.get(edit, {"steps": 60})
        apply = lambda: write_spec(tmp_path, grid=ONE, base={**BASE, **changed})  # noqa: E731
    out = tmp_path / "out"
    assert sweep(spec, out) == 0
    first = json.loads((out / "results.json").read_text())[0]["evals"]["test"]["nll"]
    apply()
    capsys.readouterr()
    assert sweep(spec, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 point trained with settings the spec no longer gives" in err[0], err
    assert "model=gs,seed=0" in err[0] and keys in err[0] and "--retrain-changed" in err[0], err
    assert main(["sweep", str(spec), "--out", str(out), "--report"]) == 0
    summary = last_json(capsys)
    assert summary["point_states"] == {"model=gs,seed=0": "changed"}
    assert keys in summary["errors"]["model=gs,seed=0"]  # --status says what changed
    table = (out / "table.md").read_text()
    assert "| gs | — |" in table and f"{first:.2f}" not in table
    record = json.loads((out / "results.json").read_text())[0]
    assert record["evals"]["test"] is None and record["train"] is None and record["changed"]
    assert sweep(spec, out, "--retrain-changed") == 0
    assert last_json(capsys)["states"]["done"] == 1
    record = json.loads((out / "results.json").read_text())[0]
    assert record["evals"]["test"]["nll"] != first and "| gs | — |" not in (out / "table.md").read_text()
    assert not (out / "model=gs,seed=0" / "run" / "overrides.jsonl").exists()  # a fresh run, not a resume


def test_changed_evaluation_settings_are_scored_again_without_training(tmp_path, capsys):
    spec, out = write_spec(tmp_path, grid=ONE), tmp_path / "out"
    assert sweep(spec, out) == 0
    point = out / "model=gs,seed=0"
    trained = (point / "train.json").stat().st_mtime_ns
    write_spec(tmp_path, grid=ONE, eval={"name": "test", "samples": 7, "limit": 100})
    capsys.readouterr()
    assert main(["sweep", str(spec), "--out", str(out), "--report"]) == 0
    assert last_json(capsys)["point_states"] == {"model=gs,seed=0": "interrupted"}
    assert "| gs | — |" in (out / "table.md").read_text()  # S = 5 numbers are not shown under S = 7
    assert sweep(spec, out) == 0
    assert "test scored again" in capsys.readouterr().err
    result = json.loads((point / "eval-test.json").read_text())
    assert result["samples"] == 7 and result["settings"]["samples"] == 7
    assert (point / "train.json").stat().st_mtime_ns == trained
    assert "S = 7, 100 examples" in (out / "table.md").read_text()


SPECS = sorted((Path(__file__).parents[1] / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
def test_every_shipped_spec_runs_in_its_quick_form(spec, tmp_path, capsys):
    """Each spec under experiments/ runs its whole grid on digits (--quick), and every point has a value of
    every metric its tables show."""
    from discrete_vae.sweep import load_spec
    from discrete_vae.sweep.report import in_table, value_of

    out = tmp_path / "out"
    assert sweep(spec, out, "--quick") == 0
    summary = last_json(capsys)
    assert summary["states"]["done"] + summary["states"]["unselected"] == summary["points"] > 0
    assert sweep(spec, out, "--quick") == 0  # every point's recorded config is the spec's: nothing reruns
    assert last_json(capsys)["ran"] == 0
    loaded = load_spec(spec, quick=True)
    records = json.loads((out / "results.json").read_text())
    for table in loaded.tables:
        for record in filter(lambda r: in_table(loaded, table, r), records):
            for metric in table.metrics:
                assert value_of(record, metric, loaded) is not None, (record["point"], metric)
    assert (out / "table.md").read_text().count("\n| ") >= len(loaded.tables)


def test_specs_are_shipped():
    assert {p.stem for p in SPECS} >= {"quality", "igr_compare", "sop", "dvae_family", "gumbel_rao_table",
                                       "disarm_setting"}
