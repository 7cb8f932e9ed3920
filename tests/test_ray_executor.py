"""`m3trt infer --executor ray`: the local engine's rows from a Ray Data job, exactly once, even
when an actor is killed mid-run; resume, errors and sidecars as in the local pipeline."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from m3trt.cli import main
from m3trt.runtime.pipeline import InferOptions
from m3trt.runtime.results import errors_path

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'm3trt[ray]')")
from m3trt.runtime.ray_executor import RayOptions, run_folder_ray  # noqa: E402

OBJECT_STORE = 96 << 20  # small: CI machines and /dev/shm are shared


def infer(*args):
    result = CliRunner().invoke(main, ["--quiet", "infer", *map(str, args)])
    return result.exit_code, result.output


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, test_images):
    """The test photos three times over (72 images in three subfolders), plus two bad files."""
    root = tmp_path_factory.mktemp("ray-photos")
    for copy in ("a", "b", "c"):
        shutil.copytree(test_images, root / copy)
    (root / "b" / "empty.jpg").write_bytes(b"")
    (root / "c" / "not-an-image.png").write_text("hello")
    return root


@pytest.fixture(scope="module")
def local_rows(tmp_path_factory, int8_bundle, folder):
    out = tmp_path_factory.mktemp("local") / "local.jsonl"
    code, output = infer(int8_bundle, folder, "-o", out, "--batch-size", "8", "--threads", "1")
    assert code == 0, output
    return out


def test_cli_ray_run_gives_the_local_rows_in_walk_order(tmp_path, int8_bundle, folder, local_rows):
    """In a fresh interpreter, which also shows that the Ray path never imports torch."""
    out = tmp_path / "ray.jsonl"
    summary = tmp_path / "summary.json"
    args = [int8_bundle, folder, "-o", out, "--batch-size", "8", "--executor", "ray"]
    args += ["--num-workers", "2", "--summary-json", summary, "--write-txt"]
    script = (
        "import sys\n"
        "from m3trt.cli import main\n"
        "try:\n"
        f"    main(['infer', *{list(map(str, args))!r}])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code in (0, None), exit.code\n"
        "import ray\n"
        "assert not ray.is_initialized()\n"  # the job's own local instance is shut down
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not bad, bad\n"
    )
    # A RAY_ADDRESS (or a /tmp/ray address file) naming another instance, here a dead one, must
    # not stop the job from starting its own.
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9"}
    run = subprocess.run(  # timeout: a hang guard
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env
    )
    assert run.returncode == 0, run.stderr
    # What the user sees: Ray's start announced before the seconds it takes, then the job.
    lines = run.stderr.splitlines()
    starting = lines.index(
        "ray: starting a local Ray instance for this job (seconds; stopped at the end)"
    )
    after = lines[starting + 1 :]
    assert any(
        line.startswith("ray: 1 actor (1 CPU each) on a local Ray instance") for line in after
    )
    assert any(line.startswith("annotate") for line in after)
    assert jsonl(out) == jsonl(local_rows)  # same rows, same (walk) order
    assert jsonl(errors_path(out)) == jsonl(errors_path(local_rows))
    counts = json.loads(summary.read_text())
    assert (counts["annotated"], counts["failed"], counts["skipped"]) == (72, 2, 0)
    assert counts["sidecars_written"] == 72 and "ray: 1 actor" in counts["engine"]  # one block
    assert "; each actor: device cpu, engine onnxruntime" in counts["engine"]
    first = jsonl(out)[0]
    txt = Path(first["path"]).with_suffix(".txt")
    assert txt.read_text().strip() == ", ".join(first["labels"])
    for sidecar in folder.rglob("*.txt"):
        sidecar.unlink()


@pytest.fixture(scope="module")
def ray_session():
    """One Ray instance for the API tests (starting one costs seconds): m3trt uses it as is."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        address="local",  # its own, whatever RAY_ADDRESS or /tmp/ray say
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=OBJECT_STORE,
        _node_ip_address="127.0.0.1",
    )
    yield ray
    ray.shutdown()


def test_killed_actor_loses_and_duplicates_nothing(
    tmp_path, int8_bundle, folder, local_rows, ray_session
):
    killed: list[int] = []
    seen: set[int] = set()

    def kill_one(pids: list[int]) -> None:
        seen.update(pids)
        if not killed:
            killed.append(pids[0])
            os.kill(pids[0], signal.SIGKILL)

    out = tmp_path / "killed.jsonl"
    options = InferOptions(output=out, batch_size=4)
    ray_options = RayOptions(
        num_workers=2, block_rows=4, bundle_via="object-store", on_block=kill_one
    )
    summary = run_folder_ray(int8_bundle, [folder], options, ray_options, {"threads": 1})
    assert killed, "no block came back"
    assert seen - set(killed), "no actor finished the job"
    assert (summary.annotated, summary.failed) == (72, 2)
    assert jsonl(out) == jsonl(local_rows)
    assert jsonl(errors_path(out)) == jsonl(errors_path(local_rows))


def test_resume_writes_only_what_is_missing(tmp_path, int8_bundle, folder, local_rows, ray_session):
    out = tmp_path / "resumed.jsonl"
    lines = local_rows.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:30]) + lines[30][:17])  # a torn last line, as after a kill
    options = InferOptions(output=out, batch_size=8, resume=True)
    summary = run_folder_ray(int8_bundle, [folder], options, RayOptions(num_workers=1))
    assert (summary.skipped, summary.annotated, summary.failed) == (30, 42, 2)
    assert jsonl(out) == jsonl(local_rows)


def test_a_sidecar_that_cannot_be_written_fails_its_image_only(
    tmp_path, int8_bundle, test_images, ray_session
):
    """As in the local pipeline; on the Ray driver such a failure ended the whole run."""
    photos = tmp_path / "photos"
    shutil.copytree(test_images, photos)
    blocked = sorted(p for p in photos.iterdir() if p.is_file())[0]
    blocked.with_suffix(".txt").mkdir()  # a folder where its sidecar would go
    out = tmp_path / "o.jsonl"
    options = InferOptions(output=out, batch_size=8, write_txt=True, overwrite=True)
    summary = run_folder_ray(int8_bundle, [photos], options, RayOptions(num_workers=1))
    assert (summary.annotated, summary.failed, summary.sidecars_written) == (23, 1, 23)
    [error] = jsonl(errors_path(out))
    assert error["path"] == str(blocked) and "cannot write sidecar" in error["error"]
    assert str(blocked) not in {row["path"] for row in jsonl(out)}


def test_tampered_bundle_fails_before_ray_starts(tmp_path, int8_bundle, folder):
    bad = tmp_path / "bad.m3"
    shutil.copytree(int8_bundle, bad)
    model = next(p for p in bad.iterdir() if p.name.endswith("int8.onnx"))
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 1
    model.write_bytes(bytes(data))
    code, output = infer(bad, folder, "-o", tmp_path / "x.csv", "--executor", "ray")
    assert code == 2 and "sha256" in output and not (tmp_path / "x.csv").exists()


def test_outputs_are_guarded_as_locally_before_ray_starts(tmp_path, int8_bundle, folder):
    """A user's file named as an output is refused untouched, and a second run on an output
    that another run holds is refused: the local pipeline's checks and lock, not Ray's start."""
    from m3trt.runtime.outputs import output_lock

    mine = tmp_path / "mine.json"
    mine.write_text("my notes")
    out = tmp_path / "o.jsonl"
    ray_run = ("-o", out, "--executor", "ray")
    code, output = infer(int8_bundle, folder, *ray_run, "--summary-json", mine)
    assert code == 2 and f"{mine} exists" in output
    assert mine.read_text() == "my notes" and not out.exists()
    with output_lock(out):
        code, output = infer(int8_bundle, folder, *ray_run)
    assert code == 2 and "another m3trt run is writing it" in output and not out.exists()


def test_without_ray_the_option_says_how_to_install(tmp_path, int8_bundle, folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    code, output = infer(int8_bundle, folder, "-o", tmp_path / "o.jsonl", "--executor", "ray")
    assert code == 2 and "pip install 'm3trt[ray]'" in output
    assert not (tmp_path / "o.jsonl").exists()


def test_ray_options_need_the_ray_executor(tmp_path, int8_bundle, folder):
    code, output = infer(int8_bundle, folder, "-o", tmp_path / "o.jsonl", "--num-workers", "2")
    assert code == 2 and "--num-workers only apply with --executor ray" in output


def test_walk_ahead_hands_over_blocks_in_order_and_bounded():
    from m3trt.runtime.ray_executor import _WalkAhead
    from m3trt.runtime.walk import Found

    walked = []

    def walk(n):
        for i in range(n):
            walked.append(i)
            yield Found(f"img{i}.jpg", "bad" if i == 3 else None)

    tables = _WalkAhead(walk(10), rows=4).take_all()
    assert [t.num_rows for t in tables] == [4, 4, 2]
    assert [i for t in tables for i in t["index"].to_pylist()] == list(range(10))
    assert tables[0]["error"].to_pylist() == [b"", b"", b"", b"bad"]

    # Nothing takes the blocks: the walk stops after 2 waiting + 1 in hand, and close() ends it.
    walked.clear()
    ahead = _WalkAhead(walk(1000), rows=1, max_waiting=2)
    deadline = time.monotonic() + 10
    while len(walked) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert len(walked) == 3
    ahead.close()
    assert not ahead._thread.is_alive()


def test_walk_ahead_raises_the_walks_error_where_blocks_are_taken():
    from m3trt.runtime.ray_executor import _WalkAhead

    def broken():
        yield from ()
        raise PermissionError("cannot list /x")

    with pytest.raises(PermissionError, match="cannot list"):
        _WalkAhead(broken(), rows=4).take_all()


def _tables(sizes):
    from m3trt.runtime.ray_executor import _file_table
    from m3trt.runtime.walk import Found

    tables, first = [], 0
    for n in sizes:
        tables.append(_file_table([Found(f"img{first + i}.jpg", None) for i in range(n)], first))
        first += n
    return tables


def test_dataset_keeps_the_walks_blocks(ray_session):
    """Built on the driver (no metadata task, hence no extra worker process), block for block;
    past its memory cap, from the object store, with the same blocks."""
    from m3trt.runtime.ray_executor import _dataset

    for cap in (1 << 20, 1):
        dataset, n = _dataset(ray_session, _tables([4, 4, 2]), in_memory=cap)
        assert n == dataset.num_blocks() == 3
        blocks = list(dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
        assert [b.num_rows for b in blocks] == [4, 4, 2]
        assert [i for b in blocks for i in b["index"].to_pylist()] == list(range(10))
    assert _dataset(ray_session, iter([])) == (None, 0)


def _fake_ray(puts: list):
    from types import SimpleNamespace

    def from_arrow_refs(refs):
        return ("from_arrow_refs", refs)

    def from_blocks(tables):
        return ("from_blocks", [t.num_rows for t in tables])

    return SimpleNamespace(
        put=lambda table: puts.append(table.num_rows) or ("ref", table.num_rows),
        data=SimpleNamespace(from_arrow_refs=from_arrow_refs, from_blocks=from_blocks),
    )


def test_dataset_falls_back_to_object_refs_without_from_blocks():
    from types import SimpleNamespace

    from m3trt.runtime.ray_executor import _dataset

    calls = []
    fake = SimpleNamespace(
        put=lambda table: ("ref", table.num_rows),
        data=SimpleNamespace(from_arrow_refs=lambda refs: calls.append(refs) or "dataset"),
    )
    assert _dataset(fake, _tables([4, 2])) == ("dataset", 2)
    assert calls == [[("ref", 4), ("ref", 2)]]


def test_a_long_walk_goes_to_the_object_store_as_it_comes():
    """The driver's memory does not grow with the folder: past the cap, each block is put into
    the object store before the walk hands over the next one."""
    from m3trt.runtime.ray_executor import _dataset

    tables = _tables([4] * 10)
    cap = sum(t.nbytes for t in tables[:3])  # the fourth block goes over it
    puts: list[int] = []
    lag: list[int] = []

    def walk():
        for i, table in enumerate(tables):
            lag.append(i - len(puts))  # blocks handed over but not yet in the store
            yield table

    fake = _fake_ray(puts)
    kind, refs = _dataset(fake, walk(), in_memory=cap)[0]
    assert kind == "from_arrow_refs" and len(refs) == 10
    assert max(lag) <= 3  # at most the cap's worth of blocks held on the driver ...
    assert lag[4:] == [0] * 6  # ... then none: each in the store before the next is walked
    kind, rows = _dataset(_fake_ray([]), iter(tables[:3]), in_memory=cap)[0]
    assert (kind, rows) == ("from_blocks", [4, 4, 4])  # under the cap: no object store trip


class _RecordingRay:
    """Just enough of ``ray`` for ``_Cluster``: records what a start would get."""

    def __init__(self) -> None:
        self.inits: list[tuple[dict, dict]] = []

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs) -> None:
        self.inits.append((kwargs, dict(os.environ)))

    def shutdown(self) -> None:
        pass


def test_own_local_instance_gets_m3trts_ray_settings_unless_the_user_set_them(monkeypatch):
    from m3trt.runtime.ray_executor import LOCAL_INSTANCE_ENV, _Cluster

    for name in LOCAL_INSTANCE_ENV:  # set, then removed: restored after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("RAY_raylet_client_connect_timeout_milliseconds", "250")  # the user's
    fake = _RecordingRay()
    _Cluster(fake, RayOptions(num_workers=3))
    ((kwargs, env),) = fake.inits
    assert kwargs["address"] == "local" and kwargs["num_cpus"] >= 3
    assert env["RAY_raylet_client_connect_timeout_milliseconds"] == "250"
    assert env["RAY_raylet_client_num_connect_attempts"] == "100"
    assert env["RAY_prestart_worker_first_driver"] == "0"


def test_a_cluster_address_gets_no_local_settings(monkeypatch):
    from m3trt.runtime.ray_executor import LOCAL_INSTANCE_ENV, _Cluster

    for name in LOCAL_INSTANCE_ENV:  # set, then removed: restored after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    fake = _RecordingRay()
    _Cluster(fake, RayOptions(address="10.0.0.1:6379"))
    ((kwargs, env),) = fake.inits
    assert kwargs["address"] == "10.0.0.1:6379" and "num_cpus" not in kwargs
    assert not set(LOCAL_INSTANCE_ENV) & set(env)


def test_shutdown_kills_a_local_instances_autoscaler_monitor_first():
    from types import SimpleNamespace

    from m3trt.runtime.ray_executor import _stop_autoscaler_monitor

    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    monitor, other = subprocess.Popen(sleeper), subprocess.Popen(sleeper)
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    try:
        node = SimpleNamespace(
            all_processes={
                "monitor": [SimpleNamespace(process=monitor), SimpleNamespace(process=done)],
                "gcs_server": [SimpleNamespace(process=other)],
            }
        )
        _stop_autoscaler_monitor(node)
        assert monitor.poll() == -signal.SIGKILL  # killed and reaped
        assert other.poll() is None  # Ray's shutdown stops the rest, in its own order
    finally:
        for process in (monitor, other):
            process.kill()
            process.wait()
    # Ray's private state moved or missing: nothing happens, Ray's shutdown does it all.
    for node in (None, SimpleNamespace(), SimpleNamespace(all_processes={"monitor": [object()]})):
        _stop_autoscaler_monitor(node)


def test_non_utf8_file_names_go_through_ray(tmp_path, int8_bundle, test_images, ray_session):
    """File names are bytes: Ray's Arrow blocks carry them as bytes, and the rows name them as
    the local engine does (surrogate-escaped)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    source = sorted(p for p in test_images.iterdir() if p.suffix == ".jpg")[0]
    name = os.fsdecode(b"caf\xe9-" + os.fsencode(source.name))  # Latin-1, not UTF-8
    shutil.copyfile(source, folder / name)
    (folder / os.fsdecode(b"bad\xff.jpg")).write_bytes(b"not a jpeg")
    local, out = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    code, output = infer(int8_bundle, folder, "-o", local, "--batch-size", "8", "--threads", "1")
    assert code == 0, output
    options = InferOptions(output=out, batch_size=8)
    summary = run_folder_ray(int8_bundle, [folder], options, RayOptions(num_workers=1))
    assert (summary.annotated, summary.failed) == (1, 1)
    assert out.read_bytes() == local.read_bytes()
    assert errors_path(out).read_bytes() == errors_path(local).read_bytes()


def test_ray_init_does_not_keep_its_sigterm_handler(monkeypatch):
    """ray.init installs a SIGTERM handler that exits at once: the job died without its summary
    or the hint to resume, where the CLI stops a run on SIGTERM as on Ctrl-C."""
    import signal
    import sys

    from m3trt.runtime.ray_executor import _Cluster

    class TakesSigterm(_RecordingRay):
        def init(self, **kwargs) -> None:
            super().init(**kwargs)
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(15))

    def ours(*_):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, ours)
    try:
        _Cluster(TakesSigterm(), RayOptions(address="10.0.0.1:6379"))
        assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, previous)
