import numpy as np
import onnxruntime as ort
import pytest
import torch

from kd_edge.errors import ExportError
from kd_edge.export import EXPORTERS
from kd_edge.tasks import TASKS


@pytest.fixture(scope="module")
def module(tiny_teacher):
    task = TASKS.get("sentence_embedding")()
    model = task.load_model(tiny_teacher, eager=True)
    return task.export_module(model, {"pooling": "mean", "normalize": True})


def test_onnx_roundtrip_dynamic_batch_and_sequence(module, tmp_path):
    path = tmp_path / "m.onnx"
    info = EXPORTERS.get("onnx")().export(module, path, input_names=("input_ids", "attention_mask"),
                                          output_name="sentence_embedding", opset=17)
    assert info["inputs"][0]["shape"] == ["batch", "sequence"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, seq in [(1, 7), (3, 20)]:
        ids = torch.randint(5, 40, (batch, seq))
        mask = torch.ones_like(ids)
        mask[0, seq // 2:] = 0  # padding must be ignored the same way
        with torch.no_grad():
            ref = module(ids, mask).numpy()
        got = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-5)


def test_export_failure_is_one_line_export_error(tmp_path):
    class Broken(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            square = input_ids.float().reshape(-1, 1) @ attention_mask.float().reshape(1, -1)
            return torch.linalg.eigvals(square).real  # no ONNX operator for this

    with pytest.raises(ExportError, match="ONNX export failed.*aten::linalg_eigvals"):
        EXPORTERS.get("onnx")().export(Broken(), tmp_path / "b.onnx", input_names=("input_ids", "attention_mask"),
                                       output_name="y", opset=17)
