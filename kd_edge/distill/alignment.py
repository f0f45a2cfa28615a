"""Two tokenizations of one text, for a causal-LM student that reads text with its own tokenizer
(``student.tokenizer``).

A causal LM's prediction at position i is its distribution over what follows the text up to the end
of token i. A teacher's and a student's predictions are comparable where both have read the same
text: where a student token and a teacher token end at the same character. ``align`` pairs those
positions, as TRL's GOLD groups tokens between the byte boundaries both tokenizations share and
compares each group at its first prediction (GOLD also multiplies in the probabilities of the group's
later tokens; here each side's distribution is taken as it is). ``vocab_map`` pairs the tokens both
vocabularies spell alike (GOLD's matched tokens); ``transplant_rows`` starts a student's embedding rows
from the teacher's.

Everything here is numpy and tokenizers: the teacher stage aligns once and the cache keeps the result.
"""

from __future__ import annotations

import numpy as np

from kd_edge.data.packed import Packed
from kd_edge.errors import ConfigError

NO_TEXT = -1  # the end of a token that stands for no text (a special token after the first position)


def _bos(tokenizer) -> list[int]:
    """The BOS id the tokenizer puts before a text, or nothing."""
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else []


def encode(tokenizer, rows: list[dict], max_length: int, ends: bool = True) -> tuple[Packed, Packed | None, Packed | None]:
    """Token ids of each row (special tokens added, truncated, unpadded), the loss weight of every
    token when any row has weighted segments, and (``ends``) where each token's text ends: a character
    offset into the row's text (the concatenation of its segments), 0 for a leading special token,
    ``NO_TEXT`` for any other special token."""
    if ends and not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"{type(tokenizer).__name__} is a slow tokenizer, which cannot say where each token's text "
                          "ends; save the tokenizer with its tokenizer.json (a fast tokenizer) for a student with its "
                          "own tokenizer")
    if not any("segments" in r for r in rows):
        enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=max_length, add_special_tokens=True,
                        return_offsets_mapping=ends, return_special_tokens_mask=ends)
        if not ends:
            return Packed.from_lists(enc["input_ids"]), None, None
        where = [_ends(offsets, specials) for offsets, specials in zip(enc["offset_mapping"], enc["special_tokens_mask"])]
        return Packed.from_lists(enc["input_ids"]), None, Packed.from_lists(where, dtype=np.int64)
    bos = _bos(tokenizer)
    all_ids, all_w, all_ends = [], [], []
    for r in rows:
        ids, w, spans, start = list(bos), [0.0] * len(bos), [(0, 0)] * len(bos), 0
        for text, weight in r.get("segments") or [[r["text"], 1.0]]:
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=ends)
            ids += enc["input_ids"]
            w += [float(weight)] * len(enc["input_ids"])
            if ends:
                spans += [(start + a, start + b) for a, b in enc["offset_mapping"]]
            start += len(text)
        all_ids.append(ids[:max_length])
        all_w.append(w[:max_length])
        all_ends.append(_ends(spans, [1] * len(bos) + [0] * (len(spans) - len(bos)))[:max_length])
    return (Packed.from_lists(all_ids), Packed.from_lists(all_w, dtype=np.float32),
            Packed.from_lists(all_ends, dtype=np.int64) if ends else None)


def _ends(offsets: list[tuple[int, int]], specials: list[int]) -> list[int]:
    """Where each token's text ends, from its (start, end) character offsets: ``NO_TEXT`` for a special
    token after the first position and for a token whose character the next token goes on with (a
    byte-level token holding part of a character's bytes: the offsets cannot say how much of it was read)."""
    out = []
    for k, ((_, end), special) in enumerate(zip(offsets, specials)):
        following = next((offsets[n][0] for n in range(k + 1, len(offsets)) if not specials[n]), None)
        if special:
            out.append(0 if k == 0 else NO_TEXT)
        elif following is not None and following < end:
            out.append(NO_TEXT)
        else:
            out.append(end)
    return out


def align(student_ends: Packed, teacher_ends: Packed) -> np.ndarray:
    """For every student token (packed), the packed index of the teacher token whose prediction read
    the same text, or -1: both predict a next token (neither is its text's last) and both tokens end
    at the same character."""
    out = np.full(int(student_ends.offsets[-1]), -1, np.int64)
    for i in range(len(student_ends)):
        s, t = np.asarray(student_ends[i]), np.asarray(teacher_ends[i])
        at = {int(e): j for j, e in enumerate(t[:-1]) if e != NO_TEXT}
        start, t_start = int(student_ends.offsets[i]), int(teacher_ends.offsets[i])
        for k, e in enumerate(s[:-1]):
            j = at.get(int(e))
            if j is not None and e != NO_TEXT:
                out[start + k] = t_start + j
    return out


def aligned_share(student_ends: Packed, alignment: np.ndarray) -> float:
    """The share of the student's predictions (positions with a next token) that have a teacher's."""
    predicting = int(student_ends.offsets[-1]) - len(student_ends)
    return float((alignment >= 0).sum()) / max(predicting, 1)


def vocab_map(teacher_tok, student_tok) -> np.ndarray:
    """For every teacher token id, the student's id of the token spelled the same way, or -1."""
    student = student_tok.get_vocab()
    teacher = teacher_tok.get_vocab()
    out = np.full(max(len(teacher_tok), max(teacher.values()) + 1), -1, np.int64)
    for token, i in teacher.items():
        j = student.get(token)
        if j is not None:
            out[i] = j
    return out


def transplant_rows(teacher_rows: np.ndarray, teacher_tok, student_tok, n_rows: int) -> tuple[np.ndarray, int]:
    """Student embedding rows from the teacher's: a token both vocabularies spell alike takes the
    teacher's row, any other the mean of the rows of the teacher tokens its text splits into (the
    teacher's mean row when it has no text). Returns the rows and how many were copied whole."""
    student = student_tok.get_vocab()
    teacher = teacher_tok.get_vocab()
    out = np.repeat(teacher_rows.mean(0, keepdims=True), n_rows, 0)
    copied = 0
    for token, j in student.items():
        if j >= n_rows:
            continue
        i = teacher.get(token)
        if i is not None and i < len(teacher_rows):
            out[j] = teacher_rows[i]
            copied += 1
            continue
        pieces = [p for p in teacher_tok(student_tok.convert_tokens_to_string([token]), add_special_tokens=False)["input_ids"]
                  if p < len(teacher_rows)]
        if pieces:
            out[j] = teacher_rows[pieces].mean(0)
    return out, copied


def train_tokenizer(texts: list[str], vocab_size: int, folder, special: str = "<|endoftext|>"):
    """A byte-level BPE tokenizer (GPT-2's pre-tokenization, as SmolLM2's and Llama's are) trained by
    `tokenizers` on ``texts`` with ``vocab_size`` tokens, ``special`` its end-of-text and padding token,
    saved as a fast tokenizer folder for ``student.tokenizer``; returns it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[special],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=special, pad_token=special)
    fast.save_pretrained(str(folder))
    return fast
