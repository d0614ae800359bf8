"""The clips of a data folder, whichever way it was prepared: metadata.json and its audio (the WAV
route), or a code store (prepare_data.py --codes_only: codes only, validation audio kept). The one
place the trainer, evaluate.py and the smoke checks ask "which clips are there"."""
from pathlib import Path

from musicgen_lora.data.metadata import read_metadata

# code_store (numpy, torch) is imported inside the functions: the scripts' --help imports this module.


def is_store_folder(data_dir, metadata_file: str = "metadata.json") -> bool:
    """A --codes_only folder: committed store units and no metadata file (with both, the metadata wins:
    someone prepared WAVs there on purpose)."""
    from musicgen_lora.data import code_store

    return code_store.has_store(data_dir) and not (Path(data_dir) / metadata_file).exists()


def load_splits(data_dir, metadata_file: str = "metadata.json", check_files: bool = True,
                strict_store: bool = False) -> dict:
    """{"train": [Clip], "valid": [Clip]}, plus "store" (the open code_store.CodeStore) for a store folder
    (strict_store: a damaged unit is an error instead of skipped with a warning)."""
    if is_store_folder(data_dir, metadata_file):
        from musicgen_lora.data import code_store

        store, splits = code_store.store_splits(data_dir, strict_store)
        return {**splits, "store": store}
    return read_metadata(data_dir, metadata_file, check_files=check_files)
