"""An emulated device: an arm64 root file system run under qemu-user (binfmt), entered with chroot.

For proving that the path works on an ARM board's software (Python, numpy, onnxruntime, LiteRT
built for aarch64), never for timings: emulation is hundreds of times slower, and every result is
marked ``emulated``. `make test-pi` builds the root file system (scripts/build_pi_rootfs.sh).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from kd_edge.errors import TargetError


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

    def run(self, argv: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        full_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
        if self.cpu:
            full_env["QEMU_CPU"] = self.cpu
        try:
            p = subprocess.run(["chroot", str(self.root), *argv], capture_output=True, text=True, timeout=timeout,
                               env=full_env)
        except subprocess.TimeoutExpired:
            raise TimeoutError(" ".join(argv)) from None
        return p.returncode, p.stdout, p.stderr

    def put(self, local: Path, remote: str) -> None:
        dest = self.root / remote.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, dest)

    def close(self) -> None:
        return None
