"""Target profiles and turning a `--target` argument (or a recipe's ``bench.target``) into one.

A profile is a YAML file (``targets/*.yaml`` in the repository, shipped in the package as
``kd_edge/profiles/``) read into the config class its ``kind`` names: each kind of target registers that
class in ``bench/__init__.py: TARGETS``, beside its transport. A `--target` is a profile name, a profile
file, ``local``, ``user@host[:port]``, ``adb`` or ``adb:SERIAL``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import Field, TypeAdapter, ValidationError

from kd_edge.bench import PROFILES_DIR, profile_names
from kd_edge.errors import ConfigError
from kd_edge.registry import closest

# what a recipe or the command line can set on a target, by recipe key
SETTINGS = {"host": "bench.host", "serial": "bench.serial", "key_file": "bench.key_file",
            "known_hosts": "bench.known_hosts", "python": "bench.python"}


def target_classes() -> dict[str, type]:
    """kind -> config class, one per registered kind of target."""
    from kd_edge.bench import TARGETS

    return {kind: TARGETS.get(kind) for kind in TARGETS.names()}


@lru_cache(maxsize=None)
def _adapter() -> TypeAdapter:
    union = Union[tuple(target_classes().values())]  # type: ignore[valid-type]
    return TypeAdapter(Annotated[union, Field(discriminator="kind")])


def target_profile(data: dict[str, Any]):
    """A profile's fields as the config class of its kind (pydantic's ValidationError on bad fields). A
    known kind is validated by its own class, so an error names the profile's key ('formats'), not the
    union's branch ('ssh.formats'); the union answers for a missing or unknown kind, naming the kinds."""
    cls = target_classes().get(data.get("kind")) if isinstance(data, dict) else None
    return cls.model_validate(data) if cls is not None else _adapter().validate_python(data)


def _load_file(path: Path):
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return target_profile(data)
    except yaml.YAMLError as e:
        raise ConfigError(f"target profile {path} is not valid YAML ({e}); fix it") from e
    except ValidationError as e:
        from kd_edge.config import validation_message

        raise ConfigError(validation_message(e, str(path)) + "; fix the profile (kd_edge/profiles/*.yaml are examples)") from e


def resolve_target(ref: str, **settings: str | None):
    """The profile a `--target` argument names, with the settings given (host, serial, key_file,
    known_hosts, python: ``SETTINGS``) filled in; each must be one the target's kind has."""
    if ref.endswith((".yaml", ".yml")):
        path = Path(ref)
        if not path.is_file():
            raise ConfigError(f"target profile '{ref}' does not exist; pass a profile .yaml (see kd_edge/profiles/) or "
                              f"a bundled profile name ({', '.join(profile_names())})", keys=("bench.target",))
        profile = _load_file(path)
    elif ref == "adb" or ref.startswith("adb:"):
        profile = _load_file(PROFILES_DIR / "android-arm64.yaml").model_copy(
            update={"serial": ref.partition(":")[2] or None})
    elif "@" in ref or ref.startswith("ssh://"):
        profile = target_profile({"name": ref, "kind": "ssh", "host": ref, "description": "a machine over SSH"})
    elif (PROFILES_DIR / f"{ref}.yaml").is_file():
        profile = _load_file(PROFILES_DIR / f"{ref}.yaml")
    else:
        raise ConfigError(f"unknown target '{ref}'{closest(ref, profile_names())}; give a profile "
                          f"({', '.join(profile_names())}), a profile .yaml, user@host or adb[:serial]",
                          keys=("bench.target",))
    update = {k: v for k, v in settings.items() if v}
    for field in update:
        if field not in type(profile).model_fields:
            kinds = [cls.label for cls in target_classes().values() if field in cls.model_fields]
            raise ConfigError(f"{SETTINGS[field]} is for {' and '.join(kinds)} targets; target {profile.name} is "
                              f"{type(profile).label}: leave {SETTINGS[field]} unset", keys=(SETTINGS[field],))
    profile = profile.model_copy(update=update) if update else profile
    profile.check()
    return profile


def profile_for(cfg):
    """The profile a recipe's ``bench`` section names, with its host, serial and SSH files."""
    return resolve_target(cfg.target, host=cfg.host, serial=cfg.serial, key_file=cfg.key_file,
                          known_hosts=cfg.known_hosts, python=cfg.python)


def make_target(profile):
    """The target a profile describes, connected (each kind's config class knows how)."""
    return profile.connect()
