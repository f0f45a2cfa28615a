"""A recipe fuzzer over the recipe schema: 500 generated recipes through `kd-edge run RECIPE --check`
(the schema, every preflight check against the real tiny teacher and data, nothing run). Each must
either pass or be refused in one line with exit 2: never a traceback.

Recipes start from a valid one; hypothesis then sets a few keys anywhere in the schema (found by
walking the pydantic models, lists of losses and artifacts included) to values of every kind, deletes
keys, or adds unknown ones.
"""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from tests.cli.test_bad_inputs import run_in_process
from tests.conftest import tiny_recipe_dict


def _schema_paths(model: type[BaseModel], prefix: tuple = ()) -> list[tuple[tuple, object]]:
    """(path, annotation) of every field below ``model``; list items appear as index 0."""
    out = []
    for name, field in model.model_fields.items():
        path = prefix + (name,)
        out.append((path, field.annotation))
        for arg in (field.annotation, *typing.get_args(field.annotation)):
            inner = typing.get_args(arg) if typing.get_origin(arg) in (list, tuple) else ()
            for candidate in (arg, *inner):
                if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                    out += _schema_paths(candidate, path + ((0,) if inner else ()))
    return out


def _paths() -> list[tuple]:
    from kd_edge.config import Recipe

    return [p for p, _ in _schema_paths(Recipe)]


NAMES = ["kl", "ce", "jsd", "hidden_mse", "attention_kl", "embedding_cosine", "onnx", "tflite", "int8", "fp16",
         "int4", "int8-static", "local", "rpi5", "adb", "user@host:22", "live", "mutual", "offline", "uniform", "last",
         "teacher_layers", "config", "pretrained", "causal_lm", "sequence_classification", "bundled:vader", "auto"]
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from(NAMES), st.text(max_size=10),
    st.lists(st.integers(-2, 8), max_size=4), st.lists(st.lists(st.integers(-1, 130), min_size=2, max_size=2), max_size=3),
    st.dictionaries(st.sampled_from(["name", "format", "precision", "weight", "x"]), st.sampled_from(NAMES), max_size=3),
)


def _set(data: dict, path: tuple, value) -> None:
    node = data
    for part in path[:-1]:
        if isinstance(part, int):  # the first item of a list of sections (losses, artifacts, budgets)
            if not isinstance(node, list) or not node or not isinstance(node[0], dict):
                return
            node = node[0]
            continue
        if not isinstance(node, dict):
            return
        child = node.get(part)
        if not isinstance(child, (dict, list)):
            child = node[part] = {}
        node = child
    last = path[-1]
    if isinstance(node, dict) and not isinstance(last, int):
        node[last] = value
    elif isinstance(node, list) and node:
        node[0] = value


def _delete(data: dict, path: tuple) -> None:
    node = data
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) and not isinstance(part, int) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(path[-1], None)


@st.composite
def recipes(draw, base: dict) -> dict:
    import copy

    data = copy.deepcopy(base)
    paths = _paths()
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(paths))
        kind = draw(st.sampled_from(["set", "set", "set", "delete", "unknown"]))
        if kind == "set":
            _set(data, path, draw(VALUES))
        elif kind == "delete":
            _delete(data, path)
        else:
            _set(data, path[:-1] + (draw(st.sampled_from(["extra", "lr_", "Temperature", "layer"])),), draw(VALUES))
    return data


@pytest.fixture(scope="module")
def base_recipe(tiny_teacher, tiny_data) -> dict:
    return tiny_recipe_dict(tiny_teacher, tiny_data)


def test_500_generated_recipes_never_give_a_traceback(base_recipe, tmp_path_factory):
    folder = Path(tmp_path_factory.mktemp("fuzz"))
    outcomes = {"valid": 0, "refused": 0}
    messages: set = set()

    @settings(max_examples=500, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(recipes(base_recipe))
    def check(data):
        path = folder / "recipe.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
        code, out, err = run_in_process(["run", path, "--check", "--out", folder / "run"], folder)
        assert "Traceback" not in out + err, err
        if code == 0:
            assert "is valid" in out
            outcomes["valid"] += 1
        else:
            lines = [line for line in err.splitlines() if line.strip()]
            assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, out, err, data)
            outcomes["refused"] += 1
            messages.add(lines[0][:90])
        assert not (folder / "run").exists()  # --check writes nothing

    check()
    assert outcomes["valid"] + outcomes["refused"] == 500
    assert outcomes["valid"] > 20 and outcomes["refused"] > 100, outcomes  # the fuzzer reached both sides
    assert len(messages) > 40, sorted(messages)  # and many different checks, not one error 460 times
