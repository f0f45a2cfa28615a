"""`kd-edge list`: what can be named in a recipe, read from the registries (nothing heavy imported)."""

from __future__ import annotations

from typing import Annotated

import typer

from kd_edge.cli import app

KINDS = ("tasks", "losses", "formats", "exporters", "quantizers", "targets")


def _registry(kind: str):
    if kind == "tasks":
        from kd_edge.tasks import TASKS as registry
    elif kind == "losses":
        from kd_edge.distill import LOSSES as registry
    elif kind == "exporters":
        from kd_edge.export import EXPORTERS as registry
    elif kind == "quantizers":
        from kd_edge.quantize import QUANTIZERS as registry
    else:
        from kd_edge.bench import TARGETS as registry
    return registry


def _formats() -> list[str]:
    from kd_edge.formats import FORMATS

    lines = []
    for fmt in FORMATS.values():
        holds = " and ".join(w for w, lm in (("encoders", False), ("causal LMs", True)) if fmt.takes(lm))
        lines.append(f"{fmt.name:<24} {fmt.summary}\n{'':<24} {fmt.suffix} {'folders' if fmt.is_folder else 'files'} of {holds}, run in {fmt.runtime}; "
                     f"precisions: {', '.join(fmt.precision_names)}")
    return lines


def describe(kind: str) -> list[str]:
    """One line per entry of a registry (losses: what each reads and its parameters with their defaults)."""
    if kind == "formats":
        return _formats()
    from kd_edge.distill import CROSS_TOKENIZER

    registry = _registry(kind)
    lines = []
    for name in registry.names():
        line = f"{name:<24} {registry.summary(name)}"
        meta = registry.meta(name)
        if kind == "losses":
            params = ", ".join(f"{p.name}={p.default!r}" for p in meta.get("params", ()))
            line += f"\n{'':<24} reads {meta['needs']}" + (f"; parameters: {params}" if params else "; no parameters")
            if name in CROSS_TOKENIZER:
                line += "; accepts a student with its own tokenizer"
        missing = registry.missing(name)
        if missing:
            line += f"\n{'':<24} (needs {', '.join(missing)}, not installed)"
        lines.append(line)
    return lines


@app.command("list")
def list_command(
    what: Annotated[str, typer.Argument(help=f"One of: {', '.join(KINDS)}.", show_default=False)] = "losses",
) -> None:
    """List what a recipe can name: tasks, losses (with their parameters), formats, exporters, quantizers, targets.

    Examples:

      kd-edge list losses

      kd-edge list formats

      kd-edge list targets
    """
    from kd_edge.errors import ConfigError
    from kd_edge.registry import closest

    if what not in KINDS:
        raise ConfigError(f"kd-edge list {what}: nothing of that kind{closest(what, KINDS)}; choose one of {', '.join(KINDS)}")
    for line in describe(what):
        typer.echo(line)
