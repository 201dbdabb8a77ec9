"""The flags of ``dvae train``, generated from :class:`~discrete_vae.config.TrainConfig` and from each
estimator's typed ``Options``, grouped in ``--help`` by what they belong to."""

from __future__ import annotations

import argparse
import typing
from dataclasses import fields
from typing import Any

from .errors import UserError
from .options import field_type


def add_k_flags(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--k``: relaxed samples per example in training (``dvae train``, ``dvae gradients``, ``dvae sop
    train``)."""
    parser.add_argument("--k", dest="k", type=int, default=argparse.SUPPRESS, help=help_text)


def hidden_widths(text: str) -> tuple[int, ...]:
    from .options import coerce_widths

    try:  # argparse names the flag ("argument --cv-hidden: ..."), so the message does not
        return coerce_widths("", text)
    except UserError as e:  # argparse reports only ArgumentTypeError/ValueError as usage errors
        raise argparse.ArgumentTypeError(str(e).strip()) from None


def seed_value(text: str) -> int:
    """The type of every ``--seed`` flag: an integer from 0 to ``SEED_MAX`` (argparse says which flag)."""
    from .options import SEED_MAX, check_seed

    try:
        return check_seed("a seed", int(text))
    except (ValueError, UserError):
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to {SEED_MAX}, got {text!r}") from None


def add_train_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    from .config import option_fields

    groups = {name: parser.add_argument_group(title) for name, title in OPTION_GROUPS}
    for name, section, f in option_fields():
        if name.endswith("_options") or name in skip:  # a flag per option of each, below
            continue
        tp = field_type(f.type)[0]
        flag = "--" + name.replace("_", "-")
        help_text = f.metadata["help"]
        help_text += "" if "(default:" in help_text else f" (default: {f.default})"
        group = groups[f.metadata.get("group", section)]
        if name == "k":
            add_k_flags(group, help_text)
        elif tp is bool:
            group.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        elif name == "hidden":
            group.add_argument(
                flag,
                type=hidden_widths,
                default=argparse.SUPPRESS,
                metavar="W1,W2",
                help=help_text + "; 'none' for a linear map",
            )
        else:
            kind = seed_value if name == "seed" else tp
            group.add_argument(flag, dest=name, type=kind, default=argparse.SUPPRESS, help=help_text)
    add_method_flags(parser, skip)


METHOD_OPTION = "option."  # argparse dest prefix of the posteriors' and estimators' own options


def _method_groups() -> list[tuple[str, str, str, list[str]]]:
    """``(option, kind, group title, owners)`` for every option of a registered posterior, estimator or prior
    (the temperature of relaxed estimators is the schedule's ``--temperature``), grouped by the posterior's
    family, the estimator's name or the prior's."""
    from .config import KINDS

    found: dict[str, tuple[str, str, list[str]]] = {}
    for kind, registry in KINDS.items():
        for name in registry.names():
            entry = registry.get(name)
            for f in fields(entry.Options):
                if f.name == "temperature":
                    continue
                title = f"posterior: {entry.family}" if kind == "posterior" else f"{kind} {name}"
                found.setdefault(f.name, (kind, title, []))[2].append(name)
    return [(option, kind, title, owners) for option, (kind, title, owners) in found.items()]


def add_method_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per option of the posteriors, estimators and priors, in a group per posterior family,
    estimator or prior; an option several share is one flag. Their values reach
    :meth:`TrainConfig.from_dict` by name, which hands each to the method in force that has it."""
    from .config import KINDS

    groups: dict[str, Any] = {}
    for option, kind, title, owners in _method_groups():
        if option in skip:
            continue
        found = [next(f for f in fields(KINDS[kind].get(o).Options) if f.name == option) for o in owners]
        f = found[0]
        group = groups.setdefault(title, parser.add_argument_group(title))
        shown = [value_text(list(g.default) if isinstance(g.default, tuple) else g.default) for g in found]
        if len(set(shown)) > 1:
            default = "default: " + "; ".join(f"{v} for {o}" for v, o in zip(shown, owners, strict=True))
        else:
            default = f"default: {shown[0]}"
        tp = field_type(f.type)[0]
        kind_args: dict[str, Any] = {"type": tp, "metavar": option.upper()}
        if tp is bool:
            kind_args = {"action": argparse.BooleanOptionalAction}
        elif typing.get_origin(tp) is tuple:
            kind_args = {"type": hidden_widths, "metavar": "W1,W2"}
        group.add_argument("--" + option.replace("_", "-"), dest=METHOD_OPTION + option,
                           default=argparse.SUPPRESS, help=f"{f.metadata.get('help', '')} ({default})",
                           **kind_args)


def method_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The posterior and estimator options given on the command line, by name."""
    return {k[len(METHOD_OPTION):]: v for k, v in vars(args).items() if k.startswith(METHOD_OPTION)}


# `dvae train --help` groups the options by their config section (a field's `group` puts it elsewhere)
OPTION_GROUPS = (("model", "method, latents and objective"), ("dvae", "DVAE structures"),
                 ("nets", "encoder and decoder"),
                 ("prior", "prior"), ("optim", "optimisation"),
                 ("schedule", "temperature"), ("data", "data"),
                 ("run", "run folder, device and reporting"))


def value_text(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return str(value)
