"""Calibrating the quantity head on the validation split (issue 15).

The head regresses the label count with SmoothL1, which pulls q towards the middle of the count
distribution; ``k = floor(q + 0.5)`` then turns a small shared bias into many off-by-one counts,
and how big that bias is at the best epoch varies from seed to seed. After training we fit an
affine map of the head's pre-sigmoid output, ``z -> a * z + b``, that maximises exact-count
accuracy on the validation split (never the test split), and fold it into the head's last linear
layer. The exported graph keeps its contract (``q = 1 + (K_max - 1) sigmoid(z)``, same layers);
only two numbers of ``quantity.fc2`` change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from m3trt.model import M3Net

SCALES = np.round(np.linspace(0.5, 2.0, 16), 3)
SHIFTS = np.round(np.linspace(-2.0, 2.0, 41), 3)


@dataclass(frozen=True)
class QuantityCalibration:
    scale: float
    shift: float
    val_acc_before: float
    val_acc_after: float
    n_val: int

    def to_json(self) -> dict[str, float | int]:
        return {
            "scale": self.scale,
            "shift": self.shift,
            "val_acc_before": self.val_acc_before,
            "val_acc_after": self.val_acc_after,
            "n_val": self.n_val,
        }


def _logit_of(q: np.ndarray, k_max: int) -> np.ndarray:
    """Invert q = 1 + (k_max - 1) sigmoid(z), clipping away from the saturated ends."""
    p = np.clip((q.astype(np.float64) - 1.0) / max(1, k_max - 1), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _acc(z: np.ndarray, counts: np.ndarray, k_max: int) -> float:
    q = 1.0 + (k_max - 1) / (1.0 + np.exp(-z))
    k = np.clip(np.floor(q + 0.5), 1, k_max)
    return float(np.mean(k == counts))


def fit_calibration(q: np.ndarray, counts: np.ndarray, k_max: int) -> QuantityCalibration:
    """The (scale, shift) of z with the best exact-count accuracy on these (validation) images.

    Ties go to the map closest to the identity, so a head that needs no help keeps (1, 0)."""
    z = _logit_of(q, k_max)
    counts = counts.astype(np.int64)
    before = _acc(z, counts, k_max)
    best = (before, 0.0, 1.0, 0.0)  # (acc, -distance from identity, scale, shift)
    for a in SCALES:
        for b in SHIFTS:
            acc = _acc(a * z + b, counts, k_max)
            key = (acc, -(abs(a - 1.0) + abs(b)), float(a), float(b))
            if key[:2] > best[:2]:
                best = key
    acc, _, scale, shift = best
    return QuantityCalibration(scale, shift, before, acc, len(counts))


@torch.no_grad()
def apply_calibration(model: M3Net, calibration: QuantityCalibration) -> None:
    """Fold ``z -> scale * z + shift`` into the quantity head's last layer, in place."""
    if model.quantity is None:
        raise ValueError("the model has no quantity head to calibrate")
    fc2 = model.quantity.fc2
    fc2.weight.mul_(calibration.scale)
    fc2.bias.mul_(calibration.scale).add_(calibration.shift)
