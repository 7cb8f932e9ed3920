"""``m3trt infer --executor ray``: the same folder job on Ray Data, for folders beyond one machine.

The driver walks the folders (the walk and ``--resume`` are the local pipeline's) and puts the
file list into Ray's object store as small Arrow blocks (past ``IN_MEMORY_BYTES`` of them the driver
keeps only their references, a byte or so a file, however big the folder; Ray spills the store to
disk when it fills). One Ray dataset reads them,
and the driver writes every row itself, in walk order, through the local pipeline's
``ResultWriter``, ``Sidecars`` and report: the output contract is the local one.
Decoding and inference happen in a pool of Ray actors (``map_batches`` with a callable class),
each of which loads and verifies the bundle once. Ray retries the block of an actor that dies
(``max_restarts``/``max_task_retries`` default to unlimited for actor pools in Ray Data), and the
driver checks the walk index of every row it receives, so each image is written exactly once:
a duplicate is dropped, a gap is an error.

Ray is imported only inside the functions here (``m3trt[ray]``); nothing else in m3trt needs it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from m3trt.data.images import load_image
from m3trt.errors import InputError, M3Error
from m3trt.progress import SILENT, Reporter
from m3trt.runtime.annotator import Annotation, Annotator, Decoding
from m3trt.runtime.bundle import BUNDLE_FILE, Bundle, load_bundle
from m3trt.runtime.pipeline import (
    Claim,
    Decoded,
    InferOptions,
    Sidecars,
    Summary,
    _open_report,
    _report_summary,
    _tag_source,
    _write_summary,
    check_resume_matches,
    decoder,
    guarded_outputs,
    record,
)
from m3trt.runtime.results import ResultWriter, done_paths, errors_path, format_for
from m3trt.runtime.walk import Found, PassedOver, check_roots, iter_images

INSTALL_HINT = "--executor ray needs Ray Data: pip install 'm3trt[ray]' (or 'ray[data]')"
BUNDLE_VIA = ("auto", "path", "object-store")


@dataclass
class RayOptions:
    """Where and how wide the job runs; see ``m3trt infer --help``."""

    address: str | None = None  # None: start a local Ray instance for this job (and stop it)
    num_workers: int | None = None  # actors; default: the cluster's CPUs / cpus_per_worker
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    # "path": workers open the bundle where the driver sees it (shared storage); "object-store":
    # the driver puts its files in Ray's object store; "auto": path on a local instance.
    bundle_via: str = "auto"
    block_rows: int = 256  # rows per Ray block (one actor call); a multiple of the engine batch
    object_store_mb: int | None = None  # a local instance's object store; default: Ray's
    # Test and benchmark hook: called on the driver with the pids of the actors that produced
    # each block of rows (e.g. to kill one mid-run).
    on_block: Callable[[list[int]], None] | None = field(default=None, repr=False)

    def check(self) -> None:
        if self.num_workers is not None and self.num_workers < 1:
            raise InputError(f"--num-workers must be at least 1, not {self.num_workers}")
        if self.cpus_per_worker <= 0:
            raise InputError(f"--cpus-per-worker must be positive, not {self.cpus_per_worker}")
        if self.gpus_per_worker < 0:
            raise InputError(f"--gpus-per-worker must be 0 or more, not {self.gpus_per_worker}")
        if self.bundle_via not in BUNDLE_VIA:
            raise InputError(f"--bundle-via {self.bundle_via!r}: use {', '.join(BUNDLE_VIA)}")
        if self.block_rows < 1:
            raise InputError(f"block_rows must be at least 1, not {self.block_rows}")


def import_ray() -> Any:
    """``ray`` with Ray Data, or one line saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise M3Error(INSTALL_HINT) from None
    return ray


class BatchAnnotator:
    """The stateful callable of ``map_batches``: one per actor, so the bundle is loaded (and its
    hashes verified) once per actor, not per batch. Decodes inside the actor."""

    def __init__(
        self,
        bundle: str | list[Any],
        load_kwargs: dict[str, Any],
        tags_for: Callable[[Path], list[str]],
        max_pixels: int,
        batch_size: int,
        decode_threads: int,
        cwd: str | None = None,
    ) -> None:
        self._tmp: str | None = None
        # Paths are spelled as the walk found them, relative to the driver's working folder; on a
        # node whose working folder differs, decode them from the driver's (shared storage).
        here = os.path.realpath(os.getcwd())
        self.cwd = cwd if cwd is not None and here != os.path.realpath(cwd) else None
        if isinstance(bundle, list):  # [ObjectRef] of the bundle's files (kept un-resolved)
            bundle = self._unpack(bundle[0])
        self.annotator = Annotator.load(bundle, verify=True, **load_kwargs)
        if not self.annotator.uses_tags:
            tags_for = _no_tags
        self.decode = decoder(self.annotator.image_size, max_pixels, tags_for)
        self.batch_size = batch_size
        self.pool = ThreadPoolExecutor(decode_threads, thread_name_prefix="m3trt-decode")
        self.pid = os.getpid()

    def _unpack(self, ref: Any) -> str:
        import ray

        name, files = ray.get(ref)
        self._tmp = tempfile.mkdtemp(prefix="m3trt-ray-")
        folder = Path(self._tmp) / name
        for rel, data in files.items():
            target = folder / rel  # names checked by load_bundle on the driver already
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return str(folder)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        found = [
            Found(os.fsdecode(p), os.fsdecode(e) or None)
            for p, e in zip(batch["path"], batch["error"], strict=True)
        ]
        local = found if self.cwd is None else [self._here(f) for f in found]
        # Every decode is queued at once and the engine takes full batches as they finish, so
        # decoding the next batch overlaps the engine's run of this one (measured on 2 cores:
        # decoding the whole block first left one core idle half the time).
        pending = [self.pool.submit(self.decode, f) for f in local]
        decoded: list[Decoded] = []
        rows = [""] * len(pending)
        chunk: list[int] = []
        for i, future in enumerate(pending):
            decoded.append(future.result())
            if decoded[i].error is None:
                chunk.append(i)
            if len(chunk) == self.batch_size or (i == len(pending) - 1 and chunk):
                self._annotate_into(rows, chunk, decoded)
                chunk = []
        return {
            "index": np.asarray(batch["index"], dtype=np.int64),
            "path": np.asarray([os.fsencode(f.path) for f in found], dtype=object),
            "row": np.asarray(rows, dtype=object),
            "error": np.asarray([os.fsencode(d.error or "") for d in decoded], dtype=object),
            "pid": np.full(len(found), self.pid, dtype=np.int64),
            "engine": self._engine_column(len(found)),
        }

    def _engine_column(self, rows: int) -> np.ndarray:
        """The engine's description (~700 characters) in a block's first row only: once a row
        it was 7 MB of copies through Arrow and the object store for 10,000 images."""
        column = np.full(rows, "", dtype=object)
        if rows:
            column[0] = self.annotator.description
        return column

    def _here(self, found: Found) -> Found:
        return Found(os.path.join(self.cwd or "", found.path), found.error)

    def _annotate_into(self, rows: list[str], chunk: list[int], decoded: list[Decoded]) -> None:
        annotations = self._annotate([decoded[i] for i in chunk])
        for i, annotation in zip(chunk, annotations, strict=True):
            rows[i] = json.dumps(annotation.to_json(), ensure_ascii=False)

    def _annotate(self, items: list[Decoded]) -> list[Annotation]:
        annotator = self.annotator
        images = np.stack([item.image for item in items])
        tags = annotator.encode_tags([item.tags for item in items]) if annotator.uses_tags else None
        return annotator.decode(annotator.run(images, tags))

    def __del__(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


def _no_tags(_path: Path) -> list[str]:
    return []


def _bundle_files(bundle: Bundle) -> tuple[str, dict[str, bytes]]:
    """The folder name and files (``bundle.json`` + every artifact) for the object store."""
    files = {BUNDLE_FILE: bundle.manifest_path.read_bytes()}
    for artifact in bundle.artifacts.values():
        files[artifact.file] = (bundle.path / artifact.file).read_bytes()
    return bundle.path.name, files


def _file_table(block: list[Found], first: int) -> Any:
    """``block`` as an Arrow table of walk index, path and walk error."""
    import pyarrow as pa

    return pa.table(
        {
            "index": pa.array(range(first, first + len(block)), pa.int64()),
            # Bytes, not text: file names need not be UTF-8 (surrogate-escaped in Python).
            "path": pa.array([os.fsencode(f.path) for f in block], pa.binary()),
            "error": pa.array([os.fsencode(f.error or "") for f in block], pa.binary()),
        }
    )


class _WalkAhead:
    """The walk, cut into blocks of ``rows`` paths, in a thread that starts before Ray does, so
    that walking the folders overlaps Ray's start-up (seconds: a local instance starts several
    processes). At most ``max_waiting`` blocks wait for Ray to be up (then the walk waits).
    ``_dataset`` takes the blocks as they come. Ray itself starts on the main thread: its driver
    does not survive ``ray.init`` from another thread."""

    _END = object()

    def __init__(self, items: Iterable[Found], rows: int, max_waiting: int = 64) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(max_waiting)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._walk, args=(items, rows), name="m3trt-walk", daemon=True
        )
        self._thread.start()

    def _walk(self, items: Iterable[Found], rows: int) -> None:
        index = 0
        block: list[Found] = []
        try:
            for item in items:
                block.append(item)
                if len(block) >= rows:
                    self._hand_over(_file_table(block, index))
                    index += len(block)
                    block = []
            if block:
                self._hand_over(_file_table(block, index))
            self._hand_over(self._END)
        except _Stopped:
            pass
        except BaseException as exc:  # raised again by the thread that takes the blocks
            with contextlib.suppress(_Stopped):
                self._hand_over(exc)

    def _hand_over(self, value: Any) -> None:
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                self._queue.put(value, timeout=0.1)
                return
            except queue.Full:
                continue

    def blocks(self) -> Iterator[Any]:
        """Every block in walk order, as the walk hands them over; ends with the walk."""
        while (value := self._queue.get()) is not self._END:
            if isinstance(value, BaseException):
                raise value
            yield value

    def take_all(self) -> list[Any]:
        """Every block at once (waits for the walk to end)."""
        return list(self.blocks())

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class _Stopped(Exception):
    """The walk was told to stop (the job ended early)."""


# Ray settings (environment, read by each of its processes) for a local instance of m3trt's own.
LOCAL_INSTANCE_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray starts one idle worker per CPU when the first driver connects. Ray Data's actors each
    # start their own process anyway, so on a small machine those idle workers only took CPU
    # from the actors' start (measured: ~2 CPU-seconds each).
    "RAY_prestart_worker_first_driver": "0",
    # The raylet connects to its own object store, which a thread of it starts at the same
    # moment; when the socket is not up yet, the retry came 1 s later (Ray's default), and
    # ray.init took ~1 s longer in 5 of 18 starts measured here. Retries every 0.1 s, with as
    # many more of them, keep the 10 s Ray allows for a connection.
    "RAY_raylet_client_connect_timeout_milliseconds": "100",
    "RAY_raylet_client_num_connect_attempts": "100",
}


@contextlib.contextmanager
def _own_sigterm() -> Iterator[None]:
    """``ray.init`` installs its own SIGTERM handler (``sys.exit``): the job then died without
    its summary or the hint to resume. The CLI's (SIGTERM as Ctrl-C) is put back after it."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGTERM, previous)


class _Cluster:
    """A Ray connection: a local instance of our own (stopped at the end) or ``--address``."""

    def __init__(self, ray: Any, options: RayOptions) -> None:
        self.ray = ray
        self.local = options.address is None
        if ray.is_initialized():  # a caller's own session (tests, notebooks): use it as it is
            self.owned = False
            return
        self.owned = True
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "logging_level": logging.ERROR,  # m3trt reports what matters in its own lines
            "log_to_driver": False,
        }
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        if self.local:
            # "local": a new instance even where RAY_ADDRESS is set or /tmp/ray names a running
            # (or dead) one; ray.init() without an address would join that, and refuse num_cpus.
            kwargs["address"] = "local"
            # A local instance talks to itself on loopback, and sends no usage statistics.
            kwargs["_node_ip_address"] = "127.0.0.1"
            for name, value in LOCAL_INSTANCE_ENV.items():  # the user's own settings win
                os.environ.setdefault(name, value)
            cores = os.cpu_count() or 1
            wanted = (options.num_workers or 0) * options.cpus_per_worker
            kwargs["num_cpus"] = max(cores, math.ceil(wanted))
            if options.object_store_mb:
                kwargs["object_store_memory"] = options.object_store_mb << 20
        else:
            kwargs["address"] = options.address
        # Ray gives its raylet a fixed 30 s to register; on an overloaded machine a local
        # instance can miss that once, so it gets a second try. A cluster address does not.
        for attempt in range(1 if options.address else 2):
            try:
                with _own_sigterm():
                    ray.init(**kwargs)
                return
            except Exception as exc:  # Ray raises plain Exception for a start-up timeout
                ray.shutdown()  # what the failed start left behind
                reason = " ".join(str(exc).split())
                if options.address:
                    raise M3Error(f"cannot join Ray at {options.address}: {reason}") from None
                if attempt == 1:
                    raise RuntimeError(f"cannot start a local Ray instance: {reason}") from None

    def workers(self, options: RayOptions) -> int:
        if options.num_workers:
            return options.num_workers
        cpus = self.ray.cluster_resources().get("CPU", 1.0)
        return max(1, int(cpus // options.cpus_per_worker))

    def close(self) -> None:
        if self.owned:
            if self.local:
                # A shortcut only: whatever it meets, Ray's own shutdown runs next, and the
                # job's outputs (all written by now) stand.
                with contextlib.suppress(Exception):
                    _stop_autoscaler_monitor(_ray_node())
            self.ray.shutdown()


def _ray_node() -> Any:
    """The node ``ray.init`` started in this process (Ray's private state: None if it moved)."""
    try:
        from ray._private import worker
    except ImportError:
        return None
    return getattr(worker, "_global_node", None)


def _stop_autoscaler_monitor(node: Any) -> None:
    """Kill a local instance's autoscaler monitor before ``ray.shutdown``.

    Ray's shutdown stops the GCS before the monitor; the monitor's SIGTERM handler then writes
    to the dead GCS and hangs until Ray kills it one second later: a second of every run
    (measured: shutdown 1.4 s, 0.6 s without it). A local instance has no nodes to scale, so
    the monitor holds nothing a graceful stop would save, and Ray would kill it anyway. Where
    Ray's private state is not as expected, nothing happens and Ray's shutdown stops it.
    """
    processes = getattr(node, "all_processes", None)
    if not isinstance(processes, dict):
        return
    for info in processes.get("monitor", []):
        process = getattr(info, "process", None)
        if process is None or not hasattr(process, "kill") or process.poll() is not None:
            continue
        process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=1)


def run_folder_ray(
    bundle_path: str | Path,
    paths: Iterable[str | Path],
    options: InferOptions,
    ray_options: RayOptions,
    load_kwargs: dict[str, Any] | None = None,
    reporter: Reporter = SILENT,
) -> Summary:
    """``run_folder``'s job on Ray Data: same rows, errors file, summary, resume and sidecars.

    ``load_kwargs`` go to ``Annotator.load`` in every actor (device, threads, threshold, top_k).
    Every input is checked on the driver before Ray starts, so a bad one fails fast.
    """
    ray_options.check()
    if options.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, not {options.batch_size}")
    load_kwargs = dict(load_kwargs or {})
    if load_kwargs.get("threads") is None:  # one engine per actor: as many threads as its CPUs
        load_kwargs["threads"] = max(1, int(ray_options.cpus_per_worker))
    bundle = load_bundle(bundle_path, verify=True)
    roots = check_roots(paths)
    fmt = format_for(options.output, options.fmt)
    ray = import_ray()
    decoding = Decoding(load_kwargs.get("threshold"), load_kwargs.get("top_k"))
    with guarded_outputs(options, roots, bundle.path, decoding) as claim:
        summary = _run_locked(
            ray, bundle, roots, fmt, options, ray_options, load_kwargs, reporter, claim
        )
        if options.summary_json is not None:  # under its lock, like every other output
            _write_summary(options.summary_json, summary)
    return summary


def _run_locked(
    ray: Any,
    bundle: Bundle,
    roots: list[Path],
    fmt: str,
    options: InferOptions,
    ray_options: RayOptions,
    load_kwargs: dict[str, Any],
    reporter: Reporter,
    claim: Claim,
) -> Summary:
    """The job itself, while ``guarded_outputs`` holds the output lock; Ray starts here."""
    tags_for = _tag_source(options)  # a tag manifest is read and checked here, once
    done = done_paths(options.output, fmt) if options.resume else set()
    summary = Summary(bundle.name, "", str(options.output), str(errors_path(options.output)))
    start = time.perf_counter()
    rows = _block_rows(options.batch_size, ray_options.block_rows)
    passed_over = PassedOver()
    walk = _Todo(iter_images(roots, options.extensions, passed_over), done)
    ahead = _WalkAhead(walk, rows)  # walks while Ray starts
    cluster = None
    report = None
    try:
        if not ray.is_initialized():  # seconds before the first row: say what is going on
            reporter.log(_starting(ray_options))
        cluster = _Cluster(ray, ray_options)  # Ray's start-up counts in the job's time
        writer = ResultWriter(
            options.output, fmt, resume=options.resume, overwrite=options.overwrite
        )
        with writer:
            claim.note_run()  # the file is this run's now (emptied by --overwrite, or resumed)
            if options.tags != "none" and not bundle.model.use_tags:
                reporter.log(
                    f"note: this model was trained without tags; --tags {options.tags} ignored"
                )
            report = _open_report(options, _ReportInfo(bundle))
            source: str | list[Any] = str(bundle.path.resolve())
            if ray_options.bundle_via == "object-store" or (
                ray_options.bundle_via == "auto" and not cluster.local
            ):
                source = [ray.put(_bundle_files(bundle))]
            _configure_data(ray)
            dataset, n_blocks = _dataset(ray, ahead.blocks())  # the walk's end: the bar's count
            summary.skipped = walk.skipped
            summary.passed_over, summary.first_passed_over = passed_over.count, passed_over.first
            check_resume_matches(options.output, done, walk.skipped)
            n_workers = min(cluster.workers(ray_options), max(1, n_blocks))  # idle otherwise
            summary.engine = _describe(cluster, n_workers, ray_options)
            reporter.log(summary.engine)
            sidecars = Sidecars(
                options.write_xmp, options.write_txt, options.overwrite, claim.protected, roots
            )
            job = _Job(ray, writer, sidecars)
            job.summary, job.report, job.image_size = summary, report, bundle.model.image_size
            actor_args = {
                "bundle": source,
                "load_kwargs": load_kwargs,
                "tags_for": tags_for,
                "max_pixels": options.max_pixels,
                "batch_size": options.batch_size,
                "decode_threads": max(1, math.ceil(ray_options.cpus_per_worker)),
                "cwd": os.getcwd(),
            }
            with reporter.task("annotate", walk.todo) as bar:
                if n_blocks:
                    job.run(dataset, walk.todo, rows, actor_args, n_workers, ray_options, bar)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        summary.elapsed_s = time.perf_counter() - start
        summary.images_per_s = summary.annotated / summary.elapsed_s if summary.elapsed_s else 0.0
        if report is not None:
            report.close(_report_summary(summary, _ReportInfo(bundle)))
        ahead.close()
        if cluster is not None:
            cluster.close()
    return summary


# Arrow bytes of file list the driver may hold before the dataset is built: ~1M files of 80-byte
# paths (a 30-byte path takes 45 bytes). A longer walk goes to Ray's object store as it comes.
IN_MEMORY_BYTES = 96 << 20


def _dataset(ray: Any, tables: Iterable[Any], in_memory: int = IN_MEMORY_BYTES) -> tuple[Any, int]:
    """The walk's blocks as a dataset, block for block, and how many there are (0: empty).

    Up to ``in_memory`` bytes of blocks, ``from_blocks`` reads each block's row count and schema
    here on the driver: ``from_arrow_refs`` runs a Ray task per block for them, and on a fresh
    local instance that first task starts a worker process (~2 CPU-seconds of imports, measured)
    that nothing else uses. A longer walk (a million files and more, where those seconds are
    nothing) is put into the object store block by block as the walk hands it over, so that the
    driver keeps one object reference a block, not the file list. ``from_arrow_refs`` is also the
    fallback for a Ray without ``from_blocks``.
    """
    tables = iter(tables)
    held: list[Any] = []
    size = 0
    for table in tables:
        held.append(table)
        size += table.nbytes
        if size > in_memory:
            break
    else:
        from_blocks = getattr(ray.data, "from_blocks", None)
        if not held:
            return None, 0
        if from_blocks is not None:
            return from_blocks(held), len(held)
    refs = [ray.put(table) for table in held]
    held.clear()
    refs.extend(ray.put(table) for table in tables)
    return ray.data.from_arrow_refs(refs), len(refs)


def _configure_data(ray: Any) -> None:
    """Ray Data settings of the job, set before its dataset exists (a dataset copies them)."""
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # rows come back in walk order
    ctx.enable_progress_bars = False  # m3trt draws its own
    ctx.print_on_execution_start = False


def _block_rows(batch_size: int, wanted: int) -> int:
    """Rows per Ray block: a whole number of engine batches, about ``wanted``."""
    return max(batch_size, wanted // batch_size * batch_size)


def _starting(ray_options: RayOptions) -> str:
    if ray_options.address is None:
        return "ray: starting a local Ray instance for this job (seconds; stopped at the end)"
    return f"ray: joining Ray at {ray_options.address}"


def _describe(cluster: _Cluster, n_workers: int, ray_options: RayOptions) -> str:
    where = "a local Ray instance" if cluster.local else f"Ray at {ray_options.address}"
    per = f"{ray_options.cpus_per_worker:g} CPU"
    if ray_options.gpus_per_worker:
        per += f" + {ray_options.gpus_per_worker:g} GPU"
    actors = "1 actor" if n_workers == 1 else f"{n_workers} actors"
    return f"ray: {actors} ({per} each) on {where}"


@dataclass
class _ReportInfo:
    """What the report needs from an annotator, without opening an engine on the driver."""

    bundle: Bundle


class _Todo:
    """The walk less what ``--resume`` found done, counting both as it goes."""

    def __init__(self, found: Iterable[Found], done: set[str]) -> None:
        self.found, self.done = found, done
        self.todo = self.skipped = 0

    def __iter__(self) -> Iterator[Found]:
        for item in self.found:
            if item.path in self.done:
                self.skipped += 1
            else:
                self.todo += 1
                yield item


class _Job:
    """The driver's side: runs the dataset and writes what comes back, in walk order."""

    def __init__(self, ray: Any, writer: ResultWriter, sidecars: Sidecars) -> None:
        self.ray = ray
        self.writer = writer
        self.sidecars = sidecars
        self.summary: Summary
        self.report: Any = None
        self.image_size = 0
        self.duplicates = 0

    def run(
        self,
        dataset: Any,
        n_rows: int,
        rows: int,
        actor_args: dict[str, Any],
        n_workers: int,
        ray_options: RayOptions,
        bar: Any,
    ) -> None:
        ray = self.ray
        mapped = dataset.map_batches(
            BatchAnnotator,
            fn_constructor_kwargs=actor_args,
            batch_size=rows,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=n_workers),
            num_cpus=ray_options.cpus_per_worker,
            num_gpus=ray_options.gpus_per_worker or None,
        )
        expected = 0
        last = "the first file"
        described = False
        for block in mapped.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
            if not described and (engine := next((str(e) for e in block["engine"] if e), "")):
                self.summary.engine += f"; each actor: {engine}"
                described = True
            done = 0
            for index, path, row, error in zip(
                block["index"], block["path"], block["row"], block["error"], strict=True
            ):
                if index < expected:  # a retried block whose first run also got through
                    self.duplicates += 1
                    continue
                if index > expected:
                    raise M3Error(
                        f"Ray returned {os.fsdecode(path)} (file {index}) right after {last} (file "
                        f"{expected - 1}): rows were lost; rerun with --resume"
                    )
                expected += 1
                done += 1
                last = os.fsdecode(path)
                self._write(last, str(row), os.fsdecode(error))
            self.writer.flush()
            bar.advance(done, failed=self.summary.failed)
            if ray_options.on_block is not None:
                ray_options.on_block(sorted({int(p) for p in block["pid"]}))
        if expected != n_rows:
            raise M3Error(
                f"Ray returned {expected} of {n_rows} rows (the last: {last}); rerun with --resume"
            )

    def _write(self, path: str, row: str, error: str) -> None:
        summary = self.summary
        if not row:
            self.writer.error(path, error or "unknown error")
            summary.failed += 1
            if self.report is not None:
                self.report.add_failure(path, error)
            return
        data = json.loads(row)
        annotation = Annotation(data["labels"], data["scores"], data["k"], data["quantity"])
        thumbnail = partial(self._thumbnail, path)
        record(path, annotation, self.writer, self.sidecars, summary, self.report, thumbnail)

    def _thumbnail(self, path: str) -> np.ndarray | None:
        """The report shows its first ``limit`` images: decode those again on the driver."""
        if self.report.count >= self.report.limit:
            return None
        try:
            return load_image(path, self.image_size)
        except (M3Error, OSError, ValueError):
            return None
