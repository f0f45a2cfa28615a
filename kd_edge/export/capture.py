"""Keep converters' native chatter (progress lines, C++ logs) out of the user's terminal.

litert-torch and the MLIR converter print from C++ straight to file descriptors 1 and 2; Python's
``redirect_stdout`` cannot catch that. ``captured`` points both descriptors at a log file for the
duration, and on failure the last lines go into the error message instead of being lost.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def captured(log_path: Path) -> Iterator[Path]:
    """Send fds 1 and 2 (and Python's sys.stdout/err) to ``log_path`` inside the block."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield log_path
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def tail(log_path: Path, lines: int = 3) -> str:
    """The last non-empty lines of a log, joined on one line."""
    if not log_path.is_file():
        return ""
    text = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    return " | ".join(text[-lines:])
