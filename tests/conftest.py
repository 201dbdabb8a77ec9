"""Fixtures shared by the command-line tests; under pytest-xdist (``-n 2``, the default of ``python -m
pytest``: one worker per core), each worker and the commands it starts use one thread."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from cli_helpers import RUN_ARGS
from discrete_vae.cli import main

if os.environ.get("PYTEST_XDIST_WORKER"):  # a worker beside another on a core of its own
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def no_progress_lines(monkeypatch):
    """No progress lines in stderr (they come every 30 s; a slow machine would add them to the one line
    of an error); the test of the lines sets its own cadence."""
    monkeypatch.setattr("discrete_vae.progress.EVERY_S", 1e9)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: faster on shared cores, and the same arithmetic in every run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished 300-step run (checkpoints at 125, 250, 300); tests must not modify it (copy it first)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("shared") / "run"
    try:
        assert main(["train", *RUN_ARGS, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out
