"""Names shared across the build, the bundle and the runtime: one place, so they cannot drift."""

from __future__ import annotations

TARGETS = ("cpu", "cuda", "tensorrt")  # what a bundle is built for
PRECISIONS = ("fp32", "fp16", "int8")
DEVICES = ("auto", "cpu", "cuda")  # where a bundle runs
ENGINE_KINDS = ("onnxruntime", "openvino", "tensorrt")  # what runs it (--engine)
# Batch buckets of GPU optimization profiles / CUDA graphs: (1], (1, 8], (8, 32], (32, 64].
BATCH_BUCKETS = (1, 8, 32)
MAX_BATCH = 64
# The most images one engine call (infer, eval, bench) or one training step takes: far above
# what pays off, low enough that a typo is a usage error rather than a failed allocation.
MAX_CALL_BATCH = 1024
MAX_TRAIN_BATCH = 4096
