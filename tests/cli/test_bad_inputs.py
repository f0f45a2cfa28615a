"""Bad input across every command, table-driven: each case must exit 2 with one line on stderr that
names the problem and the fix, print no traceback, and leave every file that existed before it
byte-identical.

The commands run in this process (kd_edge.cli.main with sys.argv set), so that 150 cases take seconds,
not minutes; a case whose error escapes main() as an exception fails here with its traceback. The few
cases that need another user (permissions: root reads everything) or a mounted file system run the
real command in a subprocess.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml

from tests.conftest import sentences, tiny_recipe_dict, write_tiny_bert, write_tiny_classifier, write_tiny_llama


@dataclass
class World:
    """Every input the cases point at, made once."""

    root: Path
    teacher: Path
    classifier: Path
    llama: Path
    data: Path
    onnx: Path
    run: Path

    def recipe(self, where: Path, text: str | None = None, model: Path | str | None = None, **over) -> Path:
        path = where / "recipe.yaml"
        if text is None:
            data = tiny_recipe_dict(model or self.teacher, self.data, **over)
            text = yaml.safe_dump(data)
        path.write_text(text)
        return path

    def data_file(self, where: Path, name: str, content: str | bytes) -> Path:
        path = where / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("bad-inputs")
    teacher = write_tiny_bert(root / "teacher")
    classifier = write_tiny_classifier(root / "classifier")
    llama = write_tiny_llama(root / "llama")
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sentences(60)))
    # a small exported file for quantize and bench
    from kd_edge.export import EXPORTERS
    from kd_edge.tasks import TASKS

    task = TASKS.get("sentence_embedding")()
    module = task.export_module(task.load_model(teacher), {"pooling": "mean", "normalize": True})
    onnx = root / "model.onnx"
    EXPORTERS.get("onnx")().export(module, onnx, input_names=task.input_names, output_name="output", opset=17)
    # something that looks like a finished run folder (the cases fail before any stage reads it)
    run = root / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"name": "tiny", "stages": {}}))
    (run / "recipe.resolved.yaml").write_text(yaml.safe_dump(tiny_recipe_dict(teacher, data)))
    report = {"name": "a", "rows": [{"name": "student", "kind": "student", "latency_p50_ms": 2.0}]}
    (run / "report.json").write_text(json.dumps(report))
    return World(root, teacher, classifier, llama, data, onnx, run)


def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _other_sweep(d: Path) -> Path:
    folder = d / "old-sweep"
    folder.mkdir()
    (folder / "sweep.json").write_text(json.dumps({"recipe": "x.yaml", "overrides": [], "grid": {"seed": [1, 2]},
                                                   "variants": []}))
    return folder


def _pickle_only(w: World, d: Path) -> Path:
    folder = _copy_model(w.teacher, d / "pickled")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    return folder


def _truncated(w: World, d: Path) -> Path:
    folder = _copy_model(w.teacher, d / "truncated")
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return folder


def _garbage_safetensors(w: World, d: Path) -> Path:
    folder = _copy_model(w.teacher, d / "garbage")
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)
    return folder


def _no_tokenizer(w: World, d: Path) -> Path:
    folder = _copy_model(w.teacher, d / "notok")
    for f in folder.glob("*"):
        if f.name.startswith(("tokenizer", "vocab", "special")):
            f.unlink()
    return folder


def _bad_config(w: World, d: Path) -> Path:
    folder = _copy_model(w.teacher, d / "badconfig")
    (folder / "config.json").write_text("{not json")
    return folder


def _rows(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _labelled(labels: list) -> str:
    return _rows([{"text": f"the movie was good {i}", "label": lab} for i, lab in enumerate(labels)])


def _report(d: Path, name: str, doc) -> Path:
    path = d / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def _budget(d: Path, text: str) -> Path:
    path = d / "budgets.yaml"
    path.write_text(text)
    return path


# (id, argv builder (world, case folder) -> argv, fragment the one line must hold)
Case = tuple[str, Callable[[World, Path], list], str]
R = "run"
CASES: list[Case] = [
    # -- the recipe file --------------------------------------------------------------------------------
    ("recipe-missing", lambda w, d: [R, d / "nope.yaml"], "does not exist"),
    ("recipe-is-folder", lambda w, d: [R, d], "is a folder"),
    ("recipe-empty", lambda w, d: [R, w.recipe(d, "")], "is empty"),
    ("recipe-yaml-syntax", lambda w, d: [R, w.recipe(d, "name: x\nteacher: {model: a\n")], "YAML syntax error at line"),
    ("recipe-a-list", lambda w, d: [R, w.recipe(d, "- a\n- b\n")], "must be a mapping"),
    ("recipe-not-utf8", lambda w, d: [R, w.data_file(d, "r.yaml", b"name: caf\xe9\n")], "not UTF-8"),
    ("recipe-unknown-key", lambda w, d: [R, w.recipe(d, extra={"a": 1})], "unknown key 'extra'"),
    ("recipe-unknown-nested-key", lambda w, d: [R, w.recipe(d, distill__learning_rate=1)], "unknown key 'distill.learning_rate'"),
    ("recipe-missing-name", lambda w, d: [R, w.recipe(d, "teacher: {model: x}\n")], "missing key 'name'"),
    ("recipe-name-with-slash", lambda w, d: [R, w.recipe(d, name="a/b")], "plain folder name"),
    ("recipe-unknown-task", lambda w, d: [R, w.recipe(d, task="translation")], "translation"),
    ("recipe-wrong-type", lambda w, d: [R, w.recipe(d, distill__epochs="many")], "distill.epochs"),
    ("recipe-zero-runs", lambda w, d: [R, w.recipe(d, bench__runs=0)], "bench.runs"),
    ("recipe-max-length-small", lambda w, d: [R, w.recipe(d, data__max_length=2)], "data.max_length"),
    ("recipe-test-size-fraction-over-1", lambda w, d: [R, w.recipe(d, data__test_size=1.5)], "whole number"),
    # -- the teacher ------------------------------------------------------------------------------------
    ("teacher-missing", lambda w, d: [R, w.recipe(d, model=d / "gone")], "does not exist"),
    ("teacher-is-file", lambda w, d: [R, w.recipe(d, model=w.data)], "is a file"),
    ("teacher-no-config", lambda w, d: [R, w.recipe(d, model=d)], "has no config.json"),
    ("teacher-bad-config-json", lambda w, d: [R, w.recipe(d, model=_bad_config(w, d))], "not valid JSON"),
    ("teacher-no-tokenizer", lambda w, d: [R, w.recipe(d, model=_no_tokenizer(w, d))], "no tokenizer files"),
    ("teacher-pickle-only", lambda w, d: [R, w.recipe(d, model=_pickle_only(w, d))], "teacher.allow_pickle"),
    ("teacher-truncated-safetensors", lambda w, d: [R, w.recipe(d, model=_truncated(w, d))], "is truncated"),
    ("teacher-garbage-safetensors", lambda w, d: [R, w.recipe(d, model=_garbage_safetensors(w, d))], "not a safetensors file"),
    ("teacher-package-missing", lambda w, d: [R, w.recipe(d, model="package:no_such_package/model")], "is not installed"),
    ("teacher-hub-offline", lambda w, d: [R, w.recipe(d, model="no-org/no-model")], "could not be fetched"),
    ("teacher-gguf-missing", lambda w, d: [R, w.recipe(d, teacher={"model": str(w.teacher), "gguf_file": "x.gguf"})],
     "is not in"),
    ("teacher-prepare-head-on-embeddings", lambda w, d: [R, w.recipe(d, teacher={"model": str(w.teacher), "prepare_head": {}})],
     "prepare_head"),
    # -- the data ---------------------------------------------------------------------------------------
    ("data-missing", lambda w, d: [R, w.recipe(d, data={"source": str(d / "none.jsonl")})], "does not exist"),
    ("data-empty", lambda w, d: [R, w.recipe(d, data={"source": str(w.data_file(d, "e.jsonl", ""))})], "is empty"),
    ("data-unknown-extension", lambda w, d: [R, w.recipe(d, data={"source": str(w.data_file(d, "e.parquet", "x"))})],
     "cannot tell the format"),
    ("data-bad-json-line", lambda w, d: [R, w.recipe(d, data={"source": str(w.data_file(d, "e.jsonl", "{\"text\": 1\n"))})],
     "line 1 is not valid JSON"),
    ("data-json-not-object", lambda w, d: [R, w.recipe(d, data={"source": str(w.data_file(d, "e.jsonl", "[1, 2]\n"))})],
     "not a JSON object"),
    ("data-not-utf8", lambda w, d: [R, w.recipe(d, data={"source": str(w.data_file(d, "e.txt", b"caf\xe9 au lait\n" * 20))})],
     "not UTF-8"),
    ("data-tsv-header-only", lambda w, d: [R, w.recipe(d, data={"source": str(w.data_file(d, "e.tsv", "text\tlabel\n"))})],
     "holds no rows"),
    ("data-damaged-gz", lambda w, d: [R, w.recipe(d, data={"source": str(w.data_file(d, "e.jsonl.gz", b"\x1f\x8bxxxx"))})],
     "damaged .gz"),
    ("data-bundled-unknown", lambda w, d: [R, w.recipe(d, data={"source": "bundled:imdb"})], "not a bundled data set"),
    ("data-text-column-missing", lambda w, d: [R, w.recipe(d, data={"source": str(w.data), "text_field": "body"})],
     "is not a column"),
    ("data-where-matches-nothing", lambda w, d: [R, w.recipe(d, data={"source": str(w.data), "where": {"group": "zzz"}})],
     "matches data.where"),
    ("data-too-few-rows", lambda w, d: [R, w.recipe(d, data={"source": str(w.data_file(d, "e.jsonl", _labelled([0, 1])))})],
     "only 2 non-empty texts"),
    ("data-one-class", lambda w, d: [R, w.recipe(d, data={"source": str(w.data_file(d, "e.jsonl", _labelled([1] * 20)))})],
     "holds one class"),
    ("data-mixed-labels", lambda w, d: [R, w.recipe(d, data={"source": str(w.data_file(d, "e.jsonl", _labelled([0, "pos"] * 10)))})],
     "mixes class ids"),
    ("data-infinite-label", lambda w, d: [R, w.recipe(d, data={"source": str(w.data_file(d, "e.jsonl", _labelled([0, "inf"] * 10)))})],
     "mixes class ids"),
    ("data-negative-label", lambda w, d: [R, w.recipe(d, data={"source": str(w.data_file(d, "e.jsonl", _labelled([0, -1] * 10)))})],
     "negative class id"),
    ("data-label-not-in-names", lambda w, d: [R, w.recipe(d, data={"source": str(w.data_file(d, "e.jsonl", _labelled(["a", "b"] * 10))),
                                                                   "label_names": ["a", "c"]})], "does not name"),
    ("data-more-classes-than-teacher", lambda w, d: [R, w.recipe(d, model=w.classifier, task="sequence_classification",
                                                                 data={"source": str(w.data_file(d, "e.jsonl", _labelled([0, 1, 2] * 8)))},
                                                                 distill={"max_steps": 2, "losses": [{"name": "kl"}]})],
     "the teacher predicts 2"),
    ("data-ce-without-label-column", lambda w, d: [R, w.recipe(d, model=w.classifier, task="sequence_classification",
                                                               data={"source": str(w.data_file(d, "e.jsonl", _rows([{"text": f"t {i}"} for i in range(20)])))},
                                                               distill={"losses": [{"name": "ce"}]})], "needs labels"),
    ("data-test-size-too-big", lambda w, d: [R, w.recipe(d, data={"source": str(w.data), "test_size": 60})], "leaves no training rows"),
    # -- the student --------------------------------------------------------------------------------------
    ("student-too-many-layers", lambda w, d: [R, w.recipe(d, student={"layers": 9})], "more layers than the teacher has (4)"),
    ("student-zero-layers", lambda w, d: [R, w.recipe(d, student={"layers": 0})], "at least 1 layer"),
    ("student-empty-layer-list", lambda w, d: [R, w.recipe(d, student={"layers": []})], "empty list"),
    ("student-layer-out-of-range", lambda w, d: [R, w.recipe(d, student={"layers": [1, 7]})], "out of range"),
    ("student-duplicate-layers", lambda w, d: [R, w.recipe(d, student={"layers": [1, 1]})], "more than once"),
    ("student-unordered-layers", lambda w, d: [R, w.recipe(d, student={"layers": [3, 1]})], "increasing order"),
    ("student-heads-do-not-divide", lambda w, d: [R, w.recipe(d, student={"init": "config", "layers": 2, "hidden_size": 30,
                                                                          "num_attention_heads": 4})],
     "not divisible"),
    ("student-config-layer-list", lambda w, d: [R, w.recipe(d, student={"init": "config", "layers": [1, 2]})], "number of layers"),
    ("student-pretrained-without-model", lambda w, d: [R, w.recipe(d, student={"init": "pretrained"})], "needs `model`"),
    ("student-pretrained-missing", lambda w, d: [R, w.recipe(d, student={"init": "pretrained", "model": str(d / "none")})],
     "does not exist"),
    ("student-pretrained-pickle", lambda w, d: [R, w.recipe(d, student={"init": "pretrained", "model": str(_pickle_only(w, d))})],
     "student.allow_pickle"),
    ("student-embedding-width", lambda w, d: [R, w.recipe(d, student={"init": "config", "layers": 2, "hidden_size": 16})],
     "keep the teacher's width"),
    # -- losses and methods -------------------------------------------------------------------------------
    ("loss-unknown", lambda w, d: [R, w.recipe(d, distill={"losses": [{"name": "kld"}]})], "kld"),
    ("loss-logits-on-embeddings", lambda w, d: [R, w.recipe(d, distill={"losses": [{"name": "kl"}]})], "needs logits"),
    ("loss-embedding-on-classifier", lambda w, d: [R, w.recipe(d, model=w.classifier, task="sequence_classification",
                                                               distill={"losses": [{"name": "embedding_cosine"}]})],
     "compares sentence embeddings"),
    ("loss-ce-without-labels", lambda w, d: [R, w.recipe(d, model=w.classifier, task="sequence_classification",
                                                         data={"source": str(w.data), "label_field": None},
                                                         distill={"losses": [{"name": "ce"}]})], "label_field is null"),
    ("loss-attention-offline", lambda w, d: [R, w.recipe(d, distill={"losses": [{"name": "attention_kl"}]})], "distill.mode: live"),
    ("loss-layer-map-on-output-loss", lambda w, d: [R, w.recipe(d, distill={"losses": [{"name": "embedding_cosine", "layer_map": "last"}]})],
     "remove its layer_map"),
    ("loss-layer-pair-out-of-range", lambda w, d: [R, w.recipe(d, distill={"losses": [{"name": "hidden_mse", "layer_map": [[1, 9]]}]})],
     "out of range"),
    ("loss-teacher-index", lambda w, d: [R, w.recipe(d, distill={"losses": [{"name": "embedding_cosine", "teacher": 3}]})],
     "does not exist"),
    ("mutual-without-ce", lambda w, d: [R, w.recipe(d, model=w.classifier, task="sequence_classification",
                                                    distill={"mode": "mutual", "losses": [{"name": "kl"}]})], "add a `ce` loss"),
    ("augment-on-causal-lm", lambda w, d: [R, w.recipe(d, model=w.llama, task="causal_lm", data={"source": str(w.data), "label_field": None},
                                                       distill={"augment": {}, "losses": [{"name": "kl"}]})], "for encoders"),
    ("generate-on-embeddings", lambda w, d: [R, w.recipe(d, distill={"generate": {}, "losses": [{"name": "embedding_cosine"}]})],
     "for task causal_lm"),
    # -- a pruned student, a trimmed vocabulary --------------------------------------------------------------
    ("prune-ffn-larger-than-teacher", lambda w, d: [R, w.recipe(d, student={"init": "prune", "layers": 2,
                                                                            "intermediate_size": 999})],
     "larger than the teacher's (64)"),
    ("prune-heads-of-bert", lambda w, d: [R, w.recipe(d, student={"init": "prune", "layers": 2, "num_attention_heads": 1})],
     "its heads and width stay the teacher's"),
    ("prune-params-above-teacher", lambda w, d: [R, w.recipe(d, student={"init": "prune", "layers": 2, "params": 10 ** 9})],
     "nothing to prune"),
    ("sizes-of-a-copied-student", lambda w, d: [R, w.recipe(d, student={"layers": 2, "intermediate_size": 16})],
     "set init: prune (or config)"),
    ("prune-params-and-ffn", lambda w, d: [R, w.recipe(d, student={"init": "prune", "layers": 2, "params": 10 ** 4,
                                                                   "intermediate_size": 8})], "give one"),
    ("prune-heads-across-kv-groups", lambda w, d: [R, w.recipe(d, model=w.llama, task="causal_lm",
                                                               data={"source": str(w.data), "label_field": None},
                                                               student={"init": "prune", "layers": 2, "num_attention_heads": 3},
                                                               distill={"losses": [{"name": "kl"}]})],
     "choose a multiple of 2"),
    ("trim-loses-too-many-held-out-tokens", lambda w, d: [R, w.recipe(d, student={"layers": 2, "vocabulary": "trim",
                                                                                  "vocabulary_min_count": 1000})],
     "more than student.vocabulary_max_unknown=0.02"),
    ("trim-a-causal-lm", lambda w, d: [R, w.recipe(d, model=w.llama, task="causal_lm",
                                                   data={"source": str(w.data), "label_field": None},
                                                   student={"layers": 2, "vocabulary": "trim"},
                                                   distill={"losses": [{"name": "kl"}]})],
     "is for encoders in this version"),
    ("sweep-unknown-grid-key", lambda w, d: ["sweep", w.recipe(d), "--grid", "student.widht=16,32", "--out", d / "sw"],
     "student has no key 'widht'"),
    ("sweep-grid-below-a-value", lambda w, d: ["sweep", w.recipe(d), "--grid", "seed.x=1,2", "--out", d / "sw"],
     "'seed' is a value, not a section"),
    ("sweep-without-grid", lambda w, d: ["sweep", w.recipe(d), "--out", d / "sw"], "needs at least one --grid"),
    ("sweep-grid-without-values", lambda w, d: ["sweep", w.recipe(d), "--grid", "distill.lr", "--out", d / "sw"],
     "has no values"),
    ("sweep-bad-variant", lambda w, d: ["sweep", w.recipe(d), "--grid", "student.layers=2,9", "--out", d / "sw"],
     "variant layers-9: student.layers=9 is more layers than the teacher has (4)"),
    ("sweep-out-holds-another-grid", lambda w, d: ["sweep", w.recipe(d), "--grid", "distill.lr=1e-4,2e-4", "--out",
                                                   _other_sweep(d)], "holds a sweep of another recipe or grid"),
    # -- a student with its own tokenizer, a curve-kept cache ---------------------------------------------------
    ("own-tokenizer-missing", lambda w, d: [R, w.recipe(d, model=w.llama, task="causal_lm", data={"source": str(w.data), "label_field": None},
                                                        student={"init": "config", "layers": 2, "tokenizer": str(d / "none")},
                                                        distill={"losses": [{"name": "gold"}, {"name": "ce"}]})],
     "student.tokenizer"),
    ("own-tokenizer-without-tokenizer-json", lambda w, d: [R, w.recipe(d, model=w.llama, task="causal_lm",
                                                                       data={"source": str(w.data), "label_field": None},
                                                                       student={"init": "config", "layers": 2,
                                                                                "tokenizer": str(_folder(d / "empty"))},
                                                                       distill={"losses": [{"name": "gold"}]})],
     "has no tokenizer.json"),
    ("own-tokenizer-with-kl", lambda w, d: [R, w.recipe(d, model=w.llama, task="causal_lm", data={"source": str(w.data), "label_field": None},
                                                        student={"init": "config", "layers": 2, "tokenizer": str(w.llama)},
                                                        distill={"losses": [{"name": "kl"}]})],
     "the losses that accept another tokenizer are uld, gold, ce"),
    ("own-tokenizer-on-an-encoder", lambda w, d: [R, w.recipe(d, student={"init": "config", "layers": 2, "tokenizer": str(w.teacher)},
                                                              distill={"losses": [{"name": "ce"}]})],
     "is for causal LMs"),
    ("curve-cache-small-top-k", lambda w, d: [R, w.recipe(d, model=w.llama, task="causal_lm", data={"source": str(w.data), "label_field": None},
                                                          teacher={"model": str(w.llama), "top_k": 8, "cache_values": "curve"},
                                                          distill={"losses": [{"name": "kl"}]})],
     "teacher.top_k >= 18"),
    ("tokenizer-data-missing", lambda w, d: ["tokenizer", d / "nope.jsonl", "--out", d / "tok"], "does not exist"),
    ("tokenizer-out-exists", lambda w, d: ["tokenizer", w.data, "--out", _folder(d / "tok")], "already exists"),
    ("tokenizer-out-is-a-file", lambda w, d: ["tokenizer", w.data, "--out", w.data_file(d, "f.txt", "x")], "already exists"),
    ("tokenizer-empty-data", lambda w, d: ["tokenizer", w.data_file(d, "empty.txt", ""), "--out", d / "tok"], "empty"),
    # -- export, bench and gate sections ----------------------------------------------------------------
    ("export-unknown-format", lambda w, d: [R, w.recipe(d, export={"artifacts": [{"format": "coreml", "precision": "fp32"}]})], "coreml"),
    ("export-unknown-precision", lambda w, d: [R, w.recipe(d, export={"artifacts": [{"format": "onnx", "precision": "int3"}]})], "int3"),
    ("export-lm-tflite-batch", lambda w, d: [R, w.recipe(d, model=w.llama, task="causal_lm", data={"source": str(w.data), "label_field": None},
                                                         distill={"losses": [{"name": "kl"}]},
                                                         export={"artifacts": [{"format": "tflite", "precision": "fp32"}],
                                                                 "tflite_shapes": [[2, 32]]})], "batch 1"),
    ("export-lm-int8-static", lambda w, d: [R, w.recipe(d, model=w.llama, task="causal_lm", data={"source": str(w.data), "label_field": None},
                                                        distill={"losses": [{"name": "kl"}]},
                                                        export={"artifacts": [{"format": "onnx", "precision": "int8-static"}]})],
     "int8-static is for encoders"),
    ("bench-unknown-target", lambda w, d: [R, w.recipe(d, bench={"target": "rpi9"})], "unknown target 'rpi9'"),
    ("bench-ssh-bad-port", lambda w, d: [R, w.recipe(d, bench={"target": "pi@host:22x"})], "is not a number"),
    ("bench-ssh-key-missing", lambda w, d: [R, w.recipe(d, bench={"target": "pi@host", "key_file": str(d / "id_none")})],
     "does not exist"),
    ("bench-profile-file-missing", lambda w, d: [R, w.recipe(d, bench={"target": str(d / "board.yaml")})], "does not exist"),
    # the library names the recipe key; `kd-edge run` has no --host, so the command line offers --set
    ("bench-profile-no-host", lambda w, d: [R, w.recipe(d, bench={"target": "rpi5"})],
     "give the address in bench.host (user@host) (on the command line: --set bench.host=...)"),
    ("bench-files-profile-no-host", lambda w, d: ["bench", w.onnx, "--target", "rpi5"],
     "give the address in bench.host (user@host) (on the command line: --host)"),
    ("recipe-gate-unknown-row", lambda w, d: [R, w.recipe(d, gate={"budgets": [{"artifact": "student.int4.onnx", "metric": "file_size_mb", "max": 1}]})],
     "will not be a row"),
    ("recipe-gate-baseline-missing", lambda w, d: [R, w.recipe(d, gate={"baseline": str(d / "old"), "budgets": []})], "has no report.json"),
    ("recipe-gate-budget-without-bound", lambda w, d: [R, w.recipe(d, gate={"budgets": [{"artifact": "student", "metric": "file_size_mb"}]})],
     "needs `min`, `max` or `max_regression`"),
    # -- run options ----------------------------------------------------------------------------------------
    ("set-malformed", lambda w, d: [R, w.recipe(d), "--set", "distill.epochs"], "has no value"),
    ("set-bad-yaml", lambda w, d: [R, w.recipe(d), "--set", "distill.epochs=[1"], "not valid YAML"),
    ("set-into-a-value", lambda w, d: [R, w.recipe(d), "--set", "name.x=1"], "is a value, not a section"),
    ("set-unknown-key", lambda w, d: [R, w.recipe(d), "--set", "distill.epoch=1"], "unknown key 'distill.epoch'"),
    ("resume-and-force", lambda w, d: [R, w.recipe(d), "--resume", "--force"], "contradict"),
    ("out-is-a-file", lambda w, d: [R, w.recipe(d), "--out", w.data], "is a file"),
    ("out-under-a-file", lambda w, d: [R, w.recipe(d), "--out", w.data / "run"], "is a file, not a folder"),
    ("out-foreign-folder", lambda w, d: [R, w.recipe(d), "--out", w.root / "teacher"], "holds no kd-edge run"),
    ("out-another-recipe", lambda w, d: [R, w.recipe(d, distill__lr=0.1), "--out", w.run], "holds a run of a different recipe"),
    ("out-damaged-manifest", lambda w, d: [R, w.recipe(d), "--out", _damaged_run(d)], "is damaged"),
    ("run-unknown-option", lambda w, d: ["run", "--epochs", "3"], "No such option"),
    ("distill-unknown-recipe-name", lambda w, d: ["distill", "minilm-l7"], "does not exist"),
    ("distill-bad-recipe", lambda w, d: ["distill", w.recipe(d, student={"layers": 9})], "more layers"),
    # -- init -------------------------------------------------------------------------------------------------
    ("list-unknown-kind", lambda w, d: ["list", "lossez"], "did you mean 'losses'"),
    ("init-exists", lambda w, d: ["init", w.data_file(d, "r.yaml", "name: x\n")], "already exists"),
    ("init-onto-folder", lambda w, d: ["init", d], "is a folder"),
    ("init-missing-folder", lambda w, d: ["init", d / "no" / "r.yaml"], "does not exist"),
    ("init-not-yaml", lambda w, d: ["init", d / "recipe.txt"], "should end in .yaml"),
    ("init-unknown-task", lambda w, d: ["init", d / "r.yaml", "--task", "ranking"], "is not a task"),
    ("init-teacher-missing", lambda w, d: ["init", d / "r.yaml", "--teacher", str(d / "gone")], "does not exist"),
    ("init-data-missing", lambda w, d: ["init", d / "r.yaml", "--data", str(d / "none.jsonl")], "does not exist"),
    ("init-data-empty", lambda w, d: ["init", d / "r.yaml", "--data", str(w.data_file(d, "e.jsonl", "\n"))], "holds no rows"),
    ("init-data-bad-json", lambda w, d: ["init", d / "r.yaml", "--data", str(w.data_file(d, "e.jsonl", "{x\n"))], "not valid JSON"),
    # -- export MODEL_DIR / RUN_DIR -------------------------------------------------------------------------
    ("export-dir-missing", lambda w, d: ["export", d / "none"], "does not exist"),
    ("export-dir-is-file", lambda w, d: ["export", w.data], "is a file"),
    ("export-dir-no-config", lambda w, d: ["export", d], "no config.json"),
    ("export-format-unknown", lambda w, d: ["export", w.teacher, "--format", "coreml"], "is not known"),
    ("export-precision-unknown", lambda w, d: ["export", w.teacher, "--precision", "int2"], "is not known"),
    ("export-precision-of-other-format", lambda w, d: ["export", w.teacher, "--format", "tflite", "--precision", "int4"],
     "no precision of int4 exists for tflite; onnx: fp32"),
    ("export-shapes-malformed", lambda w, d: ["export", w.teacher, "--shapes", "128"], "BATCHxSEQUENCE"),
    ("export-out-not-empty", lambda w, d: ["export", w.teacher, "--out", w.root / "teacher"], "already holds files"),
    ("export-out-is-file", lambda w, d: ["export", w.teacher, "--out", w.data], "is a file"),
    ("export-texts-missing", lambda w, d: ["export", w.teacher, "--texts", d / "t.jsonl", "--out", d / "x"], "does not exist"),
    ("export-texts-not-jsonl-objects", lambda w, d: ["export", w.teacher, "--texts", w.data_file(d, "t.jsonl", "[1]\n"),
                                                     "--out", d / "x"], "'text' field"),
    ("export-set-on-model-dir", lambda w, d: ["export", w.teacher, "--set", "export.opset=17"], "--set is for run folders"),
    ("export-run-dir-with-format", lambda w, d: ["export", w.run, "--format", "onnx"], "are for model folders"),
    ("export-task-unknown", lambda w, d: ["export", w.teacher, "--task", "ranking", "--out", d / "x"], "ranking"),
    ("export-pickle-only", lambda w, d: ["export", _pickle_only(w, d), "--out", d / "x"], "allow_pickle"),
    ("export-truncated-weights", lambda w, d: ["export", _truncated(w, d), "--out", d / "x"], "is truncated"),
    # -- quantize ---------------------------------------------------------------------------------------------
    ("quantize-missing", lambda w, d: ["quantize", d / "none.onnx"], "does not exist"),
    ("quantize-model-folder", lambda w, d: ["quantize", w.teacher], "is a folder"),
    ("quantize-unknown-suffix", lambda w, d: ["quantize", w.data], "knows no format with the suffix '.jsonl'"),
    ("quantize-precision-not-for-suffix", lambda w, d: ["quantize", w.onnx, "-p", "int8-weights"], "is not made from .onnx"),
    ("quantize-out-exists", lambda w, d: ["quantize", w.onnx, "--out", w.data_file(d, "q.onnx", "x")], "already exists"),
    ("quantize-out-is-input", lambda w, d: ["quantize", w.onnx, "--out", w.onnx], "is the input file"),
    ("quantize-out-is-folder", lambda w, d: ["quantize", w.onnx, "--out", _folder(d / "q.onnx")], "is a folder"),
    ("quantize-out-folder-missing", lambda w, d: ["quantize", w.onnx, "--out", d / "no" / "q.onnx"], "does not exist"),
    ("quantize-out-wrong-suffix", lambda w, d: ["quantize", w.onnx, "--out", d / "q.tflite"], "does not end in .onnx"),
    ("quantize-calibration-alone", lambda w, d: ["quantize", w.onnx, "--calibration", w.data, "--out", d / "q.onnx"], "needs --tokenizer"),
    ("quantize-calibration-missing", lambda w, d: ["quantize", w.onnx, "--calibration", d / "c.jsonl", "--tokenizer", w.teacher],
     "does not exist"),
    ("quantize-tokenizer-missing", lambda w, d: ["quantize", w.onnx, "--calibration", w.data, "--tokenizer", d / "tok"],
     "does not exist"),
    ("quantize-static-without-data", lambda w, d: ["quantize", w.onnx, "-p", "int8-static", "--out", d / "q.onnx"],
     "calibrates activation ranges"),
    ("quantize-truncated-onnx", lambda w, d: ["quantize", w.data_file(d, "t.onnx", w.onnx.read_bytes()[:3000]), "--out", d / "q.onnx"],
     "not a complete ONNX model"),
    ("quantize-keep-float-3", lambda w, d: ["quantize", w.onnx, "--keep-float", "3"], "--keep-float"),
    ("quantize-keep-float-on-fp16", lambda w, d: ["quantize", w.onnx, "-p", "fp16", "--keep-float", "1", "--out", d / "q.onnx"],
     "is not int8"),
    ("quantize-keep-float-on-tflite", lambda w, d: ["quantize", w.data_file(d, "m.tflite", b"\0\0\0\0TFL3" + b"\0" * 32), "--keep-float", "1"], "for ONNX files"),
    ("quantize-unknown-output", lambda w, d: ["quantize", w.onnx, "--output", "logits", "--out", d / "q.onnx"], "is not an output"),
    # -- bench ------------------------------------------------------------------------------------------------
    ("bench-path-missing", lambda w, d: ["bench", d / "none.onnx"], "does not exist"),
    ("bench-unknown-suffix", lambda w, d: ["bench", w.data], "knows no format with the suffix '.jsonl'"),
    ("bench-folder-neither", lambda w, d: ["bench", d], "is not a kd-edge run folder"),
    ("bench-threads-zero", lambda w, d: ["bench", w.onnx, "--threads", "0"], "1 or more"),
    ("bench-threads-negative", lambda w, d: ["bench", w.onnx, "--threads", "-1"], "1 or more"),
    ("bench-threads-words", lambda w, d: ["bench", w.onnx, "--threads", "two"], "whole numbers"),
    ("bench-runs-zero", lambda w, d: ["bench", w.onnx, "--runs", "0"], "--runs 0"),
    ("bench-batch-zero", lambda w, d: ["bench", w.onnx, "--batch", "0"], "--batch 0"),
    ("bench-rounds-zero", lambda w, d: ["bench", w.onnx, "--rounds", "0"], "--rounds 0"),
    ("bench-runs-not-a-number", lambda w, d: ["bench", w.onnx, "--runs", "many"], "--runs"),
    ("bench-target-unknown", lambda w, d: ["bench", w.onnx, "--target", "jetson"], "unknown target 'jetson'"),
    ("bench-key-missing", lambda w, d: ["bench", w.onnx, "--target", "pi@127.0.0.1", "--key", d / "id_none"], "does not exist"),
    ("bench-key-on-local", lambda w, d: ["bench", w.onnx, "--key", w.data], "for SSH targets"),
    ("bench-set-with-files", lambda w, d: ["bench", w.onnx, "--set", "bench.runs=5"], "--set applies to a run folder"),
    ("bench-unloadable-onnx", lambda w, d: ["bench", w.data_file(d, "bad.onnx", "not onnx"), "--runs", "5", "--rounds", "1"],
     "failed at load"),
    ("bench-out-is-file", lambda w, d: ["bench", w.onnx, "--out", w.data], "is a file"),
    ("bench-run-several-threads", lambda w, d: ["bench", w.run, "--threads", "1,2"], "one thread count"),
    ("bench-profile-invalid", lambda w, d: ["bench", w.onnx, "--target", w.data_file(d, "p.yaml", "name: x\nkind: fpga\n")],
     "kind"),
    # -- report -----------------------------------------------------------------------------------------------
    ("report-missing-dir", lambda w, d: ["report", d / "none"], "does not exist"),
    ("report-not-a-run", lambda w, d: ["report", d], "is not a kd-edge run folder"),
    ("report-nothing", lambda w, d: ["report"], "pass a run folder"),
    ("report-compare-missing", lambda w, d: ["report", "--compare", w.run, d / "none.json"], "no report at"),
    ("report-compare-invalid-json", lambda w, d: ["report", "--compare", w.run, _report(d, "r.json", "{x")], "not valid JSON"),
    ("report-compare-not-a-report", lambda w, d: ["report", "--compare", w.run, _report(d, "r.json", [1, 2])], "not a kd-edge report"),
    ("report-compare-out-exists", lambda w, d: ["report", "--compare", w.run, w.run, "--out", w.data], "already exists"),
    ("report-compare-out-folder", lambda w, d: ["report", "--compare", w.run, w.run, "--out", d], "is a folder"),
    ("report-out-without-compare", lambda w, d: ["report", w.run, "--out", d / "x.md"], "go with --compare"),
    # -- gate -------------------------------------------------------------------------------------------------
    ("gate-no-report", lambda w, d: ["gate", d], "no report at"),
    ("gate-budget-missing", lambda w, d: ["gate", w.run, "--budget", d / "b.yaml"], "does not exist"),
    ("gate-budget-yaml-error", lambda w, d: ["gate", w.run, "--budget", _budget(d, "budgets: [\n")], "YAML syntax error"),
    ("gate-budget-unknown-key", lambda w, d: ["gate", w.run, "--budget", _budget(d, "budgets:\n  - {artifact: student, metric: x, minimum: 1}\n")],
     "unknown key 'budgets.0.minimum'"),
    ("gate-budget-no-bound", lambda w, d: ["gate", w.run, "--budget", _budget(d, "budgets:\n  - {artifact: student, metric: x}\n")],
     "needs `min`"),
    ("gate-budget-empty", lambda w, d: ["gate", w.run, "--budget", _budget(d, "budgets: []\n")], "lists no budgets"),
    ("gate-check-malformed", lambda w, d: ["gate", w.run, "--check", "student latency < 3"], "is not ROW[@TARGET]:METRIC"),
    ("gate-check-unknown-row", lambda w, d: ["gate", w.run, "--check", "teacher:latency_p50_ms<=3"], "not a row"),
    ("gate-check-unknown-metric", lambda w, d: ["gate", w.run, "--check", "student:latency_p99_ms<=3"], "no metric 'latency_p99_ms'"),
    ("gate-regress-without-baseline", lambda w, d: ["gate", w.run, "--check", "student:latency_p50_ms regress<=5%"],
     "no baseline report"),
    ("gate-baseline-missing", lambda w, d: ["gate", w.run, "--baseline", d / "old", "--check", "student:latency_p50_ms<=3"],
     "no baseline report at"),
    ("gate-markdown-is-folder", lambda w, d: ["gate", w.run, "--check", "student:latency_p50_ms<=3", "--markdown", d], "is a folder"),
    ("gate-report-invalid", lambda w, d: ["gate", _report(d, "report.json", "{oops")], "not valid JSON"),
    # -- the command line itself ------------------------------------------------------------------------------
    ("unknown-command", lambda w, d: ["train"], "No such command"),
    ("doctor-unknown-option", lambda w, d: ["doctor", "--verbose"], "No such option"),
]


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _damaged_run(d: Path) -> Path:
    run = d / "damaged"
    run.mkdir()
    (run / "manifest.json").write_text('{"name": "tiny", "stag')
    return run


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def run_in_process(argv: list, cwd: Path) -> tuple[int, str, str]:
    """``kd-edge ARGV`` through kd_edge.cli.main in this process: (exit code, stdout, stderr)."""
    from kd_edge.cli import main

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    out, err = io.StringIO(), io.StringIO()
    old_argv, old_cwd = sys.argv, os.getcwd()
    sys.argv = ["kd-edge", *map(str, argv)]
    os.chdir(cwd)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
        for s, h in handlers.items():
            signal.signal(s, h)
    return code, out.getvalue(), err.getvalue()


def assert_one_line(code: int, out: str, err: str, fragment: str) -> None:
    assert code == 2, (code, out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in out + err
    assert fragment in lines[0], lines[0]
    message = lines[0][len("error: "):]
    # the problem, then the fix: every message names what to do after a ';' (or the usage hint)
    assert ";" in message, message


def test_the_table_covers_every_command_and_more_than_120_inputs(world, tmp_path):
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)), "case ids are unique"
    assert len(CASES) >= 120, len(CASES)
    commands = set()
    for i, (_, build, _) in enumerate(CASES):
        folder = tmp_path / str(i)
        folder.mkdir()
        commands.add(str(build(world, folder)[0]))
    assert {"run", "init", "export", "quantize", "bench", "report", "gate", "distill", "doctor", "list",
            "tokenizer", "sweep"} <= commands, commands


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, world, tmp_path):
    name, build, fragment = case
    folder = tmp_path / "case"
    folder.mkdir()
    argv = build(world, folder)
    before = snapshot(world.root), snapshot(folder)
    code, out, err = run_in_process(argv, folder)
    assert_one_line(code, out, err, fragment)
    after = snapshot(world.root), snapshot(folder)
    for b, a in zip(before, after):
        changed = {k for k in b if b[k] != a.get(k)}
        assert not changed, f"{name} changed or removed {sorted(changed)}"


# -- cases that need permissions root does not bypass, or a file system of their own: a subprocess -------------
# root reads and writes everything; without its two DAC-override capabilities it meets permission bits
# as any user does (setpriv, from util-linux).
NO_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


def _without_override(argv: list, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*NO_OVERRIDE, sys.executable, "-m", "kd_edge", *map(str, argv)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                reason="the permission cases drop root's capabilities (needs root and setpriv)")


@needs_root
def test_unreadable_and_unwritable_paths(tmp_path, world):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(world.teacher, world.data)))
    os.chmod(recipe, 0o000)
    p = _without_override(["run", recipe], tmp_path)
    assert_one_line(p.returncode, p.stdout, p.stderr, "not readable")
    os.chmod(recipe, 0o644)
    data = tmp_path / "data.jsonl"
    shutil.copy(world.data, data)
    os.chmod(data, 0o000)
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(tiny_recipe_dict(world.teacher, data)))
    p = _without_override(["run", other, "--out", tmp_path / "run"], tmp_path)
    assert_one_line(p.returncode, p.stdout, p.stderr, "not readable")
    assert not (tmp_path / "run").exists()
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o555)
    for argv, fragment in ((["init", locked / "r.yaml"], "permission denied"),
                           (["run", recipe, "--out", locked / "run"], "cannot write in"),
                           (["report", "--compare", world.run, world.run, "--out", locked / "c.md"], "permission denied"),
                           (["quantize", world.onnx, "--out", locked / "q.onnx"], "permission denied"),
                           (["export", world.teacher, "--out", locked / "x"], "cannot write in")):
        p = _without_override(argv, tmp_path)
        assert_one_line(p.returncode, p.stdout, p.stderr, fragment)
    assert not list(locked.iterdir())
    os.chmod(locked, 0o755)


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    """A tmpfs mounted at ``path`` with ``options`` (size=700k, ro...): a file system of the test's own."""
    path.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({p.stderr.decode().strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def full_disk(tmp_path):
    """A 700 kB tmpfs: the tiny run (about 930 kB) fills it up."""
    with tmpfs(tmp_path / "small", "size=700k") as mount:
        yield mount


@needs_root
def test_a_full_disk_stops_a_stage_in_one_line_and_leaves_no_partial_output(full_disk, world):
    out = full_disk / "run"
    recipe = full_disk.parent / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(world.teacher, world.data)))
    p = subprocess.run([sys.executable, "-m", "kd_edge", "run", str(recipe), "--out", str(out), "-q"],
                       capture_output=True, text=True, timeout=600)
    assert_one_line(p.returncode, p.stdout, p.stderr, "no space left on the device" if "no space" in p.stderr else "free")
    assert "free space" in p.stderr
    leftovers = [x for x in out.rglob("*") if ".tmp-" in x.name]
    assert not leftovers, leftovers
    manifest = json.loads((out / "manifest.json").read_text())
    failed = [n for n, s in manifest["stages"].items() if s["status"] == "failed"]
    assert len(failed) == 1, manifest["stages"]


@needs_root
def test_a_read_only_out_is_refused_before_any_stage(tmp_path, world):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mount:
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(yaml.safe_dump(tiny_recipe_dict(world.teacher, world.data)))
        code, out, err = run_in_process(["run", recipe, "--out", mount / "run"], tmp_path)
        assert_one_line(code, out, err, "read-only")


@needs_root
def test_a_full_disk_under_the_memory_mapped_cache_is_enospc_not_sigbus(tmp_path):
    """The teacher cache writes memory-mapped arrays; on a full disk a write to an unbacked page kills
    the process with SIGBUS. Its blocks are reserved first, so the disk says ENOSPC instead."""
    with tmpfs(tmp_path / "small", "size=1m") as mount:
        code = "\n".join([
            "import pathlib, sys", "import numpy as np",
            "from kd_edge.data.packed import Packed", "from kd_edge.distill.cache import _FieldWriter",
            "ids = Packed.from_lists([[1] * 64] * 64)",  # 4,096 tokens x 128 floats: 2 MB on a 1 MB disk
            f"w = _FieldWriter(pathlib.Path({str(mount / 'hidden.npy')!r}), 'token', ids)",
            "try:", "    w.write(np.arange(64), np.ones((64, 64, 128), np.float32))",
            "except OSError as e:", "    print('errno', e.errno); sys.exit(0)",
            "print('written'); sys.exit(1)"])
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0 and "errno 28" in p.stdout, (p.returncode, p.stdout, p.stderr)  # not -7 (SIGBUS)
