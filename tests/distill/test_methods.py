"""Each distillation method on tiny real models, with a test that fails if the method does nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kd_edge.config import recipe_from_dict
from kd_edge.distill.objective import Objective
from kd_edge.errors import ArtifactError, ConfigError
from kd_edge.pipeline import run_pipeline
from kd_edge.preflight import resolve
from kd_edge.runfiles import CacheReader, read_jsonl, student_meta
from kd_edge.tasks import TASKS
from tests.conftest import sentences, tiny_recipe_dict, write_tiny_classifier


def run(data: dict, out, stop_after=None):
    recipe = resolve(recipe_from_dict(data, "test"))
    run_pipeline(recipe, out, stop_after=stop_after, progress=False)
    return recipe


def classifier_recipe(teacher_dir, data_path, **over):
    base = tiny_recipe_dict(teacher_dir, data_path, task="sequence_classification",
                            distill={"max_steps": 6, "batch_size": 8, "lr": 5e-4, "checkpoint_every": 100,
                                     "losses": [{"name": "kl", "temperature": 2.0}, {"name": "ce", "weight": 0.5}]},
                            export={"artifacts": []}, gate={"budgets": []})
    base.update(over)
    return base


def objective_for(recipe, out):
    task = TASKS.get(recipe.task)()
    model = task.load_model(out / "student_init")
    return Objective(recipe, task, model, student_meta(out / "student_init"), CacheReader(out))


def test_classification_pipeline_with_a_prepared_teacher(tmp_path, tiny_teacher, tiny_data):
    # the labels are class names, as users' data often has them: mapped to ids (sorted), names kept
    named = tmp_path / "named.jsonl"
    named.write_text("".join(json.dumps({**r, "label": ["negative", "positive"][r["label"]]}) + "\n"
                             for r in map(json.loads, tiny_data.read_text().splitlines())))
    data = classifier_recipe(tiny_teacher, named,
                             teacher={"model": str(tiny_teacher), "prepare_head": {"epochs": 1, "train_encoder": True}},
                             export={"artifacts": [{"format": "onnx", "precision": "fp32"},
                                                   {"format": "onnx", "precision": "int8"}]},
                             bench={"runs": 5, "warmup_runs": 1, "threads": 1, "seq_len": 32, "rounds": 1})
    data["distill"]["losses"].append({"name": "hidden_mse", "layer_map": "uniform"})
    run(data, tmp_path / "run")
    prepared = tmp_path / "run" / "teacher"
    assert json.loads((prepared / "config.json").read_text())["architectures"] == ["BertForSequenceClassification"]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert report["quality_metric"] == "accuracy"
    for name in ("teacher", "student", "student.fp32.onnx", "student.int8.onnx"):
        assert 0 <= rows[name]["accuracy"] <= 1 and rows[name]["latency_p50_ms"] > 0
    assert rows["student.fp32.onnx"]["max_abs_diff"] <= 1e-4 and rows["student.fp32.onnx"]["agreement_with_student"] == 1.0
    assert rows["student"]["agreement_with_teacher"] > 0.0 and "ece" in rows["student"]
    assert report["data"]["label_names"] == ["negative", "positive"]
    assert [(c["class"], c["name"]) for c in report["per_class"]] == [(0, "negative"), (1, "positive")]
    md = (tmp_path / "run" / "report.md").read_text()
    assert "| negative (0) |" in md and "| positive (1) |" in md


def test_causal_lm_pipeline_caches_top_k_and_reports_perplexity(tmp_path, tiny_llama, tiny_data):
    data = tiny_recipe_dict(tiny_llama, tiny_data, task="causal_lm",
                            teacher={"model": str(tiny_llama), "top_k": 8, "batch_size": 16},
                            student={"layers": 2},
                            distill={"max_steps": 6, "batch_size": 8, "lr": 1e-3, "checkpoint_every": 100,
                                     "losses": [{"name": "kl", "temperature": 2.0}, {"name": "ce", "weight": 0.5},
                                                {"name": "hidden_cosine", "layer_map": "last"}]},
                            export={"artifacts": []}, gate={"budgets": []},
                            bench={"runs": 5, "warmup_runs": 1, "threads": 1, "seq_len": 16, "rounds": 1})
    run(data, tmp_path / "run")
    cache = CacheReader(tmp_path / "run")
    assert cache.field(0, "train", "topk_logprobs").shape[1] == 8
    assert set(cache.meta["teachers"][0]["fields"]) >= {"topk_logprobs", "topk_indices", "lse_t1", "lse_t2", "target_logprob"}
    # the lean layout: 8 log-probs fp16 + 8 ids uint16 + two log-normalisers fp32 (the target's log-prob: test only)
    assert cache.field(0, "train", "topk_logprobs").dtype == np.float16
    assert cache.field(0, "train", "topk_indices").dtype == np.uint16
    assert cache.meta["teachers"][0]["bytes_per_token"]["targets"] == 8 * 2 + 8 * 2 + 2 * 4
    assert cache.has_field(0, "test", "target_logprob") and not cache.has_field(0, "train", "target_logprob")
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())["models"]
    assert metrics["teacher"]["perplexity"] > 1 and metrics["student"]["perplexity"] > 1
    assert 0 <= metrics["student"]["top1_agreement_with_teacher"] <= 1
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [r["name"] for r in report["rows"]] == ["teacher", "student", "baseline"]
    # the baseline: the same student, data, steps and seed, without the teacher (next-token loss only)
    assert json.loads((tmp_path / "run" / "baseline_train" / "summary.json").read_text())["steps"] == 6
    assert metrics["baseline"]["perplexity"] != metrics["student"]["perplexity"]
    assert "Without the teacher (the same student, data, steps and seed" in (tmp_path / "run" / "report.md").read_text()
    paired = metrics["baseline"]["student_vs_baseline"]  # with its noise: a paired bootstrap over the held-out texts
    assert paired["perplexity_ratio"] == pytest.approx(metrics["student"]["perplexity"] / metrics["baseline"]["perplexity"])
    assert paired["ci95"][0] <= paired["perplexity_ratio"] <= paired["ci95"][1] and paired["se"] > 0
    assert "paired bootstrap over" in (tmp_path / "run" / "report.md").read_text()
    # the teacher, the student and the baseline continue the same held-out prompts greedily; the report shows them
    samples = report["samples"]["prompts"]
    assert len(samples) == 5 and all(s["prompt"] and {"teacher", "student", "baseline"} <= set(s) for s in samples)
    for name in ("teacher", "student", "baseline"):
        assert metrics[name]["sample_prompts"] == 5 and 0 <= metrics[name]["repeated_4grams"] <= 1
        assert 0 < metrics[name]["distinct_2"] <= 1 and 0 <= metrics[name]["looping_prompts"] <= 5
    md = (tmp_path / "run" / "report.md").read_text()
    assert "## Sample generations" in md and "Teacher cache: top-8 log-probs (fp16) and ids, 40 bytes per token" in md


def test_the_lean_cache_gives_the_losses_the_teachers_logits_back(tiny_llama):
    from transformers import AutoModelForCausalLM

    from kd_edge.distill.losses import kl
    from kd_edge.tasks.kinds import CacheSpec

    task = TASKS.get("causal_lm")()
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.roll(ids, -1, 1)}
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    fields = task.cache_outputs({"logits": logits}, batch, CacheSpec(top_k=8, temperatures=(2.0,)))
    stored = {k: torch.from_numpy(t.numpy()) for k, (_, t) in fields.items()}  # as the .npy files hold them
    assert stored["topk_logprobs"].dtype == torch.float16 and stored["topk_indices"].dtype == torch.uint16
    back = task.teacher_targets(stored)
    top, idx = logits.topk(8, -1)
    assert torch.equal(back["topk_indices"], idx) and back["topk_indices"].dtype == torch.int64
    assert (back["topk_logits"] - top).abs().max() < 0.01  # fp16 log-probs, back to logits through lse_t1
    exact = {"topk_logits": top, "topk_indices": idx, "lse": back["lse"]}
    student = {"logits": torch.randn_like(logits)}
    w = {"token_weights": torch.ones(2, 12)}
    assert float(kl(student, back, w, temperature=2.0)) == pytest.approx(float(kl(student, exact, w, temperature=2.0)),
                                                                       rel=1e-3)


def test_a_curve_kept_cache_gives_the_losses_nearly_the_teachers_logits_back(tiny_llama):
    from transformers import AutoModelForCausalLM

    from kd_edge.distill.losses import kl
    from kd_edge.tasks.kinds import CURVE_DEGREE, CURVE_EXACT, CacheSpec

    task = TASKS.get("causal_lm")()
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.roll(ids, -1, 1)}
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float() * 4  # peaked, as a trained LM's are
    fields = task.cache_outputs({"logits": logits}, batch, CacheSpec(top_k=32, values="curve", target=False))
    assert set(fields) == {"topk_indices", "topk_head", "topk_curve", "lse_t1"}  # no fp16 value per rank
    stored = {k: torch.from_numpy(t.numpy()) for k, (_, t) in fields.items()}
    assert stored["topk_head"].shape[-1] == CURVE_EXACT and stored["topk_curve"].shape[-1] == CURVE_DEGREE + 1
    assert stored["topk_curve"].dtype == torch.float16
    back = task.teacher_targets(stored)
    top, idx = logits.topk(32, -1)
    assert torch.equal(back["topk_indices"], idx)
    assert (back["topk_logits"][..., :CURVE_EXACT] - top[..., :CURVE_EXACT]).abs().max() < 0.01  # kept as they are
    err = (back["topk_logits"] - top).abs()
    assert 0 < err.mean() < 0.1  # the rest: a fitted curve, not the values
    exact = {"topk_logits": top, "topk_indices": idx, "lse": back["lse"]}
    student = {"logits": torch.randn_like(logits)}
    w = {"token_weights": torch.ones(2, 12)}
    assert float(kl(student, back, w)) == pytest.approx(float(kl(student, exact, w)), rel=2e-2)


def test_a_curve_kept_cache_refuses_what_it_cannot_keep(tiny_llama, tiny_data):
    data = tiny_recipe_dict(tiny_llama, tiny_data, task="causal_lm",
                            teacher={"model": str(tiny_llama), "top_k": 8, "cache_values": "curve"},
                            distill={"losses": [{"name": "kl"}]})
    with pytest.raises(ConfigError, match="needs teacher.top_k >= 18"):
        recipe_from_dict(data, "test")
    data["teacher"].update(top_k=32, server={"url": "http://127.0.0.1:1/v1", "model": "m"})
    with pytest.raises(ConfigError, match="a served teacher's log-probabilities are kept as it sent them"):
        recipe_from_dict(data, "test")


def test_on_policy_steps_train_on_the_students_own_samples_scored_by_the_live_teacher(tmp_path, tiny_llama, tiny_data):
    from transformers import AutoModelForCausalLM

    from kd_edge.data.packed import Packed
    from kd_edge.distill.config import OnPolicyConfig
    from kd_edge.distill.on_policy import prompts_of, student_continuations

    student = AutoModelForCausalLM.from_pretrained(tiny_llama).train()
    texts = Packed.from_lists([list(range(5, 25)), list(range(30, 33)), list(range(40, 60))])
    prompts = prompts_of(texts, np.arange(3), 8)
    assert [p.tolist() for p in prompts] == [list(range(5, 13)), [30, 31], list(range(40, 48))]  # one left to predict
    torch.manual_seed(0)
    seqs, weights = student_continuations(student, prompts, OnPolicyConfig(max_new_tokens=6), pad_id=0, eos_id=None)
    assert student.training  # generation ran in eval mode and put it back
    for i, p in enumerate(prompts):
        assert seqs[i][:len(p)].tolist() == p.tolist() and len(seqs[i]) == len(p) + 6  # the prompt, then 6 sampled
        assert weights[i].tolist() == [0.0] * len(p) + [1.0] * 6  # the loss reads only what the student wrote
    # a run: every step on-policy, GKD's generalised JSD against the live teacher
    data = tiny_recipe_dict(tiny_llama, tiny_data, task="causal_lm", teacher={"model": str(tiny_llama), "top_k": 8},
                            student={"layers": 1},
                            distill={"mode": "live", "max_steps": 3, "batch_size": 4, "lr": 1e-3, "log_every": 1,
                                     "checkpoint_every": 100, "baseline": False,
                                     "on_policy": {"share": 1.0, "max_new_tokens": 8},
                                     "losses": [{"name": "jsd", "beta": 0.5}]},
                            evaluate={"sample_prompts": 0}, export={"artifacts": []}, gate={"budgets": []})
    run(data, tmp_path / "run", stop_after="distill")
    logged = [json.loads(line) for line in (tmp_path / "run" / "train" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "on_policy" in r]
    assert steps and all(r["on_policy"] == 1.0 and r["loss_jsd"] > 0 for r in steps)


def test_on_policy_needs_a_live_teacher(tiny_llama, tiny_data):
    data = tiny_recipe_dict(tiny_llama, tiny_data, task="causal_lm", distill={"on_policy": {"share": 0.5}})
    with pytest.raises(ConfigError, match="on_policy needs the teacher to score the student's own samples as they "
                                          "are made: set distill.mode: live"):
        recipe_from_dict(data, "test")


def test_second_teacher_changes_the_loss(tmp_path, tiny_classifier, tiny_data):
    other = write_tiny_classifier(tmp_path / "other", seed=5)
    idx = torch.arange(8)

    def loss(ensemble_model, combine):
        data = classifier_recipe(tiny_classifier, tiny_data, ensemble={"teachers": [{"model": str(ensemble_model)}],
                                                                     "combine": combine})
        out = tmp_path / f"{ensemble_model.name}-{combine}"
        recipe = run(data, out, stop_after="student")
        torch.manual_seed(0)
        return float(objective_for(recipe, out).eval()(idx)[0].detach())

    single = classifier_recipe(tiny_classifier, tiny_data)
    recipe = run(single, tmp_path / "single", stop_after="student")
    torch.manual_seed(0)
    alone = float(objective_for(recipe, tmp_path / "single").eval()(idx)[0].detach())
    for combine in ("per_teacher", "average"):
        assert abs(loss(other, combine) - alone) > 0.01
        # a second teacher identical to the first changes nothing: the difference comes from its outputs
        assert loss(tiny_classifier, combine) == pytest.approx(alone, rel=1e-5)


def test_mutual_learning_trains_the_teacher_too(tmp_path, tiny_classifier, tiny_data):
    data = classifier_recipe(tiny_classifier, tiny_data)
    data["distill"].update({"mode": "mutual", "teacher_lr": 1e-3})
    run(data, tmp_path / "run", stop_after="distill")
    before = load_file(str(tiny_classifier / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "train" / "teacher" / "model.safetensors"))
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and any("classifier" in k for k in changed)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert all("loss_teacher" in m for m in metrics if "loss" in m)


def test_augmentation_adds_teacher_labelled_examples(tmp_path, tiny_teacher, tiny_data):
    data = tiny_recipe_dict(tiny_teacher, tiny_data)
    data["distill"]["augment"] = {"copies": 2, "mask_prob": 0.2, "replace_prob": 0.1, "delete_span_prob": 0.5}
    run(data, tmp_path / "run", stop_after="teacher")
    made = read_jsonl(tmp_path / "run" / "generated" / "train.jsonl")
    original = read_jsonl(tmp_path / "run" / "data" / "train.jsonl")
    assert len(made) > len(original)  # two copies each, minus duplicates
    assert all(r["provenance"]["method"] == "augment" and r["label"] is None for r in made)
    assert len({r["text"] for r in made}) == len(made) and not {r["text"] for r in made} & {r["text"] for r in original}
    meta = json.loads((tmp_path / "run" / "generated" / "meta.json").read_text())
    assert meta["method"] == "augment" and meta["seed"] == 0 and meta["settings"]["copies"] == 2
    cache = CacheReader(tmp_path / "run")
    n = len(original) + len(made)
    pooled = np.asarray(cache.field(0, "train", "pooled"))
    assert len(cache.ids("train")) == n and pooled.shape[0] == n
    assert np.allclose(np.linalg.norm(pooled[len(original):], axis=1), 1.0, atol=1e-4)  # real teacher outputs
    assert (cache.labels("train")[len(original):] == -1).all()


def test_rationale_tokens_are_weighted_as_asked(tmp_path, tiny_llama):
    rows = [{"prompt": f"is the movie {w} ?", "rationale": f"the word {w} is {'good' if i % 2 else 'bad'}",
             "answer": "yes" if i % 2 else "no"} for i, w in enumerate(["great", "awful", "fun", "dull"] * 5)]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = tiny_recipe_dict(tiny_llama, path, task="causal_lm", teacher={"model": str(tiny_llama), "top_k": 4},
                            data={"source": str(path), "label_field": None, "test_size": 4, "max_length": 64},
                            distill={"max_steps": 2, "batch_size": 4, "checkpoint_every": 100,
                                     "rationale": {"rationale_weight": 0.25, "answer_weight": 2.0},
                                     "losses": [{"name": "ce"}]},
                            export={"artifacts": []}, gate={"budgets": []})
    recipe = run(data, tmp_path / "run", stop_after="student")
    cache = CacheReader(tmp_path / "run")
    task = TASKS.get("causal_lm")()
    tok = task.load_tokenizer(tmp_path / "run" / "student_init")
    weights, ids = cache.weights("train"), cache.ids("train")
    train_rows = read_jsonl(tmp_path / "run" / "data" / "train.jsonl")
    for i, row in enumerate(train_rows):
        (prompt, wp), (rationale, wr), (answer, wa) = row["segments"]
        n_p, n_r, n_a = (len(tok(t, add_special_tokens=False)["input_ids"]) for t in (prompt, rationale, answer))
        w = np.asarray(weights[i])
        expected = np.concatenate([np.zeros(len(w) - n_p - n_r - n_a), np.zeros(n_p), np.full(n_r, 0.25), np.full(n_a, 2.0)])
        np.testing.assert_allclose(w, expected)
        assert len(ids[i]) == len(w)
    # the loss follows the weights: the CE of the objective equals the weighted CE computed by hand
    objective = objective_for(recipe, tmp_path / "run").eval()
    idx = np.arange(4)
    batch = task.make_batch(ids, idx, cache.meta["pad_id"], weights=weights)
    with torch.no_grad():
        logits = objective.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["labels"].clamp(min=0), reduction="none")
        w = batch["token_weights"]
        expected = float((nll * w).sum() / w.sum())
        assert float(objective(torch.from_numpy(idx))[0]) == pytest.approx(expected, rel=1e-5)


def test_sequence_level_generation_is_stored_with_provenance(tmp_path, tiny_llama, tiny_data):
    data = tiny_recipe_dict(tiny_llama, tiny_data, task="causal_lm", teacher={"model": str(tiny_llama), "top_k": 4},
                            data={"source": str(tiny_data), "max_samples": 24, "test_size": 4, "max_length": 48},
                            distill={"max_steps": 2, "batch_size": 4, "checkpoint_every": 100, "losses": [{"name": "ce"}],
                                     "generate": {"prompt_tokens": 3, "max_new_tokens": 6, "keep_original": False}},
                            export={"artifacts": []}, gate={"budgets": []})
    run(data, tmp_path / "run", stop_after="teacher")
    made = read_jsonl(tmp_path / "run" / "generated" / "train.jsonl")
    meta = json.loads((tmp_path / "run" / "generated" / "meta.json").read_text())
    assert made and meta["method"] == "sequence_level" and meta["n_generated"] == len(made)
    assert meta["prompts"] == meta["n_generated"] + meta["duplicates_dropped"]
    assert all(r["segments"][0][1] == 0.0 and r["segments"][1][1] == 1.0 for r in made)
    cache = CacheReader(tmp_path / "run")
    assert len(cache.ids("train")) == len(made)  # keep_original: false trains on the teacher's text only


def _cache_folders(shared):
    """The keys' folders in a shared cache (each key also has a hidden lock file beside its folder)."""
    return [p for p in shared.iterdir() if not p.name.startswith(".")]


def test_shared_cache_is_reused_only_for_the_same_inputs(tmp_path, tiny_teacher, tiny_data):
    shared = tmp_path / "shared"
    data = tiny_recipe_dict(tiny_teacher, tiny_data)
    data["teacher"]["cache_dir"] = str(shared)
    run(data, tmp_path / "a", stop_after="teacher")
    run(data, tmp_path / "b", stop_after="teacher")
    meta_a = json.loads((tmp_path / "a" / "teacher_cache" / "meta.json").read_text())
    meta_b = json.loads((tmp_path / "b" / "teacher_cache" / "meta.json").read_text())
    assert meta_a["reused"] is False and meta_b["reused"] is True and meta_a["shared"] == meta_b["shared"]
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in sentences(40, seed=3)))
    data["data"]["source"] = str(other)
    run(data, tmp_path / "c", stop_after="teacher")
    meta_c = json.loads((tmp_path / "c" / "teacher_cache" / "meta.json").read_text())
    assert meta_c["reused"] is False and meta_c["shared"] != meta_a["shared"] and len(_cache_folders(shared)) == 2


def test_student_with_another_vocabulary_is_refused(tmp_path, tiny_teacher, tiny_data):
    from transformers import BertModel, BertTokenizerFast

    odd = tmp_path / "odd"
    odd.mkdir()
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "zebra", "apple"])})
    tok.save_pretrained(str(odd))
    from transformers import BertConfig

    BertModel(BertConfig(vocab_size=7, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(str(odd))
    data = tiny_recipe_dict(tiny_teacher, tiny_data, student={"init": "pretrained", "model": str(odd)})
    with pytest.raises(ConfigError, match="the student's tokenizer has 7 tokens, the teacher .* has"):
        run(data, tmp_path / "run", stop_after="student")


def test_student_from_config_is_shrunk_from_the_teacher_and_distills_through_projections(tmp_path, tiny_classifier, tiny_data):
    data = classifier_recipe(tiny_classifier, tiny_data,
                             student={"init": "config", "layers": 2, "hidden_size": 16, "num_attention_heads": 2,
                                      "intermediate_size": 32})
    data["distill"]["losses"].append({"name": "hidden_mse", "layer_map": "uniform"})
    run(data, tmp_path / "run", stop_after="distill")
    init = load_file(str(tmp_path / "run" / "student_init" / "model.safetensors"))
    teacher = load_file(str(tiny_classifier / "model.safetensors"))
    assert init["bert.embeddings.word_embeddings.weight"].shape[1] == 16
    torch.testing.assert_close(init["bert.embeddings.word_embeddings.weight"],
                               teacher["bert.embeddings.word_embeddings.weight"][:, :16])
    # student layer 1 is cut from teacher layer 3 (the last of two evenly spaced layers)
    torch.testing.assert_close(init["bert.encoder.layer.1.output.dense.weight"],
                               teacher["bert.encoder.layer.3.output.dense.weight"][:16, :32])
    metrics = [json.loads(line) for line in (tmp_path / "run" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["loss_hidden_mse"] > 0
    with pytest.raises(ConfigError, match="must keep the teacher's width"):
        run(tiny_recipe_dict(tiny_classifier, tiny_data, student={"init": "config", "layers": 2, "hidden_size": 16}),
            tmp_path / "embedding")
    student = load_file(str(tmp_path / "run" / "student" / "model.safetensors"))
    assert not any("projections" in k for k in student)  # projections train with the student but are not exported


def test_attention_losses_need_live_mode_and_train_in_it(tmp_path, tiny_teacher, tiny_data):
    data = tiny_recipe_dict(tiny_teacher, tiny_data)
    data["distill"]["losses"] = [{"name": "embedding_cosine"}, {"name": "attention_kl", "layer_map": "uniform"}]
    with pytest.raises(ConfigError, match="set distill.mode: live"):
        run(data, tmp_path / "offline", stop_after="teacher")
    data["distill"]["mode"] = "live"
    run(data, tmp_path / "live", stop_after="distill")
    metrics = [json.loads(line) for line in (tmp_path / "live" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert all(m["loss_attention_kl"] > 0 for m in metrics if "loss" in m)


def test_early_stopping_on_the_dev_split_keeps_the_best_student(tmp_path, tiny_classifier, tiny_data):
    data = classifier_recipe(tiny_classifier, tiny_data)
    data["distill"].update({"max_steps": 12, "eval_every": 2, "early_stopping_patience": 2, "dev_size": 0.2})
    run(data, tmp_path / "run", stop_after="distill")
    summary = json.loads((tmp_path / "run" / "train" / "summary.json").read_text())
    metrics = [json.loads(line) for line in (tmp_path / "run" / "train" / "metrics.jsonl").read_text().splitlines()]
    devs = [m for m in metrics if "dev_accuracy" in m]
    assert devs and summary["kept"] == "best"
    assert summary["best_dev_metric"] == max(m["dev_accuracy"] for m in devs)


def test_teacher_without_answers_gives_a_clear_error(tmp_path, tiny_llama):
    rows = [{"prompt": f"question {i}"} for i in range(12)]
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = tiny_recipe_dict(tiny_llama, path, task="causal_lm", teacher={"model": str(tiny_llama)},
                            data={"source": str(path), "label_field": None, "test_size": 2},
                            distill={"max_steps": 2, "batch_size": 4, "losses": [{"name": "ce"}],
                                     "rationale": {"source": "teacher", "max_new_tokens": 4}},
                            export={"artifacts": []}, gate={"budgets": []})
    with pytest.raises(ArtifactError, match="no training rows"):
        run(data, tmp_path / "run", stop_after="teacher")
