"""What changed between two reports: per row present in both, the key figures before and after."""

from __future__ import annotations

from kd_edge.gate import lower_is_better

FIGURES = ("file_size_mb", "latency_p50_ms", "latency_p90_ms", "speedup_p50", "peak_rss_mb")


def compare(old: dict, new: dict) -> dict:
    """Rows of both reports matched by name (and target), with each figure's old and new value and
    whether it got better or worse."""
    metric = new.get("quality_metric", "probe_accuracy")
    figures = FIGURES + (metric, "max_abs_diff")
    key = lambda r: (r["name"], r.get("target"))  # noqa: E731
    before = {key(r): r for r in old["rows"]}
    rows = []
    for r in new["rows"]:
        o = before.get(key(r))
        if o is None:
            rows.append({"name": r["name"], "status": "new"})
            continue
        changes = {}
        for f in figures:
            a, b = o.get(f), r.get(f)
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
                delta = b - a
                better = (delta < 0) if lower_is_better(f) else (delta > 0)
                changes[f] = {"old": a, "new": b, "change": delta / abs(a) if a else None,
                              "verdict": "same" if delta == 0 else ("better" if better else "worse")}
        rows.append({"name": r["name"], "status": "both", "figures": changes})
    now = {key(r) for r in new["rows"]}
    gone = [k[0] for k in before if k not in now]
    return {"old": old.get("name"), "new": new.get("name"), "quality_metric": metric, "rows": rows, "removed": gone}


def to_markdown(diff: dict) -> str:
    """The comparison as a Markdown table (old → new, relative change, better / worse)."""
    lines = [f"# kd-edge: {diff['old']} → {diff['new']}", "", "| row | figure | before | after | change | |",
             "|---|---|---:|---:|---:|---|"]
    for row in diff["rows"]:
        if row["status"] == "new":
            lines.append(f"| {row['name']} | (new row) | | | | |")
            continue
        for f, c in row["figures"].items():
            change = "—" if c["change"] is None else f"{c['change'] * 100:+.1f} %"
            mark = {"better": "better", "worse": "**worse**", "same": ""}[c["verdict"]]
            lines.append(f"| {row['name']} | {f} | {c['old']:.4g} | {c['new']:.4g} | {change} | {mark} |")
    for name in diff["removed"]:
        lines.append(f"| {name} | (removed) | | | | |")
    return "\n".join(lines) + "\n"
