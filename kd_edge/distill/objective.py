"""The training objective: one module whose forward takes example indices and returns the loss.

It holds the student, the learned projections of intermediate losses, and, in ``live`` and
``mutual`` modes, the teachers. Teacher outputs come from the cache (offline) or from a forward pass
(live: frozen; mutual: trained too, with its own learning rate, learning from the labels and from the
student: Deep Mutual Learning, Zhang et al. 2018). Ensembles either average the teachers' softened
distributions into one target or add one term per teacher.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from kd_edge.distill import LOSSES, needs_of
from kd_edge.errors import ConfigError
from kd_edge.teachers import layers_needed
from kd_edge.runfiles import CacheReader


def _to_tensors(arrays: dict[str, np.ndarray], device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in arrays.items()}


def average_targets(outs: list[dict], weights: list[float], needs: str, temperature: float) -> dict:
    """One target from several teachers: the weighted mean of their temperature-softened
    distributions, as logits whose softmax at ``temperature`` is that mixture (or the weighted mean of
    their embeddings)."""
    w = torch.tensor(weights) / sum(weights)
    if needs == "pooled":
        return {"pooled": sum(wi * o["pooled"] for wi, o in zip(w.tolist(), outs))}
    if any("topk_indices" in o for o in outs):
        raise ConfigError("ensemble.combine: average needs full teacher logits; cached causal-LM teachers keep only "
                          "their top-k: use combine: per_teacher or distill.mode: live")
    probs = sum(wi * torch.softmax(o["logits"].float() / temperature, -1) for wi, o in zip(w.tolist(), outs))
    return {"logits": torch.log(probs.clamp(min=1e-12)) * temperature}


class Objective(nn.Module):
    """``forward(idx) -> (loss, logs)`` for the recipe's loss terms."""

    def __init__(self, recipe, task, student: nn.Module, meta: dict, cache: CacheReader,
                 teachers: list[nn.Module] | None = None, dev_idx: np.ndarray | None = None):
        super().__init__()
        self.recipe, self.task, self.meta, self.cache = recipe, task, meta, cache
        self.student = student
        self.mode = recipe.distill.mode
        self.live = nn.ModuleList(teachers or [])
        for t in self.live:
            t.requires_grad_(self.mode == "mutual")
        self.ids, self.labels, self.weights = cache.ids("train"), cache.labels("train"), cache.weights("train")
        self.pad_id = cache.meta["pad_id"]
        self.teacher_weights = [t["weight"] for t in cache.meta["teachers"]]
        self.n_teachers = len(self.teacher_weights)
        self.terms = [(c, LOSSES.get(c.name), needs_of(c.name)) for c in recipe.distill.losses]
        # what each term is called with: its parameters (the recipe's over the loss's defaults, resolved
        # once, not every step), and the learned projections for intermediate hidden-state losses
        self.term_kwargs = [{**c.params, **({"project": self._project(n)} if needs == "hidden" else {})}
                            for n, (c, _, needs) in enumerate(self.terms)]
        self.student_hidden = tuple(sorted({s for t in range(self.n_teachers) for s in layers_needed(recipe, "hidden", t)[0]}))
        self.teacher_hidden = [tuple(layers_needed(recipe, "hidden", t)[1]) for t in range(self.n_teachers)]
        self.attentions = any(needs == "attentions" for _, _, needs in self.terms)
        # Labels-only objectives (plain fine-tuning, the baseline of a comparison) read no teacher output.
        self.uses_teacher = self.mode == "mutual" or any(needs != "labels" for _, _, needs in self.terms)
        self.projections = nn.ModuleDict()
        s_width = student.config.hidden_size
        for n, (cfg, _, needs) in enumerate(self.terms):
            if needs != "hidden":
                continue
            t_width = cache.meta["teachers"][cfg.teacher or 0].get("hidden_size") or s_width
            if t_width != s_width:
                for s_layer, t_layer in cfg.param("layer_map"):
                    self.projections[f"{n}_{s_layer}_{t_layer}"] = nn.Linear(s_width, t_width)
        self.dev_idx = dev_idx
        self.on_policy = recipe.distill.on_policy
        self._on_policy_rng = np.random.default_rng([recipe.seed, 11])
        self.eos_id = getattr(student.generation_config, "eos_token_id", None) if self.on_policy else None
        if isinstance(self.eos_id, list):
            self.eos_id = self.eos_id[0] if self.eos_id else None

    # -- teacher outputs --------------------------------------------------------------------------------------
    def _teacher_outputs(self, batch, device) -> list[dict]:
        outs = []
        for i in range(self.n_teachers):
            if self.mode == "offline":
                outs.append(self.task.teacher_targets(_to_tensors(self.cache.batch(i, "train", batch.idx), device)))
                continue
            teacher = self.live[i]
            grad = torch.enable_grad() if self.mode == "mutual" else torch.no_grad()
            with grad:
                outs.append(self.task.forward(teacher, batch, meta=self.meta, hidden_layers=self.teacher_hidden[i],
                                              attentions=self.attentions and i == 0))
        return outs

    def _project(self, term: int):
        def project(s_layer: int, t_layer: int, h: torch.Tensor) -> torch.Tensor:
            key = f"{term}_{s_layer}_{t_layer}"
            return self.projections[key](h) if key in self.projections else h
        return project

    def _targets(self, cfg, needs: str, outs: list[dict]) -> list[tuple[float, dict]]:
        """(scale, teacher output) pairs a loss term is computed against."""
        if needs == "labels":
            return [(1.0, {})]
        if cfg.teacher is not None or needs in ("hidden", "attentions") or self.n_teachers == 1:
            return [(1.0, outs[cfg.teacher or 0])]
        combine = self.recipe.ensemble.combine if self.recipe.ensemble else "average"
        if combine == "per_teacher":
            total = sum(self.teacher_weights)
            return [(w / total, o) for w, o in zip(self.teacher_weights, outs)]
        return [(1.0, average_targets(outs, self.teacher_weights, needs, cfg.param("temperature") or 1.0))]

    # -- the loss ----------------------------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        device = next(self.student.parameters()).device
        idx = idx.cpu().numpy()
        on_policy = self.on_policy is not None and self._on_policy_rng.random() < self.on_policy.share
        if on_policy:  # the student's own continuations of the batch's prompts, scored by the live teacher
            from kd_edge.distill.on_policy import prompts_of, student_continuations

            seqs, weights = student_continuations(self.student, prompts_of(self.ids, idx, self.on_policy.prompt_tokens),
                                                  self.on_policy, self.pad_id, self.eos_id)
            batch = self.task.make_batch(seqs, np.arange(len(seqs)), self.pad_id, None, weights).to(device)
        else:
            batch = self.task.make_batch(self.ids, idx, self.pad_id, self.labels, self.weights).to(device)
        student_out = self.task.forward(self.student, batch, meta=self.meta, hidden_layers=self.student_hidden,
                                        attentions=self.attentions)
        outs = self._teacher_outputs(batch, device) if self.uses_teacher else []
        detached = [{k: (v.detach() if torch.is_tensor(v) else v) for k, v in o.items()} for o in outs]
        total = torch.zeros((), device=device)
        logs: dict[str, float] = {}
        for n, (cfg, fn, needs) in enumerate(self.terms):
            value = torch.zeros((), device=device)
            for scale, target in self._targets(cfg, needs, detached):
                value = value + scale * fn(student_out, target, batch.tensors, **self.term_kwargs[n])
            logs[f"loss_{cfg.name}" if f"loss_{cfg.name}" not in logs else f"loss_{cfg.name}_{n}"] = float(value.detach())
            total = total + cfg.weight * value
        if self.on_policy is not None:
            logs["on_policy"] = float(on_policy)
        if self.mode == "mutual":
            teacher_loss = self._mutual_teacher_loss(outs[0], student_out, batch)
            logs["loss_teacher"] = float(teacher_loss.detach())
            total = total + teacher_loss
        return total, logs

    def _mutual_teacher_loss(self, teacher_out: dict, student_out: dict, batch) -> torch.Tensor:
        """The co-trained teacher's loss: its labels' cross-entropy plus KL from the (detached) student."""
        kl, ce = LOSSES.get("kl"), LOSSES.get("ce")
        temperature = next((c.params.get("temperature", 1.0) for c, _, needs in self.terms if needs == "logits"), 1.0)
        peer = {"logits": student_out["logits"].detach()}
        return ce(teacher_out, {}, batch.tensors) + kl(teacher_out, peer, batch.tensors, temperature=temperature)

    # -- dev evaluation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate_dev(self) -> dict[str, float]:
        """The task's dev metric (``kind.dev_metric``): accuracy, perplexity or cosine to the teacher."""
        device = next(self.student.parameters()).device
        idx = self.dev_idx
        scores, weights = [], []
        for start in range(0, len(idx), 64):
            part = idx[start:start + 64]
            batch = self.task.make_batch(self.ids, part, self.pad_id, self.labels, self.weights).to(device)
            out = self.task.forward(self.student, batch, meta=self.meta)

            def teacher(part=part, batch=batch):
                if self.mode == "offline":
                    return torch.from_numpy(np.asarray(self.cache.field(0, "train", self.task.kind.output_field)[part])).to(device)
                return self.task.forward(self.live[0], batch, meta=self.meta)[self.task.kind.output_field]

            score, weight = self.task.dev_score(out, batch, teacher)
            scores.append(score)
            weights.append(weight)
        return {self.task.kind.dev_metric: self.task.dev_value(sum(scores) / max(sum(weights), 1e-9))}

    def param_groups(self, lr: float, teacher_lr: float | None) -> list[dict[str, Any]]:
        """The student and projections at ``lr``; a co-trained teacher at its own rate."""
        groups = [{"params": list(self.student.parameters()) + list(self.projections.parameters()), "lr": lr}]
        if self.mode == "mutual":
            groups.append({"params": list(self.live.parameters()), "lr": teacher_lr or lr / 10})
        return groups
