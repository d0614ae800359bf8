"""Fine-tune MusicGen with LoRA on clips described in metadata.json.

    python train_lora.py --model_path /path/to/musicgen-small --data_dir ../data \\
        --output_dir ../output_epoch1 --lora_rank 12 --lora_alpha 24 --learning_rate 1e-4 \\
        --batch_size 2 --gradient_accumulation_steps 4 --num_epochs 1 --target_duration 15 --fp16

Writes OUTPUT_DIR/{best_model,final_model}/ (PEFT adapters), checkpoints/checkpoint-N/,
logs/metrics.jsonl and run_config.json. See README.md and USAGE.md.

Settings can come from a YAML file (--config config.yaml); flags on the command line win.
Continue an interrupted run with the same command plus --resume_from_checkpoint latest.
Several GPUs: accelerate launch train_lora.py ... (or torchrun --nproc_per_node N train_lora.py ...).
"""
import argparse
import dataclasses
import sys

from musicgen_lora.cli.args import (
    Parser,
    any_int,
    dropout,
    nonneg_float,
    nonneg_int,
    parse_args_with_config,
    positive_float,
    positive_int,
    probability,
)
from musicgen_lora.cli.runner import cli
from musicgen_lora.core.precision import PRECISIONS
from musicgen_lora.training.config import TrainConfig

D = TrainConfig()  # every flag's default comes from here


def build_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__)
    p.add_argument("--config", default=None,
                   help="YAML file of flag: value lines (see config.yaml); flags given here override it.")
    a = p.add_argument_group("data and model")
    a.add_argument("--model_path", default=D.model_path,
                   help="Local MusicGen folder or hub id (offline machines need a local folder).")
    a.add_argument("--data_dir", default=D.data_dir, help="Folder holding metadata.json and the audio it lists.")
    a.add_argument("--metadata_file", default=D.metadata_file, help="Metadata file, relative to --data_dir.")
    a.add_argument("--output_dir", default=D.output_dir, help="Run directory for adapters, checkpoints and logs.")
    a.add_argument("--target_duration", type=positive_float, default=D.target_duration,
                   help="Training window in seconds: longer clips are cropped (randomly in training), shorter "
                        "ones padded, and every padded frame is masked out of the loss.")
    a.add_argument("--max_duration", type=positive_float, default=D.max_duration,
                   help="Upper bound on the window in seconds (kept for older command lines); the window is "
                        "min(target_duration, max_duration).")
    a.add_argument("--num_workers", type=nonneg_int, default=D.num_workers,
                   help="DataLoader worker processes for audio decoding.")
    a.add_argument("--cache_dir", default=D.cache_dir,
                   help="EnCodec code cache (default: DATA_DIR/.codes_cache); each clip is encoded once and "
                        "re-encoded only when its audio, the codec or the sample rate changes.")
    a.add_argument("--max_valid_clips", type=positive_int, default=D.max_valid_clips,
                   help="Validate on at most this many clips, evenly spaced over the validation set, the same ones "
                        "at every evaluation (default: all; for collections whose validation would take an hour).")
    a.add_argument("--no_cache", action="store_true",
                   help="Encode clips with EnCodec at every step instead of reading cached codes (same tokens, "
                        "slower).")

    lo = p.add_argument_group("LoRA")
    lo.add_argument("--lora_rank", type=positive_int, default=D.lora_rank, help="LoRA rank r.")
    lo.add_argument("--lora_alpha", type=positive_float, default=D.lora_alpha, help="LoRA alpha (scale = alpha / r).")
    lo.add_argument("--lora_dropout", type=dropout, default=D.lora_dropout, help="Dropout on the LoRA branch.")
    lo.add_argument("--lora_target_modules", default=D.lora_target_modules,
                   help="Comma-separated decoder linear layers to adapt (decoder only; text encoder and EnCodec "
                        "stay frozen).")

    o = p.add_argument_group("optimisation")
    o.add_argument("--learning_rate", type=nonneg_float, default=D.learning_rate, help="Peak AdamW learning rate.")
    o.add_argument("--weight_decay", type=nonneg_float, default=D.weight_decay,
                   help="AdamW weight decay on LoRA weights.")
    o.add_argument("--batch_size", type=positive_int, default=D.batch_size, help="Clips per micro-batch.")
    o.add_argument("--gradient_accumulation_steps", type=positive_int, default=D.gradient_accumulation_steps,
                   help="Micro-batches per optimizer step (effective batch = batch_size x this).")
    o.add_argument("--num_epochs", type=positive_int, default=D.num_epochs, help="Passes over the training clips.")
    o.add_argument("--max_steps", type=positive_int, default=D.max_steps,
                   help="Stop after this many optimizer steps (overrides --num_epochs when reached first).")
    o.add_argument("--warmup_steps", type=nonneg_int, default=D.warmup_steps,
                   help="Linear warm-up steps before cosine decay (default: 5%% of the optimizer steps).")
    o.add_argument("--max_grad_norm", type=nonneg_float, default=D.max_grad_norm,
                   help="Gradient clipping norm (0 disables).")
    o.add_argument("--text_dropout", type=probability, default=D.text_dropout,
                   help="Probability of training a clip with no condition at all: no description and, on "
                        "MusicGen-Melody, no melody (the null condition classifier-free guidance pairs each prompt "
                        "with). Default: audiocraft's setting, 0.3 (0.2 for MusicGen-Melody).")
    o.add_argument("--word_dropout", type=probability, default=D.word_dropout,
                   help="Probability of leaving out each word of a description in training (audiocraft's T5 "
                        "word dropout), so prompts shorter or worded unlike the captions still steer. Default: "
                        "0.3 (0.2 for MusicGen-Melody).")
    o.add_argument("--chroma_dropout", type=probability, default=D.chroma_dropout,
                   help="MusicGen-Melody: probability of training a clip with the null melody (what generation "
                        "without --melody uses) instead of its chroma. Default: audiocraft's 0.5.")
    o.add_argument("--decoder_dropout", type=dropout, default=D.decoder_dropout,
                   help="Dropout inside MusicGen's decoder while training (embeddings, residual branches). "
                        "Default 0, as audiocraft trained MusicGen; the hub's configs say 0.1, which kept a "
                        "melody adapter from learning to follow its chroma.")
    o.add_argument("--seed", type=any_int, default=D.seed, help="Seed for LoRA init, crops, dropout and data order.")

    r = p.add_argument_group("runtime")
    r.add_argument("--device", default=D.device, help="auto, cpu or cuda.")
    r.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="Mixed precision: fp32 (default: losses comparable with earlier runs), bf16 (a GPU that has "
                        "it, or a CPU with avx512_bf16/amx_bf16: ~2x faster there), fp16 (GPU), or auto (the fastest "
                        "this hardware has: bf16, else fp16 on a GPU, else fp32).")
    r.add_argument("--fp16", action="store_true", help="Short for --precision fp16 (GPU only; fp32 with a warning "
                                                        "on CPU).")
    r.add_argument("--bf16", action="store_true", help="Short for --precision bf16.")
    r.add_argument("--gradient_checkpointing", action="store_true",
                   help="Recompute decoder activations in the backward pass: less memory, slower steps "
                        "(see benchmarks/memory.py).")
    r.add_argument("--ignore_memory_plan", action="store_true",
                   help="Start even when the memory plan printed at the start says the run will not fit the GPU "
                        "(the plan is an estimate; see musicgen_lora/training/memory.py).")

    s = p.add_argument_group("logging and saving")
    s.add_argument("--logging_steps", type=positive_int, default=D.logging_steps,
                   help="Log train loss every N optimizer steps.")
    s.add_argument("--eval_steps", type=positive_int, default=D.eval_steps,
                   help="Also validate every N optimizer steps (always at each epoch end).")
    s.add_argument("--sample_every", type=nonneg_int, default=D.sample_every,
                   help="Every N validations, generate --sample_prompts into OUTPUT_DIR/samples/step-N/ so "
                        "progress can be heard during training (0 = off).")
    s.add_argument("--sample_prompts", default=D.sample_prompts,
                   help="Prompts for --sample_every: a prompts file (JSON/txt, as evaluate.py reads) "
                        "(default: the first 3 validation descriptions).")
    s.add_argument("--sample_duration", type=positive_float, default=D.sample_duration,
                   help="Seconds per sample for --sample_every.")
    s.add_argument("--save_steps", type=nonneg_int, default=D.save_steps,
                   help="Write checkpoints/checkpoint-N (adapter + optimizer, scheduler, RNG and data position, "
                        "enough to resume) every N optimizer steps.")
    s.add_argument("--save_total_limit", type=positive_int, default=D.save_total_limit,
                   help="Keep only the newest N checkpoints (default: keep all; best_model/ is never removed).")
    s.add_argument("--resume_from_checkpoint", default=D.resume_from_checkpoint,
                   help="Continue a run: 'latest' (newest checkpoint in --output_dir) or a checkpoint-N folder. "
                        "Use the run's other flags unchanged.")
    s.add_argument("--overwrite_output_dir", action="store_true",
                   help="Replace a run already in --output_dir (its outputs are deleted first).")
    s.add_argument("--report_to", default=D.report_to, choices=["none", "tensorboard", "wandb"],
                   help="Also send metrics to tensorboard (OUTPUT_DIR/logs/) or wandb (pip install wandb); "
                        "logs/metrics.jsonl is always written.")
    s.add_argument("--no_progress", action="store_true", help="Hide progress bars (logs still printed).")

    g = p.add_argument_group("stopping")
    g.add_argument("--early_stopping_patience", type=positive_int, default=D.early_stopping_patience,
                   help="Stop after N validations in a row without a new best loss (final_model is still "
                        "written). Default: never.")
    g.add_argument("--max_nonfinite_steps", type=nonneg_int, default=D.max_nonfinite_steps,
                   help="A NaN/inf loss or gradient skips that update; this many in a row stop the run "
                        "(best_model/ and checkpoints are kept). 0: never stop.")
    return p


def config_from(args) -> TrainConfig:
    """The parsed flags as the library's typed config (the flags are its fields), checked."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names}).check()


def reporting_hooks():
    """The model card in every adapter, the training curves at every validation, the review at the
    end: what train_lora.py adds to the training loop (training never imports reporting)."""
    from musicgen_lora.reporting.curves import write_training_curves
    from musicgen_lora.reporting.model_card import write_training_card
    from musicgen_lora.reporting.review import log_review
    from musicgen_lora.training.trainer import TrainHooks

    def finished(run_dir, _summary):
        write_training_curves(run_dir)
        log_review(run_dir)  # the review gate: a plain-words reading of the logs

    return TrainHooks(adapter_saved=lambda path, folder, facts: write_training_card(path, facts, folder=folder),
                      validated=write_training_curves, finished=finished)


@cli
def main(argv=None):
    cfg = config_from(parse_args_with_config(build_parser(), argv))
    from musicgen_lora.training.trainer import train

    train(cfg, reporting_hooks())


if __name__ == "__main__":
    sys.exit(main())
