"""Gumbel-Softmax / Concrete relaxations, computed in log space.

Papers:

- Maddison, Mnih, Teh (2017), *The Concrete Distribution*, https://arxiv.org/abs/1611.00712
  (the ExpConcrete density of Appendix C.3 and the logit form of the binary Concrete).
- Jang, Gu, Poole (2017), *Categorical Reparameterization with Gumbel-Softmax*,
  https://arxiv.org/abs/1611.01144 (the straight-through variant).

Working with the log of a Concrete sample keeps samples, densities and gradients finite in float32
down to temperatures of 0.01, where a sample on the simplex underflows to exact zeros and its
density to ``-inf``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution, TransformedDistribution, constraints
from torch.distributions.transforms import ExpTransform, SigmoidTransform
from torch.distributions.utils import broadcast_all, clamp_probs

__all__ = [
    "BinaryConcrete",
    "ExpConcrete",
    "GumbelSoftmax",
    "LogitBinaryConcrete",
    "straight_through_binary",
    "straight_through_one_hot",
]


def _gumbel(shape: torch.Size, like: Tensor) -> Tensor:
    """Standard Gumbel noise ``-log(-log U)``, ``U ~ Uniform(0, 1)`` kept inside (0, 1): always finite."""
    eps = torch.finfo(like.dtype).eps
    u = torch.rand(shape, dtype=like.dtype, device=like.device)
    return u.clamp_(eps, 1 - eps).log_().neg_().log_().neg_()  # in place: one buffer


class ExpConcrete(Distribution):
    r"""Log of a Concrete (Gumbel-Softmax) random vector over ``K`` classes.

    - Samples: :math:`y = \log\mathrm{softmax}((\log\alpha + G) / \tau)`, :math:`G_k` iid Gumbel(0, 1);
      ``exp(y)`` is a Gumbel-Softmax sample on the simplex.
    - ``log_prob(y)`` scores the log-space vector with the ExpConcrete density (Maddison et al. 2017,
      eq. 26): :math:`\log (K-1)! + (K-1)\log\tau + \sum_k (\log\alpha_k - \tau y_k)
      - K\,\mathrm{logsumexp}_k(\log\alpha_k - \tau y_k)`. Its reference measure is Lebesgue
      measure on the ``K - 1`` log-ratios :math:`r_k = y_k - y_K`, ``k < K`` (the differences of the
      perturbed logits :math:`(\log\alpha_k + G_k) / \tau`; the value is the same whichever class is
      the reference). The density of the coordinates :math:`y_1, ..., y_{K-1}` themselves is
      ``log_prob(y) - y_K`` (:math:`|\partial r / \partial y_{1:K-1}| = e^{-y_K}`), the measure of the
      IGR classes' ``log_prob``: a KL or ``log q - log p`` takes both terms from one of the two.
    - Gradients: pathwise (reparameterized) with respect to ``logits`` and ``temperature``.

    ``temperature`` may be a float or a tensor broadcastable to the batch shape (a learnable
    temperature is a tensor that requires grad).
    """

    arg_constraints = {"temperature": constraints.positive, "logits": constraints.real_vector}
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self, temperature: Tensor | float, logits: Tensor, validate_args: bool | None = None
    ):
        if logits.dim() < 1:
            raise ValueError("logits must have at least one dimension (the classes)")
        self.logits = torch.log_softmax(logits, -1)
        temperature = torch.as_tensor(temperature, dtype=logits.dtype, device=logits.device)
        batch_shape = logits.shape[:-1]
        self.temperature = (
            temperature.expand(batch_shape) if temperature.dim() == 0 else temperature
        )
        self._num_events = logits.shape[-1]
        super().__init__(batch_shape, logits.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(ExpConcrete, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.event_shape)
        new.temperature = self.temperature.expand(batch_shape)
        new._num_events = self._num_events
        super(ExpConcrete, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def probs(self) -> Tensor:
        """Class probabilities of the categorical this relaxes, ``softmax(logits)``."""
        return self.logits.exp()

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        scores = (
            self.logits.expand(shape) + _gumbel(shape, self.logits)
        ) / self.temperature.unsqueeze(-1)
        return torch.log_softmax(scores, -1)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        k = self._num_events
        tau = self.temperature
        log_scale = math.lgamma(k) + (k - 1) * tau.log()
        score = self.logits - value * tau.unsqueeze(-1)
        return score.sum(-1) - k * score.logsumexp(-1) + log_scale

    def sample_discrete(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        """Hard class indices from the categorical this relaxes (the Gumbel-max trick)."""
        shape = self._extended_shape(sample_shape)
        return (self.logits.expand(shape) + _gumbel(shape, self.logits)).argmax(-1)


class _ExpOfRelaxation(TransformedDistribution):
    """A relaxation on its natural support: a transform of a log-space base relaxation."""

    base_class: type[Distribution]
    transform_class: type

    def __init__(
        self, temperature: Tensor | float, logits: Tensor, validate_args: bool | None = None
    ):
        base = self.base_class(temperature, logits, validate_args=validate_args)
        super().__init__(base, self.transform_class(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(type(self), _instance)
        return super().expand(batch_shape, _instance=new)

    @property
    def temperature(self) -> Tensor:
        return self.base_dist.temperature

    @property
    def logits(self) -> Tensor:
        return self.base_dist.logits

    @property
    def probs(self) -> Tensor:
        return self.base_dist.probs


class GumbelSoftmax(_ExpOfRelaxation):
    """Concrete / Gumbel-Softmax distribution on the simplex: ``exp`` of an :class:`ExpConcrete`.

    - Samples are points of the simplex; ``log_prob`` is the Concrete density (finite only while no
      coordinate underflows, i.e. at moderate temperatures).
    - For training at low temperatures use :class:`ExpConcrete` and score the log-space sample.
    """

    arg_constraints = {"temperature": constraints.positive, "logits": constraints.real_vector}
    support = constraints.simplex
    has_rsample = True
    base_class = ExpConcrete
    transform_class = ExpTransform


class LogitBinaryConcrete(Distribution):
    r"""Logit of a binary Concrete (relaxed Bernoulli) variable: the log-space binary relaxation.

    - Samples: :math:`y = (\mathrm{logit} + \log U - \log(1-U)) / \tau`, ``U ~ Uniform(0, 1)``;
      ``sigmoid(y)`` is a binary Concrete sample.
    - ``log_prob(y)``:
      :math:`\log\tau + \mathrm{logit} - \tau y - 2\,\mathrm{softplus}(\mathrm{logit} - \tau y)`
      (Maddison et al. 2017, Appendix B), finite for every real ``y``.
    - Gradients: pathwise with respect to ``logits`` and ``temperature``.
    """

    arg_constraints = {"temperature": constraints.positive, "logits": constraints.real}
    support = constraints.real
    has_rsample = True

    def __init__(
        self, temperature: Tensor | float, logits: Tensor, validate_args: bool | None = None
    ):
        self.temperature, self.logits = broadcast_all(temperature, logits)
        super().__init__(self.logits.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(LogitBinaryConcrete, _instance)
        batch_shape = torch.Size(batch_shape)
        new.temperature = self.temperature.expand(batch_shape)
        new.logits = self.logits.expand(batch_shape)
        super(LogitBinaryConcrete, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def probs(self) -> Tensor:
        return torch.sigmoid(self.logits)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        u = clamp_probs(torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device))
        return (self.logits + u.log() - (-u).log1p()) / self.temperature

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        diff = self.logits - value * self.temperature
        return self.temperature.log() + diff - 2 * F.softplus(diff)

    def sample_discrete(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        """Hard {0, 1} draws from the Bernoulli this relaxes."""
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            return torch.bernoulli(self.probs.expand(shape))


class BinaryConcrete(_ExpOfRelaxation):
    """Binary Concrete (relaxed Bernoulli) on (0, 1): ``sigmoid`` of a :class:`LogitBinaryConcrete`."""

    arg_constraints = {"temperature": constraints.positive, "logits": constraints.real}
    support = constraints.unit_interval
    has_rsample = True
    base_class = LogitBinaryConcrete
    transform_class = SigmoidTransform


class _StraightThrough(torch.autograd.Function):
    """Forward: the given hard value. Backward: the gradient goes to the soft value unchanged."""

    @staticmethod
    def forward(ctx, soft: Tensor, hard: Tensor) -> Tensor:  # noqa: ARG004
        return hard

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: ARG004
        return grad, None


def straight_through_one_hot(log_sample: Tensor) -> Tensor:
    """Straight-through Gumbel-Softmax (Jang et al. 2017, sec. 2.2).

    Forward returns ``one_hot(argmax(y))`` for a log-space sample ``y`` (..., K); backward passes the
    gradient of the soft sample ``exp(y)``, so ``d hard = d exp(y)``.
    """
    soft = log_sample.exp()
    index = log_sample.argmax(-1, keepdim=True)
    hard = torch.zeros_like(soft).scatter_(-1, index, 1.0)
    return _StraightThrough.apply(soft, hard)


def straight_through_binary(logit_sample: Tensor) -> Tensor:
    """Straight-through binary Concrete: forward ``1[y > 0]``, backward the gradient of ``sigmoid(y)``."""
    soft = torch.sigmoid(logit_sample)
    hard = (logit_sample > 0).to(soft.dtype)
    return _StraightThrough.apply(soft, hard)
