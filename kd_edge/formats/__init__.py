"""Deployable formats, one module each (``kd_edge/formats/<name>.py`` declares ``FORMAT``).

The recipe schema, the CLI's choices, export, the checkers of export and verify, bench's file
detection, the device runner's runtime and what a remote target installs and uploads all read this
table; a format is added by writing its module and naming it in ``FORMAT_MODULES``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from kd_edge.errors import ArtifactError, ConfigError
from kd_edge.formats.base import Format, Precision, load

FORMAT_MODULES = ("onnx", "tflite", "gguf", "genai", "pte")

FORMATS: dict[str, Format] = {}
for _module in FORMAT_MODULES:
    _fmt = importlib.import_module(f"kd_edge.formats.{_module}").FORMAT
    FORMATS[_fmt.name] = _fmt


def format_named(name: str) -> Format:
    """The format called ``name``, or a one-line ConfigError naming the known ones."""
    from kd_edge.registry import closest

    if name not in FORMATS:
        raise ConfigError(f"unknown format '{name}'{closest(name, list(FORMATS))}; choose from {', '.join(FORMATS)}")
    return FORMATS[name]


def find_format(path: Path) -> Format | None:
    """The format of a file by its suffix, or None."""
    return next((fmt for fmt in FORMATS.values() if path.name.endswith(fmt.suffix)), None)


def format_of(path: Path) -> Format:
    """The format of an exported file, by its suffix, or a one-line ArtifactError."""
    fmt = find_format(path)
    if fmt is not None:
        return fmt
    raise ArtifactError(f"'{path.name}': kd-edge knows no format with the suffix '{path.suffix}'; it takes "
                        f"{', '.join(f.suffix for f in FORMATS.values())} files and model folders")


def runtime_format(runtime: str) -> Format:
    """The format a device-runner runtime loads."""
    for fmt in FORMATS.values():
        if fmt.runtime == runtime:
            return fmt
    raise ArtifactError(f"no format runs in the runtime '{runtime}'; runtimes: "
                        f"{', '.join(f.runtime for f in FORMATS.values())}")


def precision_of(info: dict) -> Precision:
    """The precision a file's sidecar names, as its format declares it."""
    return format_named(info["format"]).precision(info["precision"])


def check_export(kind, export) -> None:
    """Refuse export settings a task kind's students cannot take: a format that holds the other kind
    of model, a precision for encoders only, a format's own rules (a one-line ConfigError), or a
    format whose exporter is not installed (a DependencyError saying how to install it)."""
    what = "causal LMs" if kind.is_lm else "encoders"
    for spec in export.artifacts:
        fmt = format_named(spec.format)
        if not fmt.takes(kind.is_lm):
            others = ", ".join(f.name for f in FORMATS.values() if f.takes(kind.is_lm))
            held = "encoders" if kind.is_lm else "causal LMs"
            raise ConfigError(f"export.artifacts: {fmt.name} files hold {held} ({fmt.runtime} runs them); a {kind.name} "
                              f"student exports to {others}", keys=("export.artifacts",))
        prec = fmt.precision(spec.precision)
        if prec.encoders_only and kind.is_lm:
            takes = "; ".join(f"{f.name}: {', '.join(p.name for p in f.precisions if not p.encoders_only)}"
                              for f in FORMATS.values() if f.takes(True))
            raise ConfigError(f"export: {spec.precision} is for encoders; {what} take {takes}",
                              keys=("export.artifacts",))
        fmt.check_recipe(kind, export)
    for name in dict.fromkeys(spec.format for spec in export.artifacts):
        FORMATS[name].check_installed()


__all__ = ["check_export", "find_format", "FORMATS", "FORMAT_MODULES", "Format", "Precision", "format_named", "format_of", "load",
           "precision_of", "runtime_format"]
