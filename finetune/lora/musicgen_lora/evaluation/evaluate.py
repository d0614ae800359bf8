"""evaluate.py's job as a library call: `evaluate(EvaluateConfig)` compares the base model and
adapters on one prompt set (or scores existing clips, with score_only) into cfg.output_dir and
returns its summary.json. Adding the verdicts to the adapters' model cards is the command's (cli),
so this layer never imports reporting."""
from __future__ import annotations

from pathlib import Path

from musicgen_lora.core.common import UserError, log, parse_json, resolve_device
from musicgen_lora.core.outputs import output_lock
from musicgen_lora.core.paths import recorded_path
from musicgen_lora.data.metadata import report_long_descriptions, validation_clips
from musicgen_lora.data.splits import DEFAULT_VALID_RATIO, is_store_folder, load_splits
from musicgen_lora.evaluation.config import TOOL, EvaluateConfig
from musicgen_lora.generation.prompts import (
    check_melody_model,
    describe_melodies,
    describe_windows,
    load_prompts,
    plan_jobs,
)


def evaluate(cfg: EvaluateConfig) -> dict:
    """Generate and score (or, with cfg.score_only, score), holding the output folder's lock; returns
    summary.json. cfg is checked first."""
    cfg.check()
    out = Path(cfg.output_dir)
    with output_lock(out, TOOL):  # one evaluation at a time per folder
        return score_only(cfg, out) if cfg.score_only else _compare(cfg, out)


def score_only(cfg: EvaluateConfig, out: Path) -> dict:
    from musicgen_lora.evaluation.compare import check_output_dir
    from musicgen_lora.evaluation.scoring import score_folder

    check_output_dir(out, cfg.overwrite)
    summary = score_folder(Path(cfg.input_dir), out)
    log.info(f"scored {sum(m['num_clips'] for m in summary['models'].values())} clip(s) into {out}")
    if summary.get("unreadable"):
        log.warning(f"warning: {len(summary['unreadable'])} unreadable file(s) skipped (listed in summary.json)")
    return summary


def run_config_of(cfg: EvaluateConfig):
    """(run dir, run_config dict) of the training run being evaluated, found beside the adapters;
    (None, {}) if none."""
    places = [Path(p) for p in (cfg.lora_model_path, cfg.best_model_path, cfg.final_model_path) if p]
    for found in [c for p in places for c in (p / "run_config.json", p.parent / "run_config.json")]:
        if found.is_file():
            try:
                return found.parent, parse_json(found.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                log.warning(f"warning: {found}: unreadable run_config.json, ignored")
    return None, {}


def training_window(cfg: EvaluateConfig) -> float:
    if cfg.target_duration:
        return cfg.target_duration
    run_dir, run = run_config_of(cfg)
    if run.get("window_seconds"):
        log.info(f"held-out loss on {run['window_seconds']:g} s windows (the training window in "
                 f"{run_dir / 'run_config.json'})")
        return float(run["window_seconds"])
    return 15.0


def default_data(cfg: EvaluateConfig) -> tuple[str | None, str, str | None]:
    """(data_dir, metadata_file, note): without --data_dir, the evaluated run's own validation set
    (run_config.json) gives the held-out numbers; a recorded folder that is gone is said, not skipped."""
    run_dir, run = run_config_of(cfg)
    if not run.get("data_dir"):
        return None, cfg.metadata_file, None
    data_dir, meta = recorded_path(run_dir, run, "data_dir"), run.get("metadata_file", "metadata.json")
    if data_dir is not None and ((data_dir / meta).is_file() or is_store_folder(data_dir, meta)):
        log.info(f"held-out loss and FAD on the run's validation set: {data_dir} (from "
                 f"{run_dir / 'run_config.json'}; --data_dir overrides)")
        return str(data_dir), meta, None
    shown = data_dir / meta if data_dir is not None else run["data_dir"]
    return None, cfg.metadata_file, (f"held-out loss and FAD skipped: the run's data ({shown}, from "
                                     f"{run_dir / 'run_config.json'}) is not there; pass --data_dir")


def _prompts(cfg: EvaluateConfig, data_dir, metadata_file):
    from musicgen_lora.evaluation.compare import continuation_prompts

    text_given = cfg.prompts_file or cfg.prompts or not cfg.continuation_prompts
    prompts = load_prompts(cfg.prompts_file, cfg.prompts, cfg.melody) if text_given else []
    if cfg.continuation_prompts:
        if not data_dir:
            raise UserError("--continuation_prompts continues held-out clips: pass --data_dir (the folder holding "
                            "metadata.json), or evaluate a run whose run_config.json names its data")
        valid_ratio = run_config_of(cfg)[1].get("valid_ratio", DEFAULT_VALID_RATIO)
        continued = continuation_prompts(validation_clips(load_splits(data_dir, metadata_file,
                                                                      valid_ratio=valid_ratio)),
                                         cfg.continuation_prompts, {p.id for p in prompts})
        log.info(f"continuations: every model continues the first {cfg.prompt_seconds:g} s of "
                 f"{', '.join(Path(p.audio_prompt).name for p in continued)} (held out) to {cfg.duration:g} s; the "
                 f"real continuation plays beside them (references/)")
        prompts += continued
    return prompts


def _compare(cfg: EvaluateConfig, out: Path) -> dict:
    from musicgen_lora.evaluation.compare import (
        Comparison,
        ModelBank,
        check_output_dir,
        compare_models,
        held_out_losses,
        reference_embeddings,
        refuse_running_runs,
        resolve_models,
        validation_loader,
    )
    from musicgen_lora.generation.generate import check_duration, clip_windows, read_melodies, resolve_generation
    from musicgen_lora.model.checkpoint import is_melody, load_model_and_processor, model_info

    check_output_dir(out, cfg.overwrite)
    specs = resolve_models(cfg.lora_model_path, cfg.best_model_path, cfg.final_model_path, cfg.adapter,
                           compare=cfg.compare, compare_multi=cfg.compare_multi, scales=cfg.scales, mixes=cfg.mix)
    refuse_running_runs(specs)
    given = Comparison(base_model_path=cfg.model_path, wav_subtype=cfg.wav_subtype, prompt_seconds=cfg.prompt_seconds)
    data_dir, metadata_file = cfg.data_dir, cfg.metadata_file
    if not data_dir:
        data_dir, metadata_file, note = default_data(cfg)
        if note:
            given.notes.append(note)
    prompts = _prompts(cfg, data_dir, metadata_file)
    jobs = plan_jobs(prompts, cfg.num_samples, cfg.seed)
    if cfg.clap_model_path:
        from musicgen_lora.evaluation.clap import ClapScorer

        given.clap = ClapScorer(cfg.clap_model_path)

    device = resolve_device(cfg.device)
    dtype, precision = resolve_generation(cfg.precision, device)
    model, processor = load_model_and_processor(cfg.model_path, device=device, dtype=dtype, flag="--model_path")
    how = cfg.generation(precision)
    check_duration(model, cfg.duration, how.plan, cfg.prompt_seconds if cfg.continuation_prompts else 0.0)
    if len(windows := clip_windows(model, cfg.duration, how.plan)) > 1:
        log.info(describe_windows(windows))
    check_melody_model(prompts, is_melody(model), cfg.model_path, "--model_path", cfg.melody, cfg.prompts_file)
    given.melodies = read_melodies(jobs, model_info(model)["sample_rate"])  # a bad file fails before any work
    if line := describe_melodies(prompts, is_melody(model)):
        log.info(line)
    report_long_descriptions(processor.tokenizer, [(f"prompt {p.id}", p.text) for p in prompts])
    bank = ModelBank(model, specs)
    if data_dir:
        run = run_config_of(cfg)[1]
        loader, valid = validation_loader(processor, model, data_dir, metadata_file, training_window(cfg),
                                          cfg.batch_size, run.get("max_valid_clips"),
                                          run.get("valid_ratio", DEFAULT_VALID_RATIO))
        given.model_numbers = held_out_losses(bank, specs, loader, progress=not cfg.no_progress)
        given.reference = reference_embeddings(model, valid)
    elif not given.notes:
        given.notes.append("held-out loss and FAD skipped: pass --data_dir (the folder holding metadata.json).")
    if given.clap is None:
        given.notes.append("CLAP similarity skipped: pass --clap_model_path (a local transformers CLAP folder).")
    for note in given.notes:
        log.info(f"note: {note}")
    log.info(f"comparing {', '.join(s.name for s in specs)} on {len(prompts)} prompt(s) x {cfg.num_samples} "
             f"sample(s)")
    summary = compare_models(bank, processor, specs, jobs, out, how, given, progress=not cfg.no_progress)
    log.info(f"wrote {len(jobs) * len(specs)} clips, comparison_results.jsonl, summary.json and "
             f"{out / 'report.html'}")
    return summary
