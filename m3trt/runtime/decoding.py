"""Decoding for the folder pipeline: walk items in, ``Decoded`` (pixels, tags or one reason) out,
in worker threads, in walk order, through a fixed window (memory flat whatever the folder size).
Shared by the CPU loop, the GPU pipeline's ring filling and the benchmarks."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from m3trt.data.images import DecodeBudget, load_image
from m3trt.data.safe_open import open_regular
from m3trt.errors import M3Error
from m3trt.runtime.profile import StageProfile
from m3trt.runtime.walk import Found


@dataclass
class Decoded:
    path: str
    image: np.ndarray | None = None
    tags: list[str] = field(default_factory=list)
    error: str | None = None


def _reason(path: str, exc: BaseException) -> str:
    """The error without the path prefix (the errors file has the path in its own field)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text.removeprefix(f"{path}: ")


def decoder(
    size: int,
    max_pixels: int,
    tags_for: Callable[[Path], list[str]],
    budget: DecodeBudget | None = None,
    profile: StageProfile | None = None,
) -> Callable[[Found], Decoded]:
    """Found -> Decoded in a worker thread; with ``profile`` the file is read whole first, so
    reading and decoding are timed apart (without it Pillow reads as it decodes)."""

    def load(found: Found) -> np.ndarray:
        # Opened as a regular file (never a FIFO swapped in since the walk looked at it).
        with open_regular(found.path, "image") as f:
            if profile is None:
                return load_image(f, size, max_pixels=max_pixels, name=found.path, budget=budget)
            with profile.time("read"):
                data = f.read()
        with profile.time("decode"):
            return load_image(data, size, max_pixels=max_pixels, name=found.path, budget=budget)

    def decode(found: Found) -> Decoded:
        if found.error is not None:
            return Decoded(found.path, error=found.error)
        try:
            image = load(found)
            tags = tags_for(Path(found.path))
        except FileNotFoundError:
            return Decoded(found.path, error="file not found (removed during the run)")
        except (M3Error, OSError, ValueError) as exc:
            return Decoded(found.path, error=_reason(found.path, exc))
        except Exception as exc:  # a decoder bug on one hostile file must not end the run
            return Decoded(found.path, error=f"unexpected {type(exc).__name__}: {exc}")
        return Decoded(found.path, image, tags)

    return decode


def decode_ahead(
    items: Iterable[Found], decode: Callable[[Found], Decoded], workers: int, window: int
) -> Iterator[Decoded]:
    """``decode`` over ``items`` in ``workers`` threads, at most ``window`` in flight, in order."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="m3trt-decode") as pool:
        pending: deque[Future[Decoded]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(decode, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def batches(stream: Iterable[Decoded], size: int) -> Iterator[tuple[list[Decoded], list[Decoded]]]:
    """(decoded images, failures) per batch; failures pass through at once."""
    good: list[Decoded] = []
    bad: list[Decoded] = []
    for item in stream:
        (bad if item.error is not None else good).append(item)
        if len(good) >= size:
            yield good, bad
            good, bad = [], []
    if good or bad:
        yield good, bad
