"""Where a result was made: the date, the code (its git commit, or the package version outside a git
checkout) and the machine (CPU model and cores; the GPU where it ran on one). A sweep stores this with every
training and evaluation result, and its tables print it as data under each table."""

from __future__ import annotations

import datetime
import functools
import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def provenance(device: Any = "cpu") -> dict[str, str | None]:
    """``{"date", "commit", "cpu", "gpu"}`` now, for work done on ``device`` (a ``torch.device`` or name)."""
    gpu = None
    if str(device).startswith("cuda"):
        import torch

        gpu = torch.cuda.get_device_name(torch.device(device))
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), "commit": commit(),
            "cpu": cpu(), "gpu": gpu}


@functools.cache
def commit() -> str:
    """The git commit of this package's source (short hash, ``+modified`` when its tracked files differ
    from it), or ``discrete-vae VERSION`` when it is not installed from a git checkout. Read once per
    process: a long job calls it when it starts, so that its results name the code it loaded, not the
    commit the checkout has reached by the time they are written."""
    source = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True, timeout=10)
        if done.returncode:
            raise OSError(done.stderr.strip())
        return done.stdout.strip()

    try:
        head = git("rev-parse", "--short=7", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"discrete-vae {version('discrete-vae')}"
        except PackageNotFoundError:
            return "unknown"
    return head + ("+modified" if dirty else "")


@functools.cache
def cpu() -> str:
    """The CPU's model name and the cores this process may use, e.g. ``Intel(R) Xeon(R) ... (2 cores)``."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return f"{name} ({cores} core{'s' * (cores > 1)})"


def summary(records: list[dict[str, Any]]) -> str:
    """One line over results' ``provenance`` entries: dates (a range), commits, machines; each part says
    when the points differ."""
    found = [p for p in records if p]
    if not found:
        return "Provenance: not recorded."
    dates = sorted({p["date"] for p in found if p.get("date")})
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}" if dates else "not recorded"
    commits = sorted({p.get("commit") or "not recorded" for p in found})
    machines = sorted({f"{p['gpu']} GPU, {p.get('cpu')}" if p.get("gpu") else p.get("cpu") or "not recorded"
                       for p in found})
    return f"Date: {when} · Code commit: {', '.join(commits)} · Machine: {'; '.join(machines)}"
