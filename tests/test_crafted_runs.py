"""Run folders crafted or edited by hand: checkpoints with a valid checksum around a state dvae never writes,
a config that names a data folder elsewhere, symbolic links out of the folder. Each is one line and exit
status 2 through the ``dvae`` command line, and nothing is written or created outside the run folder."""

from __future__ import annotations

import json
import shutil
import urllib.error
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from safetensors.torch import save

from cli_helpers import dvae
from discrete_vae.checkpoint import atomic_write_bytes, checksum, flatten, load_checkpoint, save_checkpoint
from discrete_vae.config import TrainConfig
from discrete_vae.data import download as download_mod
from discrete_vae.errors import DataError
from discrete_vae.recipe import run_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def copy_run(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def one_line(err: str) -> bool:
    return len(err.strip().splitlines()) == 1 and "Traceback" not in err


def craft(path: Path, change: Callable[[dict], object]) -> None:
    """Rewrite the checkpoint at ``path`` with ``change`` applied to its state, under a valid checksum."""
    state = load_checkpoint(path)
    change(state)
    save_checkpoint(path, state)


RESUME = ["train", "--resume", "{run}", "--steps", "320"]
EVAL = ["eval", "{run}", "--samples", "2", "--limit", "5"]
CRAFTED = {
    "no data_dim": (lambda s: s.pop("data_dim"), "lacks data_dim"),
    "step abc": (lambda s: s.update(step="abc"), "step is 'abc', not an integer"),
    "step true": (lambda s: s.update(step=True), "step is True, not an integer"),
    "step -50": (lambda s: s.update(step=-50), "step -50 is out of range (0 to"),
    "data_dim 0": (lambda s: s.update(data_dim=0), "data_dim 0 is out of range"),
    "config a list": (lambda s: s.update(config=[1]), "config is [1], not a mapping"),
    "model tensor a number": (lambda s: s["model"].update({"prior.logits": 3}), "model.prior.logits is 3"),
}
RESUME_ONLY = {
    "best x": (lambda s: s.update(best="x"), "best is 'x', not a mapping"),
    "best nll abc": (lambda s: s["best"].update(nll="abc"), "best.nll is 'abc', not a number"),
    "best after step": (lambda s: s["best"].update(step=400), "best.step 400 is out of range (-1 to 300)"),
    "data position x": (lambda s: s["data"].update(position="x"), "data.position is 'x', not an integer"),
    "sums of 2": (lambda s: s.update(sums=s["sums"][:2]), "sums is not a tensor of 3 partial sums"),
}


@pytest.mark.parametrize("case", [*((c, EVAL) for c in CRAFTED), *((c, RESUME) for c in CRAFTED),
                                  *((c, RESUME) for c in RESUME_ONLY)], ids=lambda c: f"{c[1][0]} {c[0]}")
def test_a_crafted_state_is_one_line_naming_the_entry(case, run, tmp_path, capsys):
    name, argv = case
    change, message = {**CRAFTED, **RESUME_ONLY}[name]
    copy = copy_run(run, tmp_path)
    for which in ("best", "last") if name in CRAFTED else ("last",):  # best.safetensors holds no "best"
        craft(copy / f"{which}.safetensors", change)
    metrics = (copy / "metrics.jsonl").read_bytes()
    result = dvae(capsys, *(a.format(run=copy) for a in argv))
    assert result.rc == 2 and one_line(result.err), result
    assert "does not hold a state dvae wrote" in result.err and message in result.err, result.err
    assert (copy / "metrics.jsonl").read_bytes() == metrics  # nothing trained


def test_a_state_nested_50000_deep_is_one_line(run, tmp_path, capsys):
    copy = copy_run(run, tmp_path)
    tensors: dict = {}
    text = json.dumps(flatten(load_checkpoint(copy / "last.safetensors"), "s", tensors))
    text = text[:-1] + ', "x": ' + "[" * 50_000 + "]" * 50_000 + "}"
    tensors = {k: v.clone() for k, v in tensors.items()}
    atomic_write_bytes(copy / "last.safetensors",
                       save(tensors, metadata={"state": text, "sha256": checksum(text, tensors)}))
    result = dvae(capsys, *RESUME[:2], copy)
    assert result.rc == 2 and one_line(result.err) and "nested too deeply" in result.err, result


def test_tensors_of_another_latent_are_named_with_their_shapes(run, tmp_path, capsys):
    copy = copy_run(run, tmp_path)  # RUN_ARGS: digits-quick, latent 8x4, hidden 32
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["model"]["latent"] = "8x5"
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    result = dvae(capsys, "train", "--resume", copy)
    assert result.rc == 2 and one_line(result.err), result
    assert (f"{copy / 'last.safetensors'} does not fit the run's config.yaml: prior.logits is (8, 4) in "
            "the checkpoint, (8, 5) in the model; encoder.2.weight is (32, 32) in the checkpoint, (40, 32) "
            "in the model") in result.err
    craft(copy / "best.safetensors", lambda s: s["config"]["model"].update(latent="8x5"))
    result = dvae(capsys, "eval", copy, "--samples", "2")
    assert result.rc == 2 and one_line(result.err), result
    assert "does not fit the model its config builds (latent 8x5): prior.logits is (8, 4)" in result.err


def test_eval_never_creates_or_downloads_into_the_data_folder_a_run_names(run, tmp_path, capsys,
                                                                          monkeypatch):
    copy, elsewhere = copy_run(run, tmp_path), tmp_path / "somewhere" / "else"
    for which in ("best", "last"):
        craft(copy / f"{which}.safetensors",
              lambda s: s["config"]["run"].update(dataset="binarized_mnist", data_dir=str(elsewhere)))
    fetched: list[Path] = []

    def offline(url, dest, timeout=None):
        fetched.append(Path(dest))
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(download_mod, "fetch_url", offline)
    monkeypatch.setenv("DVAE_DATA_DIR", str(tmp_path / "env"))
    result = dvae(capsys, "eval", copy, "--samples", "2")
    assert result.rc == 2 and one_line(result.err), result
    assert f"files not found in {tmp_path / 'env' / 'binarized_mnist'}" in result.err
    assert not (tmp_path / "somewhere").exists()
    assert fetched and all(tmp_path / "env" in dest.parents for dest in fetched)


def test_a_dataset_of_another_image_size_than_the_model_is_one_line():
    with pytest.raises(DataError, match="digits has 64 pixels per image here, the run's model 784"):
        run_dataset(TrainConfig.of(dataset="digits").run, None, 784)


def test_resume_never_writes_through_a_symbolic_link(run, tmp_path, capsys):
    copy, outside = copy_run(run, tmp_path), tmp_path / "outside"
    shutil.move(copy / "images", outside)
    (copy / "images").symlink_to(outside)
    before = sorted(p.name for p in outside.iterdir())
    result = dvae(capsys, "train", "--resume", copy, "--steps", "320")
    assert result.rc == 2 and one_line(result.err), result
    assert f"{copy / 'images'} is a symbolic link (to {outside})" in result.err
    assert sorted(p.name for p in outside.iterdir()) == before
    (copy / "images").unlink()
    shutil.move(outside, copy / "images")
    (copy / "images" / "samples_0000400.png").symlink_to(tmp_path / "elsewhere.png")  # one level down
    result = dvae(capsys, "train", "--resume", copy, "--steps", "320")
    assert result.rc == 2 and "samples_0000400.png is a symbolic link" in result.err, result
    assert not (tmp_path / "elsewhere.png").exists()


def test_a_fresh_run_and_gradients_never_follow_a_link_out(run, tmp_path, capsys):
    folder = tmp_path / "fresh"
    folder.mkdir()
    (folder / ".lock").symlink_to(tmp_path / "outside.lock")
    result = dvae(capsys, "train", "--preset", "digits-quick", "--steps", "2", "--out", folder)
    assert result.rc == 2 and one_line(result.err) and "symbolic link" in result.err, result
    assert not (tmp_path / "outside.lock").exists()
    copy = copy_run(run, tmp_path)
    (copy / "gradients").symlink_to(tmp_path / "outside", target_is_directory=True)
    result = dvae(capsys, "gradients", copy, "--draws", "2", "--device", "cpu")
    assert result.rc == 2 and one_line(result.err) and "gradients is a symbolic link" in result.err, result
    assert not (tmp_path / "outside").exists()
