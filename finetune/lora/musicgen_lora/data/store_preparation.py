"""prepare_data.py --codes_only: a collection straight to EnCodec codes in the sharded code store.

The WAV route (preparation.prepare_collection) writes every 15 s segment as a 32 kHz WAV: ~267 GB
for the seed's 1,160 hours, which that user's disk could not hold. This route reads the same sources
with the same rules -- decode and resample, (normalise,) cut into --segment_duration pieces, drop
near-silent ones and short tails, describe, split by track -- and stores only the codes, one unit
per zip or folder shard (units.py), each committed whole (code_store.UnitWriter). Audio is kept only
where a person or a metric needs it: the validation segments, for FAD and listening
(units/<id>/audio/, committed with the unit).

One process, or several under `accelerate launch` / torchrun: each takes its own units, skips those
already committed with the same identity, and never writes another's files. A zip whose content
changed is redone: its old unit (codes of the old content, no longer true) is removed first.
"""
from __future__ import annotations

import hashlib
import io
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm.auto import tqdm

from musicgen_lora.audio.reader import to_channels
from musicgen_lora.core.common import UserError, log
from musicgen_lora.data import code_store
from musicgen_lora.data.code_cache import file_sha256
from musicgen_lora.data.config import PrepareConfig
from musicgen_lora.data.preparation import (
    COLLECTION_INDEX,
    SAMPLE_RATE,
    DescriptionIndex,
    FoundIndexes,
    ZipLimits,
    ZipReader,
    decode_source,
    describe,
    normalize_loudness,
    output_stem,
    rms_dbfs,
    segment_bounds,
)
from musicgen_lora.data.units import Unit, assigned, in_valid, plan_units, process_rank
from musicgen_lora.model.checkpoint import model_info, unwrap_base


@dataclass
class Segment:
    name: str            # <source stem>_NNN, as the WAV route names its files
    audio: np.ndarray    # (C, n) at the model's rate and channels
    description: str
    split: str
    source: str
    start: float


def source_segments(src, s: PrepareConfig, text: str, zips: ZipReader, channels: int, skipped: list,
                    dropped: dict) -> list[Segment]:
    """One source's kept segments, by the WAV route's rules (preparation.cut_tracks)."""
    try:
        wav = decode_source(src, zips)  # (n,) or (n, 2) at SAMPLE_RATE
    except UserError as e:
        skipped.append({"source": src.name, "kind": "unreadable", "reason": str(e)})
        return []
    if s.normalize_loudness is not None:
        wav, _info = normalize_loudness(wav, SAMPLE_RATE, s.normalize_loudness)
    seg_len = int(round(s.segment_duration * SAMPLE_RATE))
    bounds = segment_bounds(len(wav), seg_len, s.min_segment_ratio)
    dropped["short_tail"] += math.ceil(len(wav) / seg_len) - len(bounds)
    if not bounds:
        seconds = len(wav) / SAMPLE_RATE
        skipped.append({"source": src.name, "kind": "too short", "reason": f"too short: {seconds:.2f} s"})
        return []
    split = "valid" if in_valid(src.name, s.seed, s.valid_ratio) else "train"
    stem, out = output_stem(src.name), []
    for i, (a, b) in enumerate(bounds):
        piece = np.clip(wav[a:b], -1.0, 1.0)
        if rms_dbfs(piece) < s.silence_threshold_db:
            dropped["near_silent"] += 1
            continue
        audio = to_channels(as_pcm16(piece).reshape(len(piece), -1).T, channels)
        out.append(Segment(f"{stem}_{i:03d}", audio, text, split, src.name, round(a / SAMPLE_RATE, 3)))
    if not out:
        skipped.append({"source": src.name, "kind": "near-silent",
                        "reason": f"near-silent: every segment's RMS is below {s.silence_threshold_db:g} dBFS"})
    return out


def as_pcm16(wav: np.ndarray) -> np.ndarray:
    """The segment as the WAV route's 16-bit file reads back (soundfile both ways, in memory): the
    codes of either route are then the same, and the kept validation audio is exactly what was
    encoded."""
    buf = io.BytesIO()
    sf.write(buf, wav, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    buf.seek(0)
    return sf.read(buf, dtype="float32")[0]


def encode_segments(model, segments: list[Segment], batch_size: int) -> list[torch.Tensor]:
    """Codes (K, T) of each segment, several per codec call (encoding.encode_batched: equal to one at a
    time; a segment is shorter than one encoding piece, and the 15 s segments share one length)."""
    from musicgen_lora.model.encoding import encode_batched

    items = ((i, [torch.from_numpy(seg.audio)]) for i, seg in enumerate(segments))
    return [codes for _, codes in encode_batched(model, items, batch_size=batch_size)]


def prepare_unit(unit: Unit, s: PrepareConfig, model, key, store_dir: Path, zips: ZipReader,
                 index: DescriptionIndex, found: FoundIndexes, batch_size: int = 8, bar=None) -> dict:
    """Encode one unit into the store and commit it; returns its report (also kept in unit.json)."""
    channels = model_info(model)["audio_channels"]
    skipped, dropped, missing = list(unit.refused), {"near_silent": 0, "short_tail": 0}, []
    counts = {"train": 0, "valid": 0}
    with code_store.UnitWriter(store_dir, unit.id, key, unit.identity) as writer:
        pending: list[Segment] = []

        def flush():
            for seg, codes in zip(pending, encode_segments(model, pending, batch_size)):
                extra = {"start": seg.start}
                if seg.split == "valid":  # kept as audio: FAD and the listening test need it
                    extra["audio"] = write_valid_audio(writer, seg)
                writer.add(seg.name, codes, seg.audio.shape[1], seg.description, seg.split,
                           round(seg.audio.shape[1] / SAMPLE_RATE, 3), seg.source, content=segment_digest(seg),
                           **extra)
                counts[seg.split] += 1
            pending.clear()

        for src in unit.sources:
            text, _origin = describe(src, index, s.default_description, zips, found)
            if text is None:
                missing.append(src.name)
            else:
                pending += source_segments(src, s, text, zips, channels, skipped, dropped)
                if len(pending) >= batch_size:
                    flush()
            if bar is not None:
                bar.update(1)
        flush()
        report = {"unit": unit.id, "files": unit.num_files, "segments": counts, "skipped": skipped,
                  "no_description": missing, "dropped": dropped}
        writer.notes["report"] = report  # kept in unit.json: what this unit left out, and why
        writer.notes["encoded_on"] = encoded_on(model)
    return report


def encoded_on(model) -> dict:
    """Where the codes were computed. On a CPU the thread count changes a few codes (near-ties between
    codebook entries round the other way: ~1 in 10,000 between 1 and 2 threads, benchmarks/prepare.py),
    so a unit says how it was made; the store key leaves it out, since either encoding is a right one."""
    device = next(unwrap_base(model).audio_encoder.parameters()).device
    return {"device": str(device), "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "torch": torch.__version__}


def segment_digest(seg: Segment) -> str:
    """The row's content key: sha256 of the segment as the 16-bit WAV write_valid_audio keeps (a kept
    validation file's own sha256), so every route's rows are found by content (code_store)."""
    buf = io.BytesIO()
    sf.write(buf, seg.audio.T, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return hashlib.sha256(buf.getvalue()).hexdigest()


def write_valid_audio(writer, seg: Segment) -> str:
    """The validation segment as 16-bit WAV inside the unit being written; its path in the unit."""
    rel = f"audio/{seg.name}.wav"
    path = writer.tmp / rel
    path.parent.mkdir(exist_ok=True)
    sf.write(path, seg.audio.T, SAMPLE_RATE, subtype="PCM_16")
    return rel


def _file_digest(path) -> str | None:
    return file_sha256(path) if path is not None and Path(path).is_file() else None


def preparation_rules(s: PrepareConfig) -> dict:
    """Everything besides the audio that decides a unit's contents: cutting, silence, split, loudness
    and where descriptions come from. Part of each unit's identity, so a re-run with other rules
    (or an edited descriptions file) redoes the units instead of keeping ones made another way."""
    beside = sorted({str(Path(z).parent / COLLECTION_INDEX) for z in s.input_zips} |
                    {str(Path(d) / COLLECTION_INDEX) for d in s.input_dirs})
    return {"segment_duration": s.segment_duration, "min_segment_ratio": s.min_segment_ratio,
            "silence_threshold_db": s.silence_threshold_db, "normalize_loudness": s.normalize_loudness,
            "valid_ratio": s.valid_ratio, "seed": s.seed, "default_description": s.default_description,
            "descriptions_file": _file_digest(s.descriptions_file),
            "metadata_jsonl": {p: _file_digest(p) for p in beside if Path(p).is_file()}}


def prepare_codes(s: PrepareConfig, model, key, shard_size: int, batch_size: int = 8) -> dict:
    """Plan the units, skip the committed ones, encode this process's share; returns a summary."""
    out = Path(s.output_dir)
    store_dir = code_store.default_store_dir(out)
    units, broken = plan_units(s.input_dirs, s.input_zips, shard_size, exclude=[out],
                               limits=ZipLimits(s.max_member_mb, s.max_compression_ratio))
    if not units and not broken:
        raise UserError(f"{', '.join(map(str, [*s.input_dirs, *s.input_zips]))}: no audio files found")
    rules = preparation_rules(s)
    units = [replace(u, identity={**u.identity, "rules": rules}) for u in units]
    rank, world = process_rank()
    mine = assigned(units, rank, world)
    todo = [u for u in mine if not code_store.is_committed(store_dir, u.id, u.identity)]
    done = len(mine) - len(todo)
    log.info(f"code store {store_dir}: {len(units)} unit(s) in the collection; process {rank} of {world} has "
             f"{len(mine)}: {done} already committed (skipped), {len(todo)} to encode "
             f"({sum(u.num_files for u in todo)} files)")
    index, found, zips = DescriptionIndex(s.descriptions_file), FoundIndexes(s.input_dirs, s.input_zips), ZipReader()
    reports, start = [], time.time()
    bar = tqdm(total=sum(u.num_files for u in todo), desc="encoding", unit="file", disable=not s.progress)
    try:
        for unit in todo:
            if code_store.units_dir(store_dir).joinpath(unit.id).exists():  # made from other content: redo
                code_store.remove_unit(store_dir, unit.id)
            reports.append(prepare_unit(unit, s, model, key, store_dir, zips, index, found, batch_size, bar))
    finally:
        bar.close()
        zips.close()
    return {"units": len(units), "mine": len(mine), "skipped_units": done, "encoded_units": len(reports),
            "reports": reports, "broken_zips": broken, "seconds": time.time() - start, "store_dir": str(store_dir)}
