"""EvaluateConfig: every setting of evaluate.py, typed, with its flag (its parser is derived from the
fields, core/config.py). The sampling and runtime settings are the ones inference_lora.py has
(GenerationConfig), under the same names. No torch here.
"""
from __future__ import annotations

from dataclasses import dataclass

from musicgen_lora.core.common import UserError
from musicgen_lora.core.config import nonneg_float, number_type, positive_float, positive_int, setting
from musicgen_lora.evaluation.listen_server import DEFAULT_PORT
from musicgen_lora.generation.config import LORA_SCALE_HELP, GenerationConfig

TOOL = "evaluate.py"  # what owns an evaluation folder (its manifest says so)
MODELS, PROMPTS, NUMBERS, LISTENING = "models", "prompts and output", "objective numbers", "listening"
# --port: 0 asks the system for any free port.
PORT = number_type(int, 0, 65535, words="a port number from 0 (any free port) to 65535")


@dataclass
class EvaluateConfig(GenerationConfig):
    """evaluate.py: the base model and adapters on one prompt set, side by side (or, with score_only,
    scoring clips that exist; listen/tally: an evaluation's blind listening test)."""

    model_path: str = setting("facebook/musicgen-small", "Local MusicGen folder or hub id.", group=MODELS,
                              aliases=("--base_model_path",))
    lora_model_path: str | None = setting(None, "An adapter folder (--compare) or a training run directory holding "
                                          "best_model/ and final_model/ (--compare_multi).", group=MODELS)
    best_model_path: str | None = setting(None, "best_model adapter (default: LORA_MODEL_PATH/best_model).",
                                          group=MODELS)
    final_model_path: str | None = setting(None, "final_model adapter (default: LORA_MODEL_PATH/final_model).",
                                           group=MODELS)
    adapter: list = setting([], "Another adapter to compare under NAME (repeatable).", group=MODELS,
                            action="append", metavar="NAME=PATH")
    mix: list = setting([], "A weighted mix of adapters to compare under NAME (repeatable): their weighted updates "
                        "add, as inference_lora.py --lora_model_path FOLDER:WEIGHT ... mixes them, e.g. "
                        "jazzy-lofi=jazz/best_model:0.7,lofi/best_model:0.3.", group=MODELS, action="append",
                        metavar="NAME=FOLDER:W,FOLDER:W")
    lora_scale: float = setting(1.0, LORA_SCALE_HELP + " Every adapter compared runs at it (named NAME@S).",
                                type=nonneg_float, group=MODELS)
    lora_scales: list = setting([], "Several strengths of every adapter compared, each its own model of the "
                                "comparison (NAME@0.5, NAME@1, ...): the blind page, tally, flags and held-out loss "
                                "rank them side by side; the report tabulates held-out loss and FAD against "
                                "strength.", type=nonneg_float, group=MODELS, metavar="S")
    compare: bool = setting(False, "Compare the base model with --lora_model_path.", group=MODELS)
    compare_multi: bool = setting(False, "Compare base, best_model and final_model.", group=MODELS)

    prompts_file: str | None = setting(None, "JSON list of prompts (strings or {\"prompt\", \"id\", \"seed\", "
                                       "\"melody\"} objects; a melody path is relative to the file's folder), e.g. "
                                       "../data/eval/evaluation_prompts_8.json.", group=PROMPTS,
                                       aliases=("--test_prompts_file",))
    prompts: list | None = setting(None, "Prompts given on the command line.", group=PROMPTS, nargs="+",
                                   aliases=("--test_prompts",))
    melody: str | None = setting(None, "Audio file whose melody (chroma) conditions every prompt that has none of "
                                 "its own, for every model; MusicGen-Melody checkpoints only.", group=PROMPTS)
    continuation_prompts: int | None = setting(None, "Also let every model continue the opening --prompt_seconds of "
                                               "N held-out clips (the validation clips of --data_dir, or of the "
                                               "evaluated run), under each clip's own description and the same "
                                               "seed; the report plays the real continuation beside them.",
                                               type=positive_int, group=PROMPTS, metavar="N")
    prompt_seconds: float = setting(5.0, "Seconds of each held-out clip that prompt its continuation "
                                    "(--continuation_prompts).", type=positive_float, group=PROMPTS)
    num_samples: int = setting(1, "Clips per prompt and model (seed, seed+1, ...).", type=positive_int, group=PROMPTS,
                               aliases=("--num_samples_per_prompt",))
    output_dir: str = setting("../output/evaluation", "Folder for clips, results and report.", group=PROMPTS)

    data_dir: str | None = setting(None, "Folder holding metadata.json: its validation clips give each model's "
                                   "held-out loss and the style reference for FAD (default: the evaluated run's "
                                   "data_dir from its run_config.json when that exists; skipped otherwise).",
                                   group=NUMBERS)
    metadata_file: str = setting("metadata.json", "Metadata file, relative to --data_dir.", group=NUMBERS)
    target_duration: float | None = setting(None, "Window in seconds for the held-out loss (default: the run's "
                                            "training window from run_config.json, else 15).", type=positive_float,
                                            group=NUMBERS)
    clap_model_path: str | None = setting(None, "Local transformers CLAP folder: adds the mean text-audio similarity "
                                          "of each prompt and its clips (skipped without it).", group=NUMBERS)
    score_only: bool = setting(False, "Score existing audio under --input_dir (recursively) instead of generating.",
                               group=NUMBERS)
    input_dir: str | None = setting(None, "Folder of clips to score with --score_only.", group=NUMBERS)

    listen: str | None = setting(None, "Serve DIR/listen.html (an evaluation's blind listening test) on "
                                 "http://127.0.0.1 until Ctrl-C; its Save button writes "
                                 "DIR/ratings/<listener>-<time>.json.", group=LISTENING, metavar="DIR")
    port: int | None = setting(None, f"Port for --listen (default: {DEFAULT_PORT}; 0: any free port).", type=PORT,
                               group=LISTENING)
    tally: str | None = setting(None, "Tally DIR/ratings/*.json: each model's mean rating with a 95%% interval, and "
                                "which models the ratings cannot separate; recorded in DIR/summary.json "
                                "(\"listening\").", group=LISTENING, metavar="DIR")

    @property
    def scales(self) -> list[float]:
        """The strengths every adapter runs at, each its own model; [] = as trained, under its own name."""
        return list(self.lora_scales) or ([self.lora_scale] if self.lora_scale != 1.0 else [])

    def check(self):
        if self.lora_scales and self.lora_scale != 1.0:
            raise UserError("--lora_scale sets one strength and --lora_scales several; pass one of them (e.g. "
                            "--lora_scales 0.5 1.0 1.5)")
        if len(set(self.lora_scales)) != len(self.lora_scales):
            raise UserError(f"--lora_scales {' '.join(f'{s:g}' for s in self.lora_scales)}: each strength once")
        if self.listen and self.tally:
            raise UserError("--listen and --tally are two steps: serve the page with --listen, then count the saved "
                            "ratings with --tally")
        if self.tally and self.port is not None:
            raise UserError("--port is read by --listen; drop it from --tally")
        if self.port is not None and not (self.listen or self.tally):
            raise UserError("--port is read by --listen (serving an evaluation's blind page); pass --listen DIR too")
        if self.score_only and not self.input_dir:
            raise UserError("--score_only needs --input_dir (the folder of clips to score)")
        if self.input_dir and not self.score_only:
            raise UserError("--input_dir is read by --score_only; pass both (or neither)")
        if self.score_only and self.continuation_prompts:
            raise UserError("--continuation_prompts generates continuations, and --score_only generates nothing; "
                            "drop --continuation_prompts")
        if self.score_only and self.melody:
            raise UserError("--melody conditions generation, and --score_only generates nothing (it reads each "
                            "clip's melody from its sidecar); drop --melody")
        return super().check()
