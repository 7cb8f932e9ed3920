"""The model I/O contract (DESIGN §3.3): what an exported graph takes and returns, and the metadata
that makes a bare ``.onnx`` self-describing. One place for the input/output names and the feed
dict, shared by the exporter, calibration, the build, the engines and the runtime. No torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from m3trt import __version__
from m3trt.errors import InputError

IMAGE = "image"
TAGS = "tags"
INPUT_NAMES = (IMAGE, TAGS)
OUTPUT_NAMES = ("scores", "quantity", "k", "topk")
INPUT_DTYPES = {IMAGE: np.dtype(np.uint8), TAGS: np.dtype(np.float32)}

REBUILD = "rebuild the bundle with `m3trt build`"
EXPORT = "export it with `m3trt export`"

META_PREFIX = "m3trt."
META_LABELS = "m3trt.label_names"
META_TAGS = "m3trt.tag_vocab"
META_PREPROCESSING = "m3trt.preprocessing"
META_MODEL = "m3trt.model"
META_VERSION = "m3trt.version"
META_KEYS = (META_LABELS, META_TAGS, META_PREPROCESSING, META_MODEL, META_VERSION)
MODEL_FLAGS = ("k_max", "backbone", "multi_scale", "use_tags", "quantity_head")


class BundleError(InputError):
    """A bundle (or an ONNX model meant for one) is missing, malformed, tampered or too new."""


def one_line(text: object) -> str:
    """Error messages are printed as one line by the CLI; embedded exception text may not be."""
    return " ".join(str(text).split())


def bundle_error(message: str) -> BundleError:
    return BundleError(one_line(message))


def make_feeds(
    images: np.ndarray, tags: np.ndarray | None, input_names: Sequence[str]
) -> dict[str, np.ndarray]:
    """The graph's feed dict: contiguous uint8 images, float32 multi-hot tags (zeros when the
    image has none), only the inputs the graph has (a visual-only model has no ``tags``)."""
    feeds = {IMAGE: np.ascontiguousarray(images, dtype=np.uint8)}
    if TAGS in input_names:
        if tags is None:
            raise ValueError("this model reads tags: pass a [batch, T] multi-hot array")
        feeds[TAGS] = np.ascontiguousarray(tags, dtype=np.float32)
    return {name: feeds[name] for name in input_names}


# --------------------------------------------------------------------------------------------------
# JSON helpers


def jsonable(value: Any) -> Any:
    """Plain JSON values, so that the written file and the returned Bundle agree exactly.

    numpy scalars/arrays (from metrics) become Python numbers/lists, tuples become lists, paths
    strings, and NaN/inf become null (strict JSON has no NaN).
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy scalar or array, without importing numpy
        return jsonable(value.tolist())
    raise TypeError(f"cannot store {type(value).__name__} in bundle.json: {value!r}")


def dumps_stable(data: Any) -> str:
    """Deterministic text: sorted keys, fixed indentation, no timestamps, trailing newline."""
    return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def dumps_compact(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# --------------------------------------------------------------------------------------------------
# Model metadata


@dataclass
class ModelInfo:
    """What the runtime needs to feed the graph and name its outputs (DESIGN §3.3)."""

    label_names: list[str]
    tag_vocab: list[str]
    preprocessing: dict[str, Any]
    k_max: int
    backbone: str
    multi_scale: bool
    use_tags: bool
    quantity_head: bool

    def __post_init__(self) -> None:
        # asdict(Preprocessing) holds tuples; normalise so a JSON round trip compares equal.
        self.label_names = [str(n) for n in self.label_names]
        self.tag_vocab = [str(t) for t in self.tag_vocab]
        self.preprocessing = jsonable(dict(self.preprocessing))

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def num_tags(self) -> int:
        return len(self.tag_vocab)

    @property
    def image_size(self) -> int:
        return int(self.preprocessing["image_size"])

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any, source: str = "bundle.json", fix: str = REBUILD) -> ModelInfo:
        """Parse and validate; errors name ``source`` and end with ``fix``."""
        if not isinstance(data, dict):
            raise bundle_error(f"{source}: 'model' must be a JSON object; {fix}")
        try:
            info = cls(
                label_names=check_str_list(data["label_names"], "label_names"),
                tag_vocab=check_str_list(data["tag_vocab"], "tag_vocab"),
                preprocessing=dict(data["preprocessing"]),
                k_max=check_int(data["k_max"], "k_max"),
                backbone=str(data["backbone"]),
                multi_scale=check_bool(data["multi_scale"], "multi_scale"),
                use_tags=check_bool(data["use_tags"], "use_tags"),
                quantity_head=check_bool(data["quantity_head"], "quantity_head"),
            )
            check_int(info.preprocessing["image_size"], "preprocessing.image_size")
        except KeyError as exc:
            raise bundle_error(f"{source}: model metadata lacks {exc}; {fix}") from None
        except (TypeError, ValueError) as exc:
            raise bundle_error(f"{source}: invalid model metadata ({exc}); {fix}") from None
        if not info.label_names:
            raise bundle_error(f"{source}: the model has no labels; {fix}")
        if not 1 <= info.k_max <= info.num_labels:
            raise bundle_error(
                f"{source}: k_max {info.k_max} is outside 1..{info.num_labels}; {fix}"
            )
        return info

    def to_onnx_metadata(self) -> dict[str, str]:
        """The ONNX graph's metadata_props, so that a bare .onnx is self-describing."""
        return {
            META_LABELS: dumps_compact(self.label_names),
            META_TAGS: dumps_compact(self.tag_vocab),
            META_PREPROCESSING: dumps_compact(self.preprocessing),
            META_MODEL: dumps_compact({k: getattr(self, k) for k in MODEL_FLAGS}),
            META_VERSION: __version__,
        }

    @classmethod
    def from_onnx_metadata(cls, props: dict[str, str], source: str = "model.onnx") -> ModelInfo:
        """Inverse of ``to_onnx_metadata``; refuses graphs that m3trt did not export."""
        missing = [k for k in META_KEYS if k not in props]
        if missing:
            what = "m3trt.*" if len(missing) == len(META_KEYS) else ", ".join(missing)
            raise bundle_error(f"{source} is not an m3trt model (no {what} metadata); {EXPORT}")
        values = {}
        for key in (META_LABELS, META_TAGS, META_PREPROCESSING, META_MODEL):
            try:
                values[key] = json.loads(props[key])
            except json.JSONDecodeError as exc:
                raise bundle_error(
                    f"{source}: metadata {key} is not valid JSON ({exc}); {EXPORT} again"
                ) from None
        flags = values[META_MODEL]
        if not isinstance(flags, dict):
            raise bundle_error(
                f"{source}: metadata {META_MODEL} must be a JSON object; {EXPORT} again"
            )
        data = {
            "label_names": values[META_LABELS],
            "tag_vocab": values[META_TAGS],
            "preprocessing": values[META_PREPROCESSING],
            **flags,
        }
        return cls.from_json(data, source, fix=f"{EXPORT} again")

    @classmethod
    def from_onnx_file(cls, path: str | Path) -> ModelInfo:
        """Read the metadata of an exported .onnx file (weights are not loaded into numpy)."""
        import onnx

        path = Path(path)
        if not path.is_file():
            raise bundle_error(f"{path}: ONNX model not found; {EXPORT}")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf raises assorted types on garbage
            raise bundle_error(f"{path}: not a readable ONNX model ({exc}); {EXPORT}") from None
        props = {p.key: p.value for p in model.metadata_props}
        return cls.from_onnx_metadata(props, str(path))


def check_str_list(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{name} must be a list of strings")
    return list(value)


def check_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    return value


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false, not {value!r}")
    return value
