"""Turning manifest records into model-ready numpy batches (no torch: training and eval share it).

Images are decoded with the runtime's own ``load_image`` in a thread pool (Pillow releases the GIL
while decoding and resizing). Small sets are decoded once and kept in memory as uint8, which makes
every epoch after the first cost only the network; large sets are decoded batch by batch with the
next batch prefetched.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from m3trt.data.images import load_image
from m3trt.data.manifest import Record
from m3trt.data.vocab import Vocab
from m3trt.errors import ImageDecodeError

CACHE_LIMIT_BYTES = 2 << 30


@dataclass
class Batch:
    images: np.ndarray  # uint8 [B, S, S, 3]
    tags: np.ndarray  # float32 [B, T]
    labels: np.ndarray  # float32 [B, C] multi-hot
    indices: np.ndarray  # positions in the source record list


class RecordSet:
    """Records with their encoded labels and tags; images decoded on demand or cached."""

    def __init__(
        self,
        records: Sequence[Record],
        labels: Vocab,
        tags: Vocab,
        image_size: int,
        *,
        workers: int | None = None,
        cache: bool | None = None,
    ) -> None:
        self.records = list(records)
        self.image_size = image_size
        self.labels = labels.encode_many(r.labels for r in self.records)
        self.tags = tags.encode_many(r.tags for r in self.records)
        self.workers = workers or max(1, min(8, os.cpu_count() or 1))
        per_image = image_size * image_size * 3
        self.cache = cache if cache is not None else per_image * len(self) <= CACHE_LIMIT_BYTES
        self._images: np.ndarray | None = None
        self.failed: list[tuple[Record, str]] = []
        self._failed_at: set[int] = set()  # each bad image counted once, not once per epoch

    def __len__(self) -> int:
        return len(self.records)

    @property
    def counts(self) -> np.ndarray:
        return self.labels.sum(axis=1).astype(np.int64)

    def _decode(self, index: int) -> np.ndarray | None:
        record = self.records[index]
        try:
            return load_image(record.path, self.image_size)
        except ImageDecodeError as exc:
            if index not in self._failed_at:
                self._failed_at.add(index)
                self.failed.append((record, str(exc)))
            return None

    def _decode_many(
        self, pool: ThreadPoolExecutor, indices: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Decode a batch; returns the images and the indices that decoded (bad ones dropped)."""
        out = np.zeros((len(indices), self.image_size, self.image_size, 3), dtype=np.uint8)
        ok = np.ones(len(indices), dtype=bool)
        for slot, image in enumerate(pool.map(self._decode, indices)):
            if image is None:
                ok[slot] = False
            else:
                out[slot] = image
        return out[ok], indices[ok]

    def warm(self, progress: Callable[[int], None] | None = None) -> None:
        """Decode every image once into memory (only when caching); bad images are dropped."""
        if not self.cache or self._images is not None:
            return
        images = np.zeros((len(self), self.image_size, self.image_size, 3), dtype=np.uint8)
        ok = np.ones(len(self), dtype=bool)
        with ThreadPoolExecutor(self.workers) as pool:
            for i, image in enumerate(pool.map(self._decode, range(len(self)))):
                if image is None:
                    ok[i] = False
                else:
                    images[i] = image
                if progress:
                    progress(1)
        if not ok.all():
            self.records = [r for r, keep in zip(self.records, ok, strict=True) if keep]
            self.labels, self.tags, images = self.labels[ok], self.tags[ok], images[ok]
        self._images = images

    def batches(
        self,
        batch_size: int,
        *,
        order: np.ndarray | None = None,
        drop_singleton: bool = False,
    ) -> Iterator[Batch]:
        """Yield batches in ``order`` (default: file order). ``drop_singleton`` skips a trailing
        batch of one, which BatchNorm cannot train on."""
        order = np.arange(len(self)) if order is None else order
        chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        if drop_singleton and chunks and len(chunks[-1]) == 1 and len(order) > 1:
            chunks.pop()
        if self.cache:
            self.warm()
            assert self._images is not None
            for idx in chunks:
                yield Batch(self._images[idx], self.tags[idx], self.labels[idx], idx)
            return
        # The prefetcher has its own thread so it never waits on a decode slot it holds itself.
        held: tuple[np.ndarray, np.ndarray] | None = None  # a batch that decoded to one image
        with ThreadPoolExecutor(self.workers) as pool, ThreadPoolExecutor(1) as prefetch:
            pending: Future | None = None
            for n, chunk in enumerate(chunks):
                images, idx = pending.result() if pending else self._decode_many(pool, chunk)
                if n + 1 < len(chunks):
                    pending = prefetch.submit(self._decode_many, pool, chunks[n + 1])
                if held is not None and len(idx):
                    images, idx = np.concatenate([held[0], images]), np.concatenate([held[1], idx])
                    held = None
                if drop_singleton and len(idx) == 1:
                    # failed decodes left one image, which BatchNorm cannot train on: it joins
                    # the next batch (dropped if none follows)
                    held = (images, idx)
                    continue
                if len(idx):
                    yield Batch(images, self.tags[idx], self.labels[idx], idx)
