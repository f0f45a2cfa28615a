"""Render a report document as Markdown (for a pull request or CI summary) and as one self-contained
HTML page (inline CSS and SVG plots, no network)."""

from __future__ import annotations

import html
import math
from typing import Any, Callable

# (column key, header, formatter)
Fmt = Callable[[Any], str]


def build_notes(row: dict) -> list[str]:
    """How an exported file was made, where it matters to its parity: fused operators, and the int8
    fallback (which nodes stayed in float)."""
    notes = [row["external_data_note"]] if row.get("external_data_note") else []
    if row.get("fusions"):
        notes.append("ONNX Runtime fusions: " + ", ".join(f"{k} ×{v}" for k, v in sorted(row["fusions"].items())))
    fb = row.get("fallback")
    if fb and fb.get("engaged"):
        count = f" ({fb['nodes_in_float']} nodes)" if fb.get("nodes_in_float") else ""
        notes.append(f"int8 fallback level {fb.get('level')}: kept in float {fb.get('kept_in_float')}{count}"
                     + ("" if fb.get("within_budget") else ", still over budget"))
    elif fb:
        notes.append(f"int8 fallback not applied: {fb.get('reason')}")
    return notes


def _num(digits: int, suffix: str = "") -> Fmt:
    return lambda v: "—" if v is None else f"{v:,.{digits}f}{suffix}"


def _pct(v: Any) -> str:
    return "—" if v is None else f"{v * 100:.1f} %"


def _params(v: Any) -> str:
    return "—" if v is None else f"{v / 1e6:.1f} M"


def _sci(v: Any) -> str:
    return "—" if v is None else f"{v:.1e}"


def _x(v: Any) -> str:
    return "—" if v is None else f"{v:.1f}×"


def _gmacs(v: Any) -> str:
    return "—" if v is None else f"{v / 1e9:.2f} G"


def _text(v: Any) -> str:
    return "—" if v in (None, "") else str(v)


SPEED: list[tuple[str, str, Fmt]] = [
    ("stored_as", "stored as", _text),
    ("params", "params", _params),
    ("macs", "MACs", _gmacs),
    ("file_size_mb", "size MB", _num(1)),
    ("latency_p50_ms", "p50 ms", _num(2)),
    ("latency_p90_ms", "p90 ms", _num(2)),
    ("latency_p99_ms", "p99 ms", _num(2)),
    ("speedup_p50", "speed-up", _x),
    ("throughput_per_s", "items/s", _num(0)),
    ("peak_rss_mb", "peak MB", _num(0)),
    ("load_ms", "load ms", _num(0)),
    ("deployed_on", "ran on", lambda v: ", ".join(v) if v else "—"),
]
# a causal LM is used token by token: its speed is tokens per second, for the prompt and for generation
LM_SPEED: list[tuple[str, str, Fmt]] = [
    ("prefill_tokens_per_s", "prompt tok/s", _num(0)),
    ("generation_tokens_per_s", "generate tok/s", _num(0)),
]
# how a task kind's report columns (tasks/kinds.py: ``report_columns``) are shown
SHOWN_AS: dict[str, Fmt] = {"pct": _pct, "num2": _num(2), "num3": _num(3), "num4": _num(4)}
PARITY: list[tuple[str, str, Fmt]] = [("max_abs_diff", "max |Δ|", _sci),
                                      ("agreement_with_student", "same as student", _pct)]


def _kind(report: dict):
    """The task kind of a report (a report of an unknown task renders as an embedding's)."""
    from kd_edge.tasks.kinds import KINDS

    return KINDS.get(report.get("task"), KINDS["sentence_embedding"])


def speed_columns(report: dict) -> list[tuple[str, str, Fmt]]:
    """The speed-and-size table's columns (tokens per second instead of items for a causal LM)."""
    if _kind(report).is_lm:
        at = next(i for i, c in enumerate(SPEED) if c[0] == "throughput_per_s")
        return SPEED[:at] + LM_SPEED + SPEED[at + 1:]
    return SPEED


def quality_columns(report: dict) -> list[tuple[str, str, Fmt]]:
    """The quality table's columns for the report's task, with parity."""
    return [(c.key, c.heading, SHOWN_AS[c.shown_as]) for c in _kind(report).report_columns] + PARITY


def lm_table(report: dict) -> tuple[list[str], list[tuple[dict, list[str]]], list[str]] | None:
    """A causal LM's prompt-processing and generation figures: the headings, (row, cells) per model
    measured, and why a cell is n/a; None when no row has them."""
    rows = [r for r in report["rows"] if r.get("lm")]
    if not rows:
        return None
    keys = list(dict.fromkeys(k for r in rows for k in r["lm"] if k != "ttft_ms"))
    heads = [k.replace("tg", "tg ").replace("pp", "pp ").replace("@", " @ ") + " tok/s" for k in keys]
    ttft = (report.get("bench_settings") or {}).get("lm") or {}
    heads += [f"TTFT ms ({ttft.get('ttft')})" if ttft.get("ttft") else "TTFT ms", "peak MB"]
    why: list[str] = []
    out = []
    for r in rows:
        cells = []
        for k in [*keys, "ttft_ms"]:
            v = r["lm"].get(k)
            if isinstance(v, (int, float)):
                cells.append(f"{v:.1f}")
            elif isinstance(v, dict) and v.get("tokens_per_s") is not None:
                cells.append(f"{v['tokens_per_s']:.1f}")
            else:
                cells.append("n/a")
                reason = v.get("na") if isinstance(v, dict) else None
                if reason and f"{r['name']}: {reason}" not in why:
                    why.append(f"{r['name']}: {reason}")
        cells.append(_num(0)(r.get("peak_rss_mb")))
        out.append((r, cells))
    return heads, out, why


LM_NOTE = ("pp N: a prompt of N tokens from an empty cache; tg N @ d: N tokens generated one at a time (greedy) "
           "after a prompt of d tokens; tokens per second, batch 1, medians over the rounds.")


def _label(row: dict) -> str:
    name = row["name"] if row["kind"] == "artifact" else f"{row['name']} (PyTorch)"
    return name + (" *" if row.get("latency_flags") else "")


def unreliable_rows(report: dict) -> list[dict]:
    """Rows whose latency was measured on a busy machine (or whose rounds disagree)."""
    return [r for r in report["rows"] if r.get("latency_flags")]


def _overlaps(a: dict, b: dict) -> bool:
    ia, ib = a.get("latency_p50_ci95_ms"), b.get("latency_p50_ci95_ms")
    return bool(ia and ib and ia[0] <= ib[1] and ib[0] <= ia[1])


def headline(report: dict) -> list[str]:
    """Two or three sentences a reader needs first."""
    rows = {r["name"]: r for r in report["rows"]}
    t, s = rows.get("teacher", {}), rows.get("student", {})
    metric = report.get("quality_metric", "probe_accuracy")
    lines = []
    size = f"with {_params(s.get('params'))} of {_params(t.get('params'))} parameters."
    own_tokens = bool((report.get("teacher_cache") or {}).get("cross_tokenizer"))
    if metric == "perplexity" and own_tokens and t.get("bits_per_byte") and s.get("bits_per_byte"):
        # per-token perplexities of two tokenizations do not compare; bits per byte of the same text do
        lines.append(f"The student, reading text with its own tokenizer, needs {s['bits_per_byte']:.3f} bits per byte "
                     f"of held-out text against the teacher's {t['bits_per_byte']:.3f}, {size}")
    elif metric == "perplexity" and t.get(metric) and s.get(metric):
        lines.append(f"The student's perplexity is {s[metric]:.2f} against the teacher's {t[metric]:.2f}, {size}")
    elif t.get(metric) and s.get(metric) is not None:
        name = metric.replace("_", " ")
        lines.append(f"The student keeps {s[metric] / t[metric] * 100:.1f} % of the teacher's {name} "
                     f"({_pct(s[metric])} vs {_pct(t[metric])}) {size}")
    b = rows.get("baseline", {})
    if metric == "perplexity" and b.get(metric) and s.get(metric):
        change = s[metric] / b[metric] - 1
        paired = b.get("student_vs_baseline") or {}
        noise = ""
        if paired:
            low, high = paired["ci95"]
            noise = (f" (paired bootstrap over {paired['texts']} held-out texts: standard error "
                     f"{paired['se'] * 100:.2f} %, 95 % interval of the ratio {low:.3f}-{high:.3f}"
                     + ("" if paired["significant"] else "; within noise: the teacher bought no measurable perplexity")
                     + ")")
        lines.append(f"Without the teacher (the same student, data, steps and seed, next-token loss only) it reaches "
                     f"{b[metric]:.2f}: distillation {'lowered' if change < 0 else 'raised'} perplexity by "
                     f"{abs(change) * 100:.1f} %{noise}.")
    timed = sorted((r for r in report["rows"] if r.get("speedup_p50")), key=lambda r: -r["speedup_p50"])
    fastest = timed[0] if timed else None
    if fastest and fastest["name"] != "teacher":
        lm = _kind(report).is_lm and fastest.get("generation_tokens_per_s")
        lines.append(f"Fastest: {fastest['name']} at {_num(2)(fastest['latency_p50_ms'])} ms p50, "
                     f"{fastest['speedup_p50']:.1f}× the teacher's PyTorch p50, "
                     f"{_num(1)(fastest.get('file_size_mb'))} MB"
                     + (f", {fastest['generation_tokens_per_s']:.0f} tokens/s generating" if lm else "")
                     + (f"; within noise of {timed[1]['name']} (their p50 intervals overlap)"
                        if len(timed) > 1 and timed[1]["name"] != "teacher" and _overlaps(fastest, timed[1]) else "")
                     + ".")
    files = [r for r in report["rows"] if r["kind"] == "artifact" and r.get("greedy_agreement") is not None]
    if _kind(report).is_lm and files:
        student_tps = s.get("generation_tokens_per_s")
        lines.append("Generating: " + ", ".join(
            f"{r['name']} {_num(0)(r.get('generation_tokens_per_s'))} tokens/s, {_pct(r['greedy_agreement'])} greedy agreement"
            for r in files) + (f" (PyTorch student: {student_tps:.0f} tokens/s)." if student_tps else "."))
    loops = looping(report)
    if loops:
        lines.append(loops)
    busy = unreliable_rows(report)
    if busy:
        lines.append(f"Unreliable timings (*): {', '.join(r['name'] for r in busy)} "
                     f"{'was' if len(busy) == 1 else 'were'} measured on a busy machine or disagreed between rounds; "
                     "run the benchmark again on a quiet one.")
    failed = [r["name"] for r in report["rows"] if r.get("parity_passed") is False]
    checked = [r for r in report["rows"] if r.get("parity_passed") is not None]
    if checked:
        lines.append("Parity: " + ("all exported files match the student." if not failed
                                   else f"FAILED for {', '.join(failed)}."))
    gate = report.get("gate")
    if gate:
        lines.append(f"Gate: {'PASSED' if gate['passed'] else 'FAILED'} ({gate['n_passed']}/{gate['n_budgets']} budgets).")
    return lines


SAMPLES_NOTE = ("Greedy continuations of the first held-out texts' opening tokens, by each PyTorch model. repeated "
                "4-grams: the share of a continuation's 4-grams that occurred earlier in it (a loop is near 100 %); "
                "distinct-2: distinct bigrams over all bigrams; a sample loops at {threshold}.")


def degeneration_rows(report: dict) -> list[dict]:
    """The PyTorch models with generation measures (teacher first)."""
    return [r for r in report["rows"] if r["kind"] != "artifact" and r.get("sample_prompts")]


def looping(report: dict) -> str | None:
    """The headline's warning when the student's samples loop on more prompts than the teacher's, at
    least half of them."""
    rows = {r["name"]: r for r in degeneration_rows(report)}
    s, t = rows.get("student"), rows.get("teacher")
    if not s or s["looping_prompts"] * 2 < s["sample_prompts"] or (t and t["looping_prompts"] >= s["looping_prompts"]):
        return None
    teacher = f" (the teacher's on {t['looping_prompts']})" if t else ""
    return (f"The student's generations loop on {s['looping_prompts']} of {s['sample_prompts']} held-out prompts"
            f"{teacher}, repeating {_pct(s['repeated_4grams'])} of their 4-grams: perplexity does not show this; "
            "see Sample generations.")


def _sample_columns(report: dict) -> list[str]:
    return [r["name"] for r in degeneration_rows(report)]


def _settings(report: dict) -> str:
    b, env = report.get("bench_settings") or {}, report.get("environment") or {}
    m = report.get("bench_machine") or {}
    machine = env.get("cpu_model") or env.get("machine") or "unknown CPU"
    rounds = (f" in {m['rounds']} interleaved rounds (a fresh process per model per round, the models taking turns)"
              if m.get("rounds") else " in a fresh process per model")
    load = ""
    if m.get("host_loadavg_before") is not None:
        load = (f"; load average {m['host_loadavg_before']:.2f} before, {m['host_loadavg_after']:.2f} after"
                + (f", {m['host_steal_pct']:.1f} % CPU time stolen" if m.get("host_steal_pct") else ""))
    teacher_file = next((r.get("stored_as") for r in report["rows"] if r["name"] == "teacher"), "") or ""
    sizes = (f" Sizes compare files as stored: the teacher's is {teacher_file}, so parameters compare the models."
             if teacher_file and not teacher_file.endswith("fp32") else "")
    return (f"Latency at batch {b.get('batch')} × {b.get('seq')} tokens, {b.get('threads')} threads, "
            f"{b.get('timed_runs')} timed runs{rounds} on `{b.get('target')}` "
            f"({machine}, {env.get('cpu_count')} cores{load}). Quality on {report['evaluation']['n_test']} held-out texts"
            + (f" ({report['evaluation'].get('n_test_labelled')} labelled)" if report['evaluation'].get('n_test_labelled') else "")
            + (f"; neighbours: top-{report['evaluation']['knn_k']}." if _kind(report).output_field == "pooled" else ".")
            + sizes + _student_line(report) + _cache_line(report) + _provenance_line(report))


def _student_line(report: dict) -> str:
    """How a pruned student and a trimmed vocabulary were cut from the teacher."""
    b = report.get("student_build") or {}
    parts = []
    p = b.get("pruned")
    if p:
        parts.append(f"pruned from the teacher: layers {p['layers']} of {p['of_teacher_layers']}, FFN {p['intermediate_size']:,}"
                     + (f" of {p['of_teacher_intermediate_size']:,}" if p.get("of_teacher_intermediate_size") else "")
                     + f" neurons, {p['num_attention_heads']} heads, width {p['hidden_size']}, scored on "
                     f"{p['calibration_tokens']:,} training tokens")
    v = b.get("vocabulary")
    if v:
        parts.append(f"vocabulary trimmed to {v['kept']:,} of {v['teacher_vocab_size']:,} tokens (used at least "
                     f"{v['min_count']}× in the training text); {v['held_out_outside'] * 100:.1f} % of the held-out tokens "
                     "fall outside it and are read as kept pieces or [UNK]")
    return (" Student: " + "; ".join(parts) + ".") if parts else ""


def _provenance_line(report: dict) -> str:
    """Where the teacher's outputs came from, when a served teacher wrote them, and their terms of use."""
    p = report.get("teacher_provenance") or {}
    terms = f" Terms of use of the teacher's outputs: {p['terms']}." if p.get("terms") else ""
    if not p.get("endpoint"):
        return terms
    what = "Training text written" if p.get("kind") == "text" else "Teacher log-probabilities given"
    return (f" {what} by the served teacher `{p['served_model']}` at {p['endpoint']} on {p['date']} "
            f"({p.get('sent', 0)} requests sent, {p.get('stored', 0)} answers from the store).{terms}")


def _cache_line(report: dict) -> str:
    """What the teacher cache kept per token, for a causal LM's top-k targets."""
    cache = report.get("teacher_cache") or {}
    kept = [t for t in cache.get("teachers", []) if t.get("top_k") and (t.get("bytes_per_token") or {}).get("targets")]
    if not kept:
        return ""
    t = kept[0]
    cross = cache.get("cross_tokenizer")
    tokens = cross["teacher_train_tokens"] if cross else cache["train_tokens"]
    values = "(the 4 largest in fp16, the rest as a fitted curve)" if "topk_curve" in t.get("fields", ()) else "(fp16)"
    line = (f" Teacher cache: top-{t['top_k']} log-probs {values} and ids, {t['bytes_per_token']['targets']} bytes per "
            f"token, {tokens:,} training tokens ({t['bytes_per_token']['targets'] * tokens / 1e6:.1f} MB).")
    if cross:
        line += (f" The student reads text with its own tokenizer ({cross['student_vocab_size']:,} tokens, "
                 f"{cross['matched_tokens']:,} spelled as the teacher's; {cache['train_tokens']:,} training tokens): "
                 f"{cross['aligned']['train'] * 100:.1f} % of its training predictions have the teacher's at the same "
                 f"text, and models compare in bits per byte.")
    return line


def _class_name(c: dict) -> str:
    return f"{c['name']} ({c['class']})" if c.get("name") else f"class {c['class']}"


def _metric(slices: dict, v: Any) -> str:
    return _num(2)(v) if slices["metric"] == "perplexity" else _pct(v)


def _gap(slices: dict, v: Any) -> str:
    if v is None:
        return "—"
    return f"{v * 100:+.1f} %" if slices["metric"] == "perplexity" else f"{v * 100:+.1f} pt"


def _md(text: Any) -> str:
    """A Markdown table cell: pipes escaped, no line breaks."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(report: dict) -> str:
    """The report as GitHub-flavoured Markdown."""
    out = [f"# {report['title']}: teacher vs student", ""]
    out += [" ".join(headline(report)), "", _settings(report), ""]
    for title, cols in (("Speed and size", speed_columns(report)), ("Quality", quality_columns(report))):
        out += [f"## {title}", "", "| model | " + " | ".join(_md(h) for _, h, _ in cols) + " |",
                "|---|" + "---:|" * len(cols)]
        for row in report["rows"]:
            out.append(f"| {_md(_label(row))} | " + " | ".join(_md(fmt(row.get(k))) for k, _, fmt in cols) + " |")
        out.append("")
    busy = unreliable_rows(report)
    if busy:
        out += ["\\* Unreliable timing: " + "; ".join(f"{_md(r['name'])}: {_md(', '.join(r['latency_flags']))}"
                                              for r in busy) + ".", ""]
    lm = lm_table(report)
    if lm:
        heads, body, why = lm
        out += ["## Prompt processing and generation", "", LM_NOTE, "", "| model | " + " | ".join(heads) + " |",
                "|---|" + "---:|" * len(heads)]
        out += [f"| {_md(_label(r))} | " + " | ".join(cells) + " |" for r, cells in body]
        out += [""] + [f"- n/a: {_md(w)}" for w in why] + ([""] if why else [])
    checked = [r for r in report["rows"] if r.get("parity_reason")]
    if checked:
        out += ["## Parity of each exported file", "", "| file | runtime | verdict | why |", "|---|---|---|---|"]
        out += [f"| {_md(r['name'])} | {r['runtime']} | {'pass' if r['parity_passed'] else '**FAIL**'} | "
                + _md("; ".join([r["parity_reason"], *build_notes(r)])) + " |" for r in checked]
        out.append("")
    errors = [r for r in report["rows"] if r.get("bench_error")]
    if errors:
        out += ["## Benchmarks that failed", ""] + [f"- {r['name']}: {r['bench_error']}" for r in errors] + [""]
    slices = report.get("slices")
    if slices and slices.get("slices"):
        out += ["## Slices (bias check)", "", f"Overall student gap to the teacher: {_gap(slices, slices['overall_gap'])}; "
                f"a slice is flagged when its gap exceeds that by more than {_gap(slices, slices['threshold'])}.", "",
                "| slice | n | teacher | student | gap | flag |", "|---|---:|---:|---:|---:|---|"]
        for sl in slices["slices"]:
            out.append(f"| {sl['slice']} | {sl['n']} | {_metric(slices, sl['teacher'])} | {_metric(slices, sl['student'])} | "
                       f"{_gap(slices, sl['gap'])} | {'**FLAGGED**' if sl['flagged'] else ''} |")
        out.append("")
    samples = report.get("samples")
    if samples and samples.get("prompts"):
        names = _sample_columns(report)
        out += ["## Sample generations", "", SAMPLES_NOTE.format(threshold=_pct(samples["threshold"])), "",
                "| model | repeated 4-grams | distinct-2 | samples that loop |", "|---|---:|---:|---:|"]
        out += [f"| {_md(r['name'])} | {_pct(r['repeated_4grams'])} | {_pct(r['distinct_2'])} | "
                f"{r['looping_prompts']} of {r['sample_prompts']} |" for r in degeneration_rows(report)]
        out += ["", "| prompt | " + " | ".join(_md(n) for n in names) + " |", "|---|" + "---|" * len(names)]
        out += [f"| {_md(p['prompt'])} | " + " | ".join(_md(p.get(n, "")) + (" **(loops)**" if p.get(f"{n}_loops") else "")
                                                      for n in names) + " |" for p in samples["prompts"]]
        out.append("")
    classes = report.get("per_class")
    if classes:
        out += ["## Per class", "", "| class | n | teacher recall | student recall | delta |", "|---|---:|---:|---:|---:|"]
        out += [f"| {_md(_class_name(c))} | {c['n']} | {_pct(c['teacher_recall'])} | {_pct(c['student_recall'])} | "
                f"{c['delta'] * 100:+.1f} pt |" for c in classes]
        out.append("")
    gate = report.get("gate")
    if gate:
        out += ["## Gate", "", "| row | metric | bound | value | verdict |", "|---|---|---|---|---|"]
        for c in gate["checks"]:
            out.append(f"| {_md(c['artifact'])} | {c['metric']} | {c['bound']} | {c['value']:.4g} | "
                       f"{'pass' if c['passed'] else '**FAIL**'}{' (unreliable: busy machine)' if c.get('unreliable') else ''} |")
        out.append("")
    return "\n".join(out)


# -- HTML --------------------------------------------------------------------------------------------
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#1d2330;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.1rem;margin-top:2rem;border-bottom:1px solid #e3e6ec;padding-bottom:.3rem}
p.lead{font-size:1.05rem}p.muted,.muted{color:#5b6475}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums;margin:.5rem 0}
.wide{overflow-x:auto}.wide table{font-size:13px}
th,td{padding:.35rem .5rem;border-bottom:1px solid #eceff3;text-align:right;white-space:nowrap}
th{white-space:normal;vertical-align:bottom}
th:first-child,td:first-child{text-align:left}th{background:#f5f7fa;font-weight:600}
tr.teacher td{background:#fbf7ee}.pass{color:#137333;font-weight:600}.fail{color:#b3261e;font-weight:600}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:1.5rem}
table.text td,table.text th{text-align:left}
td.wrap{white-space:normal}
figure{margin:0}figcaption{font-weight:600;margin-bottom:.3rem}svg text{font:12px system-ui,sans-serif;fill:#1d2330}
"""
_COLORS = {"teacher": "#c98a1b", "student": "#3b6fd4", "baseline": "#8a8f99", "artifact": "#2e9d6b"}


def _bar_chart(rows: list[dict], key: str, unit: str, whisker: str | None = None) -> str:
    data = [r for r in rows if r.get(key) is not None]
    if not data:
        return "<p class='muted'>no data</p>"
    width, bar_h, gap, left = 560, 22, 8, 170
    top = max(max((r.get(whisker) or 0) for r in data) if whisker else 0, max(r[key] for r in data)) or 1
    height = len(data) * (bar_h + gap) + 10
    parts = [f"<svg viewBox='0 0 {width} {height}' width='100%' role='img'>"]
    for i, r in enumerate(data):
        y = 5 + i * (bar_h + gap)
        w = (width - left - 80) * r[key] / top
        parts.append(f"<text x='{left - 6}' y='{y + bar_h * 0.7}' text-anchor='end'>{html.escape(r['name'])}</text>")
        parts.append(f"<rect x='{left}' y='{y}' width='{w:.1f}' height='{bar_h}' fill='{_COLORS[r['kind']]}' rx='3'/>")
        if whisker and r.get(whisker):
            wx = left + (width - left - 80) * r[whisker] / top
            parts.append(f"<line x1='{left + w:.1f}' x2='{wx:.1f}' y1='{y + bar_h / 2}' y2='{y + bar_h / 2}' stroke='#1d2330'/>"
                         f"<line x1='{wx:.1f}' x2='{wx:.1f}' y1='{y + 5}' y2='{y + bar_h - 5}' stroke='#1d2330'/>")
            end = wx
        else:
            end = left + w
        parts.append(f"<text x='{end + 6:.1f}' y='{y + bar_h * 0.7}'>{r[key]:,.2f} {unit}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _line_chart(curve: list[dict], keys: list[str]) -> str:
    pts = [c for c in curve if "loss" in c]
    if len(pts) < 2:
        return "<p class='muted'>no training curve</p>"
    width, height, pad = 560, 240, 44
    xs = [c["step"] for c in pts]
    series = {k: [c.get(k) for c in pts] for k in keys if all(c.get(k) is not None for c in pts)}
    hi = max(max(v) for v in series.values()) or 1
    colors = ["#3b6fd4", "#c98a1b", "#2e9d6b", "#8e44ad", "#b3261e"]

    def sx(x):
        return pad + (width - 2 * pad) * (x - xs[0]) / max(xs[-1] - xs[0], 1)

    def sy(y):
        return height - pad - (height - 2 * pad) * y / hi

    parts = [f"<svg viewBox='0 0 {width} {height}' width='100%' role='img'>",
             f"<line x1='{pad}' y1='{height - pad}' x2='{width - pad}' y2='{height - pad}' stroke='#aab'/>",
             f"<line x1='{pad}' y1='{pad}' x2='{pad}' y2='{height - pad}' stroke='#aab'/>",
             f"<text x='{pad}' y='{pad - 8}'>{hi:.3g}</text><text x='{pad - 4}' y='{height - pad + 14}'>0</text>",
             f"<text x='{width - pad}' y='{height - pad + 16}' text-anchor='end'>step {xs[-1]}</text>"]
    for i, (k, vals) in enumerate(series.items()):
        path = " ".join(f"{'M' if j == 0 else 'L'}{sx(x):.1f},{sy(v):.1f}" for j, (x, v) in enumerate(zip(xs, vals)))
        parts.append(f"<path d='{path}' fill='none' stroke='{colors[i % 5]}' stroke-width='2'/>")
        parts.append(f"<text x='{width - pad}' y='{pad + 14 * i}' text-anchor='end' style='fill:{colors[i % 5]}'>"
                     f"{html.escape(k)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _pareto_chart(report: dict) -> str:
    """Quality against latency p50, with the Pareto front (no other model is both faster and better)."""
    metric = report.get("quality_metric", "probe_accuracy")
    higher = report.get("higher_is_better", True)
    pts = [r for r in report["rows"] if r.get("latency_p50_ms") and r.get(metric) is not None]
    if (report.get("teacher_cache") or {}).get("cross_tokenizer"):  # a teacher's perplexity is over other tokens
        pts = [r for r in pts if r.get("kind") != "teacher"]
    if len(pts) < 2:
        return "<p class='muted'>no data</p>"
    width, height, pad = 560, 300, 52
    xs, ys = [r["latency_p50_ms"] for r in pts], [r[metric] for r in pts]
    scale = _Axis(min(xs), max(xs), pad, width - pad)
    y0, y1 = min(ys), max(ys)
    span = (y1 - y0) or abs(y1) * 0.05 or 1
    y0, y1 = y0 - span * 0.15, y1 + span * 0.15
    sx = scale.at

    def sy(y):
        return height - pad - (height - 2 * pad) * (y - y0) / (y1 - y0)

    def better(a, b):
        qa, qb = a[metric], b[metric]
        return (qa >= qb if higher else qa <= qb) and a["latency_p50_ms"] <= b["latency_p50_ms"] and \
            (qa != qb or a["latency_p50_ms"] != b["latency_p50_ms"])

    front = sorted((r for r in pts if not any(better(o, r) for o in pts)), key=lambda r: r["latency_p50_ms"])
    parts = [f"<svg viewBox='0 0 {width} {height}' width='100%' role='img'>",
             f"<line x1='{pad}' y1='{height - pad}' x2='{width - pad}' y2='{height - pad}' stroke='#aab'/>",
             f"<line x1='{pad}' y1='{pad}' x2='{pad}' y2='{height - pad}' stroke='#aab'/>",
             f"<text x='{width / 2}' y='{height - 12}' text-anchor='middle'>latency p50, ms{scale.note}</text>",
             f"<text x='14' y='{height / 2}' transform='rotate(-90 14 {height / 2})' text-anchor='middle'>"
             f"{html.escape(metric.replace('_', ' '))}{' (lower is better)' if not higher else ''}</text>",
             f"<text x='{pad - 4}' y='{sy(y1) + 4:.1f}' text-anchor='end'>{y1:.3g}</text>",
             f"<text x='{pad - 4}' y='{sy(y0) + 4:.1f}' text-anchor='end'>{y0:.3g}</text>"]
    parts += [f"<line x1='{sx(t):.1f}' x2='{sx(t):.1f}' y1='{height - pad}' y2='{height - pad + 4}' stroke='#aab'/>"
              f"<text x='{sx(t):.1f}' y='{height - pad + 16}' text-anchor='middle'>{t:g}</text>" for t in scale.ticks]
    path = " ".join(f"{'M' if i == 0 else 'L'}{sx(r['latency_p50_ms']):.1f},{sy(r[metric]):.1f}" for i, r in enumerate(front))
    parts.append(f"<path d='{path}' fill='none' stroke='#2e9d6b' stroke-dasharray='5 4' stroke-width='2'/>")
    dots = [(sx(r["latency_p50_ms"]), sy(r[metric])) for r in pts]
    placed: list[tuple[float, float, float]] = []  # (left x, baseline y, width) of the labels written so far
    line_h = 15  # a 12 px label's box, ascenders to descenders

    def clashes(lx: float, ly: float, lw: float) -> bool:
        if any(abs(ly - py) < line_h and lx < px + pw and px < lx + lw for px, py, pw in placed):
            return True
        return any(lx - 4 <= dx <= lx + lw + 4 and ly - 13 <= dy <= ly + 4 for dx, dy in dots)

    for r in sorted(pts, key=lambda r: (r not in front, sy(r[metric]), sx(r["latency_p50_ms"]))):
        on = r in front
        x, y = sx(r["latency_p50_ms"]), sy(r[metric])
        parts.append(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='{6 if on else 4}' "
                     f"fill='{_COLORS[r['kind']]}' stroke='{'#1d2330' if on else 'none'}'/>")
        lw = 7.2 * len(r["name"])
        sides = [x + 9, x - 9 - lw] if x + 9 + lw <= width - 4 else [x - 9 - lw, x + 9]
        # beside the dot first (right, then left), then further up or down with a line back to it
        candidates = [(lx, y + dy) for dy in (4, -8, 16) for lx in sides]
        candidates += [(sides[0], y + 4 + line_h * k * sign) for k in range(1, 12) for sign in (-1, 1)]
        lx, ly = next(((cx, cy) for cx, cy in candidates if pad + 8 <= cy <= height - pad - 4 and cx >= pad + 2
                       and cx + lw <= width - 2 and not clashes(cx, cy, lw)), candidates[0])
        placed.append((lx, ly, lw))
        if abs(ly - (y + 4)) > line_h:  # moved away from its dot: a thin line leads back to it
            ex = lx if lx > x else lx + lw
            parts.append(f"<line x1='{x:.1f}' y1='{y:.1f}' x2='{ex:.1f}' y2='{ly - 4:.1f}' stroke='#aab' stroke-width='1'/>")
        parts.append(f"<text x='{lx:.1f}' y='{ly:.1f}'>{html.escape(r['name'])}</text>")
    parts.append("</svg>")
    return "".join(parts)


class _Axis:
    """A latency axis: linear, or logarithmic when the values span more than a factor of 8 (a slow
    teacher would otherwise squash every exported file against the origin)."""

    def __init__(self, lo: float, hi: float, left: float, right: float):
        self.left, self.right = left, right
        self.log = hi / max(lo, 1e-9) > 8
        if self.log:
            self.lo, self.hi = math.log10(lo / 1.3), math.log10(hi * 1.3)
            first, last = math.floor(self.lo), math.ceil(self.hi)
            self.ticks = [m * 10 ** e for e in range(first, last + 1) for m in (1, 2, 5)
                          if self.lo <= math.log10(m * 10 ** e) <= self.hi]
            self.note = " (log scale)"
        else:
            self.lo, self.hi = 0.0, hi * 1.1
            raw = self.hi / 4
            mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
            step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
            self.ticks = [round(step * k, 10) for k in range(1, int(self.hi / step) + 1)]
            self.note = ""

    def at(self, v: float) -> float:
        x = math.log10(max(v, 1e-9)) if self.log else v
        return self.left + (self.right - self.left) * (x - self.lo) / (self.hi - self.lo)


def _distribution_chart(rows: list[dict]) -> str:
    """Latency of every timed run, per model: box (quartiles), whiskers (p1-p99) and median."""
    data = [r for r in rows if r.get("latency_samples_ms")]
    if not data:
        return "<p class='muted'>no data</p>"
    import statistics

    width, row_h, left = 560, 26, 170
    lo = min(min(r["latency_samples_ms"]) for r in data)
    hi = max(max(r["latency_samples_ms"]) for r in data)
    axis = _Axis(lo, hi, left, width - 20)
    height = len(data) * row_h + 30
    parts = [f"<svg viewBox='0 0 {width} {height}' width='100%' role='img'>"]
    sx = axis.at

    for i, r in enumerate(data):
        s = sorted(r["latency_samples_ms"])
        q = statistics.quantiles(s, n=100, method="inclusive") if len(s) > 1 else [s[0]] * 99
        p1, p25, p50, p75, p99 = q[0], q[24], q[49], q[74], q[98]
        y = 6 + i * row_h
        c = _COLORS[r["kind"]]
        parts.append(f"<text x='{left - 6}' y='{y + 14}' text-anchor='end'>{html.escape(_label(r))}</text>"
                     f"<line x1='{sx(p1):.1f}' x2='{sx(p99):.1f}' y1='{y + 10}' y2='{y + 10}' stroke='{c}'/>"
                     f"<rect x='{sx(p25):.1f}' y='{y + 3}' width='{max(sx(p75) - sx(p25), 1):.1f}' height='14' fill='{c}' "
                     f"fill-opacity='0.35' stroke='{c}'/>"
                     f"<line x1='{sx(p50):.1f}' x2='{sx(p50):.1f}' y1='{y + 1}' y2='{y + 19}' stroke='#1d2330' stroke-width='2'/>")
    base = height - 16
    parts += [f"<line x1='{sx(t):.1f}' x2='{sx(t):.1f}' y1='{base - 4}' y2='{base}' stroke='#aab'/>"
              f"<text x='{sx(t):.1f}' y='{base + 12}' text-anchor='middle'>{t:g}</text>" for t in axis.ticks]
    parts.append(f"<text x='{width - 20}' y='{base - 6}' text-anchor='end'>ms{axis.note}</text></svg>")
    return "".join(parts)


def _per_class_chart(classes: list[dict] | None) -> str:
    if not classes:
        return "<p class='muted'>classification runs only</p>"
    width, row_h = 560, 34
    left = min(220, 7 * max(len(_class_name(c)) for c in classes) + 14)
    height = len(classes) * row_h + 10
    parts = [f"<svg viewBox='0 0 {width} {height}' width='100%' role='img'>"]
    for i, c in enumerate(classes):
        y = 5 + i * row_h
        for j, (key, color) in enumerate((("teacher_recall", _COLORS["teacher"]), ("student_recall", _COLORS["student"]))):
            w = (width - left - 120) * c[key]
            parts.append(f"<rect x='{left}' y='{y + j * 13}' width='{w:.1f}' height='12' fill='{color}' rx='2'/>"
                         f"<text x='{left + w + 4:.1f}' y='{y + j * 13 + 10}'>{c[key] * 100:.1f} %</text>")
        parts.append(f"<text x='{left - 6}' y='{y + 17}' text-anchor='end'>{html.escape(_class_name(c))}</text>"
                     f"<text x='{width - 4}' y='{y + 17}' text-anchor='end'>{c['delta'] * 100:+.1f} pt</text>")
    parts.append("</svg>")
    return "".join(parts)


def _slices_html(slices: dict | None) -> str:
    if not slices or not slices.get("slices"):
        return ""
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(sl['slice'])}</td><td>{sl['n']}</td><td>{e(_metric(slices, sl['teacher']))}</td>"
        f"<td>{e(_metric(slices, sl['student']))}</td><td>{e(_gap(slices, sl['gap']))}</td>"
        f"<td class='{'fail' if sl['flagged'] else ''}'>{'FLAGGED' if sl['flagged'] else ''}</td></tr>"
        for sl in slices["slices"])
    return (f"<h2>Slices (bias check)</h2><p class='muted'>Overall student gap to the teacher "
            f"{e(_gap(slices, slices['overall_gap']))}; a slice is flagged when its gap exceeds that by more than "
            f"{e(_gap(slices, slices['threshold']))} (slices under {slices['min_size']} texts are never flagged).</p>"
            f"<table class='text'><tr><th>slice</th><th>n</th><th>teacher</th><th>student</th><th>gap</th><th></th></tr>"
            f"{rows}</table>")


def _samples_html(report: dict) -> str:
    samples = report.get("samples")
    if not samples or not samples.get("prompts"):
        return ""
    e = html.escape
    names = _sample_columns(report)
    measures = "".join(f"<tr class='{r['kind']}'><td>{e(r['name'])}</td><td>{_pct(r['repeated_4grams'])}</td>"
                       f"<td>{_pct(r['distinct_2'])}</td><td>{r['looping_prompts']} of {r['sample_prompts']}</td></tr>"
                       for r in degeneration_rows(report))
    texts = "".join("<tr><td class='wrap'>" + e(p["prompt"]) + "</td>" + "".join(
        f"<td class='wrap'>{e(p.get(n, ''))}" + (" <span class='fail'>(loops)</span>" if p.get(f"{n}_loops") else "")
        + "</td>" for n in names) + "</tr>" for p in samples["prompts"])
    return (f"<h2>Sample generations</h2><p class='muted'>{e(SAMPLES_NOTE.format(threshold=_pct(samples['threshold'])))}"
            f"</p><table><tr><th>model</th><th>repeated 4-grams</th><th>distinct-2</th><th>samples that loop</th></tr>"
            f"{measures}</table><table class='text'><tr><th>prompt</th>{''.join(f'<th>{e(n)}</th>' for n in names)}</tr>"
            f"{texts}</table>")


def _lm_html(report: dict) -> str:
    lm = lm_table(report)
    if not lm:
        return ""
    e = html.escape
    heads, body, why = lm
    rows = "".join(f"<tr class='{r['kind']}'><td>{e(_label(r))}</td>" + "".join(f"<td>{e(c)}</td>" for c in cells)
                   + "</tr>" for r, cells in body)
    notes = "".join(f"<li>n/a: {e(w)}</li>" for w in why)
    return (f"<h2>Prompt processing and generation</h2><p class='muted'>{e(LM_NOTE)}</p><div class='wide'><table>"
            f"<tr><th>model</th>{''.join(f'<th>{e(h)}</th>' for h in heads)}</tr>{rows}</table></div>"
            + (f"<ul class='muted'>{notes}</ul>" if notes else ""))


def to_html(report: dict) -> str:
    """The report as one self-contained HTML page."""
    e = html.escape
    rows = report["rows"]

    def table(cols) -> str:
        head = "".join(f"<th>{e(h)}</th>" for _, h, _ in cols)
        body = "".join(
            f"<tr class='{r['kind']}'><td>{e(_label(r))}</td>" + "".join(f"<td>{e(f(r.get(k)))}</td>" for k, _, f in cols)
            + "</tr>" for r in rows)
        return f"<table><tr><th>model</th>{head}</tr>{body}</table>"

    busy = unreliable_rows(report)
    busy_html = ("<p class='muted'>* Unreliable timing: " + "; ".join(
        f"{e(r['name'])}: {e(', '.join(r['latency_flags']))}" for r in busy) + ".</p>") if busy else ""
    parity = "".join(
        f"<tr><td>{e(r['name'])}</td><td>{e(r['runtime'])}</td><td class='{'pass' if r['parity_passed'] else 'fail'}'>"
        f"{'pass' if r['parity_passed'] else 'FAIL'}</td><td class='wrap'>{e('; '.join([r['parity_reason'], *build_notes(r)]))}</td>"
        f"<td>{e(_pct(r.get('agreement_with_student')))}</td></tr>"
        for r in rows if r.get("parity_reason"))
    errors = "".join(f"<li>{e(r['name'])}: {e(r['bench_error'])}</li>" for r in rows if r.get("bench_error"))
    loss_keys = ["loss"] + sorted({k for c in report["training"]["curve"] for k in c if k.startswith("loss_")})
    gate = report.get("gate")
    gate_html = ""
    if gate:
        gate_rows = "".join(
            f"<tr><td>{e(c['artifact'])}</td><td>{e(c['metric'])}</td><td>{e(c['bound'])}</td><td>{e(format(c['value'], '.4g'))}</td>"
            f"<td class='{'pass' if c['passed'] else 'fail'}'>{'pass' if c['passed'] else 'FAIL'}"
            f"{' (unreliable: busy machine)' if c.get('unreliable') else ''}</td></tr>" for c in gate["checks"])
        gate_html = (f"<h2>Gate</h2><table class='text'><tr><th>row</th><th>metric</th><th>bound</th><th>value</th><th>verdict</th></tr>"
                     f"{gate_rows}</table>")
    env = report.get("environment") or {}
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{e(report['title'])} — kd-edge report</title><style>{_CSS}</style></head><body>
<h1>{e(report['title'])}: teacher vs student</h1>
<p class="muted">task {e(report['task'])} · teacher {e(str(report['teacher']))} · kd-edge {e(report['kd_edge_version'])} · {e(report['created'])}</p>
<p class="lead">{e(' '.join(headline(report)))}</p>
<p class="muted">{e(_settings(report))}</p>
<h2>Speed and size</h2>
<div class="wide">{table(speed_columns(report))}</div>{busy_html}
{_lm_html(report)}
<h2>Quality</h2>
<div class="wide">{table(quality_columns(report))}</div>
<div class="charts">
<figure><figcaption>Quality against latency, with the Pareto front</figcaption>{_pareto_chart(report)}</figure>
<figure><figcaption>Latency of every timed run (box: quartiles, line: p1–p99, bar: median)</figcaption>{_distribution_chart(rows)}</figure>
<figure><figcaption>Latency p50 (whisker: p90), ms</figcaption>{_bar_chart(rows, 'latency_p50_ms', 'ms', 'latency_p90_ms')}</figure>
<figure><figcaption>File size, MB</figcaption>{_bar_chart(rows, 'file_size_mb', 'MB')}</figure>
<figure><figcaption>Peak memory, MB</figcaption>{_bar_chart(rows, 'peak_rss_mb', 'MB')}</figure>
<figure><figcaption>Training loss</figcaption>{_line_chart(report['training']['curve'], loss_keys)}</figure>
{f"<figure><figcaption>Per class: teacher (gold) and student (blue) recall, student delta</figcaption>{_per_class_chart(report.get('per_class'))}</figure>" if report.get('per_class') else ''}
</div>
{_slices_html(report.get('slices'))}
{_samples_html(report)}
<h2>Parity of each exported file</h2>
<table class="text"><tr><th>file</th><th>runtime</th><th>verdict</th><th>why</th><th>same prediction as student</th></tr>{parity}</table>
{'<h2>Benchmarks that failed</h2><ul>' + errors + '</ul>' if errors else ''}
{gate_html}
<h2>Machine</h2>
<p class="muted">{e(str(env.get('cpu_model')))} · {e(str(env.get('cpu_count')))} cores · {e(str(env.get('machine')))} ·
AVX-512 VNNI: {e(str(env.get('avx512_vnni')))} · governor {e(str(env.get('governor') or 'not readable'))} · Python {e(str(env.get('python')))}</p>
</body></html>
"""
