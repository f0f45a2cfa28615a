"""An emulated device: an arm64 root file system run under qemu-user (binfmt), entered with chroot.

For proving that the path works on an ARM board's software (Python, numpy, onnxruntime, LiteRT
built for aarch64), never for timings: emulation is hundreds of times slower, and every result is
marked ``emulated``. `make test-pi` builds the root file system (scripts/build_pi_rootfs.sh).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

from typing import Literal

from pydantic import Field

from kd_edge.bench.targets.remote import RemoteTargetConfig
from kd_edge.errors import TargetError


class QemuTargetConfig(RemoteTargetConfig):
    """An arm64 root file system run under qemu-user: the ARM code path, with emulated timings."""

    label = "qemu"
    kind: Literal["qemu"] = "qemu"
    root: str | None = Field(None, description="The arm64 root file system.")
    cpu: str | None = Field(None, description="QEMU_CPU, e.g. cortex-a72 (Pi 4) or cortex-a76 (Pi 5).")
    emulated = True

    def transport(self) -> "ChrootTransport":
        if not self.root:
            raise TargetError(f"target {self.name} names no root file system (root:)")
        return ChrootTransport(self.root, self.cpu)


class ChrootTransport:
    """Commands inside a root file system (`chroot ROOT ...`), files copied into it."""

    def __init__(self, root: str, cpu: str | None = None):
        self.root = Path(root).expanduser().resolve()
        self.cpu = cpu
        self.name = f"qemu:{self.root.name}"
        if not (self.root / "usr" / "bin").is_dir():
            raise TargetError(f"{self.root} is not a root file system; build one with `make pi-rootfs`")
        if os.geteuid() != 0:
            raise TargetError("entering an emulated root file system needs root (chroot); run as root")
        if shutil.which("chroot") is None:
            raise TargetError("chroot not found; install coreutils")

    def command(self, argv: list[str]) -> list[str]:
        """The host command that runs ``argv`` in the guest. qemu 7.2 lets the guest read this host's
        x86 /proc/cpuinfo, on which onnxruntime and LiteRT abort: in a private mount namespace, mount
        /proc in the guest and bind an ARM cpuinfo over it (the build script writes one)."""
        inner = ["chroot", str(self.root), *argv]
        cpuinfo = self.root / ".kd-edge" / "cpuinfo"
        if not cpuinfo.is_file() or shutil.which("unshare") is None:
            return inner
        proc = self.root / "proc"
        script = (f"mount -t proc proc {shlex.quote(str(proc))} && "
                  f"mount --bind {shlex.quote(str(cpuinfo))} {shlex.quote(str(proc / 'cpuinfo'))} && "
                  f"exec {' '.join(shlex.quote(a) for a in inner)}")
        return ["unshare", "--mount", "--fork", "sh", "-c", script]

    def run(self, argv: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        full_env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/root", "LANG": "C.UTF-8"}
        if self.cpu:
            full_env["QEMU_CPU"] = self.cpu
        try:
            p = subprocess.run(self.command(argv), capture_output=True, text=True, timeout=timeout, env=full_env)
        except subprocess.TimeoutExpired:
            raise TimeoutError(" ".join(argv)) from None
        return p.returncode, p.stdout, p.stderr

    def put(self, local: Path, remote: str) -> None:
        dest = self.root / remote.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, dest)

    def close(self) -> None:
        return None
