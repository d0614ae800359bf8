#!/usr/bin/env python
"""Generate music from text with MusicGen, optionally with a LoRA adapter on top.

    python inference_lora.py --base_model_path /path/to/musicgen-small \\
        --lora_model_path ../output_epoch1/best_model \\
        --prompts "hip hop 808 beat with trap drums" "lo-fi piano, vinyl crackle" \\
        --output_dir ../output_epoch1/generated --duration 15

Writes OUTPUT_DIR/NN_prompt-slug.wav (32 kHz, mono or stereo as the model, 16-bit PCM by default)
and a JSON sidecar of the same name holding the prompt, model, adapter, seed, melody and every
generation setting, so any clip can be regenerated exactly. Without --lora_model_path the base model
generates.

    python inference_lora.py --base_model_path facebook/musicgen-melody --melody tune.wav \\
        --prompts "lo-fi hip hop, mellow rhodes" --output_dir ../output/generated_melody

--duration past one window (--window_seconds, 30 s by default) is generated window by window, each
prompted with the end of the one before (--window_overlap); --audio_prompt FILE makes every clip
continue the first --prompt_seconds of FILE.

MusicGen-Melody checkpoints follow the chroma (pitch classes over time) of a melody: --melody for
every prompt, or "melody": "file" per prompt in --prompts_file; prompts without one get the null
melody, as generate() does without a melody.

    python inference_lora.py --base_model_path BASE --lora_model_path ADAPTER --merge --output_dir MERGED

writes a full model with the adapter merged in, loadable with plain
MusicgenForConditionalGeneration.from_pretrained(MERGED) (no peft needed).
"""
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from musicgen_lora.cli.args import (
    Parser,
    add_sampling_args,
    check_runtime_flags,
    positive_float,
    positive_int,
    sampling_settings,
    window_plan,
)
from musicgen_lora.cli.runner import cli
from musicgen_lora.core.common import UserError, log, resolve_device
from musicgen_lora.core.outputs import (
    atomic_dir,
    atomic_write_json,
    check_own_folder,
    check_shared_targets,
    output_lock,
    read_manifest,
    write_manifest,
)
from musicgen_lora.core.threads import run_threads
from musicgen_lora.data.metadata import report_long_descriptions
from musicgen_lora.generation.prompts import (
    check_melody_model,
    clip_filename,
    describe_melodies,
    describe_settings,
    describe_windows,
    load_prompts,
    plan_jobs,
)


def build_parser():
    p = Parser(description=__doc__)
    p.add_argument("--base_model_path", default="facebook/musicgen-small",
                   help="Local MusicGen folder or hub id the adapter was trained on.")
    p.add_argument("--lora_model_path", default=None,
                   help="PEFT adapter folder (best_model/, final_model/ or checkpoints/checkpoint-N/). "
                        "Omit to generate with the base model.")
    p.add_argument("--prompts", nargs="+", default=None, help="One or more text prompts.")
    p.add_argument("--prompts_file", default=None,
                   help="JSON list of prompts (strings or {\"prompt\", \"id\", \"seed\", \"melody\"} objects; a "
                        "melody path is relative to the file's folder) or a .txt file, one prompt per line.")
    p.add_argument("--melody", default=None,
                   help="Audio file whose melody (chroma) conditions every prompt that has none of its own; "
                        "MusicGen-Melody checkpoints only.")
    p.add_argument("--audio_prompt", default=None,
                   help="Audio file whose first --prompt_seconds every clip continues (the clip starts with them).")
    p.add_argument("--prompt_seconds", type=positive_float, default=5.0,
                   help="Seconds of --audio_prompt to continue.")
    p.add_argument("--num_samples", type=positive_int, default=1, help="Clips per prompt (different seeds).")
    p.add_argument("--output_dir", default="../output/generated", help="Folder for WAVs and sidecars "
                                                                          "(or the merged model with --merge).")
    p.add_argument("--save_codes", action="store_true",
                   help="Also write each clip's EnCodec codes (K codebooks x frames, what the WAV was decoded "
                        "from) as NAME.codes.safetensors: compare generations exactly, or decode them again.")
    p.add_argument("--merge", action="store_true",
                   help="Merge the adapter into the base weights and save a full model to --output_dir "
                        "instead of generating.")
    add_sampling_args(p)
    return p


TOOL, MERGE_TOOL = "inference_lora.py", "inference_lora.py --merge"


def merge(args, model, processor):
    out = Path(args.output_dir)
    merged = model.merge_and_unload()
    with atomic_dir(out, owner=MERGE_TOOL) as tmp:
        merged.save_pretrained(str(tmp))
        processor.save_pretrained(str(tmp))
        atomic_write_json(tmp / "merge_info.json", {"base_model": args.base_model_path,
                                                    "adapter": str(Path(args.lora_model_path).resolve())})
        write_manifest(tmp, MERGE_TOOL, os.listdir(tmp))
    log.info(f"merged model written to {out} (load it with MusicgenForConditionalGeneration.from_pretrained)")


def check_args(args):
    if args.merge and not args.lora_model_path:
        raise UserError("--merge needs --lora_model_path (the adapter to merge into the base model)")
    if args.merge and (args.prompts or args.prompts_file or args.melody or args.audio_prompt or args.save_codes):
        raise UserError("--merge writes a model and generates nothing; drop --prompts/--prompts_file/--melody/"
                        "--audio_prompt/--save_codes (or --merge)")
    if args.audio_prompt and not Path(args.audio_prompt).is_file():
        raise UserError(f"--audio_prompt {args.audio_prompt}: file not found; pass an audio file whose start the "
                        f"clips continue")
    check_runtime_flags(args)


@cli
def main(argv=None):
    args = build_parser().parse_args(argv)
    check_args(args)

    with output_lock(Path(args.output_dir), MERGE_TOOL if args.merge else TOOL):
        return run(args)


def run(args):
    from musicgen_lora.generation.generate import (
        CODES_SUFFIX,
        check_duration,
        clip_windows,
        generate_jobs,
        job_chroma,
        read_melodies,
        resolve_generation,
        write_clip,
        write_codes,
    )
    from musicgen_lora.model.checkpoint import is_melody, load_model_and_processor, model_info
    from musicgen_lora.model.lora import adapter_run_id, check_adapter_dir, load_adapter

    out = Path(args.output_dir)
    if args.merge:
        check_own_folder(out, MERGE_TOOL, overwrite=args.overwrite, flag="--output_dir")
    else:
        prompts = load_prompts(args.prompts_file, args.prompts, args.melody)
        for prompt in prompts if args.audio_prompt else []:
            prompt.audio_prompt = str(Path(args.audio_prompt).resolve())
        settings = sampling_settings(args)
        jobs = plan_jobs(prompts, args.num_samples, args.seed)
        names = [clip_filename(j.prompt, j.sample if args.num_samples > 1 else None) for j in jobs]
        exts = (".wav", ".json") + ((CODES_SUFFIX,) if args.save_codes else ())
        targets = [f"{n}{ext}" for n in names for ext in exts]
        check_shared_targets(out, TOOL, targets, overwrite=args.overwrite, flag="--output_dir")
    if args.lora_model_path:
        check_adapter_dir(args.lora_model_path)

    device = resolve_device(args.device)
    dtype, precision = resolve_generation(args.precision, device)
    model, processor = load_model_and_processor(args.base_model_path, device=device, dtype=dtype,
                                                flag="--base_model_path")
    if args.lora_model_path:
        model = load_adapter(model, args.lora_model_path)
    if args.merge:
        return merge(args, model, processor)

    check_melody_model(prompts, is_melody(model), args.base_model_path, "--base_model_path", args.melody,
                       args.prompts_file)
    plan = window_plan(args)
    prompt_seconds = args.prompt_seconds if args.audio_prompt else 0.0
    check_duration(model, args.duration, plan, prompt_seconds)
    windows = clip_windows(model, args.duration, plan, prompt_seconds)
    info = model_info(model)
    chroma = job_chroma(jobs, read_melodies(jobs, info["sample_rate"]), info["sample_rate"])
    if line := describe_melodies(prompts, is_melody(model)):
        log.info(line)
    report_long_descriptions(processor.tokenizer, [(f"prompt {p.id}", p.text) for p in prompts])
    who = f"{args.base_model_path} + {args.lora_model_path}" if args.lora_model_path else args.base_model_path
    log.info(f"generating {len(jobs)} clip(s) with {who}: "
             f"{describe_settings(settings, args.duration, args.batch_size)}")
    if len(windows) > 1:
        log.info(describe_windows(windows))
    t0 = time.time()
    audio, per_clip, codes = generate_jobs(model, processor, jobs, args.duration, settings, args.batch_size,
                                           progress=not args.no_progress, chroma=chroma, plan=plan,
                                           prompt_seconds=prompt_seconds, precision=precision, return_codes=True)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    run_id = adapter_run_id(Path(args.lora_model_path)) if args.lora_model_path else None
    # Claim the names first: a kill mid-way leaves every written clip recorded as ours.
    write_manifest(out, TOOL, set((read_manifest(out) or {}).get("paths", [])) | set(targets))
    for job, name, wav, clip_codes in zip(jobs, names, audio, codes):
        sidecar = {"prompt": job.prompt.text, "prompt_id": job.prompt.id, "sample": job.sample, "seed": job.seed,
                   "base_model": args.base_model_path,
                   "adapter": str(Path(args.lora_model_path).resolve()) if args.lora_model_path else None,
                   "run_id": run_id, "melody": job.prompt.melody, "duration": args.duration,
                   "audio_prompt": job.prompt.audio_prompt, "prompt_seconds": prompt_seconds or None,
                   "sample_rate": info["sample_rate"], "precision": precision, **run_threads(),
                   "num_samples": len(wav), **settings.to_dict(), **plan.to_dict(), "windows": windows,
                   "batch_size": args.batch_size, "device": device,
                   "dtype": str(dtype or "float32").replace("torch.", ""), "wav_subtype": args.wav_subtype,
                   "wall_seconds": per_clip, "created": stamp}
        write_clip(out / f"{name}.wav", wav, info["sample_rate"], sidecar, args.wav_subtype)
        if args.save_codes:
            write_codes(out / f"{name}{CODES_SUFFIX}", clip_codes, info["audio_channels"], info["frame_rate"])
        log.info(f"  {out / (name + '.wav')}  ({len(wav) / info['sample_rate']:.2f} s, seed {job.seed})")
    wall = time.time() - t0
    rtf = wall / (len(jobs) * args.duration)
    log.info(f"done: {len(jobs)} clip(s) in {wall:.1f} s ({rtf:.2f} s of compute per second of audio)")


if __name__ == "__main__":
    sys.exit(main())
