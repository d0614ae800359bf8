"""Side-by-side evaluation: which models to compare, one base with adapters swapped on it, the
generation loop, and the files evaluate.py writes (WAVs, comparison_results.jsonl, summary.json,
report.html).
"""
from __future__ import annotations

import contextlib
import json
import warnings
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


def compare_models(bank: "ModelBank", processor, specs: list[ModelSpec], jobs: list[Job], out: Path, *,
                   duration: float, settings: SamplingSettings, batch_size: int, wav_subtype: str = "PCM_16",
                   progress: bool = True, base_model_path: str = "", model_numbers: dict | None = None,
                   notes: list[str] | None = None, reference=None, clap=None) -> dict:
    """Generate every job with every model into `out` (written atomically), score every clip, and
    return summary.json.

    Every model gets the same jobs with the same seeds in the same batches, so clips differ only by
    the weights. model_numbers: per-model extras (held-out loss) to put in the summary; reference:
    EnCodec frames of validation clips for the style distance; clap: a ClapScorer or None.
    """
    from modeling import model_info
    from plotting import spectrogram_png

    sr = model_info(bank.model)["sample_rate"]
    many = any(j.sample > 0 for j in jobs)
    rows, audio_by_row = [], []
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    setting_dict = {"duration": duration, **settings.to_dict(), "batch_size": batch_size}
    fad = {}
    with atomic_dir(out) as tmp:
        for spec in specs:
            log.info(f"{spec.name}: {len(jobs)} clip(s), {describe_settings(settings, duration, batch_size)}")
            with bank.use(spec) as m:
                audio, per_clip = generate_jobs(m, processor, jobs, duration, settings, batch_size, progress,
                                                desc=spec.name)
                if reference is not None:
                    from style_distance import encodec_embeddings, frechet_distance

                    fad[spec.name] = frechet_distance(encodec_embeddings(m, audio), reference)
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
                audio_by_row.append(wav)
        summary = {"created": created, "base_model": base_model_path, "settings": setting_dict,
                   "num_prompts": len({j.prompt.id for j in jobs}), "clips_per_model": len(jobs)}
        extras = {s.name: {"adapter_path": str(s.adapter_path) if s.adapter_path else None,
                           **(model_numbers or {}).get(s.name, {}), "fad": fad.get(s.name)} for s in specs}
        score_rows(tmp, rows, audio_by_row, sr, summary, extras, notes or [], clap)
        write_results(tmp, rows, summary)
    return summary


def score_rows(out: Path, rows: list[dict], audio: list, sr: int, summary: dict, extras: dict[str, dict],
               notes: list[str], clap=None):
    """Per-clip metrics into rows, per-model aggregates and verdicts into summary, loudness plots."""
    from audio_metrics import FLAG_NAMES, THRESHOLDS, score_clip
    from plotting import loudness_plot_png

    curves: dict[tuple, dict[str, list[float]]] = {}
    for row, wav in zip(rows, audio):
        if wav is None:
            continue
        scored = score_clip(wav, sr)
        row["metrics"], row["flags"] = scored["metrics"], scored["flags"]
        row["loudness_trajectory"] = scored["loudness_trajectory"]
        curves.setdefault(clip_key(row), {})[row["model"]] = scored["loudness_trajectory"]
    if clap is not None:
        scored_rows = [(r, a) for r, a in zip(rows, audio) if a is not None and r.get("prompt")]
        sims = clap.similarity([r["prompt"] for r, _ in scored_rows], [a for _, a in scored_rows], sr)
        for (r, _), sim in zip(scored_rows, sims):
            r["metrics"]["clap_similarity"] = sim
    plots = {}
    for (pid, sample), per_model in curves.items():
        rel = f"plots/{slugify(pid, 60)}{f'_s{sample}' if sample else ''}_loudness.png"
        loudness_plot_png(per_model, out / rel, title=f"{pid}: short-term loudness")
        plots[f"{pid}#{sample}"] = rel
    summary["loudness_plots"] = plots
    models = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name and "metrics" in r]
        n = len(mine)
        counts = {f: sum(1 for r in mine if r["flags"][f]) for f in FLAG_NAMES}
        entry = {"num_clips": n, "flag_counts": counts}
        entry.update({"held_out_loss": None, "fad": None})
        entry.update(extras.get(name, {}))
        for key in ("integrated_lufs", "loudness_slope_db_per_s", "loudness_drop_db", "silence_ratio",
                    "longest_silence_s", "spectral_flatness", "clipping_ratio", "clap_similarity"):
            vals = [r["metrics"][key] for r in mine if r["metrics"].get(key) is not None]
            if vals:
                entry[key] = float(np.mean(vals))
        entry["verdict"] = verdict(name, entry)
        models[name] = entry
    summary["models"] = models
    summary["thresholds"] = THRESHOLDS
    summary["notes"] = notes + [
        "FAD (EnCodec): Frechet distance between the model's own EnCodec encoder frames of generated and "
        "validation clips; relative (compare models in one evaluation), noisy with few clips."]
    unreadable = [r for r in rows if r.get("error")]
    if unreadable:
        summary["unreadable"] = [{"wav": r["wav"], "error": r["error"]} for r in unreadable]


def verdict(name: str, m: dict) -> str:
    """One line a person can act on, e.g. 'final_model: 6/8 fade out, 0/8 noisy; held-out loss 3.91'."""
    n, c = m["num_clips"], m["flag_counts"]
    parts = [f"{c['fades_out']}/{n} fade out", f"{c['noisy']}/{n} noisy", f"{c['silent']}/{n} silent",
             f"{c['clipping']}/{n} clipping"]
    line = f"{name}: " + ", ".join(parts)
    tail = []
    if m.get("held_out_loss") is not None:
        ref = f" (uniform {m['uniform_loss']:.2f})" if m.get("uniform_loss") is not None else ""
        tail.append(f"held-out loss {m['held_out_loss']:.4f}{ref}")
    if m.get("fad") is not None:
        tail.append(f"FAD {m['fad']:.4g}")  # scale depends on the codec
    if m.get("clap_similarity") is not None:
        tail.append(f"CLAP {m['clap_similarity']:.3f}")
    if m.get("integrated_lufs") is not None:
        tail.append(f"{m['integrated_lufs']:.1f} LUFS")
    return line + ("; " + ", ".join(tail) if tail else "")


def validation_loader(processor, model, data_dir, metadata_file, window: float, batch_size: int):
    """The trainer's validation set and collation (same clips, crops and labels as step 0)."""
    import torch

    from dataset import Collator, MusicDataset, read_metadata
    from modeling import model_info

    splits = read_metadata(data_dir, metadata_file)
    clips = splits["valid"] or splits["train"][: max(1, len(splits["train"]) // 10)]
    sr = model_info(model)["sample_rate"]
    ds = MusicDataset(clips, sr, window, train=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False,
                                         collate_fn=Collator(processor, int(round(window * sr))))
    return loader, ds


def held_out_losses(bank: "ModelBank", specs: list[ModelSpec], loader, progress=True) -> dict[str, dict]:
    """Teacher-forced loss of each model on the validation set (modeling.evaluate_loss, the trainer's function)."""
    from common import uniform_loss
    from modeling import evaluate_loss, model_info

    ln_v = uniform_loss(model_info(bank.model)["vocab_size"])
    out = {}
    for spec in specs:
        with bank.use(spec) as m:
            res = evaluate_loss(m, loader, desc=f"held-out {spec.name}", progress=progress)
        out[spec.name] = {"held_out_loss": res["loss"], "held_out_loss_per_codebook": res["per_codebook"],
                          "held_out_tokens": res["tokens"], "uniform_loss": ln_v}
        per_cb = ", ".join(f"{x:.3f}" for x in res["per_codebook"])
        log.info(f"{spec.name}: held-out loss {res['loss']:.4f} (per codebook {per_cb}; uniform {ln_v:.4f})")
    return out


def reference_embeddings(model, dataset) -> np.ndarray:
    from style_distance import encodec_embeddings

    return encodec_embeddings(model, [dataset[i]["audio"] for i in range(len(dataset))])


AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")


def score_folder(input_dir: Path, out: Path, sample_rate: int = 32000) -> dict:
    """--score_only: score every audio file under input_dir (recursively) into out. The first folder
    level names the model (base_model/, best_model/, ...); a sidecar .json supplies prompt and seed.
    Unreadable files are reported and skipped."""
    from dataset import load_audio
    from plotting import spectrogram_png

    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise UserError(f"{input_dir}: folder not found; pass --input_dir a folder of WAVs (e.g. an old evaluation)")
    files = sorted(p for p in input_dir.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()
                   and not p.name.startswith("."))
    if out.resolve() != input_dir.resolve():
        files = [p for p in files if out.resolve() not in p.resolve().parents]
    if not files:
        raise UserError(f"{input_dir}: no audio files (.wav/.flac/.mp3/.ogg) found")
    rows, audio = [], []
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    import os

    with atomic_dir(out) as tmp:
        for path in files:
            rel_in = path.relative_to(input_dir)
            model = rel_in.parts[0] if len(rel_in.parts) > 1 else "clips"
            side = {}
            if path.with_suffix(".json").is_file():
                try:
                    side = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
                except (json.JSONDecodeError, UnicodeDecodeError):
                    side = {}
            row = {"prompt_id": side.get("prompt_id") or path.stem, "prompt": side.get("prompt"), "model": model,
                   "adapter_path": side.get("adapter"), "wav": os.path.relpath(path.resolve(), out.resolve()),
                   "seed": side.get("seed"), "sample": side.get("sample", 0) or 0,
                   "settings": {k: side[k] for k in ("duration", "guidance_scale", "temperature", "top_k", "top_p",
                                                      "greedy", "batch_size") if k in side}}
            try:
                with warnings.catch_warnings():  # librosa's fallback decoders warn before failing
                    warnings.simplefilter("ignore")
                    wav = load_audio(path, sample_rate)
            except UserError as e:
                log.warning(f"warning: skipping unreadable file: {e}")
                row["error"] = str(e)
                rows.append(row)
                audio.append(None)
                continue
            spec_rel = Path(model) / (str(rel_in.with_suffix("")).replace(os.sep, "__") + ".png")
            spectrogram_png(wav, sample_rate, tmp / spec_rel)
            row.update({"spectrogram": spec_rel.as_posix(), "sample_rate": sample_rate,
                        "duration_s": len(wav) / sample_rate})
            rows.append(row)
            audio.append(wav)
        summary = {"created": created, "title": f"Scores for {input_dir}", "input_dir": str(input_dir),
                   "settings": {}, "score_only": True}
        score_rows(tmp, rows, audio, sample_rate, summary, {}, ["--score_only: no models loaded, so no "
                                                                   "held-out loss or FAD."])
        write_results(tmp, rows, summary)
    return summary


def write_results(out: Path, rows: list[dict], summary: dict):
    """comparison_results.jsonl, summary.json and report.html (used by compare and --score_only)."""
    from report import write_report

    atomic_write_text(out / "comparison_results.jsonl",
                      "".join(json.dumps(r, ensure_ascii=False, default=to_jsonable) + "\n" for r in rows))
    atomic_write_json(out / "summary.json", summary)
    write_report(out, rows, summary)


def clip_key(row) -> tuple:
    return row["prompt_id"], row.get("sample", 0)


def to_jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x
