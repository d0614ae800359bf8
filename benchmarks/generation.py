#!/usr/bin/env python
"""Benchmark: 8 prompts generated in one batch vs one at a time, measured in one run.

    python -m benchmarks.generation                    # tiny offline model (seconds)
    python -m benchmarks.generation --size small       # musicgen-small architecture
    python -m benchmarks.generation --melody           # a MusicGen-Melody one, with a melody
    python -m benchmarks.generation --model_path /path/to/musicgen-small --device cuda

Prints the wall time of each way, the ratio, and the real-time factor (seconds of compute per
second of audio). Builds the random-weight model offline when no --model_path is given (--melody: a
MusicGen-Melody one). A MusicGen-Melody model generates with a melody: every prompt conditioned on
the chroma of a synthetic note sequence (its decoder's prefix is 235 chroma frames with or without
one, so the null melody costs the same). On a GPU, also add --duration 15 to measure the user's
setting (batch 1 vs 8 at 15 s).

    python -m benchmarks.generation --long 3 --window_seconds 4

instead times music longer than one window: one window's clip against a clip of about 3 windows'
length (windowed continuation, 40% overlap unless --window_overlap), batched, and prints the
real-time factor of each and their ratio (every window after the first re-reads its overlap, in one
parallel prefill pass).
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

from musicgen_lora.generation.sampling import GenerationSettings, SamplingSettings


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["tiny", "small"], default="tiny",
                   help="Random-weight model built offline when --model_path is not given.")
    p.add_argument("--model_path", default=None, help="An existing MusicGen folder instead of a built one.")
    p.add_argument("--melody", action="store_true",
                   help="Build a MusicGen-Melody model (make_tiny_model.py --melody) when --model_path is not given.")
    p.add_argument("--duration", type=float, default=None,
                   help="Seconds per clip (default: 5 for tiny, 2 for small on CPU, 15 on GPU).")
    p.add_argument("--num_prompts", type=int, default=8, help="Prompts per measurement.")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda.")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default).")
    p.add_argument("--repeats", type=int, default=1, help="Repeat each measurement and keep the fastest.")
    p.add_argument("--long", type=float, default=None, metavar="N",
                   help="Time a clip of N windows' length against one window (see above).")
    p.add_argument("--window_seconds", type=float, default=None, help="Window for --long (default: the model's).")
    p.add_argument("--window_overlap", type=float, default=None,
                   help="Overlap for --long (default 40%% of the window).")
    p.add_argument("--paths", action="store_true",
                   help="Instead: one prompt (batch 1) through each generation path, with a LoRA adapter (rank 12, "
                        "B not zero): plain transformers generate() on the PEFT model, the project's path with the "
                        "adapter unmerged, merged in fp32, merged in bf16, interleaved --repeats times; the "
                        "ratios, and GB/s of decoder weights read against this machine's measured copy bandwidth.")
    p.add_argument("--compile", action="store_true",
                   help="With --paths: also time a static KV cache, and torch.compile of the decoder on it, "
                        "on the plain path (compiling takes minutes on a CPU).")
    args = p.parse_args(argv)

    import torch

    from musicgen_lora.core.common import resolve_device, setup_logging
    from musicgen_lora.generation.generate import generate_audio
    from musicgen_lora.model.checkpoint import is_melody, load_model_and_processor, model_info

    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model_path
        if path is None:
            from musicgen_lora.model.offline import build

            path = str(build(Path(tmp) / f"{args.size}-musicgen", args.size, seed=0, melody=args.melody))
        model, processor = load_model_and_processor(path, device=device)
        chroma = None
        if is_melody(model):  # one tune for every prompt: the melody-conditioned path users run
            from musicgen_lora.audio.chroma import chroma_features
            from musicgen_lora.evaluation.signals import note_sequence

            sr = model_info(model)["sample_rate"]
            chroma = [chroma_features(note_sequence(sr=sr), sr)[0]] * args.num_prompts
        duration = args.duration or (15.0 if device.startswith("cuda") else (5.0 if args.size == "tiny" else 2.0))
        words = ["trap 808 beat", "lofi piano", "boom bap drums", "uk drill", "jazzy hip hop", "g-funk synth",
                 "memphis phonk", "melodic trap guitar"]
        prompts = [words[i % len(words)] + f" {i}" for i in range(args.num_prompts)]
        # Warm-up: first calls pay for allocator and kernel set-up.
        generate_audio(model, processor, prompts[:2], GenerationSettings(min(duration, 1.0), batch_size=2),
                       progress=False, chroma=chroma[:2] if chroma else None)

        def timed(batch_size, seconds=None, plan=None):
            best = float("inf")
            for _ in range(args.repeats):
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                how = GenerationSettings(seconds or duration, plan=plan, batch_size=batch_size)
                generate_audio(model, processor, prompts, how, seed=0, progress=False, chroma=chroma)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - t0)
            return best

        if args.long:
            return long_clip(args, model, prompts, timed, device)
        if args.paths:
            return generation_paths(args, model, processor, prompts[0], duration, device)

        sequential = timed(1)
        batched = timed(args.num_prompts)
    audio_s = args.num_prompts * duration
    label = args.model_path or f"{args.size}{' melody' if args.melody else ''} (random weights)"
    print(f"model {label}, device {device}, threads {torch.get_num_threads()}, {args.num_prompts} prompts x "
          f"{duration:g} s, guidance 3{', with a melody' if chroma else ''}")
    print(f"one at a time (batch 1): {sequential:8.2f} s   real-time factor {sequential / audio_s:.3f}")
    print(f"batched (batch {args.num_prompts}):       {batched:8.2f} s   real-time factor {batched / audio_s:.3f}")
    print(f"batched / sequential wall time: {batched / sequential:.3f}  ({sequential / batched:.2f}x faster batched)")


def long_clip(args, model, prompts, timed, device):
    """--long: one window's clip vs a clip N windows long, both batched, real-time factors and ratio."""
    import torch

    from musicgen_lora.generation.generate import clip_windows, window_frames
    from musicgen_lora.generation.sampling import WindowPlan
    from musicgen_lora.model.checkpoint import model_info

    fr = model_info(model)["frame_rate"]
    plan = WindowPlan(args.window_seconds, args.window_overlap)
    window, overlap = (x / fr for x in window_frames(model, 1.0, plan))
    long_s = round(args.long * window, 2)
    one, many = timed(len(prompts), window, plan), timed(len(prompts), long_s, plan)
    spans = clip_windows(model, long_s, plan)
    rtf_one, rtf_many = one / (len(prompts) * window), many / (len(prompts) * long_s)
    print(f"model {args.model_path or args.size}, device {device}, threads {torch.get_num_threads()}, "
          f"{len(prompts)} prompts batched, window {window:g} s, overlap {overlap:g} s")
    print(f"one window ({window:g} s):            {one:8.2f} s   real-time factor {rtf_one:.3f}")
    print(f"{len(spans)} windows ({long_s:g} s):          {many:8.2f} s   real-time factor {rtf_many:.3f}")
    # The overlap is not generated again: each later window reads it in one parallel prefill pass.
    print(f"windowed / one-window real-time factor: {rtf_many / rtf_one:.3f} ({len(spans) - 1} later windows each "
          f"re-read {overlap:g} s of context)")


def copy_bandwidth_gbs(device, mib: int = 512, repeats: int = 5) -> float:
    """GB/s of a large tensor copy (bytes read + written): this machine's practical memory bandwidth."""
    import torch

    src = torch.ones(mib * 2**18, device=device)  # float32: mib MiB
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        dst.copy_(src)
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best / 1e9


def generation_paths(args, model, processor, prompt, duration, device):
    """--paths: the same prompt, seed and settings through each path; fastest of --repeats, interleaved
    (so load drifts hit every path alike)."""
    import torch

    from musicgen_lora.core.precision import cpu_bf16
    from musicgen_lora.data.metadata import tokenize_text
    from musicgen_lora.generation.generate import generate_audio, generation_config_for, max_new_tokens_for
    from musicgen_lora.model.checkpoint import model_info, unwrap_base
    from musicgen_lora.model.lora import apply_lora

    torch.manual_seed(0)
    peft = apply_lora(model, 12, 24, 0.0).eval()
    for name, param in peft.named_parameters():
        if "lora_B" in name:  # a trained adapter is not zero: merging must really add B @ A
            torch.nn.init.normal_(param, std=0.01)
    base, info = unwrap_base(peft), model_info(peft)
    steps = max_new_tokens_for(duration, info)
    inputs = tokenize_text(processor.tokenizer, [prompt]).to(device)
    config = generation_config_for(base, SamplingSettings(), duration)

    def plain(**extra):
        with torch.no_grad():
            peft.generate(**inputs, generation_config=config, **extra)

    def project(**how):
        settings = GenerationSettings(duration, batch_size=1, **how)
        return lambda: generate_audio(peft, processor, [prompt], settings, seed=0, progress=False)

    ways = {"plain transformers generate() on the PEFT model, fp32": plain,
            "project, adapter unmerged (PEFT wrapper), fp32": project(merge=False),
            "project, adapter merged, fp32": project(precision="fp32"),
            "project, adapter merged, bf16": project(precision="bf16")}
    if args.compile:
        ways["plain, static KV cache, fp32"] = lambda: plain(cache_implementation="static")
    for way in ways.values():  # warm-up: kernels, allocator, the merged copy's first build
        way()
    best = dict.fromkeys(ways, float("inf"))
    for _ in range(args.repeats):
        for name, way in ways.items():
            if str(device).startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            way()
            if str(device).startswith("cuda"):
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - t0)
    if args.compile:
        decoder_forward = base.decoder.forward
        base.decoder.forward = torch.compile(decoder_forward, dynamic=False)
        t0 = time.perf_counter()
        plain(cache_implementation="static")
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        plain(cache_implementation="static")
        best["plain, static KV cache, torch.compile, fp32"] = time.perf_counter() - t0
        base.decoder.forward = decoder_forward
        print(f"torch.compile: first call {first:.1f} s (compiling)")
    weights = {dtype: sum(p.numel() for n, p in base.decoder.named_parameters() if "lora_" not in n) * size
               for dtype, size in (("fp32", 4), ("bf16", 2))}
    peak = copy_bandwidth_gbs(device)
    print(f"model {args.model_path or args.size} (random weights unless a path), device {device}, threads "
          f"{torch.get_num_threads()}, CPU bf16 instructions: {cpu_bf16()}; 1 prompt x {duration:g} s = {steps} "
          f"decoder steps, guidance 3, fastest of {args.repeats}; copy bandwidth {peak:.1f} GB/s")
    reference = best["plain transformers generate() on the PEFT model, fp32"]
    for name, seconds in best.items():
        read = weights["bf16" if "bf16" in name else "fp32"] * steps / seconds / 1e9
        print(f"  {name:48s} {seconds:7.2f} s  {seconds / steps * 1e3:6.1f} ms/step  real-time factor "
              f"{seconds / duration:5.2f}  {reference / seconds:4.2f}x the plain path  weights read {read:5.1f} GB/s "
              f"({read / peak:.0%} of copy bandwidth)")


if __name__ == "__main__":
    sys.exit(main())
