"""GGUF through llama.cpp itself: llama.cpp's converter and quantizer write the files, llama-cpp-python
(libllama, built from llama.cpp's source) loads them unchanged and is what verify, export's fallback
and bench run. Tiny Llamas built from configs, with SmolLM2's real BPE tokenizer (one llama.cpp knows)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kd_edge.artifacts import read_json
from tests.conftest import one_line_error, tiny_recipe_dict, write_tiny_bert, write_tiny_llama
from tests.distill.test_methods import run

KD_EDGE = [sys.executable, "-m", "kd_edge"]


@pytest.fixture(scope="module")
def gguf_llama(tmp_path_factory, smollm2_tokenizer) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("gguf") / "llama", layers=2, hidden=64, logit_scale=20.0,
                            tokenizer_dir=smollm2_tokenizer)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, gguf_llama) -> tuple[Path, list[dict]]:
    from kd_edge.cli.export_folder import export_model_dir
    from kd_edge.export.config import ArtifactSpec, ExportConfig

    from tests.conftest import sentences

    texts = tmp_path_factory.mktemp("gguf-texts") / "texts.txt"
    texts.write_text("".join(s["text"] + "\n" for s in sentences(24, seed=3)))
    out = tmp_path_factory.mktemp("gguf-out") / "files"
    cfg = ExportConfig(artifacts=[ArtifactSpec(format="gguf", precision=p) for p in ("fp32", "fp16", "int8", "int4")])
    return out, export_model_dir(gguf_llama, out, cfg, texts=texts, max_length=32)


def test_fp32_gguf_matches_the_float64_model_and_generates_pytorchs_tokens(exported):
    out, records = exported
    fp32 = {r["precision"]: r for r in records}["fp32"]
    assert fp32["passed"], fp32
    assert fp32["max_abs_diff"] <= 1e-4 and fp32["decode_max_abs_diff"] <= 1e-4  # as a prompt and token by token
    assert fp32["greedy_prompts"] == 5 and fp32["greedy_same_as_pytorch"] == 5
    assert fp32["llama_cpp_kv_cache"] == "F32"
    side = read_json(out / "student.fp32.gguf.json")
    assert side["runtime"] == "llama.cpp" and side["gguf_type"] == "F32" and side["architecture"] == "llama"
    assert (out / "student.fp32.gguf").read_bytes()[:4] == b"GGUF"


def test_lower_precisions_are_llama_cpp_types_within_their_budgets(exported):
    out, records = exported
    by = {r["precision"]: r for r in records}
    assert {p: read_json(out / f"student.{p}.gguf.json")["gguf_type"] for p in by} == {
        "fp32": "F32", "fp16": "F16", "int8": "Q8_0", "int4": "Q4_0"}
    for p in ("fp16", "int8", "int4"):
        assert "perplexity" in by[p]["reason"] and by[p]["llama_cpp_kv_cache"].startswith("F16"), by[p]
    assert "+3.0 %" in by["int4"]["reason"] and "+1.0 %" in by["int8"]["reason"]  # int4's budget is 3 %
    sizes = [by[p]["size_mb"] for p in ("fp32", "fp16", "int8", "int4")]
    assert sizes == sorted(sizes, reverse=True)


def test_int8_gguf_weights_take_at_most_1_1_bytes_per_parameter(exported):
    from gguf import GGUFReader

    out, _ = exported
    side = read_json(out / "student.int8.gguf.json")
    reader = GGUFReader(str(out / "student.int8.gguf"))
    weights = sum(int(t.n_bytes) for t in reader.tensors)
    assert weights / side["params"] <= 1.1, weights / side["params"]
    assert {t.tensor_type.name for t in reader.tensors} <= {"Q8_0", "F32"}  # norms stay F32


def test_the_file_carries_its_tokenizer_and_llama_cpp_reads_it_unchanged(exported, gguf_llama):
    import llama_cpp
    from transformers import AutoTokenizer

    out, _ = exported
    llm = llama_cpp.Llama(model_path=str(out / "student.fp16.gguf"), n_ctx=64, verbose=False)
    text = "The movie was surprisingly good, wasn't it?"
    ids = AutoTokenizer.from_pretrained(str(gguf_llama))(text)["input_ids"]
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids
    assert llm.token_eos() == AutoTokenizer.from_pretrained(str(gguf_llama)).eos_token_id


def test_the_device_runner_measures_a_gguf_file_in_llama_cpp(exported):
    from kd_edge.bench import RUNNER_PATH

    out, _ = exported
    proc = subprocess.run([sys.executable, str(RUNNER_PATH), str(out / "student.int8.gguf"), "--runtime", "llama.cpp",
                           "--seq", "32", "--runs", "5", "--warmup", "1", "--threads", "1", "--vocab-size", "49152",
                           "--lm-pp", "32", "--lm-tg", "16@0,16@32", "--lm-ttft", "32"],
                          capture_output=True, text=True, timeout=120)
    doc = json.loads(proc.stdout)
    assert doc["runtime"] == "llama.cpp" and doc["runtime_version"].startswith("llama-cpp-python 0.3.36")
    assert doc["latency"]["p50_ms"] > 0 and doc["timed_runs"] == 5 and doc["peak_rss_mb"] > 0
    assert doc["file_size_bytes"] == (out / "student.int8.gguf").stat().st_size
    # pp / tg, with llama.cpp's own timers (llama_perf_context) of the same calls beside the wall clock
    for key in ("pp32", "tg16@0", "tg16@32"):
        figure = doc["lm"][key]
        assert figure["tokens_per_s"] > 0 and figure["llama_cpp_tokens_per_s"] > 0, key
        assert figure["llama_cpp_tokens_per_s"] >= figure["tokens_per_s"] * 0.9, key  # libllama's time is inside ours
    assert doc["lm"]["ttft_ms"] > 0


def test_kd_edge_bench_on_an_lm_file_prints_its_prompt_and_generation_speed(exported):
    out, _ = exported
    proc = _cli(["bench", str(out / "student.int8.gguf"), "--runs", "5", "--seq", "16", "--threads", "1"])
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if "tokens/s:" in x)
    assert "student.int8.gguf tokens/s: pp128 " in line and "tg32 @ 0 " in line and "tg128 @ 512 " in line, line
    assert "TTFT" in line


def test_a_run_exports_verifies_benches_and_reports_gguf(tmp_path, gguf_llama, tiny_data):
    data = tiny_recipe_dict(gguf_llama, tiny_data, task="causal_lm",
                            teacher={"model": str(gguf_llama), "top_k": 8, "batch_size": 16},
                            student={"layers": 1},
                            distill={"max_steps": 2, "batch_size": 8, "lr": 1e-4, "checkpoint_every": 100,
                                     "losses": [{"name": "kl"}]},
                            export={"artifacts": [{"format": "gguf", "precision": "fp32"},
                                                  {"format": "gguf", "precision": "int8"}]},
                            verify={"max_examples": 40},
                            gate={"budgets": []}, bench={"runs": 5, "warmup_runs": 1, "threads": 1, "seq_len": 16, "rounds": 1})
    out = tmp_path / "run"
    run(data, out)
    fp32 = read_json(out / "verify" / "student.fp32.gguf.json")
    assert fp32["passed"] and fp32["greedy_same_as_pytorch"] == 5, fp32
    int8 = read_json(out / "artifacts" / "student.int8.gguf.json")
    assert int8["int8_check"]["metric"] == "perplexity"  # measured through llama.cpp before it was kept
    rows = {r["name"]: r for r in json.loads((out / "report.json").read_text())["rows"]}
    assert rows["student.int8.gguf"]["stored_as"] == "gguf Q8_0" and rows["student.int8.gguf"]["runtime"] == "llama.cpp"
    assert rows["student.int8.gguf"]["latency_p50_ms"] > 0
    assert rows["student.int8.gguf"]["generation_tokens_per_s"] > 0


# -- bad input: one line, exit 2, nothing overwritten ------------------------------------------------------
def _cli(args, env=None, cwd=None):
    import os

    return subprocess.run(KD_EDGE + args, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def test_gguf_for_an_encoder_is_refused_in_one_line(tmp_path):
    bert = write_tiny_bert(tmp_path / "bert", layers=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    line = one_line_error(_cli(["export", str(bert), "--format", "gguf", "--out", str(out), "--force"]))
    assert "gguf files hold causal LMs" in line and "exports to onnx, tflite" in line, line
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_a_missing_llama_cpp_converter_says_how_to_install_it(tmp_path, gguf_llama):
    out = tmp_path / "out"
    out.mkdir()
    (out / "student.fp32.gguf").write_text("an earlier file")
    line = one_line_error(_cli(["export", str(gguf_llama), "--format", "gguf", "--precision", "fp32", "--out", str(out),
                           "--force"], env={"KD_EDGE_LLAMA_CPP": str(tmp_path / "nowhere")}))
    assert "convert_hf_to_gguf.py" in line and "install_llama_cpp_tools.sh" in line, line
    assert (out / "student.fp32.gguf").read_text() == "an earlier file"


def test_a_tokenizer_llama_cpp_cannot_convert_is_one_line(tmp_path):
    from tests.conftest import sentences

    llama = write_tiny_llama(tmp_path / "wordpiece-llama", layers=1)  # a WordPiece tokenizer on a Llama
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(s["text"] + "\n" for s in sentences(8)))
    # relative paths, as a user types them: the converter runs in another folder and must still find the model
    line = one_line_error(_cli(["export", "wordpiece-llama", "--format", "gguf", "--precision", "fp32", "--texts",
                                "texts.txt", "--out", "o"], cwd=tmp_path))
    assert "llama.cpp's converter failed" in line and "export-gguf.log" in line, line
    assert not (tmp_path / "o").exists()
    # the half-written folder is gone, the converter's log stays where the line says
    import re

    log = Path(re.search(r"see (\S+export-gguf\.log)", line).group(1))
    assert log == Path("o.failed-logs/export-gguf.log")  # relative to where the user ran it
    log = tmp_path / log
    assert log.is_file()
    assert "pre-tokenizer" in log.read_text()  # the converter read the model folder, then refused its tokenizer


def test_a_4bit_file_past_its_budget_is_made_again_at_5_bits_and_says_so(tmp_path, exported):
    import shutil

    from kd_edge.export.run import _fall_back
    from kd_edge.export.config import ArtifactSpec
    from kd_edge.formats import FORMATS
    from kd_edge.quantize import QUANTIZERS

    class Drops:  # what export's Fallback measures through llama.cpp: Q4_0 over the budget, then Q5_0 within
        def __init__(self):
            self.seen = []

        def drop(self, fmt, src, info, path, this):
            from gguf import GGUFReader

            types = {t.tensor_type.name for t in GGUFReader(str(path)).tensors if t.name.startswith("blk.")}
            self.seen.append(types)
            return (0.05 if "Q4_0" in types else 0.01), "perplexity"

    out, _ = exported
    src, path = out / "student.fp32.gguf", tmp_path / "student.int4.gguf"
    shutil.copyfile(out / "student.int4.gguf", path)
    spec = ArtifactSpec(format="gguf", precision="int4")
    fallback = Drops()
    side = _fall_back(spec, FORMATS["gguf"].precision("int4"), src, read_json(out / "student.fp32.gguf.json"), path,
                      QUANTIZERS.get("gguf:int4"), {"log_path": tmp_path / "q.log"}, fallback, budget=0.03)
    assert fallback.seen == [{"Q4_0", "F32"}, {"Q5_0", "F32"}]
    assert side["gguf_type"] == "Q5_0" and side["stored_as"] == "gguf Q5_0"
    assert side["fallback"]["engaged"] and side["fallback"]["within_budget"] and "5 bits" in side["fallback"]["kept_in_float"]
    assert [t["drop"] for t in side["int8_check"]["tried"]] == [0.05, 0.01]
