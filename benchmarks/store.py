"""The code store (data/code_store.py) at collection scale vs the per-clip code cache, measured in one run.

    python -m benchmarks.store                       # 300,000 clips: ~1.8 GB in a temp dir
    python -m benchmarks.store --clips 30000 --work_dir /scratch/bench   # smaller; kept

Writes a synthetic store of --clips clips (random codes, K=4 as musicgen-small, --clip_seconds each, in
units of --unit_clips, through code_store.UnitWriter) and one of --small_clips clips, plus --cache_clips
per-clip code cache entries (code_cache.save_codes, the cache's own writer). Then, in a fresh child
process for each: the store's opening time (CodeStore start-up) and peak RSS after opening and after
--batches random batches of --batch_size random --window_seconds windows; the time per batch from the
store and from the cache entries (code_cache.load_codes + codes.crop_codes, what dataset.MusicDataset
does per item); and the time and memory of reading every training clip's description. Also disk bytes
per hour of audio vs 32 kHz 16-bit mono WAV.

Everything was just written, so reads come from the page cache for both (a cold disk adds seeks to
both: one per window for the store, an open and a read per clip for the cache). With --work_dir the
stores are kept and a second run only writes the units that are missing.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.paths import ROOT
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


def write_cache(cache_dir: Path, clips: int, frames: int, seed: int) -> list[str]:
    """Per-clip entries in the cache's layout (<key[:2]>/<key>.safetensors), written by its writer."""
    import hashlib

    import numpy as np
    import torch

    from musicgen_lora.data.code_cache import save_codes

    rng, paths = np.random.default_rng((seed, 1 << 30)), []  # apart from the units' (seed, u)
    for j in range(clips):
        key = hashlib.sha256(f"clip_{j:06d}".encode()).hexdigest()
        path = cache_dir / key[:2] / f"{key}.safetensors"
        if not path.is_file():
            save_codes(path, torch.from_numpy(rng.integers(0, 2048, (K, frames))), frames * HOP, SR, f"{j}.wav")
        paths.append(str(path))
    return paths


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
    from musicgen_lora.data.code_cache import load_codes
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
            codes, num_samples = load_codes(paths[i])
            return crop_codes(codes, num_samples, offset, spec["window"], HOP)[0]

        out["batches_s"] = _batches(len(paths), lambda i: spec["num_samples"], *args, read=read)
        out["read_mb"] = peak_rss_mb()
    print(json.dumps(out))


def measure(spec: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
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


def report(args, big: dict, small: dict, cache: dict, write_line: str) -> list[str]:
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
        f"{per_batch(small):.2f} ms ({m:,}) vs per-clip cache {per_batch(cache):.2f} ms ({args.cache_clips:,} "
        f"entries): {per_batch(cache) / per_batch(big):.1f}x; peak RSS {big['read_mb']:.0f} vs "
        f"{cache['read_mb']:.0f} MB",
        f"descriptions of all {big['descriptions']:,} training clips (read per unit, on demand): "
        f"{big['descriptions_s']:.2f} s, peak RSS {big['read_mb']:.0f} -> {big['descriptions_mb']:.0f} MB",
    ]


@cli
def main(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("--clips", type=positive_int, default=300_000, help="Clips in the big store.")
    p.add_argument("--small_clips", type=positive_int, default=1_000, help="Clips in the small store.")
    p.add_argument("--cache_clips", type=positive_int, default=2_000, help="Per-clip code cache entries.")
    p.add_argument("--unit_clips", type=positive_int, default=1_000, help="Clips per unit (one zip's worth).")
    p.add_argument("--clip_seconds", type=positive_float, default=15.0, help="Length of every clip.")
    p.add_argument("--window_seconds", type=positive_float, default=15.0, help="Length of a training window.")
    p.add_argument("--batches", type=positive_int, default=200, help="Random batches read per reader.")
    p.add_argument("--batch_size", type=positive_int, default=8, help="Windows per batch.")
    p.add_argument("--seed", type=nonneg_int, default=0, help="Seed of the codes and of the windows drawn.")
    p.add_argument("--work_dir", default=None,
                   help="Where to write the stores, kept afterwards (default: a temp dir, removed afterwards).")
    args = p.parse_args(argv)

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
    check_space(work, args.clips + args.small_clips + args.cache_clips, frames)
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}; writing in {work}", flush=True)
    seconds, written = write_store(work / "big", args.clips, args.unit_clips, frames, args.seed)
    write_store(work / "small", args.small_clips, args.unit_clips, frames, args.seed + 1)
    paths = write_cache(work / "cache", args.cache_clips, frames, args.seed)
    (work / "cache_paths.json").write_text(json.dumps(paths))
    write_line = (f"synthetic store: {args.clips:,} clips x {args.clip_seconds:g} s (K={K}, {frames} frames) in units "
                  f"of {args.unit_clips:,}: {written:,} clips written in {seconds:.1f} s"
                  + (f" ({written / seconds:,.0f} clips/s)" if written else " (all kept from before)"))
    spec = {"batches": args.batches, "batch_size": args.batch_size, "window": window, "seed": args.seed}
    big = measure({**spec, "kind": "store", "path": str(work / "big")})
    small = measure({**spec, "kind": "store", "path": str(work / "small")})
    cache = measure({**spec, "kind": "cache", "path": str(work / "cache_paths.json"), "num_samples": frames * HOP})
    for line in report(args, big, small, cache, write_line) + [disk_per_hour(work / "big", args.clip_seconds)]:
        print(line)


if __name__ == "__main__":
    sys.exit(main())
