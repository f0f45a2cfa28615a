"""Every path a user gives is checked where it enters: an input exists, is a file or a folder as
expected, is readable (and UTF-8 where it is text); an output can be written where it is asked for and
does not replace something that is not ours to replace. Each problem is one ``ArtifactError`` line
naming the path and the fix, raised before any work starts.

``what`` names the path as the user wrote it: the option (``--out``), the argument (``RECIPE``) or
the recipe key (``data.source``).
"""

from __future__ import annotations

import os
from pathlib import Path

from kd_edge.errors import ArtifactError, ConfigError


def input_file(path: Path, what: str, fix: str = "check the path") -> Path:
    """``path`` if it is a readable file."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ArtifactError(f"{what} '{path}' does not exist; {fix}")
    if path.is_dir():
        raise ArtifactError(f"{what} '{path}' is a folder, not a file; {fix}")
    if not os.access(path, os.R_OK):
        raise ArtifactError(f"{what} '{path}' is not readable (permission denied); make it readable for you "
                            "(chmod u+r) or pass another file")
    return path


def input_dir(path: Path, what: str, fix: str = "check the path") -> Path:
    """``path`` if it is a folder whose entries can be listed and read."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ArtifactError(f"{what} '{path}' does not exist; {fix}")
    if not path.is_dir():
        raise ArtifactError(f"{what} '{path}' is a file, not a folder; {fix}")
    if not os.access(path, os.R_OK | os.X_OK):
        raise ArtifactError(f"{what} '{path}' is not readable (permission denied); make it readable for you "
                            "(chmod u+rx) or pass another folder")
    return path


def read_text(path: Path, what: str, fix: str = "check the path") -> str:
    """The text of a UTF-8 file, or one line saying why it cannot be read."""
    path = input_file(path, what, fix)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise ArtifactError(f"{what} '{path}' is not UTF-8 text (byte 0x{e.object[e.start]:02x} on line {line}); "
                            "save it as UTF-8 (iconv -f latin1 -t utf-8, or your editor's encoding menu)") from None
    except OSError as e:
        raise ArtifactError(f"{what} '{path}' cannot be read ({e.strerror or e}); check the file and its disk") from None


def _writable_parent(path: Path, what: str) -> None:
    """The nearest existing folder above ``path`` is a folder we may create entries in."""
    parent = path.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise ArtifactError(f"{what} '{path}': '{parent}' is a file, not a folder; choose a path whose parents "
                            "are folders")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ArtifactError(f"{what} '{path}': cannot write in '{parent}' (permission denied or a read-only file "
                            "system); choose a folder you can write to")


def output_dir(path: Path, what: str = "--out") -> Path:
    """``path`` if it is, or can become, a folder we can write in (nothing is created here)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ArtifactError(f"{what} '{path}' is a file; pass a folder (a new or empty one)")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise ArtifactError(f"{what} '{path}' is not writable (permission denied or a read-only file system); "
                                "choose a folder you can write to")
        return path
    _writable_parent(path, what)
    return path


def output_file(path: Path, what: str = "--out", *, force: bool = False, parents: bool = True,
                overwrite_hint: str = "pass --force to replace it, or another path", example: str = "out.md") -> Path:
    """``path`` if a file can be written there: not a folder, not an existing file unless ``force``,
    and (unless ``parents``) in a folder that exists."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ArtifactError(f"{what} '{path}' is a folder; name a file, e.g. {path / example}")
    if path.exists() and not force:
        raise ArtifactError(f"{what} '{path}' already exists; {overwrite_hint}")
    if not parents and not path.parent.is_dir():
        raise ArtifactError(f"{what} '{path}': the folder '{path.parent}' does not exist; create it first "
                            f"(mkdir -p {path.parent}) or choose another path")
    if path.exists() and not os.access(path, os.W_OK):
        raise ArtifactError(f"{what} '{path}' is not writable (permission denied); choose another path")
    _writable_parent(path, what)
    return path


def positive(value: int | float, what: str) -> int | float:
    """``value`` if it is 1 or more."""
    if value < 1:
        raise ConfigError(f"{what} {value} is below 1; pass 1 or more")
    return value
