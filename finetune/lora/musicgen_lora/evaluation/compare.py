"""Side-by-side evaluation: which models to compare, one base with adapters swapped on it, the
generation loop, and the files evaluate.py writes (WAVs, comparison_results.jsonl, summary.json,
report.html).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from musicgen_lora.audio import MUSICGEN_SAMPLE_RATE
from musicgen_lora.common import UserError, log
from musicgen_lora.modeling import check_adapter_dir, load_adapter
from musicgen_lora.outputs import atomic_dir, atomic_write_json, atomic_write_text, check_own_folder, write_manifest
from musicgen_lora.generation import (Job, SamplingSettings, clip_filename, describe_settings, generate_jobs, slugify,
                        write_clip)

BASE = "base_model"


TOOL = "evaluate.py"


@dataclass
class ModelSpec:
    name: str  # folder name in the output dir and label in the report
    adapter_path: Path | None  # None: the base model
    run_id: str | None = None  # the training run the adapter came from (None: base, or unknown)


def adapter_run_id(adapter: Path) -> str | None:
    """The run id train_lora.py recorded beside an adapter (training_info.json, else the run's
    run_config.json), so results made from it are credited to that run and no other."""
    for path in (Path(adapter) / "training_info.json", Path(adapter).parent / "run_config.json",
                 Path(adapter).parent.parent / "run_config.json"):
        try:
            run_id = json.loads(path.read_text(encoding="utf-8")).get("run_id")
        except (OSError, ValueError, AttributeError):
            continue
        if run_id:
            return str(run_id)
    return None


def adapter_spec(name: str, path) -> ModelSpec:
    path = check_adapter_dir(path)
    return ModelSpec(name, path, adapter_run_id(path))


def run_adapters(run_dir: Path) -> list[ModelSpec]:
    """--compare_multi on a run dir: its best_model/ and final_model/, whichever exist (a run that
    never validated has no best_model/); one line saying what to pass when it holds neither."""
    if (run_dir / "adapter_config.json").is_file():
        raise UserError(f"{run_dir}: is one adapter, and --compare_multi compares a run's best_model/ and "
                        f"final_model/: use --compare --lora_model_path {run_dir}, or pass the run directory")
    found = [adapter_spec(n, run_dir / n) for n in ("best_model", "final_model") if (run_dir / n).is_dir()]
    if not found:
        ckpts = sorted((run_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])) \
            if (run_dir / "checkpoints").is_dir() else []
        hint = (f"compare a checkpoint with --compare --lora_model_path {ckpts[-1]}" if ckpts else
                "train first (train_lora.py writes them), or pass adapters with --best_model_path/--final_model_path")
        raise UserError(f"{run_dir}: holds neither best_model/ nor final_model/; {hint}")
    if len(found) == 1:
        missing = {"best_model", "final_model"} - {found[0].name}
        log.warning(f"warning: {run_dir} has no {missing.pop()}/; comparing base_model and {found[0].name}")
    return found


def resolve_models(args) -> list[ModelSpec]:
    """base_model first, then the adapters the flags name, each with a unique folder name."""
    models = [ModelSpec(BASE, None)]
    run_dir = Path(args.lora_model_path) if args.lora_model_path else None
    if args.compare_multi:
        if args.best_model_path or args.final_model_path:
            for name, path in (("best_model", args.best_model_path), ("final_model", args.final_model_path)):
                if path:
                    models.append(adapter_spec(name, path))
        elif run_dir is not None:
            models += run_adapters(run_dir)
        else:
            raise UserError("--compare_multi needs the run directory as --lora_model_path (holding best_model/ and "
                            "final_model/) or --best_model_path/--final_model_path")
    elif args.compare or (run_dir is not None):
        if run_dir is None:
            raise UserError("--compare needs --lora_model_path (the adapter to compare with the base model)")
        models.append(adapter_spec("lora_model", run_dir))
    else:
        for name, path in (("best_model", args.best_model_path), ("final_model", args.final_model_path)):
            if path:
                models.append(adapter_spec(name, path))
    for spec in args.adapter or []:
        if "=" not in spec:
            raise UserError(f"--adapter {spec}: use NAME=PATH, e.g. --adapter rank16=../output_r16/best_model")
        name, path = spec.split("=", 1)
        if slugify(name, 60) != name.lower() or not name:
            raise UserError(f"--adapter {spec}: NAME must be letters, digits and dashes (it names a folder)")
        models.append(adapter_spec(name, path))
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
        self.model = base_model
        self.peft = None
        for spec in specs:
            if spec.adapter_path is not None:
                self.peft = load_adapter(base_model, spec.adapter_path, adapter_name=spec.name, into=self.peft)
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


def training_runs(specs: list[ModelSpec], folder: Path) -> list[dict]:
    """The training runs the adapters came from. Their training curves and review are copied into
    `folder` (training/<run>/), so the report links to them and still works when moved or zipped."""
    runs, seen = [], set()
    for spec in specs:
        if spec.adapter_path is None:
            continue
        run_dir = next((d for d in (spec.adapter_path.parent, spec.adapter_path.parent.parent)
                        if (d / "run_config.json").is_file()), None)
        if run_dir is None or run_dir.resolve() in seen:
            continue
        seen.add(run_dir.resolve())
        name = slugify(run_dir.resolve().name, 60)
        entry = {"name": run_dir.resolve().name, "run_dir": str(run_dir.resolve()), "run_id": spec.run_id}
        for key, file in (("curves", "training_curves.png"), ("review", "review.txt")):
            if (run_dir / "logs" / file).is_file():
                rel = f"training/{name}/{file}"
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(run_dir / "logs" / file, folder / rel)
                entry[key] = rel
        runs.append(entry)
    return runs


def check_output_dir(out: Path, overwrite: bool):
    """An evaluation folder is evaluate.py's whole: refuse anything it did not write (outputs.check_own_folder)."""
    check_own_folder(out, TOOL, overwrite=overwrite, flag="--output_dir", what="an earlier evaluation")


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
    from musicgen_lora.modeling import model_info
    from musicgen_lora.plotting import spectrogram_png

    sr = model_info(bank.model)["sample_rate"]
    many = any(j.sample > 0 for j in jobs)
    rows, audio_by_row = [], []
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    setting_dict = {"duration": duration, **settings.to_dict(), "batch_size": batch_size}
    fad = {}
    with atomic_dir(out, owner=TOOL) as tmp:
        for spec in specs:
            log.info(f"{spec.name}: {len(jobs)} clip(s), {describe_settings(settings, duration, batch_size)}")
            with bank.use(spec) as m:
                audio, per_clip = generate_jobs(m, processor, jobs, duration, settings, batch_size, progress,
                                                desc=spec.name)
                if reference is not None:
                    from musicgen_lora.evaluation.style_distance import encodec_embeddings, frechet_distance

                    fad[spec.name] = frechet_distance(encodec_embeddings(m, audio), reference)
            for job, wav in zip(jobs, audio):
                name = clip_filename(job.prompt, job.sample if many else None)
                rel = f"{spec.name}/{name}.wav"
                sidecar = {"prompt": job.prompt.text, "prompt_id": job.prompt.id, "model": spec.name,
                           "base_model": base_model_path, "adapter": str(spec.adapter_path) if spec.adapter_path else None,
                           "run_id": spec.run_id, "sample": job.sample, "seed": job.seed, **setting_dict, "sample_rate": sr,
                           "wav_subtype": wav_subtype, "wall_seconds": per_clip, "created": created}
                write_clip(tmp / rel, wav, sr, sidecar, wav_subtype)
                spectrogram_png(wav, sr, tmp / spec.name / f"{name}.png")
                rows.append({"prompt_id": job.prompt.id, "prompt": job.prompt.text, "model": spec.name,
                             "adapter_path": str(spec.adapter_path) if spec.adapter_path else None,
                             "wav": rel, "spectrogram": f"{spec.name}/{name}.png", "seed": job.seed,
                             "sample": job.sample, "settings": setting_dict, "sample_rate": sr,
                             "duration_s": len(wav) / sr, "wall_seconds": per_clip})
                audio_by_row.append(wav)
        run_ids = sorted({s.run_id for s in specs if s.run_id})
        summary = {"created": created, "base_model": base_model_path, "settings": setting_dict,
                   "num_prompts": len({j.prompt.id for j in jobs}), "clips_per_model": len(jobs), "run_ids": run_ids,
                   "training_runs": training_runs(specs, tmp)}
        extras = {s.name: {"adapter_path": str(s.adapter_path) if s.adapter_path else None, "run_id": s.run_id,
                           **(model_numbers or {}).get(s.name, {}), "fad": fad.get(s.name)} for s in specs}
        score_rows(tmp, rows, audio_by_row, sr, summary, extras, notes or [], clap)
        write_results(tmp, rows, summary)
        write_manifest(tmp, TOOL, os.listdir(tmp), run_ids=run_ids)
    return summary


def score_rows(out: Path, rows: list[dict], audio: list, sr: int, summary: dict, extras: dict[str, dict],
               notes: list[str], clap=None):
    """Per-clip metrics into rows, per-model aggregates and verdicts into summary, loudness plots."""
    from musicgen_lora.evaluation.metrics import FLAG_NAMES, THRESHOLDS, score_clip
    from musicgen_lora.plotting import loudness_plot_png

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

    from musicgen_lora.data.dataset import Collator, MusicDataset
    from musicgen_lora.data.metadata import read_metadata, report_long_descriptions, validation_clips
    from musicgen_lora.modeling import model_info

    splits = read_metadata(data_dir, metadata_file)
    clips = validation_clips(splits)
    report_long_descriptions(processor.tokenizer, clips)
    info = model_info(model)
    sr, hop = info["sample_rate"], info["hop_length"]
    ds = MusicDataset(clips, sr, window, train=False, hop_length=hop)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False,
                                         collate_fn=Collator(processor, int(round(window * sr)), hop))
    return loader, ds


def held_out_losses(bank: "ModelBank", specs: list[ModelSpec], loader, progress=True) -> dict[str, dict]:
    """Teacher-forced loss of each model on the validation set (modeling.evaluate_loss, the trainer's function)."""
    from musicgen_lora.common import uniform_loss
    from musicgen_lora.modeling import evaluate_loss, model_info

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
    from musicgen_lora.evaluation.style_distance import encodec_embeddings

    return encodec_embeddings(model, [dataset[i]["audio"] for i in range(len(dataset))])


AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")


def score_folder(input_dir: Path, out: Path, sample_rate: int = MUSICGEN_SAMPLE_RATE) -> dict:
    """--score_only: score every audio file under input_dir (recursively) into out. The first folder
    level names the model (base_model/, best_model/, ...); a sidecar .json supplies prompt and seed.
    Unreadable files are reported and skipped."""
    from musicgen_lora.audio import load_audio
    from musicgen_lora.plotting import spectrogram_png

    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise UserError(f"{input_dir}: folder not found; pass --input_dir a folder of WAVs (e.g. an old evaluation)")
    if out.resolve() == input_dir.resolve():
        raise UserError(f"{out}: --output_dir is --input_dir; the scores need a folder of their own, e.g. "
                        f"--output_dir {input_dir.name}_scored")
    root = input_dir.resolve()
    files = sorted(p for p in input_dir.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()
                   and not p.name.startswith(".") and out.resolve() not in p.resolve().parents)
    outside = [p for p in files if root not in p.resolve().parents]  # symlinks out of the tree: not followed
    if outside:
        log.warning(f"warning: skipping {len(outside)} link(s) that point outside {input_dir} (e.g. {outside[0]})")
        files = [p for p in files if p not in outside]
    if not files:
        raise UserError(f"{input_dir}: no audio files (.wav/.flac/.mp3/.ogg) found")
    rows, audio = [], []
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with atomic_dir(out, owner=TOOL) as tmp:
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
                   "adapter_path": side.get("adapter"), "run_id": side.get("run_id"),
                   "wav": os.path.relpath(path.resolve(), out.resolve()),
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
        # Which adapter (and training run) made each model's clips, from their sidecars: credited to that run.
        extras = {}
        for row in rows:
            extras.setdefault(row["model"], {"adapter_path": row.get("adapter_path"), "run_id": row.get("run_id")})
        score_rows(tmp, rows, audio, sample_rate, summary, extras, ["--score_only: no models loaded, so no "
                                                                    "held-out loss or FAD."])
        write_results(tmp, rows, summary)
        write_manifest(tmp, TOOL, os.listdir(tmp))
    return summary


def write_results(out: Path, rows: list[dict], summary: dict):
    """comparison_results.jsonl, summary.json and report.html (used by compare and --score_only)."""
    from musicgen_lora.evaluation.report import write_report

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
