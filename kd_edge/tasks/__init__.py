"""Task adapters: what a task loads, distills, measures and exports. Chosen by ``recipe.task``."""

from __future__ import annotations

from kd_edge.registry import Registry

TASKS: Registry = Registry("task")
_T = ("torch", "transformers")
TASKS.declare("sentence_embedding", "kd_edge.tasks.embedding:SentenceEmbeddingTask", requires=_T,
              summary="Sentence embeddings (pooled encoder output), compared by cosine, neighbours and a probe.",
              labels=None, metric="probe_accuracy")
TASKS.declare("sequence_classification", "kd_edge.tasks.classification:SequenceClassificationTask", requires=_T,
              summary="Text classification: class logits, accuracy and agreement with the teacher.",
              labels="class", metric="accuracy")
TASKS.declare("causal_lm", "kd_edge.tasks.causal_lm:CausalLMTask", requires=_T,
              summary="Causal language model: next-token logits (top-k cached), perplexity.",
              labels="token", metric="perplexity")
