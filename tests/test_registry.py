import pytest

from kd_edge.errors import ConfigError, DependencyError
from kd_edge.registry import Registry


def test_lazy_declared_entry_imports_on_get():
    reg = Registry("thing")
    reg.declare("join", "os.path:join", summary="joins")
    import os.path

    assert reg.get("join") is os.path.join
    assert reg.names() == ["join"] and reg.summary("join") == "joins"


def test_unknown_name_lists_choices_and_closest():
    reg = Registry("loss")
    reg.register("hinton_kd")(object())
    reg.register("hidden_mse")(object())
    with pytest.raises(ConfigError, match=r"unknown loss 'hinton_k'; did you mean 'hinton_kd'\?.*hidden_mse, hinton_kd"):
        reg.get("hinton_k")


def test_duplicate_name_raises():
    reg = Registry("x")
    reg.register("a")(1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(2)


def test_unavailable_entry_names_install_hint():
    reg = Registry("exporter")
    reg.declare("fancy", "nowhere:thing", requires=("surely_not_installed_pkg",), extra="fancy")
    assert not reg.is_available("fancy")
    with pytest.raises(DependencyError, match=r"needs surely_not_installed_pkg.*pip install 'kd-edge\[fancy\]'"):
        reg.get("fancy")


def test_meta_is_readable_without_import():
    reg = Registry("loss")
    reg.declare("h", "module_that_does_not_exist:x", hidden=True)
    assert reg.meta("h") == {"hidden": True}
