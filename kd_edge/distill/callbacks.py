"""Training callbacks, in the vocabulary of ``transformers.TrainerCallback``.

Callbacks observe the ``TrainerState`` and may change only the ``TrainerControl`` flags. Progress,
the metrics file and early stopping are each one callback.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainerState:
    """Loop state, saved as JSON beside each checkpoint so that a run resumes exactly."""

    key: str = ""
    step: int = 0
    max_steps: int = 0
    steps_per_epoch: int = 1
    samples_seen: int = 0
    resumed_from: int | None = None
    log_history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False

    @property
    def epoch(self) -> float:
        """Fractional epoch reached."""
        return self.step / self.steps_per_epoch

    def save(self, path: Path) -> None:
        """Write as JSON."""
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> "TrainerState":
        """Read from JSON."""
        return cls(**json.loads(path.read_text()))


@dataclass
class TrainerControl:
    """The only thing callbacks may change."""

    should_stop: bool = False
    should_save_best: bool = False


class TrainerCallback:
    """No-op base: override the events you need."""

    def on_train_begin(self, state: TrainerState, control: TrainerControl) -> None: ...

    def on_step_end(self, state: TrainerState, control: TrainerControl, logs: dict[str, float]) -> None: ...

    def on_log(self, state: TrainerState, control: TrainerControl, logs: dict[str, float]) -> None: ...

    def on_evaluate(self, state: TrainerState, control: TrainerControl, metrics: dict[str, float]) -> None: ...

    def on_save(self, state: TrainerState, control: TrainerControl, path: Path) -> None: ...

    def on_train_end(self, state: TrainerState, control: TrainerControl) -> None: ...


class ProgressCallback(TrainerCallback):
    """A progress bar with the loss and samples per second (main process only)."""

    def __init__(self, enabled: bool = True, desc: str = "distill"):
        self.enabled, self.desc, self.bar, self._t0, self._seen0 = enabled, desc, None, 0.0, 0

    def on_train_begin(self, state, control):
        from kd_edge.progress import Progress

        self.bar = Progress(total=state.max_steps, initial=state.step, desc=self.desc, unit="step",
                            enabled=self.enabled)
        self._t0, self._seen0 = time.perf_counter(), state.samples_seen

    def on_step_end(self, state, control, logs):
        rate = (state.samples_seen - self._seen0) / max(time.perf_counter() - self._t0, 1e-9)
        self.bar.set_postfix(loss=f"{logs['loss']:.4f}", samples_s=f"{rate:.0f}", refresh=False)
        self.bar.update(1)

    def on_train_end(self, state, control):
        self.bar.close()


class MetricsFileCallback(TrainerCallback):
    """Appends each log record to ``metrics.jsonl``; on resume, drops records past the checkpoint."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_begin(self, state, control):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= state.step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def on_log(self, state, control, logs):
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": state.step, "epoch": round(state.epoch, 4), **logs}) + "\n")



class EarlyStoppingCallback(TrainerCallback):
    """Stops when the dev metric has not improved for ``patience`` evaluations; asks the trainer to keep
    the weights of each new best."""

    def __init__(self, metric: str, higher_is_better: bool, patience: int | None):
        self.metric, self.higher, self.patience = metric, higher_is_better, patience

    def on_evaluate(self, state, control, metrics):
        value = metrics[self.metric]
        better = state.best_metric is None or (value > state.best_metric if self.higher else value < state.best_metric)
        if better:
            state.best_metric, state.best_step, state.evals_without_improvement = value, state.step, 0
            control.should_save_best = True
        else:
            state.evals_without_improvement += 1
            if self.patience and state.evals_without_improvement >= self.patience:
                state.stopped_early = True
                control.should_stop = True
