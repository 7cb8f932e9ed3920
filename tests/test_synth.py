"""The synthetic demo dataset: files, determinism, and the properties the ablations rely on."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from m3trt.data.manifest import SPLITS, normalise_tag, read_label_file, read_manifest
from m3trt.data.synth import (
    DEFAULT_PARAMS,
    LABEL_NAMES,
    MAX_SIZE_FRAC,
    MIN_SIZE_FRAC,
    NOISE_TAGS,
    OBJECT_LABELS,
    REGIMES,
    SCENE_LABELS,
    SYNONYMS,
    SynthParams,
    generate,
    sample_image,
    sample_layout,
    sample_tags,
    split_assignment,
    tag_label,
)

N, SIZE = 40, 64


def _rng(i: int, seed: int = 123) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, i]))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "a"
    summary = generate(out, n=N, size=SIZE, seed=7)
    return out, summary


def _files(root) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_manifest_readable_and_images_decodable(dataset):
    out, summary = dataset
    m = read_manifest(out / "manifest.jsonl")
    assert summary.manifest == out / "manifest.jsonl"
    assert len(m.records) == N == summary.n
    assert not m.missing_images
    for i, r in enumerate(m.records):
        assert r.image == f"images/{i:06d}.jpg"
        with Image.open(r.path) as img:
            assert img.format == "JPEG"
            img.load()
            assert img.size == (SIZE, SIZE) and img.mode == "RGB"


def test_labels(dataset):
    out, summary = dataset
    m = read_manifest(out)
    assert read_label_file(out / "labels.txt") == list(LABEL_NAMES)
    assert m.label_names == list(LABEL_NAMES) == list(summary.label_names)
    assert LABEL_NAMES == OBJECT_LABELS + SCENE_LABELS and len(set(LABEL_NAMES)) == 14
    known = set(LABEL_NAMES)
    counts = [len(r.labels) for r in m.records]
    assert all(1 <= c <= 5 for c in counts)
    assert all(set(r.labels) <= known for r in m.records)
    assert all(sum(name in SCENE_LABELS for name in r.labels) <= 1 for r in m.records)
    assert summary.mean_labels == pytest.approx(sum(counts) / N)


def test_splits_and_tags(dataset):
    out, summary = dataset
    m = read_manifest(out)
    assert m.splits() == {"train": 28, "val": 6, "test": 6} == summary.splits
    for r in m.records:
        assert all(t == normalise_tag(t) and t == t.lower() and t for t in r.tags)


def test_deterministic_and_seed_dependent(dataset, tmp_path):
    out, _ = dataset
    calls: list[int] = []
    generate(tmp_path / "b", n=N, size=SIZE, seed=7, progress=calls.append)
    assert calls == list(range(1, N + 1))
    first, second = _files(out), _files(tmp_path / "b")
    assert first.keys() == second.keys()
    assert first == second  # manifest, labels.txt and every image byte-identical

    generate(tmp_path / "c", n=N, size=SIZE, seed=8)
    other = _files(tmp_path / "c")
    assert other["manifest.jsonl"] != first["manifest.jsonl"]
    assert sum(other[k] != first[k] for k in first if k.startswith("images/")) > N // 2

    # one image depends on (seed, index) only, whatever was generated before it
    a = sample_image(7, 5, SIZE)
    sample_image(7, 4, SIZE)
    b = sample_image(7, 5, SIZE)
    assert a[0] == b[0] and a[1] == b[1]
    assert np.array_equal(np.asarray(a[2]), np.asarray(b[2]))


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        generate(tmp_path, n=19, size=SIZE)
    with pytest.raises(ValueError):
        generate(tmp_path, n=N, size=31)
    with pytest.raises(ValueError):
        generate(tmp_path, n=N, size=SIZE, splits=(0.5, 0.2, 0.2))
    with pytest.raises(ValueError):
        generate(tmp_path, n=N, size=SIZE, seed=-1)
    # too big to be meant (these were a MemoryError after an empty images/ was made), NaN
    for kw in ({"n": 10**12}, {"size": 100_000}, {"splits": (float("nan"), 0.5, 0.5)}):
        with pytest.raises(ValueError, match="from 20 to|from 32 to|non-negative fractions"):
            generate(tmp_path / "big", **{"n": N, "size": SIZE, **kw})
    assert not (tmp_path / "manifest.jsonl").exists() and not (tmp_path / "big").exists()


def test_split_assignment():
    names = split_assignment(2000, 0, (0.7, 0.15, 0.15))
    assert [names.count(s) for s in SPLITS] == [1400, 300, 300]
    assert names[:20] != sorted(names[:20])  # shuffled, not blocks
    assert names == split_assignment(2000, 0, (0.7, 0.15, 0.15))
    assert names != split_assignment(2000, 1, (0.7, 0.15, 0.15))


def test_layouts_are_multi_scale_with_skewed_label_counts():
    layouts = [sample_layout(_rng(i), 128) for i in range(400)]
    sizes = np.array([o.size for lay in layouts for o in lay.objects])
    assert sizes.min() >= MIN_SIZE_FRAC and sizes.max() <= MAX_SIZE_FRAC
    assert (sizes < 0.12).mean() > 0.2 and (sizes > 0.40).mean() > 0.08
    for lay in layouts:
        classes = [o.label for o in lay.objects]
        assert len(set(classes)) == len(classes) and set(classes) <= set(OBJECT_LABELS)
        assert 1 <= len(lay.labels) <= 5
        assert len(lay.labels) == len(classes) + (lay.scene is not None)
        for o in lay.objects:  # fully inside the image
            assert o.size / 2 <= o.cx <= 1 - o.size / 2 and o.size / 2 <= o.cy <= 1 - o.size / 2
        assert [o.size for o in lay.objects] == sorted((o.size for o in lay.objects), reverse=True)
    counts = np.bincount([len(lay.labels) for lay in layouts], minlength=6)[1:]
    assert counts.min() > 0 and counts[1] > 2 * counts[4]  # two labels far likelier than five
    scenes = {lay.scene for lay in layouts}
    assert scenes == {None, *SCENE_LABELS}


def test_tags_are_informative_but_noisy():
    hits = total = with_noise = empty = misleading = synonyms = 0
    for i in range(300):
        rng = _rng(i, seed=5)
        labels = sample_layout(rng, 64).labels
        tags = sample_tags(rng, labels)
        assert len(set(tags)) == len(tags) and all(t == t.lower() for t in tags)
        named = {tag_label(t) for t in tags} - {None}
        hits += len(named & set(labels))
        total += len(labels)
        misleading += bool(named - set(labels))
        with_noise += any(t in NOISE_TAGS for t in tags)
        synonyms += any(t in SYNONYMS.get(tag_label(t) or "", ()) for t in tags)
        empty += not tags
        assert all(t in NOISE_TAGS or tag_label(t) is not None for t in tags)
    recall = hits / total
    assert 0.3 < recall < 0.75  # a good share of the labels, far from all
    assert with_noise > 100 and synonyms > 30
    assert 5 < misleading < 80
    assert 15 < empty < 80  # about 15% without tags


def test_tag_vocabularies_are_consistent():
    assert set(SYNONYMS) == set(LABEL_NAMES)
    words = [w for syns in SYNONYMS.values() for w in syns]
    assert len(set(words)) == len(words)
    assert not set(words) & set(LABEL_NAMES) and not set(words) & set(NOISE_TAGS)
    assert not set(NOISE_TAGS) & set(LABEL_NAMES)
    assert all(tag_label(w) is not None for w in words) and tag_label("nikon") is None


def test_scene_backgrounds_are_visible():
    """Night images are dark and beach images blue above sand below, at a glance."""
    night, plain, beach = [], [], []
    for i in range(120):
        layout, _, img = sample_image(3, i, 32)
        px = np.asarray(img, dtype=np.float32)
        if layout.scene == "night":
            night.append(np.median(px.max(axis=2)))
        elif layout.scene is None:
            plain.append(np.median(px.max(axis=2)))
        elif layout.scene == "beach":
            beach.append((px[:3].mean(axis=(0, 1)), px[-3:].mean(axis=(0, 1))))
    assert night and plain and beach
    assert max(night) < 70 < min(plain)
    for top, bottom in beach:
        assert top[2] > top[0] and bottom[0] > bottom[2]  # blue sky, sandy ground


def _tag_stats(params, n: int = 400) -> dict[str, float]:
    hits = total = misleading = empty = 0
    for i in range(n):
        rng = _rng(i, seed=11)
        labels = sample_layout(rng, 64, params).labels
        tags = sample_tags(rng, labels, params)
        named = {tag_label(t) for t in tags} - {None}
        hits += len(named & set(labels))
        total += len(labels)
        misleading += bool(named - set(labels))
        empty += not tags
    return {"recall": hits / total, "misleading": misleading / n, "empty": empty / n}


def test_regime_knobs_move_what_they_name():
    """Object sizes follow min/max_size; tag recall, misleading and untagged rates follow theirs."""
    easy = REGIMES["easy-partial"]
    sizes = [o.size for i in range(200) for o in sample_layout(_rng(i), 64, easy).objects]
    assert min(sizes) >= easy.min_size and max(sizes) <= easy.max_size
    base = _tag_stats(DEFAULT_PARAMS)
    assert _tag_stats(SynthParams(tag_recall=0.3))["recall"] < base["recall"] - 0.15
    assert _tag_stats(SynthParams(misleading=0.4))["misleading"] > base["misleading"] + 0.15
    assert _tag_stats(SynthParams(untagged=0.4))["empty"] > base["empty"] + 0.15
    partial = _tag_stats(easy)
    assert partial["recall"] < base["recall"] - 0.1 and partial["empty"] > base["empty"] + 0.05
    perfect = SynthParams(tag_recall=1.0, misleading=0.0, untagged=0.0)
    stats = _tag_stats(perfect)
    assert stats["recall"] == 1.0 and stats["misleading"] == 0.0 and stats["empty"] == 0.0
    assert DEFAULT_PARAMS.with_overrides(tag_recall=0.2, untagged=None) == SynthParams(
        tag_recall=0.2
    )


def test_default_params_keep_the_default_set(tmp_path):
    """The knobs at their defaults draw exactly what the set drew before they existed."""
    a = sample_image(4, 9, 48)
    b = sample_image(4, 9, 48, DEFAULT_PARAMS)
    assert a[0] == b[0] and a[1] == b[1]
    summary = generate(tmp_path / "e", n=N, size=SIZE, seed=7, params=REGIMES["easy-partial"])
    settings = json.loads((summary.out_dir / "synth.json").read_text())
    assert settings["min_size"] == 0.25 and settings["seed"] == 7


@pytest.mark.parametrize(
    "bad",
    [
        {"min_size": 0.0},
        {"min_size": 0.5, "max_size": 0.4},
        {"tag_recall": 1.5},
        {"misleading": -0.1},
    ],
)
def test_bad_regime_knobs(bad):
    with pytest.raises(ValueError):
        SynthParams(**bad)


def test_digits_regime_writes_real_handwriting_with_unseen_test_scans(tmp_path):
    pytest.importorskip("sklearn")
    from m3trt.data.digits import DIGIT_LABELS, _scans

    summary = generate(tmp_path / "d", n=N, size=32, seed=2, params=REGIMES["digits-partial"])
    m = read_manifest(summary.manifest)
    assert m.label_names == list(DIGIT_LABELS) == list(summary.label_names)
    assert all(1 <= len(r.labels) <= 4 and set(r.labels) <= set(DIGIT_LABELS) for r in m.records)
    named = {tag_label(t) for r in m.records for t in r.tags} - {None}
    assert named and named <= set(DIGIT_LABELS)
    _, _, test = _scans()
    assert 0.25 < test.mean() < 0.35  # a disjoint pool of scans for the test split
