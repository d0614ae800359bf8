#!/usr/bin/env python
"""Prepare training data: metadata.json plus train/ and valid/ audio.

    python prepare_data.py --create_example --output_dir ../data     # synthetic example set

See DATA_PREPARATION.md for the metadata.json format.
"""
import argparse
import sys
from pathlib import Path

from common import UserError, cli, log


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="../data", help="Where train/, valid/ and metadata.json are written.")
    p.add_argument("--metadata_file", default="metadata.json", help="Name of the metadata file to write.")
    p.add_argument("--create_example", action="store_true",
                   help="Write a synthetic text-conditioned example set (5 styles, 8-20 s clips).")
    p.add_argument("--num_examples", type=int, default=30, help="Clips in the example set.")
    p.add_argument("--valid_ratio", type=float, default=0.2, help="Share of clips held out for validation.")
    p.add_argument("--seed", type=int, default=0, help="Seed (same seed, same output).")
    p.add_argument("--overwrite", action="store_true", help="Replace an existing metadata file.")
    return p


@cli
def main(argv=None):
    args = build_parser().parse_args(argv)
    out = Path(args.output_dir)
    if not args.create_example:
        raise UserError("nothing to do: pass --create_example (see --help)")
    if (out / args.metadata_file).exists() and not args.overwrite:
        raise UserError(f"{out / args.metadata_file}: already exists; pass --overwrite or another --output_dir")
    from example_data import create_example_dataset

    entries = create_example_dataset(out, num_clips=args.num_examples, valid_ratio=args.valid_ratio,
                                     seed=args.seed, metadata_file=args.metadata_file)
    short = sum(1 for split in entries.values() for e in split if e["duration"] < 15)
    log.info(f"wrote {len(entries['train'])} train + {len(entries['valid'])} valid clips ({short} shorter than "
             f"15 s) and {out / args.metadata_file}")


if __name__ == "__main__":
    sys.exit(main())
