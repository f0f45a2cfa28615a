"""A student with its own tokenizer (``student.tokenizer``): the two tokenizations aligned, the
cross-tokenizer losses, and a whole run on a tiny Llama teacher with SmolLM2's tokenizer and a student
tokenizer trained by `tokenizers` on the run's text."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from kd_edge.config import recipe_from_dict
from kd_edge.distill import losses
from kd_edge.distill.alignment import align, encode, train_tokenizer, transplant_rows, vocab_map
from kd_edge.errors import ConfigError
from kd_edge.runfiles import CacheReader
from tests.conftest import sentences, tiny_recipe_dict, write_tiny_llama


@pytest.fixture(scope="module")
def texts():
    return [r["text"] for r in sentences(120)]


@pytest.fixture(scope="module")
def student_tokenizer(tmp_path_factory, texts):
    folder = tmp_path_factory.mktemp("own-tokenizer")
    train_tokenizer(texts, 300, folder)
    return folder


@pytest.fixture(scope="module")
def teacher_on_smollm2_tokens(tmp_path_factory, smollm2_tokenizer):
    return write_tiny_llama(tmp_path_factory.mktemp("llama-smol") / "teacher", tokenizer_dir=smollm2_tokenizer,
                            logit_scale=4.0)


def _tok(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def test_aligned_positions_have_read_the_same_text(texts, smollm2_tokenizer, student_tokenizer):
    teacher, student = _tok(smollm2_tokenizer), _tok(student_tokenizer)
    rows = [{"text": t} for t in texts[:40]] + [{"text": "Wow!!  Two  spaces, digits 12345 and émigré café."}]
    t_ids, _, t_ends = encode(teacher, rows, 64)
    s_ids, _, s_ends = encode(student, rows, 64)
    where = align(s_ends, t_ends)
    assert len(student) < len(teacher)
    aligned = unaligned = 0
    for i in range(len(rows)):
        s, t = s_ids[i].tolist(), t_ids[i].tolist()
        t_prefixes = {teacher.decode(t[:j + 1]): j for j in range(len(t) - 1)}
        for k in range(len(s) - 1):
            text = student.decode(s[:k + 1])
            at = int(where[s_ids.offsets[i] + k])
            if at >= 0:
                aligned += 1
                j = at - int(t_ids.offsets[i])
                assert teacher.decode(t[:j + 1]) == text  # both have read exactly this text
            else:
                unaligned += 1
                assert text not in t_prefixes  # no teacher position has read it
        assert where[s_ids.offsets[i + 1] - 1] == -1  # a text's last token predicts nothing
    # the student's smaller vocabulary splits words finer: nearly every teacher boundary is one of its own
    assert aligned >= 0.9 * (int(t_ids.offsets[-1]) - len(t_ids)) and unaligned > 0


def test_vocab_map_and_transplanted_rows(smollm2_tokenizer, student_tokenizer):
    teacher, student = _tok(smollm2_tokenizer), _tok(student_tokenizer)
    mapping = vocab_map(teacher, student)
    s_vocab, t_vocab = student.get_vocab(), teacher.get_vocab()
    matched = {t: s_vocab[t] for t in s_vocab if t in t_vocab}
    assert (mapping >= 0).sum() == len(matched) > len(student) // 2
    for token, j in list(matched.items())[:50]:
        assert mapping[t_vocab[token]] == j
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(len(teacher), 8)).astype(np.float32)
    out, copied = transplant_rows(rows, teacher, student, len(student))
    assert copied == len(matched)
    token, j = next(iter(matched.items()))
    assert np.array_equal(out[j], rows[t_vocab[token]])
    def pieces(token):
        return teacher(student.convert_tokens_to_string([token]), add_special_tokens=False)["input_ids"]

    unmatched = sorted((t for t in s_vocab if t not in t_vocab), key=s_vocab.get)
    split = [t for t in unmatched if pieces(t)]  # tokens the teacher spells in pieces: the mean of those rows
    assert split and all(np.allclose(out[s_vocab[t]], rows[pieces(t)].mean(0)) for t in split)
    for t in unmatched:  # a lone byte of a character has no text of its own: the teacher's mean row
        if not pieces(t):
            assert np.allclose(out[s_vocab[t]], rows.mean(0))


def _sparse(logits, k, temperature=1.0):
    values, idx = logits.topk(k, -1)
    return {"topk_logits": values, "topk_indices": idx,
            "lse": {temperature: torch.logsumexp(logits / temperature, -1), 1.0: torch.logsumexp(logits, -1)}}


def test_gold_is_kl_when_both_read_one_vocabulary():
    torch.manual_seed(0)
    teacher, student = torch.randn(2, 5, 40) * 3, torch.randn(2, 5, 40)
    batch = {"token_weights": torch.ones(2, 5)}
    for k in (8, 40):
        t = _sparse(teacher, k, 2.0)
        gold = losses.gold({"logits": student}, t, batch, temperature=2.0)
        kl = losses.kl({"logits": student}, t, batch, temperature=2.0)
        assert float(gold) == pytest.approx(float(kl), rel=1e-5)


def test_uld_compares_sorted_probabilities_only():
    torch.manual_seed(1)
    teacher = torch.randn(1, 4, 30) * 2
    permuted = teacher[..., torch.randperm(30)]  # the same distribution spelled with other token ids
    batch = {"token_weights": torch.ones(1, 4)}
    t = _sparse(teacher, 30)
    assert float(losses.uld({"logits": permuted}, t, batch)) < 1e-5
    assert float(losses.kl({"logits": permuted}, t, batch)) > 0.1
    flatter = losses.uld({"logits": teacher / 3}, t, batch)
    assert float(flatter) > 0.1
    # only aligned positions count: a position without a teacher changes nothing
    t_aligned = {**t, "aligned": torch.tensor([[1.0, 1.0, 0.0, 0.0]])}
    worse = teacher.clone()
    worse[:, 2:] = 0
    assert float(losses.uld({"logits": worse}, t_aligned, batch)) < 1e-5


def test_gold_pulls_matched_tokens_and_sorts_the_rest():
    torch.manual_seed(2)
    teacher = torch.randn(1, 3, 20) * 3
    t = _sparse(teacher, 20)
    # the student's vocabulary: teacher token i is student token 19 - i for i < 15; 15..19 have none
    sid = torch.where(t["topk_indices"] < 15, 19 - t["topk_indices"], torch.full_like(t["topk_indices"], -1))
    own = torch.zeros(20, dtype=torch.bool)
    own[5:] = True  # student ids 5..19 have a teacher counterpart
    target = torch.full((1, 3, 20), -30.0)
    for pos in range(3):  # the student puts the teacher's probabilities on the matched ids, the rest anywhere
        for rank in range(20):
            i = int(t["topk_indices"][0, pos, rank])
            target[0, pos, 19 - i if i < 15 else [0, 1, 2, 3, 4][i - 15]] = teacher[0, pos, i]
    cross = {**t, "topk_student_ids": sid, "student_matched": own}
    batch = {"token_weights": torch.ones(1, 3)}
    assert float(losses.gold({"logits": target}, cross, batch)) < 1e-4
    shuffled = target.clone()
    shuffled[..., 5:] = shuffled[..., 5:].flip(-1)  # matched probabilities on the wrong tokens
    assert float(losses.gold({"logits": shuffled}, cross, batch)) > 0.1


def _cross_recipe(teacher, data, tokenizer, **over):
    base = tiny_recipe_dict(teacher, data, task="causal_lm", name="cross",
                            teacher={"model": str(teacher), "top_k": 16, "batch_size": 16},
                            student={"init": "config", "layers": 2, "tokenizer": str(tokenizer)},
                            distill={"max_steps": 6, "batch_size": 8, "lr": 1e-3, "checkpoint_every": 100,
                                     "losses": [{"name": "ce"}, {"name": "gold"}]},
                            evaluate={"sample_prompts": 2, "sample_new_tokens": 6},
                            export={"artifacts": [{"format": "onnx", "precision": "fp32"}]}, gate={"budgets": []},
                            bench={"runs": 5, "warmup_runs": 1, "threads": 1, "seq_len": 16, "rounds": 1})
    base.update(over)
    return base


def test_a_student_with_its_own_tokenizer_runs_end_to_end(tmp_path, teacher_on_smollm2_tokens, tiny_data,
                                                          student_tokenizer):
    recipe = tmp_path / "cross.yaml"
    recipe.write_text(yaml.safe_dump(_cross_recipe(teacher_on_smollm2_tokens, tiny_data, student_tokenizer)))
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "kd_edge", "run", str(recipe), "--out", str(out), "-q"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    student = _tok(out / "student")
    assert len(student) == len(_tok(student_tokenizer))  # the student kept its own vocabulary
    config = json.loads((out / "student" / "config.json").read_text())
    assert config["vocab_size"] == len(student)
    cache = CacheReader(out)
    assert cache.cross_tokenizer and cache.meta["vocab_size"] == len(student)
    assert cache.ids("train")[0].tolist() == student(json.loads((out / "data" / "train.jsonl").read_text()
                                                                .splitlines()[0])["text"])["input_ids"]
    assert cache.meta["cross_tokenizer"]["splits"]["train"]["aligned"] > 0.4  # (a 300-token vocabulary splits words finer)
    batch = cache.batch(0, "train", np.arange(4))
    assert batch["topk_logprobs"].shape[:2] == batch["aligned"].shape
    metrics = json.loads((out / "eval" / "metrics.json").read_text())["models"]
    for name in ("teacher", "student", "baseline"):
        assert 0 < metrics[name]["bits_per_byte"] < 30, name
    assert metrics["student"]["top1_agreement_with_teacher"] is None  # ids of two vocabularies do not compare
    assert "student_vs_baseline" in metrics["baseline"]
    verify = json.loads((out / "verify" / "student.fp32.onnx.json").read_text())
    assert verify["passed"], verify
    report = (out / "report.md").read_text()
    assert "its own tokenizer" in report and "bits/byte" in report
    assert "bits per byte of held-out text against the teacher's" in report.split("\n\n")[1]  # the headline
    samples = json.loads((out / "eval" / "metrics.json").read_text())["samples"]
    assert len(samples) == 2 and all({"teacher", "student", "baseline"} <= set(s) for s in samples)


def test_what_a_student_with_its_own_tokenizer_refuses(tmp_path, teacher_on_smollm2_tokens, tiny_data,
                                                       student_tokenizer):
    with pytest.raises(ConfigError, match="loss kl pairs teacher and student token ids.*gold"):
        recipe_from_dict(_cross_recipe(teacher_on_smollm2_tokens, tiny_data, student_tokenizer,
                                       distill={"losses": [{"name": "kl"}]}), "test")
    with pytest.raises(ConfigError, match="use init: config"):
        recipe_from_dict(_cross_recipe(teacher_on_smollm2_tokens, tiny_data, student_tokenizer,
                                       student={"layers": 2, "tokenizer": str(student_tokenizer)}), "test")
    bad = _cross_recipe(teacher_on_smollm2_tokens, tiny_data, tmp_path / "no-such-tokenizer")
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(yaml.safe_dump(bad))
    done = subprocess.run([sys.executable, "-m", "kd_edge", "run", str(recipe), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "student.tokenizer" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_a_mismatched_tokenizer_names_the_losses_that_accept_one():
    from kd_edge.distill.students import check_tokenizers

    class Tok:
        def __init__(self, vocab):
            self.vocab = vocab

        def get_vocab(self):
            return self.vocab

    with pytest.raises(ConfigError, match="student.tokenizer.*uld, gold, ce"):
        check_tokenizers(Tok({"a": 0, "b": 1}), [("the teacher", Tok({"a": 0}))])


def test_the_teachers_own_tokenizer_given_as_the_students_trains_the_same_student(tmp_path, teacher_on_smollm2_tokens,
                                                                                   tiny_data):
    """The cross-tokenizer path (two tokenizations, alignment, gathered targets, gold) with the teacher's
    tokenizer as the student's is the one-vocabulary path (kl): the same trained weights."""
    from safetensors.torch import load_file

    from kd_edge.pipeline import run_pipeline
    from kd_edge.preflight import resolve

    def train(out, **student):
        data = _cross_recipe(teacher_on_smollm2_tokens, tiny_data, None,
                             student={"init": "config", "layers": 2, **student},
                             distill={"max_steps": 5, "batch_size": 8, "lr": 1e-3, "checkpoint_every": 100,
                                      "losses": [{"name": "gold" if student else "kl"}, {"name": "ce", "weight": 0.5}]})
        run_pipeline(resolve(recipe_from_dict(data, "test")), out, stop_after="distill", progress=False)
        return load_file(str(out / "student" / "model.safetensors"))

    one = train(tmp_path / "one")
    two = train(tmp_path / "two", tokenizer=str(teacher_on_smollm2_tokens))
    cache = CacheReader(tmp_path / "two")
    assert cache.cross_tokenizer and cache.meta["cross_tokenizer"]["splits"]["train"]["aligned"] == 1.0
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-5), name
    start = load_file(str(tmp_path / "one" / "student_init" / "model.safetensors"))
    assert any(not torch.allclose(start[n], one[n], atol=1e-4) for n in one)  # training moved the weights


def test_kd_edge_tokenizer_trains_a_students_own_vocabulary(tmp_path, tiny_data):
    out = tmp_path / "own"
    done = subprocess.run([sys.executable, "-m", "kd_edge", "tokenizer", str(tiny_data), "--out", str(out),
                           "--vocab-size", "300"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    tok = _tok(out)
    assert len(tok) == 300 and tok.eos_token == "<|endoftext|>" and tok.is_fast
    again = subprocess.run([sys.executable, "-m", "kd_edge", "tokenizer", str(tiny_data), "--out", str(out)],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "already exists" in again.stderr and len(again.stderr.strip().splitlines()) == 1


def test_rows_with_weighted_segments_align_across_segments(smollm2_tokenizer, student_tokenizer):
    teacher, student = _tok(smollm2_tokenizer), _tok(student_tokenizer)
    rows = [{"text": "the plot was weak because the acting is awful",
             "segments": [["the plot was weak", 0.0], [" because the acting", 0.5], [" is awful", 1.0]]}]
    t_ids, t_w, t_ends = encode(teacher, rows, 64)
    s_ids, s_w, s_ends = encode(student, rows, 64)
    where = align(s_ends, t_ends)
    s, t = s_ids[0].tolist(), t_ids[0].tolist()
    pairs = [(k, int(where[k])) for k in range(len(s)) if where[k] >= 0]
    assert len(pairs) >= 5
    for k, j in pairs:
        assert student.decode(s[:k + 1]) == teacher.decode(t[:j + 1])
    # each side's weights follow its own tokens: the last segment's tokens weigh 1 on both
    assert sorted(set(np.asarray(s_w[0]).tolist())) == sorted(set(np.asarray(t_w[0]).tolist())) == [0.0, 0.5, 1.0]
