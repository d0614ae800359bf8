"""PrepareConfig: every setting of prepare_data.py, typed, with its flag (its parser is derived from
the fields, core/config.py); data/prepare.py's `prepare(cfg)` does the job. No torch here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from musicgen_lora.core.common import UserError
from musicgen_lora.core.config import (
    check_settings,
    finite_float,
    fraction,
    positive_float,
    positive_fraction,
    positive_int,
    seed_int,
    setting,
)

COLLECTION, CACHE = "your collection", "code store"
CODES, EXAMPLE = "straight to codes (large collections)", "example data"
# Segments whose RMS is below this many dBFS are dropped as near-silent.
DEFAULT_SILENCE_DB = -60.0


@dataclass
class PrepareConfig:
    """prepare_data.py: a collection (folders, zip batches) to metadata.json + train/valid audio, or
    straight to the code store (codes_only); the synthetic example set; the code cache ahead of
    training (pretokenize)."""

    output_dir: str = setting("../data", "Where train/, valid/ and metadata.json are written.")
    metadata_file: str = setting("metadata.json", "Name of the metadata file to write.")
    overwrite: bool = setting(False, "Replace an earlier output of this script (metadata, train/, valid/, report); "
                              "files it did not write are never replaced.")
    seed: int = setting(0, "Seed for the train/valid split (same seed, same output).", type=seed_int)
    valid_ratio: float | None = setting(None, "Share of segments held out for validation, whole source tracks at a "
                                        "time (default: 0.1 for a collection, 0.2 for the example set).",
                                        type=fraction)
    no_progress: bool = setting(False, "Hide progress bars.")

    input_dir: list = setting([], "Folder(s) searched recursively for wav, flac, mp3, ogg, opus, aiff, m4a (links out "
                              "of the folder are not followed).", group=COLLECTION, metavar="DIR")
    input_zip: list = setting([], "Zip batch(es) of audio; members are read one at a time, never all extracted.",
                              group=COLLECTION, metavar="ZIP")
    segment_duration: float = setting(15.0, "Seconds per segment (long tracks are cut).", type=positive_float,
                                      group=COLLECTION)
    min_segment_ratio: float = setting(0.8, "A last piece shorter than this share of --segment_duration is dropped "
                                       "(audiocraft: 0.8).", type=positive_fraction, group=COLLECTION)
    silence_threshold_db: float = setting(DEFAULT_SILENCE_DB, "Segments whose RMS is below this many dBFS are "
                                          "dropped as near-silent.", type=finite_float, group=COLLECTION)
    descriptions_file: str | None = setting(None, "JSONL ({\"path\", \"description\", ...} per line) or CSV "
                                            "(path,description) used where no sidecar .txt sits beside the audio.",
                                            group=COLLECTION)
    default_description: str | None = setting(None, "Description for files with neither a sidecar .txt nor a "
                                              "--descriptions_file entry.", group=COLLECTION)
    require_description: bool = setting(False, "Stop with an error when any file has no description (default: leave "
                                        "it out, report it).", group=COLLECTION)
    normalize_loudness: float | None = setting(None, "Normalise each track's integrated loudness to this many LUFS, "
                                               "e.g. -14 (default: off).", type=finite_float, group=COLLECTION,
                                               metavar="LUFS")
    tempo_key: bool = setting(False, "Estimate each segment's tempo and key (librosa's onset-autocorrelation "
                              "tempo; chroma against Krumhansl-Kessler key profiles) into metadata.json (with "
                              "--codes_only: the store's rows) as \"bpm\" and \"key\", as audiocraft's MusicInfo "
                              "holds them (~1-2 s per segment on one core).", group=COLLECTION)
    max_member_mb: float = setting(1024.0, "A zip member that unpacks to more MB than this is skipped (reported), "
                                   "never unpacked.", type=positive_float, group=COLLECTION)
    max_compression_ratio: float = setting(50.0, "A zip member over 16 MB that unpacks to more than this many times "
                                           "its packed size is skipped (real audio compresses ~1-1.5x; 2 GiB of zeros "
                                           "1000x).", type=positive_float, group=COLLECTION)

    pretokenize: bool = setting(False, "Encode every clip of --data_dir's metadata with the model's EnCodec into the "
                                "code store (DATA_DIR/code_store).", group=CACHE)
    model_path: str | None = setting(None, "MusicGen folder (or hub id) whose codec encodes (--pretokenize, "
                                     "--codes_only).", group=CACHE, aliases=("--base_model_path",))
    data_dir: str | None = setting(None, "Data folder holding metadata.json to pretokenize (default: --output_dir).",
                                   group=CACHE)
    cache_dir: str | None = setting(None, "Code store folder (default: DATA_DIR/code_store).", group=CACHE)
    device: str = setting("auto", "auto, cpu or cuda, for --pretokenize and --codes_only.", group=CACHE)

    codes_only: bool = setting(False, "Encode the collection's segments with --model_path's EnCodec into "
                               "OUTPUT_DIR/code_store/ instead of writing training WAVs (validation segments are "
                               "kept as audio). One unit per zip or --shard_size files of a folder, committed whole: "
                               "a re-run skips committed units.", group=CODES)
    shard_size: int = setting(1000, "Files per unit of an --input_dir with --codes_only (a zip is always one unit).",
                              type=positive_int, group=CODES)
    encode_batch_size: int | None = setting(None, "Segments per EnCodec call with --codes_only (default: 8 on a GPU, "
                                            "1 on a CPU, where batching was slower and took more memory: 8 x 15 s "
                                            "segments of musicgen-small's codec peaked at 6.8 GiB vs 4.3 GiB one at a "
                                            "time, python -m benchmarks.encoding).", type=positive_int, group=CODES)

    create_example: bool = setting(False, "Write a synthetic text-conditioned example set (5 styles, 8-20 s clips).",
                                   group=EXAMPLE)
    num_examples: int = setting(30, "Clips in the example set.", type=positive_int, group=EXAMPLE)
    stereo_example: bool = setting(False, "Write the example set in stereo (two takes of each clip panned left and "
                                   "right, L != R), for trying stereo checkpoints.", group=EXAMPLE)

    @property
    def collection(self) -> bool:
        return bool(self.input_dir or self.input_zip)

    @property
    def input_dirs(self) -> list:
        return list(self.input_dir)

    @property
    def input_zips(self) -> list:
        return list(self.input_zip)

    @property
    def progress(self) -> bool:
        return not self.no_progress

    def check(self):
        """Each setting's range and the rules across them; fills in valid_ratio's default."""
        check_settings(self)
        if not (self.create_example or self.collection or self.pretokenize):
            raise UserError("nothing to do: pass --input_dir/--input_zip, --create_example or --pretokenize (see "
                            "--help)")
        if self.create_example and self.collection:
            raise UserError("--create_example and --input_dir/--input_zip exclude each other; run them separately")
        if self.pretokenize and not self.model_path:
            raise UserError("--pretokenize needs --model_path (the MusicGen whose EnCodec you train with)")
        if self.codes_only:
            if not self.collection:
                raise UserError("--codes_only encodes a collection: pass --input_dir and/or --input_zip")
            if not self.model_path:
                raise UserError("--codes_only needs --model_path (the MusicGen whose EnCodec you will train with)")
            if self.pretokenize:
                raise UserError("--codes_only already stores the codes; drop --pretokenize")
        if self.valid_ratio is None:
            self.valid_ratio = 0.2 if self.create_example else 0.1
        self.output_dir = str(Path(self.output_dir))
        return self
