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
import sys

from musicgen_lora.cli.args import Parser, add_settings, parse_args_with_config, settings_from
from musicgen_lora.cli.runner import cli
from musicgen_lora.training.config import TrainConfig


def build_parser() -> argparse.ArgumentParser:
    """train_lora.py's flags: --config, then one flag per TrainConfig setting (training/config.py)."""
    p = Parser(description=__doc__)
    p.add_argument("--config", default=None,
                   help="YAML file of flag: value lines (see config.yaml); flags given here override it.")
    return add_settings(p, TrainConfig)


def config_from(args) -> TrainConfig:
    """The parsed flags as the library's typed config (the flags are its fields), checked."""
    return settings_from(TrainConfig, args)


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
