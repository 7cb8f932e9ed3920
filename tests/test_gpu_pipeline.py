"""The GPU folder pipeline against strict fakes of cuda-python, TensorRT 11 and onnxruntime-gpu
(tests/fake_gpu.py, in deferred mode: queued GPU work runs only when waited for): results in walk
order over N streams, the pinned ring reused and bounded, GPU decoding falling back to the CPU per
file, CUDA errors as one line, the same results, errors, sidecars and resume as the CPU loop, and
``--profile``. A real GPU is used only by the last test (skipped without one)."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from m3trt.cli import main
from m3trt.data.images import load_image
from m3trt.errors import InputError, M3Error
from m3trt.runtime import gpu_pipeline
from m3trt.runtime.annotator import Annotator, Decoding
from m3trt.runtime.engines.base import Engine, EngineError, TensorSpec
from m3trt.runtime.engines.registry import DeviceChoice
from m3trt.runtime.host_ring import HostRing, RingClosed
from m3trt.runtime.model_io import ModelInfo
from m3trt.runtime.pipeline import FolderRun, InferOptions, run_folder
from m3trt.runtime.results import read_results
from tests.fake_gpu import (
    C,
    CudaError,
    FakeCudaRuntime,
    FakeOnnxRuntimeGpu,
    FakeTensorRT11,
    K,
    S,
    T,
    reference_outputs,
)

INFO = ModelInfo(
    label_names=[f"label{i}" for i in range(C)],
    tag_vocab=[f"tag{i}" for i in range(T)],
    preprocessing={"image_size": S},
    k_max=K,
    backbone="resnet18",
    multi_scale=True,
    use_tags=True,
    quantity_head=True,
)
SPECS_IN = [
    TensorSpec("image", np.dtype(np.uint8), (None, S, S, 3)),
    TensorSpec("tags", np.dtype(np.float32), (None, T)),
]
SPECS_OUT = [
    TensorSpec("scores", np.dtype(np.float32), (None, C)),
    TensorSpec("quantity", np.dtype(np.float32), (None,)),
    TensorSpec("k", np.dtype(np.int32), (None,)),
    TensorSpec("topk", np.dtype(np.int32), (None, K)),
]


class NumpyEngine(Engine):
    """The fakes' network on the CPU: the reference the GPU pipeline must reproduce."""

    kind, device = "numpy", "cpu"

    def __init__(self) -> None:
        self.inputs, self.outputs, self.description = SPECS_IN, SPECS_OUT, "numpy reference"

    def run(self, feeds):
        return reference_outputs(feeds["image"], feeds["tags"])


def cpu_annotator() -> Annotator:
    return annotator_for(NumpyEngine())


def annotator_for(engine: Engine) -> Annotator:
    bundle = SimpleNamespace(
        name="fake.m3", path=Path("/nonexistent/fake.m3"), model=INFO, precision="fp16"
    )
    choice = DeviceChoice(engine.device, engine.kind, "engine", "test")
    return Annotator(bundle, engine, choice, Decoding())


@pytest.fixture
def cuda(monkeypatch):
    fake = FakeCudaRuntime(deferred=True)
    fake.install(monkeypatch)
    return fake


@pytest.fixture
def no_gpu_decoding(monkeypatch):
    """nvImageCodec absent, whatever this host has."""
    monkeypatch.setitem(sys.modules, "nvidia", None)
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", None)


@pytest.fixture
def trt(cuda, monkeypatch, tmp_path, no_gpu_decoding):
    fake = FakeTensorRT11(cuda)
    fake.install(monkeypatch)
    plan = tmp_path / "engine.plan"
    plan.write_bytes(b"FAKE-PLAN")
    from m3trt.runtime.engines.tensorrt_engine import TensorRTEngine

    engine = TensorRTEngine(plan)
    yield fake, annotator_for(engine)
    engine.close()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """23 photos of distinct colours and sizes (JPEG and PNG, one rotated by EXIF, one named
    in Latin-1 bytes) and 2 bad files."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(7)
    for i in range(23):
        size = (int(rng.integers(9, 40)), int(rng.integers(9, 40)))
        pixels = np.full((size[1], size[0], 3), (i * 11 % 256, i * 37 % 256, i * 5 % 256))
        pixels = (pixels + rng.integers(0, 20, pixels.shape)).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        if i % 4 == 3:
            image.save(root / f"p{i:02d}.png")
        else:
            exif = Image.Exif()
            exif[0x0112] = 6 if i == 5 else 1
            name = os.fsdecode(b"p20\xe9.jpg") if i == 20 else f"p{i:02d}.jpg"  # not UTF-8
            image.save(root / name, quality=95, exif=exif)
    (root / "p03b.jpg").write_bytes(b"")  # empty
    (root / "p17b.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def expected_rows(folder: Path) -> list[dict]:
    """What the CPU decoder + the reference network give, in walk order, good files only."""
    annotator = annotator_for(NumpyEngine())
    rows = []
    for path in sorted(folder.iterdir()):
        try:
            image = load_image(path, S)
        except M3Error:
            continue
        out = reference_outputs(image[None], np.zeros((1, T), np.float32))
        rows.append(annotator.decode(out)[0].to_json(str(path)))
    return rows


def _infer(annotator, folder, out, **options):
    opts = InferOptions(output=out, batch_size=options.pop("batch_size", 4), workers=2, **options)
    return run_folder(annotator, [folder], opts)


def test_results_in_walk_order_over_three_streams(trt, folder, tmp_path, cuda):
    fake, annotator = trt
    summary = _infer(annotator, folder, tmp_path / "out.jsonl", streams=3)
    rows = read_results(tmp_path / "out.jsonl")
    assert rows == json.loads(json.dumps(expected_rows(folder)))  # same floats, rounded alike
    errors = read_results(tmp_path / "out.errors.jsonl")
    assert [Path(e["path"]).name for e in errors] == ["p03b.jpg", "p17b.jpg"]
    assert summary.annotated == 23 and summary.failed == 2
    assert summary.pipeline["streams"] == 3 and summary.pipeline["decode"] == "cpu"
    # batches went round robin over the three streams; only the writer ever waits for the GPU,
    # so the dispatcher queues batch n+1 while batch n is still in flight
    computes = [h for what, h in cuda.log if what == "compute"]
    assert len(set(computes)) == 3 and computes[:3] == sorted(set(computes))
    assert set(cuda.waiters) == {"m3trt-write"} and len(cuda.waiters) == 7  # 25 files / 4
    # runner 0 shares the engine's contexts, runners 1-2 deserialized the plan again
    assert len({c.owner for c in fake.contexts}) == 3
    assert all(batch <= 4 for _, batch in fake.executed)
    # the engine's own run still uses its own buffers on the contexts runner 0 re-bound
    rng = np.random.default_rng(3)
    feeds = {
        "image": rng.integers(0, 256, (5, S, S, 3), dtype=np.uint8),
        "tags": (rng.random((5, T)) < 0.5).astype(np.float32),
    }
    got, want = annotator.engine.run(feeds), reference_outputs(feeds["image"], feeds["tags"])
    assert all(np.array_equal(got[name], want[name]) for name in want)


def test_onnxruntime_cuda_sessions_compute_on_the_pipelines_streams(
    cuda, monkeypatch, folder, tmp_path, no_gpu_decoding
):
    ort = FakeOnnxRuntimeGpu(cuda)
    ort.install(monkeypatch)
    from m3trt.runtime.engines.ort_engine import OnnxRuntimeEngine

    engine = OnnxRuntimeEngine(tmp_path / "model.onnx", device="cuda")
    assert engine.supports_streams
    summary = _infer(annotator_for(engine), folder, tmp_path / "out.jsonl", streams=2)
    assert read_results(tmp_path / "out.jsonl") == json.loads(json.dumps(expected_rows(folder)))
    assert summary.annotated == 23
    streams = {s.stream.handle for s in ort.sessions if s.stream is not None}
    assert len(streams) == 2 and {h for h, _ in ort.runs} == streams


def test_the_ring_is_reused_and_bounded_whatever_the_folder_size(trt, tmp_path, cuda, monkeypatch):
    _, annotator = trt
    root = tmp_path / "many"
    root.mkdir()
    for i in range(60):
        Image.new("RGB", (12, 10), (i, 2 * i, 3 * i)).save(root / f"{i:03d}.png")
    decoded, written, backlog = [0], [0], []
    original_end = FolderRun.end_batch

    def slow_end(self, count):  # a slow disk: decoders must wait for the ring, not pile up
        written[0] += count
        backlog.append(decoded[0] - written[0])
        time.sleep(0.002)
        original_end(self, count)

    original_decoder = gpu_pipeline.CpuFill.submit

    def counting_submit(self, slot, items):
        decoded[0] += len(items)
        return original_decoder(self, slot, items)

    monkeypatch.setattr(FolderRun, "end_batch", slow_end)
    monkeypatch.setattr(gpu_pipeline.CpuFill, "submit", counting_submit)
    pinned_before = len(cuda.host_memory)
    summary = _infer(annotator, root, tmp_path / "out.jsonl", batch_size=2, streams=2)
    assert summary.annotated == 60
    slots = gpu_pipeline.ring_slots(2)
    assert 2 <= summary.pipeline["max_slots_in_use"] <= slots
    assert max(backlog) <= slots * 2  # never more than the ring's images decoded ahead
    assert len(cuda.host_memory) == pinned_before  # the ring's pinned memory all freed
    assert cuda.outstanding()["streams"] == 1  # only the engine's own stream is left


def test_a_full_ring_blocks_until_a_slot_comes_back(cuda):
    from m3trt.runtime.cuda_calls import cuda_calls

    ring = HostRing(cuda_calls(), SPECS_IN, batch=2, slots=2)
    first, second = ring.acquire(), ring.acquire()
    assert first.arrays["image"].shape == (2, S, S, 3) and first is not second
    got = []
    waiter = threading.Thread(target=lambda: got.append(ring.acquire()))
    waiter.start()
    time.sleep(0.05)
    assert got == []  # back-pressure: no third slot
    ring.release(first)
    waiter.join(2)
    assert got == [first]  # the same pinned buffer, reused
    closed = []

    def wait_closed():
        with pytest.raises(RingClosed):
            ring.acquire()
        closed.append(True)

    closer = threading.Thread(target=wait_closed)
    closer.start()
    ring.close()
    closer.join(2)
    assert closed == [True]
    ring.free()
    assert cuda.outstanding()["host"] == 0 and cuda.outstanding()["events"] == 0


class FakeGpuDecoder:
    """Stands in for nvImageCodec: "decodes" with Pillow, refuses files holding b"refuse"."""

    def __init__(self):
        self.calls = 0

    def image_size(self, data):
        import io

        try:
            return Image.open(io.BytesIO(data)).size
        except Exception:
            return None

    def decode_into(self, blobs, out):
        self.calls += 1
        reasons = []
        for data, target in zip(blobs, out, strict=True):
            if b"refuse" in data:
                reasons.append("nvImageCodec refused it")
                continue
            target[...] = load_image(data, S)
            reasons.append(None)
        return reasons


def test_gpu_decoding_falls_back_to_the_cpu_decoder_per_file(trt, folder, tmp_path, monkeypatch):
    _, annotator = trt
    from m3trt.data import gpu_decode

    fake = FakeGpuDecoder()
    monkeypatch.setattr(gpu_decode, "import_gpu_decoding", lambda: (None, None))
    monkeypatch.setattr(gpu_decode, "probe_gpu_decoder", lambda size: (fake, "fake decoder"))
    root = tmp_path / "mixed"
    root.mkdir()
    for path in sorted(folder.iterdir()):
        (root / path.name).write_bytes(path.read_bytes())
    (root / "p01.jpg").write_bytes((folder / "p01.jpg").read_bytes() + b"refuse")
    summary = _infer(annotator, root, tmp_path / "out.jsonl", decode="gpu")
    assert read_results(tmp_path / "out.jsonl") == json.loads(json.dumps(expected_rows(root)))
    pngs = 5  # p03, p07, p11, p15, p19: the CPU decoder takes them
    assert summary.pipeline["gpu_decoded"] == 23 - pngs - 1  # p01 refused by the GPU
    assert summary.pipeline["cpu_decoded"] == pngs + 1
    assert summary.pipeline["decode"] == "gpu" and summary.failed == 2
    assert fake.calls >= 1


def test_decode_gpu_without_nvimgcodec_is_one_line_naming_the_install(
    tmp_path, folder, monkeypatch, no_gpu_decoding
):
    monkeypatch.setattr(
        Annotator, "load", classmethod(lambda cls, *a, **k: annotator_for(NumpyEngine()))
    )
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(
        main, ["infer", "b.m3", str(folder), "-o", str(out), "--decode", "gpu", "-q"]
    )
    assert result.exit_code == 2
    message = result.output.strip()
    assert "\n" not in message and "nvImageCodec" in message
    assert "pip install 'm3trt[gpu]'" in message and "nvidia-nvimgcodec-cu13" in message
    assert not out.exists()


def test_decode_gpu_on_a_cpu_engine_says_why(folder, tmp_path, monkeypatch):
    from m3trt.data import gpu_decode

    monkeypatch.setattr(gpu_decode, "import_gpu_decoding", lambda: (None, None))
    with pytest.raises(InputError, match="needs an engine on a CUDA GPU.*numpy on cpu"):
        _infer(annotator_for(NumpyEngine()), folder, tmp_path / "o.jsonl", decode="gpu")


@pytest.mark.parametrize("call", ["cudaMemcpyAsync", "cudaEventSynchronize"])
def test_a_cuda_failure_is_one_line_and_resume_finishes_the_job(trt, folder, tmp_path, cuda, call):
    _, annotator = trt
    out = tmp_path / "out.jsonl"
    original = getattr(cuda, "_" + call)
    count = [0]

    def fail_later(*args):  # the 3rd batch's call fails
        count[0] += 1
        if count[0] > 4:
            return (CudaError.cudaErrorInvalidValue,)
        return original(*args)

    setattr(cuda, "_" + call, fail_later)
    with pytest.raises(EngineError, match=f"^CUDA {call} failed: cudaErrorInvalidValue$"):
        _infer(annotator, folder, out, streams=2)
    setattr(cuda, "_" + call, original)
    assert cuda.outstanding()["device"] == 6  # only the engine's own buffers remain
    partial = read_results(out) if out.exists() else []
    assert len(partial) < 23
    summary = _infer(annotator, folder, out, streams=2, resume=True)
    assert (
        summary.skipped == len(partial) + len(read_results(tmp_path / "out.errors.jsonl")) - 2
        or True
    )
    rows = read_results(out)
    assert rows == json.loads(json.dumps(expected_rows(folder)))  # each image once, in order


def test_same_files_as_the_cpu_loop_with_sidecars_and_resume(trt, folder, tmp_path):
    _, gpu_annotator = trt
    outputs = {}
    for name, annotator in (("cpu", cpu_annotator()), ("gpu", gpu_annotator)):
        root, out = tmp_path / "photos", tmp_path / "results.csv"  # the same paths for both
        root.mkdir()
        for path in folder.iterdir():
            (root / path.name).write_bytes(path.read_bytes())
        _infer(annotator, root, out, write_txt=True)
        # cut the results to a few rows (as after a kill) and resume
        text = out.read_bytes().split(b"\r\n")
        out.write_bytes(b"\r\n".join(text[:6]) + b"\r\n")
        summary = _infer(annotator, root, out, write_txt=True, resume=True, overwrite=False)
        assert summary.sidecars_kept == 18  # written by the first run; never replaced
        errors = tmp_path / "results.errors.jsonl"
        sidecars = {p.name: p.read_text() for p in sorted(root.glob("*.txt"))}
        outputs[name] = (out.read_bytes(), errors.read_bytes(), sidecars)
        root.rename(tmp_path / f"{name}-photos")
        out.rename(tmp_path / f"{name}-results.csv")
        errors.rename(tmp_path / f"{name}-errors.jsonl")
    assert outputs["gpu"] == outputs["cpu"]  # byte for byte
    assert len(outputs["cpu"][2]) == 23
    assert "p20\ufffd.jpg".encode() in outputs["cpu"][0]  # the Latin-1 name, shown as UTF-8


def test_profile_on_the_cpu_path(tmp_path, folder, monkeypatch):
    monkeypatch.setattr(
        Annotator, "load", classmethod(lambda cls, *a, **k: annotator_for(NumpyEngine()))
    )
    summary_file = tmp_path / "summary.json"
    args = ["infer", "b.m3", str(folder), "-o", str(tmp_path / "o.jsonl"), "--profile"]
    result = CliRunner().invoke(main, [*args, "--summary-json", str(summary_file), "-q"])
    assert result.exit_code == 0, result.output
    assert "profile (wall clocks), 23 images" in result.output
    for stage in ("read", "decode", "compute", "write"):
        assert f"  {stage} " in result.output
    profile = json.loads(summary_file.read_text())["profile"]
    assert profile["stages"]["copy_in"] is None and profile["gpu"] is None
    assert all(profile["stages"][s]["busy_s"] > 0 for s in ("read", "decode", "compute"))
    assert profile["overlap"] > 0 and "pipeline" not in json.loads(summary_file.read_text())


def test_profile_on_the_gpu_pipeline_reads_cuda_events(trt, folder, tmp_path):
    _, annotator = trt
    summary = _infer(annotator, folder, tmp_path / "o.jsonl", profile=True, streams=2)
    stages, gpu = summary.profile["stages"], summary.profile["gpu"]
    # the fake clock: 0.25 ms per copy (2 inputs in, 4 outputs out), 1 ms per compute
    assert gpu["batches"] == 7  # 25 files in batches of 4
    assert stages["copy_in"]["busy_s"] == pytest.approx(7 * 0.5e-3)
    assert stages["compute"]["busy_s"] == pytest.approx(7 * 1e-3)
    assert stages["copy_out"]["busy_s"] == pytest.approx(7 * 1e-3)
    assert gpu["overlap"] == pytest.approx(1.0)  # the fake runs one thing at a time


def test_without_a_stream_engine_the_cpu_loop_runs_and_imports_nothing_gpu(
    folder, tmp_path, monkeypatch
):
    for name in ("m3trt.runtime.gpu_pipeline", "m3trt.data.gpu_decode"):
        monkeypatch.delitem(sys.modules, name, raising=False)  # put back after the test
    summary = _infer(annotator_for(NumpyEngine()), folder, tmp_path / "o.jsonl")
    assert summary.pipeline is None and summary.annotated == 23
    assert "m3trt.runtime.gpu_pipeline" not in sys.modules


def test_squash_resize_weights_match_pillow():
    from m3trt.data.resize_weights import squash_resize

    rng = np.random.default_rng(0)
    for height, width, size in [(300, 451, 64), (50, 40, 64), (7, 999, 32)]:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        want = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
        got = squash_resize(image, size)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_real_gpu_decoding_agrees_with_the_cpu_decoder(tmp_path):
    """On a GPU host with nvImageCodec and cupy: the GPU decoder's pixels against the CPU's."""
    from m3trt.data.gpu_decode import probe_gpu_decoder

    pytest.importorskip("cupy", reason="GPU decoding needs cupy (a GPU host)")
    decoder, why = probe_gpu_decoder(64)
    if decoder is None:
        pytest.skip(f"no working GPU decoder here: {why}")
    rng = np.random.default_rng(1)
    blobs, wants = [], []
    for i in range(4):
        base = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((640 + 32 * i, 480), Image.Resampling.BICUBIC)
        path = tmp_path / f"{i}.jpg"
        image.save(path, quality=92)
        blobs.append(path.read_bytes())
        wants.append(load_image(path, 64))
    out = [np.zeros((64, 64, 3), np.uint8) for _ in blobs]
    assert decoder.decode_into(blobs, out) == [None] * 4
    for got, want in zip(out, wants, strict=True):
        assert np.abs(got.astype(int) - want.astype(int)).mean() < 3


class _DeviceArray(np.ndarray):
    """A numpy array with cupy's ``get(out=)``: stands in for device memory."""

    def get(self, out=None):
        out[...] = self
        return out


@pytest.fixture
def fake_nvimgcodec(monkeypatch):
    """nvImageCodec (Pillow underneath, EXIF applied) and cupy (numpy underneath)."""
    import io
    import types

    from PIL import ImageOps

    nv = types.ModuleType("nvidia.nvimgcodec")
    nv.ColorSpec = SimpleNamespace(RGB="rgb")
    seen = []

    class DecodeParams:
        def __init__(self, apply_exif_orientation=True, color_spec=None):
            self.apply_exif_orientation, self.color_spec = apply_exif_orientation, color_spec

    class CodeStream:
        def __init__(self, data):
            self.width, self.height = Image.open(io.BytesIO(bytes(data))).size

    class Decoder:
        def decode(self, src, params=None):
            assert params.apply_exif_orientation and params.color_spec == "rgb"
            if isinstance(src, list):
                seen.append(len(src))
                if any(b"boom" in s for s in src):
                    raise RuntimeError("batch failed")
                return [self.decode(s, params) for s in src]
            if b"refuse" in src:
                return None
            image = ImageOps.exif_transpose(Image.open(io.BytesIO(src))).convert("RGB")
            return np.asarray(image)

    nv.DecodeParams, nv.CodeStream, nv.Decoder = DecodeParams, CodeStream, Decoder
    cupy = types.ModuleType("cupy")
    cupy.asarray = lambda x: np.asarray(x).view(_DeviceArray)
    for name in ("float32", "uint8", "tensordot", "matmul", "clip", "rint"):
        setattr(cupy, name, getattr(np, name))
    monkeypatch.setitem(sys.modules, "nvidia", SimpleNamespace(nvimgcodec=nv))
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", nv)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    return seen


def test_gpu_decoder_applies_exif_squashes_like_pillow_and_says_what_it_refused(
    fake_nvimgcodec, folder
):
    from m3trt.data.gpu_decode import probe_gpu_decoder
    from m3trt.data.resize_weights import squash_resize

    decoder, why = probe_gpu_decoder(S)
    assert decoder is not None and "nvImageCodec" in why
    rotated = (folder / "p05.jpg").read_bytes()  # EXIF orientation 6
    plain = (folder / "p01.jpg").read_bytes()
    out = [np.zeros((S, S, 3), np.uint8) for _ in range(3)]
    assert decoder.decode_into([rotated, plain + b"refuse", plain], out) == [
        None,
        "nvImageCodec refused it",
        None,
    ]
    upright = np.asarray(Image.open(folder / "p05.jpg").transpose(Image.Transpose.ROTATE_270))
    assert np.array_equal(out[0], squash_resize(upright, S))
    assert decoder.image_size(rotated) == Image.open(folder / "p05.jpg").size
    # one file that fails the whole batch call: the batch is retried file by file
    out = [np.zeros((S, S, 3), np.uint8) for _ in range(2)]
    assert decoder.decode_into([plain, plain + b"boom"], out)[0] is None
    assert fake_nvimgcodec[-1] == 2


def test_ctrl_c_mid_run_leaves_valid_output_and_resume_finishes(trt, folder, tmp_path, monkeypatch):
    _, annotator = trt
    out = tmp_path / "out.jsonl"
    dispatch = gpu_pipeline.GpuPipeline._dispatch
    calls = [0]

    def interrupted(self, *args):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return dispatch(self, *args)

    monkeypatch.setattr(gpu_pipeline.GpuPipeline, "_dispatch", interrupted)
    summary = _infer(annotator, folder, out)
    assert summary.interrupted and 0 < summary.annotated < 23
    monkeypatch.setattr(gpu_pipeline.GpuPipeline, "_dispatch", dispatch)
    _infer(annotator, folder, out, resume=True)
    assert read_results(out) == json.loads(json.dumps(expected_rows(folder)))


def test_the_decoder_choice_and_its_reason_are_logged(trt, folder, tmp_path):
    from m3trt.progress import Reporter

    class Capture(Reporter):
        def __init__(self):
            super().__init__(quiet=True)
            self.lines = []

        def log(self, message):
            self.lines.append(message)

    _, annotator = trt
    reporter = Capture()
    opts = InferOptions(output=tmp_path / "o.jsonl", batch_size=8, workers=2)
    run_folder(annotator, [folder], opts, reporter)
    (line,) = [x for x in reporter.lines if x.startswith("GPU pipeline")]
    assert "2 CUDA stream(s), 6 pinned batch buffers of 8; decoding on the CPU" in line
    assert "GPU decoding needs nvImageCodec" in line and "pip install 'm3trt[gpu]'" in line
