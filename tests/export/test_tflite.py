import numpy as np
import torch

from kd_edge.device_runner import TfliteBackend
from kd_edge.export import EXPORTERS
from kd_edge.tasks import TASKS


def test_tflite_signatures_match_pytorch(wide_teacher, tmp_path):
    task = TASKS.get("sentence_embedding")()
    module = task.export_module(task.load_model(wide_teacher, eager=True), {"pooling": "mean", "normalize": True})
    path = tmp_path / "m.tflite"
    info = EXPORTERS.get("tflite")().export(module, path, input_names=("input_ids", "attention_mask"),
                                            output_name="sentence_embedding", shapes=[(1, 16), (2, 32)],
                                            log_path=tmp_path / "log.txt")
    assert [s["name"] for s in info["signatures"]] == ["b1_s16", "b2_s32"]
    backend = TfliteBackend(str(path), threads=1)
    assert set(backend.signatures) == {"b1_s16", "b2_s32"}
    for batch, seq in [(1, 16), (2, 32)]:
        ids = torch.randint(5, 40, (batch, seq))
        mask = torch.ones_like(ids)
        mask[:, seq - 3:] = 0
        with torch.no_grad():
            ref = module(ids, mask).numpy()
        got = backend.run({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        np.testing.assert_allclose(got, ref, atol=1e-5)
    # one copy of the weights for both signatures: the file is not twice the fp32 parameter bytes
    param_bytes = sum(p.numel() * 4 for p in module.parameters())
    assert path.stat().st_size < 1.5 * param_bytes


def test_the_static_lm_step_attends_by_group_with_the_same_logits_as_eager_attention(tmp_path):
    from tests.conftest import write_tiny_llama
    from kd_edge.tasks.causal_lm import GROUPED_ATTENTION, CausalLMStaticStep

    model = TASKS.get("causal_lm")().load_model(write_tiny_llama(tmp_path / "llama"), eager=True).eval()
    assert model.config.num_attention_heads // model.config.num_key_value_heads == 2  # two query heads per group
    step = CausalLMStaticStep(model, 24).eval()
    assert step.attention == GROUPED_ATTENTION
    tokens = torch.randint(5, 60, (1, 6), dtype=torch.int32)
    kv = [torch.zeros(1, step.kv_heads, 24, step.head_dim) for _ in range(2 * step.layers)]
    with torch.no_grad():
        grouped = step(tokens, torch.arange(6, dtype=torch.int32), *kv)
        step.attention = "eager"
        eager = step(tokens, torch.arange(6, dtype=torch.int32), *kv)
    assert model.config._attn_implementation == "eager"  # the model is left as it was
    for a, b in zip(grouped, eager):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    with torch.no_grad():  # the buffers hold the prompt's keys at positions 0..5 and nothing after
        assert grouped[1][0, :, :6].abs().sum() > 0 and grouped[1][0, :, 6:].abs().sum() == 0
