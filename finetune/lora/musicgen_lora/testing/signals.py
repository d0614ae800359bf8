"""Write clips with known answers, to see what evaluate.py's flags catch (and to check a threshold).

Each first-level folder is one "model" to --score_only, holding 15 s 32 kHz clips built from a
steady minor chord (A minor, then G minor) with a kick every half second (music-like: no fade, no
silence, tonal):

    steady/       the chord as it is                        -> no flags
    fading/       the same chord fading 30 dB over 15 s     -> fades_out ("gets quieter and quieter")
    noise/        white noise                               -> noisy ("mostly noise")
    silent_tail/  the chord, then 8 s of digital silence    -> silent (silence_ratio ~0.53)
    clipped/      the chord driven 4x past full scale       -> clipping

`--stereo` adds three two-channel cases (the flags only stereo clips have; the mono folders never
raise them):

    stereo/          the chord with its third panned left, its fifth right -> no flags (L/R corr ~0.66)
    collapsed/       the mono chord copied to both channels (L = R)        -> collapsed_to_mono
    phase_inverted/  stereo/'s chord with the right channel's polarity flipped -> phase_inverted

`--corrupt` adds steady/99_corrupt.wav, a file no decoder reads, which --score_only reports and skips.
The same signals are what tests/test_metrics.py checks every threshold on.
"""
import os
from pathlib import Path

import numpy as np
import soundfile as sf

from musicgen_lora.audio import MUSICGEN_SAMPLE_RATE
from musicgen_lora.outputs import atomic_dir, check_own_folder, output_lock, write_manifest

TOOL = "make_test_signals.py"

SR = MUSICGEN_SAMPLE_RATE


def chord_with_beat(seconds=15.0, sr=SR, root=220.0):
    """A steady minor chord (root, minor third, fifth) with a decaying 60 Hz kick every half second."""
    t = np.arange(int(seconds * sr)) / sr
    x = sum(np.sin(2 * np.pi * root * r * t) for r in CHORD) / 3 * 0.3
    return _add_kicks(x, seconds, sr).astype(np.float32)


CHORD = (1.0, 2 ** (3 / 12), 2 ** (7 / 12))  # root, minor third, fifth (frequency ratios)


def _add_kicks(x, seconds, sr):
    n = int(0.08 * sr)
    kick = 0.5 * np.sin(2 * np.pi * 60 * np.arange(n) / sr) * np.exp(-np.arange(n) / (0.02 * sr))
    for start in np.arange(0, seconds, 0.5):
        i = int(start * sr)
        x[i:i + n] += kick[:len(x[i:i + n])]
    return x


def stereo_chord(seconds=15.0, sr=SR, root=220.0, spread=0.6):
    """chord_with_beat in stereo, (samples, 2): root and kick in the centre, the third panned left and
    the fifth right (gains 1 +- spread), so the mid (L + R) / 2 is the mono chord and L != R. With
    spread 0.6 the L/R correlation is about 0.66 and side/mid about -7 dB, a normal stereo mix."""
    t = np.arange(int(seconds * sr)) / sr
    root_tone, third, fifth = (np.sin(2 * np.pi * root * r * t) / 3 * 0.3 for r in CHORD)
    centre = _add_kicks(root_tone, seconds, sr)
    left = centre + (1 + spread) * third + (1 - spread) * fifth
    right = centre + (1 - spread) * third + (1 + spread) * fifth
    return np.stack([left, right], axis=1).astype(np.float32)


def note_sequence(notes=(0, 4, 7, 11, 2, 5, 9), seconds_per_note=0.5, sr=SR, seed=0):
    """A melody: sine notes (semitones above middle C, one per `seconds_per_note`, Hann-shaped) with
    a little noise. Its chroma (chroma.chroma_features) follows the notes' pitch classes: a melody
    condition for MusicGen-Melody checkpoints."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds_per_note * sr)) / sr
    parts = [np.sin(2 * np.pi * 440 * 2 ** ((n - 9) / 12) * t) * np.hanning(len(t)) for n in notes]
    return (0.5 * np.concatenate(parts) + 0.01 * rng.standard_normal(len(t) * len(notes))).astype(np.float32)


def to_stereo(x):
    """A mono clip in both channels, (samples, 2) with L = R: stereo collapsed to mono."""
    return np.stack([x, x], axis=1).astype(np.float32)


def invert_right(x):
    """A stereo clip with the right channel's polarity flipped (R -> -R): phase-inverted output. The
    mid becomes the old side (what a mono fold-down keeps); L = R input gives R = -L, a silent mid."""
    y = np.array(x, dtype=np.float32)
    y[:, 1] *= -1
    return y


def fade(x, db=30.0, sr=SR):
    """Linear-in-dB fade of `db` over the whole clip."""
    t = np.arange(len(x)) / sr
    return (x * 10 ** (-db * t / t[-1] / 20)).astype(np.float32)


def white_noise(seconds=15.0, sr=SR, seed=0, rms=0.1):
    return (np.random.default_rng(seed).standard_normal(int(seconds * sr)) * rms).astype(np.float32)


def silent_tail(x, silent_seconds=8.0, sr=SR):
    y = x.copy()
    y[len(y) - int(silent_seconds * sr):] = 0.0
    return y


def clipped(x, gain=4.0):
    """Driven past full scale, then clipped as a WAV writer would."""
    return np.clip(x * gain, -1.0, 1.0).astype(np.float32)


def signals(seconds=15.0, sr=SR, stereo: bool = False) -> dict[str, np.ndarray]:
    """{"folder/name": audio}: two clips per case (two chords, two noise seeds); with stereo, the
    stereo, collapsed and phase_inverted cases too, as (samples, 2) arrays."""
    out = {}
    for i, root in enumerate((220.0, 196.0), start=1):
        chord = chord_with_beat(seconds, sr, root)
        out[f"steady/{i:02d}_chord"] = chord
        out[f"fading/{i:02d}_chord_fading_30db"] = fade(chord, 30.0, sr)
        out[f"noise/{i:02d}_white_noise"] = white_noise(seconds, sr, seed=i)
        out[f"silent_tail/{i:02d}_chord_then_8s_silence"] = silent_tail(chord, 8.0 * seconds / 15.0, sr)
        out[f"clipped/{i:02d}_chord_clipped"] = clipped(chord)
        if stereo:
            out[f"stereo/{i:02d}_chord_stereo"] = stereo_chord(seconds, sr, root)
            out[f"collapsed/{i:02d}_chord_left_equals_right"] = to_stereo(chord)
            out[f"phase_inverted/{i:02d}_chord_right_inverted"] = invert_right(stereo_chord(seconds, sr, root))
    return out


def write_signals(out: Path, duration: float = 15.0, corrupt: bool = False, overwrite: bool = False,
                  stereo: bool = False) -> dict:
    """Write the clips (one sub-folder per case; stereo ones as 2-channel WAVs) into `out`, a folder
    this module owns whole."""
    out = Path(out)
    clips = signals(duration, stereo=stereo)
    with output_lock(out, TOOL):
        check_own_folder(out, TOOL, overwrite=overwrite, flag="--output_dir", what="test signals")
        with atomic_dir(out, owner=TOOL) as tmp:
            for name, audio in clips.items():
                path = tmp / f"{name}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(str(path), audio, SR, subtype="PCM_16")
            if corrupt:
                (tmp / "steady" / "99_corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 20)
            write_manifest(tmp, TOOL, os.listdir(tmp))
    return clips
