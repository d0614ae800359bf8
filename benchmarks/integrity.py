"""Benchmark: what the code store's integrity check costs when a process opens the store.

    python -m benchmarks.integrity                      # 100,000 clips x 15 s, ~572 MB of codes.bin
    python -m benchmarks.integrity --clips 300000 --units 300

Writes a synthetic store (random codes, K=4, --clip_seconds each, --units units) in a temp folder,
then opens it (code_store.CodeStore) --repeats times with the sha256 check of every unit file and
with the check skipped (the digests memoised, so everything else an open does stays), in turn, and
prints the fastest of each, their difference and the hashing speed. The page cache is warm after
writing: a cold disk reads at its own speed instead.
"""
import sys
import tempfile
import time
from pathlib import Path

from musicgen_lora.cli.args import Parser, positive_float, positive_int
from musicgen_lora.cli.runner import cli


@cli
def main(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("--clips", type=positive_int, default=100_000, help="Clips in the store.")
    p.add_argument("--units", type=positive_int, default=4, help="Units they are spread over.")
    p.add_argument("--clip_seconds", type=positive_float, default=15.0, help="Length of every clip.")
    p.add_argument("--repeats", type=positive_int, default=3, help="Opens of each kind; the fastest is kept.")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from musicgen_lora.audio.reader import RESAMPLER, piece_samples
    from musicgen_lora.data import code_store

    sr, hop = 32000, 640
    key = code_store.StoreKey(codec="c0" * 32, sample_rate=sr, channels="mono-mean", hop_length=hop, num_codebooks=4,
                              dtype="torch.float32", piece_samples=piece_samples(sr, hop), resampler=RESAMPLER,
                              encode="pieces")
    frames = int(args.clip_seconds * sr // hop)
    codes = torch.from_numpy(np.random.default_rng(0).integers(0, 2048, (4, frames)))
    with tempfile.TemporaryDirectory() as tmp:
        store_dir = Path(tmp)
        per_unit = -(-args.clips // args.units)
        for u in range(args.units):
            with code_store.UnitWriter(store_dir, f"unit-{u:04d}", key, {"unit": u}) as w:
                for j in range(min(per_unit, args.clips - u * per_unit)):
                    w.add(f"c{j}", codes, frames * hop, "", "train", args.clip_seconds, "synthetic")
        size = sum(p.stat().st_size for p in store_dir.rglob("*.bin"))
        real, memo = code_store.file_sha256, {}

        def memoised(path):
            if str(path) not in memo:
                memo[str(path)] = real(path)
            return memo[str(path)]

        checked, skipped = [], []
        for _ in range(args.repeats):
            for digest, times in ((real, checked), (memoised, skipped)):
                code_store.file_sha256 = digest
                start = time.perf_counter()
                code_store.CodeStore(store_dir, key)
                times.append(time.perf_counter() - start)
        code_store.file_sha256 = real
    a, b = min(checked), min(skipped[1:] or skipped)
    print(f"{args.clips:,} clips x {args.clip_seconds:g} s in {args.units} units, {size / 2**20:,.0f} MB of .bin "
          f"files: open {a:.2f} s with the sha256 check vs {b:.2f} s without; hashing "
          f"{size / 2**20 / max(a - b, 1e-9):,.0f} MB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
