#!/usr/bin/env python
"""Peak memory of the scripts on hostile input vs normal input, measured in one run.

    .venv/bin/python -m benchmarks.limits [--cap_gb 8] [--long_minutes 60] [--melody]

Each case runs the real command line in a child process under an address-space cap (so a
regression ends in an allocation error instead of taking the machine down) and reports the
child's own peak RSS (benchmarks/peak_memory.py):

  - train_lora.py, one step, uncached and cached: a 15 s clip vs a --long_minutes clip;
  - train_lora.py, one step: a normal description vs a 100 KB one;
  - prepare_data.py --input_zip: a normal zip vs a 2 MB zip holding 2 GiB of zeros.

A case that hits the cap prints "> CAP"; the bad/normal ratio is the figure to watch (1.0x means
the bad input costs nothing extra). --melody trains a MusicGen-Melody checkpoint instead, whose
training also reads each window's melody chroma from the clip.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import soundfile as sf

from benchmarks.paths import LORA, SCRIPTS

SR = 32000

from benchmarks.peak_memory import run_with_peak  # noqa: E402


def write_music(path: Path, seconds: float, seed: int = 0):
    """A chord with a beat, written in 60 s blocks so a long file never sits in memory whole."""
    rng = np.random.default_rng(seed)
    with sf.SoundFile(str(path), "w", SR, 1, subtype="PCM_16") as f:
        done = 0
        total = int(seconds * SR)
        while done < total:
            n = min(60 * SR, total - done)
            t = (done + np.arange(n)) / SR
            x = sum(np.sin(2 * np.pi * 220 * r * t) for r in (1, 1.25, 1.5)) / 3 * 0.3
            x *= 0.6 + 0.4 * (np.sin(2 * np.pi * 2 * t) > 0)
            f.write((x + rng.standard_normal(n) * 0.01).astype(np.float32))
            done += n


def make_data(root: Path, train_seconds: float, description: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_music(root / "train.wav", train_seconds, seed=1)
    write_music(root / "valid.wav", 15, seed=2)
    meta = {"train": [{"audio": "train.wav", "description": description}],
            "valid": [{"audio": "valid.wav", "description": "lo-fi hip hop beat"}]}
    (root / "metadata.json").write_text(json.dumps(meta))
    return root


def run_capped(cmd, cap_bytes: int, timeout: float = 1800):
    """(exit code, peak RSS in MB, seconds, last stderr line) of a child under RLIMIT_AS."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    t0 = time.time()
    with tempfile.TemporaryFile() as err:
        code, peak = run_with_peak(cmd, cap_bytes, env=env, stderr=err, timeout=timeout)
        err.seek(0)
        lines = [line for line in err.read().decode(errors="replace").splitlines() if line.strip()]
    return code, peak, time.time() - t0, (lines[-1] if lines else "")


def train_cmd(model, data, out, *extra):
    return [sys.executable, str(LORA / "train_lora.py"), "--model_path", str(model), "--data_dir", str(data),
            "--output_dir", str(out), "--max_steps", "1", "--batch_size", "1", "--gradient_accumulation_steps", "1",
            "--target_duration", "15", "--logging_steps", "1", "--save_steps", "0", "--no_progress", *extra]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cap_gb", type=float, default=8.0, help="Address-space cap per child, GiB (default: 8).")
    p.add_argument("--long_minutes", type=float, default=60.0, help="Length of the long clip (default: 60).")
    p.add_argument("--melody", action="store_true",
                   help="Train a tiny MusicGen-Melody checkpoint (make_tiny_model.py --melody), not a text-only one.")
    p.add_argument("--work_dir", default=None, help="Scratch folder (default: a temp dir).")
    args = p.parse_args()
    cap = int(args.cap_gb * 2**30)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-limits-"))
    model = work / ("tiny-musicgen-melody" if args.melody else "tiny-musicgen")
    if not (model / "config.json").is_file():
        subprocess.run([sys.executable, str(SCRIPTS / "make_tiny_model.py"), "--output_dir", str(model)]
                       + (["--melody"] if args.melody else []), check=True, stdout=subprocess.DEVNULL)

    normal = make_data(work / "normal", 15, "lo-fi hip hop beat, mellow rhodes chords")
    long = make_data(work / "long", args.long_minutes * 60, "lo-fi hip hop beat, mellow rhodes chords")
    wordy = make_data(work / "wordy", 15, " ".join(["lo-fi hip hop beat with mellow rhodes chords"] * 2300))
    print(f"description of {len(' '.join(['lo-fi hip hop beat with mellow rhodes chords'] * 2300)) / 1000:.0f} KB; "
          f"long clip {args.long_minutes:g} min; cap {args.cap_gb:g} GiB per child; {os.cpu_count()} CPUs")

    zips = work / "zips"
    zips.mkdir(exist_ok=True)
    write_music(zips / "song.wav", 15, seed=3)
    with zipfile.ZipFile(zips / "normal.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.write(zips / "song.wav", "song.wav")
        z.writestr("song.txt", "lo-fi hip hop beat")
    with zipfile.ZipFile(zips / "bomb.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.write(zips / "song.wav", "song.wav")
        z.writestr("song.txt", "lo-fi hip hop beat")
        with z.open("zeros.wav", "w", force_zip64=True) as member:  # 2 GiB of zeros, ~2 MB compressed
            block = bytes(2**24)
            for _ in range(128):
                member.write(block)
        z.writestr("zeros.txt", "lo-fi hip hop beat")
    print(f"zip bomb: {(zips / 'bomb.zip').stat().st_size / 2**20:.1f} MB on disk, 2 GiB inside")

    def prep(name, zip_path):
        return [sys.executable, str(LORA / "prepare_data.py"), "--input_zip", str(zip_path), "--output_dir",
                str(work / f"prep-{name}"), "--no_progress"]

    cases = [
        ("train, uncached", train_cmd(model, normal, work / "out-a", "--no_cache"),
         train_cmd(model, long, work / "out-b", "--no_cache"), f"15 s clip vs {args.long_minutes:g} min clip"),
        ("train, code cache", train_cmd(model, normal, work / "out-c", "--cache_dir", str(work / "cache-c")),
         train_cmd(model, long, work / "out-d", "--cache_dir", str(work / "cache-d")),
         f"15 s clip vs {args.long_minutes:g} min clip"),
        ("train, description", train_cmd(model, normal, work / "out-e", "--no_cache"),
         train_cmd(model, wordy, work / "out-f", "--no_cache"), "normal vs 100 KB description"),
        ("prepare_data --input_zip", prep("normal", zips / "normal.zip"), prep("bomb", zips / "bomb.zip"),
         "normal zip vs 2 GiB of zeros in a 2 MB zip"),
    ]
    print(f"{'case':<26} {'what':<36} {'normal MB':>10} {'bad MB':>10} {'ratio':>7}  bad run")
    for name, good_cmd, bad_cmd, what in cases:
        g_rc, g_rss, g_s, g_err = run_capped(good_cmd, cap)
        b_rc, b_rss, b_s, b_err = run_capped(bad_cmd, cap)
        if g_rc != 0:
            print(f"{name}: the normal case failed ({g_rc}): {g_err}")
            continue
        bad = f"{b_rss:10.0f}" if b_rc == 0 else f"{'> cap':>10}" if "memory" in b_err.lower() or b_rc < 0 \
            else f"{b_rss:10.0f}"
        status = f"exit {b_rc} in {b_s:.0f} s" + (f": {b_err[:90]}" if b_rc else "")
        print(f"{name:<26} {what:<36} {g_rss:10.0f} {bad} {b_rss / g_rss:6.2f}x  {status}")


if __name__ == "__main__":
    main()
