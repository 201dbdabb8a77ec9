"""What a sweep's points run: ``dvae train`` + ``dvae eval`` (the default), or ``dvae sop train`` +
``dvae sop eval`` (spec ``command: sop``). Each command builds a point's config from its options (one line
for a bad one), checks it whole, trains a fresh run, resumes one (with the spec's length and data folder),
and evaluates; and reads back the config a run folder was trained with (:func:`recorded`), which a rerun
compares with the spec's."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..errors import ConfigError, UserError

# options that do not change what a run computes: where it lives and reads data, how often it checkpoints
# and logs, the device (recorded as provenance instead) and whether the step is compiled (the same
# arithmetic through other kernels); a change of one is not a change of the point
NEUTRAL = ("out", "data_dir", "device", "compile", "checkpoint_every", "log_every")


def recorded(runs: type[Command], run: Path) -> dict[str, Any] | None:
    """The config the run folder ``run`` trains with (its ``config.yaml``, normalised as the command reads
    it), None when it has none yet; one that cannot be read is ``{"config.yaml": "unreadable"}``."""
    from ..config import load_config_file
    from ..runs import CONFIG
    from ..upgrade import upgrade_config

    if not (run / CONFIG).is_file():
        return None
    try:
        return runs.config_class().from_dict(upgrade_config(load_config_file(run / CONFIG))).flat()
    except (UserError, TypeError, ValueError):
        return {CONFIG: "unreadable"}


class Command:
    """What a sweep's point runs, for a task whose config is a :class:`~discrete_vae.options.Sectioned`: the
    parts every task shares (its options, its length, a fresh run in the point's folder); a task's command
    says how its config is made, checked, resumed and evaluated."""

    name: str
    metrics: tuple[str, ...]
    splits: tuple[str, ...]

    @staticmethod
    def config_class() -> type:
        raise NotImplementedError

    @staticmethod
    def train(config: Any, resume: Path | None = None) -> dict[str, Any]:
        """Train the run (fresh, or resume the one in ``resume``)."""
        raise NotImplementedError

    @classmethod
    def resume(cls, config: Any, run: Path) -> dict[str, Any]:
        """Resume the run in ``run`` to the point's length (and data folder, if the point gives one)."""
        raise NotImplementedError

    @staticmethod
    def evaluate(run: Path, evaluation: Any, data_dir: str | None) -> dict[str, Any]:
        """One evaluation of the spec (:class:`~discrete_vae.sweep.spec.Evaluation`) of the run ``run``."""
        raise NotImplementedError

    @classmethod
    def options(cls) -> set[str]:
        """Every option a point may set: the config's flat names."""
        return set(cls.config_class().flat_names())

    @classmethod
    def config(cls, values: dict[str, Any]) -> Any:
        return cls.config_class().from_dict(values)

    @staticmethod
    def steps(config: Any) -> int | None:
        """The run's length in steps (None when it is given in epochs)."""
        return config.optim.steps if getattr(config.optim, "epochs", None) is None else None

    @staticmethod
    def length_free(config: Any) -> bool:
        """Whether the run's schedules ignore its length, so that a run resumed to more steps is the run a
        fresh one of that length would be."""
        return True

    @staticmethod
    def pairing(config: Any) -> str:
        """What the model a config builds depends on (seeds and lengths share a pairing)."""
        return ""

    @staticmethod
    def check(config: Any) -> None:
        """One line for a point that cannot train, before anything trains (the config's own checks)."""

    @classmethod
    def fresh(cls, config: Any, run: Path) -> dict[str, Any]:
        return cls.train(dataclasses.replace(config, run=dataclasses.replace(config.run, out=str(run))))


class TrainCommand(Command):
    name = "train"
    metrics = ("nll", "neg_elbo", "nll_stderr", "neg_relaxed_objective")
    splits = ("test", "valid", "train")

    @staticmethod
    def config_class() -> type:
        from ..config import TrainConfig

        return TrainConfig

    @staticmethod
    def train(config: Any, resume: Path | None = None) -> dict[str, Any]:
        from ..train import train

        return train(config, resume=resume, progress=False)

    @classmethod
    def options(cls) -> set[str]:
        """Every ``dvae train`` option: the config's, every posterior's, estimator's and prior's options, and
        ``preset``."""
        from ..config import KINDS

        methods = {f.name for registry in KINDS.values() for name in registry.names()
                   for f in dataclasses.fields(registry.get(name).Options)}
        return super().options() | methods | {"preset"}

    @classmethod
    def config(cls, values: dict[str, Any]) -> Any:
        """The :class:`~discrete_vae.config.TrainConfig` of a point (``preset`` and ``struct`` expanded
        under its options, as ``dvae train --preset`` does)."""
        from ..presets import fresh_config

        return fresh_config({k: v for k, v in values.items() if k != "preset"}, values.get("preset"))

    @staticmethod
    def length_free(config: Any) -> bool:
        """A cosine or piecewise learning rate, or a KL warm-up over a fraction of the steps, depends on the
        length."""
        optim = config.optim
        return optim.lr_schedule == "constant" and config.schedule.kl_warmup == 0 and optim.epochs is None

    @staticmethod
    def pairing(config: Any) -> str:
        from ..runs import dumps

        return dumps({k: v for k, v in config.flat().items()
                      if k not in (*NEUTRAL, "seed", "steps", "epochs", "lr", "eval_every")})

    @staticmethod
    def check(config: Any) -> None:
        """Build the point's model (on a small input, off the global random stream): an unsupported
        posterior × estimator × prior pairing is one line before anything trains."""
        import torch

        from ..recipe import build_model

        with torch.random.fork_rng(devices=[]):
            build_model(config, data_dim=16)

    @classmethod
    def resume(cls, config: Any, run: Path) -> dict[str, Any]:
        from ..config import resumed_config

        optim = config.optim
        given = {"steps": optim.steps} if optim.epochs is None else {"epochs": optim.epochs}
        if config.run.data_dir:
            given["data_dir"] = config.run.data_dir
        return cls.train(resumed_config(run, given), resume=run)

    @staticmethod
    def evaluate(run: Path, evaluation: Any, data_dir: str | None) -> dict[str, Any]:
        from ..evaluate import evaluate_run

        return evaluate_run(run, data_dir=data_dir, progress=False, **evaluation.options())


class SopCommand(Command):
    """``dvae sop train`` + ``dvae sop eval``: a constant learning rate (any length resumes), one network
    per config (no pairings), and the config's own checks."""

    name = "sop"
    metrics = ("nll", "relaxed_nll")
    splits = ("test", "valid")

    @staticmethod
    def config_class() -> type:
        from ..sop import SOPConfig

        return SOPConfig

    @staticmethod
    def train(config: Any, resume: Path | None = None) -> dict[str, Any]:
        from ..sop import train

        return train(config, resume=resume)

    @classmethod
    def resume(cls, config: Any, run: Path) -> dict[str, Any]:
        from ..sop import resume_config

        return cls.train(resume_config(run, {"steps": config.optim.steps}), resume=run)

    @staticmethod
    def evaluate(run: Path, evaluation: Any, data_dir: str | None) -> dict[str, Any]:
        from ..recipe import resolve_device
        from ..sop import evaluate_run

        return evaluate_run(run, evaluation.samples, evaluation.split, evaluation.limit, evaluation.seed,
                            data_dir, evaluation.checkpoint, str(resolve_device("auto")))


COMMANDS = {c.name: c for c in (TrainCommand, SopCommand)}


def command(name: str) -> type[Command]:
    if name not in COMMANDS:
        raise ConfigError(f"unknown command {name!r} in the sweep spec (train or sop)")
    return COMMANDS[name]
