#!/usr/bin/env python
"""Smoke-check your data before training (a user tool, not a pytest test).

    python test_dataset.py --data_dir ../data --model_path /path/to/musicgen-small --target_duration 15

Loads every clip (the window training reads of it), reports durations, how many label tokens
padding masks at this duration, and clips far longer than the window.
"""
import sys

from musicgen_lora.cli.args import Parser, positive_float
from musicgen_lora.cli.runner import cli
from musicgen_lora.core.common import log

# A clip longer than this many training windows is flagged: training reads one random window of it
# per epoch, so most of it is never heard.
LONG_CLIP_WINDOWS = 4


@cli
def main(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("--data_dir", default="../data", help="Folder holding metadata.json.")
    p.add_argument("--metadata_file", default="metadata.json", help="Metadata file, relative to --data_dir.")
    p.add_argument("--model_path", default=None,
                   help="MusicGen folder, for its sample rate, hop and codebooks (default: the layout every mono "
                        "MusicGen has: 32 kHz, 50 frames/s, 4 codebooks).")
    p.add_argument("--target_duration", type=positive_float, default=15.0, help="Training window in seconds.")
    args = p.parse_args(argv)
    import numpy as np
    import torch

    from musicgen_lora.audio.codes import (
        MUSICGEN_CODEBOOKS,
        build_delay_pattern_labels,
        num_frames_for_samples,
        valid_frames_for_samples,
    )
    from musicgen_lora.audio.reader import MUSICGEN_HOP_LENGTH, MUSICGEN_SAMPLE_RATE
    from musicgen_lora.data.code_store import format_summary, store_summary
    from musicgen_lora.data.dataset import MusicDataset, check_condition_audio
    from musicgen_lora.data.splits import load_splits

    sr, hop, k, channels, melody = MUSICGEN_SAMPLE_RATE, MUSICGEN_HOP_LENGTH, MUSICGEN_CODEBOOKS, 1, None
    if args.model_path:
        from musicgen_lora.model.checkpoint import load_model_and_processor, model_info

        info = model_info(load_model_and_processor(args.model_path)[0])
        sr, hop, k, channels = info["sample_rate"], info["hop_length"], info["num_codebooks"], info["audio_channels"]
        melody = info["chroma_length"] is not None
    splits = load_splits(args.data_dir, args.metadata_file)
    store = splits.pop("store", None)  # a --codes_only folder: its codes are read from the store
    if store is not None:
        log.info(format_summary(store.dir, store_summary(store.dir)))
    n_target = int(round(args.target_duration * sr))
    frames = num_frames_for_samples(n_target, hop)
    for name, clips in splits.items():
        if not clips:
            log.info(f"{name}: no clips")
            continue
        ds = MusicDataset(clips, sr, args.target_duration, train=False, hop_length=hop, audio_channels=channels,
                          chroma=bool(melody) and store is None, store=store)
        conditioned = check_condition_audio(clips, melody=melody is not False)
        durations, valid_tokens, total_tokens, long = [], 0, 0, []
        for i in range(len(ds)):
            item = ds[i]
            durations.append(min(item["num_samples"], ds.num_samples) / sr)
            if item["num_samples"] > LONG_CLIP_WINDOWS * ds.num_samples:
                long.append((item["num_samples"] / sr, clips[i].audio_path))
            valid = valid_frames_for_samples(item["num_samples"], hop)
            labels = build_delay_pattern_labels(torch.zeros(k, frames, dtype=torch.long), valid, channels)
            valid_tokens += int((labels != -100).sum())
            total_tokens += k * frames
        d = np.array(durations)
        log.info(f"{name}: {len(ds)} clips load; used length {d.min():.1f}-{d.max():.1f} s (mean {d.mean():.1f}); "
                 f"{int((d < args.target_duration - hop / sr).sum())} shorter than {args.target_duration:g} s; "
                 f"{100 * (1 - valid_tokens / total_tokens):.1f}% of label tokens masked as padding")
        if melody:
            log.info(f"{name}: melody chroma of every window computed ({conditioned} clip(s) conditioned on "
                     f"condition_audio, the rest on themselves)")
        if long:
            seconds, path = max(long)
            log.warning(f"warning: {name}: {len(long)} clip(s) are over {LONG_CLIP_WINDOWS}x the "
                        f"{args.target_duration:g} s window (longest: {path}, {seconds:.0f} s): training reads one "
                        f"random {args.target_duration:g} s window of each per epoch, so most of such a clip is never "
                        f"heard; cut them into segments (prepare_data.py --input_dir FOLDER --output_dir NEW_DATA_DIR) "
                        f"to train on all of it")
    log.info("dataset OK")


if __name__ == "__main__":
    sys.exit(main())
