import numpy as np
import torch
from transformers import AutoModel

from kd_edge.distill.callbacks import MetricsFileCallback, TrainerCallback
from kd_edge.distill.config import DistillConfig
from kd_edge.distill.trainer import Trainer


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, state, control, logs):
        if state.step >= self.step:
            control.should_stop = True


class Regress(torch.nn.Module):
    """A small objective: pull each example's mean hidden state towards a fixed target."""

    def __init__(self, model, target):
        super().__init__()
        self.model, self.target = model, target

    def forward(self, idx):
        ids = torch.tensor([[2, 5 + int(i) % 20, 9, 3] for i in idx])
        out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state.mean(1)
        loss = ((out - self.target[idx]) ** 2).mean()
        return loss, {"loss_mse": float(loss.detach())}


def _trainer(teacher_dir, tmp_path, callbacks, key="k1", **cfg_over):
    torch.manual_seed(0)
    model = AutoModel.from_pretrained(str(teacher_dir))  # dropout active in train(): the RNG state matters
    target = torch.randn(40, model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    cfg = DistillConfig(**{"max_steps": 6, "batch_size": 8, "lr": 1e-3, "checkpoint_every": 3, "log_every": 1,
                           "cpu": True, **cfg_over})
    return Trainer(Regress(model, target), np.arange(40), cfg, seed=0, checkpoint_dir=tmp_path / "ckpt", key=key,
                   callbacks=callbacks)


def test_stopped_run_resumes_exactly(tiny_teacher, tmp_path):
    straight = _trainer(tiny_teacher, tmp_path / "a", [])
    straight.train()
    expected = {k: v.clone() for k, v in straight.unwrapped_model().model.state_dict().items()}

    metrics = tmp_path / "b" / "metrics.jsonl"
    first = _trainer(tiny_teacher, tmp_path / "b", [StopAt(3), MetricsFileCallback(metrics)])
    assert first.train().step == 3
    # a fresh process would start here: new model object, new optimizer, same checkpoint folder
    torch.manual_seed(1234)
    second = _trainer(tiny_teacher, tmp_path / "b", [MetricsFileCallback(metrics)])
    state = second.train()
    assert state.step == 6 and state.resumed_from == 3
    got = second.unwrapped_model().model.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in metrics.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_checkpoint_of_another_key_is_not_reused(tiny_teacher, tmp_path):
    first = _trainer(tiny_teacher, tmp_path, [StopAt(3)], key="old")
    first.train()
    other = _trainer(tiny_teacher, tmp_path, [], key="new")
    assert not other.resume()


def test_batches_cover_each_epoch_once(tiny_teacher, tmp_path):
    t = _trainer(tiny_teacher, tmp_path, [])
    seen = np.concatenate([np.concatenate(t.batch_indices(s)) for s in range(t.steps_per_epoch)])
    assert sorted(seen.tolist()) == list(range(40))


def test_gradient_accumulation_matches_one_large_batch(tiny_teacher, tmp_path):
    """4 micro-batches of 4 accumulate to the same update as one batch of 16 (dropout off)."""
    def final(tmp, **over):
        torch.manual_seed(0)
        model = AutoModel.from_pretrained(str(tiny_teacher), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        target = torch.randn(32, model.config.hidden_size, generator=torch.Generator().manual_seed(1))
        cfg = DistillConfig(**{"max_steps": 2, "lr": 1e-3, "checkpoint_every": 100, "cpu": True, **over})
        t = Trainer(Regress(model, target), np.arange(32), cfg, seed=0, checkpoint_dir=tmp / "c", key="k", callbacks=[])
        t.train()
        return t.unwrapped_model().model.state_dict()

    a = final(tmp_path / "a", batch_size=16)
    b = final(tmp_path / "b", batch_size=4, grad_accum_steps=4)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_early_stopping_keeps_the_best(tiny_teacher, tmp_path):
    from kd_edge.distill.callbacks import EarlyStoppingCallback

    scores = iter([0.5, 0.7, 0.6, 0.55, 0.9])
    t = _trainer(tiny_teacher, tmp_path, [EarlyStoppingCallback("dev", True, 2)], max_steps=10, eval_every=1,
                 early_stopping_patience=2)
    t.evaluate_fn = lambda: {"dev": next(scores)}
    state = t.train()
    assert state.stopped_early and state.step == 4 and state.best_step == 2 and state.best_metric == 0.7
    assert t.load_best()
