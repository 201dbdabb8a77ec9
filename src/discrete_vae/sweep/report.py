"""A sweep's results: ``results.json`` and ``results.csv`` (one row per grid point), ``table.md`` (every
table of the spec, with its settings and provenance below it), the tables in the spec's results page
between markers (``--report``), and the plots of :mod:`.plots`."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import statistics
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..provenance import summary
from ..runs import logged_step, timed_rate
from .commands import command
from .plots import write_plots
from .runner import (
    ERROR,
    SWEEP,
    TRAIN,
    config_changes,
    current_eval,
    eval_file,
    point_state,
    read_json,
    short_of,
)
from .spec import SEED, TRAIN_METRICS, Point, Spec, Table, metric_source

RESULTS_JSON, RESULTS_CSV, TABLE_MD = "results.json", "results.csv", "table.md"


def collect(spec: Spec, out: Path, submitted: set[str] = frozenset()) -> list[dict[str, Any]]:
    """One record per point: its labels, state, training result, evaluations, error, ``choice`` (the
    label a ``select:`` chose for its group, None before) and ``chosen`` (whether that is its label: True,
    False, or None while the choice waits on the selecting points; True without ``select:``)."""
    points = spec.points()
    first = {p.name: _record(spec, out, p, submitted, chosen=False) for p in points
             if spec.selecting(dict(p.labels))}
    choices = choices_of(spec, list(first.values()))
    records = []
    for point in points:
        choice = choices.get(spec.group(point)) if spec.select else None
        chosen = True if spec.select is None else None if choice is None else choice == point.label(
            spec.select.axis)
        tuned = first.get(point.name)  # read already, without the evaluations kept for chosen points
        reread = tuned is None or (chosen is True and any(e.selected for e in spec.evals))
        record = _record(spec, out, point, submitted, chosen is True) if reread else tuned
        if tuned:
            if tuned["state"] == "done" and record["state"] == "interrupted":
                record["state"] = "pending"  # tuned, and chosen: its selected evaluations are to run
        elif chosen is None:
            record["state"] = "waiting"
        elif not chosen:
            record["state"] = "unselected"
        record["chosen"], record["choice"] = chosen, choice
        records.append(record)
    return records


def _record(spec: Spec, out: Path, point: Point, submitted: set[str], chosen: bool) -> dict[str, Any]:
    """A point's state and results; results made with settings other than the spec's now (a changed
    config, a run short of the spec's steps, an evaluation with other settings) are left out."""
    folder = out / point.name
    runs = command(spec.command)
    config = runs.config(point.values)
    steps = runs.steps(config)
    changed = config_changes(runs, folder, config)
    evals = spec.point_evals(point, chosen)
    state = point_state(folder, evals, point.name in submitted, steps, bool(changed))
    record: dict[str, Any] = {"point": point.name, **dict(point.labels), "state": state}
    stale = bool(changed) or short_of(folder, steps)
    train = None if stale else read_json(folder / TRAIN)
    record["train"] = {k: train.get(k) for k in TRAIN_METRICS} if train else None
    record["evals"] = {e.name: None if stale else current_eval(folder, e) for e in spec.point_evals(point)}
    record["provenance"] = [r.get("provenance") for r in (train, *record["evals"].values()) if r]
    record["rescore"] = [] if stale or not train else [  # scored with settings the spec no longer gives
        e.name for e in evals
        if (folder / eval_file(e)).is_file() and record["evals"][e.name] is None]
    if state in ("running", "interrupted"):  # how far its training has come
        record["progress"] = {"step": logged_step(folder / "run"), "steps": steps,
                              "steps_per_s": timed_rate(folder / "run")}
    error = read_json(folder / ERROR)
    record["error"] = error.get("error") if error else None
    if changed:
        record["changed"] = {k: list(v) for k, v in changed.items()}
    return record


def choices_of(spec: Spec, records: list[dict[str, Any]]) -> dict[tuple[str, ...], str]:
    """Per group of ``select.per`` labels, the chosen label of ``select.axis``: the best mean of
    ``select.metric`` over the selecting seeds, once every selecting point of the group is done or failed
    (failed ones, a diverged temperature say, drop out); ties go to the label first in the grid."""
    select = spec.select
    if select is None:
        return {}
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for record in records:
        if spec.selecting(record):
            groups.setdefault(tuple(record[a] for a in select.per), []).append(record)
    choices = {}
    for group, members in groups.items():
        if any(r["state"] not in ("done", "failed") for r in members):
            continue
        values: dict[str, list[float]] = {}
        for r in members:
            value = value_of(r, select.metric, spec) if r["state"] == "done" else None
            if value is not None:
                values.setdefault(r[select.axis], []).append(value)
        if values:
            sign = -1.0 if select.maximize else 1.0
            choices[group] = min(values, key=lambda label: sign * statistics.mean(values[label]))
    return choices


def in_table(spec: Spec, table: Table, record: dict[str, Any]) -> bool:
    """Whether a point's values go into ``table``: with ``select:``, a table showing the selected axis
    holds the selecting seeds' points, and one that leaves it out holds the chosen points (every seed)."""
    if spec.select is None:
        return True
    if spec.select.axis in table.rows + table.columns:
        return spec.selecting(record)
    return record["chosen"] is True


def value_of(record: dict[str, Any], metric: str, spec: Spec) -> float | None:
    return measured(record, metric, spec)[0]


def measured(record: dict[str, Any], metric: str, spec: Spec) -> tuple[float | None, float | None]:
    """A point's value of ``metric`` and, for an evaluation's bound, its standard error over examples."""
    source, key = metric_source(metric, spec.evals)
    part = record["train"] if source == "train" else record["evals"].get(source)
    value = part.get(key) if part else None
    if not (isinstance(value, int | float) and math.isfinite(value)):
        return None, None
    stderr = part.get(f"{key}_stderr") if source != "train" else None
    return float(value), float(stderr) if isinstance(stderr, int | float) else None


def flat(record: dict[str, Any], spec: Spec) -> dict[str, Any]:
    row = {k: record[k] for k in ("point", *spec.axis_names, "state")}
    if spec.select:
        row["chosen"] = record["chosen"]
    for key in TRAIN_METRICS:
        row[f"train.{key}"] = (record["train"] or {}).get(key)
    for evaluation in spec.evals:
        result = record["evals"].get(evaluation.name) or {}
        for key in ("nll", "nll_stderr", "neg_elbo", "samples", "examples", "step", "checkpoint"):
            row[f"{evaluation.name}.{key}"] = result.get(key)
    row["error"] = record["error"]
    return row


def _fmt(values: list[float], digits: int, seeds: bool, stderr: float | None = None) -> str:
    """Mean ± std over seeds; one seed: the value, ± its standard error over examples when it has one."""
    if not values:
        return "—"
    if len(values) == 1:
        text = f"{values[0]:.{digits}f}" + (f" ± {stderr:.{digits}f}" if stderr is not None else "")
        return text + (" (1 seed)" if seeds else "")
    text = f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"
    return text + (f" ({len(values)} seeds)" if seeds else "")


def _options_text(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "(base)"


def _format(title: str, fields: dict[str, Any], what: str) -> str:
    try:
        return title.format_map(fields)
    except (KeyError, ValueError, IndexError, AttributeError) as e:
        raise ConfigError(f"{what}: the title {title!r} names no setting ({e})") from None


def label_titles(spec: Spec, table: Table) -> dict[str, str]:
    """The table's ``titles:`` (label -> shown text), each ``{field}`` filled from its label's first
    point: its config's options and its first evaluation's settings (``{steps:,}``, ``{limit}``)."""
    runs, shown = command(spec.command), {}
    for label, title in table.titles.items():
        point = next((p for p in spec.points() if label in dict(p.labels).values()), None)
        if "{" not in title or point is None:
            shown[label] = title
            continue
        evals = spec.point_evals(point)
        fields = {**(evals[0].__dict__ if evals else {}), **runs.config(point.values).settings()}
        shown[label] = _format(title, fields, f"table {table.name!r}, label {label!r}")
    return shown


def metric_title(spec: Spec, table: Table, metric: str) -> str:
    """A metric's column title: the spec's title, whose ``{field}``s name the settings it was made with
    (an evaluation's ``{samples}``, ``{split}``, ``{limit}``, ...; for ``train.*`` the config's options,
    ``{val_samples}`` say), so that a ``--quick`` table says what ran."""
    title = dict(zip(table.metrics, table.labels, strict=True))[metric]
    if "{" not in title:
        return title
    source, _ = metric_source(metric, spec.evals)
    if source == "train":
        runs = command(spec.command)
        fields = runs.config(spec.points()[0].values).settings()
    else:
        fields = dataclasses.replace(spec.evaluation(source), **spec.eval_over).__dict__
    return _format(title, fields, f"table {table.name!r}, metric {metric}")


def table_markdown(spec: Spec, table: Table, records: list[dict[str, Any]], command_line: str = "") -> str:
    """The table: rows and columns by axis label in the spec's order, one column per column label and
    metric; a cell is mean ± std over seeds (or one column per seed). Below it: what every row and column
    label sets, what all points share, each evaluation's setting, and where the numbers were made
    (:func:`made_line`)."""
    by_point = {r["point"]: r for r in records}
    points = [p for p in spec.points() if p.name in by_point]  # all, or the --only points

    def labels(point: Point, names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(point.label(a) for a in names)

    def seed(point: Point) -> str:
        return point.label(SEED) if SEED in spec.axis_names else ""

    row_keys = list(dict.fromkeys(labels(p, table.rows) for p in points))
    col_keys = list(dict.fromkeys(labels(p, table.columns) for p in points))
    seeds = list(dict.fromkeys(seed(p) for p in points))
    cells: dict[tuple, dict[str, float]] = {}
    errors: dict[tuple, float | None] = {}
    for p in points:
        if not in_table(spec, table, by_point[p.name]):
            continue
        for metric in table.metrics:
            value, stderr = measured(by_point[p.name], metric, spec)
            if value is not None:
                key = (labels(p, table.rows), labels(p, table.columns), metric)
                cells.setdefault(key, {})[seed(p)] = value
                errors[(*key, seed(p))] = stderr
    counts = {len(v) for v in cells.values()}
    uneven = len(counts) > 1
    columns = [(c, m, s) for c in col_keys for m in table.metrics
               for s in (seeds if table.seeds == "each" else [None])]
    head = [" / ".join(table.rows)]
    title = {m: metric_title(spec, table, m) for m in table.metrics}
    reference = table.reference if not spec.quick else ""  # published numbers are for the full settings
    choices = {tuple(r[a] for a in spec.select.per): r["choice"] for r in records
               if r["choice"] is not None} if spec.select else {}
    chosen_column = bool(spec.select and spec.select.axis not in table.rows + table.columns
                         and set(spec.select.per) <= set(table.rows))
    if chosen_column:
        head.append(f"{spec.select.axis} (chosen)")

    titles = label_titles(spec, table)

    def shown(key: tuple[str, ...]) -> list[str]:
        return [titles.get(label, label) for label in key]

    for c, m, s in columns:
        name = " / ".join([*shown(c), title[m]] if len(table.metrics) > 1 or not c else shown(c))
        head.append(f"{name} (seed {s})" if s is not None else name)
    published = {(r, c): v for r, c, v in table.published}
    head += [" / ".join([*shown(c), reference]) for c in col_keys] if reference else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in row_keys:
        row = [" / ".join(shown(r))]
        if chosen_column:
            group = tuple(dict(zip(table.rows, r, strict=True))[a] for a in spec.select.per)
            row.append(titles.get(choices[group], choices[group]) if group in choices else "—")
        for c, m, s in columns:
            got = cells.get((r, c, m), {})
            values = list(got.values()) if s is None else [got[s]] if s in got else []
            one = next(iter(got)) if s is None and len(got) == 1 else s
            row.append(_fmt(values, table.digits, uneven and s is None, errors.get((r, c, m, one))))
        if reference:
            row += [f"{published[key]}" if (key := (" / ".join(r), " / ".join(c))) in published else ""
                    for c in col_keys]
        lines.append("| " + " | ".join(row) + " |")
    finished = any(r["state"] == "done" for r in records if in_table(spec, table, r))
    notes = table_notes(spec, table, counts, finished)
    if spec.select:
        notes.append(select_note(spec, table, choices))
    shown_records = [r for r in records if in_table(spec, table, r)
                     and any(measured(r, m, spec)[0] is not None for m in table.metrics)]
    notes.append(made_line(shown_records, command_line, finished))
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"


def made_line(records: list[dict[str, Any]], command_line: str, finished: bool = False) -> str:
    """Where the results of ``records`` were made: the command lines that made them (``command_line``, the
    sweep's last, for results made before they recorded theirs), dates, code commits and machines;
    ``finished``: some point has finished, though none of ``records`` shows a result."""
    made = [p for r in records for p in r.get("provenance", []) if p]
    why = "no finished point recorded the metric" if finished else "no point has finished"
    where = (summary(made) if records else
             f"Date: none yet ({why}) · Code commit: none yet · Machine: none yet")
    commands = sorted({p.get("command") or command_line for p in made} - {""})
    if not commands and command_line:
        commands = [command_line]
    return f"Command: {'; '.join(f'`{c}`' for c in commands)} · {where}" if commands else where


def select_note(spec: Spec, table: Table, choices: dict[tuple[str, ...], str]) -> str:
    """How the spec's ``select:`` chose, and which choices ``table`` shows."""
    select = spec.select
    seeds = f" of seed{'s' * (len(select.seeds) > 1)} {', '.join(select.seeds)}" if select.seeds else ""
    per = f" per {', '.join(select.per)}" if select.per else ""
    how = (f"{select.axis} chosen{per} by the {'highest' if select.maximize else 'lowest'} {select.metric}"
           f"{seeds}")
    if select.axis in table.rows + table.columns:
        return f"These are the selecting points: {how}."
    made = "; ".join(f"{' / '.join(g) or 'all'}: {label}" for g, label in choices.items()) or "not yet made"
    return f"Each cell is at the chosen {select.axis} ({how}): {made}."


def table_notes(spec: Spec, table: Table, counts: set[int], finished: bool = False) -> list[str]:
    """The settings behind a table: each row and column label's options, the options every point shares,
    and the evaluations its metrics come from (``finished``: some of its points have finished)."""
    axes = dict(spec.axes)
    seeds = f"; {seeds_note(counts, finished)}" if table.seeds == "mean" else ""
    notes = [f"Metric{'s' * (len(table.metrics) > 1)}: {', '.join(table.metrics)}{seeds}. A cell of one "
             "seed shows ± the standard error over examples where the metric has one."]
    for axis in table.rows + table.columns:
        sets = "; ".join(f"{label}: {_options_text({k: v for k, v in o.items() if k != axis})}"
                         for label, o in axes[axis] if set(o) - {axis})
        if sets:
            notes.append(f"{axis}: {sets}.")
    varied = {k for _, bundle in spec.axes for _, options in bundle for k in options}
    shared = {**{k: v for k, v in spec.base.items() if k not in varied}, **spec.over}
    if shared:
        notes.append("All points: " + _options_text(shared) + ".")
    sources = dict.fromkeys(metric_source(m, spec.evals)[0] for m in table.metrics)
    for e in spec.evals:
        e = dataclasses.replace(e, **spec.eval_over)
        if e.name in sources:
            examples = "all examples" if e.limit is None else f"{e.limit} examples"
            bound = "the IW bound" if spec.command == "train" else "−L^SP"
            notes.append(f"{e.name}: {bound} on the {e.split} split, S = {e.samples}, {examples}, "
                         f"{e.checkpoint} checkpoint.")
    return notes


def seeds_note(counts: set[int], finished: bool = False) -> str:
    if not counts:
        return "no finished point recorded it" if finished else "no finished points"
    if len(counts) == 1:
        n = next(iter(counts))
        return f"mean ± std over {n} seeds" if n > 1 else "1 seed"
    return "mean ± std over the seeds shown per cell"


BEGIN, END = "<!-- dvae sweep --report: {} -->", "<!-- end dvae sweep --report: {} -->"


def write_page(page: Path, blocks: dict[str, str], begin: str = BEGIN, end: str = END) -> Path:
    """Put each table's block (``blocks``: name -> Markdown) into the results page ``page``, between the
    markers ``begin`` and ``end`` formatted with its name (a sweep's: ``<!-- dvae sweep --report: NAME -->``
    and ``<!-- end dvae sweep --report: NAME -->``); a table the page has no markers for is added at its
    end, under a heading of its name. The rest of the page (what the tables show) is left as it is."""
    from ..checkpoint import atomic_write_bytes

    try:
        text = page.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or e
        raise ConfigError(f"cannot read the results page {page}: {reason}") from None
    for name, block in blocks.items():
        first, last = begin.format(name), end.format(name)
        if first in text and last in text.split(first, 1)[1]:
            head, rest = text.split(first, 1)
            text = head + first + "\n" + block.rstrip("\n") + "\n" + last + rest.split(last, 1)[1]
        else:
            text = text.rstrip("\n") + f"\n\n## {name}\n\n{first}\n{block.rstrip()}\n{last}\n"
    atomic_write_bytes(page, text.encode())
    return page


def write_report(spec: Spec, out: Path, records: list[dict[str, Any]], page: bool = False) -> dict[str, Path]:
    """Write results.json, results.csv, table.md and the plots, and with ``page`` the tables into the spec's
    results page (not for ``--quick``: its numbers are not results); returns their paths by kind."""
    from ..checkpoint import atomic_write_bytes
    from ..runs import dumps

    written = {}
    atomic_write_bytes(out / RESULTS_JSON, (dumps(records) + "\n").encode())
    written["json"] = out / RESULTS_JSON
    rows = [flat(r, spec) for r in records]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["point"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / RESULTS_CSV, buffer.getvalue().encode())
    written["csv"] = out / RESULTS_CSV
    ran = (read_json(out / SWEEP) or {}).get("command") or "(not recorded)"
    blocks = {table.name: table_markdown(spec, table, records, ran) for table in spec.tables}
    parts = [f"# {spec.name}\n"] + ([spec.description.strip() + "\n"] if spec.description else [])
    parts += [f"## {name}\n\n{block}" for name, block in blocks.items()]
    atomic_write_bytes(out / TABLE_MD, "\n".join(parts).encode())
    written["table"] = out / TABLE_MD
    if page and spec.page is not None and not spec.quick:
        written["page"] = write_page(spec.page, blocks)
    written.update(write_plots(spec, out, records))
    return written
