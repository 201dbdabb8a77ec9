"""The importance-weighted bound, a pure function of per-sample log weights.

:func:`iw_bound`: ``log (1/S) sum_s exp(log w_s)``: with hard samples from the discrete posterior this is
the importance-weighted lower bound on ``log p(x)`` of the discrete model (Burda et al. 2016,
https://arxiv.org/abs/1509.00519); with ``S = 1`` it is the ELBO. Trained through a relaxation's draws
(DVAE#'s objective, an estimator's ``iw``) it bounds the relaxed model's likelihood instead.
"""

from __future__ import annotations

import math

from torch import Tensor


def iw_bound(log_w: Tensor) -> Tensor:
    """``logsumexp_s log_w[s] - log S``: (S, B) -> (B,)."""
    return log_w.logsumexp(0) - math.log(log_w.shape[0])
