"""The clip flags, in one table: the metrics raise them (evaluation/metrics.py holds each threshold),
and the verdict line, the report's columns and the runs table all read them from here, in this order.
A new flag is one row here plus its rule in metrics.py (applied in score_clip; a flag that
compares a clip with the base model's, in scoring.flag_melody).

Stereo flags (stereo=True) exist only on two-channel clips: a mono clip's "flags" and a model with
only mono clips have no such key, so mono verdicts read as before. Melody flags (melody=True) exist
only on an adapter's clips that have a reference melody and a base-model clip of the same prompt and
seed to be measured against (scoring.flag_melody), so text-only evaluations read as before too.
Flags that are not faults (fault=False: the audio is fine, e.g. a stereo model's output that is
really mono) are counted in the verdict like the others but shown as a note, not as a failure, in
the report."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClipFlag:
    name: str   # key in a clip's "flags" and in a model's "flag_counts"
    words: str  # how a verdict counts it: "6/8 fade out"
    stereo: bool = False  # raised (and present) only on two-channel clips
    fault: bool = True    # the clip failed; False: worth a look, not a failure
    melody: bool = False  # raised (and present) only on adapter clips with a reference melody


FLAGS = (ClipFlag("fades_out", "fade out"), ClipFlag("noisy", "noisy"), ClipFlag("silent", "silent"),
         ClipFlag("clipping", "clipping"), ClipFlag("repetitive", "repetitive"), ClipFlag("crackle", "crackle"),
         ClipFlag("collapsed_to_mono", "collapsed to mono", stereo=True, fault=False),
         ClipFlag("phase_inverted", "phase inverted", stereo=True),
         ClipFlag("ignores_melody", "ignore the melody", melody=True))
FLAG_NAMES = tuple(f.name for f in FLAGS)
STEREO_FLAG_NAMES = tuple(f.name for f in FLAGS if f.stereo)
MELODY_FLAG_NAMES = tuple(f.name for f in FLAGS if f.melody)
NOTE_FLAG_NAMES = tuple(f.name for f in FLAGS if not f.fault)  # not failures: shown as notes
WORDS = {f.name: f.words for f in FLAGS}


def model_flag_counts(flags: list[dict]) -> dict:
    """{flag: clips raising it} over one model's clips' flag dicts: every mono flag, and the stereo
    and melody flags when any clip has them (a model of mono clips gets no stereo counts, the base
    model and text-only evaluations no melody counts)."""
    only_some = STEREO_FLAG_NAMES + MELODY_FLAG_NAMES
    return {name: sum(1 for f in flags if f.get(name)) for name in FLAG_NAMES
            if name not in only_some or any(name in f for f in flags)}


def model_flag_clips(flags: list[dict]) -> dict:
    """{flag: clips it was measured on} for the flags only some of a model's clips carry (a melody
    flag on an evaluation where some prompts have no melody): their verdict counts out of those."""
    measured = {name: sum(1 for f in flags if name in f) for name in FLAG_NAMES}
    return {name: n for name, n in measured.items() if 0 < n < len(flags)}


def onset_words(times) -> str:
    """' from 9.0 s' (one clip, or all at one time), ' from 6.5-9.0 s' (several); '' for none."""
    times = sorted(float(t) for t in times or [] if t is not None)
    if not times:
        return ""
    span = f"{times[0]:.1f}" if times[0] == times[-1] else f"{times[0]:.1f}-{times[-1]:.1f}"
    return f" from {span} s"


def count_words(counts: dict, total: int | None, only_raised: bool = False, totals: dict | None = None,
                onsets: dict | None = None) -> list[str]:
    """['6/8 fade out', '0/8 noisy', ...] in the table's order (any unknown flag after them); totals:
    model_flag_clips, the count a flag measured on fewer clips is out of ('0/4 ignore the melody');
    onsets: {flag: [seconds where it starts in each clip raising it]} ('2/8 noisy from 8.5-9.0 s')."""
    names = list(FLAG_NAMES) + [k for k in counts if k not in WORDS]
    out = []
    for name in names:
        n = counts.get(name)
        if not isinstance(n, int) or (only_raised and n == 0):
            continue
        word = WORDS.get(name, name.replace("_", " "))
        of = (totals or {}).get(name, total)
        when = onset_words((onsets or {}).get(name)) if n else ""
        out.append((f"{n}/{of} {word}" if isinstance(of, int) else f"{n} {word}") + when)
    return out
