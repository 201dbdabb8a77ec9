"""What a long command tells the user while it runs, and how it stops on a signal.

- :class:`Progress`: a tqdm bar when stderr is a terminal, else one line every :data:`EVERY_S` seconds
  (``step 1200/2000 (60%), 133.1 steps/s, ETA 0:00:06, loss 92.31, tau 0.740, valid nll 95.12``; 30 s,
  or ``$DVAE_PROGRESS_EVERY`` seconds), or nothing with ``--no-progress``.
- :class:`GracefulStop`: SIGTERM (a cluster's preemption notice) and SIGINT (Ctrl-C) set a flag that the
  training loop reads after each step, so it can write a checkpoint and exit; a second signal of the same
  kind acts as usual.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

from tqdm import tqdm

EVERY_S = float(os.environ.get("DVAE_PROGRESS_EVERY", "30"))


def clock(seconds: float) -> str:
    """``h:mm:ss`` (a progress line's ETA; a sweep's time left)."""
    s = int(max(0.0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Progress:
    """Progress over ``total`` units from ``initial``; ``mode`` is ``"bar"``, ``"lines"`` or ``"off"``.

    ``update(done, **fields)`` sets the units done so far and the fields shown beside them.
    """

    def __init__(self, total: int, initial: int = 0, mode: str = "lines", desc: str = "", unit: str = "step",
                 every_s: float | None = None):
        self.total, self.initial, self.mode, self.desc, self.unit = total, initial, mode, desc, unit
        self.every_s = EVERY_S if every_s is None else every_s
        self.done = initial
        self.started = self.last = time.perf_counter()
        self.fields: dict[str, Any] = {}
        self.bar = tqdm(total=total, initial=initial, dynamic_ncols=True, unit=unit, desc=desc,
                        disable=mode != "bar", file=sys.stderr)

    @staticmethod
    def mode_for(progress: bool | None) -> str:
        """``--progress`` (bar), ``--no-progress`` (off), neither: a bar on a terminal, else lines."""
        if progress is None:
            return "bar" if sys.stderr.isatty() else "lines"
        return "bar" if progress else "off"

    def update(self, done: int, **fields: Any) -> None:
        self.fields.update({k: v for k, v in fields.items() if v is not None})
        if self.mode == "bar":
            self.bar.set_postfix({k: _fmt(v) for k, v in self.fields.items()}, refresh=False)
            self.bar.update(done - self.done)
        self.done = done
        now = time.perf_counter()
        if self.mode == "lines" and now - self.last >= self.every_s:
            self.last = now
            print(self.line(now), file=sys.stderr, flush=True)

    def line(self, now: float | None = None) -> str:
        """``desc unit d/total (p%), r units/s, ETA h:mm:ss, field value, ...``."""
        elapsed = (now or time.perf_counter()) - self.started
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        parts = [f"{self.unit} {self.done}/{self.total} ({100 * self.done / max(1, self.total):.0f}%)",
                 f"{rate:.1f} {self.unit}s/s", "ETA " + (clock(eta) if eta != float("inf") else "?")]
        parts += [f"{k.replace('_', ' ')} {_fmt(v)}" for k, v in self.fields.items()]
        return (f"{self.desc}: " if self.desc else "") + ", ".join(parts)

    def close(self) -> None:
        self.bar.close()


class Stopped(Exception):
    """The run stopped on a signal after writing a checkpoint; the CLI exits with 128 + the signal."""

    def __init__(self, signum: int, step: int, resume: str):
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} at step {step}; the checkpoint of step {step} is written; "
                         f"continue with: {resume}")
        self.signum = signum


class GracefulStop:
    """Within ``with GracefulStop() as stop:``, SIGTERM and SIGINT set ``stop.signum`` instead of ending the
    process (the first time; a second one gets the previous handler). Outside the main thread it does
    nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        self.signum = self.signum or signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
