"""``student.vocabulary: trim``: a student that keeps only the tokens its training text uses.

An encoder's embedding table is most of a small student (all-MiniLM-L6-v2: 11.7 M of a 2-layer
student's 15.3 M parameters), and a domain reads a small share of a 30,522-token vocabulary. The trimmed
tokenizer is the teacher's WordPiece with the unused tokens removed and the rest renumbered in their
order (special tokens always kept), so it is an ordinary tokenizer folder that any tokenizers or
transformers install loads and saves again.

What it does to text: a word whose pieces are all kept is tokenized exactly as the teacher tokenizes it
(WordPiece takes the longest kept prefix at each step, and no longer one existed), so with
``vocabulary_min_count: 1`` every training text reads the same tokens, renumbered. A word with a piece
that was not kept is split into kept pieces instead, or becomes ``[UNK]`` when none fit. On the training
split the teachers read the student's tokens (as their own ids), so that their outputs line up with the
student's position by position; on the held-out split they read their own, so the teachers' figures are
theirs. The share of held-out tokens outside the kept vocabulary is measured on the test split and
bounded by ``student.vocabulary_max_unknown``.

(Mapping the removed tokens to ``[UNK]``'s id inside the tokenizer, several strings to one id, loads
in `tokenizers` but does not survive saving it again: the vocabulary is written out by id, one string
each, so the file written by ``save_pretrained`` would lose ``[UNK]`` itself.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kd_edge.errors import ConfigError

TRIMMABLE = ("WordPiece",)


def model_type(tokenizer) -> str:
    """The tokenizers model behind a fast tokenizer: WordPiece, BPE, Unigram, WordLevel."""
    return json.loads(tokenizer.backend_tokenizer.to_str())["model"]["type"]


def check_trimmable(tokenizer, what: str = "the teacher") -> None:
    """Refuse a tokenizer whose model this trim does not rewrite."""
    kind = model_type(tokenizer)
    if kind not in TRIMMABLE:
        raise ConfigError(f"student.vocabulary: trim rewrites {', '.join(TRIMMABLE)} tokenizers (BERT-family encoders); "
                          f"{what}'s is {kind}: remove student.vocabulary (a causal LM can be given a smaller "
                          "tokenizer of its own with `kd-edge tokenizer` and student.tokenizer)")


def kept_ids(tokenizer, counts: np.ndarray, min_count: int = 1) -> np.ndarray:
    """The teacher ids the trimmed vocabulary keeps, ascending: every special token and every token the
    training text uses at least ``min_count`` times."""
    keep = counts >= min_count
    special = [i for i in tokenizer.all_special_ids if i is not None and 0 <= i < len(counts)]
    keep[special] = True
    return np.flatnonzero(keep)


def token_counts(ids_values: np.ndarray, vocab_size: int) -> np.ndarray:
    """How often each teacher id occurs in a split's packed ids."""
    return np.bincount(np.asarray(ids_values, dtype=np.int64), minlength=vocab_size)[:vocab_size]


def remap_table(keep: np.ndarray, vocab_size: int) -> np.ndarray:
    """Teacher id -> trimmed id (-1 for a removed token)."""
    table = np.full(vocab_size, -1, dtype=np.int64)
    table[keep] = np.arange(len(keep))
    return table


def unknown_share(ids_values: np.ndarray, keep: np.ndarray, vocab_size: int, special: list[int]) -> tuple[float, int]:
    """The share of a split's tokens (special tokens not counted) outside the kept vocabulary, and their count."""
    values = np.asarray(ids_values, dtype=np.int64)
    counted = ~np.isin(values, np.asarray(special, dtype=np.int64))
    kept = np.zeros(vocab_size, dtype=bool)
    kept[keep] = True
    lost = int((~kept[values] & counted).sum())
    total = int(counted.sum())
    return (lost / total if total else 0.0), lost


def write_trimmed(tokenizer, keep: np.ndarray, folder: Path):
    """Save the teacher's tokenizer with only the ``keep`` ids (renumbered 0..K-1 in their order) into
    ``folder``; return it loaded back from there."""
    from transformers import AutoTokenizer

    check_trimmable(tokenizer)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    table = remap_table(keep, len(tokenizer))
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}

    def new_id(token: str) -> int:
        old = tokenizer.convert_tokens_to_ids(token)
        return int(table[old])

    spec["model"]["vocab"] = {by_id[int(old)]: new for new, old in enumerate(keep)}
    unk = spec["model"].get("unk_token")
    if unk not in spec["model"]["vocab"]:
        raise ConfigError(f"the teacher's tokenizer has no unknown token ({unk!r}) to keep; student.vocabulary: trim "
                          "needs one")
    for added in spec.get("added_tokens") or []:
        added["id"] = new_id(added["content"])
    post = spec.get("post_processor") or {}
    for special in (post.get("special_tokens") or {}).values():
        special["ids"] = [new_id(t) for t in special["tokens"]]
    for key in ("cls", "sep"):  # BertProcessing / RobertaProcessing: [token, id]
        if isinstance(post.get(key), list):
            post[key][1] = new_id(post[key][0])
    if spec.get("padding"):
        spec["padding"]["pad_id"] = new_id(spec["padding"]["pad_token"])
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    for stale in ("vocab.txt", "vocab.json", "merges.txt", "added_tokens.json"):
        (folder / stale).unlink(missing_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    trimmed = AutoTokenizer.from_pretrained(str(folder))
    if len(trimmed) != len(keep):
        raise ConfigError(f"the trimmed tokenizer has {len(trimmed)} tokens, not the {len(keep)} kept; "
                          "this tokenizer's special tokens cannot be renumbered")
    return trimmed


def trim_embeddings(model, keep: np.ndarray, pad_id: int | None) -> None:
    """Keep only rows ``keep`` of the model's input embedding table (and of a head over the vocabulary),
    in their order; the config's vocabulary size and pad id follow."""
    import torch
    from torch import nn

    index = torch.as_tensor(keep, dtype=torch.long)
    old = model.get_input_embeddings()
    new = nn.Embedding(len(keep), old.weight.shape[1], padding_idx=pad_id)
    with torch.no_grad():
        new.weight.copy_(old.weight[index])
    model.set_input_embeddings(new)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and head.weight.shape[0] == old.weight.shape[0]:
        if head.weight is old.weight:
            head.weight = new.weight
        else:
            head.weight = nn.Parameter(head.weight.detach()[index].clone())
        if getattr(head, "bias", None) is not None:
            head.bias = nn.Parameter(head.bias.detach()[index].clone())
        head.out_features = len(keep)
    model.config.vocab_size = len(keep)
    if pad_id is not None:
        model.config.pad_token_id = pad_id
