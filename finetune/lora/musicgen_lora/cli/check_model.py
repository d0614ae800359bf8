#!/usr/bin/env python
"""Smoke-check a model (and optionally an adapter) on your validation clips (a user tool, not pytest).

    python test_model.py --model_path /path/to/musicgen-small --data_dir ../data [--adapter ../output/best_model]

Loads the model, checks that the toolkit's training labels line up with how the model generates
(greedy generation of 30 frames, then one teacher-forced forward on labels built from those codes:
the argmax must be the generated token at 100% of positions, for a mono or a stereo checkpoint alike;
a wrong layout is printed beside it as a control), runs one forward with delay-pattern labels on
your clips, and prints the validation loss beside ln(vocab): a pretrained MusicGen on in-style music
sits well below it. A MusicGen-Melody checkpoint (melody / stereo-melody) is checked with a melody:
one prompt conditioned on the chroma of a synthetic note sequence, the other on the null melody.
"""
import math
import sys

from musicgen_lora.cli.args import Parser, nonneg_int, positive_float, positive_int
from musicgen_lora.cli.runner import cli
from musicgen_lora.core.common import UserError, log, uniform_loss

# The melody check's tune: an arpeggio (semitones above C) of 0.5 s notes, ~4 chroma frames each.
MELODY_NOTES = (0, 4, 7, 11, 2, 5, 9, 12)


def model_type(melody: bool, audio_channels: int) -> str:
    """mono, stereo, melody or stereo-melody: which released layout (musicgen-small, -stereo-small,
    -melody, -stereo-melody) the checkpoint has."""
    channels = {1: "mono", 2: "stereo"}.get(audio_channels, f"{audio_channels}-channel")
    if not melody:
        return channels
    return "melody" if channels == "mono" else f"{channels}-melody"


def melody_chroma(sample_rate: int):
    """(frames, 12) chroma of a synthetic tone sequence (MELODY_NOTES) at the model's rate."""
    from musicgen_lora.audio.chroma import chroma_features
    from musicgen_lora.evaluation.signals import note_sequence

    return chroma_features(note_sequence(MELODY_NOTES, sr=sample_rate), sample_rate)[0]


@cli
def main(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("--model_path", required=True, help="MusicGen folder or hub id.")
    p.add_argument("--data_dir", default="../data", help="Folder holding metadata.json.")
    p.add_argument("--metadata_file", default="metadata.json", help="Metadata file, relative to --data_dir.")
    p.add_argument("--adapter", default=None, help="Optional LoRA adapter folder to evaluate on top.")
    p.add_argument("--target_duration", type=positive_float, default=15.0, help="Window in seconds.")
    p.add_argument("--max_clips", type=nonneg_int, default=8, help="Validation clips to use (0 = all).")
    p.add_argument("--batch_size", type=positive_int, default=2, help="Clips per forward pass.")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda.")
    args = p.parse_args(argv)
    import torch

    from musicgen_lora.core.common import resolve_device
    from musicgen_lora.data.dataset import Collator, MusicDataset
    from musicgen_lora.data.metadata import report_long_descriptions, validation_clips
    from musicgen_lora.data.splits import load_splits
    from musicgen_lora.generation.generate import label_agreement
    from musicgen_lora.model.checkpoint import is_melody, load_model_and_processor, model_info
    from musicgen_lora.model.lora import count_parameters, load_adapter
    from musicgen_lora.model.loss import evaluate_loss

    device = resolve_device(args.device)
    model, processor = load_model_and_processor(args.model_path, device=device)
    if args.adapter:
        model = load_adapter(model, args.adapter)
    info = model_info(model)
    melody = is_melody(model)
    _, total = count_parameters(model)
    log.info(f"model loads: model type {model_type(melody, info['audio_channels'])}, {total / 1e6:.1f} M parameters, "
             f"{info['num_codebooks']} codebooks x {info['vocab_size']} codes, {info['audio_channels']} audio "
             f"channel(s), {info['sample_rate']} Hz, {info['frame_rate']:g} frames/s")
    prompts = ["lo-fi hip hop beat with mellow piano", "energetic techno with a driving kick"]
    # Melody: the first prompt with a tune, the second with the null melody (both conditions training sees).
    chroma = [melody_chroma(info["sample_rate"]), None] if melody else None
    right = label_agreement(model, processor, prompts, chroma=chroma)
    wrong = label_agreement(model, processor, prompts, audio_channels=1 if info["audio_channels"] > 1 else
                            info["num_codebooks"], chroma=chroma)  # stereo with mono delays; mono with no delay
    with_melody = " with a melody" if melody else ""
    log.info(f"labels line up with generate(){with_melody}: {100 * right:.1f}% of positions (a wrong layout: "
             f"{100 * wrong:.1f}%)")
    if right < 1.0:
        raise UserError(f"{args.model_path}: training labels match this model's own generation at only "
                        f"{100 * right:.1f}% of positions; this checkpoint's code layout is not one the toolkit knows")
    splits = load_splits(args.data_dir, args.metadata_file)  # a --codes_only folder: its kept validation audio
    clips = validation_clips(splits)
    if args.max_clips:
        clips = clips[: args.max_clips]
    report_long_descriptions(processor.tokenizer, clips)
    ds = MusicDataset(clips, info["sample_rate"], args.target_duration, train=False, hop_length=info["hop_length"],
                      audio_channels=info["audio_channels"])
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, collate_fn=Collator(
        processor, int(round(args.target_duration * info["sample_rate"])), info["hop_length"]))
    res = evaluate_loss(model, loader)
    if not math.isfinite(res["loss"]):
        raise UserError(f"forward gave a non-finite loss ({res['loss']}) on {args.data_dir}; check the model files")
    ln_v = uniform_loss(info["vocab_size"])
    per_cb = ", ".join(f"{x:.3f}" for x in res["per_codebook"])
    log.info(f"validation loss {res['loss']:.4f} over {res['tokens']} tokens (per codebook {per_cb}); "
             f"uniform guess ln({info['vocab_size']}) = {ln_v:.4f}")
    if res["loss"] > ln_v:
        log.warning("warning: loss above a uniform guess: labels/data problem for a pretrained model "
                    "(random-weight test models sit near it)")
    log.info("model OK")


if __name__ == "__main__":
    sys.exit(main())
