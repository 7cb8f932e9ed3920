"""The ``m3trt`` command line: parses options, calls the library, prints. No logic of its own.

User errors (``M3Error``) print one line and exit 2; unexpected failures exit 1 (``--verbose``
shows the traceback).
"""

from __future__ import annotations

import errno
import gc
import json
import math
import os
import signal
import stat
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import click

from m3trt import __version__
from m3trt.atomic import clear_leftovers
from m3trt.constants import MAX_CALL_BATCH, MAX_TRAIN_BATCH
from m3trt.errors import InputError, M3Error, OutputFailure, terminal_safe
from m3trt.progress import Reporter

EXIT_FAILURE = 1
EXIT_USAGE = 2


class FilePath(click.Path):
    """``click.Path`` that refuses an empty value: pathlib reads ``""`` as ``.``, so ``m3trt infer
    model.m3 "$PHOTOS"`` with the variable unset annotated the working folder, and ``-o ""``
    ended in a ValueError."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str | bytes) and not value:
            self.fail(
                "empty path (an unset shell variable?); give a file or folder name", param, ctx
            )
        return super().convert(value, param, ctx)


class ExistingPath(FilePath):
    """``FilePath(exists=True)`` that says "does not exist" only of a missing path: a looping
    link, a folder on the way that may not be entered or is a file gets its own reason."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(exists=True, **kw)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not (self.allow_dash and value in ("-", b"-")):
            try:
                os.stat(value)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    name = click.format_filename(value)
                    self.fail(f"{self.name.title()} {name!r}: {exc.strerror}.", param, ctx)
        return super().convert(value, param, ctx)


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that refuses NaN and infinity, which pass its comparisons: ``--max-drop
    nan`` turned the regression gate off (``drop > nan`` is never true)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


class M3Group(click.Group):
    """Turns exceptions into one-line messages and exit codes instead of tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        with _sigterm_as_interrupt():
            return self._invoke(ctx)

    def _invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except M3Error as exc:
            _fail(ctx, f"error: {exc}", EXIT_USAGE, exc)
        except OutputFailure as exc:
            _fail(ctx, f"error: {exc}", EXIT_FAILURE, exc)
        except ModuleNotFoundError as exc:
            from m3trt.installs import missing_module_message

            hint = missing_module_message(exc.name)  # an optional extra not installed here
            if hint is None:
                _fail(ctx, _unexpected(ctx, exc), EXIT_FAILURE, exc)
            _fail(ctx, f"error: {hint}", EXIT_USAGE, exc)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:  # a bug or an environment failure, not the user's input
            _fail(ctx, _unexpected(ctx, exc), EXIT_FAILURE, exc)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``timeout``, ``docker stop``, systemd) stops a command as Ctrl-C does, with its
    cleanup: locks released, temp files and build folders removed, the partial report and
    summary written. Python's default for it is to die at once and leave all of them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _unexpected(ctx: click.Context, exc: BaseException) -> str:
    """A bug's one line; the advice to rerun with --verbose only where it was not given."""
    hint = "" if (ctx.obj or {}).get("verbose") else " (rerun with --verbose)"
    if isinstance(exc, OSError) and exc.strerror:  # a full disk in a copy: the files, in words
        names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
        return f"error: {' -> '.join(names) + ': ' if names else ''}{exc.strerror}{hint}"
    return f"error: {type(exc).__name__}: {exc}{hint}"


def _fail(ctx: click.Context, message: str, code: int, exc: BaseException) -> None:
    if (ctx.obj or {}).get("verbose"):
        traceback.print_exception(exc)
    click.echo(terminal_safe(message), err=True)
    ctx.exit(code)


def _reporter(ctx: click.Context) -> Reporter:
    return Reporter(quiet=ctx.obj.get("quiet", False))


def _set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(dict)
        ctx.obj["quiet"] = True


def quiet_option(command: Any) -> Any:
    """``-q/--quiet`` after the subcommand too (``m3trt infer ... --quiet``), as users type it."""
    return click.option(
        "--quiet",
        "-q",
        is_flag=True,
        expose_value=False,
        callback=_set_quiet,
        help="No progress bars or chatter; errors still print.",
    )(command)


def _set_verbose(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(dict)
        ctx.obj["verbose"] = True


def _global_options_everywhere(group: click.Group) -> None:
    """``-q`` and ``-v`` after any subcommand too (``m3trt doctor -q`` was "No such option",
    and an error's advice to rerun with --verbose failed where it was typed after it)."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            _global_options_everywhere(command)
            continue
        names = {p.name for p in command.params}
        if "quiet" not in names:
            quiet_option(command)
        if "verbose" not in names:
            click.option(
                "--verbose",
                "-v",
                is_flag=True,
                expose_value=False,
                callback=_set_verbose,
                help="Show tracebacks on errors.",
            )(command)


def verify_key_option(command: Any) -> Any:
    """``--verify-key pub.pem`` (or ``M3TRT_VERIFY_KEY``): refuse unsigned or wrongly signed
    bundles (README, "signed bundles")."""
    return click.option(
        "--verify-key",
        type=FilePath(dir_okay=False, path_type=Path),
        envvar="M3TRT_VERIFY_KEY",
        help="Public key (PEM): refuse a bundle not signed by it [env: M3TRT_VERIFY_KEY].",
    )(command)


def _verify(bundle: Path, key: Path | None) -> None:
    if key is not None:
        from m3trt.runtime.signing import verify_bundle

        verify_bundle(bundle, key)


def _within_pillow(param: click.Parameter, value: int) -> int:
    from m3trt.data.images import pillow_pixel_limit

    limit = pillow_pixel_limit()
    if limit is not None and value > limit:
        raise click.BadParameter(
            f"{value:,} is above {limit:,} pixels, the most the image decoder (Pillow) opens",
            param=param,
        )
    return value


def _max_pixels_option(default: int) -> Callable[[Any], Any]:
    """``--max-pixels`` as infer and serve take it: at most what Pillow opens."""
    return click.option(
        "--max-pixels",
        default=default,
        show_default=True,
        type=click.IntRange(1),
        callback=lambda _c, p, v: _within_pillow(p, v),
        help="Refuse larger images (decompression bombs); read from the header.",
    )


def _finite(_ctx: click.Context, param: click.Parameter, value: float) -> float:
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value}: give a finite number of seconds", param=param)
    return value


def _write_json(path: Path, data: Any) -> None:
    from m3trt.atomic import write_json

    write_json(path, data)


# A checkpoint folder's own entries (m3trt.train.checkpoint's names; that module imports torch):
# an output may sit beside them (``export -o ckpt/model.onnx``), never replace one.
CHECKPOINT_ENTRIES = ("config.json", "model.safetensors", "last")


def _model_files(model: Path) -> tuple[Path, ...]:
    """What an output must leave whole: a bundle entirely (a file added to it breaks its
    signature), a checkpoint's own entries."""
    if model.name == "bundle.json":
        return (model.parent,)
    if (model / "bundle.json").exists():
        return (model,)
    return tuple(model / name for name in CHECKPOINT_ENTRIES)


def _manifest_files(data: Path) -> tuple[Path, Path]:
    """A manifest and the labels.txt read beside it; for a folder, the manifest.jsonl in it (a
    folder of images holds neither, and an output may then sit beside its images)."""
    from m3trt.data.manifest import LABELS_FILE

    if data.is_dir():
        return data / "manifest.jsonl", data / LABELS_FILE
    return data, data.parent / LABELS_FILE


def _claim(
    ctx: click.Context,
    outputs: dict[str, Path | None],
    overwrite: bool,
    inputs: tuple[Path, ...] = (),
) -> None:
    """Check the command's output files (none may be, or be inside, one of ``inputs``) and lock
    them until it ends (before its long run)."""
    from m3trt.runtime.outputs import claimed_files

    ctx.with_resource(claimed_files(outputs, overwrite=overwrite, inputs=inputs))


def _lock(
    ctx: click.Context, output: Path, option: str, check: Callable[[], None] = lambda: None
) -> None:
    """Hold ``output``'s lock (a file or a folder) until the command ends: a second run on it
    is refused at its start instead of mixing its files with the first one's. ``check`` (what
    the run may replace) runs before the lock and again under it."""
    from m3trt.runtime.outputs import checked_locks

    ctx.with_resource(checked_locks({option: output}, check))


_ENGINE_OPTION = dict(
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "onnxruntime", "openvino", "tensorrt"]),
    help="Engine kind: auto uses the one the build measured fastest that is installed here.",
)


@click.group(cls=M3Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="m3trt")
@click.option(
    "--quiet", "-q", is_flag=True, help="No progress bars or chatter; errors still print."
)
@click.option("--verbose", "-v", is_flag=True, help="Show tracebacks on errors.")
@click.pass_context
def main(ctx: click.Context, quiet: bool, verbose: bool) -> None:
    """m3trt: multi-modal multi-scale image annotation, from training to fast engines."""
    ctx.ensure_object(dict)
    ctx.obj.update(quiet=quiet, verbose=verbose)


# ----------------------------------------------------------------------------------------- data
@main.group(cls=M3Group)
def data() -> None:
    """Make or import datasets (JSONL manifests)."""


@data.command("synth")
@click.argument("out", type=FilePath(file_okay=False, path_type=Path))
@click.option(
    "--n",
    "n",
    default=2000,
    show_default=True,
    type=click.IntRange(20, 1_000_000),
    help="Number of images.",
)
@click.option(
    "--size",
    default=128,
    show_default=True,
    type=click.IntRange(32, 4096),
    help="Image side in pixels.",
)
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0))
@click.option(
    "--regime",
    type=click.Choice(["default", "easy-partial", "digits-partial"]),
    default="default",
    show_default=True,
    help="Preset data regime; the options below override its knobs.",
)
@click.option(
    "--min-object-size",
    type=FiniteFloatRange(0, 1, min_open=True),
    help="Smallest object extent, fraction of the side [0.05].",
)
@click.option(
    "--max-object-size",
    type=FiniteFloatRange(0, 1, min_open=True),
    help="Largest object extent, fraction of the side [0.6].",
)
@click.option("--tag-recall", type=FiniteFloatRange(0, 1), help="P(a true label is tagged) [0.55].")
@click.option(
    "--misleading-tags",
    type=FiniteFloatRange(0, 1),
    help="P(an image has a wrong-label tag) [0.1].",
)
@click.option(
    "--untagged", type=FiniteFloatRange(0, 1), help="P(an image's tags are all removed) [0.11]."
)
@click.option(
    "--splits",
    default="0.7,0.15,0.15",
    show_default=True,
    help="Train,val,test fractions (a bigger test split gives steadier ablation figures).",
)
@click.option("--overwrite", is_flag=True, help="Write into an OUT folder that is not empty.")
@quiet_option
@click.pass_context
def data_synth(
    ctx: click.Context,
    out: Path,
    n: int,
    size: int,
    seed: int,
    regime: str,
    splits: str,
    overwrite: bool,
    **knobs: Any,
) -> None:
    """Write a synthetic multi-label dataset with noisy user tags to OUT."""
    from m3trt.data.synth import REGIMES, generate

    _lock(ctx, out, "OUT", partial(_check_synth_out, out, overwrite))
    reporter = _reporter(ctx)
    try:
        try:
            fractions = tuple(float(f) for f in splits.split(","))
        except ValueError:
            raise click.BadParameter(
                f"{splits!r}: give three fractions, e.g. 0.7,0.15,0.15", param_hint="'--splits'"
            ) from None
        params = REGIMES[regime].with_overrides(
            min_size=knobs["min_object_size"],
            max_size=knobs["max_object_size"],
            tag_recall=knobs["tag_recall"],
            misleading=knobs["misleading_tags"],
            untagged=knobs["untagged"],
        )
        with reporter.task("synth", n) as bar:
            summary = generate(
                out,
                n=n,
                size=size,
                seed=seed,
                splits=fractions,
                params=params,
                progress=lambda _i: bar.advance(),
            )
    except ValueError as exc:  # what the options' own ranges cannot say (min <= max, splits)
        raise M3Error(f"data synth: {exc}") from None
    splits = ", ".join(f"{k} {v}" for k, v in summary.splits.items())
    click.echo(terminal_safe(f"wrote {summary.manifest}: {summary.n} images ({splits})"))


def _check_synth_out(out: Path, overwrite: bool) -> None:
    _check_folder_out(out, "OUT")
    if out.exists() and not overwrite and any(out.iterdir()):
        raise M3Error(f"{out}: exists and is not an empty folder; use --overwrite or another OUT")


def _check_folder_out(out: Path, option: str = "-o") -> None:
    if out.is_symlink() and not out.exists():  # mkdir says only "File exists"
        raise M3Error(f"{out}: is a dangling symbolic link; choose another {option}")
    if out.exists() and not out.is_dir():  # a link to a folder is fine
        raise M3Error(f"{out}: exists and is not a folder; choose another {option}")


def _claim_import(ctx: click.Context, out: Path, overwrite: bool) -> None:
    """The manifest and labels.txt an import writes: a user's files are kept unless told."""
    from m3trt.data.importers.common import manifest_path
    from m3trt.data.manifest import LABELS_FILE
    from m3trt.runtime.outputs import check_new_files

    manifest = manifest_path(out)
    files = {"-o": manifest, "labels file": manifest.parent / LABELS_FILE}
    if manifest.parent == out:  # the folder's lock, which `data synth` takes too: the two
        _lock(ctx, out, "-o", partial(_check_folder_out, out))  # replaced each other's files
    # one lock for the pair: the manifest names its labels
    _lock(ctx, manifest, "-o", partial(check_new_files, files, overwrite=overwrite))


_IMPORT_OVERWRITE = click.option(
    "--overwrite", is_flag=True, help="Replace an existing manifest.jsonl and labels.txt."
)


@data.command("import-nuswide")
@click.argument("root", type=ExistingPath(file_okay=False, path_type=Path))
@click.option("-o", "--out", required=True, type=FilePath(path_type=Path), help="Output folder.")
@click.option("--images", type=FilePath(path_type=Path), help="Image folder (default ROOT/Flickr).")
@_IMPORT_OVERWRITE
@quiet_option
@click.pass_context
def data_import_nuswide(
    ctx: click.Context, root: Path, out: Path, images: Path | None, overwrite: bool
) -> None:
    """Write a manifest from the official NUS-WIDE layout under ROOT."""
    from m3trt.data.importers import import_nuswide

    _claim_import(ctx, out, overwrite)
    with _reporter(ctx).task("import", None) as bar:
        summary = import_nuswide(root, out, image_dir=images, progress=lambda _i: bar.advance())
    _print_import(summary)


@data.command("import-coco")
@click.argument("instances", type=ExistingPath(dir_okay=False, path_type=Path))
@click.option("-o", "--out", required=True, type=FilePath(path_type=Path), help="Output folder.")
@click.option(
    "--captions",
    type=ExistingPath(dir_okay=False, path_type=Path),
    help="COCO captions JSON: caption words become user tags.",
)
@click.option("--images", type=FilePath(path_type=Path), help="Image folder.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), help="Split for every image.")
@_IMPORT_OVERWRITE
@quiet_option
@click.pass_context
def data_import_coco(
    ctx: click.Context,
    instances: Path,
    out: Path,
    captions: Path | None,
    images: Path | None,
    split: str | None,
    overwrite: bool,
) -> None:
    """Write a manifest from a COCO instances JSON (labels = categories present)."""
    from m3trt.data.importers import import_coco

    _claim_import(ctx, out, overwrite)
    with _reporter(ctx).task("import", None) as bar:
        summary = import_coco(
            instances,
            out,
            captions_json=captions,
            image_dir=images,
            split=split,
            progress=lambda _i: bar.advance(),
        )
    _print_import(summary)


def _print_import(summary: Any) -> None:
    click.echo(terminal_safe(f"wrote {summary.describe()}"))


# ---------------------------------------------------------------------------------------- train
@main.command("train")
@click.argument("manifest", type=FilePath(path_type=Path))
@click.option(
    "-o",
    "--out",
    required=True,
    type=FilePath(file_okay=False, path_type=Path),
    help="Checkpoint folder to write.",
)
@click.option(
    "--backbone",
    type=click.Choice(["resnet18", "resnet34", "resnet50", "resnet101"]),
    default="resnet18",
    show_default=True,
)
@click.option("--image-size", default=224, show_default=True, type=click.IntRange(32, 1024))
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(1))
@click.option(
    "--batch-size", default=32, show_default=True, type=click.IntRange(2, MAX_TRAIN_BATCH)
)
@click.option("--lr", default=1e-3, show_default=True, type=FiniteFloatRange(0, min_open=True))
@click.option("--weight-decay", default=1e-4, show_default=True, type=FiniteFloatRange(0))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1))
@click.option("--no-tags", is_flag=True, help="Visual-only ablation: no tag branch.")
@click.option("--single-scale", is_flag=True, help="Ablation: no fusion branch.")
@click.option("--no-quantity-head", is_flag=True, help="Ablation: no label-quantity head.")
@click.option(
    "--quantity-weight",
    default=1.0,
    show_default=True,
    type=FiniteFloatRange(0),
    help="lambda of the count loss.",
)
@click.option("--tag-min-count", default=2, show_default=True, type=click.IntRange(1))
@click.option("--tag-max-size", default=1000, show_default=True, type=click.IntRange(1))
@click.option("--tag-hidden", default=2048, show_default=True, type=click.IntRange(1))
@click.option(
    "--visual-dim", type=click.IntRange(1), help="Visual feature width (default 512/2048)."
)
@click.option(
    "--backbone-weights",
    type=FilePath(path_type=Path),
    help="torchvision-format ResNet state_dict (.pth) to start from.",
)
@click.option(
    "--tag-drop-all",
    default=0.3,
    show_default=True,
    type=FiniteFloatRange(0, 1),
    help="P(all tags of a training sample are zeroed).",
)
@click.option(
    "--tag-drop-each",
    default=0.0,
    show_default=True,
    type=FiniteFloatRange(0, 1, max_open=True),
    help="P(each tag of a training sample is removed): simulates incomplete tags.",
)
@click.option(
    "--aux-visual-weight",
    default=1.0,
    show_default=True,
    type=FiniteFloatRange(0),
    help="Weight of a training-only image-only classification loss (not exported); 0 turns it "
    "off (the recipe before issue 15).",
)
@click.option(
    "--aux-tags-weight",
    default=0.0,
    show_default=True,
    type=FiniteFloatRange(0),
    help="Weight of a training-only tags-only classification loss (not exported).",
)
@click.option(
    "--visual-first-epochs",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="Train with tags zeroed for the first N epochs, then jointly.",
)
@click.option(
    "--tag-skip/--no-tag-skip",
    default=True,
    show_default=True,
    help="A direct linear tag -> label path beside the tag MLP (part of the exported model).",
)
@click.option(
    "--tag-skip-lr-mult",
    default=50.0,
    show_default=True,
    type=FiniteFloatRange(0, min_open=True),
    help="Learning rate of the tag -> label path, as a multiple of --lr.",
)
@click.option(
    "--decision-threshold",
    default="val",
    show_default=True,
    help="How k is decided: val (fit a score threshold on the val split: an image gets the "
    "labels scoring at least that, up to K_max, possibly none), none (k = the quantity head's "
    "rounded count, the paper's decision) or a fixed threshold in (0, 1).",
)
@click.option(
    "--calibrate-quantity/--no-calibrate-quantity",
    default=False,
    show_default=True,
    help="Fit the quantity head's scale and shift for exact counts on the val split.",
)
@click.option(
    "--augment-shift",
    default=0.0,
    show_default=True,
    type=FiniteFloatRange(0, 0.5),
    help="Random translation of training images, up to this fraction of the side (0: flips only).",
)
@click.option(
    "--late-fusion/--no-late-fusion",
    default=True,
    show_default=True,
    help="After training, refit on the val split how much the tags, the image and the joint "
    "model are trusted (folded into the exported weights; needs --tag-skip).",
)
@click.option("--resume", is_flag=True, help="Continue an interrupted run in the same -o folder.")
@click.option(
    "--threads",
    type=click.IntRange(1, 256),
    help="CPU threads [default: cores]; fix it for bit-identical runs across machines.",
)
@quiet_option
@click.pass_context
def train_cmd(ctx: click.Context, manifest: Path, out: Path, **kw: Any) -> None:
    """Train an M3 model on MANIFEST and keep the best checkpoint in OUT."""
    from m3trt.train.loop import TrainOptions, parse_decision_threshold, train

    options = TrainOptions(
        backbone=kw["backbone"],
        image_size=kw["image_size"],
        epochs=kw["epochs"],
        batch_size=kw["batch_size"],
        lr=kw["lr"],
        weight_decay=kw["weight_decay"],
        seed=kw["seed"],
        use_tags=not kw["no_tags"],
        multi_scale=not kw["single_scale"],
        quantity_head=not kw["no_quantity_head"],
        quantity_weight=kw["quantity_weight"],
        tag_min_count=kw["tag_min_count"],
        tag_max_size=kw["tag_max_size"],
        tag_hidden=kw["tag_hidden"],
        visual_dim=kw["visual_dim"],
        backbone_weights=str(kw["backbone_weights"]) if kw["backbone_weights"] else None,
        threads=kw["threads"],
        tag_drop_all=kw["tag_drop_all"],
        tag_drop_each=kw["tag_drop_each"],
        aux_visual_weight=kw["aux_visual_weight"],
        aux_tags_weight=kw["aux_tags_weight"],
        visual_first_epochs=kw["visual_first_epochs"],
        calibrate_quantity=kw["calibrate_quantity"],
        tag_skip=kw["tag_skip"],
        tag_skip_lr_mult=kw["tag_skip_lr_mult"],
        decision_threshold=parse_decision_threshold(kw["decision_threshold"]),
        augment_shift=kw["augment_shift"],
        late_fusion=kw["late_fusion"],
    )
    _lock(ctx, out, "-o", partial(_check_folder_out, out))
    result = train(
        manifest,
        out,
        options,
        resume=kw["resume"],
        explicit=_given_train_options(ctx, kw),
        reporter=_reporter(ctx),
    )
    skipped = result.counts.get("unlabelled_skipped", 0)
    failed = result.counts.get("failed_images", 0)
    click.echo(
        terminal_safe(
            f"best epoch {result.best_epoch}: val mAP {100 * result.best_val['mAP']:.1f} "
            "(the checkpoint as saved, after the steps fitted on val); "
            f"{result.counts['train']} train / {result.counts['val']} val images, "
            f"{skipped} unlabelled skipped, {failed} could not be decoded; "
            f"checkpoint in {result.checkpoint}"
        )
    )


# CLI flags whose TrainOptions field has another name (and the opposite sense)
_TRAIN_FIELDS = {"no_tags": "use_tags", "single_scale": "multi_scale"}
_TRAIN_FIELDS["no_quantity_head"] = "quantity_head"


def _given_train_options(ctx: click.Context, kw: dict[str, Any]) -> set[str]:
    """The options typed on the command line (not left at their defaults): ``--resume`` refuses
    those that differ from the run's saved ones. ``--threads`` changes no result, so it may."""
    given = {
        _TRAIN_FIELDS.get(name, name)
        for name in kw
        if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)
    }
    return given - {"threads", "resume"}


# ----------------------------------------------------------------------------------------- eval
@main.command("eval")
@click.argument("model", type=FilePath(path_type=Path))
@click.argument("manifest", type=FilePath(path_type=Path))
@click.option(
    "--split", default="test", show_default=True, help="Split to score: train, val, test or all."
)
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, MAX_CALL_BATCH))
@click.option(
    "--threshold",
    default=0.5,
    show_default=True,
    type=FiniteFloatRange(0, 1),
    help="Score threshold of the 'threshold' decoding mode.",
)
@click.option(
    "--json",
    "json_path",
    type=FilePath(dir_okay=False, path_type=Path),
    help="Write the metrics as JSON.",
)
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    type=click.Choice(["auto", "cpu", "cuda"]),
    help="Bundles only: where the engine runs.",
)
@click.option("--engine", **_ENGINE_OPTION)
@click.option(
    "--atol",
    default=1e-2,
    show_default=True,
    type=FiniteFloatRange(0),
    help="Bundles only: absolute tolerance per output element vs the FP32 reference.",
)
@click.option(
    "--rtol",
    default=1e-2,
    show_default=True,
    type=FiniteFloatRange(0),
    help="Bundles only: relative tolerance per output element vs the FP32 reference.",
)
@click.option(
    "--baseline",
    type=FilePath(dir_okay=False, path_type=Path),
    help="An earlier --json: exit 1 if a figure dropped more than --max-drop.",
)
@click.option(
    "--max-drop",
    default=0.5,
    show_default=True,
    type=FiniteFloatRange(0),
    help="Allowed drop per figure, in metric points.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --json file.")
@verify_key_option
@quiet_option
@click.pass_context
def eval_cmd(
    ctx: click.Context,
    model: Path,
    manifest: Path,
    split: str,
    batch_size: int,
    threshold: float,
    json_path: Path | None,
    device: str,
    engine: str,
    atol: float,
    rtol: float,
    baseline: Path | None,
    max_drop: float,
    verify_key: Path | None,
    overwrite: bool,
) -> None:
    """Score MODEL (a checkpoint folder or a NAME.m3 bundle) on a MANIFEST split, in every
    decoding mode; a bundle is also compared with its FP32 reference."""
    from m3trt import metrics

    if split not in ("train", "val", "test", "all"):
        raise click.BadParameter("choose train, val, test or all", param_hint="--split")
    _claim(
        ctx, {"--json": json_path}, overwrite, (*_model_files(model), *_manifest_files(manifest))
    )
    # Read before the run: a bad baseline fails first, and --json may then replace it.
    reference = _load_baseline(baseline)
    if (model / "bundle.json").is_file() or model.name == "bundle.json":
        from m3trt.bench.evaluate import evaluate_bundle, format_agreement

        _verify(model, verify_key)
        result = evaluate_bundle(
            model,
            manifest,
            split=None if split == "all" else split,
            batch_size=batch_size,
            threshold=threshold,
            device=device,
            engine=engine,
            atol=atol,
            rtol=rtol,
            reporter=_reporter(ctx),
        )
        click.echo(metrics.format_table(result))
        click.echo(format_agreement(result["agreement"]))
        _echo_skipped(result)
        if json_path:
            _write_json(json_path, result)
        _accuracy_gate(ctx, result, baseline, reference, max_drop)
        return
    if verify_key is not None:
        raise M3Error(f"{model}: --verify-key checks bundles; this is not one (no bundle.json)")
    from m3trt.train.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(
        model,
        manifest,
        split=None if split == "all" else split,
        batch_size=batch_size,
        threshold=threshold,
        reporter=_reporter(ctx),
    )
    click.echo(metrics.format_table(result))
    _echo_skipped(result)
    if json_path:
        _write_json(json_path, result)
    _accuracy_gate(ctx, result, baseline, reference, max_drop)


def _echo_skipped(result: dict[str, Any]) -> None:
    """What was left out of the scores, with the first file that could not be read (all of
    them, up to 20, are in --json)."""
    unlabelled, failed = result.get("n_unlabelled_skipped", 0), result.get("n_failed_images", 0)
    if not (unlabelled or failed):
        return
    first = f" (first: {result['failed_images'][0]})" if result.get("failed_images") else ""
    line = f"skipped {unlabelled} unlabelled images, {failed} undecodable images{first}"
    click.echo(terminal_safe(line))


def _load_baseline(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    from m3trt.bench.regression import load_baseline

    return load_baseline(path)


def _accuracy_gate(
    ctx: click.Context,
    result: dict[str, Any],
    baseline: Path | None,
    reference: dict[str, Any] | None,
    max_drop: float,
) -> None:
    if reference is None:  # no --baseline
        return
    from m3trt.bench.regression import compare_accuracy, figures, missing_figures

    lines = compare_accuracy(result, reference, max_drop)
    for line in lines:
        click.echo(f"regression: {line}", err=True)
    if lines:
        ctx.exit(EXIT_FAILURE)
    missing = missing_figures(result, reference)
    compared = sum(1 for _ in figures(result)) - len(missing)
    click.echo(
        f"no regression against {baseline} ({compared} figures compared, max drop "
        f"{max_drop:g} points)",
        err=True,
    )
    if missing:
        click.echo(f"note: the baseline lacks {', '.join(missing)}: not compared", err=True)


# ------------------------------------------------------------------------------- export/build
@main.command("export")
@click.argument("checkpoint", type=FilePath(path_type=Path))
@click.option(
    "-o",
    "--out",
    required=True,
    type=FilePath(dir_okay=False, path_type=Path),
    help="The .onnx file to write.",
)
@click.option("--opset", default=18, show_default=True, type=click.IntRange(18, 23))
@click.option(
    "--json",
    "json_path",
    type=FilePath(dir_okay=False, path_type=Path),
    help="Write the export report (node counts, parity) as JSON.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing -o or --json file.")
@quiet_option
@click.pass_context
def export_cmd(
    ctx: click.Context,
    checkpoint: Path,
    out: Path,
    opset: int,
    json_path: Path | None,
    overwrite: bool,
) -> None:
    """Export CHECKPOINT to one fused, self-describing ONNX graph, verified against PyTorch."""
    _claim(ctx, {"-o": out, "--json": json_path}, overwrite, _model_files(checkpoint))
    from m3trt.export.onnx_export import export_checkpoint

    report = export_checkpoint(checkpoint, out, opset=opset, reporter=_reporter(ctx))
    click.echo(terminal_safe(report.summary()))
    if json_path:
        _write_json(json_path, report.to_json())


@main.command("calibrate")
@click.argument("model", type=ExistingPath(dir_okay=False, path_type=Path))
@click.option(
    "--data",
    required=True,
    type=ExistingPath(path_type=Path),
    help="A manifest (its train split is used) or a folder of images.",
)
@click.option(
    "-o",
    "--out",
    required=True,
    type=FilePath(dir_okay=False, path_type=Path),
    help="calibration.json to write (reused by build when it matches).",
)
@click.option(
    "--method",
    type=click.Choice(["entropy", "percentile", "minmax"]),
    default="percentile",
    show_default=True,
)
@click.option(
    "--count",
    default=256,
    show_default=True,
    type=click.IntRange(1),
    help="Calibration images to use (a seeded sample when there are more).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an -o that holds other ranges, or that is not a calibration cache.",
)
@quiet_option
@click.pass_context
def calibrate_cmd(
    ctx: click.Context,
    model: Path,
    data: Path,
    out: Path,
    method: str,
    count: int,
    overwrite: bool,
) -> None:
    """Compute activation ranges of MODEL.onnx from real images."""
    from m3trt.calibration.data import (
        MIN_CALIBRATION_IMAGES,
        load_calibration_images,
        require_images,
    )
    from m3trt.calibration.ranges import CalibrationSettings, StaleCache, calibrate
    from m3trt.runtime.graph_contract import check_source_graph, source_digest

    reporter = _reporter(ctx)
    inputs = (model, *_manifest_files(data))
    _lock(ctx, out, "-o", partial(_check_calibration_out, out, overwrite, inputs))
    info = check_source_graph(model)
    kw = dict(
        image_size=info.image_size,
        label_names=info.label_names,
        tag_vocab=info.tag_vocab,
        count=count,
    )
    images = load_calibration_images(data, **kw)
    require_images(images, MIN_CALIBRATION_IMAGES, "calibration")
    try:
        with reporter.task(f"calibrate ({method})", len(images)) as bar:
            _, hit = calibrate(
                model,
                images,
                CalibrationSettings(method=method),
                model_sha256=source_digest(model),  # its external data too
                cache_path=out,
                on_batch=bar.advance,
                replace=overwrite,
            )
    except StaleCache as exc:
        raise InputError(f"{exc}: replace them with --overwrite or choose another -o") from None
    state = "matching ranges already there" if hit else "ranges written"
    used = f" (splits: {', '.join(images.splits)})" if images.splits else ""
    click.echo(terminal_safe(f"{out}: {len(images)} images{used}, {method}: {state}"))
    if images.failed:  # missing, unreadable or undecodable records: named, never silently gone
        reason = images.failed[0][1]  # names its file
        line = f"skipped {len(images.failed)} images that could not be read (first: {reason})"
        click.echo(terminal_safe(line))


def _check_calibration_out(out: Path, overwrite: bool, inputs: tuple[Path, ...]) -> None:
    """``calibrate -o`` replaces only a calibration cache (and one of other ranges only with
    --overwrite): never a FIFO, a folder or another file that happens to sit there, and never
    one of its ``inputs``, even with --overwrite."""
    from m3trt.calibration.ranges import read_cache
    from m3trt.data.safe_open import file_kind
    from m3trt.runtime.outputs import check_apart

    check_apart({"-o": out}, inputs)

    try:
        mode = out.stat().st_mode
    except FileNotFoundError:
        if out.is_symlink():
            raise InputError(f"{out}: -o is a dangling symbolic link; choose another -o") from None
        return
    except OSError as exc:
        raise InputError(f"{out}: cannot check -o ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        raise InputError(f"{out}: -o exists and is {file_kind(mode)}; choose another -o")
    if overwrite:
        return
    try:
        read_cache(out, "-o")
    except InputError as exc:
        raise InputError(f"{exc}: replace it with --overwrite or choose another -o") from None


@main.command("build")
@click.argument("source", type=ExistingPath(path_type=Path))
@click.option(
    "-o",
    "--out",
    required=True,
    type=FilePath(path_type=Path),
    help="Bundle folder to write (NAME.m3).",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "int8", "auto"]),
    default="auto",
    show_default=True,
)
@click.option(
    "--target",
    type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]),
    default="auto",
    show_default=True,
    help="cpu: ONNX Runtime/OpenVINO; cuda: onnxruntime-gpu (FP32/FP16); tensorrt: TensorRT plans.",
)
@click.option(
    "--engine",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "onnxruntime", "openvino"]),
    help="CPU target: time only this engine kind (auto: every installed one, keep the fastest).",
)
@click.option(
    "--calib",
    type=ExistingPath(path_type=Path),
    help="Calibration images: a manifest or a folder (needed for INT8).",
)
@click.option(
    "--val",
    type=ExistingPath(path_type=Path),
    help="Held-out images for the accuracy check (default: the manifest's val split).",
)
@click.option("--calib-count", default=256, show_default=True, type=click.IntRange(1))
@click.option(
    "--calib-method",
    type=click.Choice(["entropy", "percentile", "minmax"]),
    default="percentile",
    show_default=True,
)
@click.option(
    "--calib-cache",
    type=FilePath(dir_okay=False, path_type=Path),
    help="A calibration.json from `m3trt calibrate`, reused when it matches.",
)
@click.option(
    "--max-of1-drop",
    default=1.0,
    show_default=True,
    type=FiniteFloatRange(0),
    help="Accuracy budget: O-F1 points INT8 may lose against FP32.",
)
@click.option(
    "--max-disagreement",
    type=FiniteFloatRange(0, 100),
    help="Also limit the percentage of images whose label set may change.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle.")
@click.option(
    "--sign-key",
    type=FilePath(dir_okay=False, path_type=Path),
    help="Elliptic-curve private key (PEM): sign the bundle (OpenSSF model signing).",
)
@quiet_option
@click.pass_context
def build_cmd(ctx: click.Context, source: Path, out: Path, **kw: Any) -> None:
    """Build an engine bundle from SOURCE (a checkpoint folder or an exported .onnx)."""
    from m3trt.build.bundle import build_bundle, check_options
    from m3trt.build.options import BuildOptions
    from m3trt.calibration.guard import AccuracyBudget

    if kw["sign_key"] is not None:
        from m3trt.runtime.signing import check_signing_key

        check_signing_key(kw["sign_key"])  # before the build, not after it
    disagreement = kw["max_disagreement"]
    options = BuildOptions(
        precision=kw["precision"],
        target=kw["target"],
        engine=kw["engine"],
        calib=kw["calib"],
        val=kw["val"],
        calib_count=kw["calib_count"],
        calib_method=kw["calib_method"],
        calib_cache=kw["calib_cache"],
        budget=AccuracyBudget(
            max_of1_drop=kw["max_of1_drop"] / 100,
            max_disagreement=None if disagreement is None else disagreement / 100,
        ),
        overwrite=kw["overwrite"],
    )
    _lock(ctx, out, "-o", partial(check_options, out, options, source))
    clear_leftovers(out)  # a killed build's work and staging folders (hundreds of MB) beside it
    sign = None
    if kw["sign_key"] is not None:
        from m3trt.runtime.signing import sign_bundle

        sign = partial(sign_bundle, private_key=kw["sign_key"])  # before the bundle replaces out
    bundle = build_bundle(source, out, options, reporter=_reporter(ctx), before_swap=sign)
    if sign is not None:
        from m3trt.runtime.signing import SIGNATURE_FILE

        click.echo(terminal_safe(f"signed: {bundle.path / SIGNATURE_FILE}"), err=True)
    latency = bundle.latency
    speed = latency.get("speedup_vs_reference")
    versus = f" ({speed:.2f}x the FP32 reference)" if speed else ""
    ms = latency.get("engine_ms")
    timing = (
        f"{ms:.1f} ms per batch of {latency['batch_size']}{versus}"
        if ms is not None
        else "no GPU timing taken on this host"
    )
    click.echo(terminal_safe(f"built {bundle.path}: {bundle.target} {bundle.precision}, {timing}"))


@main.command("inspect")
@click.argument("bundle", type=FilePath(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print bundle.json (with the path).")
@click.option("--no-verify", is_flag=True, help="Skip hashing the artifacts.")
def inspect_cmd(bundle: Path, as_json: bool, no_verify: bool) -> None:
    """Show what is inside a bundle: model, artifacts, provenance, accuracy, latency."""
    from m3trt.runtime.bundle import load_bundle
    from m3trt.runtime.inspect_bundle import describe_bundle, inspect_json

    loaded = load_bundle(bundle, verify=not no_verify)
    if as_json:
        click.echo(json.dumps(inspect_json(loaded), indent=2))
    else:
        click.echo(describe_bundle(loaded))


@main.command("infer")
@click.argument("bundle", type=FilePath(path_type=Path))
@click.argument("paths", nargs=-1, required=True, type=FilePath(path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=FilePath(dir_okay=False, path_type=Path),
    help="Results file (JSONL; .csv or --format csv for CSV).",
)
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), help="Results format.")
@click.option(
    "--batch-size",
    default=16,
    show_default=True,
    type=click.IntRange(1, MAX_CALL_BATCH),
    help="Images per engine call.",
)
@click.option(
    "--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"])
)
@click.option("--engine", **_ENGINE_OPTION)
@click.option("--workers", type=click.IntRange(1, 64), help="Decoding threads [default: cores].")
@click.option(
    "--threads",
    type=click.IntRange(1, 256),
    help="Engine threads per batch [default: cores, or cores / --streams on a CPU].",
)
@click.option("--ext", help="Extensions to look for in folders, e.g. jpg,png [default: all].")
@click.option(
    "--tags",
    "tag_kind",
    default="none",
    show_default=True,
    type=click.Choice(["none", "xmp", "sidecar", "manifest"]),
    help="User tags per image: embedded XMP/IPTC keywords, IMAGE.tags files, or a JSONL file.",
)
@click.option(
    "--tags-manifest",
    type=FilePath(dir_okay=False, path_type=Path),
    help="JSONL with {path, tags} per image (implies --tags manifest).",
)
@click.option("--threshold", type=FiniteFloatRange(0, 1), help="Keep labels scoring at least X.")
@click.option(
    "--top-k", type=click.IntRange(1), help="Keep the N best labels (with --threshold: at most N)."
)
@_max_pixels_option(100_000_000)
@click.option("--write-xmp", is_flag=True, help="Write IMAGE.xmp sidecars (labels as keywords).")
@click.option("--write-txt", is_flag=True, help="Write IMAGE.txt with comma-separated labels.")
@click.option("--overwrite", is_flag=True, help="Replace existing sidecars and results files.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run into the same -o.")
@click.option("--strict", is_flag=True, help="Exit 1 if any file failed.")
@click.option("--report", type=FilePath(dir_okay=False, path_type=Path), help="HTML contact sheet.")
@click.option(
    "--report-limit",
    default=1000,
    show_default=True,
    type=click.IntRange(1),
    help="Images shown in --report (all are counted).",
)
@click.option(
    "--summary-json",
    type=FilePath(dir_okay=False, path_type=Path),
    help="Write the run's counts, speed and engine as JSON.",
)
@click.option(
    "--decode-memory",
    default=1024,
    show_default=True,
    type=click.IntRange(64, 1 << 20),
    help="MiB of decoder memory all workers together may hold (large images wait their turn).",
)
@click.option(
    "--decode",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "cpu", "gpu"]),
    help="Where JPEGs are decoded on a GPU run: gpu = nvImageCodec (other formats and refused "
    "files still go to the CPU decoder); auto = the GPU when nvImageCodec works here.",
)
@click.option(
    "--streams",
    default=2,
    show_default=True,
    type=click.IntRange(1, 16),
    help="Batches computed at once: CUDA streams on a GPU (copies of one batch overlap another's "
    "compute); on a CPU, ONNX Runtime runs of one batch each.",
)
@click.option(
    "--profile",
    is_flag=True,
    help="Time each stage (read, decode, copy in, compute, copy out, write) and their overlap; "
    "printed at the end and written into --summary-json.",
)
@click.option(
    "--executor",
    default="local",
    show_default=True,
    type=click.Choice(["local", "ray"]),
    help="Run here, or on Ray Data (a local instance, or --address): pip install 'm3trt[ray]'.",
)
@click.option(
    "--address", help="Ray cluster to join (ray://HOST:10001, auto) [default: start one]."
)
@click.option(
    "--num-workers", type=click.IntRange(1), help="Ray actors [default: CPUs / per worker]."
)
@click.option(
    "--cpus-per-worker", default=1.0, show_default=True, type=FiniteFloatRange(0, min_open=True)
)
@click.option("--gpus-per-worker", default=0.0, show_default=True, type=FiniteFloatRange(0))
@click.option(
    "--bundle-via",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "path", "object-store"]),
    help="How Ray workers get the bundle: its path (shared storage) or Ray's object store "
    "(auto: path on a local instance).",
)
@verify_key_option
@quiet_option
@click.pass_context
def infer_cmd(ctx: click.Context, bundle: Path, paths: tuple[Path, ...], **kw: Any) -> None:
    """Annotate every image in PATHS (files or folders, recursively) with BUNDLE."""
    from m3trt.runtime.annotator import Annotator
    from m3trt.runtime.pipeline import InferOptions, run_folder
    from m3trt.runtime.walk import parse_extensions

    reporter = _reporter(ctx)
    tag_kind = "manifest" if kw["tags_manifest"] and kw["tag_kind"] == "none" else kw["tag_kind"]
    options = InferOptions(
        output=kw["output"],
        fmt=kw["fmt"],
        batch_size=kw["batch_size"],
        workers=kw["workers"],
        extensions=parse_extensions(kw["ext"]),
        tags=tag_kind,
        tags_manifest=kw["tags_manifest"],
        max_pixels=kw["max_pixels"],
        write_xmp=kw["write_xmp"],
        write_txt=kw["write_txt"],
        overwrite=kw["overwrite"],
        resume=kw["resume"],
        report=kw["report"],
        report_limit=kw["report_limit"],
        summary_json=kw["summary_json"],
        decode_memory=kw["decode_memory"] << 20,
        decode=kw["decode"],
        streams=kw["streams"],
        profile=kw["profile"],
        inputs=(kw["verify_key"],) if kw["verify_key"] else (),
    )
    _verify(bundle, kw["verify_key"])
    load_kwargs = {
        "device": kw["device"],
        "engine": kw["engine"],
        "threads": kw["threads"],
        "threshold": kw["threshold"],
        "top_k": kw["top_k"],
    }
    if kw["executor"] != "ray":
        given = [f"--{n.replace('_', '-')}" for n in RAY_ONLY if kw[n] != RAY_ONLY[n]]
        if given:
            raise click.UsageError(f"{', '.join(given)} only apply with --executor ray")
    if kw["executor"] == "ray":
        if kw["profile"] or kw["decode"] == "gpu":
            raise click.UsageError("--profile and --decode gpu apply to --executor local")
        summary = _infer_on_ray(bundle, paths, options, load_kwargs, kw, reporter)
    else:
        annotator = Annotator.load(bundle, **load_kwargs, runs=options.streams)
        reporter.log(annotator.description)
        summary = run_folder(annotator, paths, options, reporter)
    click.echo(_infer_line(summary), err=True)
    if getattr(summary, "profile", None):
        from m3trt.runtime.profile import profile_lines

        for line in profile_lines(summary.profile):
            click.echo(line, err=True)
    if summary.interrupted:
        click.echo("interrupted: continue with the same command plus --resume", err=True)
        ctx.exit(130)
    if summary.annotated == 0 and (summary.failed or not summary.skipped):
        click.echo(f"error: no image could be annotated{_passed_over(summary)}", err=True)
        ctx.exit(EXIT_FAILURE)
    if kw["strict"] and summary.failed:
        ctx.exit(EXIT_FAILURE)


RAY_ONLY = {
    "address": None,
    "num_workers": None,
    "cpus_per_worker": 1.0,
    "gpus_per_worker": 0.0,
    "bundle_via": "auto",
}


def _infer_on_ray(
    bundle: Path,
    paths: tuple[Path, ...],
    options: Any,
    load_kwargs: dict[str, Any],
    kw: dict[str, Any],
    reporter: Any,
) -> Any:
    from m3trt.runtime.ray_executor import RayOptions, run_folder_ray

    ray_options = RayOptions(
        address=kw["address"],
        num_workers=kw["num_workers"],
        cpus_per_worker=kw["cpus_per_worker"],
        gpus_per_worker=kw["gpus_per_worker"],
        bundle_via=kw["bundle_via"],
    )
    summary = run_folder_ray(bundle, paths, options, ray_options, load_kwargs, reporter)
    # Ray is stopped and the outputs are closed; what is left is the exit, where Python's last
    # collections walk every object of the modules Ray and Ray Data loaded (0.35-0.45 s on this
    # host, measured). Frozen objects are not walked; the process ends right after.
    gc.freeze()
    return summary


def _passed_over(summary: Any) -> str:
    """Why a run found no image, when files were there: their extensions."""
    if summary.failed or summary.skipped or not summary.passed_over:
        return ""
    from m3trt.runtime.results import display_path

    first = terminal_safe(display_path(summary.first_passed_over or ""))
    return (
        f": none of the {summary.passed_over} files in PATHS has an image extension (first: "
        f"{first}); --ext names the extensions to take"
    )


def _infer_line(summary: Any) -> str:
    parts = [
        f"annotated {summary.annotated}",
        f"failed {summary.failed}",
        f"skipped {summary.skipped} (already done)",
    ]
    line = ", ".join(parts) + f" in {summary.elapsed_s:.1f} s ({summary.images_per_s:.1f} img/s)"
    if summary.annotated or summary.skipped or Path(summary.output).exists():
        line += f" -> {summary.output}"
    else:  # a run that annotated nothing leaves no empty results file
        line += f" (no results, so no {summary.output})"
    if summary.failed:
        line += f"; errors in {summary.errors_file}"
    if summary.sidecars_kept:
        line += f"; {summary.sidecars_kept} existing sidecars kept (use --overwrite to replace)"
    return line


def _batch_sizes(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[int, ...]:
    usage = f"{value!r}: give integers from 1 to {MAX_CALL_BATCH}, comma-separated, e.g. 1,8,32"
    try:
        sizes = tuple(int(x) for x in value.split(","))  # "1,,2" is a typo, not two sizes
    except ValueError:
        raise click.BadParameter(usage) from None
    sizes = tuple(dict.fromkeys(sizes))  # "1,1" timed batch 1 twice into one ratio
    if not sizes or min(sizes) < 1 or max(sizes) > MAX_CALL_BATCH:
        raise click.BadParameter(usage)
    return sizes


def _reference(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.strip():  # "" measured the bundle alone, silently
        raise click.BadParameter("give torch, onnx-fp32 or a bundle's path (empty given)")
    return value


@main.command("bench")
@click.argument("bundle", type=FilePath(path_type=Path))
@click.option("--batch-sizes", default="1,8,32", show_default=True, callback=_batch_sizes)
@click.option(
    "--warmup",
    default=1.0,
    show_default=True,
    type=FiniteFloatRange(0, 86400),
    callback=_finite,
    help="Seconds.",
)
@click.option(
    "--duration",
    default=3.0,
    show_default=True,
    type=FiniteFloatRange(0, 86400),
    callback=_finite,
    help="Seconds timed (at most a day).",
)
@click.option(
    "--iterations",
    default=10,
    show_default=True,
    type=click.IntRange(1),
    help="At least this many timed runs per batch size.",
)
@click.option(
    "--folder",
    type=ExistingPath(file_okay=False, path_type=Path),
    help="Measure end to end over these images (decoding included).",
)
@click.option(
    "--against",
    callback=_reference,
    help="Reference in the same process: torch, onnx-fp32 or a bundle.",
)
@click.option(
    "--checkpoint",
    type=FilePath(file_okay=False, path_type=Path),
    help="The checkpoint for --against torch (default: the bundle's source).",
)
@click.option(
    "--device", default="cpu", show_default=True, type=click.Choice(["auto", "cpu", "cuda"])
)
@click.option("--engine", **_ENGINE_OPTION)
@click.option("--threads", type=click.IntRange(1, 256), help="Engine threads [default: cores].")
@click.option(
    "--transfers/--no-transfers",
    default=None,
    help="Also time host-to-device, compute and device-to-host apart [default: on for GPUs].",
)
@click.option("--json", "json_path", type=FilePath(dir_okay=False, path_type=Path))
@click.option(
    "--plot",
    type=FilePath(dir_okay=False, path_type=Path),
    help="Latency distributions and throughput against batch size, as .png, .svg or .pdf.",
)
@click.option(
    "--baseline",
    type=FilePath(dir_okay=False, path_type=Path),
    help="An earlier --json: exit 1 if a ratio fell by more than --max-slowdown.",
)
@click.option("--max-slowdown", default=1.10, show_default=True, type=FiniteFloatRange(1.0))
@click.option("--overwrite", is_flag=True, help="Replace an existing --json or --plot file.")
@quiet_option
@click.pass_context
def bench_cmd(ctx: click.Context, bundle: Path, **kw: Any) -> None:
    """Latency and throughput of BUNDLE per batch size, as trtexec reports them."""
    if kw["plot"]:
        from m3trt.bench.plot import check_plot_path

        check_plot_path(kw["plot"])
    _claim(ctx, {"--json": kw["json_path"], "--plot": kw["plot"]}, kw["overwrite"], (bundle,))
    from m3trt.bench.latency import BenchOptions, compare_speed, run_bench
    from m3trt.bench.report import format_bench

    options = BenchOptions(
        batch_sizes=kw["batch_sizes"],
        warmup_s=kw["warmup"],
        duration_s=kw["duration"],
        iterations=kw["iterations"],
        folder=kw["folder"],
        against=kw["against"],
        checkpoint=kw["checkpoint"],
        device=kw["device"],
        engine=kw["engine"],
        threads=kw["threads"],
        transfers=kw["transfers"],
    )
    baseline = None
    if kw["baseline"]:
        from m3trt.bench.regression import check_speed_baseline, load_baseline

        baseline = load_baseline(kw["baseline"], "speed")  # bad: fails before the long run
        check_speed_baseline(kw["baseline"], baseline, kw["against"], kw["batch_sizes"])
    report = run_bench(bundle, options, reporter=_reporter(ctx))
    click.echo(format_bench(report))
    if kw["json_path"]:
        _write_json(kw["json_path"], report)
    if kw["plot"]:
        from m3trt.bench.plot import plot_bench

        plot_bench(report, kw["plot"])
    if baseline is not None:
        lines = compare_speed(report, baseline, kw["max_slowdown"])
        for line in lines:
            click.echo(f"regression: {line}", err=True)
        if lines:
            ctx.exit(EXIT_FAILURE)
        click.echo(terminal_safe(f"no regression against {kw['baseline']}"), err=True)


# ---------------------------------------------------------------------------------------- serve
def _host(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not value.strip():  # "" listened on every interface, which nobody asks for by omission
        raise click.BadParameter("give an address: 127.0.0.1, or 0.0.0.0 for every interface")
    return value


@main.command("serve")
@click.argument("bundles", nargs=-1, required=True)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    callback=_host,
    help="Address to listen on (0.0.0.0 or :: for every interface).",
)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--max-batch-size",
    default=16,
    show_default=True,
    type=click.IntRange(1, 1024),
    help="Images per engine call.",
)
@click.option(
    "--max-queue-delay-ms",
    default=2.0,
    show_default=True,
    type=FiniteFloatRange(0, 1000),
    help="Longest a request is held for a batch to fill (only under load), ms.",
)
@click.option(
    "--max-queue",
    default=256,
    show_default=True,
    type=click.IntRange(1),
    help="Queued images before 503, at least --max-batch-size.",
)
@click.option(
    "--timeout",
    default=30.0,
    show_default=True,
    type=FiniteFloatRange(0, 86400, min_open=True),
    help="Per-request timeout, seconds, above 0 and at most a day.",
)
@click.option(
    "--max-body-mb",
    default=64.0,
    show_default=True,
    type=FiniteFloatRange(1 / 1024, 1 << 20),  # 1 KiB to 1 TiB: inf crashed the start
    help="Request body limit, MiB.",
)
@_max_pixels_option(40_000_000)
@click.option(
    "--device", default="cpu", show_default=True, type=click.Choice(["auto", "cpu", "cuda"])
)
@click.option("--engine", **_ENGINE_OPTION)
@click.option("--threads", type=click.IntRange(1, 256), help="Engine threads (default: all cores).")
@click.option("--no-access-log", is_flag=True, help="No log line per request.")
def serve_cmd(bundles: tuple[str, ...], **kw: Any) -> None:
    """Serve BUNDLE... (or NAME=BUNDLE) over HTTP with the KServe v2 / Open Inference Protocol.

    Triton's and KServe's clients work unchanged (JSON and binary tensors); POST image bytes to
    /v2/models/NAME/annotate for labels. Stops gracefully on SIGTERM or Ctrl-C.
    """
    from m3trt.serve.limits import Limits
    from m3trt.serve.server import ServeOptions, parse_model_specs, serve

    try:
        limits = Limits(
            max_body_bytes=int(kw["max_body_mb"] * (1 << 20)),
            max_pixels=kw["max_pixels"],
            timeout_s=kw["timeout"],
            max_queue=kw["max_queue"],
        )
    except ValueError as exc:
        raise M3Error(str(exc)) from None
    options = ServeOptions(
        max_batch=kw["max_batch_size"],
        max_delay_ms=kw["max_queue_delay_ms"],
        device=kw["device"],
        engine=kw["engine"],
        threads=kw["threads"],
        limits=limits,
    )
    specs = parse_model_specs(bundles)
    serve(
        specs,
        kw["host"],
        kw["port"],
        options,
        say=lambda line: click.echo(line, err=True),
        access_log=not kw["no_access_log"],
    )


@main.command("export-triton")
@click.argument("bundle", type=FilePath(path_type=Path))
@click.argument("repo_dir", type=FilePath(file_okay=False, path_type=Path))
@click.option("--name", help="Model name in the repository (default: the bundle's name).")
@click.option(
    "--max-batch-size",
    type=click.IntRange(1, (1 << 31) - 1),  # Triton's config fields are 32-bit
    help="Default: the plan's max, or 64 for ONNX.",
)
@click.option(
    "--max-queue-delay-us",
    default=2000,
    show_default=True,
    type=click.IntRange(0, (1 << 63) - 1),
    help="Dynamic batching.",
)
@click.option(
    "--instance-kind", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "gpu"])
)
@click.option(
    "--instances",
    default=1,
    show_default=True,
    type=click.IntRange(1, (1 << 31) - 1),
    help="Model instances.",
)
@click.option("--overwrite", is_flag=True, help="Replace REPO_DIR/NAME if it exists.")
def export_triton_cmd(bundle: Path, repo_dir: Path, **kw: Any) -> None:
    """Write a Triton Inference Server model repository entry for BUNDLE under REPO_DIR."""
    from m3trt.serve.triton_repo import export_triton

    result = export_triton(
        bundle,
        repo_dir,
        name=kw["name"],
        max_batch=kw["max_batch_size"],
        max_queue_delay_us=kw["max_queue_delay_us"],
        instance_kind=kw["instance_kind"],
        instances=kw["instances"],
        overwrite=kw["overwrite"],
    )
    checked = (
        "checked against Triton's ModelConfig"
        if result.checked
        else "not checked (install tritonclient[grpc] to parse it into Triton's ModelConfig)"
    )
    click.echo(
        f"wrote {result.folder} ({result.platform}, max batch {result.max_batch}, "
        f"{result.artifact} artifact); config.pbtxt {checked}"
    )


@main.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor_cmd(as_json: bool) -> None:
    """What this host can run and build (GPU, driver, CUDA, ONNX Runtime providers that really
    load, TensorRT, cuda-python), with the install line for what is missing."""
    from m3trt.doctor import diagnose, format_report

    report = diagnose()
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else format_report(report))


_global_options_everywhere(main)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
