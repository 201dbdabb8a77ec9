"""The ``dvae`` command line: a thin map from subcommands to typed functions.

``dvae train`` flags are generated from :class:`~discrete_vae.config.TrainConfig`; bad input of any
kind ends with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from .errors import NonFiniteLossError, UserError

RESUME_OVERRIDES = {"steps", "epochs", "device", "eval_every", "checkpoint_every", "log_every"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _field_type(tp: Any) -> Any:
    if isinstance(tp, str):
        tp = eval(tp, vars(typing), {})  # annotations are strings under `from __future__`
    if isinstance(tp, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _hidden_widths(text: str) -> tuple[int, ...]:
    from .config import parse_hidden

    try:
        return parse_hidden(text)
    except UserError as e:  # argparse reports only ArgumentTypeError/ValueError as usage errors
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    from .config import TrainConfig

    for f in fields(TrainConfig):
        tp = _field_type(f.type)
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} (default: {f.default})"
        if tp is bool:
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        elif f.name == "hidden":
            parser.add_argument(
                flag,
                type=_hidden_widths,
                default=argparse.SUPPRESS,
                metavar="W1,W2",
                help=help_text + "; 'none' for a linear map",
            )
        else:
            flags = [flag, "--k"] if f.name == "samples" else [flag]
            parser.add_argument(*flags, dest=f.name, type=tp, default=argparse.SUPPRESS, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dvae", description="Discrete-latent VAEs: train, evaluate, sample.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a model (or resume a run)")
    _add_config_flags(p)
    p.add_argument("--config", type=Path, help="YAML or TOML file of the options above")
    p.add_argument("--preset", help="named preset of options (see `dvae list`)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )

    p = sub.add_parser("eval", help="importance-weighted bound of the discrete model")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--samples", type=int, default=5000, help="importance samples per example")
    p.add_argument("--split", default="test", choices=["test", "valid", "train"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--limit", type=int, default=None,
                   help="score N examples spread over the split (a fixed subset; default: all)")
    p.add_argument("--log-z", default="auto", choices=["auto", "exact", "ais", "pa"],
                   help="RBM priors: how log Z is estimated (auto: exact when a half has <= 20 units, "
                   "else AIS)")
    p.add_argument("--log-z-betas", type=int, default=1000,
                   help="RBM priors: AIS/PA inverse temperatures (default: 1000)")
    p.add_argument("--log-z-samples", type=int, default=1024,
                   help="RBM priors: AIS/PA chains (default: 1024)")

    for name, what in (
        ("sample", "images from the prior"),
        ("reconstruct", "data and reconstructions"),
    ):
        p = sub.add_parser(name, help=f"PNG grid of {what}")
        p.add_argument("run_dir", type=Path)
        p.add_argument("--out", type=Path, required=True, help="PNG file to write")
        p.add_argument("--n", type=int, default=64 if name == "sample" else 32)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--checkpoint", default="best", choices=["best", "last"])
        if name == "reconstruct":
            p.add_argument("--split", default="test", choices=["test", "valid", "train"])
            p.add_argument("--data-dir", default=None)

    p = sub.add_parser("demo", help="figures that explain the methods")
    p.add_argument("which", choices=["gumbel-max"])
    p.add_argument("--out", type=Path, required=True, help="folder for the PNG figures")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("igr-prior", help="the IGR pre-image prior implying a uniform categorical")
    p.add_argument("--model", default="igr-i", choices=["igr-i", "igr-sb", "igr-sb-finite", "igr-planar"])
    p.add_argument("--classes", type=int, default=10, help="K, the number of classes")
    p.add_argument("--prior-scale", type=float, default=1.0, help="s_0, the prior's std")
    p.add_argument("--draws", type=int, default=200_000, help="Monte Carlo draws of the check")
    p.add_argument("--seed", type=int, default=0)

    _add_sop_parser(sub)
    sub.add_parser("list", help="registered models, priors, datasets and presets")
    return parser


def _add_sop_parser(sub: Any) -> None:
    """``dvae sop train|eval``: structured output prediction (:mod:`discrete_vae.sop`)."""
    from .sop import SOPConfig

    p = sub.add_parser("sop", help="structured output prediction: lower half of an image from its upper")
    sop = p.add_subparsers(dest="sop_command", required=True, parser_class=_Parser)
    t = sop.add_parser("train", help="train a stochastic binary network on the SOP task (or resume a run)")
    for f in fields(SOPConfig):
        help_text = f.metadata["help"]
        if "(default:" not in help_text:
            help_text += f" (default: {f.default})"
        t.add_argument("--" + f.name.replace("_", "-"), type=_field_type(f.type), default=argparse.SUPPRESS,
                       help=help_text)
    t.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last.safetensors; only --steps, --device, "
                   "--eval-every, --checkpoint-every and --log-every may be given with it")
    e = sop.add_parser("eval", help="L^SP of the discrete model with hard samples")
    e.add_argument("run_dir", type=Path, help="run folder written by `dvae sop train`")
    e.add_argument("--samples", type=int, default=100, help="hard samples per example (default: 100)")
    e.add_argument("--split", default="test", choices=["test", "valid"],
                   help="split to score (default: test)")
    e.add_argument("--limit", type=int, default=None,
                   help="score N examples spread over the split (a fixed subset; default: all)")
    e.add_argument("--seed", type=int, default=0, help="seed of the hard samples (default: 0)")
    e.add_argument("--checkpoint", default="best", choices=["best", "last"],
                   help="best-validation or final model (default: best)")
    e.add_argument("--data-dir", default=None,
                   help="folder of the dataset files (default: the one the run was trained with)")
    e.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")


def _train(args: argparse.Namespace) -> dict[str, Any]:
    from .config import PRESETS, TrainConfig, load_config_file, with_struct
    from .train import CONFIG, train

    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    if args.resume:
        if args.config or args.preset:
            raise UserError("--resume takes its options from the run folder, not --config/--preset")
        changed = sorted(set(given) - RESUME_OVERRIDES)
        if changed:
            raise UserError(
                f"cannot change {', '.join('--' + c.replace('_', '-') for c in changed)} "
                f"when resuming; only {', '.join(sorted(RESUME_OVERRIDES))}"
            )
        path = args.resume / CONFIG
        if not path.is_file() or not (args.resume / "last.safetensors").is_file():
            raise UserError(
                f"{args.resume} holds no resumable run (config.yaml and last.safetensors)"
            )
        values = {**load_config_file(path), **given}
        if "steps" in given or "epochs" in given:  # a new length replaces the old one
            values["epochs" if "steps" in given else "steps"] = None
        config = TrainConfig.from_dict(values)  # train() rewrites config.yaml once the state fits
        return train(config, resume=args.resume, progress=args.progress)
    values: dict[str, Any] = {}
    if args.preset:
        values.update(PRESETS.get(args.preset))
    if args.config:
        values.update(load_config_file(args.config))
    values.update(given)
    return train(TrainConfig.from_dict(with_struct(values)), progress=args.progress)


def _eval(args: argparse.Namespace) -> dict[str, Any]:
    from .data import load_dataset
    from .evaluate import estimate_log_partition, evaluate
    from .train import model_from_run, resolve_device, temperature_schedule

    if args.samples < 1:
        raise UserError("--samples must be at least 1")
    if args.log_z_betas < 2 or args.log_z_samples < 1:
        raise UserError("--log-z-betas must be at least 2 and --log-z-samples at least 1")
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    device = resolve_device(args.device)
    model, config, state = model_from_run(args.run_dir, args.checkpoint, str(device))
    data = load_dataset(config.dataset, args.data_dir or config.data_dir, seed=config.seed)
    x = data.subset(args.split, args.limit).to(device)
    start = time.perf_counter()
    tau = temperature_schedule(config)(int(state["step"]))
    try:
        log_z = estimate_log_partition(
            model.prior, args.log_z_betas, args.log_z_samples, args.seed, args.log_z
        )
    except ValueError as e:  # e.g. exact enumeration of a half too large
        raise UserError(str(e)) from None
    metrics = evaluate(model, x, samples=args.samples, tau=tau, seed=args.seed,
                       log_partition=log_z.get("log_z", 0.0))
    seconds = time.perf_counter() - start
    if log_z:
        print(f"log Z = {log_z['log_z']:.3f} ± {log_z['log_z_stderr']:.3f} ({log_z['log_z_method']})",
              file=sys.stderr)
    result = {
        **metrics,
        **log_z,
        "split": args.split,
        "seed": args.seed,
        "step": int(state["step"]),
        "checkpoint": args.checkpoint,
        "seconds": round(seconds, 3),
    }
    spread = (f" ± {metrics['nll_stderr']:.2f} (standard error over examples)"
              if "nll_stderr" in metrics else "")
    print(
        f"{args.split}: NLL <= {metrics['nll']:.2f} nats (importance-weighted bound, S={args.samples})"
        f"{spread}; "
        f"-ELBO {-metrics['elbo']:.2f}; relaxed objective {metrics['relaxed_objective']:.2f} "
        f"(not a bound); {seconds:.1f} s",
        file=sys.stderr,
    )
    limit = f"_subset{args.limit}" if args.limit else ""
    name = f"eval_{args.split}_S{args.samples}{limit}_seed{args.seed}.json"
    (args.run_dir / name).write_text(json.dumps(result) + "\n")
    return result


def _images(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from .data import load_dataset
    from .train import model_from_run
    from .viz.grids import reconstruction_grid, save_png, tile

    if args.n < 1:
        raise UserError("--n must be at least 1")
    if args.out.suffix.lower() != ".png":
        raise UserError(f"--out must name a .png file, got {str(args.out)!r}")
    model, config, _ = model_from_run(args.run_dir, args.checkpoint)
    torch.manual_seed(args.seed)
    if args.command == "sample":
        shape = load_dataset(config.dataset, config.data_dir, seed=config.seed).image_shape
        grid = tile(model.sample_images(args.n), shape, ncol=8)
    else:
        data = load_dataset(config.dataset, args.data_dir or config.data_dir, seed=config.seed)
        x = data.split(args.split)[: args.n]
        grid = reconstruction_grid(x, model.reconstruct(x), data.image_shape)
    return {"out": str(save_png(grid, args.out)), "n": args.n}


def _demo(args: argparse.Namespace) -> dict[str, Any]:
    from .viz.gumbel_max import gumbel_max_figures

    paths = {name: str(path) for name, path in gumbel_max_figures(args.out, seed=args.seed).items()}
    summary = json.loads(Path(paths["gumbel_max_summary"]).read_text())
    return {"figures": paths, "chi_square_p_value": summary["chi_square_p_value"],
            "vertex_fraction": summary["vertex_fraction"]}


def _igr_prior(args: argparse.Namespace) -> dict[str, Any]:
    from .errors import ConfigError
    from .priors.igr import prior_fit_report

    if args.classes < 2 or args.prior_scale <= 0 or args.draws < 1:
        raise ConfigError("--classes must be at least 2, --prior-scale and --draws positive")
    kind = args.model.removeprefix("igr-")
    report = prior_fit_report(kind, args.classes, args.prior_scale, args.draws, args.seed)
    print(
        f"{args.model}, K = {args.classes}: implied prior within "
        f"{report['max_abs_error_computed']:.1e} of 1/K (computed), "
        f"{report['max_abs_error_sampled']:.1e} over {args.draws} draws "
        f"(sampling std {report['sampling_stderr']:.1e})",
        file=sys.stderr,
    )
    return report


def _sop(args: argparse.Namespace) -> dict[str, Any]:
    from .sop import SOPConfig, evaluate_run, resume_config, train
    from .train import resolve_device

    if args.sop_command == "train":
        given = {f.name: getattr(args, f.name) for f in fields(SOPConfig) if hasattr(args, f.name)}
        if args.resume:
            return train(resume_config(args.resume, given), resume=args.resume)
        return train(SOPConfig.from_dict(given))
    device = str(resolve_device(args.device))
    return evaluate_run(args.run_dir, args.samples, args.split, args.limit, args.seed,
                        args.data_dir, args.checkpoint, device)


def _list(args: argparse.Namespace) -> dict[str, Any]:  # noqa: ARG001
    from .config import PRESETS, STRUCTS
    from .data import DATASETS
    from .latents import LATENT_FAMILIES
    from .priors import PRIORS

    return {
        "models": LATENT_FAMILIES.names(),
        "priors": PRIORS.names(),
        "datasets": DATASETS.names(),
        "presets": PRESETS.names(),
        "structs": STRUCTS.names(),
    }


COMMANDS = {
    "train": _train,
    "eval": _eval,
    "sample": _images,
    "reconstruct": _images,
    "demo": _demo,
    "igr-prior": _igr_prior,
    "sop": _sop,
    "list": _list,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = COMMANDS[args.command](args)
    except UserError as e:
        print(f"dvae {args.command}: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"dvae {args.command}: stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"dvae {args.command}: interrupted", file=sys.stderr)
        return 130
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
