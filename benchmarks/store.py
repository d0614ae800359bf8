"""The code store (data/code_store.py) at collection scale, and against one file per clip, measured in
one run.

    python -m benchmarks.store                       # 300,000 clips: ~1.8 GB in a temp dir
    python -m benchmarks.store --clips 30000 --work_dir /scratch/bench   # smaller; kept
    python -m benchmarks.store --quick               # 5,000 clips, 20 batches: proves the script runs

Writes a synthetic store of --clips clips (random codes, K=4 as musicgen-small, --clip_seconds each, in
units of --unit_clips, through code_store.UnitWriter) and one of --small_clips clips. Then, in a fresh
child process for each: the store's opening time (CodeStore start-up) and peak RSS after opening and
after --batches random batches of --batch_size random --window_seconds windows; the time per batch;
and the time and memory of reading every training clip's description. Also disk bytes per hour of
audio vs 32 kHz 16-bit mono WAV.

The baseline: --per_clip_files files of one clip each, written and read BY THIS BENCHMARK in the
format of the per-clip code cache that the store replaced (issue 29): <name[:2]>/<name>.safetensors
holding the whole clip's codes (K, T) as int32, num_samples in its metadata; a window is the whole
file loaded (safe_open, .long()) and then cropped (audio.codes.crop_codes), as that cache's reader
and MusicDataset did per item. That cache is gone from the package (code_cache.py keeps only its
hashing and keys), so the baseline cannot be the package's own writer and reader any more; it is
kept, rebuilt here, because it is the question the store answers -- a window from one file per clip
vs one pread from a unit --, and dropping it would leave the store's read time with nothing to be
compared against. Its figure is that of this benchmark's files, not of any code the trainer runs.

Everything was just written, so reads come from the page cache for both (a cold disk adds seeks to
both: one per window for the store, an open and a read per clip for the per-clip files). With
--work_dir the stores and files are kept and a second run only writes what is missing.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.paths import ROOT, child_env
from musicgen_lora.audio.reader import MUSICGEN_HOP_LENGTH, MUSICGEN_SAMPLE_RATE
from musicgen_lora.cli.args import Parser, nonneg_int, positive_float, positive_int
from musicgen_lora.cli.runner import cli
from musicgen_lora.core.common import UserError, peak_rss_mb

K = 4            # musicgen-small's codebooks (mono)
HOP = MUSICGEN_HOP_LENGTH  # musicgen-small's codec: 50 frames per second
SR = MUSICGEN_SAMPLE_RATE
WAV_BYTES_PER_S = SR * 2  # 32 kHz 16-bit mono


def synthetic_key():
    from musicgen_lora.audio.reader import MUSICGEN_SAMPLE_RATE, RESAMPLER, piece_samples
    from musicgen_lora.data.code_cache import ENCODE_RULE
    from musicgen_lora.data.code_store import StoreKey

    sr = MUSICGEN_SAMPLE_RATE
    return StoreKey(codec="synthetic-benchmark-codes", sample_rate=sr, channels="mono-mean", hop_length=HOP,
                    num_codebooks=K, dtype="torch.float32", piece_samples=piece_samples(sr, HOP),
                    resampler=RESAMPLER, encode=ENCODE_RULE)


def write_store(store_dir: Path, clips: int, unit_clips: int, frames: int, seed: int) -> tuple[float, int]:
    """(seconds, clips written): units already committed (a kept --work_dir) are not written again."""
    import numpy as np
    import torch

    from musicgen_lora.data.code_store import UnitWriter, is_committed

    key, start, written = synthetic_key(), time.perf_counter(), 0
    for u, first in enumerate(range(0, clips, unit_clips)):
        unit_id = f"archive_batch_{u:04d}"
        count = min(unit_clips, clips - first)
        if is_committed(store_dir, unit_id, {"synthetic": count, "seed": seed, "frames": frames}):
            continue
        codes = np.random.default_rng((seed, u)).integers(0, 2048, (count, K, frames), dtype=np.int16)
        with UnitWriter(store_dir, unit_id, key, {"synthetic": count, "seed": seed, "frames": frames}) as w:
            for j in range(count):
                name = f"clip_{first + j:06d}"
                w.add(name, torch.from_numpy(codes[j]), frames * HOP, f"{name}: lo-fi hip hop beat, mellow rhodes "
                      f"chords, vinyl crackle", "valid" if (first + j) % 10 == 9 else "train", frames * HOP / SR,
                      f"batch_{u:04d}.zip:{name}.wav")
        written += count
    return time.perf_counter() - start, written


def write_per_clip(folder: Path, clips: int, frames: int, seed: int) -> list[str]:
    """The baseline (module doc): one safetensors file per clip, <name[:2]>/<name>.safetensors with the
    whole clip's codes (K, T) int32 and its num_samples in the metadata, as the per-clip cache kept them."""
    import hashlib

    import numpy as np
    import torch
    from safetensors.torch import save_file

    rng, paths = np.random.default_rng((seed, 1 << 30)), []  # apart from the units' (seed, u)
    for j in range(clips):
        name = hashlib.sha256(f"clip_{j:06d}".encode()).hexdigest()
        path = folder / name[:2] / f"{name}.safetensors"
        codes = rng.integers(0, 2048, (K, frames))  # drawn either way: the same codes whatever is kept
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({"codes": torch.from_numpy(codes).to(torch.int32)}, str(path),
                      metadata={"num_samples": str(frames * HOP), "sample_rate": str(SR)})
        paths.append(str(path))
    return paths


def read_per_clip(path: str) -> tuple:
    """(codes (K, T), num_samples) of one baseline file, the whole clip read."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return f.get_tensor("codes").long(), int(f.metadata()["num_samples"])


# --------------------------------------------------------------------------------------------
# The child: one fresh process per measurement, so peak RSS is that reader's alone
# --------------------------------------------------------------------------------------------
def _batches(n_clips, lengths, batches: int, batch_size: int, window: int, seed: int, read):
    """Seconds for `batches` batches of `batch_size` random windows, zero-padded into (B, K, window)
    as dataset.Collator does; read(i, frame_offset) -> the window's codes."""
    import numpy as np
    import torch

    from musicgen_lora.audio.codes import choose_frame_offset, valid_frames_for_samples

    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for _ in range(batches):
        batch = torch.zeros(batch_size, K, window, dtype=torch.long)
        for b, i in enumerate(rng.integers(0, n_clips, batch_size).tolist()):
            codes = read(i, choose_frame_offset(valid_frames_for_samples(lengths(i), HOP), window, rng))
            batch[b, :, :codes.shape[1]] = codes
    return time.perf_counter() - start


def child(argv: list[str]):
    """Measure one reader; prints one JSON line."""
    spec = json.loads(argv[0])
    import numpy as np  # noqa: F401  (imports first: their memory is the baseline, not the store's)
    import torch  # noqa: F401

    from musicgen_lora.audio.codes import crop_codes
    from musicgen_lora.data.code_store import CodeStore

    out = {"baseline_mb": peak_rss_mb()}
    args = (spec["batches"], spec["batch_size"], spec["window"], spec["seed"])
    if spec["kind"] == "store":
        t0 = time.perf_counter()
        store = CodeStore(spec["path"], synthetic_key())
        out.update(open_s=time.perf_counter() - t0, clips=len(store), open_mb=peak_rss_mb())
        out["batches_s"] = _batches(len(store), store.num_samples, *args,
                                    read=lambda i, o: store.window(i, o, spec["window"]))
        out["read_mb"] = peak_rss_mb()
        t0, train = time.perf_counter(), store.split_indices("train")
        out.update(descriptions=len(store.descriptions(train)), descriptions_s=time.perf_counter() - t0,
                   descriptions_mb=peak_rss_mb())
    else:
        paths = json.loads(Path(spec["path"]).read_text())

        def read(i, offset):
            codes, num_samples = read_per_clip(paths[i])
            return crop_codes(codes, num_samples, offset, spec["window"], HOP)[0]

        out["batches_s"] = _batches(len(paths), lambda i: spec["num_samples"], *args, read=read)
        out["read_mb"] = peak_rss_mb()
    print(json.dumps(out))


def measure(spec: dict) -> dict:
    env = dict(child_env(), OMP_NUM_THREADS="1")
    code = "import sys; from benchmarks.store import child; child(sys.argv[1:])"
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, env=env,
                          cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {spec['kind']} {spec['path']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def check_space(work: Path, clips: int, frames: int):
    from musicgen_lora.core.outputs import free_mb

    need = clips * frames * K * 2 / 2**20 * 1.1 + 100
    free = free_mb(work)
    if free is not None and free < need:
        raise UserError(f"{work}: {free:,.0f} MB free, the benchmark needs ~{need:,.0f} MB for {clips:,} clips; pass "
                        f"a smaller --clips (figures scale with it) or a --work_dir on a bigger disk")


def disk_per_hour(store_dir: Path, clip_seconds: float) -> str:
    from musicgen_lora.data.code_store import INDEX_DTYPE, store_summary

    frame_rate = SR / HOP
    computed = frame_rate * K * 2 * 3600 + INDEX_DTYPE.itemsize * 3600 / clip_seconds
    s = store_summary(store_dir)
    measured = s["bytes"] / s["hours"]
    wav = WAV_BYTES_PER_S * 3600
    return (f"disk per hour of audio: store {computed / 1e6:.3f} MB computed ({frame_rate:g} frames/s x {K} x 2 B + "
            f"{INDEX_DTYPE.itemsize} B index row per clip), {measured / 1e6:.3f} MB measured (+ clips.jsonl, "
            f"unit.json) vs 32 kHz 16-bit mono WAV {wav / 1e6:.1f} MB: {wav / measured:.0f}x smaller")


def report(args, big: dict, small: dict, per_clip: dict, write_line: str) -> list[str]:
    def per_batch(measured: dict) -> float:  # ms
        return measured["batches_s"] / args.batches * 1000

    n, m = big["clips"], small["clips"]
    return [
        write_line,
        f"open {n:,} clips: {big['open_s']:.3f} s vs {m:,}: {small['open_s']:.3f} s "
        f"({big['open_s'] / small['open_s']:.1f}x for {n / m:.0f}x the clips)",
        f"peak RSS after opening: {big['open_mb']:.0f} vs {small['open_mb']:.0f} MB "
        f"({big['open_mb'] / small['open_mb']:.2f}x); after {args.batches} batches of {args.batch_size} windows: "
        f"{big['read_mb']:.0f} vs {small['read_mb']:.0f} MB ({big['read_mb'] / small['read_mb']:.2f}x) "
        f"[python + numpy + torch alone: {big['baseline_mb']:.0f} MB]",
        f"batch of {args.batch_size} {args.window_seconds:g} s windows: store {per_batch(big):.2f} ms ({n:,} clips) / "
        f"{per_batch(small):.2f} ms ({m:,}) vs the baseline built here, a safetensors file per clip read whole "
        f"{per_batch(per_clip):.2f} ms ({args.per_clip_files:,} files): {per_batch(per_clip) / per_batch(big):.1f}x; "
        f"peak RSS {big['read_mb']:.0f} vs {per_clip['read_mb']:.0f} MB",
        f"descriptions of all {big['descriptions']:,} training clips (read per unit, on demand): "
        f"{big['descriptions_s']:.2f} s, peak RSS {big['read_mb']:.0f} -> {big['descriptions_mb']:.0f} MB",
    ]


@cli
def main(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("--quick", action="store_true",
                   help="Prove the script runs: 5,000 clips, 200 per-clip files, 20 batches (flags given "
                        "explicitly win; the figures are not those of a collection).")
    p.add_argument("--clips", type=positive_int, default=None, help="Clips in the big store (default 300,000).")
    p.add_argument("--small_clips", type=positive_int, default=1_000, help="Clips in the small store.")
    p.add_argument("--per_clip_files", type=positive_int, default=None,
                   help="Files of the per-clip baseline (module doc; default 2,000).")
    p.add_argument("--unit_clips", type=positive_int, default=1_000, help="Clips per unit (one zip's worth).")
    p.add_argument("--clip_seconds", type=positive_float, default=15.0, help="Length of every clip.")
    p.add_argument("--window_seconds", type=positive_float, default=15.0, help="Length of a training window.")
    p.add_argument("--batches", type=positive_int, default=None, help="Random batches read per reader (default 200).")
    p.add_argument("--batch_size", type=positive_int, default=8, help="Windows per batch.")
    p.add_argument("--seed", type=nonneg_int, default=0, help="Seed of the codes and of the windows drawn.")
    p.add_argument("--work_dir", default=None,
                   help="Where to write the stores, kept afterwards (default: a temp dir, removed afterwards).")
    args = p.parse_args(argv)
    defaults = {"clips": 5_000, "per_clip_files": 200, "batches": 20} if args.quick else \
        {"clips": 300_000, "per_clip_files": 2_000, "batches": 200}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bench-store-"))
    try:
        run(args, work)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path):
    from musicgen_lora.audio.codes import num_frames_for_samples

    frames = num_frames_for_samples(round(args.clip_seconds * SR), HOP)
    window = num_frames_for_samples(round(args.window_seconds * SR), HOP)
    work.mkdir(parents=True, exist_ok=True)
    check_space(work, args.clips + args.small_clips + args.per_clip_files * 4, frames)  # int64: 4x int16
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}; writing in {work}", flush=True)
    seconds, written = write_store(work / "big", args.clips, args.unit_clips, frames, args.seed)
    write_store(work / "small", args.small_clips, args.unit_clips, frames, args.seed + 1)
    paths = write_per_clip(work / "per_clip", args.per_clip_files, frames, args.seed)
    (work / "per_clip_paths.json").write_text(json.dumps(paths))
    write_line = (f"synthetic store: {args.clips:,} clips x {args.clip_seconds:g} s (K={K}, {frames} frames) in units "
                  f"of {args.unit_clips:,}: {written:,} clips written in {seconds:.1f} s"
                  + (f" ({written / seconds:,.0f} clips/s)" if written else " (all kept from before)"))
    spec = {"batches": args.batches, "batch_size": args.batch_size, "window": window, "seed": args.seed}
    big = measure({**spec, "kind": "store", "path": str(work / "big")})
    small = measure({**spec, "kind": "store", "path": str(work / "small")})
    per_clip = measure({**spec, "kind": "per_clip", "path": str(work / "per_clip_paths.json"),
                        "num_samples": frames * HOP})  # every clip's: one read per window, as in the store
    for line in report(args, big, small, per_clip, write_line) + [disk_per_hour(work / "big", args.clip_seconds)]:
        print(line)


if __name__ == "__main__":
    sys.exit(main())
