"""Which MusicGen fits your GPU, and with which settings: the memory plan train_lora.py prints at
its start (musicgen_lora/training/memory.py), for any size, mono or stereo, text-only or melody, without
loading weights.

    python finetune/scripts/memory_plan.py --gpu_gib 24 --precision bf16
    python finetune/scripts/memory_plan.py --model_path /path/to/musicgen-stereo-large --gpu_gib 24

One row per model and gradient-checkpointing setting: the plan's total, whether it fits the GPU
(less a 5% margin for the allocator), and the train_lora.py flags that fit when it does not. The
architectures are those of facebook/musicgen-{small,medium,large}, their stereo versions and
facebook/musicgen-{,stereo-}melody{,-large} (MusicGen-Melody: medium's and large's decoders without
cross-attention, over a 235-frame chroma + text prefix), built on the meta device (nothing is
allocated or downloaded); --model_path reads a checkpoint's config.json instead (MusicGen or
MusicGen-Melody). An estimate: benchmarks/memory.py measures it against real peaks.
"""
import sys

from musicgen_lora.cli.args import Parser, positive_float, positive_int
from musicgen_lora.cli.runner import cli
from musicgen_lora.model.targets import ADAPTER_NAMES, ADAPTER_TYPES


def build_parser():
    p = Parser(description=__doc__)
    p.add_argument("--gpu_gib", type=positive_float, default=24.0, help="GPU memory in GiB (an RTX 4090: 24).")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="bf16",
                   help="The precision train_lora.py will run (--fp16 / --bf16, or neither: fp32).")
    p.add_argument("--batch_size", type=positive_int, default=2, help="train_lora.py --batch_size.")
    p.add_argument("--gradient_accumulation_steps", type=positive_int, default=4,
                   help="train_lora.py --gradient_accumulation_steps (kept when a smaller batch is suggested).")
    p.add_argument("--target_duration", type=positive_float, default=15.0, help="Training window in seconds.")
    p.add_argument("--lora_rank", type=positive_int, default=12, help="LoRA rank.")
    p.add_argument("--adapter_type", choices=ADAPTER_TYPES, default="lora",
                   help="train_lora.py --adapter_type (DoRA, LoHa and LoKr keep more per step).")
    p.add_argument("--model_path", default=None,
                   help="Plan for this checkpoint's config.json (a local folder) instead of the hub's sizes.")
    return p


# model_type in config.json -> the transformers config class that reads it
CONFIG_CLASSES = {"musicgen": "MusicgenConfig", "musicgen_melody": "MusicgenMelodyConfig"}
# The released MusicGen-Melody checkpoints: (name, the text-only size whose decoder they have, stereo)
MELODY_LAYOUTS = [("musicgen-melody", "medium", False), ("musicgen-melody-large", "large", False),
                  ("musicgen-stereo-melody", "medium", True), ("musicgen-stereo-melody-large", "large", True)]


def configs(model_path):
    """(name, config) pairs: the checkpoint's, or the ten released layouts (six text-to-music, four melody)."""
    if model_path:
        from pathlib import Path

        import transformers

        from musicgen_lora.core.common import UserError, read_json

        if not (Path(model_path) / "config.json").is_file():
            raise UserError(f"{model_path}: no config.json here; pass --model_path a local MusicGen folder")
        config = read_json(Path(model_path) / "config.json", "model config")
        model_type = config.get("model_type") if isinstance(config, dict) else None
        if model_type not in CONFIG_CLASSES:  # from_pretrained would fill any other config with MusicGen defaults
            raise UserError(f"{model_path}: a {model_type!r} config, not a MusicGen or MusicGen-Melody one; pass "
                            f"--model_path a MusicGen folder (or leave it out for the released sizes)")
        config_class = getattr(transformers, CONFIG_CLASSES[model_type])
        try:
            return [(Path(model_path).name, config_class.from_pretrained(model_path))]
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{model_path}: not a MusicGen config ({e})") from None
    from musicgen_lora.model.offline import build_config, melody_config

    text = [(f"musicgen-{'stereo-' if stereo else ''}{size}", build_config(size, 32128, stereo=stereo))
            for size in ("small", "medium", "large") for stereo in (False, True)]
    return text + [(name, melody_config(build_config(size, 32128, stereo=stereo)))
                   for name, size, stereo in MELODY_LAYOUTS]


@cli
def main(argv=None):
    args = build_parser().parse_args(argv)
    from musicgen_lora.training.config import TrainConfig
    from musicgen_lora.training.memory import GIB, flags_for, gib, model_shape, plan_memory, suggest

    half = args.precision if args.precision != "fp32" else "bf16"
    models = configs(args.model_path)  # a bad --model_path stops before anything is printed
    print(f"memory plan for a {args.gpu_gib:g} GiB GPU, {args.precision}, batch {args.batch_size} x "
          f"{args.target_duration:g} s (accumulation {args.gradient_accumulation_steps}), "
          f"{ADAPTER_NAMES[args.adapter_type]} rank {args.lora_rank}")
    print(f"{'model':<29} {'checkpointing':<14} {'plan GiB':>9}  fits  settings that fit")
    for name, config in models:
        shape = model_shape(config, decoder_dropout=TrainConfig.decoder_dropout)  # what train_lora.py runs at
        for checkpointing in (False, True):
            plan = plan_memory(shape, precision=args.precision, batch_size=args.batch_size,
                               window_seconds=args.target_duration, gradient_checkpointing=checkpointing,
                               lora_rank=args.lora_rank, adapter_type=args.adapter_type, device="cuda",
                               capacity=int(args.gpu_gib * GIB),
                               gradient_accumulation_steps=args.gradient_accumulation_steps)
            if plan.fits:
                advice = "as asked"
            else:
                fix, fits = suggest(plan, half)
                advice = f"{flags_for(fix, plan)} ({gib(fix.total)} GiB)" if fits else "none: a bigger GPU"
            print(f"{name:<29} {'on' if checkpointing else 'off':<14} {gib(plan.total):>9}  "
                  f"{'yes' if plan.fits else 'no ':<4}  {advice}")


if __name__ == "__main__":
    sys.exit(main())
