"""The run folder: one writer at a time, logs that stay consistent with the checkpoint, strict JSON.

A run folder holds ``config.yaml``, ``metrics.jsonl``, TensorBoard events under ``tb/``, PNG grids under
``images/``, ``last.safetensors`` / ``best.safetensors`` and ``overrides.jsonl`` (the options a resume
changed, with the step from which each took effect). The guarantees:

- **One writer.** :class:`RunLock` holds an ``flock`` on ``.lock`` for the whole run; it dies with its
  process, so a ``kill -9`` never leaves a stale lock, and a second writer gets one line.
- **Logs match the checkpoint.** On resume, :class:`RunLog` keeps the ``metrics.jsonl`` lines up to the
  checkpoint's step (a torn last line, from a power loss or a full disk, is dropped) and purges the
  TensorBoard events after it.
- **No stale logs.** A fresh run into a folder that holds logs but no checkpoint (a run killed before its
  first checkpoint) moves them aside into ``aborted-<time>/`` first, and says so.
- **Strict JSON.** Non-finite numbers are written as ``null``, named under ``non_finite``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_bytes, peek_state
from .errors import UserError

LAST, BEST, CONFIG, METRICS = "last.safetensors", "best.safetensors", "config.yaml", "metrics.jsonl"
OVERRIDES, LOCK = "overrides.jsonl", ".lock"
STALE = (CONFIG, METRICS, OVERRIDES, BEST, "tb", "images")  # what a run writes before its first checkpoint
WRITTEN = (LOCK, CONFIG, METRICS, OVERRIDES, LAST, BEST, "tb", "images", "gradients")  # dvae writes these


def strict(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None``; a dict gains ``non_finite``, which maps
    each such key to what the number was (``"nan"``, ``"inf"``, ``"-inf"``)."""
    if isinstance(value, dict):
        out = {k: strict(v) for k, v in value.items()}
        bad = {k: repr(v) for k, v in value.items() if isinstance(v, float) and not math.isfinite(v)}
        if bad:
            out["non_finite"] = {**out.get("non_finite", {}), **bad}
        return out
    if isinstance(value, list | tuple):
        return [strict(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value: Any) -> str:
    """Strict JSON (RFC 8259: no ``NaN`` or ``Infinity``) of ``value``, through :func:`strict`."""
    return json.dumps(strict(value), allow_nan=False)


def note(message: str) -> None:
    """One line for the user on stderr."""
    print(message, file=sys.stderr, flush=True)


class RunLock:
    """An exclusive ``flock`` on the empty file ``run_dir/.lock``, held until :meth:`release` or the
    process ends (the kernel drops it with the process: a ``kill -9`` leaves no stale lock)."""

    def __init__(self, run_dir: Path, made_dirs: list[Path] | None = None):
        import fcntl

        self.path = Path(run_dir) / LOCK
        self.made_dirs = made_dirs or []  # the folders a fresh start created, outermost first
        self.made_file = not self.path.exists()
        self.file = self.path.open("a")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise UserError(f"{run_dir} is in use by another dvae process; wait for it to finish or "
                            "stop it") from None

    def release(self) -> None:
        self.file.close()  # closing the descriptor drops the lock

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: Any) -> None:
        """Release at the end of a run; a start that failed before its first checkpoint is abandoned, so
        that it leaves no folder holding only ``.lock``."""
        if kind is not None and not (self.path.parent / LAST).exists():
            self.abandon()
        else:
            self.release()

    def abandon(self) -> None:
        """Release after a start that failed, removing what it created: ``.lock`` if this lock made it, then
        the folders :func:`make_run_dir` made, innermost first, as long as nothing else is in them."""
        if self.made_file:
            self.path.unlink(missing_ok=True)
        self.release()
        for folder in reversed(self.made_dirs):
            try:
                folder.rmdir()
            except OSError:  # not empty (the run wrote logs), or gone
                break


def refuse_links(run_dir: Path, names: tuple[str, ...] = WRITTEN) -> None:
    """One :class:`UserError` line if any of ``names`` in ``run_dir``, or anything under those that are
    folders, is a symbolic link: dvae writes only inside a run folder, never through a link out of it."""
    paths = [run_dir / name for name in names]
    for path in paths[:]:
        if path.is_dir() and not path.is_symlink():
            paths += [Path(root) / n for root, dirs, files in os.walk(path) for n in dirs + files]
    for path in paths:
        if path.is_symlink():
            raise UserError(f"{path} is a symbolic link (to {os.readlink(path)}); dvae writes only inside "
                            "the run folder: replace the link with a file or folder of its own")


def make_run_dir(run_dir: Path) -> list[Path]:
    """Create ``run_dir`` (and its parents), or one :class:`UserError` line saying why it cannot be; returns
    the folders it created, outermost first."""
    made = [p for p in (run_dir, *run_dir.parents) if not p.exists() and not p.is_symlink()][::-1]
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"cannot create the run folder {run_dir}: a file of that name exists") from None
    except OSError as e:
        raise UserError(f"cannot create the run folder {run_dir}: {e.strerror}") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise UserError(f"cannot write into the run folder {run_dir}: permission denied")
    return made


def open_new_run(run_dir: Path, what: str = "dvae train") -> RunLock:
    """Create and lock the folder of a fresh run; refuse a folder that holds a run; move stale logs aside.

    Raises a one-line :class:`UserError` when the folder holds a checkpoint (``--resume`` it instead), is
    in use, or cannot be written.
    """
    made = make_run_dir(run_dir)
    refuse_links(run_dir, (LOCK,))  # the rest is moved aside, links and all, before the run writes
    lock = RunLock(run_dir, made)
    try:
        if (run_dir / LAST).exists():
            raise UserError(f"{run_dir} already holds a run; use --resume {run_dir} or another --out")
        stale = [run_dir / name for name in STALE if (run_dir / name).exists()]
        stale += sorted(run_dir.glob("eval_*.json"))
        if stale:
            aside = run_dir / time.strftime("aborted-%Y%m%d-%H%M%S")
            aside.mkdir()
            for path in stale:
                path.rename(aside / path.name)
            note(f"{what}: {run_dir} held the logs of a run that never wrote a checkpoint; "
                 f"moved them to {aside} and started clean")
    except BaseException:
        lock.abandon()
        raise
    return lock


def check_resumable(run_dir: Path, what: str = "run") -> None:
    """A one-line :class:`UserError` unless ``run_dir`` holds ``config.yaml`` and ``last.safetensors``."""
    if not (Path(run_dir) / CONFIG).is_file() or not (Path(run_dir) / LAST).is_file():
        raise UserError(f"{run_dir} holds no resumable {what} ({CONFIG} and {LAST})")


def open_resumed_run(run_dir: Path, what: str = "run") -> RunLock:
    """Lock the folder of a run to resume (a one-line :class:`UserError` if it is in use)."""
    check_resumable(run_dir, what)
    refuse_links(Path(run_dir))
    try:
        return RunLock(run_dir)
    except OSError as e:
        raise UserError(f"cannot lock {run_dir} for writing: {e.strerror}") from None


def logged_step(run_dir: Path) -> int | None:
    """The step of the last whole record in ``run_dir``'s ``metrics.jsonl``, read from the file's end (a
    long run's log is not read whole); None before the first."""
    try:
        with (Path(run_dir) / METRICS).open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
            tail = f.read().decode(errors="replace")
    except OSError:
        return None
    for line in reversed(tail.split("\n")):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue  # blank, torn, or the cut first line of the tail
    return None


def timed_rate(run_dir: Path) -> float | None:
    """The steps per second of training so far, from the seconds and steps timed that ``run_dir``'s
    ``last.safetensors`` carries (its header only); None without them (no checkpoint yet, or one of a
    version that did not carry them)."""
    timed = (peek_state(Path(run_dir) / LAST) or {}).get("timed")
    try:
        seconds, steps = float(timed["seconds"]), int(timed["steps"])
    except (TypeError, KeyError, ValueError):
        return None
    return steps / seconds if steps > 0 and 0 < seconds < math.inf else None


def read_metrics(path: Path, up_to: int | None = None) -> list[str]:
    """The lines of ``metrics.jsonl`` (with ``step <= up_to`` if given); a torn last line is dropped.

    Any other line that is not a JSON object with a ``step`` is one :class:`UserError` line.
    """
    lines = path.read_text(errors="replace").split("\n")
    kept = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (ValueError, KeyError, TypeError):
            if all(not rest.strip() for rest in lines[number:]):  # the last line, cut short
                note(f"{path}: dropped the torn last line {number}")
                break
            raise UserError(f"{path} line {number} is not a metrics record; "
                            "the run folder is damaged") from None
        if up_to is None or step <= up_to:
            kept.append(line)
    return kept


def record_overrides(run_dir: Path, step: int, old: dict[str, Any], new: dict[str, Any],
                     keys: tuple[str, ...], what: str) -> None:
    """Append to ``overrides.jsonl`` each option in ``keys`` whose value a resume changed, and say so."""
    changed = [k for k in keys if old.get(k) != new.get(k)]
    if not changed:
        return
    path = run_dir / OVERRIDES
    seen = path.read_text().splitlines() if path.is_file() else []
    lines = [dumps({"step": step, "option": k, "from": old.get(k), "to": new.get(k)}) for k in changed]
    fresh = [line for line in lines if line not in seen]  # a resume repeated from the same checkpoint
    with path.open("a") as f:
        f.write("".join(line + "\n" for line in fresh))
    note(f"{what}: from step {step}: " + ", ".join(f"{k} {old.get(k)} -> {new.get(k)}" for k in changed)
         + f" (recorded in {path})")


class RunLog:
    """``metrics.jsonl`` and TensorBoard, written by one process (rank 0).

    On resume from a checkpoint at ``resume_step`` that found ``log_bytes`` bytes of ``metrics.jsonl``, the
    file is checked line by line (a torn last line is dropped, any other bad line is damage) and cut back to
    those bytes; TensorBoard discards the events after the step, or from it when its lines are to be
    written again (``replay``).
    """

    def __init__(self, run_dir: Path, resume_step: int | None, log_bytes: int = 0, replay: bool = False):
        from torch.utils.tensorboard import SummaryWriter

        self.path = run_dir / METRICS
        if resume_step is not None:
            kept = read_metrics(self.path) if self.path.exists() else []
            atomic_write_bytes(self.path, "".join(ln + "\n" for ln in kept).encode()[:log_bytes])
        self.file = self.path.open("ab")
        purge = None if resume_step is None else resume_step + (0 if replay else 1)
        self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=purge)

    def tell(self) -> int:
        """The bytes of ``metrics.jsonl`` written so far."""
        return self.file.tell()

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        self.file.write((dumps({"step": step, "split": split, **metrics}) + "\n").encode())
        self.file.flush()
        for name, value in metrics.items():
            if isinstance(value, float | int) and not isinstance(value, bool):
                self.writer.add_scalar(f"{split}/{name}", value, step)

    def image(self, tag: str, image: Any, step: int) -> None:
        """``image``: an (H, W) or (3, H, W) array of values in [0, 1]."""
        self.writer.add_image(tag, image, step, dataformats="HW" if image.ndim == 2 else "CHW")

    def close(self) -> None:
        self.file.close()
        self.writer.close()


def last_validation(run_dir: Path) -> dict[str, Any]:
    """The last ``valid`` record of ``metrics.jsonl`` (without ``step``/``split``), or ``{}``."""
    path = run_dir / METRICS
    if not path.is_file():
        return {}
    for line in reversed(read_metrics(path)):
        record = json.loads(line)
        if record.get("split") == "valid":
            return {k: v for k, v in record.items() if k not in ("step", "split")}
    return {}
