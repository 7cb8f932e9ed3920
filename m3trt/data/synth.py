"""The synthetic demo/benchmark dataset: shapes at very different scales over scene backgrounds,
with noisy Flickr-style user tags (numpy and Pillow only).

It is built so that each part of the model has something real to do:

* **multi-scale** — object sizes are log-uniform from 5% to 60% of the image side, so some
  objects are a few pixels wide (fine, high-resolution features) and some fill the image;
* **scenes** — four scene labels (night, beach, stripes, noise) are properties of the whole
  background, seen at coarse scale;
* **tags** — each true label is tagged only about half the time, sometimes by a synonym, among
  camera/place/date noise tags and the occasional misleading tag; ~15% of images have no tags;
* **label quantity** — 1 to 5 labels per image with a skewed distribution, so a fixed top-3 is
  often wrong.

``SynthParams`` holds the knobs that set a *data regime*: how hard the images are (object sizes) and
how good the tags are (recall of true labels, misleading-tag rate, untagged fraction). ``REGIMES``
names the presets the ablation uses: ``default`` (hard images, informative tags) and
``easy-partial`` (large objects, partial and noisier tags: the image alone is the better half).

Everything is a pure function of ``(params, seed, index)``: image ``i`` uses its own
``np.random.default_rng(np.random.SeedSequence([seed, i]))``, so the output never depends on the
order of generation or on a progress callback. ``sample_layout`` and ``sample_tags`` are exposed
so that tests (and curious users) can study the distributions without drawing pixels.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from m3trt.atomic import write_text
from m3trt.data.digits import DIGIT_LABELS, DIGIT_SYNONYMS, sample_digits
from m3trt.data.manifest import SPLITS, write_manifest
from m3trt.data.safe_open import open_regular
from m3trt.errors import InputError, WriteFailure

_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)

OBJECT_LABELS: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "diamond",
    "hexagon",
    "crescent",
    "arrow",
)
SCENE_LABELS: tuple[str, ...] = ("night", "beach", "stripes", "noise")
#: The fixed label order written to labels.txt: objects first, then scenes.
LABEL_NAMES: tuple[str, ...] = OBJECT_LABELS + SCENE_LABELS

#: What a user might write instead of the label's own name (all lowercase, all distinct).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("round", "disc", "dot"),
    "square": ("box", "block"),
    "triangle": ("pyramid", "delta"),
    "star": ("sparkle", "pentagram"),
    "cross": ("plus", "crucifix"),
    "ring": ("donut", "hoop", "loop"),
    "diamond": ("rhombus", "gem", "lozenge"),
    "hexagon": ("hex", "honeycomb"),
    "crescent": ("moon", "sickle"),
    "arrow": ("pointer", "direction"),
    "night": ("dark", "evening", "nighttime"),
    "beach": ("sand", "seaside", "coast"),
    "stripes": ("striped", "lines", "zebra"),
    "noise": ("grainy", "grain", "texture"),
}

#: Camera/place/date words that say nothing about the labels.
NOISE_TAGS: tuple[str, ...] = (
    "nikon",
    "canon",
    "sony",
    "iphone",
    "vacation",
    "holiday",
    "family",
    "friends",
    "travel",
    "trip",
    "summer",
    "winter",
    "sunset",
    "weekend",
    "party",
    "2017",
    "2018",
    "2019",
    "photo",
    "instagram",
    "europe",
    "usa",
)

#: P(image has 1, 2, 3, 4, 5 labels).
COUNT_PROBS: tuple[float, ...] = (0.25, 0.30, 0.22, 0.15, 0.08)
MAX_LABELS = len(COUNT_PROBS)
P_SCENE = 0.45  # an image has one scene label with this probability (else a plain background)
MIN_SIZE_FRAC = 0.05  # object extent (bounding-circle diameter) as a fraction of the side:
MAX_SIZE_FRAC = 0.60  # log-uniform between these
P_TAG_LABEL = 0.55  # a true label is tagged with this probability ...
P_SYNONYM = 0.30  # ... and then by a synonym with this probability
MAX_NOISE_TAGS = 3  # 0..3 noise tags, uniform
P_MISLEADING = 0.10  # a tag naming a label that is not present
# Forced-empty rate; with the images whose draws happen to give no tag (~4.5%) about 15% of
# images have no tags at all.
P_NO_TAGS = 0.11
JPEG_QUALITY = 90
MIN_N = 20
MIN_IMAGE_SIZE = 32
# Upper bounds, so that a typo is one line and not an allocation of terabytes: the manifest's rows
# are held until written, and each image is drawn on a full-size pixel grid.
MAX_N = 1_000_000
MAX_IMAGE_SIZE = 4096


@dataclass(frozen=True)
class SynthParams:
    """The knobs of a data regime (fractions and probabilities).

    ``min_size``/``max_size``: object extent as a fraction of the side (log-uniform between them);
    ``tag_recall``: P(a true label is tagged); ``synonym_rate``: P(it is tagged by a synonym);
    ``misleading``: P(an image gets a tag naming an absent label); ``untagged``: P(an image's tags
    are all removed), on top of the images whose draws give no tag at all. ``images``: "shapes"
    (this module's drawings) or "digits" (real handwriting, ``m3trt.data.digits``)."""

    min_size: float = MIN_SIZE_FRAC
    max_size: float = MAX_SIZE_FRAC
    tag_recall: float = P_TAG_LABEL
    synonym_rate: float = P_SYNONYM
    misleading: float = P_MISLEADING
    untagged: float = P_NO_TAGS
    images: str = "shapes"

    def __post_init__(self) -> None:
        if self.images not in ("shapes", "digits"):
            raise ValueError(f"images must be 'shapes' or 'digits', not {self.images!r}")
        if not 0 < self.min_size <= self.max_size <= 1:
            raise ValueError(
                f"object sizes need 0 < min_size <= max_size <= 1, not "
                f"{self.min_size!r}..{self.max_size!r}"
            )
        for name in ("tag_recall", "synonym_rate", "misleading", "untagged"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], not {value!r}")

    def with_overrides(self, **values: float | None) -> SynthParams:
        """A copy with the given (non-None) knobs changed."""
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in values.items() if v is not None and k in known})


DEFAULT_PARAMS = SynthParams()
#: Named regimes. ``default``: objects from 5% to 60% of the side, about half the labels tagged.
#: ``easy-partial``: objects from 25% to 60% of the side (easy to see at 64 px), only 35% of the
#: labels tagged, a misleading tag on 20% of the images, 25% untagged: tags still help, but the
#: image alone is the better half (the regime where a naive joint model loses to image-only).
#: ``digits-partial``: real handwritten digits (1-4 per image, 28% to 55% of the side, unseen
#: scans in the test split) with partial tags, the regime of issue 15.
REGIMES: dict[str, SynthParams] = {
    "default": DEFAULT_PARAMS,
    "easy-partial": SynthParams(
        min_size=0.25, max_size=0.60, tag_recall=0.35, misleading=0.20, untagged=0.25
    ),
    "digits-partial": SynthParams(
        images="digits", min_size=0.28, max_size=0.55, tag_recall=0.4, misleading=0.2, untagged=0.2
    ),
}

_ALL_SYNONYMS: dict[str, tuple[str, ...]] = SYNONYMS | DIGIT_SYNONYMS
_TAG_TO_LABEL: dict[str, str] = {name: name for name in LABEL_NAMES + DIGIT_LABELS} | {
    syn: name for name, syns in _ALL_SYNONYMS.items() for syn in syns
}


def tag_label(tag: str) -> str | None:
    """The label a tag names, directly or by a synonym; None for a noise tag."""
    return _TAG_TO_LABEL.get(tag)


@dataclass(frozen=True)
class SynthObject:
    """One shape: ``size`` is its extent (bounding-circle diameter) as a fraction of the image
    side, ``cx, cy`` its centre as fractions, ``angle`` its rotation in degrees."""

    label: str
    size: float
    cx: float
    cy: float
    angle: float
    color: tuple[int, int, int]


@dataclass(frozen=True)
class Background:
    """The background: ``kind`` is a scene label or "plain" (a gradient, no label).

    ``colors`` are its reference colours; ``angle`` (degrees) orients gradients and stripes;
    ``scale`` is the stripe period or the horizon height (fractions of the side)."""

    kind: str
    colors: tuple[tuple[int, int, int], ...]
    angle: float = 0.0
    scale: float = 0.0


@dataclass(frozen=True)
class Layout:
    """What one image shows: objects are in drawing order (largest first, so none is hidden)."""

    size: int
    background: Background
    objects: tuple[SynthObject, ...]

    @property
    def scene(self) -> str | None:
        return None if self.background.kind == "plain" else self.background.kind

    @property
    def labels(self) -> list[str]:
        """The true labels, in the fixed label order."""
        present = {o.label for o in self.objects}
        if self.scene:
            present.add(self.scene)
        return [name for name in LABEL_NAMES if name in present]


@dataclass(frozen=True)
class SynthSummary:
    """What ``generate`` wrote."""

    out_dir: Path
    manifest: Path
    splits: dict[str, int]
    label_names: tuple[str, ...]
    mean_labels: float

    @property
    def n(self) -> int:
        return sum(self.splits.values())


# --------------------------------------------------------------------------------------------
# Sampling (pure functions of the generator state)


def _rgb(values: np.ndarray) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in np.clip(np.rint(values), 0, 255))
    return (r, g, b)


def _bright_colour(rng: np.random.Generator, floor: float = 140.0) -> np.ndarray:
    """A random colour whose brightest channel is at least ``floor`` (never night-dark)."""
    c = rng.uniform(0, 255, 3)
    top = c.max()
    if top < floor:
        c = c * (floor / max(top, 1.0))
    return c


def _sample_background(rng: np.random.Generator, scene: str | None) -> Background:
    angle = float(rng.uniform(0, 360))
    if scene is None:
        c1 = _bright_colour(rng)
        c2 = np.clip(c1 + rng.normal(0, 35, 3), 0, 255)
        return Background("plain", (_rgb(c1), _rgb(c2)), angle=angle)
    if scene == "night":
        c1 = rng.uniform(0, 32, 3) + np.array([0.0, 2.0, 14.0])
        c2 = rng.uniform(0, 32, 3) + np.array([0.0, 2.0, 14.0])
        return Background("night", (_rgb(c1), _rgb(c2)), angle=angle)
    if scene == "beach":
        sky = np.array([128.0, 188.0, 236.0]) + rng.uniform(-18, 18, 3)
        sand = np.array([226.0, 202.0, 150.0]) + rng.uniform(-18, 18, 3)
        horizon = float(rng.uniform(0.38, 0.62))
        return Background("beach", (_rgb(sky), _rgb(sand)), angle=angle, scale=horizon)
    if scene == "stripes":
        c1 = rng.uniform(0, 255, 3)
        for _ in range(20):
            c2 = rng.uniform(0, 255, 3)
            if np.linalg.norm(c1 - c2) >= 110:
                break
        period = float(rng.uniform(0.08, 0.2))
        return Background("stripes", (_rgb(c1), _rgb(c2)), angle=angle, scale=period)
    if scene == "noise":
        base = _bright_colour(rng, floor=120.0)
        return Background("noise", (_rgb(base),), angle=angle)
    raise ValueError(f"unknown scene {scene!r}")


def _object_colour(rng: np.random.Generator, avoid: Sequence[tuple[int, int, int]]) -> tuple:
    """A uniformly random colour, re-drawn until it stands out from the background colours."""
    refs = np.array(avoid, dtype=np.float64)
    best, best_d = None, -1.0
    for _ in range(30):
        c = rng.uniform(0, 255, 3)
        d = float(np.min(np.linalg.norm(refs - c, axis=1)))
        if d > best_d:
            best, best_d = c, d
        if d >= 100:
            break
    return _rgb(best)


def _place(rng: np.random.Generator, size: float, placed: list[tuple[float, float, float]]):
    """A centre (fractions) that keeps the object inside the image and overlaps the ones already
    placed only moderately (best of a few tries)."""
    r = size / 2
    best, best_score = (0.5, 0.5), -1.0
    for _ in range(30):
        cx, cy = (float(v) for v in rng.uniform(r, 1 - r, 2))
        score = min(
            (math.hypot(cx - x, cy - y) / (r + pr) for x, y, pr in placed), default=math.inf
        )
        if score > best_score:
            best, best_score = (cx, cy), score
        if score >= 0.8:
            break
    return best


def sample_layout(
    rng: np.random.Generator, size: int, params: SynthParams = DEFAULT_PARAMS
) -> Layout:
    """Draw one image's content: the label count, an optional scene, and objects of distinct
    classes with log-uniform sizes, random colours, positions and rotations."""
    n_labels = int(rng.choice(MAX_LABELS, p=COUNT_PROBS)) + 1
    scene = SCENE_LABELS[int(rng.integers(len(SCENE_LABELS)))] if rng.random() < P_SCENE else None
    background = _sample_background(rng, scene)
    n_objects = n_labels - (scene is not None)
    classes = rng.choice(len(OBJECT_LABELS), size=n_objects, replace=False)
    sizes = np.exp(rng.uniform(math.log(params.min_size), math.log(params.max_size), n_objects))
    order = np.argsort(-sizes, kind="stable")  # largest first: smaller ones are drawn on top
    objects: list[SynthObject] = []
    placed: list[tuple[float, float, float]] = []
    for k in order:
        label = OBJECT_LABELS[int(classes[k])]
        s = float(sizes[k])
        cx, cy = _place(rng, s, placed)
        placed.append((cx, cy, s / 2))
        angle = 0.0 if label in ("circle", "ring") else float(rng.uniform(0, 360))
        colour = _object_colour(rng, background.colors)
        objects.append(SynthObject(label, s, cx, cy, angle, colour))
    return Layout(size=size, background=background, objects=tuple(objects))


def _name(rng: np.random.Generator, label: str, synonym_rate: float) -> str:
    if rng.random() < synonym_rate:
        syns = _ALL_SYNONYMS[label]
        return syns[int(rng.integers(len(syns)))]
    return label


def sample_tags(
    rng: np.random.Generator,
    labels: Sequence[str],
    params: SynthParams = DEFAULT_PARAMS,
    label_names: Sequence[str] = LABEL_NAMES,
) -> list[str]:
    """Noisy user tags for an image with these true labels (lowercase, distinct, shuffled)."""
    if rng.random() < params.untagged:
        return []
    syn = params.synonym_rate
    tags = [_name(rng, label, syn) for label in labels if rng.random() < params.tag_recall]
    n_noise = int(rng.integers(MAX_NOISE_TAGS + 1))
    tags += [NOISE_TAGS[int(i)] for i in rng.choice(len(NOISE_TAGS), n_noise, replace=False)]
    if rng.random() < params.misleading:
        absent = [name for name in label_names if name not in labels]
        tags.append(_name(rng, absent[int(rng.integers(len(absent)))], syn))
    tags = list(dict.fromkeys(tags))
    return [tags[int(i)] for i in rng.permutation(len(tags))]


# --------------------------------------------------------------------------------------------
# Drawing


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return xs + 0.5, ys + 0.5


def _background_pixels(bg: Background, size: int, rng: np.random.Generator) -> np.ndarray:
    """The background as a float32 (size, size, 3) array in 0..255."""
    xs, ys = _grid(size)
    cols = [np.array(c, dtype=np.float32) for c in bg.colors]
    theta = math.radians(bg.angle)
    along = ((xs - size / 2) * math.cos(theta) + (ys - size / 2) * math.sin(theta)) / size
    if bg.kind in ("plain", "night"):
        t = np.clip(along + 0.5, 0, 1)[..., None]
        return cols[0] * (1 - t) + cols[1] * t
    if bg.kind == "beach":
        sky, sand = cols
        amp = size * float(rng.uniform(0.0, 0.03))
        wave = amp * np.sin(2 * math.pi * xs / (size * float(rng.uniform(0.5, 1.5))) + theta)
        horizon = bg.scale * size + wave
        lift = np.clip((ys / size)[..., None], 0, 1)  # the sky pales towards the horizon
        sky_px = sky * (0.85 + 0.2 * lift)
        sand_px = sand + rng.normal(0, 5, (size, size, 1)).astype(np.float32)
        return np.where((ys >= horizon)[..., None], sand_px, sky_px)
    if bg.kind == "stripes":
        phase = float(rng.uniform(0, 1))
        on = ((along / bg.scale + phase) % 1.0) < 0.5
        return np.where(on[..., None], cols[0], cols[1])
    if bg.kind == "noise":
        coarse = rng.normal(0, 1, (6, 6)).astype(np.float32)
        blobs = Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR)
        lum = 32 * np.asarray(blobs)[..., None] + rng.normal(0, 26, (size, size, 1))
        chroma = rng.normal(0, 10, (size, size, 3))
        return cols[0] + lum.astype(np.float32) + chroma.astype(np.float32)
    raise ValueError(f"unknown background {bg.kind!r}")


def _rotate(points: Sequence[tuple[float, float]], cx: float, cy: float, r: float, angle: float):
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in points]


def _regular(n: int, start: float = -90.0) -> list[tuple[float, float]]:
    return [
        (math.cos(math.radians(start + 360 * k / n)), math.sin(math.radians(start + 360 * k / n)))
        for k in range(n)
    ]


def _star() -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        rad = 1.0 if k % 2 == 0 else 0.42
        a = math.radians(-90 + 36 * k)
        pts.append((rad * math.cos(a), rad * math.sin(a)))
    return pts


def _cross() -> list[tuple[float, float]]:
    w, a = 0.3, 1.0
    pts = [(w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a)]
    pts += [(-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w), (-w, -a)]
    scale = 1 / math.hypot(w, a)  # fit the bounding circle
    return [(x * scale, y * scale) for x, y in pts]


def _crescent(steps: int = 24) -> list[tuple[float, float]]:
    r2, d = 0.8, 0.45  # the bite: a circle of radius r2 centred at (d, 0)
    x = (1 - r2 * r2 + d * d) / (2 * d)
    y = math.sqrt(1 - x * x)
    phi_o, phi_i = math.atan2(y, x), math.atan2(y, x - d)
    outer = [(math.cos(t), math.sin(t)) for t in np.linspace(phi_o, 2 * math.pi - phi_o, steps)]
    inner = [
        (d + r2 * math.cos(t), r2 * math.sin(t))
        for t in np.linspace(2 * math.pi - phi_i, phi_i, steps)
    ]
    return outer + inner[1:-1]


_POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": _regular(4, start=-45),
    "triangle": _regular(3),
    "star": _star(),
    "cross": _cross(),
    "diamond": [(0.0, -1.0), (0.55, 0.0), (0.0, 1.0), (-0.55, 0.0)],
    "hexagon": _regular(6),
    "crescent": _crescent(),
    "arrow": [
        (-1.0, -0.18),
        (0.2, -0.18),
        (0.2, -0.5),
        (1.0, 0.0),
        (0.2, 0.5),
        (0.2, 0.18),
        (-1.0, 0.18),
    ],
}
_SUPERSAMPLE = 2
_MIN_EXTENT_PX = 3.0


def _draw_object(draw: ImageDraw.ImageDraw, obj: SynthObject, size: int) -> None:
    ss = _SUPERSAMPLE
    r = max(obj.size * size, _MIN_EXTENT_PX) * ss / 2
    cx, cy = obj.cx * size * ss, obj.cy * size * ss
    box = (cx - r, cy - r, cx + r, cy + r)
    if obj.label == "circle":
        draw.ellipse(box, fill=obj.color)
    elif obj.label == "ring":
        draw.ellipse(box, outline=obj.color, width=max(2, round(0.28 * r)))
    else:
        draw.polygon(_rotate(_POLYGONS[obj.label], cx, cy, r, obj.angle), fill=obj.color)


def render(layout: Layout, rng: np.random.Generator) -> Image.Image:
    """Draw a layout: background texture, shapes (anti-aliased by 2x supersampling), then a
    slight blur and light pixel noise on the whole image. ``rng`` supplies the pixel noise."""
    size = layout.size
    bg = np.clip(_background_pixels(layout.background, size, rng), 0, 255).astype(np.uint8)
    big = Image.fromarray(bg).resize(
        (size * _SUPERSAMPLE, size * _SUPERSAMPLE), Image.Resampling.NEAREST
    )
    draw = ImageDraw.Draw(big)
    for obj in layout.objects:
        _draw_object(draw, obj, size)
    img = big.reduce(_SUPERSAMPLE)
    img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 0.7))))
    sigma = float(rng.uniform(2.0, 6.0))
    px = np.asarray(img, dtype=np.float32) + rng.normal(0, sigma, (size, size, 3))
    return Image.fromarray(np.clip(np.rint(px), 0, 255).astype(np.uint8))


def sample_image(
    seed: int, index: int, size: int, params: SynthParams = DEFAULT_PARAMS
) -> tuple[Layout, list[str], Image.Image]:
    """Image ``index`` of the dataset with this seed: its layout, tags and pixels."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    layout = sample_layout(rng, size, params)
    tags = sample_tags(rng, layout.labels, params)
    return layout, tags, render(layout, rng)


def label_names_of(params: SynthParams) -> tuple[str, ...]:
    """The label order of a regime's manifest."""
    return DIGIT_LABELS if params.images == "digits" else LABEL_NAMES


def sample_record(
    seed: int, index: int, size: int, params: SynthParams, split: str
) -> tuple[list[str], list[str], Image.Image]:
    """Image ``index`` of a regime: its labels, tags and pixels (digits depend on the split,
    which decides the pool of handwriting scans)."""
    if params.images == "shapes":
        layout, tags, img = sample_image(seed, index, size, params)
        return layout.labels, tags, img
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    labels, img = sample_digits(rng, size, split, params.min_size, params.max_size)
    return labels, sample_tags(rng, labels, params, DIGIT_LABELS), img


# --------------------------------------------------------------------------------------------
# The dataset


def split_assignment(n: int, seed: int, splits: Sequence[float]) -> list[str]:
    """The split of each image: indices shuffled with the seed, then sliced by the fractions."""
    fracs = [float(f) for f in splits]
    bad = any(not 0 <= f <= 1 for f in fracs)  # also NaN, which every comparison fails
    if len(fracs) != len(SPLITS) or bad or abs(sum(fracs) - 1) > 1e-6:
        raise ValueError(
            f"splits must be {len(SPLITS)} non-negative fractions ({', '.join(SPLITS)}) "
            f"summing to 1, not {tuple(splits)!r}"
        )
    n_train = round(n * fracs[0])
    n_val = min(round(n * fracs[1]), n - n_train)
    bounds = [0, n_train, n_train + n_val, n]
    perm = np.random.default_rng(np.random.SeedSequence([seed], spawn_key=(1,))).permutation(n)
    out = [""] * n
    for name, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:], strict=True):
        for i in perm[lo:hi]:
            out[int(i)] = name
    return out


def _write_new(path: Path, data: bytes | memoryview) -> None:
    """A new file at ``path``: what ``--overwrite`` found there is removed, never written
    through (a link, or a hard link sharing a user's original, kept its target's bytes)."""
    if os.path.lexists(path):
        os.unlink(path)
    try:
        fd = os.open(path, _NEW_FILE, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise WriteFailure(path, exc) from exc


INDEX_FILES = ("manifest.jsonl", "labels.txt", "synth.json")


def _images_folder(out: Path) -> Path:
    """``OUT/images`` as a real folder: a file there ended in "File exists", and a link would
    send ``--overwrite``'s images outside OUT."""
    images = out / "images"
    if images.is_symlink() or (os.path.lexists(images) and not images.is_dir()):
        kind = "a link" if images.is_symlink() else "not a folder"
        raise InputError(f"{images}: is {kind}; data synth writes its images in a folder there")
    images.mkdir(parents=True, exist_ok=True)
    return images


def _drop_index(out: Path) -> int:
    """Remove the files that describe the images before any image is replaced: an interrupted
    ``--overwrite`` left the old manifest labelling the new images. Returns the old ``n`` when
    ``synth.json`` says synth wrote the folder (0 otherwise)."""
    previous_n = 0
    try:
        with open_regular(out / "synth.json", "synth.json", 1 << 20) as f:
            old = json.loads(f.read())
        if isinstance(old, dict) and isinstance(old.get("n"), int) and MIN_N <= old["n"] <= MAX_N:
            previous_n = old["n"]
    except (OSError, InputError, ValueError):
        pass  # not synth's, or unreadable: its images are left alone
    for name in INDEX_FILES:
        path = out / name
        if os.path.lexists(path):
            try:
                os.unlink(path)
            except OSError as exc:
                raise WriteFailure(path, exc) from exc
    return previous_n


def _drop_stale_images(images: Path, n: int, previous_n: int) -> None:
    """A smaller ``--n`` over synth's own folder: the old images past ``n`` went on being
    found by ``infer`` and ``--calib`` on the folder."""
    width = max(6, len(str(previous_n - 1)))
    for i in range(n, previous_n):
        path = images / f"{i:0{width}d}.jpg"
        if path.is_file() and not path.is_symlink():
            path.unlink()


def generate(
    out_dir: str | Path,
    *,
    n: int = 2000,
    size: int = 128,
    seed: int = 0,
    splits: Sequence[float] = (0.7, 0.15, 0.15),
    params: SynthParams = DEFAULT_PARAMS,
    progress: Callable[[int], None] | None = None,
) -> SynthSummary:
    """Write ``n`` images (``images/000000.jpg`` ...), ``manifest.jsonl``, ``labels.txt`` and
    ``synth.json`` (the generator's settings, for provenance) to ``out_dir``. ``progress(done)``
    is called after each image with the number written so far.

    The result depends only on ``(n, size, seed, splits, params)``: two calls give identical
    files."""
    if isinstance(n, bool) or not isinstance(n, int) or not MIN_N <= n <= MAX_N:
        raise ValueError(f"n must be an integer from {MIN_N} to {MAX_N:,}, not {n!r}")
    sized = isinstance(size, int) and not isinstance(size, bool)
    if not sized or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise ValueError(
            f"size must be an integer from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}, not {size!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
    assignment = split_assignment(n, seed, splits)

    out = Path(out_dir)
    images = _images_folder(out)
    previous_n = _drop_index(out)
    width = max(6, len(str(n - 1)))
    rows: list[dict] = []
    total_labels = 0
    for i in range(n):
        labels, tags, img = sample_record(seed, i, size, params, assignment[i])
        rel = f"images/{i:0{width}d}.jpg"
        encoded = io.BytesIO()
        img.save(encoded, format="JPEG", quality=JPEG_QUALITY)
        _write_new(out / rel, encoded.getbuffer())
        total_labels += len(labels)
        rows.append({"image": rel, "labels": labels, "tags": tags, "split": assignment[i]})
        if progress is not None:
            progress(i + 1)
    _drop_stale_images(images, n, previous_n)
    names = label_names_of(params)
    manifest = write_manifest(out / "manifest.jsonl", rows, names)
    settings = {"n": n, "size": size, "seed": seed, "splits": list(splits), **asdict(params)}
    write_text(out / "synth.json", json.dumps(settings, indent=1) + "\n")
    counts = {name: assignment.count(name) for name in SPLITS}
    return SynthSummary(
        out_dir=out,
        manifest=manifest,
        splits=counts,
        label_names=names,
        mean_labels=total_labels / n,
    )
