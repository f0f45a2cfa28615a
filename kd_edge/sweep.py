"""``kd-edge sweep``: run a recipe's variants over a grid of keys, on one shared teacher cache, and find
the smallest file that still meets the recipe's gate.

Each variant is an ordinary run (``<out>/<variant>/``) of the recipe with the grid's values set, so it
resumes as a run does: a killed sweep, started again with the same command, skips every stage already
done in every variant. The teacher stage's key does not depend on the student, so variants that differ
only in the student, training or export share one cache (``teacher.cache_dir`` = ``<out>/teacher_cache``,
unless the recipe names its own). ``<out>/sweep.json`` records the grid and each variant's state;
``<out>/sweep_report.{json,md,html}`` compares them: every exported file of every variant with its
size, its latency on the recipe's target and its quality, the Pareto front of the three (no other file
is at least as good in all and better in one), and the smallest file of a variant whose gate passed.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from kd_edge.errors import ConfigError, KdEdgeError

SWEEP_FILE = "sweep.json"
REPORT_NAME = "sweep_report"
SHARED_CACHE = "teacher_cache"


@dataclass(frozen=True)
class Axis:
    """One ``--grid key=v1,v2`` option."""

    key: str
    values: tuple[Any, ...]


def _schema_field(key: str):
    """The recipe schema's field at a dotted key, or a ConfigError naming the keys that exist there."""
    from kd_edge.config import Recipe

    model: Any = Recipe
    parts = key.split(".")
    for depth, part in enumerate(parts):
        fields = getattr(model, "model_fields", None)
        if fields is None:
            raise ConfigError(f"--grid '{key}': '{'.'.join(parts[:depth])}' is a value, not a section; grid a key that "
                              "exists, e.g. --grid distill.lr=1e-4,5e-4")
        if part not in fields:
            where = ".".join(parts[:depth]) or "the recipe"
            raise ConfigError(f"--grid '{key}': {where} has no key '{part}'; keys there: {', '.join(fields)}")
        model = _section_model(fields[part].annotation)
    return model


def _section_model(annotation):
    """The pydantic model a field holds (through Optional), or None for a plain value."""
    import typing

    from pydantic import BaseModel

    candidates = [annotation, *typing.get_args(annotation)]
    for c in candidates:
        if isinstance(c, type) and issubclass(c, BaseModel):
            return c
    return None


def parse_axis(text: str) -> Axis:
    """``key=v1,v2,...`` (each value YAML; a value holding commas: ``key=[[2, 5], [1, 5]]``)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or not raw.strip():
        raise ConfigError(f"--grid '{text}' has no values; write key=v1,v2, e.g. --grid student.intermediate_size=512,768")
    _schema_field(key)
    try:
        if raw.strip().startswith("["):
            values = yaml.safe_load(raw)
            if not isinstance(values, list):
                raise ConfigError(f"--grid '{text}': a bracketed value must be a list of values")
        else:
            values = [yaml.safe_load(v) if v.strip() else None for v in raw.split(",")]
    except yaml.YAMLError as e:
        raise ConfigError(f"--grid '{text}': the values are not valid YAML; quote them or write a list") from e
    if len(values) != len({repr(v) for v in values}):
        raise ConfigError(f"--grid '{text}' lists a value twice; list each once")
    return Axis(key, tuple(values))


def _slug(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "none"


def variants(axes: list[Axis]) -> list[dict[str, Any]]:
    """Every combination of the grid's values: {name, values: {key: value}}, in the grid's order."""
    if not axes:
        raise ConfigError("kd-edge sweep needs at least one --grid key=v1,v2; e.g. --grid student.intermediate_size=512,768")
    keys = [a.key for a in axes]
    if len(keys) != len(set(keys)):
        raise ConfigError(f"--grid names {sorted(k for k in keys if keys.count(k) > 1)[0]} twice; give each key once")
    short = [k.rsplit(".", 1)[-1] for k in keys]
    labels = short if len(set(short)) == len(short) else [k.replace(".", "-") for k in keys]
    out = []
    for combo in itertools.product(*(a.values for a in axes)):
        name = "_".join(f"{label}-{_slug(v)}" for label, v in zip(labels, combo))
        out.append({"name": name, "values": dict(zip(keys, combo))})
    return out


def _set_key(data: dict, key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            if node.get(part) is not None:
                raise ConfigError(f"--grid '{key}': '{part}' is a value in this recipe, not a section")
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def variant_recipes(base: dict, source: str, grid: list[dict], out: Path) -> list[tuple[dict, Any]]:
    """Each variant's recipe, validated against its teacher and data before any runs (one line naming the
    variant when one is wrong)."""
    import copy

    from kd_edge.config import recipe_from_dict
    from kd_edge.preflight import resolve

    shared = (base.get("teacher") or {}).get("cache_dir") or str((out / SHARED_CACHE).resolve())
    recipes = []
    for v in grid:
        data = copy.deepcopy(base)
        for key, value in v["values"].items():
            _set_key(data, key, value)
        data.setdefault("teacher", {})["cache_dir"] = shared
        data["name"] = f"{base.get('name', 'sweep')}-{v['name']}"
        try:
            recipe = resolve(recipe_from_dict(data, source))
        except KdEdgeError as e:
            raise type(e)(f"variant {v['name']}: {e}") from e
        recipes.append((v, recipe))
    return recipes


# -- the report -------------------------------------------------------------------------------------------------

def _deployed_rows(report: dict) -> list[dict]:
    return [r for r in report["rows"] if r.get("kind") == "artifact" and r.get("file_size_mb") is not None]


def collect(out: Path, state: dict) -> dict:
    """The sweep report: every variant's figures, the Pareto front of its exported files and the smallest
    file of a variant that met its gate."""
    from kd_edge.artifacts import read_json
    from kd_edge.gate import check_row
    from kd_edge.runfiles import RunFiles

    metric, higher, points, rows = None, True, [], []
    for number, v in enumerate(state["variants"], 1):
        path = RunFiles(out / v["name"]).report_json
        entry = {"name": v["name"], "tag": f"v{number}", "values": v["values"], "status": v["status"],
                 "error": v.get("error")}
        if v["status"] == "done" and path.is_file():
            report = read_json(path)
            metric, higher = report["quality_metric"], report.get("higher_is_better", True)
            student = next(r for r in report["rows"] if r["kind"] == "student")
            gate = report.get("gate") or {}
            entry.update({"params": student.get("params"), "quality": student.get(metric),
                          "quality_ratio": student.get(f"{metric}_ratio"),
                          "gate_passed": gate.get("passed") if gate.get("n_budgets") else None,
                          "gate_broken": [f"{check_row(c)}.{c['metric']} {_fmt(c['value'], 4)} (needs {c['bound']})"
                                          for c in gate.get("checks", []) if c.get("passed") is False],
                          "files": []})
            for r in _deployed_rows(report):
                f = {"variant": v["name"], "tag": entry["tag"], "file": r["name"], "size_mb": r["file_size_mb"],
                     "latency_p50_ms": r.get("latency_p50_ms"), "speedup_p50": r.get("speedup_p50"),
                     "quality": r.get(metric), "quality_ratio": r.get(f"{metric}_ratio"),
                     "parity_passed": r.get("parity_passed"), "latency_reliable": r.get("latency_reliable"),
                     "gate_passed": entry["gate_passed"]}
                entry["files"].append(f)
                if None not in (f["latency_p50_ms"], f["quality"]):
                    points.append(f)
            teacher = next((r for r in report["rows"] if r["kind"] == "teacher"), None)
            if teacher:
                entry["teacher_quality"], entry["teacher_latency_p50_ms"] = teacher.get(metric), teacher.get("latency_p50_ms")
        rows.append(entry)

    def better_or_equal(a, b):
        qa, qb = a["quality"], b["quality"]
        return (qa >= qb if higher else qa <= qb) and a["latency_p50_ms"] <= b["latency_p50_ms"] and a["size_mb"] <= b["size_mb"]

    for p in points:
        p["pareto"] = not any(better_or_equal(o, p) and not better_or_equal(p, o) for o in points if o is not p)
    passing = [p for p in points if p["gate_passed"] and p["parity_passed"] is not False]
    best = min(passing, key=lambda p: (p["size_mb"], p["latency_p50_ms"]), default=None)
    return {"schema": 1, "recipe": state["recipe"], "overrides": state["overrides"], "grid": state["grid"],
            "quality_metric": metric, "higher_is_better": higher, "variants": rows, "files": points,
            "smallest_passing": best, "target": state.get("target"),
            "n_done": sum(v["status"] == "done" for v in state["variants"]), "n_variants": len(state["variants"])}


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "pass" if v else "FAIL"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def _ratio(v: Any) -> str:
    return "—" if v is None else f"{v * 100:.1f} %"


def _busy(file: dict) -> str:
    """`` *`` after a latency its run marked unreliable (a busy machine, rounds that disagree)."""
    return " *" if file.get("latency_reliable") is False else ""


BUSY_NOTE = ("* measured on a busy machine or with rounds that disagree (the variant's report.md says which); "
             "time it again on a quiet one before trusting the speed-up.")


def _value(v: Any) -> str:
    """A grid value as the recipe spells it (true / false, not the verdict words ``_fmt`` gives a bool)."""
    return str(v).lower() if isinstance(v, bool) else _fmt(v)


def _values(variant: dict) -> str:
    """A variant's grid values, each key by its last part: ``intermediate_size=192, quantization_aware=—``."""
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={_value(x)}" for k, x in variant["values"].items())


def summary_lines(doc: dict) -> list[str]:
    """What the sweep found, in a few sentences (printed and at the top of the reports)."""
    lines = [f"{doc['n_done']} of {doc['n_variants']} variants done; "
             f"{sum(1 for p in doc['files'] if p.get('pareto'))} of {len(doc['files'])} exported files on the "
             f"size/latency/{doc['quality_metric']} Pareto front."]
    best = doc["smallest_passing"]
    if best:
        lines.append(f"Smallest file that meets the gate: {best['variant']}/{best['file']}, {best['size_mb']:.2f} MB, "
                     f"p50 {best['latency_p50_ms']:.2f} ms ({_fmt(best['speedup_p50'])}× the teacher), "
                     f"{doc['quality_metric']} {_fmt(best['quality'], 4)} ({_ratio(best['quality_ratio'])} of the teacher's)"
                     + ("; its timing is unreliable (*)." if _busy(best) else "."))
    elif any(v.get("gate_passed") is not None for v in doc["variants"]):
        lines.append("No variant meets the recipe's gate.")
    else:
        lines.append("The recipe has no gate budgets: no variant is picked.")
    failed = [v for v in doc["variants"] if v["status"] == "failed"]
    if failed:
        lines.append("Failed: " + "; ".join(f"{v['name']} ({v['error']})" for v in failed) + ".")
    return lines


def to_markdown(doc: dict) -> str:
    m = doc["quality_metric"]
    head = ["# kd-edge sweep", "", *summary_lines(doc), "",
            "Grid: " + "; ".join(f"`{k}` = {', '.join(_value(x) for x in vals)}" for k, vals in doc["grid"].items()), "",
            "## Variants", "", f"| | values | status | params | student {m} | of teacher | gate | broken budgets |",
            "|---|---|---|---:|---:|---:|---|---|"]
    for v in doc["variants"]:
        head.append(f"| {v['tag']} | {_values(v)} | {v['status']} | {_fmt(v.get('params'))} | "
                    f"{_fmt(v.get('quality'), 4)} | {_ratio(v.get('quality_ratio'))} | {_fmt(v.get('gate_passed'))} | "
                    f"{'; '.join(v.get('gate_broken') or [])} |")
    head += ["", "## Exported files", "", f"| | file | MB | p50 ms | speed-up | {m} | of teacher | parity | Pareto |",
             "|---|---|---:|---:|---:|---:|---:|---|---|"]
    for p in sorted(doc["files"], key=lambda p: p["size_mb"]):
        head.append(f"| {p['tag']} | {p['file']} | {p['size_mb']:.2f} | {p['latency_p50_ms']:.3g}{_busy(p)} | "
                    f"{_fmt(p['speedup_p50'])}× | {_fmt(p['quality'], 4)} | {_ratio(p['quality_ratio'])} | "
                    f"{_fmt(p['parity_passed'])} | {'yes' if p.get('pareto') else ''} |")
    if any(_busy(p) for p in doc["files"]):
        head += ["", BUSY_NOTE]
    return "\n".join(head) + "\n"


def _scatter(doc: dict, x_key: str, x_label: str) -> str:
    import html
    import math

    pts = doc["files"]
    if len(pts) < 2:
        return "<p class='muted'>fewer than two files measured</p>"
    width, height, pad = 620, 320, 56
    xs, ys = [p[x_key] for p in pts], [p["quality"] for p in pts]
    x0, x1 = min(xs), max(xs)
    log = x1 / max(x0, 1e-9) > 8
    fx = (lambda v: math.log10(max(v, 1e-9))) if log else (lambda v: v)
    a0, a1 = fx(x0), fx(x1)
    a0, a1 = (a0 - 0.1, a1 + 0.1) if log else (0.0, x1 * 1.1)
    y0, y1 = min(ys), max(ys)
    span = (y1 - y0) or abs(y1) * 0.05 or 1
    y0, y1 = y0 - span * 0.15, y1 + span * 0.15

    def sx(v):
        return pad + (width - 2 * pad) * (fx(v) - a0) / ((a1 - a0) or 1)

    def sy(v):
        return height - pad - (height - 2 * pad) * (v - y0) / (y1 - y0)

    parts = [f"<svg viewBox='0 0 {width} {height}' width='100%' role='img'>",
             f"<line x1='{pad}' y1='{height - pad}' x2='{width - pad}' y2='{height - pad}' stroke='#aab'/>",
             f"<line x1='{pad}' y1='{pad}' x2='{pad}' y2='{height - pad}' stroke='#aab'/>",
             f"<text x='{width / 2}' y='{height - 14}' text-anchor='middle'>{html.escape(x_label)}{' (log scale)' if log else ''}</text>",
             f"<text x='14' y='{height / 2}' transform='rotate(-90 14 {height / 2})' text-anchor='middle'>"
             f"{html.escape(doc['quality_metric'].replace('_', ' '))}</text>",
             f"<text x='{pad - 4}' y='{sy(y1) + 4:.1f}' text-anchor='end'>{y1:.3g}</text>",
             f"<text x='{pad - 4}' y='{sy(y0) + 4:.1f}' text-anchor='end'>{y0:.3g}</text>",
             # the axis' own ends (a linear axis starts at 0; a log one a little below the smallest value)
             f"<text x='{pad}' y='{height - pad + 16}' text-anchor='middle'>{10 ** a0 if log else a0:.3g}</text>",
             f"<text x='{width - pad}' y='{height - pad + 16}' text-anchor='middle'>{10 ** a1 if log else a1:.3g}</text>"]
    best = doc["smallest_passing"]
    for p in sorted(pts, key=lambda p: p.get("pareto", False)):
        on = p.get("pareto")
        chosen = best is not None and p["variant"] == best["variant"] and p["file"] == best["file"]
        color = "#d9822b" if chosen else ("#2e9d6b" if on else "#8a94a6")
        title = html.escape(f"{p['variant']}/{p['file']}: {p['size_mb']:.2f} MB, {p['latency_p50_ms']:.3g} ms, "
                            f"{doc['quality_metric']} {p['quality']:.4g}")
        parts.append(f"<circle cx='{sx(p[x_key]):.1f}' cy='{sy(p['quality']):.1f}' r='{7 if chosen else 5 if on else 3.5}' "
                     f"fill='{color}' stroke='{'#1d2330' if on else 'none'}'><title>{title}</title></circle>")
        if on or chosen:  # the variant's tag (the Variants table gives its values) and the file's kind
            x = sx(p[x_key])
            right = x > width * 0.6  # near the right edge the label goes to the left of its point
            anchor = "end" if right else "start"
            parts.append(f"<text x='{x - 8 if right else x + 8:.1f}' y='{sy(p['quality']) - 6:.1f}' font-size='10' "
                         f"text-anchor='{anchor}'>"
                         f"{html.escape(p['tag'] + ' ' + p['file'].removeprefix('student.'))}</text>")
    parts.append("</svg>")
    return "".join(parts)


_CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#1d2330;padding:0 16px}
table{border-collapse:collapse;margin:8px 0 18px;font-variant-numeric:tabular-nums}th,td{padding:4px 9px;border-bottom:1px solid #e3e6ec;text-align:right}
th:first-child,td:first-child,td.l,th.l{text-align:left}.muted{color:#667}.pass{color:#1d7a4f}.fail{color:#b3261e;font-weight:600}
.lead{font-size:16px}.charts{display:grid;grid-template-columns:1fr 1fr;gap:16px}svg text{font-size:11px;fill:#334}
tr.front td{background:#eef8f2}tr.best td{background:#fdf1e4}"""


def to_html(doc: dict) -> str:
    import html

    e = html.escape
    m = doc["quality_metric"] or "quality"
    best = doc["smallest_passing"]
    var_rows = "".join(
        f"<tr><td>{e(v['tag'])}</td><td class='l'>{e(_values(v))}<br><span class='muted'>{e(v['name'])}</span></td>"
        f"<td class='l'>{e(v['status'])}</td><td>{e(_fmt(v.get('params')))}</td>"
        f"<td>{e(_fmt(v.get('quality'), 4))}</td><td>{e(_ratio(v.get('quality_ratio')))}</td>"
        f"<td class='{'pass' if v.get('gate_passed') else 'fail' if v.get('gate_passed') is False else ''}'>"
        f"{e(_fmt(v.get('gate_passed')))}</td><td class='l'>{e('; '.join(v.get('gate_broken') or []) or v.get('error') or '')}"
        f"</td></tr>" for v in doc["variants"])

    def cls(p):
        if best is not None and p["variant"] == best["variant"] and p["file"] == best["file"]:
            return "best"
        return "front" if p.get("pareto") else ""

    file_rows = "".join(
        f"<tr class='{cls(p)}'><td>{e(p['tag'])}</td><td class='l'>{e(p['file'])}</td><td>{p['size_mb']:.2f}</td>"
        f"<td>{p['latency_p50_ms']:.3g}{_busy(p)}</td><td>{e(_fmt(p['speedup_p50']))}×</td><td>{e(_fmt(p['quality'], 4))}</td>"
        f"<td>{e(_ratio(p['quality_ratio']))}</td><td>{e(_fmt(p['parity_passed']))}</td>"
        f"<td class='l'>{'front' if p.get('pareto') else ''}{' · smallest passing' if cls(p) == 'best' else ''}</td></tr>"
        for p in sorted(doc["files"], key=lambda p: p["size_mb"]))
    grid = "; ".join(f"{k} = {', '.join(_value(x) for x in vals)}" for k, vals in doc["grid"].items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>kd-edge sweep — {e(str(doc['recipe']))}</title><style>{_CSS}</style></head><body>
<h1>kd-edge sweep</h1>
<p class="muted">recipe {e(str(doc['recipe']))} · grid {e(grid)} · target {e(str(doc.get('target')))}</p>
<p class="lead">{e(' '.join(summary_lines(doc)))}</p>
<h2>Quality against latency and size</h2>
<p class="muted">Every exported file of every variant; green: on the Pareto front of size, latency and {e(m)}
(no other file is at least as good in all three and better in one); orange: the smallest file of a variant whose gate passed.</p>
<div class="charts"><div>{_scatter(doc, 'latency_p50_ms', 'latency p50, ms')}</div><div>{_scatter(doc, 'size_mb', 'file size, MB')}</div></div>
<h2>Variants</h2>
<table><tr><th></th><th class='l'>values (run folder)</th><th class='l'>status</th><th>params</th><th>student {e(m)}</th><th>of teacher</th><th>gate</th><th class='l'>broken budgets</th></tr>{var_rows}</table>
<h2>Exported files</h2>
<table><tr><th></th><th class='l'>file</th><th>MB</th><th>p50 ms</th><th>speed-up</th><th>{e(m)}</th><th>of teacher</th><th>parity</th><th class='l'>Pareto</th></tr>{file_rows}</table>
{f"<p class='muted'>{e(BUSY_NOTE)}</p>" if any(_busy(p) for p in doc["files"]) else ""}
</body></html>
"""


def write_reports(out: Path, doc: dict) -> dict[str, Path]:
    from kd_edge.artifacts import atomic_file, write_json

    paths = {"json": out / f"{REPORT_NAME}.json", "md": out / f"{REPORT_NAME}.md", "html": out / f"{REPORT_NAME}.html"}
    write_json(paths["json"], doc)
    for kind, text in (("md", to_markdown(doc)), ("html", to_html(doc))):
        with atomic_file(paths[kind]) as tmp:
            Path(tmp).write_text(text, encoding="utf-8")
    return paths


def run_sweep(base: dict, source: str, axes: list[Axis], overrides: list[str], out: Path, *, force: bool = False,
              progress: bool = True, on_variant: Callable[[int, int, dict, str], None] | None = None,
              on_event=None) -> dict:
    """Run every variant into ``out`` (resuming those already started); write and return the sweep report."""
    from kd_edge.artifacts import read_json, write_json
    from kd_edge.pipeline import run_pipeline

    grid = variants(axes)
    state_path = out / SWEEP_FILE
    grid_doc = {a.key: list(a.values) for a in axes}
    if out.is_dir() and any(out.iterdir()):
        if not state_path.is_file():
            raise ConfigError(f"--out {out} is not empty and holds no kd-edge sweep ({SWEEP_FILE} missing); choose a "
                              "new or empty folder")
        old = read_json(state_path)
        if (old.get("grid") != grid_doc or old.get("overrides") != overrides or old.get("recipe") != source) and not force:
            raise ConfigError(f"--out {out} holds a sweep of another recipe or grid; pass --force to redo it there, or "
                              "choose another --out")
    recipes = variant_recipes(base, source, grid, out)
    out.mkdir(parents=True, exist_ok=True)
    state = {"recipe": source, "overrides": overrides, "grid": grid_doc, "target": recipes[0][1].bench.target,
             "variants": [{"name": v["name"], "values": v["values"], "status": "pending"} for v in grid]}
    write_json(state_path, state)
    for i, ((v, recipe), entry) in enumerate(zip(recipes, state["variants"])):
        if on_variant:
            on_variant(i, len(recipes), v, "running")
        entry["status"] = "running"
        write_json(state_path, state)
        try:
            run_pipeline(recipe, out / v["name"], resume=True, force=force, progress=progress, on_event=on_event)
            entry["status"] = "done"
        except KdEdgeError as e:  # one variant's failure is recorded; the others still run
            entry["status"], entry["error"] = "failed", str(e)
        write_json(state_path, state)
        if on_variant:
            on_variant(i, len(recipes), v, entry["status"])
    doc = collect(out, state)
    doc["paths"] = {k: str(p) for k, p in write_reports(out, doc).items()}
    return doc
