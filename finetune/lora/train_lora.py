#!/usr/bin/env python
"""Fine-tune MusicGen with LoRA on clips described in metadata.json.

    python train_lora.py --model_path /path/to/musicgen-small --data_dir ../data \\
        --output_dir ../output_epoch1 --lora_rank 12 --lora_alpha 24 --learning_rate 1e-4 \\
        --batch_size 2 --gradient_accumulation_steps 4 --num_epochs 1 --target_duration 15 --fp16

Writes OUTPUT_DIR/{best_model,final_model}/ (PEFT adapters), checkpoints/checkpoint-N/,
logs/metrics.jsonl and run_config.json. See README.md and USAGE.md.
"""
import argparse
import sys

from common import cli
from modeling import DEFAULT_TARGETS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument_group("data and model")
    a.add_argument("--model_path", default="facebook/musicgen-small",
                   help="Local MusicGen folder or hub id (offline machines need a local folder).")
    a.add_argument("--data_dir", default="../data", help="Folder holding metadata.json and the audio it lists.")
    a.add_argument("--metadata_file", default="metadata.json", help="Metadata file, relative to --data_dir.")
    a.add_argument("--output_dir", default="../output", help="Run directory for adapters, checkpoints and logs.")
    a.add_argument("--target_duration", type=float, default=15.0,
                   help="Training window in seconds: longer clips are cropped (randomly in training), shorter "
                        "ones padded, and every padded frame is masked out of the loss.")
    a.add_argument("--max_duration", type=float, default=None,
                   help="Upper bound on the window in seconds (kept for older command lines); the window is "
                        "min(target_duration, max_duration).")
    a.add_argument("--num_workers", type=int, default=0, help="DataLoader worker processes for audio decoding.")
    a.add_argument("--cache_dir", default=None,
                   help="EnCodec code cache (default: DATA_DIR/.codes_cache); each clip is encoded once and "
                        "re-encoded only when its audio, the codec or the sample rate changes.")
    a.add_argument("--no_cache", action="store_true",
                   help="Encode clips with EnCodec at every step instead of reading cached codes (same tokens, "
                        "slower).")

    l = p.add_argument_group("LoRA")
    l.add_argument("--lora_rank", type=int, default=12, help="LoRA rank r.")
    l.add_argument("--lora_alpha", type=float, default=24, help="LoRA alpha (scale = alpha / r).")
    l.add_argument("--lora_dropout", type=float, default=0.05, help="Dropout on the LoRA branch.")
    l.add_argument("--lora_target_modules", default=",".join(DEFAULT_TARGETS),
                   help="Comma-separated decoder linear layers to adapt (decoder only; text encoder and EnCodec "
                        "stay frozen).")

    o = p.add_argument_group("optimisation")
    o.add_argument("--learning_rate", type=float, default=1e-4, help="Peak AdamW learning rate.")
    o.add_argument("--weight_decay", type=float, default=0.01, help="AdamW weight decay on LoRA weights.")
    o.add_argument("--batch_size", type=int, default=2, help="Clips per micro-batch.")
    o.add_argument("--gradient_accumulation_steps", type=int, default=4,
                   help="Micro-batches per optimizer step (effective batch = batch_size x this).")
    o.add_argument("--num_epochs", type=int, default=1, help="Passes over the training clips.")
    o.add_argument("--max_steps", type=int, default=None, help="Stop after this many optimizer steps (overrides "
                                                                "--num_epochs when reached first).")
    o.add_argument("--warmup_steps", type=int, default=None,
                   help="Linear warm-up steps before cosine decay (default: 5%% of the optimizer steps).")
    o.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm (0 disables).")
    o.add_argument("--text_dropout", type=float, default=0.1,
                   help="Probability of training a clip with an empty description, so classifier-free "
                        "guidance keeps working (audiocraft uses 0.1).")
    o.add_argument("--seed", type=int, default=42, help="Seed for LoRA init, crops, dropout and data order.")

    r = p.add_argument_group("runtime")
    r.add_argument("--device", default="auto", help="auto, cpu or cuda.")
    r.add_argument("--fp16", action="store_true", help="fp16 mixed precision (GPU only; ignored with a warning "
                                                        "on CPU).")
    r.add_argument("--bf16", action="store_true", help="bf16 mixed precision (Ampere or newer GPUs).")

    s = p.add_argument_group("logging and saving")
    s.add_argument("--logging_steps", type=int, default=10, help="Log train loss every N optimizer steps.")
    s.add_argument("--eval_steps", type=int, default=None,
                   help="Also validate every N optimizer steps (always at each epoch end).")
    s.add_argument("--save_steps", type=int, default=200, help="Write checkpoints/checkpoint-N every N steps.")
    s.add_argument("--overwrite_output_dir", action="store_true",
                   help="Allow writing into an output dir that already holds a run (its files are replaced).")
    s.add_argument("--no_progress", action="store_true", help="Hide progress bars (logs still printed).")
    return p


@cli
def main(argv=None):
    args = build_parser().parse_args(argv)
    from trainer import train

    train(args)


if __name__ == "__main__":
    sys.exit(main())
