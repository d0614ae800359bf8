#!/usr/bin/env python
"""Prepare training data: metadata.json plus train/ and valid/ audio, and (optionally) cached codes.

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
import os
import sys
from pathlib import Path

from musicgen_lora.cli.args import (
    Parser,
    any_int,
    finite_float,
    fraction,
    positive_float,
    positive_fraction,
    positive_int,
)
from musicgen_lora.cli.runner import cli
from musicgen_lora.core.common import UserError, log
from musicgen_lora.core.outputs import output_lock, read_manifest, remove_path, write_manifest
from musicgen_lora.data.example import create_example_dataset
from musicgen_lora.data.preparation import (
    DEFAULT_SILENCE_DB,
    TOOL,
    PrepareSettings,
    check_output,
    prepare_collection,
    summary_lines,
)


def build_parser():
    p = Parser(description=__doc__)
    p.add_argument("--output_dir", default="../data", help="Where train/, valid/ and metadata.json are written.")
    p.add_argument("--metadata_file", default="metadata.json", help="Name of the metadata file to write.")
    p.add_argument("--overwrite", action="store_true",
                   help="Replace an earlier output of this script (metadata, train/, valid/, report); files it did "
                        "not write are never replaced.")
    p.add_argument("--seed", type=any_int, default=0, help="Seed for the train/valid split (same seed, same output).")
    p.add_argument("--valid_ratio", type=fraction, default=None,
                   help="Share of segments held out for validation, whole source tracks at a time (default: 0.1 "
                        "for a collection, 0.2 for the example set).")

    c = p.add_argument_group("your collection")
    c.add_argument("--input_dir", nargs="+", default=[], metavar="DIR",
                   help="Folder(s) searched recursively for wav, flac, mp3, ogg, opus, aiff, m4a (links out of the "
                        "folder are not followed).")
    c.add_argument("--input_zip", nargs="+", default=[], metavar="ZIP",
                   help="Zip batch(es) of audio; members are read one at a time, never all extracted.")
    c.add_argument("--segment_duration", type=positive_float, default=15.0,
                   help="Seconds per segment (long tracks are cut).")
    c.add_argument("--min_segment_ratio", type=positive_fraction, default=0.8,
                   help="A last piece shorter than this share of --segment_duration is dropped (audiocraft: 0.8).")
    c.add_argument("--silence_threshold_db", type=finite_float, default=DEFAULT_SILENCE_DB,
                   help="Segments whose RMS is below this many dBFS are dropped as near-silent.")
    c.add_argument("--descriptions_file", default=None,
                   help="JSONL ({\"path\", \"description\", ...} per line) or CSV (path,description) used where "
                        "no sidecar .txt sits beside the audio.")
    c.add_argument("--default_description", default=None,
                   help="Description for files with neither a sidecar .txt nor a --descriptions_file entry.")
    c.add_argument("--require_description", action="store_true",
                   help="Stop with an error when any file has no description (default: leave it out, report it).")
    c.add_argument("--normalize_loudness", type=finite_float, default=None, metavar="LUFS",
                   help="Normalise each track's integrated loudness to this many LUFS, e.g. -14 (default: off).")
    c.add_argument("--max_member_mb", type=positive_float, default=1024.0,
                   help="A zip member that unpacks to more MB than this is skipped (reported), never unpacked.")
    c.add_argument("--max_compression_ratio", type=positive_float, default=50.0,
                   help="A zip member over 16 MB that unpacks to more than this many times its packed size is "
                        "skipped (real audio compresses ~1-1.5x; 2 GiB of zeros 1000x).")

    t = p.add_argument_group("code cache")
    t.add_argument("--pretokenize", action="store_true",
                   help="Encode every clip of --data_dir's metadata with the model's EnCodec into the code cache.")
    t.add_argument("--model_path", default=None,
                   help="MusicGen folder (or hub id) whose codec encodes (--pretokenize).")
    t.add_argument("--data_dir", default=None,
                   help="Data folder holding metadata.json to pretokenize (default: --output_dir).")
    t.add_argument("--cache_dir", default=None, help="Code cache folder (default: DATA_DIR/.codes_cache).")
    t.add_argument("--device", default="auto", help="auto, cpu or cuda, for --pretokenize.")

    s = p.add_argument_group("straight to codes (large collections)")
    s.add_argument("--codes_only", action="store_true",
                   help="Encode the collection's segments with --model_path's EnCodec into OUTPUT_DIR/code_store/ "
                        "instead of writing training WAVs (validation segments are kept as audio). One unit per zip "
                        "or --shard_size files of a folder, committed whole: a re-run skips committed units.")
    s.add_argument("--shard_size", type=positive_int, default=1000,
                   help="Files per unit of an --input_dir with --codes_only (a zip is always one unit).")
    s.add_argument("--encode_batch_size", type=positive_int, default=None,
                   help="Segments per EnCodec call with --codes_only (default: 8 on a GPU, 1 on a CPU, where "
                        "batching was slower and took more memory: 8 x 15 s segments of musicgen-small's codec "
                        "peaked at 6.8 GiB vs 4.3 GiB one at a time, benchmarks/encoding.py).")

    e = p.add_argument_group("example data")
    e.add_argument("--create_example", action="store_true",
                   help="Write a synthetic text-conditioned example set (5 styles, 8-20 s clips).")
    e.add_argument("--num_examples", type=positive_int, default=30, help="Clips in the example set.")
    e.add_argument("--stereo_example", action="store_true",
                   help="Write the example set in stereo (two takes of each clip panned left and right, L != R), "
                        "for trying stereo checkpoints.")
    p.add_argument("--no_progress", action="store_true", help="Hide progress bars.")
    return p


def create_example(args):
    out = Path(args.output_dir)
    check_output(out, args.metadata_file, args.overwrite)
    for split in ("train", "valid"):  # an earlier example set of ours: replaced whole
        remove_path(out / split)
    ratio = 0.2 if args.valid_ratio is None else args.valid_ratio
    owned = set((read_manifest(out) or {}).get("paths", []))
    write_manifest(out, TOOL, owned | {args.metadata_file, "train", "valid"})
    entries = create_example_dataset(out, num_clips=args.num_examples, valid_ratio=ratio,
                                     seed=args.seed, metadata_file=args.metadata_file, stereo=args.stereo_example)
    write_manifest(out, TOOL, [args.metadata_file] + [e["audio"] for split in entries.values() for e in split])
    short = sum(1 for split in entries.values() for e in split if e["duration"] < 15)
    log.info(f"wrote {len(entries['train'])} train + {len(entries['valid'])} valid "
             f"{'stereo ' if args.stereo_example else ''}clips ({short} shorter than "
             f"15 s) and {out / args.metadata_file}")


def pretokenize(args):
    from musicgen_lora.data.code_cache import pretokenize as fill  # loads torch: after parsing only

    data_dir = args.data_dir or args.output_dir
    stats = fill(args.model_path, data_dir, args.metadata_file, args.cache_dir, args.device,
                 progress=not args.no_progress)
    log.info(f"code cache {stats['cache_dir']}: {stats['files']} clips, {stats['encoded']} encoded, "
             f"{stats['cached']} already cached, {stats['seconds']:.1f} s ({stats['files_per_s']:.2f} files/s)")
    if "chroma" in stats:  # MusicGen-Melody
        c = stats["chroma"]
        log.info(f"chroma cache {stats['cache_dir']}/chroma: {c['files']} clips, {c['computed']} computed, "
                 f"{c['cached']} already cached")


def check_args(args):
    collection = bool(args.input_dir or args.input_zip)
    if not (args.create_example or collection or args.pretokenize):
        raise UserError("nothing to do: pass --input_dir/--input_zip, --create_example or --pretokenize (see --help)")
    if args.create_example and collection:
        raise UserError("--create_example and --input_dir/--input_zip exclude each other; run them separately")
    if args.pretokenize and not args.model_path:
        raise UserError("--pretokenize needs --model_path (the MusicGen whose EnCodec you train with)")
    if args.codes_only:
        if not collection:
            raise UserError("--codes_only encodes a collection: pass --input_dir and/or --input_zip")
        if not args.model_path:
            raise UserError("--codes_only needs --model_path (the MusicGen whose EnCodec you will train with)")
        if args.pretokenize:
            raise UserError("--codes_only already stores the codes; drop --pretokenize")


@cli
def main(argv=None):
    args = build_parser().parse_args(argv)
    check_args(args)

    collection = bool(args.input_dir or args.input_zip)
    if args.codes_only:  # no folder lock: several processes share the folder, each unit has one writer
        return prepare_codes(args)
    if args.create_example or collection:
        with output_lock(Path(args.output_dir), TOOL):  # one writer per data folder
            if args.create_example:
                create_example(args)
            else:
                prepare(args)
    if args.pretokenize:  # of --data_dir, else of the data just prepared in --output_dir
        pretokenize(args)


def settings_of(args) -> PrepareSettings:
    return PrepareSettings(
        output_dir=Path(args.output_dir), input_dirs=args.input_dir, input_zips=args.input_zip,
        metadata_file=args.metadata_file, segment_duration=args.segment_duration,
        min_segment_ratio=args.min_segment_ratio, silence_threshold_db=args.silence_threshold_db,
        descriptions_file=args.descriptions_file, default_description=args.default_description,
        require_description=args.require_description, seed=args.seed,
        valid_ratio=0.1 if args.valid_ratio is None else args.valid_ratio,
        normalize_loudness=args.normalize_loudness, overwrite=args.overwrite, progress=not args.no_progress,
        max_member_mb=args.max_member_mb, max_compression_ratio=args.max_compression_ratio)


def prepare(args):
    report = prepare_collection(settings_of(args))
    for line in summary_lines(report, Path(args.output_dir), args.metadata_file):
        log.info(line)


def prepare_codes(args):
    """--codes_only: this process's units of the collection into the code store (store_preparation.py)."""
    import torch

    from musicgen_lora.core.common import resolve_device  # torch: after parsing only
    from musicgen_lora.data.code_store import StoreKey, format_summary, store_summary
    from musicgen_lora.data.store_preparation import prepare_codes as encode_units
    from musicgen_lora.data.units import process_rank
    from musicgen_lora.model.checkpoint import load_model_and_processor
    from musicgen_lora.model.encoding import default_batch_size

    device = resolve_device(args.device)
    world = process_rank()[1]
    if world > 1 and str(device) == "cpu":  # processes sharing one machine's cores: split them, not oversubscribe
        torch.set_num_threads(max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) // world)))
    model, _ = load_model_and_processor(args.model_path, device=device)
    batch_size = args.encode_batch_size or default_batch_size(model)
    result = encode_units(settings_of(args), model, StoreKey.for_model(model), args.shard_size, batch_size)
    segments = sum(sum(r["segments"].values()) for r in result["reports"])
    files = sum(r["files"] for r in result["reports"])
    log.info(f"encoded {result['encoded_units']} unit(s), {files} files -> {segments} segments in "
             f"{result['seconds']:.1f} s; {result['skipped_units']} unit(s) were already committed")
    for z in result["broken_zips"]:
        log.warning(f"warning: {z['source']}: {z['reason']}; none of its files were read")
    log.info(format_summary(result["store_dir"], store_summary(result["store_dir"])))


if __name__ == "__main__":
    sys.exit(main())
