r"""Joint configurations of factorial latents: the ``k`` most probable ones, and ``k`` distinct draws.

One example's latents are ``N`` independent variables of ``C`` classes each (``C = 2`` for binary), so its
joint distribution over the :math:`C^N` configurations :math:`D` factorises,
:math:`\log q(z) = \sum_n \log q_n(z_n)`. Both searches grow a set :math:`S` of distinct configurations
one at a time, each time adding the most probable configuration outside :math:`S` (:func:`most_probable`)
or a draw of ``q`` restricted to :math:`D \setminus S` (:func:`draw_without_replacement`). The one Python
loop runs over the ``k`` configurations; :class:`Outside` finds each exactly, vectorised over the batch and
the variables, by a partition of :math:`D \setminus S`:

- Read :math:`S` as a trie over the variables. A configuration outside :math:`S` leaves the trie once: it
  follows some members' path up to variable ``n`` and there takes a class none of them takes. Part
  :math:`(n, a)`, for a node :math:`a` (a prefix of length ``n`` shared by the members :math:`S_a`),
  holds the configurations that start with :math:`a`, take a class outside
  :math:`U_a = \{s_n : s \in S_a\}` at ``n``, then anything. The parts are disjoint and cover
  :math:`D \setminus S`. Member ``j``'s row holds its nodes, less those an earlier member has (from where
  its path first differs from theirs); :math:`U_a` is the member's own class there, and more only at the
  at most ``m - 1`` branch points, where later members left the trie.
- Part :math:`(n, a)` has mass :math:`q(a) \sum_{c \notin U_a} q_n(c)` (the later variables sum to 1):
  :math:`\log q(a)` is a cumulative sum of :math:`\log q_n(s_n)` along the path, the sum over the unused
  classes a ``logsumexp`` over them. No ``1 -`` a mass near 1 is ever formed, so a peaked ``q`` (logits
  at +-30) keeps every digit; the masses sum to :math:`1 - q(S)` (:meth:`Outside.log_mass`), as exact.
- A draw of ``q`` restricted to :math:`D \setminus S`: a member's row by its mass, a part in it by its
  mass (each a Gumbel-max, so a part by its mass), then the part's prefix :math:`a`, the class at ``n``
  from :math:`q_n` restricted to the unused classes, and each later variable from its own :math:`q_n`:
  ``q`` restricted to the part, so the draw is exact. ``k`` draws, each outside the earlier ones, are
  sampling without replacement, whose ordered draws have the law
  :math:`\prod_i q(s_i) / (1 - \sum_{j < i} q(s_j))` of the Gumbel-top-k of the joint (Kool, van Hoof &
  Welling 2019, "Stochastic Beams and Where to Find Them: The Gumbel-Top-k Trick for Sampling Sequences
  Without Replacement", ICML 2019, https://arxiv.org/abs/1903.06059).
- The most probable configuration outside :math:`S`: part :math:`(n, a)`'s best is :math:`a`, its most
  probable unused class at ``n``, every later variable at its most probable class, of log probability
  :math:`\log q(a) + \max_{c \notin U_a} \log q_n(c) + \sum_{n' > n} \max_c \log q_{n'}(c)` (suffix
  sums); the best part's is the best outside :math:`S`. Starting from every variable at its most
  probable class, ``k - 1`` steps give the ``k`` most probable in order, exactly (the partition of
  Lawler 1972, "A Procedure for Computing the K Best Solutions to Discrete Optimization Problems and Its
  Application to the Shortest Path Problem", Management Science 18(7)).

Cost per example: the ``m``-th member costs :math:`O(N C)` for its row, :math:`O(m N)` comparisons of
class indices to find where it leaves the trie, :math:`O(m C)` for the branch point there and :math:`O(N)`
to rescore that row; a step picks among ``m`` rows and ``N`` parts. ``k`` configurations take
:math:`O(k^2 N + k N C)` work and ``k`` Python iterations, whatever ``N``. Log probabilities are
(B, C, N), classes first; configurations are class indices (B, k, N), laid out as draws of ``q`` by
:func:`configurations`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Latents, class_log_softmax


def variable_log_probs(latents: Latents) -> Tensor:
    """``log q_n(c)`` per class and variable: (B, C, N), classes first (reductions over a short leading
    dimension are fast on the CPU, see :func:`.base.class_softmax`); for binary latents class 1 is
    ``z = 1``."""
    logits = latents.logits
    if latents.kind == "binary":
        flat = logits.reshape(logits.shape[0], -1)  # (B, N)
        return torch.stack([F.logsigmoid(-flat), F.logsigmoid(flat)], 1)
    return class_log_softmax(logits).movedim(-1, 1).reshape(logits.shape[0], logits.shape[-1], -1)


def configurations(latents: Latents, index: Tensor) -> Tensor:
    """Class indices (B, m, N) as draws of ``q``: (m, B, *shape) bits, or (m, B, *shape, K) one-hot."""
    logits = latents.logits
    index = index.transpose(0, 1)  # (m, B, N)
    if latents.kind == "binary":
        return index.to(logits.dtype).reshape(index.shape[0], *logits.shape)
    return F.one_hot(index, logits.shape[-1]).to(logits.dtype).reshape(index.shape[0], *logits.shape)


def first_max(t: Tensor) -> Tensor:
    """The first class of largest ``t`` per variable: (B, C, N) -> (B, N); ``argmax`` over the short class
    dimension, by float ``amax``/``amin`` (many times faster there on the CPU than ``argmax``)."""
    classes = torch.arange(t.shape[1], dtype=t.dtype, device=t.device).unsqueeze(-1)  # (C, 1)
    return (classes + (t < t.amax(1, keepdim=True)) * t.shape[1]).amin(1).long()


def sample_classes(log_probs: Tensor) -> Tensor:
    """A class per variable drawn from ``log_probs`` (B, C, N) by the inverse CDF, one uniform ``u`` per
    variable (the class ``c`` with ``F_{c-1} <= u F_C < F_c``, as :meth:`.base.Latents.sample`): (B, N)."""
    cdf = log_probs.exp().cumsum(1)  # (B, C, N)
    u = torch.rand_like(cdf[:, :1]) * cdf[:, -1:]  # (B, 1, N)
    return (cdf <= u).sum(1).clamp_(max=cdf.shape[1] - 1)


def gumbel(like: Tensor) -> Tensor:
    """Gumbel(0, 1) noise shaped like ``like``, from torch's generator."""
    u = torch.rand(like.shape, dtype=like.dtype, device=like.device)
    return -torch.log(-torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)))


def exclusive_cumsum(t: Tensor) -> Tensor:
    """``out[..., n] = sum_{m < n} t[..., m]``."""
    return F.pad(t.cumsum(-1)[..., :-1], (1, 0))


class Outside:
    """The joint configurations outside a set ``S`` of distinct ones (``taken`` (B, m, N), grown by
    :meth:`add`), partitioned by where they leave ``S``'s trie; ``log_probs`` (B, C, N). With ``sample``
    each part is scored by its log mass (``logsumexp`` over its configurations) and :meth:`next` draws from
    ``q`` restricted to outside ``S``; else by the log probability of its best configuration (``max``) and
    :meth:`next` returns the most probable configuration outside ``S``.

    Part ``(j, n)`` (flattened ``j N + n``) is member ``j``'s node at variable ``n``, or nothing where that
    node is an earlier member's. Its used classes are ``j``'s own there and, at a branch point (a node
    where a later member left the trie: ``nodes``), the classes those members took (``branch_classes``).
    ``score`` (B, m, N) holds each part's score, ``row_score`` (B, m) each member's reduced over its parts:
    a new member changes its own row and the branch point's. Its parts are indexed when first needed."""

    def __init__(self, log_probs: Tensor, taken: Tensor, sample: bool) -> None:
        b, c, n = log_probs.shape
        self.log_probs = log_probs
        self.sample = sample
        self.reduce = torch.logsumexp if sample else torch.amax
        self.classes = torch.arange(c, device=log_probs.device)  # (C,)
        if sample:  # the later variables' share in a part's score: their mass, log 1
            self.after = log_probs.new_zeros(b, n)
        else:  # or their most probable classes' log probability
            self.after = exclusive_cumsum(log_probs.amax(1).flip(-1)).flip(-1)  # (B, N)
        self.taken = taken  # (B, m, N): S's members, class indices
        self.score = log_probs.new_empty(b, 0, n)  # (B, m, N)
        self.row_score = log_probs.new_empty(b, 0)  # (B, m)
        self.nodes = taken.new_empty(b, 0)  # (B, m - 1): the branch point each later member left at
        self.branch_classes = taken.new_empty(b, 0)  # (B, m - 1): the class it took there

    def add(self, z: Tensor) -> None:
        """Put ``z`` (B, N), a configuration outside ``S``, into ``S``."""
        self.taken = torch.cat([self.taken, z.unsqueeze(1)], 1)

    def index(self) -> None:
        """Index the parts of the members added since the last call."""
        for j in range(self.score.shape[1], self.taken.shape[1]):
            z = self.taken[:, j]  # (B, N)
            prefix = exclusive_cumsum(self.log_probs.gather(1, z.unsqueeze(1)).squeeze(1))  # (B, N)
            others = self.log_probs.masked_fill(z.unsqueeze(1) == self.classes.unsqueeze(-1), -math.inf)
            score = prefix + self.reduce(others, 1) + self.after  # (B, N)
            if j:
                score = self.branch(z, prefix, score)
            self.score = torch.cat([self.score, score.unsqueeze(1)], 1)
            self.row_score = torch.cat([self.row_score, self.reduce(score, -1, keepdim=True)], 1)

    def branch(self, z: Tensor, prefix: Tensor, score: Tensor) -> Tensor:
        """Where ``z`` (B, N) leaves the trie of the members indexed so far: its node there becomes (or
        stays) a branch point, whose part and owner's row are rescored; ``z``'s parts up to there are the
        owner's, so its ``score`` (B, N) there is returned as ``-inf``."""
        b, n = z.shape
        first = (self.taken[:, : self.score.shape[1]] != z.unsqueeze(1)).to(torch.uint8).argmax(-1)  # (B, j)
        owner = first.argmax(-1, keepdim=True)  # (B, 1): the first member sharing z's longest prefix
        depth = first.gather(1, owner)  # (B, 1): z's first class unlike the owner's
        node = owner * n + depth  # (B, 1)
        self.nodes = torch.cat([self.nodes, node], 1)
        self.branch_classes = torch.cat([self.branch_classes, z.gather(1, depth)], 1)
        left = self.reduce(self.left(node), -1)  # (B, 1): over the classes no member takes there
        self.score.view(b, -1).scatter_(1, node, prefix.gather(1, depth) + left + self.after.gather(1, depth))
        self.row_score.scatter_(1, owner, self.reduce(row(self.score, owner), -1, keepdim=True))
        return score.masked_fill(torch.arange(n, device=z.device) <= depth, -math.inf)

    def left(self, parts: Tensor) -> Tensor:
        """``log q_n(c)`` at parts ``parts`` (B, s), ``-inf`` at the classes used there: (B, s, C)."""
        n = self.log_probs.shape[-1]
        column = self.log_probs.gather(2, (parts % n).unsqueeze(1).expand(-1, self.classes.shape[0], -1))
        used = self.taken.flatten(1).gather(1, parts).unsqueeze(-1) == self.classes  # (B, s, C)
        same = parts.unsqueeze(-1) == self.nodes.unsqueeze(1)  # (B, s, m - 1)
        later = self.branch_classes.unsqueeze(-1) == self.classes  # (B, m - 1, C)
        used = used | (same.unsqueeze(-1) & later.unsqueeze(1)).any(2)
        return column.transpose(1, 2).masked_fill(used, -math.inf)

    def log_mass(self) -> Tensor:
        """``log(1 - q(S))``: (B,), the parts' masses summed (with ``sample``)."""
        self.index()
        return self.row_score.logsumexp(-1)

    def next(self) -> Tensor:
        """A draw of ``q`` restricted to outside ``S`` (with ``sample``: a member's row by its mass, a part
        in it by its mass, a class there from those left, the later variables from ``q``), else the most
        probable configuration outside ``S`` (the best row's best part, its best class left, the later
        variables at their best): (B, N)."""
        self.index()
        j = self.pick(self.row_score)  # (B, 1)
        at = j * self.log_probs.shape[-1] + self.pick(row(self.score, j))  # (B, 1)
        chosen = self.pick(self.left(at).squeeze(1))  # (B, 1)
        rest = sample_classes(self.log_probs) if self.sample else first_max(self.log_probs)  # (B, N)
        return self.leave(at, chosen, rest)

    def pick(self, score: Tensor) -> Tensor:
        """The index of the largest ``score`` (B, s), perturbed by Gumbels with ``sample`` (Gumbel-max: an
        index drawn with probability proportional to ``exp(score)``): (B, 1)."""
        return (score + gumbel(score) if self.sample else score).argmax(-1, keepdim=True)

    def leave(self, at: Tensor, chosen: Tensor, rest: Tensor) -> Tensor:
        """The configuration of part ``at`` (B, 1) (member ``j = at // N``'s node at ``n = at % N``): ``j``'s
        classes before ``n``, ``chosen`` (B, 1) at ``n``, ``rest`` (B, N) after it: (B, N)."""
        n_vars = rest.shape[-1]
        position = torch.arange(n_vars, device=at.device)
        n = at % n_vars
        path = row(self.taken, at // n_vars)  # (B, N)
        return torch.where(position < n, path, torch.where(position == n, chosen, rest))


def row(t: Tensor, j: Tensor) -> Tensor:
    """``t[b, j[b]]``: (B, m, N) by (B, 1) -> (B, N)."""
    return t.gather(1, j.unsqueeze(-1).expand(-1, 1, t.shape[-1])).squeeze(1)


@torch.no_grad()
def most_probable(log_probs: Tensor, k: int) -> Tensor:
    """The ``k`` joint configurations of largest log probability (``k`` at most ``C^N``), in descending
    order of it (ties in any order): class indices (B, k, N). ``log_probs``: (B, C, N)."""
    outside = Outside(log_probs, first_max(log_probs).unsqueeze(1), sample=False)
    for _ in range(k - 1):
        outside.add(outside.next())
    return outside.taken


@torch.no_grad()
def draw_without_replacement(log_probs: Tensor, k: int) -> Tensor:
    """``k`` distinct joint configurations (``k`` at most ``C^N``), each a draw of ``q`` restricted to the
    configurations not drawn before: class indices (B, k, N) in the order drawn. ``log_probs``: (B, C, N)."""
    outside = Outside(log_probs, sample_classes(log_probs).unsqueeze(1), sample=True)
    for _ in range(k - 1):
        outside.add(outside.next())
    return outside.taken
