"""prepare_data.py --codes_only on zip batches, measured in one run: disk per hour of audio against the
WAV route, kill-and-resume (how many committed units a resumed run encodes again: none), and two
processes on disjoint units against one (the same store, and the time).

    python -m benchmarks.prepare                   # tiny offline model, 4 zips x 6 x 30 s
    python -m benchmarks.prepare --zips 8 --clips_per_zip 10 --model_path /path/to/musicgen-small

Builds the offline tiny MusicGen (or uses --model_path) and --zips archive_batch_NNNN.zip of
--clips_per_zip clips of --clip_seconds each (tones with noise, described by a metadata.jsonl beside
the zips, as the seed collection ships). Then:
  1. the WAV route (prepare_data.py) and --codes_only on the same zips: bytes on disk each, per hour;
  2. --codes_only killed (SIGKILL) once its first unit is committed, then run again: the units the
     second run skipped, those it encoded, and whether any committed unit changed (it must not);
  3. two processes (RANK 0 and 1 of WORLD_SIZE 2, as accelerate launch sets them) into one store vs one
     process: wall time each; the store must be byte-identical to one process's at the same CPU thread
     count (exit 1 if not), and how many codes differ from one process at its own thread count.
Every child runs this checkout's prepare_data.py; its stderr lines are what the counts are read from.
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from benchmarks.paths import LORA, tiny_model
from musicgen_lora.audio.reader import MUSICGEN_SAMPLE_RATE as SR
from musicgen_lora.cli.args import Parser, positive_float, positive_int
from musicgen_lora.cli.runner import cli
from musicgen_lora.core.common import UserError


def make_zips(folder: Path, zips: int, per_zip: int, seconds: float) -> list[Path]:
    import io

    import numpy as np
    import soundfile as sf

    rows, paths = [], []
    for z in range(1, zips + 1):
        path = folder / f"archive_batch_{z:04d}.zip"
        with zipfile.ZipFile(path, "w") as zf:
            for i in range(per_zip):
                rng = np.random.default_rng(z * 1000 + i)
                t = np.arange(int(seconds * SR)) / SR
                x = 0.3 * np.sin(2 * np.pi * (150 + 37 * i + 11 * z) * t) + 0.02 * rng.standard_normal(len(t))
                buf = io.BytesIO()
                sf.write(buf, x.astype(np.float32), SR, format="WAV")
                member = f"audio/track_{z:04d}_{i:03d}.wav"
                zf.writestr(member, buf.getvalue())
                rows.append({"path": member, "duration": seconds, "sample_rate": SR, "description": f"tone {z}.{i}"})
        paths.append(path)
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def prepare(zips, out, model, *extra, env=None, popen=False):
    cmd = [sys.executable, str(LORA / "prepare_data.py"), "--input_zip", *map(str, zips), "--output_dir", str(out),
           "--no_progress", *map(str, extra)]
    if model is not None:
        cmd += ["--model_path", str(model), "--codes_only"]
    env = {**os.environ, **(env or {})}
    if popen:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"prepare_data.py failed:\n{proc.stderr[-2000:]}")
    return proc


def disk_bytes(folder: Path, skip=()) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not any(s in p.parts for s in skip))


def units_state(out: Path) -> dict:
    """{unit: (created, index checksum)} of the committed units."""
    from musicgen_lora.data.code_store import committed_units, default_store_dir

    units = committed_units(default_store_dir(out))
    return {u: (i["created"], i["checksum"]["index_sha256"]) for u, i in units.items()}


def store_bytes(out: Path) -> dict:
    from musicgen_lora.data.code_store import default_store_dir, units_dir

    root = units_dir(default_store_dir(out))
    return {u.name: tuple((u / f).read_bytes() for f in ("clips.jsonl", "codes.bin", "index.npy"))
            for u in sorted(root.iterdir()) if not u.name.startswith(".")}


def encoded_threads(out: Path) -> int | None:
    """The CPU threads the units were encoded with (unit.json notes; store_preparation.encoded_on)."""
    from musicgen_lora.data.code_store import default_store_dir, units_dir

    seen = {json.loads((u / "unit.json").read_text())["notes"]["encoded_on"]["threads"]
            for u in units_dir(default_store_dir(out)).iterdir() if not u.name.startswith(".")}
    return seen.pop() if len(seen) == 1 else None


def codes_differing(a: Path, b: Path) -> tuple[int, int]:
    """(codes that differ, codes in all) between two stores of the same units."""
    import numpy as np

    ours, theirs = store_bytes(a), store_bytes(b)
    flips = total = 0
    for unit, files in ours.items():
        x, y = (np.frombuffer(f[1], dtype=np.int16) for f in (files, theirs[unit]))  # codes.bin
        total += x.size
        flips += int((x != y).sum()) if x.size == y.size else x.size
    return flips, total


def skipped_line(stderr: str) -> str:
    return next((line for line in stderr.splitlines() if "already committed" in line and "to encode" in line), "?")


@cli
def main(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("--zips", type=positive_int, default=4, help="Zip batches to build.")
    p.add_argument("--clips_per_zip", type=positive_int, default=6, help="Clips in each zip.")
    p.add_argument("--clip_seconds", type=positive_float, default=30.0, help="Seconds per clip (two 15 s segments).")
    p.add_argument("--model_path", default=None, help="MusicGen whose codec encodes (default: the offline tiny one).")
    p.add_argument("--work_dir", default=None, help="Folder for the zips and outputs (default: a temp folder).")
    args = p.parse_args(argv)
    if args.work_dir is None:
        with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
            return measure(args, Path(tmp))
    work = Path(args.work_dir)
    if work.exists() and any(work.iterdir()):
        raise UserError(f"--work_dir {work}: not empty (its units would count as committed); give a new folder")
    work.mkdir(parents=True, exist_ok=True)
    return measure(args, work)


def measure(args, work: Path):
    model = args.model_path or tiny_model(work)
    zips = make_zips(work, args.zips, args.clips_per_zip, args.clip_seconds)
    hours = args.zips * args.clips_per_zip * args.clip_seconds / 3600
    print(f"{args.zips} zips x {args.clips_per_zip} clips x {args.clip_seconds:g} s = {hours * 60:.1f} min of audio; "
          f"model {model}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; in {work}")

    # 1. disk: the WAV route against the store
    start = time.perf_counter()
    prepare(zips, work / "wavs", None, "--valid_ratio", 0.1)
    wav_s = time.perf_counter() - start
    start = time.perf_counter()
    prepare(zips, work / "codes", model, "--valid_ratio", 0.1)
    codes_s = time.perf_counter() - start
    wav_b, store_b = disk_bytes(work / "wavs"), disk_bytes(work / "codes")
    codes_only_b = disk_bytes(work / "codes", skip=("audio",))
    print(f"disk per hour of audio: WAV route {wav_b / hours / 1e6:.1f} MB vs code store "
          f"{store_b / hours / 1e6:.2f} MB "
          f"({wav_b / store_b:.0f}x smaller; {codes_only_b / hours / 1e6:.2f} MB without the kept validation audio, "
          f"{wav_b / codes_only_b:.0f}x); WAV route {wav_s:.1f} s, --codes_only {codes_s:.1f} s (includes encoding)")

    # 2. kill after the first committed unit, resume
    out = work / "resume"
    proc = prepare(zips, out, model, popen=True)
    first = out / "code_store" / "units" / "archive_batch_0001"
    deadline = time.time() + 600
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = units_state(out)
    again = prepare(zips, out, model)
    after = units_state(out)
    changed = [u for u in before if after.get(u) != before[u]]
    print(f"kill-and-resume: killed with {len(before)} of {len(zips)} unit(s) committed; the resumed run: "
          f"{skipped_line(again.stderr).split(': ', 1)[-1]}; committed units re-encoded: {len(changed)}")

    # 3. two processes on disjoint units vs one. On a CPU each of the two gets half the cores
    # (prepare.py), and codes depend a little on the thread count, so the store they write is compared
    # with one process at THEIR thread count (the distribution must change nothing) and, as a figure,
    # with the one-process store of section 1.
    start = time.perf_counter()
    procs = [prepare(zips, work / "two", model, "--valid_ratio", 0.1, env={"RANK": str(r), "WORLD_SIZE": "2"},
                     popen=True) for r in (0, 1)]
    for proc in procs:
        proc.communicate()
    two_s = time.perf_counter() - start
    threads = encoded_threads(work / "two")
    prepare(zips, work / "one-same-threads", model, "--valid_ratio", 0.1, env={"OMP_NUM_THREADS": str(threads)})
    same = store_bytes(work / "two") == store_bytes(work / "one-same-threads")
    flipped, total = codes_differing(work / "two", work / "codes")
    print(f"two processes (RANK 0, 1 of 2, {threads} thread(s) each): {two_s:.1f} s vs one process "
          f"{codes_s:.1f} s at {encoded_threads(work / 'codes')} thread(s) ({codes_s / two_s:.2f}x); "
          f"store byte-identical to one process at {threads} thread(s): {same}; against the one-process store "
          f"at its own threads {flipped} of {total} codes differ (CPU rounding depends on the thread count)")
    if not same:
        raise SystemExit("error: two processes wrote another store than one process at the same thread count")


if __name__ == "__main__":
    sys.exit(main())
