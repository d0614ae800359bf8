#!/usr/bin/env python
"""Smoke-check your data before training (a user tool, not a pytest test).

    python test_dataset.py --data_dir ../data --model_path /path/to/musicgen-small --target_duration 15

Loads every clip, reports durations, and how many label tokens padding masks at this duration.
"""
import argparse
import sys

import numpy as np
import torch

from common import cli, log
from dataset import MusicDataset, build_delay_pattern_labels, num_frames_for_samples, read_metadata, \
    valid_frames_for_samples


@cli
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default="../data", help="Folder holding metadata.json.")
    p.add_argument("--metadata_file", default="metadata.json", help="Metadata file, relative to --data_dir.")
    p.add_argument("--model_path", default=None, help="MusicGen folder, for its sample rate, hop and codebooks "
                                                     "(default: musicgen-small's 32 kHz, 640, 4).")
    p.add_argument("--target_duration", type=float, default=15.0, help="Training window in seconds.")
    args = p.parse_args(argv)
    sr, hop, k = 32000, 640, 4
    if args.model_path:
        from modeling import load_model_and_processor, model_info

        info = model_info(load_model_and_processor(args.model_path)[0])
        sr, hop, k = info["sample_rate"], info["hop_length"], info["num_codebooks"]
    splits = read_metadata(args.data_dir, args.metadata_file)
    n_target = int(round(args.target_duration * sr))
    frames = num_frames_for_samples(n_target, hop)
    for name, clips in splits.items():
        if not clips:
            log.info(f"{name}: no clips")
            continue
        ds = MusicDataset(clips, sr, args.target_duration, train=False)
        durations, valid_tokens, total_tokens = [], 0, 0
        for i in range(len(ds)):
            item = ds[i]
            durations.append(min(item["num_samples"], ds.num_samples) / sr)
            valid = valid_frames_for_samples(item["num_samples"], hop)
            labels = build_delay_pattern_labels(torch.zeros(k, frames, dtype=torch.long), valid)
            valid_tokens += int((labels != -100).sum())
            total_tokens += k * frames
        d = np.array(durations)
        log.info(f"{name}: {len(ds)} clips load; used length {d.min():.1f}-{d.max():.1f} s (mean {d.mean():.1f}); "
                 f"{int((d < args.target_duration - hop / sr).sum())} shorter than {args.target_duration:g} s; "
                 f"{100 * (1 - valid_tokens / total_tokens):.1f}% of label tokens masked as padding")
    log.info("dataset OK")


if __name__ == "__main__":
    sys.exit(main())
