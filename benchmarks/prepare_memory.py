"""Peak memory of prepare_data.py against track length, on both routes: a short and a long 44.1 kHz stereo
track (tones with noise, WAV) through the WAV route and --codes_only, each run in its own process.

    python -m benchmarks.prepare_memory            # 1 min vs 1 h
    python -m benchmarks.prepare_memory --quick    # 20 s vs 5 min (tests/test_prepare_memory.py runs this)

Prints, per route and track: peak RSS of the prepare_data.py process (benchmarks.peak_memory: its own
peak, not its parent's), wall time, clips (15 s segments) per second and times real time; then the ratio
long / short of the peaks per route. Preparation decodes, resamples, cuts and encodes in blocks, so the
ratio should stay near 1 (the bound tests/test_prepare_memory.py checks: RATIO_LIMIT). Children run with
OMP_NUM_THREADS=1 on the CPU; --codes_only encodes with the offline tiny model (or --model_path).
"""
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.paths import LORA, tiny_model
from benchmarks.peak_memory import run_with_peak
from musicgen_lora.cli.args import Parser
from musicgen_lora.cli.runner import cli

RATE = 44100
RATIO_LIMIT = 1.3  # peak RSS of the long track over the short one's, per route
CAP_BYTES = 8 << 30  # a regression ends in an allocation error, not a swapping machine


def write_track(path: Path, seconds: float, seed: int = 0) -> None:
    """A stereo chord with noise at 44.1 kHz, written a minute at a time (the benchmark never holds it whole)."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(seed)
    total, step = int(seconds * RATE), 60 * RATE
    with sf.SoundFile(path, "w", RATE, 2, subtype="PCM_16") as f:
        for start in range(0, total, step):
            t = np.arange(start, min(start + step, total)) / RATE
            x = sum(np.sin(2 * np.pi * f0 * t) for f0 in (220.0, 277.2, 329.6)) * 0.15
            noise = rng.standard_normal((len(t), 2)) * 0.02
            f.write((np.stack([x, 0.8 * x], axis=1) + noise).astype(np.float32))


def clips_made(out: Path, codes: bool) -> int:
    if not codes:
        meta = json.loads((out / "metadata.json").read_text())
        return sum(len(v) for v in meta.values())
    from musicgen_lora.data.code_store import committed_units, default_store_dir

    return sum(sum(u["notes"]["report"]["segments"].values()) for u in committed_units(default_store_dir(out)).values())


def run_route(track_dir: Path, out: Path, model) -> tuple[float, float, int]:
    """(peak MB, seconds, clips) of prepare_data.py on the folder; model None: the WAV route."""
    cmd = [sys.executable, str(LORA / "prepare_data.py"), "--input_dir", track_dir, "--output_dir", out,
           "--default_description", "tones", "--valid_ratio", 0, "--no_progress"]
    if model is not None:
        cmd += ["--codes_only", "--model_path", model, "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    code, peak = run_with_peak(cmd, cap_bytes=CAP_BYTES, env=env, stderr=open(out.parent / f"{out.name}.log", "w"))
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"prepare_data.py failed (exit {code}); see {out.parent / f'{out.name}.log'}")
    return peak, seconds, clips_made(out, model is not None)


@cli
def main(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="20 s vs 5 min instead of 1 min vs 1 h.")
    p.add_argument("--model_path", default=None, help="MusicGen whose codec encodes (default: the offline tiny one).")
    p.add_argument("--work_dir", default=None, help="Folder for the tracks and outputs (default: a temp folder).")
    args = p.parse_args(argv)
    if args.work_dir is not None:
        Path(args.work_dir).mkdir(parents=True, exist_ok=True)
        return measure(args, Path(args.work_dir))
    with tempfile.TemporaryDirectory(prefix="bench-prepare-memory-") as tmp:
        return measure(args, Path(tmp))


def measure(args, work: Path):
    model = args.model_path or tiny_model(work)
    lengths = {"20 s": 20.0, "5 min": 300.0} if args.quick else {"1 min": 60.0, "1 h": 3600.0}
    for name, seconds in lengths.items():
        folder = work / f"track-{name.replace(' ', '')}"
        if not folder.is_dir():
            folder.mkdir()
            write_track(folder / "track.wav", seconds)
    print(f"one {' / '.join(lengths)} 44.1 kHz stereo 16-bit WAV (tones + noise) per run, 15 s segments; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, OMP_NUM_THREADS=1; --codes_only with "
          f"{'the offline tiny model' if args.model_path is None else model} on the CPU; peak RSS of the "
          f"prepare_data.py process")
    ratios = {}
    for route, route_model in (("WAV route", None), ("--codes_only", model)):
        peaks = []
        for name, seconds in lengths.items():
            out = work / f"out-{'codes' if route_model else 'wav'}-{name.replace(' ', '')}"
            peak, took, clips = run_route(work / f"track-{name.replace(' ', '')}", out, route_model)
            peaks.append(peak)
            print(f"{route:13s} {name:>6s}: peak RSS {peak:7.0f} MB; {took:6.1f} s, {clips} clips, "
                  f"{clips / took:5.2f} clips/s, {seconds / took:6.1f}x real time")
        ratios[route] = peaks[1] / peaks[0]
    print("peak RSS " + " / ".join(lengths) + ": " + ", ".join(f"{r} {v:.2f}x" for r, v in ratios.items())
          + f" (bound {RATIO_LIMIT}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
