"""The run folder's layout, and readers for the files stages share.

This is the one module that spells a path inside a run folder: every stage, the pipeline, the report
and the gate reach a run's files through ``RunFiles`` (``RunFiles(run_dir).eval.metrics``) and the
small classes for each folder below. A folder class takes any folder, so a stage writing under a
temporary name (``with atomic_dir(files.eval.path) as out: EvalFiles(out).metrics``) uses the same names
its readers will. Stages never import each other; they read each other's files through here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kd_edge.artifacts import read_json
from kd_edge.errors import ArtifactError

if TYPE_CHECKING:
    from kd_edge.config import Recipe
    from kd_edge.data.packed import Packed

STUDENT_META = "kd_edge.json"  # written beside a student's weights (task, pooling, origin)
PREPARE_META = "kd_edge_prepare.json"  # written beside a prepared teacher

# what each stage writes, relative to the run folder (the manifest records these)
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "data": ("data",),
    "prepare": ("teacher",),
    "generate": ("generated",),
    "teacher": ("teacher_cache",),
    "student": ("student_init",),
    "distill": ("student", "train/metrics.jsonl", "train/summary.json"),
    "baseline": ("baseline", "baseline_train"),
    "evaluate": ("eval",),
    "export": ("artifacts",),
    "verify": ("verify",),
    "bench": ("bench",),
    "report": ("report.json", "report.md", "report.html", "student/README.md"),
    "gate": ("gate.json",),
}


def foreign_outputs(stage: str) -> tuple[str, ...]:
    """What other stages write inside this stage's folders (the report stage's model card in the
    distill stage's student/): a path a stage names is that stage's own, wherever it lies, so the
    outer stage's records leave it out and writing it never makes the outer stage look changed."""
    mine = STAGE_OUTPUTS[stage]
    return tuple(p for other, paths in STAGE_OUTPUTS.items() if other != stage for p in paths
                 if any(p.startswith(f"{m}/") for m in mine))


@dataclass(frozen=True)
class _Folder:
    path: Path

    def exists(self) -> bool:
        return self.path.is_dir()


class DataFiles(_Folder):
    """``data/``: the split text."""

    @property
    def train(self) -> Path:
        return self.path / "train.jsonl"

    @property
    def test(self) -> Path:
        return self.path / "test.jsonl"

    @property
    def meta(self) -> Path:
        return self.path / "meta.json"


class GeneratedFiles(_Folder):
    """``generated/``: teacher-made training rows."""

    @property
    def rows(self) -> Path:
        return self.path / "train.jsonl"

    @property
    def meta(self) -> Path:
        return self.path / "meta.json"


class CacheFiles(_Folder):
    """``teacher_cache/`` (or a shared cache folder): token ids, labels, weights, each teacher's fields."""

    @property
    def meta(self) -> Path:
        return self.path / "meta.json"

    def ids_name(self, split: str) -> str:
        return f"{split}_ids"

    def labels(self, split: str) -> Path:
        return self.path / f"{split}_labels.npy"

    def weights(self, split: str) -> Path:
        return self.path / f"{split}_weights.npy"

    def teacher_ids_name(self, split: str) -> str:
        """A student with its own tokenizer: the teachers' token ids (the run's ids are the student's)."""
        return f"{split}_teacher_ids"

    def teacher_weights(self, split: str) -> Path:
        return self.path / f"{split}_teacher_weights.npy"

    def alignment(self, split: str) -> Path:
        """Per student token, the packed index of the teacher token that read the same text, or -1."""
        return self.path / f"{split}_alignment.npy"

    @property
    def vocab_map(self) -> Path:
        """Per teacher token id, the student's id of the token spelled alike, or -1."""
        return self.path / "vocab_map.npy"

    @property
    def trimmed_tokenizer(self) -> Path:
        """``student.vocabulary: trim``: the student's tokenizer, the teacher's with the unused tokens removed."""
        return self.path / "student_tokenizer"

    @property
    def kept_ids(self) -> Path:
        """``student.vocabulary: trim``: the teacher ids the student keeps, in the order of its own ids."""
        return self.path / "kept_ids.npy"

    def teacher(self, index: int) -> Path:
        return self.path / f"t{index}"

    def field(self, index: int, split: str, name: str) -> Path:
        return self.teacher(index) / f"{split}_{name}.npy"


class TrainFiles(_Folder):
    """``train/``: the distillation's metrics, summary and (while it runs) checkpoints."""

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def mutual_teacher(self) -> Path:
        return self.path / "teacher"


class EvalFiles(_Folder):
    """``eval/``: every model's metrics on held-out data, and what verify compares files with."""

    STUDENT_TEST = "student_test.npy"

    @staticmethod
    def probe_name(model: str) -> str:
        return f"probe_{model}.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def student_test(self) -> Path:
        return self.path / self.STUDENT_TEST

    def probe(self, model: str) -> Path:
        return self.path / self.probe_name(model)


class ArtifactFiles(_Folder):
    """``artifacts/``: exported files, each with a sidecar JSON."""

    def file(self, name: str) -> Path:
        return self.path / name

    def sidecar(self, name: str) -> Path:
        return self.path / f"{name}.json"

    def sidecars(self) -> list[Path]:
        """``<file>.json`` of every exported file (not the tokenizer's and generation settings' JSON
        that travel beside them)."""
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.glob("*.json") if p.with_suffix("").exists())


class VerifyFiles(_Folder):
    """``verify/``: one parity record per exported file, and the student's own."""

    def record(self, name: str) -> Path:
        return self.path / f"{name}.json"

    @property
    def student(self) -> Path:
        return self.record("student")


def safe_name(name: str) -> str:
    """A target name usable in a file name (user@host:port -> user_host_port)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


class BenchFiles(_Folder):
    """``bench/`` (or the folder `kd-edge bench --out` names): one record per model and target."""

    def record(self, model: str, target: str, suffix: str = "") -> Path:
        return self.path / f"{model}@{safe_name(target)}{suffix}.json"

    def records(self) -> list[Path]:
        return sorted(self.path.glob("*@*.json")) if self.path.is_dir() else []

    @property
    def machine(self) -> Path:
        return self.path / "machine.json"

    @property
    def macs(self) -> Path:
        return self.path / "macs.json"


class RunFiles:
    """Every path inside one run folder."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def __truediv__(self, rel: str) -> Path:  # the manifest's relative output names
        return self.root / rel

    def is_run(self) -> bool:
        """True when the folder holds a kd-edge run (its manifest, or the resolved recipe it starts with)."""
        return self.manifest.is_file() or self.resolved_recipe.is_file()

    manifest = property(lambda self: self.root / "manifest.json")
    resolved_recipe = property(lambda self: self.root / "recipe.resolved.yaml")
    lock = property(lambda self: self.root / ".lock")
    logs = property(lambda self: self.root / "logs")

    def log(self, name: str) -> Path:
        """A converter's or runtime's log file (``logs/<name>.log``), kept out of the terminal."""
        return self.logs / f"{name}.log"
    data = property(lambda self: DataFiles(self.root / "data"))
    prepared_teacher = property(lambda self: self.root / "teacher")
    generated = property(lambda self: GeneratedFiles(self.root / "generated"))
    # a served teacher's answers, one file per request hash: kept across stages, runs and --force, so
    # that nothing is sent twice (distill/served.py)
    served = property(lambda self: self.root / "served")
    teacher_cache = property(lambda self: CacheFiles(self.root / "teacher_cache"))
    student_init = property(lambda self: self.root / "student_init")
    student = property(lambda self: self.root / "student")
    train = property(lambda self: TrainFiles(self.root / "train"))
    baseline = property(lambda self: self.root / "baseline")  # the student trained without the teacher
    baseline_train = property(lambda self: TrainFiles(self.root / "baseline_train"))
    eval = property(lambda self: EvalFiles(self.root / "eval"))
    artifacts = property(lambda self: ArtifactFiles(self.root / "artifacts"))
    verify = property(lambda self: VerifyFiles(self.root / "verify"))
    bench = property(lambda self: BenchFiles(self.root / "bench"))
    report_json = property(lambda self: self.root / "report.json")
    model_card = property(lambda self: self.root / "student" / "README.md")  # the report stage's
    report_md = property(lambda self: self.root / "report.md")
    report_html = property(lambda self: self.root / "report.html")
    gate = property(lambda self: self.root / "gate.json")


def report_file(path: Path) -> Path:
    """``path`` itself when it is a report.json, else the report.json of the run folder it names."""
    return RunFiles(path).report_json if Path(path).is_dir() else Path(path)


def resolved_recipe_beside(report: Path) -> Path:
    """The recipe.resolved.yaml of the run a report.json belongs to."""
    return RunFiles(Path(report).parent).resolved_recipe


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
    files = RunFiles(run_dir)
    rows = read_jsonl(files.data.train)
    generated = files.generated.rows
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
    cache = RunFiles(run_dir).teacher_cache
    if not cache.meta.is_file():
        raise ArtifactError(f"{cache.path} holds no teacher cache; run the teacher stage (kd-edge run) first")
    meta = read_json(cache.meta)
    folder = cache.path
    if meta.get("shared"):
        shared = CacheFiles(Path(meta["shared"]))
        if not shared.meta.is_file() or read_json(shared.meta).get("key") != meta["key"]:
            raise ArtifactError(f"the shared teacher cache {shared} is gone or was made for other inputs; "
                                "rerun with --force to rebuild it")
        folder = shared.path
    return meta, folder


class CacheReader:
    """Read access to a run's teacher cache: token ids, labels, weights and each teacher's fields."""

    def __init__(self, run_dir: Path):
        self.meta, self.folder = load_cache(run_dir)
        self.files = CacheFiles(self.folder)
        self._packed: dict[str, Any] = {}

    def ids(self, split: str) -> "Packed":
        from kd_edge.data.packed import Packed

        if split not in self._packed:
            self._packed[split] = Packed.load(self.folder, self.files.ids_name(split), mmap=False)
        return self._packed[split]

    def labels(self, split: str) -> np.ndarray:
        return np.load(self.files.labels(split))

    def weights(self, split: str) -> "Packed | None":
        from kd_edge.data.packed import Packed

        path = self.files.weights(split)
        return Packed(np.load(path), self.ids(split).offsets) if path.is_file() else None

    def n_teachers(self) -> int:
        return len(self.meta["teachers"])

    def field(self, teacher: int, split: str, name: str) -> np.ndarray:
        """One cached field (memory-mapped): [N, ...] per example or [tokens, ...] per token."""
        path = self.files.field(teacher, split, name)
        if not path.is_file():
            raise ArtifactError(f"the teacher cache has no {split} field '{name}' for teacher {teacher}; "
                                "rerun the teacher stage (kd-edge run --force)")
        return np.load(path, mmap_mode="r")

    def has_field(self, teacher: int, split: str, name: str) -> bool:
        return self.files.field(teacher, split, name).is_file()

    def has(self, teacher: int, split: str) -> bool:
        return any(self.files.teacher(teacher).glob(f"{split}_*.npy"))

    @property
    def cross_tokenizer(self) -> bool:
        """Whether the student reads text with its own tokenizer (the teachers' tokens are kept apart)."""
        return "cross_tokenizer" in self.meta

    @property
    def trimmed(self) -> bool:
        """Whether the student reads a trimmed copy of the teacher's vocabulary (``student.vocabulary: trim``)."""
        return (self.meta.get("vocabulary") or {}).get("method") == "trim"

    def kept_ids(self) -> np.ndarray:
        """A trimmed vocabulary: the teacher id of each of the student's ids."""
        return np.load(self.files.kept_ids)

    def teacher_ids(self, split: str) -> "Packed":
        """The token ids the teachers read: the run's own, or theirs for a student with its own tokenizer
        (a trimmed vocabulary: the training split's, which it reads exactly as the teacher does)."""
        from kd_edge.data.packed import Packed

        if self.trimmed:
            if split != "train":
                raise ArtifactError("a trimmed vocabulary reads held-out text its own way; only the training split's "
                                    "teacher ids are kept")
            ids = self.ids(split)
            return Packed(self.kept_ids()[ids.values].astype(ids.values.dtype), ids.offsets)
        if not self.cross_tokenizer:
            return self.ids(split)
        key = f"teacher:{split}"
        if key not in self._packed:
            self._packed[key] = Packed.load(self.folder, self.files.teacher_ids_name(split), mmap=False)
        return self._packed[key]

    def teacher_weights(self, split: str) -> "Packed | None":
        """The teachers' per-token loss weights (the run's own, or on their tokens for a student with its own
        tokenizer), None when no row has weighted segments."""
        from kd_edge.data.packed import Packed

        if not self.cross_tokenizer:
            return self.weights(split)
        path = self.files.teacher_weights(split)
        return Packed(np.load(path), self.teacher_ids(split).offsets) if path.is_file() else None

    def alignment(self, split: str) -> np.ndarray:
        """Per student token (packed), the packed index of the teacher token that read the same text, or -1."""
        key = f"alignment:{split}"
        if key not in self._packed:
            self._packed[key] = np.load(self.files.alignment(split))
        return self._packed[key]

    def vocab_map(self) -> np.ndarray:
        """Per teacher token id, the student's id of the token spelled alike, or -1."""
        if "vocab_map" not in self._packed:
            self._packed["vocab_map"] = np.load(self.files.vocab_map)
        return self._packed["vocab_map"]

    def student_matched(self) -> np.ndarray:
        """Per student token id, whether a teacher token is spelled alike (``vocab_map`` the other way)."""
        if "student_matched" not in self._packed:
            mapping, size = self.vocab_map(), self.meta["vocab_size"]
            matched = np.zeros(size, bool)
            matched[mapping[(mapping >= 0) & (mapping < size)]] = True
            self._packed["student_matched"] = matched
        return self._packed["student_matched"]

    def batch(self, teacher: int, split: str, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Every cached field of teacher ``teacher`` for examples ``idx``, token-level ones padded to the
        student's tokens. For a student with its own tokenizer, a token-level field holds, at each student
        position, the teacher's value at the aligned position (zeros where none), with ``aligned`` (1/0)
        saying where, and the teacher's top-k ids come with the student's ids of the same tokens
        (``topk_student_ids``, -1 where the student's vocabulary has no such token), with which student
        tokens have a teacher counterpart (``student_matched``, [vocabulary])."""
        from kd_edge.data.packed import Packed, pad

        offsets = self.ids(split).offsets
        where = self.alignment(split) if self.cross_tokenizer else None
        out = {}
        for name, level in self.meta["teachers"][teacher]["fields"].items():
            if not self.files.field(teacher, split, name).is_file():
                continue
            arr = self.field(teacher, split, name)
            if level == "example":
                out[name] = np.ascontiguousarray(arr[idx])
            elif where is None:
                packed = Packed(arr, offsets)
                out[name] = pad([np.asarray(packed[i]) for i in idx], 0)[0]
            else:
                rows = []
                for i in idx:
                    at = where[offsets[i]:offsets[i + 1]]
                    row = np.array(arr[np.maximum(at, 0)])
                    row[at < 0] = 0
                    rows.append(row)
                out[name] = pad(rows, 0)[0]
        if where is not None:
            out["aligned"] = pad([(where[offsets[i]:offsets[i + 1]] >= 0).astype(np.float32) for i in idx], 0.0)[0]
            if "topk_indices" in out:
                mapping = self.vocab_map()
                out["topk_student_ids"] = mapping[np.minimum(out["topk_indices"].astype(np.int64), len(mapping) - 1)]
                out["student_matched"] = self.student_matched()
        return out
