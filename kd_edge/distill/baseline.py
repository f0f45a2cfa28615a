"""The ``baseline`` stage: the same student trained without the teacher, to show what the teacher bought.

Reads student_init/ and teacher_cache/ (only its token ids: the same training texts, in the same
order), trains with the next-token loss alone (``ce``) and the distill stage's steps, batch, learning
rate and seed, and writes baseline/ (the model) and baseline_train/ (its metrics). The evaluate stage
measures it beside the distilled student; the report puts both side by side. Causal LMs only
(``distill.baseline``, on by default for them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kd_edge.artifacts import StageContext
from kd_edge.distill.run import train_student
from kd_edge.runfiles import RunFiles

if TYPE_CHECKING:
    from kd_edge.config import Recipe


def baseline_recipe(recipe: "Recipe") -> "Recipe":
    """``recipe`` with the teacher's losses replaced by the next-token loss, trained offline: the same
    student, data, steps and seed, no teacher."""
    from kd_edge.distill.config import LossConfig

    distill = recipe.distill.model_copy(update={"losses": [LossConfig(name="ce")], "mode": "offline"})
    return recipe.model_copy(update={"distill": distill})


def run(recipe: "Recipe", ctx: StageContext) -> None:
    """Train student_init/ into baseline/ with the next-token loss alone."""
    files = RunFiles(ctx.run_dir)
    train_student(baseline_recipe(recipe), ctx, files.baseline, files.baseline_train, "baseline")
