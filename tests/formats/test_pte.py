"""ExecuTorch .pte (XNNPACK) for encoders: exported by torch.export and ExecuTorch's lowering, checked and
benchmarked in ExecuTorch's own runtime. A tiny BERT built from a config."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kd_edge.artifacts import read_json
from tests.conftest import sentences, write_tiny_bert


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from kd_edge.cli.export_folder import export_model_dir
    from kd_edge.export.config import ArtifactSpec, ExportConfig

    root = tmp_path_factory.mktemp("pte")
    bert = write_tiny_bert(root / "bert", layers=1)
    texts = root / "texts.txt"
    texts.write_text("".join(s["text"] + "\n" for s in sentences(30, seed=5)))
    out = root / "files"
    records = export_model_dir(bert, out, ExportConfig(artifacts=[ArtifactSpec(format="pte")]), texts=texts)
    return out, records


def test_fp32_pte_matches_the_float64_model_in_executorchs_runtime(exported):
    out, records = exported
    (record,) = records
    assert record["passed"] and record["max_abs_diff"] <= 1e-4, record
    side = read_json(out / "student.fp32.pte.json")
    assert side["runtime"] == "executorch" and side["delegate"] == "XnnpackPartitioner"
    assert side["delegated_subgraphs"] > 0 and "linear" not in side["not_delegated"]  # the matmuls run in XNNPACK
    assert side["max_sequence"] == 64  # the tiny BERT's positions bound the dynamic sequence


def test_the_device_runner_measures_a_pte_file(exported):
    from kd_edge.bench import RUNNER_PATH

    out, _ = exported
    vocab = json.loads((out.parent / "bert" / "config.json").read_text())["vocab_size"]
    proc = subprocess.run([sys.executable, str(RUNNER_PATH), str(out / "student.fp32.pte"), "--runtime", "executorch",
                           "--seq", "32", "--runs", "5", "--warmup", "1", "--threads", "1", "--vocab-size", str(vocab)],
                          capture_output=True, text=True, timeout=120)
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc["runtime"] == "executorch" and doc["runtime_version"].startswith("executorch")
    assert doc["latency"]["p50_ms"] > 0 and doc["timed_runs"] == 5


def test_pte_for_a_causal_lm_is_refused_before_anything_runs():
    from kd_edge.errors import ConfigError
    from kd_edge.export.config import ArtifactSpec, ExportConfig
    from kd_edge.formats import check_export
    from kd_edge.tasks.kinds import task_kind

    with pytest.raises(ConfigError, match="pte files hold encoders .*a causal_lm student exports to onnx, tflite, gguf"):
        check_export(task_kind("causal_lm"), ExportConfig(artifacts=[ArtifactSpec(format="pte")]))
