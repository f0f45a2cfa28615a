"""Target profiles (export/*.yaml, shipped in the package as kd_edge/profiles/) and turning a
`--target` argument into a target: a profile name, a profile file, `local`, `user@host[:port]`,
`adb` or `adb:SERIAL`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kd_edge.errors import ConfigError, TargetError
from kd_edge.registry import closest

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"


class TargetProfile(BaseModel):
    """Where and how to benchmark: a device class and how it is reached."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Literal["local", "ssh", "adb", "qemu"]
    description: str = ""
    host: str | None = Field(None, description="ssh: user@host[:port].")
    key_file: str | None = Field(None, description="ssh: private key (default: agent and ~/.ssh keys).")
    known_hosts: str | None = Field(None, description="ssh: a known_hosts file besides ~/.ssh/known_hosts.")
    connect_timeout_s: float = Field(10.0, gt=0, description="ssh: give up connecting after this long.")
    serial: str | None = Field(None, description="adb: the device's serial (default: the only device).")
    adb: str = Field("adb", description="adb: the adb program.")
    root: str | None = Field(None, description="qemu: the arm64 root file system.")
    cpu: str | None = Field(None, description="qemu: QEMU_CPU, e.g. cortex-a72 (Pi 4) or cortex-a76 (Pi 5).")
    python: str = Field("python3", description="The device's Python interpreter.")
    tflite_benchmark_model: str | None = Field(
        None, description="Path of TFLite's benchmark_model binary on the device: .tflite files run with it (no Python).")
    cpus: list[int] | None = Field(None, description="local: pin the benchmark to these CPU cores.")
    workdir: str = Field("/tmp/kd-edge-bench", description="Where files go on the device.")
    threads: int | None = Field(None, gt=0, description="Default intra-op threads.")
    formats: list[str] = Field(default_factory=lambda: ["onnx", "tflite"])
    precisions: list[str] = Field(default_factory=lambda: ["fp32", "int8"])
    runtimes: dict[str, str] = Field(default_factory=dict)
    shapes: list[tuple[int, int]] = Field(default_factory=lambda: [(1, 128)])


def profile_names() -> list[str]:
    """Names of the bundled profiles."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def _load_file(path: Path) -> TargetProfile:
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return TargetProfile.model_validate(data)
    except yaml.YAMLError as e:
        raise ConfigError(f"target profile {path} is not valid YAML ({e}); fix it") from e
    except ValidationError as e:
        from kd_edge.config import validation_message

        raise ConfigError(validation_message(e, str(path)) + "; fix the profile (kd_edge/profiles/*.yaml are examples)") from e


def resolve_target(ref: str, *, host: str | None = None, serial: str | None = None, key_file: str | None = None,
                   known_hosts: str | None = None, python: str | None = None) -> TargetProfile:
    """The profile a `--target` argument names, with ``host``, ``serial``, ``key_file``,
    ``known_hosts`` and ``python`` filled in when given."""
    if ref.endswith((".yaml", ".yml")):
        path = Path(ref)
        if not path.is_file():
            raise ConfigError(f"target profile '{ref}' does not exist; pass a profile .yaml (see kd_edge/profiles/) or "
                              f"a bundled profile name ({', '.join(profile_names())})")
        profile = _load_file(path)
    elif ref == "adb" or ref.startswith("adb:"):
        profile = _load_file(PROFILES_DIR / "android-arm64.yaml").model_copy(
            update={"serial": ref.partition(":")[2] or None})
    elif "@" in ref or ref.startswith("ssh://"):
        profile = TargetProfile(name=ref, kind="ssh", host=ref, description="a machine over SSH")
    elif (PROFILES_DIR / f"{ref}.yaml").is_file():
        profile = _load_file(PROFILES_DIR / f"{ref}.yaml")
    else:
        raise ConfigError(f"unknown target '{ref}'{closest(ref, profile_names())}; give a profile "
                          f"({', '.join(profile_names())}), a profile .yaml, user@host or adb[:serial]")
    update = {k: v for k, v in (("host", host), ("serial", serial), ("key_file", key_file),
                                 ("known_hosts", known_hosts), ("python", python)) if v}
    profile = profile.model_copy(update=update) if update else profile
    if profile.kind == "ssh" and not profile.host:
        raise ConfigError(f"target {profile.name} is reached over SSH; give the address: --host user@host "
                          "(bench.host in a recipe)")
    for what, value, key in (("key", profile.key_file, "--key (bench.key_file in a recipe)"),
                             ("known_hosts file", profile.known_hosts, "--known-hosts (bench.known_hosts)")):
        if value and not Path(value).expanduser().is_file():
            raise ConfigError(f"the SSH {what} '{value}' does not exist; pass an existing file with {key}")
    if (key_file or known_hosts) and profile.kind != "ssh":
        raise ConfigError(f"--key and --known-hosts are for SSH targets; target {profile.name} is {profile.kind}")
    return profile


def profile_for(cfg) -> TargetProfile:
    """The profile a recipe's ``bench`` section names, with its host, serial and SSH files."""
    return resolve_target(cfg.target, host=cfg.host, serial=cfg.serial, key_file=cfg.key_file,
                          known_hosts=cfg.known_hosts, python=cfg.python)


def make_target(profile: TargetProfile):
    """A target object (with ``name`` and ``run(runner, model, args, threads=, timeout_s=)``)."""
    from kd_edge.bench import TARGETS
    from kd_edge.bench.targets.remote import RemoteTarget

    cls = TARGETS.get(profile.kind)
    if profile.kind == "local":
        return cls(name=profile.name, cpus=profile.cpus)
    if profile.kind == "ssh":
        transport = cls(profile.host, key_file=profile.key_file, known_hosts=profile.known_hosts,
                        connect_timeout=profile.connect_timeout_s)
    elif profile.kind == "adb":
        transport = cls(profile.serial, profile.adb)
    else:
        if not profile.root:
            raise TargetError(f"target {profile.name} names no root file system (root:)")
        transport = cls(profile.root, profile.cpu)
    return RemoteTarget(transport, python=profile.python, workdir=profile.workdir, emulated=profile.kind == "qemu",
                        name=profile.name, tflite_benchmark_model=profile.tflite_benchmark_model)
