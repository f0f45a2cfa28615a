"""ExecuTorch .pte (XNNPACK) for encoders and causal LMs: exported by torch.export and ExecuTorch's lowering,
checked and benchmarked in ExecuTorch's own runtime. A tiny BERT and a tiny Llama built from configs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kd_edge.artifacts import read_json
from tests.conftest import sentences, write_tiny_bert, write_tiny_llama


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from kd_edge.cli.export_folder import export_model_dir
    from kd_edge.export.config import ArtifactSpec, ExportConfig

    root = tmp_path_factory.mktemp("pte")
    bert = write_tiny_bert(root / "bert", layers=1)
    texts = root / "texts.txt"
    texts.write_text("".join(s["text"] + "\n" for s in sentences(30, seed=5)))
    out = root / "files"
    cfg = ExportConfig(artifacts=[ArtifactSpec(format="pte"), ArtifactSpec(format="pte", precision="int8")])
    return out, export_model_dir(bert, out, cfg, texts=texts)


def test_fp32_pte_matches_the_float64_model_in_executorchs_runtime(exported):
    out, records = exported
    record = records[0]
    assert record["passed"] and record["max_abs_diff"] <= 1e-4, record
    side = read_json(out / "student.fp32.pte.json")
    assert side["runtime"] == "executorch" and side["delegate"] == "XnnpackPartitioner"
    assert side["delegated_subgraphs"] > 0 and "linear" not in side["not_delegated"]  # the matmuls run in XNNPACK
    assert side["max_sequence"] == 64  # the tiny BERT's positions bound the dynamic sequence


def test_int8_pte_runs_its_linears_in_xnnpack_at_8_bits_and_keeps_the_embeddings(exported):
    out, records = exported
    fp32, int8 = records
    assert int8["name"] == "student.int8.pte" and int8["passed"], int8
    assert 1e-5 < int8["max_abs_diff"] < 0.05  # quantized, not a copy of the fp32 program
    assert int8["agreement"] >= 0.98  # embeddings with cosine > 0.99 to the model's
    side = read_json(out / "student.int8.pte.json")
    assert side["precision"] == "int8" and "8da8w" in side["quantization"]["method"]
    assert "linear" not in side["not_delegated"] and "quantized_decomposed::embedding_byte" in side["not_delegated"]
    assert "embedding" not in side["not_delegated"]  # every table is looked up from int8
    assert side["size_bytes"] < 0.7 * read_json(out / "student.fp32.pte.json")["size_bytes"]  # .pte + its .ptd
    assert not list(out.glob("_*"))  # the prebuilt int8 program was taken, nothing left over


def test_an_operator_no_executorch_kernel_runs_is_named_before_a_file_is_written(tmp_path):
    import torch

    from kd_edge.errors import ExportError
    from kd_edge.formats.pte import PteExporter

    class Sorts(torch.nn.Module):  # a model whose graph calls aten::sort: not XNNPACK's, and no portable kernel
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

        def forward(self, ids, mask):
            return torch.sort(self.proj(ids.float()[..., None].expand(-1, -1, 4)), dim=1).values

    out = tmp_path / "sorts.pte"
    with pytest.raises(ExportError, match=r"does not take operator aten::sort\.values and ExecuTorch's runtime has no "
                                          r"kernel for it; export to onnx or tflite instead"):
        PteExporter().export(Sorts(), out, input_names=("input_ids", "attention_mask"), output_name="x",
                             log_path=tmp_path / "export.log")
    assert not out.exists()


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


@pytest.fixture(scope="module")
def exported_lm(tmp_path_factory):
    from kd_edge.cli.export_folder import export_model_dir
    from kd_edge.export.config import ArtifactSpec, ExportConfig

    root = tmp_path_factory.mktemp("pte-lm")
    llama = write_tiny_llama(root / "llama", layers=1, hidden=32, logit_scale=8.0, tie=True)  # tied, as SmolLM2
    texts = root / "texts.txt"
    texts.write_text("".join(s["text"] + "\n" for s in sentences(20, seed=5)))
    cfg = ExportConfig(artifacts=[ArtifactSpec(format="pte"), ArtifactSpec(format="pte", precision="int8")],
                       tflite_shapes=[(1, 16)], kv_cache_size=64)
    return root / "files", export_model_dir(llama, root / "files", cfg, texts=texts), llama


def test_a_causal_lm_pte_prefills_decodes_and_generates_pytorchs_tokens(exported_lm):
    out, records, _ = exported_lm
    record = records[0]
    assert record["passed"], record
    assert record["max_abs_diff"] <= 1e-4 and record["decode_max_abs_diff"] <= 1e-4  # as a prompt and token by token
    assert record["greedy_prompts"] == 5 and record["greedy_same_as_pytorch"] == 5
    side = read_json(out / "student.fp32.pte.json")
    assert [s["name"] for s in side["signatures"]] == ["prefill_16", "decode"]
    assert side["kv_cache"]["size"] == 64 and side["delegated_subgraphs"] > 0


def test_int8_causal_lm_pte_keeps_perplexity_and_looks_its_tokens_up_at_8_bits(exported_lm):
    out, records, _ = exported_lm
    int8 = records[1]
    assert int8["name"] == "student.int8.pte" and int8["passed"], int8
    assert 1e-4 < int8["max_abs_diff"] < 0.2 and abs(int8["perplexity_increase"]) < 0.01
    assert int8["greedy_prompts"] == 5
    side = read_json(out / "student.int8.pte.json")
    assert [s["name"] for s in side["signatures"]] == ["prefill_16", "decode"]
    assert "embedding" not in side["not_delegated"] and "quantized_decomposed::embedding_byte" in side["not_delegated"]
    assert "SmoothQuant alpha 0.5 on the output head" in side["quantization"]["head_smoothing"]  # the texts calibrated it


def _feeds(llama, n=8):
    import numpy as np
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama)
    return [{"input_ids": np.asarray([tok(s["text"])["input_ids"]])} for s in sentences(n, seed=5)]


def test_smoothing_the_head_is_an_identity_in_float_and_moves_its_input_range_into_the_weights(exported_lm):
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    from kd_edge.formats.pte import smooth_head

    _, _, llama = exported_lm
    model = AutoModelForCausalLM.from_pretrained(llama).eval()
    smoothed = copy.deepcopy(model)
    with torch.no_grad():  # an outlier channel in the norm's output, as SmolLM2's has
        model.model.norm.weight[3] *= 40
        smoothed.model.norm.weight[3] *= 40
    assert smooth_head(smoothed, _feeds(llama)) is not None
    assert smoothed.lm_head.weight.data_ptr() != smoothed.model.embed_tokens.weight.data_ptr()  # the table stays
    ids = torch.tensor([[1, 5, 9, 22, 7]])
    with torch.no_grad():
        assert torch.allclose(smoothed(ids).logits, model(ids).logits, atol=1e-5)
        x = smoothed.model(ids).last_hidden_state.abs().amax((0, 1))
    assert x[3] / x.median() < 0.5 * model.model(ids).last_hidden_state.abs().amax((0, 1))[3] / x.median()
    assert smooth_head(copy.deepcopy(model), []) is None  # no texts: nothing done


def test_the_weights_travel_in_a_ptd_beside_the_program_and_a_tied_table_is_stored_once(exported_lm):
    from transformers import AutoModelForCausalLM

    from kd_edge.formats.pte import int8_module

    out, records, llama = exported_lm
    model = AutoModelForCausalLM.from_pretrained(llama).eval()
    tables = {"fp32": model.lm_head.weight.detach().numpy().tobytes(),  # the head's and the lookup's
              # the head's int8 rows (smoothed on the texts the export calibrated on)
              "int8": int8_module(model, _feeds(llama, 20))[0].model.embed_tokens.weight.numpy().tobytes()}
    for precision, table in tables.items():
        side = read_json(out / f"student.{precision}.pte.json")
        ptd = (out / f"student.{precision}.ptd").read_bytes()
        assert side["size_bytes"] == (out / f"student.{precision}.pte").stat().st_size + len(ptd)
        # XNNPACK's head and the portable lookup read one copy (it was stored twice in the .pte before)
        assert ptd.count(table) == 1, precision


def test_the_device_runner_measures_a_causal_lm_pte_through_its_prefill(exported_lm):
    from kd_edge.bench import RUNNER_PATH

    out, _, llama = exported_lm
    vocab = json.loads((llama / "config.json").read_text())["vocab_size"]
    cmd = [sys.executable, str(RUNNER_PATH), str(out / "student.fp32.pte"), "--runtime", "executorch", "--runs", "5",
           "--warmup", "1", "--threads", "1", "--vocab-size", str(vocab)]
    lm = ["--lm-pp", "12,32", "--lm-tg", "8@0,8@12,8@60", "--lm-ttft", "12"]
    doc = json.loads(subprocess.run(cmd + ["--seq", "12", *lm], capture_output=True, text=True, timeout=120).stdout)
    assert doc["latency"]["p50_ms"] > 0 and doc["timed_runs"] == 5 and doc["runtime_version"] == "executorch 1.5.1"
    assert doc["lm"]["pp12"]["tokens_per_s"] > 0 and doc["lm"]["tg8@0"]["tokens_per_s"] > 0  # prefill_16, then decode
    assert doc["lm"]["tg8@12"]["tokens_per_s"] > 0 and doc["lm"]["ttft_ms"] > 0
    assert doc["lm"]["pp32"] == {"na": "no prefill method holds 32 tokens (longest: 16)"}
    cmd[2] = str(out / "student.int8.pte")  # its embedding_byte runs on the quantized kernels the runner loads
    doc = json.loads(subprocess.run(cmd + ["--seq", "12"], capture_output=True, text=True, timeout=120).stdout)
    assert doc["latency"]["p50_ms"] > 0 and doc["timed_runs"] == 5


def test_pte_shapes_of_a_causal_lm_are_checked_before_anything_runs():
    from kd_edge.errors import ConfigError
    from kd_edge.export.config import ArtifactSpec, ExportConfig
    from kd_edge.formats import check_export
    from kd_edge.tasks.kinds import task_kind

    with pytest.raises(ConfigError, match="causal-LM pte files take batch 1"):
        check_export(task_kind("causal_lm"), ExportConfig(artifacts=[ArtifactSpec(format="pte")], tflite_shapes=[(2, 16)]))
