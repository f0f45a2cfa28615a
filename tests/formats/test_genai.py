"""ONNX Runtime GenAI folders through onnxruntime-genai itself: its model builder writes them from the
model folder, ``onnxruntime_genai.Model(folder)`` loads them and its generator is what verify, export's
fallback and the device runner run. A tiny tied Llama built from a config, with SmolLM2's tokenizer."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kd_edge.artifacts import read_json
from tests.conftest import one_line_error, write_tiny_bert, write_tiny_llama

KD_EDGE = [sys.executable, "-m", "kd_edge"]


@pytest.fixture(scope="module")
def llama(tmp_path_factory, smollm2_tokenizer) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("genai") / "llama", layers=2, hidden=64, logit_scale=4.0,
                            tokenizer_dir=smollm2_tokenizer, tie=True)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, llama) -> tuple[Path, dict]:
    from kd_edge.cli.export_folder import export_model_dir
    from kd_edge.export.config import ArtifactSpec, ExportConfig

    from tests.conftest import sentences

    texts = tmp_path_factory.mktemp("genai-texts") / "texts.txt"
    texts.write_text("".join(s["text"] + "\n" for s in sentences(30, seed=3)))
    out = tmp_path_factory.mktemp("genai-out") / "files"
    cfg = ExportConfig(artifacts=[ArtifactSpec(format="genai", precision=p) for p in ("fp32", "int8", "int4")],
                       context_length=96)  # the model has 128 positions
    records = export_model_dir(llama, out, cfg, texts=texts, max_length=40)
    return out, {r["precision"]: r for r in records}


def test_fp32_folder_matches_the_float64_model_and_generates_pytorchs_tokens(exported):
    out, by = exported
    fp32 = by["fp32"]
    assert fp32["passed"], fp32
    assert fp32["max_abs_diff"] <= 1e-4 and fp32["decode_max_abs_diff"] <= 1e-4  # as a prompt and token by token
    assert fp32["greedy_prompts"] == 5 and fp32["greedy_same_as_pytorch"] == 5
    folder = out / "student.fp32.genai"
    assert {"model.onnx", "genai_config.json", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    side = read_json(out / "student.fp32.genai.json")
    assert side["runtime"] == "onnxruntime-genai" and side["genai_model_type"] == "llama"
    assert side["weights_bytes"] < side["size_bytes"]  # the tokenizer travels in the folder


def test_a_folder_is_built_for_the_context_length_asked(exported):
    import onnx

    out, _ = exported
    for precision in ("fp32", "int8"):
        folder = out / f"student.{precision}.genai"
        assert read_json(folder / "genai_config.json")["model"]["context_length"] == 96
        graph = onnx.load(folder / "model.onnx", load_external_data=False).graph
        caches = [i for i in graph.initializer if "cos_cache" in i.name]
        assert caches and all(c.dims[0] == 96 for c in caches)  # rotary tables of 96 positions, not 128
    assert not list(out.glob("_*"))  # the folder view the builder read is gone


def test_onnxruntime_genai_loads_the_folder_unchanged_and_tokenizes_like_hugging_face(exported, llama):
    import numpy as np
    import onnxruntime_genai as og
    from transformers import AutoTokenizer

    out, _ = exported
    model = og.Model(str(out / "student.fp32.genai"))
    text = "The movie was surprisingly good, wasn't it?"
    ids = AutoTokenizer.from_pretrained(str(llama))(text)["input_ids"]
    assert list(og.Tokenizer(model).encode(text)) == ids
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + 8)
    gen = og.Generator(model, params)
    gen.append_tokens(np.asarray(ids, np.int32))
    while not gen.is_done():
        gen.generate_next_token()
    assert len(gen.get_sequence(0)) > len(ids)


def test_int8_and_int4_folders_are_the_builders_weight_only_quantization_within_their_budgets(exported):
    out, by = exported
    assert "+1.0 %" in by["int8"]["reason"] and "+3.0 %" in by["int4"]["reason"]
    assert by["int8"]["passed"], by["int8"]
    sides = {p: read_json(out / f"student.{p}.genai.json") for p in by}
    sizes = [sides[p]["weights_bytes"] for p in ("fp32", "int8", "int4")]
    assert sizes == sorted(sizes, reverse=True)
    assert sides["int4"]["builder"].startswith("onnxruntime-genai 0.18.0 model builder -p int4")


def test_int8_weights_take_at_most_1_1_bytes_per_parameter_with_the_tied_table_shared(exported):
    import onnx

    out, _ = exported
    side = read_json(out / "student.int8.genai.json")
    assert side["weights_bytes"] / side["params"] <= 1.1, side["weights_bytes"] / side["params"]
    graph = onnx.load(str(out / "student.int8.genai" / "model.onnx"), load_external_data=False).graph
    lookup = [n for n in graph.node if n.op_type == "GatherBlockQuantized"]
    assert len(lookup) == 1 and {a.name: a.i for a in lookup[0].attribute}["bits"] == 8
    assert not [i for i in graph.initializer if i.name == "model.embed_tokens.weight"]  # no float table left


def test_the_device_runner_measures_a_genai_folder(exported):
    from kd_edge.bench import RUNNER_PATH

    out, _ = exported
    folder = out / "student.int4.genai"
    proc = subprocess.run([sys.executable, str(RUNNER_PATH), str(folder), "--runtime", "onnxruntime-genai",
                           "--seq", "32", "--runs", "5", "--warmup", "1", "--threads", "1", "--vocab-size", "49152",
                           "--lm-pp", "32", "--lm-tg", "16@0,16@32,16@128", "--lm-ttft", "32"],
                          capture_output=True, text=True, timeout=120)
    doc = json.loads(proc.stdout)
    assert doc["runtime_version"] == "onnxruntime-genai 0.18.0"
    assert doc["lm"]["pp32"]["tokens_per_s"] > 0 and doc["lm"]["tg16@0"]["tokens_per_s"] > 0
    assert doc["lm"]["tg16@32"]["tokens_per_s"] > 0 and doc["lm"]["ttft_ms"] > 0
    assert doc["lm"]["tg16@128"] == {"na": "a context of 96 positions"}  # genai_config.json's context_length
    assert doc["latency"]["p50_ms"] > 0 and doc["timed_runs"] == 5 and doc["peak_rss_mb"] > 0
    assert doc["file_size_bytes"] == read_json(out / "student.int4.genai.json")["weights_bytes"]


# -- bad input: one line, exit 2, nothing overwritten ------------------------------------------------------
def test_a_folder_whose_config_does_not_match_its_graph_is_one_line_and_left_alone(exported, tmp_path):
    out, _ = exported
    folder = tmp_path / "student.fp32.genai"
    shutil.copytree(out / "student.fp32.genai", folder)
    config = json.loads((folder / "genai_config.json").read_text())
    config["model"]["decoder"]["num_hidden_layers"] = 3
    (folder / "genai_config.json").write_text(json.dumps(config))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    line = one_line_error(subprocess.run(KD_EDGE + ["bench", str(folder), "--runs", "2"], capture_output=True, text=True,
                                    timeout=120))
    assert "decoder.num_hidden_layers is 3 in the config but 2 (past key inputs) in the graph" in line, line
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_genai_for_an_encoder_is_refused_before_anything_runs(tmp_path):
    bert = write_tiny_bert(tmp_path / "bert", layers=1)
    out = tmp_path / "files"
    line = one_line_error(subprocess.run(KD_EDGE + ["export", str(bert), "--out", str(out), "--format", "genai"],
                                    capture_output=True, text=True, timeout=120))
    assert "genai files hold causal LMs" in line and "onnxruntime-genai" in line, line
    assert not out.exists()


def test_a_4bit_folder_past_its_budget_is_built_again_with_8_bit_sensitive_layers(tmp_path, exported, llama):
    import onnx

    from kd_edge.export.config import ArtifactSpec
    from kd_edge.export.run import _fall_back
    from kd_edge.formats import FORMATS
    from kd_edge.quantize import QUANTIZERS

    def bits(folder: Path) -> set[int]:
        graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
        return {a.i for n in graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"}

    class Drops:  # what export's Fallback measures through onnxruntime-genai: 4-bit over budget, mixed within
        def __init__(self):
            self.seen = []

        def drop(self, fmt, src, info, path, this):
            self.seen.append(bits(path))
            return (0.05 if self.seen[-1] == {4} else 0.01), "perplexity"

    out, _ = exported
    src, path = out / "student.fp32.genai", tmp_path / "student.int4.genai"
    shutil.copytree(out / "student.int4.genai", path)
    fallback = Drops()
    side = _fall_back(ArtifactSpec(format="genai", precision="int4"), FORMATS["genai"].precision("int4"), src,
                      read_json(out / "student.fp32.genai.json"), path, QUANTIZERS.get("genai:int4"),
                      {"log_path": tmp_path / "q.log", "source_dir": llama}, fallback, budget=0.03)
    assert fallback.seen == [{4}, {4, 8}]  # the head and the sensitive layers' projections at 8 bits
    assert side["stored_as"] == "onnxruntime-genai int4 (mixed int4/int8)"
    assert side["fallback"]["engaged"] and side["fallback"]["within_budget"]
    assert [t["drop"] for t in side["int8_check"]["tried"]] == [0.05, 0.01]


def test_a_4bit_fallback_folder_that_does_not_load_leaves_the_plain_int4_folder(tmp_path, exported, llama):
    from kd_edge.errors import ExportError
    from kd_edge.export.config import ArtifactSpec
    from kd_edge.export.run import _fall_back
    from kd_edge.formats import FORMATS
    from kd_edge.quantize import QUANTIZERS

    class Drops:  # the plain folder over budget; the mixed one refused as ONNX Runtime GenAI refused SmolLM2's
        def __init__(self):
            self.calls = 0

        def drop(self, fmt, src, info, path, this):
            self.calls += 1
            if self.calls == 2:
                raise ExportError("student.int4.genai does not load in ONNX Runtime GenAI: Invalid model. Node input "
                                  "'lm_head.MatMul.weight_Q8G32' is not a graph input")
            return 0.05, "perplexity"

    out, _ = exported
    src, path = out / "student.fp32.genai", tmp_path / "student.int4.genai"
    shutil.copytree(out / "student.int4.genai", path)
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    side = _fall_back(ArtifactSpec(format="genai", precision="int4"), FORMATS["genai"].precision("int4"), src,
                      read_json(out / "student.fp32.genai.json"), path, QUANTIZERS.get("genai:int4"),
                      {"log_path": tmp_path / "q.log", "source_dir": llama}, Drops(), budget=0.03)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before  # the plain int4 folder, as it was
    assert not side["fallback"]["engaged"] and "lm_head.MatMul.weight_Q8G32" in side["fallback"]["reason"]
    assert "the plain int4 folder is kept" in side["fallback"]["reason"]
    tried = side["int8_check"]["tried"]  # then kd-edge's own graph, which lost no less than the plain folder
    assert "error" in tried[1] and tried[2] == {"attempt": "kd-edge's own ONNX KV-cache graph", "drop": 0.05}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.log", "student.int4.genai"]  # nothing left aside


def test_past_the_builders_4bit_recipes_the_fallback_is_kd_edges_own_graph_in_a_genai_folder(tmp_path, exported,
                                                                                            llama):
    """The builder cannot write a tied 8-bit head (SmolLM2's students are tied): the last fallback puts
    kd-edge's own int4 KV-cache graph (blocks of 16 with zero points, the tied table at 8 bits) in a
    folder ONNX Runtime GenAI loads, whose config the builder writes; it generates PyTorch's tokens."""
    import onnx
    import torch
    from transformers import AutoModelForCausalLM

    from kd_edge.errors import ExportError
    from kd_edge.export.config import ArtifactSpec
    from kd_edge.export.run import _fall_back
    from kd_edge.formats import FORMATS
    from kd_edge.formats.genai import GenaiDecoder
    from kd_edge.quantize import QUANTIZERS

    class Drops:  # the plain folder over budget, the mixed one refused, the own graph within
        def __init__(self):
            self.calls = 0

        def drop(self, fmt, src, info, path, this):
            self.calls += 1
            if self.calls == 2:
                raise ExportError("student.int4.genai does not load in ONNX Runtime GenAI: Invalid model")
            return (0.05 if self.calls == 1 else 0.01), "perplexity"

    out, _ = exported
    src, path = out / "student.fp32.genai", tmp_path / "student.int4.genai"
    shutil.copytree(out / "student.int4.genai", path)
    side = _fall_back(ArtifactSpec(format="genai", precision="int4"), FORMATS["genai"].precision("int4"), src,
                      read_json(out / "student.fp32.genai.json"), path, QUANTIZERS.get("genai:int4"),
                      {"log_path": tmp_path / "q.log", "source_dir": llama, "context_length": 96}, Drops(),
                      budget=0.03)
    assert side["fallback"]["engaged"] and side["fallback"]["level"] == 2 and side["fallback"]["within_budget"]
    assert side["stored_as"] == "kd-edge's own ONNX KV-cache graph int4 in a GenAI folder"
    assert "blocks of 16" in side["quantization"]["method"] and "int8" in side["quantization"]["tied_table"]
    cfg = json.loads((path / "genai_config.json").read_text())
    assert cfg["model"]["context_length"] == 96 and not cfg["search"]["past_present_share_buffer"]
    graph = onnx.load(str(path / "model.onnx"), load_external_data=False).graph
    assert {"input_ids", "attention_mask", "position_ids", "past_key_values.0.key"} <= {i.name for i in graph.input}
    assert {a.i for n in graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"} == {4, 8}
    # nothing left aside (export removes the "_" scratch the builder's context-length view lives in)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name[0] != "_") == ["q.log", "student.int4.genai"]
    prompt = [1, 50, 200, 3000, 7]
    with torch.no_grad():
        reference = AutoModelForCausalLM.from_pretrained(str(llama)).eval().generate(
            torch.tensor([prompt]), max_new_tokens=12, min_new_tokens=12, do_sample=False)[0, len(prompt):].tolist()
    assert GenaiDecoder(path, side).greedy(prompt, 12) == reference


def test_a_folder_genai_refuses_is_one_line_naming_it(tmp_path, exported):
    import onnx

    from kd_edge.errors import ArtifactError, ExportError
    from kd_edge.formats.genai import GenaiDecoder

    out, _ = exported
    broken = tmp_path / "student.int4.genai"
    shutil.copytree(out / "student.int4.genai", broken)
    model = onnx.load(str(broken / "model.onnx"))  # a node reading an initializer that is not there, as the
    head = next(n for n in model.graph.node if n.op_type == "MatMulNBits")  # builder's tied 8-bit head did
    gone = head.input[1]
    model.graph.initializer.remove(next(i for i in model.graph.initializer if i.name == gone))
    onnx.save(model, str(broken / "model.onnx"))
    with pytest.raises(ExportError, match=r"^student\.int4\.genai does not load in ONNX Runtime GenAI: .*" + gone):
        GenaiDecoder(broken, read_json(out / "student.int4.genai.json"))
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(ArtifactError, match=r"'student\.int4\.genai': model\.onnx is not a readable ONNX graph"):
        GenaiDecoder(broken, read_json(out / "student.int4.genai.json"))
