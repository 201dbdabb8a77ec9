"""Sharpness of every relaxation against the temperature, and the variance of the ELBO's gradient.

1. Vertex proximity: for K classes, draws from each relaxation of the *uniform* categorical (GS with
   equal logits; the IGR maps with the Gaussian pre-image prior that implies the uniform categorical)
   and the fraction of draws within Euclidean distance 0.2 of a vertex of the simplex.
2. Gradient variance: the variance, over independent noise draws, of the gradient of the relaxed
   objective (each method's training objective) with respect to the encoder's parameters, on one
   batch of binarized MNIST, at each temperature. With ``--runs SWEEP`` the models are the trained seed-0
   runs of a sweep of ``experiments/igr_compare.yaml`` (``SWEEP/model=<model>,seed=0/run``); otherwise
   freshly initialised ones.
   Reported: the mean per-parameter variance and the signal-to-noise ratio |E g|^2 / tr Cov(g).

    python bench/sharpness.py --data-dir ../shared/data --runs sweeps/igr-compare --out runs/sharpness
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from discrete_vae.config import TrainConfig
from discrete_vae.data import load_dataset
from discrete_vae.distributions import ExpConcrete, ExpIGR, ExpIGRPlanar, ExpIGRSB, PlanarFlow
from discrete_vae.priors.igr import uniform_preimage_prior
from discrete_vae.recipe import build_model, model_from_run

MODELS = ("gs", "expgs", "igr-i", "igr-sb", "igr-planar")
TAUS = (0.05, 0.1, 0.15, 0.25, 0.5, 0.85, 1.0, 1.5)


def vertex_fraction(model: str, k: int, tau: float, draws: int, radius: float = 0.2) -> float:
    """Fraction of relaxed draws of the uniform categorical within ``radius`` of a vertex."""
    if model in ("gs", "expgs"):
        log_psi = ExpConcrete(tau, torch.zeros(k)).rsample((draws,))
    else:
        kind = model.removeprefix("igr-")
        loc, scale = uniform_preimage_prior(kind, k)
        if kind == "i":
            q = ExpIGR(tau, loc, scale)
        elif kind == "sb":
            q = ExpIGRSB(tau, loc, scale)
        else:  # an untrained flow of the default size, on one variable
            q = ExpIGRPlanar(tau, loc.unsqueeze(0), scale.unsqueeze(0), PlanarFlow(1, k - 1))
        with torch.no_grad():
            log_psi = q.rsample((draws,)).reshape(draws, k)
    psi = log_psi.exp()
    vertex = torch.nn.functional.one_hot(psi.argmax(-1), k).to(psi.dtype)
    return float(((psi - vertex).norm(dim=-1) < radius).double().mean())


def gradient_variance(model, x: torch.Tensor, tau: float, reps: int) -> dict[str, float]:
    """Per-parameter variance and SNR of d(relaxed objective)/d(encoder) over ``reps`` noise draws."""
    params = list(model.encoder.parameters())
    grads = []
    for _ in range(reps):
        loss = model(x, tau, 1).loss  # the relaxed ELBO's loss (each method's training objective)
        g = torch.autograd.grad(loss, params)
        grads.append(torch.cat([t.flatten() for t in g]))
    g = torch.stack(grads)  # (reps, P)
    var = g.var(0)
    return {
        "grad_var_mean": float(var.mean()),
        "grad_snr": float(g.mean(0).pow(2).sum() / var.sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--runs", type=Path, default=None,
                        help="a sweep folder of experiments/igr_compare.yaml (its seed-0 runs)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON table and plot")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--draws", type=int, default=20000)
    parser.add_argument("--reps", type=int, default=50, help="noise draws per gradient variance")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--taus", nargs="+", type=float, default=list(TAUS))
    args = parser.parse_args()
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    x = load_dataset("binarized_mnist", args.data_dir).split("train")[: args.batch]
    rows = []
    for name in args.models:
        run = args.runs / f"model={name},seed=0" / "run" if args.runs else None
        if run is not None and (run / "config.yaml").is_file():
            model, _, _ = model_from_run(run, "last")
            source = str(run)
        else:
            torch.manual_seed(0)
            config = TrainConfig.of(model=name, latent=f"20x{args.classes}", dataset="binarized_mnist")
            model = build_model(config, x.shape[1])
            source = "initialised"
        model.train()
        for tau in args.taus:
            torch.manual_seed(1)
            row = {"model": name, "tau": tau, "source": source}
            row["vertex_fraction"] = vertex_fraction(name, args.classes, tau, args.draws)
            row.update(gradient_variance(model, x, tau, args.reps))
            rows.append(row)
            print(json.dumps(row), flush=True)
    (args.out / "sharpness.json").write_text(json.dumps(rows, indent=1))
    plot(rows, args.out / "sharpness.png")
    print(f"wrote {args.out / 'sharpness.json'} and {args.out / 'sharpness.png'}", file=sys.stderr)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(r["model"] for r in rows):
        sel = [r for r in rows if r["model"] == name]
        taus = [r["tau"] for r in sel]
        axes[0].plot(taus, [r["vertex_fraction"] for r in sel], marker="o", label=name)
        axes[1].plot(taus, [r["grad_var_mean"] for r in sel], marker="o", label=name)
    axes[0].set(xlabel="temperature", ylabel="fraction within 0.2 of a vertex", title="sharpness")
    axes[1].set(xlabel="temperature", ylabel="mean per-parameter variance", yscale="log",
                title="encoder gradient variance")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
