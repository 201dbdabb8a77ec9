"""Checkpoints: one safetensors file each, written atomically, loaded without executing code.

Tensors (model, optimizer moments, RNG states) go into the safetensors body; everything else
(step, schedule, data order, config, optimizer hyper-parameters) into its JSON metadata, beside a
SHA-256 checksum of both that loading verifies (a flipped byte is an error naming the file, never a
silently different model). A file is written to a temporary name in the same folder, flushed, fsynced
and renamed over the old one, so a ``kill -9`` at any moment leaves either the old checkpoint or the new
one, never half of one; it gets the permissions of any file the process creates (``0666 & ~umask``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, save

from .errors import UserError
from .upgrade import upgrade_checkpoint

_TENSOR = "__tensor__"


def flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Move every tensor of a nested dict/list into ``tensors``; return the JSON-able skeleton."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {_TENSOR: prefix}
    if isinstance(obj, dict):
        return {str(k): flatten(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def unflatten(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten`."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {_TENSOR}:
            return tensors[skeleton[_TENSOR]]
        return {k: unflatten(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unflatten(v, tensors) for v in skeleton]
    return skeleton


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (else set and restored)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    The file gets the mode a plain ``open(path, "w")`` would give it (``mkstemp`` alone gives 0600).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def checksum(skeleton: str, tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the JSON skeleton and every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256(skeleton.encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Save a nested dict of tensors and JSON-able values atomically as one safetensors file."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten(state, "s", tensors)
    storages: set[int] = set()
    for name, tensor in tensors.items():  # safetensors refuses tensors that share memory
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in storages:
            tensors[name] = tensor.clone()
        elif tensor.numel():
            storages.add(ptr)
    text = json.dumps(skeleton)
    metadata = {"state": text, "sha256": checksum(text, tensors)}
    atomic_write_bytes(Path(path), save(tensors, metadata=metadata))


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (no code is executed), verifying its checksum.

    Checkpoints written before checksums were added (no ``sha256`` entry) load unverified; the config and
    model state of one written by an earlier version come back in today's form
    (:func:`~discrete_vae.upgrade.upgrade_checkpoint`).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read checkpoint {path}: {e.strerror}") from None
    try:
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
        skeleton = json.loads(metadata["state"])
    except RecursionError:
        raise invalid(path, "its state is nested too deeply") from None
    except (SafetensorError, KeyError, ValueError, TypeError, AttributeError) as e:
        raise UserError(
            f"checkpoint {path} is corrupt or not a discrete-vae checkpoint ({one_line(e)})"
        ) from None
    if "sha256" in metadata and checksum(metadata["state"], tensors) != metadata["sha256"]:
        raise UserError(f"checkpoint {path} is corrupt: its contents do not match their SHA-256 checksum")
    if str(device) != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    try:
        state = unflatten(skeleton, tensors)
    except (KeyError, TypeError) as e:
        raise invalid(path, f"its state names a tensor it does not hold ({one_line(e)})") from None
    return upgrade_checkpoint(state)


def peek_state(path: Path) -> dict[str, Any] | None:
    """The entries of a checkpoint's state that are not tensors (tensors as ``{"__tensor__": name}``), read
    from its header alone and unverified: for a glance such as a sweep's ``--status``, never for a resume.
    None if the file is missing or is not a checkpoint."""
    try:
        with safe_open(str(path), framework="pt") as f:
            state = json.loads((f.metadata() or {})["state"])
    except (OSError, SafetensorError, KeyError, ValueError, TypeError):
        return None
    return state if isinstance(state, dict) else None


STEP_MAX = 2**53  # beyond any run; a larger step (or a negative one) is a crafted or damaged file
KINDS = {int: "an integer", float: "a number", dict: "a mapping", list: "a list", torch.Tensor: "a tensor"}


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def invalid(path: Path, what: str) -> UserError:
    """The one-line error of a checkpoint whose state is not what dvae writes."""
    return UserError(f"checkpoint {path} does not hold a state dvae wrote: {what}")


def _is(value: Any, kind: type) -> bool:
    if isinstance(value, bool):  # True is an int to Python, never to a checkpoint
        return False
    return isinstance(value, int | float) if kind is float else isinstance(value, kind)


def check_entries(path: Path, state: Any, kinds: dict[str, type], where: str = "") -> None:
    """``state`` is a mapping holding every key of ``kinds`` with a value of that type (``int``: an integer,
    not a boolean; ``float``: any number); else one :class:`UserError` line naming the key."""
    if not isinstance(state, dict):
        raise invalid(path, f"{where or 'its state'} is a {type(state).__name__}, not a mapping")
    missing = [k for k in kinds if k not in state]
    if missing:
        raise invalid(path, f"{where}{' ' if where else ''}lacks {', '.join(missing)}")
    for key, kind in kinds.items():
        if not _is(state[key], kind):
            shown = one_line(repr(state[key]))[:40]
            raise invalid(path, f"{where}{'.' if where else ''}{key} is {shown}, not {KINDS[kind]}")


def check_range(path: Path, name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise invalid(path, f"{name} {value} is out of range ({low} to {high})")


def check_model_state(path: Path, state: Any, resumable: bool = False) -> None:
    """The types and ranges of what evaluation (and, ``resumable``, the training loop) reads from a
    checkpoint of ``dvae train``: one :class:`UserError` line naming the file and the entry."""
    check_entries(path, state, {"model": dict, "config": dict, "step": int, "data_dim": int})
    check_range(path, "step", state["step"], 0, STEP_MAX)
    check_range(path, "data_dim", state["data_dim"], 1, 2**31)
    check_entries(path, state["model"], dict.fromkeys(state["model"], torch.Tensor), "model")
    if not resumable:
        return
    check_entries(path, state, {"optimizer": dict, "rng": dict, "data": dict, "best": dict})
    check_entries(path, state["best"], {"step": int, "nll": float}, "best")
    check_range(path, "best.step", state["best"]["step"], -1, state["step"])
    check_entries(path, state["data"], {"epoch": int, "position": int, "seed": int}, "data")


def load_module_state(path: Path, module: torch.nn.Module, tensors: dict[str, torch.Tensor],
                      built: str = "the run's config.yaml") -> None:
    """``module.load_state_dict(tensors)``, or one :class:`UserError` line naming the tensors whose shapes
    differ from those of the module ``built`` from (and the ones missing or unexpected)."""
    try:
        module.load_state_dict(tensors)
    except RuntimeError as e:
        raise UserError(f"{path} does not fit {built}: {state_dict_mismatch(str(e))}") from None


def state_dict_mismatch(message: str, shown: int = 3) -> str:
    """torch's many-line ``load_state_dict`` error as one line: each tensor, its shape in the checkpoint and
    in the module (the first ``shown`` of each kind)."""
    import re

    size = re.findall(r"size mismatch for ([\w.]+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) "
                      r"from checkpoint, the shape in current model is torch\.Size\(\[([^\]]*)\]\)", message)
    def shape(text: str) -> tuple[int, ...]:
        return tuple(int(n) for n in text.split(",") if n.strip())

    parts = [f"{name} is {shape(a)} in the checkpoint, {shape(b)} in the model"
             for name, a, b in size[:shown]]
    if len(size) > shown:
        more = len(size) - shown
        parts.append(f"{more} more tensor{'s' if more > 1 else ''} of another shape")
    for kind in ("Missing", "Unexpected"):
        found = re.search(rf"{kind} key\(s\) in state_dict: (.*?)\.\s*(?:\n|$)", message)
        if found:
            names = [n.strip().strip('"') for n in found.group(1).split(",")]
            parts.append(f"{kind.lower()} {', '.join(names[:shown])}"
                         + (f" and {len(names) - shown} more" if len(names) > shown else ""))
    return "; ".join(parts) if parts else one_line(message)


def finite_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> bool:
    """Whether every parameter, buffer and optimizer-state tensor is finite (a checkpoint worth keeping)."""
    tensors = [*model.state_dict().values()]
    tensors += [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def run_checkpoint(run_dir: Path, which: str = "best", what: str = "run folder") -> Path:
    """The ``best`` (else ``last``) or ``last`` checkpoint of a run folder; a one-line error if none.

    A run folder holds ``config.yaml`` beside ``last.safetensors`` / ``best.safetensors``.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a {what} (no config.yaml)")
    best, last = run_dir / "best.safetensors", run_dir / "last.safetensors"
    path = best if which == "best" and best.is_file() else last
    if not path.is_file():
        raise UserError(f"{run_dir} holds no checkpoint yet ({best.name} or {last.name})")
    return path


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The random-number state a resumed run needs: the CPU generator's, and ``device``'s if CUDA."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, torch.Tensor], device: torch.device) -> None:
    """Put back what :func:`rng_state` saved (the CUDA state only on a CUDA device)."""
    torch.set_rng_state(state["cpu"].cpu())
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load an optimizer state read back from a checkpoint (whose per-parameter keys are strings)."""
    state = {**state, "state": {int(k): v for k, v in state["state"].items()}}
    optimizer.load_state_dict(state)


def remove_partial_writes(run_dir: Path) -> None:
    """Delete the temporary files a kill left in the middle of :func:`atomic_write_bytes`."""
    for stale in Path(run_dir).glob(".*.safetensors.*.tmp"):
        stale.unlink(missing_ok=True)


def restore_training(
    path: Path,
    state: dict[str, Any],
    modules: dict[str, Any],
    device: torch.device,
    rank: int | None = None,
    expect: dict[str, Any] | None = None,
) -> None:
    """Load a resumable checkpoint's state into a freshly built training loop.

    ``modules`` maps the checkpoint's keys to what takes them: ``"model"`` (a module), ``"optimizer"``
    and ``"data"`` (a batch iterator); the RNG state goes back last (``rank`` picks this process's
    entry from a per-rank list). ``expect`` holds plain entries the checkpoint must match (such as the
    image shape, which no tensor shape catches). A checkpoint that does not fit the loop built from the
    run's config (edited by hand, written by another version) is one :class:`UserError` line naming the
    file.
    """
    for key, value in (expect or {}).items():
        if state.get(key) != value:
            raise UserError(f"{path} does not fit the run's config.yaml: {key} {state.get(key)} != {value}")
    try:
        for key, target in modules.items():
            if key == "optimizer":
                load_optimizer_state(target, state[key])
            elif isinstance(target, torch.nn.Module):
                load_module_state(path, target, state[key])
            else:
                target.load_state_dict(state[key])
        rng = state["rng"] if rank is None else {k: v[rank] for k, v in state["rng"].items()}
        restore_rng(rng, device)
    except (RuntimeError, KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} does not fit the run's config.yaml: {first}") from None
