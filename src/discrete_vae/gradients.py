r"""``dvae gradients``: bias, variance and cost of gradient estimators on one batch, against the truth.

Each estimator gives ``R`` independent estimates :math:`\hat g_r` of the gradient of the batch-mean training
objective with respect to the parameters of :math:`q_\phi(z|x)` (the encoder's, and any posterior networks'),
each from ``k`` draws per example through ``DiscreteVAE.forward`` as in training. The truth :math:`g` is the
gradient of the discrete ELBO :math:`\frac1B\sum_b \mathbb{E}_{q(z|x_b)}[\log p(x_b|z)] - \mathrm{KL}(q\|p)`
(analytic KL where the pair is registered, else :math:`\log p(z) - \log q(z|x)` inside the expectation), for
``vimco`` that of its own target, the ``S``-sample bound
:math:`\mathbb{E}[\log\frac1S\sum_s p(x,z_s)/q(z_s|x)]`.
Relaxed estimators (``gs``, ``st-gs``, ``reinmax``, ...) are measured against the same discrete gradient.

- **Exact** when one example has at most ``MAX_STATES`` states (``M^S`` joint draws for vimco): a sum over
  the states, through the decoder in chunks of at most ``CHUNK_ROWS`` floats.
- **Sampled** otherwise: REINFORCE with the leave-one-out baseline (RLOO; over ``S``-tuples for vimco), an
  unbiased estimate from ``reference_samples`` draws per example in ``REFERENCE_BLOCKS`` blocks, whose
  spread gives its standard error; the bias test then adds the reference's own noise.

Per estimator: ``bias`` :math:`\|\bar g - g\|` (``relative_bias`` over :math:`\|g\|`), ``bias_z`` :math:`=
\|\bar g - g\|/\mathrm{se}` with :math:`\mathrm{se}^2 = \mathrm{tr\,Cov}(\hat g)/R` (+ the reference's),
``variance`` :math:`\mathrm{tr\,Cov}(\hat g)`, ``mse`` :math:`\frac1R\sum_r\|\hat g_r - g\|^2`, ``cosine``
(mean over draws) and ``cosine_of_mean`` with :math:`g`, and ``seconds``, the median wall time of one
estimate (forward and gradient). A declared-unbiased estimator with ``bias_z > 4`` gets a warning (for
Gaussian noise along one direction a false alarm has probability 6e-5, less with more directions).

The model is copied and put in eval mode: batch norm takes its running statistics and estimator state is
frozen (a moving-average baseline stays where the checkpoint has it, zero when fresh), so the draws are
independent and the caller's model is unchanged; learned baselines are evaluated at their current values.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .errors import ConfigError, UserError
from .estimators import ESTIMATORS, Estimator, Latents, build_estimator
from .estimators.base import call_f
from .estimators.exact import MAX_STATES, exact_iw_expectation, n_states, states
from .estimators.reinforce import score_surrogate
from .estimators.rloo import leave_one_out_mean
from .models import DiscreteVAE
from .models.vae import MULTI_SAMPLE

CHUNK_ROWS = 2**22  # states x examples x widest decoder layer, per chunk of the enumeration
REFERENCE_BLOCKS = 50
BIAS_Z_WARNING = 4.0


class Reference(NamedTuple):
    """The true gradient (P,) and objective; for a sampled one, the variance of its mean (P,)."""

    grad: Tensor
    value: float
    var_of_mean: Tensor | None
    kind: str  # exact or sampled
    detail: str


def q_parameters(model: DiscreteVAE) -> list[nn.Parameter]:
    """The parameters ``q(z|x)`` depends on: the encoder's and the posterior's own networks'."""
    return [p for m in (model.encoder, model.posterior) for p in m.parameters() if p.requires_grad]


def flat_grad(output: Tensor, params: list[nn.Parameter]) -> Tensor:
    """``d output / d params`` as one vector (P,), zeros where unused."""
    grads = torch.autograd.grad(output, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads,
                                                                                          strict=True)])


def cosine(a: Tensor, b: Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0, eps=1e-30))


def discrete_terms(model: DiscreteVAE, x: Tensor, iw: bool) -> tuple[Any, Any, Tensor | None]:
    """``(q, f, kl)`` of the discrete objective (:meth:`DiscreteVAE.discrete_terms`; ``iw``: the KL inside
    ``f``), for a posterior whose discrete ``q(z|x)`` is a factorial Bernoulli or categorical."""
    q, f, kl, _ = model.discrete_terms(x, sampled=iw)
    try:
        Latents.of(q)
    except ConfigError:
        raise ConfigError("dvae gradients needs a posterior whose discrete q(z|x) is a factorial Bernoulli "
                          f"or categorical, not {type(q).__name__}") from None
    return q, f, kl


def exact_gradient(model: DiscreteVAE, x: Tensor, params: list[nn.Parameter],
                   chunk_rows: int = CHUNK_ROWS) -> tuple[Tensor, float]:
    r"""The discrete ELBO's gradient :math:`\sum_z \nabla q(z) f(z)` (+ the KL's) by enumeration, and its
    value: the gradient with respect to ``q``'s logits is summed over chunks of states, then taken back
    through the encoder once."""
    q, _, kl = discrete_terms(model, x, iw=False)  # f inline: log p(x|z) without a graph
    latents = Latents.of(q)
    z_all, batch = states(latents), x.shape[0]  # (M, *event)
    widths = [m.out_features for m in model.decoder.modules() if isinstance(m, nn.Linear)]
    chunk = max(1, chunk_rows // (batch * max([latents.logits[0].numel(), *widths])))
    grad_logits, value = torch.zeros_like(latents.logits), 0.0
    for start in range(0, z_all.shape[0], chunk):
        z = z_all[start : start + chunk]
        z = z.unsqueeze(1).expand(z.shape[0], batch, *z.shape[1:])  # (C, B, ...)
        with torch.no_grad():  # log p(x|z) does not depend on q's parameters
            fz = model.log_likelihood(x, z)  # (C, B)
        log_q = latents.log_prob(z)  # (C, B)
        if kl is None:
            fz = fz + model.prior.log_prob(z) - log_q
        part = (log_q.exp() * fz).sum()  # summed over the chunk and the batch
        value += float(part.detach())
        grad_logits += torch.autograd.grad(part, latents.logits)[0]
    surrogate = (latents.logits * grad_logits).sum() / batch  # gradient: grad_logits / B
    if kl is not None:
        surrogate, value = surrogate - kl.mean(), value - float(kl.detach().sum())
    return flat_grad(surrogate, params), value / batch


def sampled_block(model: DiscreteVAE, x: Tensor, params: list[nn.Parameter], iw: int,
                  n: int) -> tuple[Tensor, float]:
    r"""One unbiased estimate from ``n`` draws (``iw``-tuples) per example: RLOO on the tuples' bounds
    :math:`\log\frac1S\sum_s e^{f(z_s)}` (``f`` itself for ``iw = 1``) scored by the tuples' joint
    :math:`\log q`, plus the pathwise term and the analytic KL's gradient."""
    q, f, kl = discrete_terms(model, x, iw=iw > 1)
    latents = Latents.of(q)
    z = latents.sample(n * iw)  # (n S, B, ...)
    bound = call_f(f, z).view(n, iw, -1).logsumexp(1) - math.log(iw)  # (n, B)
    signal = bound.detach() - leave_one_out_mean(bound.detach())  # (n, B)
    objective = score_surrogate(bound, signal, latents.log_prob(z).view(n, iw, -1).sum(1))  # (B,)
    if kl is not None:
        objective = objective - kl
    return flat_grad(objective.mean(), params), float(objective.detach().mean())


def reference_gradient(model: DiscreteVAE, x: Tensor, iw: int, m: int, samples: int, seed: int) -> Reference:
    """Exact when the ``m`` states per example (``m^iw`` joint draws) can be enumerated, else the mean of
    :data:`REFERENCE_BLOCKS` sampled blocks (``samples`` draws per example in all) and its variance."""
    params = q_parameters(model)
    if m**iw <= MAX_STATES:
        if iw == 1:
            grad, value = exact_gradient(model, x, params)
        else:
            q, f, _ = discrete_terms(model, x, iw=True)
            bound = exact_iw_expectation(q, f, iw, limit=MAX_STATES)  # (B,)
            grad, value = flat_grad(bound.mean(), params), float(bound.detach().mean())
        what = f"{m} states" if iw == 1 else f"{m}^{iw} joint draws"
        return Reference(grad.double(), value, None, "exact", f"enumeration of {what} per example")
    per_block = max(2, samples // REFERENCE_BLOCKS)
    torch.manual_seed(seed)
    blocks = [sampled_block(model, x, params, iw, per_block) for _ in range(REFERENCE_BLOCKS)]
    grads = torch.stack([g for g, _ in blocks]).double()  # (blocks, P)
    tuples = f" of {iw}-tuples" if iw > 1 else ""
    return Reference(grads.mean(0), statistics.fmean(v for _, v in blocks), grads.var(0) / len(blocks),
                     "sampled", f"{m} states per example, too many to enumerate: RLOO over "
                     f"{per_block * REFERENCE_BLOCKS} draws{tuples} per example in {REFERENCE_BLOCKS} blocks")


def default_estimators(model: DiscreteVAE) -> list[str]:
    """The posterior's relaxations, then (factorial posteriors) every registered estimator of its kind but
    vimco, whose target is another objective (ask for it by name)."""
    names = list(model.posterior.relaxations)
    if model.posterior.factorial:
        kind = "categorical" if model.posterior.one_hot else "binary"
        names += [n for n in ESTIMATORS.names() if n not in names and n not in MULTI_SAMPLE
                  and kind in ESTIMATORS.get(n).supports]
    return names


def parse_estimators(names: list[str]) -> dict[str, tuple[str, int | None]]:
    """``NAME`` or ``NAME:K`` (``K`` samples per estimate for that estimator) -> ``{label: (name, K)}``, in
    order; the label is what was given. One :class:`ConfigError` line for a bad ``K`` or a repeat."""
    parsed: dict[str, tuple[str, int | None]] = {}
    for given in names:
        name, colon, k = given.partition(":")
        if colon and not (k.isdigit() and int(k) >= 1):
            raise ConfigError(f"--estimators takes NAME or NAME:K with K a positive number of samples, "
                              f"got {given!r}")
        ESTIMATORS.get(name)  # an unknown name: the registry's one line
        if given in parsed:
            raise ConfigError(f"--estimators names {given} twice")
        parsed[given] = (name, int(k) if colon else None)
    return parsed


def adapt_estimator(model: DiscreteVAE, batches: Tensor, tau: float, n: int, objective: str, steps: int,
                    lr: float, seed: int) -> int:
    """Train the estimator's own parameters (learned baselines and control variates: ``aux_loss``) for
    ``steps`` Adam steps at ``lr`` on batches drawn with ``seed`` from ``batches`` (N, D), the model frozen,
    as training would have adapted them to this model; returns the steps taken (0 without parameters)."""
    from .train import estimator_gradients

    params = [p for p in model.estimator.parameters() if p.is_floating_point()]
    if not params or steps == 0:
        return 0
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    size = min(batches.shape[0], 100)
    taken = 0
    for _ in range(steps):
        x = batches[torch.randint(batches.shape[0], (size,), generator=generator)]
        aux = model(x, tau, n, 1.0, objective).aux_loss
        if aux is None:
            break
        for p, g in zip(params, estimator_gradients(params, aux), strict=True):  # as training steps them
            p.grad = g
        optimizer.step()
        taken += 1
    for p in params:
        p.requires_grad_(False)
    return taken


def use_estimator(model: DiscreteVAE, name: str, options: dict[str, Any], own: Estimator, k: int,
                  x: Tensor) -> int:
    """Put estimator ``name`` into ``model`` (a copy of ``own``, the model's trained one, if so named, else a
    fresh one with the ``options`` it has), frozen and checked against the posterior; returns its samples
    per estimate, ``k`` or its minimum."""
    cls = ESTIMATORS.get(name)
    if own.name == name:
        model.estimator = copy.deepcopy(own)
    else:
        model.estimator = build_estimator(name, **{o: v for o, v in options.items()
                                                   if o in cls.Options.__dataclass_fields__})
    model.estimator.eval()  # frozen state: independent draws
    model.check_estimator()
    n = max(k, cls.min_samples)
    if name not in model.posterior.relaxations:
        model.estimator.check("categorical" if model.posterior.one_hot else "binary", n)
    model.prepare(x)
    model.estimator.requires_grad_(False)  # only q's gradient is measured
    return n


def measure(model: DiscreteVAE, x: Tensor, tau: float, n: int, objective: str, draws: int,
            ref: Reference, unbiased: bool) -> dict[str, Any]:
    """``draws`` estimates of the gradient of the batch-mean objective, summarised against ``ref``."""
    params, truth = q_parameters(model), ref.grad
    mean, m2, cos_sum, sq_err, seconds = torch.zeros_like(truth), torch.zeros_like(truth), 0.0, 0.0, []
    for r in range(1, draws + 1):
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        start = time.perf_counter()
        g = flat_grad(-model(x, tau, n, 1.0, objective).loss, params)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        seconds.append(time.perf_counter() - start)
        g = g.to(truth)
        delta = g - mean  # Welford, in float64
        mean += delta / r
        m2 += delta * (g - mean)
        cos_sum += cosine(g, truth)
        sq_err += float((g - truth).square().sum())
    variance = float(m2.sum()) / (draws - 1)
    bias, norm = float((mean - truth).norm()), float(truth.norm())
    se = math.sqrt(variance / draws + (0.0 if ref.var_of_mean is None else float(ref.var_of_mean.sum())))
    out = {"unbiased": unbiased, "bias": bias, "relative_bias": bias / norm if norm > 0 else math.inf,
           "bias_se": se, "bias_z": bias / se if se > 0 else math.inf, "variance": variance,
           "mse": sq_err / draws, "cosine": cos_sum / draws, "cosine_of_mean": cosine(mean, truth),
           "seconds": statistics.median(seconds)}
    if unbiased and out["bias_z"] > BIAS_Z_WARNING:
        out["warning"] = (f"declared unbiased, but its bias is {out['bias_z']:.1f} standard errors from the "
                          f"reference (threshold {BIAS_Z_WARNING:g})")
    return out


def estimator_seed(seed: int, name: str) -> int:
    """The seed of one estimator's draws, whatever else is measured."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63


def check_measurement(draws: int, k: int, reference_samples: int, tau: float | None) -> None:
    """One :class:`ConfigError` line for counts out of range or a temperature that is not finite and
    positive (``None``: the run's schedule gives it)."""
    if draws < 2 or k < 1 or reference_samples < 2 * REFERENCE_BLOCKS:
        raise ConfigError(f"--draws must be at least 2, --k at least 1 and --reference-samples at least "
                          f"{2 * REFERENCE_BLOCKS}")
    if tau is not None and not 0 < tau < math.inf:
        raise ConfigError(f"--tau must be a finite positive temperature, got {tau}")


def gradient_report(model: DiscreteVAE, x: Tensor, estimators: list[str] | None = None, *, k: int = 1,
                    draws: int = 200, tau: float = 1.0, seed: int = 0, reference_samples: int = 10_000,
                    options: dict[str, Any] | None = None, objective: str = "auto",
                    learned_tau: bool = True, adapt: int = 0, adapt_data: Tensor | None = None,
                    adapt_lr: float = 1e-3) -> dict[str, Any]:
    """Measure ``estimators`` (default :func:`default_estimators`; ``NAME:K`` gives one its own ``K``) on
    the batch ``x``, ``k`` samples each.

    ``options`` go to the fresh estimators that have them (the model's own estimator keeps its state and
    options); ``objective`` is the relaxations' training objective (``elbo``, ``iw``, or ``auto``: iw for
    posteriors that train with it when k > 1); with ``learned_tau`` a learned temperature wins over ``tau``.
    With ``adapt``, each fresh estimator with learned parts first trains them for that many steps
    (:func:`adapt_estimator`, on batches of ``adapt_data``, default ``x``), the model frozen.
    The caller's model and RNG state are left as they were."""
    check_measurement(draws, k, reference_samples, tau)
    if adapt < 0:
        raise ConfigError(f"--adapt must be 0 or more steps, got {adapt}")
    own, options = model.estimator, options or {}
    model = copy.deepcopy(model).eval()
    if not learned_tau:
        model.temperature = None
    tau = float(model.tau(tau).detach())
    with torch.no_grad():
        latents = Latents.of(discrete_terms(model, x[:1], iw=False)[0])
    m, shape = n_states(latents), tuple(latents.logits.shape[1:])
    wanted = parse_estimators(list(dict.fromkeys(estimators or default_estimators(model))))
    references: dict[int, Reference] = {}
    results: dict[str, Any] = {}
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        samples = {label: use_estimator(model, name, options, own, k if n is None else n, x)
                   for label, (name, n) in wanted.items()}  # bad input first
        for label, n in samples.items():
            name, given = wanted[label]
            iw = n if name in MULTI_SAMPLE else 1
            if iw not in references:
                references[iw] = reference_gradient(model, x, iw, m, reference_samples,
                                                     estimator_seed(seed, f"reference-{iw}"))
            torch.manual_seed(estimator_seed(seed, label))
            use_estimator(model, name, options, own, k if given is None else given, x)
            mode = "iw" if iw > 1 else "elbo"
            if name in model.posterior.relaxations:  # as resolve_objective
                auto = "iw" if model.posterior.iw_default and n > 1 else "elbo"
                mode = auto if objective == "auto" else objective
            held = [*model.estimator.parameters(), *model.estimator.buffers()]
            state = "stateless" if not held else "own" if own.name == name else "fresh"
            adapted = 0
            if state == "fresh" and adapt:
                adapted = adapt_estimator(model, x if adapt_data is None else adapt_data, tau, n, mode, adapt,
                                          adapt_lr, estimator_seed(seed, f"adapt-{label}"))
                state = "adapted" if adapted else state
            evaluations = (n if name in model.posterior.relaxations
                           else model.estimator.evaluations(n, latents.kind, shape))
            unbiased = ESTIMATORS.get(name).unbiased
            results[label] = {"estimator": name, "k": n, "evaluations": evaluations, "reference": target(iw),
                              "objective": mode, "state": state, "adapted": adapted,
                              **measure(model, x, tau, n, mode, draws, references[iw], unbiased)}
    refs = {target(iw): {"kind": r.kind, "detail": r.detail, "value": r.value, "norm": float(r.grad.norm()),
                         "se": None if r.var_of_mean is None else math.sqrt(float(r.var_of_mean.sum()))}
            for iw, r in references.items()}
    size = sum(p.numel() for p in q_parameters(model))
    return {"tau": tau, "k": k, "draws": draws, "adapt": adapt, "states": m, "parameters": size,
            "references": refs, "estimators": results}


def target(iw: int) -> str:
    """A reference's name: ``elbo``, or ``iw5`` for the 5-sample importance-weighted bound."""
    return "elbo" if iw == 1 else f"iw{iw}"


def gradients_command(run_dir: Path | None, config: Any, *, checkpoint: str = "best", seed: int = 0,
                      k: int = 1, device: str = "auto", data_dir: str | None = None, split: str = "valid",
                      batch: int = 20, batch_seed: int = 0, estimators: list[str] | None = None,
                      draws: int = 200, tau: float | None = None, reference_samples: int = 10_000,
                      options: dict[str, Any] | None = None, out: Path | None = None,
                      adapt: int = 0) -> dict[str, Any]:
    """``dvae gradients``: the model of ``run_dir`` (its ``checkpoint``) or a fresh one from ``config`` (a
    :class:`~discrete_vae.config.TrainConfig`; weights from its seed), ``batch`` examples of ``split`` drawn
    with ``batch_seed``; prints the table, writes ``gradients.json`` and ``gradients.png`` into ``out``."""
    from .checkpoint import atomic_write_bytes, run_checkpoint
    from .data import load_dataset
    from .recipe import build_model, model_from_run, resolve_device, run_dataset, temperature_schedule
    from .runs import dumps, refuse_links
    from .viz.gradients import gradient_figure, gradient_table

    check_measurement(draws, k, reference_samples, tau)
    where = resolve_device(device)
    if run_dir is not None:
        model, config, state = model_from_run(run_dir, checkpoint, str(where))
        step, source = int(state["step"]), {"run_dir": str(run_dir),
                                            "checkpoint": run_checkpoint(run_dir, checkpoint).stem}
        data = run_dataset(config, data_dir, model.data_dim)
    else:
        torch.manual_seed(config.seed)  # as `dvae train` draws its initial weights
        data = load_dataset(config.dataset, config.data_dir, seed=config.seed)
        model = build_model(config, data.dim)
        model.init_decoder_bias(data.train_mean)
        model, step, source = model.to(where), 0, {"fresh": True, "weights_seed": config.seed}
    pool = data.split(split)
    if not 1 <= batch <= pool.shape[0]:
        raise UserError(f"--batch must be between 1 and the {pool.shape[0]} examples of the {split} split, "
                        f"got {batch}")
    if out is None and run_dir is not None:
        refuse_links(Path(run_dir), ("gradients",))  # RUN_DIR/gradients: written inside the run folder only
        out = Path(run_dir) / "gradients"
    elif out is None:
        out = Path(time.strftime("gradients-%Y%m%d-%H%M%S"))
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    generator = torch.Generator().manual_seed(batch_seed)
    indices = torch.randperm(pool.shape[0], generator=generator)[:batch].sort().values  # (B,)
    x = pool[indices]
    if split == "train" and data.dynamic_binarization:  # grey levels: one fixed draw, as training draws
        x = torch.bernoulli(x, generator=generator)
    report = gradient_report(
        model, x.to(where), estimators, k=k, draws=draws, seed=seed, options=options,
        tau=temperature_schedule(config)(step) if tau is None else tau, learned_tau=tau is None,
        reference_samples=reference_samples, objective=config.objective, adapt=adapt,
        adapt_data=data.split("train").to(where) if adapt else None, adapt_lr=config.lr)
    result = {**source, "step": step, "model": config.model, "latent": str(config.latent_spec()),
              "dataset": config.dataset, "split": split, "batch": batch, "batch_seed": batch_seed,
              "indices": indices.tolist(), "seed": seed, **report,
              "files": {"json": str(out / "gradients.json"), "png": str(out / "gradients.png")}}
    caption = (f"{source.get('run_dir', 'fresh model')}, step {step}, {config.model} {config.latent}, tau "
               f"{report['tau']:.3g}, {split} batch of {batch}, {draws} draws")
    print(f"{caption}; examples {result['indices']}\n{gradient_table(result)}")
    atomic_write_bytes(out / "gradients.json", (dumps(result) + "\n").encode())
    atomic_write_bytes(out / "gradients.png", gradient_figure(result, caption))
    return result
