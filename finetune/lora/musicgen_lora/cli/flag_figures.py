"""Detection and false-positive figures of the clip flags `repetitive` and `crackle`.

    python finetune/scripts/flag_figures.py [--variants 8] [--seconds 15] [--seed 0]

Builds --variants randomized clips of every family in musicgen_lora/testing/flag_figures.py (clean
music with strong beats, a played drum loop, the older failure signals mono and stereo, loops of
0.5-4 s from the start or from 3-9 s, near-verbatim loops, 20-200 clicks at random or after every
attack), scores each with evaluate.py's score_clip and prints, per flag, the detection rate on the
clips that must raise it, the false-positive rate on all the others, the lowest positive and highest
negative score, per-family counts, and the time per clip. About 0.15 s per clip on one core.
"""
import time

from musicgen_lora.cli.args import Parser, number_type, positive_int
from musicgen_lora.cli.runner import cli

# The loop families start their loop at up to 60% of the clip and need 0.5 s (the shortest loop)
# before 70% of it: 5 s is the shortest clip they fit in.
SECONDS = number_type(float, low=5, words="a number of seconds >= 5 (the loop families need that much)")


@cli
def main(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("--variants", type=positive_int, default=8, help="Clips per family.")
    p.add_argument("--seconds", type=SECONDS, default=15.0, help="Length of each clip.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the draws (a family's clips depend on it only).")
    args = p.parse_args(argv)

    from musicgen_lora.testing.flag_figures import families, measure, report  # numpy/scipy: after the flags

    start = time.perf_counter()
    fams = families()
    print(f"{args.variants} clips x {len(fams)} families, {args.seconds:g} s each, seed {args.seed}")
    print("\n".join(report(list(measure(args.variants, args.seconds, args.seed, fams)))))
    print(f"total {time.perf_counter() - start:.0f} s")
