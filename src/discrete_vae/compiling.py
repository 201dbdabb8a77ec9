"""The training step through ``torch.compile``: ``--compile auto|on|off``.

What is compiled is one function per step: the forward pass, the estimator's surrogate and the loss
(Inductor compiles their backward pass with them, through AOTAutograd); the fused AdamW step and an RBM
prior's sampler stay eager. Values that change during a run (the scheduled temperature, the KL weight)
enter it as 0-dimensional tensors, a learned temperature is a parameter, the learning rate lives in
the optimizer, and every batch has the same shape, so one run compiles once (``dynamic=False``,
``fullgraph=True``). On CUDA the step runs as CUDA graphs (what ``mode="reduce-overhead"`` sets). Random
numbers come from torch's generator as in eager mode (Inductor's ``fallback_random``), so a compiled run
follows the eager run of its seed to float rounding.

``auto`` compiles where it can pay: on a GPU, and on CPUs with AVX-512 or bfloat16 matrix units, for
runs of at least :data:`BREAK_EVEN` steps. On an AVX2-only CPU the compiled step of the default model
measured no faster than the eager one (``python bench/compile_speed.py``: 0.85-1.36x per round; its
six matrix products are three quarters of the step, and Inductor calls the same GEMMs), so ``auto``
stays eager there and says so. ``on`` compiles regardless; a step that cannot be compiled (no C++
compiler, a graph break) falls back to eager with one line saying why.

Compiled kernels are cached on disk (Inductor's FX-graph and AOTAutograd caches) under
``$TORCHINDUCTOR_CACHE_DIR`` when set, else ``~/.cache/discrete-vae/inductor``, shared by every run of
the machine's user: a sweep's jobs compile the step once. A checkpoint holds no trace of the mode (a
compiled run resumes eagerly and the other way round); within a mode a resumed run is exact.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .checkpoint import restore_rng, rng_state
from .runs import note

COMPILE_MODES = ("auto", "on", "off")
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
# steps from which `auto` compiles: a cold compile of the default step took 18-23 s on an idle machine
# (bench/compile_speed.py); saving 30 % of an 8 ms step repays it after ~10,000 steps; twice that here
BREAK_EVEN = 20_000
FAST_CPU = ("AVX512", "AVX512_BF16", "AMX", "SVE256")  # torch.backends.cpu.get_cpu_capability() values


# as set before this module is imported: torch sets the variable to its own default once Inductor is imported
USER_CACHE = os.environ.get(CACHE_ENV)


def cache_dir() -> Path:
    """Where Inductor keeps compiled kernels: ``$TORCHINDUCTOR_CACHE_DIR`` as the user set it, else
    ``~/.cache/discrete-vae/inductor`` (set for this process, so that its compile workers agree)."""
    os.environ[CACHE_ENV] = USER_CACHE or str(Path.home() / ".cache" / "discrete-vae" / "inductor")
    return Path(os.environ[CACHE_ENV])


def cxx_compiler() -> str | None:
    """The C++ compiler Inductor's CPU kernels would be built with, or None if there is none."""
    cache_dir()  # before Inductor is imported, which sets its own default
    from torch._inductor import config

    names = config.cpp.cxx if isinstance(config.cpp.cxx, (list, tuple)) else (config.cpp.cxx,)
    names = [os.environ.get("CXX") if n is None else n for n in names]  # None: $CXX, as Inductor reads it
    return next((path for n in names if n and (path := shutil.which(n))), None)


def should_compile(mode: str, device: torch.device, steps: int, world: int, command: str) -> bool:
    """Whether to compile a run of ``steps`` steps on ``device`` (with ``world`` processes); for ``auto``
    that stays eager, or a step that cannot be compiled, one line on stderr saying why."""
    if mode == "off" or (mode == "auto" and steps < BREAK_EVEN):
        return False  # the usual short run: silently eager (and without importing Inductor, ~3 s)
    reason = None
    if world > 1:
        reason = "under torchrun (one process per rank) the step runs eagerly"
    elif device.type not in ("cpu", "cuda"):
        reason = f"compiling runs on the CPU or CUDA, not {device.type}"
    elif mode == "auto" and device.type == "cpu" and torch.backends.cpu.get_cpu_capability() not in FAST_CPU:
        capability = torch.backends.cpu.get_cpu_capability()
        reason = (f"this CPU ({capability}) has no AVX-512 or bfloat16 matrix units, where the compiled step "
                  "measured no faster (python bench/compile_speed.py); --compile on compiles anyway")
    elif device.type == "cpu" and cxx_compiler() is None:
        reason = "no C++ compiler for Inductor's CPU kernels (install g++, or name one in $CXX)"
    if reason is None:
        cache_dir()
        return True
    note(f"{command}: not compiling the training step: {reason}")
    return False


class Step:
    """``fn`` (a step's forward, surrogate and loss), compiled or eager. The first compiled call that
    fails (no compiler, a graph break, an Inductor error) restores the RNG, says why in one line and
    runs ``fn`` eagerly from then on. ``tensors``: which arguments are Python numbers that change during
    a run, passed to the compiled function as 0-dimensional float32 tensors on ``device``."""

    def __init__(self, fn: Callable[..., Any], compiled: bool, device: torch.device, command: str,
                 tensors: tuple[int, ...] = ()):
        self.eager, self.device, self.command, self.tensors = fn, device, command, tensors
        self.compiled = compiled
        self.fn = fn
        self.untried = compiled
        # from the first compiled call to the second: tracing, compiling (or reading the cache) and the
        # whole first step, whose backward pass loads its compiled kernels on first use
        self.compile_seconds = 0.0
        self._first: float | None = None
        if compiled:
            cache_dir()
            # fallback_random: random numbers from torch's own generator, as eager draws them, so that a
            # compiled run follows the eager run of its seed (to float rounding) instead of Inductor's
            # stream; on CUDA, CUDA graphs (what mode="reduce-overhead" sets)
            cuda = {"triton.cudagraphs": True} if device.type == "cuda" else {}
            options = {"fallback_random": True, **cuda}
            self.fn = torch.compile(own_code(fn), dynamic=False, fullgraph=True, options=options)

    def __call__(self, *args: Any) -> Any:
        if not self.compiled:
            return self.fn(*args)
        given = args
        args = tuple(torch.tensor(a, dtype=torch.float32, device=self.device) if i in self.tensors else a
                     for i, a in enumerate(args))
        if not self.untried:
            if self._first is not None:
                self.compile_seconds, self._first = time.perf_counter() - self._first, None
            return self.fn(*args)
        rng = rng_state(self.device)
        note(f"{self.command}: compiling the training step (kernels cached in {cache_dir()}; --compile off "
             "to skip)")
        self._first = time.perf_counter()
        try:
            out = self.fn(*args)
        except Exception as e:  # noqa: BLE001 - any failure to compile means: run eagerly
            restore_rng(rng, self.device)
            note(f"{self.command}: compiling the training step failed ({why(e)}); training eagerly")
            self.fn, self.compiled = self.eager, False
            return self.eager(*given)
        self.untried = False
        self.compile_seconds = time.perf_counter() - self._first  # until a second call says more
        return out


def why(error: Exception) -> str:
    """One line from a failed compile: the error's first line and, where Dynamo names it, the last line of
    this package it was tracing."""
    text = str(error)
    cause = getattr(error, "inner_exception", None) or error.__cause__  # Inductor's, inside Dynamo's
    shown = cause if isinstance(cause, Exception) else error
    first = next((line.strip() for line in str(shown).splitlines() if line.strip()), "")[:160]
    where = re.findall(r'File "[^"]*?discrete_vae/([^"]+)", line (\d+)', text)
    return f"{type(shown).__name__}: {first}" + (f", at {where[-1][0]}:{where[-1][1]}" if where else "")


def own_code(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with a code object of its own. Dynamo keeps its compiled graphs on the code object, guarded on
    the closure's objects, and stops compiling a code object after a few graphs: every run's step is the
    same method of its task (:meth:`~discrete_vae.loop.Task.losses`), so without a copy the ninth compiled
    run of one process (a loop of runs, a benchmark's runners) would fall back to eager. A bound method
    gets a copy of its function, bound to the same object."""
    if isinstance(fn, types.MethodType):
        return types.MethodType(own_code(fn.__func__), fn.__self__)
    if not isinstance(fn, types.FunctionType):
        return fn
    copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__,
                              fn.__closure__)
    copy.__kwdefaults__, copy.__qualname__ = fn.__kwdefaults__, fn.__qualname__
    return copy
