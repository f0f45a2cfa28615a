"""The student's model card (``student/README.md``), written by the report stage from the report
document: what the student was distilled from and on what, under which licenses, how, and the
report's key figures (quality against the teacher; every exported file's size, parity and speed).

The card belongs to the report stage although it lies in the distill stage's folder (runfiles.py:
a path a stage names inside another stage's folder is that stage's own), so writing it never makes
the student look changed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from kd_edge.tasks.kinds import task_kind

PIPELINE_TAGS = {"pooled": "sentence-similarity", "logits": "text-classification"}


def front_matter_license(folder: Path | None) -> str | None:
    """The ``license:`` of a model folder's own card (README.md front matter), or None."""
    card = folder / "README.md" if folder else None
    if card is None or not card.is_file():
        return None
    text = card.read_text(errors="replace")
    head = text.split("---", 2)[1] if text.startswith("---") and text.count("---") >= 2 else ""
    found = re.search(r"^license:\s*(\S+)", head, re.M)
    return found.group(1) if found else None


def data_license(source: str) -> str | None:
    """The license of a bundled data set, from its README (``License: ...``), or None."""
    if not source.startswith("bundled:"):
        return None
    readme = Path(__file__).resolve().parent.parent / "data" / source.split(":", 1)[1] / "README.md"
    if not readme.is_file():
        return None
    found = re.search(r"^License:\s*([^\s(]+)", readme.read_text(errors="replace"), re.M)
    return found.group(1).rstrip(".") if found else None


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def model_card(report: dict, recipe: dict, teacher_dir: Path | None, meta: dict) -> str:
    """The card's Markdown."""
    kind = task_kind(report["task"])
    teacher = report.get("teacher") or recipe["teacher"]["model"]
    t_license = front_matter_license(teacher_dir)
    source = (report.get("data") or {}).get("source") or recipe["data"].get("source", "")
    d_license = data_license(source)
    rows = {r["name"]: r for r in report["rows"]}
    student, base = rows.get("student", {}), report["rows"][0]
    metric = report.get("quality_metric")
    tag = "text-generation" if kind.is_lm else PIPELINE_TAGS.get(kind.output_field, "feature-extraction")
    front = ["---", f"license: {t_license or 'other'}", "library_name: " + ("sentence-transformers"
                                                                             if kind.output_field == "pooled" else "transformers"),
             f"pipeline_tag: {tag}", "tags:", "- kd-edge", "- knowledge-distillation", f"- {kind.name.replace('_', '-')}"]
    if re.fullmatch(r"[\w.-]+/[\w.-]+", teacher):  # a Hugging Face id
        front.append(f"base_model: {teacher}")
    front.append("---")
    data = report.get("data") or {}
    training = (report.get("training") or {}).get("summary") or {}
    losses = ", ".join(f"{loss['name']} (weight {loss.get('weight', 1)})" for loss in recipe["distill"].get("losses", []))
    params = student.get("params") or meta.get("params")
    teacher_size = f"{base['params'] / 1e6:.1f} M parameters" if base.get("params") else "size unknown"
    lines = [*front, "", f"# {report.get('title') or report.get('name')}: a student distilled from {teacher}", "",
             f"Made by kd-edge {report.get('kd_edge_version')} on {str(report.get('created', ''))[:10]} "
             f"(task {kind.name}). Every figure below is from this run's `report.json`.", "",
             "## How it was made", "",
             f"- **Teacher:** {teacher} ({teacher_size}; "
             f"license: {t_license or 'not stated in its folder: check it before you ship'})",
             f"- **Student:** {params / 1e6:.1f} M parameters" + (f", {params / base['params']:.2f}× the teacher's"
                                                                     if params and base.get("params") else "")
             + (f"; built from the teacher's layers {meta['teacher_layers']}" if meta.get("teacher_layers") else "")
             + (f"; pooling {meta['pooling']}{', normalized' if meta.get('normalize') else ''}"
                if kind.output_field == "pooled" and meta.get("pooling") else ""),
             f"- **Data:** {source} ({_fmt(data.get('n_train'))} training texts, {_fmt(data.get('n_test'))} held out; "
             f"license: {d_license or 'not recorded by kd-edge: state your data license'})",
             f"- **Distillation:** {losses or 'see the recipe'}; {_fmt(training.get('steps'))} steps"
             + (f", final loss {_fmt((training.get('final') or {}).get('loss'))}" if training.get("final") else ""),
             "", "## Key figures", ""]
    # quality is the held-out evaluation of the PyTorch models; a file is compared with the student
    # (verify: max |Δ| and its verdict), on a subset, so its metric is not put in the same column
    header = ["model", "stored as", "size MB", f"{metric or 'quality'} (held out)", "max \\|Δ\\| to student", "parity",
              "p50 ms", "speed-up", "peak MB"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in report["rows"]:
        file = r.get("kind") == "artifact"
        parity = {True: "pass", False: "FAIL", None: "–"}[r.get("parity_passed")]
        lines.append("| " + " | ".join([r["name"], r.get("stored_as") or f"{r['format']} {r['precision']}",
                                        _fmt(r.get("file_size_mb")), "–" if file else _fmt(r.get(metric)),
                                        _fmt(r.get("max_abs_diff")) if file else "–", parity,
                                        _fmt(r.get("latency_p50_ms")), _fmt(r.get("speedup_p50")),
                                        _fmt(r.get("peak_rss_mb"))]) + " |")
    env = report.get("environment") or {}
    bench = report.get("bench_settings") or {}
    lines += ["", f"Latency: {bench.get('target', '?')} target, {env.get('cpu_model', '?')} ({env.get('machine', '?')}), "
              f"{bench.get('threads') or '-'} threads, batch {bench.get('batch')}, {bench.get('seq')} tokens; "
              "speed-up against the first row."]
    unreliable = (report.get("bench_machine") or {}).get("unreliable") or []
    if unreliable:
        lines.append(f"Timings of {', '.join(unreliable)} were taken on a busy machine: measure again before you rely on them.")
    gate = report.get("gate")
    if gate:
        lines.append(f"Gate: {'PASSED' if gate.get('passed') else 'FAILED'} ({gate.get('n_passed')}/{gate.get('n_budgets')} budgets).")
    lines += ["", "## Use", "", "```python"]
    if kind.output_field == "pooled":
        lines += ["from sentence_transformers import SentenceTransformer", "", 'model = SentenceTransformer("student")',
                  'embeddings = model.encode(["A sentence to embed."])']
    elif kind.is_lm:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  'tokenizer = AutoTokenizer.from_pretrained("student")',
                  'model = AutoModelForCausalLM.from_pretrained("student")',
                  'ids = tokenizer("The weather today", return_tensors="pt")',
                  "print(tokenizer.decode(model.generate(**ids, max_new_tokens=32)[0]))"]
    else:
        lines += [f"from transformers import {kind.auto_class}, AutoTokenizer", "",
                  'tokenizer = AutoTokenizer.from_pretrained("student")',
                  f'model = {kind.auto_class}.from_pretrained("student")']
    lines += ["```", ""]
    files = [r for r in report["rows"] if r.get("kind") == "artifact"]
    if files:
        lines += ["The exported files are in `../artifacts/` (each with a `.json` sidecar saying how it was made and "
                  "what it takes): " + ", ".join(f"`{r['name']}` ({r['runtime']})" for r in files) + ".", ""]
    lines += ["## Licenses", "",
              f"The student's weights are derived from the teacher's: the teacher's license "
              f"({t_license or 'unknown'}) applies to them. The training data's license: {d_license or 'unknown'}.", ""]
    return "\n".join(lines)
