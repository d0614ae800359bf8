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
import math
import struct
import time
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from musicgen_lora.audio.reader import to_channels
from musicgen_lora.audio.writer import write_audio
from musicgen_lora.core.common import UserError, log
from musicgen_lora.data import code_store
from musicgen_lora.data.code_cache import file_sha256
from musicgen_lora.data.config import PrepareConfig
from musicgen_lora.data.preparation import (
    COLLECTION_INDEX,
    SAMPLE_RATE,
    DescriptionIndex,
    FoundIndexes,
    Unusable,
    ZipLimits,
    ZipReader,
    describe,
    output_stem,
    rms_dbfs,
    tempo_and_key,
    track_segments,
    track_skip,
)
from musicgen_lora.data.units import Unit, assigned, in_valid, plan_against, plan_units, process_rank, with_rules
from musicgen_lora.model.checkpoint import model_info, unwrap_base


@dataclass
class Segment:
    name: str            # <source stem>_NNN, as the WAV route names its files
    audio: np.ndarray    # (C, n) at the model's rate and channels
    description: str
    split: str
    source: str
    start: float
    music_info: dict = field(default_factory=dict)  # {"bpm": ..., "key": ...} with --tempo_key


def source_segments(src, s: PrepareConfig, text: str, zips: ZipReader, channels: int, skipped: list,
                    dropped: dict):
    """One source's kept segments as they are cut (preparation.track_segments: the WAV route's rules and
    samples; memory does not grow with the track's length). Unusable when it cannot be decoded, perhaps
    after some segments: the caller discards them. Skips for being too short or near-silent go to
    `skipped`, dropped segments to `dropped`, once the track has been read to its end."""
    seg_len = int(round(s.segment_duration * SAMPLE_RATE))
    split = "valid" if in_valid(src.name, s.seed, s.valid_ratio) else "train"
    stem, track, kept, silent = output_stem(src.name), {}, 0, 0
    for i, a, _end, wav in track_segments(src, zips, s, track):
        piece = np.clip(wav, -1.0, 1.0)
        if rms_dbfs(piece) < s.silence_threshold_db:
            silent += 1
            continue
        audio = to_channels(as_pcm16(piece).reshape(len(piece), -1).T, channels)
        kept += 1
        # of the segment as the WAV route estimates it (the same samples: preparation.cut_tracks)
        info = tempo_and_key(wav) if s.tempo_key else {}
        yield Segment(f"{stem}_{i:03d}", audio, text, split, src.name, round(a / SAMPLE_RATE, 3), info)
    dropped["short_tail"] += math.ceil(track["samples"] / seg_len) - (kept + silent)
    dropped["near_silent"] += silent
    nothing_kept = track_skip(src.name, kept, silent, track["samples"], s)
    if nothing_kept:
        skipped.append(nothing_kept)


def as_pcm16(wav: np.ndarray) -> np.ndarray:
    """The segment as the WAV route's 16-bit file reads back (libsndfile's float -> PCM_16 write, then its
    read as float32): the codes of either route are then the same, and the kept validation audio is
    exactly what was encoded. Computed in numpy, not through an in-memory soundfile round trip: a
    SIGINT landing in soundfile's Python I/O callback was swallowed inside libsndfile (the run ended
    in an AssertionError, not exit 130). libsndfile 1.2 writes rint(x * 2^31) clipped to int32, shifted
    right 16 bits (so neither rounding nor truncation of x * 32768), and reads q / 32768; equal to
    soundfile's round trip bit for bit on every 16-bit boundary, random and edge values
    (tests/test_codes_only.py). `wav` is finite and within [-1, 1] (clipped by the caller)."""
    q = np.clip(np.rint(wav.astype(np.float64) * 2.0**31), -2.0**31, 2.0**31 - 1).astype(np.int64) >> 16
    return q.astype(np.float32) / np.float32(32768)


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
    counts, seconds, tracks, origins = {"train": 0, "valid": 0}, {"train": 0.0, "valid": 0.0}, {}, {}
    with code_store.UnitWriter(store_dir, unit.id, key, unit.identity) as writer:
        # Segments are encoded as they are cut, batch_size at a time, so no track is ever held whole. Their
        # codes (a few kB each) wait in `encoded` until their track has been read to its end: a track found
        # unreadable halfway leaves nothing in the unit. Order in the unit: by track, then by segment.
        pending: list[Segment] = []
        encoded: list[tuple[Segment, int, torch.Tensor, dict]] = []  # (segment less its samples, their count, ...)
        finished: set[str] = set()

        def flush():
            for seg, codes in zip(pending, encode_segments(model, pending, batch_size)):
                extra = {"start": seg.start, **seg.music_info}
                if seg.split == "valid":  # kept as audio: FAD and the listening test need it
                    extra["audio"] = write_valid_audio(writer, seg)
                encoded.append((replace(seg, audio=None), seg.audio.shape[1], codes,
                                {**extra, "content": segment_digest(seg)}))
            pending.clear()
            add_finished()

        def add_finished():
            while encoded and encoded[0][0].source in finished:
                seg, num_samples, codes, extra = encoded.pop(0)
                writer.add(seg.name, codes, num_samples, seg.description, seg.split,
                           round(num_samples / SAMPLE_RATE, 3), seg.source, **extra)
                counts[seg.split] += 1
                seconds[seg.split] += num_samples / SAMPLE_RATE
                tracks[seg.source] = seg.split

        def discard(source: str):
            pending[:] = [seg for seg in pending if seg.source != source]
            for _seg, _n, _codes, extra in [e for e in encoded if e[0].source == source]:
                if "audio" in extra:
                    (writer.tmp / extra["audio"]).unlink()
            encoded[:] = [e for e in encoded if e[0].source != source]

        for src in unit.sources:
            text, origin = describe(src, index, s.default_description, zips, found)
            if text is None:
                missing.append(src.name)
            else:
                origins[origin] = origins.get(origin, 0) + 1
                try:
                    with closing(source_segments(src, s, text, zips, channels, skipped, dropped)) as segments:
                        for seg in segments:
                            pending.append(seg)
                            if len(pending) >= batch_size:
                                flush()
                    finished.add(src.name)
                except Unusable as e:
                    discard(src.name)
                    skipped.append({"source": src.name, "kind": e.kind, "reason": str(e)})
                add_finished()
            if bar is not None:
                bar.update(1)
        flush()
        report = {"unit": unit.id, "files": unit.num_files, "segments": counts, "skipped": skipped,
                  "no_description": missing, "dropped": dropped, "descriptions": origins,
                  "tracks": {split: sum(1 for v in tracks.values() if v == split) for split in counts},
                  "seconds": {split: round(v, 3) for split, v in seconds.items()}}
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
    validation file's own sha256), so every route's rows are found by content (code_store). The bytes
    are built here, not by soundfile into a BytesIO: libsndfile's I/O callbacks into Python swallowed
    a Ctrl-C (see as_pcm16)."""
    return hashlib.sha256(pcm16_wav_bytes(seg.audio, SAMPLE_RATE)).hexdigest()


def pcm16_wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """The file libsndfile writes for (channels, n) samples that are already 16-bit values (as_pcm16):
    a 44-byte canonical WAVE_FORMAT_PCM header and the interleaved little-endian samples (equal to
    soundfile's output byte for byte, tests/test_codes_only.py)."""
    channels = audio.shape[0]
    data = np.round(audio.T * 32768.0).clip(-32768, 32767).astype("<i2").tobytes()
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(data), b"WAVE", b"fmt ", 16, 1, channels,
                         sample_rate, sample_rate * channels * 2, channels * 2, 16, b"data", len(data))
    return header + data


def write_valid_audio(writer, seg: Segment) -> str:
    """The validation segment as 16-bit WAV inside the unit being written; its path in the unit."""
    rel = f"audio/{seg.name}.wav"
    path = writer.tmp / rel
    path.parent.mkdir(exist_ok=True)
    write_audio(path, seg.audio.T, SAMPLE_RATE, subtype="PCM_16")
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
            "metadata_jsonl": {p: _file_digest(p) for p in beside if Path(p).is_file()},
            # only when on: units made before the option existed keep their identity
            **({"tempo_key": True} if s.tempo_key else {})}


def prepare_codes(s: PrepareConfig, model, key, shard_size: int, batch_size: int = 8) -> dict:
    """Plan the units, skip the committed ones, encode this process's share; returns a summary."""
    out = Path(s.output_dir)
    store_dir = code_store.default_store_dir(out)
    units, broken = plan_units(s.input_dirs, s.input_zips, shard_size, exclude=[out],
                               limits=ZipLimits(s.max_member_mb, s.max_compression_ratio))
    if not units and not broken:
        raise UserError(f"{', '.join(map(str, [*s.input_dirs, *s.input_zips]))}: no audio files found")
    rules = preparation_rules(s)
    units = [with_rules(u, rules) for u in units]
    if store_dir.is_dir():
        code_store.remove_superseded(store_dir)  # units an earlier run replaced while others read them
    plan = plan_against(units, code_store.committed_units(store_dir))  # every process decides the same
    refuse_changed_rules(plan, store_dir, s.overwrite)
    rank, world = process_rank()
    mine = assigned(units, rank, world)
    done_ids = {u.id for u, _ in plan.done}
    todo = [u for u in mine if u.id not in done_ids]
    done = len(mine) - len(todo)
    log.info(f"code store {store_dir}: {len(units)} unit(s) in the collection; process {rank} of {world} has "
             f"{len(mine)}: {done} already committed (skipped), {len(todo)} to encode "
             f"({sum(u.num_files for u in todo)} files)")
    superseded = plan.superseded
    mine_ids = {u.id for u in mine}
    for unit, old in plan.changed_source:
        if unit.id in mine_ids:
            log.info(f"{unit.name}: its files changed since unit {old} was encoded; encoding it again as "
                     f"{unit.id} (the old unit is replaced once the new one is committed)")
    index, found, zips = DescriptionIndex(s.descriptions_file), FoundIndexes(s.input_dirs, s.input_zips), ZipReader()
    reports, start = [], time.time()
    bar = tqdm(total=sum(u.num_files for u in todo), desc="encoding", unit="file", disable=not s.progress)
    try:
        for unit in todo:
            if code_store.revive(store_dir, unit.id):  # replaced earlier, still there (a reader kept it)
                log.info(f"{unit.name}: unit {unit.id} already holds these files (replaced earlier and kept "
                         f"while the store was read); it serves again, nothing encoded")
                bar.update(unit.num_files)
            else:
                reports.append(prepare_unit(unit, s, model, key, store_dir, zips, index, found, batch_size, bar))
            if unit.id in superseded:  # only now: until the new unit is committed, the old one serves
                code_store.supersede(store_dir, superseded[unit.id])
                if code_store.remove_superseded(store_dir) is None:
                    log.info(f"note: unit {superseded[unit.id]} is replaced and stays until no other process "
                             f"has {store_dir} open (readers skip it; a later run removes it)")
    finally:
        bar.close()
        zips.close()
    return {"units": len(units), "mine": len(mine), "skipped_units": done, "encoded_units": len(reports),
            "reports": reports, "broken_zips": broken, "seconds": time.time() - start, "store_dir": str(store_dir)}


def refuse_changed_rules(plan, store_dir, overwrite: bool):
    """A re-run with other rules (a new --seed, a typo in --segment_duration) would re-encode every
    unit it touches -- hours of encoding on a large collection, while a trainer may be reading the
    store: only with --overwrite."""
    if not plan.changed_rules or overwrite:
        return
    changes = sorted({c for _, _, diff in plan.changed_rules for c in diff})
    files = sum(u.num_files for u, *_ in plan.changed_rules)
    raise UserError(f"{store_dir}: {len(plan.changed_rules)} committed unit(s) (e.g. {plan.changed_rules[0][1]}) "
                    f"were prepared with other rules ({'; '.join(changes)}); re-encoding them ({files} files) "
                    f"needs --overwrite, or prepare into another --output_dir for a separate store")


STORE_REPORT = "prepare_report.json"


def store_report(store_dir, broken_zips=()) -> dict:
    """The whole store's preparation report, in the WAV route's prepare_report.json terms (files_found =
    files_used + files_skipped, skips by kind and one by one, segments, splits), summed over every
    committed unit's own report -- whichever run or process wrote it. Written to
    code_store/prepare_report.json at the end of each run (atomically: two processes each write a
    whole one)."""
    from musicgen_lora.core.outputs import atomic_write_json
    from musicgen_lora.data.preparation import SKIP_KINDS

    skipped, missing, files, units = [], [], 0, []
    segments, dropped = {"train": 0, "valid": 0}, {"near_silent": 0, "short_tail": 0}
    tracks, seconds, origins = {"train": 0, "valid": 0}, {"train": 0.0, "valid": 0.0}, {}
    for unit_id, info in sorted(code_store.committed_units(store_dir).items()):
        r = (info.get("notes") or {}).get("report")
        if not isinstance(r, dict):
            continue
        refused = sum(1 for x in r.get("skipped", []) if x.get("kind") in ("too large", "link outside input",
                                                                          "duplicate name"))
        files += int(r.get("files", 0)) + refused
        skipped += r.get("skipped", [])
        missing += r.get("no_description", [])
        for split in segments:
            segments[split] += int(r.get("segments", {}).get(split, 0))
            tracks[split] += int(r.get("tracks", {}).get(split, 0))
            seconds[split] += float(r.get("seconds", {}).get(split, 0.0))
        for k in dropped:
            dropped[k] += int(r.get("dropped", {}).get(k, 0))
        for k, n in (r.get("descriptions") or {}).items():
            origins[k] = origins.get(k, 0) + n
        units.append({"unit": unit_id, "files": r.get("files"), "segments": r.get("segments"),
                      "skipped": len(r.get("skipped", [])) + len(r.get("no_description", []))})
    skipped_all = skipped + [{"source": m, "kind": "no description", "reason": "no description"} for m in missing]
    counts = {kind: sum(1 for x in skipped_all if x["kind"] == kind) for kind in SKIP_KINDS}
    report = {"files_found": files, "files_used": files - len(skipped_all), "files_skipped": len(skipped_all),
              "skipped_by_kind": {k: n for k, n in counts.items() if n},
              "skipped": sorted(skipped, key=lambda x: x["source"]), "unreadable_zips": list(broken_zips),
              "no_description": missing, "descriptions": {**origins, "missing": len(missing)},
              "channels": {}, "segments": {"written": sum(segments.values()), "dropped_near_silent":
                                           dropped["near_silent"], "dropped_short_tail": dropped["short_tail"]},
              "splits": {split: {"tracks": tracks[split], "segments": segments[split],
                                 "hours": round(seconds[split] / 3600, 4)} for split in segments},
              "units": units}
    atomic_write_json(Path(store_dir) / STORE_REPORT, report)
    return report
