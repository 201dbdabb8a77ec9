"""Run folders of earlier versions: the one place that knows their forms.

A run folder's config (its ``config.yaml``, and the ``config`` entry of each checkpoint) and the model state
of its checkpoints are read through here, so that the rest of the package sees only today's forms:

- ``samples`` was the name of ``k`` (relaxed samples per example in the training objective), in the configs
  of ``dvae train`` and ``dvae sop train`` alike.
- Before posteriors had options of their own, every posterior's options were fields of the training config,
  and every ``config.yaml`` of that time holds them all (:data:`OLD_POSTERIOR_FIELDS`, with their defaults
  then). One at that default which neither the posterior nor the estimator in force takes is dropped; any
  other is kept, for the config's checks to reject as they reject any option given to the wrong posterior.
- Before priors had options of their own, the RBM's sampler and log Z settings were fields of the training
  config, held by every ``config.yaml`` of that time (:data:`OLD_PRIOR_FIELDS`). One at its default then, or
  in the config of a prior that does not take it (it was ignored), is dropped; any other is kept, for the
  config to route to the prior's options.
- Before posteriors were their own axis, the model named its posterior ``family``: the tensors of those
  checkpoints are ``family.*``, today ``posterior.*``.

- Before configs had sections, ``config.yaml`` held every option flat (``lr: 0.001``, not ``optim: {lr:
  0.001}``); the configs read either form (:meth:`~discrete_vae.options.Sectioned.flat_values`), so a flat
  mapping is today's form too, once the changes above are made.

:func:`upgrade_config` turns a stored config mapping into today's form; :func:`upgrade_checkpoint`, which
:func:`~discrete_vae.checkpoint.load_checkpoint` applies to every checkpoint it reads, upgrades a
checkpoint's config and model state. A mapping already in today's form comes back unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError

# options that were fields of the training config before posteriors had options of their own, with their
# defaults then
OLD_POSTERIOR_FIELDS = {"delta": 1.0, "prior_scale": 1.0, "sb_threshold": 0.99, "sb_percentile": 70.0,
                        "flow_layers": 2, "mc_samples": 1000, "levels": 1, "beta": None,
                        "prior_temperature": None}
# the RBM prior's options, fields of the training config before priors had options of their own (every
# config.yaml of that time holds them), with their defaults then
OLD_PRIOR_FIELDS = {"sampler": "pcd", "chains": 1000, "sweeps": 40, "log_z_betas": 1000,
                    "log_z_samples": 1024}
OLD_NAMES = {"samples": "k"}  # an option's old name -> today's
OLD_MODEL_PREFIXES = {"family.": "posterior."}  # a model tensor's old prefix -> today's


def upgrade_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """A stored config mapping (``dvae train``'s or ``dvae sop train``'s) of any earlier version in today's
    form: old option names renamed (unless today's name is there too), the old posterior fields at their
    old defaults dropped where the posterior and estimator in force do not take them, the old prior fields
    at their old defaults or where the prior in force does not take them."""
    values = {OLD_NAMES[key] if key in OLD_NAMES and OLD_NAMES[key] not in values else key: value
              for key, value in values.items()}
    defaults = [key for key, default in OLD_POSTERIOR_FIELDS.items()
                if key in values and _plain(values[key]) and values[key] == default]
    if defaults and (taken := _options_in_force(values)) is not None:
        for key in defaults:
            if key not in taken:
                del values[key]
    old_prior = [key for key in OLD_PRIOR_FIELDS if key in values and "prior_options" not in values]
    if old_prior and (taken := _options_in_force(values)) is not None:
        for key in old_prior:  # at its default, or of a prior that never used it: as if not given
            if key not in taken or values[key] == OLD_PRIOR_FIELDS[key]:
                del values[key]
    return values


def upgrade_model_state(tensors: Mapping[str, Any]) -> dict[str, Any]:
    """A model's state dict from a checkpoint of any earlier version with today's tensor names."""
    return {_renamed(key): value for key, value in tensors.items()}


def upgrade_checkpoint(state: Any) -> Any:
    """A checkpoint's state (as :func:`~discrete_vae.checkpoint.load_checkpoint` reads it) with its
    ``config`` and its ``model`` state in today's form; what is not a mapping is left for the checks of
    whoever reads it."""
    if not isinstance(state, dict):
        return state
    state = dict(state)
    if isinstance(state.get("config"), dict):
        state["config"] = upgrade_config(state["config"])
    if isinstance(state.get("model"), dict):
        state["model"] = upgrade_model_state(state["model"])
    return state


def _renamed(key: str) -> str:
    for old, new in OLD_MODEL_PREFIXES.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def _plain(value: Any) -> bool:
    """A value a config file holds for a number option (never a tensor, whose ``==`` is elementwise)."""
    return value is None or isinstance(value, bool | int | float)


def _options_in_force(values: dict[str, Any]) -> set[str] | None:
    """The options of the posterior, estimator and prior that ``values`` choose; None where it names one that
    does not exist (the config's checks say which)."""
    from .config import methods_of, options_of

    try:
        return set().union(*options_of(methods_of(values)).values())
    except (ConfigError, TypeError):
        return None


def upgrade_run_state(state: dict[str, Any], run_dir: Path, total_of: Any) -> dict[str, Any]:
    """A resumable checkpoint's run state (:mod:`discrete_vae.run_state`) of an earlier version in today's
    form.

    - ``dvae train`` before the shared loop: written after its step's lines (``logged``), no log offset (the
      lines up to its step are kept), ``sums`` without their count, one RNG state per rank already, no best
      model (``best.safetensors`` is kept as it is); finished when its step is its config's total
      (``total_of(config dict)``).
    - ``dvae sop train`` before the shared loop: one RNG state, ``sums`` = (loss sum, count), finished when a
      test line follows its log offset.
    """
    import torch

    from .runs import METRICS, read_metrics

    state = dict(state)
    if "log_bytes" not in state:  # dvae train
        path = run_dir / METRICS
        kept = read_metrics(path, up_to=int(state["step"])) if path.is_file() else []
        state["log_bytes"] = len("".join(line + "\n" for line in kept).encode())
        sums = state.get("sums", torch.zeros(3, dtype=torch.float64))
        count = 0 if not bool(sums.any()) else int(state["step"]) % int(state["config"].get("log_every", 1))
        state.update(sums=sums, count=count, logged=True, best_model=None,
                     finished=int(state["step"]) == total_of(state["config"]))
    elif "count" not in state:  # dvae sop train
        sums = state["sums"]
        state.update(sums=sums[:1].clone(), count=int(sums[1]), rng={k: [v] for k, v in state["rng"].items()},
                     finished=int(state["step"]) == total_of(state["config"]) and _test_line_after(
                         run_dir / METRICS, int(state["log_bytes"])))
    return state


def _test_line_after(path: Path, offset: int) -> bool:
    with path.open("rb") as f:
        f.seek(offset)
        tail = f.read().decode(errors="replace").splitlines()
    for line in tail:
        try:
            if json.loads(line).get("split") == "test":
                return True
        except (ValueError, AttributeError):
            continue
    return False
