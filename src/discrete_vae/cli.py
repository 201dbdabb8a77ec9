"""The ``dvae`` command line: a thin map from subcommands to typed functions.

``dvae train`` flags are generated from :class:`~discrete_vae.config.TrainConfig`; bad input of any
kind ends with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from .errors import NonFiniteLossError, UserError
from .flags import add_k_flags, add_train_flags, method_flags, seed_value
from .listing import LISTS
from .options import field_type
from .progress import Stopped
from .runs import dumps, note
from .sweep.cli import SweepFailed, add_sweep_parser, sweep_command

DATA_DIR_HELP = ("folder of the dataset files (default: the run's if it still holds them, read only; else "
                 "$DVAE_DATA_DIR, else the user cache)")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dvae", description="Discrete-latent VAEs: train, evaluate, sample.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a model (or resume a run)")
    add_train_flags(p)
    g = p.add_argument_group("configuration and resuming")
    g.add_argument("--config", type=Path, help="YAML or TOML file of the options above")
    g.add_argument("--preset", help="named preset of options (see `dvae list presets`)")
    g.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR; only " + ", ".join(_flags(_resume_overrides()))
                   + " may be given with it (each change is recorded in RUN_DIR/overrides.jsonl)")
    _add_progress_flag(g)

    p = sub.add_parser("eval", help="importance-weighted bound of the discrete model")
    p.add_argument("run_dir", type=Path, help="run folder written by `dvae train`")
    p.add_argument("--samples", type=int, default=5000,
                   help="S, importance samples (hard draws from q(z|x)) per example (default: 5000)")
    p.add_argument("--split", default="test", choices=["test", "valid", "train"],
                   help="split to score (default: test)")
    p.add_argument("--seed", type=seed_value, default=0, help="seed of the importance samples (default: 0)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"],
                   help="best-validation model, or the last one (default: best; last when a run has no best)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument("--limit", type=int, default=None,
                   help="score N examples spread over the split (a fixed subset; default: all)")
    p.add_argument("--log-z", default="auto", choices=["auto", "exact", "ais", "pa"],
                   help="RBM priors: how log Z is estimated (default: auto, exact when a half has <= 20 "
                   "units, else AIS)")
    p.add_argument("--log-z-betas", type=int, default=1000,
                   help="RBM priors: AIS/PA inverse temperatures (default: 1000)")
    p.add_argument("--log-z-samples", type=int, default=1024,
                   help="RBM priors: AIS/PA chains (default: 1024)")
    _add_progress_flag(p)

    for name, what in (
        ("sample", "images from the prior"),
        ("reconstruct", "data and reconstructions"),
    ):
        p = sub.add_parser(name, help=f"PNG grid of {what}")
        p.add_argument("run_dir", type=Path, help="run folder written by `dvae train`")
        p.add_argument("--out", type=Path, required=True, help="PNG file to write")
        n = 64 if name == "sample" else 32
        p.add_argument("--n", type=int, default=n, help=f"images (default: {n})")
        p.add_argument("--seed", type=seed_value, default=0, help="seed of the draws (default: 0)")
        p.add_argument("--checkpoint", default="best", choices=["best", "last"],
                       help="best-validation or last model (default: best)")
        if name == "reconstruct":
            p.add_argument("--split", default="test", choices=["test", "valid", "train"],
                           help="split the examples are spread over (default: test)")
            p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)

    p = sub.add_parser("demo", help="figures that explain the methods")
    p.add_argument("which", choices=["gumbel-max"])
    p.add_argument("--out", type=Path, required=True, help="folder for the PNG figures")
    p.add_argument("--seed", type=seed_value, default=0)

    p = sub.add_parser("igr-prior", help="the IGR pre-image prior implying a uniform categorical")
    p.add_argument("--model", default="igr-i", choices=["igr-i", "igr-sb", "igr-sb-finite", "igr-planar"])
    p.add_argument("--classes", type=int, default=10, help="K, the number of classes")
    p.add_argument("--prior-scale", type=float, default=1.0, help="s_0, the prior's std")
    p.add_argument("--draws", type=int, default=200_000, help="Monte Carlo draws of the check")
    p.add_argument("--seed", type=seed_value, default=0)

    _add_gradients_parser(sub)
    _add_sop_parser(sub)
    add_sweep_parser(sub)
    p = sub.add_parser("list", help="registered models (methods), posteriors, estimators, priors, datasets, "
                       "presets and structs")
    p.add_argument("what", nargs="?", choices=sorted(LISTS), default=None,
                   help="one registry; presets and structs with what each sets (default: a summary of all)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")
    return parser


def _flags(names: Any) -> list[str]:
    return ["--" + n.replace("_", "-") for n in names]


def _resume_overrides() -> tuple[str, ...]:
    from .config import RESUME_OVERRIDES

    return RESUME_OVERRIDES


def _add_progress_flag(parser: Any) -> None:
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar, or nothing (default: a bar when stderr is a terminal, else a line every 30 s)",
    )


def _add_gradients_parser(sub: Any) -> None:
    """``dvae gradients``: gradient estimators against the true gradient (:mod:`discrete_vae.gradients`)."""
    p = sub.add_parser("gradients", help="bias, variance and cost of gradient estimators on one batch",
                       description="Bias, variance and cost of gradient estimators on one batch, against "
                       "the exact gradient of the discrete ELBO (or a high-sample reference), for a run's "
                       "model or a fresh one built from the `dvae train` options below.")
    p.add_argument("run_dir", type=Path, nargs="?", default=None,
                   help="run folder written by `dvae train` (default: a fresh model from the options below)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"],
                   help="best-validation or last model of a run (default: best)")
    g = p.add_argument_group("gradient diagnostics")
    g.add_argument("--estimators", default=None, metavar="A,B:K,...",
                   help="estimators to measure, NAME:K with K samples per estimate of its own (default: the "
                   "posterior's relaxations and every estimator of its kind but vimco)")
    g.add_argument("--adapt", type=int, default=0, metavar="STEPS",
                   help="first train each fresh estimator's learned parts (baselines, control variates) for "
                   "STEPS Adam steps on training batches, the model frozen (default: 0, untrained)")
    g.add_argument("--split", default="valid", choices=["valid", "test", "train"],
                   help="split the batch comes from (default: valid)")
    g.add_argument("--batch", type=int, default=20, help="examples in the batch (default: 20)")
    g.add_argument("--batch-seed", type=seed_value, default=0,
                   help="seed of the batch's fixed subset of the split (default: 0)")
    g.add_argument("--draws", type=int, default=200,
                   help="R, independent estimates per estimator (default: 200)")
    g.add_argument("--tau", type=float, default=None,
                   help="temperature of relaxed estimators (default: a run's schedule at its step; fresh: "
                   "--temperature)")
    g.add_argument("--reference-samples", type=int, default=10_000,
                   help="draws per example of the sampled reference, used beyond 2^16 latent states per "
                   "example (default: 10000)")
    g.add_argument("--out", type=Path, default=None,
                   help="folder for gradients.json and gradients.png (default: RUN_DIR/gradients, else "
                   "./gradients-<time>)")
    g.add_argument("--config", type=Path, help="YAML or TOML file of model options (fresh model)")
    g.add_argument("--preset", help="named preset of options (fresh model; see `dvae list presets`)")
    _add_progress_flag(g)
    add_train_flags(p, skip=GRADIENTS_SKIP)


def _add_sop_parser(sub: Any) -> None:
    """``dvae sop train|eval``: structured output prediction (:mod:`discrete_vae.sop`)."""
    from .sop import RESUME_OVERRIDES, SOPConfig

    p = sub.add_parser("sop", help="structured output prediction: lower half of an image from its upper")
    sop = p.add_subparsers(dest="sop_command", required=True, parser_class=_Parser)
    t = sop.add_parser("train", help="train a stochastic binary network on the SOP task (or resume a run)")
    for name, _, f in SOPConfig.option_fields():
        help_text = f.metadata["help"]
        if "(default:" not in help_text:
            help_text += f" (default: {f.default})"
        if name == "k":
            add_k_flags(t, help_text)
            continue
        t.add_argument("--" + name.replace("_", "-"), type=field_type(f.type)[0], default=argparse.SUPPRESS,
                       help=help_text)
    t.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last.safetensors; only "
                   + ", ".join(_flags(RESUME_OVERRIDES)) + " may be given with it")
    e = sop.add_parser("eval", help="L^SP of the discrete model with hard samples")
    e.add_argument("run_dir", type=Path, help="run folder written by `dvae sop train`")
    e.add_argument("--samples", type=int, default=100, help="hard samples per example (default: 100)")
    e.add_argument("--split", default="test", choices=["test", "valid"],
                   help="split to score (default: test)")
    e.add_argument("--limit", type=int, default=None,
                   help="score N examples spread over the split (a fixed subset; default: all)")
    e.add_argument("--seed", type=seed_value, default=0, help="seed of the hard samples (default: 0)")
    e.add_argument("--checkpoint", default="best", choices=["best", "last"],
                   help="best-validation or final model (default: best)")
    e.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    e.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")


def _train(args: argparse.Namespace) -> dict[str, Any]:
    from .config import FLAT, RESUME_OVERRIDES, resumed_config
    from .presets import fresh_config
    from .runs import check_resumable
    from .train import train

    given = {name: getattr(args, name) for name in FLAT if hasattr(args, name)}
    given.update(method_flags(args))  # the posterior's and estimator's options, routed by from_dict
    if args.resume:
        if args.config or args.preset:
            raise UserError("--resume takes its options from the run folder, not --config/--preset")
        changed = sorted(set(given) - set(RESUME_OVERRIDES))
        if changed:
            raise UserError(f"cannot change {', '.join(_flags(changed))} when resuming; only "
                            f"{', '.join(_flags(RESUME_OVERRIDES))}")
        check_resumable(args.resume)
        config = resumed_config(args.resume, given)  # train() rewrites config.yaml once the state fits
        return train(config, resume=args.resume, progress=args.progress)
    return train(fresh_config(given, args.preset, args.config), progress=args.progress)


GRADIENTS_SKIP = ("out", "estimator")  # train flags `dvae gradients` has not (its --out is its own folder)
GRADIENTS_RUN_FLAGS = ("seed", "k", "device", "data_dir")  # the train flags `dvae gradients RUN_DIR` takes


def _gradients(args: argparse.Namespace) -> dict[str, Any]:
    from .config import FLAT
    from .gradient_report import gradients_command
    from .presets import fresh_config

    given = {name: getattr(args, name) for name in FLAT if hasattr(args, name) and name not in GRADIENTS_SKIP}
    own = method_flags(args)
    if args.run_dir is None:  # a fresh model takes them all; the estimators measured, their own
        given.update(own)
    own = {k: v for k, v in own.items() if k in estimator_option_names()}
    config = None
    if args.run_dir is not None:
        other = sorted(set(given) - set(GRADIENTS_RUN_FLAGS))
        if args.config or args.preset or other:
            named = ["--config"] * bool(args.config) + ["--preset"] * bool(args.preset) + _flags(other)
            raise UserError(f"a run's model comes from its folder: drop {', '.join(named)} (with RUN_DIR "
                            f"only {', '.join(_flags(GRADIENTS_RUN_FLAGS))} apply)")
    else:
        config = fresh_config(given, args.preset, args.config)
    names = [n.strip() for n in args.estimators.split(",") if n.strip()] if args.estimators else None
    seed, k, device = (config.run.seed, config.model.k, config.run.device) if config else (0, 1, "auto")
    return gradients_command(
        args.run_dir, config, checkpoint=args.checkpoint, seed=given.get("seed", seed), k=given.get("k", k),
        device=given.get("device", device), data_dir=given.get("data_dir"), split=args.split,
        batch=args.batch, batch_seed=args.batch_seed, estimators=names, draws=args.draws, tau=args.tau,
        reference_samples=args.reference_samples, options=own, out=args.out, adapt=args.adapt,
        progress=args.progress)


def estimator_option_names() -> set[str]:
    from .estimators import ESTIMATORS

    return {f.name for name in ESTIMATORS.names() for f in fields(ESTIMATORS.get(name).Options)}


def _eval(args: argparse.Namespace) -> dict[str, Any]:
    from .evaluate import evaluate_run

    return evaluate_run(args.run_dir, samples=args.samples, split=args.split, seed=args.seed,
                        checkpoint=args.checkpoint, device=args.device, data_dir=args.data_dir,
                        limit=args.limit, log_z=args.log_z, log_z_betas=args.log_z_betas,
                        log_z_samples=args.log_z_samples, progress=args.progress)


def _images(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from .recipe import model_from_run, run_dataset, temperature_schedule
    from .viz.grids import reconstruction_figure, samples_figure, save_png

    if args.n < 1:
        raise UserError("--n must be at least 1")
    if args.out.suffix.lower() != ".png":
        raise UserError(f"--out must name a .png file, got {str(args.out)!r}")
    model, config, state = model_from_run(args.run_dir, args.checkpoint)
    step = int(state["step"])
    tau = float(model.tau(temperature_schedule(config)(step)).detach())
    caption = f"{args.run_dir.name}, step {step}, tau {tau:.3f}"
    torch.manual_seed(args.seed)
    data = run_dataset(config.run, getattr(args, "data_dir", None), model.data_dim)
    if args.command == "sample":
        image = samples_figure(model.sample_images(args.n), data.image_shape, caption)
    else:
        x = data.subset(args.split, args.n)  # spread over the split: its files are not shuffled
        image = reconstruction_figure(x, model.reconstruct(x), data.image_shape, f"{caption}, {args.split}")
    try:
        save_png(image, args.out)
    except OSError as e:
        raise UserError(f"cannot write {args.out}: {e.strerror}") from None
    return {"out": str(args.out), "n": args.n}


def _demo(args: argparse.Namespace) -> dict[str, Any]:
    from .viz.gumbel_max import gumbel_max_figures

    paths = {name: str(path) for name, path in gumbel_max_figures(args.out, seed=args.seed).items()}
    summary = json.loads(Path(paths["gumbel_max_summary"]).read_text())
    return {"figures": paths, "chi_square_p_value": summary["chi_square_p_value"],
            "vertex_fraction": summary["vertex_fraction"]}


def _igr_prior(args: argparse.Namespace) -> dict[str, Any]:
    import math

    from .errors import ConfigError
    from .priors.igr import prior_fit_report

    if args.classes < 2 or not 0 < args.prior_scale < math.inf or args.draws < 1:
        raise ConfigError("--classes must be at least 2, --prior-scale finite and positive, --draws positive")
    kind = args.model.removeprefix("igr-")
    report = prior_fit_report(kind, args.classes, args.prior_scale, args.draws, args.seed)
    note(
        f"{args.model}, K = {args.classes}: implied prior within "
        f"{report['max_abs_error_computed']:.1e} of 1/K (computed), "
        f"{report['max_abs_error_sampled']:.1e} over {args.draws} draws "
        f"(sampling std {report['sampling_stderr']:.1e})"
    )
    return report


def _sop(args: argparse.Namespace) -> dict[str, Any]:
    from .recipe import resolve_device
    from .sop import SOPConfig, evaluate_run, resume_config, train

    if args.sop_command == "train":
        given = {name: getattr(args, name) for name in SOPConfig.flat_names() if hasattr(args, name)}
        if args.resume:
            return train(resume_config(args.resume, given), resume=args.resume)
        return train(SOPConfig.from_dict(given))
    device = str(resolve_device(args.device))
    return evaluate_run(args.run_dir, args.samples, args.split, args.limit, args.seed,
                        args.data_dir, args.checkpoint, device)


def _list(args: argparse.Namespace) -> dict[str, Any] | None:
    from .listing import list_registries

    return list_registries(args.what, args.json)


COMMANDS = {
    "train": _train,
    "eval": _eval,
    "gradients": _gradients,
    "sample": _images,
    "reconstruct": _images,
    "demo": _demo,
    "igr-prior": _igr_prior,
    "sop": _sop,
    "list": _list,
    "sweep": sweep_command,
}


def main(argv: list[str] | None = None) -> int:
    """Run one ``dvae`` command; its result is the last line of stdout, as strict JSON (rank 0 only under
    ``torchrun``). Bad input, and files that cannot be read or written, end with one line and status 2.
    Denormal floats are flushed to zero meanwhile (:mod:`discrete_vae.denormals`)."""
    from .denormals import flush_denormals

    args = build_parser().parse_args(argv)
    command = f"dvae {args.command}"
    try:
        with flush_denormals():  # before any intra-op thread starts, so that every one inherits it
            result = COMMANDS[args.command](args)
    except UserError as e:
        note(f"{command}: error: {e}")
        return 2
    except SweepFailed as e:
        print(dumps(e.summary))
        note(f"{command}: {e}")
        return 1
    except NonFiniteLossError as e:
        note(f"{command}: stopped: {e}")
        return 1
    except Stopped as e:
        note(f"{command}: {e}")
        return 128 + e.signum
    except OSError as e:  # a read-only or full file system, a path under a file, ...
        where = f": {e.filename}" if e.filename else ""
        note(f"{command}: error: {e.strerror or e}{where}")
        return 2
    except KeyboardInterrupt:
        note(f"{command}: interrupted")
        return 130
    if result is not None and os.environ.get("RANK", "0") == "0":
        print(dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
