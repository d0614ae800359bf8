"""Build a MusicGen checkpoint offline, with random weights, that loads exactly like a real one.

    python finetune/scripts/make_tiny_model.py --output_dir models/tiny-musicgen
    python finetune/scripts/make_tiny_model.py --output_dir models/small-random --size small
    python finetune/scripts/make_tiny_model.py --output_dir models/tiny-stereo --stereo

What the checkpoint holds and why its LM heads are scaled: musicgen_lora/model/offline.py.
`tiny` builds and trains on a CPU in seconds; `small`, `medium` and `large` are those checkpoints'
architectures (random weights) for benchmarks. `--stereo` gives the musicgen-stereo layout (8
codebooks: 4 per channel, interleaved). Same --seed, same files.
"""
import sys

from musicgen_lora.cli.args import Parser
from musicgen_lora.cli.runner import cli


@cli
def main(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("--output_dir", required=True, help="Folder to write the checkpoint to.")
    p.add_argument("--size", choices=["tiny", "small", "medium", "large"], default="tiny",
                   help="tiny: seconds to build and train on CPU; small/medium/large: those architectures.")
    p.add_argument("--stereo", action="store_true",
                   help="The musicgen-stereo layout: 2 channels x 4 codebooks = 8, interleaved [L0, R0, L1, R1, ...].")
    p.add_argument("--melody", action="store_true",
                   help="A MusicGen-Melody checkpoint (chroma + text prefix, no cross-attention); with --stereo, "
                        "the stereo-melody layout.")
    p.add_argument("--seed", type=int, default=0, help="Seed for the random weights (same seed, same checkpoint).")
    p.add_argument("--overwrite", action="store_true",
                   help="Replace a model this script wrote earlier in --output_dir (anything else is never replaced).")
    args = p.parse_args(argv)
    from musicgen_lora.model.offline import build

    out = build(args.output_dir, args.size, args.seed, args.overwrite, stereo=args.stereo, melody=args.melody)
    from transformers import MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration

    model = (MusicgenMelodyForConditionalGeneration if args.melody else MusicgenForConditionalGeneration) \
        .from_pretrained(out)
    n_dec = sum(p.numel() for p in model.decoder.parameters())
    channels = ("stereo" if model.decoder.config.audio_channels == 2 else "mono") + (" melody" if args.melody else "")
    print(f"wrote {args.size} {channels} MusicGen checkpoint to {out} (decoder {n_dec / 1e6:.1f} M parameters, "
          f"{model.decoder.config.num_codebooks} codebooks x {model.decoder.config.vocab_size} codes)")


if __name__ == "__main__":
    sys.exit(main())
