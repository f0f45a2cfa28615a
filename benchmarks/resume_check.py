"""What re-reading every output costs when a finished run is checked (issue: a resume must notice a
file changed in place, fast enough not to be noticed).

On a finished run folder, in interleaved rounds in one invocation: the time of `RunDir.outputs_intact`
over every stage as it is now (every output file read and hashed again), against the size-and-mtime
shortcut it replaced (the recorded digest trusted when size and mtime match), and the wall time of
the whole `kd-edge run` that finds nothing to do, and what the stage keys' code digests cost (every
kd-edge module a stage reaches, parsed; and with the parses the manifest keeps). The file cache is
warm (the run was just read), as it is when a user reruns a command.

    python benchmarks/resume_check.py runs/minilm-l6-to-l2 [--rounds 5] [--write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import results  # noqa: E402
from kd_edge.artifacts import file_records  # noqa: E402
from kd_edge import stagekeys  # noqa: E402
from kd_edge.manifest import RunDir  # noqa: E402
from kd_edge.stages import STAGES  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--write", action="store_true", help="append the result to benchmarks/RESULTS.md")
    args = p.parse_args()
    run = RunDir(Path(args.run_dir))
    stages = [(st, run.stage_record(st.name)) for st in STAGES if run.stage_record(st.name)]
    size = sum(f.stat().st_size for st, _ in stages for rel in st.outputs
               for f in ([run.path / rel] if (run.path / rel).is_file() else (run.path / rel).rglob("*")) if f.is_file())
    n_files = sum(len(r.get("outputs") or {}) for _, r in stages)
    full, shortcut, command, keys, cold = [], [], [], [], []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        assert all(run.outputs_intact(r, st.outputs) for st, r in stages)
        full.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for st, r in stages:
            file_records(run.path, list(st.outputs), known=r.get("outputs"))
        shortcut.append(time.perf_counter() - t0)
        stagekeys.PARSED.clear()  # every module's source parsed again (no parsed_code in the manifest)
        t0 = time.perf_counter()
        for st in STAGES:
            stagekeys.code_digest(st.code)
        cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()  # as the pipeline does: sources read and hashed, parses from the manifest
        for st in STAGES:
            stagekeys.code_digest(st.code)
        keys.append(time.perf_counter() - t0)
        recipe = run.path / "recipe.resolved.yaml"
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "kd_edge", "run", str(recipe), "--out", str(run.path), "-q"],
                              capture_output=True, text=True)
        command.append(time.perf_counter() - t0)
        assert "nothing to do" in done.stdout, done.stdout + done.stderr
    text = (f"### {dt.date.today()} — `benchmarks/resume_check.py {run.path}`\n\n"
            f"Machine: {results.machine()}. {n_files} output files, {size / 1e6:.0f} MB, warm file cache; "
            f"{args.rounds} interleaved rounds, medians.\n\n"
            "| check | median s | range s |\n|---|---:|---:|\n"
            f"| every output read and hashed again (now) | {statistics.median(full):.3f} | "
            f"{min(full):.3f}–{max(full):.3f} |\n"
            f"| size and mtime trusted (before) | {statistics.median(shortcut):.4f} | "
            f"{min(shortcut):.4f}–{max(shortcut):.4f} |\n"
            f"| every stage's code digest, sources parsed (stage keys, {len(STAGES)} stages: first run) | "
            f"{statistics.median(cold):.3f} | {min(cold):.3f}–{max(cold):.3f} |\n"
            f"| every stage's code digest, parses kept in the manifest (every later run) | "
            f"{statistics.median(keys):.4f} | {min(keys):.4f}–{max(keys):.4f} |\n"
            f"| the whole `kd-edge run` that finds nothing to do (now) | {statistics.median(command):.2f} | "
            f"{min(command):.2f}–{max(command):.2f} |\n")
    print(text)
    if args.write:
        results.append(text)


if __name__ == "__main__":
    main()
