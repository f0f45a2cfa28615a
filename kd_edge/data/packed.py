"""Variable-length token sequences stored flat (one array of ids plus offsets), and batching helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class Packed:
    """Sequences ``values[offsets[i]:offsets[i+1]]``; rows may be vectors (hidden states)."""

    def __init__(self, values: np.ndarray, offsets: np.ndarray):
        self.values, self.offsets = values, offsets

    @classmethod
    def from_lists(cls, seqs: list, dtype=np.int32) -> "Packed":
        """Pack a list of sequences."""
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(s) for s in seqs])
        values = np.concatenate([np.asarray(s, dtype=dtype) for s in seqs]) if seqs else np.zeros(0, dtype)
        return cls(values, offsets)

    @classmethod
    def load(cls, folder: Path, name: str, mmap: bool = True) -> "Packed":
        """Load ``name.npy`` and ``name.offsets.npy`` (memory-mapped by default)."""
        mode = "r" if mmap else None
        return cls(np.load(folder / f"{name}.npy", mmap_mode=mode), np.load(folder / f"{name}.offsets.npy"))

    def save(self, folder: Path, name: str) -> None:
        """Write ``name.npy`` and ``name.offsets.npy``."""
        np.save(folder / f"{name}.npy", self.values)
        np.save(folder / f"{name}.offsets.npy", self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i]:self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        """Length of every sequence."""
        return np.diff(self.offsets)


def pad(seqs: list[np.ndarray], pad_value=0, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad sequences to ``length`` (default: the longest); return (padded, mask)."""
    length = length or max(len(s) for s in seqs)
    first = seqs[0]
    out = np.full((len(seqs), length) + first.shape[1:], pad_value, dtype=first.dtype)
    mask = np.zeros((len(seqs), length), dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
        mask[i, :len(s)] = 1
    return out, mask


def length_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Indices grouped into batches of similar length (less padding), in a fixed order."""
    order = np.argsort(lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
