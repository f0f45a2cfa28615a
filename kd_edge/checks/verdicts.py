"""The verdict of an exported file: fp32 by max |Δ| against the float64 student, lower precisions by
the drop of the task metric (or agreement without labels); shared by encoders and causal LMs."""

from __future__ import annotations

from kd_edge.checks.reference import fp32_reason


def verdict(info: dict, record: dict, student: dict, metric: str, cfg) -> tuple[bool, str]:
    """Pass/fail of one artifact, and why: fp32 by max |Δ|, lower precisions (fp16, int8, int4) by the drop
    of the task metric (its budget by the precision's bits) against the PyTorch student (or, without labels, by agreement with it)."""
    if info["precision"] == "fp32":
        return fp32_reason(record, student.get("pytorch_fp32_max_abs_diff"))
    if metric in record and metric in student:
        from kd_edge.formats import precision_of

        budget = cfg.max_metric_drop(precision_of(info).bits)
        drop = metric_drop(student, record, metric)
        ok = drop <= budget
        if metric == "perplexity":  # a relative increase
            return ok, f"perplexity {drop * 100:+.2f} % {'≤' if ok else '>'} +{budget * 100:.1f} %"
        name = metric.replace("_", " ")
        return ok, f"{name} drop {drop * 100:+.2f} pt {'≤' if ok else '>'} {budget * 100:.1f} pt"
    ok = record["agreement_with_student"] >= 0.99
    return ok, f"agreement with student {record['agreement_with_student']:.4f} {'≥' if ok else '<'} 0.99"


def metric_drop(reference: dict, record: dict, metric: str) -> float:
    """How much worse ``record`` is than ``reference`` on ``metric`` (positive = worse; perplexity as a
    relative increase)."""
    if metric == "perplexity":
        return record[metric] / reference[metric] - 1.0
    return reference[metric] - record[metric]
