#!/usr/bin/env python
"""Training throughput fed from the code store vs from audio encoded at every step, pre-tokenisation
speed (store_update.fill_store), peak RSS of the streaming dataset at 100 vs 10,000 clips, and the
time to find the store rows of cached clips by hashing every file vs from the file-hash memo -- all
measured in one run, printed with ratios.

    python -m benchmarks.train                 # tiny model only (~1 min on 2 cores)
    python -m benchmarks.train --size small    # + musicgen-small architecture at 15 s
    python -m benchmarks.train --melody        # the same on MusicGen-Melody checkpoints
    python -m benchmarks.train --quick         # tiny model, 1 s clips, small sets: proves the script runs

Models are built offline with make_tiny_model.py (random weights: speed and memory are those of the
real architecture, losses are not meaningful). Training steps are real LoRA steps (forward, backward,
AdamW) through model.loss.batch_loss, from the same DataLoader/Collator the trainer uses; the first
step of each mode is a warm-up and not timed. "store": clips filled into the code store by
fill_store (as training/trainer.make_loaders does), each item a window read from it; "audio": the
dataset without a store, each item the audio pieces under its window, which model/loss.py encodes in
the step (what check_dataset.py, check_model.py and evaluate.py's held-out loss do). Peak RSS is
measured in fresh subprocesses that read the metadata, find every clip in the store (fill_store:
its file-hash memo, nothing encoded) and run one epoch of batches.
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

from benchmarks.paths import ROOT, SCRIPTS, child_env

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
def time_training(model, processor, clips, window_s, batch_size, steps, device, store=None, chroma_rows=None,
                  autocast=None):
    """LoRA steps on `clips`: from the store when given (clips with store_index, fill_store), else from
    audio (each step encodes the pieces under its windows: model.loss.codes_for_batch)."""
    from musicgen_lora.data.dataset import Collator, MusicDataset
    from musicgen_lora.model.checkpoint import model_info
    from musicgen_lora.model.loss import batch_loss

    info = model_info(model)
    melody = info["chroma_length"] is not None
    ds = MusicDataset(clips, info["sample_rate"], window_s, train=True, seed=0, hop_length=info["hop_length"],
                      audio_channels=info["audio_channels"], store=store, chroma=melody,
                      chroma_rows=chroma_rows if store is not None else None)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False,
                                         collate_fn=Collator(processor, int(window_s * info["sample_rate"]),
                                                             info["hop_length"], info["chroma_length"]))
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
        batch = next(it)  # data loading (read audio, or a window of codes from the store) is part of the step
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


def fill(store_dir: Path, model, clips, device=None, batch_size=None):
    """store_update.fill_store for one list of clips, as make_loaders runs it: (store, clips with
    store_index, chroma rows or None, statistics)."""
    from musicgen_lora.data.store_update import fill_store
    from musicgen_lora.model.checkpoint import model_info

    melody = model_info(model)["chroma_length"] is not None
    store, out, chroma_rows, stats = fill_store(store_dir, model, {"train": clips}, melody, progress=False,
                                                batch_size=batch_size, device=device)
    return store, out["train"], chroma_rows["train"], stats


def bench_model(size, work, args, device):
    from musicgen_lora.data.metadata import read_metadata
    from musicgen_lora.model.checkpoint import load_model_and_processor
    from musicgen_lora.model.encoding import default_batch_size
    from musicgen_lora.model.lora import apply_lora

    steps = args.steps or (2 if size == "small" else 4)
    batch = args.batch_size or (1 if size == "small" else 2)
    t0 = time.time()
    model_dir = build_model(size, work, args.melody)
    data = work / f"data-{size}"
    n_clips = batch * (steps + 1)
    meta = data / "metadata.json"
    if not meta.is_file() or len(json.loads(meta.read_text())["train"]) != n_clips \
            or json.loads(meta.read_text())["train"][0]["duration"] != args.duration:
        shutil.rmtree(data, ignore_errors=True)
        write_metadata(data, synth_clips(data / "train", n_clips, args.duration, seed=1))
    clips = read_metadata(data)["train"]
    model, processor = load_model_and_processor(str(model_dir), device=str(device))
    model = apply_lora(model, 12, 24, 0.05)
    print(f"[{size}] model {model_dir.name} ready in {time.time() - t0:.0f} s; {n_clips} clips of "
          f"{args.duration:g} s, batch {batch}, {steps} timed steps (+1 warm-up) per mode", flush=True)

    store_dir = work / f"store-{size}"
    shutil.rmtree(store_dir, ignore_errors=True)  # pre-tokenisation is timed from an empty store
    store, stored, chroma_rows, stats = fill(store_dir, model, clips, device)
    res = {"pretokenize_files_per_s": stats["files_per_s"], "pretokenize_audio_s_per_s":
           stats["files_per_s"] * args.duration, "encoded": stats["encoded"],
           "encode_batch": default_batch_size(model)}
    print(f"[{size}] fill_store: {stats['files']} clips into an empty store at {stats['files_per_s']:.2f} files/s; "
          f"timing steps", flush=True)
    res["audio"] = time_training(model, processor, clips, args.duration, batch, steps, device)
    res["store"] = time_training(model, processor, stored, args.duration, batch, steps, device, store, chroma_rows)
    # Same data, same seeds, same LoRA weights at step 0: the first losses agree across modes.
    res["first_loss_delta"] = abs(res["store"]["first_loss"] - res["audio"]["first_loss"])
    res["ratio"] = res["store"]["samples_per_s"] / res["audio"]["samples_per_s"]
    if bf16_runs(device):  # the precision --bf16 trains in, on the store path
        res["store_bf16"] = time_training(model, processor, stored, args.duration, batch, steps, device, store,
                                          chroma_rows, autocast=torch.bfloat16)
        res["bf16_first_loss_delta"] = abs(res["store_bf16"]["first_loss"] - res["store"]["first_loss"])
        res["bf16_ratio"] = res["store"]["seconds_per_step"] / res["store_bf16"]["seconds_per_step"]
    res["step_flop"] = step_flop(model, processor, stored, args.duration, batch, store, chroma_rows)
    res.update(size=size, batch=batch, steps=steps, device=str(device))
    if device.type == "cuda":
        res["peak_gpu_mb_by_batch"] = {}
        for b in (1, 2, 4):
            need = b * 2
            extra = (clips * (need // len(clips) + 1))[:need]
            torch.cuda.empty_cache()
            st, extra, rows, _ = fill(store_dir, model, extra, device)  # all in the store already
            r = time_training(model, processor, extra, args.duration, b, 1, device, st, rows)
            res["peak_gpu_mb_by_batch"][b] = r["peak_gpu_mb"]
    del model
    return res


def bf16_runs(device) -> bool:
    """Whether --bf16 really trains in bf16 here (precision.resolve: a GPU with bf16, a CPU with its
    instructions)."""
    from musicgen_lora.core.precision import resolve

    return resolve("bf16", device)[0] == "bf16"


def step_flop(model, processor, clips, window_s, batch_size, store, chroma_rows) -> float:
    """Floating-point operations of one training step (forward + backward), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    from musicgen_lora.data.dataset import Collator, MusicDataset
    from musicgen_lora.model.checkpoint import model_info
    from musicgen_lora.model.loss import batch_loss

    info = model_info(model)
    ds = MusicDataset(clips, info["sample_rate"], window_s, train=True, seed=0, hop_length=info["hop_length"],
                      audio_channels=info["audio_channels"], store=store, chroma=info["chroma_length"] is not None,
                      chroma_rows=chroma_rows)
    batch = Collator(processor, int(window_s * info["sample_rate"]), info["hop_length"], info["chroma_length"])(
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
def rss_child(data: Path, metadata_file: str, model_dir: Path, store_dir: Path):
    from musicgen_lora.audio.codes import build_delay_pattern_labels
    from musicgen_lora.core.common import peak_rss_mb, rss_mb
    from musicgen_lora.data.dataset import Collator, MusicDataset
    from musicgen_lora.data.metadata import read_metadata
    from musicgen_lora.model.checkpoint import load_model_and_processor, model_info

    model, processor = load_model_and_processor(str(model_dir))
    info = model_info(model)
    base = rss_mb()
    clips = read_metadata(data, metadata_file)["train"]
    store, clips, chroma_rows, stats = fill(store_dir, model, clips)  # every clip found by content
    ds = MusicDataset(clips, info["sample_rate"], 0.2, train=True, hop_length=info["hop_length"],
                      audio_channels=info["audio_channels"], store=store, chroma=info["chroma_length"] is not None,
                      chroma_rows=chroma_rows)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True,
                                         collate_fn=Collator(processor, int(0.2 * info["sample_rate"]),
                                                             info["hop_length"], info["chroma_length"]))
    tokens, data_peak = 0, rss_mb()
    for batch in loader:
        labels = build_delay_pattern_labels(batch["codes"], batch["num_frames"], info["audio_channels"])
        tokens += int((labels != -100).sum())
        data_peak = max(data_peak, rss_mb())
    peak = peak_rss_mb()
    print(json.dumps({"clips": len(clips), "base_mb": base, "data_peak_mb": data_peak, "peak_mb": peak,
                      "tokens": tokens, "encoded": stats["encoded"], "hashed": stats["hashed"],
                      "store_clips": len(store)}))


def seed_rss_set(work: Path, model_dir: Path, count: int) -> Path:
    """count distinct 0.2 s clips and their rows in the store (fill_store with 500 pieces per codec
    call at most -- each 0.2 s clip is one piece --, since one EnCodec call per clip would take minutes
    here and the children measure memory, not speed)."""
    from musicgen_lora.data.metadata import read_metadata
    from musicgen_lora.model.checkpoint import load_model_and_processor

    data = work / "rss-data"
    if not (data / f"metadata-{count}.json").is_file():
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(work / "rss-store", ignore_errors=True)
        entries = synth_clips(data / "train", count, 0.2, seed=2, prefix="rss")
        write_metadata(data, entries, f"metadata-{count}.json")
        write_metadata(data, entries[:100], "metadata-100.json")
    hour_ago = time.time() - 3600  # past the memo's racy margin: the children find every hash in the memo
    for path in (data / "train").glob("*.wav"):
        os.utime(path, (hour_ago, hour_ago))
    model, _ = load_model_and_processor(str(model_dir))
    fill(work / "rss-store", model, read_metadata(data, f"metadata-{count}.json")["train"], batch_size=500)
    return data


# --------------------------------------------------------------------------------------------
# Finding cached clips in the store: hashing every file vs the file-hash memo
# --------------------------------------------------------------------------------------------
def bench_lookup(work: Path, model_dir: Path, count: int, seconds: float) -> dict:
    """fill_store on `count` clips that are all in the store already: first with no file-hash memo
    (each file is read and hashed; the page cache is warm, so this is hashing's best case), then with
    it. Both the whole fill_store call (what a training run pays before its first step: hashing or
    the memo, opening the store with its checksums, finding the rows) and the content keys alone
    (FileHashMemo.sha256 of every file) are timed."""
    from musicgen_lora.data.code_cache import HASH_MEMO_NAME, FileHashMemo
    from musicgen_lora.data.metadata import Clip
    from musicgen_lora.model.checkpoint import load_model_and_processor

    folder = work / "lookup-data" / "train"
    paths = sorted(folder.glob("*.wav"))
    if len(paths) != count or sf.info(paths[0]).duration != seconds:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(work / "lookup-store", ignore_errors=True)
        synth_clips(folder, count, seconds, seed=3, prefix="look")
        paths = sorted(folder.glob("*.wav"))
    hour_ago = time.time() - 3600  # a dataset prepared earlier: past the memo's racy margin
    for path in paths:
        os.utime(path, (hour_ago, hour_ago))
    model, _ = load_model_and_processor(str(model_dir))
    store_dir = work / "lookup-store"
    clips = [Clip(path, "synthetic chord", "train") for path in paths]
    _, _, _, first = fill(store_dir, model, clips)  # every clip into the store (not timed)
    out = {"files": count, "mb": sum(p.stat().st_size for p in paths) / 2**20}
    for memo_kept in (False, True):
        name = "memo" if memo_kept else "hash"
        if not memo_kept:
            (store_dir / HASH_MEMO_NAME).unlink(missing_ok=True)
        memo = FileHashMemo(store_dir / HASH_MEMO_NAME)
        start = time.perf_counter()
        keys = [memo.sha256(path) for path in paths]
        out[f"{name}_keys_s"] = time.perf_counter() - start
        out.setdefault("keys", []).append(keys)
        if not memo_kept:
            (store_dir / HASH_MEMO_NAME).unlink(missing_ok=True)  # fill_store hashes every file again
        start = time.perf_counter()
        _, stored, _, stats = fill(store_dir, model, clips)
        out[f"{name}_fill_s"] = time.perf_counter() - start
        out[f"{name}_hashed"], out[f"{name}_encoded"] = stats["hashed"], stats["encoded"]
        out.setdefault("rows", []).append([c.store_index for c in stored])
    assert out["keys"][0] == out["keys"][1] and out["rows"][0] == out["rows"][1], "the memo changed a content key"
    assert out["hash_hashed"] == count and out["memo_hashed"] == 0 and not out["hash_encoded"] + out["memo_encoded"], \
        (out["hash_hashed"], out["memo_hashed"], out["hash_encoded"], out["memo_encoded"])
    del out["keys"], out["rows"]
    return out


def bench_rss(work: Path, model_dir: Path, counts=(100, 10000)):
    data = seed_rss_set(work, model_dir, max(counts))
    out = {}
    for n in counts:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.train", "--_rss_child", str(data),
                               f"metadata-{n}.json", str(model_dir), str(work / "rss-store")],
                              capture_output=True, text=True, cwd=ROOT, env=child_env())
        if proc.returncode != 0:
            raise RuntimeError(f"the peak-RSS child at {n} clips failed:\n{proc.stderr[-3000:]}")
        out[n] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["tiny", "small"], default="tiny",
                   help="tiny: the tiny model only; small: the tiny model and the musicgen-small architecture.")
    p.add_argument("--quick", action="store_true",
                   help="Prove the script runs: tiny model, 1 s clips, 2 timed steps, 300 clips for the peak-RSS "
                        "check, 20 for the lookup (figures are not meaningful; flags given explicitly win).")
    p.add_argument("--duration", type=float, default=None, help="Clip and window length in seconds (default 15).")
    p.add_argument("--steps", type=int, default=None, help="Timed steps per mode (default: 4 tiny, 2 small).")
    p.add_argument("--batch_size", type=int, default=None, help="Batch size (default: 2 tiny, 1 small).")
    p.add_argument("--rss_clips", type=int, default=None,
                   help="Size of the large set for the peak-RSS check (default 10000; more than 100).")
    p.add_argument("--lookup_clips", type=int, default=None,
                   help="Clips (of --duration) for the lookup timing, hashing vs memo (default 200).")
    p.add_argument("--melody", action="store_true",
                   help="Build MusicGen-Melody checkpoints (make_tiny_model.py --melody) instead of text-only ones.")
    p.add_argument("--work_dir", default=None, help="Keep models/data/stores here (default: a temp dir).")
    p.add_argument("--_rss_child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._rss_child:
        d, meta, model_dir, store_dir = args._rss_child
        return rss_child(Path(d), meta, Path(model_dir), Path(store_dir))
    if args.quick and args.size != "tiny":
        p.error("--quick runs the tiny model only")
    quick = {"duration": 1.0, "steps": 2, "rss_clips": 300, "lookup_clips": 20}
    full = {"duration": 15.0, "steps": None, "rss_clips": 10000, "lookup_clips": 200}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.rss_clips <= 100:
        p.error("--rss_clips must be more than 100 (it is compared with 100 clips)")

    from musicgen_lora.core.common import setup_logging

    setup_logging()
    tmp = None if args.work_dir else tempfile.TemporaryDirectory(prefix="bench-train-")
    work = Path(args.work_dir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        report(args, work)
    finally:
        if tmp:
            tmp.cleanup()


def report(args, work: Path):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {device} ({torch.get_num_threads()} CPU threads)"
          + (" --quick: tiny sizes, figures only prove the script runs" if args.quick else "")
          + ("" if device.type == "cuda" else "; no GPU visible: peak GPU memory at batch 1/2/4 skipped"), flush=True)
    sizes = ["tiny"] + (["small"] if args.size == "small" else [])
    results = [bench_model(s, work, args, device) for s in sizes]
    rss = bench_rss(work, build_model("tiny", work, args.melody), (100, args.rss_clips))
    lookup = bench_lookup(work, build_model("tiny", work, args.melody), args.lookup_clips, args.duration)

    print("\ntraining throughput (LoRA steps incl. data loading; random weights; audio = the pieces under each "
          "window encoded in the step, store = windows of codes read from the code store)")
    print(f"{'model':6} {'batch':>5} {'mode':9} {'samples/s':>10} {'tokens/s':>10} {'s/step':>8}")
    for r in results:
        for mode in ("audio", "store"):
            m = r[mode]
            print(f"{r['size']:6} {r['batch']:>5} {mode:9} {m['samples_per_s']:>10.3f} {m['tokens_per_s']:>10.1f} "
                  f"{m['seconds_per_step']:>8.2f}")
        print(f"{r['size']:6} store/audio = {r['ratio']:.2f}x  "
              f"(first-step loss differs by {r['first_loss_delta']:.2e})")
    peaks = {"fp32": matmul_peak_gflops(device, torch.float32)}
    if any("store_bf16" in r for r in results):
        peaks["bf16"] = matmul_peak_gflops(device, torch.bfloat16)
    print("\nprecision (store path; GFLOP/s = torch's count of one step's FLOPs / s per step; peak = a 2048 x 2048 "
          "matmul here: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()) + ")")
    for r in results:
        for mode, prec in (("store", "fp32"), ("store_bf16", "bf16")):
            if mode in r:
                rate = r["step_flop"] / r[mode]["seconds_per_step"] / 1e9
                print(f"{r['size']:6} {prec}: {r[mode]['seconds_per_step']:.2f} s/step, {r['step_flop'] / 1e12:.3f} "
                      f"TFLOP/step, {rate:.0f} GFLOP/s = {rate / peaks[prec]:.0%} of the {prec} matmul peak")
        if "store_bf16" in r:
            print(f"{r['size']:6} bf16 / fp32 = {r['bf16_ratio']:.2f}x faster; first-step loss differs by "
                  f"{r['bf16_first_loss_delta']:.2e} ({r['bf16_first_loss_delta'] / r['store']['first_loss']:.2%})")
        else:
            print(f"{r['size']:6} bf16 skipped: --bf16 runs fp32 on this {device.type} (no bf16 instructions)")
    print("\npre-tokenisation (store_update.fill_store into an empty store: hash, encode with encode_batched, "
          "commit bucket units)")
    for r in results:
        print(f"{r['size']:6} {r['pretokenize_files_per_s']:.2f} files/s of {args.duration:g} s "
              f"({r['pretokenize_audio_s_per_s']:.1f} s of audio per s; {r['encoded']} encoded, "
              f"{r['encode_batch']} piece(s) per codec call)")
    lk = lookup
    n = lk["files"]
    print(f"\nfinding {n} cached {args.duration:g} s clips in the store ({lk['mb']:.0f} MiB of WAV; page cache warm): "
          f"content keys by hashing every file {lk['hash_keys_s']:.3f} s ({n / lk['hash_keys_s']:.0f} files/s) vs "
          f"the file-hash memo {lk['memo_keys_s']:.3f} s ({n / lk['memo_keys_s']:.0f} files/s) -> "
          f"{lk['hash_keys_s'] / lk['memo_keys_s']:.1f}x; the whole fill_store (nothing encoded) "
          f"{lk['hash_fill_s']:.3f} vs {lk['memo_fill_s']:.3f} s -> {lk['hash_fill_s'] / lk['memo_fill_s']:.1f}x")
    for r in results:
        if "peak_gpu_mb_by_batch" in r:
            print(f"{r['size']:6} peak GPU memory by batch: " +
                  ", ".join(f"{b}: {mb:.0f} MiB" for b, mb in r["peak_gpu_mb_by_batch"].items()))
    small, large = rss[100], rss[args.rss_clips]
    print(f"\npeak RSS: read metadata, find every clip in the store (fill_store, file-hash memo; the store holds "
          f"{large['store_clips']} clips for both), one epoch of batches (a subprocess each; 0.2 s clips, batch 16)")
    for count, r in rss.items():
        print(f"{count:>6} clips: process peak {r['peak_mb']:.0f} MiB; RSS after model load {r['base_mb']:.0f} MiB "
              f"-> highest during the data pass {r['data_peak_mb']:.0f} MiB "
              f"(+{r['data_peak_mb'] - r['base_mb']:.1f}); {r['tokens']} label tokens, {r['encoded']} encoded, "
              f"{r['hashed']} hashed")
    print(f"ratio {args.rss_clips} / 100 clips: {large['peak_mb'] / small['peak_mb']:.3f}x process peak, "
          f"{large['data_peak_mb'] / small['data_peak_mb']:.3f}x data-pass peak "
          f"(+{large['data_peak_mb'] - small['data_peak_mb']:.1f} MiB for {args.rss_clips - 100} more clips)")


if __name__ == "__main__":
    sys.exit(main())
