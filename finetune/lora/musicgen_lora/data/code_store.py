"""The code store: EnCodec codes of a whole collection (100,000s of clips) in a few hundred files, written
once by the preparation step and read as random windows by training.

Every training route reads codes from here (the per-clip cache it replaced kept one file per clip:
300,000 small files cost an open per window and a slow listing, and a collection streamed out of zips
has no audio files left to hash). Codes are grouped in UNITS -- one per zip, per folder shard, or per
content bucket of a metadata folder:

    DATA_DIR/code_store/units/<unit_id>/
        codes.bin    every clip's codes, concatenated along time, frame-major int16 little-endian:
                     shape (total_frames, K), K = codebooks x channels interleaved [L0, R0, L1, ...]
                     as generate() does. One window of one clip is one contiguous slice, and int16
                     holds MusicGen's 2048 codes in half of int32's bytes.
        chroma.bin   MusicGen-Melody: each clip's chroma as one pitch class per chroma frame (uint8,
                     what a one-hot chroma is), concatenated; empty when no clip has chroma
        index.npy    one row per clip (INDEX_DTYPE): offset and num_frames in frames, num_samples,
                     split (0 train, 1 valid, 2 none: a metadata clip's split comes from
                     metadata.json at training time), content (hex sha256 of the audio the row
                     encodes), chroma_offset and chroma_frames (-1: no chroma)
        clips.jsonl  one JSON object per clip, in index order: name, description, split, duration,
                     source, plus whatever extra keys the writer passed (e.g. condition_audio)
        unit.json    format, store key, unit id, the unit's source identity, counts, created time and
                     a checksum: sha256 of EVERY file (codes.bin and chroma.bin included) and its size

Two writers fill a store. prepare_data.py --codes_only (store_preparation.py) writes a unit per zip
or folder shard. train_lora.py / prepare_data.py --pretokenize on a metadata.json folder
(store_update.py) write units of whole audio files found by CONTENT: a row's `content` is the sha256
of the file's bytes, so index.npy alone maps content -> (unit, row) (clips.jsonl is not parsed), and
renaming a file or editing metadata.json re-encodes nothing. Those units are buckets of the first two
hex digits of the content (units/clips-<bb>-<generation>): adding a clip re-commits one bucket --
the codes it had copied, only the new clip encoded -- so a folder of 10,000 clips that gains one
encodes one and copies ~40. Units stay immutable: the new generation is written and renamed into
place; the old one is SUPERSEDED (a later generation of its bucket under the same key exists; a zip or
shard unit whose source changed is marked so by a file units/<unit_id>.superseded). Readers
skip superseded units, and they are removed only while no process has the store open: every open
CodeStore holds a shared flock on STORE/.readers.lock (its DataLoader workers inherit it), and the
remover takes it exclusively without waiting (remove_superseded), else leaves them for a later update.
Removing them at once made a training that had the store open fail with FileNotFoundError the next
time it opened that unit's codes.bin (a new DataLoader worker, or past MAX_OPEN_UNITS), when a second
run added a clip to the same bucket.

Format 1 units (no content, no chroma, codes.bin checked by size only) are still read.

There is no shared mutable file: listing `units/` is the manifest, so several processes write their
own units at once with no lock (the readers lock above gates only the removal of superseded units).
A unit is written into a temp folder beside it (outputs.temp_path, so a dead writer's temp is
recognised and swept by clean_stale) and renamed into place in one step: a unit either exists
complete or not at all. A unit is never edited after that.

Every unit records its StoreKey: the codec's identity and the settings that decide its codes, computed
by code_cache's own helpers (codec_identity, codec_settings), so the store and the cache agree on
what makes codes stale. The reader (CodeStore) skips, with one warning line, a unit written under
another key, with an unreadable or unknown key, or whose files do not match their checksums (strict:
a UserError instead).

Integrity: every file's sha256 is checked when a process opens the store, before any window is read
(codes.bin included: a same-size flip of codes would otherwise train silently, or stop training with
an IndexError when it leaves the codebook). Hashing runs at disk/page-cache speed (README,
"Benchmarks": `python -m benchmarks.integrity`, ~1 GB/s, 0.5 s for 572 MB), and a DataLoader worker
receives the opened store, so it is paid once per process that opens it, not per window.
"""
import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from musicgen_lora.audio.chroma import SETTINGS as CHROMA_SETTINGS
from musicgen_lora.audio.codes import num_frames_for_samples
from musicgen_lora.core.common import UserError, log
from musicgen_lora.core.outputs import apply_umask_tree, clean_stale, disk_full_error, remove_path, temp_path
from musicgen_lora.data.code_cache import codec_identity, codec_settings, file_sha256
from musicgen_lora.model.checkpoint import model_info

# StoreKey.format: what the codes are (unchanged by format 2, so format 1 units keep their codes).
STORE_FORMAT = 1
UNIT_FORMAT = 2  # unit.json "format": the files of a unit (2 adds chroma.bin, content and every file's sha256)
STORE_DIR = "code_store"
UNITS_DIR = "units"
CODES, INDEX, CLIPS, UNIT, CHROMA = "codes.bin", "index.npy", "clips.jsonl", "unit.json", "chroma.bin"
CODE_DTYPE = np.dtype("<i2")
CODE_MAX = int(np.iinfo(CODE_DTYPE).max)
INDEX_DTYPE_V1 = np.dtype([("offset", "<i8"), ("num_frames", "<i8"), ("num_samples", "<i8"), ("split", "i1")])
INDEX_DTYPE = np.dtype([("offset", "<i8"), ("num_frames", "<i8"), ("num_samples", "<i8"), ("split", "i1"),
                        ("content", "S64"), ("chroma_offset", "<i8"), ("chroma_frames", "<i8")])
SPLITS = ("train", "valid")  # the split code in index.npy is the position here
NO_SPLIT = len(SPLITS)  # rows of metadata clips: their split is metadata.json's, read at training time
ROW_KEYS = ("name", "description", "split", "duration", "source")
# A leading letter or digit keeps unit ids apart from temp names (".ID.tmp-PID-...") and dotfiles.
UNIT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# codes.bin files held open per process (one file descriptor each; the usual soft limit is 1024).
# A store of 300 units of 1,000 clips never reaches this bound; a bigger one closes the least recent.
MAX_OPEN_UNITS = 512
READERS_LOCK = ".readers.lock"  # shared while a CodeStore is open; exclusive to remove superseded units
BUCKET_UNIT = re.compile(r"clips-([0-9a-f]+)-(\d{6})")  # a content bucket's unit: bucket, generation
SUPERSEDED = ".superseded"  # units/<unit_id>.superseded: that unit was replaced (a changed zip or shard)
# Parsed clips.jsonl of this many units are kept for clip_info (a unit's rows: ~1,000 dicts).
ROW_CACHE_UNITS = 4


def default_store_dir(data_dir) -> Path:
    return Path(data_dir) / STORE_DIR


def units_dir(store_dir) -> Path:
    return Path(store_dir) / UNITS_DIR


def check_unit_id(unit_id: str) -> str:
    if not isinstance(unit_id, str) or not UNIT_ID.fullmatch(unit_id):
        raise UserError(f"{unit_id!r}: not a usable code-store unit id; use 1-128 letters, digits, '.', '_' or '-', "
                        f"starting with a letter or digit (e.g. archive_batch_0001 or folder-shard-0003)")
    return unit_id


# --------------------------------------------------------------------------------------------
# The key: which codes a unit holds
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoreKey:
    """What the codes in a unit depend on. A reader only reads units whose key equals its own."""

    codec: str          # code_cache.codec_identity: sha256 of the codec's config and weights
    sample_rate: int    # the rate clips were resampled to before encoding
    channels: str       # "mono-mean" or "2ch-interleaved" (code_cache.codec_settings)
    hop_length: int     # samples per code frame
    num_codebooks: int  # K, the rows of a clip's codes (codebooks x channels)
    dtype: str          # the codec's dtype while encoding
    piece_samples: int  # clips are encoded in pieces of this many samples (audio.piece_samples)
    resampler: str      # audio.RESAMPLER: another resampler gives other samples, so other codes
    encode: str         # code_cache.ENCODE_RULE (codes depend on how a clip is cut and run)
    format: int = STORE_FORMAT

    @classmethod
    def for_model(cls, model, sample_rate: int | None = None) -> "StoreKey":
        """The key of codes encoded by this model's codec (at the codec's own rate unless given)."""
        info = model_info(model)
        settings = codec_settings(model, sample_rate or info["sample_rate"])
        return cls(codec=codec_identity(model), num_codebooks=int(info["num_codebooks"]), **settings)

    @property
    def channels_count(self) -> int:
        """Audio channels the codec was run on: 1 for "mono-mean", N for "Nch-interleaved"."""
        return 1 if self.channels == "mono-mean" else int(self.channels.split("ch-", 1)[0])

    def differences(self, recorded) -> list[str]:
        """'field recorded vs ours' for each field a unit's recorded key (a dict) differs in."""
        recorded = recorded if isinstance(recorded, dict) else {}
        out = []
        for f in fields(self):
            ours, theirs = getattr(self, f.name), recorded.get(f.name, "missing")
            if theirs != ours:
                out.append(f"{f.name} {_short(theirs)} vs {_short(ours)}")
        extra = sorted(set(recorded) - {f.name for f in fields(self)})
        return out + [f"{name} (unknown here)" for name in extra]


def _short(value):
    """A sha256 cut to 12 hex digits for messages; anything else as it is."""
    return f"{value[:12]}..." if isinstance(value, str) and len(value) == 64 else value


# --------------------------------------------------------------------------------------------
# Listing units (cheap: unit.json only)
# --------------------------------------------------------------------------------------------
def _read_unit_json(unit_dir: Path) -> dict:
    data = json.loads((unit_dir / UNIT).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def key_of(unit: dict) -> "StoreKey | None":
    """A unit's recorded key, or None when it is missing, not an object, or has a missing or unknown
    field (a damaged or future unit.json: that unit is skipped, never the whole store)."""
    recorded = unit.get("key")
    names = {f.name for f in fields(StoreKey)}
    if not isinstance(recorded, dict) or set(recorded) - names or not names - {"format"} <= set(recorded):
        return None
    try:
        return StoreKey(**recorded)
    except TypeError:
        return None


def _unit_ids(store_dir) -> list[str]:
    """Committed unit folders, sorted: clips are numbered in this order, whoever wrote them when."""
    try:
        names = os.listdir(units_dir(store_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if UNIT_ID.fullmatch(n) and (units_dir(store_dir) / n).is_dir())


def committed_units(store_dir) -> dict[str, dict]:
    """{unit_id: its unit.json} of every committed unit (whatever its key). A unit folder whose unit.json
    is unreadable is left out: it is not usable, and writing that unit again is refused until it is
    deleted (the writer says so)."""
    out = {}
    ids = _unit_ids(store_dir)
    stale = superseded_units(store_dir, ids)  # replaced: their clips are in the units that replaced them
    for unit_id in ids:
        if unit_id in stale:
            continue
        try:
            out[unit_id] = _read_unit_json(units_dir(store_dir) / unit_id)
        except (OSError, ValueError):
            continue
    return out


def _as_json(value):
    """What `value` reads back as from unit.json (tuples become lists, keys strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def is_committed(store_dir, unit_id: str, source: dict | None = None) -> bool:
    """True when the unit is committed -- and, with `source`, was written from that same source
    (e.g. {"zip": name, "size": bytes, "sha256": ...}): a re-run skips a zip that has not changed and
    redoes (remove_unit, then write) one that has."""
    try:
        data = _read_unit_json(units_dir(store_dir) / check_unit_id(unit_id))
    except (OSError, ValueError):
        return False
    return source is None or data.get("source") == _as_json(source)


def remove_unit(store_dir, unit_id: str):
    """Delete a committed unit (renamed to a temp first: a kill midway leaves a temp that is swept) and
    its superseded mark."""
    remove_path(units_dir(store_dir) / check_unit_id(unit_id))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(units_dir(store_dir) / f"{unit_id}{SUPERSEDED}")


def supersede(store_dir, unit_id: str):
    """Mark a unit replaced (its zip or shard changed and was encoded again): readers skip it from now
    on, and remove_superseded removes it once no process has the store open."""
    path = units_dir(store_dir) / f"{check_unit_id(unit_id)}{SUPERSEDED}"
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def revive(store_dir, unit_id: str) -> bool:
    """A marked unit wanted again (its zip put back as it was, before the unit was removed): unmark it,
    so it serves again instead of being encoded a second time; True when it was marked and is there.
    Under the readers lock, shared: never while remove_superseded holds it to remove that unit."""
    mark = units_dir(store_dir) / f"{check_unit_id(unit_id)}{SUPERSEDED}"
    fd = _readers_lock(store_dir, write=True, operation=fcntl.LOCK_SH)
    try:
        if not mark.is_file() or not (units_dir(store_dir) / unit_id).is_dir():
            return False
        os.unlink(mark)
        return True
    finally:
        if fd is not None:
            os.close(fd)


def superseded_units(store_dir, unit_ids=None) -> set[str]:
    """Units replaced by others: marked (supersede), or bucket units (BUCKET_UNIT) that a later
    generation of the same bucket, written under the same key, replaces. Units of other keys share
    the names' generations, so the key is read (unit.json)."""
    latest, seen, marked = {}, [], set()
    for unit_id in _unit_ids(store_dir) if unit_ids is None else unit_ids:
        if (units_dir(store_dir) / f"{unit_id}{SUPERSEDED}").is_file():
            marked.add(unit_id)
            continue
        m = BUCKET_UNIT.fullmatch(unit_id)
        if not m:
            continue
        try:
            key = json.dumps(_read_unit_json(units_dir(store_dir) / unit_id).get("key"), sort_keys=True)
        except (OSError, ValueError):  # unreadable: a reader skips it anyway; not this function's to remove
            continue
        seen.append((unit_id, (m.group(1), key), int(m.group(2))))
        latest[(m.group(1), key)] = max(latest.get((m.group(1), key), 0), int(m.group(2)))
    return marked | {unit_id for unit_id, group, generation in seen if generation < latest[group]}


def _readers_lock(store_dir, write: bool, operation: int) -> int | None:
    """A descriptor of STORE/.readers.lock (created when `write`) holding the flock `operation`; None
    when there is no lock file, or the lock is held elsewhere (LOCK_NB), or the filesystem has no
    locks (ENOLCK: then readers go unprotected, and remove_superseded never removes)."""
    path = Path(store_dir) / READERS_LOCK
    for flags in ([os.O_RDWR | os.O_CREAT] if write else []) + [os.O_RDONLY]:  # a read-only store: if it is there
        try:
            fd = os.open(path, flags, 0o666)
        except OSError:
            continue
        try:
            fcntl.flock(fd, operation)
            return fd
        except OSError:
            os.close(fd)
            return None
    return None


def remove_superseded(store_dir) -> int | None:
    """Remove the superseded units if no process has the store open (the readers lock taken
    exclusively, not waited for); how many were removed, or None when a reader holds the store
    (they stay: readers skip them, and a later update or preparation removes them)."""
    if not superseded_units(store_dir):
        return 0
    fd = _readers_lock(store_dir, write=True, operation=fcntl.LOCK_EX | fcntl.LOCK_NB)
    if fd is None:
        return None
    try:
        stale = superseded_units(store_dir)  # again, under the lock: revive may have unmarked one
        for unit_id in sorted(stale):
            remove_unit(store_dir, unit_id)
        return len(stale)
    finally:
        os.close(fd)


def store_summary(store_dir) -> dict:
    """Counts for a log line, from unit.json files and sizes only: units, clips per split, hours of
    audio, bytes on disk. Every committed unit counts, whatever its key."""
    units = committed_units(store_dir)
    clips = dict.fromkeys(SPLITS, 0)
    seconds, size = 0.0, 0
    for unit_id, data in units.items():
        for split in SPLITS:
            clips[split] += int(data.get("splits", {}).get(split, 0))
        key = data.get("key") if isinstance(data.get("key"), dict) else {}
        seconds += data.get("num_samples", 0) / (key.get("sample_rate") or 1)
        folder = units_dir(store_dir) / unit_id  # with whatever a writer kept beside the codes (e.g. audio/)
        size += sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return {"units": len(units), "clips": clips, "hours": seconds / 3600, "bytes": size}


def format_summary(store_dir, summary: dict) -> str:
    c = summary["clips"]
    return (f"code store {store_dir}: {summary['units']} units, {c['train']:,} train + {c['valid']:,} valid clips, "
            f"{summary['hours']:.1f} h of audio, {summary['bytes'] / 2**20:,.1f} MB")


class UnitExists(UserError):
    """The unit is already committed (by this run earlier, or by another process just now)."""


# --------------------------------------------------------------------------------------------
# Writing one unit
# --------------------------------------------------------------------------------------------
class UnitWriter:
    """Write one unit: codes go to disk as each clip is added (memory stays at one clip's codes, never
    a unit's); the index and unit.json are written on a clean exit and the folder renamed into place.

        with UnitWriter(store_dir, "archive_batch_0001", key, {"zip": ..., "size": ..., "sha256": ...}) as w:
            for ...:
                w.add(name, codes, num_samples, description, "train", duration, source)

    An exception (or Ctrl-C) inside the block removes the temp folder: nothing is committed. A unit
    that already exists is never replaced (UserError); remove_unit it first to write it again.
    """

    def __init__(self, store_dir, unit_id: str, key: StoreKey, source: dict):
        self.store_dir = Path(store_dir)
        self.unit_id = check_unit_id(unit_id)
        self.final = units_dir(store_dir) / unit_id
        self.key = key
        self.source = _as_json(source)
        self.notes = {}  # anything the caller wants kept in unit.json (e.g. what it skipped), set before exit
        self.tmp = None

    def _refuse_existing(self):
        raise UnitExists(f"{self.final}: code-store unit already written; it is never replaced (delete that folder "
                        f"to write it again)")

    def __enter__(self) -> "UnitWriter":
        if self.final.exists():  # before any encoding work
            self._refuse_existing()
        self.final.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(self.final.parent)  # temps of writers that were killed
        self.tmp = temp_path(self.final)
        self.tmp.mkdir()
        self._codes = open(self.tmp / CODES, "wb")
        self._clips = open(self.tmp / CLIPS, "wb")
        self._chroma = open(self.tmp / CHROMA, "wb")
        self._hashes = {name: hashlib.sha256() for name in (CODES, CLIPS, CHROMA)}
        self._rows = {name: [] for name in INDEX_DTYPE.names}
        self._frames, self._chroma_frames = 0, 0
        return self

    def _write(self, name: str, data):
        {CODES: self._codes, CLIPS: self._clips, CHROMA: self._chroma}[name].write(data)
        self._hashes[name].update(data)

    def add(self, name: str, codes: torch.Tensor | None, num_samples: int, description: str, split: str | None,
            duration: float, source: str, *, content: str = "", chroma: torch.Tensor | None = None, **extra):
        """Append one clip: codes (K, T) integer, T = the frames EnCodec gives num_samples samples (None:
        a row holding only chroma, e.g. a melody stem that is no training clip); split None: a
        metadata clip's (NO_SPLIT); content: hex sha256 of the audio encoded (store_update finds rows
        by it); chroma: (frames,) uint8 pitch classes (audio.chroma.to_classes)."""
        self._check_clip(name, codes, num_samples, split, extra)
        if codes is None:
            frames = np.empty((0, self.key.num_codebooks), dtype=CODE_DTYPE)
        else:
            frames = np.ascontiguousarray(codes.detach().cpu().numpy().T, dtype=CODE_DTYPE)  # (T, K), frame-major
        self._write(CODES, frames.data)
        line = (json.dumps({"name": name, "description": description, "split": split, "duration": duration,
                            "source": source, **extra}, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        self._write(CLIPS, line)
        classes = None if chroma is None else np.ascontiguousarray(chroma.detach().cpu().numpy(), dtype=np.uint8)
        if classes is not None:
            self._write(CHROMA, classes.data)
        values = (self._frames, frames.shape[0], num_samples, NO_SPLIT if split is None else SPLITS.index(split),
                  content.encode("ascii"), self._chroma_frames if classes is not None else 0,
                  -1 if classes is None else len(classes))
        for field_name, value in zip(INDEX_DTYPE.names, values):
            self._rows[field_name].append(value)
        self._frames += frames.shape[0]
        self._chroma_frames += 0 if classes is None else len(classes)

    def _check_clip(self, name, codes, num_samples, split, extra):
        k = self.key.num_codebooks
        if codes is None:
            return
        if codes.dim() != 2 or codes.shape[0] != k or codes.dtype.is_floating_point:
            raise ValueError(f"{name}: codes must be integer (K={k}, T), got {tuple(codes.shape)} {codes.dtype}")
        expected = num_frames_for_samples(num_samples, self.key.hop_length)
        if codes.shape[1] != expected or expected == 0:
            raise ValueError(f"{name}: {codes.shape[1]} frames for {num_samples} samples; EnCodec gives {expected} "
                             f"(and a clip needs at least one)")
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high > CODE_MAX:  # codebook indices; int16 holds codebooks of up to 32,768 entries
            raise UserError(f"{self.final}: clip {name} has codes in [{low}, {high}], outside the store's int16 "
                            f"range [0, {CODE_MAX}]; this codec's codebooks are too large for the code store "
                            f"(MusicGen's have 2048 codes each): use a MusicGen checkpoint's --model_path")
        if split is not None and split not in SPLITS:
            raise ValueError(f"{name}: split {split!r} is not one of {SPLITS}")
        clash = sorted(set(extra) & set(ROW_KEYS))
        if clash:
            raise ValueError(f"{name}: extra keys {clash} clash with the clip row's own")

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self._commit()
                return False
            except BaseException as e:
                exc = e
        self._discard()
        full = disk_full_error(exc, self.final)  # one line naming the unit, whichever write failed
        if full is not None:
            raise full from None
        if exc_type is None:
            raise exc
        return False

    def _discard(self):
        for f in (self._codes, self._clips, self._chroma):
            f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _commit(self):
        for f in (self._codes, self._clips, self._chroma):
            f.close()
        index = np.empty(len(self._rows["offset"]), dtype=INDEX_DTYPE)
        for field_name, values in self._rows.items():
            index[field_name] = values
        buf = io.BytesIO()
        np.save(buf, index, allow_pickle=False)
        (self.tmp / INDEX).write_bytes(buf.getvalue())
        splits = {s: int((index["split"] == i).sum()) for i, s in enumerate(SPLITS)}
        sizes = {name: (self.tmp / name).stat().st_size for name in (CODES, CLIPS, CHROMA)}
        checksum = {"index_sha256": hashlib.sha256(buf.getvalue()).hexdigest(), "index_bytes": len(buf.getvalue()),
                    "codes_sha256": self._hashes[CODES].hexdigest(), "codes_bytes": sizes[CODES],
                    "clips_sha256": self._hashes[CLIPS].hexdigest(), "clips_bytes": sizes[CLIPS],
                    "chroma_sha256": self._hashes[CHROMA].hexdigest(), "chroma_bytes": sizes[CHROMA]}
        unit = {"format": UNIT_FORMAT, "key": asdict(self.key), "unit_id": self.unit_id, "source": self.source,
                "clips": len(index), "splits": splits, "total_frames": self._frames,
                "num_codebooks": self.key.num_codebooks, "num_samples": int(index["num_samples"].sum()),
                "chroma": CHROMA_SETTINGS if self._chroma_frames else None,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "notes": _as_json(self.notes), "checksum": checksum}
        (self.tmp / UNIT).write_text(json.dumps(unit, indent=2) + "\n", encoding="utf-8")
        apply_umask_tree(self.tmp)
        # A mark left by a remover killed between its two steps must not make this new unit replaced.
        with contextlib.suppress(FileNotFoundError):
            if not self.final.exists():
                os.unlink(self.final.with_name(self.final.name + SUPERSEDED))
        # Not outputs.atomic_dir: that replaces an existing folder. rename(2) onto a non-empty folder
        # fails, so of two writers of the same unit exactly one commits and the other is refused.
        try:
            os.rename(self.tmp, self.final)
        except OSError:
            if self.final.exists():
                self._refuse_existing()
            raise


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
class BadUnit(Exception):
    """Why a unit is skipped (the message names the unit folder)."""


def _open_unit(unit_dir: Path, key: StoreKey) -> tuple[dict, np.ndarray]:
    """(unit.json, index as INDEX_DTYPE) of a unit this key may read, every file checked against its
    checksum (sha256 of codes.bin and chroma.bin too, from format 2 on); else BadUnit."""
    try:
        unit = _read_unit_json(unit_dir)
    except (OSError, ValueError) as e:
        raise BadUnit(f"{unit_dir}: unreadable {UNIT} ({type(e).__name__}: {e})") from None
    if key_of(unit) is None:
        raise BadUnit(f"{unit_dir}: {UNIT} has no usable key ({_short(json.dumps(unit.get('key'))[:80])})")
    diffs = key.differences(unit.get("key"))
    if diffs:
        raise OtherKey(f"{unit_dir}: written for other codes ({'; '.join(diffs)})")
    check = unit.get("checksum") if isinstance(unit.get("checksum"), dict) else {}
    v2 = unit.get("format") == UNIT_FORMAT
    names = (CODES, CLIPS, CHROMA) if v2 else (CODES, CLIPS)
    try:
        raw = (unit_dir / INDEX).read_bytes()
        sizes = {name: (unit_dir / name).stat().st_size for name in names}
    except OSError as e:
        raise BadUnit(f"{unit_dir}: {Path(e.filename or '').name or 'a file'} is missing or unreadable") from None
    if hashlib.sha256(raw).hexdigest() != check.get("index_sha256"):
        raise BadUnit(f"{unit_dir}: {INDEX} does not match the checksum in {UNIT}")
    for name in names:
        expected = check.get(f"{name.split('.')[0]}_bytes")
        if sizes[name] != expected:
            raise BadUnit(f"{unit_dir}: {name} is {sizes[name]:,} bytes, {UNIT} says {expected} (truncated?)")
    if v2:  # same-size damage: a flipped code trains silently, or stops training with an IndexError
        for name in (CODES, CHROMA):
            try:
                digest = file_sha256(unit_dir / name)
            except OSError as e:
                raise BadUnit(f"{unit_dir}: {name} is unreadable ({e.strerror})") from None
            if digest != check.get(f"{name.split('.')[0]}_sha256"):
                raise BadUnit(f"{unit_dir}: {name} does not match the checksum in {UNIT} (damaged)")
    try:
        index = np.load(io.BytesIO(raw), allow_pickle=False)
    except ValueError:
        index = None
    if index is None or index.dtype != (INDEX_DTYPE if v2 else INDEX_DTYPE_V1):
        raise BadUnit(f"{unit_dir}: {INDEX} is not a code-store index")
    if not v2:  # format 1: no content, no chroma
        wide = np.zeros(len(index), dtype=INDEX_DTYPE)
        for name in INDEX_DTYPE_V1.names:
            wide[name] = index[name]
        wide["chroma_frames"] = -1
        index = wide
    frames = int(index["num_frames"].sum())
    chroma = int(index["chroma_frames"].clip(min=0).sum())
    if (len(index) != unit.get("clips") or frames * key.num_codebooks * CODE_DTYPE.itemsize != sizes[CODES]
            or (v2 and chroma != sizes[CHROMA])):
        raise BadUnit(f"{unit_dir}: {INDEX} does not describe {unit.get('clips')} clips in {CODES}'s "
                      f"{sizes[CODES]:,} bytes")
    if v2 and chroma and unit.get("chroma") != _as_json(CHROMA_SETTINGS):
        index["chroma_frames"] = -1  # chroma computed another way: not served (store_update recomputes it)
    return unit, index


class OtherKey(BadUnit):
    """A unit of another codec or settings: not damaged, only not ours."""


class CodeStore:
    """Every unit of a store written under `key`, as one sequence of clips (units in id order).

    Opening reads each unit's unit.json and index.npy into a few store-wide arrays and checks every unit
    file against its sha256 once; codes.bin files are opened on first use, per process, and read with
    one pread per window (_read_frames), so a DataLoader worker opens its own and a pickled store
    carries only the arrays. Descriptions stay on disk until asked for (clip_info; descriptions reads
    each unit's clips.jsonl once): parsing every row at open would cost readers that need none of them,
    such as a validation pass (measured before the checksums: 300,000 rows ~1.5 s vs an open of 0.14 s).
    """

    def __init__(self, store_dir, key: StoreKey, strict: bool = False, warn: bool = True):
        self.dir, self.key = Path(store_dir), key
        # Held until release(): no superseded unit this store reads is removed meanwhile (taken before
        # listing the units, so none is removed between the listing and the lock).
        self._lock_fd = _readers_lock(store_dir, write=Path(store_dir).is_dir(), operation=fcntl.LOCK_SH)
        self._lock_pid = os.getpid()
        try:
            clean_stale(units_dir(store_dir))  # a killed writer's temp (a read-only store keeps them)
        except OSError:
            pass
        self.units, self.skipped, indexes, self.clip_digests, other = [], {}, [], [], []
        ids = _unit_ids(store_dir)
        stale = superseded_units(store_dir, ids)  # replaced: their clips are in the units that replaced them
        for unit_id in ids:
            if unit_id in stale:
                continue
            try:
                unit, index = _open_unit(units_dir(store_dir) / unit_id, key)
            except OtherKey as e:
                other.append(str(e))
                self.skipped[unit_id] = str(e)
                continue
            except BadUnit as e:
                if strict:
                    raise UserError(f"{e} (--strict_store); delete that folder and encode its source again, or "
                                    f"train without --strict_store to skip it") from None
                if warn:
                    log.warning(f"warning: {e}; skipped (delete the folder; its clips are encoded again)")
                self.skipped[unit_id] = str(e)
                continue
            self.units.append(unit_id)
            self.clip_digests.append(unit["checksum"]["clips_sha256"])
            indexes.append(index)
        if other and warn:  # one line for all of them: a store shared by two models holds many
            log.warning(f"warning: {len(other)} unit(s) of {self.dir} were written for other codes and are skipped, "
                        f"e.g. {other[0]}")
        index = np.concatenate(indexes) if indexes else np.empty(0, dtype=INDEX_DTYPE)
        self._first = np.concatenate([[0], np.cumsum([len(i) for i in indexes], dtype=np.int64)])
        self._offset, self._frames = index["offset"].copy(), index["num_frames"].copy()
        self._samples, self._split = index["num_samples"].copy(), index["split"].copy()
        self._content = index["content"].copy()
        self._chroma_offset, self._chroma_frames = index["chroma_offset"].copy(), index["chroma_frames"].copy()
        self._fds, self._rows, self._pid = {}, {}, os.getpid()

    def content_rows(self) -> dict[str, int]:
        """{content sha256: store index} of every row that records its content; of two rows with the
        same content the later one (the newer unit) wins."""
        return {c.decode("ascii"): i for i, c in enumerate(self._content.tolist()) if c}

    def content(self, i: int) -> str:
        return self._content[i].decode("ascii")

    def has_codes(self, i: int) -> bool:
        return bool(self._frames[i] > 0)

    def has_chroma(self, i: int) -> bool:
        return bool(self._chroma_frames[i] >= 0)

    def chroma(self, i: int, first: int = 0, count: int | None = None) -> torch.Tensor:
        """Chroma frames [first, first + count) of row i as (n,) uint8 pitch classes (fewer at its end)."""
        if not self.has_chroma(i):
            raise ValueError(f"clip {i} of {self.dir} has no chroma")
        total = int(self._chroma_frames[i])
        first = min(max(first, 0), total)
        end = total if count is None else min(first + count, total)
        u, _ = self._unit_of(i)
        data = os.pread(self._fd(u, CHROMA), end - first, int(self._chroma_offset[i]) + first) if end > first else b""
        return torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())

    def __len__(self) -> int:
        return len(self._offset)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fds"], state["_rows"] = {}, {}  # open files and parsed rows are per process
        state["_lock_fd"] = None  # the process that opened the store holds the readers lock for it
        return state

    def close(self):
        """Close the codes.bin files this process opened (reads open them again when needed)."""
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def release(self):
        """Close the files and let go of the readers lock: superseded units may then be removed, so
        read nothing more through this store. Only the process that opened it lets go (a forked
        worker's copy of the descriptor shares the lock: unlocking it there would unlock the parent)."""
        self.close()
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None and self._lock_pid == os.getpid():
            os.close(fd)

    def __del__(self):
        try:
            self.release()
        except Exception:  # interpreter shutdown: os may be gone; the process closes them anyway
            pass

    def _unit_of(self, i: int) -> tuple[int, int]:
        """(unit position, row within the unit) of clip i."""
        if not 0 <= i < len(self):
            raise IndexError(f"clip {i} of a store of {len(self)}")
        u = int(np.searchsorted(self._first, i, side="right")) - 1
        return u, i - int(self._first[u])

    def _fd(self, u: int, name: str = CODES) -> int:
        """This process's open `name` (codes.bin, chroma.bin) of unit u (opened on first use)."""
        if self._pid != os.getpid():  # a forked worker: its own files, not the parent's copies
            self.close()
            self._rows, self._pid = {}, os.getpid()
        fd = self._fds.pop((u, name), None)
        if fd is None:
            if len(self._fds) >= MAX_OPEN_UNITS:
                os.close(self._fds.pop(next(iter(self._fds))))  # the least recently used
            fd = os.open(units_dir(self.dir) / self.units[u] / name, os.O_RDONLY)
        self._fds[(u, name)] = fd  # re-inserted: most recently used last
        return fd

    def _read_frames(self, u: int, start: int, end: int) -> np.ndarray:
        """Frames [start, end) of unit u's codes.bin as (n, K) int16: one pread of one contiguous slice.

        Not np.memmap: a mapping's RSS grows by every page of page cache it touches (the kernel maps
        whole folios around each fault), so a training run's RSS would climb toward the store's size
        in every DataLoader worker -- measured 32 -> 1,271 MB after 1,600 random 15 s windows of a
        1.8 GB store -- while pread stays flat and was as fast (14-20 vs 20-34 us per window)."""
        row = self.key.num_codebooks * CODE_DTYPE.itemsize
        data = os.pread(self._fd(u), (end - start) * row, start * row)
        if len(data) != (end - start) * row:
            raise UserError(f"{units_dir(self.dir) / self.units[u] / CODES}: shorter than when the store was "
                            f"opened (changed while reading?); delete that unit and encode its source again")
        return np.frombuffer(data, dtype=CODE_DTYPE).reshape(end - start, self.key.num_codebooks)

    def num_frames(self, i: int) -> int:
        return int(self._frames[i])

    def num_samples(self, i: int) -> int:
        return int(self._samples[i])

    def window(self, i: int, frame_offset: int, num_frames: int) -> torch.Tensor:
        """Codes (K, n) long of clip i from frame_offset: n = num_frames, or fewer at the clip's end
        (none past it); the caller pads and masks (dataset.Collator, codes.crop_codes)."""
        if frame_offset < 0 or num_frames < 0:
            raise ValueError(f"window at {frame_offset} of {num_frames} frames")
        u, _ = self._unit_of(i)
        start = int(self._offset[i]) + min(frame_offset, int(self._frames[i]))
        end = int(self._offset[i]) + min(frame_offset + num_frames, int(self._frames[i]))
        rows = self._read_frames(u, start, end) if end > start else np.empty((0, self.key.num_codebooks), CODE_DTYPE)
        return torch.from_numpy(rows.T.astype(np.int64, order="C"))

    def codes(self, i: int) -> torch.Tensor:
        """The whole clip's codes (K, T) long."""
        return self.window(i, 0, self.num_frames(i))

    def split_indices(self, split: str) -> np.ndarray:
        """Store indices of the clips in `split` ("train" or "valid")."""
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {SPLITS}")
        return np.flatnonzero(self._split == SPLITS.index(split))

    def _unit_rows(self, u: int) -> list[dict]:
        """A unit's clips.jsonl rows, checked against unit.json's checksum (sizes were checked at open)."""
        path = units_dir(self.dir) / self.units[u] / CLIPS
        raw = path.read_bytes()
        rows = raw.decode("utf-8").splitlines()
        expected = int(self._first[u + 1] - self._first[u])
        if hashlib.sha256(raw).hexdigest() != self.clip_digests[u] or len(rows) != expected:
            raise UserError(f"{path}: does not match the checksum in {UNIT} (edited or damaged); delete "
                            f"{path.parent} and encode its source again")
        return [json.loads(r) for r in rows]

    def clip_info(self, i: int) -> dict:
        """Clip i's clips.jsonl row (name, description, split, duration, source, extras) and its unit."""
        u, r = self._unit_of(i)
        rows = self._rows.pop(u, None) or self._unit_rows(u)
        self._rows[u] = rows
        while len(self._rows) > ROW_CACHE_UNITS:
            self._rows.pop(next(iter(self._rows)))
        return {**rows[r], "unit": self.units[u]}

    def descriptions(self, indices) -> list[str]:
        """Descriptions of these clips, in order, reading each unit's clips.jsonl once."""
        return [row["description"] for row in self.rows(indices, ("description",))]

    def rows(self, indices, fields) -> list[dict]:
        """These `fields` of these clips' clips.jsonl rows (those a row has), in order, reading each
        unit's clips.jsonl once; only the fields are kept (100,000 whole rows would hold ~100 MB)."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"clip indices outside a store of {len(self)}")
        units = np.searchsorted(self._first, indices, side="right") - 1
        order = np.argsort(units, kind="stable")  # grouped by unit
        out = [None] * len(indices)
        for group in np.split(order, np.flatnonzero(np.diff(units[order])) + 1):
            if not len(group):
                continue
            u = int(units[group[0]])
            rows, first = self._unit_rows(u), int(self._first[u])
            for pos in group.tolist():
                row = rows[int(indices[pos]) - first]
                out[pos] = {k: row[k] for k in fields if k in row}
        return out


# --------------------------------------------------------------------------------------------
# Training from a store (train_lora.py --data_dir D, where D holds code_store/ and no metadata.json)
# --------------------------------------------------------------------------------------------
def has_store(data_dir) -> bool:
    return any(p.is_dir() for p in _unit_dirs(default_store_dir(data_dir)))


def _unit_dirs(store_dir):
    root = units_dir(store_dir)
    return [p for p in root.iterdir() if not p.name.startswith(".")] if root.is_dir() else []


def recorded_key(store_dir) -> StoreKey:
    """The key most of the store's units were written with (the model is not loaded yet when the
    data is read; make_loaders then checks it against the model's: StoreKey.for_model). Units whose
    key is unusable do not vote; CodeStore skips them with a warning."""
    keys = {}
    for info in committed_units(store_dir).values():
        key = key_of(info)
        if key is not None:
            keys[key] = keys.get(key, 0) + 1
    if not keys:
        raise UserError(f"{store_dir}: no committed units with a usable key; run prepare_data.py --codes_only into "
                        f"{Path(store_dir).parent} first")
    return max(keys, key=keys.get)


def store_splits(data_dir, strict: bool = False) -> tuple["CodeStore", dict]:
    """(the store, {"train": [Clip], "valid": [Clip]}) of a --codes_only data folder. Train clips carry
    their store index, description, and tempo and key when estimated (--tempo_key), no audio (none
    exists); validation clips also their kept audio (FAD and the listening test read it)."""
    from musicgen_lora.data.metadata import Clip, music_info

    store_dir = default_store_dir(data_dir)
    store = CodeStore(store_dir, recorded_key(store_dir), strict)
    sr = store.key.sample_rate
    splits = {}
    for split in SPLITS:
        indices = store.split_indices(split)
        clips = []
        for i, row in zip(indices.tolist(), store.rows(indices, ("description", "bpm", "key"))):
            audio = store_dir
            if split == "valid":
                info = store.clip_info(i)
                audio = units_dir(store_dir) / info["unit"] / info["audio"] if info.get("audio") else store_dir
            clips.append(Clip(audio, row["description"], split, store.num_samples(i) / sr, f"code store clip {i}",
                              store_index=i, **music_info(row)))
        splits[split] = clips
    return store, splits
