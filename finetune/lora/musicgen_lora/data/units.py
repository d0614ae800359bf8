"""Units of work for preparing a large collection straight to codes (prepare_data.py --codes_only).

A unit is what one process encodes and commits in one step (code_store.UnitWriter): one
--input_zip, or one shard of SHARD_SIZE files of an --input_dir in sorted order. Units make the
preparation
  - resumable: a unit is committed whole or not at all, so a killed run re-run skips every committed
    unit and redoes only the one it was in;
  - incremental: a unit records what it was made from (`identity`); a second run that adds a zip
    encodes only that zip, and a zip that changed is redone;
  - distributable: process `rank` of `world` takes units rank, rank + world, ... (`assigned`); each
    unit has one writer and its own files, so no process ever writes a file another one writes.

A zip's identity is its central directory -- every member's name, CRC-32 and size -- hashed: content,
not the file's path or mtime, so copying the batches to another disk does not re-encode them, and
reading it costs a directory listing, not a pass over gigabytes. A folder shard's identity is its
files' relative paths, sizes and mtimes (adding a file to a folder shifts the later shards: they
are redone).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from musicgen_lora.data.preparation import Source, ZipLimits, find_sources

SHARD_SIZE = 1000  # files per folder unit: the size of one of the seed's zip batches
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Unit:
    id: str                                     # its folder name in the store: units/<id>/
    sources: tuple[Source, ...]                 # the audio files it encodes, sorted by name
    identity: dict = field(hash=False)          # what it was made from (see the module doc)
    refused: tuple[dict, ...] = ()              # files found and refused before reading (report entries)

    @property
    def num_files(self) -> int:
        return len(self.sources)


def unit_id(name: str) -> str:
    """A file-system-safe id from a zip's or folder's name: archive_batch_0001.zip -> archive_batch_0001."""
    return _UNSAFE.sub("_", name).strip("._") or "unit"


def zip_identity(path: Path) -> dict:
    """The zip's content identity from its central directory (names, CRC-32s, sizes)."""
    h = hashlib.sha256()
    with zipfile.ZipFile(path) as zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            h.update(f"{info.filename}\0{info.CRC:08x}\0{info.file_size}\n".encode("utf-8", "surrogateescape"))
    return {"kind": "zip", "name": path.name, "members": h.hexdigest()}


def shard_identity(folder: Path, sources) -> dict:
    h = hashlib.sha256()
    for src in sources:
        st = os.stat(src.path)
        h.update(f"{src.rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return {"kind": "folder", "folder": os.path.abspath(folder), "files": h.hexdigest()}


def _unique(name: str, taken: set) -> str:
    """`name`, or name-2, name-3 ... when two inputs share a name (batch.zip in two folders)."""
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    taken.add(candidate)
    return candidate


def plan_units(input_dirs=(), input_zips=(), shard_size: int = SHARD_SIZE, exclude=(),
               limits: ZipLimits | None = None) -> tuple[list[Unit], list[dict]]:
    """Every unit of the collection, in a fixed order (zips as given, then folder shards), and the
    report entries of zips that cannot be read at all. Reads zip directories and folder listings
    only: nothing is decoded here."""
    units, broken, taken = [], [], set()
    for z in input_zips:
        z = Path(z)
        sources, refused = find_sources(input_zips=[z], limits=limits)
        if any(r["kind"] == "unreadable zip" for r in refused):
            broken += refused
            continue
        units.append(Unit(_unique(unit_id(z.stem), taken), tuple(sources), zip_identity(z), tuple(refused)))
    for d in input_dirs:
        d = Path(d)
        sources, refused = find_sources(input_dirs=[d], exclude=exclude, limits=limits)
        base = unit_id(d.resolve().name)
        for n, start in enumerate(range(0, max(len(sources), 1), shard_size)):
            chunk = tuple(sources[start:start + shard_size])
            if not chunk and not refused:
                continue
            units.append(Unit(_unique(f"{base}-shard-{n:04d}", taken), chunk, shard_identity(d, chunk),
                              tuple(refused) if n == 0 else ()))
    return units, broken


def process_rank() -> tuple[int, int]:
    """(rank, world size) of this process under `accelerate launch` or torchrun (their RANK and
    WORLD_SIZE variables); (0, 1) when run on its own. No process group is needed: units are split
    by number, and each process writes only its own units."""
    try:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        return 0, 1
    return (rank, world) if 0 <= rank < world else (0, 1)


def assigned(units: list[Unit], rank: int, world: int) -> list[Unit]:
    """This process's units: every world-th one from its rank (units are similar in size: zips of
    ~1,000 clips, shards of SHARD_SIZE files)."""
    return units[rank::world]


def in_valid(source_name: str, seed: int, valid_ratio: float) -> bool:
    """Whether a track goes to validation: a seeded hash of its name below valid_ratio. Units are
    prepared apart (other processes, other runs), so the split cannot be drawn over all tracks at
    once as the WAV route's split_tracks does; a hash gives every process the same answer, keeps
    all segments of a track on one side, and leaves committed units' splits unchanged when a zip
    is added. The share is valid_ratio on average, not exactly."""
    digest = hashlib.sha256(json.dumps([seed, source_name]).encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < valid_ratio
