"""Denormal floats are flushed to zero while the toolkit trains and evaluates, and only then: the calling
thread gets its own mode back, and ``DVAE_FLUSH_DENORMALS=0`` keeps IEEE denormals."""

from __future__ import annotations

import pytest
import torch

from discrete_vae import cli, sop, train
from discrete_vae.denormals import ENV, flush_denormals, flushed
from discrete_vae.sweep import runner

pytestmark = pytest.mark.skipif(not torch.set_flush_denormal(False), reason="this CPU has no flush mode")


def test_the_probe_reads_the_mode():
    torch.set_flush_denormal(True)
    assert flushed()
    assert float(torch.full((1,), 1e-30) * 1e-10) == 0.0
    torch.set_flush_denormal(False)
    assert not flushed()
    assert float(torch.full((1,), 1e-30) * 1e-10) > 0.0  # 1e-40 is a float32 denormal


@pytest.mark.parametrize("before", [False, True])
def test_flushed_inside_and_the_mode_restored_after(before):
    torch.set_flush_denormal(before)
    try:
        with flush_denormals():
            assert flushed()
        assert flushed() == before
        with pytest.raises(RuntimeError), flush_denormals():
            raise RuntimeError
        assert flushed() == before
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.parametrize("value", ["0", "off", "False"])
def test_the_environment_keeps_ieee_denormals(monkeypatch, value):
    monkeypatch.setenv(ENV, value)
    with flush_denormals():
        assert not flushed()


def test_every_entry_point_computes_flushed(monkeypatch, tmp_path):
    """``dvae`` (every command), ``train``, ``sop.train`` and a sweep job run flushed, and give the thread
    its mode back."""
    seen = {}

    def record(name, result=None):
        def fake(*args, **kwargs):
            seen[name] = flushed()
            return result
        return fake

    monkeypatch.setitem(cli.COMMANDS, "list", record("cli"))
    assert cli.main(["list"]) == 0
    monkeypatch.setattr(train, "_train", record("train"))
    train.train(train.TrainConfig.of(dataset="digits", out=str(tmp_path / "train")))
    monkeypatch.setattr(sop, "_train", record("sop"))
    sop.train(sop.SOPConfig.of(dataset="digits", out=str(tmp_path / "sop")))
    def job(point, lock):
        lock.release()
        return record("sweep", {"state": "done"})()

    monkeypatch.setattr(runner, "_run_point", job)
    assert runner.run_point(runner.PointJob(tmp_path / "point", {}, (), threads=1)) == {"state": "done"}
    assert seen == {"cli": True, "train": True, "sop": True, "sweep": True}
    assert not flushed()
