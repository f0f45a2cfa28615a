import math

import pytest
import torch

from kd_edge.distill import LOSSES


def _outs(seed=0, b=3, t=5, h=8):
    g = torch.Generator().manual_seed(seed)
    pooled = torch.nn.functional.normalize(torch.randn(b, h, generator=g), dim=-1)
    hidden = {1: torch.randn(b, t, h, generator=g), 2: torch.randn(b, t, h, generator=g)}
    return {"pooled": pooled, "hidden": hidden}


def _batch(b=3, t=5):
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, 3:] = 0
    return {"attention_mask": mask}


def test_embedding_cosine_zero_for_identical_and_two_for_opposite():
    s = _outs()
    fn = LOSSES.get("embedding_cosine")
    assert fn(s, s, _batch()).item() == pytest.approx(0.0, abs=1e-6)
    neg = {"pooled": -s["pooled"]}
    assert fn(s, neg, _batch()).item() == pytest.approx(2.0, abs=1e-6)


def test_embedding_mse_matches_formula():
    s, t = _outs(0), _outs(1)
    assert LOSSES.get("embedding_mse")(s, t, _batch()).item() == pytest.approx(((s["pooled"] - t["pooled"]) ** 2).mean().item())


def test_hidden_mse_ignores_padding_and_averages_pairs():
    s, t = _outs(0), _outs(1)
    batch = _batch()
    fn = LOSSES.get("hidden_mse")
    value = fn(s, t, batch, layer_map=[(1, 2)])
    mask = batch["attention_mask"].bool()
    expected = ((s["hidden"][1] - t["hidden"][2]) ** 2)[mask].mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    # changing a padded position does not change the loss
    t["hidden"][2][0, 4] += 100
    assert fn(s, t, batch, layer_map=[(1, 2)]).item() == pytest.approx(value.item(), rel=1e-5)
    two = fn(s, t, batch, layer_map=[(1, 2), (2, 1)])
    one_b = fn(s, t, batch, layer_map=[(2, 1)])
    assert two.item() == pytest.approx((value.item() + one_b.item()) / 2, rel=1e-5)


def test_hidden_cosine_zero_for_identical():
    s = _outs()
    assert LOSSES.get("hidden_cosine")(s, s, _batch(), layer_map=[(1, 1)]).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", ["embedding_cosine", "embedding_mse", "hidden_mse", "hidden_cosine"])
def test_gradients_are_finite(name):
    s, t = _outs(0), _outs(1)
    s["pooled"].requires_grad_(True)
    s["hidden"][1].requires_grad_(True)
    loss = LOSSES.get(name)(s, t, _batch(), layer_map=[(1, 2)])
    loss.backward()
    grads = [g for g in (s["pooled"].grad, s["hidden"][1].grad) if g is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


# -- logit losses ---------------------------------------------------------------------------------------------
def _lm(seed=0, b=2, t=4, v=11):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, v, generator=g) * 2


def _sparse(teacher_logits, k, temperatures=(1.0, 2.0)):
    values, indices = teacher_logits.topk(k, dim=-1)
    return {"topk_logits": values, "topk_indices": indices,
            "lse": {t: torch.logsumexp(teacher_logits / t, -1) for t in temperatures}}


def _lm_batch(b=2, t=4):
    w = torch.ones(b, t)
    w[:, -1] = 0
    w[1, 2:] = 0
    return {"token_weights": w, "labels": torch.randint(0, 11, (b, t)), "attention_mask": torch.ones(b, t)}


@pytest.mark.parametrize("name", ["kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sparse_top_k_equals_dense_when_k_is_the_vocabulary(name, temperature):
    s, t = _lm(0), _lm(1)
    fn, batch = LOSSES.get(name), _lm_batch()
    dense = fn({"logits": s}, {"logits": t}, batch, temperature=temperature)
    sparse = fn({"logits": s}, _sparse(t, k=11), batch, temperature=temperature)
    assert sparse.item() == pytest.approx(dense.item(), rel=1e-4, abs=1e-6)
    # with fewer kept logits the sparse loss is an approximation, not the dense value
    partial = fn({"logits": s}, _sparse(t, k=3), batch, temperature=temperature)
    assert partial.item() != pytest.approx(dense.item(), rel=1e-3)


def test_kl_is_scaled_by_temperature_squared():
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    T = 3.0
    p, q = torch.softmax(t / T, -1), torch.log_softmax(s / T, -1)
    plain = (p * (torch.log(p) - q)).sum(-1).mean()
    assert LOSSES.get("kl")({"logits": s}, {"logits": t}, {}, temperature=T).item() == pytest.approx(T * T * plain.item(), rel=1e-5)


def test_kl_is_zero_for_identical_and_positive_otherwise():
    s = torch.randn(6, 5)
    fn = LOSSES.get("kl")
    assert fn({"logits": s}, {"logits": s.clone()}, {}).item() == pytest.approx(0.0, abs=1e-6)
    assert fn({"logits": s}, {"logits": torch.randn(6, 5)}, {}).item() > 0


def test_jsd_is_symmetric_at_half_and_bounded():
    a, b = torch.randn(8, 6) * 3, torch.randn(8, 6) * 3
    fn = LOSSES.get("jsd")
    ab = fn({"logits": a}, {"logits": b}, {}, beta=0.5)
    ba = fn({"logits": b}, {"logits": a}, {}, beta=0.5)
    assert ab.item() == pytest.approx(ba.item(), rel=1e-5) and 0 < ab.item() <= math.log(2) + 1e-6


def test_language_model_losses_use_token_weights():
    s, t = _lm(0), _lm(1)
    batch = _lm_batch()
    full = LOSSES.get("kl")({"logits": s}, {"logits": t}, batch)
    changed = t.clone()
    changed[1, 3] += 50  # a position with weight 0
    assert LOSSES.get("kl")({"logits": s}, {"logits": changed}, batch).item() == pytest.approx(full.item(), rel=1e-6)


def test_ce_for_classes_ignores_missing_labels_and_for_tokens_follows_weights():
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, -1, 2, 1])
    expected = torch.nn.functional.cross_entropy(logits[[0, 2, 3]], labels[[0, 2, 3]])
    assert LOSSES.get("ce")({"logits": logits}, {}, {"labels": labels}).item() == pytest.approx(expected.item(), rel=1e-6)
    s, batch = _lm(0), _lm_batch()
    w = batch["token_weights"]
    nll = torch.nn.functional.cross_entropy(s.transpose(1, 2), batch["labels"], reduction="none")
    assert LOSSES.get("ce")({"logits": s}, {}, batch).item() == pytest.approx(((nll * w).sum() / w.sum()).item(), rel=1e-5)


def test_logit_mse_dense_and_sparse():
    s, t = torch.randn(3, 5), torch.randn(3, 5)
    assert LOSSES.get("logit_mse")({"logits": s}, {"logits": t}, {}).item() == pytest.approx(((s - t) ** 2).mean().item(), rel=1e-6)
    s3, t3 = _lm(0), _lm(1)
    dense = LOSSES.get("logit_mse")({"logits": s3}, {"logits": t3}, _lm_batch())
    assert LOSSES.get("logit_mse")({"logits": s3}, _sparse(t3, 11), _lm_batch()).item() == pytest.approx(dense.item(), rel=1e-5)


# -- intermediate layers ------------------------------------------------------------------------------------
def test_hidden_loss_applies_the_projection():
    s, t = _outs(0), _outs(1, h=12)
    proj = torch.nn.Linear(8, 12)
    value = LOSSES.get("hidden_mse")(s, t, _batch(), layer_map=[(1, 1)], project=lambda a, b, h: proj(h))
    value.backward()
    assert proj.weight.grad is not None and torch.isfinite(proj.weight.grad).all()


def _attn(seed, heads=2, b=3, t=5):
    g = torch.Generator().manual_seed(seed)
    return {"attentions": {1: torch.softmax(torch.randn(b, heads, t, t, generator=g), -1)}}


def test_attention_losses_zero_for_identical_and_heads_averaged_when_counts_differ():
    a = _attn(0)
    for name in ("attention_kl", "attention_mse"):
        assert LOSSES.get(name)(a, a, _batch(), layer_map=[(1, 1)]).item() == pytest.approx(0.0, abs=1e-6)
    four = _attn(1, heads=4)
    with pytest.raises(ValueError, match="attention heads differ"):
        LOSSES.get("attention_kl")(a, four, _batch(), layer_map=[(1, 1)], heads="match")
    assert LOSSES.get("attention_kl")(a, four, _batch(), layer_map=[(1, 1)], heads="mean").item() > 0


def test_cosine_margin_is_cosine_embedding_loss_with_the_teachers_other_texts_as_negatives():
    s, t = _outs(0, b=4), _outs(1, b=4)
    fn = LOSSES.get("cosine_margin")
    b = s["pooled"].shape[0]
    # torch's CosineEmbeddingLoss over every (student b, teacher c) pair: y = 1 on the diagonal, -1 off it
    a = s["pooled"].repeat_interleave(b, 0)
    c = t["pooled"].repeat(b, 1)
    y = torch.where(torch.eye(b, dtype=torch.bool).flatten(), 1, -1)
    per = torch.nn.functional.cosine_embedding_loss(a, c, y, margin=0.3, reduction="none")
    expected = per[y == 1].mean() + per[y == -1].mean()
    assert fn(s, t, {}, margin=0.3).item() == pytest.approx(expected.item(), rel=1e-5)
    # negatives below the margin push nothing: with margin 1 only the positive term is left
    assert fn(s, t, {}, margin=1.0).item() == pytest.approx(LOSSES.get("embedding_cosine")(s, t, {}).item(), rel=1e-5)
    assert fn(s, t, {}, margin=-1.0).item() > fn(s, t, {}, margin=0.0).item()


def test_cosine_margin_declares_its_margin_and_a_recipe_is_checked_against_it():
    from kd_edge.config import recipe_from_dict
    from kd_edge.errors import ConfigError

    base = {"name": "r", "teacher": {"model": "t"}}
    recipe = recipe_from_dict({**base, "distill": {"losses": [{"name": "cosine_margin", "margin": 0.1}]}}, "r")
    assert recipe.distill.losses[0].params == {"margin": 0.1}
    assert recipe_from_dict({**base, "distill": {"losses": [{"name": "cosine_margin"}]}}, "r").distill.losses[0].params \
        == {"margin": 0.2}
    with pytest.raises(ConfigError, match=r"loss cosine_margin: margin: Input should be less than or equal to 1"):
        recipe_from_dict({**base, "distill": {"losses": [{"name": "cosine_margin", "margin": 3}]}}, "r")
    with pytest.raises(ConfigError, match=r"loss kl has no parameter 'margin'"):
        recipe_from_dict({**base, "distill": {"losses": [{"name": "kl", "margin": 0.1}]}}, "r")
