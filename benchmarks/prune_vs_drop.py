"""A pruned student against a layer-dropped one of the same size, trained the same way, in one invocation.

    python benchmarks/prune_vs_drop.py minilm  [--steps 266] [--layers 2] [--out /tmp/prune-vs-drop]
    python benchmarks/prune_vs_drop.py smollm2 [--steps 80] [--batch 8] [--train 300] [--test 100] [--layers 6]

- ``drop``: ``student.init: teacher_layers``, ``--layers`` of the teacher's layers (the bundled recipe's
  choice: evenly spread, ending with the last), every layer whole.
- ``prune``: ``student.init: prune`` with one layer more (the ones of highest block importance) and
  ``student.params`` set to the dropped student's parameter count, so the FFN of every layer is cut
  (by neuron importance on 256 training texts) until the two are the same size.

Same data, teacher cache, losses, steps, batch and seed; each student scored on the same held-out texts.
MiniLM: probe accuracy (and cosine and kNN agreement with the teacher); SmolLM2: perplexity, with the
pruned student against the dropped one by a paired bootstrap over the held-out texts
(``kd_edge/evaluate/run.py: paired_ratio``). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

RECIPES = {"minilm": "minilm-l6-to-l2.yaml", "smollm2": "smollm2-135m-to-l6.yaml"}


def recipe_for(teacher: str, variant: str, args, params: int | None = None) -> dict:
    base = yaml.safe_load((ROOT / "kd_edge" / "recipes" / RECIPES[teacher]).read_text())
    base["name"] = f"{teacher}-{variant}"
    base["teacher"]["cache_dir"] = str(args.out / "shared-cache")
    base["distill"].update(epochs=100, max_steps=args.steps, checkpoint_every=10_000, baseline=False)
    if teacher == "smollm2":
        base["data"].update(max_samples=args.train + args.test, test_size=args.test)
        base["distill"]["batch_size"] = args.batch
        base["evaluate"] = {"sample_prompts": 0}
    base["export"] = {"artifacts": []}
    base.pop("bench", None)
    base.pop("gate", None)
    if variant == "drop":
        base["student"] = {"init": "teacher_layers", "layers": args.layers}
    else:
        base["student"] = {"init": "prune", "layers": args.layers + 1, "params": params}
    return base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("teacher", choices=sorted(RECIPES))
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: minilm 266 = one epoch, "
                        "smollm2 80)")
    parser.add_argument("--layers", type=int, default=None, help="the dropped student's layers (minilm 2, smollm2 6)")
    parser.add_argument("--batch", type=int, default=8, help="smollm2: batch size")
    parser.add_argument("--train", type=int, default=300, help="smollm2: training texts")
    parser.add_argument("--test", type=int, default=100, help="smollm2: held-out texts")
    parser.add_argument("--out", type=Path, default=Path("/tmp/prune-vs-drop"))
    args = parser.parse_args()
    args.steps = args.steps or (266 if args.teacher == "minilm" else 80)
    args.layers = args.layers or (2 if args.teacher == "minilm" else 6)
    args.out = args.out / args.teacher
    args.out.mkdir(parents=True, exist_ok=True)

    from kd_edge.config import recipe_from_dict
    from kd_edge.pipeline import run_pipeline
    from kd_edge.preflight import resolve

    seconds, metrics = {}, {}
    params = None
    for variant in ("drop", "prune"):
        t0 = time.perf_counter()
        recipe = resolve(recipe_from_dict(recipe_for(args.teacher, variant, args, params), f"{variant} recipe"))
        run_pipeline(recipe, args.out / variant, stop_after="evaluate", progress=False)
        seconds[variant] = time.perf_counter() - t0
        meta = json.loads((args.out / variant / "student_init" / "kd_edge.json").read_text())
        if variant == "drop":
            params = meta["params"]
        metrics[variant] = {**json.loads((args.out / variant / "eval" / "metrics.json").read_text())["models"]["student"],
                            "init": meta}
        print(f"{variant}: {seconds[variant] / 60:.1f} min", file=sys.stderr, flush=True)
    teacher = json.loads((args.out / "drop" / "eval" / "metrics.json").read_text())["models"]["teacher"]
    pruned = metrics["prune"]["init"]["pruned"]
    desc = {"drop": f"{args.layers} whole teacher layers {metrics['drop']['init'].get('teacher_layers')}",
            "prune": f"{len(pruned['layers'])} layers {pruned['layers']}, FFN {pruned['intermediate_size']} of "
                     f"{pruned['of_teacher_intermediate_size']} neurons"}
    print(f"\n{args.teacher} teacher; {args.steps} steps, same data, cache, losses and seed\n")
    if args.teacher == "minilm":
        print(f"| student | parameters | probe accuracy (teacher {teacher['probe_accuracy']:.4f}) | of the teacher's | "
              "cosine to teacher | kNN agreement | minutes |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for v in ("drop", "prune"):
            m = metrics[v]
            print(f"| {v}: {desc[v]} | {m['params']:,} | {m['probe_accuracy']:.4f} | "
                  f"{m['probe_accuracy'] / teacher['probe_accuracy'] * 100:.1f} % | {m['cosine_to_teacher']:.4f} | "
                  f"{m['knn_agreement']:.4f} | {seconds[v] / 60:.1f} |")
        return
    from lm_methods import held_out

    from kd_edge.evaluate.run import paired_ratio

    nll = {v: held_out(args.out / v) for v in ("drop", "prune")}
    vs = paired_ratio(nll["prune"][0], nll["drop"][0], nll["drop"][1])["student_vs_baseline"]
    print(f"| student | parameters | held-out perplexity (teacher {teacher['perplexity']:.2f}) | top-1 agreement | "
          "vs drop (paired bootstrap) | minutes |")
    print("|---|---:|---:|---:|---:|---:|")
    for v in ("drop", "prune"):
        m = metrics[v]
        cmp = (f"{(vs['perplexity_ratio'] - 1) * 100:+.2f} % ± {vs['se'] * 100:.2f} %, 95 % {vs['ci95'][0]:.3f}-"
               f"{vs['ci95'][1]:.3f}{'' if vs['significant'] else ' (n.s.)'}") if v == "prune" else "—"
        print(f"| {v}: {desc[v]} | {m['params']:,} | {m['perplexity']:.2f} | "
              f"{m['top1_agreement_with_teacher'] * 100:.1f} % | {cmp} | {seconds[v] / 60:.1f} |")


if __name__ == "__main__":
    main()
