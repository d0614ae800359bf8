"""The clips of a data folder, whichever way it was prepared: metadata.json and its audio (the WAV
route), or a code store (prepare_data.py --codes_only: codes only, validation audio kept). The one
place the trainer, evaluate.py and the smoke checks ask "which clips are there".

Data without a valid split gets one here (hold_out_tracks): whole source tracks are taken out of
training, so the validation loss measures what the adapter learned about the style, not what it
remembers of the clips. Validating on training clips hid overfitting behind a falling loss.
"""
import hashlib
import json
from dataclasses import replace
from pathlib import Path

from musicgen_lora.data.metadata import read_metadata

DEFAULT_VALID_RATIO = 0.1

# code_store (numpy, torch) is imported inside the functions: the scripts' --help imports this module.


def is_store_folder(data_dir, metadata_file: str = "metadata.json") -> bool:
    """A --codes_only folder: committed store units and no metadata file (with both, the metadata wins:
    someone prepared WAVs there on purpose)."""
    from musicgen_lora.data import code_store

    return code_store.has_store(data_dir) and not (Path(data_dir) / metadata_file).exists()


def load_splits(data_dir, metadata_file: str = "metadata.json", check_files: bool = True,
                valid_ratio: float = DEFAULT_VALID_RATIO, strict_store: bool = False) -> dict:
    """{"train": [Clip], "valid": [Clip]}, plus "store" (the open code_store.CodeStore) for a store folder
    and "held_out" when the valid split was made here (hold_out_tracks, with valid_ratio); strict_store: a
    damaged store unit is an error instead of skipped with a warning."""
    if is_store_folder(data_dir, metadata_file):
        from musicgen_lora.data import code_store

        store, splits = code_store.store_splits(data_dir, strict_store)
        if not splits["valid"]:  # the rows' source tracks, read only when a split has to be made
            splits["train"] = [replace(c, track=store.clip_info(c.store_index).get("source"))
                               for c in splits["train"]]
        return hold_out_tracks({**splits, "store": store}, valid_ratio)
    return hold_out_tracks(read_metadata(data_dir, metadata_file, check_files=check_files), valid_ratio)


def track_of(clip) -> str:
    """The source track of a clip: metadata's "source" (prepare_data.py writes it for every segment it
    cuts), else the clip itself. File names are not guessed from: clip_001.wav and clip_002.wav are
    as often two pieces as two segments of one."""
    return clip.track or str(clip.audio_path)


def hold_out_tracks(splits: dict, valid_ratio: float = DEFAULT_VALID_RATIO) -> dict:
    """Splits with a valid split: as given when there is one; else round(valid_ratio x tracks) source
    tracks (at least one, never all) moved from train to valid, chosen by a hash of the track name --
    the same tracks for the trainer, a resumed run and evaluate.py, whatever the clips' order or the
    training seed (run_config.json records valid_ratio; evaluate.py reads it).
    `held_out` records what was done ({"tracks", "of", "clips", "valid_ratio"}); data of one track
    (or valid_ratio 0) is returned as it is: validation_clips then falls back on training clips."""
    if splits["valid"] or not valid_ratio:
        return splits
    tracks = {}
    for clip in splits["train"]:
        tracks.setdefault(track_of(clip), []).append(clip)
    if len(tracks) < 2:
        return splits

    def draw(name):
        return hashlib.sha256(json.dumps(["valid", name]).encode("utf-8", "surrogateescape")).digest()

    count = min(len(tracks) - 1, max(1, round(valid_ratio * len(tracks))))
    held = set(sorted(tracks, key=draw)[:count])
    valid = [replace(c, split="valid") for c in splits["train"] if track_of(c) in held]
    return {**splits, "train": [c for c in splits["train"] if track_of(c) not in held], "valid": valid,
            "held_out": {"tracks": count, "of": len(tracks), "clips": len(valid), "valid_ratio": valid_ratio}}
