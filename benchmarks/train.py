#!/usr/bin/env python
"""Training throughput with and without the EnCodec code cache, pre-tokenisation speed, and peak RSS
of the streaming dataset at 100 vs 10,000 clips, and cache-key lookup with and without the file-hash
memo -- all measured in one run, printed with ratios.

    python -m benchmarks.train                 # tiny model only (~1 min on 2 cores)
    python -m benchmarks.train --size small    # + musicgen-small architecture at 15 s
    python -m benchmarks.train --melody        # the same on MusicGen-Melody checkpoints

Models are built offline with make_tiny_model.py (random weights: speed and memory are those of the
real architecture, losses are not meaningful). Training steps are real LoRA steps (forward, backward,
AdamW) through model.loss.batch_loss, from the same DataLoader/Collator the trainer uses; the first
step of each mode is a warm-up and not timed. Peak RSS is measured in fresh subprocesses that read
the metadata, look every clip up in the cache (hashing its file, or reading its file-hash memo entry)
and run one epoch of batches.
With a CUDA GPU the throughput runs on it and peak GPU memory is printed at batch 1, 2 and 4;
without one those figures are skipped (said in the output).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.paths import SCRIPTS

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

SR = 32000


def build_model(size: str, work: Path, melody: bool = False) -> Path:
    out = work / f"{size}-musicgen{'-melody' if melody else ''}"
    if not (out / "config.json").is_file():
        subprocess.run([sys.executable, str(SCRIPTS / "make_tiny_model.py"), "--output_dir", str(out), "--size", size]
                       + (["--melody"] if melody else []), check=True, capture_output=True)
    return out


def synth_clips(folder: Path, count: int, seconds: float, seed: int = 0, prefix="clip") -> list[dict]:
    """Distinct clips (chords + noise), written as 16-bit WAV at 32 kHz."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    entries = []
    for i in range(count):
        f = 110 * 2 ** (rng.integers(0, 24) / 12)
        x = sum(np.sin(2 * np.pi * f * r * t + rng.random()) for r in (1, 1.26, 1.5)) * 0.2
        x = (x + rng.standard_normal(len(t)) * 0.02).astype(np.float32)
        name = f"{prefix}_{i:05d}.wav"
        sf.write(folder / name, x, SR, subtype="PCM_16")
        entries.append({"audio": f"train/{name}", "description": f"synthetic chord {i % 7}", "duration": seconds})
    return entries


def write_metadata(data: Path, entries: list[dict], name="metadata.json"):
    (data / name).write_text(json.dumps({"train": entries, "valid": []}))


# --------------------------------------------------------------------------------------------
# Training throughput
# --------------------------------------------------------------------------------------------
def time_training(model, processor, clips, window_s, batch_size, steps, device, code_files=None, autocast=None):
    from musicgen_lora.data.dataset import Collator, MusicDataset
    from musicgen_lora.model.checkpoint import model_info
    from musicgen_lora.model.loss import batch_loss

    info = model_info(model)
    ds = MusicDataset(clips, info["sample_rate"], window_s, train=True, seed=0, hop_length=info["hop_length"],
                      audio_channels=info["audio_channels"], code_files=code_files)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False,
                                         collate_fn=Collator(processor, int(window_s * info["sample_rate"]),
                                                             info["hop_length"]))
    params = [p for p in model.parameters() if p.requires_grad]
    start_weights = [p.detach().clone() for p in params]  # every mode starts from the same LoRA weights
    opt = torch.optim.AdamW(params, lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # LoRA dropout
    model.train()
    timed, samples, tokens, losses = 0.0, 0, 0, []
    it = iter(loader)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(steps + 1):  # step 0 is a warm-up
        start = time.perf_counter()
        batch = next(it)  # data loading (decode, or read cached codes) is part of the step
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            loss, n_tok = batch_loss(model, batch, 0.1, gen)  # as the trainer's accelerator.autocast()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step:
            timed += time.perf_counter() - start
            samples += batch["input_ids"].shape[0]
            tokens += n_tok
        losses.append(float(loss.detach()))
    with torch.no_grad():
        for p, w in zip(params, start_weights):
            p.copy_(w)
    out = {"samples_per_s": samples / timed, "tokens_per_s": tokens / timed, "seconds_per_step": timed / steps,
           "first_loss": losses[0]}
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def bench_model(size, work, args, device):
    from musicgen_lora.data.code_cache import CodeCache
    from musicgen_lora.data.metadata import read_metadata
    from musicgen_lora.model.checkpoint import load_model_and_processor, model_info
    from musicgen_lora.model.lora import apply_lora

    steps = args.steps or (2 if size == "small" else 4)
    batch = args.batch_size or (1 if size == "small" else 2)
    t0 = time.time()
    model_dir = build_model(size, work, args.melody)
    data = work / f"data-{size}"
    n_clips = batch * (steps + 1)
    if not (data / "metadata.json").is_file():
        write_metadata(data, synth_clips(data / "train", n_clips, args.duration, seed=1))
    clips = read_metadata(data)["train"]
    model, processor = load_model_and_processor(str(model_dir), device=str(device))
    model = apply_lora(model, 12, 24, 0.05)
    info = model_info(model)
    print(f"[{size}] model {model_dir.name} ready in {time.time() - t0:.0f} s; {n_clips} clips of "
          f"{args.duration:g} s, batch {batch}, {steps} timed steps (+1 warm-up) per mode", flush=True)

    shutil.rmtree(work / f"cache-{size}", ignore_errors=True)  # pre-tokenisation is timed from empty
    cache = CodeCache(work / f"cache-{size}", model, info["sample_rate"])
    files = cache.fill(clips, progress=False)
    fill = cache.last_fill
    res = {"pretokenize_files_per_s": fill["files_per_s"], "pretokenize_audio_s_per_s":
           fill["files_per_s"] * args.duration, "encoded": fill["encoded"]}
    print(f"[{size}] pre-tokenised {fill['files']} clips at {fill['files_per_s']:.2f} files/s; timing steps",
          flush=True)
    res["uncached"] = time_training(model, processor, clips, args.duration, batch, steps, device)
    res["cached"] = time_training(model, processor, clips, args.duration, batch, steps, device, code_files=files)
    # Same data, same seeds, same LoRA weights at step 0: the first losses agree across modes.
    res["first_loss_delta"] = abs(res["cached"]["first_loss"] - res["uncached"]["first_loss"])
    res["ratio"] = res["cached"]["samples_per_s"] / res["uncached"]["samples_per_s"]
    if bf16_runs(device):  # the precision --bf16 trains in, on the cached path
        res["cached_bf16"] = time_training(model, processor, clips, args.duration, batch, steps, device,
                                           code_files=files, autocast=torch.bfloat16)
        res["bf16_first_loss_delta"] = abs(res["cached_bf16"]["first_loss"] - res["cached"]["first_loss"])
        res["bf16_ratio"] = res["cached"]["seconds_per_step"] / res["cached_bf16"]["seconds_per_step"]
    res["step_flop"] = step_flop(model, processor, clips, args.duration, batch, files)
    res.update(size=size, batch=batch, steps=steps, device=str(device))
    if device.type == "cuda":
        res["peak_gpu_mb_by_batch"] = {}
        for b in (1, 2, 4):
            need = b * 2
            extra = [c for c in read_metadata(data)["train"]]
            extra = (extra * (need // len(extra) + 1))[:need]
            torch.cuda.empty_cache()
            r = time_training(model, processor, extra, args.duration, b, 1, device,
                              code_files=cache.fill(extra, progress=False))
            res["peak_gpu_mb_by_batch"][b] = r["peak_gpu_mb"]
    del model
    return res


def bf16_runs(device) -> bool:
    """Whether --bf16 really trains in bf16 here (precision.resolve: a GPU with bf16, a CPU with its
    instructions)."""
    from musicgen_lora.core.precision import resolve

    return resolve("bf16", device)[0] == "bf16"


def step_flop(model, processor, clips, window_s, batch_size, files) -> float:
    """Floating-point operations of one training step (forward + backward), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    from musicgen_lora.data.dataset import Collator, MusicDataset
    from musicgen_lora.model.checkpoint import model_info
    from musicgen_lora.model.loss import batch_loss

    info = model_info(model)
    ds = MusicDataset(clips, info["sample_rate"], window_s, train=True, seed=0, hop_length=info["hop_length"],
                      audio_channels=info["audio_channels"], code_files=files)
    batch = Collator(processor, int(window_s * info["sample_rate"]), info["hop_length"])(
        [ds[i] for i in range(batch_size)])
    with FlopCounterMode(display=False) as counter:
        loss, _ = batch_loss(model, batch, 0.1, torch.Generator().manual_seed(0))
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def matmul_peak_gflops(device, dtype, n: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of an n x n matmul in `dtype`, fastest of `repeats`: the machine's practical peak."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


# --------------------------------------------------------------------------------------------
# Peak RSS of the streaming dataset (child processes)
# --------------------------------------------------------------------------------------------
def rss_child(data: Path, metadata_file: str, model_dir: Path, cache_dir: Path):
    from musicgen_lora.audio.codes import build_delay_pattern_labels
    from musicgen_lora.core.common import peak_rss_mb, rss_mb
    from musicgen_lora.data.code_cache import CodeCache
    from musicgen_lora.data.dataset import Collator, MusicDataset
    from musicgen_lora.data.metadata import read_metadata
    from musicgen_lora.model.checkpoint import load_model_and_processor, model_info

    model, processor = load_model_and_processor(str(model_dir))
    info = model_info(model)
    base = rss_mb()
    clips = read_metadata(data, metadata_file)["train"]
    cache = CodeCache(cache_dir, model, info["sample_rate"])
    files = cache.fill(clips, progress=False)
    ds = MusicDataset(clips, info["sample_rate"], 0.2, train=True, hop_length=info["hop_length"],
                      audio_channels=info["audio_channels"], code_files=files)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True,
                                         collate_fn=Collator(processor, int(0.2 * info["sample_rate"]),
                                                             info["hop_length"]))
    tokens, data_peak = 0, rss_mb()
    for batch in loader:
        labels = build_delay_pattern_labels(batch["codes"], batch["num_frames"], info["audio_channels"])
        tokens += int((labels != -100).sum())
        data_peak = max(data_peak, rss_mb())
    peak = peak_rss_mb()
    print(json.dumps({"clips": len(clips), "base_mb": base, "data_peak_mb": data_peak, "peak_mb": peak,
                      "tokens": tokens, "encoded": cache.last_fill["encoded"]}))


def seed_rss_set(work: Path, model_dir: Path, count: int) -> Path:
    """count distinct 0.2 s clips and their cache entries (encoded in batches: one call per 500 clips,
    since one EnCodec call per clip would take minutes here and the child measures memory, not speed)."""
    from musicgen_lora.data.code_cache import CodeCache
    from musicgen_lora.model.checkpoint import load_model_and_processor, model_info
    from musicgen_lora.model.codec import encode_audio

    data = work / "rss-data"
    if (data / "metadata-10000.json").is_file():
        return data
    entries = synth_clips(data / "train", count, 0.2, seed=2, prefix="rss")
    write_metadata(data, entries, f"metadata-{count}.json")
    write_metadata(data, entries[:100], "metadata-100.json")
    model, _ = load_model_and_processor(str(model_dir))
    cache = CodeCache(work / "rss-cache", model, model_info(model)["sample_rate"])
    paths = [data / e["audio"] for e in entries]
    for i in range(0, len(paths), 500):
        chunk = paths[i:i + 500]
        wavs = torch.from_numpy(np.stack([sf.read(p, dtype="float32")[0] for p in chunk]))
        codes = encode_audio(model, wavs)
        for p, c in zip(chunk, codes):
            cache._write(cache.entry_path(cache.key(p)), c, wavs.shape[1], p)
    return data


# --------------------------------------------------------------------------------------------
# Cache-key lookup: hashing every file vs the file-hash memo
# --------------------------------------------------------------------------------------------
def bench_lookup(work: Path, model_dir: Path, count: int, seconds: float) -> dict:
    """Time of the cache keys of `count` clips on a run where all are cached: first with no memo (each
    file is read and hashed; the page cache is warm, so this is hashing's best case), then with it."""
    from musicgen_lora.data.code_cache import HASH_MEMO_NAME, CodeCache
    from musicgen_lora.model.checkpoint import load_model_and_processor, model_info

    folder = work / "lookup-data" / "train"
    if len(list(folder.glob("*.wav"))) != count:
        shutil.rmtree(folder, ignore_errors=True)
        synth_clips(folder, count, seconds, seed=3, prefix="look")
    paths = sorted(folder.glob("*.wav"))
    hour_ago = time.time() - 3600  # a dataset prepared earlier: past the memo's racy margin
    for path in paths:
        os.utime(path, (hour_ago, hour_ago))
    model, _ = load_model_and_processor(str(model_dir))
    cache_dir = work / "lookup-cache"
    (cache_dir / HASH_MEMO_NAME).unlink(missing_ok=True)
    timings, keys = [], []
    for _ in range(2):
        cache = CodeCache(cache_dir, model, model_info(model)["sample_rate"])
        start = time.perf_counter()
        keys.append([cache.key(path) for path in paths])
        timings.append(time.perf_counter() - start)
        cache.hashes.save()
    assert keys[0] == keys[1], "the memo changed a cache key"
    return {"files": count, "mb": sum(p.stat().st_size for p in paths) / 2**20, "hash_s": timings[0],
            "memo_s": timings[1]}


def bench_rss(work: Path, model_dir: Path, counts=(100, 10000)):
    data = seed_rss_set(work, model_dir, max(counts))
    out = {}
    for n in counts:
        proc = subprocess.run([sys.executable, __file__, "--_rss_child", str(data), f"metadata-{n}.json",
                               str(model_dir), str(work / "rss-cache")], capture_output=True, text=True, check=True)
        out[n] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["tiny", "small"], default="tiny",
                   help="tiny: the tiny model only; small: the tiny model and the musicgen-small architecture.")
    p.add_argument("--duration", type=float, default=15.0, help="Clip and window length in seconds.")
    p.add_argument("--steps", type=int, default=None, help="Timed steps per mode (default: 4 tiny, 2 small).")
    p.add_argument("--batch_size", type=int, default=None, help="Batch size (default: 2 tiny, 1 small).")
    p.add_argument("--rss_clips", type=int, default=10000, help="Size of the large set for the peak-RSS check.")
    p.add_argument("--lookup_clips", type=int, default=200,
                   help="Clips (of --duration) for the cache-key lookup timing, hashing vs memo.")
    p.add_argument("--melody", action="store_true",
                   help="Build MusicGen-Melody checkpoints (make_tiny_model.py --melody) instead of text-only ones.")
    p.add_argument("--work_dir", default=None, help="Keep models/data/caches here (default: a temp dir).")
    p.add_argument("--_rss_child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._rss_child:
        d, meta, model_dir, cache_dir = args._rss_child
        return rss_child(Path(d), meta, Path(model_dir), Path(cache_dir))

    from musicgen_lora.core.common import setup_logging

    setup_logging()
    tmp = None if args.work_dir else tempfile.TemporaryDirectory(prefix="bench-train-")
    work = Path(args.work_dir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {device} ({torch.get_num_threads()} CPU threads)"
          + ("" if device.type == "cuda" else "; no GPU visible: peak GPU memory at batch 1/2/4 skipped"), flush=True)
    sizes = ["tiny"] + (["small"] if args.size == "small" else [])
    results = [bench_model(s, work, args, device) for s in sizes]
    rss = bench_rss(work, build_model("tiny", work, args.melody), (100, args.rss_clips))
    lookup = bench_lookup(work, build_model("tiny", work, args.melody), args.lookup_clips, args.duration)

    print("\ntraining throughput (LoRA steps incl. data loading; random weights)")
    print(f"{'model':6} {'batch':>5} {'mode':9} {'samples/s':>10} {'tokens/s':>10} {'s/step':>8}")
    for r in results:
        for mode in ("uncached", "cached"):
            m = r[mode]
            print(f"{r['size']:6} {r['batch']:>5} {mode:9} {m['samples_per_s']:>10.3f} {m['tokens_per_s']:>10.1f} "
                  f"{m['seconds_per_step']:>8.2f}")
        print(f"{r['size']:6} cached/uncached = {r['ratio']:.2f}x  "
              f"(first-step loss differs by {r['first_loss_delta']:.2e})")
    peaks = {"fp32": matmul_peak_gflops(device, torch.float32)}
    if any("cached_bf16" in r for r in results):
        peaks["bf16"] = matmul_peak_gflops(device, torch.bfloat16)
    print("\nprecision (cached path; GFLOP/s = torch's count of one step's FLOPs / s per step; peak = a 2048 x 2048 "
          "matmul here: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()) + ")")
    for r in results:
        for mode, prec in (("cached", "fp32"), ("cached_bf16", "bf16")):
            if mode in r:
                rate = r["step_flop"] / r[mode]["seconds_per_step"] / 1e9
                print(f"{r['size']:6} {prec}: {r[mode]['seconds_per_step']:.2f} s/step, {r['step_flop'] / 1e12:.3f} "
                      f"TFLOP/step, {rate:.0f} GFLOP/s = {rate / peaks[prec]:.0%} of the {prec} matmul peak")
        if "cached_bf16" in r:
            print(f"{r['size']:6} bf16 / fp32 = {r['bf16_ratio']:.2f}x faster; first-step loss differs by "
                  f"{r['bf16_first_loss_delta']:.2e} ({r['bf16_first_loss_delta'] / r['cached']['first_loss']:.2%})")
        else:
            print(f"{r['size']:6} bf16 skipped: --bf16 runs fp32 on this {device.type} (no bf16 instructions)")
    print("\npre-tokenisation (CodeCache.fill, one EnCodec call per clip)")
    for r in results:
        print(f"{r['size']:6} {r['pretokenize_files_per_s']:.2f} files/s of {args.duration:g} s "
              f"({r['pretokenize_audio_s_per_s']:.1f} s of audio per s)")
    lk = lookup
    print(f"\ncache keys of {lk['files']} cached {args.duration:g} s clips ({lk['mb']:.0f} MiB of WAV): hashing every "
          f"file {lk['hash_s']:.3f} s ({lk['files'] / lk['hash_s']:.0f} files/s, page cache warm), file-hash memo "
          f"{lk['memo_s']:.3f} s ({lk['files'] / lk['memo_s']:.0f} files/s) -> {lk['hash_s'] / lk['memo_s']:.1f}x")
    for r in results:
        if "peak_gpu_mb_by_batch" in r:
            print(f"{r['size']:6} peak GPU memory by batch: " +
                  ", ".join(f"{b}: {mb:.0f} MiB" for b, mb in r["peak_gpu_mb_by_batch"].items()))
    small, large = rss[100], rss[args.rss_clips]
    print("\npeak RSS: read metadata, look every clip up in the cache, one epoch of batches (a subprocess each;"
          " 0.2 s clips, batch 16)")
    for n, r in rss.items():
        print(f"{n:>6} clips: process peak {r['peak_mb']:.0f} MiB; RSS after model load {r['base_mb']:.0f} MiB -> "
              f"highest during the data pass {r['data_peak_mb']:.0f} MiB (+{r['data_peak_mb'] - r['base_mb']:.1f}); "
              f"{r['tokens']} label tokens, {r['encoded']} encoded")
    print(f"ratio {args.rss_clips} / 100 clips: {large['peak_mb'] / small['peak_mb']:.3f}x process peak, "
          f"{large['data_peak_mb'] / small['data_peak_mb']:.3f}x data-pass peak "
          f"(+{large['data_peak_mb'] - small['data_peak_mb']:.1f} MiB for {args.rss_clips - 100} more clips)")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
