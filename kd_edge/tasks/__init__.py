"""Task adapters: what a task loads, distills, measures and exports. Chosen by ``recipe.task``."""

from __future__ import annotations

from kd_edge.registry import Registry

TASKS: Registry = Registry("task")
TASKS.declare("sentence_embedding", "kd_edge.tasks.embedding:SentenceEmbeddingTask",
              requires=("torch", "transformers"),
              summary="Sentence embeddings (pooled encoder output), compared by cosine, neighbours and a probe.")
