"""The ``data`` stage: read the source, filter, split into train and test, write them as JSONL."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from kd_edge.artifacts import StageContext, atomic_dir, write_json
from kd_edge.data.loaders import matches, read_rows
from kd_edge.errors import ArtifactError, ConfigError
from kd_edge.runfiles import DataFiles, RunFiles, write_jsonl
from kd_edge.tasks.kinds import task_kind

if TYPE_CHECKING:
    from kd_edge.config import Recipe


def _label(value: Any) -> int | str | None:
    """A label as read: an integer class id (``1``, ``"1"``, ``1.0``), a class name, or None (empty)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        return int(value)
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        return str(value).strip()
    if as_float != as_float:  # NaN: an empty cell as pandas writes it
        return None
    if as_float in (float("inf"), float("-inf")) or as_float != int(as_float):  # "inf", 0.5: a name, not an id
        return str(value).strip()
    return int(as_float)


def encode_labels(examples: list[dict[str, Any]], cfg) -> list[str] | None:
    """Turn every example's label into a class id, in place; return the class names when the labels
    are names (ids follow ``data.label_names``, else sorted order), None when they are ids."""
    found = [e["label"] for e in examples if e.get("label") is not None]
    names = sorted({v for v in found if isinstance(v, str)})
    if cfg.label_names:
        order = list(cfg.label_names)
        unknown = sorted({repr(v) for v in found if (isinstance(v, str) and v not in order)
                          or (isinstance(v, int) and not 0 <= v < len(order))})
        if unknown:
            raise ConfigError(f"the label column '{cfg.label_field}' holds {', '.join(unknown[:3])}, which "
                              f"data.label_names {order} does not name; add them there or fix the data")
    elif not names:
        bad = sorted({v for v in found if v < 0})
        if bad:
            raise ConfigError(f"the label column '{cfg.label_field}' holds the negative class id {bad[0]}; class "
                              "ids start at 0 (or use class names)")
        return None
    else:
        ints = sorted({v for v in found if isinstance(v, int)})
        if ints:
            raise ConfigError(f"the label column '{cfg.label_field}' mixes class ids ({ints[0]}) and names "
                              f"({names[0]!r}); use one kind, or list the names in id order in data.label_names")
        order = names
    index = {n: i for i, n in enumerate(order)}
    for e in examples:
        v = e.get("label")
        if isinstance(v, str):
            e["label"] = index[v]
    return order


def _column(rows: list[dict], field: str, key: str, source: str) -> None:
    if field not in rows[0]:
        raise ConfigError(f"{key} '{field}' is not a column of '{source}' "
                          f"(columns: {', '.join(map(str, rows[0]))}); set {key}")


def _rationale_example(r: dict, cfg) -> dict[str, Any] | None:
    """An example of prompt -> rationale -> answer segments with their loss weights (0 for the prompt)."""
    prompt = r.get(cfg.prompt_field)
    if not isinstance(prompt, str) or not prompt.strip():
        return None
    if cfg.source == "teacher":
        return {"prompt": prompt, "text": prompt, "label": None}
    rationale, answer = r.get(cfg.rationale_field), r.get(cfg.answer_field)
    if not isinstance(rationale, str) or not isinstance(answer, str):
        return None
    segments = [[prompt.rstrip() + "\n", 0.0], [rationale.strip() + "\n", cfg.rationale_weight],
                [answer.strip(), cfg.answer_weight]]
    return {"segments": segments, "text": "".join(s for s, _ in segments), "label": None}


def load_examples(recipe: "Recipe") -> list[dict[str, Any]]:
    """Rows of the source after filtering and sampling, as {"text", "label"} dicts (rationale
    recipes: with "segments" [[text, weight], ...] or a "prompt" for the teacher to answer)."""
    cfg = recipe.data
    rationale = recipe.distill.rationale
    rows = read_rows(cfg)
    if not rows:
        raise ArtifactError(f"data.source '{cfg.source}' holds no rows; give it some text")
    if rationale:
        _column(rows, rationale.prompt_field, "distill.rationale.prompt_field", cfg.source)
        if rationale.source == "data":
            _column(rows, rationale.rationale_field, "distill.rationale.rationale_field", cfg.source)
            _column(rows, rationale.answer_field, "distill.rationale.answer_field", cfg.source)
    else:
        _column(rows, cfg.text_field, "data.text_field", cfg.source)
    rows = [r for r in rows if matches(r, cfg.where)]
    if not rows:
        raise ArtifactError(f"no row of '{cfg.source}' matches data.where={cfg.where}; loosen the filter")
    if cfg.max_samples is not None and len(rows) > cfg.max_samples:
        rows = random.Random(recipe.seed).sample(rows, cfg.max_samples)
    keep = sorted({s.column for s in recipe.evaluate.slices if s.column})
    takes_labels = task_kind(recipe.task).takes_label_column
    missing = [c for c in keep if c not in rows[0]]
    if missing:
        raise ConfigError(f"evaluate.slices names column '{missing[0]}', which is not a column of '{cfg.source}' "
                          f"(columns: {', '.join(map(str, rows[0]))})")
    examples = []
    for i, r in enumerate(rows):
        if rationale:
            example = _rationale_example(r, rationale)
            if example:
                examples.append(example)
            continue
        text = r.get(cfg.text_field)
        if not isinstance(text, str) or not text.strip():
            continue
        label = _label(r.get(cfg.label_field)) if cfg.label_field and takes_labels else None
        example = {"text": text, "label": label}
        if keep:
            example["columns"] = {c: r.get(c) for c in keep}
        examples.append(example)
    if len(examples) < 4:
        raise ArtifactError(f"data.source '{cfg.source}' has only {len(examples)} non-empty texts after filtering; "
                            "kd-edge needs at least a few for training and testing")
    return examples


def read_examples(recipe: "Recipe") -> tuple[list[dict[str, Any]], list[str] | None]:
    """``load_examples`` with labels as class ids, and the class names when the data names them."""
    examples = load_examples(recipe)
    return examples, encode_labels(examples, recipe.data)


def split(examples: list[dict[str, Any]], test_size: float, seed: int) -> tuple[list, list]:
    """Shuffle with ``seed`` and cut off the test split (fraction or count)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_test = int(test_size) if test_size >= 1 else max(1, round(len(examples) * test_size))
    if n_test >= len(examples):
        raise ConfigError(f"data.test_size={test_size} leaves no training rows out of {len(examples)}; lower it")
    return [examples[i] for i in order[n_test:]], [examples[i] for i in order[:n_test]]


def run(recipe: "Recipe", ctx: StageContext) -> None:
    """Write data/train.jsonl, data/test.jsonl and data/meta.json."""
    examples, names = read_examples(recipe)
    train, test = split(examples, recipe.data.test_size, recipe.seed)
    labels = sorted({r["label"] for r in train + test if r["label"] is not None})
    with atomic_dir(RunFiles(ctx.run_dir).data.path) as folder:
        out = DataFiles(folder)
        write_jsonl(out.train, train)
        write_jsonl(out.test, test)
        write_json(out.meta, {
            "source": recipe.data.source, "n_train": len(train), "n_test": len(test),
            "labels": labels, "label_names": names, "n_labelled_train": sum(r["label"] is not None for r in train),
            "n_labelled_test": sum(r["label"] is not None for r in test),
        })
