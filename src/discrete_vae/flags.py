"""The flags of ``dvae train``, generated from :class:`~discrete_vae.config.TrainConfig` and from each
estimator's typed ``Options``, grouped in ``--help`` by what they belong to."""

from __future__ import annotations

import argparse
import typing
from dataclasses import fields
from typing import Any

from .errors import UserError
from .options import field_type
from .runs import note


class Deprecated(argparse.Action):
    """An old spelling of a flag: stores into the new one's ``dest`` and says which to use."""

    def __init__(self, *args: Any, new: str = "", **kwargs: Any):
        self.new = new
        super().__init__(*args, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        note(f"{parser.prog}: warning: {option_string} is deprecated and will be removed; use {self.new}")
        setattr(namespace, self.dest, values)


def add_k_flags(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--k`` (relaxed samples per example in training) and its deprecated spelling ``--samples``."""
    parser.add_argument("--k", dest="k", type=int, default=argparse.SUPPRESS, help=help_text)
    parser.add_argument("--samples", dest="k", type=int, default=argparse.SUPPRESS, action=Deprecated,
                        new="--k", help="deprecated spelling of --k")


def hidden_widths(text: str) -> tuple[int, ...]:
    from .options import coerce_widths

    try:
        return coerce_widths("--hidden", text)
    except UserError as e:  # argparse reports only ArgumentTypeError/ValueError as usage errors
        raise argparse.ArgumentTypeError(str(e)) from None


def add_train_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    from .config import TrainConfig

    groups = {name: parser.add_argument_group(title) for name, title in OPTION_GROUPS}
    for f in fields(TrainConfig):
        if f.name == "estimator_options" or f.name in skip:  # estimator options: one flag each, below
            continue
        tp = field_type(f.type)[0]
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} (default: {f.default})"
        group = groups[next((g for g, names in GROUPED.items() if f.name in names), "run")]
        if f.name == "k":
            add_k_flags(group, help_text)
        elif tp is bool:
            group.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        elif f.name == "hidden":
            group.add_argument(
                flag,
                type=hidden_widths,
                default=argparse.SUPPRESS,
                metavar="W1,W2",
                help=help_text + "; 'none' for a linear map",
            )
        else:
            group.add_argument(flag, dest=f.name, type=tp, default=argparse.SUPPRESS, help=help_text)
    add_estimator_flags(parser)


ESTIMATOR_OPTION = "estimator_option."  # argparse dest prefix of the estimators' own options


def add_estimator_flags(parser: argparse.ArgumentParser) -> None:
    """One group per estimator with options of its own (its typed ``Options``; the temperature of relaxed
    estimators is the schedule's ``--temperature``). An option two estimators share is one flag."""
    from .estimators import ESTIMATORS

    seen: dict[str, list[str]] = {}
    for name in ESTIMATORS.names():
        for f in fields(ESTIMATORS.get(name).Options):
            if f.name != "temperature":
                seen.setdefault(f.name, []).append(name)
    groups: dict[str, Any] = {}
    for option, owners in seen.items():
        found = [next(f for f in fields(ESTIMATORS.get(o).Options) if f.name == option) for o in owners]
        f = found[0]
        group = groups.setdefault(owners[0], parser.add_argument_group(f"estimator {owners[0]}"))
        shown = [value_text(list(g.default) if isinstance(g.default, tuple) else g.default) for g in found]
        if len(set(shown)) > 1:
            default = "default: " + "; ".join(f"{v} for {o}" for v, o in zip(shown, owners, strict=True))
        else:
            default = f"default: {shown[0]}" + (f"; also {', '.join(owners[1:])}" if owners[1:] else "")
        tp = field_type(f.type)[0]
        kind: dict[str, Any] = {"type": tp, "metavar": option.upper()}
        if tp is bool:
            kind = {"action": argparse.BooleanOptionalAction}
        elif typing.get_origin(tp) is tuple:
            kind = {"type": hidden_widths, "metavar": "W1,W2"}
        group.add_argument("--" + option.replace("_", "-"), dest=ESTIMATOR_OPTION + option,
                           default=argparse.SUPPRESS, help=f"{f.metadata.get('help', '')} ({default})",
                           **kind)


# `dvae train --help` groups the options by what they belong to
OPTION_GROUPS = (("model", "method, latents and objective"), ("igr", "IGR posteriors"),
                 ("dvae", "DVAE posteriors (smoothed binaries)"), ("nets", "encoder and decoder"),
                 ("prior", "prior (and the RBM's sampler)"), ("optim", "optimisation"),
                 ("temperature", "temperature"), ("data", "data"),
                 ("run", "run folder, device and reporting"))
GROUPED = {
    "model": ("model", "posterior", "estimator", "latent", "binary", "kl", "continuous", "k", "objective"),
    "igr": ("delta", "prior_scale", "sb_threshold", "sb_percentile", "flow_layers", "mc_samples"),
    "dvae": ("struct", "levels", "beta", "center_input"),
    "nets": ("hidden", "activation", "batch_norm"),
    "prior": ("prior", "prior_temperature", "sampler", "chains", "sweeps", "log_z_betas", "log_z_samples"),
    "optim": ("steps", "epochs", "batch_size", "lr", "lr_schedule", "lr_final", "weight_decay", "l2",
              "adam_eps", "kl_warmup", "seed"),
    "temperature": ("temperature", "min_temperature", "anneal_rate", "anneal_every", "learn_temperature"),
    "data": ("dataset", "data_dir"),
}


def value_text(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return str(value)
