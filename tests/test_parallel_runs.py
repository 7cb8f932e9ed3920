"""The CPU folder loop with an engine sized for several batches at once: the batches really run
side by side, the rows still come out in walk order, an engine error keeps what was written."""

import contextlib
import json
import os
import threading
import time

import pytest
from click.testing import CliRunner

from m3trt.cli import main
from m3trt.runtime.annotator import Annotator
from m3trt.runtime.engines.base import EngineError
from m3trt.runtime.pipeline import InferOptions, run_folder
from m3trt.runtime.results import read_results
from tests.test_gpu_pipeline import NumpyEngine, annotator_for, folder  # noqa: F401 (fixture)


class GatedEngine(NumpyEngine):
    """Two runs at once allowed: its first two runs each wait until both are inside ``run``
    (a sequential loop breaks the barrier), and the first one comes back last. ``stop_at``:
    that call raises ``stop`` instead."""

    parallel_runs = 2

    def __init__(self, stop_at: int | None = None, stop: BaseException | None = None) -> None:
        super().__init__()
        self.barrier = threading.Barrier(2, timeout=20)
        self.lock = threading.Lock()
        self.calls = self.inside = self.most_at_once = 0
        self.stop_at, self.stop = stop_at, stop

    def run(self, feeds):
        with self.lock:
            self.calls += 1
            call = self.calls
            self.inside += 1
            self.most_at_once = max(self.most_at_once, self.inside)
        try:
            if call == self.stop_at:
                raise self.stop
            if call <= 2 and self.parallel_runs > 1:
                self.barrier.wait()
                if call == 1:
                    time.sleep(0.2)
            else:
                time.sleep(0.01)  # long enough for a second call to overlap, if one could
            return super().run(feeds)
        finally:
            with self.lock:
                self.inside -= 1


def _infer(engine, root, out, **options):
    options = InferOptions(output=out, batch_size=4, workers=2, **options)
    return run_folder(annotator_for(engine), [root], options)


def test_two_batches_run_at_once_and_rows_keep_walk_order(folder, tmp_path):  # noqa: F811
    _infer(NumpyEngine(), folder, tmp_path / "one.jsonl")
    engine = GatedEngine()
    summary = _infer(engine, folder, tmp_path / "two.jsonl")
    assert engine.most_at_once == 2 and summary.annotated == 23 and summary.failed == 2
    for suffix in (".jsonl", ".errors.jsonl"):
        one, two = tmp_path / f"one{suffix}", tmp_path / f"two{suffix}"
        assert two.read_bytes() == one.read_bytes()  # byte for byte, walk order


def test_an_engine_for_one_run_is_never_called_twice_at_once(folder, tmp_path):  # noqa: F811
    engine = GatedEngine()
    engine.parallel_runs = 1  # e.g. OpenVINO: one infer request
    _infer(engine, folder, tmp_path / "one.jsonl")
    assert engine.calls == 6 and engine.most_at_once == 1  # 23 good images in batches of 4


def test_an_engine_error_keeps_the_batches_before_it(folder, tmp_path):  # noqa: F811
    _infer(NumpyEngine(), folder, tmp_path / "one.jsonl")
    with pytest.raises(EngineError, match="failed on this batch"):
        _infer(GatedEngine(3, EngineError("failed on this batch")), folder, tmp_path / "two.jsonl")
    # batches 1 and 2 finished and are written whole, in order; 3 failed; none after it
    rows, everything = read_results(tmp_path / "two.jsonl"), read_results(tmp_path / "one.jsonl")
    assert rows == everything[:8]
    errors = read_results(tmp_path / "two.errors.jsonl")
    assert errors == read_results(tmp_path / "one.errors.jsonl")[: len(errors)]
    assert not [t for t in threading.enumerate() if t.name.startswith("m3trt-engine")]


def test_an_interrupt_then_resume_gives_each_image_once(folder, tmp_path):  # noqa: F811
    _infer(NumpyEngine(), folder, tmp_path / "one.jsonl")
    out = tmp_path / "two.jsonl"
    summary = _infer(GatedEngine(4, KeyboardInterrupt()), folder, out)
    assert summary.interrupted and 0 < summary.annotated < 23
    assert not [t for t in threading.enumerate() if t.name.startswith("m3trt-engine")]
    summary = _infer(GatedEngine(), folder, out, resume=True)
    assert not summary.interrupted
    assert out.read_bytes() == (tmp_path / "one.jsonl").read_bytes()


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), EngineError("engine died")])
def test_a_stopped_run_stops_its_decoding_threads_itself(folder, tmp_path, stop):  # noqa: F811
    """The decoding generator was left to the garbage collector after an interrupt or an engine
    error; its pool's thread join then ran inside a later thread's start-up, under threading's
    own lock, and the next run in the process hung for good (seen in the suite)."""
    import gc

    gc.collect()
    gc.disable()  # what matters is what the run closes itself
    try:
        with contextlib.suppress(EngineError):
            _infer(GatedEngine(3, stop), folder, tmp_path / "out.jsonl")
        alive = [t.name for t in threading.enumerate() if t.name.startswith("m3trt-")]
        assert alive == []
    finally:
        gc.enable()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="runs are capped at the cores")
def test_onnxruntime_on_a_cpu_shares_the_cores_out(int8_bundle):
    cores = os.cpu_count() or 1

    def threads(annotator):
        return annotator.engine.session.get_session_options().intra_op_num_threads

    one = Annotator.load(int8_bundle, device="cpu", engine="onnxruntime")
    assert one.engine.parallel_runs == 1 and threads(one) == cores
    two = Annotator.load(int8_bundle, device="cpu", engine="onnxruntime", runs=2)
    assert two.engine.parallel_runs == 2 and threads(two) == max(1, cores // 2)
    told = Annotator.load(int8_bundle, device="cpu", engine="onnxruntime", runs=2, threads=3)
    assert threads(told) == 3 and told.description.endswith("2 batches at once (3 threads each)")


def test_openvino_keeps_one_run_at_a_time(int8_bundle):
    pytest.importorskip("openvino")
    annotator = Annotator.load(int8_bundle, device="cpu", engine="openvino", runs=2)
    assert annotator.engine.parallel_runs == 1  # one infer request: not safe from two threads


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="runs are capped at the cores")
def test_cli_streams_on_a_cpu_give_the_same_rows(int8_bundle, test_images, tmp_path):
    outputs = {}
    for streams in ("1", "2"):
        out, summary = tmp_path / f"s{streams}.jsonl", tmp_path / f"s{streams}.json"
        args = ["-q", "infer", str(int8_bundle), str(test_images), "-o", str(out)]
        args += ["--engine", "onnxruntime", "--streams", streams, "--summary-json", str(summary)]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        outputs[streams] = (out.read_bytes(), json.loads(summary.read_text())["engine"])
    assert outputs["1"][0] == outputs["2"][0]
    assert "batches at once" not in outputs["1"][1] and "2 batches at once" in outputs["2"][1]
