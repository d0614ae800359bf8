"""prepare_data.py's job as a library call: `prepare(PrepareConfig)` -- a collection to metadata.json
+ train/valid audio (or, with codes_only, straight to the code store), the synthetic example set,
and the code store ahead of training (pretokenize)."""
from __future__ import annotations

import os
from pathlib import Path

from musicgen_lora.core.common import log
from musicgen_lora.core.outputs import output_lock, read_manifest, remove_path, write_manifest
from musicgen_lora.data.config import PrepareConfig
from musicgen_lora.data.preparation import TOOL, check_output, prepare_collection, summary_lines


def prepare(cfg: PrepareConfig) -> dict:
    """Do what cfg asks (checked first); returns what was done (the collection's report, the example
    set's entries, the cache's figures) by step."""
    cfg.check()
    done = {}
    if cfg.codes_only:  # no folder lock: several processes share the folder, each unit has one writer
        done["codes"] = prepare_codes(cfg)
        return done
    if cfg.create_example or cfg.collection:
        with output_lock(Path(cfg.output_dir), TOOL):  # one writer per data folder
            if cfg.create_example:
                done["example"] = create_example(cfg)
            else:
                done["collection"] = prepare_audio(cfg)
    if cfg.pretokenize:  # of --data_dir, else of the data just prepared in --output_dir
        done["pretokenize"] = pretokenize(cfg)
    return done


def create_example(cfg: PrepareConfig) -> dict:
    from musicgen_lora.data.example import create_example_dataset

    out = Path(cfg.output_dir)
    check_output(out, cfg.metadata_file, cfg.overwrite)
    for split in ("train", "valid"):  # an earlier example set of ours: replaced whole
        remove_path(out / split)
    owned = set((read_manifest(out) or {}).get("paths", []))
    write_manifest(out, TOOL, owned | {cfg.metadata_file, "train", "valid"})
    entries = create_example_dataset(out, num_clips=cfg.num_examples, valid_ratio=cfg.valid_ratio,
                                     seed=cfg.seed, metadata_file=cfg.metadata_file, stereo=cfg.stereo_example)
    write_manifest(out, TOOL, [cfg.metadata_file] + [e["audio"] for split in entries.values() for e in split])
    short = sum(1 for split in entries.values() for e in split if e["duration"] < 15)
    log.info(f"wrote {len(entries['train'])} train + {len(entries['valid'])} valid "
             f"{'stereo ' if cfg.stereo_example else ''}clips ({short} shorter than "
             f"15 s) and {out / cfg.metadata_file}")
    return entries


def pretokenize(cfg: PrepareConfig) -> dict:
    from musicgen_lora.data.store_update import pretokenize as fill  # loads torch: after parsing only

    data_dir = cfg.data_dir or cfg.output_dir
    return fill(cfg.model_path, data_dir, cfg.metadata_file, cfg.cache_dir, cfg.device, progress=cfg.progress)


def prepare_audio(cfg: PrepareConfig) -> dict:
    report = prepare_collection(cfg)
    for line in summary_lines(report, Path(cfg.output_dir), cfg.metadata_file):
        log.info(line)
    return report


def prepare_codes(cfg: PrepareConfig) -> dict:
    """--codes_only: this process's units of the collection into the code store (store_preparation.py)."""
    import torch

    from musicgen_lora.core.common import resolve_device  # torch: after parsing only
    from musicgen_lora.data.code_store import StoreKey, format_summary, store_summary
    from musicgen_lora.data.store_preparation import prepare_codes as encode_units
    from musicgen_lora.data.units import process_rank
    from musicgen_lora.model.checkpoint import load_model_and_processor
    from musicgen_lora.model.encoding import default_batch_size

    device = resolve_device(cfg.device)
    world = process_rank()[1]
    if world > 1 and str(device) == "cpu":  # processes sharing one machine's cores: split them, not oversubscribe
        torch.set_num_threads(max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) // world)))
    model, _ = load_model_and_processor(cfg.model_path, device=device)
    batch_size = cfg.encode_batch_size or default_batch_size(model)
    result = encode_units(cfg, model, StoreKey.for_model(model), cfg.shard_size, batch_size)
    segments = sum(sum(r["segments"].values()) for r in result["reports"])
    files = sum(r["files"] for r in result["reports"])
    log.info(f"encoded {result['encoded_units']} unit(s), {files} files -> {segments} segments in "
             f"{result['seconds']:.1f} s; {result['skipped_units']} unit(s) were already committed")
    from musicgen_lora.data.preparation import summary_lines
    from musicgen_lora.data.store_preparation import store_report

    report = store_report(result["store_dir"], result["broken_zips"])  # the whole store, as the WAV route says it
    for line in summary_lines(report, Path(result["store_dir"]), None):
        (log.warning if line.startswith("warning") else log.info)(line)
    summary = store_summary(result["store_dir"])
    log.info(format_summary(result["store_dir"], summary))
    if summary["clips"]["train"] and not summary["clips"]["valid"]:
        log.warning(f"warning: {result['store_dir']}: 0 valid clips (--valid_ratio {cfg.valid_ratio:g}: each track "
                    f"goes to validation by a hash of its name, and none did); train_lora.py will hold out whole "
                    f"source tracks of the training clips for its validation loss, but evaluate.py's FAD and "
                    f"listening need kept validation audio")
    return result
