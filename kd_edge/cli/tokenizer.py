"""`kd-edge tokenizer`: train a student's own tokenizer on text, for `student.tokenizer`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kd_edge.cli import app


@app.command("tokenizer")
def tokenizer_command(
    data: Annotated[str, typer.Argument(help="Text to train on: a .jsonl/.csv/.txt file (or bundled:vader), as "
                                        "data.source takes it. Use the run's training text, not its held-out split.",
                                        show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="The new tokenizer folder (must not exist).",
                                      show_default=False)],
    vocab_size: Annotated[int, typer.Option("--vocab-size", min=260, help="Tokens in the vocabulary.")] = 8192,
    text_field: Annotated[str, typer.Option("--text-field", help="Column holding the text (.jsonl/.csv).")] = "text",
) -> None:
    """Train a byte-level BPE tokenizer (GPT-2's pre-tokenization, as SmolLM2's and Llama's) with the
    `tokenizers` library and save it as a fast tokenizer folder: a causal-LM student's own vocabulary,
    named by `student.tokenizer` in a recipe (with the gold or uld loss). A smaller vocabulary makes a
    smaller embedding table and head.

    Examples:

      kd-edge tokenizer runs/my-run/data/train.jsonl --out tokenizers/own-8k --vocab-size 8192

      kd-edge tokenizer corpus.txt --out tokenizers/own-4k --vocab-size 4096
    """
    from kd_edge.data.config import DataConfig
    from kd_edge.data.loaders import read_rows, source_path
    from kd_edge.distill.alignment import train_tokenizer
    from kd_edge.errors import ArtifactError
    from kd_edge.paths import output_dir

    if Path(out).expanduser().exists():
        raise ArtifactError(f"--out '{out}' already exists; choose a new folder for the tokenizer")
    output_dir(out)
    if not source_path(data).exists():
        raise ArtifactError(f"'{data}' does not exist; pass a .jsonl/.csv/.txt file of text")
    texts = [r["text"] for r in read_rows(DataConfig(source=data, text_field=text_field, label_field=None))]
    if not texts:
        raise ArtifactError(f"'{data}' holds no text; give it some")
    tok = train_tokenizer(texts, vocab_size, Path(out).expanduser())
    typer.echo(f"{out}: a byte-level BPE of {len(tok):,} tokens trained on {len(texts):,} texts; "
               f"name it in a recipe as student.tokenizer: {out}")
