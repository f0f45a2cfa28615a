import json

import pytest

from kd_edge.config import recipe_from_dict
from kd_edge.errors import ArtifactError, ConfigError
from kd_edge.preflight import pick_layers, resolve
from tests.conftest import tiny_recipe_dict


def _recipe(teacher, data, **over):
    return recipe_from_dict(tiny_recipe_dict(teacher, data, **over), "test")


def test_resolve_fills_defaults(tiny_teacher, tiny_data):
    r = resolve(_recipe(tiny_teacher, tiny_data))
    assert r.student.layers == [1, 3]
    assert r.teacher.pooling == "mean" and r.teacher.normalize is True
    hidden = [loss for loss in r.distill.losses if loss.name == "hidden_mse"][0]
    assert hidden.layer_map == [(1, 2), (2, 4)]


def test_resolve_reads_sentence_transformers_pooling(tmp_path, tiny_data):
    from tests.conftest import write_tiny_bert

    teacher = write_tiny_bert(tmp_path / "st")
    (teacher / "1_Pooling").mkdir()
    (teacher / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (teacher / "modules.json").write_text(json.dumps([{"type": "sentence_transformers.models.Transformer"}]))
    r = resolve(_recipe(teacher, tiny_data))
    assert r.teacher.pooling == "cls" and r.teacher.normalize is False


def test_teacher_path_missing(tmp_path, tiny_data):
    with pytest.raises(ArtifactError, match=r"teacher.model '.*/missing' does not exist"):
        resolve(_recipe(tmp_path / "missing", tiny_data))


def test_teacher_without_config(tmp_path, tiny_data):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="has no config.json"):
        resolve(_recipe(tmp_path / "empty", tiny_data))


def test_teacher_hub_id_offline(tiny_data, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ArtifactError, match="could not be fetched from the Hugging Face hub"):
        resolve(_recipe("some-org/some-model-that-is-not-cached", tiny_data))


def test_more_student_layers_than_teacher(tiny_teacher, tiny_data):
    with pytest.raises(ConfigError, match=r"student.layers=5 is more layers than the teacher has \(4\)"):
        resolve(_recipe(tiny_teacher, tiny_data, student={"layers": 5}))


def test_student_layer_index_out_of_range(tiny_teacher, tiny_data):
    with pytest.raises(ConfigError, match=r"student.layers \[4\] are out of range"):
        resolve(_recipe(tiny_teacher, tiny_data, student={"layers": [0, 4]}))


def test_dataset_missing(tiny_teacher, tmp_path):
    with pytest.raises(ArtifactError, match="data.source '.*nothing.jsonl' does not exist"):
        resolve(_recipe(tiny_teacher, tmp_path / "nothing.jsonl"))


def test_dataset_empty(tiny_teacher, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ArtifactError, match="is empty"):
        resolve(_recipe(tiny_teacher, empty))


def test_unknown_loss(tiny_teacher, tiny_data):
    with pytest.raises(ConfigError, match="unknown loss 'hidden_mes'; did you mean 'hidden_mse'"):
        resolve(_recipe(tiny_teacher, tiny_data, distill={"losses": [{"name": "hidden_mes"}]}))


@pytest.mark.parametrize("layers, n, expected", [(2, 6, [2, 5]), (3, 6, [1, 3, 5]), (1, 4, [3]), ([0, 2], 4, [0, 2])])
def test_pick_layers(layers, n, expected):
    assert pick_layers(layers, n) == expected


def test_pickle_checkpoints_load_only_when_the_recipe_allows_them(tmp_path, tiny_teacher, tiny_data):
    import shutil

    import torch
    from transformers import BertModel

    from kd_edge.config import recipe_from_dict
    from kd_edge.errors import ArtifactError
    from kd_edge.preflight import resolve
    from kd_edge.tasks import TASKS
    from kd_edge.tasks.base import ModelSource
    from tests.conftest import tiny_recipe_dict

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_teacher, pickled)
    (pickled / "model.safetensors").unlink()
    model = BertModel.from_pretrained(str(tiny_teacher))
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")  # what older checkpoints are: a pickle
    assert (pickled / "pytorch_model.bin").is_file() and not list(pickled.glob("*.safetensors"))
    data = tiny_recipe_dict(pickled, tiny_data)
    with pytest.raises(ArtifactError, match="holds only pickle weights .*set teacher.allow_pickle: true"):
        resolve(recipe_from_dict(data, "test"))
    task = TASKS.get("sentence_embedding")()
    with pytest.raises(ArtifactError, match="pickle"):
        task.load_model(ModelSource(pickled))  # the loader refuses too, whoever calls it
    data["teacher"]["allow_pickle"] = True
    resolve(recipe_from_dict(data, "test"))
    loaded = task.load_model(ModelSource(pickled, allow_pickle=True))
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
