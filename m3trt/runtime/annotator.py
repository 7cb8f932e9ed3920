"""The Python API: ``Annotator.load(bundle).annotate(images, tags)``; the CLI is built on it.

The graph already returns the annotation (``topk[:k]``, DESIGN §3.3); this module turns images of
any kind into the graph's uint8 input, tag words into the multi-hot vector, and the outputs into
labels, optionally re-cut by a score threshold or a fixed top-k.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from m3trt.data.images import ImageSource, load_image
from m3trt.data.manifest import normalise_tag
from m3trt.data.vocab import Vocab
from m3trt.errors import M3Error
from m3trt.runtime.bundle import Bundle, load_bundle
from m3trt.runtime.engines import DeviceChoice, Engine, describe, open_engine
from m3trt.runtime.model_io import TAGS, make_feeds

DEFAULT_BATCH = 16


@dataclass(frozen=True)
class Annotation:
    """One image's annotation: labels in score order, their scores, the predicted k and q."""

    labels: list[str]
    scores: list[float]
    k: int
    quantity: float

    @property
    def finite(self) -> bool:
        """False when the engine gave NaN or infinity (a bundle with broken weights): such a row
        is not JSON, and its labels mean nothing."""
        return math.isfinite(self.quantity) and all(math.isfinite(s) for s in self.scores)

    def to_json(self, path: str | None = None) -> dict[str, Any]:
        head = {"path": path} if path is not None else {}
        return {
            **head,
            "labels": self.labels,
            "scores": [round(s, 6) for s in self.scores],
            "k": self.k,
            "quantity": round(self.quantity, 6),
        }


@dataclass(frozen=True)
class Decoding:
    """How labels are cut: the predicted k (default), a score threshold, a fixed top-k, or a
    threshold capped at top-k."""

    threshold: float | None = None
    top_k: int | None = None

    def __post_init__(self) -> None:
        t, k = self.threshold, self.top_k
        number = isinstance(t, int | float) and not isinstance(t, bool)
        if t is not None and not (number and 0.0 <= t <= 1.0):
            raise M3Error(f"--threshold must be a number from 0 to 1, not {t!r}")
        if k is not None and not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
            raise M3Error(f"--top-k must be an integer of at least 1, not {k!r}")

    def cut(self, scores: np.ndarray, topk: np.ndarray, k: int) -> np.ndarray:
        """Label indices for one image, by descending score."""
        if self.threshold is None and self.top_k is None:
            return topk[:k]
        limit = self.top_k if self.top_k is not None else scores.size
        order = topk if limit <= topk.size and self.threshold is None else _by_score(scores)
        chosen = order[:limit]
        if self.threshold is not None:
            chosen = chosen[scores[chosen] >= self.threshold]
        return chosen


def _by_score(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-scores, kind="stable")


class Annotator:
    """An engine plus the bundle's metadata: images and tag words in, annotations out."""

    def __init__(
        self, bundle: Bundle, engine: Engine, choice: DeviceChoice, decoding: Decoding
    ) -> None:
        self.bundle = bundle
        self.engine = engine
        self.choice = choice
        self.decoding = decoding
        self.info = bundle.model
        self.labels = np.array(self.info.label_names, dtype=object)
        self.tag_vocab = Vocab(self.info.tag_vocab)
        self.uses_tags = TAGS in engine.input_names

    @classmethod
    def load(
        cls,
        bundle: str | Path | Bundle,
        *,
        device: str = "auto",
        engine: str = "auto",
        threads: int | None = None,
        threshold: float | None = None,
        top_k: int | None = None,
        verify: bool = True,
        runs: int = 1,
    ) -> Annotator:
        """Load and verify a ``NAME.m3`` bundle and open its engine on ``device`` (``engine``:
        ``auto`` or a registry name such as ``onnxruntime``/``openvino``). ``runs``: batches the
        caller runs at once from threads (the folder pipeline), where the engine allows it."""
        decoding = Decoding(threshold, top_k)
        if threads is not None and not (
            isinstance(threads, int) and not isinstance(threads, bool) and 1 <= threads <= 256
        ):  # 10**6 threads ran for minutes, growing by gigabytes
            raise M3Error(f"threads must be an integer from 1 to 256, not {threads!r}")
        if not isinstance(bundle, Bundle):
            bundle = load_bundle(bundle, verify=verify)
        opened, choice = open_engine(bundle, device, engine=engine, threads=threads, runs=runs)
        return cls(bundle, opened, choice, decoding)

    @property
    def image_size(self) -> int:
        return self.info.image_size

    @property
    def description(self) -> str:
        return describe(self.engine, self.choice)

    def prepare(self, image: ImageSource, name: str | None = None) -> np.ndarray:
        """Any image source -> the graph's uint8 [S, S, 3] input, decoded as in training."""
        return load_image(image, self.image_size, name=name)

    def encode_tags(self, rows: Sequence[Sequence[str]]) -> np.ndarray:
        """Tag words -> multi-hot [B, T]; words outside the vocabulary are ignored."""
        return self.tag_vocab.encode_many([normalise_tag(t) for t in row] for row in rows)

    def run(self, images: np.ndarray, tags: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """One batch through the engine: uint8 [B, S, S, 3] (+ multi-hot [B, T])."""
        if self.uses_tags and tags is None:
            tags = np.zeros((len(images), self.info.num_tags), np.float32)
        return self.engine.run(make_feeds(images, tags, self.engine.input_names))

    def close(self) -> None:
        """Free the engine (device and pinned memory on GPUs)."""
        self.engine.close()

    def __enter__(self) -> Annotator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def decode(self, outputs: dict[str, np.ndarray]) -> list[Annotation]:
        scores, topk = outputs["scores"], outputs["topk"]
        ks, quantity = outputs["k"], outputs["quantity"]
        result = []
        for b in range(len(scores)):
            index = self.decoding.cut(scores[b], topk[b], int(ks[b]))
            result.append(
                Annotation(
                    [str(x) for x in self.labels[index]],
                    [float(x) for x in scores[b][index]],
                    int(ks[b]),
                    float(quantity[b]),
                )
            )
        return result

    def annotate(
        self,
        images: ImageSource | Sequence[ImageSource],
        tags: Sequence[Sequence[str]] | None = None,
        *,
        batch_size: int = DEFAULT_BATCH,
    ) -> list[Annotation]:
        """Annotate paths, PIL images or uint8 arrays (one or a list); ``tags``: a list of words
        per image (for one image given alone, its list of words)."""
        items = _as_list(images)
        if tags is not None:
            words = not isinstance(tags, str | bytes) and isinstance(tags, Sequence)
            if _is_single(images) and words and all(isinstance(w, str) for w in tags):
                tags = [tags]  # one image's words (its [[words]] still works too)
            tags = _tag_rows(tags, len(items))
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}")
        result: list[Annotation] = []
        for start, stop in _batches(len(items), batch_size):
            batch = np.stack([self.prepare(x) for x in items[start:stop]])
            multi_hot = self.encode_tags(tags[start:stop]) if tags is not None else None
            result.extend(self.decode(self.run(batch, multi_hot)))
        return result


def _is_single(images: Any) -> bool:
    """One image, not a list of them (bytes-like buffers are one image's encoded bytes)."""
    if isinstance(images, np.ndarray):
        return images.ndim != 4
    return isinstance(images, str | Path | bytes | bytearray | memoryview) or not isinstance(
        images, Sequence
    )


def _as_list(images: Any) -> list[Any]:
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    return [images] if _is_single(images) else list(images)


def _tag_rows(tags: Any, n: int) -> list[list[str]]:
    """Tags as one list of words per image, checked: a list of words for a list of images was
    read as one 'list' per image, each word split into letters and silently dropped."""
    shape = "tags must be one list of words (str) per image"
    if isinstance(tags, str | bytes) or not isinstance(tags, Sequence):
        raise TypeError(f"{shape}, not {type(tags).__name__}")
    rows = []
    for row in tags:
        if isinstance(row, str | bytes) or not isinstance(row, Sequence):
            raise TypeError(f"{shape}; got a {type(row).__name__} where a list of words goes")
        if not all(isinstance(word, str) for word in row):
            raise TypeError(f"{shape}; got {row!r}")
        rows.append(list(row))
    if len(rows) != n:
        raise M3Error(f"got {n} images but {len(rows)} tag lists")
    return rows


def _batches(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, max(1, size)):
        yield start, min(n, start + size)
