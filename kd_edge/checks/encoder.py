"""An encoder's exported file against the PyTorch student, through the file's own runtime: outputs on
every text (ONNX in batches, TFLite by signature), max and mean |Δ| against the student computed in
float64 (checks/reference.py), the task metrics (with the probe fitted on the PyTorch student, as
deployed), agreement with the student's predictions, and the verdict (checks/verdicts.py).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kd_edge import device_runner
from kd_edge.artifacts import read_json
from kd_edge.data.packed import Packed, length_batches, pad
from kd_edge.errors import ExportError
from kd_edge.export.capture import captured
from kd_edge.checks.reference import Parity, exact_outputs
from kd_edge.checks.verdicts import verdict
from kd_edge.runfiles import CacheReader, RunFiles, need
from kd_edge.tasks.kinds import task_kind

if TYPE_CHECKING:
    from kd_edge.config import Recipe

ONNX_BATCH = 32


def run_onnx(path: Path, ids: Packed, pad_id: int, threads: int | None) -> np.ndarray:
    """Outputs of an ONNX file on every sequence (dynamic shapes: length-sorted batches)."""
    backend = device_runner.OrtBackend(str(path), threads)
    out = None
    for idx in length_batches(ids.lengths(), ONNX_BATCH):
        arr, mask = pad([ids[i] for i in idx], pad_id)
        y = backend.run({"input_ids": arr, "attention_mask": mask})[0]
        if out is None:
            out = np.zeros((len(ids), y.shape[1]), np.float32)
        out[idx] = y
    return out


def fitting_bucket(n: int, buckets: list[tuple[int, str]]) -> tuple[int, str]:
    """The smallest (length, signature) of the sorted batch-1 ``buckets`` that holds ``n`` tokens, or
    a one-line ExportError."""
    fit = [b for b in buckets if b[0] >= n]
    if not fit:
        raise ExportError(f"a test text has {n} tokens, longer than every TFLite bucket "
                          f"({', '.join(name for _, name in buckets)}); add a longer shape (export.tflite_shapes in a "
                          "recipe, --shapes on the command line)")
    return fit[0]


def run_tflite(path: Path, ids: Packed, pad_id: int, threads: int | None, signatures: list[dict],
               log_path: Path) -> np.ndarray:
    """Outputs of a TFLite file: each sequence padded to the smallest batch-1 bucket that holds it."""
    buckets = sorted((s["seq"], s["name"]) for s in signatures if s["batch"] == 1)
    if not buckets:
        raise ExportError(f"{path.name} has no batch-1 signature to verify with; add (1, N) to export.tflite_shapes")
    backend = device_runner.TfliteBackend(str(path), threads)
    out = None
    for i in range(len(ids)):
        seq = ids[i]
        length, name = fitting_bucket(len(seq), buckets)
        arr, mask = pad([seq], pad_id, length=length)
        with captured(log_path) if i == 0 else contextlib.nullcontext():  # XNNPACK announces itself from C++
            y = backend.run({"input_ids": arr, "attention_mask": mask}, signature=name)[0]
        if out is None:
            out = np.zeros((len(ids), y.shape[1]), np.float32)
        out[i] = y[0]
    return out


def onnx_outputs(path: Path, info: dict, ids: Packed, pad_id: int, threads: int | None, log_path: Path) -> np.ndarray:
    """The ONNX format's feeder (kd_edge/formats/onnx.py)."""
    return run_onnx(path, ids, pad_id, threads)


def tflite_outputs(path: Path, info: dict, ids: Packed, pad_id: int, threads: int | None, log_path: Path) -> np.ndarray:
    """The TFLite format's feeder (kd_edge/formats/tflite.py)."""
    return run_tflite(path, ids, pad_id, threads, info["signatures"], log_path)


def file_outputs(path: Path, info: dict, ids: Packed, pad_id: int, threads: int | None, log_path: Path) -> np.ndarray:
    """An encoder file's outputs on every text, through the feeder its format declares."""
    from kd_edge.formats import format_named, load

    fmt = format_named(info["format"])
    if fmt.encoder_outputs is None:
        raise ExportError(f"{path.name}: {fmt.name} files hold causal LMs; an encoder cannot be checked in one")
    return load(fmt.encoder_outputs)(path, info, ids, pad_id, threads, log_path)


def signature_diffs(path: Path, ids: Packed, pad_id: int, threads: int | None, signatures: list[dict],
                    reference: np.ndarray, log_path: Path, batches: int = 4,
                    parity: Parity | None = None) -> dict[str, float]:
    """max |Δ| of every TFLite signature against the reference, on up to ``batches`` full batches of
    texts that fit its sequence length (each padded to it); each comparison also counts in ``parity``."""
    backend = device_runner.TfliteBackend(str(path), threads)
    diffs = {}
    lengths = ids.lengths()
    for sig in signatures:
        fit = [i for i in range(len(ids)) if lengths[i] <= sig["seq"]][:sig["batch"] * batches]
        worst = 0.0
        for start in range(0, len(fit) - sig["batch"] + 1, sig["batch"]):
            idx = fit[start:start + sig["batch"]]
            arr, mask = pad([ids[i] for i in idx], pad_id, length=sig["seq"])
            with captured(log_path):
                y = backend.run({"input_ids": arr, "attention_mask": mask}, signature=sig["name"])[0]
            worst = max(worst, parity.add(y, reference[idx]) if parity is not None
                        else float(np.abs(y - reference[idx]).max()))
        diffs[sig["name"]] = worst
    return diffs


class Checker:
    """Measures exported files against the PyTorch student on one split of the run's data.

    ``reference`` is what predictions and task metrics are compared with: by default the PyTorch
    student's outputs on the test split (eval/student_test.npy); export passes the fp32 file's outputs
    on training texts when it decides whether an int8 file needs the float fallback, so that no choice
    is made on the test split. On the test split |Δ| is measured against ``exact``, the student
    computed in float64 (see checks/reference.py)."""

    def __init__(self, recipe: "Recipe", run_dir: Path, split: str = "test", limit: int | None = None):
        self.run_dir, self.kind, self.files = run_dir, task_kind(recipe.task), RunFiles(run_dir)
        cache = CacheReader(run_dir)
        field = self.kind.output_field
        ids, labels = cache.ids(split), cache.labels(split)
        teacher = cache.field(0, split, field)
        n = min(len(ids), limit) if limit else len(ids)
        self.ids = Packed(ids.values, ids.offsets[:n + 1]) if n < len(ids) else ids
        self.labels, self.teacher = labels[:n], np.asarray(teacher[:n])
        probe_path = self.files.eval.probe("student")
        self.probe = read_json(probe_path) if probe_path.is_file() else None
        evaluation = read_json(self.files.eval.metrics)
        self.metric, self.knn_k = evaluation["quality_metric"], evaluation["knn_k"]
        self.threads, self.pad_id, self.cfg = recipe.bench.threads, cache.meta["pad_id"], recipe.verify
        self.exact: np.ndarray | None = None
        self.tflite_log = self.files.log("verify-tflite")
        if split == "test":
            self.use_reference(np.load(need(self.files.eval.student_test, "run the evaluate stage first"))[:n])
            self.exact = self._exact(recipe)
            self.student["pytorch_fp32_max_abs_diff"] = float(np.abs(self.reference - self.exact).max())

    def _exact(self, recipe: "Recipe") -> np.ndarray:
        from kd_edge.runfiles import student_meta
        from kd_edge.tasks import TASKS
        from kd_edge.tasks.kinds import ModelSource

        task = TASKS.get(recipe.task)()
        folder = self.files.student
        module = task.export_module(task.load_model(ModelSource(folder)), student_meta(folder))
        return exact_outputs(module, self.ids)

    def use_reference(self, reference: np.ndarray) -> None:
        """Compare artifacts with these outputs (one row per text of the split)."""
        self.reference = reference
        self.student = self.kind.verify_metrics(reference, self.teacher, self.labels, self.probe, self.knn_k)

    def outputs(self, path: Path, info: dict) -> np.ndarray:
        """The file's outputs on every text of the split, through its own runtime."""
        return file_outputs(path, info, self.ids, self.pad_id, self.threads, self.tflite_log)

    def measure(self, path: Path, info: dict) -> dict:
        """|Δ| against the reference, task metrics, agreement, and the verdict."""
        outputs = self.outputs(path, info)
        exact = self.reference if self.exact is None else self.exact
        diff = np.abs(outputs - exact)
        parity = Parity(self.cfg.fp32_atol, self.cfg.fp32_rtol)
        parity.add(outputs, exact)
        record = {"name": info["name"], "format": info["format"], "precision": info["precision"],
                  "runtime": info["runtime"], "n_examples": len(self.ids),
                  "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                  **({} if self.exact is None else
                     {"max_abs_diff_vs_pytorch_fp32": float(np.abs(outputs - self.reference).max())}),
                  "agreement_with_student": self.kind.agreement(outputs, self.reference, self.labels, self.probe),
                  **self.kind.verify_metrics(outputs, self.teacher, self.labels, self.probe, self.knn_k)}
        if len(info.get("signatures", [])) > 1:  # a fixed-shape file: every signature, batched ones too
            record["signature_max_abs_diff"] = signature_diffs(
                path, self.ids, self.pad_id, self.threads, info["signatures"], exact, self.tflite_log, parity=parity)
        record.update(parity.record())
        record["passed"], record["reason"] = verdict(info, record, self.student, self.metric, self.cfg)
        return record
