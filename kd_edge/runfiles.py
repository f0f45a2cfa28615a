"""The contract between stages: where each output lives in a run folder, and readers for the shared
ones. Stages never import each other; they read each other's files through these helpers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kd_edge.artifacts import read_json
from kd_edge.errors import ArtifactError

if TYPE_CHECKING:
    from kd_edge.config import Recipe
    from kd_edge.data.packed import Packed

STUDENT_META = "kd_edge.json"


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows as JSON lines."""
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read JSON lines."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def need(path: Path, what: str) -> Path:
    """``path`` if it exists, else an ArtifactError naming the stage that makes it."""
    if not path.exists():
        raise ArtifactError(f"{path} is missing; {what}")
    return path


def training_rows(recipe: "Recipe", run_dir: Path) -> list[dict[str, Any]]:
    """The rows the student trains on: the train split, plus or instead of generated/train.jsonl."""
    rows = read_jsonl(run_dir / "data" / "train.jsonl")
    generated = run_dir / "generated" / "train.jsonl"
    if not generated.is_file():
        return rows
    made = read_jsonl(generated)
    d = recipe.distill
    if (d.rationale and d.rationale.source == "teacher") or (d.generate and not d.generate.keep_original):
        return made
    return rows + made


def student_meta(folder: Path) -> dict:
    """kd-edge's notes saved beside a student (task, pooling, origin)."""
    path = folder / STUDENT_META
    if not path.is_file():
        raise ArtifactError(f"{folder} has no {STUDENT_META}; it was not written by kd-edge")
    return json.loads(path.read_text())


def load_cache(run_dir: Path) -> tuple[dict, Path]:
    """The teacher cache's meta.json and the folder holding its arrays (the run's own, or a shared one
    whose key must match)."""
    folder = run_dir / "teacher_cache"
    if not (folder / "meta.json").is_file():
        raise ArtifactError(f"{folder} holds no teacher cache; run the teacher stage (kd-edge run) first")
    meta = read_json(folder / "meta.json")
    if meta.get("shared"):
        shared = Path(meta["shared"])
        if not (shared / "meta.json").is_file() or read_json(shared / "meta.json").get("key") != meta["key"]:
            raise ArtifactError(f"the shared teacher cache {shared} is gone or was made for other inputs; "
                                "rerun with --force to rebuild it")
        folder = shared
    return meta, folder


class CacheReader:
    """Read access to a run's teacher cache: token ids, labels, weights and each teacher's fields."""

    def __init__(self, run_dir: Path):
        self.meta, self.folder = load_cache(run_dir)
        self._packed: dict[str, Any] = {}

    def ids(self, split: str) -> "Packed":
        from kd_edge.data.packed import Packed

        if split not in self._packed:
            self._packed[split] = Packed.load(self.folder, f"{split}_ids", mmap=False)
        return self._packed[split]

    def labels(self, split: str) -> np.ndarray:
        return np.load(self.folder / f"{split}_labels.npy")

    def weights(self, split: str) -> "Packed | None":
        from kd_edge.data.packed import Packed

        path = self.folder / f"{split}_weights.npy"
        return Packed(np.load(path), self.ids(split).offsets) if path.is_file() else None

    def n_teachers(self) -> int:
        return len(self.meta["teachers"])

    def field(self, teacher: int, split: str, name: str) -> np.ndarray:
        """One cached field (memory-mapped): [N, ...] per example or [tokens, ...] per token."""
        path = self.folder / f"t{teacher}" / f"{split}_{name}.npy"
        if not path.is_file():
            raise ArtifactError(f"the teacher cache has no {split} field '{name}' for teacher {teacher}; "
                                "rerun the teacher stage (kd-edge run --force)")
        return np.load(path, mmap_mode="r")

    def has(self, teacher: int, split: str) -> bool:
        return any((self.folder / f"t{teacher}").glob(f"{split}_*.npy"))

    def batch(self, teacher: int, split: str, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Every cached field of teacher ``teacher`` for examples ``idx``, token-level ones padded."""
        from kd_edge.data.packed import Packed, pad

        offsets = self.ids(split).offsets
        out = {}
        for name, level in self.meta["teachers"][teacher]["fields"].items():
            if not (self.folder / f"t{teacher}" / f"{split}_{name}.npy").is_file():
                continue
            arr = self.field(teacher, split, name)
            if level == "example":
                out[name] = np.ascontiguousarray(arr[idx])
            else:
                packed = Packed(arr, offsets)
                out[name] = pad([np.asarray(packed[i]) for i in idx], 0)[0]
        return out
