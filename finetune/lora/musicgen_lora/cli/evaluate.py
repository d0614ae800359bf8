#!/usr/bin/env python
"""Compare the base model with LoRA adapters on a fixed prompt set, side by side.

    python evaluate.py --base_model_path /path/to/musicgen-small \\
        --lora_model_path ../output_epoch1 --compare_multi \\
        --test_prompts_file ../data/eval/evaluation_prompts_8.json \\
        --output_dir ../output_epoch1/evaluation --duration 15

--compare        base vs the adapter at --lora_model_path
--compare_multi  base, best_model and final_model (from --best_model_path/--final_model_path, or found
                 in the run directory given as --lora_model_path)
--adapter N=P    add any adapter (repeatable), e.g. --adapter r16=../output_r16/best_model

The base model is loaded once and adapters are swapped on it; every model gets each prompt with the
same seed (and, on a MusicGen-Melody checkpoint, the same melody: --melody FILE, or "melody" per
prompt in the prompts file), so differences come from the weights. Every clip is scored (loudness trajectory and
fades_out, silence, spectral flatness and noisy, clipping); with --data_dir each model also gets its
held-out token loss and a style distance (FAD on EnCodec embeddings) to the validation clips.
Clips generated with a melody also get their chroma cosine to it, and an adapter's clip that follows
the melody clearly less than the base model's is flagged ignores_melody. evaluate.py ends with one
verdict line per model.

    python evaluate.py --score_only --input_dir OLD_EVALUATION --output_dir OLD_EVALUATION_scored

scores existing audio (any folder, recursively) without loading a model. Writes
OUTPUT_DIR/<model>/NN_prompt.wav (+ .json sidecar, .png spectrogram), comparison_results.jsonl
(one row per prompt x model x sample),
summary.json and report.html (open it in a browser to listen), and listen.html: the blind listening
test (each prompt's clips under letters A, B, C in a random order, rated 1-5, names revealed at the end).

    python evaluate.py --listen OUTPUT_DIR [--port 8000]   # serve listen.html; Save writes ratings/
    python evaluate.py --tally OUTPUT_DIR                   # mean rating per model, 95% intervals
"""
import sys
from pathlib import Path

from musicgen_lora.cli.args import (
    Parser,
    add_sampling_args,
    check_runtime_flags,
    number_type,
    positive_float,
    positive_int,
    sampling_settings,
    window_plan,
)
from musicgen_lora.cli.runner import cli
from musicgen_lora.core.common import UserError, log, resolve_device
from musicgen_lora.core.outputs import output_lock
from musicgen_lora.core.paths import recorded_path
from musicgen_lora.data.metadata import report_long_descriptions, validation_clips
from musicgen_lora.data.splits import is_store_folder, load_splits
from musicgen_lora.evaluation.listen_server import DEFAULT_PORT, serve
from musicgen_lora.evaluation.listening import tally_folder, tally_lines
from musicgen_lora.generation.prompts import (
    check_melody_model,
    describe_melodies,
    describe_windows,
    load_prompts,
    plan_jobs,
)
from musicgen_lora.reporting.model_card import update_evaluated_cards, update_listened_cards

TOOL = "evaluate.py"
# --port: 0 asks the system for any free port.
PORT = number_type(int, 0, 65535, words="a port number from 0 (any free port) to 65535")


def build_parser():
    p = Parser(description=__doc__)
    m = p.add_argument_group("models")
    m.add_argument("--base_model_path", default="facebook/musicgen-small", help="Local MusicGen folder or hub id.")
    m.add_argument("--lora_model_path", default=None,
                   help="An adapter folder (--compare) or a training run directory holding best_model/ and "
                        "final_model/ (--compare_multi).")
    m.add_argument("--best_model_path", default=None, help="best_model adapter (default: LORA_MODEL_PATH/best_model).")
    m.add_argument("--final_model_path", default=None,
                   help="final_model adapter (default: LORA_MODEL_PATH/final_model).")
    m.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                   help="Another adapter to compare under NAME (repeatable).")
    m.add_argument("--compare", action="store_true", help="Compare the base model with --lora_model_path.")
    m.add_argument("--compare_multi", action="store_true", help="Compare base, best_model and final_model.")

    q = p.add_argument_group("prompts and output")
    q.add_argument("--test_prompts_file", default=None,
                   help="JSON list of prompts (strings or {\"prompt\", \"id\", \"seed\", \"melody\"} objects; a "
                        "melody path is relative to the file's folder), e.g. ../data/eval/evaluation_prompts_8.json.")
    q.add_argument("--test_prompts", nargs="+", default=None, help="Prompts given on the command line.")
    q.add_argument("--melody", default=None,
                   help="Audio file whose melody (chroma) conditions every prompt that has none of its own, for "
                        "every model; MusicGen-Melody checkpoints only.")
    q.add_argument("--continuation_prompts", type=positive_int, default=None, metavar="N",
                   help="Also let every model continue the opening --prompt_seconds of N held-out clips (the "
                        "validation clips of --data_dir, or of the evaluated run), under each clip's own "
                        "description and the same seed; the report plays the real continuation beside them.")
    q.add_argument("--prompt_seconds", type=positive_float, default=5.0,
                   help="Seconds of each held-out clip that prompt its continuation (--continuation_prompts).")
    q.add_argument("--num_samples_per_prompt", type=positive_int, default=1,
                   help="Clips per prompt and model (seed, seed+1, ...).")
    q.add_argument("--output_dir", default="../output/evaluation", help="Folder for clips, results and report.")

    d = p.add_argument_group("objective numbers")
    d.add_argument("--data_dir", default=None,
                   help="Folder holding metadata.json: its validation clips give each model's held-out loss and "
                        "the style reference for FAD (default: the evaluated run's data_dir from its "
                        "run_config.json when that exists; skipped otherwise).")
    d.add_argument("--metadata_file", default="metadata.json", help="Metadata file, relative to --data_dir.")
    d.add_argument("--target_duration", type=positive_float, default=None,
                   help="Window in seconds for the held-out loss (default: the run's training window from "
                        "run_config.json, else 15).")
    d.add_argument("--clap_model_path", default=None,
                   help="Local transformers CLAP folder: adds the mean text-audio similarity of each prompt and "
                        "its clips (skipped without it).")
    d.add_argument("--score_only", action="store_true",
                   help="Score existing audio under --input_dir (recursively) instead of generating.")
    d.add_argument("--input_dir", default=None, help="Folder of clips to score with --score_only.")
    add_sampling_args(p)

    s = p.add_argument_group("listening")  # read an evaluation; no model is loaded
    s.add_argument("--listen", default=None, metavar="DIR",
                   help="Serve DIR/listen.html (an evaluation's blind listening test) on http://127.0.0.1 until "
                        "Ctrl-C; its Save button writes DIR/ratings/<listener>-<time>.json.")
    s.add_argument("--port", type=PORT, default=None,
                   help=f"Port for --listen (default: {DEFAULT_PORT}; 0: any free port).")
    s.add_argument("--tally", default=None, metavar="DIR",
                   help="Tally DIR/ratings/*.json: each model's mean rating with a 95%% interval, and which models "
                        "the ratings cannot separate; recorded in DIR/summary.json (\"listening\").")
    return p


def listening(args):
    """--listen / --tally: the blind listening test of an evaluation that already exists."""
    if args.listen and args.tally:
        raise UserError("--listen and --tally are two steps: serve the page with --listen, then count the saved "
                        "ratings with --tally")
    if args.tally:
        if args.port is not None:
            raise UserError("--port is read by --listen; drop it from --tally")
        folder = Path(args.tally)
        if not folder.is_dir():  # before the lock, which would create a lock file beside a typo
            raise UserError(f"{folder}: no such folder; pass --tally an evaluation folder (evaluate.py --output_dir)")
        with output_lock(folder, TOOL):  # summary.json is rewritten: not while an evaluation writes there
            result = tally_folder(folder)
            if result.get("summary_written"):  # the rated adapters' model cards get the tally too
                update_listened_cards(folder, result)
        print("\n".join(tally_lines(result)))
        if result.get("summary_written"):
            log.info(f"recorded in {result['summary_written']} (\"listening\")")
        return
    serve(Path(args.listen), DEFAULT_PORT if args.port is None else args.port)


def run_config_of(args):
    """(run dir, run_config dict) of the training run being evaluated, found beside the adapters;
    (None, {}) if none."""
    import json

    places = [Path(p) for p in (args.lora_model_path, args.best_model_path, args.final_model_path) if p]
    for cfg in [c for p in places for c in (p / "run_config.json", p.parent / "run_config.json")]:
        if cfg.is_file():
            try:
                return cfg.parent, json.loads(cfg.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                log.warning(f"warning: {cfg}: unreadable run_config.json, ignored")
    return None, {}


def training_window(args) -> float:
    if args.target_duration:
        return args.target_duration
    run_dir, run = run_config_of(args)
    if run.get("window_seconds"):
        log.info(f"held-out loss on {run['window_seconds']:g} s windows (the training window in "
                 f"{run_dir / 'run_config.json'})")
        return float(run["window_seconds"])
    return 15.0


def default_data(args) -> tuple[str | None, str, str | None]:
    """(data_dir, metadata_file, note): without --data_dir, the evaluated run's own validation set
    (run_config.json) gives the held-out numbers; a recorded folder that is gone is said, not skipped."""
    run_dir, run = run_config_of(args)
    if not run.get("data_dir"):
        return None, args.metadata_file, None
    data_dir, meta = recorded_path(run_dir, run, "data_dir"), run.get("metadata_file", "metadata.json")
    if data_dir is not None and ((data_dir / meta).is_file() or is_store_folder(data_dir, meta)):
        log.info(f"held-out loss and FAD on the run's validation set: {data_dir} (from "
                 f"{run_dir / 'run_config.json'}; --data_dir overrides)")
        return str(data_dir), meta, None
    shown = data_dir / meta if data_dir is not None else run["data_dir"]
    return None, args.metadata_file, (f"held-out loss and FAD skipped: the run's data ({shown}, from "
                                      f"{run_dir / 'run_config.json'}) is not there; pass --data_dir")


def print_verdicts(summary):
    for m in summary["models"].values():
        print(m["verdict"])


def check_args(args):
    if args.score_only and not args.input_dir:
        raise UserError("--score_only needs --input_dir (the folder of clips to score)")
    if args.input_dir and not args.score_only:
        raise UserError("--input_dir is read by --score_only; pass both (or neither)")
    if args.score_only and args.continuation_prompts:
        raise UserError("--continuation_prompts generates continuations, and --score_only generates nothing; drop "
                        "--continuation_prompts")
    if args.score_only and args.melody:
        raise UserError("--melody conditions generation, and --score_only generates nothing (it reads each clip's "
                        "melody from its sidecar); drop --melody")
    check_runtime_flags(args)


@cli
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.listen or args.tally:
        return listening(args)
    if args.port is not None:
        raise UserError("--port is read by --listen (serving an evaluation's blind page); pass --listen DIR too")
    check_args(args)

    out = Path(args.output_dir)
    with output_lock(out, TOOL):  # one evaluation at a time per folder
        return evaluate(args, out)


def evaluate(args, out: Path):
    from musicgen_lora.evaluation.compare import (
        ModelBank,
        check_output_dir,
        compare_models,
        continuation_prompts,
        held_out_losses,
        reference_embeddings,
        resolve_models,
        validation_loader,
    )
    from musicgen_lora.evaluation.scoring import score_folder
    from musicgen_lora.generation.generate import check_duration, clip_windows, read_melodies, resolve_generation
    from musicgen_lora.model.checkpoint import is_melody, load_model_and_processor, model_info

    check_output_dir(out, args.overwrite)
    if args.score_only:
        summary = score_folder(Path(args.input_dir), out)
        log.info(f"scored {sum(m['num_clips'] for m in summary['models'].values())} clip(s) into {out}")
        if summary.get("unreadable"):
            log.warning(f"warning: {len(summary['unreadable'])} unreadable file(s) skipped (listed in summary.json)")
        print_verdicts(summary)
        return

    specs = resolve_models(args.lora_model_path, args.best_model_path, args.final_model_path, args.adapter,
                           compare=args.compare, compare_multi=args.compare_multi)
    text_given = args.test_prompts_file or args.test_prompts or not args.continuation_prompts
    prompts = load_prompts(args.test_prompts_file, args.test_prompts, args.melody) if text_given else []
    settings = sampling_settings(args)
    notes, numbers, reference = [], {}, None
    data_dir, metadata_file = args.data_dir, args.metadata_file
    if not data_dir:
        data_dir, metadata_file, note = default_data(args)
        if note:
            notes.append(note)
    if args.continuation_prompts:
        if not data_dir:
            raise UserError("--continuation_prompts continues held-out clips: pass --data_dir (the folder holding "
                            "metadata.json), or evaluate a run whose run_config.json names its data")
        continued = continuation_prompts(validation_clips(load_splits(data_dir, metadata_file)),
                                         args.continuation_prompts, {p.id for p in prompts})
        log.info(f"continuations: every model continues the first {args.prompt_seconds:g} s of "
                 f"{', '.join(Path(p.audio_prompt).name for p in continued)} (held out) to {args.duration:g} s; the "
                 f"real continuation plays beside them (references/)")
        prompts += continued
    jobs = plan_jobs(prompts, args.num_samples_per_prompt, args.seed)
    clap = None
    if args.clap_model_path:
        from musicgen_lora.evaluation.clap import ClapScorer

        clap = ClapScorer(args.clap_model_path)

    device = resolve_device(args.device)
    dtype, precision = resolve_generation(args.precision, device)
    model, processor = load_model_and_processor(args.base_model_path, device=device, dtype=dtype,
                                                flag="--base_model_path")
    plan = window_plan(args)
    check_duration(model, args.duration, plan, args.prompt_seconds if args.continuation_prompts else 0.0)
    if len(windows := clip_windows(model, args.duration, plan)) > 1:
        log.info(describe_windows(windows))
    check_melody_model(prompts, is_melody(model), args.base_model_path, "--base_model_path", args.melody,
                       args.test_prompts_file)
    melodies = read_melodies(jobs, model_info(model)["sample_rate"])  # a bad file fails before any work
    if line := describe_melodies(prompts, is_melody(model)):
        log.info(line)
    report_long_descriptions(processor.tokenizer, [(f"prompt {p.id}", p.text) for p in prompts])
    bank = ModelBank(model, specs)
    if data_dir:
        loader, valid = validation_loader(processor, model, data_dir, metadata_file, training_window(args),
                                          args.batch_size, run_config_of(args)[1].get("max_valid_clips"))
        numbers = held_out_losses(bank, specs, loader, progress=not args.no_progress)
        reference = reference_embeddings(model, valid)
    elif not notes:
        notes.append("held-out loss and FAD skipped: pass --data_dir (the folder holding metadata.json).")
    if clap is None:
        notes.append("CLAP similarity skipped: pass --clap_model_path (a local transformers CLAP folder).")
    for note in notes:
        log.info(f"note: {note}")
    log.info(f"comparing {', '.join(s.name for s in specs)} on {len(prompts)} prompt(s) x "
             f"{args.num_samples_per_prompt} sample(s)")
    summary = compare_models(bank, processor, specs, jobs, out, duration=args.duration, settings=settings,
                             batch_size=args.batch_size, wav_subtype=args.wav_subtype,
                             progress=not args.no_progress, base_model_path=args.base_model_path,
                             model_numbers=numbers, notes=notes, reference=reference, clap=clap,
                             melodies=melodies, plan=plan, prompt_seconds=args.prompt_seconds, precision=precision)
    update_evaluated_cards(specs, summary, out)  # each train_lora.py adapter's README.md gets its verdict
    log.info(f"wrote {len(jobs) * len(specs)} clips, comparison_results.jsonl, summary.json and "
             f"{out / 'report.html'}")
    print_verdicts(summary)


if __name__ == "__main__":
    sys.exit(main())
