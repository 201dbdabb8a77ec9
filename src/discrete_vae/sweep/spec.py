"""A sweep spec: a base config, a grid, the evaluations and the tables, read from YAML and checked whole.

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

A named axis whose name is an option (``estimator: {gs: {temperature: 0.65}, st: {}}``) also sets that
option to the label. Metrics: ``EVAL.nll``, ``EVAL.neg_elbo`` (``nll`` alone: the first evaluation), and
from training ``train.nll`` (the validation bound of the checkpoint training ended on), ``train.best_step``,
``train.train_seconds``, ``train.steps_per_s``. Every point's config is built when the spec is read, so an
unknown option or value is one line before anything runs.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

SEED = "seed"
EVAL_KEYS = {"name", "split", "samples", "limit", "checkpoint", "seed", "log_z", "log_z_betas",
             "log_z_samples", "selected"}
EVAL_METRICS = ("nll", "neg_elbo", "nll_stderr", "neg_relaxed_objective", "igr_metric", "log_z",
                "log_z_stderr", "seconds", "relaxed_nll")  # log_z: RBM priors; relaxed_nll: sop
TRAIN_METRICS = ("nll", "neg_elbo", "best_step", "step", "train_seconds", "steps_per_s")
TABLE_KEYS = {"name", "rows", "columns", "metric", "metrics", "seeds", "digits", "reference", "titles"}
SPEC_KEYS = {"name", "description", "command", "base", "grid", "exclude", "select", "eval", "tables", "quick"}
SELECT_KEYS = {"axis", "by", "per", "seeds", "maximize"}


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

    def point_evals(self, point: Point, chosen: bool = True) -> tuple[Evaluation, ...]:
        """The evaluations of ``point``, with its labels' ``eval:`` settings over the spec's; those marked
        ``selected`` only when the point is a chosen one."""
        return tuple(dataclasses.replace(e, **point.eval_options) for e in self.evals
                     if chosen or not e.selected)

    def selecting(self, point: Point) -> bool:
        """Whether ``point`` runs before the choice (every point without ``select:``)."""
        return self.select is None or SEED not in self.axis_names or point.label(SEED) in self.select.seeds

    def group(self, point: Point) -> tuple[str, ...]:
        """The labels that a choice is made per."""
        return tuple(point.label(a) for a in self.select.per) if self.select else ()

    def evaluation(self, name: str) -> Evaluation:
        return next(e for e in self.evals if e.name == name)


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in value.items()}


def _axes(grid: Any, options: set[str]) -> tuple:
    if not isinstance(grid, dict) or not grid:
        raise ConfigError("grid must be a non-empty mapping of axes (an option with a list of values, or a "
                          "named axis with a mapping of labels to options)")
    axes = []
    for raw, values in grid.items():
        axis = str(raw).replace("-", "_")
        if isinstance(values, dict):
            if not values:
                raise ConfigError(f"grid axis {axis!r} is empty")
            bundle = []
            for label, extra in values.items():
                extra = _mapping(extra, f"grid axis {axis!r}, label {label!r}")
                if "eval" in extra:  # evaluation settings for this label's points (a larger --limit, ...)
                    over = _mapping(extra["eval"], f"grid axis {axis!r}, label {label!r}, eval")
                    unknown = sorted(set(over) - (EVAL_KEYS - {"name"}))
                    if unknown:
                        raise ConfigError(f"unknown eval key {unknown[0]!r} in grid axis {axis!r}, "
                                          f"label {label!r}")
                    extra["eval"] = over
                if axis in options:
                    extra = {axis: label, **extra}
                bundle.append((label_of(label), extra))
            axes.append((axis, tuple(bundle)))
        elif isinstance(values, list):
            if not values:
                raise ConfigError(f"grid axis {axis!r} is empty")
            if axis not in options:
                raise ConfigError(f"grid axis {axis!r} is not a dvae train option; give a mapping of labels "
                                  "to options to name an axis of your own")
            axes.append((axis, tuple((label_of(v), {axis: v}) for v in values)))
        else:
            raise ConfigError(f"grid axis {axis!r} must be a list of values or a mapping of labels to "
                              "options")
        labels = [label for label, _ in axes[-1][1]]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"grid axis {axis!r} repeats a value")
    return tuple(axes)


def _exclude(value: Any, axes: tuple) -> tuple[tuple[tuple[str, str], ...], ...]:
    """``exclude: [{axis: label, ...}, ...]``: the grid points to leave out."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(rule, dict) and rule for rule in value):
        raise ConfigError("exclude must be a list of mappings of grid axes to labels")
    labels = {axis: {label for label, _ in bundle} for axis, bundle in axes}
    out = []
    for rule in value:
        pairs = tuple((str(axis).replace("-", "_"), label_of(label)) for axis, label in rule.items())
        for axis, label in pairs:
            if label not in labels.get(axis, ()):
                raise ConfigError(f"exclude names {axis}={label}, which is not in the grid")
        out.append(pairs)
    return tuple(out)


def _select(value: Any, axes: tuple, evals: tuple[Evaluation, ...]) -> Select | None:
    """``select: {axis: AXIS, by: METRIC, per: [AXIS, ...], seeds: [SEED, ...], maximize: false}``."""
    if value is None:
        if any(e.selected for e in evals):
            raise ConfigError("an eval is marked selected: true, but the spec has no select:")
        return None
    item = _mapping(value, "select")
    unknown = sorted(set(item) - SELECT_KEYS)
    if unknown:
        raise ConfigError(f"unknown select key {unknown[0]!r} (known: {', '.join(sorted(SELECT_KEYS))})")
    labels = {axis: [label for label, _ in bundle] for axis, bundle in axes}
    axis = str(item.get("axis", "")).replace("-", "_")
    if axis not in labels or axis == SEED:
        raise ConfigError(f"select: axis {axis or '(none)'!r} must be an axis of the grid other than seed")
    if "by" not in item:
        raise ConfigError("select: needs by: the metric that chooses (lowest wins; maximize: true: highest)")
    metric = str(item["by"])
    source, _ = metric_source(metric, evals)
    if any(e.name == source and e.selected for e in evals):
        raise ConfigError(f"select: by {metric!r} comes from an eval that only scores the chosen points")
    others = [a for a in labels if a not in (axis, SEED)]
    per = tuple(a.replace("-", "_") for a in _names(item["per"])) if "per" in item else tuple(others)
    for a in per:
        if a not in others:
            raise ConfigError(f"select: per names {a!r}, which is not an axis of the grid other than "
                              f"{axis} and seed")
    seeds: tuple[str, ...] = ()
    if SEED in labels:
        seeds = tuple(label_of(s) for s in item.get("seeds", labels[SEED][:1]))
        bad = [s for s in seeds if s not in labels[SEED]]
        if bad or not seeds:
            raise ConfigError(f"select: seeds must be seeds of the grid ({', '.join(labels[SEED])})")
    if not isinstance(item.get("maximize", False), bool):
        raise ConfigError("select: maximize must be true or false")
    return Select(axis, metric, per, seeds, item.get("maximize", False))


def _evals(value: Any) -> tuple[Evaluation, ...]:
    items = value if isinstance(value, list) else [value] if value is not None else []
    evals = []
    for item in items:
        item = _mapping(item, "each eval")
        unknown = sorted(set(item) - EVAL_KEYS)
        if unknown:
            raise ConfigError(f"unknown eval key {unknown[0]!r} (known: {', '.join(sorted(EVAL_KEYS))})")
        try:
            evals.append(Evaluation(**item))
        except TypeError as e:
            raise ConfigError(f"bad eval: {e}") from None
        if evals[-1].samples < 1:
            raise ConfigError("eval samples must be at least 1")
    names = [e.name for e in evals]
    if len(set(names)) != len(names):
        raise ConfigError("two evals share a name; name them (name: test-S1000)")
    if "train" in names:
        raise ConfigError("an eval may not be named train (train.* are training's metrics); try train-S1")
    return tuple(evals)


def _tables(value: Any, spec_axes: tuple[str, ...], evals: tuple[Evaluation, ...],
            select: Select | None = None) -> tuple[Table, ...]:
    items = value if isinstance(value, list) else [value] if value is not None else []
    tables = []
    for i, item in enumerate(items):
        item = _mapping(item, "each table")
        unknown = sorted(set(item) - TABLE_KEYS)
        if unknown:
            raise ConfigError(f"unknown table key {unknown[0]!r} (known: {', '.join(sorted(TABLE_KEYS))})")
        rows, columns = _names(item.get("rows")), _names(item.get("columns"))
        metrics = item.get("metrics", item.get("metric", "nll"))
        labels = _names(list(metrics)) if isinstance(metrics, dict) else ()
        metrics = _names(list(metrics.values()) if isinstance(metrics, dict) else metrics)
        title, published = _published(item.get("reference"), len(columns))
        table = Table(name=str(item.get("name", f"table{i + 1}")), rows=rows, columns=columns,
                      metrics=metrics, labels=labels or metrics, seeds=str(item.get("seeds", "mean")),
                      digits=int(item.get("digits", 2)), reference=title, published=published,
                      titles=_titles(item.get("titles")))
        if not rows:
            raise ConfigError(f"table {table.name!r} needs rows (an axis of the grid)")
        for axis in rows + columns:
            if axis not in spec_axes:
                raise ConfigError(f"table {table.name!r}: {axis!r} is not an axis of the grid "
                                  f"({', '.join(spec_axes)})")
        chosen = select.axis if select and select.axis not in rows + columns else None
        left = [a for a in spec_axes if a not in rows + columns and a not in (SEED, chosen)]
        if left:
            raise ConfigError(f"table {table.name!r}: grid axis {left[0]!r} is neither a row, a column nor "
                              "seed; a cell would mix its values")
        if table.seeds not in ("mean", "each"):
            raise ConfigError(f"table {table.name!r}: seeds must be mean or each, not {table.seeds!r}")
        for metric in table.metrics:
            metric_source(metric, evals)
        tables.append(table)
    return tuple(tables)


def _titles(value: Any) -> dict[str, str]:
    """A table's ``titles: {LABEL: shown text}``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError("a table's titles must map labels to the text shown for them")
    return {label_of(k): str(v) for k, v in value.items()}


def _published(value: Any, columns: int) -> tuple[str, tuple[tuple[str, str, float], ...]]:
    """A table's ``reference: {title: ..., values: {ROW: VALUE}}`` (no columns) or ``{ROW: {COLUMN:
    VALUE}}`` (labels joined by " / " where rows or columns span several axes)."""
    if value is None:
        return "", ()
    if not isinstance(value, dict) or not isinstance(value.get("title"), str) or not isinstance(
            value.get("values"), dict):
        raise ConfigError("a table's reference needs a title and values (a mapping of row labels to numbers, "
                          "or to mappings of column labels to numbers)")
    out = []
    for row, cell in value["values"].items():
        items = cell.items() if isinstance(cell, dict) else [("", cell)]
        for column, number in items:
            if not isinstance(number, int | float) or (columns > 0) != isinstance(cell, dict):
                raise ConfigError(f"reference value of {row!r} must be a number"
                                  + (" per column label" if columns else ""))
            out.append((label_of(row), label_of(column), float(number)))
    return value["title"], tuple(out)


def _names(value: Any) -> tuple[str, ...]:
    """A table's rows, columns or metrics: one name or a list of them."""
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    return (str(value),) if value else ()


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


def load_spec(path: str | Path, quick: bool = False) -> Spec:
    """Read and check a spec; with ``quick``, its ``quick:`` overrides (base and each eval) apply."""
    from .commands import command

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read sweep spec {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse sweep spec {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"sweep spec {path} must be a mapping (base, grid, eval, tables)")
    unknown = sorted(set(data) - SPEC_KEYS)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in sweep spec {path} "
                          f"(known: {', '.join(sorted(SPEC_KEYS))})")
    runs = command(str(data.get("command", "train")))
    base = _mapping(data.get("base"), "base")
    quick_part = _mapping(data.get("quick"), "quick")
    if quick and not quick_part:
        raise ConfigError(f"sweep spec {path} has no quick: section")
    over = _mapping(quick_part.get("base"), "quick.base") if quick else {}
    eval_over = _mapping(quick_part.get("eval"), "quick.eval") if quick else {}
    unknown = sorted(set(eval_over) - (EVAL_KEYS - {"name"}))
    if unknown:
        raise ConfigError(f"unknown eval key {unknown[0]!r} in quick.eval")
    axes = _axes(data.get("grid"), runs.options())
    evals = _evals(data.get("eval"))
    spec = Spec(name=str(data.get("name") or path.stem), description=str(data.get("description") or ""),
                base=base, axes=axes, evals=evals, tables=(), path=path, command=runs.name, over=over,
                eval_over=eval_over)
    select = _select(data.get("select"), axes, evals)
    spec = dataclasses.replace(spec, tables=_tables(data.get("tables"), spec.axis_names, evals, select),
                               exclude=_exclude(data.get("exclude"), axes), select=select)
    for point in spec.points():
        try:
            runs.config(point.values)
            spec.point_evals(point)
        except (ConfigError, TypeError) as e:
            raise ConfigError(f"grid point {point.name}: {e}") from None
    return spec
