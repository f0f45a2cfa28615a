"""Android over adb: push to the device's temp folder, run with the device's Python (e.g. Termux)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from typing import Literal

from pydantic import Field

from kd_edge.bench.targets.remote import RemoteTargetConfig, quote
from kd_edge.errors import TargetError


class AdbTargetConfig(RemoteTargetConfig):
    """An Android device over adb, running the device's Python (Termux) or TFLite's benchmark_model."""

    label = "adb"
    kind: Literal["adb"] = "adb"
    serial: str | None = Field(None, description="The device's serial (default: the only device).")
    adb: str = Field("adb", description="The adb program.")

    def transport(self) -> "AdbTransport":
        return AdbTransport(self.serial, self.adb)


class AdbTransport:
    """Commands and files through the `adb` program (one device, by serial or the only one)."""

    def __init__(self, serial: str | None = None, adb: str = "adb", timeout: float = 30.0):
        path = shutil.which(adb)
        if path is None:
            raise TargetError(f"'{adb}' not found; install Android platform tools (apt install adb) or name the adb "
                              "program in a target profile (adb: /path/to/adb) and name that file in bench.target",
                              keys=("bench.target",))
        self.adb, self.serial = path, serial
        self.name = f"adb:{serial}" if serial else "adb"
        rc, out, err = self._adb(["get-state"], timeout)
        if rc != 0 or out.strip() != "device":
            detail = (err or out).strip().splitlines()[-1:] or ["no device"]
            raise TargetError(f"no Android device {serial or ''} ready ({detail[0]}); connect it, enable USB debugging "
                              "and accept the computer's key (adb devices must list it as 'device')")

    def _adb(self, args: list[str], timeout: float) -> tuple[int, str, str]:
        cmd = [self.adb] + (["-s", self.serial] if self.serial else []) + args
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(" ".join(cmd)) from None
        return p.returncode, p.stdout, p.stderr

    def run(self, argv: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        # adb shell takes one command line; quoting makes every argument arrive as it is
        return self._adb(["shell", quote(argv)], timeout)

    def put(self, local: Path, remote: str) -> None:
        rc, out, err = self._adb(["push", str(local), remote], timeout=600)
        if rc != 0:
            raise OSError(28 if "No space" in err + out else 5, (err or out).strip())

    def close(self) -> None:
        return None
