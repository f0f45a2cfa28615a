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
