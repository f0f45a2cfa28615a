"""The contract between stages: where each output lives in a run folder, and readers for the shared
ones. Stages never import each other; they read each other's files through these helpers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from kd_edge.artifacts import read_json
from kd_edge.errors import ArtifactError

STUDENT_META = "kd_edge.json"


def load_cache(run_dir: Path) -> tuple[dict, Path]:
    """The teacher cache's meta.json and folder."""
    folder = run_dir / "teacher_cache"
    if not (folder / "meta.json").is_file():
        raise ArtifactError(f"{folder} holds no teacher cache; run the teacher stage (kd-edge run) first")
    return read_json(folder / "meta.json"), folder


def split_arrays(run_dir: Path, split: str):
    """(token ids as Packed, teacher pooled [N, H], labels [N] with -1 for none) of a split."""
    from kd_edge.data.packed import Packed

    _, folder = load_cache(run_dir)
    return (Packed.load(folder, f"{split}_ids", mmap=False), np.load(folder / f"{split}_pooled.npy"),
            np.load(folder / f"{split}_labels.npy"))


def need(path: Path, what: str) -> Path:
    """``path`` if it exists, else an ArtifactError naming the stage that makes it."""
    if not path.exists():
        raise ArtifactError(f"{path} is missing; {what}")
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows as JSON lines."""
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read JSON lines."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def student_meta(folder: Path) -> dict:
    """kd-edge's notes saved beside a student (task, pooling, origin)."""
    path = folder / STUDENT_META
    if not path.is_file():
        raise ArtifactError(f"{folder} has no {STUDENT_META}; it was not written by kd-edge")
    return json.loads(path.read_text())
