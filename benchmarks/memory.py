#!/usr/bin/env python
"""Peak memory of a LoRA training step with and without --gradient_checkpointing, next to the
memory plan train_lora.py prints (musicgen_lora/training/memory.py) and the error of that estimate.

Each configuration runs in a fresh process (so one cannot inherit another's peak): load the model,
attach LoRA as train_lora.py does, one warm-up step, then measure two training steps (EnCodec
encode, teacher-forced forward, backward, AdamW step) -- the trainer's own functions.

    python -m benchmarks.memory --sizes tiny small --duration 2
    python -m benchmarks.memory --sizes tiny small --duration 2 --stereo   # + stereo layouts
    python -m benchmarks.memory --sizes tiny small --duration 2 --melody   # + MusicGen-Melody
    python -m benchmarks.memory --sizes small --adapter_types lora rslora dora loha lokr --checkpointing off
                                                                           # step time and memory per type

Peak memory is CUDA max_memory_allocated on a GPU and peak RSS (VmHWM, reset after loading) on a
CPU, where the workers run with MALLOC_MMAP_THRESHOLD_=128 KiB so that a freed tensor leaves the RSS
as it leaves max_memory_allocated (glibc's default raises that threshold as blocks are freed and
keeps them resident: --glibc_heap measures that way). "step" is the peak above what the process
held before the measured steps (mostly activations); the ratio compares checkpointing on / off.
Models are random-weight MusicGens built offline by make_tiny_model.py (--size small has
musicgen-small's real architecture; with --melody, its decoder without cross-attention behind
MusicGen-Melody's 235-frame chroma + text prefix, trained here on the null melody, which is as long).

"plan" is the memory plan for the same model and settings (uncached: the step encodes its clips of
--duration seconds, as train_lora.py --no_cache does), with the batch's real text length: on a CPU its
total (the framework allowance included) against the peak RSS, on a GPU its total less the
allowance (the CUDA context is outside torch's allocator) against max_memory_allocated; "plan step"
(activations + weight copies + the larger of logits and one layer's backward, or EnCodec's encode when
larger) against the measured step.
ratio = plan / measured, error = (plan - measured) / measured.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.paths import SCRIPTS
from musicgen_lora.model.targets import ADAPTER_TYPES


def worker(args):
    """One configuration; prints one JSON line."""
    import numpy as np
    import torch

    from musicgen_lora.core.common import peak_rss_mb, rss_mb
    from musicgen_lora.data.dataset import Collator
    from musicgen_lora.model.checkpoint import load_model_and_processor, model_info
    from musicgen_lora.model.lora import apply_lora
    from musicgen_lora.model.loss import batch_loss
    from musicgen_lora.training.config import TrainConfig
    from musicgen_lora.training.memory import plan_memory
    from musicgen_lora.training.runtime import enable_gradient_checkpointing

    torch.manual_seed(0)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto"
                                                                                 else args.device)
    # loaded as train_lora.py loads it: the decoder's own dropout at training's default
    model, processor = load_model_and_processor(args.model_path, device=device,
                                                decoder_dropout=TrainConfig.decoder_dropout)
    model = apply_lora(model, 12, 24, 0.05, adapter_type=args.adapter_type)
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    info = model_info(model)
    n = int(args.duration * info["sample_rate"])
    rng = np.random.default_rng(0)
    channels = info.get("audio_channels", 1)
    items = [{"audio": (0.1 * rng.standard_normal((channels, n))).astype(np.float32), "num_samples": n,
              "description": "calm piano with soft strings", "index": i} for i in range(args.batch_size)]
    batch = Collator(processor, n, info["hop_length"])(items)
    batch = {k: v.to(device) for k, v in batch.items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    half = args.precision != "fp32" and device == "cuda"  # as accelerate: mixed precision on a GPU only
    precision = args.precision if half else "fp32"
    plan = plan_memory(model, precision=precision, batch_size=args.batch_size, window_seconds=args.duration,
                       gradient_checkpointing=args.gradient_checkpointing, lora_rank=12, lora_dropout=0.05,
                       adapter_type=args.adapter_type,
                       cached=False, codec_seconds=args.duration,  # each step encodes its clips, as --no_cache
                       text_tokens=int(batch["input_ids"].shape[1]), device=device)
    autocast = torch.autocast("cuda", dtype=getattr(torch, {"fp16": "float16", "bf16": "bfloat16"}.get(
        precision, "float32")), enabled=half)

    def step():
        with autocast:
            loss, _ = batch_loss(model, batch, 0.1, torch.Generator().manual_seed(0))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up: optimizer state and allocator caches exist before measuring
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        # glibc keeps freed blocks resident, so the warm-up's activations would still count in RSS:
        # hand them back first, then reset VmHWM to the RSS of what is really live.
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        before = rss_mb() * 2**20
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = peak_rss_mb() * 2**20
    plan_peak = plan.total - (plan.overhead if device == "cuda" else 0)  # the CUDA context is not in the allocator
    print(json.dumps({"peak_mb": peak / 2**20, "step_mb": (peak - before) / 2**20, "held_mb": before / 2**20,
                      "seconds_per_step": (time.perf_counter() - t) / args.steps, "device": device,
                      "precision": precision, "plan_mb": plan_peak / 2**20, "plan_step_mb": plan.step / 2**20,
                      "text_tokens": int(batch["input_ids"].shape[1]),
                      "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                      "plan": plan.describe()}))


def _error(plan: float, measured: float) -> str:
    return f"{plan / measured:6.2f} {100 * (plan - measured) / measured:+6.1f}%"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=["tiny", "small"],
                   help="Model sizes to measure (built offline with make_tiny_model.py).")
    p.add_argument("--duration", type=float, default=2.0, help="Seconds of audio per clip.")
    p.add_argument("--batch_size", type=int, default=2, help="Clips per step.")
    p.add_argument("--steps", type=int, default=2, help="Measured training steps per configuration.")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda.")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="Mixed precision of the step (autocast, as train_lora.py --fp16/--bf16; a GPU only).")
    p.add_argument("--stereo", action="store_true",
                   help="Also measure each size's stereo layout (8 codebooks; make_tiny_model.py --stereo).")
    p.add_argument("--melody", action="store_true",
                   help="Also measure each size's MusicGen-Melody layout (make_tiny_model.py --melody; with --stereo, "
                        "stereo-melody too).")
    p.add_argument("--glibc_heap", action="store_true",
                   help="On a CPU, measure with glibc's default heap, which keeps freed blocks resident (the RSS "
                        "peak then overstates the live tensors; by 1.8x for small's step).")
    p.add_argument("--adapter_types", nargs="+", default=["lora"], choices=ADAPTER_TYPES,
                   help="train_lora.py --adapter_type values to measure, each in its own process.")
    p.add_argument("--checkpointing", default="both", choices=["both", "off", "on"],
                   help="Measure with gradient checkpointing off, on, or both (and their ratio).")
    p.add_argument("--work_dir", default=None, help="Where the built models are kept (default: a temp dir).")
    p.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model_path", default=None, help=argparse.SUPPRESS)
    p.add_argument("--gradient_checkpointing", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--adapter_type", default="lora", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._worker:
        return worker(args)

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-mem-"))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    if not args.glibc_heap:  # every large block mmapped and unmapped when freed: RSS follows the live tensors
        env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    print(f"batch {args.batch_size} x {args.duration:g} s, {args.steps} measured steps, rank 12 on the decoder, "
          f"{args.precision}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start")
    print(f"{'model':19} {'type':6} {'checkpointing':13} {'peak MB':>9} {'plan MB':>9} {'ratio':>6} {'error':>7} "
          f"{'step MB':>9} {'plan step':>9} {'ratio':>6} {'error':>7} {'s/step':>7}")
    layouts = ["mono"] + (["stereo"] if args.stereo else [])
    layouts += [f"{lay}-melody".replace("mono-", "") for lay in layouts] if args.melody else []
    for size, layout in [(s, lay) for s in args.sizes for lay in layouts]:
        name = f"{size} {layout}"
        model = work / f"musicgen-{size}" if layout == "mono" else work / f"musicgen-{size}-{layout}"
        if not (model / "config.json").is_file():
            subprocess.run([sys.executable, str(SCRIPTS / "make_tiny_model.py"), "--output_dir", str(model),
                            "--size", size] + (["--stereo"] if "stereo" in layout else [])
                           + (["--melody"] if "melody" in layout else []),
                           check=True, env=env, capture_output=True)
        passes = {"both": (False, True), "off": (False,), "on": (True,)}[args.checkpointing]
        for kind in args.adapter_types:
            res = {}
            for gc in passes:
                cmd = [sys.executable, __file__, "--_worker", "--model_path", str(model), "--duration",
                       str(args.duration), "--batch_size", str(args.batch_size), "--steps", str(args.steps),
                       "--device", args.device, "--precision", args.precision, "--adapter_type", kind]
                cmd += ["--gradient_checkpointing"] if gc else []
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if proc.returncode != 0:  # one layout failing (say, stereo training not there yet) keeps the others
                    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                    print(f"{name:19} {kind:6} {'on' if gc else 'off':13} failed: {last}")
                    continue
                res[gc] = r = json.loads(proc.stdout.strip().splitlines()[-1])
                print(f"{name:19} {kind:6} {'on' if gc else 'off':13} {r['peak_mb']:9.1f} {r['plan_mb']:9.1f} "
                      f"{_error(r['plan_mb'], r['peak_mb'])} {r['step_mb']:9.1f} {r['plan_step_mb']:9.1f} "
                      f"{_error(r['plan_step_mb'], max(r['step_mb'], 1e-9))} {r['seconds_per_step']:7.2f}   "
                      f"({r['device']}, {r['precision']}, {r['trainable']:,} trainable)")
            if len(res) == 2:
                off, on = res[False], res[True]
                print(f"{name:19} {kind:6} on/off ratio: peak {on['peak_mb'] / off['peak_mb']:.3f}, step memory "
                      f"{on['step_mb'] / max(off['step_mb'], 1e-9):.3f}, "
                      f"time {on['seconds_per_step'] / off['seconds_per_step']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
