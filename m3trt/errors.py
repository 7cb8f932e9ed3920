"""Error types shared by every part of m3trt.

`M3Error` and its subclasses are user errors: the CLI prints their message as one line and exits
with code 2, without a traceback. Anything else is a failure (exit code 1).
"""

import re

# Control characters (escape sequences recolour, retitle or rewrite a terminal), bidi overrides,
# line separators and lone surrogates (a file name's undecodable bytes): shown as escapes.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def terminal_safe(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` (which may quote a hostile file name or file) safe to print: one line unless
    ``keep_newlines``, nothing a terminal would act on."""

    def escape(match: re.Match[str]) -> str:
        char = match.group()
        if keep_newlines and char == "\n":
            return char
        if "\udc80" <= char <= "\udcff":  # a byte of a name that is not UTF-8: show that byte
            return f"\\x{ord(char) - 0xDC00:02x}"
        return char.encode("unicode_escape", "backslashreplace").decode("ascii")

    return _UNSAFE.sub(escape, text)


def is_terminal_safe(text: str) -> bool:
    """Whether ``text`` holds nothing ``terminal_safe`` would escape (names kept in files that
    are later printed are refused rather than escaped)."""
    return _UNSAFE.search(text) is None


class M3Error(Exception):
    """A problem the user can fix; its message names the file, the problem and the fix."""


class InputError(M3Error):
    """An input file is missing, unreadable or malformed."""


class ImageDecodeError(InputError):
    """An image could not be decoded; the message starts with the file's path."""


class ManifestError(InputError):
    """A manifest or label file is malformed; the message names the file and line."""


class OutputFailure(Exception):
    """Writing an output failed (a full disk, a vanished folder): not the user's input, so the
    CLI exits 1, but the message still names the file and says what went wrong."""


class WriteFailure(OSError, OutputFailure):
    """A file could not be written whole (a full disk, a file-size limit): still an OSError for
    the callers that handle those, and one line naming the file for the CLI."""

    def __init__(self, path: object, exc: BaseException) -> None:
        reason = getattr(exc, "strerror", None) or " ".join(str(exc).split())
        super().__init__(getattr(exc, "errno", None), reason)  # the cause's errno, strerror
        self.path = path

    def __str__(self) -> str:
        return f"{self.path}: cannot write ({self.strerror})"
