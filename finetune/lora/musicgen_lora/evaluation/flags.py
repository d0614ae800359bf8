"""The clip flags, in one table: the metrics raise them (evaluation/metrics.py holds each threshold),
and the verdict line, the report's columns and the runs table all read them from here, in this order.
A new flag is one row here plus its rule in metrics.score_clip."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClipFlag:
    name: str   # key in a clip's "flags" and in a model's "flag_counts"
    words: str  # how a verdict counts it: "6/8 fade out"


FLAGS = (ClipFlag("fades_out", "fade out"), ClipFlag("noisy", "noisy"), ClipFlag("silent", "silent"),
         ClipFlag("clipping", "clipping"))
FLAG_NAMES = tuple(f.name for f in FLAGS)
WORDS = {f.name: f.words for f in FLAGS}


def count_words(counts: dict, total: int | None, only_raised: bool = False) -> list[str]:
    """['6/8 fade out', '0/8 noisy', ...] in the table's order (any unknown flag after them)."""
    names = list(FLAG_NAMES) + [k for k in counts if k not in WORDS]
    out = []
    for name in names:
        n = counts.get(name)
        if not isinstance(n, int) or (only_raised and n == 0):
            continue
        word = WORDS.get(name, name.replace("_", " "))
        out.append(f"{n}/{total} {word}" if isinstance(total, int) else f"{n} {word}")
    return out
