#!/usr/bin/env python
"""Compare the base model with LoRA adapters on a fixed prompt set, side by side.

    python evaluate.py --model_path /path/to/musicgen-small \\
        --lora_model_path ../output_epoch1 --compare_multi \\
        --prompts_file ../data/eval/evaluation_prompts_8.json \\
        --output_dir ../output_epoch1/evaluation --duration 15

--compare        base vs the adapter at --lora_model_path
--compare_multi  base, best_model and final_model (from --best_model_path/--final_model_path, or found
                 in the run directory given as --lora_model_path)
--adapter N=P    add any adapter (repeatable), e.g. --adapter r16=../output_r16/best_model
--lora_scales 0.5 1.0 1.5   every adapter at each strength, each its own model (N@0.5, ...), judged
                 blind beside the others; --lora_scale S: every adapter at one strength

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

from musicgen_lora.cli.args import Parser, add_settings, settings_from
from musicgen_lora.cli.runner import cli
from musicgen_lora.core.common import UserError, log
from musicgen_lora.core.outputs import output_lock
from musicgen_lora.evaluation.config import DEFAULT_PORT, TOOL, EvaluateConfig
from musicgen_lora.evaluation.listen_server import serve
from musicgen_lora.evaluation.listening import tally_folder, tally_lines
from musicgen_lora.reporting.model_card import update_evaluated_cards, update_listened_cards


def build_parser():
    return add_settings(Parser(description=__doc__), EvaluateConfig)


def listening(cfg: EvaluateConfig):
    """--listen / --tally: the blind listening test of an evaluation that already exists."""
    if cfg.tally:
        folder = Path(cfg.tally)
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
    serve(Path(cfg.listen), DEFAULT_PORT if cfg.port is None else cfg.port)


def print_verdicts(summary):
    for m in summary["models"].values():
        print(m["verdict"])


@cli
def main(argv=None):
    cfg = settings_from(EvaluateConfig, build_parser().parse_args(argv))
    if cfg.listen or cfg.tally:
        return listening(cfg)
    from musicgen_lora.evaluation.evaluate import evaluate  # torch: after the flags are checked

    summary = evaluate(cfg)
    if not cfg.score_only:  # each train_lora.py adapter's README.md gets its verdict
        update_evaluated_cards(summary, Path(cfg.output_dir))
    print_verdicts(summary)
    out = Path(cfg.output_dir)
    print(f"listen blind first: {out / 'listen.html'} (evaluate.py --listen {out} saves your ratings); "
          f"every number: {out / 'report.html'}")


if __name__ == "__main__":
    sys.exit(main())
