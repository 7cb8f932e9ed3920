"""One served model: an ``Annotator``, its tensor signature, and the batcher in front of it.

The engine is reached only through ``Annotator`` (``run``, ``decode``, ``prepare``), so every
engine kind a bundle can open is served the same way. Requests are checked against the signature
here, before they queue: a wrong name, dtype or shape is the client's error (400), not the
engine's.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from m3trt.data.images import load_image
from m3trt.runtime.annotator import Annotation, Annotator
from m3trt.serve.batcher import Batcher, Outputs
from m3trt.serve.protocol import ProtocolError, datatype_name

IMAGE, TAGS = "image", "tags"
VERSION = "1"


@dataclass(frozen=True)
class Signature:
    """A tensor as the protocol describes it: batch dimension first, given as -1."""

    name: str
    dtype: np.dtype
    dims: tuple[int, ...]  # without the batch dimension

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": datatype_name(self.dtype), "shape": [-1, *self.dims]}


class ServedModel:
    """An annotator behind a dynamic batcher, with the v2 metadata that describes it."""

    def __init__(
        self,
        name: str,
        annotator: Annotator,
        *,
        max_batch: int,
        max_delay_s: float,
        max_queue: int,
        max_pixels: int,
        on_batch: Any = None,
    ) -> None:
        self.name = name
        self.annotator = annotator
        self.max_batch = max_batch
        self.max_pixels = max_pixels
        info = annotator.info
        self.inputs = [Signature(IMAGE, np.dtype(np.uint8), (info.image_size, info.image_size, 3))]
        if annotator.uses_tags:
            self.inputs.append(Signature(TAGS, np.dtype(np.float32), (info.num_tags,)))
        # One warm-up call: the first run allocates the engine's buffers (it would otherwise
        # land on the first client), and its outputs give each output's dtype and dims.
        probe = annotator.run(np.zeros((1, *self.inputs[0].dims), np.uint8))
        self.outputs = [Signature(k, v.dtype, tuple(v.shape[1:])) for k, v in probe.items()]
        self._on_batch = on_batch
        self._batcher_args = dict(max_batch=max_batch, max_delay_s=max_delay_s, max_queue=max_queue)
        self.batcher: Batcher | None = None

    # ------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Create the batcher on the running event loop."""
        on_batch = None
        if self._on_batch is not None:
            on_batch = lambda rows, s: self._on_batch(self.name, rows, s)  # noqa: E731
        self.batcher = Batcher(self._run, on_batch=on_batch, **self._batcher_args)
        self.batcher.start()

    async def close(self) -> None:
        """Drain the queue, then free the engine."""
        if self.batcher is not None:
            await self.batcher.close()
        self.annotator.close()

    def _run(self, feeds: dict[str, np.ndarray]) -> Outputs:
        return self.annotator.run(feeds[IMAGE], feeds.get(TAGS))

    # ------------------------------------------------------------------------------- metadata
    def metadata(self) -> dict[str, Any]:
        info = self.annotator.info
        return {
            "name": self.name,
            "versions": [VERSION],
            "platform": "m3trt",
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
            "parameters": {
                "label_names": info.label_names,
                "tag_vocab": info.tag_vocab,
                "k_max": info.k_max,
                "image_size": info.image_size,
                "max_batch_size": self.max_batch,
                "engine": self.annotator.description,
            },
        }

    # ---------------------------------------------------------------------------------- infer
    def check_inputs(self, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        """Request tensors -> engine feeds and batch size; ProtocolError if they do not fit."""
        known = {s.name: s for s in self.inputs}
        unknown = sorted(set(inputs) - set(known))
        if unknown:
            raise ProtocolError(
                f"model {self.name!r} has no input {unknown[0]!r} (inputs: {', '.join(known)})"
            )
        if IMAGE not in inputs:
            raise ProtocolError(f"input {IMAGE!r} is required")
        rows = None
        for name, array in inputs.items():
            spec = known[name]
            if array.dtype != spec.dtype:
                raise ProtocolError(
                    f"input {name!r} must be {datatype_name(spec.dtype)}, "
                    f"not {datatype_name(array.dtype)}"
                )
            if array.ndim != len(spec.dims) + 1 or tuple(array.shape[1:]) != spec.dims:
                raise ProtocolError(
                    f"input {name!r} has shape {list(array.shape)}, expected [-1, "
                    + ", ".join(map(str, spec.dims))
                    + "]"
                )
            if rows is not None and array.shape[0] != rows:
                raise ProtocolError(
                    f"inputs disagree on the batch size ({rows} vs {array.shape[0]})"
                )
            rows = array.shape[0]
        assert rows is not None
        if not 1 <= rows <= self.max_batch:
            raise ProtocolError(
                f"batch of {rows} images: this model takes 1 to {self.max_batch} per request"
            )
        feeds = dict(inputs)
        if self.annotator.uses_tags and TAGS not in feeds:
            feeds[TAGS] = np.zeros((rows, self.annotator.info.num_tags), np.float32)
        return feeds, rows

    async def infer(self, feeds: dict[str, np.ndarray], rows: int) -> Outputs:
        assert self.batcher is not None, "start() the model first"
        return await self.batcher.submit(feeds, rows)

    # ------------------------------------------------------------------------------- annotate
    def decode_image(self, body: bytes) -> np.ndarray:
        """Image bytes -> the graph's uint8 input; ImageDecodeError names the problem."""
        return load_image(body, self.annotator.image_size, max_pixels=self.max_pixels, name="body")

    async def annotate(
        self, body: bytes, tags: list[str], decoder: Executor | None = None
    ) -> Annotation:
        loop = asyncio.get_running_loop()
        image = await loop.run_in_executor(decoder, self.decode_image, body)
        feeds = {IMAGE: image[None]}
        if self.annotator.uses_tags:
            feeds[TAGS] = self.annotator.encode_tags([tags])
        outputs = await self.infer(feeds, 1)
        return self.annotator.decode(outputs)[0]
