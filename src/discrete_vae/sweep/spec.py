"""A sweep spec: a base config, a grid, the evaluations and the tables (:mod:`.load` reads it from YAML).

.. code-block:: yaml

    name: gs-quality                 # default: the file's stem
    base: {model: gs, latent: 20x10, steps: 50000}   # any `dvae train` option, or `preset:`/`struct:`
    grid:                            # the product of the axes, in this order
      model: [gs, st-gs]             # a list: the option takes each value
      latents:                       # a mapping: a named axis, each label a bundle of options
        binary: {latent: "240", binary: true}
        8-ary: {latent: 30x8}
      seed: [0, 1, 2]
    eval:                            # one mapping or a list; each scores every point (`dvae eval`)
      - {name: test, split: test, samples: 5000, limit: null, checkpoint: best, log_z: auto}
    tables:
      - {name: main, rows: model, columns: latents, metric: test.nll, seeds: mean}   # or seeds: each
      # metrics: [train.nll, test.nll] gives one column per column label and metric; a mapping
      # {title: metric, ...} titles them
    quick: {base: {dataset: digits, steps: 40}, eval: {samples: 10, limit: 100}}   # --quick's overrides
    page: ../docs/results/gs-quality.md   # --report writes each table between its markers there

A title may name the settings it was made with, ``{field}`` filled from them, so that a ``--quick`` table
says what ran: a metric's title from its evaluation (``"test NLL (S = {samples})"``) or, for ``train.*``,
from the config (``{val_samples}``); a label's title from its first point's config and evaluation
(``"{model}, {steps:,} steps"``). A ``--quick`` table shows no ``reference:`` column (those numbers are for
the full settings), and ``--report`` never writes it into the page.

Tune, then repeat: ``select:`` picks one label of an axis per group of points by a metric of the first
seed(s), and runs the other seeds at that label only (an eval with ``selected: true`` scores only the chosen
points: the test set is not looked at while tuning).

.. code-block:: yaml

    grid: {model: [gs, igr-i], temperature: [0.1, 0.5, 1.0], seed: [0, 1, 2]}
    select: {axis: temperature, by: train.nll, per: [model], seeds: [0]}   # lowest wins; maximize: true
    eval: {name: test, split: test, samples: 5000, selected: true}
    tables:
      - {name: tuning, rows: model, columns: temperature, metric: train.nll}   # the selecting seeds
      - {name: main, rows: model, metric: test.nll}   # the chosen temperature, over all seeds

Build on another spec: ``extends: other.yaml`` (a path from this spec's folder) starts from that spec;
``base:`` and the parts of ``quick:`` merge key by key (this spec's keys win), any other key given replaces
the other spec's, and name and description are never inherited.

A named axis whose name is an option (``estimator: {gs: {temperature: 0.65}, st: {}}``) also sets that
option to the label. Metrics: ``EVAL.nll``, ``EVAL.neg_elbo`` (``nll`` alone: the first evaluation), and
from training ``train.nll`` (the validation bound of the checkpoint training ended on), ``train.best_step``,
``train.train_seconds``, ``train.steps_per_s``, ``train.timed_steps`` (the steps those two cover). Every
point's config is built when the spec is read, so an unknown option or value is one line before anything
runs.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

SEED = "seed"
EVAL_KEYS = {"name", "split", "samples", "limit", "checkpoint", "seed", "log_z", "log_z_betas",
             "log_z_samples", "selected"}
EVAL_METRICS = ("nll", "neg_elbo", "nll_stderr", "neg_relaxed_objective", "igr_metric", "log_z",
                "log_z_stderr", "seconds", "relaxed_nll")  # log_z: RBM priors; relaxed_nll: sop
TRAIN_METRICS = ("nll", "neg_elbo", "best_step", "step", "train_seconds", "steps_per_s", "timed_steps")
TABLE_KEYS = {"name", "rows", "columns", "metric", "metrics", "seeds", "digits", "reference", "titles"}
SPEC_KEYS = {"name", "description", "extends", "command", "base", "grid", "exclude", "select", "eval",
             "tables", "quick", "page"}
SELECT_KEYS = {"axis", "by", "per", "seeds", "maximize"}
CHECKPOINTS, LOG_Z = ("best", "last"), ("auto", "exact", "ais", "pa")
NAME = re.compile(r"[A-Za-z0-9_.+-]+")  # axis, evaluation and spec names: they name files and folders
MAX_POINTS = 10_000  # a grid larger than this is refused before any config is built
MAX_NODES = 1_000_000  # a spec whose YAML expands (aliases followed) to more values than this is refused


def check_name(name: str, what: str) -> str:
    """``name`` if it may name a file or folder (letters, digits, ``_ . + -``; not ``.`` or ``..``), else a
    one-line :class:`ConfigError`: nothing a spec says may write outside the sweep folder."""
    if not NAME.fullmatch(name) or set(name) == {"."}:
        raise ConfigError(f"{what} {name!r} may hold only letters, digits and _ . + - (it names files)")
    return name


@dataclass(frozen=True)
class Evaluation:
    """One ``dvae eval`` of every point."""

    name: str = "test"
    split: str = "test"
    samples: int = 1000
    limit: int | None = None
    checkpoint: str = "best"
    seed: int = 0
    log_z: str = "auto"
    log_z_betas: int = 1000
    log_z_samples: int = 1024
    selected: bool = False  # with the spec's select: only the chosen points

    def options(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("name", "selected")}

    def check(self, splits: tuple[str, ...]) -> None:
        """A one-line :class:`ConfigError` for a value of the wrong type or out of range (``splits``: the
        command's), so that a spec fails when it is read, not after its points have trained."""
        what = f"eval {self.name!r}"
        whole = {"samples": 1, "seed": 0, "log_z_betas": 2, "log_z_samples": 1}
        for key, least in whole.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"{what}: {key} must be a whole number of at least {least}, not {value!r}")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int)
                                       or self.limit < 1):
            raise ConfigError(f"{what}: limit must be a whole number of at least 1 or null, not "
                              f"{self.limit!r}")
        for key, allowed in (("split", splits), ("checkpoint", CHECKPOINTS), ("log_z", LOG_Z)):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{what}: {key} must be one of {', '.join(allowed)}, not "
                                  f"{getattr(self, key)!r}")
        if not isinstance(self.selected, bool):
            raise ConfigError(f"{what}: selected must be true or false, not {self.selected!r}")


@dataclass(frozen=True)
class Table:
    """Rows and columns are axis names; a cell aggregates the points that differ only in ``seed``."""

    name: str
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    metrics: tuple[str, ...]
    seeds: str = "mean"  # mean: mean ± std over seeds; each: one column per seed
    digits: int = 2
    labels: tuple[str, ...] = ()  # the metrics' column titles (default: the metrics)
    titles: dict[str, str] = field(default_factory=dict, hash=False, compare=False)  # label -> shown
    reference: str = ""  # the title of published numbers shown beside ours
    published: tuple[tuple[str, str, float], ...] = ()  # (row label, column label, value)


@dataclass(frozen=True)
class Select:
    """Tune, then repeat: per group (the labels of ``per``), the label of ``axis`` whose points of the
    ``seeds`` have the best ``metric`` is chosen; the other seeds run at it only."""

    axis: str
    metric: str
    per: tuple[str, ...]
    seeds: tuple[str, ...]  # seed labels that select (all points when the grid has no seed axis)
    maximize: bool = False


@dataclass(frozen=True)
class Point:
    """One grid point: its labels per axis (in axis order) and the options it trains with."""

    labels: tuple[tuple[str, str], ...]
    values: dict[str, Any] = field(hash=False, compare=False)
    eval_options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)  # a label's eval:

    @property
    def name(self) -> str:
        """The run folder's name: ``axis=label`` joined by commas, unsafe characters as ``%XX``."""
        return ",".join(f"{axis}={quote(label)}" for axis, label in self.labels)

    def label(self, axis: str) -> str:
        return dict(self.labels)[axis]


def quote(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), text)


def label_of(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "x".join(label_of(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class Spec:
    name: str
    description: str
    base: dict[str, Any]
    axes: tuple[tuple[str, tuple[tuple[str, dict[str, Any]], ...]], ...]  # axis -> (label, options) ...
    evals: tuple[Evaluation, ...]
    tables: tuple[Table, ...]
    path: Path | None = None
    command: str = "train"
    exclude: tuple[tuple[tuple[str, str], ...], ...] = ()  # points matching every (axis, label) of one
    over: dict[str, Any] = field(default_factory=dict)  # --quick's options, over every label's
    eval_over: dict[str, Any] = field(default_factory=dict)  # --quick's eval settings, over every label's
    select: Select | None = None
    page: Path | None = None  # the results page whose marked tables --report rewrites
    quick: bool = False  # the spec's quick form (its tables show no published numbers)

    @property
    def axis_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.axes)

    def points(self) -> list[Point]:
        out = []
        for combo in itertools.product(*(values for _, values in self.axes)):
            values, evals = dict(self.base), {}
            for _, options in combo:
                values.update({k: v for k, v in options.items() if k != "eval"})
                evals.update(options.get("eval", {}))
            values.update(self.over)
            evals.update(self.eval_over)
            labels = tuple((axis, label) for axis, (label, _) in zip(self.axis_names, combo, strict=True))
            if not any(set(rule) <= set(labels) for rule in self.exclude):
                out.append(Point(labels, values, evals))
        return out

    def run_order(self, points: list[Point]) -> list[Point]:
        """``points`` with the seed axis varying slowest (stable otherwise): every setting's first seed runs
        before any setting's second, so a sweep stopped part-way leaves every row of a table with a seed."""
        seeds = labels_by_axis(self.axes).get(SEED)
        if not seeds:
            return list(points)
        return sorted(points, key=lambda p: seeds.index(p.label(SEED)))

    def point_evals(self, point: Point, chosen: bool = True) -> tuple[Evaluation, ...]:
        """The evaluations of ``point``, with its labels' ``eval:`` settings over the spec's; those marked
        ``selected`` only when the point is a chosen one."""
        return tuple(dataclasses.replace(e, **point.eval_options) for e in self.evals
                     if chosen or not e.selected)

    def selecting(self, labels: Mapping[str, str]) -> bool:
        """Whether the point of ``labels`` (axis -> label: ``dict(point.labels)``, or a result record) runs
        before the choice (every point without ``select:``)."""
        return self.select is None or SEED not in labels or labels[SEED] in self.select.seeds

    def group(self, point: Point) -> tuple[str, ...]:
        """The labels that a choice is made per."""
        return tuple(point.label(a) for a in self.select.per) if self.select else ()

    def evaluation(self, name: str) -> Evaluation:
        return next(e for e in self.evals if e.name == name)


def labels_by_axis(axes: tuple) -> dict[str, list[str]]:
    """Each axis's labels, in grid order (``axes``: :attr:`Spec.axes`)."""
    return {axis: [label for label, _ in bundle] for axis, bundle in axes}


def metric_source(metric: str, evals: tuple[Evaluation, ...]) -> tuple[str, str]:
    """``(source, key)``: source ``train`` or an evaluation's name; a one-line error for an unknown metric."""
    source, _, key = metric.rpartition(".")
    names = [e.name for e in evals]
    if not source:
        source = names[0] if names and key in EVAL_METRICS else "train"
    known = [f"{n}.{k}" for n in names for k in EVAL_METRICS] + [f"train.{k}" for k in TRAIN_METRICS]
    allowed = TRAIN_METRICS if source == "train" else EVAL_METRICS if source in names else ()
    if key not in allowed:
        raise ConfigError(f"unknown metric {metric!r} (known: {', '.join(known)})")
    return source, key
