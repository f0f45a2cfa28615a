"""Configuration of the ``bench`` stage: where and how latency and memory are measured."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from kd_edge.bench import profile_names


_Tokens = Annotated[int, Field(gt=0)]
_Depth = Annotated[int, Field(ge=0)]


class BenchConfig(BaseModel):
    """Benchmark settings; every model runs in a fresh process on the target."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str = Field("local", description=f"Where to run: a profile ({', '.join(profile_names())}), a profile "
                        ".yaml, user@host[:port], or adb[:serial].")
    host: str | None = Field(None, description="user@host[:port] for a profile reached over SSH.")
    serial: str | None = Field(None, description="adb serial for an Android profile.")
    key_file: str | None = Field(None, description="SSH: the private key to log in with (default: the SSH agent "
                                 "and ~/.ssh keys).")
    known_hosts: str | None = Field(None, description="SSH: a known_hosts file holding the device's host key, "
                                    "besides ~/.ssh/known_hosts.")
    python: str | None = Field(None, description="The device's Python interpreter (default: the profile's, "
                               "python3).")
    batch_size: int = Field(1, gt=0, description="Batch of the benchmark input.")
    seq_len: int = Field(128, gt=0, description="Tokens per input (all real tokens, no padding).")
    threads: int | None = Field(2, gt=0, description="Intra-op threads for every runtime; null = the profile's.")
    warmup_runs: int = Field(10, ge=1, description="Minimum untimed runs before timing.")
    runs: int = Field(100, ge=5, description="Timed runs per model, over all rounds.")
    rounds: int = Field(3, ge=1, le=20, description="Fresh processes per model, the models taking turns (baseline, "
                        "student, files, then back): every model sees the same drift of a shared machine.")
    teacher: bool = Field(True, description="Also benchmark the teacher in PyTorch (the baseline).")
    student_torch: bool = Field(True, description="Also benchmark the distilled student in PyTorch.")
    timeout_s: float = Field(600, gt=0, description="Give up on one model's benchmark after this long.")
    lm_prompt: list[_Tokens] = Field([128, 512], description="A causal LM: prompt lengths whose processing is "
                                 "measured (pp N: N tokens from an empty cache, tokens/s); [] for none.")
    lm_generate: list[tuple[_Tokens, _Depth]] = Field([(32, 0), (128, 0), (32, 512), (128, 512)], description="A causal "
                                               "LM: [N, depth] pairs, N tokens generated one at a time after a "
                                               "prompt of depth tokens (tg N @ depth, tokens/s); [] for none.")
    lm_ttft_prompt: int | None = Field(128, gt=0, description="A causal LM: time to first token after a prompt of "
                                       "this many tokens; null for none.")

    def lm_runner_args(self) -> list[str]:
        """The device runner's pp / tg / TTFT arguments for a causal LM at these shapes."""
        args = ["--lm-pp", ",".join(map(str, self.lm_prompt))] if self.lm_prompt else []
        if self.lm_generate:
            args += ["--lm-tg", ",".join(f"{n}@{d}" for n, d in self.lm_generate)]
        return args + (["--lm-ttft", str(self.lm_ttft_prompt)] if self.lm_ttft_prompt else [])
