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


def test_model_over_the_protobuf_limit_switches_to_external_data(module, tmp_path, monkeypatch):
    """The switch is by weight bytes against ONNX's 2 GB limit; the limit is lowered here so that a tiny
    model takes the same path a 3 GB one does."""
    from kd_edge.export import onnx_files
    from kd_edge.quantize import QUANTIZERS

    monkeypatch.setattr(onnx_files, "PROTO_LIMIT", 10_000)
    path = tmp_path / "big.onnx"
    info = EXPORTERS.get("onnx")().export(module, path, input_names=("input_ids", "attention_mask"),
                                          output_name="sentence_embedding", opset=17)
    assert info["external_data"] and "2 GB protobuf limit" in info["external_data_note"]
    data = tmp_path / "big.onnx.data"
    assert data.is_file() and data.stat().st_size > path.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]  # nothing else left behind
    ids = torch.randint(5, 40, (2, 9))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ref = module(ids, mask).numpy()
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # copied under another name, the data file follows; quantizing keeps working
    onnx_files.copy(path, tmp_path / "copy.onnx")
    assert (tmp_path / "copy.onnx.data").is_file()
    got = ort.InferenceSession(str(tmp_path / "copy.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(got, ref, atol=1e-5)
    QUANTIZERS.get("onnx:int8")(path, tmp_path / "q.onnx")
    out = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert out.shape == ref.shape
    assert onnx_files.size(path) == path.stat().st_size + data.stat().st_size


def test_tied_embeddings_are_stored_once_and_the_kv_step_matches(tmp_path):
    from tests.conftest import export_tied_llama, prompt_feeds

    path = tmp_path / "lm.onnx"
    model, info = export_tied_llama(path, hidden=32)
    assert len(info["tied_weights"]) == 1 and info["kv_cache"]["layers"] == 2
    import onnx

    tables = [i.name for i in onnx.load(str(path)).graph.initializer if sorted(i.dims) == [32, 500]]
    assert len(tables) == 1, tables  # one copy of the vocabulary table serves the lookup and the head
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids = torch.randint(0, 500, (1, 7))
    feeds = prompt_feeds(sess, ids.numpy(), head_dim=8)
    with torch.no_grad():
        ref = model(ids).logits.numpy()
    np.testing.assert_allclose(sess.run(None, feeds)[0], ref, atol=1e-4)


def test_the_exact_reference_is_float64_and_leaves_the_model_as_it_was(module):
    from kd_edge.data.packed import Packed
    from kd_edge.checks.reference import exact_outputs

    before = {k: v.clone() for k, v in module.state_dict().items()}
    rows = [np.arange(5, 5 + n) for n in (4, 9, 17)]
    ids = Packed(np.concatenate(rows), np.cumsum([0] + [len(r) for r in rows]))
    exact = exact_outputs(module, ids)
    assert exact.dtype == np.float64 and exact.shape == (3, 32)
    with torch.no_grad():
        fp32 = np.concatenate([module(torch.as_tensor(r)[None], torch.ones(1, len(r), dtype=torch.int64)).numpy()
                               for r in rows])
    assert 0 < np.abs(fp32 - exact).max() < 1e-5  # fp32 rounding, not another function
    after = module.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
