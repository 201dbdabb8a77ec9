"""Typed training configuration: four sections of typed fields, a docstring per field, checked when made.

A :class:`TrainConfig` is ``model`` (:class:`ModelConfig`: the method, its latents and networks, the
posterior, estimator and prior in force with their typed options), ``optim`` (:class:`OptimConfig`),
``schedule`` (:class:`ScheduleConfig`: temperature and KL warm-up) and ``run`` (:class:`RunConfig`: data,
device, run folder and reporting). Every option has one flat name, unique across the sections
(``--model`` is ``model.method``): ``dvae train``'s flags are generated from the fields (``batch_size`` ->
``--batch-size``), a ``--config FILE`` (YAML or TOML) and a sweep spec hold the same names, and
:meth:`TrainConfig.from_dict` reads them, flat or in sections (a run's ``config.yaml`` is stored in
sections). The methods' ``auto`` names, their option defaults and their typed options are resolved once,
when the config is made; each error names its key. Named presets live in
:data:`~discrete_vae.presets.PRESETS`. Precedence: defaults < preset < config file < command-line flags.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import tomllib
import yaml

from .compiling import COMPILE_MODES
from .errors import ConfigError
from .estimators import ESTIMATORS
from .methods import METHODS
from .networks import ACTIVATIONS
from .options import Sectioned, check_counts, check_finite, check_seed, coerce_widths, method_options
from .posteriors import POSTERIORS, LatentSpec
from .posteriors.kl import kl_kind
from .priors import PRIORS
from .upgrade import upgrade_config

LR_SCHEDULES = ("constant", "cosine", "piecewise")
# what `dvae train --resume RUN` may change; each change is recorded in RUN/overrides.jsonl with its step
RESUME_OVERRIDES = ("steps", "epochs", "lr", "lr_final", "device", "data_dir", "compile", "eval_every",
                    "checkpoint_every", "log_every")
OBJECTIVES = ("auto", "elbo", "iw")
# the methods with options of their own, whose registries the config's option mappings are checked against
KINDS = {"posterior": POSTERIORS, "estimator": ESTIMATORS, "prior": PRIORS}
PRECISIONS = ("fp32", "bf16", "fp16")


def _f(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


def _one_of(flag: str, value: str, choices: tuple[str, ...] | dict) -> None:
    if value not in choices:
        raise ConfigError(f"--{flag} must be one of {', '.join(choices)}, got {value!r}")


@dataclass
class ModelConfig:
    """What is trained: the method, the latents and networks, the objective; the posterior, estimator and
    prior in force (names resolved from ``auto``) with their typed options."""

    method: str = _f("gs", "method: a preset of posterior + estimator (gs, st-gs, expgs, igr-i, dvaes-power, "
                     "...; dvae list models)", flag="model")
    posterior: str = _f("auto", "what q(z|x) is (categorical, igr-i, dvaes-power, ...); auto = the method's")
    estimator: str = _f("auto", "how the gradient of E_q[...] is estimated (gs, st-gs, reinforce, rloo, "
                        "vimco, disarm, rebar, relax, reinmax, gumbel-rao, ...); auto = the method's")
    prior: str = _f("auto", "prior over the latents: uniform, learnable or rbm; auto = the model's own",
                    group="prior")
    posterior_options: Any = _f(None, "the posterior's typed options (a mapping in files; flags per option)")
    estimator_options: Any = _f(None, "the estimator's typed options (a mapping in files; flags per option)")
    prior_options: Any = _f(None, "the prior's typed options (a mapping in files; flags per option): the "
                            "RBM's sampler and log Z settings")
    latent: str = _f("20x10", "N x K: N latent variables of K classes (200x2 means binary)")
    binary: bool = _f(False, "Bernoulli latents (K = 2) relaxed by the binary Concrete")
    kl: str = _f("auto", "KL term: analytic (closed form), relaxed (Monte Carlo over the relaxed sample) or "
                 "sampled (Monte Carlo over hard samples, inside f); auto = the method's own")
    continuous: int = _f(0, "Gaussian latents beside the discrete ones (a mixed model); 0 = none")
    k: int | None = _f(None, "samples per example in the training objective (default: 1, or the estimator's "
                       "minimum: 2 for rloo, vimco and one antithetic pair for arm, disarm)")
    objective: str = _f("auto", "training objective: elbo (mean over the k samples), iw (importance-"
                        "weighted bound over them); auto = iw for DVAE# models with k > 1, else elbo")
    struct: str | None = _f(None, "DVAE structure (1-layer-lin, 1-layer-nonlin, 2-layer-nonlin, "
                            "4-layer-nonlin): the original's architecture and training setup", group="dvae")
    center_input: bool = _f(False, "feed the encoder x minus the training data's mean", group="dvae")
    hidden: tuple[int, ...] = _f((512, 256), "encoder hidden widths; the decoder mirrors them", group="nets")
    activation: str = _f("relu", "hidden activation: relu, tanh or leaky_relu (negative slope 0.3)",
                         group="nets")
    batch_norm: bool = _f(False, "batch norm before each hidden activation", group="nets")

    k_defaulted: ClassVar[bool] = False  # True on a config whose k was not given (the estimator's minimum)

    def __post_init__(self) -> None:
        self.hidden = coerce_widths("hidden", self.hidden)
        check_finite(self)
        self.latent_spec()
        METHODS.get(self.method)
        for kind in KINDS:
            if getattr(self, kind) != "auto":
                KINDS[kind].get(getattr(self, kind))
        if self.kl != "auto":
            kl_kind(self.kl)
        _one_of("objective", self.objective, OBJECTIVES)
        _one_of("activation", self.activation, ACTIVATIONS)
        if self.continuous < 0:
            raise ConfigError("--continuous must be non-negative")
        if self.struct is not None:
            from .presets import STRUCTS  # the tables of options are built over these classes

            STRUCTS.get(self.struct)
        self._resolve()

    def _resolve(self) -> None:
        """Put the methods in force and their typed options (the method's defaults under the given values)
        in place of ``auto`` and of the option mappings; ``k`` not given: the estimator's minimum."""
        given = {kind: dict(_mapping(f"{kind}_options", getattr(self, f"{kind}_options"))) for kind in KINDS}
        method = METHODS.get(self.method)
        names = methods_of({"model": self.method, **{kind: getattr(self, kind) for kind in KINDS}})
        defaults = method.defaults if names["posterior"] == method.posterior else {}
        method.check(self.method, {"kl": self.kl, **given["posterior"]})
        if self.kl == "auto" and "kl" in defaults:
            self.kl = defaults["kl"]
        for kind, name in names.items():
            cls = KINDS[kind].get(name).Options
            own = {f.name for f in dataclasses.fields(cls)}
            own_defaults = {k: v for k, v in defaults.items() if k in own and kind == "posterior"}
            values = {**own_defaults, **given[kind]}
            setattr(self, kind, name)
            setattr(self, f"{kind}_options", method_options(kind, name, cls, values))
        if "temperature" in given["estimator"] and not ESTIMATORS.get(self.estimator).learns_temperature:
            raise ConfigError("a training run's temperature is the schedule's (--temperature, "
                              "--min-temperature, --anneal-rate), not an estimator option")
        if self.k is None:  # not given: the estimator's minimum, which config.yaml then records
            self.k, self.k_defaulted = ESTIMATORS.get(self.estimator).min_samples, True
        check_counts(self, "k")

    def latent_spec(self) -> LatentSpec:
        return LatentSpec.parse(self.latent, self.binary)

    def methods(self) -> dict[str, str]:
        """The posterior, estimator and prior in force, by kind."""
        return {kind: getattr(self, kind) for kind in KINDS}

    def typed_options(self) -> dict[str, Any]:
        """The typed options (each method's ``Options``) of the posterior, estimator and prior, by kind."""
        return {kind: getattr(self, f"{kind}_options") for kind in KINDS}


@dataclass
class OptimConfig:
    """The optimizer and the length of the run."""

    steps: int | None = _f(None, "optimizer steps (default 200000 unless --epochs is given)")
    epochs: int | None = _f(None, "train for this many epochs instead of --steps")
    batch_size: int = _f(100, "examples per optimizer step")
    lr: float = _f(1e-3, "Adam learning rate")
    lr_schedule: str = _f("cosine", "learning-rate schedule: constant; cosine to lr_final; piecewise (the "
                          "DVAE code's: lr/10, lr, lr/3, lr/10, lr/33 from 0, 2, 60, 75, 95 percent of the "
                          "steps)")
    lr_final: float = _f(1e-4, "final learning rate of the cosine schedule")
    weight_decay: float = _f(0.0, "decoupled weight decay (AdamW); 0 for plain Adam")
    l2: float = _f(0.0, "L2 penalty c/2 |W|^2 on weight matrices and the RBM's couplings, added to the loss "
                   "(the DVAE code's weight decay)")
    adam_eps: float = _f(1e-8, "Adam's epsilon (the DVAE code uses 1e-3)")

    def __post_init__(self) -> None:
        check_finite(self)
        if self.steps is not None and self.epochs is not None:
            raise ConfigError("give --steps or --epochs, not both")
        check_counts(self, "batch_size", "steps", "epochs")
        if not self.lr > 0:
            raise ConfigError("--lr must be positive")
        if min(self.weight_decay, self.lr_final, self.l2) < 0:
            raise ConfigError("--weight-decay, --l2 and --lr-final must be non-negative")
        if not self.adam_eps > 0:
            raise ConfigError("--adam-eps must be positive")
        _one_of("lr-schedule", self.lr_schedule, LR_SCHEDULES)


@dataclass
class ScheduleConfig:
    """What changes over the steps besides the learning rate: the temperature and the KL weight."""

    temperature: float = _f(1.0, "initial (or constant) temperature tau_0")
    min_temperature: float = _f(0.5, "floor of the annealed temperature")
    anneal_rate: float = _f(3e-5, "r in tau_t = max(tau_min, tau_0 exp(-r t)); 0 = constant")
    anneal_every: int = _f(1000, "update the annealed temperature every this many steps")
    learn_temperature: bool = _f(False, "learn tau (positive by construction) instead of annealing")
    kl_warmup: float = _f(0.0, "fraction of the steps over which the KL weight rises linearly from 0 to 1",
                          group="optim")

    def __post_init__(self) -> None:
        check_finite(self)
        check_counts(self, "anneal_every")
        for name in ("temperature", "min_temperature"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive")
        if self.anneal_rate < 0:
            raise ConfigError("--anneal-rate must be non-negative")
        if not 0 <= self.kl_warmup <= 1:
            raise ConfigError("--kl-warmup is a fraction of the steps, between 0 and 1")


@dataclass
class RunConfig:
    """Data, seed, device and arithmetic, the run folder and what is reported when."""

    dataset: str = _f("binarized_mnist", "dataset name (binarized_mnist, mnist, digits, ...)", group="data")
    data_dir: str | None = _f(None, "data folder (else $DVAE_DATA_DIR, else the user cache)", group="data")
    seed: int = _f(0, "random seed (weights, noise, data order)", group="optim")
    device: str = _f("auto", "cpu, cuda, cuda:N or auto")
    precision: str = _f("fp32", "training arithmetic: fp32; bf16 (the encoder's and decoder's forward pass "
                        "under autocast, on CUDA or a CPU with AVX-512); fp16 (the same, CUDA only, with "
                        "dynamic loss scaling); bounds are always float32")
    compile: str = _f("auto", "the training step through torch.compile: on, off, or auto (on a GPU, and on "
                      "CPUs with AVX-512 or bfloat16 matrix units, for runs of 20,000 steps or more)")
    out: str | None = _f(None, "run folder (default runs/<model>-<latent>-<time>)")
    eval_every: int = _f(5000, "validate (and save image grids) every this many steps")
    val_samples: int = _f(10, "importance samples for the validation bound")
    checkpoint_every: int = _f(1000, "write the resumable checkpoint every this many steps")
    log_every: int = _f(100, "write a training line to metrics.jsonl every this many steps")

    def __post_init__(self) -> None:
        check_seed("--seed", self.seed)
        check_counts(self, "eval_every", "checkpoint_every", "log_every", "val_samples")
        _one_of("compile", self.compile, COMPILE_MODES)
        _one_of("precision", self.precision, PRECISIONS)


@dataclass
class TrainConfig(Sectioned):
    """Everything a training run needs; stored in sections as ``config.yaml`` in the run folder."""

    SECTIONS: ClassVar[dict[str, type]] = {"model": ModelConfig, "optim": OptimConfig,
                                           "schedule": ScheduleConfig, "run": RunConfig}

    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def settings(self) -> dict[str, Any]:
        """Every option by name: the fields, and the options of the posterior, estimator and prior in force
        (what a sweep table's titles name: ``{chains}``, ``{mc}``)."""
        options = {}
        for typed in self.model.typed_options().values():
            options.update(dataclasses.asdict(typed))
        return {**options, **self.flat()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A config from a mapping of option names (``-`` or ``_``) to values, flat as flags and config files
        give them or in sections as ``config.yaml`` stores them, type-checked like flags (a stored config of
        an earlier version goes through :func:`~discrete_vae.upgrade.upgrade_config` first). An option of
        the posterior, estimator or prior in force goes into its options."""
        values = cls.flat_values(values)
        nested = {kind: dict(_mapping(f"{kind}_options", values.pop(f"{kind}_options", None)))
                  for kind in KINDS}
        left = _route(values, nested)
        return cls.from_flat({**left, **{f"{kind}_options": given for kind, given in nested.items()}})


FLAT = TrainConfig.flat_names()  # flat option name -> (section, field)
option_fields = TrainConfig.option_fields
flat_values = TrainConfig.flat_values


def _mapping(key: str, given: Any) -> dict[str, Any]:
    if given is None:
        return {}
    if dataclasses.is_dataclass(given):
        return dataclasses.asdict(given)
    if not isinstance(given, dict):
        raise ConfigError(f"{key} must be a mapping of option names to values, got {given!r}")
    return given


def method_names(model: str, posterior: str = "auto", estimator: str = "auto") -> tuple[str, str]:
    """``(posterior, estimator)`` in force: the flags' own, else the method's; a posterior other than the
    method's takes its own relaxation (:attr:`~discrete_vae.posteriors.base.PosteriorType.relaxation`: ``gs``
    for categorical, ``relaxed`` for the others)."""
    method = METHODS.get(model)
    if posterior == "auto":
        posterior = method.posterior
    if estimator == "auto":
        own = posterior == method.posterior
        estimator = method.estimator if own else POSTERIORS.get(posterior).relaxation
    return posterior, estimator


def methods_of(values: dict[str, Any]) -> dict[str, str]:
    """The posterior, estimator and prior in force (by kind) of a flat mapping of option names to values, as
    flags and config files give them: :func:`method_names`, and the prior named or else the posterior's."""
    posterior, estimator = method_names(values.get("model") or "gs", values.get("posterior") or "auto",
                                        values.get("estimator") or "auto")
    prior = values.get("prior") or "auto"
    return {"posterior": posterior, "estimator": estimator,
            "prior": POSTERIORS.get(posterior).prior if prior == "auto" else prior}


def options_of(names: dict[str, str]) -> dict[str, set[str]]:
    """The option names of each method in ``names`` (kind -> name)."""
    return {kind: {f.name for f in dataclasses.fields(KINDS[kind].get(name).Options)}
            for kind, name in names.items()}


def _route(values: dict[str, Any], nested: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Move the option names of the chosen posterior, estimator and prior out of ``values`` (flat, as flags
    and config files give them) into ``nested``; what is left are the sections' fields."""
    names = methods_of(values)
    own = options_of(names)
    left = {}
    for key, value in values.items():
        owner = next((kind for kind in own if key in own[kind]), None)
        if owner is not None and key not in FLAT:  # a flag's value over a file's mapping
            nested[owner][key] = value
        elif key not in FLAT and (owners := _owners(key)):
            chosen = ", ".join(f"{kind} {name}" for kind, name in names.items())
            raise ConfigError(f"--{key.replace('_', '-')} is not an option of {chosen} (it belongs to "
                              f"{', '.join(owners)})")
        else:
            left[key] = value
    return left


def _owners(option: str) -> list[str]:
    """The registered posteriors, estimators and priors that have ``option``."""
    return [name for registry in KINDS.values() for name in registry.names()
            if option in {f.name for f in dataclasses.fields(registry.get(name).Options)}]


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file of config values."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start})") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"cannot parse config file {path}: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option names to values")
    return data


def resumed_config(run_dir: str | Path, given: dict[str, Any]) -> TrainConfig:
    """The config a resumed run trains with: its ``config.yaml`` (of any version, in today's form) with
    ``given`` (options that may change on resume) over it; a new ``steps`` replaces ``epochs`` and the
    reverse."""
    from .runs import CONFIG

    values = {**flat_values(upgrade_config(load_config_file(Path(run_dir) / CONFIG))), **given}
    if "steps" in given or "epochs" in given:  # a new length replaces the old one
        values["epochs" if "steps" in given else "steps"] = None
    return TrainConfig.from_dict(values)
