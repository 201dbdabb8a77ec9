r"""``st-gs``: straight-through Gumbel-Softmax.

Paper: Jang, Gu, Poole (2017), https://arxiv.org/abs/1611.01144, sec. 2.2.

.. math::
    z = \mathrm{one\_hot}\big(\arg\max_k (\log\pi_k + g_k)\big)\ \text{(forward)},\qquad
    \hat\nabla = \nabla_\phi f(z)\,\big|_{\partial z = \partial\,\mathrm{softmax}((\log\pi + g)/\tau)}

``f`` sees an exact sample of ``q`` (so the value is unbiased); the backward pass uses the Jacobian of
the relaxed sample drawn with the same Gumbel noise, which biases the gradient.
"""

from __future__ import annotations

from torch import Tensor

from ..distributions import straight_through_binary, straight_through_one_hot
from .base import Latents, Pathwise, register
from .gs import ConcreteOptions, concrete_log_sample


def straight_through(kind: str, y: Tensor) -> Tensor:
    """Hard point of a log-space Concrete draw, with the relaxed point's gradient."""
    return straight_through_binary(y) if kind == "binary" else straight_through_one_hot(y)


@register
class StraightThroughGumbelSoftmax(Pathwise):
    """Straight-through Gumbel-Softmax: hard forward, Concrete backward."""

    name = "st-gs"
    Options = ConcreteOptions
    draws_relaxations = True

    def rsample(self, latents: Latents, n: int, tau: Tensor | float | None = None) -> Tensor:
        y = concrete_log_sample(latents, n, self.temperature(tau, latents.logits))
        return straight_through(latents.kind, y)
