"""What a sweep's points run: ``dvae train`` + ``dvae eval`` (the default), or ``dvae sop train`` +
``dvae sop eval`` (spec ``command: sop``). Each command builds a point's config from its options (one line
for a bad one), trains a fresh run, resumes one (with the spec's length and data folder), and evaluates."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..errors import ConfigError


class TrainCommand:
    name = "train"
    metrics = ("nll", "neg_elbo", "nll_stderr", "neg_relaxed_objective")

    @staticmethod
    def options() -> set[str]:
        """Every ``dvae train`` option: the config's, every posterior's and estimator's, ``preset``."""
        from ..config import TrainConfig
        from ..estimators import ESTIMATORS
        from ..posteriors import POSTERIORS

        methods = {f.name for registry in (POSTERIORS, ESTIMATORS) for name in registry.names()
                   for f in dataclasses.fields(registry.get(name).Options)}
        return {f.name for f in dataclasses.fields(TrainConfig)} | methods | {"preset"}

    @staticmethod
    def config(values: dict[str, Any]) -> Any:
        """The :class:`~discrete_vae.config.TrainConfig` of a point (``preset`` and ``struct`` expanded
        under its options, as ``dvae train --preset`` does)."""
        from ..config import fresh_config

        return fresh_config({k: v for k, v in values.items() if k != "preset"}, values.get("preset"))

    @staticmethod
    def steps(config: Any) -> int | None:
        return config.steps if config.epochs is None else None

    @staticmethod
    def fresh(config: Any, run: Path) -> dict[str, Any]:
        from ..train import train

        return train(dataclasses.replace(config, out=str(run)), progress=False)

    @staticmethod
    def resume(config: Any, run: Path) -> dict[str, Any]:
        from ..config import resumed_config
        from ..train import train

        given = {"steps": config.steps} if config.epochs is None else {"epochs": config.epochs}
        if config.data_dir:
            given["data_dir"] = config.data_dir
        return train(resumed_config(run, given), resume=run, progress=False)

    @staticmethod
    def evaluate(run: Path, evaluation: Any, data_dir: str | None) -> dict[str, Any]:
        from ..evaluate import evaluate_run

        return evaluate_run(run, data_dir=data_dir, progress=False, **evaluation.options())


class SopCommand:
    name = "sop"
    metrics = ("nll", "relaxed_nll")

    @staticmethod
    def options() -> set[str]:
        from ..sop import SOPConfig

        return {f.name for f in dataclasses.fields(SOPConfig)}

    @staticmethod
    def config(values: dict[str, Any]) -> Any:
        from ..sop import SOPConfig

        return SOPConfig.from_dict(values)

    @staticmethod
    def steps(config: Any) -> int | None:
        return config.steps

    @staticmethod
    def fresh(config: Any, run: Path) -> dict[str, Any]:
        from ..sop import train

        return train(dataclasses.replace(config, out=str(run)))

    @staticmethod
    def resume(config: Any, run: Path) -> dict[str, Any]:
        from ..sop import resume_config, train

        return train(resume_config(run, {"steps": config.steps}), resume=run)

    @staticmethod
    def evaluate(run: Path, evaluation: Any, data_dir: str | None) -> dict[str, Any]:
        from ..recipe import resolve_device
        from ..sop import evaluate_run

        return evaluate_run(run, evaluation.samples, evaluation.split, evaluation.limit, evaluation.seed,
                            data_dir, evaluation.checkpoint, str(resolve_device("auto")))


COMMANDS = {c.name: c for c in (TrainCommand, SopCommand)}


def command(name: str) -> type[TrainCommand] | type[SopCommand]:
    if name not in COMMANDS:
        raise ConfigError(f"unknown command {name!r} in the sweep spec (train or sop)")
    return COMMANDS[name]
