"""Several training sets in one run, each drawn by a ratio (the study mixed WebVid pseudo-captions
with MSR-VTT at 1:7, LAVIS's `train_dataset_ratios`).

The sources' clips are concatenated into one dataset; an epoch is an order over that concatenation
in which each position is drawn from a source with probability ratio / sum(ratios), and each
source's clips come in their own shuffled stream (reshuffled when a small source runs out). The
order is a pure function of (seed, epoch), so a resumed run continues exactly where it stopped.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .engine import sum_over_ranks
from .errors import UserError


@dataclass
class Source:
    name: str
    train: str
    videos: str | None
    ratio: float
    format: str = "auto"


def read_sources(entries: list, recipe: str) -> list[Source]:
    """Check `data.sources` entries: [{train, videos, ratio, name?, format?}, ...]."""
    sources = []
    for i, entry in enumerate(entries):
        where = f"recipe '{recipe}': field 'data.sources[{i}]"
        if not isinstance(entry, dict) or "train" not in entry:
            raise UserError(f"{where}' must be a mapping with at least 'train' (annotation file) and 'ratio'")
        unknown = set(entry) - {"name", "train", "videos", "ratio", "format"}
        if unknown:
            raise UserError(f"{where}': unknown keys {sorted(unknown)} (expected name, train, videos, ratio, format)")
        ratio = entry.get("ratio", 1.0)
        if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or ratio <= 0:
            raise UserError(f"{where}.ratio' must be a number > 0, got {ratio!r}")
        name = str(entry.get("name") or f"source{i}")
        sources.append(Source(name, str(entry["train"]), entry.get("videos"), float(ratio),
                              entry.get("format", "auto")))
    if len({s.name for s in sources}) != len(sources):
        raise UserError(f"recipe '{recipe}': field 'data.sources': names must be unique")
    return sources


def mixed_epoch_order(sizes: list[int], ratios: list[float], seed: int, epoch: int) -> list[int]:
    """Indices into the concatenated sources for one epoch of sum(sizes) draws."""
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
    rng = np.random.default_rng([seed, epoch, 7919])
    p = np.asarray(ratios, dtype=float) / sum(ratios)
    choice = rng.choice(len(sizes), size=int(sum(sizes)), p=p)
    order = np.empty(len(choice), dtype=np.int64)
    for s, size in enumerate(sizes):
        slots = np.flatnonzero(choice == s)
        laps = -(-len(slots) // size) if size else 0
        stream = np.concatenate([np.random.default_rng([seed, epoch, s, lap]).permutation(size)
                                 for lap in range(laps)]) if laps else np.empty(0, dtype=np.int64)
        order[slots] = offsets[s] + stream[: len(slots)]
    return order.tolist()


class SourceCounter:
    """Which source an index of the concatenation belongs to, and running counts of draws."""

    def __init__(self, names: list[str], sizes: list[int]):
        self.names, self.ends = names, np.cumsum(sizes)

    def count(self, indices, totals: dict) -> dict:
        for s in np.searchsorted(self.ends, np.asarray(indices), side="right"):
            totals[self.names[s]] = totals.get(self.names[s], 0) + 1
        return totals

    def all_ranks(self, totals: dict) -> dict:
        """This rank's counts summed over every rank (a collective: all ranks call it together)."""
        counts = sum_over_ranks([totals.get(n, 0) for n in self.names])
        return {n: int(round(c)) for n, c in zip(self.names, counts)}
