"""Named setups: ``--preset NAME`` (the papers' training setups, a quick one on ``digits``) and
``--struct NAME`` (the DVAE papers' network structures), as tables of
:class:`~discrete_vae.config.TrainConfig` options, and how ``dvae train`` resolves a fresh run's options
from them (:func:`fresh_config`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import TrainConfig, flat_values, load_config_file, methods_of, options_of
from .registry import Registry

PRESETS: Registry = Registry("preset")
_JANG2017 = {
    "steps": 100_000,
    "lr": 1e-3,
    "lr_schedule": "constant",
    "anneal_rate": 1e-4,
    "anneal_every": 1000,
    "min_temperature": 0.5,
}
# the companion notebook of Jang et al. 2017: 30x10 latents, 50k steps, rate 3e-5, floor 0.5
PRESETS.register("jang2017-notebook")(
    {**_JANG2017, "latent": "30x10", "steps": 50_000, "anneal_rate": 3e-5}
)
PRESETS.register("jang2017-categorical")({**_JANG2017, "latent": "20x10"})
PRESETS.register("jang2017-bernoulli")({**_JANG2017, "latent": "200x2"})
PRESETS.register("digits-quick")(
    {
        "dataset": "digits",
        "latent": "8x4",
        "hidden": (64, 32),
        "steps": 2000,
        "batch_size": 50,
        "eval_every": 500,
        "checkpoint_every": 250,
        "log_every": 50,
        "anneal_every": 100,
        "anneal_rate": 1e-3,
    }
)
# the IGR repository's discrete VAE (Potapczynski et al. 2020): 20x10 latents, Adam 1e-4, batch 100,
# 300 epochs, a constant temperature (pass the method's own with --temperature), two architectures
_IGR2020 = {
    "latent": "20x10",
    "lr": 1e-4,
    "lr_schedule": "constant",
    "batch_size": 100,
    "epochs": 300,
    "anneal_rate": 0.0,
}
PRESETS.register("igr2020-dense")({**_IGR2020, "hidden": ()})  # linear encoder and decoder
PRESETS.register("igr2020-dense-nonlinear")({**_IGR2020, "hidden": (512, 256)})
# DisARM (Dong, Mnih & Tucker 2020; github.com/google-research/google-research disarm/binary,
# experiment_launcher_singlelayer.py and its README's command): 200 binary latents under a learned
# factorial Bernoulli prior, batch 50, Adam 1e-4 (encoder and decoder; the code steps the prior's logits
# by SGD 1e-2, which one Adam here cannot), 1e6 steps, encoder input centred (--demean_input), decoder
# bias at the data's logits (--initialize_with_bias, always done here); the 100-sample test bound.
# Linear: 784-200 / 200-784. Nonlinear: 784-200-200-200 with LeakyReLU(0.3), mirrored. Its 4x200 linear
# model stacks stochastic layers, which `dvae train` cannot express.
_DONG2020 = {
    "latent": "200",
    "binary": True,
    "prior": "learnable",
    "batch_size": 50,
    "lr": 1e-4,
    "lr_schedule": "constant",
    "steps": 1_000_000,
    "center_input": True,
    "val_samples": 100,
    "eval_every": 50_000,
    "checkpoint_every": 5000,
    "log_every": 1000,
}
PRESETS.register("dong2020-linear")({**_DONG2020, "hidden": ()})
PRESETS.register("dong2020-nonlinear")({**_DONG2020, "hidden": (200, 200), "activation": "leaky_relu"})


# DVAE structures (Vahdat et al. 2018, github.com/QuadrantAI/dvae run.py): the original's architecture and its
# training setup (Adam 3e-3 with eps 1e-3 and the piecewise decay, L2 1e-4, KL warm-up over 30 %, batch 100,
# 1e6 steps, centred encoder input). `--struct` fills what the preset, config file and flags leave unset.
STRUCTS: Registry = Registry("struct")
_DVAE2018 = {
    "lr": 3e-3,
    "lr_schedule": "piecewise",
    "adam_eps": 1e-3,
    "l2": 1e-4,
    "kl_warmup": 0.3,
    "batch_size": 100,
    "steps": 1_000_000,
    "center_input": True,
    "anneal_rate": 0.0,
    "val_samples": 100,
}
_NONLIN = {"hidden": (200, 200), "activation": "tanh", "batch_norm": True}
STRUCTS.register("1-layer-lin")({**_DVAE2018, "latent": "200x2", "levels": 1, "hidden": ()})
STRUCTS.register("1-layer-nonlin")({**_DVAE2018, **_NONLIN, "latent": "200x2", "levels": 1})
STRUCTS.register("2-layer-nonlin")({**_DVAE2018, **_NONLIN, "latent": "400x2", "levels": 2})
STRUCTS.register("4-layer-nonlin")({**_DVAE2018, **_NONLIN, "latent": "400x2", "levels": 4})


def fresh_config(values: dict[str, Any], preset: str | None = None,
                 config_file: str | Path | None = None) -> TrainConfig:
    """The config of a fresh run as `dvae train` resolves it: the preset's options, then a config file's,
    then ``values`` over them; a ``struct`` fills what is still unset."""
    merged = dict(PRESETS.get(preset)) if preset else {}
    if config_file:
        merged.update(flat_values(load_config_file(config_file)))  # flat, or in sections as config.yaml
    merged.update(values)
    return TrainConfig.from_dict(with_struct(merged))


def with_struct(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with the unset options filled from ``values["struct"]`` (if any); ``steps``/``epochs``
    given count as each other (a struct's step count does not override ``--epochs``). A one-layer struct's
    ``levels`` (one group of latents) goes only to a posterior that has levels: one group is the only form
    of the others."""
    name = values.get("struct")
    if not name:
        return values
    filled = {k: v for k, v in STRUCTS.get(name).items() if k not in values}
    if "epochs" in values and values["epochs"] is not None:
        filled.pop("steps", None)
    if filled.get("levels") == 1 and "levels" not in options_of(methods_of(values))["posterior"]:
        del filled["levels"]
    return {**filled, **values}
