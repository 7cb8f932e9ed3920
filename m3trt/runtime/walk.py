"""Depth-first, deterministic, streaming walk over the images under the paths a user gives.

Streaming (a generator over ``os.scandir``, with its own stack of folders) keeps memory flat for
a million files at any depth; names are sorted per folder so two runs see the same order
(``--resume`` and diffs rely on it). Symbolic links are followed, but a folder already visited on
this walk (a link loop) is entered once, and a broken or looping file link becomes an error
entry, not a crash.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from m3trt.data.images import IMAGE_EXTENSIONS
from m3trt.errors import InputError


@dataclass(frozen=True)
class Found:
    """A candidate image; ``error`` is set when the path cannot even be opened as a file."""

    path: str
    error: str | None = None


def parse_extensions(text: str | None) -> frozenset[str]:
    """``"jpg,png"`` -> {".jpg", ".png"}; None -> every format m3trt decodes."""
    if not text:
        return IMAGE_EXTENSIONS
    exts = {("." + e.strip().lower().lstrip(".")) for e in text.split(",") if e.strip()}
    if not exts:
        raise InputError(f"--ext {text!r}: no extensions given")
    if any(set(e) & set("*?[]/\\ ") or e == "." for e in exts):  # '*' matched no file
        raise InputError(
            f"--ext {text!r}: give extensions such as jpg,png (no wildcards); without --ext "
            "every format m3trt reads is taken"
        )
    return frozenset(exts)


def check_roots(paths: Iterable[str | Path]) -> list[Path]:
    """Every PATH must exist (a typo should stop the run before it starts)."""
    paths = list(paths)
    if any(p in ("", b"") for p in paths):  # Path("") is ".": the working folder
        raise InputError("an empty PATH (an unset shell variable?); give a file or folder name")
    roots = [Path(p) for p in paths]
    if not roots:
        raise InputError("no input: give one or more image files or folders")
    for root in roots:
        if not root.exists() and not root.is_symlink():
            raise InputError(f"{root}: no such file or folder")
    return roots


@dataclass
class PassedOver:
    """The files in walked folders that a walk left for their extension: when it finds no image
    at all, the user is told of them (JPEGs named ``IMG_0001``, a ``--ext`` that matches none)."""

    count: int = 0
    first: str | None = None

    def add(self, path: str) -> None:
        self.count += 1
        if self.first is None:
            self.first = path


def iter_images(
    roots: Iterable[Path],
    extensions: frozenset[str] = IMAGE_EXTENSIONS,
    passed_over: PassedOver | None = None,
) -> Iterator[Found]:
    """Files named on the command line are taken as they are; folders are searched for files
    with one of ``extensions`` (case-insensitive), the others counted in ``passed_over``. Each
    folder entry comes once, however it is reached: a file named twice, or named and inside a
    folder given too, is annotated once."""
    seen: set[tuple[int, int]] = set()  # folders entered (listed or not: loops end)
    listed: set[tuple[int, int]] = set()  # folders whose files the walk yielded
    named: set[tuple[tuple[int, int], str]] = set()  # files named: (their folder, their name)
    for root in roots:
        if root.is_dir():
            yield from _walk_dir(root, extensions, seen, listed, named, passed_over)
            continue
        folder = _folder_key(os.path.dirname(root) or ".")
        if folder is not None:
            entry = (folder, root.name)
            walked = folder in listed and os.path.splitext(root.name)[1].lower() in extensions
            if entry in named or walked:
                continue
            named.add(entry)
        yield _check_file(str(root))


def _folder_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _check_file(path: str) -> Found:
    try:
        st = os.stat(path)
    except OSError as exc:
        return Found(path, _os_reason(path, exc))
    if not stat.S_ISREG(st.st_mode):
        return Found(path, "not a regular file")
    return Found(path)


def _os_reason(path: str, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if exc.errno == errno.ENOENT and os.path.islink(path):
        return "broken symbolic link (its target does not exist)"
    if exc.errno == errno.EACCES:
        return "permission denied"
    return exc.strerror or str(exc)


def _walk_dir(
    root: Path,
    extensions: frozenset[str],
    seen: set[tuple[int, int]],
    listed: set[tuple[int, int]],
    named: set[tuple[tuple[int, int], str]],
    passed_over: PassedOver | None = None,
) -> Iterator[Found]:
    """Depth first, names sorted, with a stack of its own rather than recursion, which stopped
    at Python's limit: a tree a thousand folders deep crashed the whole run."""
    stack: list[tuple[tuple[int, int], Iterator[os.DirEntry[str]]]] = []
    pending: str | None = str(root)
    while True:
        if pending is not None:
            entries = _list_folder(pending, seen)
            if isinstance(entries, Found):
                yield entries
            elif entries is not None:
                listed.add(entries[0])
                stack.append(entries)
            pending = None
        if not stack:
            return
        folder, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        try:
            is_dir = entry.is_dir()  # follows links
        except OSError:
            is_dir = False
        if is_dir:
            pending = entry.path
        elif os.path.splitext(entry.name)[1].lower() not in extensions:
            if passed_over is not None:
                passed_over.add(entry.path)
        elif (folder, entry.name) not in named:
            yield _check_file(entry.path)


def _list_folder(
    path: str, seen: set[tuple[int, int]]
) -> tuple[tuple[int, int], Iterator[os.DirEntry[str]]] | Found | None:
    """The folder's key and its entries, sorted; None for a folder this walk has entered (a link
    loop or a duplicate); a Found error for one that cannot be read (the walk goes on)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return Found(path, _os_reason(path, exc))
    key = (st.st_dev, st.st_ino)
    if key in seen:
        return None
    seen.add(key)
    try:
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        return Found(path, f"cannot list folder: {_os_reason(path, exc)}")
    return key, iter(entries)
