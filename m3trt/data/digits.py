"""A multi-label set of real handwriting: scikit-learn's bundled 8x8 digits (1,797 scans, no
download) composed into images of 1 to 4 distinct digits at different sizes, with the synthetic
set's noisy user tags (``m3trt.data.synth.sample_tags``).

It is the regime where the image is the better half: a digit is easy to see once it is a dozen
pixels wide, while partial tags name only some digits and now and then a wrong one. Test images
draw their digits from scans never used by train or val images, so the model is scored on unseen
handwriting. Like the shapes set, image ``i`` is a pure function of ``(seed, i, split)``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image

DIGIT_LABELS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)
#: What a user writes instead of the label's own name.
DIGIT_SYNONYMS: dict[str, tuple[str, ...]] = {
    name: (str(i), f"no{i}") for i, name in enumerate(DIGIT_LABELS)
}
#: P(image has 1, 2, 3, 4 digits).
DIGIT_COUNT_PROBS: tuple[float, ...] = (0.3, 0.3, 0.25, 0.15)
TEST_POOL_FRACTION = 0.3  # of the scans, kept for test images only


@lru_cache(maxsize=1)
def _scans() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scans as float [N, 8, 8] in 0..1, their digits, and whether each is a test scan."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ValueError(
            "the digits regime needs scikit-learn (pip install scikit-learn)"
        ) from None
    data = load_digits()
    images = data.images.astype(np.float32) / 16.0
    perm = np.random.default_rng(np.random.SeedSequence([20190401])).permutation(len(images))
    test = np.zeros(len(images), dtype=bool)
    test[perm[: round(len(images) * TEST_POOL_FRACTION)]] = True
    return images, data.target.astype(np.int64), test


def sample_digits(
    rng: np.random.Generator, size: int, split: str, min_size: float, max_size: float
) -> tuple[list[str], Image.Image]:
    """One image: 1-4 distinct digits (scans from the split's pool), log-uniform heights between
    ``min_size`` and ``max_size`` of the side, light ink on a dark noisy background."""
    images, targets, test = _scans()
    pool = test if split == "test" else ~test
    n = int(rng.choice(len(DIGIT_COUNT_PROBS), p=DIGIT_COUNT_PROBS)) + 1
    digits = rng.choice(len(DIGIT_LABELS), size=n, replace=False)
    heights = np.exp(rng.uniform(math.log(min_size), math.log(max_size), n))
    bg = rng.uniform(0, 60, 3).astype(np.float32)
    canvas = np.broadcast_to(bg, (size, size, 3)).copy()
    canvas += rng.normal(0, 8, (size, size, 1)).astype(np.float32)
    placed: list[tuple[float, float, float]] = []
    for d, h in zip(digits, heights, strict=True):
        choices = np.flatnonzero(pool & (targets == d))
        scan = images[int(choices[int(rng.integers(len(choices)))])]
        side = max(4, round(h * size))
        ink = Image.fromarray((scan * 255).astype(np.uint8)).resize(
            (side, side), Image.Resampling.BILINEAR
        )
        alpha = np.asarray(ink, dtype=np.float32)[..., None] / 255.0
        best, best_score = (0, 0), -1.0
        for _ in range(30):  # least overlap with the digits already placed
            x, y = (int(v) for v in rng.integers(0, size - side + 1, 2))
            c = (x + side / 2, y + side / 2, side / 2)
            score = min(
                (math.hypot(c[0] - px, c[1] - py) / (c[2] + pr) for px, py, pr in placed),
                default=math.inf,
            )
            if score > best_score:
                best, best_score = (x, y), score
            if score >= 1.0:
                break
        x, y = best
        placed.append((x + side / 2, y + side / 2, side / 2))
        colour = rng.uniform(170, 255, 3).astype(np.float32)
        region = canvas[y : y + side, x : x + side]
        canvas[y : y + side, x : x + side] = region * (1 - alpha) + colour * alpha
    labels = [DIGIT_LABELS[i] for i in sorted(int(d) for d in digits)]
    pixels = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return labels, Image.fromarray(pixels)
