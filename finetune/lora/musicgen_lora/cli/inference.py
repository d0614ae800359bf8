#!/usr/bin/env python
"""Generate music from text with MusicGen, optionally with a LoRA adapter on top.

    python inference_lora.py --model_path /path/to/musicgen-small \\
        --lora_model_path ../output_epoch1/best_model \\
        --prompts "hip hop 808 beat with trap drums" "lo-fi piano, vinyl crackle" \\
        --output_dir ../output_epoch1/generated --duration 15

Writes OUTPUT_DIR/NN_prompt-slug.wav (32 kHz, mono or stereo as the model, 16-bit PCM by default)
and a JSON sidecar of the same name holding the prompt, model, adapter, seed, melody and every
generation setting, so any clip can be regenerated exactly. Without --lora_model_path the base model
generates.

    python inference_lora.py --model_path facebook/musicgen-melody --melody tune.wav \\
        --prompts "lo-fi hip hop, mellow rhodes" --output_dir ../output/generated_melody

--duration past one window (--window_seconds, 30 s by default) is generated window by window, each
prompted with the end of the one before (--window_overlap); --audio_prompt FILE makes every clip
continue the first --prompt_seconds of FILE.

MusicGen-Melody checkpoints follow the chroma (pitch classes over time) of a melody: --melody for
every prompt, or "melody": "file" per prompt in --prompts_file; prompts without one get the null
melody, as generate() does without a melody.

--lora_scale S sets the adapter's strength (0 = the base model, 1 = as trained); several
--lora_model_path FOLDER:WEIGHT mix adapters (their weighted updates add; only a trailing :number
is a weight). The sidecars record both.

    python inference_lora.py --model_path BASE --lora_model_path ADAPTER --merge --output_dir MERGED

writes a full model with the adapter merged in (at --lora_scale, or the mix), loadable with plain
MusicgenForConditionalGeneration.from_pretrained(MERGED) (no peft needed).
"""
import sys

from musicgen_lora.cli.args import Parser, add_settings, settings_from
from musicgen_lora.cli.runner import cli
from musicgen_lora.generation.config import InferenceConfig


def build_parser():
    return add_settings(Parser(description=__doc__), InferenceConfig)


@cli
def main(argv=None):
    cfg = settings_from(InferenceConfig, build_parser().parse_args(argv))
    from musicgen_lora.generation.inference import run_inference  # torch: after the flags are checked

    run_inference(cfg)


if __name__ == "__main__":
    sys.exit(main())
