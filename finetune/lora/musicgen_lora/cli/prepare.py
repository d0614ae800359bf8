#!/usr/bin/env python
"""Prepare training data: metadata.json plus train/ and valid/ audio, and (optionally) the code store.

    # your collection: folders and/or zip batches of wav/flac/mp3/ogg, any rate, mono or stereo
    python prepare_data.py --input_dir /music/raw --output_dir ../data
    python prepare_data.py --input_zip /music/archive_batch_*.zip --descriptions_file /music/metadata.jsonl \\
        --output_dir ../data --normalize_loudness -14

    # a large collection straight to codes: no training WAVs, one committed unit per zip, resumable;
    # several processes/GPUs: accelerate launch prepare_data.py ... (each takes its own units)
    python prepare_data.py --input_zip /music/archive_batch_*.zip --output_dir ../data_large \
        --model_path /path/to/musicgen-small --codes_only

    # encode every clip with EnCodec once, ahead of training (train_lora.py reads the same cache)
    python prepare_data.py --pretokenize --model_path /path/to/musicgen-small --data_dir ../data

    python prepare_data.py --create_example --output_dir ../data     # synthetic example set

See DATA_PREPARATION.md for the rules (segments, silence, descriptions, split) and the cache.
"""
import sys

from musicgen_lora.cli.args import Parser, add_settings, settings_from
from musicgen_lora.cli.runner import cli
from musicgen_lora.data.config import PrepareConfig


def build_parser():
    return add_settings(Parser(description=__doc__), PrepareConfig)


@cli
def main(argv=None):
    cfg = settings_from(PrepareConfig, build_parser().parse_args(argv))
    from musicgen_lora.data.prepare import prepare

    prepare(cfg)


if __name__ == "__main__":
    sys.exit(main())
