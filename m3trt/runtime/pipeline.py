"""The folder pipeline behind ``m3trt infer``: walk -> decode (threads) -> batch -> engine -> write.

Decoding costs as much CPU as INT8 inference (DESIGN §7), so worker threads decode ahead while the
engine runs (Pillow and ONNX Runtime both release the GIL). The look-ahead is a fixed window of
futures consumed in walk order: memory stays flat whatever the folder size, and the output order is
the walk order, run after run. Every bad file becomes one line in the errors file; the run goes on.

This module owns what every folder run shares (options, checks, the lock, resume, ``FolderRun``:
rows, errors, sidecars, report and counts); an engine that can run on CUDA streams gets the GPU
loop of ``gpu_pipeline`` instead of the CPU loop here, writing through the same ``FolderRun``.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, closing, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from m3trt.atomic import clear_leftover_files, write_text
from m3trt.data.images import (
    DEFAULT_DECODE_MEMORY,
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    DecodeBudget,
)
from m3trt.data.safe_open import os_reason
from m3trt.errors import InputError, M3Error, OutputFailure
from m3trt.progress import SILENT, Reporter
from m3trt.runtime.annotator import Annotation, Annotator, Decoding
from m3trt.runtime.decoding import (
    Decoded,
    _reason,
    batches,
    decode_ahead,
    decoder,
)
from m3trt.runtime.outputs import check_apart, check_outputs, checked_locks
from m3trt.runtime.profile import StageProfile
from m3trt.runtime.results import (
    ResultWriter,
    display_path,
    done_paths,
    errors_path,
    format_for,
    path_fields,
)
from m3trt.runtime.run_record import check_run, record_path
from m3trt.runtime.walk import Found, PassedOver, check_roots, iter_images


@dataclass
class InferOptions:
    output: Path
    fmt: str | None = None
    batch_size: int = 16
    workers: int | None = None
    extensions: frozenset[str] = IMAGE_EXTENSIONS
    tags: str = "none"
    tags_manifest: Path | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    write_xmp: bool = False
    write_txt: bool = False
    overwrite: bool = False
    resume: bool = False
    report: Path | None = None
    report_limit: int = 1000
    summary_json: Path | None = None
    decode_memory: int = DEFAULT_DECODE_MEMORY  # bytes, all decoding threads together
    decode: str = "auto"  # auto | cpu | gpu (GPU decoding needs the GPU pipeline)
    streams: int = 2  # CUDA streams of the GPU pipeline
    profile: bool = False  # per-stage times into the summary (and printed by the CLI)
    # What the run reads besides PATHS (the bundle, a key); --tags-manifest is added. No output
    # may be, or sit inside, one of them, even with --overwrite.
    inputs: tuple[Path, ...] = ()


@dataclass
class Summary:
    """What happened; ``--summary-json`` writes it as is."""

    bundle: str
    engine: str
    output: str
    errors_file: str
    annotated: int = 0
    failed: int = 0
    skipped: int = 0  # already in the output (--resume)
    sidecars_written: int = 0
    sidecars_kept: int = 0  # existed, not overwritten
    elapsed_s: float = 0.0
    images_per_s: float = 0.0
    interrupted: bool = False
    pipeline: dict[str, Any] | None = None  # the GPU pipeline's settings (absent on the CPU)
    profile: dict[str, Any] | None = None  # --profile
    passed_over: int = 0  # files in the folders without one of the extensions looked for
    first_passed_over: str | None = None  # for the message when no image was found

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["first_passed_over"]
        for key in ("pipeline", "profile"):
            if data[key] is None:
                del data[key]
        for key in ("bundle", "output", "errors_file"):  # as the results spell a path
            fields = path_fields(data[key])
            data[key] = fields["path"]
            if "path_bytes" in fields:  # not valid UTF-8: its exact bytes beside it
                data[f"{key}_bytes"] = fields["path_bytes"]
        return data


class Sidecars:
    """``--write-xmp`` / ``--write-txt``: never overwrite without ``--overwrite``, never
    replace one of the run's own outputs (``protected``), never write in a folder outside the
    PATHS (``roots``) that a link in them leads to; a failure is that image's error."""

    def __init__(
        self,
        xmp: bool,
        txt: bool,
        overwrite: bool,
        protected: Iterable[Path] = (),
        roots: Iterable[Path] | None = None,
    ) -> None:
        self.xmp, self.txt, self.overwrite = xmp, txt, overwrite
        self._protected = {_file_key(p) for p in protected}
        self._roots = None if roots is None else [_real_folder(r) for r in roots]

    def _check_inside(self, target: Path) -> None:
        """A link in a folder (``photos/evil -> ~/Documents``, as an unpacked archive may hold)
        let sidecars, and with ``--overwrite`` their replacements, land anywhere images are."""
        if self._roots is None:
            return
        folder = os.path.realpath(target.parent)
        if not any(
            folder == r or folder.startswith(r.rstrip(os.sep) + os.sep) for r in self._roots
        ):
            raise InputError(
                f"{target}: sidecar not written: a link leads its folder outside the PATHS "
                f"given (to {folder}); give that folder as a PATH to write there"
            )

    def write(self, path: str, annotation: Annotation) -> tuple[int, int]:
        """(written, kept) counts for one image; InputError names the sidecar that failed."""
        from m3trt.runtime import sidecars

        written = kept = 0
        jobs = []
        if self.xmp:
            jobs.append(
                (
                    sidecars.xmp_sidecar_path(Path(path)),
                    sidecars.render_xmp(annotation.labels, annotation.scores),
                )
            )
        if self.txt:
            jobs.append(
                (sidecars.txt_sidecar_path(Path(path)), sidecars.render_txt(annotation.labels))
            )
        for target, text in jobs:
            self._check_inside(target)
            if _file_key(target) in self._protected:
                raise InputError(
                    f"{target}: the sidecar would replace an output of this run; not written"
                )
            if sidecars.write_sidecar(target, text, overwrite=self.overwrite):
                written += 1
            else:
                kept += 1
        return written, kept


def _file_key(path: Path) -> str:
    return os.path.join(os.path.realpath(path.parent), path.name)


def _real_folder(root: Path) -> str:
    """The folder a PATH puts sidecars in: itself, or a file's own folder (as named)."""
    return os.path.realpath(root if root.is_dir() else root.parent)


def _no_tags(_path: Path) -> list[str]:
    return []


def _tag_source(options: InferOptions) -> Callable[[Path], list[str]]:
    from m3trt.runtime.tag_sources import tag_source

    return tag_source(options.tags, options.tags_manifest)


def run_folder(
    annotator: Annotator,
    paths: Iterable[str | Path],
    options: InferOptions,
    reporter: Reporter = SILENT,
) -> Summary:
    """Annotate every image under ``paths`` into ``options.output``; see the module docstring."""
    if options.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, not {options.batch_size}")
    roots = check_roots(paths)
    fmt = format_for(options.output, options.fmt)
    bundle = annotator.bundle.path
    with guarded_outputs(options, roots, bundle, annotator.decoding) as claim:
        gpu = _gpu_plan(annotator, options, reporter)
        summary = _run_locked(annotator, roots, fmt, options, reporter, claim, gpu)
        if options.summary_json is not None:  # under its lock, like every other output
            _write_summary(options.summary_json, summary)
    return summary


@contextmanager
def guarded_outputs(
    options: InferOptions, roots: list[Path], bundle: Path, decoding: Decoding
) -> Iterator[Claim]:
    """Every executor's gate to writing: the outputs checked (``check_outputs``: no input, no
    user file without ``--overwrite``; ``check_apart``: never ``bundle`` or another input file),
    locked for the run's whole length (results, report, summary), and checked again under the
    locks (another run may have written one in between); the run noted beside the results
    (``check_run``: a ``--resume`` with another bundle, ``decoding`` or ``--tags`` is refused).
    Yields a Claim: what a sidecar must never replace (the outputs and the locks), and the
    note of this run to write once the results file is this run's."""
    outputs = {
        "results": options.output,
        "errors": errors_path(options.output),
        "report": options.report,
        "summary": options.summary_json,
    }
    inputs = [bundle, *options.inputs, *filter(None, [options.tags_manifest])]
    options_of = {"-o": options.output, "-o (its errors file)": outputs["errors"]}
    options_of |= {"--report": options.report, "--summary-json": options.summary_json}

    def check() -> None:
        check_apart(options_of, inputs)
        check_outputs(
            outputs,
            list(roots),
            options.extensions,
            overwrite=options.overwrite,
            resume=options.resume,
        )

    # The report and summary are locked too: a run with another -o may name them.
    locked = {
        "-o": options.output,
        "-o (its errors file)": outputs["errors"],  # a.jsonl and a.csv share a.errors.jsonl
        "--report": options.report,
        "--summary-json": options.summary_json,
    }
    with checked_locks(locked, check) as locks:
        for path in filter(None, (options.report, options.summary_json)):
            clear_leftover_files(path)  # a killed run's temp files (SIGKILL: no cleanup ran)
        row_options = {"top_k": decoding.top_k, "threshold": decoding.threshold}
        note = check_run(
            options.output, bundle, row_options | {"tags": options.tags}, resume=options.resume
        )
        record = record_path(options.output)
        yield Claim([p for p in outputs.values() if p is not None] + locks + [record], note)


@dataclass
class Claim:
    """What ``guarded_outputs`` gives a run: the files a sidecar must never replace, and the
    run record's note, to write once the results writer has the file (``check_run``)."""

    protected: list[Path]
    note_run: Callable[[], None]


def _gpu_plan(annotator: Annotator, options: InferOptions, reporter: Reporter) -> Any:
    """The GPU pipeline's plan when the engine runs on CUDA streams (or ``--decode gpu`` asks
    for it), else None: the CPU loop, exactly as before, with nothing GPU imported."""
    if options.decode not in ("auto", "cpu", "gpu"):
        raise InputError(f"--decode {options.decode!r}: use auto, cpu or gpu")
    if options.decode != "gpu" and not annotator.engine.supports_streams:
        return None
    from m3trt.runtime.gpu_pipeline import plan_gpu

    return plan_gpu(annotator, options, reporter)


@dataclass
class FolderRun:
    """What a run writes and counts, shared by the CPU loop and the GPU pipeline: the same rows,
    error lines, sidecars, report cards and summary whichever loop produced the outputs."""

    annotator: Annotator
    writer: ResultWriter
    sidecars: Sidecars
    summary: Summary
    report: Any
    bar: Any
    profile: StageProfile | None = None

    def fail(self, path: str, reason: str) -> None:
        _fail(path, reason, self.writer, self.summary, self.report)

    def timing(self, stage: str) -> AbstractContextManager[None]:
        return self.profile.time(stage) if self.profile is not None else nullcontext()

    def write_batch(
        self, paths: Sequence[str], images: Sequence[np.ndarray], outputs: dict[str, np.ndarray]
    ) -> None:
        """One batch's annotations: sidecars (a failure is that image's error), rows, report."""
        annotations = self.annotator.decode(outputs)
        for path, image, annotation in zip(paths, images, annotations, strict=True):
            record(path, annotation, self.writer, self.sidecars, self.summary, self.report, image)

    def end_batch(self, count: int) -> None:
        """The batch reaches the disk (one synced write per file) and the progress bar."""
        self.writer.flush()
        self.bar.advance(count, failed=self.summary.failed)


def _run_locked(
    annotator: Annotator,
    roots: list[Path],
    fmt: str,
    options: InferOptions,
    reporter: Reporter,
    claim: Claim,
    gpu: Any = None,
) -> Summary:
    tags_for = _tag_source(options)
    if options.tags != "none" and not annotator.uses_tags:
        reporter.log(f"note: this model was trained without tags; --tags {options.tags} ignored")
        tags_for = _no_tags
    # Validated before anything is changed: a file that is not m3trt's is refused untouched.
    done = done_paths(options.output, fmt) if options.resume else set()
    passed_over = PassedOver()
    total, skipped = _count(roots, options.extensions, done, passed_over)
    summary = Summary(
        annotator.bundle.name,
        annotator.description,
        str(options.output),
        str(errors_path(options.output)),
        passed_over=passed_over.count,
        first_passed_over=passed_over.first,
    )
    workers = options.workers or max(1, os.cpu_count() or 1)
    budget = DecodeBudget(options.decode_memory)
    profile = StageProfile(gpu=gpu is not None) if options.profile else None
    decode = decoder(annotator.image_size, options.max_pixels, tags_for, budget, profile)
    sidecars = Sidecars(
        options.write_xmp, options.write_txt, options.overwrite, claim.protected, roots
    )
    todo = (f for f in iter_images(roots, options.extensions) if f.path not in done)
    summary.skipped = skipped
    check_resume_matches(options.output, done, skipped)
    start = time.perf_counter()
    writer = ResultWriter(options.output, fmt, resume=options.resume, overwrite=options.overwrite)
    claim.note_run()  # the file is this run's now (emptied by --overwrite, or resumed)
    report = None
    try:
        with writer, reporter.task("annotate", total - summary.skipped) as bar:
            # in the block: a report that cannot be opened (a full disk) closes the writer, so
            # the results file it created, still empty, goes too
            report = _open_report(options, annotator)
            run = FolderRun(annotator, writer, sidecars, summary, report, bar, profile)
            if gpu is None:
                _cpu_loop(run, todo, decode, workers, options.batch_size)
            else:
                gpu.run(run, todo, decode, workers, tags_for)
    except KeyboardInterrupt:
        summary.interrupted = True
    except OSError as exc:  # inputs fail per image in decode(): this is an output (a full disk)
        raise _output_failure(exc, options.report or options.output) from None
    finally:
        summary.elapsed_s = time.perf_counter() - start
        summary.images_per_s = summary.annotated / summary.elapsed_s if summary.elapsed_s else 0.0
        if gpu is not None:
            summary.pipeline = gpu.describe()
        if profile is not None:
            summary.profile = profile.report(summary.elapsed_s, summary.annotated)
        if report is not None:
            try:
                report.close(_report_summary(summary, annotator))
            except OSError as exc:
                raise _output_failure(exc, report.path) from None
    return summary


def _cpu_loop(
    run: FolderRun,
    todo: Iterator[Found],
    decode: Callable[[Found], Decoded],
    workers: int,
    batch_size: int,
) -> None:
    """Decode ahead in threads, run each batch on the engine, write it: the CPU path. An engine
    sized for N runs at once (``Engine.parallel_runs``) computes N batches at once on as many
    threads, with one more queued while this thread writes; rows are still written batch by
    batch in walk order."""
    annotator = run.annotator
    runs = max(1, annotator.engine.parallel_runs)
    stream = decode_ahead(todo, decode, workers, window=(runs + 2) * batch_size + workers)
    # Each entry holds a batch's paths, its failures and its stacked images (in the future):
    # the decoded images themselves are dropped once stacked.
    in_flight: deque[tuple[list[str], list[Decoded], Future | None]] = deque()
    # The decoding generator is closed here, not left to the garbage collector: after an
    # interrupt or an engine error it sat in the traceback's reference cycle, and its pool's
    # shutdown (a thread join) then ran whenever a collection came, in whatever thread, once
    # inside a new thread's start-up while threading's own lock was held: a deadlock
    # (a later run in the same process hung for good).
    with closing(stream), ThreadPoolExecutor(runs, thread_name_prefix="m3trt-engine") as pool:
        try:
            for good, bad in batches(stream, batch_size):
                work = _submit(pool, run, good) if good else None
                in_flight.append(([item.path for item in good], bad, work))
                del good  # the stacked copy in ``work`` is all that is kept
                if len(in_flight) > runs:  # one queued: the engines never wait for this thread
                    _finish(run, *in_flight.popleft())
            while in_flight:
                _finish(run, *in_flight.popleft())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # an interrupt waits for <= N batches


def _submit(pool: ThreadPoolExecutor, run: FolderRun, good: list[Decoded]) -> Future:
    annotator = run.annotator
    images = np.stack([item.image for item in good])
    tags = annotator.encode_tags([item.tags for item in good]) if annotator.uses_tags else None

    def compute() -> tuple[np.ndarray, dict[str, np.ndarray]]:
        with run.timing("compute"):  # in the engine's thread: busy time, as for decoding
            return images, annotator.run(images, tags)

    return pool.submit(compute)


def _finish(run: FolderRun, paths: list[str], bad: list[Decoded], work: Future | None) -> None:
    """One batch, in walk order: its failures, then its rows."""
    for item in bad:
        run.fail(item.path, item.error or "unknown error")
    if work is not None:
        images, outputs = work.result()
        with run.timing("write"):
            run.write_batch(paths, images, outputs)
    with run.timing("write"):
        run.end_batch(len(paths) + len(bad))


def _output_failure(exc: OSError, fallback: Path) -> OutputFailure:
    where = os.fsdecode(exc.filename) if exc.filename else str(fallback)
    return OutputFailure(
        f"{where}: cannot write ({os_reason(exc)}); the results so far are valid: continue "
        "with --resume once it can be written"
    )


def record(
    path: str,
    annotation: Annotation,
    writer: ResultWriter,
    sidecars: Sidecars,
    summary: Summary,
    report: Any,
    thumbnail: np.ndarray | Callable[[], np.ndarray | None] | None,
) -> None:
    """One annotated image, for every executor: its sidecars (a failure is that image's error),
    its row, its counts and its report card (``thumbnail``, or a call that decodes one)."""
    if not annotation.finite:
        reason = "the model gave NaN or infinite scores (the bundle's weights are broken)"
        _fail(path, reason, writer, summary, report)
        return
    try:
        written, kept = sidecars.write(path, annotation)
    except (M3Error, OSError) as exc:  # that image's failure, never the run's end
        _fail(path, _reason(path, exc), writer, summary, report)
        return
    writer.write(annotation.to_json(path))
    summary.annotated += 1
    summary.sidecars_written += written
    summary.sidecars_kept += kept
    if report is not None:
        image = thumbnail() if callable(thumbnail) else thumbnail
        a = annotation
        report.add(display_path(path), a.labels, a.scores, a.k, a.quantity, image)


def _fail(path: str, reason: str, writer: ResultWriter, summary: Summary, report: Any) -> None:
    writer.error(path, reason)
    summary.failed += 1
    if report is not None:
        report.add_failure(display_path(path), reason)


def _write_summary(path: Path, summary: Summary) -> None:
    """``--summary-json``, replaced atomically (check_outputs has allowed it) through a unique
    temp name: a link planted at the fixed one it had was followed."""
    import json

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(summary.to_json(), indent=2) + "\n")
    except OSError as exc:
        raise OutputFailure(f"{path}: cannot write the summary ({os_reason(exc)})") from None


def check_resume_matches(output: Path, done: set[str], skipped: int) -> None:
    """Refuse a --resume that would skip none of the files its output already holds: the rows
    name files as the first run's walk spelled them (``./photos/a.jpg`` is not
    ``/data/photos/a.jpg``), and every image was annotated a second time beside them."""
    if not done or skipped:
        return
    raise InputError(
        f"{output}: none of the {len(done):,} files it holds is among these PATHS, so --resume "
        "would annotate each image again beside its first row; give PATHS as the first run did "
        "(its rows name them as that walk spelled them), or choose another -o"
    )


def _count(
    roots: list[Path], extensions: frozenset[str], done: set[str], passed_over: PassedOver
) -> tuple[int, int]:
    """(files found, files already done): one streaming pass, for the progress bar's ETA."""
    total = skipped = 0
    for found in iter_images(roots, extensions, passed_over):
        total += 1
        skipped += found.path in done
    return total, skipped


def _open_report(options: InferOptions, annotator: Annotator) -> Any:
    if options.report is None:
        return None
    from m3trt.runtime.report import ReportWriter

    return ReportWriter(
        options.report,
        title=f"m3trt annotations: {annotator.bundle.name}",
        limit=options.report_limit,
    )


def _report_summary(summary: Summary, annotator: Annotator) -> dict[str, Any]:
    return {
        "bundle": annotator.bundle.name,
        "precision": annotator.bundle.precision,
        "annotated": summary.annotated,
        "failed": summary.failed,
        "skipped": summary.skipped,
        "images_per_s": round(summary.images_per_s, 1),
        "elapsed_s": round(summary.elapsed_s, 1),
    }
