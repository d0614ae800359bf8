"""Synthetic tunes for the learning proofs: sine notes at known pitch classes, and two clips that
share one description and differ only in their tune (tests/test_melody.py, test_training.py,
test_stereo.py)."""
import json

import numpy as np
import soundfile as sf

SR = 32000


def tune(pitch_classes, seconds_per_note=0.5, sr=SR, seed=0):
    """Sine notes (with a second harmonic) at the given pitch classes, octave 4, random phases."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds_per_note * sr)) / sr
    notes = [np.sin(2 * np.pi * 261.63 * 2 ** (p / 12) * t + rng.uniform(0, 2 * np.pi))
             + 0.3 * np.sin(4 * np.pi * 261.63 * 2 ** (p / 12) * t) for p in pitch_classes]
    wav = 0.3 * np.concatenate(notes) + 0.003 * rng.standard_normal(len(t) * len(pitch_classes))
    return wav.astype(np.float32)


def two_tunes(folder, seconds: float, stereo: bool = False):
    """Clips A and B: two different tunes, ONE description (so the text cannot tell them apart), each
    listed 500 times (an epoch is 1,000 steps at batch 1, validated on the two clips). Stereo: the
    right channel plays the tune an octave up, so the channels differ and A and B share 3% of their
    codes (mono: 4%) -- the level a generation that copied the wrong clip's layout would reach."""
    folder.mkdir(parents=True, exist_ok=True)
    n = int(seconds * SR)
    for name, notes, seed in (("A", [0, 4, 7, 11], 1), ("B", [6, 1, 10, 3], 2)):
        wav = tune(notes, seed=seed)[:n]
        if stereo:
            wav = np.stack([wav, tune([p + 12 for p in notes], seed=seed + 10)[:n]], axis=1)
        sf.write(folder / f"{name}.wav", wav.astype(np.float32), SR)
    entries = [{"audio": f"{name}.wav", "description": "a synth tune"} for name in "AB"]
    (folder / "metadata.json").write_text(json.dumps({"train": entries * 500, "valid": entries}))
    return folder
