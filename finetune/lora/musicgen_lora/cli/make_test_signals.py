"""Write clips with known answers, to see what evaluate.py's flags catch (and to check a threshold).

    python finetune/scripts/make_test_signals.py --output_dir /tmp/signals
    python finetune/lora/evaluate.py --score_only --input_dir /tmp/signals --output_dir /tmp/signals_scored

One folder per case (steady, fading, noise, silent_tail, clipped, repetitive, crackle), each tripping
exactly its own flag, and two that must trip none (varied_beat: chords and a melody over a steady
beat; drum_loop: played drums alone); `--stereo` adds 2-channel cases (stereo, collapsed,
phase_inverted); `--corrupt` an unreadable file. The detection and false-positive figures over many
randomized clips: benchmarks/flag_figures.py.
The cases and their expected flags: musicgen_lora/evaluation/signals.py.
"""
import sys
from pathlib import Path

from musicgen_lora.cli.args import Parser, positive_float
from musicgen_lora.cli.runner import cli
from musicgen_lora.evaluation.signals import write_signals


@cli
def main(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("--output_dir", required=True, help="Folder to write the clips into (one sub-folder per case).")
    p.add_argument("--duration", type=positive_float, default=15.0, help="Seconds per clip.")
    p.add_argument("--corrupt", action="store_true", help="Also write steady/99_corrupt.wav, an unreadable file.")
    p.add_argument("--stereo", action="store_true",
                   help="Also write 2-channel clips: stereo/ (no flags), collapsed/ (L = R: collapsed_to_mono), "
                        "phase_inverted/ (R polarity flipped: phase_inverted).")
    p.add_argument("--overwrite", action="store_true",
                   help="Replace clips this script wrote earlier in --output_dir (anything else is never replaced).")
    args = p.parse_args(argv)

    out = Path(args.output_dir)
    clips = write_signals(out, args.duration, args.corrupt, args.overwrite, stereo=args.stereo)
    print(f"wrote {len(clips)} clips{' + 1 corrupt file' if args.corrupt else ''} to {out}: "
          f"{', '.join(sorted({n.split('/')[0] for n in clips}))}")


if __name__ == "__main__":
    sys.exit(main())
