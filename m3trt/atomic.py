"""Crash-safe file writes: one helper for every file m3trt writes whole (JSON, ONNX, plans).

A write goes to a hidden temp file beside the target (same file system, so the rename is atomic),
opened with O_EXCL|O_NOFOLLOW under a unique random name (two concurrent writers never share a
temp file, and a planted link is never followed), is fsynced, then renamed into place; the folder
is fsynced too, so the rename survives a power cut. Readers see the old file or the new one, never
half of one. ``overwrite=False`` publishes with a hard link, an atomic "create if absent" that
loses no race against another writer.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from m3trt.errors import InputError, WriteFailure

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
_FLAGS |= getattr(os, "O_BINARY", 0)


TEMP_NAME_CHARS = 100  # how much of a name temp_sibling keeps


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``os.umask`` sets
    it, and another thread creating a file in between would get the wrong mode)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_sibling(path: str | Path, kind: str = "tmp") -> Path:
    """A hidden, unique name beside ``path``; long names are cut so the result stays legal."""
    path = Path(path)
    cut = path.name[:TEMP_NAME_CHARS]
    return path.with_name(f".{cut}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish(temp: Path, path: Path, *, overwrite: bool = True) -> bool:
    """Move a finished temp file onto ``path``; False (temp left for the caller) if ``path``
    exists and ``overwrite`` is off. A rename replaces a link itself, never its target."""
    if overwrite:
        os.replace(temp, path)
    else:
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links on this file system: check, then rename
            if os.path.lexists(path):
                return False
            os.replace(temp, path)
        else:
            temp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def write_bytes(path: str | Path, data: bytes | memoryview, *, overwrite: bool = True) -> bool:
    """Write ``data`` to ``path`` atomically; False (nothing changed) when ``path`` exists and
    ``overwrite`` is off."""
    path = Path(path)
    temp = temp_sibling(path)
    try:
        fd = os.open(temp, _FLAGS, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return publish(temp, path, overwrite=overwrite)
    except WriteFailure:
        raise
    except OSError as exc:
        raise WriteFailure(path, exc) from exc
    finally:
        temp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str, *, overwrite: bool = True) -> bool:
    """UTF-8 text, ``\\n`` line ends, written atomically (see ``write_bytes``)."""
    return write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def write_json(path: str | Path, data: Any, *, indent: int | None = 2, **dumps: Any) -> None:
    """A JSON document, written atomically, parent folders made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(data, indent=indent, **dumps) + "\n")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """For writers that want a file name (onnx.save_model, safetensors): they write the yielded
    temp path, which is fsynced and renamed onto ``path`` when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_sibling(path)
    try:
        yield temp
        with open(temp, "rb+") as f:
            os.fsync(f.fileno())
            # safetensors creates its file 0600: the published file gets the mode every other
            # m3trt output has (the umask's), so a checkpoint's weights and config match. Best
            # effort: vfat, exFAT and some network mounts refuse a chmod the write itself needs not
            with contextlib.suppress(OSError, TypeError, NotImplementedError):
                os.chmod(f.fileno(), 0o666 & ~current_umask())
        publish(temp, path)
    except WriteFailure:
        raise
    except OSError as exc:  # the block only writes the temp file
        raise WriteFailure(path, exc) from exc
    finally:
        temp.unlink(missing_ok=True)


def _leftovers(target: Path, kinds: str) -> Iterator[tuple[str, Path]]:
    """(kind, entry) of each ``temp_sibling`` of ``target`` whose kind is one of ``kinds``
    ("tmp|old"); links are never taken."""
    if len(target.name) >= TEMP_NAME_CHARS:  # temp_sibling cuts names: another NAME's could match
        return
    left = re.compile(rf"\.{re.escape(target.name)}\.({kinds})-\d+-[0-9a-f]{{8}}")
    try:
        entries = sorted(target.parent.iterdir())
    except OSError:
        return  # nothing to clear where the folder cannot be listed; the write will say why
    for path in entries:
        if (found := left.fullmatch(path.name)) and not path.is_symlink():
            yield found.group(1), path


def clear_leftovers(folder: Path) -> None:
    """Remove the hidden staging folders (``temp_sibling``) a killed writer of ``folder`` left
    beside it, and put back an old ``folder`` it had moved aside before publishing the new one.
    Run only under ``folder``'s lock, so that no writer of it is running."""
    for kind, path in _leftovers(folder, "tmp|old"):
        if not path.is_dir():
            continue
        if kind == "old" and not os.path.lexists(folder):
            try:
                path.rename(folder)
            except OSError as exc:
                raise InputError(
                    f"{path}: a killed run moved {folder} here and it cannot be put back "
                    f"({exc.strerror or exc}); move it back by hand"
                ) from None
        else:
            shutil.rmtree(path, ignore_errors=True)


def clear_leftover_files(target: Path) -> None:
    """Remove the hidden temp files a killed writer of the file ``target`` left beside it (the
    report's ``part`` and ``fail`` files, megabytes of thumbnails each; a ``tmp`` not yet
    renamed). Run only under ``target``'s lock, so that no writer of it is running."""
    for _kind, path in _leftovers(target, "tmp|part|fail"):
        if path.is_file():
            path.unlink(missing_ok=True)
