"""The export stage on a tiny classifier run: the export matrix, and the int8 float fallback's wiring."""

from __future__ import annotations

import json

import pytest

from kd_edge.artifacts import read_json
from tests.conftest import tiny_recipe_dict
from tests.distill.test_methods import run

MATRIX = [{"format": "onnx", "precision": p} for p in ("fp32", "fp16", "int8", "int8-static")] + \
         [{"format": "tflite", "precision": p} for p in ("fp32", "fp16", "int8", "int8-weights")]


def classifier_run(tiny_classifier, tiny_data, out, **export):
    data = tiny_recipe_dict(tiny_classifier, tiny_data, task="sequence_classification",
                            distill={"max_steps": 4, "batch_size": 8, "checkpoint_every": 100,
                                     "losses": [{"name": "kl", "temperature": 2.0}, {"name": "ce", "weight": 0.5}]},
                            gate={"budgets": []})
    data["export"] = {"tflite_shapes": [[1, 32], [2, 32]], **export}
    return run(data, out, stop_after="report")


def test_every_format_and_precision_is_written_verified_and_reported(tmp_path, tiny_classifier, tiny_data):
    out = tmp_path / "run"
    classifier_run(tiny_classifier, tiny_data, out, artifacts=MATRIX, int8_fallback=False, calibration_size=16)
    names = {f"student.{a['precision']}.{a['format']}" for a in MATRIX}
    assert {p.name for p in (out / "artifacts").iterdir() if p.suffix != ".json"} == names  # no _base / _fused left
    for name in names:
        side = read_json(out / "artifacts" / f"{name}.json")
        ver = read_json(out / "verify" / f"{name}.json")
        assert side["size_bytes"] > 0 and ver["n_examples"] > 0 and "passed" in ver
        if side["precision"] == "fp32":
            assert ver["max_abs_diff"] <= 1e-4 and ver["passed"], (name, ver)
        else:
            assert side["quantization"]["method"]
    assert read_json(out / "artifacts" / "student.int8-static.onnx.json")["quantization"]["calibration_examples"] == 16
    tflite = read_json(out / "verify" / "student.fp32.tflite.json")
    assert set(tflite["signature_max_abs_diff"]) == {"b1_s32", "b2_s32"}  # every signature checked
    assert max(tflite["signature_max_abs_diff"].values()) <= 1e-4
    report = json.loads((out / "report.json").read_text())
    assert {r["name"] for r in report["rows"] if r["kind"] == "artifact"} == names


def test_int8_fallback_engages_when_the_drop_is_over_budget_and_says_what_stayed_in_float(
        tmp_path, tiny_classifier, tiny_data, monkeypatch):
    from kd_edge.export import run as export_run

    drops = iter([0.05, 0.03, 0.004])  # over the 1-point budget, still over at level 1, within at level 2
    seen = []

    def fake_drop(self, fmt, base, base_info, path, info):
        seen.append(path.stat().st_size)
        return next(drops), "accuracy"

    monkeypatch.setattr(export_run.Fallback, "drop", fake_drop)
    out = tmp_path / "run"
    classifier_run(tiny_classifier, tiny_data, out, artifacts=[{"format": "onnx", "precision": "int8-static"}],
                   calibration_size=16)
    side = read_json(out / "artifacts" / "student.int8-static.onnx.json")
    fb = side["fallback"]
    assert fb["engaged"] and fb["level"] == 2 and fb["within_budget"]
    assert "attention MatMuls" in fb["kept_in_float"] and "first and last layers" in fb["kept_in_float"]
    assert [t["drop"] for t in side["int8_check"]["tried"]] == [0.05, 0.03, 0.004]
    assert len(seen) == 3
    assert seen[1] <= 1.05 * seen[0]  # level 1 keeps every weight int8
    assert any("/layer.0/" in n and "dense/MatMul" in n for n in fb["nodes"])  # level 2: edge-layer weights float
    ver = read_json(out / "verify" / "student.int8-static.onnx.json")
    assert ver["fallback"]["nodes_in_float"] == len(fb["nodes"])
    row = next(r for r in json.loads((out / "report.json").read_text())["rows"] if r["name"] == "student.int8-static.onnx")
    assert row["fallback"]["level"] == 2
    assert "kept in float" in (out / "report.md").read_text()


def test_dynamic_int8_fallback_goes_straight_to_the_edge_layers(tmp_path, tiny_classifier, tiny_data, monkeypatch):
    from kd_edge.export import run as export_run

    drops = iter([0.05, 0.004])
    monkeypatch.setattr(export_run.Fallback, "drop", lambda *a: (next(drops), "accuracy"))
    out = tmp_path / "run"
    classifier_run(tiny_classifier, tiny_data, out, artifacts=[{"format": "onnx", "precision": "int8"}])
    side = read_json(out / "artifacts" / "student.int8.onnx.json")
    assert side["fallback"]["level"] == 2 and len(side["int8_check"]["tried"]) == 2
    assert any("/layer.0/" in n for n in side["fallback"]["nodes"])


def test_int8_within_budget_is_left_alone(tmp_path, tiny_classifier, tiny_data, monkeypatch):
    from kd_edge.export import run as export_run

    monkeypatch.setattr(export_run.Fallback, "drop", lambda *a: (0.002, "accuracy"))
    out = tmp_path / "run"
    classifier_run(tiny_classifier, tiny_data, out, artifacts=[{"format": "onnx", "precision": "int8"}])
    side = read_json(out / "artifacts" / "student.int8.onnx.json")
    assert "fallback" not in side and side["int8_check"]["tried"] == [{"nodes_in_float": 0, "drop": 0.002}]


@pytest.mark.parametrize("spec, message", [
    ({"format": "tflite", "precision": "int8-static"}, r"tflite files take no int8-static \(int8-static is a precision "
                                                       r"of onnx\); tflite takes fp32, fp16, int8, int8-weights"),
    ({"format": "onnx", "precision": "int8-weights"}, r"int8-weights is a precision of tflite\)"),
    ({"format": "gguf", "precision": "int8-static"}, r"gguf files take no int8-static"),
])
def test_precision_a_format_does_not_have_is_refused(spec, message):
    from pydantic import ValidationError

    from kd_edge.export.config import ArtifactSpec

    with pytest.raises(ValidationError, match=message):
        ArtifactSpec(**spec)


def test_causal_lm_exports_with_a_kv_cache_and_generates_like_pytorch(tmp_path, tiny_data):
    from tests.conftest import write_tiny_llama

    teacher = write_tiny_llama(tmp_path / "llama", logit_scale=20.0)
    data = tiny_recipe_dict(teacher, tiny_data, task="causal_lm",
                            teacher={"model": str(teacher), "top_k": 8, "batch_size": 16},
                            student={"layers": 2},
                            distill={"max_steps": 4, "batch_size": 8, "lr": 1e-4, "checkpoint_every": 100,
                                     "losses": [{"name": "kl"}, {"name": "ce", "weight": 0.5}]},
                            export={"artifacts": [{"format": "onnx", "precision": "fp32"},
                                                  {"format": "onnx", "precision": "int8"},
                                                  {"format": "tflite", "precision": "fp32"}],
                                    "tflite_shapes": [[1, 16], [1, 32]], "kv_cache_size": 80},
                            gate={"budgets": []}, bench={"runs": 5, "warmup_runs": 1, "threads": 1, "seq_len": 16, "rounds": 1,
                                                         "lm_prompt": [16, 64], "lm_generate": [[8, 0], [8, 76]],
                                                         "lm_ttft_prompt": 16})
    out = tmp_path / "run"
    run(data, out)
    side = read_json(out / "artifacts" / "student.fp32.onnx.json")
    assert side["kv_cache"] == {"layers": 2, "kv_heads": 2, "head_dim": 8}
    assert [i["name"] for i in side["inputs"]][:3] == ["input_ids", "attention_mask", "position_ids"]
    fp32 = read_json(out / "verify" / "student.fp32.onnx.json")
    assert fp32["max_abs_diff"] <= 1e-4 and fp32["passed"], fp32
    assert "from the student in float64" in fp32["reason"]
    assert fp32["decode_texts"] > 0 and fp32["decode_max_abs_diff"] <= fp32["max_abs_diff"]  # the one-token step too
    assert fp32["greedy_prompts"] == 5 and fp32["greedy_new_tokens"] == 32
    assert fp32["greedy_same_as_pytorch"] == 5, fp32
    assert fp32["generation_tokens_per_s"] > 0 and fp32["pytorch_generation_tokens_per_s"] > 0
    student = read_json(out / "verify" / "student.json")
    assert 0 < student["pytorch_fp32_max_abs_diff"] < 1e-4  # PyTorch's own fp32 error, shown for scale
    assert fp32["perplexity"] == pytest.approx(student["perplexity"], rel=1e-4)
    int8 = read_json(out / "verify" / "student.int8.onnx.json")
    assert int8["perplexity"] > 1 and "perplexity" in int8["reason"]
    # TFLite: prefill_<T> per length and decode over fixed key/value buffers, driven token by token
    tfl_side = read_json(out / "artifacts" / "student.fp32.tflite.json")
    assert [s["name"] for s in tfl_side["signatures"]] == ["prefill_16", "prefill_32", "decode"]
    assert tfl_side["kv_cache"]["size"] == 80
    tfl = read_json(out / "verify" / "student.fp32.tflite.json")
    assert tfl["max_abs_diff"] <= 1e-4 and tfl["passed"], tfl
    assert set(tfl["signature_max_abs_diff"]) == {"prefill_16", "prefill_32", "decode"}  # every signature measured
    assert tfl["max_abs_diff"] == max(tfl["signature_max_abs_diff"].values())
    assert tfl["greedy_same_as_pytorch"] == 5, tfl
    assert tfl["perplexity"] == pytest.approx(student["perplexity"], rel=1e-4)
    rows = {r["name"]: r for r in json.loads((out / "report.json").read_text())["rows"]}
    assert rows["student.fp32.onnx"]["latency_p50_ms"] > 0  # the runner feeds the KV-cache inputs itself
    assert rows["student.fp32.tflite"]["latency_p50_ms"] > 0  # through prefill_16
    assert rows["student.int8.onnx"]["file_size_mb"] < rows["student.fp32.onnx"]["file_size_mb"]
    # an LM is used token by token: tokens per second in every view, greedy agreement in every verdict
    assert "greedy agreement" in int8["reason"] and 0 <= int8["greedy_agreement"] <= 1
    for name in ("student", "student.fp32.onnx", "student.fp32.tflite", "student.int8.onnx"):
        assert rows[name]["generation_tokens_per_s"] > 0 and rows[name]["prefill_tokens_per_s"] > 0, name
        assert rows[name]["greedy_agreement"] is not None, name
    assert rows["student.fp32.onnx"]["greedy_agreement"] == 1.0
    assert rows["teacher"]["stored_as"] == "safetensors fp32" and rows["student.int8.onnx"]["stored_as"] == "onnx int8"
    md = (out / "report.md").read_text()
    assert "prompt tok/s" in md and "generate tok/s" in md and "greedy agree w/ student" in md and "items/s" not in md
    html = (out / "report.html").read_text()
    assert "generate tok/s" in html and "greedy agree w/ student" in html
    assert "tokens/s, 100.0 % greedy agreement" in md  # the summary line too
    # pp / tg as LLM users read them, measured by the device runner on the target, every model
    for name in ("teacher", "student", "student.fp32.onnx", "student.int8.onnx", "student.fp32.tflite"):
        lm = rows[name]["lm"]
        assert lm["pp16"]["tokens_per_s"] > 0 and lm["tg8@0"]["tokens_per_s"] > 0 and lm["ttft_ms"] > 0, name
    assert rows["student.fp32.onnx"]["lm"]["tg8@76"]["tokens_per_s"] > 0  # a dynamic cache holds 84 positions
    tfl_lm = rows["student.fp32.tflite"]["lm"]
    assert tfl_lm["pp64"] == {"na": "no prefill signature holds 64 tokens (longest: 32)"}
    assert tfl_lm["tg8@76"] == {"na": "no prefill signature holds 76 tokens (longest: 32)"}
    assert "## Prompt processing and generation" in md and "| pp 16 tok/s | pp 64 tok/s | tg 8 @ 0 tok/s" in md
    assert "n/a: student.fp32.tflite: no prefill signature holds 64 tokens (longest: 32)" in md
    assert "Prompt processing and generation" in html


@pytest.mark.parametrize("export, message", [
    ({"tflite_shapes": [[2, 16]]}, "causal-LM tflite files take batch 1"),
    ({"tflite_shapes": [[1, 64]], "kv_cache_size": 64}, "kv_cache_size must exceed the longest prefill"),
])
def test_causal_lm_tflite_shapes_are_checked_before_anything_runs(tmp_path, tiny_llama, tiny_data, export, message):
    from kd_edge.errors import ConfigError

    data = tiny_recipe_dict(tiny_llama, tiny_data, task="causal_lm", distill={"losses": [{"name": "kl"}]},
                            export={"artifacts": [{"format": "tflite", "precision": "fp32"}], **export})
    with pytest.raises(ConfigError, match=message):
        run(data, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_tflite_int8_over_budget_falls_back_to_float_activations(tmp_path, tiny_classifier, tiny_data, monkeypatch):
    from kd_edge.export import run as export_run

    drops = iter([0.05, 0.002])  # dynamic-range int8 over the budget, weight-only within it
    monkeypatch.setattr(export_run.Fallback, "drop", lambda *a: (next(drops), "accuracy"))
    out = tmp_path / "run"
    classifier_run(tiny_classifier, tiny_data, out, artifacts=[{"format": "tflite", "precision": "int8"}])
    side = read_json(out / "artifacts" / "student.int8.tflite.json")
    assert side["fallback"]["engaged"] and side["fallback"]["within_budget"]
    assert "every activation" in side["fallback"]["kept_in_float"]
    assert "weight_only" in side["quantization"]["method"]
    assert read_json(out / "verify" / "student.int8.tflite.json")["fallback"]["level"] == 1
