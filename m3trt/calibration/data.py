"""Calibration and validation images, decoded exactly as the runtime decodes them.

DATA is a manifest (its tags are encoded with the model's vocabulary; its labels allow accuracy
checks) or a folder of images (no tags, no labels). Never random data: too few real images is an
error that says how many are needed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from m3trt.data.images import IMAGE_EXTENSIONS, load_image
from m3trt.data.manifest import Record, not_a_file, read_manifest
from m3trt.data.vocab import Vocab
from m3trt.errors import ImageDecodeError, InputError
from m3trt.runtime.walk import iter_images

MIN_CALIBRATION_IMAGES = 32


@dataclass
class ImageSet:
    """Decoded images with their tags, optional ground truth and a content hash."""

    images: np.ndarray  # uint8 [N, S, S, 3]
    tags: np.ndarray  # float32 [N, T]
    labels: np.ndarray | None  # bool [N, C] when the source had labels
    paths: list[str]
    source: str
    # (path, reason) of every image that could not be read or decoded: the reason names the file
    failed: list[tuple[str, str]]
    # the manifest splits the images came from; None: all of them (or a folder)
    splits: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def sha256(self) -> str:
        """Hash of exactly what the network sees: a changed image or tag changes it."""
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.images).tobytes())
        digest.update(np.ascontiguousarray(self.tags).tobytes())
        return digest.hexdigest()

    def subset(self, index: Sequence[int] | np.ndarray) -> ImageSet:
        index = np.asarray(index, dtype=np.int64)
        return ImageSet(
            self.images[index],
            self.tags[index],
            None if self.labels is None else self.labels[index],
            [self.paths[i] for i in index],
            self.source,
            [],
            self.splits,
        )

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(self), batch_size):
            yield self.images[start : start + batch_size], self.tags[start : start + batch_size]


def list_images(folder: Path) -> list[Path]:
    """Images under ``folder``, in ``m3trt infer``'s order (links followed, loops entered once,
    any depth); one that cannot be opened fails at its decode, counted with the other failures."""
    return [Path(found.path) for found in iter_images([folder], IMAGE_EXTENSIONS)]


def _decode_all(
    paths: Sequence[Path], size: int
) -> tuple[list[np.ndarray | None], list[tuple[str, str]]]:
    """Decoded images (None where one failed) and (path, reason) of each failure, the shape of
    the unread records' entries: a bare path there made the CLI quote its second character."""

    def decode(path: Path) -> np.ndarray | str:
        try:
            return load_image(path, size)
        except ImageDecodeError as exc:
            return str(exc)

    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        results = list(pool.map(decode, paths))
    failed = [(str(p), r) for p, r in zip(paths, results, strict=True) if isinstance(r, str)]
    return [None if isinstance(r, str) else r for r in results], failed


def load_image_set(
    source: str | Path,
    *,
    image_size: int,
    label_names: Sequence[str],
    tag_vocab: Sequence[str],
    count: int | None = None,
    splits: Sequence[str] | None = None,
    seed: int = 0,
) -> ImageSet:
    """Read up to ``count`` images from a manifest (optionally only some splits) or a folder.

    A seeded, sorted sample is taken when there are more images than ``count``, so the same
    source and settings always give the same set.
    """
    source = Path(source)
    labels_vocab, tags_vocab = Vocab(label_names), Vocab(tag_vocab)
    if source.is_dir() and not (source / "manifest.jsonl").is_file():
        paths = list_images(source)
        tags_rows: list[tuple[str, ...]] = [()] * len(paths)
        label_rows: list[tuple[str, ...]] | None = None
        unread: list[Record] = []
    elif source.exists():
        manifest = read_manifest(source, allow_missing_images=True)
        records = [r for r in manifest.records if splits is None or r.split in splits]
        paths = [r.path for r in records]
        tags_rows = [r.tags for r in records]
        label_rows = [r.labels for r in records]
        unread = [r for r in manifest.missing_images if splits is None or r.split in splits]
    else:
        raise InputError(f"{source}: calibration data not found (give a manifest or a folder)")
    chosen = np.arange(len(paths))
    if count is not None and len(paths) > count:
        chosen = np.sort(np.random.default_rng(seed).choice(len(paths), count, replace=False))
    paths = [paths[i] for i in chosen]
    images, failed = _decode_all(paths, image_size)
    failed += [(str(r.path), f"{r.path}: image {not_a_file(r.path)}") for r in unread]
    keep = [i for i, im in enumerate(images) if im is not None]
    shape = (0, image_size, image_size, 3)
    return ImageSet(
        images=np.stack([images[i] for i in keep]) if keep else np.zeros(shape, np.uint8),
        tags=tags_vocab.encode_many(tags_rows[chosen[i]] for i in keep).reshape(
            len(keep), len(tags_vocab)
        ),
        labels=(
            None
            if label_rows is None
            else labels_vocab.encode_many(label_rows[chosen[i]] for i in keep) > 0
        ),
        paths=[str(paths[i]) for i in keep],
        source=str(source),
        failed=failed,
        splits=tuple(splits) if splits is not None and label_rows is not None else None,
    )


def is_manifest(source: Path) -> bool:
    return source.is_file() or (source / "manifest.jsonl").is_file()


def load_calibration_images(source: str | Path, *, count: int, **kw) -> ImageSet:
    """Calibration images: a manifest's train split (all records only if it has no train split
    at all; ``splits`` says which), or a folder. A train split none of whose images decode is
    refused: falling back to val and test then calibrated on the images meant to check it."""
    source = Path(source)
    if is_manifest(source):
        images = load_image_set(source, count=count, splits=["train"], **kw)
        if len(images):
            return images
        if images.failed:
            raise InputError(
                f"{images.source}: none of the {len(images.failed)} train-split images could be "
                f"read (first: {images.failed[0][1]}); calibration uses the train split"
            )
    return load_image_set(source, count=count, **kw)


def require_images(data: ImageSet, needed: int, what: str) -> None:
    if len(data) < needed:
        bad = f" ({len(data.failed)} could not be decoded)" if data.failed else ""
        raise InputError(
            f"{data.source}: {what} needs at least {needed} real images, found {len(data)}{bad}; "
            "point it at a folder or manifest with more images"
        )
