"""Shared helpers of the command-line tests: run ``dvae`` in-process and read its JSON output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
from PIL import Image

from discrete_vae.cli import main

# digits-quick with a small network, 1-thread CPU; every training run of the CLI tests starts from this.
FAST = ["--preset", "digits-quick", "--hidden", "32", "--val-samples", "5", "--device", "cpu"]
# The shared run: 300 steps; checkpoints (125) fall between metrics lines (50) on purpose.
RUN_ARGS = [*FAST, "--steps", "300", "--eval-every", "100", "--checkpoint-every", "125"]
TIMEOUT_S = 120


def cli_command(*argv: object) -> list[str]:
    return [sys.executable, "-m", "discrete_vae.cli", *(str(a) for a in argv)]


def subprocess_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    # no progress lines in the tests' stderr, however slow the machine
    env.update(OMP_NUM_THREADS="1", DVAE_DATA_DIR=str(tmp_path / "data"), DVAE_PROGRESS_EVERY="1e9")
    return env


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
        return image.size


class Result(NamedTuple):
    rc: int
    out: str
    err: str


def dvae(capsys: pytest.CaptureFixture, *argv: object) -> Result:
    """``dvae ARGV`` in-process: exit status (argparse's SystemExit included), stdout, stderr."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return Result(rc, out, err)


def last_json(out: str) -> dict:
    """The last line of a command's stdout, parsed as JSON."""
    return json.loads(out.strip().splitlines()[-1])


def kill_when(victim: subprocess.Popen, ready: Callable[[], bool], timeout: float) -> None:
    """``kill -9`` the process ``victim`` as soon as ``ready()`` holds (it must still be running)."""
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert victim.poll() is None, (
                f"the run ended (status {victim.returncode}) before it could be killed: "
                f"raise --steps in this test\n{victim.stderr.read()}"
            )
            assert time.monotonic() < deadline, "no checkpoint within the time limit"
            time.sleep(0.01)
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(timeout) == -signal.SIGKILL, "the run finished before the kill"
    finally:
        if victim.poll() is None:
            victim.kill()
        victim.wait()
        victim.stderr.close()
