"""The parameters a distillation loss declares: each loss's registry line lists its own, and a recipe's
loss entry is validated against that loss's list alone (``jsd`` takes ``beta``; ``kl`` refuses it).

No torch here: recipes are validated before any stage runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model


@dataclass(frozen=True, eq=False)
class Param:
    """One parameter of a loss: its name, type, default, meaning and bounds (pydantic ``Field`` keywords)."""

    name: str
    annotation: Any
    default: Any
    description: str
    bounds: dict[str, Any] = field(default_factory=dict)

    def __init__(self, name: str, annotation: Any, default: Any, description: str, **bounds: Any):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "annotation", annotation)
        object.__setattr__(self, "default", default)
        object.__setattr__(self, "description", description)
        object.__setattr__(self, "bounds", bounds)


# parameters several losses share
TEMPERATURE = Param("temperature", float, 1.0, "Softmax temperature T (the loss is scaled by T^2).", gt=0)
BETA = Param("beta", float, 0.5, "The mixture weight β of the teacher (0.5: symmetric JSD).", gt=0, lt=1)
LAYER_MAP = Param(
    "layer_map", Literal["uniform", "last"] | list[tuple[int, int]] | None, None,
    "Pairs (student layer, teacher layer), 1-based (0 is the embedding output for hidden states); "
    "`uniform` maps student layer j to teacher layer round(j*T/S); `last` maps only the last layers.")
HEADS = Param("heads", Literal["match", "mean"], "match",
              "Compare attention head by head (counts must match) or head-averaged maps.")


@lru_cache(maxsize=None)
def _model(loss: str, params: tuple[Param, ...]) -> type[BaseModel]:
    fields = {p.name: (p.annotation, Field(p.default, description=p.description, **p.bounds)) for p in params}
    return create_model(f"{loss}_params", __config__=ConfigDict(extra="forbid", frozen=True), **fields)


def declared(loss: str) -> tuple[Param, ...]:
    """The parameters loss ``loss`` declares (its registry line's ``params``)."""
    from kd_edge.distill import LOSSES

    return tuple(LOSSES.meta(loss).get("params", ()))


def validate_params(loss: str, given: dict[str, Any]) -> dict[str, Any]:
    """``given`` checked against what ``loss`` declares (types, bounds; no unknown key), without defaults
    added: a recipe records what it sets, so a parameter added later with a default changes no run."""
    from kd_edge.registry import closest

    params = declared(loss)
    names = [p.name for p in params]
    for key in given:
        if key not in names:
            takes = f"its parameters: {', '.join(names)}" if names else "it takes no parameters"
            raise ValueError(f"loss {loss} has no parameter '{key}'{closest(key, names)} ({takes}); remove its {key}")
    try:
        checked = _model(loss, params).model_validate(given)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"loss {loss}: {where}: {first['msg']}") from None  # the recipe's message shows the entry
    return {k: getattr(checked, k) for k in given}


def with_defaults(loss: str, given: dict[str, Any]) -> dict[str, Any]:
    """Every parameter ``loss`` declares: ``given`` over the declared defaults (what the loss is called with)."""
    return {**{p.name: p.default for p in declared(loss)}, **given}
