"""Gather a run's records (evaluation, parity, benchmarks, training) into one report document."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from kd_edge import __version__
from kd_edge.artifacts import read_json
from kd_edge.runfiles import RunFiles
from kd_edge.tasks.kinds import task_kind

SCHEMA = "kd-edge.report/1"


def _weights_mb(folder: Path) -> float | None:
    files = [f for f in Path(folder).rglob("*") if f.suffix in (".safetensors", ".bin", ".gguf")]
    return sum(f.stat().st_size for f in files) / 1e6 if files else None


def _bench_fields(doc: dict | None) -> dict[str, Any]:
    if not doc:
        return {}
    if "error" in doc:
        return {"bench_error": doc["error"]}
    lat = doc["latency"]
    reliability = doc.get("reliability") or {}
    fields = {"latency_p50_ms": lat["p50_ms"], "latency_p90_ms": lat["p90_ms"], "latency_p99_ms": lat["p99_ms"],
              "latency_p50_ci95_ms": lat["p50_ci95_ms"], "throughput_per_s": lat["throughput_per_s"],
              "latency_samples_ms": doc.get("samples_ms"),
              "latency_rounds_p50_ms": [r.get("p50_ms") for r in doc.get("rounds") or []] or None,
              "latency_reliable": reliability.get("reliable"), "latency_flags": reliability.get("flags") or [],
              "peak_rss_mb": doc.get("peak_rss_mb"), "load_ms": doc.get("load_ms"), "runtime_version": doc.get("runtime_version")}
    if doc.get("lm"):
        fields["lm"] = doc["lm"]
    if doc.get("signature"):
        fields["tflite_signature"] = doc["signature"] + (f" (input padded to {doc['padded_to']})" if doc.get("padded_to") else "")
    return fields


def _stored_as(recipe: dict, name: str, run_dir: Path) -> str:
    """How a PyTorch row's weights are stored on disk: "safetensors fp32", or a GGUF file's quantization."""
    if name == "teacher" and (recipe.get("teacher") or {}).get("gguf_file") and not (recipe["teacher"].get("prepare_head")):
        gguf = recipe["teacher"]["gguf_file"]
        import re

        quant = re.search(r"\.((?:I?Q\d[\w]*)|F16|BF16|F32)\.gguf$", gguf, re.I)
        return f"gguf {quant.group(1).upper() if quant else ''}".strip()
    from kd_edge.tasks.hub import stored_dtype

    files = RunFiles(run_dir)
    folder = files.student if name == "student" else Path((recipe.get("teacher") or {}).get("model", ""))
    if name != "student" and (recipe["teacher"].get("prepare_head") or not folder.is_dir()):
        folder = files.prepared_teacher if recipe["teacher"].get("prepare_head") else teacher_folder(recipe)
    return f"safetensors {stored_dtype(folder) or 'fp32'}" if folder is not None else "safetensors fp32"


def teacher_folder(recipe: dict) -> Path | None:
    """The teacher's folder (package: and hub references resolved), or None."""
    try:
        from kd_edge.tasks.hub import resolve_model_dir

        return resolve_model_dir(recipe["teacher"]["model"], revision=recipe["teacher"].get("revision"))
    except Exception:  # a report renders without it
        return None


def build_report(run_dir: Path, recipe: dict) -> dict[str, Any]:
    """The report document of a run folder (every file it reads is optional but eval/metrics.json)."""
    files = RunFiles(run_dir)
    is_lm = task_kind(recipe["task"]).is_lm
    evaluation = read_json(files.eval.metrics)
    bench = {}
    for f in files.bench.records():
        doc = read_json(f)
        bench[doc["name"]] = doc
    machine_file = files.bench.machine
    bench_machine = read_json(machine_file) if machine_file.is_file() else None
    macs_file = files.bench.macs
    macs = read_json(macs_file)["macs"] if macs_file.is_file() else {}
    models = evaluation["models"]
    metric = evaluation.get("quality_metric", "probe_accuracy")
    higher = evaluation.get("higher_is_better", True)
    rows: list[dict[str, Any]] = []
    skip = {"params"}
    student_verify = files.verify.student
    student_lm = read_json(student_verify) if student_verify.is_file() and is_lm else {}
    for name, values in models.items():
        kind = name if name in ("student", "baseline") else "teacher"
        size = _weights_mb(files.student if name == "student" else files.baseline) if kind != "teacher" else \
            (bench.get(name, {}).get("file_size_bytes", 0) / 1e6 or None)  # a teacher's size is what the runner measured
        extra = {"generation_tokens_per_s": student_lm.get("generation_tokens_per_s"),
                 "greedy_agreement": 1.0} if name == "student" and student_lm else {}
        rows.append({"name": name, "kind": kind, "format": "pytorch", "precision": "fp32", "runtime": "torch",
                     "params": values.get("params"), "file_size_mb": size,
                     "stored_as": _stored_as(recipe, name, run_dir),
                     **{k: v for k, v in values.items() if k not in skip}, **extra, **_bench_fields(bench.get(name))})
    rows.sort(key=lambda r: (("teacher", "student", "baseline").index(r["kind"]), r["name"]))
    for sidecar in files.artifacts.sidecars():
        info = read_json(sidecar)
        ver_path = files.verify.record(info["name"])
        ver = read_json(ver_path) if ver_path.is_file() else {}
        quality = {k: v for k, v in ver.items()
                   if k not in ("name", "format", "precision", "runtime", "passed", "reason", "fallback")}
        rows.append({"name": info["name"], "kind": "artifact", "format": info["format"], "precision": info["precision"],
                     "runtime": info["runtime"], "params": info["params"], "file_size_mb": info["size_bytes"] / 1e6,
                     "stored_as": info.get("stored_as") or f"{info['format']} {info['precision']}",
                     **quality, "fusions": info.get("fusions"), "fallback": ver.get("fallback"),
                     "external_data_note": info.get("external_data_note"), "parity_passed": ver.get("passed"), "parity_reason": ver.get("reason"),
                     **_bench_fields(bench.get(info["name"]))})
    for row in rows:
        row["macs"] = macs.get(row["name"], macs.get("student") if row["kind"] == "artifact" else None)
        doc = bench.get(row["name"])
        row["target"] = doc.get("target") if doc else None
        row["deployed_on"] = [f"{doc.get('target')} ({row['runtime']})"] if doc and "error" not in doc else []
    base = rows[0]
    seq = next((d.get("seq") for d in bench.values() if "error" not in d), None) or 1
    for row in rows:
        if base.get("latency_p50_ms") and row.get("latency_p50_ms"):
            row["speedup_p50"] = base["latency_p50_ms"] / row["latency_p50_ms"]
        if is_lm and row.get("throughput_per_s"):
            row["prefill_tokens_per_s"] = row["throughput_per_s"] * seq  # one forward pass over the prompt
        if base.get("params") and row.get("params"):
            row["params_ratio"] = row["params"] / base["params"]
        if base.get(metric) is not None and row.get(metric) is not None:
            row[f"{metric}_drop"] = (base[metric] - row[metric]) if higher else (row[metric] - base[metric])
            row[f"{metric}_ratio"] = row[metric] / base[metric] if base[metric] else None
        # sizes compare files as stored; against a teacher stored quantized (a 4-bit GGUF) that ratio says
        # nothing about the student, so it is left out and params_ratio compares the models
        if base.get("file_size_mb") and row.get("file_size_mb") and base.get("stored_as", "").endswith("fp32"):
            row["size_ratio"] = row["file_size_mb"] / base["file_size_mb"]
    environment = next((d["environment"] for d in bench.values() if "environment" in d), None)
    curve = []
    metrics_file = files.train.metrics
    if metrics_file.is_file():
        import json

        curve = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    summary = files.train.summary
    data_meta = files.data.meta
    any_bench = next((d for d in bench.values() if "error" not in d), {})
    return {
        "schema": SCHEMA, "kd_edge_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "name": recipe["name"], "title": (recipe.get("report") or {}).get("title") or recipe["name"],
        "task": recipe["task"], "teacher": recipe["teacher"]["model"], "quality_metric": metric,
        "higher_is_better": higher,
        "data": read_json(data_meta) if data_meta.is_file() else None,
        "evaluation": {"knn_k": evaluation["knn_k"], "n_test": evaluation["n_test"],
                       "n_test_labelled": evaluation.get("n_test_labelled")},
        "bench_settings": {"target": recipe["bench"]["target"], "batch": any_bench.get("batch"),
                           "seq": any_bench.get("seq"), "threads": any_bench.get("threads"),
                           "timed_runs": any_bench.get("timed_runs"), "lm": any_bench.get("lm_settings")},
        "environment": environment,
        "bench_machine": bench_machine,
        "rows": rows,
        "per_class": evaluation.get("per_class"),
        "slices": evaluation.get("slices"),
        "teacher_cache": evaluation.get("teacher_cache"),
        "teacher_provenance": _provenance(files, recipe),
        "student_build": _student_build(files),
        "samples": ({"threshold": evaluation.get("loop_threshold"), "prompts": evaluation["samples"]}
                    if evaluation.get("samples") is not None else None),
        "training": {"summary": read_json(summary) if summary.is_file() else None, "curve": curve},
    }


def _student_build(files: RunFiles) -> dict | None:
    """What the student stage recorded of how the student was made (pruned sizes, a trimmed vocabulary)."""
    from kd_edge.runfiles import STUDENT_META

    path = files.student / STUDENT_META
    if not path.is_file():
        return None
    meta = read_json(path)
    return {k: meta[k] for k in ("init", "teacher_layers", "pruned", "vocabulary", "params") if k in meta}


def _provenance(files: RunFiles, recipe: dict) -> dict | None:
    """A served teacher's provenance (the generate stage's record), or the terms a local teacher's recipe names."""
    meta = files.generated.meta
    served = read_json(meta).get("served") if meta.is_file() else None
    cache = files.teacher_cache.meta
    if served is None and cache.is_file():  # token-level KD: the teacher stage asked the server
        teachers = read_json(cache).get("teachers") or [{}]
        served = teachers[0].get("served")
    terms = recipe["teacher"].get("terms")
    if served:
        return {**{k: served.get(k) for k in ("endpoint", "served_model", "date", "terms", "sent", "stored")},
                "kind": "text" if meta.is_file() and read_json(meta).get("served") else "log-probabilities"}
    return {"terms": terms} if terms else None
