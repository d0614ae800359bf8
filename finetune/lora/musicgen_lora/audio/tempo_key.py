"""Tempo (bpm) and key of a clip, estimated from its audio: the metadata audiocraft's MusicInfo holds as
`bpm` and `key`, for prepare_data.py to store and for evaluation to compare with what a prompt asked.

Tempo: the tempo librosa's beat tracker reports (onset strength, then the tempo its autocorrelation
favours around 120 bpm). Its usual error is an octave -- half or double the written tempo, which a listener may hear
either way -- so compare_tempo tells those apart from a wrong tempo.
Key: the clip's chroma (librosa CQT chroma, summed over time) correlated with the 24 rotations of a
major and a minor key profile; the best is the key. Profiles: Krumhansl-Kessler's probe-tone ratings
(Krumhansl 1990, "Cognitive Foundations of Musical Pitch") by default; Temperley's (2001, "The
Cognition of Basic Musical Structures", Kostka-Payne corpus) as the other choice. On the rendered set
both name 4 of the 6 keys exactly; Krumhansl's misses are a fifth and a relative-of-the-fifth (an
organ's mutation stops add fifths), Temperley's a parallel (Ab minor for Ab major) and the same organ
-- so Krumhansl, whose near misses keep the key's notes. Comparing with a
known key, the near misses are named: the relative key (same notes, C major / A minor), a fifth away
(one sharp or flat more), the parallel key (C major / C minor).
"""
from __future__ import annotations

import re

import numpy as np

from musicgen_lora.audio.librosa_import import load_librosa

NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_PC = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}

PROFILES = {
    "krumhansl": ((6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88),
                  (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17)),
    "temperley": ((0.748, 0.060, 0.488, 0.082, 0.670, 0.460, 0.096, 0.715, 0.104, 0.366, 0.057, 0.400),
                  (0.712, 0.084, 0.474, 0.618, 0.049, 0.460, 0.105, 0.747, 0.404, 0.067, 0.133, 0.330)),
}
# A clip whose chroma fits no key profile has no key: best correlation under 0.5. On the rendered set
# (tests/data/real_music) the tonal pieces' best is 0.73-0.93 (Krumhansl; 0.68-0.96 Temperley), the GM
# drum kit's 0.36 (0.39), and the constructed drum loops' (signals.drum_loop) 0.24-0.33.
KEY_MIN_CORRELATION = 0.5
# Within this share of the written tempo a tempo is right: 4% is MIREX's tempo tolerance (8% is also used).
TEMPO_TOLERANCE = 0.04


def estimate_tempo(audio: np.ndarray, sample_rate: int) -> float | None:
    """Beats per minute of a (samples,) clip; None for a silent clip.

    The tempo librosa.beat.beat_track reports (onset strength with a median over mel bands, then
    librosa.feature.tempo) without the beat positions, which nothing here uses: the same figures on
    the rendered set (tests/data/real_music), and librosa.beat, whose numba code costs 1.7 s to load
    in every process, is never loaded (audio/librosa_import.py).
    """
    librosa = load_librosa()

    y = np.asarray(audio, dtype=np.float32)
    if y.size == 0 or not np.any(y):
        return None
    envelope = librosa.onset.onset_strength(y=y, sr=sample_rate, aggregate=np.median)
    if not envelope.any():
        return None
    bpm = float(np.atleast_1d(librosa.feature.tempo(onset_envelope=envelope, sr=sample_rate))[0])
    return round(bpm, 1) if bpm > 0 else None


def key_scores(audio: np.ndarray, sample_rate: int, profile: str = "krumhansl") -> np.ndarray:
    """(24,) correlations of the clip's chroma with the profile's major keys on C..B, then minor keys."""
    librosa = load_librosa()

    chroma = librosa.feature.chroma_cqt(y=np.asarray(audio, dtype=np.float32), sr=sample_rate).sum(axis=1)
    major, minor = (np.asarray(p, dtype=float) for p in PROFILES[profile])
    return np.array([np.corrcoef(chroma, np.roll(p, tonic))[0, 1] for p in (major, minor) for tonic in range(12)])


def estimate_key(audio: np.ndarray, sample_rate: int, profile: str = "krumhansl") -> str | None:
    """'A minor', 'Eb major', ...; None for a clip with no pitch content (silence, drums alone)."""
    y = np.asarray(audio, dtype=np.float32)
    if y.size == 0 or not np.any(y):
        return None
    scores = key_scores(y, sample_rate, profile)
    if not np.all(np.isfinite(scores)) or scores.max() < KEY_MIN_CORRELATION:
        return None
    best = int(np.argmax(scores))
    return f"{NOTE_NAMES[best % 12]} {'major' if best < 12 else 'minor'}"


def parse_key(text) -> tuple[int, str] | None:
    """(pitch class 0-11, 'major'|'minor') of 'F# minor', 'Ab major', 'a-flat minor', 'Bbm', 'C'; else None."""
    if not isinstance(text, str):
        return None
    text = text.replace("-flat", "b").replace("-sharp", "#")
    m = re.fullmatch(r"\s*([a-gA-G])\s*(#|sharp|b|flat|-|♯|♭)?[\s-]*(major|minor|maj|min|m)?\s*", text)
    if not m:
        return None
    shift = {"#": 1, "sharp": 1, "♯": 1, "b": -1, "flat": -1, "-": -1, "♭": -1}.get(m.group(2) or "", 0)
    pc = _PC[m.group(1).lower()] + shift
    mode = "minor" if (m.group(3) or "").lower() in ("minor", "min", "m") else "major"
    return pc % 12, mode


def compare_key(estimated, written) -> str | None:
    """How an estimated key relates to the written one: 'exact', 'relative', 'fifth', 'parallel' or
    'other'; None when either is unknown."""
    a, b = parse_key(estimated), parse_key(written)
    if a is None or b is None:
        return None
    if a == b:
        return "exact"
    (pa, ma), (pb, mb) = a, b
    if ma != mb and (pa - pb) % 12 == (3 if ma == "major" else 9):  # C major <-> A minor
        return "relative"
    if ma == mb and (pa - pb) % 12 in (5, 7):
        return "fifth"
    if pa == pb:
        return "parallel"
    return "other"


def compare_tempo(estimated, written) -> str | None:
    """'right' (within TEMPO_TOLERANCE of the written tempo), 'double' / 'half' (within it of twice or
    half: an octave error), 'wrong'; None when either is unknown."""
    if not estimated or not written:
        return None
    for word, factor in (("right", 1.0), ("double", 2.0), ("half", 0.5)):
        if abs(estimated / (written * factor) - 1) <= TEMPO_TOLERANCE:
            return word
    return "wrong"
