"""Label and tag vocabularies, and their multi-hot encodings (numpy only: the runtime uses them)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from m3trt.data.manifest import normalise_tag
from m3trt.errors import InputError


class Vocab:
    """An ordered list of names with O(1) lookup; unknown names are ignored when encoding."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.index = {name: i for i, name in enumerate(self.names)}
        if len(self.index) != len(self.names):
            seen: set[str] = set()
            twice = next(n for n in self.names if n in seen or seen.add(n))
            raise InputError(f"vocabulary names must be unique: {twice!r} appears twice")

    def __len__(self) -> int:
        return len(self.names)

    def encode(self, names: Iterable[str]) -> np.ndarray:
        """Multi-hot float32 vector; names outside the vocabulary are dropped."""
        out = np.zeros(len(self.names), dtype=np.float32)
        for name in names:
            i = self.index.get(name)
            if i is not None:
                out[i] = 1.0
        return out

    def encode_many(self, rows: Iterable[Iterable[str]]) -> np.ndarray:
        rows = list(rows)
        out = np.zeros((len(rows), len(self.names)), dtype=np.float32)
        for r, names in enumerate(rows):
            for name in names:
                i = self.index.get(name)
                if i is not None:
                    out[r, i] = 1.0
        return out


def build_tag_vocab(
    tag_lists: Iterable[Iterable[str]], *, min_count: int = 2, max_size: int = 1000
) -> list[str]:
    """The tags worth a model input: normalised, seen in at least ``min_count`` training images,
    the ``max_size`` most frequent (ties broken by name, so the vocabulary is deterministic)."""
    counts: Counter[str] = Counter()
    for tags in tag_lists:
        counts.update({t for t in (normalise_tag(tag) for tag in tags) if t})
    kept = [(n, tag) for tag, n in counts.items() if n >= min_count]
    kept.sort(key=lambda item: (-item[0], item[1]))
    return [tag for _, tag in kept[:max_size]]
