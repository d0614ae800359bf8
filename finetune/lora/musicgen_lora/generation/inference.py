"""inference_lora.py's job as a library call: `run_inference(InferenceConfig)` writes a clip (WAV +
sidecar, and codes with save_codes) per prompt and sample into cfg.output_dir, or with cfg.merge a
full model with the adapter merged in. Holds the output folder's lock while it works."""
from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path

from musicgen_lora.core.common import log, resolve_device
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
from musicgen_lora.generation.config import InferenceConfig
from musicgen_lora.generation.prompts import (
    check_melody_model,
    clip_filename,
    describe_melodies,
    describe_settings,
    describe_windows,
    load_prompts,
    plan_jobs,
)

TOOL, MERGE_TOOL = "inference_lora.py", "inference_lora.py --merge"


def run_inference(cfg: InferenceConfig) -> list[Path]:
    """Generate every prompt x sample of `cfg` (checked) into cfg.output_dir; returns the WAVs written
    (with cfg.merge: [the merged model's folder])."""
    cfg.check()
    with output_lock(Path(cfg.output_dir), MERGE_TOOL if cfg.merge else TOOL):
        return _run(cfg)


def adapter_records(cfg: InferenceConfig) -> dict:
    """What a sidecar and merge_info.json say of the adapters: "adapter" (the one folder; None for
    the base model or a mix), "adapters" (each folder, its strength and run), "lora_scale"."""
    from musicgen_lora.model.lora import adapter_run_id

    parts = [{"path": str(Path(path).resolve()), "strength": strength, "run_id": adapter_run_id(Path(path))}
             for path, strength in cfg.adapters]
    return {"adapter": parts[0]["path"] if len(parts) == 1 else None,
            "run_id": parts[0]["run_id"] if len(parts) == 1 else None,
            "adapters": parts, "lora_scale": cfg.lora_scale if parts else None}


def merge(cfg: InferenceConfig, model, processor) -> Path:
    out = Path(cfg.output_dir)
    merged = model.merge_and_unload()  # the active adapters at their scaling (set_strengths)
    with atomic_dir(out, owner=MERGE_TOOL) as tmp:
        merged.save_pretrained(str(tmp))
        processor.save_pretrained(str(tmp))
        atomic_write_json(tmp / "merge_info.json", {"base_model": cfg.model_path, **adapter_records(cfg)})
        write_manifest(tmp, MERGE_TOOL, os.listdir(tmp))
    log.info(f"merged model written to {out} (load it with MusicgenForConditionalGeneration.from_pretrained)")
    return out


def _run(cfg: InferenceConfig) -> list[Path]:
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
    from musicgen_lora.model.lora import check_adapter_dir, check_same_layout, load_weighted

    out = Path(cfg.output_dir)
    if cfg.merge:
        check_own_folder(out, MERGE_TOOL, overwrite=cfg.overwrite, flag="--output_dir")
    else:
        prompts = load_prompts(cfg.prompts_file, cfg.prompts, cfg.melody)
        for prompt in prompts if cfg.audio_prompt else []:
            prompt.audio_prompt = str(Path(cfg.audio_prompt).resolve())
        jobs = plan_jobs(prompts, cfg.num_samples, cfg.seed)
        names = [clip_filename(j.prompt, j.sample if cfg.num_samples > 1 else None) for j in jobs]
        exts = (".wav", ".json") + ((CODES_SUFFIX,) if cfg.save_codes else ())
        targets = [f"{n}{ext}" for n in names for ext in exts]
        check_shared_targets(out, TOOL, targets, overwrite=cfg.overwrite, flag="--output_dir")
    for path, _ in cfg.adapters:
        check_adapter_dir(path)
    check_same_layout([path for path, _ in cfg.adapters])  # before the base model loads

    device = resolve_device(cfg.device)
    dtype, precision = resolve_generation(cfg.precision, device)
    model, processor = load_model_and_processor(cfg.model_path, device=device, dtype=dtype, flag="--model_path")
    if cfg.adapters:
        model = load_weighted(model, cfg.adapters)
    if cfg.merge:
        return [merge(cfg, model, processor)]

    check_melody_model(prompts, is_melody(model), cfg.model_path, "--model_path", cfg.melody, cfg.prompts_file)
    how = cfg.generation(precision)
    prompt_seconds = cfg.prompt_seconds if cfg.audio_prompt else 0.0
    check_duration(model, cfg.duration, how.plan, prompt_seconds)
    windows = clip_windows(model, cfg.duration, how.plan, prompt_seconds)
    info = model_info(model)
    chroma = job_chroma(jobs, read_melodies(jobs, info["sample_rate"]), info["sample_rate"])
    if line := describe_melodies(prompts, is_melody(model)):
        log.info(line)
    report_long_descriptions(processor.tokenizer, [(f"prompt {p.id}", p.text) for p in prompts])
    mix = " + ".join(f"{path} x{strength:g}" for path, strength in cfg.adapters)
    who = f"{cfg.model_path} + {mix}" if mix else cfg.model_path
    log.info(f"generating {len(jobs)} clip(s) with {who}: {describe_settings(how)}")
    if len(windows) > 1:
        log.info(describe_windows(windows))
    t0 = time.time()
    audio, per_clip, codes = generate_jobs(model, processor, jobs, how, chroma=chroma, prompt_seconds=prompt_seconds,
                                           progress=not cfg.no_progress, return_codes=True)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    adapters = adapter_records(cfg)
    # Claim the names first: a kill mid-way leaves every written clip recorded as ours.
    write_manifest(out, TOOL, set((read_manifest(out) or {}).get("paths", [])) | set(targets))
    written = []
    for job, name, wav, clip_codes in zip(jobs, names, audio, codes):
        sidecar = {"prompt": job.prompt.text, "prompt_id": job.prompt.id, "sample": job.sample, "seed": job.seed,
                   "base_model": cfg.model_path, **adapters, "melody": job.prompt.melody,
                   "audio_prompt": job.prompt.audio_prompt,
                   "prompt_seconds": prompt_seconds or None, "sample_rate": info["sample_rate"], **run_threads(),
                   "num_samples": len(wav), **how.to_dict(), "windows": windows, "device": device,
                   "dtype": str(dtype or "float32").replace("torch.", ""), "wav_subtype": cfg.wav_subtype,
                   "wall_seconds": per_clip, "created": stamp}
        write_clip(out / f"{name}.wav", wav, info["sample_rate"], sidecar, cfg.wav_subtype)
        if cfg.save_codes:
            write_codes(out / f"{name}{CODES_SUFFIX}", clip_codes, info["audio_channels"], info["frame_rate"])
        log.info(f"  {out / (name + '.wav')}  ({len(wav) / info['sample_rate']:.2f} s, seed {job.seed})")
        written.append(out / f"{name}.wav")
    wall = time.time() - t0
    rtf = wall / (len(jobs) * cfg.duration)
    log.info(f"done: {len(jobs)} clip(s) in {wall:.1f} s ({rtf:.2f} s of compute per second of audio)")
    return written
