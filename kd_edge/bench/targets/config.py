"""What every target profile says, whatever its kind. Each kind's own settings and how it connects are
in its transport's file (``targets/local.py``, ``ssh.py``, ``adb.py``, ``qemu.py``), one config class per
kind; ``bench/profiles.py`` reads a profile into the class its ``kind`` names."""

from __future__ import annotations

import abc
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field


class TargetConfig(BaseModel, abc.ABC):
    """A device class and how it is reached: a target profile (``targets/*.yaml`` in the repository)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    label: ClassVar[str] = ""  # the kind as people say it ("SSH")

    name: str = Field(description="The target's name in reports and file names.")
    description: str = Field("", description="One line on the device.")
    threads: int | None = Field(None, gt=0, description="Default intra-op threads.")

    def check(self) -> None:
        """What can be checked without connecting (preflight): raises ConfigError naming the recipe key."""

    @abc.abstractmethod
    def connect(self):
        """The target object (``name``, ``run(runner, model, args, threads=, timeout_s=)``, ``close()``)."""
