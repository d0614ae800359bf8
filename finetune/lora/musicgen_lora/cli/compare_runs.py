"""Compare training runs in one table, plot their validation curves, and review a run's logs.

    python finetune/scripts/compare_runs.py finetune/output_*                  # markdown table on stdout
    python finetune/scripts/compare_runs.py 'finetune/output_*' --output runs.md   # or .csv / .html
    python finetune/scripts/compare_runs.py --review finetune/output_epoch1        # the review gate

The table has one row per run: status, the hyper-parameters that differ between the runs (all of
them with --all), train and validation loss per epoch, best epoch and loss, steps/s and the verdicts
of evaluate.py (RUN/evaluation*/summary.json), and a listening column once `evaluate.py --tally` has
counted an evaluation's blind ratings. runs_curves.png (validation loss against step, one
line per run, ln(vocab) dashed) is written beside --output, or in the current directory. Crashed,
running or half-written runs appear with what is known. Definitions and review thresholds: USAGE.md.
"""
import glob
import os
import sys
from pathlib import Path

from musicgen_lora.cli.args import Parser, positive_float
from musicgen_lora.cli.runner import cli
from musicgen_lora.core.common import UserError, log
from musicgen_lora.core.outputs import atomic_write_text
from musicgen_lora.reporting.review import review_lines
from musicgen_lora.reporting.table import RUNNING_MINUTES, expand_run_paths, load_run, load_runs, plot_curves, render

FORMATS = {".md": "md", ".markdown": "md", ".csv": "csv", ".html": "html", ".htm": "html"}


def build_parser():
    p = Parser(description=__doc__)
    p.add_argument("runs", nargs="*", default=[],
                   help="Run directories (train_lora.py --output_dir); globs such as 'output_*' are expanded "
                        "here too, so they work quoted.")
    p.add_argument("--output", default=None,
                   help="Write the table to FILE.md, FILE.csv or FILE.html (default: markdown on stdout).")
    p.add_argument("--all", action="store_true",
                   help="Show every hyper-parameter, not only those that differ between the runs.")
    p.add_argument("--plot", default=None,
                   help="Where to write the validation-curve plot (default: runs_curves.png beside --output, "
                        "or in the current directory).")
    p.add_argument("--no_plot", action="store_true", help="Do not write the plot.")
    p.add_argument("--review", action="append", default=[], metavar="RUN_DIR",
                   help="Print the review gate for this run (repeatable); with no other runs, no table.")
    p.add_argument("--running_minutes", type=positive_float, default=RUNNING_MINUTES,
                   help="A run without logs/summary.json whose metrics.jsonl changed within this many minutes "
                        "is shown as running rather than crashed.")
    return p


@cli
def main(argv=None):
    args = build_parser().parse_args(argv)
    if not args.runs and not args.review:
        raise UserError("no run directories given; pass RUN_DIR... (e.g. ../output_*) or --review RUN_DIR")
    if args.runs:
        paths = expand_run_paths(args.runs)
        for pattern in args.runs:
            if glob.has_magic(pattern) and not glob.glob(pattern):
                log.warning(f"warning: no directory matches {pattern}")
        if not paths:
            raise UserError(f"no run directory matches {' '.join(args.runs)}")
        runs = load_runs(paths, args.running_minutes)
        fmt = "md"
        if args.output:
            fmt = FORMATS.get(Path(args.output).suffix.lower())
            if fmt is None:
                raise UserError(f"--output {args.output}: use a .md, .csv or .html file name")
        plot = None
        if not args.no_plot:
            target = Path(args.plot) if args.plot else \
                (Path(args.output).parent if args.output else Path.cwd()) / "runs_curves.png"
            plot = plot_curves(runs, target)
            log.info(f"wrote {plot}" if plot else "no validation losses logged yet: no plot written")
        href = os.path.relpath(plot, Path(args.output).resolve().parent) if plot and args.output else None
        text = render(runs, fmt, show_all=args.all, plot_href=href)
        if args.output:
            atomic_write_text(Path(args.output), text)
            log.info(f"wrote {args.output} ({len(runs)} run(s))")
        else:
            sys.stdout.write(text)
    for i, run_dir in enumerate(expand_run_paths(args.review)):
        if args.runs or i:
            print()
        print("\n".join(review_lines(load_run(run_dir, args.running_minutes))))


if __name__ == "__main__":
    sys.exit(main())
