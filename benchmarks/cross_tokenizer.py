"""A student with its own tokenizer learning from the SmolLM2 teacher, against the same student trained
on the next-token loss alone: one kd-edge run (its ``distill.baseline`` is that student), in one invocation.

    python benchmarks/cross_tokenizer.py [--train 3600] [--test 400] [--vocab 8192] [--loss gold] [--steps N]

1. The data stage of the SmolLM2 recipe's data (bundled VADER sentences) runs first; a byte-level BPE
   tokenizer of ``--vocab`` tokens is trained by `tokenizers` on its training texts
   (``kd_edge/distill/alignment.py: train_tokenizer``).
2. The student: the recipe's 6 evenly spaced teacher layers (``student.init: config``, shrunk from the
   teacher), with that vocabulary; its embedding rows start from the teacher's rows of the same token
   (else the mean of its teacher pieces). The teacher's top-64 distributions are cached on the teacher's
   own tokens and aligned to the student's where both have read the same text.
3. Loss ``--loss`` (gold: KL over the tokens both vocabularies spell alike + sorted L1 over the rest;
   uld: sorted L1 only) + 0.5 CE, against the baseline's CE alone: same initialisation, data, steps,
   batch and seed. Held-out perplexity on the student's tokens (both students share them), bits per byte
   for every model (what compares across tokenizers), and the paired bootstrap of student against
   baseline over the held-out texts (``evaluate/run.py: paired_ratio``). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def recipe_for(args, tokenizer: Path | None) -> dict:
    import yaml

    base = yaml.safe_load((ROOT / "models" / "smollm2-135m-to-l6.yaml").read_text())
    base["name"] = "cross-tokenizer"
    base["data"].update(max_samples=args.train + args.test, test_size=args.test)
    base["distill"].update(batch_size=args.batch, baseline=True, checkpoint_every=1000, log_every=20,
                           freeze_embeddings=False,  # the student's own table is new: it must learn
                           losses=[{"name": args.loss, "temperature": 1.0, "weight": 1.0}, {"name": "ce", "weight": 0.5}])
    if args.steps:
        base["distill"].update(epochs=100, max_steps=args.steps)
    if tokenizer is not None:
        base["student"] = {"init": "config", "layers": 6, "shrink_from_teacher": True, "tokenizer": str(tokenizer)}
    base["evaluate"] = {"sample_prompts": 5}
    base["export"] = {"artifacts": []}
    base.pop("bench", None)
    return base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=3600)
    parser.add_argument("--test", type=int, default=400)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--loss", default="gold", choices=("gold", "uld"))
    parser.add_argument("--steps", type=int, default=None, help="default: one epoch")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("/tmp/cross-tokenizer"))
    args = parser.parse_args()

    from kd_edge.config import recipe_from_dict
    from kd_edge.distill.alignment import train_tokenizer
    from kd_edge.pipeline import run_pipeline
    from kd_edge.preflight import resolve
    from kd_edge.runfiles import read_jsonl

    run = args.out / "run"
    t0 = time.perf_counter()
    run_pipeline(resolve(recipe_from_dict(recipe_for(args, None), "data recipe")), run, stop_after="data", progress=False)
    tokenizer = args.out / "student-tokenizer"
    train_tokenizer([r["text"] for r in read_jsonl(run / "data" / "train.jsonl")], args.vocab, tokenizer)
    recipe = resolve(recipe_from_dict(recipe_for(args, tokenizer), "cross-tokenizer recipe"))
    run_pipeline(recipe, run, stop_after="evaluate", progress=False, resume=True)  # keeps the data stage
    minutes = (time.perf_counter() - t0) / 60
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    models, cache = metrics["models"], metrics["teacher_cache"]
    cross = cache["cross_tokenizer"]
    steps = json.loads((run / "train" / "summary.json").read_text()).get("steps")
    vs = models["baseline"]["student_vs_baseline"]
    print(f"SmolLM2-135M teacher (vocabulary {cross['teacher_vocab_size']:,}) -> 6 layers with its own byte-level BPE of "
          f"{cross['student_vocab_size']:,} tokens trained on the {args.train} training texts "
          f"({cross['matched_tokens']:,} spelled as the teacher's); {steps} steps of {args.batch}; "
          f"{cross['aligned']['train'] * 100:.1f} % of the student's training predictions aligned to the teacher's; "
          f"{minutes:.0f} min\n")
    print("| model | parameters | held-out perplexity (own tokens) | bits per byte | repeated 4-grams | looping prompts |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in ("teacher", "student", "baseline"):
        m = models[name]
        loops = f"{m['looping_prompts']}/{m['sample_prompts']}" if m.get("sample_prompts") else "—"
        rep = f"{m['repeated_4grams'] * 100:.0f} %" if m.get("repeated_4grams") is not None else "—"
        label = {"teacher": "teacher", "student": f"student ({args.loss} + 0.5 CE)", "baseline": "baseline (CE only)"}[name]
        print(f"| {label} | {m['params'] / 1e6:.1f} M | {m['perplexity']:.2f} | {m['bits_per_byte']:.4f} | {rep} | {loops} |")
    print(f"\nstudent vs baseline: perplexity ratio {vs['perplexity_ratio']:.4f} ({(vs['perplexity_ratio'] - 1) * 100:+.2f} %), "
          f"bootstrap SE {vs['se'] * 100:.2f} %, 95 % interval {vs['ci95'][0]:.3f}-{vs['ci95'][1]:.3f} over {vs['texts']} "
          f"held-out texts: {'significant' if vs['significant'] else 'not significant'}")


if __name__ == "__main__":
    main()
