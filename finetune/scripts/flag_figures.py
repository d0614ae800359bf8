#!/usr/bin/env python
"""Detection and false-positive figures of the clip flags `repetitive` and `crackle`.

    .venv/bin/python finetune/scripts/flag_figures.py [--variants 8] [--seconds 15] [--seed 0]

Builds --variants randomized clips of every family in musicgen_lora/testing/flag_figures.py (clean
music with strong beats, a played drum loop, the existing failure signals mono and stereo, loops of
0.5-4 s from the start or from 3-9 s, near-verbatim loops, 20-200 clicks at random or after every
attack), scores each with evaluate.py's score_clip and prints, per flag, the detection rate on the
clips that must raise it, the false-positive rate on all the others, the lowest positive and highest
negative score, per-family counts, and the time per clip. About 0.3 s per clip on one core.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lora"))  # where the musicgen_lora package lives
from musicgen_lora.testing.flag_figures import families, measure, report  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", type=int, default=8, help="Clips per family (default: 8).")
    p.add_argument("--seconds", type=float, default=15.0, help="Length of each clip (default: 15).")
    p.add_argument("--seed", type=int, default=0, help="Seed of the draws (default: 0).")
    args = p.parse_args(argv)
    if args.variants < 1 or not args.seconds > 0:
        p.error("--variants must be >= 1 and --seconds > 0")

    start = time.perf_counter()
    fams = families()
    print(f"{args.variants} clips x {len(fams)} families, {args.seconds:g} s each, seed {args.seed}")
    rows = list(measure(args.variants, args.seconds, args.seed, fams))
    print("\n".join(report(rows)))
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
