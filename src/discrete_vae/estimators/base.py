"""The estimator contract: ``estimator(q, f, n_samples) -> Estimate``.

An estimator turns an expectation :math:`\\mathbb{E}_{q_\\phi(z)}[f(z)]` over discrete ``z`` into a
*surrogate* whose gradient is the estimator's estimate of :math:`\\nabla \\mathbb{E}_q[f]` (with respect to
``q``'s logits and to any parameters inside ``f``), and a *value*, its estimate of the expectation itself.

- ``q``: a factorial :class:`~torch.distributions.Bernoulli` (logits ``(B, *shape)``) or
  :class:`~torch.distributions.OneHotCategorical` (logits ``(B, *shape, K)``), optionally wrapped in
  :class:`~torch.distributions.Independent`. The first batch dimension is the example; every other
  dimension is a latent variable of that example.
- ``f``: ``z (S, B, *shape[, K]) -> (S, B)``, called as often as the estimator needs, on hard ``z`` or,
  for estimators that declare ``relaxed``, on relaxed ``z``. It may depend on parameters.
- ``surrogate[b]`` depends only on example ``b``'s logits and draws, unless the estimator documents
  sharing (a moving-average baseline). ``aux_loss`` (a scalar, or None) is what the estimator's own
  parameters (learned baselines, control variates, temperatures) minimise: step it with respect to
  ``estimator.parameters()`` only.

Estimators declare what they support (``binary``, ``categorical``), whether they are ``unbiased``, and
whether they evaluate ``f`` at relaxed points; an unsupported pairing is one :class:`ConfigError`.
Their options are a typed dataclass (``Options``) registered with the method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, OneHotCategorical

from ..distributions.hard import bernoulli_draws, one_hot_draws
from ..errors import ConfigError, NonFiniteError
from ..objectives import iw_bound
from ..options import method_options
from ..registry import Registry

Objective = Callable[[Tensor], Tensor]  # z (S, B, ...) -> (S, B)
KINDS = ("binary", "categorical")


class Estimate(NamedTuple):
    """``surrogate`` (B,): its gradient is the estimate; ``value`` (B,): the estimate of ``E_q[f]``
    (detached); ``aux_loss``: the scalar the estimator's own parameters minimise (None without)."""

    surrogate: Tensor
    value: Tensor
    aux_loss: Tensor | None = None


@dataclass(frozen=True)
class Latents:
    """The discrete distribution an estimator works on, as logits.

    ``kind`` is ``binary`` (``logits`` (B, *shape): Bernoulli logits) or ``categorical`` (``logits``
    (B, *shape, K), normalised log probabilities). Samples carry a leading sample dimension.
    """

    kind: str
    logits: Tensor

    @classmethod
    def of(cls, q: Distribution) -> Latents:
        latents = cls.factorial(q)
        if latents is None:
            raise ConfigError("estimators take a Bernoulli or OneHotCategorical distribution, "
                              f"not {type(q).__name__}")
        return latents

    @classmethod
    def factorial(cls, q: Distribution) -> Latents | None:
        """``q``'s logits if it is a factorial Bernoulli or categorical (under any ``Independent``), else
        None."""
        base = q
        while isinstance(base, Independent):
            base = base.base_dist
        if isinstance(base, OneHotCategorical):
            return cls("categorical", base.logits)
        if isinstance(base, Bernoulli):
            return cls("binary", base.logits)
        return None

    @property
    def batch(self) -> int:
        return self.logits.shape[0]

    @property
    def event_dims(self) -> int:
        """Trailing dimensions of one example's latents (all but the batch dimension)."""
        return self.logits.dim() - 1

    def probs(self) -> Tensor:
        return torch.sigmoid(self.logits) if self.kind == "binary" else self.logits.softmax(-1)

    def sample(self, n: int) -> Tensor:
        """``n`` hard draws per example: (n, B, ...), by the package's one sampler of each kind
        (:mod:`discrete_vae.distributions.hard`: ``1[u < p]``, the inverse CDF over the classes)."""
        if self.kind == "binary":
            return bernoulli_draws(self.logits, torch.Size([n]))
        return one_hot_draws(self.logits, torch.Size([n]))

    def log_prob(self, z: Tensor) -> Tensor:
        """``log q(z)`` summed over each example's latents: (..., B, ...) -> (..., B)."""
        if self.kind == "binary":
            per = z * self.logits - torch.nn.functional.softplus(self.logits)  # z log s + (1 - z) log(1 - s)
        else:
            per = z * self.logits.log_softmax(-1)
        return self.sum_event(per)

    def sum_event(self, t: Tensor) -> Tensor:
        """Sum a tensor shaped like draws over each example's latent dimensions: (S, B, ...) -> (S, B)."""
        return t.sum(tuple(range(t.dim() - self.event_dims, t.dim()))) if self.event_dims else t


def class_softmax(logits: Tensor) -> Tensor:
    """``logits.softmax(-1)`` computed over the classes laid out first: the same values up to rounding, and
    on the CPU several times faster for few classes (torch's kernel over a short last dimension goes row by
    row, the one over a leading dimension works on whole slabs)."""
    return logits.movedim(-1, 0).softmax(0).movedim(0, -1)


def class_log_softmax(logits: Tensor) -> Tensor:
    """``logits.log_softmax(-1)``, computed as :func:`class_softmax` is."""
    return logits.movedim(-1, 0).log_softmax(0).movedim(0, -1)


def call_f(f: Objective, z: Tensor) -> Tensor:
    """``f(z)``, checked to be a tensor of shape (S, B)."""
    out = f(z)
    if not isinstance(out, Tensor):
        raise ConfigError(f"f must return a tensor of shape (samples, batch) = {tuple(z.shape[:2])} for z "
                          f"{tuple(z.shape)}, one value per draw and example; got {type(out).__name__} "
                          f"{out!r:.40}")
    if out.shape != z.shape[:2]:
        raise ConfigError(f"f must map z {tuple(z.shape)} to (samples, batch) = {tuple(z.shape[:2])}, "
                          f"got {tuple(out.shape)}")
    return out


def where_not_finite(t: Tensor, names: tuple[str, ...]) -> str | None:
    """``None`` if every entry of ``t`` is finite, else where the first non-finite one is and how many there
    are (``"nan at sample 0, example 3 (2 of 40 values)"``; ``names`` label the leading dimensions)."""
    bad = ~torch.isfinite(t.detach())
    if not bool(bad.any()):
        return None
    index = [int(i) for i in bad.nonzero()[0]]
    at = ", ".join(f"{n} {i}" for n, i in zip(names, index, strict=False))
    rest = f" {tuple(index[len(names):])}" if len(index) > len(names) else ""
    return f"{float(t.detach()[tuple(index)])} at {at}{rest} ({int(bad.sum())} of {t.numel()} values)"


def checked_f(f: Objective) -> Objective:
    """``f`` with its output checked to be finite: a :class:`NonFiniteError` says at which draw and
    example, and for which ``z``, it was not."""

    def f_checked(z: Tensor) -> Tensor:
        out = call_f(f, z)
        where = where_not_finite(out, ("sample", "example"))
        if where is not None:
            draw = "" if bool(((z == 0) | (z == 1)).all()) else " (a relaxed z)"
            raise NonFiniteError(f"f returned {where} for z of shape {tuple(z.shape)}{draw}")
        return out

    return f_checked


def check_estimate(name: str, estimate: Estimate) -> Estimate:
    """``estimate``, once its surrogate, value and aux_loss are finite (f and the logits were)."""
    for part in ("surrogate", "value", "aux_loss"):
        t = getattr(estimate, part)
        where = None if t is None else where_not_finite(t, ("example",))
        if where is not None:
            raise NonFiniteError(f"estimator {name}: its {part} is {where} although f and q's logits were "
                                 "finite (its baseline, control variate or temperature?)")
    return estimate


@dataclass(frozen=True)
class NoOptions:
    """This estimator has no options."""


class Estimator(nn.Module):
    """Base class: subclasses set the class attributes and implement :meth:`estimate`."""

    name: ClassVar[str] = ""
    supports: ClassVar[tuple[str, ...]] = KINDS
    unbiased: ClassVar[bool] = False
    relaxed: ClassVar[bool] = False  # evaluates f at points off the discrete support
    min_samples: ClassVar[int] = 1
    min_samples_are: ClassVar[str] = ""  # what the minimum is, where it is a unit of its own
    # its value and gradient are always the importance-weighted bound's over its samples (f a log weight, the
    # KL inside), not the ELBO's
    trains_iw_bound: ClassVar[bool] = False
    takes_iw_bound: ClassVar[bool] = False  # estimates the IW bound instead of E_q[f] when asked (iw=True)
    learns_temperature: ClassVar[bool] = False  # a training schedule's tau would override what it learns
    # aux_loss depends on the estimator's own parameters only, and the surrogate not on them: one backward
    # pass of surrogate + aux_loss gives both gradients (what a compiled step does, instead of two passes)
    separable_aux: ClassVar[bool] = False
    # evaluations of f per estimate when they are not n_samples (shown by `dvae list estimators`)
    cost: ClassVar[str] = ""
    # why a latent kind is not supported, where it is not (shown by `dvae list estimators`)
    unsupported: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Any = None):
        super().__init__()
        self.options = options if options is not None else self.Options()

    def forward(self, q: Distribution, f: Objective, n_samples: int = 1, *, tau: Tensor | float | None = None,
                context: Tensor | None = None, iw: bool = False, check: bool = False) -> Estimate:
        """Estimate ``E_q[f]`` and its gradient from ``n_samples`` draws per example.

        ``tau`` overrides the temperature option of relaxed estimators (a schedule's value);
        ``context`` is what learned baselines condition on (NVIL's input ``x``; default the logits).
        ``iw``: estimate the importance-weighted bound ``log (1/S) sum_s exp f(z_s)`` over the draws instead
        (``f`` a log weight), where the estimator can (:attr:`takes_iw_bound`; :attr:`trains_iw_bound` always
        does). ``check``: a NaN or infinity is a :class:`~discrete_vae.errors.NonFiniteError` that says where
        it came from (``q``'s logits, ``f`` at which draw and example, or the estimator's own output); it
        costs a device synchronisation per call of ``f``, so training leaves it off.
        """
        self.check_bound(iw)
        estimate = self.estimate_from(q, checked_f(f) if check else f, n_samples, tau=tau, context=context,
                                      iw=iw, check=check)
        return check_estimate(self.name, estimate) if check else estimate

    def estimate_from(self, q: Distribution, f: Objective, n_samples: int, *, tau: Tensor | float | None,
                      context: Tensor | None, iw: bool, check: bool) -> Estimate:
        """The estimate from ``q``: :meth:`estimate` on its :class:`Latents` (an estimator of the IW bound
        computes it there)."""
        return self.estimate(self.latents(q, n_samples, check), f, n_samples, tau=tau, context=context)

    def latents(self, q: Distribution, n_samples: int, check: bool = False) -> Latents:
        """``q``'s :class:`Latents`, checked to be of a kind and a number of samples this estimator takes
        (with ``check``, its logits finite)."""
        latents = Latents.of(q)
        self.check(latents.kind, n_samples)
        if check and (where := where_not_finite(latents.logits, ("example",))) is not None:
            raise NonFiniteError(f"q's logits are {where}")
        return latents

    def check(self, kind: str, n_samples: int) -> None:
        if kind not in self.supports:
            raise ConfigError(f"estimator {self.name} supports {' and '.join(self.supports)} latents, "
                              f"not {kind}")
        if n_samples < self.min_samples:
            raise ConfigError(f"estimator {self.name} needs at least {self.min_samples} samples per example, "
                              f"got {n_samples}")

    def check_bound(self, iw: bool) -> None:
        if iw and not (self.takes_iw_bound or self.trains_iw_bound):
            raise ConfigError(f"estimator {self.name} estimates E_q[f], not the importance-weighted bound: "
                              "use vimco or a relaxation's pathwise estimator")

    def estimate(self, latents: Latents, f: Objective, n_samples: int, *, tau: Tensor | float | None,
                 context: Tensor | None) -> Estimate:
        raise NotImplementedError

    def evaluations(self, n_samples: int, kind: str, shape: tuple[int, ...]) -> int:
        """How many times one estimate from ``n_samples`` evaluates ``f`` per example, for ``kind`` latents of
        one example's ``shape`` (``(..., K)`` when categorical): ``n_samples`` unless the estimator says
        otherwise (its :attr:`cost`); what comparisons at an equal budget of ``f`` count."""
        return n_samples

    def temperature(self, tau: Tensor | float | None, like: Tensor) -> Tensor:
        """The temperature in force: ``tau`` if given, else the ``temperature`` option."""
        value = self.options.temperature if tau is None else tau
        return torch.as_tensor(value, dtype=like.dtype, device=like.device)

    def stats(self) -> dict[str, float]:
        """Numbers worth logging with the training metrics (a learned temperature, a baseline)."""
        return {}


ESTIMATORS: Registry = Registry("estimator")


def register(cls: type[Estimator]) -> type[Estimator]:
    """Class decorator: register ``cls`` under ``cls.name``."""
    return ESTIMATORS.register(cls.name)(cls)


def estimator_options(name: str, values: dict[str, Any]) -> Any:
    """``name``'s typed options from ``values`` (names with ``-`` or ``_``); unknown keys are one error."""
    return method_options("estimator", name, ESTIMATORS.get(name).Options, values)


def build_estimator(name: str, **options: Any) -> Estimator:
    """The estimator registered as ``name`` with ``options`` (keywords of its ``Options``)."""
    return ESTIMATORS.get(name)(estimator_options(name, options))


class Pathwise(Estimator):
    """Estimators that draw a differentiable ``z`` per sample and differentiate ``f`` through it:
    ``surrogate = value = mean_s f(z_s)``, or with ``iw`` the importance-weighted bound
    ``log (1/S) sum_s exp f(z_s)``.

    - A factorial Bernoulli or categorical ``q`` is drawn by the estimator's own :meth:`rsample`, local to
      each latent variable, so it also serves networks with several stochastic layers (``dvae sop``).
    - Any other ``q`` with ``rsample`` is drawn from directly: a posterior's own relaxation
      (:class:`~discrete_vae.posteriors.base.Relaxation`, which ``dvae train`` hands the estimators its
      posterior names in ``relaxations``) or a ``torch.distributions`` relaxation.
    """

    takes_iw_bound = True
    draws_relaxations: ClassVar[bool] = False  # given q with its own rsample (a relaxation), draws from it

    def rsample(self, latents: Latents, n: int, tau: Tensor | float | None = None) -> Tensor:
        """``n`` differentiable draws per example: (n, B, ...)."""
        raise NotImplementedError

    def estimate_from(self, q: Distribution, f: Objective, n_samples: int, *, tau: Tensor | float | None,
                      context: Tensor | None, iw: bool, check: bool) -> Estimate:
        if self.draws_relaxations and q.has_rsample and Latents.factorial(q) is None:
            z = q.rsample((n_samples,))  # the distribution's own relaxation
        else:
            z = self.rsample(self.latents(q, n_samples, check), n_samples, tau)
        values = call_f(f, z)  # (S, B)
        value = iw_bound(values) if iw else values.mean(0)  # (B,)
        return Estimate(value, value.detach())


def positive_temperature(options: Any) -> None:
    """``__post_init__`` check shared by options with a ``temperature`` field."""
    if not options.temperature > 0:
        raise ConfigError(f"--temperature must be positive, got {options.temperature}")
