"""Error types shared by every part of m3trt.

`M3Error` and its subclasses are user errors: the CLI prints their message as one line and exits
with code 2, without a traceback. Anything else is a failure (exit code 1).
"""


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
