"""Variance of the unbiased gradient estimators over training, every estimator on the same model states.

One model per setting is trained in stages (``dvae train``, then ``dvae train --resume RUN --steps N``;
a constant learning rate makes each stage the prefix of one long run), and at the end of each stage
``dvae gradients`` measures every estimator on that checkpoint, on one fixed validation batch, against
the same reference gradient: bias, variance, milliseconds per estimate and evaluations of ``f``
(``NAME:K`` sets each estimator's samples, so that comparisons can be made at equal evaluations). The
learned parts of ``double-cv``, ``rodeo`` and ``relax`` are first trained on each checkpoint for
``--adapt`` steps (the model frozen), as training would have adapted them.

- ``binary``: the model of ``experiments/binary_protocol.yaml`` (200 binary latents, 784-200-200
  LeakyReLU networks, a uniform prior, batch 100, Adam at 1e-3, the one-sample ELBO with its KL
  sampled), trained with ``rloo`` at K = 2; stages 10^3, 10^4, 10^5, 10^6 steps.
- ``categorical``: the default gs model (20 x 10, 784-512-256) at a constant learning rate 1e-3; stages
  10^3, 10^4, 10^5 steps.

Prints, per setting, the variance and the variance x ms of each estimator at each stage (markdown) and
where each stage was measured, and writes ``OUT/variance.json`` and ``OUT/variance.png`` (variance, and
variance x ms, against the step) over every setting and stage measured under ``OUT`` so far; with
``--page`` the tables go into a results page too, between the setting's markers
(``docs/results/estimator_variance.md``), and the figure beside it (``estimator_variance.png``).
Resumable: a stage whose ``gradients.json`` exists is not measured again, and the run continues from
its last checkpoint. Each stage keeps its model in ``OUT/SETTING/step-N/model`` (a run folder), so that
an estimator added later can be measured on the same states:
``dvae gradients OUT/SETTING/step-N/model --checkpoint last --estimators NAME:K ...``. Several hours at
the full stages on one CPU core (mostly the 10^6 steps).

``--reuse SETTING=RUN`` measures a stage on the last checkpoint of another run folder of the same
training when it stands at that stage's step, instead of training there: its ``config.yaml`` must equal
the setting's but for where it lives and its length and cadences (a constant learning rate, so the
runs are one trajectory). The binary setting is the ``rloo`` K = 2 cell of
``experiments/binary_protocol.yaml``, so its 10^6 stage can be that cell's finished run:
``--reuse binary=SWEEP/seed=0,K=2,estimator=rloo/run``.

    OMP_NUM_THREADS=1 python bench/estimator_variance.py --data-dir ../shared/data --out runs/variance
    python bench/estimator_variance.py --settings binary --stages 20,40 --dataset digits \\
        --draws 5 --adapt 2 --out /tmp/variance   # a smoke run
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

from discrete_vae.checkpoint import atomic_write_bytes, load_checkpoint
from discrete_vae.cli import main as dvae
from discrete_vae.sweep.commands import NEUTRAL, TrainCommand, recorded
from discrete_vae.sweep.report import write_page

# a setting's tables on a results page (--page) lie between these, as a sweep's do between its own
MARKERS = ("<!-- bench/estimator_variance.py: {} -->", "<!-- end bench/estimator_variance.py: {} -->")

SETTINGS = {
    "binary": {
        "train": {"preset": "dong2020-nonlinear", "prior": "uniform", "batch_size": 100, "lr": 1e-3,
                  "kl": "sampled", "estimator": "rloo", "k": 2},
        "stages": [1_000, 10_000, 100_000, 1_000_000],
        "estimators": ["rloo:2", "disarm:2", "double-cv:2", "rodeo:2", "relax:1", "unordered:2",
                       "sum-and-sample:2", "rloo:3", "arms:3", "double-cv:3", "rodeo:3", "rloo:4", "arms:4",
                       "indecater:1"],
    },
    "categorical": {
        "train": {"latent": "20x10", "lr_schedule": "constant"},
        "stages": [1_000, 10_000, 100_000],
        "estimators": ["rloo:2", "disarm:2", "carms:2", "unordered:2", "sum-and-sample:2", "rloo:3",
                       "carms:3", "indecater:1"],
    },
}


def reused_run(setting: str, steps: int, args: argparse.Namespace) -> Path | None:
    """The ``--reuse`` run of ``setting`` if it stands at ``steps``; one line if it is another training."""
    run = args.reuse.get(setting)
    if run is None or int(load_checkpoint(run / "last.safetensors")["step"]) != steps:
        return None
    expected = TrainCommand.config({**SETTINGS[setting]["train"], "dataset": args.dataset}).flat()
    found = recorded(TrainCommand, run) or {}
    ignored = {*NEUTRAL, "steps", "epochs", "eval_every"}
    differ = sorted(k for k, v in expected.items() if k not in ignored and found.get(k) != v)
    if differ:
        raise SystemExit(f"bench/estimator_variance.py: --reuse {setting}={run} trains otherwise: "
                         + ", ".join(f"{k} {found.get(k)!r} (the setting's {expected[k]!r})" for k in differ))
    return run


def keep_model(run: Path, model: Path) -> None:
    """A copy of the stage's model as a run folder of its own (``config.yaml`` and ``last.safetensors``),
    since the next stage trains ``run`` on: ``dvae gradients MODEL --checkpoint last`` measures an
    estimator added later on the same state."""
    for name in ("config.yaml", "last.safetensors"):
        atomic_write_bytes(model / name, (run / name).read_bytes())


def run_stage(root: Path, setting: str, steps: int, args: argparse.Namespace) -> dict:
    """Train ``setting``'s run to ``steps`` (or resume it there; or take the ``--reuse`` run standing
    there) and measure the estimators on it."""
    run, out = root / setting / "run", root / setting / f"step-{steps}"
    if (out / "gradients.json").exists():
        return json.loads((out / "gradients.json").read_text())
    spec = SETTINGS[setting]
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    common = ["--steps", str(steps), "--eval-every", str(steps),
              "--checkpoint-every", str(min(steps, 10_000))]
    flags = [part for k, v in spec["train"].items() for part in (f"--{k.replace('_', '-')}", str(v))]
    if (reused := reused_run(setting, steps, args)) is not None:
        run, argv = reused, []
    elif (run / "config.yaml").exists():
        argv = ["train", "--resume", str(run), *common, *data]
    else:
        argv = ["train", *flags, "--dataset", args.dataset, *common, "--out", str(run), *data]
    if argv and dvae(argv) != 0:
        raise SystemExit(f"bench/estimator_variance.py: `dvae {' '.join(argv)}` failed")
    keep_model(run, out / "model")
    argv = ["gradients", str(run), "--checkpoint", "last", "--estimators", ",".join(spec["estimators"]),
            "--draws", str(args.draws), "--batch", str(args.batch), "--adapt", str(args.adapt),
            "--reference-samples", str(args.reference_samples), "--out", str(out), *data]
    if dvae(argv) != 0:
        raise SystemExit(f"bench/estimator_variance.py: `dvae {' '.join(argv)}` failed")
    return json.loads((out / "gradients.json").read_text())


def table(setting: str, stages: dict[int, dict], key: str) -> str:
    """Markdown: one row per estimator, one column per stage, ``key`` (variance, or variance x ms)."""
    names = list(next(iter(stages.values()))["estimators"])
    lines = [f"| {setting}: {key} | f evals | " + " | ".join(f"{s:,} steps" for s in stages) + " |",
             "|---|---:|" + "---:|" * len(stages)]
    for name in names:
        rows = [stages[s]["estimators"][name] for s in stages]
        cells = [f"{r['variance'] * (r['seconds'] * 1e3 if key == 'variance x ms' else 1):.3g}" for r in rows]
        lines.append(f"| {name} | {rows[0]['evaluations']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def made(setting: str, stages: dict[int, dict]) -> str:
    """Where each stage of ``setting`` was measured: its run, step, date, commit and machine."""
    parts = []
    for steps, result in stages.items():
        record = result.get("provenance") or {}
        where = ", ".join(f"{k} {record[k]}" for k in ("date", "commit", "cpu", "gpu") if record.get(k))
        parts.append(f"{steps:,} steps: {result['run_dir']} ({result['checkpoint']} checkpoint, step "
                     f"{result['step']:,}); {where or 'date, commit and machine not recorded'}")
    return f"{setting}, measured at\n" + "\n".join(f"- {part}" for part in parts)


def figure(results: dict[str, dict[int, dict]]) -> bytes:
    """PNG: per setting, variance and variance x ms against the step (log scales), a line per estimator
    (one colour per estimator in every panel, solid at K = 1 or 2, dashed at 3, dotted at 4)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2 * len(results)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(results), 2, squeeze=False)
    families = list(dict.fromkeys(name.split(":")[0] for stages in results.values()  # same colour everywhere
                                  for name in next(iter(stages.values()))["estimators"]))
    for row, (setting, stages) in zip(axes, results.items(), strict=True):
        steps = list(stages)
        names = list(next(iter(stages.values()))["estimators"])
        for name in names:  # a colour per estimator, a line style and marker per K
            family, _, k = name.partition(":")
            linestyle, marker = {"3": ("--", "s"), "4": (":", "^")}.get(k, ("-", "o"))
            style = {"color": f"C{families.index(family) % 10}", "label": name, "linestyle": linestyle,
                     "marker": marker}
            rows = [stages[s]["estimators"][name] for s in steps]
            row[0].plot(steps, [r["variance"] for r in rows], **style)
            row[1].plot(steps, [r["variance"] * r["seconds"] * 1e3 for r in rows], **style)
        for ax, what in zip(row, ("variance: tr Cov(g_hat)", "variance x ms per estimate"), strict=True):
            ax.set(xscale="log", yscale="log", xlabel="training step", ylabel=what, title=setting)
            ax.grid(True, which="major", alpha=0.3)
        row[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def measured(root: Path, setting: str) -> dict[int, dict]:
    """Every stage of ``setting`` measured under ``root`` so far (this run's and earlier runs'), by step."""
    paths = (root / setting).glob("step-*/gradients.json")
    found = {int(step): json.loads(path.read_text()) for path in paths
             if (step := path.parent.name.removeprefix("step-")).isdigit()}  # not a renamed copy (step-N.old)
    return dict(sorted(found.items()))


def reuse_entry(given: str) -> tuple[str, Path]:
    setting, _, run = given.partition("=")
    if setting not in SETTINGS or not (Path(run) / "last.safetensors").is_file():
        raise SystemExit(f"--reuse takes SETTING=RUN with SETTING one of {', '.join(SETTINGS)} and RUN a run "
                         f"folder with a last.safetensors, got {given!r}")
    return setting, Path(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="binary,categorical",
                        help="comma-separated: binary, categorical")
    parser.add_argument("--stages", default=None, help="comma-separated steps (default: each setting's)")
    parser.add_argument("--dataset", default="binarized_mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--draws", type=int, default=500, help="estimates per estimator and stage")
    parser.add_argument("--batch", type=int, default=20, help="validation examples in the fixed batch")
    parser.add_argument("--adapt", type=int, default=1000, help="steps that train learned parts first")
    parser.add_argument("--reference-samples", type=int, default=10_000)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--page", type=Path, default=None,
                        help="a results page to write each setting's tables into, between its markers")
    parser.add_argument("--reuse", action="append", default=[], metavar="SETTING=RUN",
                        help="measure a stage on RUN's last checkpoint when RUN, a run of the setting's "
                        "training, stands at that stage's step (see above)")
    args = parser.parse_args()
    args.reuse = dict(reuse_entry(given) for given in args.reuse)
    if args.page is not None and not args.page.is_file():  # said before hours of work, not after
        parser.error(f"--page {args.page}: no such page (it holds the markers the tables go between)")
    results: dict[str, dict[int, dict]] = {}
    for setting in args.settings.split(","):
        if setting not in SETTINGS:
            raise SystemExit(f"unknown setting {setting!r}; choose from {', '.join(SETTINGS)}")
        stages = [int(s) for s in args.stages.split(",")] if args.stages else SETTINGS[setting]["stages"]
        results[setting] = {s: run_stage(args.out, setting, s, args) for s in stages}
    command = f"python {' '.join(sys.argv)}"
    blocks = {setting: "\n\n".join([*(table(setting, stages, key) for key in ("variance", "variance x ms")),
                                     made(setting, stages), f"Command: `{command}`"])
              for setting, stages in results.items()}
    print(f"$ {command}\n\n" + "\n\n".join(blocks.values()) + "\n")
    if args.page is not None:
        print(f"wrote the tables into {write_page(args.page, blocks, *MARKERS)}")
    everything = {setting: stages for setting in SETTINGS if (stages := measured(args.out, setting))}
    keys = ("k", "evaluations", "variance", "bias", "bias_z", "seconds", "state")
    summary = {setting: {str(s): {"made": {"run_dir": result["run_dir"], "step": result["step"],
                                           **(result.get("provenance") or {})},
                                  "estimators": {n: {k: r[k] for k in keys}
                                                 for n, r in result["estimators"].items()}}
                         for s, result in stages.items()} for setting, stages in everything.items()}
    (args.out / "variance.json").write_text(json.dumps(summary, indent=1) + "\n")
    png = figure(everything)
    (args.out / "variance.png").write_bytes(png)
    print(f"wrote {args.out / 'variance.json'} and {args.out / 'variance.png'} (all measured there)")
    if args.page is not None:
        args.page.with_suffix(".png").write_bytes(png)
        print(f"wrote the figure beside the page: {args.page.with_suffix('.png')}")


if __name__ == "__main__":
    main()
