"""Side-by-side evaluation: which models to compare, one base with adapters swapped on it, the
generation loop, and the files evaluate.py writes (WAVs, comparison_results.jsonl, summary.json,
report.html).
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from common import UserError, atomic_dir, atomic_write_json, atomic_write_text, log
from generation import (Job, SamplingSettings, clip_filename, describe_settings, generate_jobs, slugify,
                        write_clip)

BASE = "base_model"


@dataclass
class ModelSpec:
    name: str  # folder name in the output dir and label in the report
    adapter_path: Path | None  # None: the base model


def check_adapter_dir(path) -> Path:
    """A PEFT adapter folder, or one clear line saying what the folder is instead."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: adapter folder not found; pass a best_model/ or final_model/ folder written by "
                        f"train_lora.py")
    if not (path / "adapter_config.json").is_file():
        if (path / "best_model").is_dir() or (path / "final_model").is_dir():
            raise UserError(f"{path}: this is a training run directory, not an adapter; pass {path}/best_model "
                            f"(or use evaluate.py --compare_multi --lora_model_path {path})")
        raise UserError(f"{path}: no adapter_config.json here, so it is not a PEFT adapter; pass a best_model/, "
                        f"final_model/ or checkpoints/checkpoint-N/ folder written by train_lora.py")
    if not any((path / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
        raise UserError(f"{path}: adapter_config.json but no adapter_model.safetensors; the adapter was not "
                        f"saved completely")
    return path


def resolve_models(args) -> list[ModelSpec]:
    """base_model first, then the adapters the flags name, each with a unique folder name."""
    models = [ModelSpec(BASE, None)]
    run_dir = Path(args.lora_model_path) if args.lora_model_path else None
    if args.compare_multi:
        best = Path(args.best_model_path) if args.best_model_path else (run_dir / "best_model" if run_dir else None)
        final = Path(args.final_model_path) if args.final_model_path else (run_dir / "final_model" if run_dir else None)
        if best is None and final is None:
            raise UserError("--compare_multi needs the run directory as --lora_model_path (holding best_model/ and "
                            "final_model/) or --best_model_path/--final_model_path")
        for name, path in (("best_model", best), ("final_model", final)):
            if path is not None:
                models.append(ModelSpec(name, check_adapter_dir(path)))
    elif args.compare or (run_dir is not None):
        if run_dir is None:
            raise UserError("--compare needs --lora_model_path (the adapter to compare with the base model)")
        models.append(ModelSpec("lora_model", check_adapter_dir(run_dir)))
    else:
        for name, path in (("best_model", args.best_model_path), ("final_model", args.final_model_path)):
            if path:
                models.append(ModelSpec(name, check_adapter_dir(path)))
    for spec in args.adapter or []:
        if "=" not in spec:
            raise UserError(f"--adapter {spec}: use NAME=PATH, e.g. --adapter rank16=../output_r16/best_model")
        name, path = spec.split("=", 1)
        if slugify(name, 60) != name.lower() or not name:
            raise UserError(f"--adapter {spec}: NAME must be letters, digits and dashes (it names a folder)")
        models.append(ModelSpec(name, check_adapter_dir(path)))
    names = [m.name for m in models]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise UserError(f"model name {sorted(dup)[0]!r} is used twice; give each --adapter a unique NAME")
    return models


class ModelBank:
    """The base model loaded once; every adapter is attached to it under its own name and switched on
    for its turn (peft set_adapter), the base model runs with adapters disabled. Loading all adapters
    up front means an adapter that does not fit fails before any generation time is spent."""

    def __init__(self, base_model, specs: list[ModelSpec]):
        from modeling import load_adapter

        self.model = base_model
        self.peft = None
        for spec in specs:
            if spec.adapter_path is None:
                continue
            if self.peft is None:
                self.peft = load_adapter(base_model, str(spec.adapter_path), adapter_name=spec.name)
            else:
                try:
                    self.peft.load_adapter(str(spec.adapter_path), adapter_name=spec.name)
                except (RuntimeError, ValueError, KeyError) as e:
                    raise UserError(f"{spec.adapter_path}: adapter does not fit this base model: "
                                    f"{str(e).splitlines()[0][:200]}") from None
        if self.peft is not None:
            self.peft.eval()

    @contextlib.contextmanager
    def use(self, spec: ModelSpec):
        if self.peft is None:
            yield self.model
        elif spec.adapter_path is None:
            with self.peft.disable_adapter():
                yield self.peft
        else:
            self.peft.set_adapter(spec.name)
            yield self.peft


def check_output_dir(out: Path, overwrite: bool):
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; choose another --output_dir")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out}: not empty (an earlier evaluation?); choose a new --output_dir or pass --overwrite "
                        f"to replace it")


def compare_models(model, processor, specs: list[ModelSpec], jobs: list[Job], out: Path, *, duration: float,
                   settings: SamplingSettings, batch_size: int, wav_subtype: str = "PCM_16",
                   progress: bool = True, base_model_path: str = "", extra_summary: dict | None = None,
                   scorer=None) -> dict:
    """Generate every job with every model into `out` (written atomically) and return summary.json.

    Every model gets the same jobs with the same seeds in the same batches, so clips differ only by
    the weights. `scorer(model_spec, rows, audio)` may add metrics to rows and the summary.
    """
    from modeling import model_info
    from plotting import spectrogram_png

    bank = ModelBank(model, specs)
    sr = model_info(model)["sample_rate"]
    many = any(j.sample > 0 for j in jobs)
    rows, audio_by_model = [], {}
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    setting_dict = {"duration": duration, **settings.to_dict(), "batch_size": batch_size}
    with atomic_dir(out) as tmp:
        for spec in specs:
            log.info(f"{spec.name}: {len(jobs)} clip(s), {describe_settings(settings, duration, batch_size)}")
            with bank.use(spec) as m:
                audio, per_clip = generate_jobs(m, processor, jobs, duration, settings, batch_size, progress,
                                                desc=spec.name)
            audio_by_model[spec.name] = audio
            for job, wav in zip(jobs, audio):
                name = clip_filename(job.prompt_index, job.prompt.text, job.sample if many else None)
                rel = f"{spec.name}/{name}.wav"
                sidecar = {"prompt": job.prompt.text, "prompt_id": job.prompt.id, "model": spec.name,
                           "base_model": base_model_path, "adapter": str(spec.adapter_path) if spec.adapter_path else None,
                           "sample": job.sample, "seed": job.seed, **setting_dict, "sample_rate": sr,
                           "wav_subtype": wav_subtype, "wall_seconds": per_clip, "created": created}
                write_clip(tmp / rel, wav, sr, sidecar, wav_subtype)
                spectrogram_png(wav, sr, tmp / spec.name / f"{name}.png")
                rows.append({"prompt_id": job.prompt.id, "prompt": job.prompt.text, "model": spec.name,
                             "adapter_path": str(spec.adapter_path) if spec.adapter_path else None,
                             "wav": rel, "spectrogram": f"{spec.name}/{name}.png", "seed": job.seed,
                             "sample": job.sample, "settings": setting_dict, "sample_rate": sr,
                             "duration_s": len(wav) / sr, "wall_seconds": per_clip})
        summary = {"created": created, "base_model": base_model_path, "settings": setting_dict,
                   "num_prompts": len({j.prompt.id for j in jobs}), "clips_per_model": len(jobs),
                   "models": {s.name: {"adapter_path": str(s.adapter_path) if s.adapter_path else None,
                                       "num_clips": len(jobs)} for s in specs}}
        if extra_summary:
            summary.update(extra_summary)
        if scorer is not None:
            scorer(tmp, specs, rows, audio_by_model, summary)
        write_results(tmp, rows, summary)
    return summary


def write_results(out: Path, rows: list[dict], summary: dict):
    """comparison_results.jsonl, summary.json and report.html (used by compare and --score_only)."""
    from report import write_report

    atomic_write_text(out / "comparison_results.jsonl",
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write_json(out / "summary.json", summary)
    write_report(out, rows, summary)


def clip_key(row) -> tuple:
    return row["prompt_id"], row.get("sample", 0)


def to_jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x
