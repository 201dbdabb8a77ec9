"""``dvae sweep``'s flags and command (what each point runs is in :mod:`.commands`)."""

from __future__ import annotations

import argparse
import shlex
import signal
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..progress import Stopped
from .executors import Interrupted


def add_sweep_parser(sub: Any) -> None:
    p = sub.add_parser("sweep", help="run a grid of runs from a spec (settings x seeds) and build its tables",
                       description="Train and evaluate every point of SPEC's grid through submitit, skipping "
                       "what is done and resuming what was interrupted, then write table.md, results.csv, "
                       "results.json and plots into --out.")
    p.add_argument("spec", type=Path, help="sweep spec (YAML): base, grid, eval, tables (see experiments/)")
    p.add_argument("--out", type=Path, default=None,
                   help="sweep folder: one run folder per point, and the results (default: sweeps/NAME, "
                   "sweeps/NAME-quick with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="the spec's quick form: the same grid with its quick: overrides (digits, few steps)")
    p.add_argument("--status", action="store_true",
                   help="show each point's state (done, running, failed, interrupted, submitted, pending; "
                   "with select: waiting, unselected; how far a running or interrupted one has come, "
                   "its steps per second and the time left at that rate), of the --only points if given, "
                   "and run nothing")
    p.add_argument("--report", action="store_true",
                   help="write table.md, results.csv/json and the plots from the points finished so far "
                   "(and the tables into the spec's results page, if it names one with page:), of the "
                   "--only points if given, and run nothing")
    p.add_argument("--retrain-changed", action="store_true",
                   help="train again, from scratch, the points whose run was trained with settings the spec "
                   "no longer gives (without it the sweep refuses to run and names them)")
    p.add_argument("--only", action="append", default=[], metavar="AXIS=LABEL[,LABEL]",
                   help="run only the points with one of these labels on AXIS (repeatable: every AXIS "
                   "must match); the tables still show every finished point")
    p.add_argument("--executor", default="local", choices=["local", "slurm", "debug"],
                   help="local: jobs as processes on this machine; slurm: one job array on a SLURM cluster; "
                   "debug: one after another in this process (default: local)")
    p.add_argument("--jobs", type=int, default=None,
                   help="local: points run at once (default: one per core)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per job (default: cores / --jobs; slurm: 1, or --cpus)")
    p.add_argument("--data-dir", default=None, help="dataset folder for every point (else the spec's, "
                   "else $DVAE_DATA_DIR)")
    p.add_argument("--timeout", type=int, default=7 * 24 * 60,
                   help="local: minutes after which a job is stopped (default: a week)")
    g = p.add_argument_group("slurm (--executor slurm)")
    g.add_argument("--partition", default=None)
    g.add_argument("--time", type=int, default=1440, help="minutes per job (default: 1440)")
    g.add_argument("--gpus", type=int, default=0, help="GPUs per job (default: 0)")
    g.add_argument("--cpus", type=int, default=None, help="CPUs per job (default: --threads)")
    g.add_argument("--mem", default=None, help="memory per job, e.g. 16G")
    g.add_argument("--array-parallelism", type=int, default=64, help="array tasks at once (default: 64)")
    g.add_argument("--account", default=None)
    g.add_argument("--qos", default=None)
    g.add_argument("--constraint", default=None)
    g.add_argument("--setup", action="append", default=[],
                   help="a shell line run before each job (module load ...; repeatable)")
    g.add_argument("--no-wait", dest="wait", action="store_false",
                   help="submit and return; `dvae sweep SPEC --status` follows the jobs, and a rerun "
                   "builds the tables")


def sweep_command(args: argparse.Namespace) -> dict[str, Any]:
    from . import (
        Slurm,
        check_only,
        default_out,
        load_spec,
        parse_only,
        print_status,
        run_sweep,
        sweep_status,
        write_tables,
    )

    spec = load_spec(args.spec, quick=args.quick)
    only = check_only(spec, parse_only(args.only))
    out = args.out or default_out(spec, args.quick)
    if args.status or args.report:
        if args.report:
            write_tables(spec, out, page=True, only=only)
        summary = sweep_status(spec, out, only=only)
        print_status(summary)
        return summary
    if args.executor != "slurm" and args.gpus:
        raise UserError("--gpus is for --executor slurm; here, set the device with the spec's device option")
    slurm = Slurm(partition=args.partition, time=args.time, gpus=args.gpus, cpus=args.cpus, mem=args.mem,
                  array_parallelism=args.array_parallelism, account=args.account, qos=args.qos,
                  constraint=args.constraint, setup=tuple(args.setup))
    try:
        summary = run_sweep(spec, out, executor=args.executor, jobs=args.jobs, threads=args.threads,
                            data_dir=args.data_dir, slurm=slurm, wait=args.wait, timeout_min=args.timeout,
                            only=only, retrain_changed=args.retrain_changed, command=command_line(args))
    except Interrupted as e:
        raise SweepStopped(e.signum) from None
    print_status(summary)
    if summary["states"]["failed"]:
        raise SweepFailed(summary)
    return summary


def command_line(args: argparse.Namespace) -> str:
    """The sweep's command as a table's provenance gives it: the spec and what changes the results."""
    words = ["dvae", "sweep", str(args.spec)]
    words += ["--quick"] * args.quick + (["--data-dir", args.data_dir] if args.data_dir else [])
    words += [w for item in args.only for w in ("--only", item)]
    return shlex.join(words)


class SweepStopped(Stopped):
    """A signal stopped the sweep; its running points checkpointed. The CLI exits with 128 + the signal."""

    def __init__(self, signum: int):
        Exception.__init__(self, f"stopped by {signal.Signals(signum).name}; the running points wrote their "
                           "checkpoints: rerun the same command to continue")
        self.signum = signum


class SweepFailed(Exception):
    """Some points failed (the others ran, the tables hold them); the CLI prints the summary, exits 1."""

    def __init__(self, summary: dict[str, Any]):
        failed = summary["states"]["failed"]
        super().__init__(f"{failed} of {summary['points']} points failed (errors above and in "
                         f"{summary['out']}/POINT/error.json); rerun the same command to retry them")
        self.summary = summary
