"""What ``m3trt infer`` (and, more simply, the other commands) may write, checked before it
writes anything, and the lock on it.

Rules (README, "Annotating folders"): no output may be an input (a PATH given, or a file the walk
would pick up) or another output; an existing output is replaced only with ``--overwrite``
(results and errors also continue with ``--resume``; a report or summary that m3trt wrote is
rewritten by ``--resume``); an output that is not a regular file is always refused. Two runs on
one output at once would duplicate or corrupt rows, so a run holds an exclusive lock beside the
results file (``.NAME.lock``, via the ``filelock`` library) for its whole length; a second run
says who holds it and exits 2.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path

from m3trt.errors import InputError

REPORT_MARKER = b'<meta name="generator" content="m3trt'


def named_entry(output: Path) -> Path:
    """The entry an output path names, for what is kept beside it (its lock, its run record):
    "." and "x/.." the folder they resolve to; a link the file it names, so that the file and a
    link to it share them (links in the folders resolve alike). A dangling link keeps its own
    name: the command refuses it, and nothing is made where it points."""
    if output.name in ("", "..") or (output.is_symlink() and output.exists()):
        return Path(os.path.realpath(output))
    return output


_STREAM = re.compile(r"/(?:proc/[^/]+|dev)/fd/\d+|/dev/std(?:in|out|err)")


def stream_alias(output: Path) -> str | None:
    """The standard stream or open descriptor that ``output`` names, directly or through links
    (``/dev/stdout``, ``/proc/self/fd/1``, a link to either), else None. Such a path is not a
    file a run can lock, resume or replace: with ``--overwrite`` a run replaced the link
    ``/dev/stdout`` itself with a file, and printed nothing."""
    current = os.path.abspath(output)
    for _ in range(40):  # the kernel's own limit on links in a row
        for spelling in (os.path.normpath(current), _key(Path(current))):
            if _STREAM.fullmatch(spelling):
                return str(output)
        try:
            target = os.readlink(current)
        except OSError:
            return None
        current = os.path.join(os.path.dirname(current), target)
    return None


def refuse_stream(output: Path, option: str) -> None:
    if stream_alias(output) is not None:
        raise InputError(
            f"{output}: {option} names a stream (standard output or an open descriptor); m3trt "
            "writes its outputs to files, which it locks and never leaves half-written: name one"
        )


def lock_path(output: Path) -> Path:
    """``out/results.jsonl`` -> ``out/.results.jsonl.lock`` (hidden; it stays after the run).
    A folder output locks the same way, beside it: ``runs/x.m3`` -> ``runs/.x.m3.lock``."""
    if str(output) == "-":  # wrote a file named "-" where a user expects standard output
        raise InputError("-: m3trt writes its outputs to files, not to standard output; name one")
    refuse_stream(output, "the output")
    named = named_entry(output)
    if not named.name:
        raise InputError(f"{output}: the root folder cannot be an output; choose a folder in it")
    return named.with_name(f".{named.name}.lock")


def _key(path: Path) -> str:
    """One spelling per file: symlinks in the folders resolved, the name itself kept."""
    return os.path.join(os.path.realpath(path.parent), path.name)


def overlap(output: Path, source: Path) -> str | None:
    """How writing ``output`` would destroy the input ``source`` (links resolved): "is" (the same
    entry), "is inside" (a file within an input folder, e.g. a bundle) or "contains" (an output
    folder replaced with the input in it); None when they are apart."""
    src = os.path.realpath(source)
    for out in {_key(output), os.path.realpath(output)}:  # the entry itself, or what it links to
        if out == src:
            return "is"
        if out.startswith(src.rstrip(os.sep) + os.sep):
            return "is inside"
        if src.startswith(out.rstrip(os.sep) + os.sep):
            return "contains"
    return None


def check_apart(outputs: dict[str, Path | None], inputs: Iterable[Path]) -> None:
    """Refuse, with or without ``--overwrite``, an output that would replace an input or write
    into one: ``eval --json`` onto its manifest, ``bench --json`` inside the bundle it times."""
    for option, path in outputs.items():
        for source in inputs if path is not None else ():
            if (how := overlap(path, source)) is not None:
                raise InputError(
                    f"{path}: {option} {how} an input of this run ({source}); choose another "
                    f"{option}"
                )


def _is_ours(path: Path, kind: str) -> bool:
    """A report or summary this tool wrote (so ``--resume`` may rewrite it)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    if kind == "report":
        return REPORT_MARKER in head
    try:
        data = json.loads(head)
    except (ValueError, RecursionError):
        return False
    return isinstance(data, dict) and {"bundle", "annotated", "errors_file"} <= data.keys()


def _distinct(
    outputs: dict[str, Path | None], clash: Callable[[Path, str, str], str]
) -> Iterator[tuple[str, Path, str]]:
    """(name, path, key) of each output given, refusing (``clash``'s line) a file named twice."""
    seen: dict[str, str] = {}
    for name, path in outputs.items():
        if path is None:
            continue
        refuse_stream(path, name if name.startswith("-") else f"the {name} file")
        key = _key(path)
        if key in seen:
            raise InputError(clash(path, seen[key], name))
        seen[key] = name
        yield name, path, key


def check_outputs(
    outputs: dict[str, Path | None],
    roots: Iterable[Path],
    extensions: frozenset[str],
    *,
    overwrite: bool,
    resume: bool,
) -> None:
    """Refuse, with one line, an output that collides with an input, another output, a
    non-regular file, or an existing file without leave to replace it. ``outputs`` maps a
    name ("results", "errors", "report", "summary") to its path."""
    root_files = {_key(r): str(r) for r in roots if not r.is_dir()}
    root_dirs = [os.path.realpath(r) for r in roots if r.is_dir()]

    def clash(path: Path, first: str, what: str) -> str:
        return f"{path}: the {what} file would be the {first} file too"

    for what, path, key in _distinct(outputs, clash):
        if key in root_files:
            raise InputError(f"{path}: the {what} file would replace an input ({root_files[key]})")
        if os.path.splitext(path.name)[1].lower() in extensions and any(
            key.startswith(d.rstrip(os.sep) + os.sep) for d in root_dirs
        ):
            raise InputError(
                f"{path}: the {what} file is inside an input folder and has an image "
                "extension, so it would be read as an input; write it elsewhere"
            )
        if not (path.exists() or path.is_symlink()):
            continue
        if path.is_symlink() and not path.exists():
            raise InputError(
                f"{path}: the {what} file is a dangling symbolic link (to {os.readlink(path)}); "
                "remove it or choose another path"
            )
        if not path.is_file():
            raise InputError(f"{path}: the {what} file exists and is not a regular file")
        if what in ("results", "errors") and not (resume or overwrite):
            raise InputError(
                f"{path} exists: continue it with --resume, replace it with --overwrite, "
                "or choose another -o"
            )
        if what in ("report", "summary") and not overwrite:
            if resume and _is_ours(path, what):
                continue
            raise InputError(
                f"{path} exists: replace it with --overwrite or choose another --{what}"
                + ("" if what == "report" else "-json")
            )


def check_new_files(outputs: dict[str, Path | None], *, overwrite: bool) -> None:
    """The same rule for the other commands' outputs (``export -o``, ``--json``, ``--plot``):
    refuse one that another option names too, that is not a regular file, or that exists
    without ``--overwrite``. ``outputs`` maps an option's name to its path."""

    def clash(path: Path, first: str, option: str) -> str:
        return f"{path}: named by both {first} and {option}"

    for option, path, _ in _distinct(outputs, clash):
        if not (path.exists() or path.is_symlink()):
            continue
        if not path.is_file():
            raise InputError(f"{path} ({option}) exists and is not a regular file")
        if not overwrite:
            raise InputError(f"{path} ({option}) exists: replace it with --overwrite")


def _holder_text(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            holder = json.loads(f.read(4096) or b"null")
        return f"pid {holder['pid']} on {holder['host']}, since {holder['since']}"
    except (OSError, ValueError, TypeError, KeyError, RecursionError):
        return "another process"


@contextmanager
def output_lock(output: Path, option: str = "-o") -> Iterator[Path]:
    """Hold the exclusive lock on ``output`` or raise InputError naming its holder (and
    ``option``, the one to change)."""
    from filelock import FileLock, Timeout

    path = lock_path(output)
    lock = FileLock(str(path), timeout=0)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:
        raise InputError(
            f"{output}: another m3trt run is writing it ({_holder_text(path)}); wait for it "
            f"to end, or choose another {option} (lock: {path})"
        ) from None
    except OSError as exc:
        for folder in (path.parent, *path.parent.parents):  # EEXIST named the lock, not this
            if os.path.lexists(folder) and not folder.is_dir():
                raise InputError(
                    f"{folder}: is not a folder, so {output} cannot go in it"
                ) from None
        raise InputError(f"{path}: cannot lock the output ({exc.strerror or exc})") from None
    try:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        try:
            # the locked file itself, never a link swapped in since: O_NOFOLLOW, no O_TRUNC
            fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(holder).encode())
                f.truncate()
        except OSError:
            pass  # the lock holds without the note; only the message is less precise
        yield path
    finally:
        lock.release()


@contextmanager
def checked_locks(
    outputs: dict[str, Path | None], check: Callable[[], None] = lambda: None
) -> Iterator[list[Path]]:
    """Each output's lock (``outputs`` maps the option to change to the path) held until the
    block ends, with ``check`` (what the run may replace) run before the locks, so that a
    refused run leaves no lock file behind, and again under them, since another run may have
    written an output in between. Yields the lock files."""
    check()
    with ExitStack() as held:
        locks = [held.enter_context(output_lock(p, o)) for o, p in outputs.items() if p]
        check()
        yield locks


def claimed_files(
    outputs: dict[str, Path | None], *, overwrite: bool, inputs: Iterable[Path] = ()
) -> AbstractContextManager[list[Path]]:
    """``check_new_files`` (and ``check_apart`` from ``inputs``) around each output's lock: a
    second run on the same file is refused at its start instead of replacing the first one's."""
    inputs = list(inputs)

    def check() -> None:
        check_apart(outputs, inputs)
        check_new_files(outputs, overwrite=overwrite)

    return checked_locks(outputs, check)
