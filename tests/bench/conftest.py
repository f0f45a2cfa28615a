"""Fixtures shared by the benchmark-target tests."""

from __future__ import annotations

import pytest

from kd_edge.export import EXPORTERS
from kd_edge.tasks import TASKS


@pytest.fixture(scope="session")
def files(tiny_teacher, tmp_path_factory):
    """The tiny embedder exported as student.fp32.onnx and student.fp32.tflite (one 1 x 16 signature)."""
    task = TASKS.get("sentence_embedding")()
    module = task.export_module(task.load_model(tiny_teacher, eager=True), {"pooling": "mean", "normalize": True})
    out = tmp_path_factory.mktemp("files")
    names = ("input_ids", "attention_mask")
    EXPORTERS.get("onnx")().export(module, out / "student.fp32.onnx", input_names=names, output_name="e", opset=17)
    EXPORTERS.get("tflite")().export(module, out / "student.fp32.tflite", input_names=names, output_name="e",
                                     shapes=[(1, 16)], log_path=out / "log.txt")
    return out
