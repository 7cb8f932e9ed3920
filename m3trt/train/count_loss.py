"""The quantity head's training loss (issue 15): an ordinal likelihood aligned with ``round(q)``.

The head outputs ``q = 1 + (K_max - 1) sigmoid(z)`` and the image gets ``k = floor(q + 0.5)``
labels, so ``k = c`` exactly when ``z`` lies between two fixed cut points,
``theta_c = logit((c - 0.5) / (K_max - 1))``. The paper's SmoothL1 on ``q`` is quadratic, hence
weak, just where those decisions are taken (|q - count| < 1), and the sigmoid damps it further
away from the middle. The ordinal loss is the cumulative-link model (McCullagh, *Regression
models for ordinal data*, 1980) with those cut points: ``P(count > c) = sigmoid(s (z - theta_c))``
and the loss is ``-log P(count = true count)``. Its minimum for an image is the middle of its
count's interval, and its gradient does not fade while the count is wrong. The exported graph,
``q`` and ``k = round(q)`` are unchanged (DESIGN §3.3): only how the head is trained differs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from m3trt.constants import QUANTITY_LOSSES

#: How sharp the cumulative link is, per unit of z. With K_max = 5 the cut points are ~1 to 1.4
#: apart in z, and at 4 an image whose z sits in the middle of its interval gets ~0.8 of the
#: probability, so the loss keeps pulling until z is well inside, not beyond.
ORDINAL_SHARPNESS = 4.0


def cut_points(k_max: int) -> torch.Tensor:
    """The z values where ``round(q)`` steps from c to c + 1, for c = 1 .. K_max - 1."""
    return torch.tensor(
        [math.log((c - 0.5) / (k_max - c - 0.5)) for c in range(1, k_max)], dtype=torch.float32
    )


def ordinal_count_loss(
    z: torch.Tensor, counts: torch.Tensor, k_max: int, sharpness: float = ORDINAL_SHARPNESS
) -> torch.Tensor:
    """Mean negative log-likelihood of the true counts (clamped to 1 .. K_max) under the
    cumulative-link model on the head's pre-sigmoid output ``z`` [B]."""
    if k_max < 2:
        return z.sum() * 0.0  # one possible count: nothing to learn
    inf = torch.tensor([math.inf], dtype=z.dtype, device=z.device)
    theta = torch.cat([-inf, cut_points(k_max).to(z), inf])  # count c lies in theta[c-1:c+1]
    target = counts.round().long().clamp(1, k_max)
    lower, upper = theta[target - 1], theta[target]
    # log(sigmoid(x) - sigmoid(y)) for x = s(z - lower) > y = s(z - upper), in log space: the
    # plain difference of two probabilities rounds to 0 in float32 far from the interval, and
    # the loss would stop pulling exactly where it is needed.
    x, y = sharpness * (z - lower), sharpness * (z - upper)
    log_p = (
        F.logsigmoid(x) + F.logsigmoid(-y) + torch.log1p(-torch.exp(-sharpness * (upper - lower)))
    )
    return -log_p.mean()


def quantity_loss(
    kind: str, z: torch.Tensor, q: torch.Tensor, counts: torch.Tensor, k_max: int
) -> torch.Tensor:
    """The count loss named ``kind`` (``QUANTITY_LOSSES``)."""
    if kind == "ordinal":
        return ordinal_count_loss(z, counts, k_max)
    if kind == "smoothl1":
        return F.smooth_l1_loss(q, counts)
    raise ValueError(f"unknown quantity loss {kind!r}; expected one of {QUANTITY_LOSSES}")
