"""Reading a sweep spec: the YAML of :mod:`.spec`'s format into a :class:`~.spec.Spec`, checked whole (every
key, axis, evaluation, table and ``select:``, and every point's config), so that a mistake is one line
before anything runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .spec import (
    EVAL_KEYS,
    MAX_NODES,
    MAX_POINTS,
    SEED,
    SELECT_KEYS,
    SPEC_KEYS,
    TABLE_KEYS,
    Evaluation,
    Select,
    Spec,
    Table,
    check_name,
    label_of,
    labels_by_axis,
    metric_source,
)


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
    size = 1
    for raw, values in grid.items():
        axis = check_name(str(raw).replace("-", "_"), "grid axis")
        size *= len(values) if isinstance(values, dict | list) else 1
        if size > MAX_POINTS:
            raise ConfigError(f"the grid has more than {MAX_POINTS:,} points; split the spec")
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
    labels = labels_by_axis(axes)
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
    labels = labels_by_axis(axes)
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


def _evals(value: Any, splits: tuple[str, ...]) -> tuple[Evaluation, ...]:
    items = value if isinstance(value, list) else [value] if value is not None else []
    evals = []
    for item in items:
        item = _mapping(item, "each eval")
        unknown = sorted(set(item) - EVAL_KEYS)
        if unknown:
            raise ConfigError(f"unknown eval key {unknown[0]!r} (known: {', '.join(sorted(EVAL_KEYS))})")
        if not isinstance(item.get("name", "test"), str):
            raise ConfigError(f"an eval's name must be text, not {item['name']!r}")
        evals.append(Evaluation(**item))
        check_name(evals[-1].name, "eval name")
        evals[-1].check(splits)
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


def _read(path: Path, children: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A spec file's mapping, with what it ``extends:`` merged in (see :func:`_extend`)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read sweep spec {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"sweep spec {path} is not UTF-8 text (byte {e.start})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse sweep spec {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"sweep spec {path} must be a mapping (base, grid, eval, tables)")
    check_size(data, path)
    unknown = sorted(set(data) - SPEC_KEYS)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in sweep spec {path} "
                          f"(known: {', '.join(sorted(SPEC_KEYS))})")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent:
        raise ConfigError(f"extends: in sweep spec {path} must be the path of another spec")
    parent_path = path.parent / parent  # relative to the extending spec's folder
    if parent_path.resolve() in {p.resolve() for p in (path, *children)}:
        raise ConfigError(f"sweep spec {path} extends itself (through {parent})")
    return _extend(_read(parent_path, (path, *children)), data)


def check_size(data: Any, path: Path) -> None:
    """A one-line :class:`ConfigError` when ``data`` holds more than :data:`MAX_NODES` values with its
    aliases followed (a YAML alias bomb expands without bound as soon as anything walks it)."""
    stack, seen = [data], 0
    while stack:
        value = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise ConfigError(f"sweep spec {path} expands to more than {MAX_NODES:,} values (YAML aliases "
                              "included); it is refused")
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def _extend(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """``child`` on top of ``parent``: ``base`` and ``quick``'s base and eval merge key by key (the child's
    keys win); every other key the child gives (grid, eval, tables, select, exclude, command) replaces
    the parent's. Name, description and page are never inherited: they say what the child is."""
    merged = {k: v for k, v in parent.items() if k not in ("name", "description", "page")}
    for key, value in child.items():
        if key == "base":
            merged["base"] = {**_mapping(parent.get("base"), "base"), **_mapping(value, "base")}
        elif key == "quick":
            quick = dict(parent.get("quick") or {})
            for part, over in (value or {}).items():
                old = quick.get(part)
                both = isinstance(old, dict) and isinstance(over, dict)
                quick[part] = {**_mapping(old, part), **_mapping(over, part)} if both else over
            merged["quick"] = quick
        else:
            merged[key] = value
    return merged


def load_spec(path: str | Path, quick: bool = False) -> Spec:
    """Read and check a spec; with ``quick``, its ``quick:`` overrides (base and each eval) apply."""
    from .commands import command
    from .report import label_titles, metric_title

    path = Path(path)
    data = _read(path)
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
    evals = _evals(data.get("eval"), runs.splits)
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise ConfigError(f"sweep spec {path}: description must be text")
    spec = Spec(name=check_name(str(data.get("name") or path.stem), "spec name"), description=description,
                base=base, axes=axes, evals=evals, tables=(), path=path, command=runs.name, over=over,
                eval_over=eval_over, page=_page(data.get("page"), path), quick=quick)
    select = _select(data.get("select"), axes, evals)
    spec = dataclasses.replace(spec, tables=_tables(data.get("tables"), spec.axis_names, evals, select),
                               exclude=_exclude(data.get("exclude"), axes), select=select)
    for table in spec.tables:  # a title's {field}s name settings of its metric's source, or of its label
        label_titles(spec, table)
        for metric in table.metrics:
            metric_title(spec, table, metric)
    checked: set[str] = set()
    for point in spec.points():
        try:
            config = runs.config(point.values)
            key = runs.pairing(config)
            if key not in checked:  # the seeds of a setting share their pairing: check it once
                runs.check(config)
                checked.add(key)
            for evaluation in spec.point_evals(point):
                evaluation.check(runs.splits)
        except (ConfigError, TypeError) as e:
            raise ConfigError(f"grid point {point.name}: {e}") from None
    return spec


def _page(value: Any, path: Path) -> Path | None:
    """``page:``, the results page whose marked tables ``--report`` rewrites (a path from the spec's folder
    to an existing Markdown file: a spec never creates a file outside its sweep folder)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.endswith(".md"):
        raise ConfigError(f"sweep spec {path}: page must be the path of a Markdown (.md) file")
    return path.parent / value
