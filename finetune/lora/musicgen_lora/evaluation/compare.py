"""Side-by-side evaluation: which models to compare, one base with adapters swapped on it, the
generation loop writing every model's clips, and each model's held-out loss. Scoring the clips and
writing the results is scoring.py's.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from musicgen_lora.core.common import UserError, log, uniform_loss
from musicgen_lora.core.outputs import atomic_dir, check_own_folder, lock_holder, write_manifest
from musicgen_lora.core.threads import run_threads
from musicgen_lora.data.dataset import Collator, MusicDataset
from musicgen_lora.data.metadata import report_long_descriptions, validation_clips
from musicgen_lora.data.splits import DEFAULT_VALID_RATIO, load_splits
from musicgen_lora.evaluation.config import TOOL
from musicgen_lora.evaluation.figures import spectrogram_png
from musicgen_lora.evaluation.scoring import BASE, score_rows, time_marks, write_results
from musicgen_lora.evaluation.style_distance import encodec_embeddings, frechet_distance
from musicgen_lora.generation.generate import (
    clip_windows,
    generate_jobs,
    job_chroma,
    read_melodies,
    write_clip,
    write_wav,
)
from musicgen_lora.generation.prompts import Job, Prompt, clip_filename, describe_settings, slugify
from musicgen_lora.generation.sampling import GenerationSettings
from musicgen_lora.model.checkpoint import model_info
from musicgen_lora.model.lora import (
    adapter_run_id,
    adapter_step,
    check_adapter_dir,
    check_same_layout,
    load_adapter,
    set_strengths,
)
from musicgen_lora.model.loss import evaluate_loss


@dataclass
class ModelSpec:
    name: str  # folder name in the output dir and label in the report
    adapter_path: Path | None  # None: the base model
    run_id: str | None = None  # the training run the adapter came from (None: base, or unknown)
    scale: float | None = None  # its strength (--lora_scale/--lora_scales); None: 1, as trained
    adapter: str | None = None  # the PEFT adapter name it runs (default: name; strengths of one adapter share one)
    mix: tuple = ()  # a weighted mix (--mix): ((folder, weight), ...), adapter_path None; no run is credited

    @property
    def adapter_name(self) -> str:
        return self.adapter or self.name

    @property
    def is_base(self) -> bool:
        return self.adapter_path is None and not self.mix

    @property
    def folders(self) -> list[Path]:
        """The adapter folders it runs: a mix's, one, or none (base)."""
        if self.mix:
            return [Path(p) for p, _ in self.mix]
        return [] if self.adapter_path is None else [Path(self.adapter_path)]

    @property
    def strength(self) -> float | None:
        """The recorded strength: None for the base model and for a mix (its weights say it), 1.0 for an
        adapter as trained."""
        return None if self.adapter_path is None else (1.0 if self.scale is None else self.scale)

    def record(self) -> dict:
        """What results and sidecars say of the model: its adapter, or its mix (each folder, its strength
        and run, as inference_lora.py's sidecars list a mix's "adapters"), and its strength."""
        return {"adapter_path": str(self.adapter_path) if self.adapter_path else None,
                "mix": [{"path": str(p), "strength": w, "run_id": adapter_run_id(Path(p))} for p, w in self.mix]
                or None, "lora_scale": self.strength}


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


def refuse_running_runs(specs: list[ModelSpec]):
    """An adapter of a run that is still training changes under the evaluation (best_model/ is replaced
    at every better validation): its verdict would describe no adapter that exists, and it would go
    into the model card. Refused, naming the trainer; a copy of the adapter can be evaluated now."""
    for folder in (folder for spec in specs for folder in spec.folders):
        run_dir = folder.parent
        holder = lock_holder(run_dir) if (run_dir / "run_config.json").is_file() else None
        if holder is not None and holder.get("tool") == "train_lora.py":
            raise UserError(f"{run_dir}: still training (train_lora.py, pid {holder.get('pid', '?')}, since "
                            f"{holder.get('started', '?')}); its {folder.name}/ changes while it "
                            f"runs: evaluate when the run has finished, or evaluate a copy now (cp -r "
                            f"{folder} /tmp/{folder.name}_now and pass that)")


def at_strengths(models: list[ModelSpec], scales) -> list[ModelSpec]:
    """Each adapter of `models` once per strength in `scales`, as its own model NAME@S (one PEFT
    adapter, loaded once, run at each strength), so the blind page, the tally, the flags and the
    held-out loss rank the strengths side by side; a mix at S has every weight times S (as
    inference_lora.py's --lora_scale with a mix). No scales: `models` as they are."""
    if not scales:
        return models
    if all(spec.is_base for spec in models):
        raise UserError("--lora_scale/--lora_scales set an adapter's strength: pass the adapter too (--compare "
                        "--lora_model_path ADAPTER, --compare_multi, or --adapter NAME=PATH)")

    def at(spec: ModelSpec, s: float) -> ModelSpec:
        if spec.mix:
            return ModelSpec(f"{spec.name}@{s:g}", None, mix=tuple((p, w * float(s)) for p, w in spec.mix))
        return ModelSpec(f"{spec.name}@{s:g}", spec.adapter_path, spec.run_id, scale=float(s), adapter=spec.name)

    return [m for spec in models for m in ([spec] if spec.is_base else [at(spec, s) for s in scales])]


def mix_spec(value: str) -> ModelSpec:
    """--mix NAME=FOLDER:WEIGHT,FOLDER:WEIGHT[,...]: the adapters' weighted updates added, as
    inference_lora.py mixes them (model.lora.set_strengths)."""
    from musicgen_lora.generation.config import weighted_paths

    name, _, parts = value.partition("=")
    example = "--mix jazzy-lofi=jazz/best_model:0.7,lofi/best_model:0.3"
    if not name or not parts:
        raise UserError(f"--mix {value}: use NAME=FOLDER:WEIGHT,FOLDER:WEIGHT, e.g. {example}")
    if slugify(name, 60) != name.lower():
        raise UserError(f"--mix {value}: NAME must be letters, digits and dashes (it names a folder)")
    weighted = weighted_paths([p for p in parts.split(",") if p], flag=f"--mix {name}=")
    if len(weighted) < 2:
        raise UserError(f"--mix {value}: a mix names two adapters or more, e.g. {example}; one adapter at a "
                        f"strength is --adapter NAME=PATH with --lora_scale")
    folders = [check_adapter_dir(p) for p, _ in weighted]
    if len({f.resolve() for f in folders}) < len(folders):
        raise UserError(f"--mix {value}: names one adapter twice; give it one weight")
    check_same_layout(folders, f"--mix {name}")
    return ModelSpec(name, None, mix=tuple((f, w) for f, (_, w) in zip(folders, weighted)))


def resolve_models(lora_model_path=None, best_model_path=None, final_model_path=None, adapters=(),
                   compare: bool = False, compare_multi: bool = False, scales=(), mixes=()) -> list[ModelSpec]:
    """base_model first, then the adapters evaluate.py's flags name, each with a unique folder name.

    compare_multi: the run dir at lora_model_path (its best_model/ and final_model/), or the two
    adapter paths; compare (or a lone lora_model_path): that one adapter as lora_model; adapters:
    "NAME=PATH" strings, added under NAME; mixes: "NAME=FOLDER:W,FOLDER:W" strings (mix_spec). scales:
    each adapter and mix at each strength (at_strengths).
    """
    models = [ModelSpec(BASE, None)]
    run_dir = Path(lora_model_path) if lora_model_path else None
    if compare_multi:
        if best_model_path or final_model_path:
            models += [adapter_spec(name, path) for name, path in (("best_model", best_model_path),
                                                                   ("final_model", final_model_path)) if path]
        elif run_dir is not None:
            models += run_adapters(run_dir)
        else:
            raise UserError("--compare_multi needs the run directory as --lora_model_path (holding best_model/ and "
                            "final_model/) or --best_model_path/--final_model_path")
    elif compare or run_dir is not None:
        if run_dir is None:
            raise UserError("--compare needs --lora_model_path (the adapter to compare with the base model)")
        models.append(adapter_spec("lora_model", run_dir))
    else:
        models += [adapter_spec(name, path) for name, path in (("best_model", best_model_path),
                                                               ("final_model", final_model_path)) if path]
    for spec in adapters:
        if "=" not in spec:
            raise UserError(f"--adapter {spec}: use NAME=PATH, e.g. --adapter rank16=../output_r16/best_model")
        name, path = spec.split("=", 1)
        if slugify(name, 60) != name.lower() or not name:
            raise UserError(f"--adapter {spec}: NAME must be letters, digits and dashes (it names a folder)")
        models.append(adapter_spec(name, path))
    models += [mix_spec(value) for value in mixes]
    models = at_strengths(models, scales)
    names = [m.name for m in models]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise UserError(f"model name {sorted(dup)[0]!r} is used twice; give each --adapter a unique NAME")
    return models


class ModelBank:
    """The base model loaded once; every adapter is attached to it under its own name and switched on
    for its turn at the spec's strength (set_strengths: PEFT's set_adapter and per-adapter scaling),
    a mix's adapters together at their weights; the base model runs with adapters disabled. Loading
    all adapters up front means an adapter that does not fit fails before any generation time is
    spent; strengths of one adapter share it, and a mix reuses an adapter compared on its own."""

    def __init__(self, base_model, specs: list[ModelSpec]):
        self.model = base_model
        self.peft = None
        self.names: dict[Path, str] = {}  # adapter folder (resolved) -> its PEFT adapter name
        wanted = [(spec.adapter_path, spec.adapter_name) for spec in specs if spec.adapter_path is not None]
        # a mix's own adapters: named after it, less what PEFT refuses in a name ("." of "mix@0.5")
        wanted += [(folder, re.sub(r"[^A-Za-z0-9_-]", "_", f"{spec.name}__{i}")) for spec in specs
                   for i, folder in enumerate(spec.folders) if spec.mix]
        for folder, name in wanted:
            if Path(folder).resolve() in self.names:
                continue
            while name in self.names.values():  # a user's NAME may look like a mix part's
                name += "_"
            self.peft = load_adapter(base_model, folder, adapter_name=name, into=self.peft)
            self.names[Path(folder).resolve()] = name
        if self.peft is not None:
            self.peft.eval()

    def strengths(self, spec: ModelSpec) -> dict[str, float]:
        """{PEFT adapter name: strength} that run `spec`."""
        if spec.mix:
            return {self.names[Path(p).resolve()]: w for p, w in spec.mix}
        return {self.names[Path(spec.adapter_path).resolve()]: spec.strength}

    @contextlib.contextmanager
    def use(self, spec: ModelSpec):
        if self.peft is None:
            yield self.model
        elif spec.is_base:
            with self.peft.disable_adapter():
                yield self.peft
        else:
            set_strengths(self.peft, self.strengths(spec))
            yield self.peft


def training_runs(specs: list[ModelSpec], folder: Path) -> list[dict]:
    """The training runs the adapters came from. Their training curves and review are copied into
    `folder` (training/<run>/), so the report links to them and still works when moved or zipped."""
    runs, seen = [], set()
    for adapter in (adapter for spec in specs for adapter in spec.folders):
        run_dir = next((d for d in (adapter.parent, adapter.parent.parent)
                        if (d / "run_config.json").is_file()), None)
        if run_dir is None or run_dir.resolve() in seen:
            continue
        seen.add(run_dir.resolve())
        name = slugify(run_dir.resolve().name, 60)
        entry = {"name": run_dir.resolve().name, "run_dir": str(run_dir.resolve()), "run_id": adapter_run_id(adapter)}
        for key, file in (("curves", "training_curves.png"), ("review", "review.txt")):
            if (run_dir / "logs" / file).is_file():
                rel = f"training/{name}/{file}"
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(run_dir / "logs" / file, folder / rel)
                entry[key] = rel
        runs.append(entry)
    return runs


def reference_melodies(melodies: dict[str, np.ndarray], folder: Path, sr: int, wav_subtype: str) -> dict[str, str]:
    """Write each reference melody as the model heard it (its mono mix at the model's rate) into
    `folder`/melodies/, so the report plays it beside the clips and still works when moved or zipped;
    {source path: path relative to `folder`}."""
    names, out = set(), {}
    for source, wav in melodies.items():
        stem = name = slugify(Path(source).stem, 40)
        n = 1
        while name in names:  # two files of one name from different folders
            n += 1
            name = f"{stem}-{n}"
        names.add(name)
        out[source] = f"melodies/{name}.wav"
        write_wav(folder / out[source], wav, sr, wav_subtype)
    return out


def reference_continuations(jobs: list[Job], folder: Path, info: dict, duration: float,
                            wav_subtype: str) -> dict[str, str]:
    """The real music each audio-prompted job's models continue: the first `duration` seconds of its
    file (or all of it, when shorter) at the model's rate and channels, written to `folder`/references/
    for the report and the blind page; {source path: path relative to `folder`}."""
    from musicgen_lora.audio.reader import AudioPieces, piece_samples

    out, names = {}, set()
    for source in dict.fromkeys(j.prompt.audio_prompt for j in jobs if j.prompt.audio_prompt):
        pieces = AudioPieces(source, info["sample_rate"], piece_samples(info["sample_rate"], info["hop_length"]),
                             info["audio_channels"])
        wav = pieces.read_range(0, int(round(duration * info["sample_rate"])))  # (channels, n)
        stem = name = slugify(Path(source).stem, 40)
        n = 1
        while name in names:
            n += 1
            name = f"{stem}-{n}"
        names.add(name)
        out[source] = f"references/{name}.wav"
        write_wav(folder / out[source], wav[0] if wav.shape[0] == 1 else wav.T, info["sample_rate"], wav_subtype)
    return out


def continuation_prompts(clips, count: int, taken: set[str] = frozenset()) -> list[Prompt]:
    """--continuation_prompts: the first `count` held-out clips as prompts whose models continue the
    clip's opening seconds under its own description (Prompt.audio_prompt); ids continue_NN_<file>."""
    if not clips:
        raise UserError("--continuation_prompts: the data has no validation clips to continue; add some (a "
                        "\"valid\" split in metadata.json) or drop the flag")
    if len(clips) < count:
        log.warning(f"warning: --continuation_prompts {count}: only {len(clips)} validation clip(s); continuing "
                    f"all of them")
    out = []
    for i, clip in enumerate(clips[:count]):
        pid = f"continue_{i:02d}_{slugify(clip.audio_path.stem, 30)}"
        while pid in taken:
            pid += "_c"
        out.append(Prompt(pid, clip.description, audio_prompt=str(clip.audio_path)))
    return out


def check_output_dir(out: Path, overwrite: bool):
    """An evaluation folder is evaluate.py's whole: refuse anything it did not write (outputs.check_own_folder)."""
    check_own_folder(out, TOOL, overwrite=overwrite, flag="--output_dir", what="an earlier evaluation")


@dataclass
class Comparison:
    """What compare_models needs besides the models, jobs and generation settings: numbers computed
    before (per-model held-out loss, the style reference), notes for the summary, an optional CLAP
    scorer, the jobs' melodies when already read, and how clips are written."""
    base_model_path: str = ""
    wav_subtype: str = "PCM_16"
    prompt_seconds: float = 0.0          # audio-prompted jobs continue this much of their file
    model_numbers: dict = field(default_factory=dict)  # per model: held-out loss (held_out_losses)
    notes: list = field(default_factory=list)
    reference: np.ndarray | None = None  # EnCodec frames of validation clips, for the style distance
    clap: object = None                  # a ClapScorer, or None
    melodies: dict | None = None         # the jobs' read_melodies, when the caller read them already


def compare_models(bank: ModelBank, processor, specs: list[ModelSpec], jobs: list[Job], out: Path,
                   how: GenerationSettings, given: Comparison | None = None, progress: bool = True) -> dict:
    """Generate every job with every model into `out` (written atomically), score every clip, and
    return summary.json.

    Every model gets the same jobs with the same seeds in the same batches -- and the same melody,
    for jobs that have one -- so clips differ only by the weights. how: the generation settings
    (how.precision, the decoder's precision, is recorded with the CPU threads in every sidecar and
    the summary's settings: a clip is reproducible at both). Jobs with an audio_prompt continue its
    first given.prompt_seconds, and the real continuation is written beside them (references/).
    """
    given = given or Comparison()
    duration, plan, wav_subtype, melodies = how.duration, how.plan, given.wav_subtype, given.melodies
    sr = model_info(bank.model)["sample_rate"]
    if melodies is None:
        melodies = read_melodies(jobs, sr)  # read once for every model, before anything is generated
    chroma = job_chroma(jobs, melodies, sr)
    many = any(j.sample > 0 for j in jobs)
    rows, audio_by_row = [], []
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    setting_dict = {**how.to_dict(), **run_threads()}
    windows = {False: clip_windows(bank.model, duration, plan)}
    if any(j.prompt.audio_prompt for j in jobs):  # continuations: their first window starts from the prompt
        windows[True] = clip_windows(bank.model, duration, plan, given.prompt_seconds)
    fad = {}
    with atomic_dir(out, owner=TOOL) as tmp:
        melody_rel = reference_melodies(melodies, tmp, sr, wav_subtype)
        real_rel = reference_continuations(jobs, tmp, model_info(bank.model), duration, wav_subtype)
        for spec in specs:
            log.info(f"{spec.name}: {len(jobs)} clip(s), {describe_settings(how)}")
            with bank.use(spec) as m:
                audio, per_clip = generate_jobs(m, processor, jobs, how, chroma=chroma,
                                                prompt_seconds=given.prompt_seconds, progress=progress, desc=spec.name)
                if given.reference is not None:
                    fad[spec.name] = frechet_distance(encodec_embeddings(m, audio), given.reference)
            for job, wav in zip(jobs, audio):
                name = clip_filename(job.prompt, job.sample if many else None)
                rel = f"{spec.name}/{name}.wav"
                melody = melody_rel.get(job.prompt.melody)  # the copy in this folder, or None
                # Where each window's new audio starts (the report marks them, scoring flags each), and
                # for a continuation, the file it continues and the real music that follows.
                continued = {"windows": windows[bool(job.prompt.audio_prompt)]}
                if job.prompt.audio_prompt:
                    continued.update({"audio_prompt": job.prompt.audio_prompt, "prompt_seconds": given.prompt_seconds,
                                      "reference_audio": real_rel[job.prompt.audio_prompt]})
                sidecar = {"prompt": job.prompt.text, "prompt_id": job.prompt.id, "model": spec.name,
                           "base_model": given.base_model_path, "adapter": spec.record()["adapter_path"],
                           "mix": spec.record()["mix"], "run_id": spec.run_id, "lora_scale": spec.strength,
                           "sample": job.sample, "seed": job.seed, "melody": job.prompt.melody,
                           "melody_copy": f"../{melody}" if melody else None,  # relative to the sidecar
                           **setting_dict, **{k: v for k, v in continued.items() if k != "reference_audio"},
                           "reference_copy": f"../{continued['reference_audio']}" if job.prompt.audio_prompt else None,
                           "sample_rate": sr,
                           "wav_subtype": wav_subtype, "wall_seconds": per_clip, "created": created}
                write_clip(tmp / rel, wav, sr, sidecar, wav_subtype)
                spectrogram_png(wav, sr, tmp / spec.name / f"{name}.png", **time_marks({**continued, **sidecar}))
                rows.append({"prompt_id": job.prompt.id, "prompt": job.prompt.text, "model": spec.name,
                             **spec.record(), "wav": rel, "spectrogram": f"{spec.name}/{name}.png",
                             "seed": job.seed,
                             "sample": job.sample, "melody": melody, "melody_source": job.prompt.melody,
                             **continued, "settings": setting_dict, "sample_rate": sr,
                             "duration_s": len(wav) / sr, "wall_seconds": per_clip})
                audio_by_row.append(wav)
        run_ids = sorted({s.run_id for s in specs if s.run_id})
        summary = {"created": created, "base_model": given.base_model_path, "settings": setting_dict,
                   "num_prompts": len({j.prompt.id for j in jobs}), "clips_per_model": len(jobs), "run_ids": run_ids,
                   "training_runs": training_runs(specs, tmp)}
        extras = {s.name: {**s.record(), "run_id": s.run_id,
                           "adapter_step": adapter_step(s.adapter_path) if s.adapter_path else None,
                           **given.model_numbers.get(s.name, {}), "fad": fad.get(s.name)} for s in specs}
        score_rows(tmp, rows, audio_by_row, sr, summary, extras, given.notes, given.clap,
                   melodies={rel: melodies[source] for source, rel in melody_rel.items()})
        write_results(tmp, rows, summary)
        write_manifest(tmp, TOOL, os.listdir(tmp), run_ids=run_ids)
    return summary


def validation_loader(processor, model, data_dir, metadata_file, window: float, batch_size: int,
                      max_valid_clips: int | None = None, valid_ratio: float = DEFAULT_VALID_RATIO):
    """The trainer's validation set and collation (same clips, crops and labels as step 0; on a
    MusicGen-Melody model, each window's own chroma as the trainer's validation uses it). valid_ratio:
    the run's (run_config.json), which chose the held-out tracks of data without a valid split."""
    import torch

    splits = load_splits(data_dir, metadata_file, valid_ratio=valid_ratio)
    if "store" in splits and (not splits["valid"] or "held_out" in splits):
        raise UserError(f"{data_dir}: its code store keeps no validation audio (prepared with --valid_ratio 0); "
                        f"held-out loss and FAD need some: prepare with --valid_ratio, or drop --data_dir")
    clips = validation_clips(splits, max_valid_clips)
    report_long_descriptions(processor.tokenizer, clips)
    info = model_info(model)
    sr, hop = info["sample_rate"], info["hop_length"]
    ds = MusicDataset(clips, sr, window, train=False, hop_length=hop, audio_channels=info["audio_channels"],
                      chroma=info["chroma_length"] is not None)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False,
                                         collate_fn=Collator(processor, int(round(window * sr)), hop,
                                                             chroma_length=info["chroma_length"]))
    return loader, ds


def held_out_losses(bank: ModelBank, specs: list[ModelSpec], loader, progress=True) -> dict[str, dict]:
    """Teacher-forced loss of each model on the validation set (model.loss.evaluate_loss, the trainer's function)."""
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
    # dataset items hold (channels, samples); embeddings take clips as generated: (samples, channels)
    return encodec_embeddings(model, [dataset[i]["audio"].T for i in range(len(dataset))])


