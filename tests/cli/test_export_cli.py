"""`kd-edge export MODEL_DIR` and `kd-edge quantize FILE` on folders and files that are not runs."""

from __future__ import annotations

import json

import pytest

from tests.cli.test_cli import assert_one_line_error, kd_edge


@pytest.fixture(scope="module")
def exported(tmp_path_factory, wide_teacher):
    out = tmp_path_factory.mktemp("exp") / "out"
    p = kd_edge("export", wide_teacher, "--format", "onnx,tflite", "--precision", "fp32,fp16,int8,int8-static",
                "--shapes", "1x32,1x64", "--out", out, timeout=600)
    return p, out


def test_export_any_model_folder_writes_checks_and_prints_every_file(exported):
    p, out = exported
    assert p.returncode == 0, p.stdout + p.stderr
    names = {"student.fp32.onnx", "student.fp16.onnx", "student.int8.onnx", "student.int8-static.onnx",
             "student.fp32.tflite", "student.fp16.tflite", "student.int8.tflite"}  # int8-static: ONNX only
    assert names <= {f.name for f in out.iterdir()}
    verify = json.loads((out / "verify.json").read_text())
    assert verify["task"] == "sentence_embedding"
    records = {r["name"]: r for r in verify["artifacts"]}
    assert set(records) == names
    for name in ("student.fp32.onnx", "student.fp32.tflite"):
        assert records[name]["max_abs_diff"] <= 1e-4 and records[name]["passed"]
    assert records["student.int8.onnx"]["size_mb"] < 0.5 * records["student.fp32.onnx"]["size_mb"]
    side = json.loads((out / "student.fp32.tflite.json").read_text())
    assert [s["name"] for s in side["signatures"]] == ["b1_s32", "b1_s64"]
    for name in names:
        assert name in p.stdout
    assert "compared: the output 'sentence_embedding' of every file, against the model in float64" in p.stdout


def test_export_refuses_to_overwrite_and_leaves_the_files_alone(exported, wide_teacher):
    _, out = exported
    before = {f.name: f.stat().st_mtime_ns for f in out.iterdir()}
    assert_one_line_error(kd_edge("export", wide_teacher, "--out", out), "already holds files", "--force")
    assert {f.name: f.stat().st_mtime_ns for f in out.iterdir()} == before


def test_text_longer_than_every_tflite_bucket_is_a_clear_error(tmp_path, wide_teacher):
    texts = tmp_path / "long.txt"
    texts.write_text("good movie " * 40 + "\n")
    out = tmp_path / "out"
    p = kd_edge("export", wide_teacher, "--format", "tflite", "--precision", "fp32", "--shapes", "1x8,1x16",
                "--texts", texts, "--out", out, timeout=600)
    assert_one_line_error(p, "longer than every TFLite bucket (b1_s8, b1_s16)", "--shapes")
    assert not out.exists()


def test_quantize_an_exported_file(exported, tmp_path):
    _, out = exported
    src = tmp_path / "m.onnx"
    src.write_bytes((out / "student.fp32.onnx").read_bytes())
    p = kd_edge("quantize", src)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (tmp_path / "m.int8.onnx").is_file() and "min cosine" in p.stdout
    assert_one_line_error(kd_edge("quantize", src), "already exists", "--force")
    assert_one_line_error(kd_edge("quantize", src, "-p", "int8-static"), "calibrates activation ranges", "--calibration")
    assert_one_line_error(kd_edge("quantize", src, "-p", "int8-weights"), "int8, int8-static, fp16".replace(
        "int8, int8-static, fp16", "fp16, int8, int8-static"))
    assert not (tmp_path / "m.int8-static.onnx").exists()
    p = kd_edge("quantize", src, "-p", "int8", "--keep-float", "2", "--out", tmp_path / "edge.onnx")
    assert p.returncode == 0 and "nodes kept in float" in p.stdout, p.stdout + p.stderr


def test_export_of_a_folder_that_is_no_model(tmp_path):
    assert_one_line_error(kd_edge("export", tmp_path), "not a model folder", "config.json")


def test_export_a_causal_lm_folder_generates_like_pytorch_through_each_file(tmp_path):
    from tests.conftest import write_tiny_llama

    model = write_tiny_llama(tmp_path / "llama", layers=2, logit_scale=20.0)
    out = tmp_path / "out"
    p = kd_edge("export", model, "--format", "onnx,tflite", "--precision", "fp32,int8", "--shapes", "1x32",
                "--out", out, timeout=600)
    assert p.returncode in (0, 1), p.stdout + p.stderr
    verify = json.loads((out / "verify.json").read_text())
    assert verify["task"] == "causal_lm" and verify["pytorch_fp32_max_abs_diff"] > 0
    records = {r["name"]: r for r in verify["artifacts"]}
    assert set(records) == {"student.fp32.onnx", "student.int8.onnx", "student.fp32.tflite", "student.int8.tflite"}
    for name in ("student.fp32.onnx", "student.fp32.tflite"):
        r = records[name]
        assert r["passed"] and r["max_abs_diff"] <= 1e-4, r
        assert r["greedy_same_as_pytorch"] == r["greedy_prompts"] == 5, r
        assert r["decode_max_abs_diff"] is not None and r["decode_texts"] > 0
        assert r["perplexity"] == pytest.approx(r["model_perplexity"], rel=1e-4)
    assert set(records["student.fp32.tflite"]["signature_max_abs_diff"]) == {"prefill_32", "decode"}
    side = json.loads((out / "student.fp32.tflite.json").read_text())
    assert side["kv_cache"]["size"] > 32  # room to generate after the longest prompt
    assert "perplexity" in records["student.int8.onnx"]["reason"]
    assert_one_line_error(kd_edge("export", model, "-p", "int8-static", "--out", tmp_path / "o2"),
                          "int8-static is for encoders")
    assert_one_line_error(kd_edge("export", model, "-f", "tflite", "--shapes", "2x16", "--out", tmp_path / "o3"),
                          "take batch 1; write [[1, T], ...], one prefill signature per prompt length T (on the "
                          "command line: --shapes)")
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_quantize_compares_every_float_output_not_an_integer_pass_through(tmp_path, wide_teacher):
    """A sentence-embedding graph from elsewhere whose first output is an int64 copy of the token ids:
    quantize must report the embedding's real change, and name the integer output it left out."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from kd_edge.tasks import TASKS

    task = TASKS.get("sentence_embedding")()
    embed = task.export_module(task.load_model(wide_teacher), {"pooling": "mean", "normalize": True})

    class PassThroughFirst(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = embed

        def forward(self, input_ids, attention_mask):
            return input_ids * 1, self.embed(input_ids, attention_mask)

    src = tmp_path / "foreign.onnx"
    ids = torch.ones(2, 16, dtype=torch.int64)
    torch.onnx.export(PassThroughFirst().eval(), (ids, torch.ones_like(ids)), str(src), dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask"], output_names=["token_ids", "sentence_embedding"],
                      dynamic_axes={n: {0: "b", 1: "s"} for n in ("input_ids", "attention_mask", "token_ids")})
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("a good movie", "the plot was dull and messy",
                                                                      "wonderful acting but a weak story")))
    p = kd_edge("quantize", src, "-p", "int8", "--calibration", texts, "--tokenizer", wide_teacher)
    assert p.returncode == 0, p.stdout + p.stderr
    line = next(x for x in p.stdout.splitlines() if "output sentence_embedding" in x)
    reported = float(line.split("max |Δ|")[1].split()[0])
    assert "left out (not floating point): token_ids (int64)" in p.stdout
    assert "output token_ids" not in p.stdout
    # the true change of the embedding, measured here on the same texts
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(wide_teacher))
    a = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(tmp_path / "foreign.int8.onnx"), providers=["CPUExecutionProvider"])
    worst = 0.0
    for line_ in texts.read_text().splitlines():
        x = np.asarray([tok(json.loads(line_)["text"], truncation=True, max_length=128)["input_ids"]], np.int64)
        feeds = {"input_ids": x, "attention_mask": np.ones_like(x)}
        worst = max(worst, float(np.abs(a.run(None, feeds)[1].astype(np.float64) - b.run(None, feeds)[1]).max()))
    assert worst > 1e-4  # int8 really moved the embedding ...
    assert reported == pytest.approx(worst, rel=0.02)  # ... and quantize says by how much
    p = kd_edge("quantize", src, "-p", "fp16", "--output", "sentence_embedding")
    assert p.returncode == 0 and "output sentence_embedding" in p.stdout, p.stdout + p.stderr
    # the command that crashed on such a model (texts of several lengths, an output per token)
    p = kd_edge("quantize", src, "-p", "int8-static", "--calibration", texts, "--tokenizer", wide_teacher)
    assert p.returncode == 0 and "output sentence_embedding" in p.stdout, p.stdout + p.stderr


def test_quantize_every_tflite_precision_of_an_exported_file(exported, tmp_path):
    _, out = exported
    src = tmp_path / "student.fp32.tflite"
    src.write_bytes((out / "student.fp32.tflite").read_bytes())
    for precision in ("fp16", "int8", "int8-weights"):
        p = kd_edge("quantize", src, "-p", precision, timeout=600)
        assert p.returncode == 0, (precision, p.stdout + p.stderr)
        made = tmp_path / f"student.fp32.{precision}.tflite"
        assert made.is_file() and made.stat().st_size < src.stat().st_size
        assert "output output_0" in p.stdout and "min cosine" in p.stdout, p.stdout
