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

from musicgen_lora.audio.reader import MUSICGEN_SAMPLE_RATE
from musicgen_lora.audio.writer import write_audio
from musicgen_lora.core.outputs import atomic_dir, check_own_folder, output_lock, write_manifest

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



# --- music that moves, drums that are played, and the two failures built on them ----------------------
# The clean counterparts of `repetitive` and `crackle`: a steady beat whose bars repeat while the chords
# and the melody change (varied_beat), and a drum loop alone -- sharp attacks, bars that repeat, hits
# that differ from one to the next as played drums do: timing and level jitter, fresh noise in every
# snare and hat (drum_loop). A decoded loop of the same codes repeats all of that verbatim; a drum
# machine playing identical samples on the grid with nothing over it would too, and is flagged.

MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)


def _decay(n, sr, seconds):
    """Exponential decay with time constant `seconds`, its last 5 ms ramped to zero (no cut-off click)."""
    env = np.exp(-np.arange(n) / (seconds * sr))
    tail = min(n, int(0.005 * sr))
    env[n - tail:] *= np.linspace(1.0, 0.0, tail)
    return env


def _bright_noise(n, rng):
    """White noise with its lows removed (second difference): the hiss of a snare or a hat."""
    return np.diff(rng.standard_normal(n + 2), 2) / 2


def _kick(sr, rng):
    """A kick: a sine sweeping 120 -> 50 Hz, with a 3 ms beater transient of fresh noise (a sharp attack)."""
    n = int(0.3 * sr)
    t = np.arange(n) / sr
    x = np.sin(2 * np.pi * np.cumsum(50 + 70 * np.exp(-t / 0.03)) / sr) * _decay(n, sr, 0.07)
    beater = int(0.003 * sr)
    x[:beater] += 0.4 * _bright_noise(beater, rng) * np.hanning(2 * beater)[beater:]
    return x


def _snare(sr, rng):
    n = int(0.2 * sr)
    t = np.arange(n) / sr
    return 0.5 * np.sin(2 * np.pi * 190 * t) * _decay(n, sr, 0.04) + 0.4 * _bright_noise(n, rng) * _decay(n, sr, 0.05)


def _hat(sr, rng):
    n = int(0.08 * sr)
    return 0.15 * _bright_noise(n, rng) * _decay(n, sr, 0.02)


def drum_loop(seconds=15.0, sr=SR, bpm=120.0, seed=0, timing_ms=4.0, level_db=3.0):
    """A played 4/4 groove: kick on 1 and 3, snare on 2 and 4, hats on the sixteenths (off-beats
    softer), each hit shifted by N(0, timing_ms) and scaled by +-level_db (uniform), its noise drawn
    afresh; a room (decaying noise, 0.6 s) under it, as a recorded kit has."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    x = np.zeros(n + int(0.4 * sr))
    sixteenth = 15.0 / bpm
    for k in range(int(np.ceil(seconds / sixteenth))):
        hits = ([_kick(sr, rng)] if k % 8 == 0 else [_snare(sr, rng)] if k % 8 == 4 else []) + \
               [_hat(sr, rng) * (1.0 if k % 2 == 0 else 0.5)]
        for hit in hits:
            at = max(0, int(round((k * sixteenth + rng.normal(0, timing_ms / 1000)) * sr)))
            x[at:at + len(hit)] += hit[:len(x) - at] * 10 ** (rng.uniform(-level_db, level_db) / 20)
    room = rng.standard_normal(int(0.6 * sr)) * _decay(int(0.6 * sr), sr, 0.12)
    x = x[:n] + 0.3 * np.convolve(x, room)[:n] / np.sqrt(np.sum(room ** 2))
    return (0.6 * x / np.abs(x).max()).astype(np.float32)


def _tone(freq, n, sr, harmonics=4):
    """A note with `harmonics` partials falling as 1/k."""
    t = np.arange(n) / sr
    return sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, harmonics + 1))


def varied_beat(seconds=15.0, sr=SR, bpm=110.0, key=0, seed=0, melody=True, drums=True):
    """Music that moves over a steady beat: a chord of the major key (`key` semitones above A) per bar,
    never the same twice in a row, an eighth-note melody walking the scale (a rest now and then), and
    drum_loop under them. The drum bars repeat; the harmony and the melody do not."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    x = np.zeros(n)
    bar, eighth = 240.0 / bpm, 30.0 / bpm
    ramp = np.minimum(1.0, np.arange(n) / (0.01 * sr))  # 10 ms: chords change without a click
    degree = -1
    for b in range(int(np.ceil(seconds / bar))):
        degree = int(rng.choice([d for d in range(7) if d != degree]))
        a, e = int(b * bar * sr), min(n, int((b + 1) * bar * sr))
        notes = [MAJOR_SCALE[(degree + j) % 7] + 12 * ((degree + j) // 7) for j in (0, 2, 4)]
        chord = sum(_tone(110 * 2 ** ((key + s) / 12), e - a, sr) for s in notes) / 3
        x[a:e] += 0.12 * chord * ramp[:e - a] * ramp[:e - a][::-1]
    step = int(rng.integers(0, 7))
    for k in range(int(np.ceil(seconds / eighth)) if melody else 0):
        step = int(np.clip(step + rng.integers(-2, 3), 0, 13))
        a = int(k * eighth * sr)
        m = min(int(eighth * sr), n - a)
        if rng.random() < 0.8:
            semis = key + MAJOR_SCALE[step % 7] + 12 * (step // 7)
            x[a:a + m] += 0.1 * _tone(220 * 2 ** (semis / 12), m, sr, 3) * np.hanning(m)
    if drums:
        x += 0.5 * drum_loop(seconds, sr, bpm, seed=seed + 1000)
    return (0.7 * x / np.abs(x).max()).astype(np.float32)


def looped(x, start_s, period_s, sr=SR, seam_s=0.005):
    """x up to start_s, then its next period_s seconds repeated verbatim to the end: a model stuck in a
    loop. Each repeat is joined to the last by a seam_s crossfade, as a decoded loop has no seam."""
    x = np.asarray(x, dtype=np.float32)
    a, p, f = int(start_s * sr), int(period_s * sr), max(1, int(seam_s * sr))
    y = x.copy()
    fade_in = np.linspace(0.0, 1.0, f, dtype=np.float32)
    for start in range(a + p, len(y), p):
        piece = x[a:a + min(p + f, len(y) - start)]
        k = min(f, len(piece))
        y[start:start + k] = y[start:start + k] * (1 - fade_in[:k]) + piece[:k] * fade_in[:k]
        y[start + k:start + len(piece)] = piece[k:]
    return y


def with_clicks(x, times_s, level=0.2, sr=SR, seed=0):
    """x with a click at each time: a spike 1-3 samples wide, peak `level`, random sign (crackle)."""
    rng = np.random.default_rng(seed)
    y = np.array(x, dtype=np.float32)
    for t in times_s:
        i = int(t * sr)
        width = int(rng.integers(1, 4))
        y[i:i + width] += level * rng.choice((-1.0, 1.0)) * np.array([1.0, -0.6, 0.3][:width])[:len(y) - i]
    return y


def random_times(count, seconds, seed=0):
    """`count` click times spread at random over the clip."""
    return np.sort(np.random.default_rng(seed).uniform(0.05, seconds - 0.05, count))


def after_attacks(onsets_s, seconds, seed=0, per_attack=2, delay_s=(0.005, 0.04)):
    """Click times 5-40 ms after each onset, `per_attack` of them: "crackling after every attack"."""
    rng = np.random.default_rng(seed)
    times = [t + rng.uniform(*delay_s) for t in onsets_s for _ in range(per_attack)]
    return np.sort([t for t in times if t < seconds - 0.01])


def signals(seconds=15.0, sr=SR, stereo: bool = False) -> dict[str, np.ndarray]:
    """{"folder/name": audio}: two clips per case (two chords, two noise seeds, two grooves); with
    stereo, the stereo, collapsed and phase_inverted cases too, as (samples, 2) arrays. Times scale
    with `seconds` (the loop starts at 7 of 15 s, as the silent tail does at 7)."""
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
    out["varied_beat/01_chords_melody_drums_100bpm"] = varied_beat(seconds, sr, bpm=100, key=0, seed=1)
    out["varied_beat/02_chords_melody_drums_128bpm"] = varied_beat(seconds, sr, bpm=128, key=5, seed=2)
    out["drum_loop/01_played_drums_90bpm"] = drum_loop(seconds, sr, bpm=90, seed=1)
    out["drum_loop/02_played_drums_120bpm"] = drum_loop(seconds, sr, bpm=120, seed=2)
    # A two-beat phrase (1.2 s at 100 bpm) repeated from 7 s on; a bar (2 s at 120 bpm) from the start.
    out["repetitive/01_phrase_loop_after_7s"] = looped(varied_beat(seconds, sr, bpm=100, key=0, seed=1),
                                                       7.0 * seconds / 15.0, 1.2, sr)
    out["repetitive/02_bar_loop_whole_clip"] = looped(varied_beat(seconds, sr, bpm=120, key=3, seed=3), 0.0, 2.0, sr)
    plain = chord_with_beat(seconds, sr)
    out["crackle/01_chord_60_clicks"] = with_clicks(plain, random_times(int(4 * seconds), seconds, seed=1), 0.2, sr)
    kicks = np.arange(0, seconds, 0.5)  # chord_with_beat's kicks
    out["crackle/02_clicks_after_every_kick"] = with_clicks(plain, after_attacks(kicks, seconds, seed=2), 0.2, sr,
                                                            seed=2)
    return out


def write_signals(out: Path, duration: float = 15.0, corrupt: bool = False, overwrite: bool = False,
                  stereo: bool = False) -> dict:
    """Write the clips (one sub-folder per case; stereo ones as 2-channel WAVs) into `out`, a folder
    this module owns whole."""
    out = Path(out)
    with output_lock(out, TOOL):
        # The folder first: making the clips takes minutes, a refusal should not wait for them.
        check_own_folder(out, TOOL, overwrite=overwrite, flag="--output_dir", what="test signals")
        clips = signals(duration, stereo=stereo)
        with atomic_dir(out, owner=TOOL) as tmp:
            for name, audio in clips.items():
                path = tmp / f"{name}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_audio(path, audio, SR, subtype="PCM_16")
            if corrupt:
                (tmp / "steady" / "99_corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 20)
            write_manifest(tmp, TOOL, os.listdir(tmp))
    return clips
