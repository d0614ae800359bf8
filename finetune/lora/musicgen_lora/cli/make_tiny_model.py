"""Build a MusicGen checkpoint offline, with random weights, that loads exactly like a real one.

    python finetune/scripts/make_tiny_model.py --output_dir models/tiny-musicgen
    python finetune/scripts/make_tiny_model.py --output_dir models/small-random --size small

What the checkpoint holds and why its LM heads are scaled: musicgen_lora/testing/tiny_model.py.
`tiny` builds and trains on a CPU in seconds; `small` is the musicgen-small architecture (random
weights) for benchmarks. Same --seed, same files.
"""
import sys

from musicgen_lora.cli.args import Parser
from musicgen_lora.cli.runner import cli


@cli
def main(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("--output_dir", required=True, help="Folder to write the checkpoint to.")
    p.add_argument("--size", choices=["small", "tiny"], default="tiny",
                   help="tiny: seconds to build and train on CPU; small: the musicgen-small architecture.")
    p.add_argument("--seed", type=int, default=0, help="Seed for the random weights (same seed, same checkpoint).")
    p.add_argument("--overwrite", action="store_true",
                   help="Replace a model this script wrote earlier in --output_dir (anything else is never replaced).")
    args = p.parse_args(argv)
    from musicgen_lora.testing.tiny_model import build

    out = build(args.output_dir, args.size, args.seed, args.overwrite)
    from transformers import MusicgenForConditionalGeneration

    model = MusicgenForConditionalGeneration.from_pretrained(out)
    n_dec = sum(p.numel() for p in model.decoder.parameters())
    print(f"wrote {args.size} MusicGen checkpoint to {out} (decoder {n_dec / 1e6:.1f} M parameters, "
          f"{model.decoder.config.num_codebooks} codebooks x {model.decoder.config.vocab_size} codes)")


if __name__ == "__main__":
    sys.exit(main())
