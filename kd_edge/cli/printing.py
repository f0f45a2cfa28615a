"""How commands talk to the terminal: stage progress lines and the closing summary."""

from __future__ import annotations

import sys

import typer


def stage_printer():
    """A pipeline ``on_event`` callback printing one line per stage."""

    def on_event(event) -> None:
        st = event.stage
        prefix = f"[{event.index + 1:>2}/{event.total}] {st.name:<9}"
        if event.status == "skipped":
            typer.echo(f"{prefix} up to date")
        elif event.status == "running":
            typer.echo(f"{prefix} {st.summary} ...")
        elif event.status == "done":
            typer.echo(f"{prefix} done in {event.seconds:.1f} s")
        sys.stdout.flush()

    return on_event
