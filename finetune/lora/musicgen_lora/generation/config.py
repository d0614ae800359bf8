"""Typed settings of the commands that generate: GenerationConfig (the sampling, window and runtime
settings inference_lora.py and evaluate.py share, one spelling each) and InferenceConfig
(inference_lora.py). Their parsers are derived from the fields (core/config.py). No torch here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from musicgen_lora.core.common import UserError
from musicgen_lora.core.config import (
    check_settings,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    probability,
    seed_int,
    setting,
)
from musicgen_lora.core.precision import PRECISIONS, requested
from musicgen_lora.generation.sampling import (
    DEFAULT_OVERLAP_SHARE,
    DEFAULT_WINDOW_S,
    WAV_SUBTYPES,
    GenerationSettings,
    SamplingSettings,
    WindowPlan,
)

SAMPLING, RUNTIME = "sampling", "runtime"
_D = SamplingSettings()
# FOLDER:WEIGHT -- only a trailing ":number" is a weight (a sign is caught to be refused in words)
_WEIGHTED = re.compile(r"^(?P<path>.+):(?P<weight>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)$")
LORA_SCALE_HELP = ("Adapter strength: 0 = the base model, 1 = as trained (default), above 1 stronger. Applied "
                   "as PEFT's per-adapter scaling when the adapter is loaded; the saved adapter is not changed.")


def weighted_paths(values, scale: float = 1.0, flag: str = "--lora_model_path") -> list[tuple[str, float]]:
    """(adapter folder, strength) for each of `values`: FOLDER or FOLDER:WEIGHT. Only a trailing
    ":number" is a weight, and a value that exists as typed is a folder even so ("take:2/" stays a
    path). Each strength is its weight (1 without one) x `scale` (--lora_scale)."""
    parts = []
    for value in [values] if isinstance(values, str) else values or []:
        text, weight = str(value), 1.0
        if not Path(text).exists() and (m := _WEIGHTED.match(text)):
            text, weight = m["path"], float(m["weight"])
            if weight < 0:
                raise UserError(f"{flag} {value}: a weight is 0 or more (0 leaves that adapter out); e.g. "
                                f"{text}:0.5")
        parts.append((text, weight * scale))
    return parts


@dataclass
class GenerationConfig:
    """The settings every generating command shares; `generation(precision)` is what generate_audio
    takes, once the precision that runs is known (generate.resolve_generation)."""

    duration: float = setting(15.0, "Seconds of audio per clip; longer than --window_seconds is generated window "
                              "by window.", type=positive_float, group=SAMPLING)
    window_seconds: float | None = setting(None, f"Seconds per generate() call (default {DEFAULT_WINDOW_S:g}, what "
                                           f"MusicGen was trained on, or less when the model holds less). A longer "
                                           f"--duration is continued window by window, each prompted with the end "
                                           f"of the previous one (audiocraft's extend_stride).", type=positive_float,
                                           group=SAMPLING)
    window_overlap: float | None = setting(None, f"Seconds of the previous window that prompt the next one (default "
                                           f"{DEFAULT_OVERLAP_SHARE * 100:.0f}%% of the window: 12 s of 30, as "
                                           f"audiocraft).", type=positive_float, group=SAMPLING)
    guidance_scale: float = setting(_D.guidance_scale, "Classifier-free guidance scale (1 or less turns guidance "
                                    "off).", type=nonneg_float, group=SAMPLING)
    temperature: float = setting(_D.temperature, "Sampling temperature.", type=positive_float, group=SAMPLING)
    top_k: int = setting(_D.top_k, "Sample from the k most likely codes (0 disables).", type=nonneg_int,
                         group=SAMPLING)
    top_p: float = setting(_D.top_p, "Nucleus sampling mass (0 disables).", type=probability, group=SAMPLING)
    greedy: bool = setting(False, "Argmax decoding instead of sampling (often loops).", group=SAMPLING)
    seed: int = setting(42, "Seed for every prompt (a prompt's own 'seed' in the prompts file wins); sample j of a "
                        "prompt uses seed + j.", type=seed_int, group=SAMPLING)
    batch_size: int = setting(8, "Clips generated together in one batch.", type=positive_int, group=SAMPLING)
    wav_subtype: str = setting("PCM_16", "WAV sample format.", choices=WAV_SUBTYPES, group=SAMPLING)

    device: str = setting("auto", "auto, cpu or cuda.", group=RUNTIME)
    precision: str | None = setting(None, "Generation precision. auto (default): bf16 on a GPU that has it (else "
                                    "fp16) and on a CPU with bf16 instructions (avx512_bf16/amx_bf16; ~2x faster), "
                                    "else fp32. On a CPU only the decoder's generation copy is bf16; held-out loss "
                                    "and FAD stay fp32.", choices=PRECISIONS, group=RUNTIME)
    fp16: bool = setting(False, "Short for --precision fp16 (GPU only).", group=RUNTIME)
    bf16: bool = setting(False, "Short for --precision bf16.", group=RUNTIME)
    overwrite: bool = setting(False, "Replace earlier outputs of this script in --output_dir instead of refusing "
                              "(files it did not write are never replaced).", group=RUNTIME)
    no_progress: bool = setting(False, "Hide progress bars.", group=RUNTIME)

    def check(self):
        """Each setting's range, the sampling rules, and --fp16/--bf16/--precision agreeing (the
        precision asked for is filled in: auto when none was)."""
        check_settings(self)
        self.sampling.validate()
        self.precision = requested(self.precision, self.fp16, self.bf16, default="auto")
        return self

    @property
    def sampling(self) -> SamplingSettings:
        return SamplingSettings(self.guidance_scale, self.temperature, self.top_k, self.top_p, self.greedy)

    @property
    def plan(self) -> WindowPlan:
        """--window_seconds/--window_overlap (checked against the model by generate.check_duration)."""
        return WindowPlan(self.window_seconds, self.window_overlap)

    def generation(self, precision: str | None) -> GenerationSettings:
        """What generate_audio takes, with the precision that runs."""
        return GenerationSettings(self.duration, self.sampling, self.plan, self.batch_size, precision)


@dataclass
class InferenceConfig(GenerationConfig):
    """inference_lora.py: prompts (and melodies, audio prompts) to WAVs with a base model and an optional
    adapter; or, with merge, the adapter merged into a full model."""

    model_path: str = setting("facebook/musicgen-small", "Local MusicGen folder or hub id the adapter was trained "
                              "on.", aliases=("--base_model_path",))
    lora_model_path: list | None = setting(None, "PEFT adapter folder (best_model/, final_model/ or "
                                           "checkpoints/checkpoint-N/). Omit to generate with the base model. "
                                           "Several, each FOLDER:WEIGHT, mix them: their weighted updates add "
                                           "(jazz/best_model:0.7 lofi/best_model:0.3); only a trailing :number is "
                                           "a weight.", nargs="+", metavar="FOLDER[:WEIGHT]")
    lora_scale: float = setting(1.0, LORA_SCALE_HELP + " With several adapters it multiplies every weight.",
                                type=nonneg_float)
    prompts: list | None = setting(None, "One or more text prompts.", nargs="+")
    prompts_file: str | None = setting(None, "JSON list of prompts (strings or {\"prompt\", \"id\", \"seed\", "
                                       "\"melody\"} objects; a melody path is relative to the file's folder) or a "
                                       ".txt file, one prompt per line.")
    melody: str | None = setting(None, "Audio file whose melody (chroma) conditions every prompt that has none of "
                                 "its own; MusicGen-Melody checkpoints only.")
    audio_prompt: str | None = setting(None, "Audio file whose first --prompt_seconds every clip continues (the clip "
                                       "starts with them).")
    prompt_seconds: float = setting(5.0, "Seconds of --audio_prompt to continue.", type=positive_float)
    num_samples: int = setting(1, "Clips per prompt (different seeds).", type=positive_int)
    output_dir: str = setting("../output/generated", "Folder for WAVs and sidecars (or the merged model with "
                              "--merge).")
    save_codes: bool = setting(False, "Also write each clip's EnCodec codes (K codebooks x frames, what the WAV was "
                               "decoded from) as NAME.codes.safetensors: compare generations exactly, or decode "
                               "them again.")
    merge: bool = setting(False, "Merge the adapter (at --lora_scale; a mix at its weights) into the base weights "
                          "and save a full model to --output_dir "
                          "instead of generating.")

    @property
    def adapters(self) -> list[tuple[str, float]]:
        """(adapter folder, strength) of each --lora_model_path."""
        return weighted_paths(self.lora_model_path, self.lora_scale)

    def check(self):
        if isinstance(self.lora_model_path, str):  # one folder given in code
            self.lora_model_path = [self.lora_model_path]
        if self.lora_scale != 1.0 and not self.lora_model_path:
            raise UserError(f"--lora_scale {self.lora_scale:g} scales an adapter: pass --lora_model_path too")
        self.adapters  # noqa: B018 -- a bad weight is refused before any model loads
        if self.merge and not self.lora_model_path:
            raise UserError("--merge needs --lora_model_path (the adapter to merge into the base model)")
        if self.merge and (self.prompts or self.prompts_file or self.melody or self.audio_prompt or self.save_codes):
            raise UserError("--merge writes a model and generates nothing; drop --prompts/--prompts_file/--melody/"
                            "--audio_prompt/--save_codes (or --merge)")
        if self.audio_prompt and not Path(self.audio_prompt).is_file():
            raise UserError(f"--audio_prompt {self.audio_prompt}: file not found; pass an audio file whose start the "
                            f"clips continue")
        return super().check()
