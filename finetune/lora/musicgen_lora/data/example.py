"""A small synthetic, text-conditioned dataset whose audio really differs with its description.

Five styles that differ in tempo, register, timbre and rhythm, rendered at 32 kHz with numpy.
Lengths vary (some clips shorter than 15 s) so padding and masking are exercised.
"""
import json
from pathlib import Path

import numpy as np

from musicgen_lora.audio.reader import MUSICGEN_SAMPLE_RATE
from musicgen_lora.audio.writer import write_audio
from musicgen_lora.core.outputs import atomic_write_json

SR = MUSICGEN_SAMPLE_RATE


def _env(n, attack, decay):
    t = np.arange(n) / SR
    return np.minimum(1.0, t / max(attack, 1e-4)) * np.exp(-t / decay)


def _place(buf, start, sig):
    end = min(len(buf), start + len(sig))
    if start < end:
        buf[start:end] += sig[: end - start]


def _kick(rng, pitch=55.0):
    n = int(0.35 * SR)
    t = np.arange(n) / SR
    f = pitch + 90 * np.exp(-t * 30)
    return np.sin(2 * np.pi * np.cumsum(f) / SR) * _env(n, 0.002, 0.12)


def _snare(rng):
    n = int(0.2 * SR)
    return (rng.standard_normal(n) * 0.6 + np.sin(2 * np.pi * 190 * np.arange(n) / SR) * 0.4) * _env(n, 0.001, 0.05)


def _hat(rng, length=0.05):
    n = int(length * SR)
    noise = rng.standard_normal(n)
    noise = np.diff(noise, prepend=0.0)  # crude high-pass: hats are bright
    return noise * _env(n, 0.0005, length / 3)


def _tone(freq, dur, shape="sine", attack=0.01, decay=0.5):
    n = int(dur * SR)
    t = np.arange(n) / SR
    phase = 2 * np.pi * freq * t
    if shape == "sine":
        w = np.sin(phase)
    elif shape == "saw":
        w = 2 * ((freq * t) % 1.0) - 1
    elif shape == "square":
        w = np.sign(np.sin(phase))
    else:  # "rhodes": sine with a bell partial
        w = np.sin(phase) + 0.3 * np.sin(2 * phase) * np.exp(-t * 6)
    return w * _env(n, attack, decay)


def _chord(root, intervals, dur, shape, attack, decay):
    return sum(_tone(root * 2 ** (i / 12), dur, shape, attack, decay) for i in intervals) / len(intervals)


def render_lofi(rng, seconds, bpm):
    out = np.zeros(int(seconds * SR))
    beat = 60 / bpm
    root = 110 * 2 ** (rng.integers(0, 7) / 12)
    for b in range(int(seconds / beat) + 1):
        s = int(b * beat * SR)
        if b % 4 in (0, 2):
            _place(out, s, 0.8 * _kick(rng))
        else:
            _place(out, s, 0.35 * _snare(rng))
        _place(out, s + int(beat * SR * 0.55), 0.1 * _hat(rng))  # lazy swung hats
        if b % 4 == 0:
            _place(out, s, 0.35 * _chord(root * 2, [0, 3, 7, 10, 14], 4 * beat, "rhodes", 0.02, 1.5))
    crackle = (rng.random(len(out)) < 0.0008) * rng.standard_normal(len(out)) * 0.3
    return out + crackle + rng.standard_normal(len(out)) * 0.004


def render_trap(rng, seconds, bpm):
    out = np.zeros(int(seconds * SR))
    beat = 60 / bpm
    root = 41.2 * 2 ** (rng.integers(0, 5) / 12)  # E1-ish 808s
    for b in range(int(seconds / beat) + 1):
        s = int(b * beat * SR)
        if b % 2 == 0:
            n = int(1.2 * beat * SR)
            t = np.arange(n) / SR
            f = root * (1 + 0.5 * np.exp(-t * 20))
            sub = np.tanh(2.5 * np.sin(2 * np.pi * np.cumsum(f) / SR)) * _env(n, 0.003, 0.6)
            _place(out, s, 0.7 * sub)
        if b % 4 == 2:
            _place(out, s, 0.5 * _snare(rng))
        rolls = 4 if rng.random() < 0.25 else 2  # hi-hat rolls
        for h in range(rolls):
            _place(out, s + int(h * beat / rolls * SR), 0.18 * _hat(rng, 0.03))
    return out


def render_ambient(rng, seconds, bpm):
    n = int(seconds * SR)
    t = np.arange(n) / SR
    root = 220 * 2 ** (rng.integers(0, 12) / 12)
    out = np.zeros(n)
    for i, iv in enumerate([0, 7, 12, 16, 19]):
        f = root * 2 ** (iv / 12)
        lfo = 0.5 + 0.5 * np.sin(2 * np.pi * (0.05 + 0.03 * i) * t + rng.random() * 6)
        out += np.sin(2 * np.pi * f * t + 0.3 * np.sin(2 * np.pi * 0.2 * t)) * lfo
    return 0.12 * out


def render_house(rng, seconds, bpm):
    out = np.zeros(int(seconds * SR))
    beat = 60 / bpm
    root = 220 * 2 ** (rng.integers(0, 7) / 12)
    for b in range(int(seconds / beat) + 1):
        s = int(b * beat * SR)
        _place(out, s, 0.8 * _kick(rng, 50))  # four on the floor
        _place(out, s + int(beat / 2 * SR), 0.2 * _hat(rng, 0.08))  # off-beat open hats
        if b % 2 == 1:
            _place(out, s, 0.3 * _snare(rng))
        if b % 2 == 0:
            _place(out, s + int(beat * 0.75 * SR), 0.25 * _chord(root, [0, 4, 7], beat / 2, "saw", 0.002, 0.12))
    return out


def render_piano(rng, seconds, bpm):
    out = np.zeros(int(seconds * SR))
    beat = 60 / bpm
    scale = [0, 2, 4, 7, 9, 12, 14, 16]
    root = 523.25 * 2 ** (rng.integers(0, 5) / 12)  # high register
    pos = 0.0
    while pos < seconds:
        f = root * 2 ** (scale[rng.integers(0, len(scale))] / 12)
        _place(out, int(pos * SR), 0.3 * _tone(f, 2.0, "rhodes", 0.003, 0.7))
        pos += beat * rng.choice([1, 1.5, 2])  # sparse, rubato
    return out


STYLES = {
    "lofi": (render_lofi, (70, 90), "lo-fi hip hop beat, {bpm} bpm, mellow rhodes chords, vinyl crackle, lazy swing"),
    "trap": (render_trap, (130, 150), "dark trap beat, {bpm} bpm, booming 808 sub bass, rapid hi-hat rolls"),
    "ambient": (render_ambient, (60, 60), "ambient drone, slow evolving warm pads, no drums, calm"),
    "house": (render_house, (120, 128), "upbeat house groove, {bpm} bpm, four on the floor kick, bright synth stabs"),
    "piano": (render_piano, (60, 80), "sparse solo piano melody, high register, slow and gentle, {bpm} bpm"),
}


def render_clip(style: str, seconds: float, rng: np.random.Generator, stereo: bool = False):
    """(audio, description): (samples,) mono, or (samples, 2) stereo -- two takes of the style at one
    tempo, panned 70/30 to opposite sides, so the channels differ."""
    fn, (lo, hi), template = STYLES[style]
    bpm = int(rng.integers(lo, hi + 1))
    takes = [fn(rng, seconds, bpm) for _ in range(2 if stereo else 1)]
    takes = [t / (np.max(np.abs(t)) + 1e-9) * 0.8 for t in takes]
    audio = np.stack([0.7 * takes[0] + 0.3 * takes[1], 0.3 * takes[0] + 0.7 * takes[1]], axis=1) if stereo \
        else takes[0]
    return audio.astype(np.float32), template.format(bpm=bpm)


def create_example_dataset(output_dir, num_clips: int = 30, valid_ratio: float = 0.2, seed: int = 0,
                           min_seconds: float = 8.0, max_seconds: float = 20.0,
                           metadata_file: str = "metadata.json", stereo: bool = False) -> dict:
    """Write train/, valid/ and metadata.json. Same seed, same files. stereo: each clip is two takes
    of its style (same tempo and description), panned to opposite sides (render_clip), so L != R."""
    out = Path(output_dir)
    rng = np.random.default_rng(seed)
    styles = list(STYLES)
    entries = {"train": [], "valid": []}
    n_valid = max(1, int(round(num_clips * valid_ratio)))
    for i in range(num_clips):
        style = styles[i % len(styles)]
        split = "valid" if i >= num_clips - n_valid else "train"
        seconds = float(np.round(rng.uniform(min_seconds, max_seconds), 2))
        audio, text = render_clip(style, seconds, rng, stereo)
        rel = f"{split}/{style}_{i:03d}.wav"
        (out / split).mkdir(parents=True, exist_ok=True)
        write_audio(out / rel, audio, SR, subtype="PCM_16")
        entries[split].append({"audio": rel, "description": text, "duration": seconds, "sample_rate": SR,
                               "style": style})
    atomic_write_json(out / metadata_file, entries)
    return entries


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(create_example_dataset("/tmp/example"), indent=1)[:500])
