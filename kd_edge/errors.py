"""The errors a user can cause: each prints as one line naming the problem and the fix.

Library code raises these; only the CLI's ``main()`` catches them, prints ``error: <message>`` and
exits with code 2. Anything else is a bug in kd-edge and keeps its traceback.
"""

from __future__ import annotations


class KdEdgeError(Exception):
    """Base of every expected failure; ``str(err)`` is the one line shown to the user.

    ``keys`` are the recipe keys the message names (``bench.host``): the library speaks in recipe keys,
    and the command line adds the flag that sets each one for the command that ran."""

    exit_code = 2

    def __init__(self, *args: object, keys: tuple[str, ...] = ()):
        super().__init__(*args)
        self.keys = tuple(keys)


class ConfigError(KdEdgeError):
    """The recipe or a command-line option is invalid."""


class ArtifactError(KdEdgeError):
    """An input file or folder is missing, empty, or not what the stage expects."""


class DependencyError(KdEdgeError):
    """An optional library that the request needs is not installed."""


class TargetError(KdEdgeError):
    """A benchmark target cannot be reached or a command on it failed."""


class ExportError(KdEdgeError):
    """A converter failed or produced a file that does not match the model."""


class QuantizeError(KdEdgeError):
    """Quantization failed or was asked for without what it needs."""


class GateError(KdEdgeError):
    """A gate could not be evaluated (a malformed budget, a metric the report lacks)."""


class FileSystemError(ArtifactError):
    """The operating system refused a read or a write (no space, permission, not a folder, ...)."""


# errno -> (what happened, what to do); {path} is the file or folder the system named
_OS_FIXES: dict[int, tuple[str, str]] = {
    28: ("no space left on the device holding {path}", "free space there or write somewhere else (--out)"),
    122: ("disk quota exceeded writing {path}", "free space in your quota or write somewhere else (--out)"),
    27: ("{path} grew larger than this file system allows", "write somewhere else (--out)"),
    13: ("permission denied: {path}", "make it readable/writable for you or choose another path"),
    1: ("operation not permitted on {path}", "check its owner and permissions, or choose another path"),
    30: ("{path} is on a read-only file system", "write somewhere else (--out)"),
    20: ("a part of {path} is a file, not a folder", "choose a path whose parents are folders"),
    21: ("{path} is a folder where a file was expected", "pass a file, or a path that does not exist yet"),
    2: ("{path} does not exist", "check the path"),
    36: ("the name {path} is too long", "choose a shorter path"),
    40: ("{path} is a loop of symbolic links", "fix the links or pass the real path"),
    5: ("input/output error on {path}", "check the disk (dmesg), then run again"),
    24: ("too many open files while reading {path}", "raise the limit (ulimit -n) and run again"),
    16: ("{path} is busy", "close what holds it and run again"),
    39: ("{path} is not empty", "remove it or choose another path"),
    17: ("{path} already exists", "remove it or choose another path"),
}


def os_error_message(err: OSError, path: object = None) -> str | None:
    """One line naming what the operating system refused and the fix, or None when ``err`` carries
    no errno (a library's own OSError, whose text the caller knows better)."""
    if err.errno is None:
        return None
    import re

    where = str(path or err.filename or "a file")
    where = re.sub(r"(^|/)\.([^/]+)\.tmp-[0-9a-f]{8}(?=/|$)", r"\1\2", where)  # a stage's temporary folder
    what, fix = _OS_FIXES.get(err.errno, ("{path}: " + (err.strerror or f"error {err.errno}").lower(),
                                          "fix the path or its file system, then run again"))
    return f"{what.format(path=where)}; {fix}"


def from_os_error(err: OSError, doing: str = "", path: object = None) -> KdEdgeError | None:
    """A FileSystemError for ``err`` ("while <doing>: ..."), or None when ``err`` has no errno."""
    message = os_error_message(err, path)
    if message is None:
        return None
    return FileSystemError(f"{doing}: {message}" if doing else message)
