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
