"""What a deployable format is: the one description every stage and command reads.

A format says its file suffix, the runtime that loads it (the device runner's ``--runtime``), the
precisions it takes and how each is made from the exported fp32 file, how it is exported, how its
checker feeds it (an encoder's outputs on every text, or a causal LM's decoder), what must be
installed on a device to run it, which files travel with it, and how to tell a real file of it from a
truncated or renamed one. Everything heavy is named as ``"module:attr"`` and imported on use, so that
validating a recipe or printing ``--help`` never imports torch or a converter.
"""

from __future__ import annotations

import importlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kd_edge.errors import ArtifactError, ConfigError


def load(ref: str) -> Any:
    """The object a ``"module:attr"`` reference names, imported now."""
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Precision:
    """One precision of a format: how it is made from the exported fp32 file (``make``: a function
    ``(src, dst, **settings) -> sidecar fields``; None for fp32 itself, the exported file), what it
    needs installed, and how to quantize again keeping more in float when the metric drops past its
    budget (``fallback``)."""

    name: str
    summary: str
    bits: int
    make: str | None = None
    requires: tuple[str, ...] = ()
    extra: str | None = None
    encoders_only: bool = False
    fallback: str | None = None
    hint: str = ""  # what to try when a file of this precision fails its check outside a run

    @property
    def checked_at_export(self) -> bool:
        """Whether export measures the file on training texts before keeping it (every 8-bit file, and
        any precision with a fallback)."""
        return self.bits == 8 or self.fallback is not None


@dataclass(frozen=True)
class Format:
    """A deployable format. See the module docstring; each ``kd_edge/formats/<name>.py`` declares one."""

    name: str
    suffix: str
    runtime: str
    summary: str
    exporter: str
    requires: tuple[str, ...]
    precisions: tuple[Precision, ...]
    extra: str | None = None
    encoder_outputs: str | None = None  # (path, info, ids, pad_id, threads, log_path) -> outputs [N, D]
    lm_decoder: str | None = None  # class (path, info, threads) with logits_of, decode_logits, greedy
    device_modules: tuple[str, ...] = ()  # any of these importable on a device means it can run the file
    device_package: str = ""  # what to pip install there
    magic: tuple[int, bytes] | None = None  # (offset, bytes) every file of the format carries
    fuse: str | None = None  # (base, out, config, tolerance, sample) -> (graph, sidecar fields): float-graph fusions
    file_quantize: bool = False  # whether `kd-edge quantize FILE` takes its files
    needs_source_folder: bool = False  # exported from the model folder (config, weights, tokenizer), not the module
    is_folder = False  # (not a field) whether a "file" of this format is a folder of files (GenAI)
    lm_buckets = False  # (not a field) a causal LM's file holds fixed prefill lengths (export.tflite_shapes)

    # -- what it takes ---------------------------------------------------------------------------------
    @property
    def precision_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.precisions)

    def precision(self, name: str) -> Precision:
        for p in self.precisions:
            if p.name == name:
                return p
        raise ConfigError(f"{self.name} files take no precision '{name}'; choose from {', '.join(self.precision_names)}")

    def takes(self, is_lm: bool) -> bool:
        """Whether students of a causal-LM (``is_lm``) or encoder task export to this format."""
        return (self.lm_decoder if is_lm else self.encoder_outputs) is not None

    def check_recipe(self, kind, export) -> None:
        """Rules of this format for a task kind's export settings (a one-line ConfigError)."""
        if kind.is_lm and self.lm_buckets:
            from kd_edge.errors import ConfigError

            if any(b != 1 for b, _ in export.tflite_shapes):
                raise ConfigError(f"export.tflite_shapes: causal-LM {self.name} files take batch 1; write [[1, T], ...], "
                                  "one prefill signature per prompt length T", keys=("export.tflite_shapes",))
            if max(s for _, s in export.tflite_shapes) >= export.kv_cache_size:
                raise ConfigError("export.kv_cache_size must exceed the longest prefill length in "
                                  "export.tflite_shapes (room for the generated tokens)",
                                  keys=("export.kv_cache_size", "export.tflite_shapes"))

    def check_installed(self) -> None:
        """Refuse, before anything runs, a format whose exporter is not installed (a one-line
        DependencyError saying what to install)."""
        import importlib.util

        from kd_edge.errors import DependencyError

        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            how = f"pip install 'kd-edge[{self.extra}]'" if self.extra else f"pip install {' '.join(missing)}"
            raise DependencyError(f"{self.name} export needs {', '.join(missing)}, which is not installed; run: {how}")

    # -- files -----------------------------------------------------------------------------------------
    def file_name(self, stem: str, precision: str) -> str:
        return f"{stem}.{precision}{self.suffix}"

    def companions(self, path: Path) -> list[Path]:
        """Files that must travel beside ``path`` (external weights...)."""
        return []

    def size(self, path: Path) -> int:
        """Bytes of the file and its companions."""
        return path.stat().st_size + sum(p.stat().st_size for p in self.companions(path))

    def weights_size(self, path: Path) -> int:
        """Bytes of the model itself, without what travels beside it (a tokenizer, configs)."""
        return self.size(path)

    def copy(self, src: Path, dst: Path) -> None:
        shutil.copyfile(src, dst)

    def remove(self, path: Path) -> None:
        for p in (path, *self.companions(path)):
            if p.exists():
                os.unlink(p)

    def check_file(self, path: Path) -> None:
        """Refuse a file that is not one of this format (truncated, renamed): a one-line ArtifactError."""
        if self.magic is None:
            return
        offset, magic = self.magic
        with open(path, "rb") as f:
            head = f.read(offset + len(magic))
        if head[offset:] != magic:
            raise ArtifactError(f"'{path}' is not a {self.name} file (no {magic.decode(errors='replace')} identifier); "
                                "the file may be truncated or renamed: export it again")
