"""How well audio.tempo_key estimates tempo and key, on the rendered real set with its written ones.

    python -m benchmarks.tempo_key [--real tests/data/real_music]

Per piece: the written tempo (the MIDI tempo, quarter notes per minute) and the estimate, judged right
within 4% (TEMPO_TOLERANCE), or an octave error (half / double) counted apart, or wrong; the written
key and each profile's estimate (Krumhansl-Kessler, the default, and Temperley), judged exact /
relative / fifth / parallel / other. The drum kit has no key: what the estimator says there is shown,
not scored.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import soundfile as sf

from musicgen_lora.audio.tempo_key import PROFILES, compare_key, compare_tempo, estimate_key, estimate_tempo

REAL_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "real_music"


def measure(folder: Path = REAL_DIR) -> list[dict]:
    table = json.loads((folder / "pieces.json").read_text(encoding="utf-8"))
    rows = []
    for name, info in table.items():
        x, sr = sf.read(folder / info["file"], dtype="float32")
        x = x if x.ndim == 1 else x.mean(axis=1)
        bpm = estimate_tempo(x, sr)
        keys = {p: estimate_key(x, sr, p) for p in PROFILES}
        rows.append({"piece": name, "bpm": info["bpm"], "est_bpm": bpm, "tempo": compare_tempo(bpm, info["bpm"]),
                     "key": info["key"], "est_key": keys, "relation": {p: compare_key(k, info["key"])
                                                                      for p, k in keys.items()}})
    return rows


def report(rows: list[dict]) -> list[str]:
    lines = [f"{'piece':22s} {'bpm':>5s} {'est':>6s} {'tempo':>7s}  {'key':9s} " +
             " ".join(f"{p + ' (' + ('default' if p == 'krumhansl' else 'other') + ')':>28s}" for p in PROFILES)]
    for r in rows:
        est = "-" if r["est_bpm"] is None else f"{r['est_bpm']:.1f}"
        keys = " ".join(f"{str(r['est_key'][p]) + ' (' + str(r['relation'][p]) + ')':>28s}" for p in PROFILES)
        lines.append(f"{r['piece']:22s} {r['bpm']:5.0f} {est:>6s} {str(r['tempo']):>7s}  {str(r['key']):9s} {keys}")
    tempo = Counter(r["tempo"] for r in rows)
    lines.append(f"tempo within 4%: {tempo['right']}/{len(rows)}; octave errors (half/double): "
                 f"{tempo['half'] + tempo['double']}; wrong: {tempo['wrong']}")
    keyed = [r for r in rows if r["key"]]
    for p in PROFILES:
        c = Counter(r["relation"][p] for r in keyed)
        lines.append(f"key ({p}): exact {c['exact']}/{len(keyed)}, relative {c['relative']}, fifth {c['fifth']}, "
                     f"parallel {c['parallel']}, other {c['other']}")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", type=Path, default=REAL_DIR, help="Folder of rendered music with its pieces.json.")
    args = p.parse_args(argv)
    start = time.perf_counter()
    print("\n".join(report(measure(args.real))))
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
