#!/usr/bin/env python
"""Render a small real-music test set offline: scores from music21's bundled corpus (and a drum part
written here) played by FluidSynth with a General MIDI soundfont, at a tempo and key set here.

    python -m benchmarks.real_music                       # -> tests/data/real_music/ (committed)
    python -m benchmarks.real_music --seconds 30 --output_dir /tmp/real30

Needs, beyond the toolkit's install: `pip install music21 mido` and the Debian packages `fluidsynth`
and `fluid-soundfont-gm` (FluidR3_GM.sf2). None of them are needed to run the tests: the rendered clips
and pieces.json are committed, so CI reads them as they are. The render is deterministic for one
FluidSynth version and soundfont (reverb and chorus off; velocities from a fixed seed).

Each piece is one instrument family the clip flags must stay quiet on (and catch failures in):
solo piano with rests, sustained organ, a string quartet, plucked (nylon guitar, harpsichord), a GM
drum kit with strong transients (no key), and a dense ensemble (rag piano, bass, brass, drums). The
tempo is the MIDI tempo the notes are written at (quarter notes per minute), the key the score's own
(its key signature and cadences; the piece's first 15 s do not modulate). pieces.json records both,
the score and the General MIDI programs, so the tempo/key estimators can be scored against them.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 32000
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "real_music"
SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
TARGET_RMS_DBFS = -20.0  # a normalised mix's level (metrics.py's silence line is 40 dB under it)
DRUMS = 9                # MIDI channel 10: the GM percussion kit

# name: (corpus score or None, bpm, key, GM program per part (the last repeated for more parts),
#        rest: bars whose second half is silenced (piano with rests), drums: a kit part added)
PIECES = {
    "piano_k545_rests": ("mozart/k545/movement1_exposition", 112.0, "C major", [0], True, False),
    "organ_bwv66.6": ("bach/bwv66.6", 76.0, "F# minor", [19], False, False),
    "strings_k80": ("mozart/k80/movement1", 70.0, "G major", [40, 40, 41, 42], False, False),
    "guitar_bwv1.6": ("bach/bwv1.6", 92.0, "F major", [24], False, False),
    "harpsichord_haydn74": ("haydn/opus74no1/movement1", 132.0, "C major", [6], False, False),
    "drums_kit": (None, 100.0, None, [], False, True),
    "ensemble_maple_leaf": ("joplin/maple_leaf_rag", 96.0, "A- major", [0, 32], False, True),
}
# Brass doubling the top line of the ensemble (GM 61: brass section), so it is dense.
ENSEMBLE_LEAD = 61


def score_notes(path: str, transpose_by: int = 0) -> list[list[tuple[float, float, int]]]:
    """[(onset, duration in quarter notes, MIDI pitch), ...] per part of a corpus score, ties joined."""
    from music21 import corpus

    score = corpus.parse(path).stripTies()
    parts = []
    for part in score.parts:
        notes = []
        for n in part.flatten().notes:
            for p in n.pitches:
                notes.append((float(n.offset), float(n.quarterLength), int(p.midi) + transpose_by))
        parts.append(sorted(notes))
    return parts


def drum_part(quarters: float, rng) -> list[tuple[float, float, int, int]]:
    """A rock groove with fills: (onset, duration, GM drum note, velocity). Kick 36, snare 38, closed
    hat 42, open hat 46, crash 49, toms 45/48: strong transients and a cymbal's noise."""
    hits = []
    for bar in range(int(np.ceil(quarters / 4))):
        t = 4.0 * bar
        fill = bar % 4 == 3
        if bar % 4 == 0:
            hits.append((t, 1.0, 49, 110))
        for e in range(8):
            q = t + e / 2
            if not (fill and e >= 4):
                hits.append((q, 0.25, 46 if e == 7 else 42, 90 if e % 2 == 0 else 65))
        for q in (0.0, 2.5) if bar % 2 else (0.0, 1.5, 2.0):
            hits.append((t + q, 0.5, 36, 115))
        for q in (1.0, 3.0):
            if not (fill and q == 3.0):
                hits.append((t + q, 0.5, 38, 110))
        if fill:
            for k, note in enumerate((48, 48, 45, 45)):
                hits.append((t + 2 + k / 2, 0.25, note, 100))
    return [(q, d, n, int(np.clip(v + rng.integers(-8, 9), 1, 127))) for q, d, n, v in hits if q < quarters]


def write_midi(path: Path, bpm: float, parts: list[tuple[int, int, list]]):
    """parts: (channel, program, [(onset, duration, pitch, velocity), ...] in quarter notes)."""
    import mido

    tpq = 480
    mid = mido.MidiFile(ticks_per_beat=tpq)
    meta = mido.MidiTrack()
    meta.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm), time=0))
    mid.tracks.append(meta)
    for channel, program, notes in parts:
        track = mido.MidiTrack()
        events = []
        for onset, dur, pitch, vel in notes:
            a, b = int(round(onset * tpq)), int(round((onset + max(dur, 0.05)) * tpq))
            events += [(a, 1, pitch, vel), (b - 1, 0, pitch, 0)]  # a repeated note's off comes before its next on
        if channel != DRUMS:
            track.append(mido.Message("program_change", channel=channel, program=program, time=0))
        now = 0
        for tick, on, pitch, vel in sorted(events):
            track.append(mido.Message("note_on" if on else "note_off", channel=channel, note=pitch,
                                      velocity=vel, time=tick - now))
            now = tick
        mid.tracks.append(track)
    mid.save(path)


def arrange(name: str, seconds: float, rng) -> tuple[float, list]:
    """The piece's MIDI parts for its first `seconds` (plus a bar of tail)."""
    path, bpm, _key, programs, rests, drums = PIECES[name]
    quarters = (seconds + 2) * bpm / 60
    parts = []
    if path is not None:
        for i, notes in enumerate(score_notes(path)):
            notes = [(o, d, p, int(np.clip(rng.normal(80, 8), 40, 120))) for o, d, p in notes if o < quarters]
            if rests:  # the second half of every other bar rests: a piano that breathes
                notes = [(o, min(d, 4 * (o // 4) + 2 - o) if (o // 4) % 2 else d, p, v) for o, d, p, v in notes
                         if not ((o // 4) % 2 and o % 4 >= 2)]
            channel = i if i < DRUMS else i + 1
            parts.append((channel, programs[min(i, len(programs) - 1)], notes))
        if name.startswith("ensemble"):
            top = max(parts[0][2], key=lambda n: n[2])[2] if parts[0][2] else 72
            lead = [(o, d, p, v) for o, d, p, v in parts[0][2] if p >= top - 12]
            parts.append((len(parts), ENSEMBLE_LEAD, lead))
    if drums:
        parts.append((DRUMS, 0, drum_part(quarters, rng)))
    return bpm, parts


def render(midi: Path, wav: Path, soundfont: Path):
    subprocess.run(["fluidsynth", "-ni", "-q", "-R", "0", "-C", "0", "-g", "0.5", "-r", str(SR), "-T", "wav",
                    "-F", str(wav), str(soundfont), str(midi)], check=True, capture_output=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", type=Path, default=OUT, help="Where the FLACs and pieces.json go.")
    p.add_argument("--seconds", type=float, default=15.0, help="Length of each clip.")
    p.add_argument("--soundfont", type=Path, default=SOUNDFONT, help="A General MIDI .sf2.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the velocities.")
    args = p.parse_args(argv)
    if shutil.which("fluidsynth") is None or not args.soundfont.is_file():
        raise SystemExit(f"error: needs the fluidsynth command and {args.soundfont}: "
                         "apt-get install fluidsynth fluid-soundfont-gm")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    table = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(PIECES):
            rng = np.random.default_rng([args.seed, i])
            bpm, parts = arrange(name, args.seconds, rng)
            midi, wav = Path(tmp) / f"{name}.mid", Path(tmp) / f"{name}.wav"
            write_midi(midi, bpm, parts)
            render(midi, wav, args.soundfont)
            audio, sr = sf.read(wav, dtype="float64", always_2d=True)
            assert sr == SR, sr
            x = audio.mean(axis=1)[:int(args.seconds * SR)]  # mono: the flags read the mid signal
            rms = np.sqrt(np.mean(x ** 2))
            x = x * min(10 ** (TARGET_RMS_DBFS / 20) / rms, 0.89 / np.abs(x).max())  # peak <= -1 dBFS
            sf.write(args.output_dir / f"{name}.flac", x.astype(np.float32), SR, subtype="PCM_16")
            path, _, key, programs, rests, drums = PIECES[name]
            table[name] = {"file": f"{name}.flac", "score": path, "bpm": bpm, "key": key.replace("-", "b") if key
                           else None, "programs": [pr for _, pr, _ in parts], "drums": drums, "rests": rests,
                           "seconds": args.seconds}
            print(f"{name}: {bpm:g} bpm, {key}, {len(parts)} parts, peak {20 * np.log10(np.abs(x).max()):.1f} dBFS")
    (args.output_dir / "pieces.json").write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
