"""Shared helpers of the command-line tests: run ``dvae`` in-process and read its JSON output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import NamedTuple

import pytest

from discrete_vae.cli import main


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
