"""Task adapters: what a task loads, distills, measures and exports. Chosen by ``recipe.task``.

The registry is made from the kinds (``tasks/kinds.py``): one list of tasks.
"""

from __future__ import annotations

from kd_edge.registry import Registry
from kd_edge.tasks.kinds import KINDS

TASKS: Registry = Registry("task")
for _kind in KINDS.values():
    TASKS.declare(_kind.name, _kind.adapter, requires=("torch", "transformers"), summary=_kind.summary, kind=_kind)
