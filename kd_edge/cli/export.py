"""`kd-edge export` (a run, or any model folder) and `kd-edge quantize` (any exported file)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kd_edge.cli import app
from kd_edge.cli.options import QuietOpt, SetOpt

from kd_edge.formats import FORMATS as _FORMATS

FORMATS = tuple(_FORMATS)
PRECISIONS = tuple(dict.fromkeys(p for f in _FORMATS.values() for p in f.precision_names))
_PRECISION_HELP = "; ".join(f"{f.name}: {', '.join(f.precision_names)}" for f in _FORMATS.values())
_QUANTIZE_HELP = "; ".join(f"{f.name}: {', '.join(p.name for p in f.precisions if p.make)}"
                           for f in _FORMATS.values() if f.file_quantize)


def _split(value: str | None, allowed: tuple[str, ...], option: str) -> list[str]:
    from kd_edge.errors import ConfigError

    items = [v.strip() for v in (value or "").split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad:
        raise ConfigError(f"{option} {bad[0]!r} is not known; choose from {', '.join(allowed)}")
    return items


def _shapes(value: str | None) -> list[tuple[int, int]]:
    from kd_edge.errors import ConfigError

    shapes = []
    for part in (value or "").split(","):
        if not part.strip():
            continue
        try:
            b, s = part.lower().split("x")
            shapes.append((int(b), int(s)))
        except ValueError:
            raise ConfigError(f"--shapes {part!r} is not a shape; write BATCHxSEQUENCE, e.g. 1x128,1x64") from None
    return shapes


@app.command("export")
def export_command(
    path: Annotated[Path, typer.Argument(help="A run folder (re-export its student) or any Hugging Face model "
                                              "folder.", show_default=False)],
    format_: Annotated[Optional[str], typer.Option(
        "--format", "-f", help=f"Model folder: formats, comma separated: {', '.join(FORMATS)}.",
        show_default="onnx")] = None,
    precision: Annotated[Optional[str], typer.Option(
        "--precision", "-p", help=f"Model folder: precisions, comma separated ({_PRECISION_HELP}); each format gets "
        "those it takes.", show_default="fp32,int8")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Model folder: where the files go.",
                                                show_default="exports/<model folder name>")] = None,
    task: Annotated[Optional[str], typer.Option(help="Model folder: sentence_embedding, sequence_classification or "
                                                     "causal_lm (default: from config.json).", show_default=False)] = None,
    shapes: Annotated[Optional[str], typer.Option(help="TFLite signatures, BATCHxSEQUENCE comma separated.",
                                                  show_default="1x128")] = None,
    context_length: Annotated[Optional[int], typer.Option(
        "--context-length", min=2, help="Model folder, GenAI: the positions (prompt + generated) a folder is built "
        "for; its rotary tables grow with them.", show_default="the model's max_position_embeddings")] = None,
    texts: Annotated[Optional[Path], typer.Option(
        help="Model folder: sentences (.jsonl with 'text', or .txt) to verify and calibrate on.",
        show_default="bundled VADER sentences")] = None,
    force: Annotated[bool, typer.Option("--force", help="Model folder: replace what --out holds.")] = False,
    trust_remote_code: Annotated[bool, typer.Option(help="Run custom modelling code shipped with the model.")] = False,
    allow_pickle: Annotated[bool, typer.Option(
        "--allow-pickle", help="Load pytorch_model.bin (a pickle, which can run code) when the folder has no "
        "safetensors. Only for files you trust.")] = False,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Export to every deployable format at each precision, and prove every file equal to the PyTorch model.

    On a run folder: re-export the run's student as its recipe says (--set export.* to change it),
    then verify. On any model folder: write each format x precision into --out with a JSON sidecar
    (and the tokenizer beside them), check each on 200 real sentences (max/mean |Δ| against the model
    in float64, same predictions) and print a verdict table. `kd-edge list formats` says what each
    format holds. A causal LM is exported with its KV cache (ONNX), as prefill_<T> + decode
    signatures (TFLite, --shapes 1xT), as llama.cpp's GGUF or as an ONNX Runtime GenAI folder, and
    each file also generates 32 greedy tokens on 5 prompts in its own runtime to compare with PyTorch's.

    Examples:

      kd-edge export runs/minilm-l6-to-l2 --set 'export.tflite_shapes=[[1,64],[1,128]]'

      kd-edge export path/to/my-bert --format onnx,tflite --precision fp32,fp16,int8

      kd-edge export path/to/my-classifier --precision int8-static --texts calib.jsonl

      kd-edge export path/to/my-llama --format onnx,tflite --precision fp32,int8 --shapes 1x64

      kd-edge export path/to/my-llama --format gguf,genai --precision fp32,int8,int4
    """
    from kd_edge.errors import ConfigError
    from kd_edge.paths import input_dir, input_file, output_dir

    input_dir(path, "MODEL_DIR", "pass a run folder or a model folder written by save_pretrained")
    from kd_edge.runfiles import RunFiles

    if RunFiles(path).is_run():
        if format_ or precision or out or task or texts or force or allow_pickle or context_length:
            raise ConfigError("--format/--precision/--out/--task/--texts/--context-length are for model folders; a run "
                              "folder is exported as its recipe says: change that with --set export.artifacts=... "
                              "(or export.context_length=...)")
        from kd_edge.cli.run import execute

        sets = list(set_ or [])
        if shapes:
            sets.append(f"export.tflite_shapes={[list(s) for s in _shapes(shapes)]}")
        raise typer.Exit(execute(None, None, sets, resume=True, force=False, quiet=quiet, stop_after="verify",
                                 only=("export", "verify"), from_run=path))
    if set_:
        raise ConfigError("--set is for run folders; on a model folder use --format, --precision, --shapes")
    from kd_edge.export.config import ArtifactSpec, ExportConfig
    from kd_edge.cli.export_folder import export_model_dir

    formats = _split(format_, FORMATS, "--format") or ["onnx"]
    precisions = _split(precision, PRECISIONS, "--precision") or ["fp32", "int8"]
    specs = [ArtifactSpec(format=fmt, precision=prec) for fmt in formats for prec in precisions
             if prec in _FORMATS[fmt].precision_names]  # each format gets the precisions it takes
    if not specs:
        raise ConfigError(f"no precision of {', '.join(precisions)} exists for {', '.join(formats)}; {_PRECISION_HELP}")
    cfg = ExportConfig(artifacts=specs, context_length=context_length,
                       **({"tflite_shapes": _shapes(shapes)} if shapes else {}))
    out = output_dir(out or Path("exports") / path.name, "--out")
    if texts is not None:
        input_file(texts, "--texts", "pass a .jsonl with a 'text' field or a .txt file")
    if not quiet:
        typer.echo(f"kd-edge: exporting {path} -> {out} ({', '.join(s.name for s in specs)})")
    records = export_model_dir(path, out, cfg, task=task, texts=texts, force=force, trust_remote_code=trust_remote_code,
                               allow_pickle=allow_pickle)
    width = max(len(r["name"]) for r in records)
    typer.echo(f"{'file':<{width}}  {'size MB':>8}  {'max |Δ|':>9}  verdict")
    for r in records:
        typer.echo(f"{r['name']:<{width}}  {r['size_mb']:8.2f}  {r['max_abs_diff']:9.2e}  "
                   f"{'pass' if r['passed'] else 'FAIL'}: {r['reason']}")
    compared = sorted({o for r in records for o in r.get("outputs_compared", [])})
    if compared:
        names = ", ".join(map(repr, compared))
        typer.echo(f"compared: the output {names} of every file, against the model in float64, on "
                   f"{records[0].get('n_texts')} texts")
    typer.echo(f"files and verify.json: {out}")
    raise typer.Exit(0 if all(r["passed"] for r in records) else 1)


@app.command("quantize")
def quantize_command(
    path: Annotated[Path, typer.Argument(help="An fp32 .onnx or .tflite file.", show_default=False)],
    precision: Annotated[str, typer.Option("--precision", "-p", help=_QUANTIZE_HELP + ".")] = "int8",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="The new file.",
                                                show_default="FILE.<precision>.onnx beside FILE")] = None,
    calibration: Annotated[Optional[Path], typer.Option(
        help="Sentences (.jsonl with 'text', or .txt) to calibrate int8-static and to check the result on.",
        show_default=False)] = None,
    tokenizer: Annotated[Optional[Path], typer.Option(help="The model folder whose tokenizer reads --calibration.",
                                                      show_default=False)] = None,
    keep_float: Annotated[int, typer.Option(
        help="ONNX int8: keep nodes in float. 1: the attention MatMuls of two computed tensors (every weight "
        "stays int8; changes static int8 only); 2: also the first and last layers and the head.", min=0, max=2)] = 0,
    output: Annotated[Optional[str], typer.Option(
        "--output", help="Compare only this output of the file (default: every floating-point output).",
        show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it exists.")] = False,
) -> None:
    """Make a smaller precision of an exported file and check it against the original.

    Every floating-point output of the file is compared on sample inputs (max |Δ| and the lowest
    cosine to the original); integer outputs, such as a copy of the token ids, are named and left out.
    With --calibration and --tokenizer the inputs are your sentences, else random token ids.

    Examples:

      kd-edge quantize student.fp32.onnx                       # dynamic int8 -> student.fp32.int8.onnx

      kd-edge quantize model.onnx -p int8-static --calibration texts.jsonl --tokenizer path/to/model

      kd-edge quantize model.tflite -p fp16
    """
    from kd_edge.cli.quantize_file import quantize_file
    from kd_edge.paths import input_dir, input_file

    input_file(path, "FILE", "pass an exported .onnx or .tflite file")
    if calibration is not None:
        input_file(calibration, "--calibration", "pass a .jsonl with a 'text' field or a .txt file")
    if tokenizer is not None:
        input_dir(tokenizer, "--tokenizer", "pass the model folder that holds the tokenizer files")
    r = quantize_file(path, precision, out, texts=calibration, tokenizer=tokenizer, force=force,
                      fallback_level=keep_float, output=output)
    typer.echo(f"{r['file']}: {r['size_mb']:.2f} MB (from {r['source_size_mb']:.2f} MB), checked against the original "
               f"on {r['n_inputs']} inputs" + (f", {r['nodes_in_float']} nodes kept in float" if r["nodes_in_float"] else ""))
    width = max(len(c["name"]) for c in r["outputs"])
    for c in r["outputs"]:
        typer.echo(f"  output {c['name']:<{width}}  max |Δ| {c['max_abs_diff']:.2e}  min cosine {c['min_cosine']:.4f}")
    if r["outputs_left_out"]:
        typer.echo(f"  left out (not floating point): {', '.join(r['outputs_left_out'])}")
