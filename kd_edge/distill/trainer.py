"""The distillation loop, on Accelerate: the same code runs on one CPU, one GPU, or several processes
started by ``accelerate launch``.

The trainer minimises ``objective(example_indices) -> (loss, logs)``, an ``nn.Module`` holding the
student (and whatever else trains with it: projections, a co-trained teacher), so that Accelerate's
distributed wrapper sees every forward pass. Data order is a function of the step alone (a seeded
permutation per epoch), so a checkpoint (model, optimizer, scheduler, RNG state, step) resumes exactly.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from kd_edge.artifacts import atomic_dir
from kd_edge.distill.callbacks import TrainerCallback, TrainerControl, TrainerState
from kd_edge.distill.config import DistillConfig

KEEP_CHECKPOINTS = 2


class Trainer:
    """Trains ``objective`` over the examples ``train_idx`` (indices into the training set)."""

    def __init__(self, objective: torch.nn.Module, train_idx: np.ndarray, cfg: DistillConfig, *, seed: int,
                 checkpoint_dir: Path, key: str, callbacks: list[TrainerCallback],
                 param_groups: list[dict] | None = None, evaluate_fn: Callable[[], dict[str, float]] | None = None):
        from accelerate import Accelerator, DistributedDataParallelKwargs

        self.cfg, self.seed, self.train_idx = cfg, seed, np.asarray(train_idx)
        self.checkpoint_dir, self.key, self.callbacks = checkpoint_dir, key, callbacks
        self.evaluate_fn = evaluate_fn
        # Parts of a model may take no part in the loss (BERT's pooler under mean pooling): let DDP
        # skip their gradients instead of waiting for them.
        # cpu=True on a machine without a GPU: Accelerate then joins the processes of a multi-process
        # launch over gloo (MULTI_CPU); with cpu=False it would run each process alone.
        self.accelerator = Accelerator(cpu=cfg.cpu or not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision,
                                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        self.world = self.accelerator.num_processes
        groups = param_groups or [{"params": [p for p in objective.parameters() if p.requires_grad], "lr": cfg.lr}]
        split_groups = []
        for g in groups:
            params = [p for p in g["params"] if p.requires_grad]
            split_groups += [{"params": [p for p in params if p.ndim >= 2], "lr": g["lr"], "weight_decay": cfg.weight_decay},
                             {"params": [p for p in params if p.ndim < 2], "lr": g["lr"], "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW([g for g in split_groups if g["params"]], lr=cfg.lr)
        self.global_batch = cfg.batch_size * cfg.grad_accum_steps * self.world
        self.steps_per_epoch = max(1, math.ceil(len(self.train_idx) / self.global_batch))
        self.max_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        warmup = int(cfg.warmup_ratio * self.max_steps)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(0.0, (self.max_steps - step) / max(1, self.max_steps - warmup))

        self.model, self.optimizer = self.accelerator.prepare(objective, optimizer)
        # The scheduler is stepped by hand once per optimizer step (Accelerate's wrapper would step it
        # once per process).
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(getattr(self.optimizer, "optimizer", self.optimizer), schedule)
        self.state = TrainerState(key=key, max_steps=self.max_steps, steps_per_epoch=self.steps_per_epoch)
        self.control = TrainerControl()

    # -- data order -------------------------------------------------------------------------------
    def batch_indices(self, step: int) -> list[np.ndarray]:
        """This process's micro-batches of example indices for optimizer step ``step``."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        perm = self.train_idx[np.random.default_rng([self.seed, epoch]).permutation(len(self.train_idx))]
        chunk = perm[pos * self.global_batch:(pos + 1) * self.global_batch]
        mine = chunk[self.accelerator.process_index::self.world]
        return [m for m in np.array_split(mine, self.cfg.grad_accum_steps) if len(m)]

    # -- checkpoints ------------------------------------------------------------------------------
    def _checkpoints(self) -> list[Path]:
        if not self.checkpoint_dir.is_dir():
            return []
        return sorted(p for p in self.checkpoint_dir.glob("step-*") if (p / "state.json").is_file())

    def save_checkpoint(self) -> Path:
        """Write model, optimizer, scheduler, RNG and loop state (main process), keep the last few."""
        from safetensors.torch import save_model

        self.accelerator.wait_for_everyone()
        path = self.checkpoint_dir / f"step-{self.state.step:07d}"
        if self.accelerator.is_main_process:
            with atomic_dir(path) as tmp:
                save_model(self.unwrapped_model(), str(tmp / "model.safetensors"))
                torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
                torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
                torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
                self.state.save(tmp / "state.json")
            for old in self._checkpoints()[:-KEEP_CHECKPOINTS]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return path

    def save_best(self) -> None:
        """Keep the current weights as the best so far (early stopping)."""
        from safetensors.torch import save_model

        if self.accelerator.is_main_process:
            with atomic_dir(self.checkpoint_dir / "best") as tmp:
                save_model(self.unwrapped_model(), str(tmp / "model.safetensors"))

    def load_best(self) -> bool:
        """Load the best weights kept by early stopping; False when there are none."""
        from safetensors.torch import load_model

        path = self.checkpoint_dir / "best" / "model.safetensors"
        if not path.is_file():
            return False
        load_model(self.unwrapped_model(), str(path))
        return True

    def resume(self) -> bool:
        """Load the newest checkpoint written for this same stage key; False when there is none."""
        from safetensors.torch import load_model

        for path in reversed(self._checkpoints()):
            state = TrainerState.load(path / "state.json")
            if state.key != self.key:
                continue
            load_model(self.unwrapped_model(), str(path / "model.safetensors"))
            self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
            self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
            torch.set_rng_state(torch.load(path / "rng.pt", weights_only=True)["torch"])
            state.resumed_from = state.step
            self.state = state
            return True
        return False

    # -- the loop ---------------------------------------------------------------------------------
    def _emit(self, event: str, *args) -> None:
        if self.accelerator.is_main_process:
            for cb in self.callbacks:
                getattr(cb, event)(self.state, self.control, *args)

    def _stop_everywhere(self) -> bool:
        """One process's decision to stop (early stopping) made by all, so none waits forever."""
        flag = torch.tensor(float(self.control.should_stop), device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, "max") > 0)

    def train(self, resume: bool = True) -> TrainerState:
        """Run (or, with ``resume``, continue) training to ``max_steps``; returns the final state."""
        if resume:
            self.resume()
        self._emit("on_train_begin")
        t0, seen0 = time.perf_counter(), self.state.samples_seen
        while self.state.step < self.max_steps:
            self.model.train()
            micro = self.batch_indices(self.state.step)
            logs: dict[str, float] = {}
            for i, idx in enumerate(micro):
                sync = i == len(micro) - 1
                ctx = self.accelerator.no_sync(self.model) if not sync else contextlib.nullcontext()
                with ctx, self.accelerator.autocast():
                    loss, terms = self.model(torch.from_numpy(idx))
                    self.accelerator.backward(loss / len(micro))
                for k, v in {"loss": float(loss.detach()), **terms}.items():
                    logs[k] = logs.get(k, 0.0) + v / len(micro)
            self.accelerator.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.state.step += 1
            self.state.samples_seen += self.global_batch
            logs = {k: float(self.accelerator.reduce(torch.tensor(v, device=self.accelerator.device), "mean"))
                    for k, v in logs.items()}
            logs["lr"] = self.scheduler.get_last_lr()[0]
            self._emit("on_step_end", logs)
            if self.state.step % self.cfg.log_every == 0 or self.state.step == self.max_steps:
                logs["samples_per_s"] = (self.state.samples_seen - seen0) / max(time.perf_counter() - t0, 1e-9)
                self.state.log_history.append({"step": self.state.step, **logs})
                self._emit("on_log", logs)
            if self.evaluate_fn and self.cfg.eval_every and (self.state.step % self.cfg.eval_every == 0
                                                             or self.state.step == self.max_steps):
                self.model.eval()
                with torch.no_grad():
                    metrics = self.evaluate_fn()
                self.state.log_history.append({"step": self.state.step, **metrics})
                self._emit("on_evaluate", metrics)
                self._emit("on_log", metrics)
                if self.control.should_save_best:
                    self.control.should_save_best = False
                    self.save_best()
            if self.state.step % self.cfg.checkpoint_every == 0:
                path = self.save_checkpoint()
                self._emit("on_save", path)
            if self._stop_everywhere():
                break
        self._emit("on_train_end")
        return self.state

    def unwrapped_model(self) -> torch.nn.Module:
        """The trained objective without Accelerate's wrappers."""
        return self.accelerator.unwrap_model(self.model)
