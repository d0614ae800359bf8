"""A metadata.json folder's clips into the code store, found by content: what train_lora.py and
prepare_data.py --pretokenize run before training reads windows from the store.

Every clip's audio file is hashed (sha256 of its bytes, memoised per stat: code_cache.FileHashMemo,
in STORE/file_hashes.json), and the store's index.npy maps that content to a row (code_store,
"content"). A clip whose content has a row is not read again; the others are encoded -- with
encoding.encode_batched, the one encoder every route uses -- into bucket units (code_store module
doc): a bucket that gains clips is written again as a new unit, its old rows copied; the old unit is
then superseded, and removed once no process has the store open (code_store.remove_superseded). So

  - renaming or moving a clip, or editing descriptions and splits in metadata.json, encodes nothing
    (they are read from metadata.json at training time; the store holds no split for these rows);
  - editing one clip's audio encodes that clip; adding one clip to 10,000 encodes that one;
  - another codec or settings is another StoreKey: its units are skipped, ours written beside them.

MusicGen-Melody: each row may carry the chroma of its audio (pitch class per frame, as
audio.chroma.to_classes gives it); a clip's chroma is that of its conditioning audio
(Clip.melody_path), found by that file's content, so a stem gets a row of chroma only.

Rows are never deleted here: a clip removed from metadata.json keeps its row (it costs ~1.5 MB per
hour of audio); delete the store to reclaim the space. With several processes the trainer fills
the store on the main process first (accelerator.main_process_first); two runs that commit the
same bucket at once: one commits, the other re-reads the store and finds its clips there.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from musicgen_lora.audio import chroma as chroma_lib
from musicgen_lora.audio.reader import AudioPieces, piece_samples
from musicgen_lora.core.common import UserError, log
from musicgen_lora.data import code_store
from musicgen_lora.data.code_cache import HASH_MEMO_NAME, FileHashMemo
from musicgen_lora.model.checkpoint import model_info
from musicgen_lora.model.encoding import encode_batched

BUCKET_DIGITS = 2  # 256 buckets: ~40 clips each at 10,000 clips, ~1,200 at 300,000


def bucket_of(content: str) -> str:
    return content[:BUCKET_DIGITS]


def _read_pieces(audio: AudioPieces):
    """A clip's pieces in order, read one at a time as the encoder asks for them."""
    return (audio.read(j) for j in range(audio.num_pieces))


def encode_files(model, paths, batch_size: int | None = None, device=None):
    """(path, codes (K, T), num_samples) per audio file, in order, each read piece by piece at the
    model's rate and channels (one piece in memory at a time, however long the file) and encoded by
    encoding.encode_batched: the codes model.codec.encode_pieces gives."""
    info = model_info(model)
    sr, ps = info["sample_rate"], piece_samples(info["sample_rate"], info["hop_length"])

    def items():
        for path in paths:
            audio = AudioPieces(path, sr, ps, info["audio_channels"])
            yield (path, audio.num_samples), _read_pieces(audio)

    for (path, num_samples), codes in encode_batched(model, items(), batch_size, device):
        yield path, codes, num_samples


def file_chroma_classes(path, sample_rate: int, hop_length: int) -> torch.Tensor:
    """The whole file's chroma as (frames,) uint8 pitch classes (chroma.file_chroma, piece by piece)."""
    return chroma_lib.to_classes(chroma_lib.file_chroma(path, sample_rate, piece_samples(sample_rate, hop_length)))


class _Want:
    """What the clips ask of one content: codes (from this path) and/or chroma (from this path)."""

    def __init__(self):
        self.codes = self.chroma = None


def fill_store(store_dir, model, splits: dict, melody: bool, strict: bool = False, progress: bool = True,
               batch_size: int | None = None, device=None) -> tuple[code_store.CodeStore, dict, dict, dict]:
    """Bring the store up to date for these clips ({split: [Clip]}); returns (the open store,
    {split: [Clip with store_index set]}, {split: [store index of each clip's chroma] or None},
    statistics). Nothing is encoded for a clip whose content the store holds. device: where the codec
    runs (the GPU when there is one; always fp32, autocast off: model.codec.encode_audio)."""
    start = time.time()
    store_dir = Path(store_dir)
    info = model_info(model)
    key = code_store.StoreKey.for_model(model)
    memo = FileHashMemo(store_dir / HASH_MEMO_NAME)
    digests, wants = {}, {}
    def digest(path):  # once per file and run (a file just written is "racy" and would be hashed again)
        if path not in digests:
            digests[path] = memo.sha256(path)
        return digests[path]

    for clips in splits.values():
        for clip in clips:
            wants.setdefault(digest(clip.audio_path), _Want()).codes = clip.audio_path
            if melody:
                wants.setdefault(digest(clip.melody_path), _Want()).chroma = clip.melody_path
    stats = {"files": sum(len(c) for c in splits.values()), "encoded": 0, "chroma": 0, "units": 0,
             "hashed": memo.hashed}
    if store_dir.is_dir():
        code_store.remove_superseded(store_dir)  # units an earlier run replaced while others read them
    store = code_store.CodeStore(store_dir, key, strict)
    for _attempt in range(3):  # a bucket committed by another process meanwhile: read the store again
        missing = _missing(store, wants)
        if not missing:
            break
        _check_writable(store_dir)
        bar = tqdm(total=sum(w.codes is not None for w in missing.values()), desc="encoding", unit="file",
                   disable=not progress, leave=False)
        try:
            for bucket in sorted({bucket_of(d) for d in missing}):
                todo = {d: w for d, w in missing.items() if bucket_of(d) == bucket}
                if _commit_bucket(store, bucket, todo, model, info, batch_size, device, bar, stats):
                    stats["units"] += 1
        finally:
            bar.close()
            memo.save()
        store.release()  # ours must not count as a reader that holds the replaced units
        if code_store.remove_superseded(store_dir) is None:
            log.info(f"note: {store_dir}: units this run replaced stay until no other process has the store open "
                     f"(a later run removes them)")
        store = code_store.CodeStore(store_dir, key, strict, warn=False)  # what it skips was said above
    else:
        raise UserError(f"{store_dir}: the code store kept changing while this run filled it (another run "
                        f"writing it?); run again")
    memo.save()
    rows = store.content_rows()
    out, chroma_rows = {}, {}
    for name, clips in splits.items():
        out[name] = [dataclasses.replace(c, store_index=rows[digests[c.audio_path]]) for c in clips]
        chroma_rows[name] = [rows[digests[c.melody_path]] for c in clips] if melody else None
    elapsed = time.time() - start
    stats.update(hashed=memo.hashed, seconds=elapsed, files_per_s=stats["files"] / elapsed if elapsed else 0.0,
                 cached=stats["files"] - stats["encoded"])
    return store, out, chroma_rows, stats


def _missing(store: code_store.CodeStore, wants: dict) -> dict:
    """The contents whose rows lack what the clips ask (codes, chroma), with only what is lacking."""
    rows, out = store.content_rows(), {}
    for d, w in wants.items():
        i = rows.get(d)
        lack = _Want()
        lack.codes = w.codes if w.codes is not None and (i is None or not store.has_codes(i)) else None
        lack.chroma = w.chroma if w.chroma is not None and (i is None or not store.has_chroma(i)) else None
        if lack.codes is not None or lack.chroma is not None:
            out[d] = lack
    return out


def _check_writable(store_dir: Path):
    try:
        code_store.units_dir(store_dir).mkdir(parents=True, exist_ok=True)
        probe = code_store.units_dir(store_dir) / f".probe-{time.time_ns()}"
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        raise UserError(f"{store_dir}: cannot write the code store ({e.strerror}); pass --cache_dir with a "
                        f"writable folder (the codes of this data go there)") from None


def _commit_bucket(store, bucket: str, todo: dict, model, info: dict, batch_size, device, bar, stats) -> bool:
    """Write the bucket's next unit: the rows its current unit(s) hold, completed with what `todo`
    lacks (codes encoded, chroma computed); the old unit(s) are superseded by it (fill_store removes
    them when no process has the store open). False when another process committed that unit first."""
    store_dir, sr, hop = store.dir, info["sample_rate"], info["hop_length"]
    every = [u for u in code_store._unit_ids(store_dir)
             if (m := code_store.BUCKET_UNIT.fullmatch(u)) and m.group(1) == bucket]
    generations = [int(code_store.BUCKET_UNIT.fullmatch(u).group(2)) for u in every]
    stale = code_store.superseded_units(store_dir, every)
    on_disk = [u for u in every if u not in stale]
    old_units = [u for u in store.units if u in on_disk]
    if set(on_disk) - set(old_units) - set(store.skipped):  # another process committed it since we opened
        return False
    new_id = f"clips-{bucket}-{max(generations, default=0) + 1:06d}"
    old_rows = [i for u in old_units for i in range(*_unit_range(store, u))]
    try:
        with code_store.UnitWriter(store_dir, new_id, store.key, {"kind": "content-bucket", "bucket": bucket}) as w:
            def chroma_for(content, path, i=None):
                if path is not None:
                    stats["chroma"] += 1
                    return file_chroma_classes(path, sr, hop)
                return store.chroma(i) if i is not None and store.has_chroma(i) else None

            for i in old_rows:  # kept as they are, completed where the clips ask for more
                d = store.content(i)
                if d in todo and todo[d].codes is not None:
                    continue  # re-made below, with its codes
                want = todo.pop(d, _Want())
                row = store.clip_info(i)
                w.add(row["name"], store.codes(i) if store.has_codes(i) else None, store.num_samples(i), "", None,
                      row["duration"], row["source"], content=d, chroma=chroma_for(d, want.chroma, i))
            to_encode = {str(wt.codes): d for d, wt in todo.items() if wt.codes is not None}
            rows = store.content_rows()
            for path, codes, num_samples in encode_files(model, list(to_encode), batch_size, device):
                d = to_encode[str(path)]
                i = rows.get(d)
                w.add(Path(path).name, codes, num_samples, "", None, round(num_samples / sr, 3), str(path), content=d,
                      chroma=chroma_for(d, todo[d].chroma, i))
                stats["encoded"] += 1
                bar.update()
            for d, wt in todo.items():  # chroma only: conditioning audio that is no training clip
                if wt.codes is None:
                    n = AudioPieces(wt.chroma, sr, piece_samples(sr, hop), 1).num_samples
                    w.add(Path(wt.chroma).name, None, n, "", None, round(n / sr, 3), str(wt.chroma), content=d,
                          chroma=chroma_for(d, wt.chroma))
            w.notes["encoded_on"] = {"device": str(next(model.parameters()).device)}
    except code_store.UnitExists:
        return False
    return True  # old_units are superseded now: removed by the caller once no process reads them


def _unit_range(store, unit_id: str) -> tuple[int, int]:
    u = store.units.index(unit_id)
    return int(store._first[u]), int(store._first[u + 1])


def log_fill(store_dir, stats: dict):
    log.info(f"code store {store_dir}: {stats['files']} clips, {stats['cached']} in the store, {stats['encoded']} "
             f"encoded, {stats['chroma']} chroma computed, {stats['hashed']} files hashed "
             f"({stats['files_per_s']:.1f} files/s)")


def pretokenize(model_path: str, data_dir, metadata_file="metadata.json", store_dir=None, device="auto",
                progress=True) -> dict:
    """prepare_data.py --pretokenize: fill the store for every clip of metadata.json ahead of training."""
    from musicgen_lora.core.common import resolve_device
    from musicgen_lora.data.metadata import read_metadata
    from musicgen_lora.model.checkpoint import load_model_and_processor

    splits = read_metadata(data_dir, metadata_file)
    model, _ = load_model_and_processor(model_path, device=resolve_device(device))
    store_dir = Path(store_dir) if store_dir else code_store.default_store_dir(data_dir)
    melody = model_info(model)["chroma_length"] is not None
    *_, stats = fill_store(store_dir, model, {"all": splits["train"] + splits["valid"]}, melody, progress=progress)
    log_fill(store_dir, stats)
    return {**stats, "store_dir": str(store_dir)}
