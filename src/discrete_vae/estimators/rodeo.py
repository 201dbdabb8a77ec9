r"""``rodeo``: REINFORCE leave-one-out with control variates from a discrete Stein operator.

Paper: Shi, Zhou, Hwang, Titsias & Mackey (2022), "Gradient Estimation with Discrete Stein Operators",
NeurIPS 2022, https://arxiv.org/abs/2202.09497 (reference code: https://github.com/thjashin/rodeo).

The Gibbs Stein operator of a factorial ``q`` over ``N`` variables (the Markov chain that picks a variable
uniformly and redraws it from its own distribution :math:`q_n`; the operator the reference code's VAE
runs use) maps any function :math:`h` to one of mean zero under ``q``:

.. math::
    (\mathcal{A}h)(x) = \frac1N \sum_{n=1}^{N} \sum_{c \ne x_n} q_n(c)\,
        \big[h(x^{n \leftarrow c}) - h(x)\big],\qquad \mathbb{E}_q[(\mathcal{A}h)(x)] = 0,

with :math:`x^{n \leftarrow c}` the configuration :math:`x` with variable :math:`n` set to :math:`c` (binary:
the flip of bit :math:`n`, at rate :math:`q_n(1 - x_n)`). With :math:`K` independent draws
:math:`x_1, \dots, x_K \sim q_\phi` per example and :math:`g_j = \nabla_x f(x_j)`,

.. math::
    \hat\nabla &= \frac1K \sum_k \Big[\Big(f(x_k) - \frac{1}{K-1}\sum_{j \ne k}
        \big(f(x_j) + \alpha\,(\mathcal{A}h^{(j)}_0)(x_j)\big)\Big)\nabla_\phi \log q_\phi(x_k)
        + \beta\,(\mathcal{A}H^{(k)})(x_k)\Big] + \frac1K\sum_k \nabla f(x_k), \\
    H^{(k)}(y) &= h^{(k)}_1(y)\,\nabla_\phi \log q_\phi(y),\qquad
    \big(h^{(k)}_0, h^{(k)}_1\big)(y) = \frac{1}{K-1}\sum_{j \ne k}
        \mathrm{NN}_\psi\big(\langle g_j,\, y - x_j\rangle,\; f(x_j)\big).

The control functions of draw :math:`k` see the other draws only, through the first-order Taylor expansion of
``f`` around each (the reference code's ``discrete_stein_avg`` for :math:`K = 2` and
``discrete_stein_output_avg`` for :math:`K > 2`, which coincide at :math:`K = 2`). So, given the other
draws, :math:`(\mathcal{A}H^{(k)})(x_k)` has mean zero, and so has each :math:`(\mathcal{A}h^{(j)}_0)(x_j)` in
draw :math:`k`'s baseline, which multiplies a function of draws other than :math:`x_j`: the estimate is
unbiased for every :math:`\psi, \alpha, \beta`. The first control variate improves the leave-one-out
baseline, the second is added to the gradient itself. Since :math:`\nabla_\phi \log q(y) = y - \mu` and a
move changes one variable, the second is computed without forming the neighbours' scores:

.. math::
    (\mathcal{A}H)(x) = (\mathcal{A}h_1)(x)\,(x - \mu)
        + \frac1N\sum_{n}\sum_{c \ne x_n} q_n(c)\, h_1(x^{n \leftarrow c})\,(x^{n \leftarrow c} - x).

- :math:`\mathrm{NN}_\psi`: two scalar inputs, hidden layers of ``cv_hidden`` LeakyReLU(0.3) units (one of
  100, the reference code's), two outputs :math:`(h_0, h_1)`; PyTorch's default initialisation (the output
  layer is not zero). Its input width is fixed by the construction, so it is sized when built, not lazily; it
  computes in its parameters' dtype (``estimator.double()`` for float64). A neighbour of :math:`x_k` differs
  from it in the first input only (by :math:`\langle g_j, x^{n \leftarrow c} - x_k\rangle`), along which a
  one-hidden-layer :math:`\mathrm{NN}_\psi` is piecewise linear: its values there (and their gradients)
  are read off prefix sums over the sorted breakpoints of the hidden units, in :math:`O((H + M)\log H)`
  per :math:`(k, j)` and example rather than :math:`O(HM)` (:func:`along_first_input`); deeper networks
  are evaluated point by point.
- :math:`\alpha, \beta` (from 0: an untrained ``rodeo`` is ``rloo``) and :math:`\psi` are learned together by
  minimising ``aux_loss``, the mean of :math:`\hat\nabla^2` over examples and logits (the reference code's
  variance objective); the surrogate does not depend on them. ``f``, :math:`g` and the logits are detached
  in the control variates, as in the reference code: parameters inside ``f`` get exactly
  :math:`\frac1K\sum_k\nabla f(x_k)`.
- ``n_samples`` is :math:`K \ge 2`: one call of ``f`` on all :math:`K` draws and one backward pass through it
  to :math:`x` (:math:`K` evaluations of ``f`` and of :math:`\nabla_x f`); :math:`\mathrm{NN}_\psi` is
  evaluated at :math:`K(K-1)(M + 1)` points per example, ``M`` the number of logits (each draw and each of
  its neighbours, for every other draw). For factorial latents each :math:`x_k` is the joint configuration
  of all ``N`` variables, drawn at once; the operator's sum runs over the variables and their other values.
- Binary as in the paper; categorical with the same Gibbs operator (each variable redrawn over its
  classes: :math:`M = N C` neighbours, those :math:`c = x_n` with weight 0), and ``f`` differentiated in its
  one-hot input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..options import coerce_widths
from .arm import pad_like
from .base import Latents, register
from .double_cv import InputGradientCV
from .rebar import score
from .rloo import leave_one_out_mean


@dataclass(frozen=True)
class RodeoOptions:
    cv_hidden: tuple[int, ...] = field(default=(100,), metadata={
        "help": "hidden widths of the control function h (LeakyReLU 0.3 MLP, 2 inputs, 2 outputs); empty "
                "for an affine h"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "cv_hidden", coerce_widths("--cv-hidden", self.cv_hidden))


def control_function(hidden: tuple[int, ...]) -> nn.Sequential:
    """``NN_psi``: (..., 2) -> (..., 2), LeakyReLU(0.3) hidden layers (the reference code's activation)."""
    widths = (2, *hidden)
    layers: list[nn.Module] = []
    for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(width_in, width_out), nn.LeakyReLU(0.3)]
    return nn.Sequential(*layers, nn.Linear(widths[-1], 2))


def plain(net: nn.Sequential, base: Tensor, moves: Tensor) -> Tensor:
    """``NN_psi(base + (m, 0))`` (2, G, Q), outputs first, for each offset ``m`` of ``moves`` (G, Q) of the
    first input, with ``base`` (G, 2): the network on every point."""
    first, second = base.unbind(-1)  # (G,), (G,)
    points = torch.stack([first.unsqueeze(-1) + moves, second.unsqueeze(-1).expand_as(moves)], -1)
    return net(points).movedim(-1, 0)  # (G, Q, 2) -> (2, G, Q)


def piecewise_linear(net: nn.Sequential) -> bool:
    """Whether ``net`` is ``control_function`` with one hidden layer, which :func:`along_first_input`
    evaluates."""
    return len(net) == 3 and isinstance(net[1], nn.LeakyReLU)


def along_first_input(net: nn.Sequential, base: Tensor, moves: Tensor) -> Tensor:
    r""":func:`plain`'s values (up to rounding) for a network with one hidden layer, without forming the
    hidden layer at each of the ``Q`` points: ``O((H + Q) \log H)`` per row instead of ``O(H Q)``.

    With :math:`c = W_1\,\mathrm{base} + b_1` the hidden pre-activation at ``m = 0``, :math:`w` the first
    column of :math:`W_1` and LeakyReLU slope :math:`s`, :math:`\mathrm{NN}(m) = b_2 + W_2[s (c + w m) +
    (1 - s) \sum_{u\ \mathrm{active}} e_u (c_u + w_u m)]`: piecewise linear in ``m``. Unit ``u`` is active
    (:math:`c_u + w_u m > 0`) for ``m`` above its breakpoint :math:`t_u = -c_u / w_u` if :math:`w_u > 0`,
    below it if :math:`w_u < 0`, and where :math:`c_u > 0` if :math:`w_u = 0`. Sorting each row's
    breakpoints, the active units' sum is a prefix sum read at ``m``'s rank (``searchsorted``); the ranks
    are constant between breakpoints, so autograd through the sums gives the network's gradient."""
    linear, activation, out = net
    slope = activation.negative_slope
    c = torch.nn.functional.linear(base, linear.weight, linear.bias)  # (G, H)
    w = linear.weight[:, 0]  # (H,)
    sign = torch.sign(w).detach()  # (H,): units active above (1) or below (-1) their breakpoint, or flat (0)
    cut = torch.where(sign != 0, -c.detach() / w.detach(), torch.inf)  # (G, H): breakpoints t_u
    cut, order = cut.sort(-1)  # (G, H)
    rank = torch.searchsorted(cut, moves)  # (G, Q): units with t_u < m
    below = (sign < 0).to(c.dtype)  # (H,): active below the breakpoint
    flat = ((sign == 0) & (c > 0)).to(c.dtype)  # (G, H): active for every m
    u = out.weight.unsqueeze(1) * c  # (2, G, H): W_2 e_u c_u
    v = (out.weight * w).unsqueeze(1).expand_as(u)  # (2, G, H): W_2 e_u w_u
    always = below + flat  # (G, H): the units active for m below every breakpoint
    u0 = out.bias.unsqueeze(1) + slope * u.sum(-1) + (1 - slope) * (u * always).sum(-1)  # (2, G)
    v0 = slope * v.sum(-1) + (1 - slope) * (v * always).sum(-1)  # (2, G)
    order = order.expand_as(u)  # (2, G, H)
    # intercept and slope in m of the pieces (2, G, H + 1): piece r lies above the r lowest breakpoints
    u = torch.cat([u0.unsqueeze(-1), (1 - slope) * (u * sign).gather(-1, order)], -1).cumsum(-1)
    v = torch.cat([v0.unsqueeze(-1), (1 - slope) * (v * sign).gather(-1, order)], -1).cumsum(-1)
    at = rank.expand(2, -1, -1)  # (2, G, Q)
    return u.gather(-1, at) + v.gather(-1, at) * moves  # (2, G, Q)


def others(k: int, device: torch.device) -> Tensor:
    """``(K, K - 1)``: row ``k`` lists the draws ``j != k``."""
    return (torch.arange(k, device=device).unsqueeze(1) + torch.arange(1, k, device=device)) % k


@register
class Rodeo(InputGradientCV):
    """RODEO: ``rloo`` with two Gibbs-Stein control variates of a learned control function ``h`` of the
    Taylor expansions of ``f`` around the other draws (unbiased for any ``h``, ``alpha``, ``beta``).

    State: the network ``net`` (``NN_psi``) and the parameters ``alpha`` and ``beta`` (all checkpointed),
    trained through ``aux_loss``.
    """

    name = "rodeo"
    Options = RodeoOptions
    cost = ("f and grad_z f once per draw (one backward pass through f to z); "
            "h at K(K-1)(M+1) points, M logits per example")

    def __init__(self, options: RodeoOptions | None = None):
        super().__init__(options)
        self.net = control_function(self.options.cv_hidden)
        self.alpha = nn.Parameter(torch.zeros(()))
        self.beta = nn.Parameter(torch.zeros(()))

    def gradient(self, latents: Latents, z: Tensor, fz: Tensor, grad_z: Tensor) -> Tensor:
        s = score(latents, z)  # (K, B, ...): grad log q(x_k) = x_k - mu
        probs = latents.probs().detach()  # (B, ...)
        binary = latents.kind == "binary"
        n_vars = latents.logits[0].numel() // (1 if binary else latents.logits.shape[-1])
        index = others(z.shape[0], z.device)  # (K, K-1)
        g_j, x_j, f_j = grad_z[index], z[index], fz[index]  # (K, K-1, B, ...), (K, K-1, B, ...), (K, K-1, B)
        x = z.unsqueeze(1)  # (K, 1, B, ...)
        at_x = latents.sum_event(g_j * (x - x_j))  # (K, K-1, B): <g_j, x_k - x_j>
        if binary:  # the flip of each bit, at rate q_n(1 - x_n)
            step = 1 - 2 * z  # (K, B, ...): x^{n} - x at bit n
            offset = g_j * step.unsqueeze(1)  # (K, K-1, B, ...): <g_j, x^{n} - x>
            rate = torch.where(z > 0, 1 - probs, probs)  # (K, B, ...)
        else:  # each variable set to each class c, at rate pi_n(c); c = x_n has rate 0
            offset = g_j - (g_j * x).sum(-1, keepdim=True)  # (K, K-1, B, ..., C): <g_j, x^{n <- c} - x>
            rate = probs * (1 - z)  # (K, B, ..., C)
        h_x, h_y = self.control(at_x, f_j, offset)  # (2, K, B), (2, K, B, ...): at x_k and its neighbours
        stein0, stein1 = latents.sum_event(rate * (h_y - pad_like(h_x, h_y))) / n_vars  # (K, B): (A h_i)(x_k)
        moved = rate * h_y[1]  # (K, B, ...): q_n(c) h_1(x^{n <- c})
        jump = moved * step if binary else moved - z * moved.sum(-1, keepdim=True)  # times (x^{n<-c} - x)
        stein_score = pad_like(stein1, s) * s + jump / n_vars  # (K, B, ...): (A H)(x_k)
        alpha, beta = self.alpha.to(fz.dtype), self.beta.to(fz.dtype)
        signal = fz - leave_one_out_mean(fz + alpha * stein0)  # (K, B)
        return (pad_like(signal, s) * s + beta * stein_score).mean(0)  # (B, ...)

    def control(self, taylor: Tensor, f_j: Tensor, offset: Tensor) -> tuple[Tensor, Tensor]:
        """``(h_0, h_1)`` averaged over the other draws at ``x_k`` (Taylor input ``taylor``, K, K-1, B) and at
        its neighbours (``taylor + offset``, K, K-1, B, ...): (2, K, B) and (2, K, B, ...)."""
        dtype = self.net[0].weight.dtype
        base = torch.stack([taylor, f_j], -1).to(dtype).flatten(0, -2)  # (G, 2), G = K (K-1) B
        moves = offset.to(dtype).reshape(base.shape[0], -1)  # (G, M)
        moves = torch.cat([moves.new_zeros(moves.shape[0], 1), moves], 1)  # (G, 1 + M): x_k first
        evaluate = along_first_input if piecewise_linear(self.net) else plain
        h = evaluate(self.net, base, moves).to(taylor.dtype)  # (2, G, 1 + M)
        h = h.view(2, *taylor.shape, -1).mean(2)  # (2, K, B, 1 + M)
        return h[..., 0], h[..., 1:].reshape(2, *offset.shape[:1], *offset.shape[2:])

    def stats(self) -> dict[str, float]:
        return {"alpha": self.alpha.item(), "beta": self.beta.item()}
