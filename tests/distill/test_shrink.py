"""A smaller student at the teacher's quality: vocabulary trim and importance pruning.

Trim: the trimmed tokenizer reads training text as the teacher does (renumbered), splits a word with a
removed piece into kept pieces, survives save_pretrained, and a whole run exports a file whose table has
the kept rows and ships the trimmed tokenizer. Prune: cutting a part equals running the teacher with
that part silenced (exact slicing), the scores find the parts that carry the signal, and the pruned
config loads back from its folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModel, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from kd_edge.distill import pruning, vocabulary
from kd_edge.errors import ConfigError
from tests.conftest import sentences, tiny_recipe_dict, write_tiny_bert


# -- vocabulary trim ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bert_tok(tmp_path_factory):
    folder = write_tiny_bert(tmp_path_factory.mktemp("tok") / "bert", layers=1)
    return AutoTokenizer.from_pretrained(str(folder))


def _kept(tok, texts, min_count=1):
    ids = np.concatenate([tok(t)["input_ids"] for t in texts])
    return vocabulary.kept_ids(tok, vocabulary.token_counts(ids, len(tok)), min_count)


def test_trimmed_tokenizer_reads_training_text_as_the_teacher_renumbered(bert_tok, tmp_path):
    train = [r["text"] for r in sentences(40)]
    keep = _kept(bert_tok, train)
    assert len(keep) < len(bert_tok)
    trimmed = vocabulary.write_trimmed(bert_tok, keep, tmp_path / "trim")
    assert len(trimmed) == len(keep)
    table = vocabulary.remap_table(keep, len(bert_tok))
    for text in train:
        assert trimmed(text)["input_ids"] == table[bert_tok(text)["input_ids"]].tolist()
    for attr in ("pad_token_id", "unk_token_id", "cls_token_id", "sep_token_id", "mask_token_id"):
        assert getattr(trimmed, attr) == table[getattr(bert_tok, attr)], attr
    # saved again by transformers, it still reads the same (the ids are unique: nothing is lost on save)
    trimmed.save_pretrained(str(tmp_path / "again"))
    again = AutoTokenizer.from_pretrained(str(tmp_path / "again"))
    assert all(again(t)["input_ids"] == trimmed(t)["input_ids"] for t in train)
    word = train[0].split()[0]
    assert again.convert_ids_to_tokens(again(word)["input_ids"]) == bert_tok.convert_ids_to_tokens(bert_tok(word)["input_ids"])


def test_a_word_with_a_removed_piece_is_split_into_kept_pieces_or_unknown(bert_tok, tmp_path):
    keep = _kept(bert_tok, ["a b c good"])  # the letters, "good", the specials
    trimmed = vocabulary.write_trimmed(bert_tok, keep, tmp_path / "trim")
    assert trimmed.convert_ids_to_tokens(trimmed("good")["input_ids"])[1:-1] == ["good"]
    word = "cab"  # a word whose teacher pieces (c, ##a, ##b) were not all kept: no ##-pieces kept -> [UNK]
    assert trimmed.convert_ids_to_tokens(trimmed(word)["input_ids"])[1:-1] == ["[UNK]"]
    share, lost = vocabulary.unknown_share(np.array(bert_tok("good cab")["input_ids"]), keep, len(bert_tok),
                                           bert_tok.all_special_ids)
    pieces = bert_tok.tokenize("cab")
    assert lost == sum(bert_tok.convert_tokens_to_ids(p) not in set(keep.tolist()) for p in pieces) and lost >= 1
    assert share == pytest.approx(lost / (1 + len(pieces)))


def test_trim_refuses_a_tokenizer_it_cannot_rewrite(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    bpe = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE(vocab={"a": 0, "<unk>": 1}, merges=[],
                                                                        unk_token="<unk>")), unk_token="<unk>")
    with pytest.raises(ConfigError, match="rewrites WordPiece tokenizers.*BPE"):
        vocabulary.write_trimmed(bpe, np.array([0, 1]), tmp_path / "t")


def test_trim_embeddings_keeps_the_teachers_rows(tiny_teacher):
    model = AutoModel.from_pretrained(str(tiny_teacher))
    rows = model.get_input_embeddings().weight.detach().clone()
    keep = np.array([0, 1, 2, 3, 7, 11])
    vocabulary.trim_embeddings(model, keep, pad_id=0)
    assert model.config.vocab_size == 6
    torch.testing.assert_close(model.get_input_embeddings().weight, rows[keep])


def test_a_run_with_a_trimmed_vocabulary_exports_the_small_table_and_its_tokenizer(tmp_path, tiny_teacher, tiny_data):
    import onnx

    from kd_edge.config import recipe_from_dict
    from kd_edge.pipeline import run_pipeline
    from kd_edge.preflight import resolve

    recipe = resolve(recipe_from_dict(tiny_recipe_dict(
        tiny_teacher, tiny_data, student={"init": "prune", "layers": 2, "intermediate_size": 24, "vocabulary": "trim",
                                          "vocabulary_max_unknown": 0.5},
        export={"artifacts": [{"format": "onnx", "precision": "fp32"}], "int8_fallback": False}), "tiny"))
    run = tmp_path / "run"
    run_pipeline(recipe, run, progress=False, stop_after="verify")
    meta = json.loads((run / "teacher_cache" / "meta.json").read_text())
    kept = meta["vocabulary"]["kept"]
    assert kept < meta["vocabulary"]["teacher_vocab_size"] and meta["vocab_size"] == kept
    graph = onnx.load(str(run / "artifacts" / "student.fp32.onnx"))
    tables = [i for i in graph.graph.initializer if list(i.dims)[:1] == [kept]]
    assert tables, "the exported file holds a table of the kept rows"
    shipped = AutoTokenizer.from_pretrained(str(run / "artifacts"))
    assert len(shipped) == kept
    record = json.loads((run / "verify" / "student.fp32.onnx.json").read_text())
    assert record["passed"] and record["max_abs_diff"] < 1e-4, record
    config = json.loads((run / "student" / "config.json").read_text())
    assert config["vocab_size"] == kept and config["intermediate_size"] == 24


# -- pruning --------------------------------------------------------------------------------------------------

def _batches(n=4, vocab=60, seq=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, vocab, (3, seq), generator=g)
        mask = torch.ones_like(ids)
        mask[0, -3:] = 0
        out.append((ids, mask))
    return out


def _cfg(**kw):
    from kd_edge.distill.config import StudentConfig

    return StudentConfig(init="prune", **kw)


def test_pruning_ffn_neurons_equals_silencing_them_in_the_teacher(tiny_teacher):
    teacher = AutoModel.from_pretrained(str(tiny_teacher)).eval()
    scores = pruning.measure(teacher, _batches(), pruning.BERT)
    assert scores.neurons.shape == (4, 64) and scores.tokens == 4 * 27 - 4 * 3
    student, notes = pruning.prune(teacher, _cfg(layers=[0, 1, 2, 3], intermediate_size=40), scores)
    assert student.config.intermediate_size == 40 and notes["layers"] == [0, 1, 2, 3]
    silenced = AutoModel.from_pretrained(str(tiny_teacher)).eval()
    with torch.no_grad():
        for i, layer in enumerate(silenced.encoder.layer):
            drop = np.setdiff1d(np.arange(64), np.sort(np.argsort(-scores.neurons[i], kind="stable")[:40]))
            layer.output.dense.weight[:, drop] = 0
        ids, mask = _batches(1, seed=3)[0]
        torch.testing.assert_close(student(input_ids=ids, attention_mask=mask).last_hidden_state,
                                   silenced(input_ids=ids, attention_mask=mask).last_hidden_state, rtol=1e-5, atol=1e-5)


def test_the_scores_find_the_neurons_and_layers_that_carry_the_signal(tiny_teacher):
    teacher = AutoModel.from_pretrained(str(tiny_teacher)).eval()
    with torch.no_grad():
        teacher.encoder.layer[1].intermediate.dense.weight[5].mul_(40)  # neuron 5 of layer 1: large activations
        teacher.encoder.layer[2].output.dense.weight.zero_()  # layer 2 adds nothing: its output is its input,
        teacher.encoder.layer[2].output.dense.bias.zero_()  # up to its norm
        teacher.encoder.layer[2].attention.output.dense.weight.zero_()
        teacher.encoder.layer[2].attention.output.dense.bias.zero_()
    scores = pruning.measure(teacher, _batches(), pruning.BERT)
    assert int(np.argmax(scores.neurons[1])) == 5
    assert int(np.argmin(scores.layers)) == 2
    assert pruning.pick_layers_by_importance(scores.layers, 3) == [0, 1, 3]


def _llama(tie=True):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=60, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie)
    return LlamaForCausalLM(config).eval()


def test_pruning_llama_heads_equals_silencing_them(tmp_path):
    teacher = _llama()
    scores = pruning.measure(teacher, _batches(), pruning.LLAMA)
    student, notes = pruning.prune(teacher, _cfg(layers=3, num_attention_heads=2), scores)
    assert student.config.num_attention_heads == 2 and student.config.head_dim == 8
    silenced = _llama()
    hd = 8
    with torch.no_grad():
        for i, layer in enumerate(silenced.model.layers):
            kept = [g * 2 + int(np.argmax(scores.heads[i][g * 2:(g + 1) * 2])) for g in range(2)]
            for h in set(range(4)) - set(kept):
                layer.self_attn.o_proj.weight[:, h * hd:(h + 1) * hd] = 0
        ids, mask = _batches(1, seed=4)[0]
        torch.testing.assert_close(student(input_ids=ids, attention_mask=mask).logits,
                                   silenced(input_ids=ids, attention_mask=mask).logits, rtol=1e-4, atol=1e-5)
    student.save_pretrained(str(tmp_path / "s"))  # the config alone rebuilds the pruned shapes
    again = LlamaForCausalLM.from_pretrained(str(tmp_path / "s")).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, student(input_ids=ids).logits)


@pytest.mark.parametrize("tie", [True, False])
def test_pruning_llama_width_keeps_the_strongest_channels_and_loads_back(tmp_path, tie):
    teacher = _llama(tie)
    scores = pruning.measure(teacher, _batches(), pruning.LLAMA)
    student, _ = pruning.prune(teacher, _cfg(layers=2, hidden_size=24, intermediate_size=32), scores)
    kept = np.sort(np.argsort(-scores.channels, kind="stable")[:24])
    torch.testing.assert_close(student.get_input_embeddings().weight, teacher.get_input_embeddings().weight[:, kept])
    assert (student.get_output_embeddings().weight is student.get_input_embeddings().weight) == tie
    ids = _batches(1)[0][0]
    with torch.no_grad():
        logits = student(input_ids=ids).logits
    assert logits.shape == (3, 9, 60) and torch.isfinite(logits).all()
    student.save_pretrained(str(tmp_path / "s"))
    again = LlamaForCausalLM.from_pretrained(str(tmp_path / "s")).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, logits)


def test_a_parameter_budget_sizes_the_ffn(tiny_teacher):
    teacher = AutoModel.from_pretrained(str(tiny_teacher)).eval()
    scores = pruning.measure(teacher, _batches(), pruning.BERT)
    full = sum(p.numel() for p in pruning.prune(teacher, _cfg(layers=2), scores)[0].parameters())
    budget = full - 2 * 20 * (2 * 32 + 1)  # 20 neurons fewer in each of 2 layers
    student, notes = pruning.prune(teacher, _cfg(layers=2, params=budget), scores)
    assert sum(p.numel() for p in student.parameters()) <= budget
    assert notes["intermediate_size"] == 40  # 64 - 20 = 44, down to a multiple of 8
    with pytest.raises(ConfigError, match="nothing to prune"):
        pruning.prune(teacher, _cfg(layers=2, params=full + 1), scores)


def test_the_report_says_how_the_student_was_cut():
    from kd_edge.report.render import _student_line

    line = _student_line({"student_build": {
        "pruned": {"layers": [2, 5], "of_teacher_layers": 6, "intermediate_size": 512, "of_teacher_intermediate_size": 1536,
                   "num_attention_heads": 12, "hidden_size": 384, "calibration_tokens": 7327},
        "vocabulary": {"kept": 9055, "teacher_vocab_size": 30522, "min_count": 2, "held_out_outside": 0.036}}})
    assert "layers [2, 5] of 6, FFN 512 of 1,536 neurons" in line
    assert "9,055 of 30,522 tokens" in line and "3.6 % of the held-out tokens" in line
    assert _student_line({"student_build": {"init": "teacher_layers"}}) == ""
