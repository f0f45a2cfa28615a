"""The errors a user can cause: each prints as one line naming the problem and the fix.

Library code raises these; only the CLI's ``main()`` catches them, prints ``error: <message>`` and
exits with code 2. Anything else is a bug in kd-edge and keeps its traceback.
"""

from __future__ import annotations


class KdEdgeError(Exception):
    """Base of every expected failure; ``str(err)`` is the one line shown to the user."""

    exit_code = 2


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
