"""A student folder loads, as it is, in the libraries its users embed with."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.mark.parametrize("pooling, normalize", [("mean", True), ("cls", False)])
def test_sentence_transformers_loads_the_student_folder_with_kd_edges_embeddings(tmp_path, pooling, normalize):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    from kd_edge.tasks import TASKS
    from tests.conftest import sentences, write_tiny_bert

    folder = write_tiny_bert(tmp_path / "student", layers=1)
    task = TASKS.get("sentence_embedding")()
    model = AutoModel.from_pretrained(str(folder)).eval()
    task.save_for_libraries(folder, model, {"pooling": pooling, "normalize": normalize})
    texts = [s["text"] for s in sentences(12, seed=2)]
    tok = AutoTokenizer.from_pretrained(str(folder))
    module = task.export_module(model, {"pooling": pooling, "normalize": normalize})
    with torch.no_grad():
        ours = np.concatenate([module(**{k: v for k, v in tok([t], return_tensors="pt").items()
                                         if k in ("input_ids", "attention_mask")}).numpy() for t in texts])
    theirs = SentenceTransformer(str(folder), device="cpu").encode(texts, batch_size=4, convert_to_numpy=True)
    assert np.abs(ours - theirs).max() <= 1e-5
    assert bool(np.allclose(np.linalg.norm(theirs, axis=1), 1.0, atol=1e-5)) == normalize
